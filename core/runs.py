"""Run store: one folder per run under ``cache/runs/<run_id>/``, written whole or not at all.

A run folder holds ``record.json`` (config, timings, metrics), and optionally ``model.safetensors`` (the
model as arrays and JSON, see core.model_io), ``predictions.csv`` (test images) and ``validation.csv``
(out-of-fold scores of the training images). Runs move between copies of TransferScope as zip bundles of
these files; no file is ever a pickle (loading one runs code), and an imported model is validated first.
Writers (save, delete, import) hold a file lock on the store, so several processes may write at once;
readers never see a half-written run, and a crash leaves only hidden ``.tmp-*`` folders, removed by
the next writer.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
import zipfile
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePath

from typing import TYPE_CHECKING

from filelock import FileLock

from core.csvcells import frame_csv, read_csv
from core.errors import RunStoreError, StorageError
from core.model_io import MAX_MODEL_BYTES, MODEL_FILE, model_bytes, model_state, read_model

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 1
RECORD_FILE = "record.json"
LEGACY_MODEL_FILE = "model.joblib"  # a pickle, written by earlier versions: never read from a bundle
PREDICTIONS_FILE = "predictions.csv"
VALIDATION_FILE = "validation.csv"
BUNDLE_FILES = (RECORD_FILE, PREDICTIONS_FILE, VALIDATION_FILE, MODEL_FILE)
MANIFEST_FILE = "manifest.json"
MAX_BUNDLE_BYTES = 2 * 1024**3
MAX_MEMBER_BYTES = {MANIFEST_FILE: 1024**2, RECORD_FILE: 5 * 1024**2, PREDICTIONS_FILE: 512 * 1024**2,
                    VALIDATION_FILE: 512 * 1024**2, MODEL_FILE: MAX_MODEL_BYTES}
MAX_COMPRESSION_RATIO = 100  # checked on members over RATIO_CHECK_BYTES; real records and CSVs stay far below
RATIO_CHECK_BYTES = 1024**2
_RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,200}")
_FEATURE_KEY_PATTERN = re.compile(r"[0-9a-f]{16,64}")  # core.features keys are sha256 hex prefixes
MAX_CLOCK_SKEW = timedelta(minutes=10)  # an imported run created later than this from now is refused
_TEMP_PREFIX = ".tmp-"

# What every stored record holds (the pages and reports read these): key -> type(s).
_NUMBER = (int, float)
RECORD_FIELDS = {"run_id": str, "created": str, "approach": str, "class_weight": str, "accuracy": _NUMBER,
                 "balanced_accuracy": _NUMBER, "macro_f1": _NUMBER, "weighted_f1": _NUMBER, "fit_seconds": _NUMBER,
                 "predict_seconds": _NUMBER, "per_class": list, "confusion_matrix": list, "never_predicted": list,
                 "history": list, "class_weights": list, "dataset": dict}
OPTIONAL_FIELDS = {"tau": _NUMBER, "extract_seconds": _NUMBER, "config": dict, "backbone": dict}
DATASET_FIELDS = {"root": str, "classes": list, "train_counts": list, "test_counts": list}
PER_CLASS_FIELDS = {"class": str, "precision": _NUMBER, "recall": _NUMBER, "f1": _NUMBER, "support": int,
                    "minority": bool}


def _slugify(text) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def new_run_id(approach, class_weight) -> str:
    """Return a unique, filesystem-safe run id.

    >>> new_run_id("svm", "balanced")  # doctest: +SKIP
    '20261126-163012-svm-balanced-3f2a9c01'
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    # 4 random bytes: the many runs an experiment saves within one second must not collide (2 bytes did)
    return f"{stamp}-{_slugify(approach)}-{_slugify(class_weight)}-{secrets.token_hex(4)}"


def check_run_id(run_id) -> str:
    """Return `run_id` if it is a safe folder name (letters, digits, '.', '_', '-'), else raise."""
    if (
        not isinstance(run_id, str)
        or not _RUN_ID_PATTERN.fullmatch(run_id)
        or ".." in run_id
        or run_id.startswith(".")
    ):
        raise RunStoreError(
            f"run id {run_id!r} is not valid: use only letters, digits, '.', '_' and '-' "
            "(no '..', no leading '.'); pick one from list_runs()"
        )
    return run_id


def check_feature_key(key) -> str:
    """Return `key` if it looks like a feature-set key (hex, as core.features makes them), else raise.

    Keys name files under the cache (features, maps), so one from a record must never hold a path.
    """
    if not isinstance(key, str) or not _FEATURE_KEY_PATTERN.fullmatch(key):
        raise RunStoreError(f"feature key {key!r:.80} is not valid: keys are 16-64 lowercase hex digits made by "
                            "TransferScope; the record was edited by hand, delete it or re-export it")
    return key


def _fsync_file(path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path) -> None:
    """Flush a folder's entries (a rename into it), so the rename survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full; free some space or write to another disk",
    errno.EDQUOT: "the disk quota is used up; free some space or write to another disk",
    errno.EACCES: "permission denied; choose a location you can write to",
    errno.EPERM: "permission denied; choose a location you can write to",
    errno.EROFS: "the file system is read-only; choose a location you can write to",
    errno.EISDIR: "a folder is in the way; give a file path, not a folder",
    errno.ENOTDIR: "a file is in the way where a folder should be; choose another location",
    errno.EEXIST: "a file is in the way where a folder should be; choose another location",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


def storage_error(err: OSError, path, what: str = "file") -> StorageError:
    """A StorageError naming `what` was written, where, what went wrong and what to do.

    >>> storage_error(OSError(errno.EISDIR, "Is a directory"), "out", "report")
    StorageError('could not write report out: a folder is in the way; give a file path, not a folder')
    """
    advice = _WRITE_ERRORS.get(err.errno, f"{err.strerror or err}; check the path, free disk space and permissions")
    return StorageError(f"could not write {what} {path}: {advice}")


@contextlib.contextmanager
def writing(path, what: str = "file"):
    """Turn an OSError raised inside the block into a StorageError naming `path` (the write boundary)."""
    try:
        yield
    except OSError as err:
        raise storage_error(err, path, what) from err


def check_output_file(path, what: str) -> Path:
    """`path` as a Path if a file can be written there, else a StorageError saying what is in the way."""
    path = _check_output_path(path, what)
    if path.is_dir():
        raise StorageError(f"{what} {path} is a folder; give a file path, e.g. {path / 'results.json'}")
    return path


def check_output_dir(path, what: str) -> Path:
    """`path` as a Path if it is, or can be made, a writable folder, else a StorageError saying why not."""
    path = _check_output_path(path, what)
    if path.exists() and not path.is_dir():
        raise StorageError(f"{what} {path} is a file, not a folder; give a folder path (it is created if missing)")
    return path


def _check_output_path(path, what: str) -> Path:
    """The path, once its nearest existing ancestor is known to be a folder this process may write in."""
    if not str(path).strip():
        raise StorageError(f"no {what} given (the path is empty)")
    path = Path(path).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if existing != path and not existing.is_dir():
        raise StorageError(f"{what} {path}: {existing} is a file, not a folder; choose another location")
    if not os.access(existing if existing.is_dir() else existing.parent, os.W_OK):
        raise StorageError(f"{what} {path}: permission denied in {existing}; choose a location you can write to")
    return path


@contextlib.contextmanager
def atomic_file(path, what: str = "file"):
    """Yield a temporary path beside `path`; when the block succeeds, fsync it and move it onto `path`.

    Any OSError (a full disk, no permission, a folder in the way) becomes a StorageError naming `path`
    and `what` it is; the temporary file is removed, so nothing half-written is ever found at `path`.

    >>> with atomic_file("cache/x.npy", "feature array") as tmp:  # doctest: +SKIP
    ...     numpy.save(tmp, X)
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"  # the writer creates it (usual permissions)
    try:
        with writing(path, what):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            _fsync_file(tmp)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def atomic_write_bytes(path, data: bytes, what: str = "file") -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a partial one."""
    with atomic_file(path, what) as tmp:
        tmp.write_bytes(data)


def atomic_write_npz(path, what: str, **arrays) -> None:
    """Write `arrays` to `path` as an uncompressed `.npz` atomically (`numpy.load` reads them back by name)."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue(), what)


def _to_json(obj) -> str:
    """Indented JSON; numpy scalars and arrays become plain numbers and lists."""

    def plain(value):
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"{type(value).__name__} is not JSON serializable; store plain numbers, strings and lists")

    return json.dumps(obj, indent=2, default=plain)


def atomic_write_json(path, obj, what: str = "file") -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_bytes(path, _to_json(obj).encode("utf-8"), what)


def read_json_object(path, what: str, error: type[Exception] = RunStoreError) -> dict:
    """Load a JSON object from `path`, raising `error` that names `what` the file is and what went wrong."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))  # editors on Windows start UTF-8 with a BOM
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} not found") from None
    except IsADirectoryError:
        raise error(f"{what} {str(path)!r} is a folder; give the path of the JSON file") from None
    except OSError as err:
        raise error(f"{what} {str(path)!r} cannot be read: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{what} {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise error(f"{what} {str(path)!r} must hold a JSON object, got {type(obj).__name__}")
    return obj


def _utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _parse_record(raw: bytes, run_id: str) -> dict:
    """Parse record.json bytes and check they describe `run_id` in this schema version, every field present."""
    try:
        record = json.loads(raw)
    except ValueError as err:
        raise RunStoreError(
            f"record.json of run {run_id!r} is not valid JSON ({err}); delete the run or re-export it"
        ) from err
    if not isinstance(record, dict) or record.get("run_id") != run_id:
        raise RunStoreError(
            f"record.json in folder {run_id!r} does not describe run {run_id!r}; "
            "the folder was renamed or edited by hand, delete it or restore its record"
        )
    version = record.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunStoreError(
            f"run {run_id!r} has schema_version {version!r} but this TransferScope reads "
            f"{SCHEMA_VERSION}; export it from a matching version"
        )
    return check_record(record)


def _is(value, types) -> bool:
    """isinstance, except that a bool never counts as a number and a float must be finite."""
    if isinstance(value, bool):
        return types is bool
    return isinstance(value, types) and not (isinstance(value, float) and not math.isfinite(value))


def _check_fields(obj, fields: dict, where: str, required: bool = True) -> None:
    for key, types in fields.items():
        if key not in obj:
            if required:
                raise RunStoreError(f"{where} lacks {key!r}; it is incomplete, delete it or re-export it")
            continue
        if not _is(obj[key], types):
            expected = " or ".join(t.__name__ for t in types) if isinstance(types, tuple) else types.__name__
            raise RunStoreError(f"{where} has {key!r} = {obj[key]!r:.80}, expected {expected}; "
                                "it was edited by hand or is damaged, delete it or re-export it")


def check_record(record: dict) -> dict:
    """Return `record` if it has every field the pages read, with the right types and shapes; else raise.

    >>> check_record({"run_id": "r1"})  # doctest: +SKIP
    RunStoreError: run 'r1' lacks 'created'; it is incomplete, delete it or re-export it
    """
    where = f"run {record.get('run_id')!r}"
    _check_fields(record, RECORD_FIELDS, where)
    _check_fields(record, OPTIONAL_FIELDS, where, required=False)
    try:
        datetime.fromisoformat(record["created"])
    except ValueError:
        raise RunStoreError(f"{where} has 'created' = {record['created']!r:.80}, not an ISO date and time; "
                            "delete it or re-export it") from None
    dataset = record["dataset"]
    _check_fields(dataset, DATASET_FIELDS, f"{where} dataset")
    k = len(dataset["classes"])
    shapes = {"dataset classes": (dataset["classes"], str), "dataset train_counts": (dataset["train_counts"], int),
              "dataset test_counts": (dataset["test_counts"], int), "per_class": (record["per_class"], dict),
              "class_weights": (record["class_weights"], _NUMBER),
              "confusion_matrix": (record["confusion_matrix"], list)}
    for name, (values, types) in shapes.items():
        if len(values) != k or not all(_is(v, types) for v in values):
            raise RunStoreError(f"{where} {name} must list one {getattr(types, '__name__', 'number')} per class "
                                f"({k} classes); it is damaged, delete it or re-export it")
    for row in record["per_class"]:
        _check_fields(row, PER_CLASS_FIELDS, f"{where} per_class row")
    if not all(len(row) == k and all(_is(v, int) for v in row) for row in record["confusion_matrix"]):
        raise RunStoreError(f"{where} confusion_matrix must be {k} x {k} counts; it is damaged, "
                            "delete it or re-export it")
    if not all(_is(name, str) for name in record["never_predicted"]):
        raise RunStoreError(f"{where} never_predicted must list class names; delete it or re-export it")
    return record


class RunStore:
    """Runs stored as folders under `root` (e.g. ``cache/runs``).

    >>> store = RunStore("cache/runs")  # doctest: +SKIP
    >>> run_id = store.save({"run_id": new_run_id("svm", "balanced"), "accuracy": 0.9})  # doctest: +SKIP
    >>> store.load(run_id)["accuracy"]  # doctest: +SKIP
    0.9
    """

    def __init__(self, root):
        self.root = Path(root)

    def save(self, record: dict, *, model=None, predictions: pd.DataFrame | None = None,
             validation: pd.DataFrame | None = None) -> str:
        """Store a run (record, optional model, predictions and validation scores) atomically; its run id.

        Adds ``schema_version`` and ``created`` (ISO UTC) to the record when missing; the record must
        then pass check_record. Predictions are written without their index.
        """
        if not isinstance(record, dict) or "run_id" not in record:
            raise RunStoreError("record has no 'run_id'; create one with new_run_id(approach, class_weight)")
        run_id = check_run_id(record["run_id"])
        self._refuse_existing(run_id)
        record = check_record(json.loads(_to_json({"schema_version": SCHEMA_VERSION, "created": _utc_now_iso(),
                                                   **record})))
        try:
            with self._locked(), self._staging_dir(run_id) as tmp:
                (tmp / RECORD_FILE).write_text(_to_json(record), encoding="utf-8")
                if model is not None:
                    (tmp / MODEL_FILE).write_bytes(model_bytes(model_state(model)))
                if predictions is not None:
                    (tmp / PREDICTIONS_FILE).write_text(frame_csv(predictions), encoding="utf-8")
                if validation is not None:
                    (tmp / VALIDATION_FILE).write_text(frame_csv(validation), encoding="utf-8")
                self._publish(tmp, run_id)
        except OSError as err:
            raise RunStoreError(
                f"could not write run {run_id!r} under {self.root}: {err}; check free disk space and permissions"
            ) from err
        return run_id

    def list_runs(self) -> list[dict]:
        """Return the records of all complete, valid runs, newest first (see scan for the others)."""
        return self.scan()[0]

    def scan(self) -> tuple[list[dict], dict[str, str]]:
        """Return (valid records newest first, {folder name: why it was skipped} for broken run folders).

        Hidden folders (staging, trash) are not runs and appear in neither. A broken run can still be deleted.
        """
        records, broken = [], {}
        for run_dir in self._run_dirs():
            try:
                records.append(self._read_record(run_dir))
            except RunStoreError as err:
                broken[run_dir.name] = str(err)
        return sorted(records, key=lambda r: (r["created"], r["run_id"]), reverse=True), broken

    def load(self, run_id: str) -> dict:
        """Return the record of run `run_id`."""
        return self._read_record(self._existing_run_dir(run_id))

    def load_predictions(self, run_id: str) -> pd.DataFrame:
        """Return the predictions table of run `run_id`."""
        return read_csv(self._artifact(run_id, PREDICTIONS_FILE))

    def load_validation(self, run_id: str) -> pd.DataFrame | None:
        """The out-of-fold scores of run `run_id`'s training images (`true`, `score_<i>`); None if it has none."""
        path = self._existing_run_dir(run_id) / VALIDATION_FILE
        return read_csv(path) if path.is_file() else None

    def load_model(self, run_id: str):
        """The stored model of run `run_id` (a validated `core.model_io.StoredModel`); a clear error without one."""
        path = self._existing_run_dir(run_id) / MODEL_FILE
        if not path.is_file():
            old = "a pickled model of an earlier version, which is never loaded" if (
                path.parent / LEGACY_MODEL_FILE).is_file() else "no model"
            raise RunStoreError(f"run {run_id!r} has {old}: it was trained by, or imported from, an earlier "
                                "version of TransferScope; train it again (or import a bundle exported by this version)")
        return read_model(path, f"the model of run {run_id!r}")

    def delete(self, run_id: str) -> None:
        """Remove run `run_id`; it disappears from list_runs at once, even if removal is interrupted."""
        with self._locked():
            run_dir = self._existing_run_dir(run_id)
            trash = self.root / f"{_TEMP_PREFIX}{run_id}-deleted-{secrets.token_hex(4)}"
            os.replace(run_dir, trash)
            _fsync_dir(self.root)
            shutil.rmtree(trash, ignore_errors=True)

    def export_bundle(self, run_ids, out_path, rewrite=None) -> Path:
        """Write the given runs (records, predictions, validation scores, models as arrays) and a manifest into a zip.

        `rewrite(record, predictions) -> (record, predictions)` changes each run on its way out (e.g.
        `core.sharing.PathNames.bundle_run`, which renames paths for viewers); None copies the files.
        """
        run_ids = list(dict.fromkeys(run_ids))
        if not run_ids:
            raise RunStoreError("no runs to export; pass at least one run id from list_runs()")
        manifest = {"schema_version": SCHEMA_VERSION, "runs": run_ids}
        with self._locked():  # no run disappears half-way through
            run_dirs = [self._existing_run_dir(run_id) for run_id in run_ids]
            with atomic_file(out_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(MANIFEST_FILE, json.dumps(manifest, indent=2))
                for run_dir in run_dirs:
                    if rewrite is None:
                        for name in BUNDLE_FILES:
                            if (run_dir / name).is_file():
                                zf.write(run_dir / name, f"{run_dir.name}/{name}")
                    else:
                        self._write_rewritten(zf, run_dir.name, rewrite)
        return Path(out_path)

    def _write_rewritten(self, zf: zipfile.ZipFile, run_id: str, rewrite) -> None:
        has_predictions = (self.root / run_id / PREDICTIONS_FILE).is_file()
        record, predictions = rewrite(self.load(run_id), self.load_predictions(run_id) if has_predictions else None)
        zf.writestr(f"{run_id}/{RECORD_FILE}", _to_json(record))
        if predictions is not None:
            zf.writestr(f"{run_id}/{PREDICTIONS_FILE}", frame_csv(predictions))

    def export_bundle_bytes(self, run_ids, rewrite=None) -> bytes:
        """The bundle export_bundle writes, as bytes (for downloads); the temporary zip is removed."""
        with tempfile.TemporaryDirectory(prefix="transferscope-bundle-") as tmp:
            return self.export_bundle(run_ids, Path(tmp) / "bundle.zip", rewrite).read_bytes()

    def import_bundle(self, zip_path) -> list[str]:
        """Import the runs of a bundle made by export_bundle; return the ids newly imported.

        `zip_path` is a path or a binary file object. The whole bundle is checked before anything is
        written (zip, manifest, member names ``<run_id>/<record.json|predictions.csv>``, no symlinks,
        no pickled models, size and compression-ratio limits, every record complete); any problem raises
        RunStoreError and writes nothing. Runs whose id already exists are skipped.
        """
        with _open_bundle(zip_path) as zf:
            members = _check_bundle(zf)
            with self._locked(), contextlib.ExitStack() as stack:
                new_ids = [run_id for run_id in members if not (self.root / run_id).exists()]
                staged = {run_id: stack.enter_context(self._staging_dir(run_id)) for run_id in new_ids}
                for run_id, tmp in staged.items():
                    _extract_run(zf, members[run_id], tmp)
                for run_id, tmp in staged.items():
                    self._publish(tmp, run_id)
        return new_ids

    @contextlib.contextmanager
    def _locked(self):
        """Hold the store's lock (across processes) and clear what crashed writers left behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(self.root.parent / f".{self.root.name}.lock"):  # beside the runs, so listings stay clean
            for leftover in self.root.glob(f"{_TEMP_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)
            yield

    @contextlib.contextmanager
    def _staging_dir(self, run_id: str):
        """Yield a fresh hidden folder in root; whatever is left of it afterwards is removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{run_id}-", dir=self.root))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _publish(self, tmp: Path, run_id: str) -> None:
        """Flush the staged files and move the staging folder to ``root/<run_id>`` in one step (lock held)."""
        for path in tmp.iterdir():
            _fsync_file(path)
        _fsync_dir(tmp)
        self._refuse_existing(run_id)
        try:
            os.replace(tmp, self.root / run_id)
            _fsync_dir(self.root)
        except OSError as err:
            raise RunStoreError(f"could not publish run {run_id!r} under {self.root}: {err}") from err

    def _refuse_existing(self, run_id: str) -> None:
        if (self.root / run_id).exists():
            raise RunStoreError(f"run {run_id!r} already exists in {self.root}; use a new id from new_run_id()")

    def _run_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def _existing_run_dir(self, run_id: str) -> Path:
        run_dir = self.root / check_run_id(run_id)
        if not run_dir.is_dir():
            raise RunStoreError(f"no run {run_id!r} in {self.root}; pick one from list_runs()")
        return run_dir

    def _artifact(self, run_id: str, name: str) -> Path:
        path = self._existing_run_dir(run_id) / name
        if not path.is_file():
            raise RunStoreError(f"run {run_id!r} has no {name}; it was saved or imported without it")
        return path

    @staticmethod
    def _read_record(run_dir: Path) -> dict:
        try:
            raw = (run_dir / RECORD_FILE).read_bytes()
        except OSError as err:
            raise RunStoreError(f"run {run_dir.name!r} has no readable {RECORD_FILE} ({err}); delete it") from err
        return _parse_record(raw, run_dir.name)


@contextlib.contextmanager
def _open_bundle(zip_path):
    """Open a bundle (path or binary file object); zip errors while it is open become RunStoreError."""
    label = getattr(zip_path, "name", zip_path)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise RunStoreError(f"{label!r} is not a readable zip bundle ({err}); export one with export_bundle") from err
    try:
        with zf:
            yield zf
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise RunStoreError(f"bundle {label!r} is corrupt ({err}); export it again") from err


def _bundle_member(info: zipfile.ZipInfo) -> tuple[str, str]:
    """Return (run_id, file name) of a bundle member, or raise if the member is unsafe or unknown."""
    name = info.filename
    if name.startswith(("/", "\\")):
        raise RunStoreError(f"bundle member {name!r} has an absolute path; bundles hold only <run_id>/<file>")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise RunStoreError(f"bundle member {name!r} is a symlink; bundles hold only plain files")
    if info.flag_bits & 0x1:
        raise RunStoreError(f"bundle member {name!r} is encrypted; export the bundle again without a password")
    run_id, _, file_name = name.partition("/")
    check_run_id(run_id)
    if file_name == LEGACY_MODEL_FILE:
        raise RunStoreError(f"bundle member {name!r} is a pickled model, and loading one runs the sender's code; "
                            "bundles carry only records and predictions, so ask for a bundle exported by this version")
    if file_name not in BUNDLE_FILES:
        raise RunStoreError(
            f"bundle member {name!r} is not allowed; run folders may hold only {', '.join(BUNDLE_FILES)}"
        )
    limit = MAX_MEMBER_BYTES[file_name]
    if info.file_size > limit:
        raise RunStoreError(f"bundle member {name!r} unpacks to {info.file_size} bytes, over the {limit}-byte limit")
    _check_ratio(info)
    return run_id, file_name


def _check_ratio(info: zipfile.ZipInfo) -> None:
    """Refuse a member that inflates far more than real records and predictions do (a zip bomb)."""
    if info.file_size > RATIO_CHECK_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        ratio = info.file_size / max(info.compress_size, 1)
        raise RunStoreError(f"bundle member {info.filename!r} inflates {ratio:.0f}-fold, over the "
                            f"{MAX_COMPRESSION_RATIO}-fold limit; it is not a TransferScope bundle")


def _read_manifest(zf: zipfile.ZipFile) -> list[str]:
    try:
        info = zf.getinfo(MANIFEST_FILE)
        if info.file_size > MAX_MEMBER_BYTES[MANIFEST_FILE]:
            raise RunStoreError(f"bundle {MANIFEST_FILE} unpacks to {info.file_size} bytes, over the "
                                f"{MAX_MEMBER_BYTES[MANIFEST_FILE]}-byte limit; it was not made by export_bundle")
        manifest = json.loads(zf.read(info))
    except KeyError as err:
        raise RunStoreError(f"bundle has no {MANIFEST_FILE}; it was not made by export_bundle") from err
    except ValueError as err:
        raise RunStoreError(f"bundle {MANIFEST_FILE} is not valid JSON ({err}); export the bundle again") from err
    if not isinstance(manifest, dict):
        raise RunStoreError(f"bundle {MANIFEST_FILE} is not a JSON object; export the bundle again")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunStoreError(
            f"bundle {MANIFEST_FILE} has schema_version {version!r} but this TransferScope reads "
            f"{SCHEMA_VERSION}; export it from a matching version"
        )
    runs = manifest.get("runs")
    if not isinstance(runs, list) or len(set(map(str, runs))) != len(runs):
        raise RunStoreError(f"bundle {MANIFEST_FILE} must list run ids once each under 'runs'; got {runs!r}")
    return [check_run_id(run_id) for run_id in runs]


def _check_bundle(zf: zipfile.ZipFile) -> dict[str, dict[str, zipfile.ZipInfo]]:
    """Validate a whole bundle without writing; return {run_id: {file name: member}} in manifest order."""
    run_ids = _read_manifest(zf)
    total_bytes = sum(info.file_size for info in zf.infolist())
    if total_bytes > MAX_BUNDLE_BYTES:
        raise RunStoreError(f"bundle unpacks to {total_bytes} bytes, over the {MAX_BUNDLE_BYTES}-byte limit")
    members: dict[str, dict[str, zipfile.ZipInfo]] = {run_id: {} for run_id in run_ids}
    for info in zf.infolist():
        if info.filename == MANIFEST_FILE:
            continue
        run_id, file_name = _bundle_member(info)
        if run_id not in members:
            raise RunStoreError(f"bundle member {info.filename!r} belongs to a run not listed in {MANIFEST_FILE}")
        if file_name in members[run_id]:
            raise RunStoreError(f"bundle has member {info.filename!r} twice; export the bundle again")
        members[run_id][file_name] = info
    for run_id, files in members.items():
        if RECORD_FILE not in files:
            raise RunStoreError(f"bundle lists run {run_id!r} but has no {run_id}/{RECORD_FILE}")
        record = _check_imported_record(_parse_record(zf.read(files[RECORD_FILE]), run_id))
        if MODEL_FILE in files:
            _check_imported_model(zf.read(files[MODEL_FILE]), record)
        if PREDICTIONS_FILE in files:
            _check_prediction_paths(zf, files[PREDICTIONS_FILE], record)
    return members


def _check_imported_record(record: dict) -> dict:
    """What a run from another machine must also satisfy: a known approach, a hex feature key, a past date.

    Its approach is shown on every page, its feature key names cache files, and its `created` decides
    which run pages open first.
    """
    from core.settings import APPROACHES  # on use: it loads torch

    where = f"bundle run {record['run_id']!r}"
    if record["approach"] not in APPROACHES:
        raise RunStoreError(f"{where} has approach {record['approach']!r:.80}; TransferScope knows "
                            f"{', '.join(APPROACHES)}, so the bundle was not made by it")
    if record.get("feature_key") is not None:
        check_feature_key(record["feature_key"])
    created = datetime.fromisoformat(record["created"])
    created = created if created.tzinfo else created.replace(tzinfo=timezone.utc)
    if created > datetime.now(timezone.utc) + MAX_CLOCK_SKEW:
        raise RunStoreError(f"{where} was created {record['created']!r:.40}, in the future; check the clock of the "
                            "machine that exported it and export it again")
    return record


def _check_imported_model(data: bytes, record: dict) -> None:
    """An imported model must be a valid stored model for the run's classes (checked before anything is written)."""
    stored = read_model(data, f"bundle run {record['run_id']!r} model")
    if stored.n_classes != len(record["dataset"]["classes"]):
        raise RunStoreError(f"bundle run {record['run_id']!r} has a model for {stored.n_classes} classes but "
                            f"{len(record['dataset']['classes'])} classes in its record; export the bundle again")


def _check_prediction_paths(zf: zipfile.ZipFile, info: zipfile.ZipInfo, record: dict) -> None:
    """Every test image path of an imported run must lie inside its dataset folder (by name; no file is looked up).

    Pages look these paths up on this machine, so a path elsewhere would probe the owner's disk.
    """
    import pandas as pd  # on use, as in load_predictions

    root, where = PurePath(record["dataset"]["root"]), f"bundle run {record['run_id']!r}"
    try:
        with zf.open(info) as csv:
            paths = read_csv(csv, usecols=["path"], dtype=str, keep_default_na=False)["path"]
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise RunStoreError(f"{where} has a {PREDICTIONS_FILE} without a readable 'path' column ({err}); "
                            "export the bundle again") from None
    outside = next((path for path in paths if not _lies_in(PurePath(path), root)), None)
    if outside is not None:
        raise RunStoreError(f"{where} lists test image {outside!r:.120}, outside its dataset folder "
                            f"{str(root)!r:.120}; bundles list only images inside the dataset they were trained on")


def _lies_in(path: PurePath, root: PurePath) -> bool:
    return ".." not in path.parts and path != root and path.is_relative_to(root)


def _extract_run(zf: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], dest: Path) -> None:
    """Copy one run's checked members into `dest`, named by their checked file name only."""
    for file_name, info in files.items():
        with zf.open(info) as src, open(dest / file_name, "wb") as out:
            shutil.copyfileobj(src, out)

"""Zip bundles: runs (records, predictions, validation scores, models as arrays) moving between copies of TransferScope.

No member is ever a pickle (loading one runs code). An import checks the whole bundle before writing
anything (zip, manifest, member names, sizes, every record typed, a known approach, paths inside the
dataset, each model valid for its run's classes), then publishes its runs into the store under the store's lock.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import stat
import tempfile
import zipfile
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePath

from core.approach_names import APPROACH_NAMES
from core.csvcells import frame_csv, read_csv
from core.errors import RunStoreError
from core.model_io import MAX_MODEL_BYTES, read_model
from core.records import SCHEMA_VERSION, RunRecord
from core.storage import atomic_file, to_json_text
from core.store import (LEGACY_MODEL_FILE, MODEL_FILE, PREDICTIONS_FILE, RECORD_FILE, VALIDATION_FILE, RunStore,
                        check_feature_key, check_run_id, parse_record)

BUNDLE_FILES = (RECORD_FILE, PREDICTIONS_FILE, VALIDATION_FILE, MODEL_FILE)
MANIFEST_FILE = "manifest.json"
MAX_BUNDLE_BYTES = 2 * 1024**3
MAX_MEMBER_BYTES = {MANIFEST_FILE: 1024**2, RECORD_FILE: 5 * 1024**2, PREDICTIONS_FILE: 512 * 1024**2,
                    VALIDATION_FILE: 512 * 1024**2, MODEL_FILE: MAX_MODEL_BYTES}
MAX_COMPRESSION_RATIO = 100  # checked on members over RATIO_CHECK_BYTES; real records and CSVs stay far below
RATIO_CHECK_BYTES = 1024**2
MAX_CLOCK_SKEW = timedelta(minutes=10)  # an imported run created later than this from now is refused


def export_bundle(store: RunStore, run_ids, out_path, rewrite=None) -> Path:
    """Write the given runs (records, predictions, validation scores, models as arrays) and a manifest into a zip.

    `rewrite(record, predictions) -> (record, predictions)` changes each run on its way out (e.g.
    `core.sharing.PathNames.bundle_run`, which renames paths for viewers); None copies the files.
    """
    run_ids = list(dict.fromkeys(run_ids))
    if not run_ids:
        raise RunStoreError("no runs to export; pass at least one run id from list_runs()")
    manifest = {"schema_version": SCHEMA_VERSION, "runs": run_ids}
    with store.locked():  # no run disappears half-way through
        run_dirs = [store.existing_run_dir(run_id) for run_id in run_ids]
        with atomic_file(out_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST_FILE, json.dumps(manifest, indent=2))
            for run_dir in run_dirs:
                if rewrite is None:
                    for name in BUNDLE_FILES:
                        if (run_dir / name).is_file():
                            zf.write(run_dir / name, f"{run_dir.name}/{name}")
                else:
                    _write_rewritten(store, zf, run_dir.name, rewrite)
    return Path(out_path)


def _write_rewritten(store: RunStore, zf: zipfile.ZipFile, run_id: str, rewrite) -> None:
    has_predictions = (store.root / run_id / PREDICTIONS_FILE).is_file()
    record, predictions = rewrite(store.load(run_id), store.load_predictions(run_id) if has_predictions else None)
    zf.writestr(f"{run_id}/{RECORD_FILE}", to_json_text(record.to_json()))
    if predictions is not None:
        zf.writestr(f"{run_id}/{PREDICTIONS_FILE}", frame_csv(predictions))


def export_bundle_bytes(store: RunStore, run_ids, rewrite=None) -> bytes:
    """The bundle export_bundle writes, as bytes (for downloads); the temporary zip is removed."""
    with tempfile.TemporaryDirectory(prefix="transferscope-bundle-") as tmp:
        return export_bundle(store, run_ids, Path(tmp) / "bundle.zip", rewrite).read_bytes()


def import_bundle(store: RunStore, zip_path) -> list[str]:
    """Import the runs of a bundle made by export_bundle into `store`; return the ids newly imported.

    `zip_path` is a path or a binary file object. The whole bundle is checked before anything is
    written (zip, manifest, member names ``<run_id>/<record.json|predictions.csv>``, no symlinks,
    no pickled models, size and compression-ratio limits, every record complete); any problem raises
    RunStoreError and writes nothing. Runs whose id already exists are skipped.
    """
    with _open_bundle(zip_path) as zf:
        members = _check_bundle(zf)
        with store.locked(), contextlib.ExitStack() as stack:
            new_ids = [run_id for run_id in members if not (store.root / run_id).exists()]
            staged = {run_id: stack.enter_context(store.staging_dir(run_id)) for run_id in new_ids}
            for run_id, tmp in staged.items():
                _extract_run(zf, members[run_id], tmp)
            for run_id, tmp in staged.items():
                store.publish(tmp, run_id)
    return new_ids


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
        record = _check_imported_record(parse_record(zf.read(files[RECORD_FILE]), run_id))
        if MODEL_FILE in files:
            _check_imported_model(zf.read(files[MODEL_FILE]), record)
        if PREDICTIONS_FILE in files:
            _check_prediction_paths(zf, files[PREDICTIONS_FILE], record)
    return members


def _check_imported_record(record: RunRecord) -> RunRecord:
    """What a run from another machine must also satisfy: a known approach, a hex feature key, a past date.

    Its approach is shown on every page, its feature key names cache files, and its `created` decides
    which run pages open first.
    """
    where = f"bundle run {record.run_id!r}"
    if record.approach not in APPROACH_NAMES:
        raise RunStoreError(f"{where} has approach {record.approach!r:.80}; TransferScope knows "
                            f"{', '.join(APPROACH_NAMES)}, so the bundle was not made by it")
    if record.feature_key is not None:
        check_feature_key(record.feature_key)
    created = datetime.fromisoformat(record.created)
    created = created if created.tzinfo else created.replace(tzinfo=timezone.utc)
    if created > datetime.now(timezone.utc) + MAX_CLOCK_SKEW:
        raise RunStoreError(f"{where} was created {record.created!r:.40}, in the future; check the clock of the "
                            "machine that exported it and export it again")
    return record


def _check_imported_model(data: bytes, record: RunRecord) -> None:
    """An imported model must be a valid stored model for the run's classes (checked before anything is written)."""
    stored = read_model(data, f"bundle run {record.run_id!r} model")
    if stored.n_classes != len(record.classes):
        raise RunStoreError(f"bundle run {record.run_id!r} has a model for {stored.n_classes} classes but "
                            f"{len(record.classes)} classes in its record; export the bundle again")


def _check_prediction_paths(zf: zipfile.ZipFile, info: zipfile.ZipInfo, record: RunRecord) -> None:
    """Every test image path of an imported run must lie inside its dataset folder (by name; no file is looked up).

    Pages look these paths up on this machine, so a path elsewhere would probe the owner's disk.
    """
    import pandas as pd  # on use, as in load_predictions

    root, where = PurePath(record.dataset.root), f"bundle run {record.run_id!r}"
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

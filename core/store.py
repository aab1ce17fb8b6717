"""Run store: one folder per run under ``cache/runs/<run_id>/``, written whole or not at all.

A run folder holds ``record.json`` (a `core.records.RunRecord`), and optionally ``model.safetensors`` (the
model as arrays and JSON, see core.model_io), ``predictions.csv`` (test images) and ``validation.csv``
(out-of-fold scores of the training images); no file is ever a pickle.
Writers (save, delete, and bundle imports in core.bundles) hold a file lock on the store, so several
processes may write at once; readers never see a half-written run, and a crash leaves only hidden
``.tmp-*`` folders, removed by the next writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from core.csvcells import frame_csv, read_csv
from core.errors import RunStoreError
from core.model_io import MODEL_FILE, model_bytes, model_state, read_model
from core.records import SCHEMA_VERSION, RunRecord
from core.storage import fsync_dir, fsync_file, to_json_text

if TYPE_CHECKING:
    import pandas as pd

RECORD_FILE = "record.json"
LEGACY_MODEL_FILE = "model.joblib"  # a pickle, written by earlier versions: never read
PREDICTIONS_FILE = "predictions.csv"
VALIDATION_FILE = "validation.csv"
_RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,200}")
_FEATURE_KEY_PATTERN = re.compile(r"[0-9a-f]{16,64}")  # core.features keys are sha256 hex prefixes
TEMP_PREFIX = ".tmp-"


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


def parse_record(raw: bytes, run_id: str) -> RunRecord:
    """Parse record.json bytes and check they describe `run_id` in this schema version, every field typed."""
    try:
        obj = json.loads(raw)
    except ValueError as err:
        raise RunStoreError(
            f"record.json of run {run_id!r} is not valid JSON ({err}); delete the run or re-export it"
        ) from err
    if not isinstance(obj, dict) or obj.get("run_id") != run_id:
        raise RunStoreError(
            f"record.json in folder {run_id!r} does not describe run {run_id!r}; "
            "the folder was renamed or edited by hand, delete it or restore its record"
        )
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunStoreError(
            f"run {run_id!r} has schema_version {version!r} but this TransferScope reads "
            f"{SCHEMA_VERSION}; export it from a matching version"
        )
    if "created" not in obj:
        raise RunStoreError(f"run {run_id!r} lacks 'created'; it is incomplete, delete it or re-export it")
    return RunRecord.from_json(obj, f"run {run_id!r}")


class RunStore:
    """Runs stored as folders under `root` (e.g. ``cache/runs``).

    >>> store = RunStore("cache/runs")  # doctest: +SKIP
    >>> run_id = store.save(record, predictions=table)  # doctest: +SKIP
    >>> store.load(run_id).accuracy  # doctest: +SKIP
    0.9
    """

    def __init__(self, root):
        self.root = Path(root)

    def save(self, record: RunRecord, *, model=None, predictions: pd.DataFrame | None = None,
             validation: pd.DataFrame | None = None) -> str:
        """Store a run (record, optional model, predictions and validation scores) atomically; its run id.

        The record is written as the JSON it reads back from (numpy numbers become plain ones) and must
        pass `RunRecord.from_json`. Predictions are written without their index.
        """
        if not isinstance(record, RunRecord):
            raise RunStoreError(f"a run record must be a RunRecord, got {type(record).__name__}; "
                                "build one with RunRecord(...) or RunRecord.from_json(...)")
        run_id = check_run_id(record.run_id)
        self._refuse_existing(run_id)
        text = to_json_text(record.to_json())
        RunRecord.from_json(json.loads(text), f"run {run_id!r}")
        try:
            with self.locked(), self.staging_dir(run_id) as tmp:
                (tmp / RECORD_FILE).write_text(text, encoding="utf-8")
                if model is not None:
                    (tmp / MODEL_FILE).write_bytes(model_bytes(model_state(model)))
                if predictions is not None:
                    (tmp / PREDICTIONS_FILE).write_text(frame_csv(predictions), encoding="utf-8")
                if validation is not None:
                    (tmp / VALIDATION_FILE).write_text(frame_csv(validation), encoding="utf-8")
                self.publish(tmp, run_id)
        except OSError as err:
            raise RunStoreError(
                f"could not write run {run_id!r} under {self.root}: {err}; check free disk space and permissions"
            ) from err
        return run_id

    def list_runs(self) -> list[RunRecord]:
        """Return the records of all complete, valid runs, newest first (see scan for the others)."""
        return self.scan()[0]

    def scan(self) -> tuple[list[RunRecord], dict[str, str]]:
        """Return (valid records newest first, {folder name: why it was skipped} for broken run folders).

        Hidden folders (staging, trash) are not runs and appear in neither. A broken run can still be deleted.
        """
        records, broken = [], {}
        for run_dir in self._run_dirs():
            try:
                records.append(self._read_record(run_dir))
            except RunStoreError as err:
                broken[run_dir.name] = str(err)
        return sorted(records, key=lambda r: (r.created, r.run_id), reverse=True), broken

    def load(self, run_id: str) -> RunRecord:
        """Return the record of run `run_id`."""
        return self._read_record(self.existing_run_dir(run_id))

    def load_predictions(self, run_id: str) -> pd.DataFrame:
        """Return the predictions table of run `run_id`."""
        return read_csv(self._artifact(run_id, PREDICTIONS_FILE))

    def load_validation(self, run_id: str) -> pd.DataFrame | None:
        """The out-of-fold scores of run `run_id`'s training images (`true`, `score_<i>`); None if it has none."""
        path = self.existing_run_dir(run_id) / VALIDATION_FILE
        return read_csv(path) if path.is_file() else None

    def load_model(self, run_id: str):
        """The stored model of run `run_id` (a validated `core.model_io.StoredModel`); a clear error without one."""
        path = self.existing_run_dir(run_id) / MODEL_FILE
        if not path.is_file():
            old = "a pickled model of an earlier version, which is never loaded" if (
                path.parent / LEGACY_MODEL_FILE).is_file() else "no model"
            raise RunStoreError(f"run {run_id!r} has {old}: it was trained by, or imported from, an earlier "
                                "version of TransferScope; train it again (or import a bundle exported by this version)")
        return read_model(path, f"the model of run {run_id!r}")

    def delete(self, run_id: str) -> None:
        """Remove run `run_id`; it disappears from list_runs at once, even if removal is interrupted."""
        with self.locked():
            run_dir = self.existing_run_dir(run_id)
            trash = self.root / f"{TEMP_PREFIX}{run_id}-deleted-{secrets.token_hex(4)}"
            os.replace(run_dir, trash)
            fsync_dir(self.root)
            shutil.rmtree(trash, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self):
        """Hold the store's lock (across processes) and clear what crashed writers left behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(self.root.parent / f".{self.root.name}.lock"):  # beside the runs, so listings stay clean
            for leftover in self.root.glob(f"{TEMP_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)
            yield

    @contextlib.contextmanager
    def staging_dir(self, run_id: str):
        """Yield a fresh hidden folder in root; whatever is left of it afterwards is removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{run_id}-", dir=self.root))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, tmp: Path, run_id: str) -> None:
        """Flush the staged files and move the staging folder to ``root/<run_id>`` in one step (lock held)."""
        for path in tmp.iterdir():
            fsync_file(path)
        fsync_dir(tmp)
        self._refuse_existing(run_id)
        try:
            os.replace(tmp, self.root / run_id)
            fsync_dir(self.root)
        except OSError as err:
            raise RunStoreError(f"could not publish run {run_id!r} under {self.root}: {err}") from err

    def _refuse_existing(self, run_id: str) -> None:
        if (self.root / run_id).exists():
            raise RunStoreError(f"run {run_id!r} already exists in {self.root}; use a new id from new_run_id()")

    def _run_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def existing_run_dir(self, run_id: str) -> Path:
        run_dir = self.root / check_run_id(run_id)
        if not run_dir.is_dir():
            raise RunStoreError(f"no run {run_id!r} in {self.root}; pick one from list_runs()")
        return run_dir

    def _artifact(self, run_id: str, name: str) -> Path:
        path = self.existing_run_dir(run_id) / name
        if not path.is_file():
            raise RunStoreError(f"run {run_id!r} has no {name}; it was saved or imported without it")
        return path

    @staticmethod
    def _read_record(run_dir: Path) -> RunRecord:
        try:
            raw = (run_dir / RECORD_FILE).read_bytes()
        except OSError as err:
            raise RunStoreError(f"run {run_dir.name!r} has no readable {RECORD_FILE} ({err}); delete it") from err
        return parse_record(raw, run_dir.name)

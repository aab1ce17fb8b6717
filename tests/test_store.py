"""Run store (core.store): atomic saves, listing, loading, deleting; safe bundle export/import (core.bundles);
the atomic writers under them (core.storage)."""

import errno
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import builders
import core.bundles as bundles
from core.bundles import export_bundle, export_bundle_bytes, import_bundle
from core.errors import RunStoreError, StorageError
from core.records import SCHEMA_VERSION, RunRecord
from core.storage import atomic_file, atomic_write_json
from core.store import RunStore, check_feature_key, check_run_id, new_run_id

ROOT = Path(__file__).resolve().parents[1]
UNSAFE_IDS = ["../evil", "..", "a/b", "/etc", "", ".tmp-x", "a\\b", "run id", None]


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs")


def make_record(approach="svm", **extra) -> RunRecord:
    """A complete two-class run (builders.record_json) with a fresh run id."""
    return builders.make_record(run_id=new_run_id(approach, "balanced"), approach=approach, **extra)


def make_predictions(paths=("data/a.png", "data/b.png", "data/c.png")):
    """Predictions of three test images, by default inside the records' dataset folder `data`."""
    return pd.DataFrame({"path": list(paths), "y_true": [0, 1, 1], "y_pred": [0, 1, 0]})


def tiny_model():
    """A fitted two-class logistic probe (the records have two classes): what the store keeps as arrays."""
    from core.classifiers import LogisticProbe

    X = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1]], dtype=np.float32)
    return LogisticProbe().fit(X, np.array([0, 1, 0, 1]))


def same_arrays(a, b) -> bool:
    return a.kind == b.kind and a.arrays.keys() == b.arrays.keys() and all(
        np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)


def entries(root):
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def write_zip(path, members: dict[str, bytes], manifest_runs=None):
    """Write a hand-made bundle; `manifest_runs=None` leaves the manifest out."""
    with zipfile.ZipFile(path, "w") as zf:
        if manifest_runs is not None:
            zf.writestr("manifest.json", json.dumps({"schema_version": SCHEMA_VERSION, "runs": manifest_runs}))
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def record_bytes(run_id, schema_version=SCHEMA_VERSION, **changes):
    record = {**builders.record_json(run_id), "schema_version": schema_version, "created": "2026-01-01T00:00:00+00:00",
              **changes}
    return json.dumps({k: v for k, v in record.items() if v is not None}).encode()


def test_new_run_id_is_readable_and_safe():
    run_id = new_run_id("Linear Head", "custom.json")
    assert re.fullmatch(r"\d{8}-\d{6}-linear-head-custom-json-[0-9a-f]{8}", run_id)
    assert check_run_id(run_id) == run_id
    assert len({new_run_id("svm", "none") for _ in range(8)}) > 1


def test_atomic_write_json_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "meta.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert entries(target.parent) == ["meta.json"]


def test_atomic_file_keeps_old_content_when_writer_fails(tmp_path):
    target = tmp_path / "meta.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(ValueError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise ValueError("writer crashed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert entries(tmp_path) == ["meta.json"]


@pytest.mark.parametrize("make_target,advice", [
    (lambda tmp: tmp / "a-folder", "a folder is in the way"),
    (lambda tmp: tmp / "a-file" / "meta.json", "a file is in the way"),
])
def test_atomic_write_in_the_way_is_a_storage_error_naming_the_path(tmp_path, make_target, advice):
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StorageError, match=re.escape(f"{make_target(tmp_path)}: {advice}")):
        atomic_write_json(make_target(tmp_path), {"a": 1}, "results file")
    assert sorted(entries(tmp_path)) == ["a-file", "a-folder"] and entries(tmp_path / "a-folder") == []


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "meta.json"
    atomic_write_json(target, {"a": 1})

    def full(self, data):
        Path.write_text(self, "half")  # part of it made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(StorageError, match="meta.json: the disk is full"):
        atomic_write_json(target, {"a": 2}, "feature cache entry")
    assert json.loads(target.read_text()) == {"a": 1} and entries(tmp_path) == ["meta.json"]


def test_save_list_load_roundtrip(store):
    record, predictions, model = make_record(), make_predictions(), tiny_model()
    run_id = store.save(record, model=model, predictions=predictions)
    loaded = store.load(run_id)
    assert loaded == record and loaded.schema_version == SCHEMA_VERSION
    assert loaded.created.endswith("+00:00")
    assert store.list_runs() == [loaded]
    pd.testing.assert_frame_equal(store.load_predictions(run_id), predictions)
    from core.model_io import model_state

    assert same_arrays(store.load_model(run_id), model_state(model))
    assert entries(store.root) == [run_id]


def test_numpy_values_are_stored_as_plain_json(store):
    run_id = store.save(make_record(accuracy=np.float64(0.5), confusion_matrix=np.array([[1, 0], [2, 3]])))
    loaded = store.load(run_id)
    assert loaded.accuracy == 0.5 and type(loaded.accuracy) is float
    assert loaded.confusion_matrix == [[1, 0], [2, 3]]


def test_list_runs_newest_first(store):
    old = store.save(make_record(created="2026-01-01T00:00:00+00:00"))
    new = store.save(make_record(created="2026-06-01T00:00:00+00:00"))
    assert [r.run_id for r in store.list_runs()] == [new, old]


def test_save_refuses_existing_or_missing_run_id(store):
    record = make_record()
    store.save(record)
    with pytest.raises(RunStoreError, match="already exists"):
        store.save(record)
    with pytest.raises(RunStoreError, match="must be a RunRecord, got dict"):
        store.save({"approach": "svm"})


def test_failed_save_leaves_no_run_and_no_temp_dir(store, monkeypatch):
    write_bytes = Path.write_bytes

    def broken_write(path, data):
        write_bytes(path, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", broken_write)
    with pytest.raises(RunStoreError, match="disk full"):
        store.save(make_record(), model=tiny_model(), predictions=make_predictions())
    assert entries(store.root) == []
    assert store.list_runs() == []


def test_list_runs_skips_corrupt_and_partial_dirs(store):
    good = store.save(make_record())
    (store.root / "20260101-000000-bad-json").mkdir()
    (store.root / "20260101-000000-bad-json" / "record.json").write_text("{not json")
    (store.root / "20260101-000000-no-record").mkdir()
    (store.root / "20260101-000000-wrong-id").mkdir()
    (store.root / "20260101-000000-wrong-id" / "record.json").write_text(record_bytes("other").decode())
    staging = store.root / ".tmp-20260101-000000-x-abc"
    staging.mkdir()
    (staging / "record.json").write_bytes(record_bytes(staging.name))
    (store.root / "stray.txt").write_text("not a run")
    assert [r.run_id for r in store.list_runs()] == [good]
    with pytest.raises(RunStoreError, match="not valid JSON"):
        store.load("20260101-000000-bad-json")


def test_unknown_run_id_names_it_and_points_to_list_runs(store):
    with pytest.raises(RunStoreError, match=r"'no-such-run'.*list_runs"):
        store.load("no-such-run")


@pytest.mark.parametrize("run_id", UNSAFE_IDS)
@pytest.mark.parametrize("method", ["load", "load_predictions", "load_model", "delete"])
def test_unsafe_run_ids_are_rejected(store, tmp_path, run_id, method):
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "record.json").write_bytes(record_bytes("../evil"))
    with pytest.raises(RunStoreError, match="not valid"):
        getattr(store, method)(run_id)
    assert (tmp_path / "evil" / "record.json").exists()


def test_save_rejects_unsafe_run_id(store, tmp_path):
    with pytest.raises(RunStoreError, match="not valid"):
        store.save(builders.make_record(run_id="../evil"))
    assert entries(tmp_path) == []


def test_missing_predictions_are_reported(store):
    run_id = store.save(make_record())
    with pytest.raises(RunStoreError, match="no predictions.csv"):
        store.load_predictions(run_id)


def test_delete_removes_run(store):
    run_id = store.save(make_record(), predictions=make_predictions())
    store.delete(run_id)
    assert store.list_runs() == []
    assert entries(store.root) == []
    with pytest.raises(RunStoreError, match="list_runs"):
        store.load(run_id)


def test_export_import_roundtrip(store, tmp_path):
    first = store.save(make_record("svm"), model=tiny_model(), predictions=make_predictions())
    second = store.save(make_record("head"))
    bundle = export_bundle(store, [first, second], tmp_path / "out" / "bundle.zip")
    with zipfile.ZipFile(bundle) as zf:
        assert json.loads(zf.read("manifest.json")) == {"schema_version": SCHEMA_VERSION, "runs": [first, second]}
    other = RunStore(tmp_path / "other")
    assert import_bundle(other, bundle) == [first, second]
    assert other.list_runs() == store.list_runs()
    pd.testing.assert_frame_equal(other.load_predictions(first), make_predictions())
    with zipfile.ZipFile(bundle) as zf:
        assert not [name for name in zf.namelist() if name.endswith("model.joblib")], "a pickle left the machine"
        assert f"{first}/model.safetensors" in zf.namelist(), "the model travels as arrays"
    assert same_arrays(other.load_model(first), store.load_model(first))
    with pytest.raises(RunStoreError, match="has no model.*earlier version"):
        other.load_model(second)
    assert import_bundle(other, bundle) == []
    assert entries(tmp_path / "out") == ["bundle.zip"]


def test_import_accepts_file_object(store, tmp_path):
    run_id = store.save(make_record())
    bundle = export_bundle(store, [run_id], tmp_path / "bundle.zip")
    other = RunStore(tmp_path / "other")
    with open(bundle, "rb") as f:
        assert import_bundle(other, f) == [run_id]


def test_export_bundle_bytes_roundtrip_leaves_no_temp_file(store, tmp_path, monkeypatch):
    monkeypatch.setattr(bundles.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    run_id = store.save(make_record(), predictions=make_predictions())
    data = export_bundle_bytes(store, [run_id])
    assert entries(tmp_path / "tmp") == []
    other = RunStore(tmp_path / "other")
    assert import_bundle(other, io.BytesIO(data)) == [run_id]
    assert other.load(run_id) == store.load(run_id)
    pd.testing.assert_frame_equal(other.load_predictions(run_id), store.load_predictions(run_id))
    with pytest.raises(RunStoreError, match="no run 'missing-run'"):
        export_bundle_bytes(store, ["missing-run"])
    assert entries(tmp_path / "tmp") == []


def test_export_unknown_run_fails_without_output(store, tmp_path):
    with pytest.raises(RunStoreError, match="list_runs"):
        export_bundle(store, ["missing-run"], tmp_path / "bundle.zip")
    assert not (tmp_path / "bundle.zip").exists()


GOOD = "20260101-000000-svm-none-abcd"
BAD_BUNDLES = {
    "parent dir": ({f"{GOOD}/record.json": record_bytes(GOOD), "../evil": b"x"}, [GOOD], "not valid"),
    "absolute": ({f"{GOOD}/record.json": record_bytes(GOOD), "/tmp/record.json": b"x"}, [GOOD], "absolute"),
    "unknown file": ({f"{GOOD}/record.json": record_bytes(GOOD), f"{GOOD}/run.py": b"x"}, [GOOD], "not allowed"),
    "no manifest": ({f"{GOOD}/record.json": record_bytes(GOOD)}, None, "no manifest.json"),
    "unlisted run": ({f"{GOOD}/record.json": record_bytes(GOOD), "other/record.json": record_bytes("other")},
                     [GOOD], "not listed"),
    "missing record": ({f"{GOOD}/predictions.csv": b"a\n1\n"}, [GOOD], "no .*record.json"),
    "schema version": ({f"{GOOD}/record.json": record_bytes(GOOD, schema_version=99)}, [GOOD], "schema_version 99"),
    "bad record": ({f"{GOOD}/record.json": b"{oops"}, [GOOD], "not valid JSON"),
}


@pytest.mark.parametrize("case", BAD_BUNDLES, ids=list(BAD_BUNDLES))
def test_import_rejects_bad_bundle_and_writes_nothing(store, tmp_path, case):
    members, manifest_runs, message = BAD_BUNDLES[case]
    bundle = write_zip(tmp_path / "bundle.zip", members, manifest_runs)
    with pytest.raises(RunStoreError, match=message):
        import_bundle(store, bundle)
    assert entries(store.root) == []
    assert entries(tmp_path) == ["bundle.zip"]


def test_import_rejects_symlink_member(store, tmp_path):
    bundle = tmp_path / "bundle.zip"
    link = zipfile.ZipInfo(f"{GOOD}/predictions.csv")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"schema_version": SCHEMA_VERSION, "runs": [GOOD]}))
        zf.writestr(f"{GOOD}/record.json", record_bytes(GOOD))
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(RunStoreError, match="symlink"):
        import_bundle(store, bundle)
    assert entries(store.root) == []


def test_import_rejects_oversized_bundle(store, tmp_path, monkeypatch):
    bundle = write_zip(tmp_path / "bundle.zip", {f"{GOOD}/record.json": record_bytes(GOOD)}, [GOOD])
    monkeypatch.setattr(bundles, "MAX_BUNDLE_BYTES", 10)
    with pytest.raises(RunStoreError, match="limit"):
        import_bundle(store, bundle)
    assert entries(store.root) == []


def test_import_rejects_non_zip(store, tmp_path):
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(b"this is not a zip")
    with pytest.raises(RunStoreError, match="not a readable zip"):
        import_bundle(store, bundle)
    assert entries(store.root) == []


# ---- records are complete -----------------------------------------------------------------------

BROKEN_RECORDS = {
    "no approach": ({"approach": None}, "lacks 'approach'"),
    "bad created": ({"created": "yesterday"}, "not an ISO date"),
    "accuracy text": ({"accuracy": "0.9"}, "'accuracy' = '0.9', expected int or float"),
    "accuracy nan": ({"accuracy": float("nan")}, "'accuracy'"),
    "confusion shape": ({"confusion_matrix": [[1, 0]]}, "confusion_matrix must list one list per class"),
    "per-class row": ({"per_class": [{"class": "cat"}, {"class": "dog"}]}, "per_class row lacks 'precision'"),
    "dataset classes": ({"dataset": {"root": "d", "classes": "cat", "train_counts": [], "test_counts": []}},
                        "'classes' = 'cat', expected list"),
}


@pytest.mark.parametrize("case", BROKEN_RECORDS, ids=list(BROKEN_RECORDS))
def test_import_refuses_an_incomplete_record_and_writes_nothing(store, tmp_path, case):
    changes, message = BROKEN_RECORDS[case]
    good = "20260101-000000-head-none-beef"
    bundle = write_zip(tmp_path / "bundle.zip", {f"{GOOD}/record.json": record_bytes(GOOD, **changes),
                                                  f"{good}/record.json": record_bytes(good)}, [good, GOOD])
    with pytest.raises(RunStoreError, match=re.escape(message)):
        import_bundle(store, bundle)
    assert entries(store.root) == []


@pytest.mark.parametrize("case", BROKEN_RECORDS, ids=list(BROKEN_RECORDS))
def test_save_refuses_an_incomplete_record(store, case):
    changes, message = BROKEN_RECORDS[case]
    record = {k: v for k, v in {**make_record().to_json(), **changes}.items() if v is not None}
    with pytest.raises(RunStoreError, match=re.escape(message)):
        store.save(RunRecord.from_json(record))
    assert entries(store.root) == []


def test_scan_reports_broken_runs_which_stay_deletable(store):
    good = store.save(make_record())
    broken = store.save(make_record("head"))
    record = json.loads((store.root / broken / "record.json").read_text())
    del record["approach"]
    (store.root / broken / "record.json").write_text(json.dumps(record))
    (store.root / "20260101-000000-no-record").mkdir()
    records, problems = store.scan()
    assert [r.run_id for r in records] == [good] == [r.run_id for r in store.list_runs()]
    assert set(problems) == {broken, "20260101-000000-no-record"}
    assert "lacks 'approach'" in problems[broken] and "no readable record.json" in problems["20260101-000000-no-record"]
    with pytest.raises(RunStoreError, match="lacks 'approach'"):
        store.load(broken)
    store.delete(broken)
    store.delete("20260101-000000-no-record")
    assert store.scan() == (records, {})


# ---- what an imported record may make pages do ------------------------------------------------------

def predictions_csv(*paths) -> bytes:
    return make_predictions(paths).to_csv(index=False).encode()


HOSTILE_BUNDLES = {
    "markdown approach": ({"approach": "[svm](http://evil.example)"}, None, "approach '[svm](http://evil.example)'"),
    "feature key path": ({"feature_key": "../../../../home/owner/x"}, None, "feature key '../../../../home"),
    "created in the future": ({"created": "2099-01-01T00:00:00+00:00"}, None, "in the future"),
    "naive future date": ({"created": "2099-01-01T00:00:00"}, None, "in the future"),
    "absolute path elsewhere": ({}, predictions_csv("data/a.png", "/home/owner/.ssh/id_rsa", "data/c.png"),
                                "test image '/home/owner/.ssh/id_rsa', outside its dataset folder 'data'"),
    "climbs out": ({}, predictions_csv("data/a.png", "data/../secret.png", "data/c.png"), "'data/../secret.png'"),
    "sibling folder": ({}, predictions_csv("data-other/a.png", "data/b.png", "data/c.png"), "'data-other/a.png'"),
    "no path column": ({}, b"true,pred\n0,1\n", "without a readable 'path' column"),
}


@pytest.mark.parametrize("case", HOSTILE_BUNDLES, ids=list(HOSTILE_BUNDLES))
def test_import_refuses_what_no_transferscope_exports_and_writes_nothing(store, tmp_path, case):
    """A bundle that passed every earlier check could still link out from Compare, become every page's
    default run, read a file outside the cache (feature map) or probe the owner's disk (image paths)."""
    changes, predictions, message = HOSTILE_BUNDLES[case]
    members = {f"{GOOD}/record.json": record_bytes(GOOD, **changes)}
    if predictions is not None:
        members[f"{GOOD}/predictions.csv"] = predictions
    with pytest.raises(RunStoreError, match=re.escape(message)):
        import_bundle(store, write_zip(tmp_path / "bundle.zip", members, [GOOD]))
    assert entries(store.root) == []


def test_import_takes_a_recent_run_with_a_hex_key_and_paths_in_its_dataset(store, tmp_path):
    created = (datetime.now(timezone.utc) + timedelta(minutes=2)).isoformat()  # a clock a little ahead is fine
    members = {f"{GOOD}/record.json": record_bytes(GOOD, created=created, feature_key="0123456789abcdef0123"),
               f"{GOOD}/predictions.csv": predictions_csv("data/a.png", "data/test/b.png", "data/c.png")}
    assert import_bundle(store, write_zip(tmp_path / "bundle.zip", members, [GOOD])) == [GOOD]


@pytest.mark.parametrize("key", ["0123456789abcdef", "f" * 64])
def test_check_feature_key_takes_hex_keys(key):
    assert check_feature_key(key) == key


@pytest.mark.parametrize("key", ["../maps/x", "ABCDEF0123456789", "0123", "", None, 12])
def test_check_feature_key_refuses_anything_else(key):
    with pytest.raises(RunStoreError, match="16-64 lowercase hex digits"):
        check_feature_key(key)


# ---- bundles never carry pickles; zip bombs ----------------------------------------------------------

def test_import_refuses_a_pickled_model(store, tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("the sender's code ran",))

    import pickle

    bundle = write_zip(tmp_path / "bundle.zip", {f"{GOOD}/record.json": record_bytes(GOOD),
                                                  f"{GOOD}/model.joblib": pickle.dumps(Boom())}, [GOOD])
    with pytest.raises(RunStoreError, match="pickled model.*runs the sender's code"):
        import_bundle(store, bundle)
    assert entries(store.root) == []


def test_import_checks_a_model_before_writing_anything(store, tmp_path):
    from core.model_io import model_bytes, model_state

    good = model_bytes(model_state(tiny_model()))
    for data, message in ((b"\x00" * 64, "not a TransferScope model file"),
                          (good.replace(b'\\"n_classes\\": 2', b'\\"n_classes\\": 3'), "3 classes")):
        bundle = write_zip(tmp_path / "bundle.zip", {f"{GOOD}/record.json": record_bytes(GOOD),
                                                      f"{GOOD}/model.safetensors": data}, [GOOD])
        with pytest.raises(RunStoreError, match=message):
            import_bundle(store, bundle)
        assert entries(store.root) == []


def test_import_refuses_an_oversized_record(store, tmp_path):
    padding = np.random.default_rng(0).bytes(3 * 1024**2).hex()  # 6 MB that does not compress
    bundle = write_zip(tmp_path / "bundle.zip", {f"{GOOD}/record.json": record_bytes(GOOD, notes=padding)}, [GOOD])
    with pytest.raises(RunStoreError, match=r"record.json' unpacks to \d+ bytes, over the 5242880-byte limit"):
        import_bundle(store, bundle)
    assert entries(store.root) == []


def test_import_refuses_a_member_that_inflates_like_a_zip_bomb(store, tmp_path):
    bundle = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps({"schema_version": SCHEMA_VERSION, "runs": [GOOD]}))
        zf.writestr(f"{GOOD}/record.json", record_bytes(GOOD))
        zf.writestr(f"{GOOD}/predictions.csv", b"path,true,pred\n" + b"0" * 50 * 1024**2)
    assert bundle.stat().st_size < 1024**2
    with pytest.raises(RunStoreError, match="inflates .*-fold, over the 100-fold limit"):
        import_bundle(store, bundle)
    assert entries(store.root) == []


# ---- crashes and other processes ---------------------------------------------------------------------

def test_importing_the_store_leaves_the_umask_alone():
    probe = ("import os\ncalls = []\nreal = os.umask\nos.umask = lambda mask: calls.append(mask) or real(mask)\n"
             "import core.store, core.bundles\nprint(calls)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_atomic_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "meta.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "meta.json").stat().st_mode) == 0o640


def test_publishing_flushes_the_store_folder(store, monkeypatch):
    flushed = []
    real_fsync = os.fsync

    def spy(fd):
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    run_id = store.save(make_record(), predictions=make_predictions())
    assert str(store.root / run_id / "predictions.csv") not in flushed  # flushed before the rename, as staging
    assert flushed[-1] == str(store.root), "the rename into the store must be flushed last"
    flushed.clear()
    store.delete(run_id)
    assert flushed == [str(store.root)]


def test_next_writer_removes_what_a_crashed_one_left(store):
    store.save(make_record())
    for leftover in (".tmp-20260101-000000-svm-none-ab12-x1y2", ".tmp-old-run-deleted-0a0b"):
        (store.root / leftover).mkdir()
        (store.root / leftover / "record.json").write_text("{half")
    assert len(store.list_runs()) == 1 and store.scan()[1] == {}  # hidden leftovers are no runs
    store.save(make_record())
    assert not [name for name in entries(store.root) if name.startswith(".tmp-")]


CRASH_IN_SAVE = """
import pathlib, sys, time
sys.path.insert(0, {tests!r})
from test_store import make_record, make_predictions
from core.store import RunStore
write_text = pathlib.Path.write_text
def hang(self, text, **kwargs):
    if self.name != "predictions.csv":
        return write_text(self, text, **kwargs)
    write_text(self, "path,y_true\\nhalf")
    open({marker!r}, "w").close()
    time.sleep(60)
pathlib.Path.write_text = hang
RunStore({root!r}).save(make_record(), predictions=make_predictions())
"""


@pytest.mark.slow
def test_kill_during_save_leaves_a_loadable_store(store, tmp_path):
    kept = store.save(make_record(), predictions=make_predictions())
    marker = tmp_path / "writing"
    script = CRASH_IN_SAVE.format(tests=str(ROOT / "tests"), marker=str(marker), root=str(store.root))
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        wait_until(marker.exists, child)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert [name for name in entries(store.root) if name.startswith(".tmp-")], "the crash should leave staging"
    records, broken = store.scan()
    assert [r.run_id for r in records] == [kept] and broken == {}
    pd.testing.assert_frame_equal(store.load_predictions(kept), make_predictions())
    other = RunStore(store.root).save(make_record())  # the next writer, e.g. another process, cleans up
    assert entries(store.root) == sorted([kept, other])


CONCURRENT_WRITER = """
import sys, time
sys.path.insert(0, {tests!r})
from test_store import make_record, make_predictions
from core.store import RunStore
from core.bundles import import_bundle
store = RunStore({root!r})
while not __import__("os").path.exists({go!r}):
    time.sleep(0.01)
imported = import_bundle(store, {bundle!r})  # both processes import the same runs at once
saved = [store.save(make_record(), predictions=make_predictions()) for _ in range(20)]
print(" ".join(saved))
"""


@pytest.mark.slow
def test_two_processes_saving_and_importing_at_once_lose_nothing(tmp_path):
    source = RunStore(tmp_path / "source")
    shared = [source.save(make_record(), predictions=make_predictions()) for _ in range(60)]
    bundle = export_bundle(source, shared, tmp_path / "bundle.zip")
    target, go = tmp_path / "target", tmp_path / "go"
    script = CONCURRENT_WRITER.format(tests=str(ROOT / "tests"), root=str(target), go=str(go), bundle=str(bundle))
    children = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
                for _ in range(2)]
    go.touch()
    outputs = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    saved = [run_id for out, _ in outputs for run_id in out.split()]
    assert len(saved) == 40
    records, broken = RunStore(target).scan()
    assert broken == {} and sorted(r.run_id for r in records) == sorted(saved + shared)
    for run_id in shared:
        pd.testing.assert_frame_equal(RunStore(target).load_predictions(run_id), make_predictions())
    assert not [name for name in entries(target) if name.startswith(".")]


def wait_until(predicate, child, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert child.poll() is None, f"the child exited early with {child.returncode}"
        assert time.monotonic() < deadline, "the child never got there"
        time.sleep(0.02)


@pytest.mark.slow
def test_kill_during_extraction_leaves_a_loadable_cache(demo_dataset, demo_features, image_size, tmp_path):
    """`python -m core extract` killed after its first shard: what it wrote loads, and the next run completes it."""
    from core.features import extract_features

    cache = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-m", "core", "extract", "--data", demo_dataset.root, "--cache-dir",
                              str(cache), "--image-size", str(image_size), "--workers", "0", "--device", "cpu"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: list(cache.glob("features/*/shard-*.npz")), child, timeout_s=300)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    shards = list(cache.glob("features/*/shard-*.npz"))
    assert 0 < len(shards) < 3, "killed after the first of the demo's 3 shards"
    for shard in shards:  # every visible shard is whole
        with np.load(shard) as data:
            assert len(data["indices"]) == len(data["X"]) > 0
    resumed = extract_features(demo_dataset, "efficientnet_lite0", image_size=image_size, cache_dir=cache,
                               device="cpu", workers=0)
    np.testing.assert_allclose(resumed.X_train, demo_features.X_train, atol=1e-4)
    np.testing.assert_allclose(resumed.X_test, demo_features.X_test, atol=1e-4)

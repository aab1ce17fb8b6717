"""Cached features as Parquet files a distributed engine reads directly (core.parquet_export, `extract --parquet`)."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import core.parquet_export
from core.errors import StorageError
from core.parquet_export import MANIFEST, feature_columns, write_parquet
from test_cli import FAST, assert_usage_error, run_main


def test_parquet_parts_hold_every_image_with_its_split_label_and_features(tmp_path, monkeypatch):
    from bench.scale import synthetic_problem

    _, dataset, features = synthetic_problem(40, 12, 6, 4, 5.0)
    monkeypatch.setattr(core.parquet_export, "PARQUET_ROWS", 25)
    parts = write_parquet(features, dataset, tmp_path / "pq")
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    table = pq.read_table(tmp_path / "pq").to_pandas()  # the folder as one dataset, as Spark or Dask reads it
    n_train = len(features.X_train)
    assert len(table) == n_train + len(features.X_test)
    assert table["path"].tolist() == [s.path for s in dataset.samples]
    assert (table["split"] == "train").sum() == n_train and table["split"].iloc[n_train] == "test"
    assert table["label"].tolist() == [s.label for s in dataset.samples]
    assert table["class"].tolist() == [dataset.classes[s.label] for s in dataset.samples]
    X = table[feature_columns(6)].to_numpy()
    assert X.dtype == np.float32
    np.testing.assert_array_equal(X, np.concatenate([features.X_train, features.X_test]))
    manifest = json.loads((tmp_path / "pq" / MANIFEST).read_text())
    assert manifest["classes"] == dataset.classes and manifest["parts"] == 3 and manifest["rows"] == len(table)
    monkeypatch.setattr(core.parquet_export, "PARQUET_ROWS", 100)
    assert len(write_parquet(features, dataset, tmp_path / "pq")) == 1  # an earlier export is replaced whole
    assert len(list((tmp_path / "pq").glob("part-*.parquet"))) == 1


def test_a_folder_with_other_files_is_refused(tmp_path):
    from bench.scale import synthetic_problem

    _, dataset, features = synthetic_problem(40, 12, 6, 4, 5.0)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StorageError, match="not empty and holds no earlier export"):
        write_parquet(features, dataset, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_extract_writes_parquet_for_a_distributed_engine(tiny_dir, tmp_path):
    out = tmp_path / "parquet"
    code, stdout, stderr = run_main(["extract", "--data", tiny_dir, "--cache-dir", tmp_path / "cache", "--parquet",
                                     out, *FAST])
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info["parquet_parts"] == 1
    table = pq.read_table(out)
    assert table.num_rows == info["n"] == 35 and len(table.column_names) == 4 + info["feature_dim"]


def test_extract_refuses_a_parquet_path_that_is_a_file_before_extracting(tiny_dir, tmp_path):
    (tmp_path / "taken").write_text("x")
    assert_usage_error(*run_main(["extract", "--data", tiny_dir, "--cache-dir", tmp_path / "cache", "--parquet",
                                  tmp_path / "taken", *FAST]), "is a file, not a folder")
    assert not (tmp_path / "cache" / "features").exists()

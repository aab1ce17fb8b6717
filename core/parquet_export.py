"""Cached features as Parquet files that distributed engines read directly: past one machine, the classifiers
on features run in Spark MLlib, Dask-ML or cuML on these (docs/performance.md, "Past one machine").

One row per image: `path`, `split` ("train"/"test"), `label` (class index), `class`, then one float32 column
per feature (`f0000`, ...): Spark's `VectorAssembler`, Dask's `to_dask_array` and cuDF take columns as they are.
Files `part-00000.parquet`, ... hold at most PARQUET_ROWS rows each (each written atomically), and
`_features.json` names the classes, the feature cache key, the backbone and the columns.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import StorageError
from core.storage import atomic_file, atomic_write_json, check_output_dir

PARQUET_ROWS = 100_000
MANIFEST = "_features.json"


def feature_columns(n_features: int) -> list[str]:
    return [f"f{i:04d}" for i in range(n_features)]


def write_parquet(features, dataset, out_dir) -> list[Path]:
    """Write a FeatureSet of `dataset` (train rows, then test rows) to `out_dir`; the part files written.

    Refuses a non-empty folder that is not an earlier export; an earlier export's parts are replaced.

    >>> write_parquet(load_features(config, dataset), dataset, "features-parquet")  # doctest: +SKIP
    [PosixPath('features-parquet/part-00000.parquet')]
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = check_output_dir(out_dir, "Parquet folder (--parquet)")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise StorageError(f"Parquet folder (--parquet) {out} is not empty and holds no earlier export "
                           f"({MANIFEST}); give a new or empty folder")
    for old in out.glob("part-*.parquet"):
        old.unlink()
    X = np.concatenate([features.X_train, features.X_test])
    samples = dataset.samples
    columns = feature_columns(X.shape[1])
    parts = []
    for start in range(0, len(X), PARQUET_ROWS):
        rows = range(start, min(start + PARQUET_ROWS, len(X)))
        table = pa.table({"path": [samples[i].path for i in rows],
                          "split": ["train" if i < len(features.X_train) else "test" for i in rows],
                          "label": pa.array([samples[i].label for i in rows], pa.int32()),
                          "class": [dataset.classes[samples[i].label] for i in rows],
                          **{name: X[rows.start:rows.stop, j] for j, name in enumerate(columns)}})
        path = out / f"part-{len(parts):05d}.parquet"
        with atomic_file(path, "Parquet part") as tmp:
            pq.write_table(table, tmp)
        parts.append(path)
    atomic_write_json(out / MANIFEST, {"classes": dataset.classes, "feature_key": features.key,
                                       "backbone": features.backbone, "rows": len(X), "parts": len(parts),
                                       "columns": ["path", "split", "label", "class", *columns]}, "Parquet manifest")
    return parts

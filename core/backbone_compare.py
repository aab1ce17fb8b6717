"""Which backbone for these images: runs that differ only in backbone, side by side.

Per backbone: the test score with its 95% bootstrap interval, the extraction time per image (the
one-off cost of its features) and the feature size, the table a user reads to choose a backbone.
"""
from __future__ import annotations

import json
import math

import pandas as pd

from core.errors import ConfigError
from core.records import RunRecord
from core.stats import METRICS

# config entries that say nothing about how one run was made: the experiment's lists of approaches and
# remedies (each run records its own; class_weights in records before remedies), where files live, and the backbone itself (what is compared)
NOT_COMPARED = ("backbone", "approaches", "remedies", "class_weights", "seeds", "data", "cache_dir", "workers")


def _configuration(record: RunRecord) -> str:
    """Everything about a run except its backbone: dataset files, device, approach, weights, seed, settings."""
    dataset = record.dataset
    settings = {k: v for k, v in (record.config or {}).items() if k not in NOT_COMPARED}
    return json.dumps([dataset.content_fingerprint or dataset.fingerprint, record.device, record.approach,
                       record.class_weight, record.class_weights, record.tau, record.seed, settings],
                      sort_keys=True, default=str)


def _backbone_row(record: RunRecord, metric: str) -> dict:
    dataset = record.dataset
    n_images = sum(dataset.train_counts) + sum(dataset.test_counts)
    extract_s = record.extract_seconds or 0.0
    low, high = record.interval(metric) or (math.nan, math.nan)
    return {"backbone": record.backbone_name, "score": record.score(metric), "low": low, "high": high,
            "extract s/image": extract_s / n_images if extract_s and n_images else math.nan,
            "features": (record.backbone or {}).get("feature_dim"), "run_id": record.run_id}


def backbone_comparison(records: list[RunRecord], metric: str = "macro_f1") -> list[dict]:
    """Groups of runs that differ only in backbone (two backbones or more), one table row per backbone.

    Each group: `{"label": "head · balanced · seed 0 (3 backbones)", "table": DataFrame}` with columns
    backbone, score (`metric` on the test set), low/high (its 95% bootstrap interval), extract s/image
    (NaN for fine-tune runs, which extract nothing), features (size) and run_id, best score first.
    When one configuration ran twice with one backbone, the first record counts (the newest, as
    `RunStore.list_runs` orders them). Groups with the most backbones come first.

    >>> backbone_comparison([lite0_run, lite2_run])[0]["table"][["backbone", "score"]].values.tolist()  # doctest: +SKIP
    [['efficientnet_lite2', 0.9], ['efficientnet_lite0', 0.8]]
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    groups: dict[str, tuple[RunRecord, dict[str, dict]]] = {}
    for record in records:
        row = _backbone_row(record, metric)
        groups.setdefault(_configuration(record), (record, {}))[1].setdefault(row["backbone"], row)
    compared = sorted((group for group in groups.values() if len(group[1]) > 1), key=lambda group: -len(group[1]))
    return [{"label": _label(first, len(rows)),
             "table": pd.DataFrame(list(rows.values())).sort_values("score", ascending=False, ignore_index=True)}
            for first, rows in compared]


def _label(record: RunRecord, n_backbones: int) -> str:
    return (f"{record.approach} · {record.class_weight} · seed {'?' if record.seed is None else record.seed} "
            f"({n_backbones} backbones)")

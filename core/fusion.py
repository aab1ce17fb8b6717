"""Feature fusion: a backbone named `A+B` is the concatenation of its parts' features.

Each part is extracted and cached on its own (core.features), so a part extracted before is a cache hit.
Each part is standardised with its own training-row statistics (zero mean, unit variance per column;
test rows never enter them), then the parts are concatenated in the order named. The fused features are
cheap to rebuild from the cached parts, so they are not stored; their key covers the parts' keys and the
train/test split the standardisation was fit on.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np

from core.backbones import FUSION_SEPARATOR, backbone_parts, is_fused
from core.data import Dataset
from core.features import FeatureSet, extract_features

FUSION_VERSION = 1  # bump when the standardisation or the concatenation changes


@dataclass
class FusedFeatureSet(FeatureSet):
    """A FeatureSet of concatenated, standardised parts; `parts` are the parts' own (raw) feature sets."""

    parts: list[FeatureSet] = field(default_factory=list)


def standardise(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both blocks standardised with the training rows' per-column mean and deviation (constant columns: 1)."""
    mean = X_train.mean(axis=0)
    scale = X_train.std(axis=0)
    scale[scale == 0] = 1.0
    return ((X_train - mean) / scale).astype(np.float32), ((X_test - mean) / scale).astype(np.float32)


def fused_key(dataset: Dataset, parts: list[FeatureSet]) -> str:
    """Hash of the parts' cache keys and the split (the standardisation depends on the training rows)."""
    fields = {"fusion": FUSION_VERSION, "parts": [part.key for part in parts], "split": dataset.fingerprint}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def describe_fusion(name: str, parts: list[FeatureSet]) -> dict:
    """JSON-ready identity of a fused backbone: its name, total feature size and each part's identity."""
    info = [part.backbone for part in parts]
    return {"name": name, "weights": FUSION_SEPARATOR.join(p["weights"] for p in info), "pool": info[0]["pool"],
            "feature_dim": sum(p["feature_dim"] for p in info), "dtype": info[0]["dtype"],
            "runtime": info[0]["runtime"], "fusion": FUSION_VERSION, "parts": info}


def extract_fused(dataset: Dataset, backbone: str, *, progress=None, **options) -> FusedFeatureSet:
    """Features of every part of `backbone` (`A+B`), each cached, standardised on train rows, concatenated.

    `options` are `extract_features`' keyword arguments; each part uses its own native image size
    unless `image_size` is given.

    >>> fs = extract_fused(load_dataset("cache/datasets/digits-demo"), "efficientnet_lite0+efficientnet_lite2")  # doctest: +SKIP
    >>> fs.X_train.shape, [part.cache_hit for part in fs.parts]  # doctest: +SKIP
    ((453, 2560), [True, False])
    """
    started = time.perf_counter()
    parts = [extract_features(dataset, name, progress=_labelled(progress, name), **options)
             for name in backbone_parts(backbone)]
    blocks = [standardise(part.X_train, part.X_test) for part in parts]
    X_train, X_test = (np.concatenate([block[i] for block in blocks], axis=1) for i in (0, 1))
    info = describe_fusion(backbone, parts)
    return FusedFeatureSet(X_train=X_train, y_train=parts[0].y_train, X_test=X_test, y_test=parts[0].y_test,
                           key=fused_key(dataset, parts), cache_hit=all(part.cache_hit for part in parts),
                           seconds=time.perf_counter() - started,
                           extract_seconds=sum(part.extract_seconds for part in parts), backbone=info,
                           runtime=info["runtime"], parts=parts)


def _labelled(progress, name: str):
    """The progress callback with the part's name in each stage, so parts get a bar each."""
    if progress is None:
        return None
    return lambda stage, done, total: progress(f"{stage} ({name})", done, total)


def extract_any(dataset: Dataset, backbone: str, **options) -> FeatureSet:
    """`extract_fused` for a fused name, else `extract_features`: the door every feature user goes through."""
    return (extract_fused if is_fused(backbone) else extract_features)(dataset, backbone, **options)

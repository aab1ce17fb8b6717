"""A 2-D map of cached image features (PCA, then t-SNE), stored per feature key.

t-SNE (scikit-learn) rather than UMAP: no extra dependency (umap-learn pulls in numba and compiles on
first use), deterministic for a seed, and fast enough for a one-off background job that is cached.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from core.errors import ConfigError
from core.estimates import StepProgress, map_steps
from core.storage import atomic_write_bytes
from core.store import check_feature_key

MAP_VERSION = 1  # bump when the method or its settings change, so old maps are recomputed
PCA_DIMS = 50
PERPLEXITY = 30.0
STAGE = "feature map (PCA, t-SNE, save)"


def map_path(cache_dir, key: str) -> Path:
    """Where the map of feature set `key` is stored (a key that is not hex is refused: it names the file)."""
    return Path(cache_dir) / "maps" / f"{check_feature_key(key)}-tsne-v{MAP_VERSION}.npy"


def load_map(cache_dir, key: str) -> np.ndarray | None:
    """The stored map `(n_samples, 2)` of feature set `key`, or None when it was not computed yet."""
    path = map_path(cache_dir, key)
    return np.load(path) if path.is_file() else None


def compute_map(X, *, seed: int = 0, progress=None) -> np.ndarray:
    """Project features `(n_samples, n_features)` to 2-D: PCA to at most 50 dims, then t-SNE.

    >>> compute_map(np.random.default_rng(0).normal(size=(40, 8))).shape
    (40, 2)
    """
    from sklearn.decomposition import PCA  # imported on use: pages that only read a stored map start fast
    from sklearn.manifold import TSNE

    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) < 4:
        raise ConfigError(f"a feature map needs at least 4 images of 2-D features, got shape {X.shape}")
    steps = StepProgress(progress, STAGE, map_steps(*X.shape))
    steps.start(f"PCA, then t-SNE of {len(X):,} images")
    reduced = PCA(n_components=min(PCA_DIMS, *X.shape), random_state=seed).fit_transform(X)
    steps.advance()  # the t-SNE is one step: no progress inside it
    perplexity = min(PERPLEXITY, (len(X) - 1) / 3)
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
    steps.advance()
    return coords


def build_map(X, cache_dir, key: str, progress=None) -> np.ndarray:
    """Compute the map of feature set `key` and store it atomically under `cache_dir/maps/`."""
    coords = compute_map(X, progress=progress)
    buffer = io.BytesIO()
    np.save(buffer, coords)
    atomic_write_bytes(map_path(cache_dir, key), buffer.getvalue())
    return coords


def map_feature_set(features, cache_dir, progress=None) -> np.ndarray:
    """Compute and store the map of a FeatureSet: its training rows, then its test rows (as `map_points`)."""
    return build_map(np.vstack([features.X_train, features.X_test]), cache_dir, features.key, progress)


def map_points(dataset, test_pred=None) -> dict:
    """Per image of `dataset` (train, then test): label, split, the run's prediction (-1 if none), name, path."""
    n_train, n_test = len(dataset.train), len(dataset.test)
    predicted = np.full(n_train + n_test, -1)
    if test_pred is not None:
        if len(test_pred) != n_test:
            raise ConfigError(f"the run predicted {len(test_pred)} test images but the dataset has {n_test}; "
                              "pick a run trained on this dataset")
        predicted[n_train:] = test_pred
    samples = dataset.samples
    return {"labels": np.array([s.label for s in samples]), "is_test": np.arange(n_train + n_test) >= n_train,
            "predicted": predicted, "names": [Path(s.path).name for s in samples], "paths": [s.path for s in samples]}


def misclassified_first(points: dict, indices) -> list[int]:
    """Selected image indices ordered misclassified test images first, then other test images, then train."""
    labels, predicted, is_test = points["labels"], points["predicted"], points["is_test"]
    rank = np.where(~is_test, 2, np.where((predicted >= 0) & (predicted != labels), 0, 1))
    return sorted({int(i) for i in indices}, key=lambda i: (rank[i], i))

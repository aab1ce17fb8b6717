"""Train/test near-duplicates: each test image's closest training image by centred feature cosine, stored once.

CNN features after ReLU are non-negative, so their raw cosine is high for any two images (distinct demo
digits reach 0.989). Subtracting the training mean first leaves what tells images apart: distinct digits
then stay below 0.91 and two photos of the same kind of boat from different days score 0.90-0.94,
while a re-encoded or resized copy of a photo stays above 0.97. The matches are computed once per
feature set and split (`split_key`) and stored; a similarity threshold only filters them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import ConfigError
from core.storage import atomic_write_npz

MATCHES_VERSION = 1  # bump when the similarity changes, so stored matches are recomputed
DUPLICATE_SIMILARITY = 0.97  # centred cosine from which a train/test pair is listed as a possible leak
INLINE_PAIRS = 20_000_000  # train x test pairs compared inline (about a second); more run as a background job
STAGE = "near-duplicates (test images compared)"


@dataclass(frozen=True)
class Matches:
    """For each test image (in `Dataset.test` order): its most similar training image and their similarity."""

    train: np.ndarray  # (n_test,) int index into Dataset.train
    similarity: np.ndarray  # (n_test,) centred cosine similarity in [-1, 1]


def best_matches(X_train, X_test, *, chunk: int = 1024, progress=None) -> Matches:
    """Each test row's most similar training row by cosine of features centred on the training mean.

    >>> best_matches([[1, 0], [0, 1], [1, 1]], [[2, 0.1]]).train.tolist()
    [0]
    """
    X_train, X_test = np.asarray(X_train, dtype=np.float32), np.asarray(X_test, dtype=np.float32)
    if X_train.ndim != 2 or X_test.ndim != 2 or X_train.shape[1] != X_test.shape[1] or not len(X_train):
        raise ConfigError(f"train and test features must be 2-D with the same columns, got {X_train.shape} "
                          f"and {X_test.shape}; use the features of one extraction")
    train, test = _centred_unit(X_train, X_test)
    report = progress or (lambda *_: None)
    best, score = np.empty(len(test), dtype=np.int64), np.empty(len(test), dtype=np.float32)
    for begin in range(0, len(test), chunk):
        similarity = test[begin:begin + chunk] @ train.T
        best[begin:begin + chunk] = similarity.argmax(axis=1)
        score[begin:begin + chunk] = similarity.max(axis=1)
        report(STAGE, min(begin + chunk, len(test)), len(test))
    return Matches(best, score)


def _centred_unit(X_train, *others) -> list[np.ndarray]:
    """Unit rows of `X_train` and of each of `others`, all centred on the training mean."""
    mean = X_train.mean(axis=0)
    return [_unit_rows(np.asarray(X, dtype=np.float32) - mean) for X in (X_train, *others)]


def nearest_of_classes(X_train, y_train, X_query, wanted) -> tuple[np.ndarray, np.ndarray]:
    """For each query row and each class in its row of `wanted` `(n_query, m)`: the most similar training row
    of that class (centred cosine, as `best_matches`), as indices and similarities `(n_query, m)`; -1 and nan
    where the class has no training row.

    >>> nearest_of_classes([[1, 0], [0, 1], [1, 1], [-1, -1]], [0, 1, 1, 0], [[0.1, 2]], [[0, 1]])[0].tolist()
    [[0, 1]]
    """
    X_train, y_train = np.asarray(X_train, dtype=np.float32), np.asarray(y_train)
    wanted = np.asarray(wanted, dtype=np.int64)
    if X_train.ndim != 2 or y_train.shape != (len(X_train),) or wanted.ndim != 2 or wanted.shape[0] != len(X_query):
        raise ConfigError(f"need training features (n, d) with one label each and one row of classes per query; "
                          f"got {X_train.shape}, {y_train.shape} labels, {np.shape(X_query)} and {wanted.shape}")
    train, query = _centred_unit(X_train, X_query)
    similarity = query @ train.T  # (n_query, n_train)
    index, best = np.full(wanted.shape, -1), np.full(wanted.shape, np.nan)
    for column in range(wanted.shape[1]):
        masked = np.where(y_train[None, :] == wanted[:, column:column + 1], similarity, -np.inf)
        found = np.isfinite(masked).any(axis=1)
        index[found, column] = masked[found].argmax(axis=1)
        best[found, column] = masked[found].max(axis=1)
    return index, best


def conflicting_duplicates(X_train, y_train, threshold: float = DUPLICATE_SIMILARITY, chunk: int = 1024
                           ) -> list[dict]:
    """Pairs of training images that nearly match (centred cosine >= `threshold`) but carry different labels,
    most similar first: `{"a", "b", "similarity"}` (indices into the training rows, a < b). One of each pair
    is probably mislabelled, or the classes overlap."""
    if not 0 < threshold <= 1:
        raise ConfigError(f"similarity threshold must be in (0, 1], got {threshold}")
    y_train = np.asarray(y_train)
    (train,) = _centred_unit(np.asarray(X_train, dtype=np.float32))
    rows = []
    for begin in range(0, len(train), chunk):
        similarity = train[begin:begin + chunk] @ train.T
        for i, j in zip(*np.nonzero(similarity >= threshold)):
            a, b = begin + int(i), int(j)
            if a < b and y_train[a] != y_train[b]:
                rows.append({"a": a, "b": b, "similarity": float(similarity[i, j])})
    return sorted(rows, key=lambda row: -row["similarity"])


def _unit_rows(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def near_duplicates(matches: Matches, threshold: float = DUPLICATE_SIMILARITY) -> list[dict]:
    """Test images whose best training match reaches `threshold`, most similar first: possible leaks.

    >>> near_duplicates(Matches(np.array([4, 2]), np.array([0.5, 0.99])))
    [{'test': 1, 'train': 2, 'similarity': 0.99}]
    """
    if not 0 < threshold <= 1:
        raise ConfigError(f"similarity threshold must be in (0, 1], got {threshold}")
    rows = [{"test": int(i), "train": int(matches.train[i]), "similarity": float(matches.similarity[i])}
            for i in np.flatnonzero(matches.similarity >= threshold)]
    return sorted(rows, key=lambda row: -row["similarity"])


def matches_path(cache_dir, key: str) -> Path:
    return Path(cache_dir) / "duplicates" / f"{key}-v{MATCHES_VERSION}.npz"


def load_matches(cache_dir, key: str) -> Matches | None:
    """The stored matches of `key` (feature set and split, see `core.features.split_key`), or None."""
    path = matches_path(cache_dir, key)
    if not path.is_file():
        return None
    with np.load(path) as stored:
        return Matches(stored["train"], stored["similarity"])


def build_matches(X_train, X_test, cache_dir, key: str, progress=None) -> Matches:
    """Compute the matches of `key` and store them atomically under `cache_dir/duplicates/`."""
    matches = best_matches(X_train, X_test, progress=progress)
    atomic_write_npz(matches_path(cache_dir, key), "near-duplicate matches", train=matches.train,
                     similarity=matches.similarity)
    return matches

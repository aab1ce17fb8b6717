"""What is noise: bootstrap 95% intervals for one run's scores, a paired comparison of two runs, and Holm's
adjustment for the many comparisons a grid of runs invites.

Both resample test images with replacement within each class (a stratified bootstrap: every resample
keeps each class's number of test images, so macro-F1 always averages over the same classes, rare
ones included). Vectorized: per-class counts of every resample come from one `np.bincount`. Metrics
match `core.metrics.evaluate`: macro-F1 and balanced accuracy average over the classes that have test images.
"""
from __future__ import annotations

import math

import numpy as np

from core.errors import ConfigError

METRICS = ("accuracy", "macro_f1", "balanced_accuracy")
CONFIDENCE = 0.95
FEW_TEST_IMAGES = 3  # a class with this many test images or fewer: its scores move a whole image at a time


def few_test_classes(test_counts) -> list[int]:
    """Indices of the classes with 1 to FEW_TEST_IMAGES test images.

    Macro-F1 and balanced accuracy weigh them as much as any class, yet one image more or less right moves
    their scores by a third or more; and the stratified bootstrap keeps each class's count (a class with one
    test image keeps that very image in every resample), so the intervals cannot show how much they would
    move with other images: they are too narrow.

    >>> few_test_classes([40, 3, 0, 1])
    [1, 3]
    """
    return [i for i, n in enumerate(test_counts) if 0 < n <= FEW_TEST_IMAGES]


def _check(y_true, preds, n_classes: int, n_boot: int) -> tuple[np.ndarray, list[np.ndarray]]:
    y_true = np.asarray(y_true)
    arrays = [np.asarray(p) for p in preds]
    for name, y in (("y_true", y_true), *((f"predictions {i + 1}", p) for i, p in enumerate(arrays))):
        if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer):
            raise ConfigError(f"{name} must be a non-empty 1-D array of integer class indices, got dtype "
                              f"{y.dtype} and shape {y.shape}")
        if y.shape != y_true.shape:
            raise ConfigError(f"{name} has {y.size} labels but y_true has {y_true.size}; compare predictions "
                              "on the same test images, in the same order")
        if y.min() < 0 or y.max() >= n_classes:
            raise ConfigError(f"{name} has labels outside 0..{n_classes - 1}; labels must index the class list")
    if n_boot < 1:
        raise ConfigError(f"n_boot must be at least 1, got {n_boot}; use e.g. 1000 resamples")
    return y_true, arrays


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")


def _resample_counts(y_true, y_pred, n_classes: int, index: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-resample, per-class (true positives, support, predicted), each `(n_resamples, n_classes)`."""
    rows = np.arange(len(index))[:, None] * n_classes
    shape = (len(index), n_classes)

    def count(labels, mask=None):
        flat = (rows + labels[index]).ravel()
        weights = None if mask is None else mask[index].ravel().astype(float)
        return np.bincount(flat, weights=weights, minlength=shape[0] * shape[1]).reshape(shape)
    return count(y_true, y_true == y_pred), count(y_true), count(y_pred)


def _class_f1(true_pos, support, predicted) -> np.ndarray:
    """Per-class F1 per row of per-class counts (0 where a class has no test images or is never right)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, 2 * true_pos / (support + predicted), 0.0)


def _scores(true_pos, support, predicted) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 and balanced accuracy per row of per-class counts (rows = resamples)."""
    has_support = support > 0
    n_supported = has_support.sum(axis=1)
    f1 = _class_f1(true_pos, support, predicted)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(has_support, true_pos / support, 0.0)
    return {"accuracy": true_pos.sum(axis=1) / support.sum(axis=1),
            "macro_f1": f1.sum(axis=1) / n_supported,
            "balanced_accuracy": recall.sum(axis=1) / n_supported}


def _indices(y_true: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """`(n_boot, n)` positions of resampled test images, drawn with replacement within each class."""
    rng, index = np.random.default_rng(seed), np.empty((n_boot, len(y_true)), dtype=np.intp)
    start = 0
    for label in np.unique(y_true):
        members = np.flatnonzero(y_true == label)
        index[:, start:start + len(members)] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        start += len(members)
    return index


def _interval(values: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def point_scores(y_true, y_pred, n_classes: int) -> dict[str, float]:
    """Accuracy, macro-F1 and balanced accuracy of one set of predictions (as `core.metrics.evaluate`)."""
    y_true, (y_pred,) = _check(y_true, [y_pred], n_classes, 1)
    scores = _scores(*_resample_counts(y_true, y_pred, n_classes, np.arange(len(y_true))[None, :]))
    return {metric: float(values[0]) for metric, values in scores.items()}


def bootstrap_interval(y_true, y_pred, n_classes: int, metric: str, *, n_boot: int = 1000,
                       seed: int = 0) -> tuple[float, float]:
    """Stratified bootstrap 95% interval of `metric` (accuracy, macro_f1 or balanced_accuracy) over test images.

    >>> low, high = bootstrap_interval([0, 0, 1, 1] * 25, [0, 1, 1, 1] * 25, 2, "accuracy")
    >>> low < 0.75 < high
    True
    """
    _check_metric(metric)
    y_true, (y_pred,) = _check(y_true, [y_pred], n_classes, n_boot)
    counts = _resample_counts(y_true, y_pred, n_classes, _indices(y_true, n_boot, seed))
    return _interval(_scores(*counts)[metric])


def run_intervals(y_true, y_pred, n_classes: int, *, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """`{metric}_low` / `{metric}_high` of every metric in METRICS, from one shared set of resamples."""
    y_true, (y_pred,) = _check(y_true, [y_pred], n_classes, n_boot)
    scores = _scores(*_resample_counts(y_true, y_pred, n_classes, _indices(y_true, n_boot, seed)))
    out = {}
    for metric in METRICS:
        out[f"{metric}_low"], out[f"{metric}_high"] = _interval(scores[metric])
    return out


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs; 1.0 when the runs never disagree."""
    from scipy.stats import binomtest  # on use: scipy.stats costs ~1 s to import, most commands never test

    n = a_only + b_only
    return 1.0 if n == 0 else float(binomtest(b_only, n, 0.5).pvalue)


def bootstrap_p(delta: float, resampled: np.ndarray) -> float | None:
    """Two-sided p-value of a change `delta` from its bootstrap resamples (normal approximation, z = delta / sd).

    Unlike a percentile count it is not floored at 1 / n_boot, so it survives Holm's adjustment over
    many tests. None when the resamples never vary but the change is not 0 (a class of one or two test
    images can do that): there is nothing to test with.

    >>> round(bootstrap_p(0.1, np.random.default_rng(0).normal(0.1, 0.05, 2000)), 2)
    0.05
    """
    sd = float(np.std(resampled, ddof=1)) if len(resampled) > 1 else 0.0
    if sd < 1e-12:  # constant resamples (up to rounding)
        return 1.0 if abs(delta) < 1e-12 else None
    return math.erfc(abs(delta) / sd / math.sqrt(2))


def holm(p_values) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None stays None and is not counted).

    The smallest of m p-values is multiplied by m, the next by m - 1, ..., each kept at least as large
    as the one before and at most 1: rejecting where the adjusted p < 0.05 keeps the chance of any
    false "difference" in the family at 5% (Holm 1979), and never rejects less than Bonferroni.

    >>> holm([0.01, 0.04, 0.03, 0.005])
    [0.03, 0.06, 0.06, 0.02]
    """
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    running, m = 0.0, len(present)
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = float(f"{running:.15g}")  # 3 x 0.01 reads 0.03, not 0.030000000000000002
    return adjusted


def paired_comparison(y_true, pred_a, pred_b, n_classes: int, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Run B versus run A on the same test images: McNemar's exact test and paired bootstrap intervals.

    Returns `mcnemar_p`, `n_a_only` (A right, B wrong), `n_b_only`, and for each metric in METRICS
    `{metric}_delta` (B minus A on the whole test set) with its 95% interval `{metric}_low`, `{metric}_high`
    and its bootstrap p-value `{metric}_p` (the same resampled images score both runs, so shared luck
    cancels); `class_f1`: per class, the change in F1 as `{"delta", "low", "high", "p"}`.

    >>> result = paired_comparison([0, 1, 1, 0], [0, 0, 1, 0], [0, 1, 1, 0], 2)
    >>> result["n_b_only"], result["accuracy_delta"]
    (1, 0.25)
    """
    y_true, (pred_a, pred_b) = _check(y_true, [pred_a, pred_b], n_classes, n_boot)
    right_a, right_b = pred_a == y_true, pred_b == y_true
    a_only, b_only = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    result = {"mcnemar_p": mcnemar_exact(a_only, b_only), "n_a_only": a_only, "n_b_only": b_only}
    whole, index = np.arange(len(y_true))[None, :], _indices(y_true, n_boot, seed)
    point = [_resample_counts(y_true, p, n_classes, whole) for p in (pred_a, pred_b)]
    boot = [_resample_counts(y_true, p, n_classes, index) for p in (pred_a, pred_b)]
    at_point, resamples = [_scores(*c) for c in point], [_scores(*c) for c in boot]
    for metric in METRICS:
        delta = float(at_point[1][metric][0] - at_point[0][metric][0])
        resampled = resamples[1][metric] - resamples[0][metric]
        result[f"{metric}_delta"] = delta
        result[f"{metric}_low"], result[f"{metric}_high"] = _interval(resampled)
        result[f"{metric}_p"] = bootstrap_p(delta, resampled)
    result["class_f1"] = _changes(_class_f1(*point[1])[0] - _class_f1(*point[0])[0],
                                  _class_f1(*boot[1]) - _class_f1(*boot[0]))
    return result


def _changes(deltas: np.ndarray, resampled: np.ndarray) -> list[dict]:
    """Per column (class): the change, its bootstrap 95% interval and p-value, from `(n_boot, k)` resampled changes."""
    changes = []
    for k, delta in enumerate(deltas.tolist()):
        low, high = _interval(resampled[:, k])
        changes.append({"delta": delta, "low": low, "high": high, "p": bootstrap_p(delta, resampled[:, k])})
    return changes
ORDINAL_METRICS = {"quadratic_kappa": "Quadratic weighted kappa", "off_by_one": "Off-by-one accuracy",
                   "grade_error": "Mean absolute grade error"}


def _ordinal(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """The ordinal metrics of each row of `(n_resamples, n)` label arrays (class index = grade)."""
    distance = np.abs(y_true - y_pred)
    rows = np.arange(len(y_true))[:, None] * n_classes * n_classes
    flat = (rows + y_true * n_classes + y_pred).ravel()
    observed = np.bincount(flat, minlength=len(y_true) * n_classes * n_classes).reshape(-1, n_classes, n_classes)
    expected = observed.sum(axis=2)[:, :, None] * observed.sum(axis=1)[:, None, :] / y_true.shape[1]
    grades = np.arange(n_classes)
    weight = (grades[:, None] - grades[None, :]) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = 1 - (weight * observed).sum(axis=(1, 2)) / (weight * expected).sum(axis=(1, 2))
    return {"quadratic_kappa": kappa, "off_by_one": (distance <= 1).mean(axis=1),
            "grade_error": distance.mean(axis=1)}


def ordinal_scores(y_true, y_pred, n_classes: int, *, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """For ordered classes (class index = grade): quadratic weighted kappa, off-by-one accuracy and mean absolute
    grade error, each with `{metric}_low` / `_high` from the stratified bootstrap (kappa is nan when every true or
    every predicted label is one grade).

    >>> scores = ordinal_scores([0, 1, 2, 3] * 10, [0, 2, 2, 3] * 10, 4)
    >>> scores["off_by_one"], scores["grade_error"]
    (1.0, 0.25)
    """
    y_true, (y_pred,) = _check(y_true, [y_pred], n_classes, n_boot)
    point = _ordinal(y_true[None, :], y_pred[None, :], n_classes)
    index = _indices(y_true, n_boot, seed)
    resampled = _ordinal(y_true[index], y_pred[index], n_classes)
    out = {}
    for metric in ORDINAL_METRICS:
        values = resampled[metric][np.isfinite(resampled[metric])]
        out[metric] = float(point[metric][0])
        out[f"{metric}_low"], out[f"{metric}_high"] = _interval(values) if len(values) else (np.nan, np.nan)
    return out

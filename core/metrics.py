"""Classification metrics with per-class Wilson intervals, built on scikit-learn and scipy.

Every function is pure; label arrays are integer indices into a ``classes`` list and
every sklearn call gets explicit ``labels=`` so per-class results stay aligned with
``classes`` even when a class is missing from the test set or never predicted.
"""

import math
import warnings

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)
from sklearn.preprocessing import normalize

from core.errors import ConfigError

MINORITY_FRACTION = 0.5  # a class is minority when its train count < this × median count


def minority_mask(counts):
    """Flag classes whose count is below ``MINORITY_FRACTION`` × the median count.

    Example:
        >>> minority_mask([100, 80, 10]).tolist()
        [False, False, True]
    """
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 1 or counts.size == 0 or not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ConfigError(
            f"counts must be a non-empty 1-D list of non-negative per-class counts, got {counts.tolist()}; "
            "pass one train count per class"
        )
    return counts < MINORITY_FRACTION * np.median(counts)


def wilson_interval(k, n, confidence=0.95):
    """Wilson score interval for a proportion of ``k`` successes in ``n`` trials; (nan, nan) when n == 0.

    Example:
        >>> low, high = wilson_interval(0, 10)
        >>> low, round(high, 3)
        (0.0, 0.278)
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1 (exclusive), got {confidence}; use e.g. 0.95")
    if not 0 <= k <= n:
        raise ConfigError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}; k counts successes among n trials")
    if n == 0:
        return math.nan, math.nan
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def check_confusion(cm, n_classes=None):
    """Return ``cm`` as a square non-negative array, optionally of size ``n_classes``."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or (n_classes is not None and cm.shape[0] != n_classes):
        expected = f"({n_classes}, {n_classes})" if n_classes is not None else "square (k, k)"
        raise ConfigError(
            f"confusion matrix must be {expected}, got shape {cm.shape}; "
            "build it with evaluate() over the same class list"
        )
    if not np.issubdtype(cm.dtype, np.number) or np.any(cm < 0):
        raise ConfigError("confusion matrix must hold non-negative counts; pass the counts from evaluate()")
    return cm


def normalize_confusion(cm):
    """Row-normalize a confusion matrix (each true class sums to 1); empty rows stay zero.

    Example:
        >>> normalize_confusion([[3, 1], [0, 0]]).tolist()
        [[0.75, 0.25], [0.0, 0.0]]
    """
    return normalize(check_confusion(cm).astype(float), norm="l1", axis=1)


def _check_labels(y_true, y_pred, classes, train_counts):
    """Validate evaluate() inputs and return integer arrays ``(y_true, y_pred)``."""
    if len(classes) == 0 or len(set(classes)) != len(classes):
        raise ConfigError(f"classes must be a non-empty list of unique names, got {list(classes)}")
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer):
            raise ConfigError(
                f"{name} must be a non-empty 1-D array of integer class indices, got dtype {y.dtype} "
                f"and shape {y.shape}; convert with np.asarray(..., dtype=int)"
            )
        bad = y[(y < 0) | (y >= len(classes))]
        if bad.size:
            raise ConfigError(
                f"{name} has label {int(bad[0])} outside 0..{len(classes) - 1} ({len(classes)} classes); "
                "labels must index the classes list"
            )
    if y_true.shape != y_pred.shape:
        raise ConfigError(
            f"y_true has {y_true.size} labels but y_pred has {y_pred.size}; predict on the same test samples"
        )
    if train_counts is not None and len(train_counts) != len(classes):
        raise ConfigError(
            f"train_counts has {len(train_counts)} entries but there are {len(classes)} classes; "
            "pass one train count per class, in class order"
        )
    return y_true, y_pred


def _json_float(value):
    """Return ``value`` as a float, or None when it is nan (JSON has no nan)."""
    return None if math.isnan(value) else float(value)


def _per_class(classes, cm, precision, recall, f1, train_counts):
    """Build the per-class rows of evaluate() from the confusion matrix and sklearn scores."""
    true_positives, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    minority = minority_mask(train_counts) if train_counts is not None else np.zeros(len(classes), bool)
    rows = []
    for i, name in enumerate(classes):
        recall_low, recall_high = wilson_interval(true_positives[i], support[i])
        precision_low, precision_high = wilson_interval(true_positives[i], predicted[i])
        rows.append({
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "predicted": int(predicted[i]),
            "recall_low": _json_float(recall_low),
            "recall_high": _json_float(recall_high),
            "precision_low": _json_float(precision_low),
            "precision_high": _json_float(precision_high),
            "train_count": int(train_counts[i]) if train_counts is not None else None,
            "minority": bool(minority[i]),
        })
    return rows


def evaluate(y_true, y_pred, classes, train_counts=None):
    """Score predictions: overall and averaged metrics, per-class rows with Wilson 95% intervals.

    Macro and weighted averages, like balanced accuracy, cover only classes with test images;
    the others are listed in ``no_test_support``.

    The result holds only Python scalars, lists and None, so ``json.dumps`` accepts it.

    Example:
        >>> report = evaluate([0, 0, 1, 2], [0, 1, 1, 1], ["cat", "dog", "owl"])
        >>> report["accuracy"], report["never_predicted"]
        (0.5, ['owl'])
    """
    y_true, y_pred = _check_labels(y_true, y_pred, classes, train_counts)
    labels = list(range(len(classes)))
    scores = {"accuracy": float(accuracy_score(y_true, y_pred))}
    with warnings.catch_warnings():
        # Classes absent from y_true are expected here; their support=0 is reported per class.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        scores["balanced_accuracy"] = float(balanced_accuracy_score(y_true, y_pred))
    supported = [label for label in labels if np.any(y_true == label)]
    for average in ("macro", "weighted"):  # a class without test images has no recall or F1 to average
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=supported, average=average, zero_division=0
        )
        scores.update({f"{average}_precision": float(precision), f"{average}_recall": float(recall),
                       f"{average}_f1": float(f1)})
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    per_class = _per_class(classes, cm, precision, recall, f1, train_counts)
    return {
        **scores,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "never_predicted": [row["class"] for row in per_class if row["support"] > 0 and row["predicted"] == 0],
        "no_test_support": [row["class"] for row in per_class if row["support"] == 0],
    }


FREQUENCY_GROUPS = ("head", "middle", "tail")


def frequency_groups(train_counts):
    """Each class's group: 0 head, 1 middle, 2 tail: the thirds of the classes ranked by training count (most
    first; ties keep class order; with 10 classes 4 / 3 / 3). Thirds by rank, not fixed count thresholds
    (the long-tail literature's many > 100 > medium > 20 > few), so every group has classes on small sets too.

    Example:
        >>> frequency_groups([100, 5, 50, 20, 80, 10]).tolist()
        [0, 2, 1, 1, 0, 2]
    """
    counts = np.asarray(train_counts)
    minority_mask(counts)  # the same checks: a non-empty list of non-negative counts
    groups = np.empty(len(counts), dtype=int)
    for group, members in enumerate(np.array_split(np.argsort(-counts, kind="stable"), len(FREQUENCY_GROUPS))):
        groups[members] = group
    return groups


def group_scores(per_class):
    """Recall and F1 averaged over the head, middle and tail classes of a run's per-class rows
    (`core.records.ClassRow`s; classes with test images only): `[{"group", "classes", "train_min",
    "train_max", "recall", "f1"}]`, None where a group has no scored class.

    Example:
        >>> from core.records import ClassRow
        >>> rows = [ClassRow(name=c, train_count=n, support=2, precision=r, recall=r, f1=r, minority=n < 50)
        ...         for c, n, r in (("a", 90, 1.0), ("b", 40, 0.5), ("c", 5, 0.0))]
        >>> [(g["group"], g["recall"]) for g in group_scores(rows)]
        [('head', 1.0), ('middle', 0.5), ('tail', 0.0)]
    """
    groups = frequency_groups([row.train_count for row in per_class])
    out = []
    for group, name in enumerate(FREQUENCY_GROUPS):
        rows = [row for row, g in zip(per_class, groups) if g == group]
        scored = [row for row in rows if row.support > 0]
        counts = [row.train_count for row in rows]
        out.append({"group": name, "classes": [row.name for row in rows],
                    "train_min": min(counts, default=None), "train_max": max(counts, default=None),
                    "recall": float(np.mean([r.recall for r in scored])) if scored else None,
                    "f1": float(np.mean([r.f1 for r in scored])) if scored else None})
    return out

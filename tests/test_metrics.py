"""Tests for core.metrics on tiny hand-computed examples."""

import json
import math
import warnings

import numpy as np
import pytest

from core.errors import ConfigError
from core.metrics import evaluate, minority_mask, normalize_confusion, wilson_interval

CLASSES = ["cat", "dog", "owl"]
# cm rows (true) x cols (pred): cat [2, 1, 0], dog [1, 1, 0], owl [0, 1, 0]
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 0, 1]


@pytest.fixture
def report():
    return evaluate(Y_TRUE, Y_PRED, CLASSES, train_counts=[100, 90, 10])


def test_overall_scores_match_hand_computed_values(report):
    assert report["accuracy"] == pytest.approx(3 / 6)
    assert report["macro_precision"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert report["macro_recall"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0.4 + 0) / 3)
    assert report["weighted_f1"] == pytest.approx((3 * 2 / 3 + 2 * 0.4) / 6)
    assert report["weighted_recall"] == pytest.approx(0.5)
    assert report["balanced_accuracy"] == pytest.approx(7 / 18)
    assert all(type(report[key]) is float for key in ("accuracy", "macro_f1", "weighted_precision"))


def test_per_class_rows_and_confusion_matrix(report):
    assert report["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    cat, dog, owl = report["per_class"]
    assert (cat["class"], cat["support"], cat["predicted"]) == ("cat", 3, 3)
    assert dog["precision"] == pytest.approx(1 / 3)
    assert dog["recall"] == pytest.approx(0.5)
    assert dog["f1"] == pytest.approx(0.4)
    assert (owl["precision"], owl["recall"], owl["f1"], owl["predicted"]) == (0.0, 0.0, 0.0, 0)
    assert (cat["recall_low"], cat["recall_high"]) == pytest.approx(wilson_interval(2, 3))
    assert (dog["precision_low"], dog["precision_high"]) == pytest.approx(wilson_interval(1, 3))
    assert owl["precision_low"] is None and owl["precision_high"] is None
    assert [row["train_count"] for row in report["per_class"]] == [100, 90, 10]
    assert [row["minority"] for row in report["per_class"]] == [False, False, True]


def test_never_predicted_lists_classes_with_support_only(report):
    assert report["never_predicted"] == ["owl"]
    # owl has no test images here, so it is not "never predicted" even though nothing predicts it.
    assert evaluate([0, 1], [1, 1], CLASSES)["never_predicted"] == ["cat"]


def test_matrix_is_k_by_k_when_a_class_is_absent_from_y_true():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate([0, 0, 1], [0, 2, 1], CLASSES)
    assert result["confusion_matrix"] == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    owl = result["per_class"][2]
    assert (owl["support"], owl["predicted"], owl["recall_low"]) == (0, 1, None)
    assert result["balanced_accuracy"] == pytest.approx(0.75)  # mean recall over classes with support


def test_missing_class_everywhere_still_gives_full_matrix():
    result = evaluate([0, 1], [0, 1], CLASSES)
    assert np.array(result["confusion_matrix"]).shape == (3, 3)
    assert len(result["per_class"]) == 3


def test_report_is_json_safe(report):
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text)["per_class"][2]["precision_low"] is None
    no_counts = evaluate(np.array(Y_TRUE), np.array(Y_PRED), CLASSES)
    json.dumps(no_counts, allow_nan=False)
    assert no_counts["per_class"][0]["train_count"] is None
    assert not any(row["minority"] for row in no_counts["per_class"])


def test_wilson_interval_of_zero_successes():
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775, abs=1e-3)


def test_wilson_interval_is_symmetric_at_half_and_nan_for_no_trials():
    low, high = wilson_interval(5, 10)
    assert low + high == pytest.approx(1.0)
    assert wilson_interval(5, 10, confidence=0.99)[0] < low
    assert all(math.isnan(bound) for bound in wilson_interval(0, 0))


@pytest.mark.parametrize("k, n, confidence", [(11, 10, 0.95), (-1, 10, 0.95), (1, 10, 1.5)])
def test_wilson_interval_rejects_bad_input(k, n, confidence):
    with pytest.raises(ConfigError):
        wilson_interval(k, n, confidence)


def test_minority_mask_uses_half_the_median():
    assert minority_mask([100, 80, 60, 20, 10]).tolist() == [False, False, False, True, True]
    assert minority_mask([100, 50, 100]).tolist() == [False, False, False]  # 50 is not < 0.5 * 100
    assert minority_mask([7]).tolist() == [False]


def test_minority_mask_rejects_empty_or_negative_counts():
    with pytest.raises(ConfigError, match="one train count per class"):
        minority_mask([])
    with pytest.raises(ConfigError, match="-3"):
        minority_mask([10, -3])


def test_normalize_confusion_rows_sum_to_one_and_empty_rows_stay_zero():
    result = normalize_confusion([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    assert result.dtype == float
    np.testing.assert_allclose(result, [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])
    assert not np.isnan(result).any()


def test_normalize_confusion_rejects_non_square_matrix():
    with pytest.raises(ConfigError, match=r"shape \(2, 3\)"):
        normalize_confusion(np.zeros((2, 3)))


@pytest.mark.parametrize("y_true, y_pred, train_counts, message", [
    ([0, 1, 2], [0, 1], None, "y_true has 3 labels but y_pred has 2"),
    ([0, 1, 3], [0, 1, 2], None, r"y_true has label 3 outside 0\.\.2"),
    ([0, 1, 2], [0, -1, 2], None, "y_pred has label -1"),
    ([0.0, 1.0], [0, 1], None, "integer class indices"),
    ([], [], None, "non-empty"),
    ([0, 1], [0, 1], [5, 5], "train_counts has 2 entries but there are 3 classes"),
])
def test_evaluate_rejects_bad_input_with_helpful_message(y_true, y_pred, train_counts, message):
    with pytest.raises(ConfigError, match=message):
        evaluate(y_true, y_pred, CLASSES, train_counts=train_counts)


def test_evaluate_rejects_duplicate_class_names():
    with pytest.raises(ConfigError, match="unique"):
        evaluate([0], [0], ["cat", "cat"])


def test_macro_scores_average_only_classes_with_test_images():
    """owl has no test image: it is flagged, not counted as F1 = 0 (balanced accuracy skips it too)."""
    result = evaluate([0, 0, 1, 1], [0, 0, 1, 0], CLASSES)
    assert result["no_test_support"] == ["owl"]
    assert result["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert result["macro_recall"] == pytest.approx((1 + 0.5) / 2) == pytest.approx(result["balanced_accuracy"])
    assert result["macro_precision"] == pytest.approx((2 / 3 + 1) / 2)
    assert evaluate(Y_TRUE, Y_PRED, CLASSES)["no_test_support"] == []


def test_frequency_groups_are_thirds_by_training_count():
    from core.metrics import frequency_groups

    counts = [5, 300, 40, 41, 2, 100, 60, 7, 9, 200]
    groups = frequency_groups(counts)
    assert groups.tolist() == [2, 0, 1, 1, 2, 0, 0, 2, 1, 0]  # head 300 200 100 60, middle 41 40 9
    ranked = np.argsort(-np.array(counts), kind="stable")
    assert groups[ranked].tolist() == sorted(groups.tolist())  # rarer classes never sit in a more frequent group
    assert np.bincount(groups).tolist() == [4, 3, 3]


def test_group_scores_average_recall_and_f1_over_scored_classes_only():
    from core.metrics import group_scores
    from core.records import class_rows

    report = evaluate([0, 0, 1, 1, 2, 3, 3], [0, 0, 1, 0, 2, 1, 3], ["a", "b", "c", "d", "e", "f"],
                      train_counts=[100, 80, 60, 40, 10, 5])
    rows = {row["group"]: row for row in group_scores(class_rows(report))}
    assert rows["head"]["classes"] == ["a", "b"] and rows["head"]["recall"] == pytest.approx((1.0 + 0.5) / 2)
    assert rows["middle"]["recall"] == pytest.approx((1.0 + 0.5) / 2)
    assert rows["tail"]["recall"] is None and rows["tail"]["train_min"] == 5  # e, f have no test images

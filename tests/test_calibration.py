"""Calibration (core.calibration), suspected label errors (core.label_issues) and the recorded diagnostics."""
import numpy as np
import pytest

from builders import make_record

from core.calibration import (calibrate, expected_calibration_error, fit_temperature, probabilities,
                              reliability)
from core.errors import ConfigError
from core.label_issues import find_label_issues, issue_source, summarize


def _calibrated_logits(n: int, seed: int, sharpness: float = 1.0):
    """Labels drawn from softmax(logits): the model is calibrated by construction at temperature `sharpness`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, 4))
    probs = probabilities(logits)
    y = np.array([rng.choice(4, p=p) for p in probs])
    return logits * sharpness, y


def test_a_calibrated_model_has_ece_near_zero_and_an_over_confident_one_does_not():
    logits, y = _calibrated_logits(20_000, 0)
    assert expected_calibration_error(probabilities(logits), y) < 0.015
    assert expected_calibration_error(probabilities(logits * 3), y) > 0.1


def test_temperature_fitted_on_validation_undoes_over_confidence():
    """Scores three times too sharp: T near 3 is found on one sample, and fixes the ECE of another sample."""
    val_logits, y_val = _calibrated_logits(5_000, 1, sharpness=3.0)
    test_logits, y_test = _calibrated_logits(5_000, 2, sharpness=3.0)
    result = calibrate(test_logits, y_test, val_logits, y_val)
    assert result["temperature"] == pytest.approx(3.0, rel=0.1)
    assert result["ece_raw"] > 0.1 and result["ece"] < 0.03


def test_scores_that_are_not_logits_get_no_raw_ece_and_no_temperature_without_folds():
    logits, y = _calibrated_logits(200, 3)
    assert calibrate(logits, y, logits, y, logits=False)["ece_raw"] is None
    assert calibrate(logits, y)["temperature"] is None and calibrate(logits, y)["ece"] is None


def test_reliability_bins_count_every_image_and_a_never_trained_class_gets_zero():
    probs = probabilities(np.array([[2.0, 0.0, -np.inf], [0.0, 2.0, -np.inf], [0.1, 0.0, -np.inf]]))
    assert probs[:, 2].tolist() == [0.0, 0.0, 0.0]
    rows = reliability(probs, [0, 0, 1], n_bins=10)
    assert sum(r["count"] for r in rows) == 3 and all(0 <= r["accuracy"] <= 1 for r in rows)
    with pytest.raises(ConfigError, match="one integer label per row"):
        reliability(probs, [0, 1])
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        probabilities(probs, 0.0)


def test_fit_temperature_refuses_mismatched_labels():
    with pytest.raises(ConfigError):
        fit_temperature(np.zeros((3, 2)), [0, 1])


def test_flipped_labels_are_found_among_confident_predictions():
    """Well-separated classes, 5% of labels flipped: confident learning finds most and few false alarms."""
    rng = np.random.default_rng(4)
    n, k = 1_000, 5
    truth = rng.integers(0, k, size=n)
    probs = np.full((n, k), 0.02)
    probs[np.arange(n), truth] = 0.92
    given = truth.copy()
    flipped = rng.choice(n, size=50, replace=False)
    given[flipped] = (truth[flipped] + rng.integers(1, k, size=50)) % k
    issues = find_label_issues(given, probs)
    found = set(issues["index"])
    assert len(found & set(flipped)) / 50 > 0.9 and len(found - set(flipped)) <= 5
    assert (issues.set_index("index").loc[flipped, "suggested"] == truth[flipped]).all()
    counts = summarize(issues, k)
    assert counts["count"] == len(issues) and sum(counts["per_class"]) == len(issues)


def test_label_issues_refuse_labels_outside_the_classes():
    with pytest.raises(ConfigError, match="one label in 0..1"):
        find_label_issues([0, 2], [[0.5, 0.5], [0.5, 0.5]])


def test_the_issue_source_is_the_best_validated_run_on_the_dataset():
    def run(run_id, fingerprint, score):
        validation = None if score is None else dict.fromkeys(("accuracy", "macro_f1", "balanced_accuracy"), score)
        return make_record(run_id=run_id, dataset={"fingerprint": fingerprint}, validation=validation)

    runs = [run("a", "f", 0.7), run("b", "f", 0.8), run("c", "g", 0.9), run("d", "f", None)]
    assert issue_source(runs, "f").run_id == "b" and issue_source(runs, "h") is None


def test_runs_record_calibration_and_label_issues(on_demo_features):
    results = on_demo_features(approaches=("svm", "logreg"))
    for run in results["runs"]:
        calibration, issues = run["calibration"], run["label_issues"]
        assert calibration["temperature"] > 0 and 0 <= calibration["ece"] <= 1
        assert (calibration["ece_raw"] is None) == (run["approach"] == "svm")
        assert issues["count"] == sum(issues["per_class"]) and len(issues["per_class"]) == 10

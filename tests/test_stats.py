"""Tests for core.stats: bootstrap intervals and the paired comparison of two runs."""
import numpy as np
import pytest
from scipy.stats import binomtest

from core.errors import ConfigError
from core.metrics import evaluate
from core.stats import bootstrap_interval, bootstrap_p, holm, mcnemar_exact, paired_comparison, run_intervals

CLASSES = ["a", "b", "c", "d"]


def _predictions(n=400, seed=1, error_rate=0.3):
    rng = np.random.default_rng(seed)
    y_true = rng.choice(3, size=n, p=[0.7, 0.2, 0.1])  # class 3 has no test images
    wrong = rng.random(n) < error_rate
    return y_true, np.where(wrong, rng.integers(0, 4, size=n), y_true)


def test_bootstrap_interval_brackets_the_score_of_evaluate():
    y_true, y_pred = _predictions()
    report = evaluate(y_true, y_pred, CLASSES)
    for metric in ("accuracy", "macro_f1", "balanced_accuracy"):
        low, high = bootstrap_interval(y_true, y_pred, 4, metric, n_boot=500)
        assert low < report[metric] < high, metric
        assert high - low < 0.3


def test_bootstrap_resamples_agree_with_sklearn_scores():
    """One resample's scores through the vectorized counts equal evaluate() on the same images."""
    from core.stats import _indices, _resample_counts, _scores

    y_true, y_pred = _predictions(n=200)
    index = _indices(y_true, 3, seed=5)
    scores = _scores(*_resample_counts(y_true, y_pred, 4, index))
    for row in range(3):
        report = evaluate(y_true[index[row]], y_pred[index[row]], CLASSES)
        for metric in ("accuracy", "macro_f1", "balanced_accuracy"):
            assert scores[metric][row] == pytest.approx(report[metric]), metric


def test_interval_narrows_with_more_test_images():
    small = bootstrap_interval(*_predictions(n=100), 4, "accuracy")
    large = bootstrap_interval(*_predictions(n=3000), 4, "accuracy")
    assert large[1] - large[0] < (small[1] - small[0]) / 3


def test_bootstrap_is_seeded():
    y_true, y_pred = _predictions()
    assert bootstrap_interval(y_true, y_pred, 4, "macro_f1", seed=3) == bootstrap_interval(
        y_true, y_pred, 4, "macro_f1", seed=3)
    assert run_intervals(y_true, y_pred, 4)["macro_f1_low"] == bootstrap_interval(y_true, y_pred, 4, "macro_f1")[0]


def test_paired_comparison_counts_discordant_pairs_and_uses_mcnemar():
    y_true = np.array([0] * 10 + [1] * 10)
    pred_a = y_true.copy()
    pred_a[:6] = 1  # A wrong on 6 images
    pred_b = y_true.copy()
    pred_b[5:7] = 1  # B wrong on images 5, 6 -> A-only right: 6; B-only right: 0..4 -> 5
    result = paired_comparison(y_true, pred_a, pred_b, 2)
    assert (result["n_a_only"], result["n_b_only"]) == (1, 5)
    assert result["mcnemar_p"] == pytest.approx(binomtest(5, 6, 0.5).pvalue)
    assert result["accuracy_delta"] == pytest.approx((18 - 14) / 20)


def test_identical_runs_have_p_one_and_zero_width_deltas():
    y_true, y_pred = _predictions()
    result = paired_comparison(y_true, y_pred, y_pred, 4)
    assert result["mcnemar_p"] == 1.0 and result["n_a_only"] == result["n_b_only"] == 0
    for metric in ("accuracy", "macro_f1", "balanced_accuracy"):
        assert result[f"{metric}_delta"] == result[f"{metric}_low"] == result[f"{metric}_high"] == 0


def test_paired_interval_is_narrower_than_unpaired_for_correlated_runs():
    """Two runs that disagree on few images: the paired interval of the change is much tighter."""
    y_true, pred_a = _predictions(n=500)
    pred_b = pred_a.copy()
    flip = np.flatnonzero(pred_a != y_true)[:15]
    pred_b[flip] = y_true[flip]
    result = paired_comparison(y_true, pred_a, pred_b, 4)
    assert result["accuracy_delta"] == pytest.approx(15 / 500)
    assert result["accuracy_low"] > 0  # a consistent gain is not noise when paired
    low_a, high_a = bootstrap_interval(y_true, pred_a, 4, "accuracy")
    assert result["accuracy_high"] - result["accuracy_low"] < (high_a - low_a) / 2
    assert result["mcnemar_p"] < 1e-3


def test_paired_comparison_on_1000_images_with_1000_resamples_is_quick_enough_to_run():
    y_true, pred_a = _predictions(n=1000)
    _, pred_b = _predictions(n=1000, seed=2)
    result = paired_comparison(y_true, pred_a, pred_b, 4, n_boot=1000)
    assert set(result) == {"mcnemar_p", "n_a_only", "n_b_only", "class_f1"} | {
        f"{m}_{s}" for m in ("accuracy", "macro_f1", "balanced_accuracy") for s in ("delta", "low", "high", "p")}
    assert len(result["class_f1"]) == 4


def test_mcnemar_without_disagreement_is_one():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 10) == pytest.approx(2 * 0.5 ** 10)


@pytest.mark.parametrize("args, fragment", [
    (([0, 1], [0], 2, "accuracy"), "same test images"),
    (([0, 1], [0, 5], 2, "accuracy"), "outside 0..1"),
    (([0.5, 1], [0, 1], 2, "accuracy"), "integer class indices"),
    (([0, 1], [0, 1], 2, "f2"), "unknown metric"),
])
def test_bad_input_is_a_clear_error(args, fragment):
    with pytest.raises(ConfigError, match=fragment):
        bootstrap_interval(*args)


def test_zero_resamples_is_an_error():
    with pytest.raises(ConfigError, match="n_boot"):
        paired_comparison([0, 1], [0, 1], [1, 1], 2, n_boot=0)


# ---------------------------------------------------------------- issue 13: stratified resampling


def _rare_class_always_wrong():
    """50 + 50 images always right, a rare class of 2 images always predicted as class 0."""
    y_true = np.array([0] * 50 + [1] * 50 + [2] * 2)
    return y_true, np.where(y_true == 2, 0, y_true)


def test_resamples_keep_every_class_and_its_test_count():
    """Macro-F1 of these predictions is the same on any resample that keeps per-class counts: a zero-width
    interval at the point score. Dropping the rare class in some resamples would lift the top towards 0.99."""
    y_true, y_pred = _rare_class_always_wrong()
    point = evaluate(y_true, y_pred, ["a", "b", "c"])
    intervals = run_intervals(y_true, y_pred, 3)
    for metric in ("macro_f1", "balanced_accuracy", "accuracy"):
        assert intervals[f"{metric}_low"] == pytest.approx(point[metric])
        assert intervals[f"{metric}_high"] == pytest.approx(point[metric])


def test_paired_resamples_keep_every_class_and_its_test_count():
    y_true, pred_a = _rare_class_always_wrong()
    result = paired_comparison(y_true, pred_a, y_true, 3)  # B is right everywhere
    assert result["macro_f1_low"] == pytest.approx(result["macro_f1_delta"])
    assert result["macro_f1_high"] == pytest.approx(result["macro_f1_delta"])


def test_holm_matches_the_step_down_rule_and_keeps_missing_tests_out():
    """Reference values worked by hand (and equal to statsmodels' multipletests(method="holm"))."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == [0.03, 0.06, 0.06, 0.02]
    assert holm([0.5, None, 0.01]) == [0.5, None, 0.02]  # a family of two: None is not a test
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
    assert holm([0.02, 0.03, 0.04]) == [0.06, 0.06, 0.06]  # never below an earlier step
    assert holm([]) == []


def test_holm_keeps_a_family_of_noise_from_calling_a_difference():
    """20 comparisons of runs that differ only by noise: unadjusted, some p < 0.05 by chance; adjusted, none."""
    y_true = np.random.default_rng(7).integers(0, 3, size=300)

    def run(seed):  # every run: right on a random 70% of images, a random guess elsewhere (equally good)
        rng = np.random.default_rng(seed)
        return np.where(rng.random(300) < 0.3, rng.integers(0, 3, size=300), y_true)
    p_values = [paired_comparison(y_true, run(0), run(seed), 3, n_boot=300, seed=seed)["macro_f1_p"]
                for seed in range(1, 21)]
    assert min(p_values) < 0.05  # the trap: one test in twenty looks "significant"
    assert min(holm(p_values)) >= 0.05


def test_bootstrap_p_agrees_with_the_interval_and_refuses_degenerate_resamples():
    y_true, pred_a = _predictions(n=600)
    better = np.where(np.random.default_rng(3).random(600) < 0.5, y_true, pred_a)  # fixes half of A's errors
    result = paired_comparison(y_true, pred_a, better, 4, n_boot=500)
    assert result["macro_f1_low"] > 0 and result["macro_f1_p"] < 0.001
    same = paired_comparison(y_true, pred_a, pred_a, 4, n_boot=100)
    assert same["macro_f1_p"] == 1.0 and same["class_f1"][0] == {"delta": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}
    assert bootstrap_p(0.2, np.full(50, 0.2)) is None  # a change that resampling never varies: nothing to test


def test_class_f1_change_follows_the_class_that_changed():
    y_true = np.array([0] * 50 + [1] * 40 + [2] * 6)
    pred_a = np.where(y_true == 2, 0, y_true)  # A never gets class 2
    pred_b = y_true.copy()
    change = paired_comparison(y_true, pred_a, pred_b, 3, n_boot=400)["class_f1"]
    assert change[2]["delta"] == pytest.approx(1.0) and change[2]["low"] > 0.5
    assert change[1]["delta"] == 0.0
def test_ordinal_scores_match_scikit_learn_and_count_neighbouring_grades():
    from sklearn.metrics import cohen_kappa_score

    from core.stats import ordinal_scores

    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 5, 300)
    y_pred = np.clip(y_true + rng.choice([-2, -1, 0, 0, 0, 1], size=300), 0, 4)
    scores = ordinal_scores(y_true, y_pred, 5)
    assert scores["quadratic_kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred, weights="quadratic"))
    assert scores["off_by_one"] == pytest.approx(np.mean(np.abs(y_true - y_pred) <= 1))
    assert scores["grade_error"] == pytest.approx(np.mean(np.abs(y_true - y_pred)))
    for metric in ("quadratic_kappa", "off_by_one", "grade_error"):
        assert scores[f"{metric}_low"] <= scores[metric] <= scores[f"{metric}_high"]
    assert scores["off_by_one_high"] - scores["off_by_one_low"] > 0


def test_ordinal_scores_rank_a_near_miss_above_a_far_miss():
    from core.stats import ordinal_scores

    y_true = np.repeat(np.arange(5), 20)
    near, far = np.clip(y_true + 1, 0, 4), (y_true + 3) % 5
    assert ordinal_scores(y_true, near, 5)["quadratic_kappa"] > ordinal_scores(y_true, far, 5)["quadratic_kappa"]
    assert ordinal_scores(y_true, near, 5)["off_by_one"] == 1.0

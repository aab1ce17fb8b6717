"""Findings (core.findings) from built results whose truth is known: what is noise, what is lost, what lifts it."""
import dataclasses

import numpy as np
import pytest

from core.findings import Comparisons, family_pairs, findings
from builders import record_json
from core.records import RunRecord
from core.stats import paired_comparison, run_intervals

CLASSES = ["common", "usual", "rare"]
TRAIN = [400, 200, 12]
Y_TEST = np.array([0] * 200 + [1] * 100 + [2] * 12)


def predictions(seed: int, error: float = 0.2, rare_right: int = 0, noise_from=None) -> np.ndarray:
    """Right on (1 - error) of the common classes, on `rare_right` of the 12 rare images (the rest called common);
    `noise_from`: start from those predictions and re-guess 3% of the images at random (a noise-only rerun)."""
    rng = np.random.default_rng(seed)
    if noise_from is not None:
        flip = rng.random(len(Y_TEST)) < 0.03
        return np.where(flip, rng.integers(0, 2, len(Y_TEST)), noise_from)
    pred = np.where(rng.random(len(Y_TEST)) < error, 1 - Y_TEST.clip(0, 1), Y_TEST)
    rare = np.flatnonzero(Y_TEST == 2)
    pred[rare] = 0
    pred[rare[:rare_right]] = 2
    return pred


def record(run_id, approach, remedy, pred, validation, at_bound=None):
    rec = record_json(run_id=run_id, approach=approach, class_weight=remedy, y_true=Y_TEST, y_pred=pred,
                      classes=CLASSES, train_counts=TRAIN, remedy=remedy, seed=0,
                      fit_seconds={"svm": 0.5, "head": 5.0}[approach], predict_seconds=0.1, extract_seconds=20.0,
                      validation=dict.fromkeys(("accuracy", "macro_f1", "balanced_accuracy"), validation),
                      dataset={"root": "/data/boats", "fingerprint": "f", "content_fingerprint": "f"},
                      **run_intervals(Y_TEST, pred, 3, n_boot=300))
    for row, bound in zip(rec["per_class"], at_bound or ()):
        row["support_vectors"], row["at_bound"] = 6, bound
    return RunRecord.build(rec)


@pytest.fixture(scope="module")
def built():
    base = predictions(0)
    preds = {"svm-none": base, "svm-balanced": predictions(0, rare_right=11),
             "svm-sqrt": predictions(0, error=0.19),  # weights that leave the rare class lost
             "head-none": predictions(1, noise_from=base), "head-balanced": predictions(2, noise_from=base)}
    records = [record("svm-none", "svm", "none", preds["svm-none"], 0.60),
               record("svm-balanced", "svm", "balanced", preds["svm-balanced"], 0.80),
               record("svm-sqrt", "svm", "sqrt", preds["svm-sqrt"], 0.61, at_bound=[3, 2, 0]),
               record("head-none", "head", "none", preds["head-none"], 0.62),
               record("head-balanced", "head", "balanced", preds["head-balanced"], 0.63)]
    compute = lambda a, b: paired_comparison(Y_TEST, preds[a], preds[b], 3, n_boot=500)  # noqa: E731
    comparisons = Comparisons(family_pairs(records), compute=compute)
    return records, comparisons, findings(records, comparisons)


def topic(found, name):
    return [f for f in found if f.topic == name]


def test_a_difference_of_noise_is_never_called_better(built):
    records, comparisons, found = built
    assert not comparisons.differs("head-none", "head-balanced")
    (head,) = [f for f in topic(found, "remedies") if "under head" in f.text]
    assert "balanced (" in head.text and "indistinguishable from none" in head.text
    assert "better" not in " ".join(f.text for f in found if f.topic != "noise")  # only: "order is not evidence"


def test_a_rare_class_at_f1_zero_is_named_with_the_runs_that_lose_it(built):
    (rare,) = topic(built[2], "rare")
    assert rare.text.startswith("The minority class rare (12 training, 12 test images) has F1 ≤ 0.1 under ")
    lost = rare.text.split(" under ")[1].split(".")[0]
    assert {"svm · none", "svm · sqrt", "head · none", "head · balanced"} == set(lost.split(", "))


def test_a_remedy_that_lifts_it_is_named_with_its_interval(built):
    records, comparisons, found = built
    (rare,) = topic(found, "rare")
    change = comparisons.get("svm-none", "svm-balanced")["class_f1"][2]
    assert change["low"] > 0.5
    assert (f"Under svm, balanced lifts it most from svm · none: F1 0.000 → 0.957, {change['delta']:+.3f} "
            f"[{change['low']:+.3f}, {change['high']:+.3f}]") in rare.text  # scores to 3 decimals, as everywhere
    assert "more than noise" in rare.text and "No remedy tried raises it under head" in rare.text
    assert ("svm-none", "svm-balanced") in rare.pairs and "svm-balanced" in rare.run_ids


def test_what_a_remedy_did_not_do_says_why_for_the_svm(built):
    (svm,) = [f for f in topic(built[2], "remedies") if "under svm" in f.text]
    assert "balanced changes macro-F1 by +" in svm.text
    assert ("Why sqrt leaves rare at F1 ≤ 0.1 in svm · sqrt: no support vector of rare (6 support vectors) sits at "
            "its bound") in svm.text


def test_the_choice_by_validation_is_checked_on_the_test_set(built):
    best = topic(built[2], "best")[0]
    assert best.text.startswith("svm · balanced is the run chosen by validation (validation macro-F1 0.800")
    assert "the test confirms the choice" in best.text


def test_every_comparison_is_counted_once_in_the_family_and_adjusted(built):
    records, comparisons, found = built
    pairs = {frozenset(p) for p in comparisons.pairs}
    assert len(pairs) == len(comparisons.pairs)
    (noise,) = topic(found, "noise")
    assert noise.text.startswith(f"Of the {len(comparisons)} paired comparisons")
    raw = comparisons.get("svm-none", "svm-balanced")["macro_f1_p"]
    assert comparisons.adjusted_p("svm-none", "svm-balanced") >= raw
    approaches = topic(found, "approaches")
    assert approaches and "counting the one-off feature extraction" in approaches[0].text


def test_what_if_tries_are_adjusted_together():
    from core.findings import tries_note

    assert tries_note({"w1": 0.01}, "w1") == ""  # one test: nothing to adjust
    note = tries_note({"w1": 0.2, "w2": 0.01, "w3": 0.5}, "w2")
    assert note.startswith("You have tested 3 settings") and "p = 0.03" in note


def test_fine_tuning_is_compared_with_frozen_features_with_and_without_extraction():
    base = predictions(0)
    better = np.where(np.random.default_rng(5).random(len(Y_TEST)) < 0.6, Y_TEST, base)
    records = [record("svm-none", "svm", "none", base, 0.6), record("ft-none", "head", "none", better, 0.9)]
    records[1] = dataclasses.replace(records[1], approach="finetune", fit_seconds=600.0, extract_seconds=0.0)
    preds = {"svm-none": base, "ft-none": better}
    comparisons = Comparisons(family_pairs(records),
                              compute=lambda a, b: paired_comparison(Y_TEST, preds[a], preds[b], 3, n_boot=500))
    (finding,) = topic(findings(records, comparisons), "approaches")
    assert finding.text.startswith("Fine-tuning against frozen features (each approach's best run by validation): "
                                   "svm · none minus finetune · none: accuracy -")
    assert "a difference beyond noise" in finding.text
    assert "svm fits 1200× faster than finetune (29× counting the one-off feature extraction)" in finding.text

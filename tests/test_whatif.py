"""Class-weight what-if refits on the demo run's cached features (core.whatif)."""
import numpy as np
import pytest

import core.whatif as whatif
from core.errors import ClassWeightError, ConfigError, TransferScopeError
from core.runs import RunStore


@pytest.fixture(scope="module")
def starts(demo_experiment, demo_dataset, feature_cache):
    """A Start per approach, from the demo experiment's unweighted runs."""
    results, _ = demo_experiment
    records = {r["approach"]: r for r in results["runs"] if r["class_weight"] == "none"}
    return {approach: whatif.start_from(record, demo_dataset, feature_cache) for approach, record in records.items()}


@pytest.mark.parametrize("approach", ["svm", "head"])
def test_refit_with_the_runs_own_weights_reproduces_it(starts, approach):
    start = starts[approach]
    outcome = whatif.refit(start, whatif.seed_weights(start, "run"), tau=start.record["tau"])
    assert outcome["confusion_matrix"] == start.record["confusion_matrix"]
    change = whatif.compare_with_start(start.record, outcome)
    assert all(row["delta"] == 0 for row in change["headline"])
    assert not np.asarray(change["confusion_change"]).any()
    assert outcome["refit_seconds"] > 0


@pytest.mark.parametrize("approach", ["svm", "head"])
def test_a_heavier_class_weight_changes_the_fit(starts, approach):
    start = starts[approach]
    rare = int(np.argmin(start.dataset.train_counts))
    weights = np.ones(len(start.classes))
    weights[rare] = 50.0
    outcome = whatif.refit(start, weights)
    before = start.record["per_class"][rare]["predicted"]
    assert outcome["per_class"][rare]["predicted"] > before
    deltas = whatif.compare_with_start(start.record, outcome)
    row = deltas["per_class"].iloc[rare]
    assert row["weight"] == 50.0 and row["start weight"] == 1.0 and bool(row["minority"])
    recall_change = outcome["per_class"][rare]["recall"] - start.record["per_class"][rare]["recall"]
    assert row["Δ recall"] == pytest.approx(recall_change)
    assert np.asarray(deltas["confusion_change"]).sum(axis=1).tolist() == [0] * len(start.classes)


def test_tau_shifts_head_predictions_to_rare_classes(starts):
    start = starts["head"]
    weights = whatif.seed_weights(start, "run")
    plain, adjusted = whatif.refit(start, weights), whatif.refit(start, weights, tau=2.0)
    assert adjusted["balanced_accuracy"] != plain["balanced_accuracy"]
    assert adjusted["tau"] == 2.0


def test_seed_schemes(starts):
    start = starts["svm"]
    balanced = whatif.seed_weights(start, "balanced")
    counts = np.asarray(start.dataset.train_counts)
    assert balanced[np.argmin(counts)] > balanced[np.argmax(counts)]
    assert whatif.seed_weights(start, "none").tolist() == [1.0] * len(counts)
    with pytest.raises(ClassWeightError, match="unknown seed scheme 'heavy'"):
        whatif.seed_weights(start, "heavy")


@pytest.mark.parametrize("weights, message", [([1.0, 2.0], "one finite weight >= 0 per class \\(10\\)"),
                                              ([-1.0] + [1.0] * 9, "got \\[-1.0"), ([0.0] * 10, "not all 0")])
def test_bad_weights_are_refused(starts, weights, message):
    with pytest.raises(ClassWeightError, match=message):
        whatif.refit(starts["svm"], weights)


def test_bad_tau_is_refused(starts):
    with pytest.raises(ConfigError, match="tau must be a finite number >= 0, got -1"):
        whatif.refit(starts["head"], whatif.seed_weights(starts["head"], "run"), tau=-1)


def test_refits_wait_for_the_one_slot(starts, monkeypatch):
    monkeypatch.setattr(whatif, "REFIT_WAIT_S", 0.05)
    with whatif._REFIT_LOCK:
        with pytest.raises(TransferScopeError, match="busy refitting"):
            whatif.refit(starts["svm"], whatif.seed_weights(starts["svm"], "run"))


def test_save_as_run_stores_a_normal_custom_run(starts, tmp_path):
    start = starts["head"]
    weights = whatif.seed_weights(start, "balanced")
    store = RunStore(tmp_path / "runs")
    record = whatif.save_as_run(start, weights, 0.5, store)
    stored = store.load(record["run_id"])
    assert stored["class_weight"] == "custom:what-if" and stored["approach"] == "head"
    assert stored["class_weights"] == pytest.approx(weights.tolist())
    assert stored["config"]["class_weights"] == [dict(zip(start.classes, weights.tolist()))]
    assert stored["tau"] == 0.5
    assert stored["confusion_matrix"] == whatif.refit(start, weights, tau=0.5)["confusion_matrix"]


def test_start_needs_the_runs_features(demo_experiment, demo_dataset, tmp_path):
    results, _ = demo_experiment
    record = results["runs"][0]
    with pytest.raises(ConfigError, match="no longer cached"):
        whatif.start_from(record, demo_dataset, tmp_path / "empty-cache")
    assert not list((tmp_path / "empty-cache").rglob("*.npz")), "nothing may be extracted"
    with pytest.raises(ConfigError, match="changed since run"):
        whatif.start_from({**record, "dataset": {**record["dataset"], "fingerprint": "other"}}, demo_dataset, tmp_path)
    with pytest.raises(ConfigError, match="is a finetune run"):
        whatif.start_from({**record, "approach": "finetune"}, demo_dataset, tmp_path)

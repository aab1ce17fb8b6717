"""Class-weight what-if refits on the demo run's cached features (core.whatif)."""
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

import core.experiment as experiment
import core.whatif as whatif
from core.classifiers import LinearHead, SvmClassifier
from core.errors import ClassWeightError, ConfigError, TransferScopeError
from core.report import run_records
from core.store import RunStore
from core.torch_threads import torch_mkl

from builders import make_record


@pytest.fixture(autouse=True)
def no_kept_refits():
    """Each test fits for itself: nothing kept by an earlier test's refits."""
    whatif.REFITS.clear()
    whatif.PAIRED.clear()


@pytest.fixture(scope="module")
def starts(demo_experiment, demo_dataset, feature_cache):
    """A Start per approach, from the demo experiment's unweighted runs."""
    results, store = demo_experiment
    records = {r.approach: r for r in run_records(results) if r.class_weight == "none"}
    return {approach: whatif.start_from(record, demo_dataset, feature_cache, store.load_predictions(record.run_id))
            for approach, record in records.items()}


@pytest.mark.parametrize("approach", ["svm", "head"])
def test_refit_with_the_runs_own_weights_reproduces_it(starts, approach):
    start = starts[approach]
    outcome = whatif.refit(start, whatif.seed_weights(start, "run"), tau=start.record.tau)
    assert outcome["confusion_matrix"] == start.record.confusion_matrix
    change = whatif.compare_with_start(start, outcome)
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
    before = start.record.per_class[rare].predicted
    assert outcome["per_class"][rare].predicted > before
    deltas = whatif.compare_with_start(start, outcome)
    row = deltas["per_class"].iloc[rare]
    assert row["weight"] == pytest.approx(50 * deltas["per_class"]["weight"].min())  # rescaled, ratios kept
    assert row["start weight"] == 1.0 and bool(row["minority"])
    recall_change = outcome["per_class"][rare].recall - start.record.per_class[rare].recall
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
    """While one session refits, another's refit waits, and gives up with a message after REFIT_WAIT_S."""
    monkeypatch.setattr(whatif, "REFIT_WAIT_S", 0.05)
    assert whatif.REFIT_SLOT.acquire(owner=False, timeout_s=1)
    try:
        with pytest.raises(TransferScopeError, match="busy refitting"):
            whatif.refit(starts["svm"], whatif.seed_weights(starts["svm"], "run"))
    finally:
        whatif.REFIT_SLOT.release()


def count_fits(monkeypatch) -> list:
    """Record the weights of every real fit that refits make."""
    fits = []
    real = whatif.fit_run
    monkeypatch.setattr(whatif, "fit_run", lambda *args, **kwargs: fits.append(args[5].copy())
                        or real(*args, **kwargs))
    return fits


def test_same_weights_again_and_any_tau_cost_no_refit(starts, monkeypatch):
    """Every tau change refit although tau only rescales the stored scores; weights tried before refit again."""
    fits, start = count_fits(monkeypatch), starts["head"]
    weights, heavier = whatif.seed_weights(start, "run"), whatif.seed_weights(start, "balanced")
    first = whatif.refit(start, weights, tau=0.0)
    adjusted = whatif.refit(start, weights, tau=2.0)
    whatif.refit(start, heavier)
    again = whatif.refit(start, weights, tau=0.0)
    assert len(fits) == 2 and not first["cached"] and adjusted["cached"] and again["cached"]
    assert again["confusion_matrix"] == first["confusion_matrix"] and again["refit_seconds"] == first["refit_seconds"]
    fresh = whatif.refit(start, weights, tau=2.0, admit=lambda: pytest.fail("a kept refit is not rate-limited"))
    assert fresh["y_pred"].tolist() == adjusted["y_pred"].tolist()
    assert adjusted["balanced_accuracy"] != first["balanced_accuracy"]  # tau still moves the predictions


def test_a_refused_admission_fits_nothing(starts, monkeypatch):
    fits = count_fits(monkeypatch)

    def refuse():
        raise TransferScopeError("slow down")

    with pytest.raises(TransferScopeError, match="slow down"):
        whatif.refit(starts["svm"], whatif.seed_weights(starts["svm"], "balanced"), admit=refuse)
    assert fits == []


def test_the_owner_refits_before_viewers_waiting_longer(starts, monkeypatch):
    """With many viewers refitting, the owner waited behind all of them (30 s and refused near 40)."""
    order, real = [], whatif.fit_run
    monkeypatch.setattr(whatif, "fit_run", lambda *a, **k: order.append(threading.current_thread().name)
                        or real(*a, **k))
    start = starts["svm"]
    assert whatif.REFIT_SLOT.acquire(owner=False, timeout_s=1)  # a viewer's refit is running
    callers = [threading.Thread(target=whatif.refit, name=name, args=(start, whatif.seed_weights(start, scheme)),
                                kwargs={"owner": name == "owner"})
               for name, scheme in (("viewer", "balanced"), ("owner", "sqrt"))]
    try:
        callers[0].start()
        wait_until(lambda: whatif.REFIT_SLOT.waiting() == (0, 1))
        callers[1].start()
        wait_until(lambda: whatif.REFIT_SLOT.waiting() == (1, 1))
    finally:
        whatif.REFIT_SLOT.release()
    for caller in callers:
        caller.join(60)
    assert order == ["owner", "viewer"]


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_save_as_run_stores_a_normal_custom_run(starts, tmp_path):
    start = starts["head"]
    weights = whatif.seed_weights(start, "balanced")
    store = RunStore(tmp_path / "runs")
    record = whatif.save_as_run(start, weights, 0.5, store)
    stored = store.load(record.run_id)
    assert stored.class_weight == "custom:what-if" and stored.approach == "head"
    assert stored.class_weights == pytest.approx(weights.tolist())
    assert stored.config["remedies"] == [dict(zip(start.classes, weights.tolist()))]
    assert stored.tau == 0.5
    assert stored.confusion_matrix == whatif.refit(start, weights, tau=0.5)["confusion_matrix"]


def test_start_needs_the_runs_features(demo_experiment, demo_dataset, tmp_path):
    results, _ = demo_experiment
    record = run_records(results)[0]
    with pytest.raises(ConfigError, match="no longer cached"):
        whatif.start_from(record, demo_dataset, tmp_path / "empty-cache")
    assert not list((tmp_path / "empty-cache").rglob("*.npz")), "nothing may be extracted"
    with pytest.raises(ConfigError, match="changed since run"):
        whatif.start_from(replace(record, dataset=replace(record.dataset, fingerprint="other")), demo_dataset, tmp_path)
    with pytest.raises(ConfigError, match="is a finetune run"):
        whatif.start_from(replace(record, approach="finetune"), demo_dataset, tmp_path)


def test_the_change_comes_with_a_paired_test_against_the_start(starts):
    start = starts["head"]
    same = whatif.compare_with_start(start, whatif.refit(start, whatif.seed_weights(start, "run"), start.record.tau))
    assert same["paired"]["mcnemar_p"] == 1.0 and same["paired"]["macro_f1_low"] == same["paired"]["macro_f1_high"] == 0
    weights = np.ones(len(start.classes))
    weights[int(np.argmin(start.dataset.train_counts))] = 100.0
    outcome = whatif.refit(start, weights)
    paired = whatif.compare_with_start(start, outcome)["paired"]
    right_before, right_after = start.start_pred == start.features.y_test, outcome["y_pred"] == start.features.y_test
    assert (paired["n_a_only"], paired["n_b_only"]) == ((right_before & ~right_after).sum(),
                                                        (~right_before & right_after).sum())
    assert paired["macro_f1_delta"] == pytest.approx(outcome["macro_f1"] - start.record.macro_f1)
    assert paired["macro_f1_low"] <= paired["macro_f1_delta"] <= paired["macro_f1_high"]


def test_tau_is_not_applied_to_svm_scores(starts):
    start = starts["svm"]
    weights = whatif.seed_weights(start, "run")
    plain, asked = whatif.refit(start, weights), whatif.refit(start, weights, tau=3.0)
    assert asked["tau"] == 0.0 and asked["y_pred"].tolist() == plain["y_pred"].tolist()


def tuned_start(start, tuned: dict):
    """`start` as if its run had been trained with --tune and had chosen `tuned`."""
    record = replace(start.record, config={**start.record.config, "tune": True}, tuned=tuned,
                     **{k: v for k, v in tuned.items() if k == "tau"})
    return whatif.start_from(record, start.dataset, start.config.cache_dir)


def test_refits_of_a_tuned_run_reuse_its_choice_and_never_tune_again(starts, monkeypatch):
    import core.tuning

    def no_tuning(*args, **kwargs):
        raise AssertionError("a what-if refit tuned again")
    monkeypatch.setattr(core.tuning, "choose_by_cv", no_tuning)
    monkeypatch.setattr(core.tuning, "tune_tau", no_tuning)
    used_c = []
    monkeypatch.setattr(SvmClassifier, "fit", lambda self, *a, _fit=SvmClassifier.fit, **k: (used_c.append(self.C),
                                                                                               _fit(self, *a, **k))[1])
    svm = tuned_start(starts["svm"], {"svm_c": 10.0})
    outcome = whatif.refit(svm, whatif.seed_weights(svm, "run"))
    assert used_c == [10.0] * 4  # three validation folds and the refit itself, all with the chosen C
    assert 0 < outcome["validation"]["macro_f1"] <= 1
    assert "C = 10 by cross-validation" in svm.notes()[0] and "do not cross-validate again" in svm.notes()[0]
    head = tuned_start(starts["head"], {"tau": 1.5})
    assert whatif.refit(head, whatif.seed_weights(head, "run"), head.record.tau)["tau"] == 1.5
    assert "tau = 1.5" in head.notes()[0]


def test_head_refits_reuse_the_chosen_epoch_count(starts, monkeypatch):
    start = starts["head"]
    trained = []
    monkeypatch.setattr(LinearHead, "fit", lambda self, *a, _fit=LinearHead.fit, **k: (
        trained.append(self.epochs), _fit(self, *a, **k))[1])
    whatif.refit(start, whatif.seed_weights(start, "balanced"))
    # three validation folds and the refit, each trained for the epoch count the run chose on its folds
    assert trained == [start.record.tuned["epochs"]] * 4 and start.head_epochs == start.record.tuned["epochs"]
    assert f"{start.head_epochs} epochs" in start.notes()[-1]


@pytest.mark.parametrize("approach", ["svm", "head"])
def test_unchanged_weights_give_the_runs_own_validation(starts, approach):
    """Issue 25: a head's folds chose their own epochs and the refit's folds reused the final head's, so
    unchanged weights showed a validation change; the folds now train the epochs chosen on them."""
    start = starts[approach]
    outcome = whatif.refit(start, whatif.seed_weights(start, "run"), tau=start.record.tau,
                           offsets=start.record.offsets)
    assert [row["delta"] for row in whatif.validation_change(start, outcome)] == [0.0] * 3


def test_a_refit_runs_on_one_thread_and_leaves_other_threads_alone(starts, monkeypatch):
    """Per-thread limit: a thread that first uses torch during a refit keeps the process's thread count."""
    before, mkl = torch.get_num_threads(), torch_mkl()
    torch.set_num_threads(2)
    seen = {}

    def fit_and_look(*args, _fit=experiment.fit_run, **kwargs):
        seen["refit thread"] = torch.get_num_threads()
        seen["refit thread mkl"] = mkl.MKL_Get_Max_Threads() if mkl else 1
        newcomer = threading.Thread(target=lambda: seen.setdefault("new thread", torch.get_num_threads()))
        newcomer.start()
        newcomer.join()
        return _fit(*args, **kwargs)

    def refit_in_a_fresh_thread():  # as a Streamlit script thread whose first torch use is the refit
        whatif.refit(starts["head"], whatif.seed_weights(starts["head"], "run"))
        seen["refit thread after"] = torch.get_num_threads()
    monkeypatch.setattr(whatif, "fit_run", fit_and_look)
    try:
        worker = threading.Thread(target=refit_in_a_fresh_thread)
        worker.start()
        worker.join()
        seen["process"] = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert seen == {"refit thread": 1, "refit thread mkl": 1, "new thread": 2, "refit thread after": 2, "process": 2}


def test_offsets_and_tau_rescore_a_refit_without_refitting(starts, monkeypatch):
    start = starts["svm"]
    outcome = whatif.refit(start, whatif.seed_weights(start, "run"))
    rare = int(np.argmin(start.dataset.train_counts))
    monkeypatch.setattr(experiment, "fit_run", lambda *a, **k: pytest.fail("rescoring refitted"))
    offsets = np.zeros(len(start.classes))
    offsets[rare] = 100.0  # far above every score gap (SVM scores are votes, up to n_classes)
    shifted = whatif.rescore(start, outcome, offsets=offsets)
    assert shifted["per_class"][rare].predicted == len(start.features.y_test)
    assert shifted["validation"]["accuracy"] < outcome["validation"]["accuracy"]  # validation sees it first
    assert whatif.rescore(start, outcome)["confusion_matrix"] == outcome["confusion_matrix"]


def test_the_svm_says_why_a_weight_cannot_matter(starts):
    """A class fitted with slack to spare (no support vector at C x weight) gets an explanation, others don't."""
    start = starts["svm"]
    weights = whatif.seed_weights(start, "run")
    outcome = whatif.refit(start, weights)
    support = outcome["support"]
    notes = whatif.weight_explanations(start, outcome)
    free = [name for name, n_sv, n_bound in zip(start.classes, support["support_vectors"], support["at_bound"])
            if n_sv and not n_bound]
    assert [note.split(":")[0] for note in notes] == free
    assert all("cannot change the boundary" in note and "lower C" in note for note in notes)
    assert whatif.weight_explanations(starts["head"], whatif.refit(starts["head"], weights)) == []


def test_a_refit_reports_its_validation_change(starts):
    start = starts["head"]
    outcome = whatif.refit(start, whatif.seed_weights(start, "balanced"))
    change = whatif.validation_change(start, outcome)
    assert [row["after"] for row in change] == [outcome["validation"][k] for k in ("accuracy", "macro_f1",
                                                                                     "balanced_accuracy")]


def test_a_saved_run_records_that_test_scores_were_on_screen(starts, tmp_path):
    start = starts["svm"]
    offsets = [0.0] * len(start.classes)
    record = whatif.save_as_run(start, whatif.seed_weights(start, "run"), 0.0, RunStore(tmp_path / "runs"),
                                offsets=offsets, test_visible=True)
    assert record.chosen_with_test_visible is True and record.offsets == offsets
    assert record.remedy.endswith("+offsets")


# ---------------------------------------------------------------- issue 13: weight scale, the model fitted


@pytest.mark.parametrize("approach", ["svm", "head"])
def test_scaling_every_weight_changes_nothing(starts, approach):
    """For the SVM a weight multiplies C: unscaled, weights x 10 would be C x 10."""
    start = starts[approach]
    weights = np.geomspace(0.5, 3, len(start.classes))
    plain, scaled = whatif.refit(start, weights), whatif.refit(start, weights * 10)
    assert scaled["confusion_matrix"] == plain["confusion_matrix"]
    np.testing.assert_allclose(scaled["weights"], plain["weights"])
    counts = np.asarray(start.dataset.train_counts)
    assert (plain["weights"] * counts).sum() == pytest.approx(counts.sum())


def test_the_newest_feature_run_on_the_dataset_is_picked():
    def run(run_id, approach, fingerprint):
        return make_record(run_id=run_id, approach=approach, dataset={"fingerprint": fingerprint})

    records = [run("f", "finetune", "ours"), run("o", "svm", "other"), run("h", "head", "ours"), run("s", "svm", "ours")]
    assert whatif.newest_feature_run(records, "ours").run_id == "h"  # records come newest first
    assert whatif.newest_feature_run(records[:2], "ours") is None  # a fine-tune run caches no features


def test_the_svm_note_says_what_a_larger_weight_really_does(demo_experiment, demo_dataset, feature_cache):
    """Issue 25: the note said a class whose support vectors are all below their bound could not gain from a
    larger weight. True of its raw weight alone; but What-if rescales weights to an average of 1 per image, so
    raising it lowers every other class's bound. Both halves of the sentence are checked against refits."""
    results, store = demo_experiment
    record = next(r for r in store.list_runs() if r.approach == "svm" and r.class_weight == "balanced")
    start = whatif.start_from(record, demo_dataset, feature_cache, store.load_predictions(record.run_id))
    weights = np.asarray(record.class_weights)
    outcome = whatif.refit(start, weights)
    slack = [i for i, row in enumerate(record.per_class) if row.support_vectors and not row.at_bound]
    assert slack, "the demo's balanced SVM should have a class with no support vector at its bound"
    k = slack[0]
    (note,) = [n for n in whatif.weight_explanations(start, outcome) if n.startswith(f"{start.classes[k]}:")]
    assert "a larger bound for it alone would change nothing" in note
    assert "raising its weight lowers every other class's bound" in note and "decision offset" in note
    X, y, X_test = start.features.X_train, start.features.y_train, start.features.X_test
    alone = weights.copy()
    alone[k] *= 10  # its bound alone, the others' untouched: the same fit
    before = SvmClassifier(class_weight=weights, C=start.config.svm_c).fit(X, y)
    after = SvmClassifier(class_weight=alone, C=start.config.svm_c).fit(X, y)
    np.testing.assert_allclose(after.decision_function(X_test), before.decision_function(X_test), atol=1e-3)
    raised = weights.copy()
    raised[k] *= 10  # as What-if applies it: rescaled, so every other class's weight shrinks
    refit = whatif.refit(start, raised)
    shrink = np.delete(refit["weights"] / weights, k)
    assert np.allclose(shrink, shrink[0]) and shrink[0] < 1


def live_note_for(n_train: int, svm_model: str | None = None, approach: str = "svm") -> str | None:
    """What-if's live-refit note for a run of `n_train` 1,280-d training images in 24 classes (only shapes are
    read)."""
    from types import SimpleNamespace

    start = SimpleNamespace(record=make_record(approach=approach, svm_model=svm_model),
                            config=experiment.ExperimentConfig(data="x", logreg_c=0.1), classes=[""] * 24,
                            head_epochs=8, features=SimpleNamespace(X_train=np.empty((n_train, 1280), np.float32),
                                                                    y_train=np.arange(n_train) % 24))
    return whatif.live_refit_note(start, whatif.refit_estimate(start))


def test_live_refit_note_follows_the_svm_the_run_fitted():
    """Past EXACT_SVM_MAX_TRAIN the run's SVM is the Nystroem approximation, whose refit grows linearly: the note
    names that model and an estimate from the measured curve, not the exact kernel's square growth."""
    from core.classifiers import EXACT_SVM_MAX_TRAIN, choose_svm

    assert live_note_for(6000, "SVC (rbf kernel)") is None
    exact = live_note_for(10_000, "SVC (rbf kernel)")
    assert "SVC (rbf kernel)" in exact and "square" in exact
    assert live_note_for(2 * EXACT_SVM_MAX_TRAIN, choose_svm("rbf", 2 * EXACT_SVM_MAX_TRAIN).model) is None
    n = 100_000  # the Nystroem refit (its map kept) grows linearly: past the live limit only far beyond the exact's
    approximate = live_note_for(n, choose_svm("rbf", n).model)
    assert "Nystroem approximation" in approximate and "square" not in approximate
    assert f"{n:,}" in approximate and "about" in approximate


@pytest.mark.parametrize("approach,name", [("head", "linear head"), ("logreg", "logistic regression")])
def test_linear_runs_on_tens_of_thousands_of_images_refit_on_a_button(approach, name):
    """A head refit on 24k photos took 30 s (bench.photo_scale), yet the note said the linear approaches refit in
    about a second at any size, and no note was shown for them."""
    assert live_note_for(1000, approach=approach) is None
    note = live_note_for(24_000, approach=approach)
    assert f"this run's {name} on 24,000 training images" in note and "press Refit" in note

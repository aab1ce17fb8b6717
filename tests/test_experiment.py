"""Approaches x class-weight schemes on one dataset, recorded in the run store (core.experiment)."""
import json

import numpy as np
import pytest
import torch

from core.config import run_split
from core.data import load_dataset
from builders import make_record
from core.errors import BackboneError, ClassWeightError, ConfigError, DataError
from core.estimates import UNITS
from core.model_graph import score_module
from core.experiment import ExperimentConfig, best_by_validation, resolve_class_weight, run_experiment
from core.records import RunRecord
from core.store import RunStore
from core.weights import class_weights


def test_demo_experiment_records_every_combination(demo_experiment, check_results_schema):
    results, store = demo_experiment
    check_results_schema(results, n_runs=4)
    combos = [(r["approach"], r["class_weight"]) for r in results["runs"]]
    assert combos == [("svm", "none"), ("svm", "balanced"), ("head", "none"), ("head", "balanced")]
    assert sorted(r.run_id for r in store.list_runs()) == sorted(r["run_id"] for r in results["runs"])
    assert len({r["run_id"] for r in results["runs"]}) == 4


def test_demo_experiment_reuses_the_cached_features(demo_experiment, demo_features):
    results, _ = demo_experiment
    assert results["cache_hit"] is True
    assert results["feature_key"] == demo_features.key
    assert results["extract_seconds"] == pytest.approx(demo_features.extract_seconds)
    assert results["backbone"]["name"] == "efficientnet_lite0" and results["backbone"]["feature_dim"] == 1280
    assert all(r["feature_key"] == demo_features.key for r in results["runs"])


def test_demo_experiment_dataset_summary(demo_experiment, demo_dataset):
    ds = demo_experiment[0]["dataset"]
    assert ds["classes"] == demo_dataset.classes
    assert ds["train_counts"] == demo_dataset.train_counts and ds["test_counts"] == demo_dataset.test_counts
    assert ds["root"] == demo_dataset.root


def test_class_weights_are_recorded_per_run(demo_experiment, demo_dataset):
    runs = demo_experiment[0]["runs"]
    balanced = class_weights("balanced", demo_dataset.train_counts)
    for run in runs:
        expected = balanced if run["class_weight"] == "balanced" else np.ones(10)
        assert run["class_weights"] == pytest.approx(expected.tolist())


def test_features_carry_signal(demo_experiment):
    """Tiny 32-pixel images still separate the digits far better than chance (0.1)."""
    for run in demo_experiment[0]["runs"]:
        assert run["accuracy"] > 0.3, (run["approach"], run["class_weight"], run["accuracy"])


def test_balanced_weights_help_the_rare_classes(demo_experiment):
    runs = {(r["approach"], r["class_weight"]): r for r in demo_experiment[0]["runs"]}
    assert runs["svm", "balanced"]["balanced_accuracy"] > runs["svm", "none"]["balanced_accuracy"]
    assert runs["head", "balanced"]["balanced_accuracy"] >= runs["head", "none"]["balanced_accuracy"] - 0.02


def test_head_runs_have_learning_curves(demo_experiment):
    for run in demo_experiment[0]["runs"]:
        if run["approach"] == "head":
            assert 1 <= len(run["history"]) <= 15
            assert {"train_acc", "val_acc", "test_acc"} <= run["history"][0].keys()
        else:
            assert run["history"] == []


def test_svm_runs_share_one_kernel_computation(demo_dir, demo_features, feature_cache, image_size, tmp_path,
                                               monkeypatch):
    import core.classifiers
    from core.classifiers import KernelCache, SvmClassifier

    computed = []
    real = core.classifiers.rbf_kernels
    monkeypatch.setattr(core.classifiers, "rbf_kernels", lambda *a: computed.append(a) or real(*a))
    monkeypatch.setattr(core.classifiers, "KERNEL_CACHE", KernelCache())
    config = ExperimentConfig(data=str(demo_dir), approaches=("svm",), remedies=("none", "balanced", "sqrt"),
                              image_size=image_size, device="cpu", cache_dir=str(feature_cache), workers=0)
    store = RunStore(tmp_path / "runs")
    results = run_experiment(config, store=store)
    assert len(computed) == 1
    for run in results["runs"]:
        direct = SvmClassifier(class_weight=run["class_weights"]).fit(demo_features.X_train, demo_features.y_train)
        stored = store.load_predictions(run["run_id"])["pred"].to_numpy()
        assert np.array_equal(stored, direct.predict(demo_features.X_test)), run["class_weight"]


def test_stored_runs_round_trip(demo_experiment, demo_features, demo_dataset):
    results, store = demo_experiment
    for run in results["runs"]:
        record = store.load(run["run_id"])
        assert record.to_json() == run  # results.json holds the stored records
        assert record.accuracy == run["accuracy"] and record.confusion_matrix == run["confusion_matrix"]
        assert record.config["approaches"] == ["svm", "head"]
        predictions = store.load_predictions(run["run_id"])
        assert len(predictions) == len(demo_dataset.test)
        assert predictions["true"].tolist() == [s.label for s in demo_dataset.test]
        assert (predictions["true"] == predictions["pred"]).mean() == pytest.approx(run["accuracy"])
        model = score_module(store.load_model(run["run_id"]))  # the arrays stored, as predict runs them
        assert model(torch.from_numpy(demo_features.X_test)).argmax(1).tolist() == predictions["pred"].tolist()


def test_custom_weights_are_recorded(demo_dir, demo_features, feature_cache, image_size, tmp_path):
    table_file = tmp_path / "rare-first.json"
    table_file.write_text(json.dumps({"9-nine": 4.0}))
    config = ExperimentConfig(data=str(demo_dir), approaches=("svm",),
                              remedies=({"0-zero": 0.5, "9-nine": 3}, str(table_file)),
                              image_size=image_size, device="cpu", cache_dir=str(feature_cache), workers=0)
    results = run_experiment(config, store=RunStore(tmp_path / "runs"))
    first, second = results["runs"]
    assert first["class_weight"] == "custom"
    counts = np.asarray(results["dataset"]["train_counts"])
    for run, raw in ((first, [0.5] + [1.0] * 8 + [3.0]), (second, [1.0] * 9 + [4.0])):
        expected = np.asarray(raw) * counts.sum() / (np.asarray(raw) * counts).sum()  # 1 per training image
        assert run["class_weights"] == pytest.approx(expected.tolist())
    assert second["class_weight"] == "custom:rare-first"
    assert results["config"]["remedies"][0] == {"0-zero": 0.5, "9-nine": 3}


@pytest.mark.parametrize("spec,error", [
    ({"cow": 1.0}, "unknown classes"),
    ({"0-zero": -1}, "finite number >= 0"),
    ({"0-zero": float("nan")}, "finite number >= 0"),
    ({"0-zero": "heavy"}, "must be a number"),
    ("inverse", "unknown class-weight scheme"),
    ("missing.json", "not found"),
])
def test_bad_weights_fail_before_any_extraction(demo_dir, tmp_path, spec, error):
    cache = tmp_path / "cache"
    config = ExperimentConfig(data=str(demo_dir), remedies=("balanced", spec), device="cpu",
                              cache_dir=str(cache), image_size=32)
    with pytest.raises(ClassWeightError, match=error):
        run_experiment(config)
    assert not (cache / "features").exists()
    assert not (cache / "runs").exists() or not list((cache / "runs").iterdir())


@pytest.mark.parametrize("overrides,error,match", [
    ({"approaches": ("svm", "knn")}, ConfigError, "knn"),
    ({"approaches": ()}, ConfigError, "none given"),
    ({"backbone": "resnet19"}, BackboneError, "resnet18"),
    ({"pool": "min"}, ConfigError, "min"),
    ({"epochs": 0}, ConfigError, "epochs"),
    ({"lr": 0.0}, ConfigError, "lr"),
    ({"svm_kernel": "cubic"}, ConfigError, "cubic"),
    ({"tau": -0.5}, ConfigError, "tau"),
    ({"tau": float("nan")}, ConfigError, "tau"),
    ({"remedies": ()}, ConfigError, "remedies"),
])
def test_bad_settings_fail_fast(demo_dir, tmp_path, overrides, error, match):
    config = ExperimentConfig(data=str(demo_dir), cache_dir=str(tmp_path / "cache"), **overrides)
    with pytest.raises(error, match=match):
        run_experiment(config)
    assert not (tmp_path / "cache").exists()


def test_missing_data_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        run_experiment(ExperimentConfig(data=str(tmp_path / "nope"), cache_dir=str(tmp_path / "cache")))
    assert not (tmp_path / "cache").exists()


def test_resolve_class_weight_labels(demo_dataset, tmp_path):
    label, w = resolve_class_weight("sqrt", demo_dataset)
    assert label == "sqrt" and w == pytest.approx(class_weights("sqrt", demo_dataset.train_counts))
    label, w = resolve_class_weight("effective", demo_dataset, beta=0.99)
    assert label == "effective"
    assert w == pytest.approx(class_weights("effective", demo_dataset.train_counts, beta=0.99))


def test_logit_adjustment_is_applied_and_recorded(demo_dir, demo_features, feature_cache, image_size, tmp_path):
    base = dict(data=str(demo_dir), approaches=("head",), remedies=("none",), epochs=15,
                image_size=image_size, device="cpu", cache_dir=str(feature_cache), workers=0)
    store = RunStore(tmp_path / "runs")
    plain = run_experiment(ExperimentConfig(**base), store=store)["runs"][0]
    adjusted = run_experiment(ExperimentConfig(**base, tau=2.0), store=store)["runs"][0]
    assert adjusted["tau"] == 2.0 and plain["tau"] == 0.0
    rare = slice(7, 10)  # the three rarest demo classes
    plain_pred = sum(row["predicted"] for row in plain["per_class"][rare])
    adjusted_pred = sum(row["predicted"] for row in adjusted["per_class"][rare])
    assert adjusted_pred > plain_pred


@pytest.mark.slow
def test_finetune_approach_end_to_end(tiny_dir, tmp_path, check_results_schema):
    cache = tmp_path / "cache"
    config = ExperimentConfig(data=str(tiny_dir), approaches=("finetune",), remedies=("balanced+offsets",),
                              epochs=2, image_size=32, batch_size=16, device="cpu", cache_dir=str(cache), workers=0)
    results = run_experiment(config)
    check_results_schema(results, n_runs=1)
    run = results["runs"][0]
    assert run["approach"] == "finetune" and run["class_weight"] == "balanced"
    assert len(run["history"]) == 2 and "val_macro_f1" in run["history"][0] and "test_acc" not in run["history"][0]
    chosen = max(run["history"], key=lambda row: row["val_macro_f1"])["epoch"]  # ties: the first
    assert run["chosen_epoch"] == chosen and run["unfreeze"] == "none" and run["activation_cache"] is True
    assert run["validation"] is not None and len(run["offsets"]) == 3  # offsets chosen on the held-out scores
    validation = RunStore(cache / "runs").load_validation(run["run_id"])
    assert 0 < len(validation) < sum(results["dataset"]["train_counts"])  # the held-out part only
    # best_by_validation can pick a fine-tune run, against probes scored worse on validation
    scores = {**run["validation_cross_fitted"], "macro_f1": run["validation_cross_fitted"]["macro_f1"] - 0.1}
    probe = make_record(run_id="head-run", approach="head", validation=scores, validation_cross_fitted=scores)
    assert results["best_by_validation"] == run["run_id"] == best_by_validation([probe, RunRecord.from_json(run)])
    assert results["cache_hit"] is False and results["feature_key"] is None
    assert not (cache / "features").exists()  # fine-tuning needs no cached features
    assert [r.run_id for r in RunStore(cache / "runs").list_runs()] == [run["run_id"]]


# ---------------------------------------------------------------- issue 8: trustworthy numbers


def test_tau_is_not_applied_to_svm_decision_values(on_demo_features):
    plain, adjusted = (on_demo_features(tau=tau)["runs"][0] for tau in (0.0, 3.0))
    assert adjusted["tau"] == 0.0  # the tau actually used
    assert adjusted["confusion_matrix"] == plain["confusion_matrix"]


def test_runs_record_seed_intervals_and_device(on_demo_features):
    run = on_demo_features(seed=3)["runs"][0]
    assert run["seed"] == 3 and run["config"]["seed"] == 3 and run["device"] == "cpu"
    for metric in ("accuracy", "macro_f1", "balanced_accuracy"):
        assert run[f"{metric}_low"] <= run[metric] <= run[f"{metric}_high"]
        assert 0 < run[f"{metric}_high"] - run[f"{metric}_low"] < 0.5
    assert run["no_test_support"] == []


def test_seeds_train_every_run_once_per_seed(on_demo_features):
    results = on_demo_features(approaches=("head",), seeds=(0, 1))
    runs = results["runs"]
    assert [r["seed"] for r in runs] == [0, 1] and results["config"]["seeds"] == [0, 1]
    histories = [[row["train_loss"] for row in run["history"]] for run in runs]
    assert histories[0] != histories[1]  # a different initialisation and shuffling


def test_seeds_give_single_folder_datasets_their_own_split(make_class_tree, tmp_path, image_size):
    root = make_class_tree(tmp_path / "flat", {"a": 8, "b": 8})
    config = ExperimentConfig(data=str(root), approaches=("svm",), remedies=("none",), seeds=(0, 1),
                              image_size=image_size, device="cpu", cache_dir=str(tmp_path / "cache"), workers=0)
    runs = run_experiment(config)["runs"]
    fingerprints = [r["dataset"]["fingerprint"] for r in runs]
    assert fingerprints[0] != fingerprints[1]
    assert runs[0]["dataset"]["content_fingerprint"] == runs[1]["dataset"]["content_fingerprint"]
    for run in runs:  # what a page that reopens a run rebuilds: the very split it was tested on
        assert load_dataset(root, **run_split(RunRecord.from_json(run))).fingerprint == run["dataset"]["fingerprint"]
    assert run_split() == {"seed": 0, "test_size": 0.2}  # a record without config: the declared defaults


def test_head_gets_the_batch_size_and_its_fit_time_excludes_test_scoring(on_demo_features, monkeypatch):
    import time

    import core.classifiers as classifiers

    batch_sizes, real_score, real_clock, skipped = [], classifiers.LinearHead._score, time.perf_counter, [0.0]

    def slow_score(self, prefix, X, y):  # scoring the test set "takes" 1000 s on a shifted clock
        batch_sizes.append(self.batch_size)
        result = real_score(self, prefix, X, y)
        skipped[0] += 1000.0 if prefix == "test" else 0.0
        return result

    monkeypatch.setattr(classifiers.LinearHead, "_score", slow_score)
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + skipped[0])
    run = on_demo_features(approaches=("head",), batch_size=7, epochs=3)["runs"][0]
    assert set(batch_sizes) == {7}
    epochs = len(run["history"])
    assert run["learning_curve_seconds"] >= 1000 * epochs
    assert run["fit_seconds"] < 1000  # the test scoring went to the learning curve, not to fitting


def test_tune_picks_svm_c_and_head_tau_on_training_folds_only(on_demo_features, monkeypatch, demo_features):
    import core.tuning as tuning

    seen = []
    real = tuning.cv_splits
    monkeypatch.setattr(tuning, "cv_splits", lambda y, seed: (seen.append(len(y)), real(y, seed))[1])
    results = on_demo_features(approaches=("svm", "head"), tune=True, svm_c=1234.0, tau=4.0)
    svm, head = results["runs"]
    assert svm["tuned"]["svm_c"] in tuning.SVM_C_GRID and "cv_macro_f1" in svm["tuned"]
    assert head["tuned"]["tau"] in tuning.TAU_GRID and head["tau"] == head["tuned"]["tau"]
    assert seen and set(seen) == {len(demo_features.X_train)}  # cross-validation never sees the test set


def test_results_hold_paired_comparisons(on_demo_features):
    results = on_demo_features(remedies=("none", "balanced"))
    (pair,) = results["comparisons"]
    none, balanced = results["runs"]
    assert (pair["run_a"], pair["run_b"]) == (none["run_id"], balanced["run_id"])
    assert pair["accuracy_delta"] == pytest.approx(balanced["accuracy"] - none["accuracy"])
    assert 0 <= pair["mcnemar_p"] <= 1 and pair["macro_f1_low"] <= pair["macro_f1_delta"] <= pair["macro_f1_high"]


@pytest.mark.parametrize("overrides,match", [
    ({"seeds": (0, -1)}, "seeds"),
    ({"image_size": 3}, "image_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"test_size": 0.99}, "test_size"),
])
def test_declared_ranges_are_checked(demo_dir, tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        ExperimentConfig(data=str(demo_dir), cache_dir=str(tmp_path), **overrides).validate()


# ---------------------------------------------------------------- issue 13: numbers that hold


def test_every_svm_fit_and_predict_pays_for_its_own_kernels(on_demo_features, monkeypatch):
    """Every RBF kernel "takes" 1000 s on a shifted clock: each scheme's fit pays for the train kernel and its
    predict for the test kernel, also when a run earlier in the process left the kernels cached."""
    import time

    import core.classifiers as classifiers

    real_kernel, real_clock, skipped = classifiers.rbf_kernel, time.perf_counter, [0.0]

    def slow_kernel(*args, **kwargs):
        result = real_kernel(*args, **kwargs)
        skipped[0] += 1000.0
        return result

    monkeypatch.setattr(classifiers, "KERNEL_CACHE", classifiers.KernelCache())
    monkeypatch.setattr(classifiers, "rbf_kernel", slow_kernel)
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + skipped[0])
    runs = [run for _ in range(2) for run in on_demo_features(remedies=("none", "balanced", "sqrt"))["runs"]]
    for run in runs:
        assert 1000 <= run["fit_seconds"] < 2000, run["class_weight"]  # the train kernel, once
        assert 1000 <= run["predict_seconds"] < 2000, run["class_weight"]  # the test kernel, once
        assert run["refit_seconds"] < run["fit_seconds"] + run["predict_seconds"] - 999  # the train kernel is reused


def test_runs_record_and_show_the_svm_model_actually_fitted(on_demo_features, demo_features, tmp_path, monkeypatch):
    """Past the rule's threshold the run records the Nystroem approximation, says why, and stores it so that
    predicting from the stored arrays gives the run's test predictions."""
    import core.classifiers
    from core.analysis import run_settings

    monkeypatch.setattr(core.classifiers, "KERNEL_CACHE", core.classifiers.KernelCache())
    kernel_svm = on_demo_features()["runs"][0]
    monkeypatch.setattr(core.classifiers, "EXACT_SVM_MAX_TRAIN", 100)
    switched = on_demo_features()["runs"][0]  # 453 training images > 100: the approximation
    assert kernel_svm["svm_model"] == "SVC (rbf kernel)" and kernel_svm["svm_model_reason"].startswith("exact:")
    assert switched["svm_model"] == "Nystroem approximation of the rbf kernel (453 components) + RidgeClassifier"
    assert switched["svm_model_reason"].startswith("approximate: 453 training images > 100")
    shown = run_settings(RunRecord.from_json(switched)).set_index("setting")["value"]
    assert shown["SVM model"] == switched["svm_model"] and "SVM kernel" not in shown.index
    assert shown["SVM model chosen"] == switched["svm_model_reason"]
    assert switched["validation"] is not None and switched["macro_f1"] > 0.3
    store = RunStore(tmp_path / "runs")  # on_demo_features' store
    with torch.inference_mode():
        stored = score_module(store.load_model(switched["run_id"]))(torch.from_numpy(demo_features.X_test)).numpy()
    assert np.array_equal(stored.argmax(1), store.load_predictions(switched["run_id"])["pred"].to_numpy())


def test_the_svm_estimates_its_time_before_it_starts_and_counts_down(demo_dir, feature_cache, image_size, tmp_path,
                                                                     monkeypatch):
    """The SVM's progress: the model and an estimate at 0 of its steps, before the kernel is computed; then one
    step after the kernel, the final fit and each validation fold, each with the time left. Logistic regression:
    an estimate, then one step per C value's folds and the final fit. The head: an estimate, then every epoch of the
    fold heads and the final head."""
    import core.classifiers

    events = []
    real = core.classifiers.rbf_kernels
    monkeypatch.setattr(core.classifiers, "KERNEL_CACHE", core.classifiers.KernelCache())
    monkeypatch.setattr(core.classifiers, "rbf_kernels", lambda *a: events.append(("kernel",)) or real(*a))
    config = ExperimentConfig(data=str(demo_dir), approaches=("svm", "logreg", "head"), remedies=("none",),
                              epochs=4, image_size=image_size, device="cpu", cache_dir=str(feature_cache), workers=0)
    run_experiment(config, progress=lambda stage, done, total, note="": events.append((stage, done, total, note)),
                   store=RunStore(tmp_path / "runs"))
    svm = [e for e in events if e[0] in ("fit SVM", "kernel")]  # done of UNITS: the estimated share of the steps
    assert svm[0][:3] == ("fit SVM", 0, UNITS) and "SVC (rbf kernel) on 453 images; estimate about" in svm[0][3]
    assert svm[1] == ("kernel",)  # computed after the estimate was shown
    steps = svm[2:]
    assert len(steps) == 5 and all(e[2] == UNITS for e in steps) and rising([0] + [e[1] for e in steps], ends=UNITS)
    assert all(e[3].endswith("left") for e in steps[:-1]) and steps[0][3].startswith("fit next")
    logreg = [e for e in events if e[0] == "fit logistic regression"]
    assert logreg[0][:3] == ("fit logistic regression", 0, UNITS) and "estimate about" in logreg[0][3]
    assert len(logreg) == 5 and rising([e[1] for e in logreg], ends=UNITS)
    head = [e for e in events if e[0] == "fit head"]  # 3 fold heads x 4 epochs, then the final head's (at most 4)
    assert head[0][:3] == ("fit head", 0, UNITS) and "estimate about" in head[0][3]
    assert rising([e[1] for e in head[:13]]) and head[-1][1:] == (UNITS, UNITS, "done")


def rising(counts: list[int], ends: int | None = None) -> bool:
    """Whether progress counts start at 0 and rise at every step (to `ends` when given)."""
    return counts[0] == 0 and all(b > a for a, b in zip(counts, counts[1:])) and ends in (None, counts[-1])


def test_every_stage_of_every_feature_approach_reports_progress_and_the_runs_count(demo_dir, demo_features,
                                                                                    feature_cache, image_size,
                                                                                    tmp_path):
    """Issue 30: logreg's stages were never reported, so a job showed the head's last stage for minutes."""
    from core.jobs import OVERALL_STAGE

    reports = []
    config = ExperimentConfig(data=str(demo_dir), approaches=("svm", "logreg", "head"), remedies=("none",),
                              epochs=3, image_size=image_size, device="cpu", cache_dir=str(feature_cache), workers=0)
    run_experiment(config, progress=lambda stage, done, total, note="": reports.append((stage, done, total)),
                   store=RunStore(tmp_path / "runs"))
    assert [(done, total) for stage, done, total in reports if stage == OVERALL_STAGE] == [(0, 3), (1, 3), (2, 3),
                                                                                           (3, 3)]
    stages = {stage for stage, _, _ in reports}
    assert {"fit SVM", "fit logistic regression", "fit head"} <= stages, stages  # each approach's own steps

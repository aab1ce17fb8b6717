"""Run approaches x class-weight schemes on one dataset and record every run."""
from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.classifiers import KERNEL_CACHE, LinearHead, SvmClassifier
from core.data import Dataset
from core.config import ExperimentConfig, check_class_weight_spec, load_data, load_features
from core.features import FeatureSet, rank_world, resolve_device
from core.finetune import FINETUNE_SETTINGS, FinetuneConfig, finetune
from core.metrics import evaluate
from core.runs import RunStore, new_run_id
from core.settings import LOGIT_APPROACHES
from core.stats import paired_comparison, run_intervals
from core.tuning import out_of_fold_scores, tune_svm_c, tune_tau
from core.weights import SCHEMES, adjust_logits, class_weights, read_custom_weights

FEATURE_APPROACHES = ("svm", "head")


def resolve_class_weight(spec, dataset: Dataset, beta: float = 0.999) -> tuple[str, np.ndarray]:
    """Turn a scheme name, a JSON file path or a `{class: weight}` dict into (label, per-class weights)."""
    counts = dataset.train_counts
    if isinstance(spec, dict):
        return "custom", class_weights("custom", counts, dataset.classes, custom=spec)
    if spec in SCHEMES and spec != "custom":
        return spec, class_weights(spec, counts, dataset.classes, beta=beta)
    check_class_weight_spec(spec)  # raises for an unknown scheme
    table = read_custom_weights(spec)
    return f"custom:{Path(spec).stem}", class_weights("custom", counts, dataset.classes, custom=table)


def run_experiment(config: ExperimentConfig, progress=None, store: RunStore | None = None) -> dict:
    """Load data, extract (cached) features once, train every approach x weight scheme x seed; results dict.

    >>> results = run_experiment(ExperimentConfig(data="cache/datasets/digits-demo"))  # doctest: +SKIP
    >>> [(r["approach"], r["class_weight"], round(r["macro_f1"], 2)) for r in results["runs"]]  # doctest: +SKIP
    """
    config.validate()
    store = store or RunStore(Path(config.cache_dir) / "runs")
    parts = [_run_seed(dataclasses.replace(config, seed=seed), progress, store) for seed in config.seed_list()]
    return {**parts[0], "config": config.to_dict(), "runs": [run for part in parts for run in part["runs"]],
            "comparisons": [pair for part in parts for pair in part["comparisons"]]}


def _run_seed(config: ExperimentConfig, progress, store: RunStore) -> dict:
    """Every approach x weight scheme with one seed (its own split for single-folder datasets)."""
    dataset = load_data(config)
    weights = [resolve_class_weight(spec, dataset, config.beta) for spec in config.class_weights]
    features = None
    if any(a in FEATURE_APPROACHES for a in config.approaches):
        features = load_features(config, dataset, progress)
    trained = [_train_and_record(config, dataset, features, approach, label, w, store, progress)
               for approach in config.approaches for label, w in weights]
    runs = [record for record, _ in trained]
    return {"dataset": dataset.summary(), "backbone": features.backbone if features else {"name": config.backbone},
            "extract_seconds": features.extract_seconds if features else 0.0,
            "feature_seconds": features.seconds if features else 0.0,
            "cache_hit": bool(features and features.cache_hit), "feature_key": features.key if features else None,
            "runtime": features.runtime if features else None,
            "runs": runs, "comparisons": compare_runs(trained, dataset)}


def compare_runs(trained: list[tuple[dict, np.ndarray]], dataset: Dataset) -> list[dict]:
    """Paired comparisons (B minus A) of runs on one test set that differ in approach or in class weights only."""
    y_test = np.array([s.label for s in dataset.test])
    return [{"run_a": a["run_id"], "run_b": b["run_id"],
             **paired_comparison(y_test, pred_a, pred_b, len(dataset.classes), seed=a["seed"])}
            for (a, pred_a), (b, pred_b) in itertools.combinations(trained, 2)
            if a["approach"] == b["approach"] or a["class_weight"] == b["class_weight"]]


def train_and_record(config: ExperimentConfig, dataset: Dataset, features: FeatureSet | None, approach: str,
                     weight_label: str, weights: np.ndarray, store: RunStore, progress=None,
                     head_epochs: int | None = None) -> dict:
    """Fit one approach with one class-weight vector, score the test set once, save the run; its record.

    `head_epochs` as in `fit_approach`.
    """
    return _train_and_record(config, dataset, features, approach, weight_label, weights, store, progress,
                             head_epochs)[0]


def _train_and_record(config: ExperimentConfig, dataset: Dataset, features: FeatureSet | None, approach: str,
                      weight_label: str, weights: np.ndarray, store: RunStore, progress=None,
                      head_epochs: int | None = None) -> tuple[dict, np.ndarray]:
    """`train_and_record`, also returning the test predictions (for paired comparisons)."""
    fitted = fit_approach(config, dataset, features, approach, weights, progress, head_epochs)
    y_test = np.array([s.label for s in dataset.test])
    tau = fitted.get("tau", config.tau) if approach in LOGIT_APPROACHES else 0.0  # SVM scores are not logits
    y_pred = adjust_logits(fitted["scores"], dataset.train_counts, tau).argmax(1) if tau else fitted["scores"].argmax(1)
    on_features = features is not None and approach in FEATURE_APPROACHES
    record = {"run_id": new_run_id(approach, weight_label), "approach": approach, "class_weight": weight_label,
              "class_weights": [float(w) for w in weights], "tau": tau, "seed": config.seed,
              "tuned": fitted.get("tuned", {}), **evaluate(y_test, y_pred, dataset.classes, dataset.train_counts),
              **run_intervals(y_test, y_pred, len(dataset.classes), seed=config.seed),
              "fit_seconds": fitted["fit_seconds"], "predict_seconds": fitted["predict_seconds"],
              "learning_curve_seconds": fitted.get("learning_curve_seconds", 0.0),
              "extract_seconds": features.extract_seconds if on_features else 0.0,
              "test_extract_seconds": _test_share(features, dataset) if on_features else 0.0,
              "device": resolve_device(config.device).type,
              "history": fitted.get("history", []), "dataset": dataset.summary(),
              "backbone": features.backbone if features else {"name": config.backbone, "pool": config.pool},
              "feature_key": features.key if features else None, "config": config.to_dict()}
    if rank_world()[0] == 0:  # under torchrun, one rank records the run
        store.save(record, model=fitted["model"], predictions=_predictions(dataset, y_pred, fitted["scores"]))
    return record, y_pred


def _test_share(features: FeatureSet, dataset: Dataset) -> float:
    """The test images' share of the one-off extraction (by image count): part of predicting new images."""
    return features.extract_seconds * len(dataset.test) / len(dataset.samples)


def fit_approach(config: ExperimentConfig, dataset: Dataset, features: FeatureSet | None, approach: str,
                 weights: np.ndarray, progress=None, head_epochs: int | None = None) -> dict:
    """Fit one approach with one class-weight vector: model, raw test scores, fit and predict seconds.

    `head_epochs`: train the head for exactly that many epochs on all training images, with no
    selection pass (e.g. the count an earlier run chose); ignored by the other approaches.
    """
    extra = {"head_epochs": head_epochs} if approach == "head" else {}
    return _FITTERS[approach](config, dataset, features, weights, progress, **extra)


def _predictions(dataset: Dataset, y_pred: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Per-image table: path, true and predicted class, and one raw score column per class."""
    classes = dataset.classes
    table = pd.DataFrame({"path": [s.path for s in dataset.test], "true": [s.label for s in dataset.test],
                          "pred": y_pred})
    table["true_class"] = [classes[i] for i in table["true"]]
    table["pred_class"] = [classes[i] for i in table["pred"]]
    return pd.concat([table, pd.DataFrame(scores, columns=[f"score_{i}" for i in range(len(classes))])], axis=1)


def _fit_svm(config, dataset, features, weights, progress) -> dict:
    """Fit the SVM; an rbf one reuses the feature set's kernels (computed on its first fit, then cached)."""
    if progress:
        progress("fit SVM", 0, 1)
    n_classes = len(dataset.classes)

    def make_svm(C):
        return SvmClassifier(kernel=config.svm_kernel, C=C, seed=config.seed)
    started = time.perf_counter()
    tuned = tune_svm_c(make_svm, features.X_train, features.y_train, n_classes, weights, config.seed) \
        if config.tune else {}
    svm = make_svm(tuned.get("svm_c", config.svm_c))
    kernels = KERNEL_CACHE.get(features.key, features.X_train, features.X_test) if config.svm_kernel == "rbf" else None
    svm.fit(features.X_train, features.y_train, class_weight=weights, n_classes=n_classes, kernels=kernels)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    scores = svm.decision_function(features.X_test) if kernels is None else svm.decision_function_kernel(kernels.test)
    if progress:
        progress("fit SVM", 1, 1)
    return {"model": svm, "scores": scores, "fit_seconds": fit_s, "predict_seconds": time.perf_counter() - started,
            "tuned": tuned}


def _fit_head(config, dataset, features, weights, progress, head_epochs=None) -> dict:
    n_classes = len(dataset.classes)

    def make_head():
        return LinearHead(epochs=head_epochs or config.epochs, lr=config.lr, batch_size=config.batch_size,
                          seed=config.seed, select_epochs=head_epochs is None)
    started = time.perf_counter()
    tuned = {}
    if config.tune:
        oof = out_of_fold_scores(make_head, features.X_train, features.y_train, n_classes, weights, config.seed)
        tuned = tune_tau(oof, features.y_train, dataset.train_counts, n_classes)
    head = make_head().fit(features.X_train, features.y_train, class_weight=weights, n_classes=n_classes,
                           eval_set=(features.X_test, features.y_test), progress=progress)
    fit_s = time.perf_counter() - started - head.eval_seconds_  # scoring the test set per epoch is not fitting
    started = time.perf_counter()
    scores = head.decision_function(features.X_test)
    return {"model": head, "scores": scores, "fit_seconds": fit_s, "history": head.history_,
            "predict_seconds": time.perf_counter() - started, "learning_curve_seconds": head.eval_seconds_,
            "tuned": tuned, **({"tau": tuned["tau"]} if tuned else {})}


def _fit_finetune(config, dataset, features, weights, progress) -> dict:
    ft_config = FinetuneConfig(**{name: getattr(config, name) for name in FINETUNE_SETTINGS})
    result = finetune(dataset, ft_config, class_weight=weights, progress=progress)
    tuned = {"note": "tau is not tuned for fine-tuning (one fine-tune per fold); the set tau is used"} \
        if config.tune else {}
    return {"model": result.checkpoint, "scores": result.test_scores, "fit_seconds": result.fit_seconds,
            "predict_seconds": result.predict_seconds, "history": result.history, "tuned": tuned,
            "learning_curve_seconds": sum(row["test_seconds"] for row in result.history[:-1])}


_FITTERS = {"svm": _fit_svm, "head": _fit_head, "finetune": _fit_finetune}

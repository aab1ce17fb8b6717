"""Run approaches x class-weight schemes on one dataset and record every run."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.classifiers import KERNEL_CACHE, LinearHead, SvmClassifier
from core.data import Dataset, load_dataset
from core.errors import ClassWeightError
from core.config import ExperimentConfig, load_features
from core.features import FeatureSet, autocast_dtype, rank_world, resolve_device
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
    if str(spec).endswith(".json"):
        table = read_custom_weights(spec)
        return f"custom:{Path(spec).stem}", class_weights("custom", counts, dataset.classes, custom=table)
    raise ClassWeightError(f"unknown class-weight scheme {spec!r}; choose none, balanced, sqrt, effective "
                           "or a path to a JSON file {class: weight}")


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
    dataset = load_dataset(config.data, test_size=config.test_size, seed=config.seed, cache_dir=config.cache_dir)
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
              "refit_seconds": fitted["refit_seconds"],
              **({"svm_model": fitted["svm_model"]} if approach == "svm" else {}),
              "learning_curve_seconds": fitted.get("learning_curve_seconds", 0.0),
              "extract_seconds": features.extract_seconds if on_features else 0.0,
              "test_extract_seconds": _test_share(features, dataset) if on_features else 0.0,
              "device": resolve_device(config.device).type, "precision": used_precision(config),
              "history": fitted.get("history", []), "dataset": dataset.summary(),
              "backbone": features.backbone if features else {"name": config.backbone, "pool": config.pool},
              "feature_key": features.key if features else None, "config": config.to_dict()}
    if rank_world()[0] == 0:  # under torchrun, one rank records the run
        store.save(record, model=fitted["model"], predictions=_predictions(dataset, y_pred, fitted["scores"]))
    return record, y_pred


def used_precision(config: ExperimentConfig) -> str:
    """What `config.precision` is on this machine's device: 'bf16', 'fp16' or 'fp32' (features and fine-tune alike)."""
    dtype = autocast_dtype(resolve_device(config.device), config.precision)
    return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def _test_share(features: FeatureSet, dataset: Dataset) -> float:
    """The test images' share of the one-off extraction (by image count): part of predicting new images."""
    return features.extract_seconds * len(dataset.test) / len(dataset.samples)


def fit_approach(config: ExperimentConfig, dataset: Dataset, features: FeatureSet | None, approach: str,
                 weights: np.ndarray, progress=None, head_epochs: int | None = None) -> dict:
    """Fit one approach with one class-weight vector: model, raw test scores, fit, predict and refit seconds.

    `refit_seconds` is what fitting again with other weights and scoring the test set costs when what the
    approach caches is reused (the SVM's train kernel); for the head and fine-tune it is fit + predict.

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


def split_key(features: FeatureSet, dataset: Dataset) -> str:
    """The feature set's cache key plus exactly which rows are training rows (the rest are test rows).

    The feature key covers the images' content but not the split, so another split seed has the same key;
    what depends on the split (the SVM's train kernel, near-duplicate matches) is keyed by this instead.
    """
    rows = "\n".join(s.path for s in dataset.train)
    return f"{features.key}:{hashlib.sha256(rows.encode()).hexdigest()[:16]}"


def _fit_svm(config, dataset, features, weights, progress) -> dict:
    """Fit the SVM; an rbf one reuses its training rows' kernel (computed on the first fit, then cached).

    `fit_seconds` is what this fit costs on its own (tuning and the train kernel included, wherever it was
    computed); `predict_seconds` scores the test images from their features (their kernel included);
    `refit_seconds` is a refit on the cached kernel plus that scoring: what one What-if change costs.
    """
    if progress:
        progress("fit SVM", 0, 1)
    n_classes = len(dataset.classes)

    def make_svm(C):
        return SvmClassifier(kernel=config.svm_kernel, C=C, seed=config.seed)
    tuned, tune_s = _timed(lambda: tune_svm_c(make_svm, features.X_train, features.y_train, n_classes, weights,
                                              config.seed) if config.tune else {})
    kernels = KERNEL_CACHE.get(split_key(features, dataset), features.X_train) if config.svm_kernel == "rbf" else None
    svm, svm_s = _timed(lambda: make_svm(tuned.get("svm_c", config.svm_c)).fit(
        features.X_train, features.y_train, class_weight=weights, n_classes=n_classes, kernels=kernels))
    scores, predict_s = _timed(lambda: svm.decision_function(features.X_test))
    if progress:
        progress("fit SVM", 1, 1)
    kernel_s = kernels.seconds if svm.support_X_ is not None else 0.0  # LinearSVC leaves the kernel unused
    return {"model": svm, "scores": scores, "fit_seconds": tune_s + kernel_s + svm_s, "predict_seconds": predict_s,
            "refit_seconds": svm_s + predict_s, "tuned": tuned, "svm_model": svm.model_name_}


def _timed(work):
    """`(work(), seconds it took)`."""
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


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
    tune_s = time.perf_counter() - started
    head, head_s = _timed(lambda: make_head().fit(features.X_train, features.y_train, class_weight=weights,
                                                  n_classes=n_classes, eval_set=(features.X_test, features.y_test),
                                                  progress=progress))
    head_s -= head.eval_seconds_  # scoring the test set per epoch is not fitting
    scores, predict_s = _timed(lambda: head.decision_function(features.X_test))
    return {"model": head, "scores": scores, "fit_seconds": tune_s + head_s, "history": head.history_,
            "predict_seconds": predict_s, "refit_seconds": head_s + predict_s,
            "learning_curve_seconds": head.eval_seconds_, "tuned": tuned, **({"tau": tuned["tau"]} if tuned else {})}


def _fit_finetune(config, dataset, features, weights, progress) -> dict:
    ft_config = FinetuneConfig(**{name: getattr(config, name) for name in FINETUNE_SETTINGS})
    result = finetune(dataset, ft_config, class_weight=weights, progress=progress)
    tuned = {"note": "tau is not tuned for fine-tuning (one fine-tune per fold); the set tau is used"} \
        if config.tune else {}
    return {"model": result.checkpoint, "scores": result.test_scores, "fit_seconds": result.fit_seconds,
            "predict_seconds": result.predict_seconds, "refit_seconds": result.fit_seconds + result.predict_seconds,
            "history": result.history, "tuned": tuned,
            "learning_curve_seconds": sum(row["test_seconds"] for row in result.history[:-1])}


_FITTERS = {"svm": _fit_svm, "head": _fit_head, "finetune": _fit_finetune}

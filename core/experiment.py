"""Run approaches x class-weight schemes on one dataset and record every run."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.backbones import POOLS, get_entry
from core.classifiers import KERNEL_CACHE, LinearHead, SvmClassifier
from core.data import Dataset, load_dataset
from core.errors import ClassWeightError, ConfigError
from core.features import FeatureSet, extract_features, rank_world
from core.finetune import FinetuneConfig, finetune
from core.metrics import evaluate
from core.runs import RunStore, new_run_id
from core.runtime import RUNTIMES
from core.weights import SCHEMES, adjust_logits, class_weights, read_custom_weights

APPROACHES = ("svm", "head", "finetune")
FEATURE_APPROACHES = ("svm", "head")
SVM_KERNELS = ("rbf", "linear", "poly", "sigmoid")


@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of an experiment; hashed into run records and mirrored by the CLI."""

    data: str
    backbone: str = "efficientnet_lite0"
    pool: str = "avg"
    approaches: tuple[str, ...] = ("svm", "head")
    class_weights: tuple = ("none", "balanced")  # scheme names, paths to {class: weight} JSON, or dicts
    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    runtime: str = "auto"
    cache_dir: str = "cache"
    test_size: float = 0.2
    image_size: int | None = None
    unfreeze_last: bool = False
    tau: float = 0.0
    beta: float = 0.999
    svm_kernel: str = "rbf"
    svm_c: float = 1.0
    workers: int | None = None

    def validate(self) -> ExperimentConfig:
        """Check names and ranges before any expensive work starts."""
        get_entry(self.backbone)
        unknown = [a for a in self.approaches if a not in APPROACHES]
        if unknown or not self.approaches:
            raise ConfigError(f"unknown approaches {unknown or '(none given)'}; choose from {', '.join(APPROACHES)}")
        if self.pool not in POOLS:
            raise ConfigError(f"unknown pooling {self.pool!r}; choose one of: {', '.join(POOLS)}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError(f"epochs, batch size and lr must be positive; got {self.epochs}, {self.batch_size}, {self.lr}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime {self.runtime!r}; choose one of: {', '.join(RUNTIMES)}")
        if self.svm_kernel not in SVM_KERNELS:
            raise ConfigError(f"unknown SVM kernel {self.svm_kernel!r}; choose one of: {', '.join(SVM_KERNELS)}")
        if not (math.isfinite(self.tau) and self.tau >= 0):
            raise ConfigError(f"logit-adjustment tau must be a finite number >= 0, got {self.tau}")
        if not self.class_weights:
            raise ConfigError("give at least one class-weight scheme, e.g. none")
        return self

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


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


def load_features(config: ExperimentConfig, dataset: Dataset, progress=None) -> FeatureSet:
    return extract_features(dataset, config.backbone, pool=config.pool, image_size=config.image_size,
                            cache_dir=config.cache_dir, device=config.device, runtime=config.runtime,
                            batch_size=config.batch_size,
                            workers=config.workers, progress=progress)


def run_experiment(config: ExperimentConfig, progress=None, store: RunStore | None = None) -> dict:
    """Load data, extract (cached) features once, train every approach x weight scheme; results dict.

    >>> results = run_experiment(ExperimentConfig(data="cache/datasets/digits-demo"))  # doctest: +SKIP
    >>> [(r["approach"], r["class_weight"], round(r["macro_f1"], 2)) for r in results["runs"]]  # doctest: +SKIP
    """
    config.validate()
    dataset = load_dataset(config.data, test_size=config.test_size, seed=config.seed, cache_dir=config.cache_dir)
    weights = [resolve_class_weight(spec, dataset, config.beta) for spec in config.class_weights]
    store = store or RunStore(Path(config.cache_dir) / "runs")
    features = None
    if any(a in FEATURE_APPROACHES for a in config.approaches):
        features = load_features(config, dataset, progress)
    runs = [train_and_record(config, dataset, features, approach, label, w, store, progress)
            for approach in config.approaches for label, w in weights]
    return {"dataset": dataset.summary(), "backbone": features.backbone if features else {"name": config.backbone},
            "extract_seconds": features.extract_seconds if features else 0.0,
            "feature_seconds": features.seconds if features else 0.0,
            "cache_hit": bool(features and features.cache_hit), "feature_key": features.key if features else None,
            "runtime": features.runtime if features else None,
            "config": config.to_dict(), "runs": runs}


def train_and_record(config: ExperimentConfig, dataset: Dataset, features: FeatureSet | None, approach: str,
                     weight_label: str, weights: np.ndarray, store: RunStore, progress=None) -> dict:
    """Fit one approach with one class-weight vector, evaluate on test, save the run; its record."""
    fitted = _FITTERS[approach](config, dataset, features, weights, progress)
    y_test = np.array([s.label for s in dataset.test])
    y_pred = adjust_logits(fitted["scores"], dataset.train_counts, config.tau).argmax(1)
    record = {"run_id": new_run_id(approach, weight_label), "approach": approach, "class_weight": weight_label,
              "class_weights": [float(w) for w in weights], "tau": config.tau,
              **evaluate(y_test, y_pred, dataset.classes, dataset.train_counts),
              "fit_seconds": fitted["fit_seconds"], "predict_seconds": fitted["predict_seconds"],
              "extract_seconds": features.extract_seconds if features and approach in FEATURE_APPROACHES else 0.0,
              "history": fitted.get("history", []), "dataset": dataset.summary(),
              "backbone": features.backbone if features else {"name": config.backbone, "pool": config.pool},
              "feature_key": features.key if features else None, "config": config.to_dict()}
    if rank_world()[0] == 0:  # under torchrun, one rank records the run
        store.save(record, model=fitted["model"], predictions=_predictions(dataset, y_pred, fitted["scores"]))
    return record


def fit_approach(config: ExperimentConfig, dataset: Dataset, features: FeatureSet | None, approach: str,
                 weights: np.ndarray, progress=None) -> dict:
    """Fit one approach with one class-weight vector: model, raw test scores, fit and predict seconds."""
    return _FITTERS[approach](config, dataset, features, weights, progress)


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
    started = time.perf_counter()
    svm = SvmClassifier(kernel=config.svm_kernel, C=config.svm_c, seed=config.seed)
    kernels = KERNEL_CACHE.get(features.key, features.X_train, features.X_test) if config.svm_kernel == "rbf" else None
    svm.fit(features.X_train, features.y_train, class_weight=weights, n_classes=len(dataset.classes), kernels=kernels)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    scores = svm.decision_function(features.X_test) if kernels is None else svm.decision_function_kernel(kernels.test)
    if progress:
        progress("fit SVM", 1, 1)
    return {"model": svm, "scores": scores, "fit_seconds": fit_s, "predict_seconds": time.perf_counter() - started}


def _fit_head(config, dataset, features, weights, progress) -> dict:
    started = time.perf_counter()
    head = LinearHead(epochs=config.epochs, lr=config.lr, seed=config.seed)
    head.fit(features.X_train, features.y_train, class_weight=weights, n_classes=len(dataset.classes),
             eval_set=(features.X_test, features.y_test), progress=progress)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    scores = head.decision_function(features.X_test)
    return {"model": head, "scores": scores, "fit_seconds": fit_s, "history": head.history_,
            "predict_seconds": time.perf_counter() - started}


def _fit_finetune(config, dataset, features, weights, progress) -> dict:
    ft_config = FinetuneConfig(backbone=config.backbone, pool=config.pool, image_size=config.image_size,
                               epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                               unfreeze_last=config.unfreeze_last, device=config.device, workers=config.workers,
                               seed=config.seed)
    result = finetune(dataset, ft_config, class_weight=weights, progress=progress)
    return {"model": result.checkpoint, "scores": result.test_scores, "fit_seconds": result.fit_seconds,
            "predict_seconds": result.predict_seconds, "history": result.history}


_FITTERS = {"svm": _fit_svm, "head": _fit_head, "finetune": _fit_finetune}

"""The approach registry: one entry per way of training a classifier, with the remedies it supports.

A new approach is one `@register(...)` fit function here (and its estimator in core.classifiers or
its trainer module). Every fit gets a `FitRequest` and returns a `Fitted`: raw test scores, raw
out-of-fold scores of the training images when it can afford them (they give the run's validation
metrics and choose tau and offsets, see core.experiment), timings and what it chose.

Light at import (no scikit-learn or trainers): the CLI lists the names; fits import what they use.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from core.errors import ConfigError
from core.remedies import Remedy


@dataclass(frozen=True)
class FitRequest:
    """What one fit needs. `features` is None for approaches that read images; `head_epochs` fixes the
    head's epoch count (no selection pass), as What-if refits do."""

    config: object  # ExperimentConfig
    dataset: object  # core.data.Dataset
    features: object | None  # core.features.FeatureSet
    weights: np.ndarray
    remedy: Remedy
    progress: Callable | None = None
    head_epochs: int | None = None

    @property
    def n_classes(self) -> int:
        return len(self.dataset.classes)

    @property
    def la_tau(self) -> float:
        """tau of the logit-adjusted loss: the config's `la_tau` under `la-loss`, else 0 (plain CE)."""
        return float(self.config.la_tau) if self.remedy.has("la-loss") else 0.0


@dataclass
class Fitted:
    """A fitted approach: the model, raw scores `(n_test, n_classes)`, optional out-of-fold training scores
    `(n_train, n_classes)` and seconds: `fit_seconds` is what the fit costs on its own (kernels and any
    choice of C included, the validation folds not: `validation_seconds`), `predict_seconds` scores the
    test images from their features, `refit_seconds` is a refit with other class weights on what is cached
    plus that scoring. `extras`: approach-specific record fields (the SVM's model and support counts)."""

    model: object
    scores: np.ndarray
    fit_seconds: float
    predict_seconds: float
    refit_seconds: float = 0.0
    validation_seconds: float = 0.0
    oof_scores: np.ndarray | None = None
    oof_rows: np.ndarray | None = None  # the training rows oof_scores score (None: all; fine-tune: its held-out part)
    history: list = field(default_factory=list)
    tuned: dict = field(default_factory=dict)
    learning_curve_seconds: float = 0.0
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Approach:
    """One approach: `on_features` (trains on cached features), `logits` (its scores are logits, so tau
    applies), the remedy parts it supports besides class weights, and its fit."""

    name: str
    label: str
    help: str
    on_features: bool
    logits: bool
    parts: frozenset[str]
    fit: Callable[[FitRequest], Fitted]

    def unsupported(self, remedy: Remedy) -> list[str]:
        """The parts of `remedy` this approach cannot apply (the run is skipped with a note)."""
        return sorted(remedy.parts - self.parts)


APPROACHES: dict[str, Approach] = {}


def register(name: str, label: str, help: str, *, on_features: bool, logits: bool, parts: tuple[str, ...]):
    """Decorator: file a fit function under `name` in APPROACHES (order of registration = order shown)."""
    def wrap(fit: Callable[[FitRequest], Fitted]) -> Callable[[FitRequest], Fitted]:
        APPROACHES[name] = Approach(name, label, help, on_features, logits, frozenset(parts), fit)
        return fit
    return wrap


def get_approach(name: str) -> Approach:
    """The registered approach called `name`; a clear error naming the known ones otherwise."""
    if name not in APPROACHES:
        raise ConfigError(f"unknown approach {name!r}; choose one of: {', '.join(APPROACHES)}")
    return APPROACHES[name]


def names(*, on_features: bool | None = None, logits: bool | None = None) -> tuple[str, ...]:
    """Names of the registered approaches, optionally only those on features / with logits."""
    return tuple(a.name for a in APPROACHES.values()
                 if (on_features is None or a.on_features == on_features) and (logits is None or a.logits == logits))


def _timed(function, *args, **kwargs):
    started = time.perf_counter()
    return function(*args, **kwargs), time.perf_counter() - started


@register("svm", "SVM", "scikit-learn SVC (rbf) on standardised cached features; LinearSVC above 20k images",
          on_features=True, logits=False, parts=("offsets",))
def fit_svm(request: FitRequest) -> Fitted:
    """The SVM with its C (by CV under --tune), out-of-fold scores on kernel folds, support counts per class.

    Its rbf kernel is computed once per set of training rows (`split_key`) and cached; every fit still
    counts its computation in `fit_seconds`, so timings never depend on what ran before.
    """
    from core.classifiers import KERNEL_CACHE, SvmClassifier
    from core.features import split_key
    from core.tuning import out_of_fold, tune_svm_c

    config, features, weights, n_classes = request.config, request.features, request.weights, request.n_classes
    X, y = features.X_train, features.y_train
    if request.progress:
        request.progress("fit SVM", 0, 1)

    def make_svm(C):
        return SvmClassifier(kernel=config.svm_kernel, C=C, seed=config.seed)
    tuned, tune_s = _timed(tune_svm_c, make_svm, X, y, n_classes, weights, config.seed) if config.tune else ({}, 0.0)
    C = tuned.get("svm_c", config.svm_c)
    kernels = KERNEL_CACHE.get(split_key(features, request.dataset), X) if config.svm_kernel == "rbf" else None
    svm, svm_s = _timed(make_svm(C).fit, X, y, class_weight=weights, n_classes=n_classes, kernels=kernels)
    scores, predict_s = _timed(svm.decision_function, features.X_test)

    def fold_scores(fit_index, val_index):
        fold = None if svm.support_X_ is None else kernels.fold(fit_index)
        return make_svm(C).fit(X[fit_index], y[fit_index], weights, n_classes, kernels=fold
                               ).decision_function(X[val_index])
    oof, validation_s = _timed(out_of_fold, fold_scores, y, n_classes, config.seed)
    if request.progress:
        request.progress("fit SVM", 1, 1)
    kernel_s = kernels.seconds if svm.support_X_ is not None else 0.0  # LinearSVC leaves the kernel unused
    return Fitted(svm, scores, tune_s + kernel_s + svm_s, predict_s, refit_seconds=svm_s + predict_s,
                  validation_seconds=validation_s, oof_scores=oof, tuned=tuned,
                  extras={"svm_model": svm.model_name_, "support": svm.support_counts(y, weights)})


@register("head", "Linear head", "a new linear layer on cached features (Adam, early stopping on a validation "
          "split)", on_features=True, logits=True, parts=("resample", "la-loss", "tau", "offsets"))
def fit_head(request: FitRequest) -> Fitted:
    """The linear head; its out-of-fold scores come from heads fit the same way on the other folds."""
    from core.classifiers import LinearHead
    from core.tuning import out_of_fold_scores

    config, features = request.config, request.features

    def make_head():
        return LinearHead(epochs=request.head_epochs or config.epochs, lr=config.lr, batch_size=config.batch_size,
                          seed=config.seed, select_epochs=request.head_epochs is None,
                          resample=request.remedy.has("resample"), la_tau=request.la_tau)
    oof, validation_s = _timed(out_of_fold_scores, make_head, features.X_train, features.y_train,
                               request.n_classes, request.weights, config.seed)
    head, fit_s = _timed(make_head().fit, features.X_train, features.y_train, class_weight=request.weights,
                         n_classes=request.n_classes, eval_set=(features.X_test, features.y_test),
                         progress=request.progress)
    fit_s -= head.eval_seconds_  # scoring the test set per epoch is not fitting
    scores, predict_s = _timed(head.decision_function, features.X_test)
    return Fitted(head, scores, fit_s, predict_s, refit_seconds=fit_s + predict_s, validation_seconds=validation_s,
                  oof_scores=oof, history=head.history_, learning_curve_seconds=head.eval_seconds_)


LOGREG_C_GRID = (0.01, 0.1, 1.0)


@register("logreg", "Logistic regression", "multinomial logistic regression on standardised cached features, "
          "L2 strength C chosen by cross-validation", on_features=True, logits=True,
          parts=("la-loss", "tau", "offsets"))
def fit_logreg(request: FitRequest) -> Fitted:
    """Logistic regression; C by stratified CV on the training images (the chosen C's folds give the
    out-of-fold scores), then one fit on all of them."""
    from core.classifiers import LogisticProbe
    from core.tuning import choose_by_cv

    config, features = request.config, request.features
    X, y = features.X_train, features.y_train

    def make(C):
        return LogisticProbe(C=C, la_tau=request.la_tau, seed=config.seed)
    grid = LOGREG_C_GRID if config.logreg_c is None else (config.logreg_c,)  # a set C (What-if refits) is kept
    (tuned, oof), cv_s = _timed(choose_by_cv, "C", grid, make, X, y, request.n_classes, request.weights,
                                config.seed)
    model, fit_s = _timed(make(tuned["C"]).fit, X, y, class_weight=request.weights, n_classes=request.n_classes)
    scores, predict_s = _timed(model.decision_function, features.X_test)
    choose_s = cv_s if len(grid) > 1 else 0.0  # choosing C is part of this approach's fit; one C is validation only
    return Fitted(model, scores, fit_s + choose_s, predict_s, refit_seconds=fit_s + predict_s,
                  validation_seconds=cv_s - choose_s, oof_scores=oof, tuned=tuned)


@register("finetune", "Fine-tune", "augmented images through the backbone, its last blocks trained as --unfreeze "
          "says (cached activations of the frozen part); the epoch chosen on held-out training images",
          on_features=False, logits=True, parts=("resample", "la-loss", "tau", "offsets"))
def fit_finetune(request: FitRequest) -> Fitted:
    """The fine-tune; its validation scores are those of a held-out part of the training images, scored with the
    kept (best-validation) weights, so tau and offsets are chosen on them."""
    from core.finetune import finetune, finetune_config

    ft_config = finetune_config(request.config)
    result = finetune(request.dataset, ft_config, class_weight=request.weights, la_tau=request.la_tau,
                      resample=request.remedy.has("resample"), progress=request.progress)
    has_validation = result.val_scores is not None
    return Fitted(result.checkpoint, result.test_scores, result.fit_seconds, result.predict_seconds,
                  refit_seconds=result.fit_seconds + result.predict_seconds,
                  oof_scores=result.val_scores, oof_rows=result.val_rows if has_validation else None,
                  history=result.history, learning_curve_seconds=result.learning_curve_seconds,
                  extras={"chosen_epoch": result.chosen_epoch, "unfreeze": ft_config.unfreeze,
                          "trainable_blocks": result.trainable_stages, "activation_cache": result.activation_cache,
                          "activation_cache_seconds": result.cache_seconds})

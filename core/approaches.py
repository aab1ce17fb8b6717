"""The approach registry: one entry per way of training a classifier, with the remedies it supports.

A new approach is its name in core.approach_names and one `@register(...)` fit function here (and its
estimator in core.classifiers or its trainer module). Every fit gets a `FitRequest` and returns a `Fitted`:
raw test scores, raw out-of-fold scores of the training images when it can afford them (they give the run's
validation metrics and choose tau and offsets, see core.experiment), timings and what it chose.

Light at import (no scikit-learn or trainers): the CLI lists the names; fits import what they use.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from core.approach_names import APPROACH_NAMES
from core.errors import ConfigError
from core.remedies import Remedy


@dataclass(frozen=True)
class FitRequest:
    """What one fit needs. `features` is None for approaches that read images; `head_epochs` fixes the
    head's epoch count (nothing chosen: its folds and the final head train that many), as What-if refits do."""

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
    `(n_train, n_classes)` and seconds, each stage on its own: `fit_seconds` is the final fit (the SVM's
    kernel included), `selection_seconds` the folds that chose a hyper-parameter (C, the head's epochs;
    their out-of-fold scores of the chosen value are the validation), `validation_seconds` the folds run
    only to validate, `predict_seconds` scores the test images from their features, `refit_seconds` is a
    refit with other class weights on what is cached plus that scoring.

    `oof_candidates` `(n_train, n_candidates, n_classes)`: the out-of-fold scores of every value the fit
    chose among (`core.tuning.best_candidate` picks `oof_scores` from them), so that validation can
    cross-fit the choice; None when nothing was chosen. `extras`: approach-specific record fields (the
    SVM's model and support counts)."""

    model: object
    scores: np.ndarray
    fit_seconds: float
    predict_seconds: float
    refit_seconds: float = 0.0
    validation_seconds: float = 0.0
    selection_seconds: float = 0.0
    oof_scores: np.ndarray | None = None
    oof_candidates: np.ndarray | None = None
    oof_rows: np.ndarray | None = None  # the training rows oof_scores score (None: all; fine-tune: its held-out part)
    history: list = field(default_factory=list)
    tuned: dict = field(default_factory=dict)
    learning_curve_seconds: float = 0.0
    extras: dict = field(default_factory=dict)
    stopped_by: BaseException | None = None  # the user's cancel or Ctrl-C that ended a fine-tune early


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
    if name not in APPROACH_NAMES:
        raise ConfigError(f"approach {name!r} is not declared; add it to core.approach_names.APPROACH_NAMES")

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


def _one_torch_thread(fit: Callable[[FitRequest], Fitted]) -> Callable[[FitRequest], Fitted]:
    """Run a torch fit of small matrices with this thread's torch on one thread (`core.torch_threads`): on a busy
    2-core box two threads contend (10k x 1280 features, 24 classes: the head's 5 epochs 0.9-1.8 s on one thread
    against 7.3-9.5 s on two; bench/scale.py)."""
    @functools.wraps(fit)
    def on_one_thread(request: FitRequest) -> Fitted:
        from core.torch_threads import one_torch_thread

        with one_torch_thread():
            return fit(request)
    return on_one_thread


def _timed(function, *args, **kwargs):
    started = time.perf_counter()
    return function(*args, **kwargs), time.perf_counter() - started


@register("svm", "SVM", "scikit-learn SVC (rbf) on standardised cached features; past 15k training images (or the "
          "memory available) its Nystroem approximation with a ridge classifier, named so in the run",
          on_features=True, logits=False, parts=("offsets",))
def fit_svm(request: FitRequest) -> Fitted:
    """The SVM with its C (by CV under --tune), out-of-fold scores on kernel folds, support counts per class.

    `core.classifiers.choose_svm` picks the exact SVM or its approximation once for the run (folds and --tune's
    clones fit the same kind); the run records which and why. The rbf kernel (or its Nystroem map) is computed
    once per set of training rows (`split_key`) and cached; every fit still counts its computation in
    `fit_seconds`, so timings never depend on what ran before. Under --tune the chosen C's folds are the
    validation; otherwise validation folds reuse slices of that kernel. Progress: an estimate before the first
    step (`core.estimates`), then the time left after each.
    """
    from core.classifiers import KERNEL_CACHE, SvmClassifier, choose_svm
    from core.estimates import StepProgress, svm_steps
    from core.features import split_key
    from core.tuning import SVM_C_GRID, cv_splits, out_of_fold, tune_svm_c

    config, features, weights, n_classes = request.config, request.features, request.weights, request.n_classes
    X, y = features.X_train, features.y_train
    choice, key = choose_svm(config.svm_kernel, len(X)), split_key(features, request.dataset)
    cached = config.svm_kernel == "rbf" and KERNEL_CACHE.holds(key, choice.exact)
    steps = svm_steps(choice.exact, *X.shape, len(cv_splits(y, config.seed)), cached)
    if config.tune:  # every C's folds instead of the validation folds, each fold computing its own kernel
        steps = [("choose C", len(SVM_C_GRID) * sum(seconds for _, seconds in steps[:1] + steps[2:]))] + steps[:2]
    progress = StepProgress(request.progress, "fit SVM", steps)
    progress.start(f"{choice.model} on {len(X):,} images")

    def make_svm(C):
        return SvmClassifier(kernel=config.svm_kernel, C=C, class_weight=weights, n_classes=n_classes,
                             solver="exact" if choice.exact else "nystroem", seed=config.seed)
    tuned, candidates, select_s = {}, None, 0.0
    if config.tune:
        (tuned, candidates), select_s = _timed(tune_svm_c, make_svm, X, y, n_classes, config.seed)
        progress.advance()
    C = tuned.get("svm_c", config.svm_c)
    kernels = None
    if config.svm_kernel == "rbf":
        kernels = KERNEL_CACHE.get(key, X, exact=choice.exact)
    progress.advance()
    svm, svm_s = _timed(make_svm(C).fit, X, y, kernels=kernels)
    scores, predict_s = _timed(svm.decision_function, features.X_test)
    progress.advance()

    def fold_scores(fit_index, val_index):
        if kernels is None:
            scores = make_svm(C).fit(X[fit_index], y[fit_index]).decision_function(X[val_index])
        else:  # the held-out rows' kernel (or Nystroem rows) was computed with all training rows
            fold = make_svm(C).fit(X[fit_index], y[fit_index], kernels=kernels.fold(fit_index))
            scores = fold.held_out_scores(kernels, fit_index, val_index)
        progress.advance()
        return scores
    if candidates is None:
        oof, validation_s = _timed(out_of_fold, fold_scores, y, n_classes, config.seed)
    else:
        oof, validation_s = candidates[:, tuned["grid"].index(C)], 0.0
    kernel_s = kernels.seconds if kernels is not None else 0.0
    return Fitted(svm, scores, kernel_s + svm_s, predict_s, refit_seconds=svm_s + predict_s,
                  validation_seconds=validation_s, selection_seconds=select_s, oof_scores=oof,
                  oof_candidates=candidates, tuned=tuned,
                  extras={"svm_model": choice.model, "svm_model_reason": choice.reason,
                          "support": svm.support_counts(y)})


@register("head", "Linear head", "a new linear layer on cached features (Adam; the epoch count chosen on the "
          "training folds)", on_features=True, logits=True, parts=("resample", "la-loss", "tau", "offsets"))
@_one_torch_thread
def fit_head(request: FitRequest) -> Fitted:
    """The linear head. Its epoch count is chosen once on the folds (fold heads train to `--epochs`, the best
    out-of-fold macro-F1 wins) and the final head trains for exactly that many epochs, so the validation
    (the fold heads at that epoch) describes the model tested. With `head_epochs` nothing is chosen."""
    from core.classifiers import LinearHead
    from core.estimates import StepProgress, head_steps
    from core.tuning import choose_epochs, cross_val_scores, cv_splits

    config, features, n_classes = request.config, request.features, request.n_classes
    X, y = features.X_train, features.y_train
    chooses = request.head_epochs is None  # fold heads train to --epochs (they report), then the final head
    progress = StepProgress(request.progress, "fit head", head_steps(
        len(X), len(cv_splits(y, config.seed)), config.epochs if chooses else 0, request.head_epochs or config.epochs))
    progress.start(f"{'fold heads, then ' if chooses else ''}the head on {len(X):,} images")

    def epoch_done(stage, done, total, note=""):
        progress.advance()

    def make_head(epochs):
        return LinearHead(epochs=epochs, lr=config.lr, batch_size=config.batch_size, class_weight=request.weights,
                          n_classes=n_classes, seed=config.seed, resample=request.remedy.has("resample"),
                          la_tau=request.la_tau)
    tuned, candidates, select_s, validation_s = {}, None, 0.0, 0.0
    if chooses:
        (tuned, candidates), select_s = _timed(choose_epochs, make_head(config.epochs), X, y, n_classes, config.seed,
                                               epoch_done)
        epochs, oof = tuned["epochs"], candidates[:, tuned["epochs"] - 1]
    else:
        epochs = request.head_epochs
        oof, validation_s = _timed(cross_val_scores, make_head(epochs), X, y, config.seed)
    head, fit_s = _timed(make_head(epochs).fit, X, y, eval_set=(features.X_test, features.y_test),
                         progress=epoch_done)
    progress.finish()  # the final head may train fewer epochs than estimated
    fit_s -= head.eval_seconds_  # scoring the test set per epoch is not fitting
    scores, predict_s = _timed(head.decision_function, features.X_test)
    return Fitted(head, scores, fit_s, predict_s, refit_seconds=fit_s + predict_s, validation_seconds=validation_s,
                  selection_seconds=select_s, oof_scores=oof, oof_candidates=candidates,
                  history=_head_history(head.history_, candidates, y, n_classes), tuned=tuned,
                  learning_curve_seconds=head.eval_seconds_)


def _head_history(trained: list[dict], candidates: np.ndarray | None, y, n_classes: int) -> list[dict]:
    """The final head's rows (train, test) with, when the folds chose the epoch count, their out-of-fold
    `val_acc` and `val_macro_f1` at each of those epochs (the last row is the validation of the model tested)."""
    from core.stats import point_scores

    if candidates is None:
        return trained
    history = []
    for row in trained:
        scores = point_scores(y, candidates[:, row["epoch"] - 1].argmax(1), n_classes)
        history.append({**row, "val_acc": scores["accuracy"], "val_macro_f1": scores["macro_f1"]})
    return history


LOGREG_C_GRID = (0.01, 0.1, 1.0)


@register("logreg", "Logistic regression", "multinomial logistic regression on standardised cached features, "
          "L2 strength C chosen by cross-validation", on_features=True, logits=True,
          parts=("la-loss", "tau", "offsets"))
@_one_torch_thread
def fit_logreg(request: FitRequest) -> Fitted:
    """Logistic regression; C by stratified CV on the training images (the chosen C's folds give the
    out-of-fold scores), then one fit on all of them."""
    from core.classifiers import LogisticProbe
    from core.estimates import StepProgress, logreg_steps
    from core.tuning import choose_by_cv, cv_splits

    config, features = request.config, request.features
    X, y = features.X_train, features.y_train

    def make(C):
        return LogisticProbe(C=C, class_weight=request.weights, n_classes=request.n_classes, la_tau=request.la_tau,
                             seed=config.seed)
    grid = LOGREG_C_GRID if config.logreg_c is None else (config.logreg_c,)  # a set C (What-if refits) is kept
    steps = logreg_steps(grid, *X.shape, request.n_classes, len(cv_splits(y, config.seed)))
    progress = StepProgress(request.progress, "fit logistic regression", steps)
    progress.start(f"{len(grid)} C value(s) x folds, then the fit on {len(X):,} images")
    (tuned, candidates), cv_s = _timed(choose_by_cv, "C", grid, make, X, y, request.n_classes, config.seed,
                                       progress.advance)
    model, fit_s = _timed(make(tuned["C"]).fit, X, y)
    progress.advance()
    scores, predict_s = _timed(model.decision_function, features.X_test)
    chose = len(grid) > 1  # one C given: its folds only validate
    return Fitted(model, scores, fit_s, predict_s, refit_seconds=fit_s + predict_s,
                  validation_seconds=0.0 if chose else cv_s, selection_seconds=cv_s if chose else 0.0,
                  oof_scores=candidates[:, grid.index(tuned["C"])], oof_candidates=candidates if chose else None,
                  tuned=tuned)


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
                  stopped_by=result.stopped_by,
                  extras={"chosen_epoch": result.chosen_epoch, "stopped_early": result.stopped_by is not None,
                          "unfreeze": ft_config.unfreeze,
                          "trainable_blocks": result.trainable_stages, "activation_cache": result.activation_cache,
                          "activation_cache_seconds": result.cache_seconds})

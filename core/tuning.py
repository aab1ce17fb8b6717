"""Choosing on validation, never on test: stratified cross-validation on the training set picks tau or C."""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import StratifiedKFold

from core.errors import ConfigError
from core.stats import point_scores
from core.weights import adjust_logits

TAU_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
SVM_C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
CV_FOLDS = 3
TUNE_METRIC = "macro_f1"


def out_of_fold(fold_scores, y, n_classes: int, seed: int) -> np.ndarray:
    """Scores `(n_samples, n_classes)`: `fold_scores(fit_index, val_index)` for each stratified fold of `y`.

    Only training rows ever enter: callers pass the training labels, and each fold's model sees the
    other folds. Classes with fewer images than folds simply miss from some folds (sklearn warns; we don't).
    """
    y = np.asarray(y)
    n_splits = min(CV_FOLDS, int(np.bincount(y).max()))
    if n_splits < 2:
        raise ConfigError("validation needs a class with at least 2 training images for cross-validation; "
                          "add images")
    scores = np.zeros((len(y), n_classes))
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        splits = list(folds.split(np.zeros(len(y)), y))
    for fit_index, val_index in splits:
        scores[val_index] = fold_scores(fit_index, val_index)
    return scores


def out_of_fold_scores(make_model, X, y, n_classes: int, class_weight, seed: int) -> np.ndarray:
    """Out-of-fold scores of `make_model()` models fit with `class_weight` (see `out_of_fold`)."""
    def fold_scores(fit_index, val_index):
        model = make_model().fit(X[fit_index], y[fit_index], class_weight=class_weight, n_classes=n_classes)
        return model.decision_function(X[val_index])
    return out_of_fold(fold_scores, y, n_classes, seed)


def choose_by_cv(name: str, grid, make_model, X, y, n_classes: int, class_weight, seed: int
                 ) -> tuple[dict, np.ndarray]:
    """The value of `grid` whose `make_model(value)` scores the best out-of-fold macro-F1; (tuned, its scores).

    Ties go to the first value in `grid` (order it from the strongest regularisation).
    """
    oof = {value: out_of_fold_scores(lambda: make_model(value), X, y, n_classes, class_weight, seed)
           for value in grid}
    cv = {value: point_scores(y, scores.argmax(1), n_classes)[TUNE_METRIC] for value, scores in oof.items()}
    best = max(grid, key=lambda value: cv[value])  # max keeps the first of equal values
    return {name: best, f"cv_{TUNE_METRIC}": cv[best], "grid": list(grid), "folds": CV_FOLDS}, oof[best]


def tune_tau(oof_scores: np.ndarray, y, class_prior, n_classes: int) -> dict:
    """The tau of TAU_GRID whose logit adjustment of out-of-fold logits gives the best macro-F1."""
    cv = {tau: point_scores(y, adjust_logits(oof_scores, class_prior, tau).argmax(1), n_classes)[TUNE_METRIC]
          for tau in TAU_GRID}
    best = max(cv, key=lambda tau: (cv[tau], -tau))  # ties: the smallest adjustment
    return {"tau": best, f"cv_{TUNE_METRIC}": cv[best], "grid": list(TAU_GRID), "folds": CV_FOLDS}


def tune_svm_c(make_svm, X, y, n_classes: int, class_weight, seed: int) -> dict:
    """The C of SVM_C_GRID with the best cross-validated macro-F1; `make_svm(C)` builds an unfitted SVM."""
    tuned, _ = choose_by_cv("svm_c", SVM_C_GRID, make_svm, X, y, n_classes, class_weight, seed)
    return tuned

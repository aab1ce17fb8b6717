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


def out_of_fold_scores(make_model, X, y, n_classes: int, class_weight, seed: int) -> np.ndarray:
    """Scores `(n_samples, n_classes)`, each from a model fit on the other folds of (X, y).

    Classes with fewer images than folds simply miss from some folds (sklearn warns; we don't).
    """
    n_splits = min(CV_FOLDS, int(np.bincount(y).max()))
    if n_splits < 2:
        raise ConfigError("tuning needs a class with at least 2 training images for cross-validation; "
                          "add images or train without --tune")
    scores = np.zeros((len(y), n_classes))
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        splits = list(folds.split(X, y))
    for fit_index, val_index in splits:
        model = make_model().fit(X[fit_index], y[fit_index], class_weight=class_weight, n_classes=n_classes)
        scores[val_index] = model.decision_function(X[val_index])
    return scores


def tune_tau(oof_scores: np.ndarray, y, class_prior, n_classes: int) -> dict:
    """The tau of TAU_GRID whose logit adjustment of out-of-fold logits gives the best macro-F1."""
    cv = {tau: point_scores(y, adjust_logits(oof_scores, class_prior, tau).argmax(1), n_classes)[TUNE_METRIC]
          for tau in TAU_GRID}
    best = max(cv, key=lambda tau: (cv[tau], -tau))  # ties: the smallest adjustment
    return {"tau": best, f"cv_{TUNE_METRIC}": cv[best], "grid": list(TAU_GRID), "folds": CV_FOLDS}


def tune_svm_c(make_svm, X, y, n_classes: int, class_weight, seed: int) -> dict:
    """The C of SVM_C_GRID with the best cross-validated macro-F1; `make_svm(C)` builds an unfitted SVM."""
    cv = {}
    for C in SVM_C_GRID:
        oof = out_of_fold_scores(lambda: make_svm(C), X, y, n_classes, class_weight, seed)
        cv[C] = point_scores(y, oof.argmax(1), n_classes)[TUNE_METRIC]
    best = max(cv, key=lambda C: (cv[C], -C))  # ties: the stronger regularisation
    return {"svm_c": best, f"cv_{TUNE_METRIC}": cv[best], "grid": list(SVM_C_GRID), "folds": CV_FOLDS}

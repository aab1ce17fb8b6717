"""Choosing on validation, never on test: stratified cross-validation on the training set picks C, the head's
epochs or tau, and cross-fitting scores a choice on rows it was not made on."""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold, cross_val_predict, cross_validate

from core.errors import ConfigError
from core.stats import point_scores
from core.weights import adjust_logits

TAU_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
SVM_C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
CV_FOLDS = 3
CROSS_FIT_REPEATS = 5
TUNE_METRIC = "macro_f1"


def _n_splits(y) -> int:
    n_splits = min(CV_FOLDS, int(np.bincount(y).max()))
    if n_splits < 2:
        raise ConfigError("validation needs a class with at least 2 training images for cross-validation; "
                          "add images")
    return n_splits


def _splits(folds, y) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (fit, validation) index pairs of `folds` over `y`. Classes with fewer images than folds simply
    miss from some folds (sklearn warns; we don't)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        return list(folds.split(np.zeros(len(y)), y))


def cv_splits(y, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The stratified folds (fit, validation) of the training labels `y`: every choice and every run's
    validation use these, so runs with one seed are validated on the same folds."""
    y = np.asarray(y)
    return _splits(StratifiedKFold(n_splits=_n_splits(y), shuffle=True, random_state=seed), y)


def out_of_fold(fold_scores, y, n_classes: int, seed: int) -> np.ndarray:
    """Scores `(n_samples, n_classes)`: `fold_scores(fit_index, val_index)` for each fold of `cv_splits`.

    For fits that share work across folds (the SVM's kernel); the others go through `cross_val_scores`.
    """
    scores = np.zeros((len(y), n_classes))
    for fit_index, val_index in cv_splits(y, seed):
        scores[val_index] = fold_scores(fit_index, val_index)
    return scores


def cross_val_scores(model, X, y, seed: int) -> np.ndarray:
    """Out-of-fold decision scores of clones of `model` (scikit-learn's `cross_val_predict` on `cv_splits`).

    Only training rows ever enter: callers pass the training set, and each fold's clone sees the other folds.
    """
    return cross_val_predict(model, X, y, cv=cv_splits(y, seed), method="decision_function")


def best_candidate(candidates: np.ndarray, y, n_classes: int) -> tuple[int, float]:
    """Of out-of-fold scores `(n_samples, n_candidates, n_classes)`, the candidate with the best macro-F1 and
    that score (ties: the first; order candidates from the strongest regularisation or fewest epochs)."""
    cv = [point_scores(y, candidates[:, k].argmax(1), n_classes)[TUNE_METRIC] for k in range(candidates.shape[1])]
    best = int(np.argmax(cv))  # argmax keeps the first of equal values
    return best, cv[best]


def choose_by_cv(name: str, grid, make_model, X, y, n_classes: int, seed: int, after_each=None
                 ) -> tuple[dict, np.ndarray]:
    """The value of `grid` whose `make_model(value)` scores the best out-of-fold macro-F1; (tuned, candidates):
    every value's out-of-fold scores, `(n_samples, len(grid), n_classes)`, in `grid` order.

    Ties go to the first value in `grid` (order it from the strongest regularisation). `after_each()` is called
    after each value's folds (progress).
    """
    def scores(value):
        oof = cross_val_scores(make_model(value), X, y, seed)
        if after_each:
            after_each()
        return oof
    candidates = np.stack([scores(value) for value in grid], axis=1)
    best, cv = best_candidate(candidates, y, n_classes)
    return {name: grid[best], f"cv_{TUNE_METRIC}": cv, "grid": list(grid), "folds": CV_FOLDS}, candidates


def choose_epochs(head, X, y, n_classes: int, seed: int, progress=None) -> tuple[dict, np.ndarray]:
    """The head's epoch count: fold clones of `head` train for its `epochs` (the most allowed), each epoch's
    weights score the held-out fold, and the epoch count with the best out-of-fold macro-F1 wins (ties:
    fewer epochs). Returns (tuned, candidates): out-of-fold logits `(n_samples, epochs, n_classes)`."""
    folds = cross_validate(head, X, y, cv=cv_splits(y, seed), params={"progress": progress}, return_estimator=True,
                           return_indices=True, error_score="raise")
    candidates = np.empty((len(y), head.epochs, n_classes))
    for fold_head, held in zip(folds["estimator"], folds["indices"]["test"]):
        candidates[held] = fold_head.epoch_decision_function(X[held])
    best, cv = best_candidate(candidates, y, n_classes)
    return {"epochs": best + 1, f"cv_{TUNE_METRIC}": cv, "grid": [1, head.epochs], "folds": CV_FOLDS}, candidates


def tune_tau(oof_scores: np.ndarray, y, class_prior, n_classes: int) -> dict:
    """The tau of TAU_GRID whose logit adjustment of out-of-fold logits gives the best macro-F1."""
    cv = {tau: point_scores(y, adjust_logits(oof_scores, class_prior, tau).argmax(1), n_classes)[TUNE_METRIC]
          for tau in TAU_GRID}
    best = max(cv, key=lambda tau: (cv[tau], -tau))  # ties: the smallest adjustment
    return {"tau": best, f"cv_{TUNE_METRIC}": cv[best], "grid": list(TAU_GRID), "folds": CV_FOLDS}


def tune_svm_c(make_svm, X, y, n_classes: int, seed: int) -> tuple[dict, np.ndarray]:
    """The C of SVM_C_GRID with the best cross-validated macro-F1; `make_svm(C)` builds an unfitted SVM."""
    return choose_by_cv("svm_c", SVM_C_GRID, make_svm, X, y, n_classes, seed)


def cross_fit(choose_and_predict, y, n_classes: int, seed: int, repeats: int = CROSS_FIT_REPEATS) -> dict:
    """Validation of a choice made on out-of-fold scores, scored on rows it was not made on.

    The rows are split in 3 stratified parts; `choose_and_predict(fit_rows, held_rows)` makes the choice on
    2 parts and predicts the third, each part held out once; the pooled predictions are scored, and the
    scores averaged over `repeats` shuffles (`RepeatedStratifiedKFold`). Nothing is refitted.
    """
    y = np.asarray(y)
    n_splits = _n_splits(y)
    folds = _splits(RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=repeats, random_state=seed), y)
    scores = []
    for repeat in range(repeats):
        predicted = np.empty(len(y), dtype=int)
        for fit_rows, held_rows in folds[repeat * n_splits:(repeat + 1) * n_splits]:
            predicted[held_rows] = choose_and_predict(fit_rows, held_rows)
        scores.append(point_scores(y, predicted, n_classes))
    return {metric: float(np.mean([s[metric] for s in scores])) for metric in scores[0]}

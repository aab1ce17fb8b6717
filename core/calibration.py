"""How sure: probabilities from a run's scores, temperature scaling chosen on validation folds, and the
expected calibration error (ECE) with its reliability diagram.

Logits (head, logreg, fine-tune) give probabilities by softmax; SVM scores are not probabilities, so they
get them only once a temperature is fitted. The temperature T (softmax(scores / T), Guo et al. 2017) is
chosen by the negative log-likelihood of the run's out-of-fold scores of its training images, never on the
test images, then applied to the test scores. Scores are taken after the run's decision rule (tau,
offsets), so the probabilities describe the predictions shown.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from core.errors import ConfigError

N_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017
LOG_T_RANGE = (-4.0, 6.0)  # temperatures searched: e^-4 .. e^6


def _check(scores, y) -> tuple[np.ndarray, np.ndarray]:
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(y)
    if scores.ndim != 2 or y.shape != (len(scores),) or not len(y):
        raise ConfigError(f"need scores (n_samples, n_classes) and one integer label per row, got {scores.shape} "
                          f"and {y.shape}")
    return scores, y.astype(np.int64)


def probabilities(scores, temperature: float = 1.0) -> np.ndarray:
    """softmax(scores / temperature) `(n_samples, n_classes)`; a -inf score (a class never trained) gets 0."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    return np.exp(log_softmax(np.asarray(scores, dtype=np.float64) / temperature, axis=1))


def fit_temperature(scores, y) -> float:
    """The temperature minimising the negative log-likelihood of `y` under softmax(scores / T).

    >>> round(fit_temperature([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]], [0, 1, 1, 0]), 2)
    3.64
    """
    scores, y = _check(scores, y)
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return -float(log_softmax(scores / np.exp(log_t), axis=1)[rows, y].mean())
    return float(np.exp(minimize_scalar(nll, bounds=LOG_T_RANGE, method="bounded").x))


def reliability(probs, y, n_bins: int = N_BINS) -> list[dict]:
    """Per non-empty confidence bin: `low`, `high`, mean `confidence` of the top class, `accuracy`, `count`."""
    probs, y = _check(probs, y)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "confidence": float(confidence[bins == b].mean()),
             "accuracy": float(correct[bins == b].mean()), "count": int((bins == b).sum())}
            for b in range(n_bins) if (bins == b).any()]


def expected_calibration_error(probs, y, n_bins: int = N_BINS) -> float:
    """ECE: the count-weighted mean gap |accuracy - confidence| over equal-width bins of top-class confidence.

    >>> expected_calibration_error([[0.9, 0.1], [0.9, 0.1]], [0, 1])
    0.4
    """
    rows = reliability(probs, y, n_bins)
    total = sum(row["count"] for row in rows)
    return float(sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in rows) / total)


def calibrate(test_scores, y_test, oof_scores=None, y_train=None, *, logits: bool = True) -> dict:
    """A run's calibration: `temperature` fitted on the out-of-fold scores (None without them), `ece_raw` of
    softmax(test scores) (None when the scores are not logits), `ece` after the temperature (None without it).
    Pass the scores after the run's decision rule."""
    temperature = None if oof_scores is None else fit_temperature(oof_scores, y_train)
    return {"temperature": temperature,
            "ece_raw": expected_calibration_error(probabilities(test_scores), y_test) if logits else None,
            "ece": None if temperature is None else expected_calibration_error(
                probabilities(test_scores, temperature), y_test)}

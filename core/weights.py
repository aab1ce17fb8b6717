"""Class-weight schemes for imbalanced data (declared once, in `SCHEMES`), and post-hoc logit adjustment."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from core.errors import ClassWeightError
from core.scan import few
from core.storage import read_json_object

if TYPE_CHECKING:
    import torch


def _effective(counts: np.ndarray, beta: float) -> np.ndarray:
    if not 0 < beta < 1:
        raise ClassWeightError(f"effective-number beta must be in (0, 1), got {beta}; try 0.999")
    return (1.0 - beta) / (1.0 - beta**counts)


@dataclass(frozen=True)
class Scheme:
    """A built-in class-weight scheme: what it does, in words, and its raw weights `raw(counts, beta)`."""

    help: str
    raw: Callable[[np.ndarray, float], np.ndarray]


# The one declaration of the built-in weight schemes: the CLI's --remedy, the Train page's menus, What-if's seeds
# and every error message read it. A new scheme is one entry here.
SCHEMES: dict[str, Scheme] = {
    "none": Scheme("no remedy: plain training, argmax decision", lambda counts, beta: np.ones_like(counts)),
    "balanced": Scheme("class weights inversely proportional to training frequency",
                       lambda counts, beta: 1.0 / counts),
    "sqrt": Scheme("class weights proportional to 1 / sqrt(training frequency), a milder balance",
                   lambda counts, beta: 1.0 / np.sqrt(counts)),
    "effective": Scheme("class weights from the effective number of samples (Cui et al. 2019, beta)", _effective),
}
CUSTOM = "custom"  # a {class: weight} table: a JSON file, or the Train page's editor
CUSTOM_HELP = "your per-class weights (a JSON file {class: weight}, or the Train page's editor)"
SCALE_NOTE = ("Weights are rescaled to an average of 1 per training image, as the built-in schemes are: only their "
              "ratios matter (for the SVM a weight multiplies C, so a common factor would change C).")
MAX_WEIGHT = 1e6  # 1e308 is finite in float64 but inf in float32, and the head's loss turns NaN


def class_weights(scheme: str, counts, classes=None, *, beta: float = 0.999, custom: dict | None = None) -> np.ndarray:
    """Per-class loss weights `(n_classes,)`, scaled so the average weight per training sample is 1.

    - none: all 1; balanced: inverse frequency; sqrt: inverse square root of frequency;
    - effective: (1 - beta) / (1 - beta**n), the effective number of samples (Cui et al. 2019);
    - custom: `custom` maps class name -> weight; classes left out weigh 1 before the common rescaling.

    >>> class_weights("balanced", [90, 10]).round(2).tolist()
    [0.56, 5.0]
    """
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 1 or counts.size < 2 or (counts <= 0).any():
        raise ClassWeightError(f"class counts must be positive, one per class; got {counts.tolist()}")
    if scheme == CUSTOM:
        return normalise_weights(custom_weights(custom or {}, classes), counts)
    if scheme not in SCHEMES:
        raise ClassWeightError(f"unknown class-weight scheme {scheme!r}; "
                               f"choose one of: {', '.join([*SCHEMES, CUSTOM])}")
    return normalise_weights(SCHEMES[scheme].raw(counts, beta), counts)


def normalise_weights(weights, counts) -> np.ndarray:
    """Scale per-class weights so the average weight per training sample is 1: only their ratios matter.

    For the SVM a class weight multiplies C, so unscaled weights x 10 would fit as C x 10 (and void a tuned C).

    >>> normalise_weights([10, 90], [90, 10]).round(2).tolist()
    [0.56, 5.0]
    """
    weights, counts = np.asarray(weights, dtype=float), np.asarray(counts, dtype=float)
    return weights * counts.sum() / (weights * counts).sum()


def custom_weights(table: dict, classes) -> np.ndarray:
    """Validate a `{class name: weight}` table; every weight must be a finite number >= 0, not all 0."""
    if classes is None:
        raise ClassWeightError("custom class weights need the class names of the dataset")
    if not isinstance(table, dict):
        raise ClassWeightError(f"custom class weights must be a JSON object {{class: weight}}, got {type(table).__name__}")
    unknown = sorted(set(table) - set(classes))
    if unknown:
        raise ClassWeightError(f"custom weights name unknown classes {few(unknown)}; known classes: {few(classes)}")
    weights = np.ones(len(classes))
    for i, name in enumerate(classes):
        if name in table:
            weights[i] = check_weight(name, table[name])
    if not weights.any():
        raise ClassWeightError("custom class weights are all 0; give at least one class a positive weight")
    return weights


def check_weight(name: str, value) -> float:
    """One custom weight as a float: a number from 0 to MAX_WEIGHT (larger ones overflow float32 losses)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ClassWeightError(f"weight for class {name!r} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ClassWeightError(f"weight for class {name!r} must be a finite number >= 0, got {value!r}")
    if value > MAX_WEIGHT:
        raise ClassWeightError(f"weight for class {name!r} must be at most {MAX_WEIGHT:g}, got {value!r}; "
                               "scale the table down (e.g. divide every weight by the largest)")
    return float(value)


def read_custom_weights(path) -> dict:
    """Load a custom weight table from a JSON file `{class: weight}`."""
    return read_json_object(path, "custom class-weight file", ClassWeightError)


def adjust_logits(scores: np.ndarray, class_prior, tau: float) -> np.ndarray:
    """Post-hoc logit adjustment (Menon et al. 2021): `scores - tau * log(prior)`; tau=0 is a no-op.

    `class_prior` is per-class training frequencies or counts (normalized here). Raises rare classes'
    scores, trading majority-class precision for minority-class recall without retraining.
    """
    prior = np.asarray(class_prior, dtype=float)
    prior = prior / prior.sum()
    if not math.isfinite(tau) or tau < 0:
        raise ClassWeightError(f"logit-adjustment tau must be a finite number >= 0, got {tau}")
    return np.asarray(scores) - tau * np.log(np.clip(prior, 1e-12, None))


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None):
    """Sum of per-sample cross-entropy x class weight, divided by the batch size.

    torch's weighted mean divides by the summed weights instead, which cancels the weight whenever a
    batch holds a single class (fine-tuning batches group images by size, so that happens).
    """
    import torch  # on use: the registry of approaches and remedies imports this module without torch

    return torch.nn.functional.cross_entropy(logits, labels, weight=weight, reduction="sum") / len(labels)

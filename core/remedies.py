"""Imbalance remedies as named recipes: a class-weight scheme plus training- and decision-side parts.

A remedy is written `part+part`, e.g. `balanced+offsets`: at most one weight scheme (`none`,
`balanced`, `sqrt`, `effective` or a custom JSON file) and any of

- `resample`: class-balanced sampling of the training batches (Kang et al. 2020), for minibatch fits;
- `la-loss`: logit-adjusted loss, CE(z + tau * log prior) (Menon et al. 2021), for trained logits;
- `tau`: post-hoc logit adjustment, tau chosen on out-of-fold scores of the training images;
- `offsets`: per-class additive offsets on the decision scores, chosen on out-of-fold scores.

Which approach supports which part is declared in `core.approaches`. Everything chosen here is
chosen on cross-validation folds of the training images, never on the test set. A remedy corrects
training for the imbalance at most once (a weight scheme, `resample` or `la-loss`): two of them are
refused; `tau` on top of one is allowed with a warning (`remedy_warnings`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import ClassWeightError
from core.stats import point_scores
from core.weights import CUSTOM, CUSTOM_HELP, SCHEMES, adjust_logits

# The remedy parts beside a weight scheme (`core.weights.SCHEMES`), with what each does
PARTS = {
    "resample": "class-balanced batches: every class drawn equally often (head and fine-tune)",
    "la-loss": "logit-adjusted loss: train on CE(z + tau log prior) (head, logreg, fine-tune)",
    "tau": "post-hoc logit adjustment, tau chosen on training folds (logit approaches)",
    "offsets": "per-class offsets added to the decision scores, chosen on training folds (every approach)",
}
TRAINING_CORRECTIONS = ("resample", "la-loss")  # like a weight scheme, each shifts training towards rare classes
COMBINATIONS = ("balanced+offsets", "balanced+tau", "la-loss+offsets")  # offered ready-made on the Train page


def remedy_help() -> dict[str, str]:
    """What every weight scheme and remedy part does, in words: `{name: help}`."""
    return {**{name: scheme.help for name, scheme in SCHEMES.items()}, CUSTOM: CUSTOM_HELP, **PARTS}


def page_choices() -> tuple[str, ...]:
    """The Train page's remedy menu: every scheme, `custom` (its table), every part and the combinations."""
    return (*SCHEMES, CUSTOM, *PARTS, *COMBINATIONS)


def describe(label: str) -> str:
    """One line per part of a remedy label, e.g. 'balanced+offsets' -> 'balanced: ...; offsets: ...'."""
    known = remedy_help()
    return "; ".join(f"{part}: {known.get(part, 'a custom weight file')}" for part in label.split("+"))


OFFSET_STEPS = np.linspace(-2.0, 2.0, 17)  # candidate offsets, in units of the scores' standard deviation
OFFSET_ROUNDS = 2
OFFSET_METRIC = "macro_f1"


@dataclass(frozen=True)
class Remedy:
    """A parsed remedy: `weights` (scheme name, JSON path or `{class: weight}` table) and the other parts."""

    label: str
    weights: object = "none"
    parts: frozenset[str] = frozenset()

    @property
    def weight_label(self) -> str:
        """The weight scheme as recorded in `class_weight` (custom ones as `custom` or `custom:<file stem>`)."""
        if isinstance(self.weights, dict):
            return "custom"
        if str(self.weights).endswith(".json"):
            return f"custom:{Path(self.weights).stem}"
        return str(self.weights)  # a scheme, or a label such as custom:what-if given with explicit weights

    def has(self, part: str) -> bool:
        return part in self.parts

    def with_parts(self, *parts: str) -> Remedy:
        """The same remedy with more parts (e.g. `tau` added by `--tune`); the label is kept."""
        return Remedy(self.label, self.weights, self.parts | frozenset(parts))


def parse_remedy(spec) -> Remedy:
    """A remedy from its spec: `'balanced+offsets'`, `'weights.json'`, or a `{class: weight}` table.

    >>> parse_remedy("balanced+offsets").parts
    frozenset({'offsets'})
    """
    if isinstance(spec, dict):
        return Remedy("custom", spec)
    items = [item.strip() for item in str(spec).split("+")]
    weights = [item for item in items if item in SCHEMES or item.endswith(".json") or item.startswith(CUSTOM)]
    parts = [item for item in items if item in PARTS]
    unknown = [item for item in items if item not in weights and item not in parts]
    if unknown or len(weights) > 1 or len(set(parts)) != len(parts):
        problem = (f"unknown class-weight scheme or remedy part {unknown[0]!r}" if unknown
                   else "at most one weight scheme and each part once")
        raise ClassWeightError(f"remedy {spec!r}: {problem}; write parts joined by '+', e.g. balanced+offsets, "
                               f"from: {', '.join(SCHEMES)}, a custom .json file, {', '.join(PARTS)}")
    label = "+".join(items)
    return Remedy(label, weights[0] if weights else "none", frozenset(parts))


def _training_corrections(weights, parts) -> list[str]:
    """The parts of a remedy that correct training for the imbalance: a weight scheme other than none,
    `resample`, `la-loss`."""
    scheme = "custom" if isinstance(weights, dict) else str(weights)
    return ([scheme] if scheme != "none" else []) + [part for part in TRAINING_CORRECTIONS if part in parts]


def remedy_warnings(remedy: Remedy) -> list[str]:
    """What a remedy does twice, in words (the CLI prints them, the Train page shows them); empty if nothing."""
    training = _training_corrections(remedy.weight_label, remedy.parts)
    if remedy.has("tau") and training:
        return [f"{remedy.label}: tau adjusts the decision for the imbalance on top of {training[0]}, which already "
                "corrects training for it; tau is chosen on the training folds from 0 up, so it stays 0 unless "
                "validation gains, but it can only favour the rare classes more, never undo an over-correction"]
    return []


def check_remedies(specs) -> tuple[Remedy, ...]:
    """Parse every remedy spec (a clear error for the first bad one); at least one."""
    if not specs:
        raise ClassWeightError("give at least one remedy, e.g. none")
    remedies = tuple(parse_remedy(spec) for spec in specs)
    for remedy in remedies:
        training = _training_corrections(remedy.weights, remedy.parts)
        if len(training) > 1:
            raise ClassWeightError(
                f"remedy {remedy.label!r} corrects training for the imbalance twice: {' and '.join(training)} each "
                "shift it towards the rare classes, so together they over-correct (balanced weights on "
                "class-balanced batches count a rare image by its rarity squared); keep one of them, and add tau "
                "or offsets to adjust the decision on top")
    return remedies


def balanced_batches(y, batch_size: int, generator) -> list:
    """One epoch of class-balanced batches: `len(y)` indices drawn with replacement, each class equally likely.

    `generator` is a `torch.Generator`; the batches are index tensors.
    """
    import torch

    counts = np.bincount(y)
    per_sample = torch.as_tensor(1.0 / counts[y], dtype=torch.float64)
    order = torch.multinomial(per_sample, len(y), replacement=True, generator=generator)
    return [order[start:start + batch_size] for start in range(0, len(y), batch_size)]


def log_prior(class_prior) -> np.ndarray:
    """log of per-class training frequencies (counts normalized), clipped away from log(0)."""
    prior = np.asarray(class_prior, dtype=float)
    return np.log(np.clip(prior / prior.sum(), 1e-12, None))


def choose_offsets(scores: np.ndarray, y, n_classes: int) -> np.ndarray:
    """Per-class additive offsets that maximise out-of-fold macro-F1, by coordinate search.

    `scores` are out-of-fold decision scores `(n_samples, n_classes)` of the training images; each
    class's offset is tried over `OFFSET_STEPS` x the scores' standard deviation, keeping the best
    (ties: the smaller offset), for `OFFSET_ROUNDS` passes over the classes.
    """
    finite = np.where(np.isfinite(scores), scores, np.nan)
    scale = float(np.nanstd(finite)) or 1.0
    offsets = np.zeros(n_classes)

    def score(candidate: np.ndarray) -> float:
        return point_scores(y, (scores + candidate).argmax(1), n_classes)[OFFSET_METRIC]

    best = score(offsets)
    for _ in range(OFFSET_ROUNDS):
        for c in range(n_classes):
            for step in sorted(OFFSET_STEPS, key=abs):
                trial = offsets.copy()
                trial[c] = step * scale
                value = score(trial)
                if value > best + 1e-12:
                    best, offsets = value, trial
    return offsets


def decide(scores: np.ndarray, train_counts, decision: dict) -> np.ndarray:
    """Decision scores after the run's logit adjustment (tau) and per-class offsets."""
    adjusted = adjust_logits(scores, train_counts, decision["tau"]) if decision["tau"] else np.asarray(scores)
    return adjusted + np.asarray(decision["offsets"]) if decision.get("offsets") is not None else adjusted

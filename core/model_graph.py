"""Stored models (core.model_io) as torch modules: features -> class scores, in float64.

One implementation serves `predict` (run eagerly) and `export` (traced into ONNX), so both apply the same
arithmetic: sklearn's SVC decision function (one-vs-one decisions, then its one-vs-rest votes plus
transformed confidences), the linear probes' standardised affine map, the fine-tune head.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.model_io import StoredModel


def _placement(classes: np.ndarray, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(one-hot `(n_seen, n_classes)`, mask `(n_classes,)`: 0 for trained classes, -inf for the others)."""
    place = torch.zeros(len(classes), n_classes, dtype=torch.float64)
    place[torch.arange(len(classes)), torch.as_tensor(classes.astype(np.int64))] = 1.0
    mask = torch.full((n_classes,), float("-inf"), dtype=torch.float64)
    mask[torch.as_tensor(classes.astype(np.int64))] = 0.0
    return place, mask


class LinearScores(nn.Module):
    """`((x - mean) / scale) @ weight.T + bias`, placed into the run's classes (linear head, logreg, LinearSVC)."""

    def __init__(self, stored: StoredModel):
        super().__init__()
        for name in ("mean", "scale", "weight", "bias"):
            self.register_buffer(name, torch.from_numpy(stored.arrays[name]).double())
        place, mask = _placement(stored.arrays["classes"], stored.n_classes)
        self.register_buffer("place", place)
        self.register_buffer("mask", mask)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.double() - self.mean) / self.scale
        return (x @ self.weight.T + self.bias) @ self.place + self.mask


def kernel_of(x: torch.Tensor, vectors: torch.Tensor, norms: torch.Tensor, meta: dict) -> torch.Tensor:
    """sklearn's kernel `(n, n_vectors)` of standardised rows `x` against `vectors` (squared `norms` given)."""
    dot = x @ vectors.T
    if meta["kernel"] == "rbf":
        distances = ((x * x).sum(dim=1, keepdim=True) - 2 * dot + norms).clamp_min(0.0)
        return torch.exp(-meta["gamma"] * distances)
    if meta["kernel"] == "poly":
        return (meta["gamma"] * dot + meta["coef0"]) ** meta["degree"]
    if meta["kernel"] == "sigmoid":
        return torch.tanh(meta["gamma"] * dot + meta["coef0"])
    return dot


class SvmScores(nn.Module):
    """sklearn's `SVC.decision_function` (ovr shape) from its support vectors, in one graph.

    For classes i < j, decision (i, j) = K(x, SV_i) . dual_coef[j-1, SV_i] + K(x, SV_j) . dual_coef[i, SV_j]
    + intercept; it votes for i when >= 0. Scores are votes + confidences / (3 (|confidences| + 1)), as
    `sklearn.multiclass._ovr_decision_function`; two classes give [-d, d].
    """

    def __init__(self, stored: StoredModel):
        super().__init__()
        a, self.meta = stored.arrays, stored.meta
        m = len(a["classes"])
        starts = np.concatenate([[0], np.cumsum(a["n_support"].astype(np.int64))])
        pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
        coef = np.zeros((a["support_vectors"].shape[0], len(pairs)))
        vote_i, vote_j = np.zeros((len(pairs), m)), np.zeros((len(pairs), m))
        for p, (i, j) in enumerate(pairs):
            coef[starts[i]:starts[i + 1], p] = a["dual_coef"][j - 1, starts[i]:starts[i + 1]]
            coef[starts[j]:starts[j + 1], p] = a["dual_coef"][i, starts[j]:starts[j + 1]]
            vote_i[p, i], vote_j[p, j] = 1.0, 1.0
        arrays = {"mean": a["mean"], "scale": a["scale"], "vectors": a["support_vectors"], "coef": coef,
                  "intercept": a["intercept"], "vote_i": vote_i, "vote_j": vote_j,
                  "vector_norms": (a["support_vectors"] ** 2).sum(axis=1)}
        for name, value in arrays.items():
            self.register_buffer(name, torch.from_numpy(np.asarray(value, dtype=np.float64)))
        place, mask = _placement(a["classes"], stored.n_classes)
        self.register_buffer("place", place)
        self.register_buffer("mask", mask)
        self.binary = m == 2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.double() - self.mean) / self.scale
        decisions = kernel_of(x, self.vectors, self.vector_norms, self.meta) @ self.coef + self.intercept
        if self.binary:  # sklearn's public coefficients give the class-1 decision for two classes
            scores = torch.cat([-decisions, decisions], dim=1)
        else:
            votes = (decisions >= 0).double() @ self.vote_i + (decisions < 0).double() @ self.vote_j
            confidence = decisions @ (self.vote_i - self.vote_j)
            scores = votes + confidence / (3 * (confidence.abs() + 1))
        return scores @ self.place + self.mask


class KernelScores(nn.Module):
    """The SVM's Nystroem approximation: `kernel(x, components) @ weight.T + bias`, placed into the run's classes."""

    def __init__(self, stored: StoredModel):
        super().__init__()
        a, self.meta = stored.arrays, stored.meta
        arrays = {"mean": a["mean"], "scale": a["scale"], "vectors": a["support_vectors"], "weight": a["weight"],
                  "bias": a["bias"], "vector_norms": (a["support_vectors"] ** 2).sum(axis=1)}
        for name, value in arrays.items():
            self.register_buffer(name, torch.from_numpy(np.asarray(value, dtype=np.float64)))
        place, mask = _placement(a["classes"], stored.n_classes)
        self.register_buffer("place", place)
        self.register_buffer("mask", mask)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.double() - self.mean) / self.scale
        return (kernel_of(x, self.vectors, self.vector_norms, self.meta) @ self.weight.T + self.bias) @ self.place \
            + self.mask


class HeadScores(nn.Module):
    """The fine-tune's linear head on backbone features, in float64."""

    def __init__(self, stored: StoredModel):
        super().__init__()
        self.register_buffer("weight", torch.from_numpy(stored.arrays["head.weight"]).double())
        self.register_buffer("bias", torch.from_numpy(stored.arrays["head.bias"]).double())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.double() @ self.weight.T + self.bias


def score_module(stored: StoredModel) -> nn.Module:
    """The module mapping features `(n, d)` to raw class scores `(n, n_classes)` for a stored model."""
    return {"linear": LinearScores, "svm": SvmScores, "kernel": KernelScores,
            "finetune": HeadScores}[stored.kind](stored).eval()


class ImageClassifier(nn.Module):
    """uint8 images `(N, 3, H, W)` -> (raw scores, decision scores, decided class): backbone, classifier and
    the run's decision rule (`shift`: -tau log prior + offsets, added to the raw scores) in one graph."""

    def __init__(self, backbone_features: nn.Module, scores: nn.Module, shift: np.ndarray):
        super().__init__()
        self.backbone, self.scores = backbone_features, scores
        self.register_buffer("shift", torch.as_tensor(np.asarray(shift, dtype=np.float64)))

    def forward(self, images: torch.Tensor):
        raw = self.scores(self.backbone(images))
        decision = raw + self.shift
        return raw, decision, decision.argmax(dim=1)

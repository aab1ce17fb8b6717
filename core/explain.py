"""Heat maps: where in an image a run's decision comes from.

Every approach here scores the *pooled* vector p = mean over (h, w) of the backbone's last feature map F.
For a classifier linear in p (head, logreg, fine-tune's new layer, LinearSVC), class c's score is
W_c . p + b_c, so the map M_c(h, w) = W_c . F(h, w) is its exact class activation map (Zhou et al. 2016):
its mean is the score minus the bias, one forward pass, no gradients. For the RBF SVM the score is not linear;
Grad-CAM (Selvaraju et al. 2017) weights each channel by the spatial mean of the score's gradient, which for a
mean-pooled map is the gradient with respect to p (computed by torch autograd through the SVM's kernel
expansion), giving the first-order map grad . F(h, w); Grad-CAM shows its positive part.

The contrast map M_pred - M_true shows where the image argues for the predicted class over the true one;
the decision rule's prior adjustment (tau, offsets) adds a constant to that margin, reported as a number.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import ConfigError
from core.model_graph import score_module
from core.model_io import StoredModel, finetune_modules, model_state
from core.records import RunRecord

EXACT, GRADIENT = "exact CAM", "Grad-CAM"


@dataclass(frozen=True)
class Explanation:
    """One image's heat maps. `image` is the model input `(H, W, 3)` uint8; maps are `(h, w)` on the backbone's
    grid, in score units per location. `margin` is score[pred] - score[true] before the decision rule and
    `prior_margin` what tau and the offsets add to it (None without a true class)."""

    path: str
    image: np.ndarray
    method: str
    predicted: int
    true: int | None
    scores: np.ndarray
    predicted_map: np.ndarray
    contrast_map: np.ndarray | None
    margin: float | None
    prior_margin: float | None


def linear_cam(feature_map, weight) -> np.ndarray:
    """Class activation maps `(n_classes, h, w)` of a layer linear in the mean-pooled `feature_map` `(C, h, w)`.

    `weight` is `(n_classes, C)`; each map's mean is that class's score minus its bias.

    >>> linear_cam(np.ones((2, 1, 2)), np.array([[1.0, 2.0]])).tolist()
    [[[3.0, 3.0]]]
    """
    feature_map, weight = np.asarray(feature_map, dtype=np.float64), np.asarray(weight, dtype=np.float64)
    if feature_map.ndim != 3 or weight.ndim != 2 or weight.shape[1] != feature_map.shape[0]:
        raise ConfigError(f"a CAM needs a feature map (C, h, w) and weights (n_classes, C) with the same C, got "
                          f"{feature_map.shape} and {weight.shape}")
    return np.einsum("kc,chw->khw", weight, feature_map)


def contrast(maps: np.ndarray, predicted: int, true: int) -> np.ndarray:
    """Where the image argues for `predicted` over `true`: `maps[predicted] - maps[true]` (positive: for predicted)."""
    return maps[predicted] - maps[true]


def _stored(model) -> StoredModel:
    """A run's model as stored (`core.model_io`): as given, or from a fitted estimator / fine-tune checkpoint."""
    return model if isinstance(model, StoredModel) else model_state(model)


def linear_weights(model) -> tuple[np.ndarray, np.ndarray] | None:
    """`(W, b)` with scores = W @ pooled + b for a model linear in the pooled features; None if it is not.

    Standardisation is folded in: W = W' / scale, b = b' - W @ mean; classes absent from training get bias -inf.
    """
    stored = _stored(model)
    a = stored.arrays
    if stored.kind == "finetune":  # a Linear on the pooled features
        return a["head.weight"].astype(np.float64), a["head.bias"].astype(np.float64)
    if stored.kind != "linear":
        return None
    weight = a["weight"] / a["scale"][None, :]
    classes = a["classes"].astype(np.int64)
    full_w, full_b = np.zeros((stored.n_classes, weight.shape[1])), np.full(stored.n_classes, -np.inf)
    full_w[classes], full_b[classes] = weight, a["bias"] - weight @ a["mean"]
    return full_w, full_b


def svm_scores_torch(model, pooled: torch.Tensor) -> torch.Tensor:
    """The SVM's one-vs-rest scores `(n_classes,)` of one pooled vector, differentiable in torch (the same graph
    `predict` and `export` use: `core.model_graph.SvmScores`)."""
    stored = _stored(model)
    if stored.meta.get("kernel") != "rbf":
        raise ConfigError(f"heat maps of a {stored.meta.get('kernel')}-kernel SVM are not supported; train an rbf "
                          "or linear one")
    return score_module(stored)(pooled.double()[None, :])[0]


def gradient_weights(model, pooled: np.ndarray, classes) -> np.ndarray:
    """Grad-CAM channel weights `(len(classes), C)`: the gradient of each class's score w.r.t. the pooled vector."""
    rows = []
    for c in classes:
        point = torch.tensor(pooled, dtype=torch.float64, requires_grad=True)
        svm_scores_torch(model, point)[c].backward()
        rows.append(point.grad.numpy())
    return np.stack(rows)


def check_explainable(record: RunRecord) -> None:
    """Raise ConfigError (what to do) unless heat maps can be drawn for this run."""
    backbone = record.backbone or {}
    if backbone.get("parts") or "+" in str(backbone.get("name", "")):
        raise ConfigError("heat maps follow one backbone's feature map; this run fuses several backbones, so "
                          "train a run on one backbone to see them")
    if backbone.get("pool", "avg") != "avg":
        raise ConfigError(f"heat maps need average pooling (the pooled vector is then the map's mean); this run "
                          f"used {backbone.get('pool')!r} pooling, so train one with --pool avg")


def load_backbone(record: RunRecord, model=None):
    """The run's backbone in torch fp32 (a fine-tune's trained blocks loaded), and its preprocessing."""
    from core.backbones import create_backbone
    from core.features import Preprocess

    check_explainable(record)
    backbone = create_backbone(record.backbone_name, pool="avg")
    if model is not None and _stored(model).kind == "finetune":
        trained, _ = finetune_modules(_stored(model))
        if trained is not None:
            backbone.features.load_state_dict(trained.state_dict())
    image_size = (record.backbone or {}).get("image_size") or record.setting("image_size")
    return backbone, Preprocess.for_backbone(backbone.entry, image_size)


def feature_map(backbone, image: torch.Tensor) -> torch.Tensor:
    """The last feature map `(C, h, w)` of one uint8 image `(3, H, W)` (its mean over (h, w) is the pooled vector)."""
    normalize, body = backbone.features[0], backbone.features[1]
    x = normalize(image.unsqueeze(0).contiguous())
    with torch.inference_mode():
        if hasattr(body, "forward_features"):  # timm
            return body.forward_features(x)[0].float()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):  # torchvision ResNet
            x = getattr(body, name)(x)
        return x[0].float()


def explain_image(record: RunRecord, model, backbone, preprocess, path: str, true: int | None = None) -> Explanation:
    """The heat maps of one image file under a stored run's model (see the module docstring)."""
    from core.data import decode_rgb
    from core.remedies import decide

    image = decode_rgb(path)
    image = preprocess(image, preprocess.output_size((image.shape[2], image.shape[1])))
    fmap = feature_map(backbone, image).double().numpy()
    pooled = fmap.mean(axis=(1, 2))
    linear = linear_weights(model)
    if linear is not None:
        scores = linear[0] @ pooled + linear[1]
    else:
        scores = svm_scores_torch(model, torch.from_numpy(pooled)).numpy()
    shift = decide(np.zeros((1, len(scores))), record.dataset.train_counts, record.decision)[0]
    predicted = int(np.argmax(scores + shift))
    wanted = [predicted] if true is None or true == predicted else [predicted, true]
    weight = linear[0][wanted] if linear is not None else gradient_weights(model, pooled, wanted)
    maps = linear_cam(fmap, weight)
    has_true = true is not None
    return Explanation(
        path=str(path), image=image.permute(1, 2, 0).numpy(), method=EXACT if linear is not None else GRADIENT,
        predicted=predicted, true=true, scores=scores, predicted_map=maps[0],
        contrast_map=(maps[0] - maps[-1]) if has_true else None,
        margin=float(scores[predicted] - scores[true]) if has_true else None,
        prior_margin=float(shift[predicted] - shift[true]) if has_true else None)


def explain_images(record: RunRecord, model, paths, true_labels=None, backbone=None) -> tuple[list[Explanation], float]:
    """Heat maps of several images under one run, and the seconds they took (the backbone load included).

    >>> explanations, seconds = explain_images(record, store.load_model(run_id), paths)  # doctest: +SKIP
    """
    started = time.perf_counter()
    backbone, preprocess = backbone or load_backbone(record, model)
    true_labels = [None] * len(paths) if true_labels is None else list(true_labels)
    out = [explain_image(record, model, backbone, preprocess, path, true) for path, true in zip(paths, true_labels)]
    return out, time.perf_counter() - started


def overlay(image: np.ndarray, heat: np.ndarray, *, positive_only: bool = False, alpha: float = 0.55) -> np.ndarray:
    """`image` `(H, W, 3)` uint8 with `heat` `(h, w)` upsampled onto it: red where it is positive, blue negative
    (Grad-CAM: only the positive part); scaled by the largest |value|. Returns uint8 `(H, W, 3)`."""
    heat = np.maximum(heat, 0) if positive_only else heat
    scale = float(np.abs(heat).max()) or 1.0
    grid = torch.from_numpy(heat / scale).float()[None, None]
    up = torch.nn.functional.interpolate(grid, size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    up = up.numpy()[..., None]
    red, blue = np.array([220.0, 30, 30]), np.array([30.0, 80, 220])
    colour = np.where(up >= 0, red, blue)
    weight = alpha * np.abs(up)
    gray = image.astype(np.float64).mean(axis=2, keepdims=True).repeat(3, axis=2)
    return np.clip(gray * (1 - weight) + colour * weight, 0, 255).astype(np.uint8)


def caption(explanation: Explanation, classes: list[str]) -> str:
    """One line under an image's heat maps: method, predicted class, and how the margin over the true class
    splits between the image's evidence and the prior adjustment."""
    predicted = classes[explanation.predicted]
    if explanation.true is None or explanation.true == explanation.predicted:
        return f"{explanation.method}: predicted {predicted}"
    true = classes[explanation.true]
    return (f"{explanation.method}: {predicted} over {true} by {explanation.margin + explanation.prior_margin:+.2f}"
            f" = image {explanation.margin:+.2f} + prior adjustment {explanation.prior_margin:+.2f}")

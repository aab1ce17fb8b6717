"""Backbone registry: name -> pretrained feature extractor with its preprocessing config.

One door, `create_backbone(name, pretrained=True, pool="avg")`, and `list_backbones(pattern)`.
Each family lives in its own module and files its entries with `register_backbone`. A fused backbone
is named by its registered parts joined with `+` (`efficientnet_lite0+efficientnet_lite2`): see
`backbone_parts`; core.fusion extracts and concatenates its parts.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from core.backbones.registry import ENTRIES, IMAGENET_MEAN, IMAGENET_STD, BackboneEntry  # noqa: F401  (re-exported)
from core.errors import BackboneError

POOLS = ("avg", "max")
FUSION_SEPARATOR = "+"


class InputNormalization(nn.Module):
    """uint8 images `(N, 3, H, W)` in [0, 255] -> float inputs `(x / 255 - mean) / std`, in one fused step.

    Part of the model, so decoding workers ship uint8 (a quarter of the bytes) and the runtime (OpenVINO
    folds it into its graph) normalizes whole batches.
    """

    def __init__(self, mean, std):
        super().__init__()
        mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", mean / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() * self.scale - self.shift


@dataclass
class Backbone:
    """A feature extractor: uint8 images `(N, 3, H, W)` of any size -> features `(N, feature_dim)`.

    `features` is the input normalization followed by `stages` (the units fine-tuning unfreezes, last first).
    """

    name: str
    features: nn.Module
    feature_dim: int
    stages: tuple[nn.Module, ...]
    pool: str
    entry: BackboneEntry

    @property
    def last_block(self) -> nn.Module:
        return self.stages[-1]

    def split(self, n_trainable: int) -> tuple[nn.Module, nn.Module]:
        """(frozen prefix, trainable suffix): the input normalization and all but the last `n_trainable` stages,
        then those stages; `suffix(prefix(images)) == features(images)`. The modules share this backbone's
        parameters."""
        cut = len(self.stages) - n_trainable
        return nn.Sequential(self.features[0], *self.stages[:cut]), nn.Sequential(*self.stages[cut:])

    def describe(self) -> dict:
        """JSON-ready identity of the backbone (part of every cache key and results file)."""
        return {**describe_backbone(self.entry, self.pool), "feature_dim": self.feature_dim}


def describe_backbone(entry: BackboneEntry, pool: str) -> dict:
    """JSON-ready identity of a registered backbone with its pooling, without building it."""
    return {"name": entry.name, "weights": entry.weights_id, "pool": pool, "image_size": entry.image_size,
            "mean": list(entry.mean), "std": list(entry.std), "interpolation": entry.interpolation}


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching a shell-style pattern, e.g. `resnet*`."""
    return sorted(n for n in ENTRIES if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> BackboneEntry:
    """The registry entry for `name`; unknown names raise with close matches."""
    if is_fused(name) and name not in ENTRIES:
        raise BackboneError(f"{name!r} fuses several backbones, which only the approaches on cached features "
                            "(svm, head) and the what-if and feature-map views take; pick one backbone here")
    if name not in ENTRIES:
        close = difflib.get_close_matches(name, ENTRIES, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise BackboneError(f"unknown backbone {name!r}; {hint}choose one of: {', '.join(list_backbones())}")
    return ENTRIES[name]


def backbone_parts(name: str) -> list[str]:
    """The registered backbones a name stands for: itself, or the parts of a fused `A+B[+C]` name.

    Unknown parts raise with close matches; a part named twice is refused.

    >>> backbone_parts("efficientnet_lite0+efficientnet_lite2")
    ['efficientnet_lite0', 'efficientnet_lite2']
    """
    parts = str(name).split(FUSION_SEPARATOR)
    for part in parts:
        get_entry(part)
    if len(set(parts)) < len(parts):
        raise BackboneError(f"fused backbone {name!r} names a part twice; join different backbones, "
                            f"e.g. efficientnet_lite0{FUSION_SEPARATOR}efficientnet_lite2")
    return parts


def is_fused(name: str) -> bool:
    return FUSION_SEPARATOR in str(name)


def load_imagenet_model(name: str, pretrained: bool = True) -> nn.Module:
    """The full pretrained ImageNet classifier, in eval mode (for checks on real photos)."""
    return get_entry(name).build(pretrained).eval()


def create_backbone(name: str = "efficientnet_lite0", *, pretrained: bool = True, pool: str = "avg") -> Backbone:
    """Build a pretrained feature extractor (uint8 images in, normalized inside) with `avg` or `max` pooling.

    >>> bb = create_backbone("efficientnet_lite0")  # doctest: +SKIP
    >>> bb.feature_dim  # doctest: +SKIP
    1280
    """
    if pool not in POOLS:
        raise BackboneError(f"unknown pooling {pool!r}; choose one of: {', '.join(POOLS)}")
    entry = get_entry(name)
    features, dim, stages = entry.strip(entry.build(pretrained), pool)
    features = nn.Sequential(InputNormalization(entry.mean, entry.std), features)
    return Backbone(name, features.eval(), dim, tuple(stages), pool, entry)


from core.backbones import efficientnet, resnet  # noqa: E402,F401  (register the families)

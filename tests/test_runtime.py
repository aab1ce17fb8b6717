"""Inference runtimes for the frozen backbone (core.runtime): OpenVINO on CPU agrees with torch."""
import importlib.util

import numpy as np
import pytest
import torch
import torch.hub
import torchvision
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

import core.runtime as runtime
from core.backbones import create_backbone, get_entry, list_backbones
from core.errors import ConfigError
from core.runtime import frozen_forward, resolve_runtime

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_picks_openvino_on_cpu_and_torch_on_cuda():
    assert resolve_runtime("auto", CPU) == "openvino"
    assert resolve_runtime("auto", CUDA) == "torch"
    assert resolve_runtime("torch", CPU) == "torch"


def test_openvino_on_a_gpu_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="runs on the CPU.*--runtime torch"):
        resolve_runtime("openvino", CUDA)


def test_unknown_runtime_lists_the_choices():
    with pytest.raises(ConfigError, match="'onnx'.*auto, torch, openvino"):
        resolve_runtime("onnx", CPU)


def test_without_openvino_auto_falls_back_and_explicit_asks_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(runtime.importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name))
    assert resolve_runtime("auto", CPU) == "torch"
    with pytest.raises(ConfigError, match="pip install openvino"):
        resolve_runtime("openvino", CPU)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Three real photos at the working size of a wide photo (short side 96 here), uint8."""
    from skimage import data

    batch = []
    for image in (data.chelsea(), data.coffee(), data.rocket()):
        x = torch.from_numpy(image).permute(2, 0, 1)
        batch.append(F.resize(x, [96, 288], interpolation=InterpolationMode.BICUBIC, antialias=True))
    return torch.stack(batch)


@pytest.fixture(scope="module")
def offline_resnet_weights(tmp_path_factory):
    """Random ResNet checkpoints where torch hub looks for them, as the offline error tells users to do."""
    hub = tmp_path_factory.mktemp("hub")
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    (hub / "checkpoints").mkdir()
    for name in list_backbones("resnet*"):
        weights = torchvision.models.get_model_weights(name).DEFAULT
        torch.manual_seed(0)
        torch.save(torchvision.models.get_model(name).state_dict(), hub / "checkpoints" / weights.url.split("/")[-1])
    yield
    torch.hub.set_dir(previous)


@pytest.mark.slow
@pytest.mark.usefixtures("offline_resnet_weights")
@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_gives_the_same_features_through_both_runtimes(name, photos, tmp_path):
    entry, x = get_entry(name), photos
    with_torch = frozen_forward(entry, "avg", runtime="torch", device=CPU, dtype=None)(x)
    with_openvino = frozen_forward(entry, "avg", runtime="openvino", device=CPU, dtype=None, cache_dir=tmp_path)(x)
    assert with_openvino.shape == with_torch.shape == (3, create_backbone(name, pretrained=False).feature_dim)
    assert np.abs(with_openvino - with_torch).max() <= 1e-4 * np.abs(with_torch).max()
    assert np.abs(with_torch[0] - with_torch[1]).max() > 1e-2  # real photos, different features


def test_openvino_handles_any_batch_and_size_and_pooling(photos, tmp_path):
    entry, x = get_entry("efficientnet_lite0"), photos
    for pool in ("avg", "max"):
        forward = frozen_forward(entry, pool, runtime="openvino", device=CPU, dtype=None, cache_dir=tmp_path)
        reference = create_backbone("efficientnet_lite0", pool=pool).features
        for batch in (x[:1], x, x[:, :, :64, :160]):
            with torch.inference_mode():
                expected = reference(batch).numpy()
            assert np.allclose(forward(batch), expected, atol=1e-4, rtol=1e-4), (pool, tuple(batch.shape))


def test_openvino_map_gives_every_batch_its_features_in_order(photos, tmp_path):
    """`map` keeps IN_FLIGHT chunks per stream queued and hands results back in order, whatever the batches' sizes;
    a batch longer than a chunk comes back whole, in its own order."""
    forward = frozen_forward(get_entry("efficientnet_lite0"), "avg", runtime="openvino", device=CPU, dtype=None,
                             cache_dir=tmp_path)
    assert forward.streams >= 1
    long = photos[torch.arange(2 * forward.CHUNK + 3) % len(photos)]  # photos 0, 1, 2, 0, 1, 2, ...
    batches = [photos, photos[1:2], long, photos[[2, 0]], photos[:1], photos[1:]]
    expected = [forward(batch) for batch in batches]  # one call: the batch cut into chunks for the streams
    got = list(forward.map(iter(batches)))
    assert [x.shape for x in got] == [(len(b), 1280) for b in batches]
    assert all(np.allclose(x, y, atol=1e-5) for x, y in zip(got, expected))
    assert np.allclose(got[3], np.stack([expected[0][2], expected[0][0]]), atol=1e-5)
    assert np.allclose(got[2], expected[0][np.arange(len(long)) % len(photos)], atol=1e-5)
    first = forward.map(iter(batches))
    assert np.allclose(next(first), expected[0], atol=1e-5)
    first.close()  # left early (a cancelled extraction): the forward still serves calls
    assert np.allclose(forward(photos), expected[0], atol=1e-5)


def test_converted_model_is_saved_once_and_compiled_once_per_process(tmp_path, monkeypatch):
    import openvino as ov

    conversions, compiles = [], []
    real_convert, real_compile = ov.convert_model, ov.Core.compile_model
    monkeypatch.setattr(ov, "convert_model", lambda *a, **k: conversions.append(1) or real_convert(*a, **k))
    monkeypatch.setattr(ov.Core, "compile_model", lambda *a, **k: compiles.append(1) or real_compile(*a, **k))
    entry = get_entry("efficientnet_lite0")
    for _ in range(2):  # `compiled` waits for the compilation in the background
        assert frozen_forward(entry, "avg", runtime="openvino", device=CPU, dtype=None, cache_dir=tmp_path).compiled
    saved = list((tmp_path / "openvino").glob("*/model.xml"))
    assert len(conversions) == 1 and len(compiles) == 1 and len(saved) == 1
    assert not [p for p in (tmp_path / "openvino").iterdir() if p.name.startswith(".tmp-")]
    runtime._COMPILED.clear()  # a fresh process: loads the saved model, converts nothing
    assert frozen_forward(entry, "avg", runtime="openvino", device=CPU, dtype=None, cache_dir=tmp_path).compiled
    assert len(conversions) == 1 and len(compiles) == 2


def test_a_failed_compilation_is_raised_where_the_model_is_used_and_tried_again_next_time(tmp_path, monkeypatch):
    import openvino as ov

    real_compile, calls = ov.Core.compile_model, []

    def fail_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("Exception from src/inference/src/cpp/core.cpp: out of memory")
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(ov.Core, "compile_model", fail_once)
    runtime._COMPILED.clear()
    entry = get_entry("efficientnet_lite0")
    broken = frozen_forward(entry, "avg", runtime="openvino", device=CPU, dtype=None, cache_dir=tmp_path)
    with pytest.raises(RuntimeError, match="out of memory"):
        broken(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    working = frozen_forward(entry, "avg", runtime="openvino", device=CPU, dtype=None, cache_dir=tmp_path)
    assert working(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).shape == (1, 1280) and len(calls) == 2


def test_reduced_precision_reaches_openvino_only_when_asked(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(runtime, "_compiled_model", lambda path, precision, threads: asked.append(precision))
    entry = get_entry("efficientnet_lite0")
    frozen_forward(entry, "avg", runtime="openvino", device=CPU, dtype=None, cache_dir=tmp_path)
    frozen_forward(entry, "avg", runtime="openvino", device=CPU, dtype=torch.bfloat16, cache_dir=tmp_path)
    assert asked == ["f32", "bf16"]  # explicit: OpenVINO's own default is bf16 on AMX CPUs

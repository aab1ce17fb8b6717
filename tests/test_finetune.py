"""The classic fine-tune through the real backbone, on a small slice of the demo data (core.finetune)."""
import copy

import numpy as np
import pytest
import torch

import core.finetune as finetune_module
from core.data import Dataset
from core.errors import ConfigError
from core.finetune import FinetuneConfig, finetune
from core.weights import class_weights


@pytest.fixture(scope="module")
def small_demo(demo_dataset):
    """All ten demo classes, 4 training and 2 test images each (60 images)."""
    def per_class(samples, n):
        return [s for c in range(len(demo_dataset.classes)) for s in [x for x in samples if x.label == c][:n]]

    return Dataset(demo_dataset.root, demo_dataset.classes, per_class(demo_dataset.train, 4),
                   per_class(demo_dataset.test, 2), fingerprint="small-demo")


MODEL_CACHE = None  # set per module below


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory):
    """Converted OpenVINO models go to a test folder, never the repository's cache/."""
    global MODEL_CACHE
    MODEL_CACHE = str(tmp_path_factory.mktemp("models"))


def config(**overrides):
    return FinetuneConfig(**{"image_size": 32, "epochs": 2, "batch_size": 16, "device": "cpu", "workers": 0,
                             "cache_dir": MODEL_CACHE, **overrides})


@pytest.fixture
def frozen_calls(monkeypatch):
    """How many images each frozen-backbone runtime forward pass received, by runtime."""
    calls = {}
    real = finetune_module.frozen_forward

    def spy(entry, pool, *, runtime, **kwargs):
        forward = real(entry, pool, runtime=runtime, **kwargs)

        def counted(images):
            calls[runtime] = calls.get(runtime, 0) + len(images)
            return forward(images)
        return counted

    monkeypatch.setattr(finetune_module, "frozen_forward", spy)
    return calls


def test_frozen_backbone_runs_through_openvino_on_cpu(small_demo, frozen_calls):
    result = finetune(small_demo, config(epochs=2))
    assert frozen_calls == {"openvino": 2 * (len(small_demo.train) + len(small_demo.test))}
    assert result.test_scores.shape == (len(small_demo.test), 10) and np.isfinite(result.test_scores).all()


def test_unfrozen_block_or_torch_runtime_keeps_torch_end_to_end(small_demo, frozen_calls):
    finetune(small_demo, config(epochs=1, unfreeze_last=True))
    finetune(small_demo, config(epochs=1, runtime="torch"))
    assert frozen_calls == {}


@pytest.fixture
def captured(monkeypatch):
    """Run finetune with a spy on create_backbone: keeps the backbone object and its starting state."""
    seen = {}
    real = finetune_module.create_backbone

    def spy(*args, **kwargs):
        backbone = real(*args, **kwargs)
        seen["backbone"] = backbone
        seen["before"] = copy.deepcopy(backbone.features.state_dict())
        return backbone

    monkeypatch.setattr(finetune_module, "create_backbone", spy)
    return seen


def changed_tensors(module, before) -> set:
    return {name for name, t in module.state_dict().items() if not torch.equal(t, before[name])}


@pytest.mark.slow
def test_frozen_finetune_runs_and_leaves_the_backbone_alone(demo_dataset, captured):
    """Two epochs over the whole demo set (tiny images): curves, test scores, untouched backbone."""
    progress = []
    result = finetune(demo_dataset, config(batch_size=32), progress=lambda *a: progress.append(a))
    n_test = len(demo_dataset.test)
    assert [r["epoch"] for r in result.history] == [1, 2]
    for row in result.history:
        assert 0 <= row["train_acc"] <= 1 and 0 <= row["test_acc"] <= 1
        assert np.isfinite(row["train_loss"]) and np.isfinite(row["test_loss"])
    assert result.test_scores.shape == (n_test, 10)
    assert np.isfinite(result.test_scores).all()
    y_test = np.array([s.label for s in demo_dataset.test])
    assert result.history[-1]["test_acc"] > 0.2  # well above chance (0.1) after two epochs
    assert result.history[-1]["test_acc"] == pytest.approx((result.test_scores.argmax(1) == y_test).mean())
    assert result.fit_seconds > 0 and result.predict_seconds > 0
    assert result.checkpoint["head"]["weight"].shape == (10, 1280)
    assert result.checkpoint["last_block"] is None
    assert result.checkpoint["config"]["epochs"] == 2
    assert progress[-1][1:] == (2 * (len(demo_dataset.train) + n_test),) * 2
    backbone = captured["backbone"]
    assert changed_tensors(backbone.features, captured["before"]) == set()  # weights and BN statistics
    assert not any(p.requires_grad for p in backbone.features.parameters())


@pytest.mark.slow
def test_unfreeze_last_trains_only_the_last_block(small_demo, captured):
    weights = class_weights("balanced", small_demo.train_counts)
    result = finetune(small_demo, config(epochs=1, unfreeze_last=True, lr=1e-2), class_weight=weights)
    backbone, before = captured["backbone"], captured["before"]
    changed = changed_tensors(backbone.features, before)
    last_names = {n for n, p in backbone.features.named_parameters()
                  if any(p is q for q in backbone.last_block.parameters())}
    assert changed, "no backbone weight moved with unfreeze_last"
    assert changed <= last_names  # only parameters of the last block changed (not running stats)
    earlier = [n for n, _ in backbone.features.named_parameters() if n not in last_names]
    assert earlier and all(torch.equal(backbone.features.state_dict()[n], before[n]) for n in earlier)
    saved = result.checkpoint["last_block"]
    assert saved is not None
    for name, tensor in backbone.last_block.state_dict().items():
        assert torch.equal(saved[name], tensor)
    assert result.test_scores.shape == (len(small_demo.test), 10)


def test_zero_epochs_is_a_config_error(small_demo):
    with pytest.raises(ConfigError, match="epochs"):
        finetune(small_demo, config(epochs=0))


def test_cuda_without_gpu_is_a_config_error(small_demo, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="cuda"):
        finetune(small_demo, config(device="cuda"))


def test_finetune_loss_weights_each_batch_by_its_classes(small_demo, monkeypatch):
    """Every training batch (one image size, often one class) is scored by the weighted sum / batch size."""
    seen = []
    real = finetune_module.weighted_cross_entropy

    def spy(logits, labels, weight=None):
        loss = real(logits, labels, weight)
        per_image = torch.nn.functional.cross_entropy(logits.detach(), labels, reduction="none")
        seen.append((loss.item(), (per_image * weight[labels]).mean().item(), labels.unique().numel()))
        return loss

    monkeypatch.setattr(finetune_module, "weighted_cross_entropy", spy)
    weights = np.linspace(1, 20, 10)
    finetune(small_demo, config(epochs=1, batch_size=4), class_weight=weights)
    assert seen and all(loss == pytest.approx(expected, rel=1e-4) for loss, expected, _ in seen)


def test_finetune_seeds_its_head_without_reseeding_the_global_rng(small_demo, monkeypatch):
    """Another job's global torch RNG must not be reset; the head's init still follows `seed` alone."""
    monkeypatch.setattr(finetune_module, "train_one_epoch", lambda *a: (0.0, 0.0))
    heads = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        with monkeypatch.context() as patched:
            patched.setattr(torch, "manual_seed", lambda *_: pytest.fail("finetune reseeded the global RNG"))
            heads.append(finetune(small_demo, config(epochs=1, seed=4)).checkpoint["head"]["weight"])
    assert torch.equal(*heads)


def test_ddp_rank_uses_the_gpu_of_its_local_rank(monkeypatch):
    """Under torchrun, rank 1 must drive cuda:1 (the old code put every rank on GPU 0)."""
    wrapped = {}
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(finetune_module, "rank_world", lambda: (1, 2))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: wrapped.setdefault("set_device", device))
    monkeypatch.setattr(finetune_module, "DistributedDataParallel",
                        lambda model, device_ids: wrapped.setdefault("device_ids", device_ids))
    device = finetune_module._rank_device(torch.device("cuda"))
    finetune_module._distributed(torch.nn.Linear(2, 2), torch.device("cuda"))
    assert device == torch.device("cuda", 1) == wrapped["set_device"]
    assert wrapped["device_ids"] == [1]
    assert finetune_module._rank_device(torch.device("cpu")) == torch.device("cpu")

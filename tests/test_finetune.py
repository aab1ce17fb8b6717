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


def config(**overrides):
    return FinetuneConfig(**{"image_size": 32, "epochs": 2, "batch_size": 16, "device": "cpu", "workers": 0,
                             **overrides})


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

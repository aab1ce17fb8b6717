"""The classic fine-tune: images through the (frozen, or last-block-unfrozen) backbone every epoch."""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.backbones import create_backbone
from core.classifiers import seeded_linear
from core.data import Dataset
from core.errors import ConfigError
from core.features import (ImageDataset, Preprocess, autocast_dtype, light_augmentation, make_loader,
                           rank_world, resolve_device, size_grouped_batches)
from core.settings import config_fields
from core.weights import weighted_cross_entropy


FINETUNE_SETTINGS = ("backbone", "pool", "image_size", "epochs", "lr", "batch_size", "unfreeze_last", "hflip",
                     "device", "workers", "seed")
FinetuneConfig = dataclasses.make_dataclass(
    "FinetuneConfig", config_fields(FINETUNE_SETTINGS), frozen=True,
    namespace={"__doc__": "Settings of one fine-tuning run (declared in core.settings).", "__module__": __name__})


@dataclass
class FinetuneResult:
    checkpoint: dict  # {"head": state_dict, "last_block": state_dict | None, "config": dict}
    history: list[dict] = field(default_factory=list)
    test_scores: np.ndarray | None = None  # (n_test, n_classes) logits from the final epoch
    fit_seconds: float = 0.0
    predict_seconds: float = 0.0


def finetune(dataset: Dataset, config: FinetuneConfig, class_weight=None, progress=None) -> FinetuneResult:
    """Train a new linear head through the backbone on augmented images; evaluate on test each epoch."""
    if config.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {config.epochs}")
    device = _rank_device(resolve_device(config.device))
    backbone = create_backbone(config.backbone, pool=config.pool)
    model = nn.Sequential(backbone.features, seeded_linear(backbone.feature_dim, len(dataset.classes), config.seed))
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = _optimizer(model, backbone.last_block, config)
    trainer, (rank, world) = _distributed(model, device), rank_world()
    weight = None if class_weight is None else torch.tensor(np.asarray(class_weight), dtype=torch.float32).to(device)
    loss_fn = functools.partial(weighted_cross_entropy, weight=weight)
    preprocess = Preprocess.for_backbone(backbone.entry, config.image_size)
    dtype = autocast_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    train_set = ImageDataset(dataset.train, preprocess, light_augmentation(config.hflip))
    test_set = ImageDataset(dataset.test, preprocess)
    test_batches = size_grouped_batches(dataset.test, preprocess, config.batch_size)  # the same every epoch
    tick = _ticker(progress, config.epochs * (len(dataset.train) // world + len(dataset.test)))
    result = FinetuneResult(checkpoint={})
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        batches = size_grouped_batches(dataset.train, preprocess, config.batch_size, shuffle_seed=config.seed + epoch)
        batches = _rank_batches(batches, rank, world)
        train_loss, train_acc = train_one_epoch(trainer, make_loader(train_set, batches, device, config.workers),
                                                loss_fn, optimizer, scaler, device, dtype, tick)
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        test_loader = make_loader(test_set, test_batches, device, config.workers)
        result.test_scores, test_loss, test_acc = evaluate(model, test_loader, loss_fn, device, dtype, tick)
        result.predict_seconds = time.perf_counter() - started
        result.fit_seconds += train_s
        result.history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                               "test_loss": test_loss, "test_acc": test_acc, "train_seconds": train_s,
                               "test_seconds": result.predict_seconds})
    result.checkpoint = {"head": model[1].state_dict(), "config": config.__dict__,
                         "last_block": backbone.last_block.state_dict() if config.unfreeze_last else None}
    return result


def _optimizer(model: nn.Sequential, last_block: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    """Freeze the backbone; the head learns at `lr`, an unfrozen last block at `lr / 10`."""
    model[0].requires_grad_(False)
    groups = [{"params": model[1].parameters(), "lr": config.lr}]
    if config.unfreeze_last:
        last_block.requires_grad_(True)
        groups.append({"params": last_block.parameters(), "lr": config.lr / 10})
    return torch.optim.Adam(groups)


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def _rank_device(device: torch.device) -> torch.device:
    """Under torchrun each rank drives the GPU named by LOCAL_RANK (not every rank on GPU 0)."""
    if device.type != "cuda" or rank_world()[1] == 1:
        return device
    device = torch.device("cuda", _local_rank())
    torch.cuda.set_device(device)
    return device


def _distributed(model: nn.Module, device: torch.device) -> nn.Module:
    """Wrap in DistributedDataParallel under torchrun (gradients of the trainable part are all-reduced)."""
    if rank_world()[1] == 1:
        return model
    return DistributedDataParallel(model, device_ids=[_local_rank()] if device.type == "cuda" else None)


def _rank_batches(batches: list, rank: int, world: int) -> list:
    """This rank's share of the epoch's batches; every rank gets the same count (a few may be dropped)."""
    usable = len(batches) // world * world
    if usable == 0:
        raise ConfigError(f"{len(batches)} training batches cannot be shared by {world} processes; "
                          "use a smaller batch size or fewer processes")
    return batches[rank:usable:world]


def _ticker(progress, total: int):
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress("fine-tune (images x epochs)", done, total)
    return tick


def train_one_epoch(model, loader, loss_fn, optimizer, scaler, device, dtype, tick):
    """One pass over augmented training images; returns (mean loss, accuracy).

    Frozen parameters don't require grad, so autograd records nothing before the first trainable
    layer: a frozen backbone costs a plain forward pass.
    """
    model.eval()  # frozen BatchNorm statistics; only the head (and last block) learn
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels, _ in loader:
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images).float()
            loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        tick(len(labels))
    return total_loss / seen, correct / seen


def evaluate(model, loader, loss_fn, device, dtype, tick):
    """Logits for every image in the loader's dataset order, plus mean loss and accuracy."""
    model.eval()
    scores = np.zeros((len(loader.dataset), model[1].out_features), dtype=np.float32)
    labels_all = np.zeros(len(loader.dataset), dtype=np.int64)
    total_loss = 0.0
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for images, labels, index in loader:
            images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
            logits = model(images).float()
            total_loss += loss_fn(logits, labels.to(device)).item() * len(labels)
            scores[index.numpy()] = logits.cpu().numpy()
            labels_all[index.numpy()] = labels.numpy()
            tick(len(labels))
    return scores, total_loss / len(labels_all), float((scores.argmax(1) == labels_all).mean())

"""The classic fine-tune: images through the (frozen, or last-block-unfrozen) backbone every epoch."""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.backbones import Backbone, create_backbone
from core.classifiers import seeded_linear
from core.data import Dataset
from core.errors import ConfigError
from core.features import (ImageDataset, Preprocess, autocast_dtype, light_augmentation, make_loader, prefetch,
                           rank_world, resolve_device, size_grouped_batches)
from core.runtime import Forward, frozen_forward, resolve_runtime
from core.remedies import log_prior
from core.settings import config_fields
from core.weights import weighted_cross_entropy


FINETUNE_SETTINGS = ("backbone", "pool", "image_size", "epochs", "lr", "batch_size", "unfreeze_last", "hflip",
                     "device", "precision", "runtime", "workers", "seed", "cache_dir")
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


def finetune(dataset: Dataset, config: FinetuneConfig, class_weight=None, la_tau: float = 0.0,
             progress=None) -> FinetuneResult:
    """Train a new linear head through the backbone on augmented images; evaluate on test each epoch.

    `la_tau > 0` trains on the logit-adjusted loss CE(z + la_tau * log prior) (see core.remedies);
    the test scores are the plain logits z.

    With the backbone fully frozen, its forward pass runs through the inference runtime (OpenVINO on CPU)
    and only the head trains in torch; `unfreeze_last` keeps everything in torch for the gradients.
    """
    if config.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {config.epochs}")
    device = _rank_device(resolve_device(config.device))
    dtype = autocast_dtype(device, config.precision)
    backbone = create_backbone(config.backbone, pool=config.pool)
    head = seeded_linear(backbone.feature_dim, len(dataset.classes), config.seed).to(device)
    frozen, model = _frozen_and_trainable(backbone, head, config, device, dtype)
    optimizer = _optimizer(head, backbone, config)
    trainer, (rank, world) = _distributed(model, device), rank_world()
    weight = None if class_weight is None else torch.tensor(np.asarray(class_weight), dtype=torch.float32).to(device)
    shift = torch.tensor(la_tau * log_prior(dataset.train_counts), dtype=torch.float32).to(device)
    loss_fn = _adjusted_loss(weight, shift)
    preprocess = Preprocess.for_backbone(backbone.entry, config.image_size)
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
        train_loader = make_loader(train_set, batches, device, config.workers)
        train_loss, train_acc = train_one_epoch(trainer, frozen, train_loader, loss_fn, optimizer, scaler, device,
                                                dtype, tick)
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        test_loader = make_loader(test_set, test_batches, device, config.workers)
        result.test_scores, test_loss, test_acc = evaluate(model, frozen, test_loader, loss_fn, device, dtype, tick)
        result.predict_seconds = time.perf_counter() - started
        result.fit_seconds += train_s
        result.history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                               "test_loss": test_loss, "test_acc": test_acc, "train_seconds": train_s,
                               "test_seconds": result.predict_seconds})
    result.checkpoint = {"head": head.state_dict(), "config": config.__dict__,
                         "last_block": backbone.last_block.state_dict() if config.unfreeze_last else None}
    return result


def _adjusted_loss(weight: torch.Tensor | None, shift: torch.Tensor):
    """Class-weighted cross-entropy of the logits shifted by `shift` (la_tau * log prior; zeros = plain CE)."""
    def loss_fn(logits, labels):
        return weighted_cross_entropy(logits + shift.to(logits.dtype), labels, weight)
    return loss_fn


def _frozen_and_trainable(backbone: Backbone, head: nn.Module, config, device,
                          dtype) -> tuple[Forward | None, nn.Module]:
    """(frozen forward pass or None, the module that trains): a fully frozen backbone on CPU runs through
    the fast inference runtime; with an unfrozen block (or torch as the runtime) torch runs it all."""
    if not config.unfreeze_last and resolve_runtime(config.runtime, device) == "openvino":
        frozen = frozen_forward(backbone.entry, config.pool, runtime="openvino", device=device, dtype=dtype,
                                cache_dir=config.cache_dir)
        return frozen, head
    return None, nn.Sequential(backbone.features, head).to(device, memory_format=torch.channels_last)


def _optimizer(head: nn.Module, backbone: Backbone, config: FinetuneConfig) -> torch.optim.Optimizer:
    """Freeze the backbone; the head learns at `lr`, an unfrozen last block at `lr / 10`."""
    backbone.features.requires_grad_(False)
    groups = [{"params": head.parameters(), "lr": config.lr}]
    if config.unfreeze_last:
        backbone.last_block.requires_grad_(True)
        groups.append({"params": backbone.last_block.parameters(), "lr": config.lr / 10})
    return torch.optim.Adam(groups)


def _inputs(images: torch.Tensor, frozen: Forward | None, device: torch.device) -> torch.Tensor:
    """What the trainable module takes: the frozen runtime's features, else the images themselves."""
    if frozen is not None:
        return torch.from_numpy(frozen(images)).to(device)
    return images.to(device, non_blocking=True, memory_format=torch.channels_last)


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


def train_one_epoch(model, frozen, loader, loss_fn, optimizer, scaler, device, dtype, tick):
    """One pass over augmented training images; returns (mean loss, accuracy).

    `frozen` (or else the frozen part of `model`, whose parameters don't require grad, so autograd
    records nothing before the first trainable layer) costs a plain forward pass.
    """
    model.eval()  # frozen BatchNorm statistics; only the head (and last block) learn
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels, _ in prefetch(loader):
        inputs = _inputs(images, frozen, device)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(inputs).float()
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


def evaluate(model, frozen, loader, loss_fn, device, dtype, tick):
    """Logits for every image in the loader's dataset order, plus mean loss and accuracy."""
    model.eval()
    scores, labels_all = None, np.zeros(len(loader.dataset), dtype=np.int64)
    total_loss = 0.0
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for images, labels, index in prefetch(loader):
            logits = model(_inputs(images, frozen, device)).float()
            if scores is None:
                scores = np.zeros((len(loader.dataset), logits.shape[1]), dtype=np.float32)
            total_loss += loss_fn(logits, labels.to(device)).item() * len(labels)
            scores[index.numpy()] = logits.cpu().numpy()
            labels_all[index.numpy()] = labels.numpy()
            tick(len(labels))
    return scores, total_loss / len(labels_all), float((scores.argmax(1) == labels_all).mean())

"""`python -m bench.finetune`: fine-tune training images/s per `--unfreeze` mode beside the anchor, and the
cached-activation speed-up.

The anchor is the plain torch training loop of the same network (torchvision's reference `train_one_epoch`:
the whole model in train mode, forward, zero grads, backward, AdamW step), channels-last, in the same autocast
precision, on the same preloaded batches. Ours runs `core.finetune.train_one_epoch` from images (the frozen part
in torch, without gradients, every batch) and, for the modes with a frozen part, on its cached activations
(their one-off computation through the inference runtime timed on its own).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch import nn

from core.backbones import create_backbone
from core.classifiers import seeded_linear
from core.features import Preprocess, autocast_dtype
from core.finetune import FinetuneConfig, _adjusted_loss, _Inputs, _optimizer, train_one_epoch, trainable_stages

CPU = torch.device("cpu")
MODES = ("none", "last", "2", "all")


def random_batches(n_batches: int, batch_size: int, height: int, width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Preloaded uint8 channels-last images with labels of 10 classes."""
    return [(torch.randint(0, 256, (batch_size, height, width, 3), dtype=torch.uint8).permute(0, 3, 1, 2),
             torch.randint(0, 10, (batch_size,))) for _ in range(n_batches)]


def rate(step, batches) -> float:
    """Images/s of `step(batch)` over `batches`, after one warm-up step."""
    step(batches[0])
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    return sum(len(labels) for _, labels in batches) / (time.perf_counter() - started)


def anchor_rate(name: str, batches, dtype) -> float:
    """The plain torch loop of the same network, all of it training."""
    backbone = create_backbone(name)
    model = nn.Sequential(backbone.features, seeded_linear(backbone.feature_dim, 10, 0))
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)

    def step(batch):
        images, labels = batch
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return rate(step, batches)


def mode_rates(name: str, mode: str, batches, dtype, cache_dir: str) -> dict:
    """Ours in one mode: images/s from images, and for a frozen part its one-off runtime pass and the epochs on
    cached activations."""
    config = FinetuneConfig(backbone=name, unfreeze=mode, device="cpu", cache_dir=cache_dir, epochs=1)
    backbone = create_backbone(name)
    n = trainable_stages(mode, backbone)
    prefix, suffix = backbone.split(n)
    backbone.features.requires_grad_(False).eval()
    head = seeded_linear(backbone.feature_dim, 10, 0)
    model = nn.Sequential(suffix.requires_grad_(True), head).to(memory_format=torch.channels_last)
    optimizer, schedule = _optimizer(suffix, head, config, 10 * len(batches))
    loss_fn = _adjusted_loss(None, torch.zeros(10))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    inputs = _Inputs(backbone, prefix, n, Preprocess(), config, CPU, dtype)

    def train(pairs):
        train_one_epoch(model, pairs, loss_fn, optimizer, schedule, scaler, CPU, dtype, lambda _: None)

    def from_images(batch):
        train([(inputs._through_prefix(batch[0]), batch[1])])
    out = {"images": rate(from_images, batches)}
    if n < len(backbone.stages):
        forward = inputs.forward()
        forward(batches[0][0])  # compilation and first-shape set-up are one-off costs
        started = time.perf_counter()
        cached = [(torch.from_numpy(a).to(dtype or torch.float32).contiguous(memory_format=torch.channels_last)
                   if a.ndim == 4 else torch.from_numpy(a).to(dtype or torch.float32), labels)
                  for a, (_, labels) in zip(forward.map(images for images, _ in batches), batches)]
        out["cache"] = sum(len(labels) for _, labels in batches) / (time.perf_counter() - started)
        out["cached"] = rate(lambda batch: train([batch]), cached)
    return out


def bench_finetune(name: str, height: int, width: int, batch_size: int, n_batches: int) -> None:
    dtype = autocast_dtype(CPU)
    batches = random_batches(n_batches, batch_size, height, width)
    precision = "bf16" if dtype is not None else "fp32"
    print(f"\n# fine-tune training img/s, {name}, {n_batches} batches of {batch_size} at {height}x{width}, "
          f"{precision} autocast, {torch.get_num_threads()} threads (the machine may be shared: compare rows of "
          "one run)")
    anchor = anchor_rate(name, batches, dtype)
    print(f"{'--unfreeze':<10} {'from images':>12} {'cached':>8} {'cache pass':>11} {'speed-up':>9}")
    with tempfile.TemporaryDirectory() as cache_dir:
        for mode in MODES:
            out = mode_rates(name, mode, batches, dtype, cache_dir)
            cached = f"{out['cached']:8.1f} {out['cache']:11.1f} {out['cached'] / out['images']:8.1f}x" \
                if "cached" in out else f"{'-':>8} {'-':>11} {'-':>9}"
            print(f"{mode:<10} {out['images']:12.1f} {cached}")
    print(f"{'anchor':<10} {anchor:12.1f}   (plain torch loop, whole network training; compare with 'all')")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    bench_finetune(args.backbone, args.height, args.width, args.batch_size, args.batches)


if __name__ == "__main__":
    main()

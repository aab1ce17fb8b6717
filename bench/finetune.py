"""`python -m bench.finetune`: fine-tune training images/s per `--unfreeze` mode beside the anchor, and the
cached-activation speed-up, in a minute or two on a loaded 2-core machine.

The anchor is the plain torch training loop of the same network (torchvision's reference `train_one_epoch`:
the whole model in train mode, forward, zero grads, backward, AdamW step), channels-last, in the same autocast
precision, on the same preloaded batches. Ours runs `core.finetune.train_one_epoch` from images (the frozen part
in torch, without gradients, every batch) and, for the modes with a frozen part, on its cached activations
(their one-off computation through the inference runtime timed on its own).

Bounded, not whole epochs: a few measured steps per row. The rows take turns, one step each per round, so a
load change on a shared machine hits every row alike; a rate is the batch size over the median step, a ratio
the median of the per-round ratios (both rows measured within the same second).
"""
from __future__ import annotations

import argparse
import statistics
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
N_CLASSES = 10


def random_batches(n_batches: int, batch_size: int, height: int, width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Preloaded uint8 channels-last images with labels of N_CLASSES classes."""
    return [(torch.randint(0, 256, (batch_size, height, width, 3), dtype=torch.uint8).permute(0, 3, 1, 2),
             torch.randint(0, N_CLASSES, (batch_size,))) for _ in range(n_batches)]


def anchor_step(name: str, dtype):
    """One step of the plain torch loop of the same network, all of it training: `step(batch)`."""
    backbone = create_backbone(name)
    model = nn.Sequential(backbone.features, seeded_linear(backbone.feature_dim, N_CLASSES, 0))
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)

    def step(batch):
        images, labels = batch
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


class ModeTrainer:
    """Ours in one `--unfreeze` mode: a step from images, and (with a frozen part) the runtime's cache pass and a
    step on cached activations."""

    def __init__(self, name: str, mode: str, dtype, cache_dir: str, steps: int):
        config = FinetuneConfig(backbone=name, unfreeze=mode, device="cpu", cache_dir=cache_dir, epochs=1)
        backbone = create_backbone(name)
        n = trainable_stages(mode, backbone)
        prefix, suffix = backbone.split(n)
        backbone.features.requires_grad_(False).eval()
        head = seeded_linear(backbone.feature_dim, N_CLASSES, 0)
        self.model = nn.Sequential(suffix.requires_grad_(True), head).to(memory_format=torch.channels_last)
        self.optimizer, self.schedule = _optimizer(suffix, head, config, 4 * steps)
        self.loss_fn, self.dtype = _adjusted_loss(None, torch.zeros(N_CLASSES)), dtype
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.inputs = _Inputs(backbone, prefix, n, Preprocess(), config, CPU, dtype)
        self.has_frozen_part = n < len(backbone.stages)

    def train(self, pair) -> None:
        train_one_epoch(self.model, [pair], self.loss_fn, self.optimizer, self.schedule, self.scaler, CPU, self.dtype,
                        lambda _: None)

    def from_images(self, batch) -> None:
        self.train((self.inputs.through_prefix(batch[0]), batch[1]))

    def cache(self, batches) -> tuple[list, float]:
        """The frozen part's activations of `batches` through the inference runtime, and its img/s (after its
        one-off compilation and first-shape set-up)."""
        forward = self.inputs.forward()
        forward(batches[0][0])
        started = time.perf_counter()
        activations = list(forward.map(images for images, _ in batches))
        seconds = time.perf_counter() - started
        memory = torch.channels_last if activations[0].ndim == 4 else torch.contiguous_format
        cached = [(torch.from_numpy(a).to(self.dtype or torch.float32).contiguous(memory_format=memory), labels)
                  for a, (_, labels) in zip(activations, batches)]
        return cached, sum(len(labels) for _, labels in batches) / seconds


def interleaved(steps: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of each of `steps` (name -> `step(i)`) per round, the rows taking turns; round 0 is a warm-up."""
    seconds = {name: [] for name in steps}
    for i in range(rounds + 1):
        for name, step in steps.items():
            started = time.perf_counter()
            step(i)
            if i:
                seconds[name].append(time.perf_counter() - started)
    return seconds


def bench_finetune(name: str, height: int = 128, width: int = 128, batch_size: int = 16, rounds: int = 6,
                   precision: str = "auto") -> dict:
    """Print (and return) training img/s per mode from images and from cached activations beside the anchor."""
    dtype = autocast_dtype(CPU, precision)
    batches = random_batches(rounds + 1, batch_size, height, width)
    label = "bf16" if dtype is not None else "fp32"
    print(f"\n# fine-tune training img/s, {name}, {rounds} measured rounds of batch {batch_size} at {height}x{width}, "
          f"{label} autocast, {torch.get_num_threads()} threads; rows take turns, one step each per round (the "
          "machine may be shared: compare rows of one run)", flush=True)
    anchor = anchor_step(name, dtype)
    steps, cache_rates = {"anchor": lambda i: anchor(batches[i])}, {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for mode in MODES:
            trainer = ModeTrainer(name, mode, dtype, cache_dir, rounds + 1)
            steps[mode] = lambda i, t=trainer: t.from_images(batches[i])
            if trainer.has_frozen_part:
                cached, cache_rates[mode] = trainer.cache(batches)
                steps[f"{mode} cached"] = lambda i, t=trainer, c=cached: t.train(c[i])
        seconds = interleaved(steps, rounds)

    def rate(row):
        return batch_size / statistics.median(seconds[row])

    def ratio(slow, fast):
        return statistics.median(a / b for a, b in zip(seconds[slow], seconds[fast]))
    epochs = FinetuneConfig.__dataclass_fields__["epochs"].default
    print(f"{'--unfreeze':<10} {'from images':>11} {'vs anchor':>9} {'cached':>8} {'cache pass':>10} "
          f"{'speed-up':>8} {f'{epochs} epochs':>9}")
    figures = {"anchor": rate("anchor")}
    for mode in MODES:
        figures[mode] = rate(mode)
        line = f"{mode:<10} {rate(mode):11.1f} {ratio('anchor', mode):8.2f}x"
        if mode in cache_rates:
            cached = f"{mode} cached"
            # an image's cost over the epochs: each epoch from images, against its two cached orientations once
            # (the mirror image under hflip) and each epoch on cached activations
            whole = (epochs / rate(mode)) / (2 / cache_rates[mode] + epochs / rate(cached))
            line += f" {rate(cached):8.1f} {cache_rates[mode]:10.1f} {ratio(mode, cached):7.1f}x {whole:8.1f}x"
            figures[cached] = rate(cached)
        print(line, flush=True)
    print(f"{'anchor':<10} {rate('anchor'):11.1f} {1:8.2f}x   (plain torch loop, whole network training; "
          "compare with 'all')")
    print("vs anchor: anchor step time / ours (same round); speed-up: from images / cached (same round); "
          f"{epochs} epochs: the whole fit per image, the cache pass (both orientations) included")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6, help="measured steps per row (plus one warm-up)")
    parser.add_argument("--precision", default="auto", help="auto (bf16 where native) or fp32")
    args = parser.parse_args()
    bench_finetune(args.backbone, args.height, args.width, args.batch_size, args.rounds, args.precision)


if __name__ == "__main__":
    main()

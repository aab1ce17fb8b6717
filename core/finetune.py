"""Fine-tuning through the backbone: `--unfreeze none|last|N|all`, the epoch chosen on validation images.

One flat loop, as torchvision's reference script: a seeded stratified part of the training images
(VAL_FRACTION) is held out and scored after every epoch; the weights of the epoch with the best validation
macro-F1 are kept, and the test set is scored once, with them. The recipe (see the README for the numbers):
AdamW with decoupled weight decay (none on biases and norm weights, timm's `param_groups_weight_decay`),
linear warm-up then cosine decay per step (timm's `CosineLRScheduler`), the unfrozen blocks at `lr / 10`
and the new head at `lr` (fastai's discriminative rates), BatchNorm in train mode only in the blocks that
train, channels-last, bf16 autocast on CPUs with native bf16 and fp16 + gradient scaling on CUDA.

The augmentation is a horizontal flip (`hflip`), so when only the last blocks train the frozen part's output
is fixed: it is computed once per training image and its mirror image through the inference runtime
(OpenVINO on the CPU) and the rest trains on those cached activations (`activation_cache`), unless they
would not fit in CACHE_BUDGET_BYTES of memory.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
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
from core.errors import Cancelled, ConfigError
from core.features import (ImageDataset, Preprocess, autocast_dtype, make_loader, prefetch, rank_world,
                           resolve_device, size_grouped_batches)
from core.remedies import balanced_batches, log_prior
from core.runtime import frozen_forward, resolve_runtime
from core.settings import config_fields
from core.stats import point_scores
from core.weights import weighted_cross_entropy

FINETUNE_SETTINGS = ("backbone", "pool", "image_size", "epochs", "lr", "batch_size", "unfreeze", "hflip", "test_curve",
                     "device", "precision", "runtime", "workers", "seed", "cache_dir")
FinetuneConfig = dataclasses.make_dataclass(
    "FinetuneConfig", config_fields(FINETUNE_SETTINGS), frozen=True,
    namespace={"__doc__": "Settings of one fine-tuning run (declared in core.settings).", "__module__": __name__})

VAL_FRACTION = 0.2  # of the training images of each class with at least MIN_VAL_CLASS images
MIN_VAL_CLASS = 3
BODY_LR_FACTOR = 0.1  # unfrozen blocks learn at lr / 10
WEIGHT_DECAY = 0.05  # AdamW's decoupled decay on conv and linear weights (timm's AdamW recipes)
WARMUP_SHARE = 0.1  # of all optimizer steps, linear warm-up from 1% of the rate
CACHE_BUDGET_BYTES = 4 << 30  # cached activations beyond this (or a quarter of the RAM) train from images
CHECKPOINT_FORMAT = 1


@dataclass
class FinetuneResult:
    """A finished fine-tune. `checkpoint` (see `make_checkpoint`) holds the kept weights; scores are logits of
    those weights: `test_scores` `(n_test, n_classes)`; `val_scores` `(len(val_rows), n_classes)` of the
    held-out training rows `val_rows` (positions in `dataset.train`) are cross-fitted (`crossfit_epochs`), so
    the validation figure is not scored on the images that chose the epoch. A run the user stopped (cancel, Ctrl-C)
    after a validated epoch keeps its best epoch so far and says what stopped it in `stopped_by`."""

    checkpoint: dict
    test_scores: np.ndarray
    val_scores: np.ndarray | None
    val_rows: np.ndarray
    chosen_epoch: int
    trainable_stages: int
    activation_cache: bool
    history: list[dict] = field(default_factory=list)
    fit_seconds: float = 0.0
    cache_seconds: float = 0.0
    predict_seconds: float = 0.0
    learning_curve_seconds: float = 0.0
    stopped_by: BaseException | None = None  # the user's cancel or Ctrl-C that ended training early


def finetune(dataset: Dataset, config: FinetuneConfig, class_weight=None, la_tau: float = 0.0,
             resample: bool = False, progress=None) -> FinetuneResult:
    """Fine-tune the backbone's last `config.unfreeze` blocks and a new linear head on augmented images.

    `class_weight` weighs the loss per class, `resample` draws class-balanced batches and `la_tau > 0` trains on
    the logit-adjusted loss CE(z + la_tau * log prior) (core.remedies); scores are the plain logits z.

    >>> result = finetune(load_dataset("cache/datasets/digits-demo"), FinetuneConfig(unfreeze="last"))  # doctest: +SKIP
    >>> result.chosen_epoch, result.test_scores.shape  # doctest: +SKIP
    (14, (91, 10))
    """
    if config.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {config.epochs}")
    run = _prepare(dataset, config, _rank_device(resolve_device(config.device)))
    device, dtype, inputs, model, labels, fit_rows, val_rows = (run.device, run.dtype, run.inputs, run.model,
                                                                 run.labels, run.fit_rows, run.val_rows)
    plans = [_plan_epoch(dataset.train, fit_rows, labels, run.preprocess, config, epoch, resample)
             for epoch in range(1, config.epochs + 1)]
    optimizer, schedule = _optimizer(run.suffix, run.head, config, sum(len(plan) for plan in plans))
    trainer, (rank, world) = _distributed(model, device), rank_world()
    weight = None if class_weight is None else torch.tensor(np.asarray(class_weight), dtype=torch.float32).to(device)
    shift = torch.tensor(la_tau * log_prior(dataset.train_counts), dtype=torch.float32).to(device)
    loss_fn = _adjusted_loss(weight, shift)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    n_per_epoch = sum(len(b) for b in _rank_batches(plans[0], rank, world)) + len(val_rows)
    tick = _Ticker(progress, config.epochs, n_per_epoch, len(dataset.test))
    started = time.perf_counter()
    inputs.cache_train(dataset.train, fit_rows, val_rows, config.hflip, tick)
    cache_s = time.perf_counter() - started
    best, history, curve_s, epoch_val_scores, stopped_by = None, [], 0.0, [], None
    try:
        for epoch, plan in enumerate(plans, start=1):
            started = time.perf_counter()
            train_loss, train_acc = train_one_epoch(trainer, inputs.train_batches(dataset.train, _rank_batches(
                plan, rank, world)), loss_fn, optimizer, schedule, scaler, device, dtype, tick)
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc}
            val_scores = None
            if len(val_rows):
                val_scores, val_loss = evaluate(model, inputs.eval_batches(dataset.train, val_rows), len(val_rows),
                                                loss_fn, device, dtype, tick)
                row.update(_scored("val", val_scores, labels[val_rows], val_loss, len(dataset.classes)))
                epoch_val_scores.append(val_scores)
            row["seconds"] = time.perf_counter() - started
            if config.test_curve:  # a held-out check drawn beside the curve, never used to choose
                started = time.perf_counter()
                test_scores, test_loss = evaluate(model, inputs.eval_batches(dataset.test), len(dataset.test), loss_fn,
                                                  device, dtype, lambda n: None)
                row.update(_scored("test", test_scores, [s.label for s in dataset.test], test_loss,
                                   len(dataset.classes)))
                curve_s += time.perf_counter() - started
            history.append(row)
            # without validation images, the last epoch is kept
            if best is None or val_scores is None or row["val_macro_f1"] > best[1]["val_macro_f1"]:
                best = (epoch, row, copy.deepcopy(model.state_dict()))
            tick.epoch_done(epoch, row, best[0])
    except (Cancelled, KeyboardInterrupt) as interruption:  # the user stopped it: keep the best epoch so far
        if best is None or not len(val_rows):  # no validated epoch yet: nothing to keep
            raise
        stopped_by, tick.progress, epoch_val_scores = interruption, None, epoch_val_scores[:len(history)]
    fit_s = cache_s + sum(row["seconds"] for row in history)  # the activation cache is this run's own cost
    chosen_epoch, _, state = best
    val_scores = crossfit_epochs(epoch_val_scores, labels[val_rows], len(dataset.classes), config.seed) \
        if epoch_val_scores else None
    model.load_state_dict(state)
    started = time.perf_counter()
    test_scores, _ = evaluate(model, inputs.eval_batches(dataset.test), len(dataset.test), loss_fn, device, dtype,
                              tick)
    predict_s = time.perf_counter() - started
    checkpoint = make_checkpoint(run.backbone, run.head, run.n_trainable, config, len(dataset.classes), chosen_epoch)
    return FinetuneResult(checkpoint, test_scores, val_scores, val_rows, chosen_epoch, run.n_trainable,
                          inputs.cached, history, fit_s, cache_s, predict_s, curve_s, stopped_by)


@dataclass
class _Prepared:
    """What a fine-tune (or its estimate) builds before training: the network split at `n_trainable` stages, the
    trainable `model` (suffix, then head) on `device`, its inputs, and the fit/validation rows of the training set."""

    backbone: Backbone
    n_trainable: int
    suffix: nn.Module
    head: nn.Module
    model: nn.Module
    preprocess: Preprocess
    inputs: "_Inputs"
    labels: np.ndarray
    fit_rows: np.ndarray
    val_rows: np.ndarray
    device: torch.device
    dtype: torch.dtype | None


def _prepare(dataset: Dataset, config: FinetuneConfig, device: torch.device) -> _Prepared:
    dtype = autocast_dtype(device, config.precision)
    backbone = create_backbone(config.backbone, pool=config.pool)
    n_trainable = trainable_stages(config.unfreeze, backbone)
    prefix, suffix = backbone.split(n_trainable)
    backbone.features.requires_grad_(False).eval()
    head = seeded_linear(backbone.feature_dim, len(dataset.classes), config.seed)
    model = nn.Sequential(suffix.requires_grad_(True), head).to(device, memory_format=torch.channels_last)
    labels = np.array([s.label for s in dataset.train])
    fit_rows, val_rows = validation_split(labels, VAL_FRACTION, config.seed)
    preprocess = Preprocess.for_backbone(backbone.entry, config.image_size)
    inputs = _Inputs(backbone, prefix, n_trainable, preprocess, config, device, dtype)
    return _Prepared(backbone, n_trainable, suffix, head, model, preprocess, inputs, labels, fit_rows, val_rows,
                     device, dtype)


def estimate_seconds(dataset: Dataset, config: FinetuneConfig) -> dict:
    """How long `finetune(dataset, config)` will take on this machine, from a short probe that runs the fine-tune's
    own code on one batch of its images: the set-up, the activation cache pass, training steps, validation and
    test scoring, each timed after a first warm-up call. The run comes after the probe in the same process (the CLI,
    the Train page's job), so what a first call pays once per process (loading the weights, compiling the
    runtime's model, kernels for the probed shapes) is the probe's; the first training step at each batch shape
    the probe did not run is counted as set-up.

    Returns `compose_estimate`'s parts, `activation_cache` and `probe_seconds`.
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    run = _prepare(dataset, config, device)  # the first in the process: weights loaded cold
    measured = {"setup": _first_call(lambda: _prepare(dataset, config, device)), "cache_image": 0.0, "val_image": 0.0}
    inputs, model, train = run.inputs, run.model, dataset.train
    n_fit, n_val = len(run.fit_rows), len(run.val_rows)
    cached = inputs.will_cache(train, n_fit * (1 + config.hflip) + n_val)
    probe_n = config.batch_size  # a full batch: the first step at each batch shape sets up its kernels
    fit_probe, val_probe = run.fit_rows[:probe_n], run.val_rows[:probe_n]
    test_probe = dataset.test[:probe_n]
    tick, loss_fn = _Ticker(None, 1, 1, 0), _adjusted_loss(None, torch.zeros(len(dataset.classes)))
    if cached:
        pass_s = _warm_and_timed(lambda: inputs.cache_train(train, fit_probe, val_probe, config.hflip, tick))[1]
        measured["cache_image"] = pass_s / (len(fit_probe) * (1 + config.hflip) + len(val_probe))
    plan = _plan_epoch(train, fit_probe, run.labels, run.preprocess, config, 1, False)
    optimizer, schedule = _optimizer(run.suffix, run.head, config, 2 * len(plan))
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.dtype == torch.float16)

    def steps():
        train_one_epoch(model, inputs.train_batches(train, plan), loss_fn, optimizer, schedule, scaler, run.device,
                        run.dtype, tick)

    def scoring(samples, rows=None):
        n = len(samples) if rows is None else len(rows)
        return lambda: evaluate(model, inputs.eval_batches(samples, rows), n, loss_fn, run.device, run.dtype, tick)
    warmup_s, train_s = _warm_and_timed(steps)
    measured.update(train_image=train_s / len(fit_probe), shape_setup=warmup_s)
    probed_shapes = _batch_shapes(train, plan, run.preprocess)
    if len(val_probe):
        measured["val_image"] = _warm_and_timed(scoring(train, val_probe))[1] / len(val_probe)
    measured["test_image"] = _warm_and_timed(scoring(test_probe))[1] / len(test_probe)
    run_plan = _plan_epoch(train, run.fit_rows, run.labels, run.preprocess, config, 1, False)
    counts = {"fit": n_fit, "val": n_val, "test": len(dataset.test), "cached": cached,
              "new_shapes": len(_batch_shapes(train, run_plan, run.preprocess) - probed_shapes)}
    return {**compose_estimate(measured, counts, config), "activation_cache": cached,
            "probe_seconds": time.perf_counter() - started}


def compose_estimate(measured: dict, counts: dict, config) -> dict:
    """A fine-tune's seconds from the probe's `measured` costs (`setup`, one-off; `shape_setup`, the first training
    step's extra time at a new batch shape; seconds per image of the `cache_image` pass, of training `train_image`,
    of scoring `val_image` and `test_image`) and the run's `counts` (images: `fit`, `val`, `test`; `cached`;
    `new_shapes`, training batch shapes the probe did not run): the set-up once, each new shape's set-up once,
    the cache pass over the fit images (both orientations under hflip) and the validation images, every epoch's
    training and validation scoring, the test scoring once (and every epoch under `test_curve`). Returns each part and their sum, `seconds`."""
    cache_images = counts["fit"] * (1 + config.hflip) + counts["val"] if counts["cached"] else 0
    parts = {"setup_seconds": measured["setup"] + measured["shape_setup"] * counts["new_shapes"],
             "cache_seconds": measured["cache_image"] * cache_images,
             "train_seconds": config.epochs * measured["train_image"] * counts["fit"],
             "validation_seconds": config.epochs * measured["val_image"] * counts["val"],
             "test_seconds": measured["test_image"] * counts["test"] * (1 + config.epochs * config.test_curve)}
    epoch_s = (parts["train_seconds"] + parts["validation_seconds"]) / config.epochs
    return {**parts, "epoch_seconds": epoch_s, "seconds": sum(parts.values())}


def finetune_config(config) -> FinetuneConfig:
    """The fine-tune's settings of an ExperimentConfig."""
    return FinetuneConfig(**{name: getattr(config, name) for name in FINETUNE_SETTINGS})


def _batch_shapes(samples, plan, preprocess: Preprocess) -> set[tuple]:
    """The distinct (batch size, image height, width) of a plan's batches of (row, flipped)."""
    return {(len(batch), *preprocess.output_size(samples[batch[0][0]].size)) for batch in plan}


def _first_call(call) -> float:
    """Seconds `call()` takes."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _warm_and_timed(call, quick_s: float = 1.0) -> tuple[float, float]:
    """(the first call's extra seconds over a steady call, a steady call's seconds): one-off set-up, steady cost.
    Steady is the quickest of three calls when a call is quicker than `quick_s` (a shared machine only ever adds
    time, and short calls are the noisiest), else the second call alone."""
    first, seconds = _first_call(call), [_first_call(call)]
    if seconds[0] < quick_s:
        seconds += [_first_call(call), _first_call(call)]
    steady = min(seconds)
    return max(first - steady, 0.0), steady


def crossfit_epochs(scores_by_epoch: list[np.ndarray], y, n_classes: int, seed: int) -> np.ndarray:
    """Validation scores whose epoch was chosen on other images: each half of a seeded stratified split of the
    validation images gets the scores of the epoch with the best macro-F1 on the other half.

    The kept weights are those of the best epoch on all validation images; scoring that choice on the images
    that made it would be optimistic, this is not (the figure describes choosing an epoch, as the run did).
    """
    import warnings

    from sklearn.model_selection import StratifiedKFold

    def best_on(rows) -> np.ndarray:  # ties: the earliest epoch, as the kept weights
        return max(scores_by_epoch, key=lambda s: point_scores(y[rows], s[rows].argmax(1), n_classes)["macro_f1"])

    y, crossfit = np.asarray(y), scores_by_epoch[0].copy()
    if len(scores_by_epoch) == 1 or np.bincount(y).max() < 2:  # nothing to choose, or too few images to halve
        return best_on(np.arange(len(y)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        halves = list(StratifiedKFold(2, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    for choose, score in halves:
        crossfit[score] = best_on(choose)[score]
    return crossfit


def trainable_stages(unfreeze: str, backbone: Backbone) -> int:
    """How many of the backbone's last stages train: none 0, last 1, N, all every one."""
    n_stages = len(backbone.stages)
    count = {"none": 0, "last": 1, "all": n_stages}.get(str(unfreeze))
    if count is None:
        count = int(unfreeze) if str(unfreeze).isdigit() else -1
    if not 0 <= count <= n_stages:
        raise ConfigError(f"unfreeze {unfreeze!r}: {backbone.name} has {n_stages} blocks; choose none, last, a "
                          f"number from 1 to {n_stages}, or all")
    return count


def validation_split(y, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (fit, validation) of labels `y`: a seeded stratified `fraction` of the classes with at least
    MIN_VAL_CLASS images (rarer classes stay in the fit rows); no validation rows when too few images."""
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    counts = np.bincount(y)
    splittable = np.flatnonzero(counts[y] >= MIN_VAL_CLASS)
    n_present, n_val = len(np.unique(y[splittable])), math.ceil(fraction * len(splittable))
    if not 0 < n_present <= n_val <= len(splittable) - n_present:
        return np.arange(len(y)), np.arange(0)
    fit, val = train_test_split(splittable, test_size=n_val, stratify=y[splittable], random_state=seed)
    return np.sort(np.setdiff1d(np.arange(len(y)), val)), np.sort(val)


def make_checkpoint(backbone: Backbone, head: nn.Module, n_trainable: int, config, n_classes: int,
                    epoch: int) -> dict:
    """The kept weights as a plain dict of tensors and plain values (`torch.load(..., weights_only=True)` reads
    it): `body` holds the state of the trained blocks only, keyed as in `backbone.features.state_dict()`
    (the rest is the pretrained backbone, rebuilt by `load_finetuned`)."""
    trained = {id(t) for stage in backbone.stages[len(backbone.stages) - n_trainable:]
               for t in [*stage.parameters(), *stage.buffers()]}
    body = {name: t.detach().cpu().clone() for name, t in backbone.features.state_dict(keep_vars=True).items()
            if id(t) in trained}
    return {"format": CHECKPOINT_FORMAT, "backbone": backbone.name, "pool": backbone.pool,
            "trainable_stages": n_trainable, "n_classes": n_classes, "epoch": epoch, "body": body,
            "head": {name: t.detach().cpu().clone() for name, t in head.state_dict().items()},
            "config": dataclasses.asdict(config)}


def load_finetuned(checkpoint: dict) -> nn.Module:
    """The fine-tuned network (uint8 images `(N, 3, H, W)` -> logits) of a `make_checkpoint` dict, in eval mode."""
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"fine-tune checkpoint format {checkpoint.get('format')!r} is not {CHECKPOINT_FORMAT}; "
                          "fine-tune again with this version")
    backbone = create_backbone(checkpoint["backbone"], pool=checkpoint["pool"])
    backbone.features.load_state_dict({**backbone.features.state_dict(), **checkpoint["body"]})
    head = nn.Linear(backbone.feature_dim, checkpoint["n_classes"])
    head.load_state_dict(checkpoint["head"])
    return nn.Sequential(backbone.features, head).eval()


def _scored(split: str, scores: np.ndarray, y, loss: float, n_classes: int) -> dict:
    metrics = point_scores(np.asarray(y), scores.argmax(1), n_classes)
    return {f"{split}_loss": loss, f"{split}_acc": metrics["accuracy"], f"{split}_macro_f1": metrics["macro_f1"]}


def _plan_epoch(samples, rows: np.ndarray, labels: np.ndarray, preprocess: Preprocess, config, epoch: int,
                resample: bool) -> list[list[tuple[int, bool]]]:
    """One epoch's batches of (training row, flipped): shuffled, grouped by image size, class-balanced draws
    with replacement under `resample`, each image mirrored with probability 1/2 under `hflip`."""
    seed = config.seed + epoch
    picks = rows
    if resample:
        drawn = balanced_batches(labels[rows], config.batch_size, torch.Generator().manual_seed(seed))
        picks = rows[torch.cat(drawn).numpy()]
    batches = size_grouped_batches([samples[i] for i in picks], preprocess, config.batch_size, shuffle_seed=seed)
    flips = np.random.default_rng(seed).random(len(picks)) < 0.5
    return [[(int(picks[j]), bool(config.hflip and flips[j])) for j in batch] for batch in batches]


class _Inputs:
    """What the trainable part takes: cached activations of the frozen part, or images through it each time."""

    def __init__(self, backbone: Backbone, prefix: nn.Module, n_trainable: int, preprocess: Preprocess, config,
                 device, dtype):
        self.backbone, self.n_trainable, self.preprocess, self.config = backbone, n_trainable, preprocess, config
        self.device, self.dtype = device, dtype
        self.prefix = prefix.to(device, memory_format=torch.channels_last)
        self.cache: dict[tuple[int, bool], torch.Tensor] = {}
        self.cached = False

    def cache_train(self, samples, fit_rows, val_rows, hflip: bool, tick) -> None:
        """Compute the frozen part's output once for the fit rows (both orientations under `hflip`) and the
        validation rows, when the body is not wholly trained and the activations fit in memory."""
        if not self.will_cache(samples, len(fit_rows) * (1 + hflip) + len(val_rows)):
            return
        forward = self.forward()
        for flipped in (False, True) if hflip else (False,):
            rows = fit_rows if flipped else np.concatenate([fit_rows, val_rows])
            for batch, activations in self._map(forward, samples, rows, flipped):
                self.cache.update({(row, flipped): a for row, a in zip(batch, activations)})
                tick.add(len(batch), caching=True)
        self.cached = True

    def will_cache(self, samples, n_images: int) -> bool:
        """Whether the frozen part's output of `n_images` is cached: some of the body is frozen, and it fits."""
        return self.n_trainable < len(self.backbone.stages) and self.fits(samples, n_images)

    def forward(self):
        """The frozen part through the inference runtime (OpenVINO on the CPU, else torch)."""
        entry, runtime = self.backbone.entry, resolve_runtime(self.config.runtime, self.device)
        return frozen_forward(entry, self.backbone.pool, runtime=runtime, device=self.device, dtype=self.dtype,
                              cache_dir=self.config.cache_dir, trainable_stages=self.n_trainable)

    def fits(self, samples, n_images: int) -> bool:
        """Whether `n_images` activations (sized by the largest image shape) fit the cache budget."""
        largest = max(samples, key=lambda s: math.prod(self.preprocess.output_size(s.size)))
        height, width = self.preprocess.output_size(largest.size)
        with torch.no_grad():
            shape = self.prefix(torch.zeros(1, 3, height, width, dtype=torch.uint8, device=self.device)).shape
        element = 2 if self.dtype is not None else 4
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 16 << 30
        return math.prod(shape) * element * n_images <= min(CACHE_BUDGET_BYTES, pages // 4)

    def _map(self, forward, samples, rows, flipped: bool):
        """(rows, activations) per size-grouped batch of `rows`, through `forward`."""
        batches = [[int(rows[j]) for j in b] for b in size_grouped_batches([samples[i] for i in rows],
                                                                            self.preprocess, self.config.batch_size)]
        loader = make_loader(ImageDataset(samples, self.preprocess), batches, self.device, self.config.workers)
        images = (batch.flip(-1) if flipped else batch for batch, _, _ in prefetch(loader))
        for batch, activations in zip(batches, forward.map(images)):
            yield batch, torch.from_numpy(activations).to(self.dtype or torch.float32)

    def train_batches(self, samples, plan):
        """(inputs, labels) per batch of (row, flipped) pairs, on the device."""
        if self.cached:
            for batch in plan:
                inputs = torch.stack([self.cache[item] for item in batch])
                yield self._to_device(inputs), torch.tensor([samples[row].label for row, _ in batch])
            return
        loader = make_loader(ImageDataset(samples, self.preprocess), [[row for row, _ in b] for b in plan],
                             self.device, self.config.workers)
        for batch, (images, labels, _) in zip(plan, prefetch(loader)):
            flips = torch.tensor([flipped for _, flipped in batch])
            images = torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
            yield self.through_prefix(images), labels

    def eval_batches(self, samples, rows=None):
        """(inputs, labels, positions) per size-grouped batch of `rows` (all samples by default), unflipped.

        Validation rows (`rows` given: rows of the training samples) come from the cache when there is one.
        """
        if self.cached and rows is not None:
            for batch in size_grouped_batches([samples[i] for i in rows], self.preprocess, self.config.batch_size):
                inputs = torch.stack([self.cache[(int(rows[j]), False)] for j in batch])
                yield self._to_device(inputs), torch.tensor([samples[rows[j]].label for j in batch]), batch
            return
        rows = np.arange(len(samples)) if rows is None else rows
        batches = size_grouped_batches([samples[i] for i in rows], self.preprocess, self.config.batch_size)
        loader = make_loader(ImageDataset(samples, self.preprocess), [[int(rows[j]) for j in b] for b in batches],
                             self.device, self.config.workers)
        if self.cached:  # test images: the frozen part through the runtime, batch by batch
            forward = self.forward()
            outputs = forward.map(images for images, _, _ in prefetch(loader))
            for batch, activations in zip(batches, outputs):
                yield (self._to_device(torch.from_numpy(activations)),
                       torch.tensor([samples[rows[j]].label for j in batch]), batch)
            return
        for batch, (images, labels, _) in zip(batches, prefetch(loader)):
            yield self.through_prefix(images), labels, batch

    def _to_device(self, inputs: torch.Tensor) -> torch.Tensor:
        memory = torch.channels_last if inputs.dim() == 4 else torch.contiguous_format
        return inputs.to(self.device, non_blocking=True, memory_format=memory)

    def through_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen part in torch, without gradients (nothing before the first trained block needs them)."""
        images = images.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.prefix(images)


def _adjusted_loss(weight: torch.Tensor | None, shift: torch.Tensor):
    """Class-weighted cross-entropy of the logits shifted by `shift` (la_tau * log prior; zeros = plain CE)."""
    def loss_fn(logits, labels):
        return weighted_cross_entropy(logits + shift.to(logits.dtype), labels, weight)
    return loss_fn


def _optimizer(suffix: nn.Module, head: nn.Module, config, total_steps: int):
    """AdamW: the head at `lr`, the unfrozen blocks at `lr * BODY_LR_FACTOR`, no decay on biases and norm
    weights; and the per-step schedule, a function called after each step: linear warm-up (WARMUP_SHARE of the
    steps) then cosine decay to 1% of the body's rate."""
    from timm.optim import param_groups_weight_decay
    from timm.scheduler import CosineLRScheduler

    groups = [{**group, "lr": lr} for module, lr in ((head, config.lr), (suffix, config.lr * BODY_LR_FACTOR))
              for group in param_groups_weight_decay(module, WEIGHT_DECAY) if group["params"]]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    warmup = max(1, round(WARMUP_SHARE * total_steps)) if total_steps > 1 else 0
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=config.lr * 0.01 * BODY_LR_FACTOR,
                                  warmup_t=warmup, warmup_lr_init=config.lr * 0.01 * BODY_LR_FACTOR,
                                  warmup_prefix=True, t_in_epochs=False)
    steps = itertools.count(1)
    return optimizer, lambda: scheduler.step_update(num_updates=next(steps))


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


class _Ticker:
    """Progress in images (activation cache, epochs, the test pass) with a note: epoch, validation score so far,
    time left (from the seconds the epochs took so far)."""

    STAGE = "fine-tune (images)"

    def __init__(self, progress, epochs: int, per_epoch: int, n_test: int):
        self.progress, self.epochs, self.per_epoch, self.n_test = progress, epochs, per_epoch, n_test
        self.done, self.total, self.note = 0, epochs * per_epoch + n_test, ""
        self.started = time.perf_counter()

    def __call__(self, n: int) -> None:
        self.add(n)

    def add(self, n: int, caching: bool = False) -> None:
        self.done += n
        self.total += n if caching else 0
        if self.progress:
            self.progress(self.STAGE, self.done, self.total, note=self.note)

    def epoch_done(self, epoch: int, row: dict, best_epoch: int) -> None:
        elapsed_s = time.perf_counter() - self.started
        left_s = elapsed_s / epoch * (self.epochs - epoch + self.n_test / max(self.per_epoch, 1))
        score = f" · validation macro-F1 {row['val_macro_f1']:.3f} (best: epoch {best_epoch})" \
            if "val_macro_f1" in row else ""
        self.note = f"epoch {epoch}/{self.epochs}{score} · about {left_s:.0f} s left"
        self.add(0)


def train_one_epoch(model, batches, loss_fn, optimizer, schedule, scaler, device, dtype, tick):
    """One pass over the epoch's batches of `(inputs, labels)`; returns (mean loss, accuracy).

    The trainable part is in train mode (BatchNorm of the unfrozen blocks uses batch statistics and updates its
    running ones); the frozen part ran before, in eval mode, without gradients.
    """
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for inputs, labels in batches:
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(inputs).float()
            loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        schedule()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        tick(len(labels))
    return total_loss / seen, correct / seen


def evaluate(model, batches, n: int, loss_fn, device, dtype, tick):
    """Logits `(n, n_classes)` of `(inputs, labels, positions)` batches in position order, and the mean loss."""
    model.eval()
    scores, total_loss = None, 0.0
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for inputs, labels, positions in batches:
            logits = model(inputs).float()
            if scores is None:
                scores = np.zeros((n, logits.shape[1]), dtype=np.float32)
            total_loss += loss_fn(logits, labels.to(device)).item() * len(labels)
            scores[np.asarray(positions)] = logits.cpu().numpy()
            tick(len(labels))
    return scores, total_loss / n

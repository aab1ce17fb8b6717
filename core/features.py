"""Batched, cached, resumable feature extraction from a pretrained backbone."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, default_collate

from core.backbones import BackboneEntry, describe_backbone, get_entry
from core.data import Dataset, Sample, decode_rgb
from core.errors import ConfigError, DataError
from core.paths import DEFAULT_CACHE_DIR
from core.storage import atomic_write_json, atomic_write_npz
from core.runtime import Forward, frozen_forward, resolve_runtime
from core.torch_threads import one_torch_thread

FORMAT_VERSION = 4  # 2: upright sizes of EXIF-rotated photos; 3: runtime in the key; 4: split-independent rows
SHARD_IMAGES = 256
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Preprocess:
    """Keep the aspect ratio: resize the short side to `image_size`, cap the long side; uint8 out.

    The backbone normalizes with `mean`/`std` itself (they stay here as part of the transform's identity).
    The aspect ratio is rounded to `aspect_step` (at most ~6% stretch, ~2% for 3:1 photos) so photos of
    slightly different sizes share a few batch shapes instead of one shape (and batch) each.
    """

    image_size: int = 224
    max_long_side: int = 1024
    aspect_step: float = 0.125
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    @classmethod
    def for_backbone(cls, entry: BackboneEntry, image_size: int | None = None) -> Preprocess:
        size = image_size or entry.image_size
        if not 16 <= size <= 2048:
            raise ConfigError(f"image size (short side) must be between 16 and 2048 pixels, got {size}")
        return cls(size, max(4 * size, 1024), mean=entry.mean, std=entry.std, interpolation=entry.interpolation)

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) after resizing an image of (width, height)."""
        width, height = size
        short, long = sorted((width, height))
        aspect = max(1.0, round(long / short / self.aspect_step) * self.aspect_step)
        new_short, new_long = self.image_size, round(self.image_size * aspect)
        if new_long > self.max_long_side:
            new_short, new_long = max(1, round(self.max_long_side * short / long)), self.max_long_side
        return (new_long, new_short) if height > width else (new_short, new_long)

    def __call__(self, image: torch.Tensor, out_size: tuple[int, int], augment: Callable | None = None) -> torch.Tensor:
        """The uint8 `(3, H, W)` image resized to `out_size` (height, width), optionally augmented."""
        image = resize_uint8(image, out_size, self.interpolation)
        return augment(image) if augment is not None else image


def resize_uint8(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased bilinear or bicubic resize of a uint8 CPU image `(3, H, W)` to `size` (height, width).

    The pixels torchvision's `resize` gives (a test compares them), by the same torch call, without importing
    torchvision (1 s): torch's uint8 kernel where torchvision uses it (bicubic; bilinear with AVX2 or on ARM),
    else in float, rounded. A channels-last image stays channels-last.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    native = (mode != "bilinear" or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
              or platform.machine() in ("aarch64", "arm64"))
    batch = image.permute(1, 2, 0).unsqueeze(0).permute(0, 3, 1, 2)  # (1, 3, H, W), its batch stride unambiguous
    resized = torch.nn.functional.interpolate(batch if native else batch.float(), size=list(size), mode=mode,
                                              align_corners=False, antialias=True)
    return (resized if native else resized.round_().to(torch.uint8))[0]


def light_augmentation(hflip: bool = True):
    """Shape-preserving augmentation for fine-tuning: small shifts/zoom, colour jitter, optional flip."""
    from torchvision.transforms import v2

    steps = [v2.RandomAffine(degrees=5, translate=(0.05, 0.05), scale=(0.9, 1.1)), v2.ColorJitter(0.2, 0.2, 0.2)]
    return v2.Compose(([v2.RandomHorizontalFlip()] if hflip else []) + steps)


class ImageDataset(torch.utils.data.Dataset):
    """Decodes samples to normalized tensors at their planned (aspect-preserving) size."""

    def __init__(self, samples: list[Sample], preprocess: Preprocess, augment: Callable | None = None):
        self.samples, self.preprocess, self.augment = samples, preprocess, augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        tensor = self.preprocess(decode_rgb(sample.path), self.preprocess.output_size(sample.size), self.augment)
        return tensor, sample.label, index


def size_grouped_batches(samples: list[Sample], preprocess: Preprocess, batch_size: int, shuffle_seed=None):
    """Index batches whose images share one output size, so they stack without padding or cropping."""
    sizes = [preprocess.output_size(sample.size) for sample in samples]
    order = sorted(range(len(samples)), key=lambda i: (sizes[i], i))
    batches = []
    for _, group in groupby(order, key=sizes.__getitem__):
        group = list(group)
        if shuffle_seed is not None:
            group = np.random.default_rng(shuffle_seed).permutation(group).tolist()
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    if shuffle_seed is not None:
        batches = [batches[i] for i in np.random.default_rng(shuffle_seed).permutation(len(batches))]
    return batches


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}; choose auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(device)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """fp16 on CUDA, bf16 on CPUs with native bf16 support, else None (fp32)."""
    if precision == "fp32":
        return None
    if precision != "auto":
        raise ConfigError(f"unknown precision {precision!r}; choose auto or fp32")
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if _cpu_runs_bf16() else None


def _cpu_runs_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU, as torch decides it: AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT
    on x86, bf16 on ARM (read through torch's public capability table)."""
    caps = torch.cpu.get_capabilities()
    avx512 = all(caps.get(name) for name in ("avx512_bw", "avx512_vl", "avx512_dq"))
    return bool(avx512 or caps.get("avx_ne_convert") or caps.get("bf16"))


def default_workers(device: torch.device) -> int:
    """Decoding worker processes: several on a GPU box; none on a CPU, where one decoding thread beside the
    model is faster (2 cores, 224x756 photos: 100 img/s with a thread, 80 with one or two processes)."""
    return min(8, (os.cpu_count() or 1) - 1) if device.type == "cuda" else 0


def make_loader(dataset: ImageDataset, batches: list[list[int]], device: torch.device, workers: int | None):
    workers = default_workers(device) if workers is None else workers
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
                      collate_fn=collate_channels_last)


def collate_channels_last(items):
    """`default_collate` of (image, label, index) items, the images stacked as one channels-last batch.

    Decoded and resized images are already channels-last (height, width, channel in memory), so stacking
    them so is a plain copy (0.20 ms an image at 224x756 on one thread), where stacking to contiguous NCHW
    transposes every image (0.39 ms). Both models take channels-last batches as they are.
    """
    images, labels, indices = default_collate([(image.permute(1, 2, 0), label, index) for image, label, index in items])
    return images.permute(0, 3, 1, 2), labels, indices


def prefetch(loader: DataLoader, depth: int = 2):
    """Batches of `loader`, decoded `depth` ahead in a background thread (its torch ops on one thread) so the
    model never waits.

    A loader with worker processes already runs ahead and is iterated as it is. Errors raised while
    decoding reach the caller; leaving the loop early stops the thread.
    """
    if loader.num_workers > 0:
        yield from loader
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with one_torch_thread():  # resizing on both cores stalls the model's threads (2 cores: 66 -> 72 img/s)
                for batch in loader:
                    if not put(("batch", batch)):
                        return
            put(("end", None))
        except BaseException as err:  # noqa: BLE001 - handed to the consuming thread, which raises it
            put(("error", err))

    threading.Thread(target=produce, name="transferscope-decode", daemon=True).start()
    try:
        while (item := ready.get())[0] == "batch":
            yield item[1]
        if item[0] == "error":
            raise item[1]
    finally:
        stop.set()


@dataclass
class FeatureSet:
    """Cached features of a dataset: train rows first, then test rows, in `Dataset.samples` order."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    key: str
    cache_hit: bool
    seconds: float  # wall time of this call (loading on a hit)
    extract_seconds: float  # wall time the extraction took, summed over resumed calls
    backbone: dict
    runtime: str  # the runtime that extracted them


def split_key(features: FeatureSet, dataset: Dataset) -> str:
    """The feature set's cache key plus exactly which rows are training rows (the rest are test rows).

    The feature key covers the images' content but not the split, so another split seed has the same key;
    what depends on the split (the SVM's train kernel, near-duplicate matches) is keyed by this instead.
    """
    rows = "\n".join(s.path for s in dataset.train)
    return f"{features.key}:{hashlib.sha256(rows.encode()).hexdigest()[:16]}"


def feature_key(dataset: Dataset, entry: BackboneEntry, pool: str, preprocess: Preprocess, dtype,
                runtime: str = "torch") -> str:
    """Hash of everything that changes the features: data, backbone+weights, transform, pooling, dtype.

    The data counts by content alone, not by its train/test split: another split seed reuses the features.
    Runtimes agree within float noise in fp32, so the runtime only counts in reduced precision.
    """
    fields = {"format": FORMAT_VERSION, "data": dataset.content_fingerprint or dataset.fingerprint,
              "backbone": entry.name, "weights": entry.weights_id, "pool": pool, "preprocess": repr(preprocess),
              "dtype": str(dtype), "runtime": runtime if dtype is not None else "any"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def extract_features(dataset: Dataset, backbone: str = "efficientnet_lite0", *, pool: str = "avg",
                     image_size: int | None = None, cache_dir=DEFAULT_CACHE_DIR, device: str = "auto",
                     precision: str = "auto", runtime: str = "auto", batch_size: int = 32,
                     workers: int | None = None, progress: Progress | None = None) -> FeatureSet:
    """Features for every image of `dataset`, computed once and then served from `cache_dir/features/`.

    The frozen forward pass runs through `runtime` (auto: OpenVINO on CPU when installed, else torch).
    Shards are written atomically as they finish, so an interrupted extraction resumes where it stopped.
    Rows are stored in a split-independent order (class, then path) and returned in `dataset.samples` order.

    >>> fs = extract_features(load_dataset("cache/datasets/digits-demo"))  # doctest: +SKIP
    >>> fs.X_train.shape, fs.cache_hit  # doctest: +SKIP
    ((453, 1280), False)
    """
    start = time.perf_counter()
    entry, torch_device = get_entry(backbone), resolve_device(device)
    preprocess, dtype = Preprocess.for_backbone(entry, image_size), autocast_dtype(torch_device, precision)
    runtime = resolve_runtime(runtime, torch_device)
    key = feature_key(dataset, entry, pool, preprocess, dtype, runtime)
    folder = Path(cache_dir) / "features" / key
    meta_path = folder / "meta.json"
    cache_hit = meta_path.exists()
    samples = dataset.samples
    canonical = sorted(range(len(samples)), key=lambda i: (samples[i].label, samples[i].path))  # split-free order
    if not cache_hit:
        report = progress or (lambda *_: None)
        report("load the backbone", 0, 1)  # weights, and a compiled runtime's first build: seconds on a fresh cache
        forward = frozen_forward(entry, pool, runtime=runtime, device=torch_device, dtype=dtype, cache_dir=cache_dir)
        report("load the backbone", 1, 1)
        _extract_shards([samples[i] for i in canonical], forward, preprocess, folder, torch_device, batch_size,
                        workers, progress, start)
        _barrier()  # under torchrun every rank has written its shards before rank 0 seals the cache entry
    stored_X = _load_shards(folder, len(samples))
    X = np.empty_like(stored_X)
    X[canonical] = stored_X  # back to dataset.samples order: train rows, then test rows
    if not cache_hit and rank_world()[0] == 0:  # seal the entry: from now on it is a cache hit
        backbone_info = {**describe_backbone(entry, pool), "feature_dim": X.shape[1],
                         "image_size": preprocess.image_size, "dtype": str(dtype), "runtime": runtime}
        atomic_write_json(meta_path, {"key": key, "n": len(X), "feature_dim": X.shape[1],
                                      "extract_seconds": _elapsed(folder), "backbone": backbone_info,
                                      "preprocess": repr(preprocess), "device": str(torch_device)},
                          "feature cache entry")
    _barrier()
    meta = json.loads(meta_path.read_text())
    y = np.array([s.label for s in samples])
    n = len(dataset.train)
    return FeatureSet(X[:n], y[:n], X[n:], y[n:], key, cache_hit, time.perf_counter() - start,
                      meta["extract_seconds"], meta["backbone"], meta["backbone"]["runtime"])


def _shard_plan(samples, preprocess: Preprocess) -> list[list[int]]:
    """Split the size-grouped order into shards of at most SHARD_IMAGES (independent of batch size)."""
    return size_grouped_batches(samples, preprocess, SHARD_IMAGES)


def _extract_shards(samples: list[Sample], forward: Forward, preprocess, folder: Path, device, batch_size, workers,
                    progress, started: float) -> None:
    """Run this rank's missing shards through `forward`; each rank records its wall time since `started`."""
    shards = _shard_plan(samples, preprocess)
    rank, world = rank_world()
    mine = [(i, shard) for i, shard in enumerate(shards) if i % world == rank]
    todo = [(i, shard) for i, shard in mine if not _shard_path(folder, i).exists()]
    total = sum(len(s) for _, s in mine)
    done = total - sum(len(s) for _, s in todo)
    report = progress or (lambda *_: None)
    report("extract features", done, total)
    if not todo:
        return
    earlier_s = _elapsed(folder, rank)
    batches = [shard[j:j + batch_size] for _, shard in todo for j in range(0, len(shard), batch_size)]
    loader = make_loader(ImageDataset(samples, preprocess), batches, device, workers)
    pending = iter(todo)
    shard_id, shard = next(pending)
    rows, indices, queued = [], [], deque()

    def images():  # the loader's images, their rows kept aside in the same order as forward.map's results
        for batch, _, index in prefetch(loader):
            queued.append(index.numpy())
            yield batch

    for X in forward.map(images()):
        rows.append(X)
        indices.append(queued.popleft())
        done += len(indices[-1])
        report("extract features", done, total)
        if sum(len(i) for i in indices) == len(shard):
            atomic_write_npz(_shard_path(folder, shard_id), "feature shard", indices=np.concatenate(indices),
                             X=np.concatenate(rows))
            atomic_write_json(folder / f"elapsed-{rank}.json", {"seconds": earlier_s + time.perf_counter() - started},
                              "feature cache timing")
            rows, indices = [], []
            shard_id, shard = next(pending, (None, None))


def _elapsed(folder: Path, rank: int | None = None) -> float:
    """Extraction wall time recorded so far: one rank's, or the slowest rank's (ranks run side by side)."""
    paths = [folder / f"elapsed-{rank}.json"] if rank is not None else folder.glob("elapsed-*.json")
    return max((json.loads(p.read_text())["seconds"] for p in paths if p.exists()), default=0.0)


def rank_world() -> tuple[int, int]:
    """(rank, world size) under torch.distributed, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def init_distributed() -> None:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU); no-op for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")


def _shard_path(folder: Path, shard_id: int) -> Path:
    return folder / f"shard-{shard_id:05d}.npz"


def _load_shards(folder: Path, n: int) -> np.ndarray:
    """Stitch the shards back into `(n, feature_dim)`; a cache entry with missing rows is an error."""
    X, filled = None, np.zeros(n, dtype=bool)
    for path in sorted(folder.glob("shard-*.npz")):
        with np.load(path) as shard:
            if X is None:
                X = np.empty((n, shard["X"].shape[1]), dtype=np.float32)
            X[shard["indices"]] = shard["X"]
            filled[shard["indices"]] = True
    if X is None or not filled.all():
        raise DataError(f"feature cache {str(folder)!r} is incomplete ({int(filled.sum())} of {n} images); "
                        "delete that folder and run again to re-extract")
    return X

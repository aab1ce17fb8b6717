"""Inference runtimes for the frozen backbone: torch (CUDA, gradients, fallback) and OpenVINO (fast on CPU).

`frozen_forward(entry, pool, runtime=..., device=..., dtype=...)` returns a `Forward`: called, it maps a uint8
batch `(N, 3, H, W)` to features `(N, feature_dim)` as numpy (the model normalizes its input itself; batches in
channels-last memory, as the loader stacks them, go in without a copy); its
`map(batches)` yields the features of successive batches in order, keeping the runtime busy meanwhile.
OpenVINO models are converted once (dynamic batch, height and width), saved under
`cache/openvino/<key>/` and compiled once per process for throughput, OpenVINO choosing the streams (2 on
2 cores: 84 img/s at 224x756 against 69-78 for one stream using both cores). In fp32 both
runtimes agree within float noise, so the runtime is recorded but enters cache keys only for reduced precision.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from core.backbones import BackboneEntry, create_backbone
from core.errors import ConfigError, StorageError
from core.paths import DEFAULT_CACHE_DIR

RUNTIMES = ("auto", "torch", "openvino")
OPENVINO_FORMAT = 3  # bump when the conversion below changes (2: uint8 input, normalization inside; 3: NHWC input)
_COMPILED: dict[tuple, Future] = {}  # (model path, precision, threads) -> compiled model, one per process
_COMPILE_LOCK = threading.Lock()
_COMPILER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferscope-openvino-compile")


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_runtime(runtime: str, device: torch.device) -> str:
    """`auto` is OpenVINO on CPU when installed, else torch; OpenVINO on CUDA is refused."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "openvino" if device.type == "cpu" and openvino_available() else "torch"
    if runtime == "openvino" and device.type != "cpu":
        raise ConfigError(f"the openvino runtime runs on the CPU, but device is {device.type!r}; "
                          "use --runtime torch (or auto) on a GPU, or --device cpu")
    if runtime == "openvino" and not openvino_available():
        raise ConfigError("the openvino runtime needs the PyPI package openvino; run `pip install openvino` "
                          "or use --runtime torch")
    return runtime


def frozen_forward(entry: BackboneEntry, pool: str, *, runtime: str, device: torch.device, dtype,
                   cache_dir=DEFAULT_CACHE_DIR, trainable_stages: int = 0) -> Forward:
    """The frozen backbone's forward pass through `runtime` ("torch" or "openvino", already resolved).

    `dtype` is the reduced precision to run in (torch.float16/bfloat16) or None for fp32. With
    `trainable_stages` > 0 it stops before the backbone's last stages (`Backbone.split`) and returns their
    input activations `(N, C, h, w)`, for a fine-tune that trains those stages on them.
    """
    if runtime == "openvino":
        return _openvino_forward(entry, pool, dtype, Path(cache_dir), trainable_stages)
    return _TorchForward(create_backbone(entry.name, pool=pool).split(trainable_stages)[0], device, dtype)


class Forward:
    """The frozen backbone as a function of a uint8 batch; `map` runs successive batches."""

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def map(self, batches: Iterable[torch.Tensor]) -> Iterator[np.ndarray]:
        """Features of each batch in order (the next batch is read while the runtime works where it can)."""
        return map(self, batches)


class _TorchForward(Forward):
    def __init__(self, module: torch.nn.Module, device: torch.device, dtype):
        self.module = module.to(device, memory_format=torch.channels_last).eval()
        self.device, self.dtype = device, dtype

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        images = images.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.module(images).float().cpu().numpy()


class _OpenVinoForward(Forward):
    """The compiled model, run with IN_FLIGHT infer requests per stream.

    `map` cuts every batch into chunks of at most CHUNK images, keeps IN_FLIGHT chunks per stream queued and
    hands results back in order, so no stream waits for another and the caller decodes the next batch while
    they run (on 2 cores: 75 img/s of decoded photos where a call per batch reached 64); a call is a map of its
    one batch. Each map creates its own requests (microseconds), so calls from several threads share nothing
    but the compiled model.
    """

    CHUNK = 8  # on 2 cores as fast as 32 (82-84 against 79-80 img/s) with a third of a new shape's first-run
    #            cost (0.15 against 0.45 s) and a quarter of the wait for the last chunk
    IN_FLIGHT = 2  # a stream done before the oldest request takes a queued chunk instead of idling until that
    #                one is collected (2 cores, 224x756 photos: 121-125 -> 128-129 img/s, 1.91 -> 1.99 cores busy)

    def __init__(self, compiling: Future):
        self._compiling = compiling

    @cached_property
    def compiled(self):
        """The compiled model, once its compilation (started by `frozen_forward`) is done."""
        return self._compiling.result()

    @cached_property
    def streams(self) -> int:
        return max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        [features] = self.map([images])
        return features

    def map(self, batches: Iterable[torch.Tensor]) -> Iterator[np.ndarray]:
        counts: deque = deque()  # how many chunks each batch was cut into, oldest first

        def chunks():
            for images in batches:  # a small batch is still shared by every stream
                parts = torch.split(images, min(self.CHUNK, -(-len(images) // self.streams)))
                counts.append(len(parts))
                yield from parts

        done = []
        for features in self._run(chunks()):
            done.append(features)
            if len(done) == counts[0]:
                counts.popleft()
                yield np.concatenate(done)
                done = []

    def _run(self, chunks: Iterator[torch.Tensor]) -> Iterator[np.ndarray]:
        busy: deque = deque()  # requests of this map, oldest first
        for images in chunks:
            done = None
            if len(busy) == self.IN_FLIGHT * self.streams:  # all queued: the oldest request takes the new chunk
                request = busy.popleft()
                done = _result(request)
            else:
                request = self.compiled.create_infer_request()
            request.start_async({0: np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())})  # NHWC, as decoded
            busy.append(request)
            if done is not None:  # handed back only once the stream is working again
                yield done
        while busy:
            yield _result(busy.popleft())


def _result(request) -> np.ndarray:
    request.wait()
    return request.get_output_tensor(0).data.copy()


def _openvino_forward(entry: BackboneEntry, pool: str, dtype, cache_dir: Path, trainable_stages: int = 0) -> Forward:
    precision = "bf16" if dtype == torch.bfloat16 else "f32"  # CPU autocast only ever picks bf16
    return _OpenVinoForward(_compiled_model(openvino_model_path(entry, pool, cache_dir, trainable_stages), precision,
                                            torch.get_num_threads()))


def _compiled_model(path: Path, precision: str, threads: int) -> Future:
    """The saved model compiling in the background, once per process (THROUGHPUT hint: OpenVINO picks the
    streams for `threads`).

    Compiling releases the GIL, so the caller starts decoding its first images meanwhile (0.3-0.45 s on 2
    cores); a compilation that failed is forgotten, and the next call tries again.
    """
    import openvino as ov

    key = (str(path), precision, threads)
    with _COMPILE_LOCK:
        future = _COMPILED.get(key)
        if future is None or (future.done() and future.exception() is not None):
            config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": precision,
                      "INFERENCE_NUM_THREADS": threads}
            _COMPILED[key] = future = _COMPILER.submit(ov.Core().compile_model, str(path), "CPU", config)
        return future


def openvino_model_path(entry: BackboneEntry, pool: str, cache_dir: Path, trainable_stages: int = 0) -> Path:
    """The converted model's `model.xml` (the backbone without its last `trainable_stages` stages), converting
    and saving it (atomically) on first use."""
    import openvino as ov

    fields = {"format": OPENVINO_FORMAT, "backbone": entry.name, "weights": entry.weights_id, "pool": pool,
              "openvino": ov.__version__, **({"trainable_stages": trainable_stages} if trainable_stages else {})}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir / "openvino" / f"{entry.name}-{pool}-{key}"
    if not (folder / "model.xml").exists():
        module = create_backbone(entry.name, pool=pool).split(trainable_stages)[0]
        with warnings.catch_warnings():  # torch.jit.trace's deprecation notes mean nothing to users
            warnings.simplefilter("ignore", FutureWarning)
            model = ov.convert_model(module, example_input=torch.zeros(1, 3, 64, 64, dtype=torch.uint8),
                                     input=[((-1, 3, -1, -1), torch.uint8)])
        _take_channels_last(ov, model)
        _save_openvino_model(ov, model, fields, folder)
    return folder / "model.xml"


def _take_channels_last(ov, model) -> None:
    """Make the model's input NHWC, the memory order of decoded batches, so they go in without a transposing
    copy; OpenVINO folds the transpose into its first layer (the same features; 137-141 -> 142-143 img/s)."""
    from openvino.preprocess import PrePostProcessor

    steps = PrePostProcessor(model)
    steps.input().tensor().set_layout(ov.Layout("NHWC"))
    steps.input().model().set_layout(ov.Layout("NCHW"))
    steps.build()


def _save_openvino_model(ov, model, fields: dict, folder: Path) -> None:
    """Save into a hidden staging folder, then publish it as `folder` in one rename (nothing half-saved)."""
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
        ov.save_model(model, staging / "model.xml", compress_to_fp16=False)  # RuntimeError when the disk is full
        (staging / "source.json").write_text(json.dumps(fields))
        os.replace(staging, folder)
    except (OSError, RuntimeError) as err:
        if not (folder / "model.xml").exists():  # another process may have published it first
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip().splitlines()[-1]
            raise StorageError(f"could not save the converted OpenVINO model under {folder.parent}: {reason}; "
                               "free some disk space, check the cache folder's permissions, or use --runtime torch"
                               ) from err
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)

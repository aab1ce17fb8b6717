"""`python -m bench.cuda_check`: exercise the CUDA paths (fp16 extraction, AMP fine-tune) on a GPU.

Prints throughput and how close CUDA features are to CPU features; exits 1 on a mismatch.
"""
from __future__ import annotations

import sys
import tempfile
import time

import numpy as np
import torch

from core.data import build_demo_dataset, load_dataset
from core.features import extract_features
from core.finetune import FinetuneConfig, finetune


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU visible")
        return 1
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    with tempfile.TemporaryDirectory() as tmp:
        dataset = load_dataset(build_demo_dataset(f"{tmp}/demo"))
        n = len(dataset.samples)
        timings = {}
        for device, precision in (("cuda", "auto"), ("cuda", "fp32"), ("cpu", "fp32")):
            started = time.perf_counter()
            fs = extract_features(dataset, cache_dir=f"{tmp}/cache-{device}-{precision}", device=device, precision=precision, batch_size=64)
            timings[(device, precision)] = fs
            print(f"extract {device}/{precision}: {n / (time.perf_counter() - started):.0f} img/s, key {fs.key}")
        ref, fp16, fp32 = (timings[k].X_train for k in (("cpu", "fp32"), ("cuda", "auto"), ("cuda", "fp32")))
        rel16 = np.abs(fp16 - ref).max() / np.abs(ref).max()
        rel32 = np.abs(fp32 - ref).max() / np.abs(ref).max()
        print(f"max relative difference to CPU fp32: cuda fp16 {rel16:.4f}, cuda fp32 {rel32:.6f}")
        for unfreeze in ("none", "last", "2", "all"):
            started = time.perf_counter()
            result = finetune(dataset, FinetuneConfig(epochs=3, device="cuda", unfreeze=unfreeze, batch_size=64,
                                                      cache_dir=f"{tmp}/cache-ft"))
            scores = [round(h["val_macro_f1"], 3) for h in result.history]
            print(f"finetune cuda AMP unfreeze={unfreeze}: {time.perf_counter() - started:.1f} s for 3 epochs "
                  f"(activation cache: {result.activation_cache}), validation macro-F1 per epoch {scores}, "
                  f"kept epoch {result.chosen_epoch}")
    return 0 if rel16 < 0.05 and rel32 < 5e-3 else 1


if __name__ == "__main__":
    sys.exit(main())

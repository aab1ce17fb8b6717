"""`python -m bench`: backbone throughput per precision/layout, and fit time per approach on the demo."""
from __future__ import annotations

import argparse
import time

import torch

from core.backbones import create_backbone
from core.features import autocast_dtype


def images_per_second(model, batch: torch.Tensor, dtype, channels_last: bool, repeats: int) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    batch = batch.to(memory_format=fmt)
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        model(batch)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            model(batch)
    return repeats * len(batch) / (time.perf_counter() - started)


def bench_backbones(names, height: int, width: int, batch_size: int, repeats: int) -> None:
    bf16 = autocast_dtype(torch.device("cpu"))
    print(f"# forward throughput, batch {batch_size} of {height}x{width}, {torch.get_num_threads()} threads, "
          f"native bf16: {bf16 is not None}")
    print(f"{'backbone':<20} {'fp32 NCHW':>10} {'channels_last':>14} {'bf16':>8} {'cl+bf16':>8}  img/s")
    batch = torch.randn(batch_size, 3, height, width)
    for name in names:
        model = create_backbone(name).features
        cells = [images_per_second(model, batch, dt, cl, repeats)
                 for dt, cl in ((None, False), (None, True), (bf16, False), (bf16, True))]
        print(f"{name:<20} " + " ".join(f"{c:>{w}.1f}" for c, w in zip(cells, (10, 14, 8, 8))))


def bench_approaches(data: str, image_size: int, epochs: int) -> None:
    from core.experiment import ExperimentConfig, run_experiment
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        config = ExperimentConfig(data=data, approaches=("svm", "head", "finetune"), class_weights=("balanced",),
                                  epochs=epochs, image_size=image_size, cache_dir=cache)
        results = run_experiment(config)
    print(f"\n# approaches on {data} (short side {image_size}px, {epochs} epochs); "
          f"feature extraction {results['extract_seconds']:.1f} s")
    print(f"{'approach':<10} {'fit s':>8} {'acc':>6} {'macroF1':>8}")
    for r in results["runs"]:
        print(f"{r['approach']:<10} {r['fit_seconds']:>8.2f} {r['accuracy']:>6.3f} {r['macro_f1']:>8.3f}")
    fit = {r["approach"]: r["fit_seconds"] for r in results["runs"]}
    print(f"SVM fit is {fit['finetune'] / fit['svm']:.0f}x faster than fine-tuning; "
          f"SVM + extraction is {fit['finetune'] / (fit['svm'] + results['extract_seconds']):.1f}x faster")


def bench_statistics(n_images: int = 1000, n_classes: int = 10, n_boot: int = 1000) -> None:
    import numpy as np

    from core.stats import paired_comparison

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, n_classes, n_images)
    pred_a, pred_b = (np.where(rng.random(n_images) < 0.3, rng.integers(0, n_classes, n_images), y_true)
                      for _ in range(2))
    started = time.perf_counter()
    paired_comparison(y_true, pred_a, pred_b, n_classes, n_boot=n_boot)
    print(f"\n# paired comparison (McNemar + bootstrap of 3 metrics), {n_images} test images x {n_boot} "
          f"resamples, {n_classes} classes: {time.perf_counter() - started:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", default="efficientnet_lite0")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", default="cache/datasets/digits-demo")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    bench_statistics()
    bench_backbones(args.backbones.split(","), args.height, args.width, args.batch_size, args.repeats)
    bench_approaches(args.data, args.image_size, args.epochs)


if __name__ == "__main__":
    main()

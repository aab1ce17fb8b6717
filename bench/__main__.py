"""`python -m bench`: what-if refit and feature-map times, backbone throughput, fit time per approach on the demo."""
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


def synthetic_start(n_train: int, n_test: int, dim: int, n_classes: int, approach: str, seed: int = 0):
    """A what-if Start on random imbalanced class clusters of `dim` features (no images, no backbone)."""
    import numpy as np

    from core.data import Dataset, Sample
    from core.experiment import ExperimentConfig
    from core.features import FeatureSet
    from core.whatif import Start

    rng = np.random.default_rng(seed)
    share = np.geomspace(1.0, 0.05, n_classes)
    y = rng.choice(n_classes, size=n_train + n_test, p=share / share.sum())
    X = (rng.normal(size=(n_classes, dim))[y] * 0.6 + rng.normal(size=(len(y), dim))).astype(np.float32)
    classes = [f"class-{i:02d}" for i in range(n_classes)]
    samples = [Sample(f"synthetic/{i}.png", int(label), (96, 32)) for i, label in enumerate(y)]
    dataset = Dataset("synthetic", classes, samples[:n_train], samples[n_train:], fingerprint="synthetic")
    features = FeatureSet(X[:n_train], y[:n_train], X[n_train:], y[n_train:], f"synthetic-{seed}", True, 0.0, 0.0, {})
    record = {"run_id": f"synthetic-{approach}", "approach": approach, "class_weights": [1.0] * n_classes}
    return Start(record, ExperimentConfig(data="synthetic"), dataset, features)


def bench_whatif(n_train: int, n_test: int, dim: int, n_classes: int, changes: int) -> None:
    """Seconds per class-weight change: refit on the cached features (the SVM reuses its kernels)."""
    import numpy as np

    from core.whatif import refit

    print(f"\n# what-if refit per class-weight change, {n_train} + {n_test} x {dim} synthetic features, "
          f"{n_classes} classes ({torch.get_num_threads()} threads)")
    rng = np.random.default_rng(0)
    for approach in ("svm", "head"):
        start = synthetic_start(n_train, n_test, dim, n_classes, approach)
        seconds = []
        for _ in range(changes):
            started = time.perf_counter()
            refit(start, np.exp(rng.uniform(-1, 1, n_classes)))
            seconds.append(time.perf_counter() - started)
        first, rest = seconds[0], seconds[1:]
        note = " (computes the kernels)" if approach == "svm" else ""
        print(f"{approach:<5} first {first:.2f} s{note}, then median {np.median(rest):.2f} s, "
              f"max {max(rest):.2f} s over {len(rest)} changes")


def bench_map(n_train: int, n_test: int, dim: int, n_classes: int) -> None:
    """Seconds to compute the 2-D feature map (PCA to 50 dims, then t-SNE) of all images once."""
    import numpy as np

    from core.featuremap import compute_map

    features = synthetic_start(n_train, n_test, dim, n_classes, "svm").features
    started = time.perf_counter()
    compute_map(np.vstack([features.X_train, features.X_test]))
    print(f"\n# feature map of {n_train + n_test} x {dim} synthetic features: "
          f"{time.perf_counter() - started:.1f} s once per feature set (then read from the cache)")


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
    parser.add_argument("--whatif-size", default="4000,1000,1280,16",
                        help="train images, test images, feature dim, classes of the synthetic what-if/map features")
    parser.add_argument("--weight-changes", type=int, default=6)
    args = parser.parse_args()
    n_train, n_test, dim, n_classes = (int(v) for v in args.whatif_size.split(","))
    bench_whatif(n_train, n_test, dim, n_classes, args.weight_changes)
    bench_map(n_train, n_test, dim, n_classes)
    bench_backbones(args.backbones.split(","), args.height, args.width, args.batch_size, args.repeats)
    bench_approaches(args.data, args.image_size, args.epochs)


if __name__ == "__main__":
    main()

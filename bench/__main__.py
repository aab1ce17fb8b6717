"""`python -m bench`: backbone throughput per runtime, extraction and cache-hit wall time, fine-tune training img/s
per `--unfreeze` mode beside a plain torch loop (bench.finetune), fit time per approach,
what-if refit time per class-weight change, the feature map's compute time, and how the classifiers on features
scale with the training images (bench.scale; its full curve with `python -m bench.scale`).

Run on a quiet machine: every figure is wall-clock time on this machine's cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.finetune import bench_finetune
from bench.scale import bench_runs
from bench.wide_photos import SIZE, build_wide_photos
from core.backbones import get_entry
from core.data import load_dataset
from core.features import Preprocess, autocast_dtype
from core.runtime import frozen_forward, openvino_available, resolve_runtime

CPU = torch.device("cpu")


def random_batch(batch_size: int, height: int, width: int) -> torch.Tensor:
    """Random uint8 images in channels-last memory, as the loader stacks decoded photos."""
    return torch.randint(0, 256, (batch_size, height, width, 3), dtype=torch.uint8).permute(0, 3, 1, 2)


def images_per_second(forward, batch: torch.Tensor, repeats: int) -> float:
    """Preloaded batches through `forward.map`, as extraction runs them (every OpenVINO stream kept busy)."""
    forward(batch)  # warm-up (and OpenVINO's first-shape compilation)
    started = time.perf_counter()
    for _ in forward.map([batch] * repeats):
        pass
    return repeats * len(batch) / (time.perf_counter() - started)


def bench_forward(name: str, height: int, width: int, batch_size: int, repeats: int, cache_dir: str) -> None:
    """Raw forward img/s of the frozen backbone per runtime and precision."""
    entry, bf16 = get_entry(name), autocast_dtype(CPU)
    precisions = [("fp32", None)] + ([("bf16", bf16)] if bf16 is not None else [])
    runtimes = ["torch"] + (["openvino"] if openvino_available() else [])
    batch = random_batch(batch_size, height, width)
    print(f"# raw forward, {name}, batch {batch_size} of {height}x{width}, {torch.get_num_threads()} threads, "
          f"native bf16: {bf16 is not None}")
    for runtime in runtimes:
        for label, dtype in precisions:
            forward = frozen_forward(entry, "avg", runtime=runtime, device=CPU, dtype=dtype, cache_dir=cache_dir)
            print(f"{runtime + ' ' + label:<16} {images_per_second(forward, batch, repeats):8.1f} img/s")


def run_module(module: str, *args: str) -> tuple[dict, float]:
    """`python -m MODULE ARGS` in a fresh process: its last JSON line and its wall time (imports included)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - started


def run_cli(*args: str) -> tuple[dict, float]:
    return run_module("core", *args)


def bench_backbones(names: list[str], data: Path, batch_size: int, repeats: int, cache_dir: str) -> None:
    """Per backbone, side by side: the raw forward on preloaded tensors of a wide photo's working size, and the
    whole `python -m core extract` (cold feature cache, converted model already saved, photos already scanned
    once, as every backbone after the first finds them), each in a fresh process.

    The raw forward is timed just before and just after the extract command and the ratio is taken to their
    mean: on a shared machine the raw rate alone swings by 10-15% between runs.
    """
    runtime, dtype = resolve_runtime("auto", CPU), autocast_dtype(CPU)
    started = time.perf_counter()
    load_dataset(data, cache_dir=cache_dir)
    print(f"\n# first scan of {data} (sizes and content hashes, once per dataset): "
          f"{time.perf_counter() - started:.1f} s")
    print(f"# raw forward vs python -m core extract on {data} (wide JPEG photos), {runtime} "
          f"{'bf16' if dtype is not None else 'fp32'}, batch {batch_size}")
    print(f"{'backbone':<20} {'input':>8} {'raw img/s before, after':>24} {'extract img/s':>14} {'wall s':>7} "
          f"{'ratio':>6}")
    for name in names:
        height, width = Preprocess.for_backbone(get_entry(name)).output_size(SIZE)
        raw_args = (name, str(height), str(width), str(batch_size), str(repeats), cache_dir)
        before = run_module("bench.raw_forward", *raw_args)[0]["img_per_s"]
        shutil.rmtree(Path(cache_dir) / "features", ignore_errors=True)
        out, wall_s = run_cli("extract", "--data", str(data), "--cache-dir", cache_dir, "--backbone", name,
                              "--batch-size", str(batch_size))
        after = run_module("bench.raw_forward", *raw_args)[0]["img_per_s"]
        rate = out["n"] / wall_s
        print(f"{name:<20} {f'{height}x{width}':>8} {f'{before:.1f}, {after:.1f}':>24} {rate:>14.1f} "
              f"{wall_s:>7.1f} {2 * rate / (before + after):>6.2f}")
    hit, hit_wall_s = run_cli("extract", "--data", str(data), "--cache-dir", cache_dir, "--backbone", names[-1],
                              "--batch-size", str(batch_size))
    started = time.perf_counter()
    load_dataset(data, cache_dir=cache_dir, rescan=True)
    rescan_s = time.perf_counter() - started
    started = time.perf_counter()
    load_dataset(data, cache_dir=cache_dir)
    revalidate_s = time.perf_counter() - started
    print(f"cache hit: {hit_wall_s:.2f} s wall for {hit['n']} images (features loaded in {hit['seconds']:.2f} s); "
          f"dataset re-validation from the file index {revalidate_s:.3f} s, full rescan {rescan_s:.2f} s")


def bench_approaches(data: str, image_size: int, epochs: int) -> None:
    from core.experiment import ExperimentConfig, run_experiment
    from core.report import run_records

    with tempfile.TemporaryDirectory() as cache:
        config = ExperimentConfig(data=data, approaches=("svm", "head", "finetune"), remedies=("balanced",),
                                  epochs=epochs, image_size=image_size, cache_dir=cache)
        results = run_experiment(config)
    print(f"\n# approaches on {data} (short side {image_size}px, {epochs} epochs); "
          f"feature extraction {results['extract_seconds']:.1f} s")
    print(f"{'approach':<10} {'fit s':>8} {'acc':>6} {'macroF1':>8}")
    runs = run_records(results)
    for r in runs:
        print(f"{r.approach:<10} {r.fit_seconds:>8.2f} {r.accuracy:>6.3f} {r.macro_f1:>8.3f}")
    fit = {r.approach: r.fit_seconds for r in runs}
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
    features = FeatureSet(X[:n_train], y[:n_train], X[n_train:], y[n_train:], f"synthetic-{seed}", True, 0.0, 0.0, {}, "torch")
    record = {"run_id": f"synthetic-{approach}", "approach": approach, "class_weights": [1.0] * n_classes}
    return Start(record, ExperimentConfig(data="synthetic"), dataset, features)


def bench_whatif(n_train: int, n_test: int, dim: int, n_classes: int, changes: int) -> None:
    """Seconds per class-weight change: refit on the cached features with validation folds (the SVM reuses its
    kernel), per approach; and one logistic-regression fit, ours (torch L-BFGS) against scikit-learn's."""
    import numpy as np

    from core.experiment import fit_run
    from core.whatif import refit

    print(f"\n# what-if refit per class-weight change, with {3}-fold validation, {n_train} + {n_test} x {dim} "
          f"synthetic features, {n_classes} classes ({torch.get_num_threads()} threads)")
    rng = np.random.default_rng(0)
    for approach in ("svm", "head", "logreg"):
        start = synthetic_start(n_train, n_test, dim, n_classes, approach)
        if approach != "svm":  # a start run's choices (epoch count, C): refits reuse them
            chosen = fit_run(start.config, start.dataset, start.features, approach, "none")
            record = {**start.record, "history": chosen["fitted"].history, "tuned": chosen["fitted"].tuned}
            start = dataclasses.replace(start, record=record, config=dataclasses.replace(
                start.config, logreg_c=chosen["fitted"].tuned.get("C")))
        seconds = []
        for _ in range(changes):
            started = time.perf_counter()
            refit(start, np.exp(rng.uniform(-1, 1, n_classes)))
            seconds.append(time.perf_counter() - started)
        first, rest = seconds[0], seconds[1:]
        note = {"svm": " (computes the kernel)", "head": f" ({start.head_epochs} epochs, no selection pass)",
                "logreg": f" (C = {start.config.logreg_c} kept)"}[approach]
        print(f"{approach:<6} first {first:.2f} s{note}, then median {np.median(rest):.2f} s, "
              f"max {max(rest):.2f} s over {len(rest)} changes")
    bench_logreg(synthetic_start(n_train, n_test, dim, n_classes, "logreg").features)


def bench_logreg(features) -> None:
    """One multinomial logistic-regression fit (C = 0.1): torch full-batch L-BFGS against scikit-learn's lbfgs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from core.classifiers import LogisticProbe

    X, y = features.X_train, features.y_train
    started = time.perf_counter()
    LogisticProbe(C=0.1).fit(X, y)
    ours = time.perf_counter() - started
    started = time.perf_counter()
    LogisticRegression(C=0.1, max_iter=100).fit(StandardScaler().fit_transform(X), y)
    print(f"logistic regression fit, {len(X)} x {X.shape[1]}: torch L-BFGS {ours:.2f} s, "
          f"scikit-learn lbfgs {time.perf_counter() - started:.2f} s")


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
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--height", type=int, default=224, help="working size of an 800x240 photo: 224x756")
    parser.add_argument("--width", type=int, default=756)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--photos", type=int, default=5000, help="size of the synthetic wide-photo dataset")
    parser.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
                        help="comma list of backbones to time raw forward against the whole extract command")
    parser.add_argument("--data", default="cache/datasets/digits-demo")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cache-dir", default="cache/bench")
    parser.add_argument("--whatif-size", default="4000,1000,1280,16",
                        help="train images, test images, feature dim, classes of the synthetic what-if/map features")
    parser.add_argument("--weight-changes", type=int, default=6)
    parser.add_argument("--scale-sizes", default="4000,20000",
                        help="training images of the scale curve (bench.scale; '' to skip)")
    args = parser.parse_args()
    bench_statistics()
    n_train, n_test, dim, n_classes = (int(v) for v in args.whatif_size.split(","))
    bench_whatif(n_train, n_test, dim, n_classes, args.weight_changes)
    bench_map(n_train, n_test, dim, n_classes)
    if args.scale_sizes:
        print()
        bench_runs([int(n) for n in args.scale_sizes.split(",")])
    Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        bench_forward(args.backbone, args.height, args.width, args.batch_size, args.repeats, tmp)
        photos = build_wide_photos(Path(args.cache_dir) / f"wide-{args.photos}", args.photos)
        bench_backbones(args.backbones.split(","), photos, args.batch_size, args.repeats, tmp)
    bench_finetune(args.backbone)  # small images, a few interleaved steps per mode: bounded on a loaded machine
    bench_approaches(args.data, args.image_size, args.epochs)


if __name__ == "__main__":
    main()

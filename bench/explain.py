"""`python -m bench.explain`: what "see why" costs and how well it finds planted label errors.

- Label issues on the demo with 5% of its training labels flipped (files moved to another class folder):
  precision and recall of the images reported, per approach; and how many are reported on the clean demo.
- Label issues (temperature fit + cleanlab) on 4,000 training images x 10 classes of synthetic scores.
- Heat maps of a gallery of 24 demo test images, per approach (backbone load included, then warm).

Every figure is wall-clock time on this machine; the experiment runs in a temporary cache.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from core.data import build_demo_dataset, load_dataset
from core.diagnostics import label_issue_table
from core.experiment import ExperimentConfig, run_experiment
from core.explain import explain_images, load_backbone
from core.records import RunRecord
from core.store import RunStore

APPROACHES = ("svm", "head", "logreg")
GALLERY = 24


def flip_labels(root: Path, fraction: float, seed: int) -> set[str]:
    """Move `fraction` of the training images into another (random) class folder; the file names moved."""
    rng = np.random.default_rng(seed)
    files = sorted((root / "train").glob("*/*"))
    classes = sorted(p.name for p in (root / "train").iterdir())
    moved = set()
    for path in rng.choice(files, size=round(fraction * len(files)), replace=False):
        other = rng.choice([c for c in classes if c != path.parent.name])
        target = root / "train" / other / path.name
        shutil.move(path, target)
        moved.add(str(target))
    return moved


def reported(store: RunStore, run: RunRecord) -> list[str]:
    """The training image paths a run's label-issue table reports."""
    dataset = load_dataset(run.dataset.root, cache_dir=str(store.root.parent))
    issues = label_issue_table(run, store.load_validation(run.run_id), run.calibration.temperature)
    return [dataset.train[i].path for i in issues["index"]]


def bench_label_issues(tmp: Path, fraction: float, seed: int) -> None:
    print(f"\n# label issues on the demo, {fraction:.0%} of training labels flipped (seed {seed}) and clean")
    print(f"{'data':<8} {'approach':<8} {'flipped':>8} {'reported':>9} {'precision':>10} {'recall':>7}")
    for name, flip in (("flipped", True), ("clean", False)):
        root = build_demo_dataset(tmp / f"demo-{name}")
        moved = flip_labels(root, fraction, seed) if flip else set()
        cache = tmp / f"cache-{name}"
        results = run_experiment(ExperimentConfig(data=str(root), approaches=APPROACHES, remedies=("none",),
                                                  cache_dir=str(cache)))
        store = RunStore(cache / "runs")
        runs = [store.load(run["run_id"]) for run in results["runs"]]
        for run in runs:
            found = set(reported(store, run))
            hits = len(found & moved)
            precision = f"{hits / len(found):.2f}" if found and moved else "-"
            recall = f"{hits / len(moved):.2f}" if moved else "-"
            print(f"{name:<8} {run.approach:<8} {len(moved):>8} {len(found):>9} {precision:>10} {recall:>7}")
        if flip:
            bench_heat_maps(store, runs)


def bench_heat_maps(store: RunStore, runs: list[RunRecord]) -> None:
    print(f"\n# heat maps of {GALLERY} demo test images (efficientnet_lite0, torch fp32 on the CPU)")
    for run in runs:
        model = store.load_model(run.run_id)
        table = store.load_predictions(run.run_id).head(GALLERY)
        started = time.perf_counter()
        backbone = load_backbone(run, model)
        load_s = time.perf_counter() - started
        explanations, seconds = explain_images(run, model, table["path"].tolist(), table["true"].tolist(), backbone)
        print(f"{run.approach:<8} {explanations[0].method:<10} backbone load {load_s:.2f} s, "
              f"{GALLERY} images {seconds:.2f} s ({seconds / GALLERY * 1000:.0f} ms an image)")


def bench_issue_cost(n: int = 4000, n_classes: int = 10) -> None:
    from core.calibration import fit_temperature, probabilities
    from core.label_issues import find_label_issues

    rng = np.random.default_rng(0)
    y = rng.integers(0, n_classes, n)
    scores = rng.normal(size=(n, n_classes))
    scores[np.arange(n), y] += 3.0
    find_label_issues(y[:100], probabilities(scores[:100]))  # imports cleanlab
    started = time.perf_counter()
    issues = find_label_issues(y, probabilities(scores, fit_temperature(scores, y)))
    print(f"\n# label issues on {n} training images x {n_classes} classes (temperature fit + confident learning): "
          f"{time.perf_counter() - started:.2f} s, {len(issues)} reported")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    bench_issue_cost()
    with tempfile.TemporaryDirectory() as tmp:
        bench_label_issues(Path(tmp), args.fraction, args.seed)


if __name__ == "__main__":
    main()

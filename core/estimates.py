"""Time estimates of the SVM's, logistic regression's and the head's steps before they start, and progress that says the
time left while they run.

The estimate is the cost curve bench/scale.py measured (seconds per step against training images, on a loaded
2-core machine). A speed probe (the fastest of 10 small matrix products) was tried to carry it to other
machines and dropped: under that load it varied 2-4x from one call to the next. So before the first step the
estimate holds for a machine like the one measured; while the steps run, the time left is the estimate of the
steps left scaled by how long the steps done took against theirs, which carries it to this machine and load.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

# Seconds on the measuring machine, per unit (bench/scale.py measured them): the exact kernel per n^2 * d, the
# exact fit (with its test scores) per n^EXACT_FIT_POWER, a fold's kernel slices per n_fold * n, the Nystroem
# map's fixed part (its components) and per n * d, the ridge fit per n, a logistic regression fit per n * d * k,
# a head's epoch per n (batches of 64 rows of 1,280 features, 24 classes: the per-batch cost dominates; 1.3x the
# synthetic curve's figure, as the 30k photos' head fits took 1.6-1.7x its estimate).
# The logistic fit is priced at L-BFGS's cap (100 iterations, about 110 evaluations of 1.2e-10 s per n * d * k):
# real photo features reach it (bench/photo_scale.py's 30k photos: 107-114 evaluations at every C), synthetic
# blobs stop sooner (25-58), so there the estimate is high by up to 4x.
COST = {"kernel": 8e-11, "exact_fit": 4e-7, "slice": 1e-8, "nystroem_fixed": 3.0, "nystroem_map": 5e-8,
        "ridge": 5e-5, "logreg": 1.3e-8, "head_epoch": 2.9e-5,
        "map_pca": 6e-8, "tsne_fixed": 3.0, "tsne": 3.3e-4}  # the feature map: PCA per n * d, t-SNE per n log2 n
EXACT_FIT_POWER = 1.8
STEP_OVERHEAD_S = 0.5  # each step's fixed cost on a busy machine (a 20k Nystroem fold of 0.8 s once took 4.9 s)


def svm_steps(exact: bool, n_train: int, n_features: int, n_folds: int, cached: bool = False
              ) -> list[tuple[str, float]]:
    """The SVM's steps (label, seconds on the measuring machine): the kernel (or its Nystroem map; nothing when
    `cached`), the final fit and one fit per validation fold (of (n_folds - 1) / n_folds of the images)."""
    n_fold = n_train * (n_folds - 1) / n_folds
    if exact:
        prepare = ("kernel", COST["kernel"] * n_train ** 2 * n_features)
        fit = COST["exact_fit"] * n_train ** EXACT_FIT_POWER
        fold = COST["exact_fit"] * n_fold ** EXACT_FIT_POWER + COST["slice"] * n_fold * n_train
    else:
        prepare = ("Nystroem map", COST["nystroem_fixed"] + COST["nystroem_map"] * n_train * n_features)
        fit, fold = COST["ridge"] * n_train, COST["ridge"] * n_fold
    prepare = (prepare[0], 0.0 if cached else prepare[1])
    return _with_overhead([prepare, ("fit", fit)] + [(f"fold {i + 1}/{n_folds}", fold) for i in range(n_folds)])


def logreg_steps(grid, n_train: int, n_features: int, n_classes: int, n_folds: int) -> list[tuple[str, float]]:
    """Logistic regression's steps: each C's validation folds, then the final fit (L-BFGS, ~n * d * k per fit)."""
    fit = COST["logreg"] * n_features * n_classes
    folds = n_folds * fit * n_train * (n_folds - 1) / n_folds
    return _with_overhead([(f"C = {C:g} folds", folds) for C in grid] + [("fit", fit * n_train)])


def head_steps(n_train: int, n_folds: int, fold_epochs: int, final_epochs: int) -> list[tuple[str, float]]:
    """The head's epochs: each fold head's `fold_epochs` (on (n_folds - 1) / n_folds of the images), then the
    final head's (at most `final_epochs`: the count chosen on the folds)."""
    n_fold = n_train * (n_folds - 1) / n_folds
    return ([(f"fold {fold + 1}/{n_folds} epoch {epoch + 1}", COST["head_epoch"] * n_fold)
             for fold in range(n_folds) for epoch in range(fold_epochs)]
            + [(f"epoch {epoch + 1}", COST["head_epoch"] * n_train) for epoch in range(final_epochs)])


def map_steps(n_images: int, n_features: int) -> list[tuple[str, float]]:
    """The feature map's steps: PCA to 50 dims, then Barnes-Hut t-SNE (measured on bench/photo_scale.py's photo
    features: 1k, 3k, 10k, 30k images in 4.9, 9.4, 42 and 150 s)."""
    return [("PCA", COST["map_pca"] * n_images * n_features),
            ("t-SNE", COST["tsne_fixed"] + COST["tsne"] * n_images * math.log2(max(n_images, 2)))]


def _with_overhead(steps: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(label, seconds + STEP_OVERHEAD_S) for label, seconds in steps]


def duration(seconds: float) -> str:
    """A wait as people say it: '40 s', '3 min', '1 h 05 min' (the CLI's notes and the pages' job panels)."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


UNITS = 100  # progress counts hundredths of a stage's estimated time: a time left from the rate so far agrees


@dataclass
class StepProgress:
    """`progress(stage, done, total, note)` over steps with estimated seconds: `start()` reports the estimate before
    the first step, `advance()` after each step, with the time left (estimate of the steps left, times how long the
    steps done took against theirs). `done` of `total` = UNITS is the estimated share of the steps done: with
    steps of unequal cost (a kernel, then quick folds) a count of steps would make a job's rate-based time left
    (core.jobs) and the CLI's bar contradict this note."""

    progress: Callable | None
    stage: str
    steps: list[tuple[str, float]]
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def estimate_seconds(self) -> float:
        return sum(seconds for _, seconds in self.steps)

    def start(self, what: str) -> None:
        self.started = time.perf_counter()
        self._report(f"{what}; estimate about {duration(self.estimate_seconds)}")

    def advance(self) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        expected_so_far = sum(seconds for _, seconds in self.steps[:self.done])
        left = sum(seconds for _, seconds in self.steps[self.done:])
        left *= elapsed / expected_so_far if expected_so_far > 0 else 1.0
        following = f"{self.steps[self.done][0]} next, " if self.done < len(self.steps) else ""
        self._report(f"{following}about {duration(left)} left" if left > 0 else "done")

    def finish(self) -> None:
        """Report the last step done (when the steps left were not needed)."""
        if self.done < len(self.steps):
            self.done = len(self.steps) - 1
            self.advance()

    def _report(self, note: str) -> None:
        if self.progress:
            total = self.estimate_seconds
            share = sum(s for _, s in self.steps[:self.done]) / total if total > 0 else self.done / len(self.steps)
            self.progress(self.stage, round(UNITS * share), UNITS, note)

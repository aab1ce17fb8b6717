"""`python -m bench.scale`: how each approach's fit and validation folds grow with the training images, and peak memory.

Synthetic features stand in for a photo set's (1,280-d, 24 classes, 700x imbalance, each class a few clusters so
that accuracy means something): per size, every approach x remedy runs as the experiment runs it (`fit_run`:
fit, validation folds, decision rule, cross-fitted validation; the SVM's kernel or Nystroem map computed once per
size and reused by the second remedy, as in an experiment), timed, with the peak resident memory of the process
during the run (Linux `VmHWM`, reset before each run). Then the exact SVM against its Nystroem approximation
where both are affordable, and the SVM this replaced (LinearSVC past 20k images) in a child process with a
time limit.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

APPROACHES = ("svm", "logreg", "head")
DIM, CLASSES, IMBALANCE, REMEDIES = 1280, 24, 700.0, ("none", "balanced")  # a photo set's features, as issue 32's


def synthetic_problem(n_train: int, n_test: int, dim: int, n_classes: int, imbalance: float, seed: int = 0):
    """(config, dataset, features) of imbalanced class clusters of `dim` features (no images, no backbone).

    Class counts fall geometrically from the largest to 1 / `imbalance` of it (at least 3 training and 1 test
    image each); each class is 3 Gaussian blobs (centres 0.25 x a standard normal) in unit noise.
    """
    from core.data import Dataset, Sample
    from core.experiment import ExperimentConfig
    from core.features import FeatureSet

    rng = np.random.default_rng(seed)
    share = np.geomspace(1.0, 1.0 / imbalance, n_classes)
    share /= share.sum()
    counts = [np.maximum(np.round(n * share).astype(int), least) for n, least in ((n_train, 3), (n_test, 1))]
    y_train, y_test = (rng.permutation(np.repeat(np.arange(n_classes), c)) for c in counts)
    y = np.concatenate([y_train, y_test])
    centers = rng.normal(size=(n_classes * 3, dim)) * 0.25
    X = (centers[y * 3 + rng.integers(0, 3, len(y))] + rng.normal(size=(len(y), dim))).astype(np.float32)
    classes = [f"class-{i:02d}" for i in range(n_classes)]
    samples = [Sample(f"synthetic/{i}.png", int(label), (96, 32)) for i, label in enumerate(y)]
    n = len(y_train)
    dataset = Dataset("synthetic", classes, samples[:n], samples[n:], fingerprint=f"synthetic-{seed}")
    features = FeatureSet(X[:n], y_train, X[n:], y_test, f"synthetic-{n}-{seed}", True, 0.0, 0.0, {}, "torch")
    return ExperimentConfig(data="synthetic"), dataset, features


def reset_peak_memory() -> None:
    """Start a new peak of resident memory (`VmHWM`) for this process (Linux: /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def peak_memory_gb() -> float:
    """This process's peak resident memory since the last reset, in GB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024 / 1e9


class StepClock:
    """A progress callback that keeps when each SVM step ended (and the first note: the model and estimate)."""

    def __init__(self):
        self.times, self.first_note = [], ""

    def __call__(self, stage: str, done: int, total: int, note: str = "") -> None:
        if stage in ("fit SVM", "fit logistic regression", "fit head"):
            self.first_note = self.first_note or note
            self.times.append(time.perf_counter())

    def step_seconds(self) -> list[float]:
        return np.diff(self.times).tolist()


def bench_runs(sizes, dim: int = DIM, n_classes: int = CLASSES, imbalance: float = IMBALANCE, remedies=REMEDIES,
               approaches=APPROACHES) -> list[dict]:
    """Every approach x remedy at every size, as `fit_run` runs it; one row each, printed as it finishes."""
    import core.classifiers
    from core.approaches import LOGREG_C_GRID
    from core.estimates import head_steps, logreg_steps, svm_steps
    from core.experiment import fit_run
    from core.stats import point_scores
    from core.tuning import cv_splits

    print(f"# approaches x remedies on synthetic features ({dim}-d, {n_classes} classes, {imbalance:.0f}x "
          "imbalance; test images = training / 4); each run as the experiment runs it")
    print(f"{'train n':>8} {'approach':<8} {'remedy':<9} {'wall s':>7} {'fit s':>7} {'folds s':>8} {'choose s':>9} "
          f"{'peak GB':>8} {'macroF1':>8}  model / estimate (step seconds)")
    rows = []
    for n in sizes:
        core.classifiers.KERNEL_CACHE = core.classifiers.KernelCache()  # a new size: free the last one's kernel
        config, dataset, features = synthetic_problem(n, n // 4, dim, n_classes, imbalance)
        for approach in approaches:
            for remedy in remedies:
                clock = StepClock()
                reset_peak_memory()
                started = time.perf_counter()
                run = fit_run(config, dataset, features, approach, remedy, progress=clock)
                wall = time.perf_counter() - started
                fitted = run["fitted"]
                row = {"n": n, "approach": approach, "remedy": remedy, "wall_s": wall, "peak_gb": peak_memory_gb(),
                       "fit_s": fitted.fit_seconds, "validation_s": fitted.validation_seconds,
                       "selection_s": fitted.selection_seconds,
                       "macro_f1": point_scores(features.y_test, run["y_pred"], n_classes)["macro_f1"]}
                folds = len(cv_splits(features.y_train, config.seed))
                exact = approach == "svm" and "Nystroem" not in fitted.extras["svm_model"]
                steps = {"svm": lambda: svm_steps(exact, n, dim, folds, cached=remedy != remedies[0]),
                         "logreg": lambda: logreg_steps(LOGREG_C_GRID, n, dim, n_classes, folds),
                         "head": lambda: head_steps(n, folds, config.epochs, config.epochs)}[approach]()
                row.update(model=fitted.extras.get("svm_model", approach), step_s=clock.step_seconds(),
                           estimate_s=sum(s for _, s in steps), measured_s=clock.times[-1] - clock.times[0])
                note = (f"{'exact; ' if exact else 'Nystroem; ' if approach == 'svm' else ''}estimate "
                        f"{row['estimate_s']:.0f} s, measured {row['measured_s']:.0f} s "
                        f"({row['measured_s'] / row['estimate_s']:.2f}x)")
                if approach != "head":  # its steps are epochs
                    note += "; steps " + ", ".join(f"{s:.1f}" for s in row["step_s"])
                print(f"{n:>8} {approach:<8} {remedy:<9} {wall:>7.1f} {row['fit_s']:>7.1f} {row['validation_s']:>8.1f} "
                      f"{row['selection_s']:>9.1f} {row['peak_gb']:>8.2f} {row['macro_f1']:>8.3f}  {note}", flush=True)
                rows.append(row)
    return rows


def bench_exact_vs_approximate(sizes, dim: int, n_classes: int, imbalance: float) -> None:
    """The exact RBF SVM and its Nystroem approximation on the same features (balanced weights): test accuracy,
    macro-F1, how often they agree, and the seconds of each (kernel or map, fit, test scores)."""
    from core.classifiers import SvmClassifier, nystroem_features, rbf_kernels
    from core.stats import point_scores
    from core.weights import class_weights

    print("\n# exact RBF SVM vs its Nystroem approximation (balanced weights, C = 1), same features")
    print(f"{'train n':>8} {'model':<10} {'prepare s':>10} {'fit+test s':>11} {'peak GB':>8} {'acc':>6} {'macroF1':>8} "
          f"{'agree':>6}")
    for n in sizes:
        _, dataset, features = synthetic_problem(n, n // 4, dim, n_classes, imbalance)
        weights = class_weights("balanced", dataset.train_counts)
        predictions = {}
        for solver, prepare in (("exact", rbf_kernels), ("nystroem", nystroem_features)):
            reset_peak_memory()
            started = time.perf_counter()
            kernels = prepare(features.X_train)
            fit_started = time.perf_counter()
            svm = SvmClassifier(class_weight=weights, solver=solver).fit(features.X_train, features.y_train,
                                                                         kernels=kernels)
            predictions[solver] = svm.predict(features.X_test)
            done = time.perf_counter()
            scores = point_scores(features.y_test, predictions[solver], n_classes)
            agree = (predictions[solver] == predictions["exact"]).mean()
            print(f"{n:>8} {solver:<10} {fit_started - started:>10.1f} {done - fit_started:>11.1f} "
                  f"{peak_memory_gb():>8.2f} {scores['accuracy']:>6.3f} {scores['macro_f1']:>8.3f} {agree:>6.3f}",
                  flush=True)
            del kernels, svm


def old_linear_svc(n: int, dim: int, n_classes: int, imbalance: float, limit_s: float) -> None:
    """The SVM before this change past 20k images: StandardScaler + LinearSVC (liblinear), balanced weights, in a
    child process stopped after `limit_s`."""
    code = ("import time, sys; from bench.scale import synthetic_problem; "
            "from sklearn.pipeline import make_pipeline; from sklearn.preprocessing import StandardScaler; "
            "from sklearn.svm import LinearSVC; "
            f"_, _, f = synthetic_problem({n}, {n // 4}, {dim}, {n_classes}, {imbalance}); "
            "t = time.perf_counter(); "
            "m = make_pipeline(StandardScaler(), LinearSVC(class_weight='balanced', random_state=0)).fit(f.X_train, "
            "f.y_train); print(f'{time.perf_counter() - t:.0f} s, {m[-1].n_iter_} iterations')")
    print(f"\n# the SVM this replaces past 20k images: LinearSVC on {n:,} x {dim} standardised features, one fit "
          f"(an experiment ran 4 per remedy: the fit and 3 folds)", flush=True)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=limit_s)
        print(done.stdout.strip() or done.stderr.strip()[-300:])
    except subprocess.TimeoutExpired:
        print(f"not finished after {limit_s:.0f} s (stopped)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="4000,10000,20000,30000", help="training images per step of the curve")
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--classes", type=int, default=CLASSES)
    parser.add_argument("--imbalance", type=float, default=IMBALANCE)
    parser.add_argument("--remedies", default=",".join(REMEDIES))
    parser.add_argument("--approaches", default=",".join(APPROACHES), help=f"of {', '.join(APPROACHES)}")
    parser.add_argument("--compare-sizes", default="4000,10000,15000",
                        help="sizes at which the exact SVM and its approximation both run ('' for none)")
    parser.add_argument("--old-svm-size", type=int, default=22000, help="0 to skip the LinearSVC this replaces")
    parser.add_argument("--old-svm-limit", type=float, default=600.0, help="seconds before it is stopped")
    args = parser.parse_args(argv)
    parse = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    bench_runs(parse(args.sizes), args.dim, args.classes, args.imbalance, args.remedies.split(","),
               args.approaches.split(","))
    if args.compare_sizes:
        bench_exact_vs_approximate(parse(args.compare_sizes), args.dim, args.classes, args.imbalance)
    if args.old_svm_size:
        old_linear_svc(args.old_svm_size, args.dim, args.classes, args.imbalance, args.old_svm_limit)


if __name__ == "__main__":
    main()

"""`python -m bench.photo_scale`: the default grid end to end on a 30k-image synthetic photo set.

Builds small JPEG photos (64x48, 24 classes, 700x imbalance, single-folder layout; `bench.wide_photos`), then
runs `experiment --approaches svm,logreg,head --remedy none,balanced` in this process as the CLI runs it, and
after it the pages' other steps on the same features: near-duplicates, the feature map (t-SNE) and the lab
report. Prints the wall time and peak resident memory (Linux `VmHWM`) of every step, the estimate each fit
showed before it started against its measured time, and the peak memory of the whole experiment.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.scale import peak_memory_gb, reset_peak_memory
from bench.wide_photos import build_small_photos

FIT_STAGES = ("fit SVM", "fit logistic regression", "fit head")  # the stages whose first note is an estimate


class Timeline:
    """A progress callback that splits the job into steps at each stage change: per step its wall time, its peak
    resident memory (reset when a step starts) and the note it started with (a fit's estimate)."""

    def __init__(self):
        self.steps: list[dict] = []

    def __call__(self, stage: str, done: int, total: int, note: str = "") -> None:
        now = time.perf_counter()
        if stage == "runs trained":  # the job-wide count (core.jobs.OVERALL_STAGE) closes a run's last step
            self.close(now, "record the run (scores, intervals, diagnostics, save)" if done else None)
            return
        if not self.steps or self.steps[-1]["stage"] != stage or self.steps[-1].get("ended"):
            self.close(now, None)
            self.steps.append({"stage": stage, "started": now, "note": note, "peak_gb": 0.0})
            reset_peak_memory()
        self.steps[-1].update(last=now, done=done, total=total)

    def close(self, now: float, tail: str | None) -> None:
        """End the open step; `tail` names the time from its last report to `now` as a step of its own."""
        if self.steps and not self.steps[-1].get("ended"):
            step = self.steps[-1]
            step.update(ended=step["last"], peak_gb=peak_memory_gb())
            if tail:
                self.steps.append({"stage": tail, "started": step["last"], "last": now, "ended": now, "note": "",
                                   "peak_gb": peak_memory_gb()})
            reset_peak_memory()


def timed(name: str, function, *args):
    """Run one step outside the experiment (`function(*args, progress=...)`); print its wall time, peak memory and
    the first note it reported (an estimate, where it gives one); return its result."""
    notes = []
    reset_peak_memory()
    started = time.perf_counter()
    result = function(*args, progress=lambda stage, done, total, note="": notes.append(note))
    print(f"{name:<58} {time.perf_counter() - started:>8.1f} {peak_memory_gb():>8.2f}  {(notes or [''])[0]}",
          flush=True)
    return result


def run(out: Path, n_images: int, feature_map: bool) -> None:
    from core.config import ExperimentConfig, load_data, load_features
    from core.duplicates import build_matches
    from core.experiment import run_experiment
    from core.featuremap import map_feature_set
    from core.findings import store_comparer
    from core.report import render_runs_report, run_records
    from core.store import RunStore

    print(f"{'step':<58} {'wall s':>8} {'peak GB':>8}  estimate shown before it")
    started = time.perf_counter()
    data = build_small_photos(out / f"small-photos-{n_images}", n_images)
    print(f"{f'build {n_images:,} small photos (not part of the tool)':<58} {time.perf_counter() - started:>8.1f}")
    config = ExperimentConfig(data=str(data), approaches=("svm", "logreg", "head"), remedies=("none", "balanced"),
                              cache_dir=str(out / "cache"))
    timeline, started = Timeline(), time.perf_counter()
    results = run_experiment(config, progress=timeline)
    total = time.perf_counter() - started
    timeline.close(time.perf_counter(), None)
    for step in timeline.steps:
        wall = step["ended"] - step["started"]
        estimate = step["note"] if step["stage"] in FIT_STAGES else ""
        print(f"{step['stage'][:58]:<58} {wall:>8.1f} {step['peak_gb']:>8.2f}  {estimate}", flush=True)
    extraction = sum(s["ended"] - s["started"] for s in timeline.steps if s["stage"] == "extract features")
    print(f"{'whole experiment':<58} {total:>8.1f} {max(s['peak_gb'] for s in timeline.steps):>8.2f}  "
          f"({total - extraction:.0f} s after extraction)", flush=True)
    for record in run_records(results):
        print(f"  {record.approach:<7} {record.remedy:<9} macro-F1 {record.macro_f1:.3f}  accuracy "
              f"{record.accuracy:.3f}  fit {record.fit_seconds:.1f} s  validation {record.validation_seconds:.1f} s"
              f"{'  ' + record.svm_model if record.svm_model else ''}")
    dataset = load_data(config)
    features = load_features(config, dataset)
    timed("near-duplicates (test against training)", build_matches, features.X_train, features.X_test,
          config.cache_dir, features.key)
    if feature_map:
        timed("feature map (PCA + t-SNE of every image)", map_feature_set, features, config.cache_dir)
    store = RunStore(Path(config.cache_dir) / "runs")
    timed("lab report (HTML, paired tests)",
          lambda progress: render_runs_report(run_records(results), "html", store_comparer(store)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=30000, help="photos in the set (about 80%% train)")
    parser.add_argument("--out", default="cache/bench", help="where the photos and the cache go")
    parser.add_argument("--no-feature-map", action="store_true", help="skip the t-SNE map (minutes at 30k)")
    args = parser.parse_args(argv)
    run(Path(args.out), args.images, not args.no_feature_map)


if __name__ == "__main__":
    main()

"""Class-weight what-if: refit a feature-based run with new per-class weights (and tau) in about a second.

Start from a stored svm or head run, refit on its cached features (the SVM reuses the RBF kernels of
the feature set, see `core.classifiers.KERNEL_CACHE`), and compare with the starting run. Nothing is
stored until `save_as_run`.

Refits share one slot per server process that the owner gets first (`core.sharing.PrioritySlot`).
The test scores of recent refits are kept by (run, weights) in `REFITS`: the same weights again, or
another tau (a post-hoc adjustment of the scores), cost no refit.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from core.analysis import metric_deltas
from core.classifiers import chosen_epochs
from core.data import Dataset
from core.errors import ClassWeightError, ConfigError, TransferScopeError
from core.experiment import FEATURE_APPROACHES, ExperimentConfig, fit_approach, load_features, train_and_record
from core.features import FeatureSet
from core.metrics import evaluate
from core.runs import RunStore
from core.sharing import PrioritySlot
from core.settings import LOGIT_APPROACHES
from core.stats import paired_comparison
from core.weights import adjust_logits, class_weights

SEED_SCHEMES = ("none", "balanced", "sqrt", "effective")
WEIGHT_RANGE = (0.01, 100.0)  # what the sliders offer, on a log scale
REFIT_WAIT_S = 30.0
SAVED_LABEL = "custom:what-if"
REFIT_SLOT = PrioritySlot()  # one refit at a time per server process; the owner goes first


class LruCache:
    """A small thread-safe cache of the last `max_entries` values by key (a module global: no browser clears it)."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
            return self._entries.get(key)

    def put(self, key, value) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


REFITS = LruCache(16)  # (run, feature key, weights) -> (test scores, refit seconds): 1.6 MB at 20k x 10
PAIRED = LruCache(16)  # (run, tuned predictions) -> the paired test against the start


@dataclass(frozen=True)
class Start:
    """A stored run and what refitting it needs: its settings, dataset, cached features and test predictions.

    `config` is the run's, except that values a `--tune` run chose by cross-validation are fixed
    (refits never cross-validate again); `start_pred` (None when unknown) feeds the paired test.
    """

    record: dict
    config: ExperimentConfig
    dataset: Dataset
    features: FeatureSet
    start_pred: np.ndarray | None = None

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def head_epochs(self) -> int | None:
        """The epoch count the start head chose (refits reuse it: no selection pass); None for svm runs."""
        return chosen_epochs(self.record.get("history", [])) if self.record["approach"] == "head" else None

    def notes(self) -> list[str]:
        """What refits reuse from the start run instead of choosing again, in plain words."""
        notes, tuned = [], self.record.get("tuned", {})
        if self.record.get("config", {}).get("tune") and tuned:
            chosen = ", ".join(f"{'C' if name == 'svm_c' else name} = {tuned[name]:g}"
                               for name in ("svm_c", "tau") if name in tuned)
            notes.append(f"This run chose {chosen} by cross-validation on its training set; refits reuse "
                         "that choice and do not cross-validate again.")
        if self.head_epochs:
            notes.append(f"The head refits for the {self.head_epochs} epochs early stopping chose for this run "
                         "(no new selection pass).")
        return notes


def run_config(record: dict, cache_dir) -> ExperimentConfig:
    """The ExperimentConfig a run was made with (settings unknown to this version are ignored)."""
    names = {field.name for field in dataclasses.fields(ExperimentConfig)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in record.get("config", {}).items() if k in names}
    return ExperimentConfig(**{**values, "cache_dir": str(cache_dir)})


def _refit_config(record: dict, cache_dir) -> ExperimentConfig:
    """The run's config with what `--tune` chose (the SVM's C) fixed and tuning off; tau comes from the record."""
    config = run_config(record, cache_dir)
    if not config.tune:
        return config
    return dataclasses.replace(config, tune=False, svm_c=record.get("tuned", {}).get("svm_c", config.svm_c))


def start_from(record: dict, dataset: Dataset, cache_dir, predictions: pd.DataFrame | None = None) -> Start:
    """Load the cached features of a feature-based run; never extracts (raises when they are gone).

    `predictions` is the run's stored table (`RunStore.load_predictions`), for the paired test of each refit.

    >>> start = start_from(store.load(run_id), load_dataset(root), "cache", store.load_predictions(run_id))  # doctest: +SKIP
    """
    if record["approach"] not in FEATURE_APPROACHES:
        raise ConfigError(f"what-if refits need a run on cached features ({' or '.join(FEATURE_APPROACHES)}); "
                          f"run {record['run_id']} is a {record['approach']} run")
    if dataset.fingerprint != record["dataset"].get("fingerprint"):
        raise ConfigError(f"the images in {record['dataset']['root']!r} changed since run {record['run_id']}; "
                          "train a new run on the current dataset first")

    def refuse_extraction(stage: str, done: int, total: int) -> None:
        if done < total:
            raise ConfigError(f"the features of run {record['run_id']} are no longer cached under {cache_dir}; "
                              "train a new run (it extracts them again)")

    config = _refit_config(record, cache_dir)
    features = load_features(config, dataset, progress=refuse_extraction)
    if features.key != record["feature_key"]:
        raise ConfigError(f"the cached features ({features.key}) are not those of run {record['run_id']} "
                          f"({record['feature_key']}); train a new run")
    same_images = predictions is not None and predictions["path"].tolist() == [s.path for s in dataset.test]
    return Start(record, config, dataset, features, predictions["pred"].to_numpy(dtype=int) if same_images else None)


def seed_weights(start: Start, scheme: str) -> np.ndarray:
    """Per-class weights to start tuning from: a built-in scheme, or 'run' for the run's own weights."""
    if scheme == "run":
        return np.asarray(start.record["class_weights"], dtype=float)
    if scheme not in SEED_SCHEMES:
        raise ClassWeightError(f"unknown seed scheme {scheme!r}; choose run or one of: {', '.join(SEED_SCHEMES)}")
    return class_weights(scheme, start.dataset.train_counts, start.classes, beta=start.config.beta)


def check_weights(weights, n_classes: int) -> np.ndarray:
    """Validate a per-class weight vector: one finite number >= 0 per class, not all 0."""
    weights = np.asarray(weights, dtype=float)
    if weights.shape != (n_classes,) or not np.isfinite(weights).all() or (weights < 0).any() or not weights.any():
        raise ClassWeightError(f"give one finite weight >= 0 per class ({n_classes}), not all 0; "
                               f"got {weights.tolist()}")
    return weights


def _check_tau(tau, approach: str) -> float:
    """A valid tau, as applied: 0 for the SVM, whose scores are not logits (as in `core.experiment`)."""
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
        raise ConfigError(f"logit-adjustment tau must be a finite number >= 0, got {tau!r}")
    return float(tau) if approach in LOGIT_APPROACHES else 0.0


@functools.cache
def torch_mkl():
    """torch's bundled MKL when it exports per-thread limits (`MKL_Set_Num_Threads_Local`), else None."""
    if not torch.backends.mkl.is_available():
        return None
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    except OSError:
        return None
    return library if hasattr(library, "MKL_Set_Num_Threads_Local") else None


@contextlib.contextmanager
def _one_torch_thread():
    """Torch ops of this thread run on one thread meanwhile; other threads and the process default are untouched.

    `torch.set_num_threads` would also change the default that every thread takes on its first torch
    use (a training job starting meanwhile would keep one thread). Per-thread limits instead: OpenMP's
    (`omp_set_num_threads`, via threadpoolctl) and MKL's (`MKL_Set_Num_Threads_Local`); OpenMP alone
    still let MKL's matrix products contend (refits of 2-12 s).
    """
    torch.get_num_threads()  # torch sets a thread's counts on its first use: let that happen before the limit
    mkl = torch_mkl()
    with threadpool_limits(limits=1, user_api="openmp"):
        previous = mkl.MKL_Set_Num_Threads_Local(1) if mkl else None
        try:
            yield
        finally:
            if mkl:
                mkl.MKL_Set_Num_Threads_Local(previous)


@contextlib.contextmanager
def _refit_slot(owner: bool = True):
    """Hold the server's one refit slot (owners first), with this thread's torch on one thread meanwhile.

    On a busy 2-core box the head's small matrices train far faster on one thread than on two that
    contend with other work (4k x 1280 features, 9 epochs: 0.55-1.0 s against 0.5-49 s).
    """
    if not REFIT_SLOT.acquire(owner, timeout_s=REFIT_WAIT_S):
        raise TransferScopeError(f"other sessions kept the server busy refitting for {REFIT_WAIT_S:.0f} s; try again")
    try:
        with _one_torch_thread():
            yield
    finally:
        REFIT_SLOT.release()


def refit(start: Start, weights, tau: float = 0.0, *, owner: bool = True, admit=None) -> dict:
    """The run's approach refit with `weights` (one per class): its test metrics and predictions.

    The result is `evaluate()`'s dict plus `y_pred`, `weights`, `tau` (as applied: 0 for the SVM),
    `refit_seconds` (of the fit, also when it came from `REFITS`) and `cached`. A head refits for the
    start run's chosen epoch count (`Start.head_epochs`). `owner` goes before waiting viewers;
    `admit()`, called only when a fit is needed, may refuse it by raising (a viewer's rate limit).
    """
    weights, tau = check_weights(weights, len(start.classes)), _check_tau(tau, start.record["approach"])
    key = (start.record["run_id"], start.features.key, weights.tobytes())
    cached = REFITS.get(key)
    if cached is None and admit is not None:
        admit()
    scores, refit_s = cached or _fit_scores(start, weights, key, owner)
    return {**rescore(start, scores, tau), "weights": weights, "refit_seconds": refit_s, "cached": bool(cached)}


def _fit_scores(start: Start, weights: np.ndarray, key: tuple, owner: bool) -> tuple[np.ndarray, float]:
    """Fit in the refit slot and keep the test scores in REFITS (unless another session just did)."""
    with _refit_slot(owner):
        if (done := REFITS.get(key)) is not None:
            return done
        started = time.perf_counter()
        fitted = fit_approach(start.config, start.dataset, start.features, start.record["approach"], weights,
                              head_epochs=start.head_epochs)
        result = (fitted["scores"], time.perf_counter() - started)
    REFITS.put(key, result)
    return result


def rescore(start: Start, scores: np.ndarray, tau: float) -> dict:
    """Test metrics and `y_pred` of refit `scores` after the post-hoc adjustments (tau), without refitting.

    Further post-hoc adjustments of the scores (e.g. per-class offsets) belong here, after tau.
    """
    train_counts = start.dataset.train_counts
    y_pred = adjust_logits(scores, train_counts, tau).argmax(axis=1)
    return {**evaluate(start.features.y_test, y_pred, start.classes, train_counts), "y_pred": y_pred, "tau": tau}


def per_class_deltas(record: dict, outcome: dict) -> pd.DataFrame:
    """One row per class: minority flag, start and new weight, new P/R/F1 and their change from the start."""
    rows = []
    for before, after, old_w, new_w in zip(record["per_class"], outcome["per_class"], record["class_weights"],
                                           outcome["weights"]):
        row = {"class": before["class"], "minority": before["minority"], "start weight": old_w, "weight": new_w}
        for metric in ("precision", "recall", "f1"):
            row[metric] = after[metric]
            row[f"Δ {metric}"] = after[metric] - before[metric]
        rows.append(row)
    return pd.DataFrame(rows)


def compare_with_start(start: Start, outcome: dict) -> dict:
    """What changed: headline metric deltas, per-class deltas, confusion counts (tuned − start), and
    `paired`: McNemar's test and paired bootstrap intervals of tuned (B) minus start (A), None without
    the start's predictions (see `core.stats.paired_comparison`)."""
    record = start.record
    return {"headline": metric_deltas(record, outcome), "per_class": per_class_deltas(record, outcome),
            "confusion_change": (np.asarray(outcome["confusion_matrix"])
                                 - np.asarray(record["confusion_matrix"])).tolist(), "paired": _paired(start, outcome)}


def _paired(start: Start, outcome: dict) -> dict | None:
    """The paired test of the tuned predictions against the start's, computed once per predictions (`PAIRED`)."""
    if start.start_pred is None:
        return None
    y_pred = np.asarray(outcome["y_pred"])
    key = (start.record["run_id"], hashlib.sha256(y_pred.tobytes()).hexdigest())
    paired = PAIRED.get(key)
    if paired is None:
        paired = paired_comparison(start.features.y_test, start.start_pred, y_pred, len(start.classes),
                                   seed=start.record.get("seed", 0))
        PAIRED.put(key, paired)
    return paired


def save_as_run(start: Start, weights, tau: float, store: RunStore) -> dict:
    """Store the tuned model as a normal run (custom weights recorded per class); its record.

    It is the model `refit` showed: a head trains for the start's chosen epochs (recorded as `epochs`).
    """
    weights, tau = check_weights(weights, len(start.classes)), _check_tau(tau, start.record["approach"])
    table = {name: float(w) for name, w in zip(start.classes, weights)}
    config = dataclasses.replace(start.config, class_weights=(table,), tau=tau,
                                 epochs=start.head_epochs or start.config.epochs)
    with _refit_slot(owner=True):
        return train_and_record(config, start.dataset, start.features, start.record["approach"], SAVED_LABEL,
                                weights, store, head_epochs=start.head_epochs)

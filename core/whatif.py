"""Class-weight what-if: refit a feature-based run with new per-class weights (and tau), in about a second on a
few thousand images.

Start from a stored svm or head run, refit on its cached features (the SVM reuses the RBF train kernel of
the run's training rows, see `core.classifiers.KERNEL_CACHE`), and compare with the starting run. Nothing is
stored until `save_as_run`.

Refits share one slot per server process that the owner gets first (`core.sharing.PrioritySlot`).
The raw scores of recent refits are kept by (run, weights) in `REFITS`: the same weights again cost
no refit, and tau and offsets only `rescore` them (post-hoc adjustments: they never fit anything).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.analysis import metric_deltas
from core.metric_labels import HEADLINE_METRICS
from core.classifiers import choose_svm
from core.data import Dataset
from core.estimates import duration, head_steps, logreg_steps, svm_steps
from core.errors import ClassWeightError, ConfigError, TransferScopeError
from core import approaches
from core.experiment import ExperimentConfig, fit_run, load_features, train_and_record
from core.features import FeatureSet
from core.metrics import evaluate
from core.records import RunRecord, class_rows
from core.store import RunStore
from core.remedies import TRAINING_CORRECTIONS, Remedy, decide, parse_remedy
from core.sharing import PrioritySlot
from core.stats import METRICS, paired_comparison, point_scores
from core.torch_threads import one_torch_thread
from core.tuning import cv_splits
from core.weights import SCHEMES, class_weights, normalise_weights

WEIGHT_RANGE = (0.01, 100.0)  # what the sliders offer, on a log scale
REFIT_WAIT_S = 30.0
SAVED_LABEL = "custom:what-if"
LIVE_REFIT_S = 10.0  # a refit estimated longer (on the loaded measuring machine) waits for a button, not a slider
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


REFITS = LruCache(16)  # (run, feature key, weights) -> a refit's raw scores: test + out-of-fold, ~3 MB at 20k x 10
PAIRED = LruCache(16)  # (run, tuned predictions) -> the paired test against the start


@dataclass(frozen=True)
class Start:
    """A stored run and what refitting it needs: its settings, dataset, cached features and test predictions.

    `config` is the run's, except that values a `--tune` run chose by cross-validation are fixed
    (refits never cross-validate again); `start_pred` (None when unknown) feeds the paired test.
    """

    record: RunRecord
    config: ExperimentConfig
    dataset: Dataset
    features: FeatureSet
    start_pred: np.ndarray | None = None

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def training_remedy(self) -> Remedy:
        """The start run's training-side remedy parts (resample, la-loss) under the what-if label; the weights,
        tau and offsets are the user's."""
        # a refit keeps its start run's training parts
        parts = parse_remedy(self.record.remedy or "none").parts & set(TRAINING_CORRECTIONS)
        return Remedy("+".join([SAVED_LABEL, *sorted(parts)]), SAVED_LABEL, parts)

    @property
    def head_epochs(self) -> int | None:
        """The epoch count the start head trained for (refits, their folds included, train that many: nothing is
        chosen again); None for other approaches."""
        if self.record.approach != "head":
            return None
        return (self.record.tuned or {}).get("epochs") or _early_stopped_epochs(self.record.history)

    def notes(self) -> list[str]:
        """What refits reuse from the start run instead of choosing again, in plain words."""
        notes, tuned = [], self.record.tuned or {}
        if self.record.setting("tune") and tuned:
            chosen = ", ".join(f"{'C' if name == 'svm_c' else name} = {tuned[name]:g}"
                               for name in ("svm_c", "tau") if name in tuned)
            notes.append(f"This run chose {chosen} by cross-validation on its training set; refits reuse "
                         "that choice and do not cross-validate again.")
        if self.head_epochs:
            notes.append(f"The head refits for the {self.head_epochs} epochs chosen on this run's training folds, "
                         "and so do its validation folds (no new choice), so unchanged weights give the run's own "
                         "validation.")
        return notes


def _early_stopped_epochs(history: list[dict]) -> int | None:
    """Runs stored before the epoch count was chosen on folds: the epoch their early stopping kept (lowest
    validation loss, else training loss, of the selection pass recorded as `history`)."""
    return min(history, key=lambda row: row.get("val_loss", row["train_loss"]))["epoch"] if history else None


def run_config(record: RunRecord, cache_dir) -> ExperimentConfig:
    """The ExperimentConfig a run was made with (settings unknown to this version are ignored)."""
    names = {field.name for field in dataclasses.fields(ExperimentConfig)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in (record.config or {}).items() if k in names}
    return ExperimentConfig(**{**values, "cache_dir": str(cache_dir)})


def _refit_config(record: RunRecord, cache_dir) -> ExperimentConfig:
    """The run's config with what cross-validation chose (the SVM's C under `--tune`, logistic regression's C)
    fixed and tuning off; tau comes from the record."""
    config, tuned = run_config(record, cache_dir), record.tuned or {}
    return dataclasses.replace(config, tune=False, svm_c=tuned.get("svm_c", config.svm_c),
                               logreg_c=tuned.get("C", config.logreg_c))


def start_from(record: RunRecord, dataset: Dataset, cache_dir, predictions: pd.DataFrame | None = None) -> Start:
    """Load the cached features of a feature-based run; never extracts (raises when they are gone).

    `predictions` is the run's stored table (`RunStore.load_predictions`), for the paired test of each refit.

    >>> start = start_from(store.load(run_id), load_dataset(root), "cache", store.load_predictions(run_id))  # doctest: +SKIP
    """
    on_features = approaches.names(on_features=True)
    if record.approach not in on_features:
        raise ConfigError(f"what-if refits need a run on cached features ({', '.join(on_features)}); "
                          f"run {record.run_id} is a {record.approach} run")
    if dataset.fingerprint != record.dataset.fingerprint:
        raise ConfigError(f"the images in {record.dataset.root!r} changed since run {record.run_id}; "
                          "train a new run on the current dataset first")

    def refuse_extraction(stage: str, done: int, total: int) -> None:
        if done < total:
            raise ConfigError(f"the features of run {record.run_id} are no longer cached under {cache_dir}; "
                              "train a new run (it extracts them again)")

    config = _refit_config(record, cache_dir)
    features = load_features(config, dataset, progress=refuse_extraction)
    if features.key != record.feature_key:
        raise ConfigError(f"the cached features ({features.key}) are not those of run {record.run_id} "
                          f"({record.feature_key}); train a new run")
    same_images = predictions is not None and predictions["path"].tolist() == [s.path for s in dataset.test]
    return Start(record, config, dataset, features, predictions["pred"].to_numpy(dtype=int) if same_images else None)


def newest_feature_run(records: list[RunRecord], fingerprint: str) -> RunRecord | None:
    """The newest svm or head run (of `records`, newest first) on the dataset with `fingerprint`, or None.

    Its cached features are the dataset's features for the near-duplicate check.
    """
    return next((record for record in records if record.approach in approaches.names(on_features=True)
                 and record.dataset.fingerprint == fingerprint), None)


def seed_weights(start: Start, scheme: str) -> np.ndarray:
    """Per-class weights to start tuning from: a built-in scheme, or 'run' for the run's own weights."""
    if scheme == "run":
        return np.asarray(start.record.class_weights, dtype=float)
    if scheme not in SCHEMES:
        raise ClassWeightError(f"unknown seed scheme {scheme!r}; choose run or one of: {', '.join(SCHEMES)}")
    return class_weights(scheme, start.dataset.train_counts, start.classes, beta=start.config.beta)


def check_weights(weights, train_counts) -> np.ndarray:
    """Validate a per-class weight vector (one finite number >= 0 per class, not all 0) and rescale it as the
    schemes are: an average weight of 1 per training sample (`core.weights.normalise_weights`)."""
    weights, n_classes = np.asarray(weights, dtype=float), len(train_counts)
    if weights.shape != (n_classes,) or not np.isfinite(weights).all() or (weights < 0).any() or not weights.any():
        raise ClassWeightError(f"give one finite weight >= 0 per class ({n_classes}), not all 0; "
                               f"got {weights.tolist()}")
    return normalise_weights(weights, train_counts)


def _check_tau(tau, approach: str) -> float:
    """A valid tau, as applied: 0 for the SVM, whose scores are not logits (as in `core.experiment`)."""
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
        raise ConfigError(f"logit-adjustment tau must be a finite number >= 0, got {tau!r}")
    return float(tau) if approaches.get_approach(approach).logits else 0.0


@contextlib.contextmanager
def _refit_slot(owner: bool = True):
    """Hold the server's one refit slot (owners first), with this thread's torch on one thread meanwhile.

    On a busy 2-core box the head's small matrices train far faster on one thread than on two that
    contend with other work (4k x 1280 features, 9 epochs: 0.55-1.0 s against 0.5-49 s).
    """
    if not REFIT_SLOT.acquire(owner, timeout_s=REFIT_WAIT_S):
        raise TransferScopeError(f"other sessions kept the server busy refitting for {REFIT_WAIT_S:.0f} s; try again")
    try:
        with one_torch_thread():
            yield
    finally:
        REFIT_SLOT.release()


def refit(start: Start, weights, tau: float = 0.0, offsets=None, *, owner: bool = True, admit=None) -> dict:
    """Refit the run's approach with `weights` (one per class); its test metrics, predictions and validation.

    The result is `rescore`'s (test metrics, `y_pred`, `validation`) plus `weights`, the raw `scores` and
    `oof_scores` (so tau and offsets rescore without refitting), `support` (the SVM's per-class support
    counts at these weights, else None), `refit_seconds` (of the fit, also when it came from `REFITS`) and
    `cached`. A head refits for the start run's chosen epoch count (`Start.head_epochs`); tuned C and tau
    are reused, never chosen again. `owner` goes before waiting viewers; `admit()`, called only when a fit
    is needed, may refuse it by raising (a viewer's rate limit).
    """
    weights = check_weights(weights, start.dataset.train_counts)
    _check_tau(tau, start.record.approach)  # bad values are refused before any fit
    if offsets is not None:
        check_offsets(offsets, len(start.classes))
    key = (start.record.run_id, start.features.key, weights.tobytes())
    cached = REFITS.get(key)
    if cached is None and admit is not None:
        admit()
    raw = cached or _fit_raw(start, weights, key, owner)
    return {**raw, **rescore(start, raw, tau, offsets), "cached": bool(cached)}


def _fit_raw(start: Start, weights: np.ndarray, key: tuple, owner: bool) -> dict:
    """Fit in the refit slot and keep the raw scores in REFITS (unless another session just did)."""
    with _refit_slot(owner):
        if (done := REFITS.get(key)) is not None:
            return done
        started = time.perf_counter()
        run = fit_run(start.config, start.dataset, start.features, start.record.approach, start.training_remedy,
                      weights, head_epochs=start.head_epochs, decision={"tau": 0.0, "offsets": None, "tuned": {}})
        refit_s = time.perf_counter() - started
    fitted = run.fitted
    raw = {"weights": weights, "scores": fitted.scores, "oof_scores": fitted.oof_scores,
           "support": fitted.extras.get("support"), "refit_seconds": refit_s}
    REFITS.put(key, raw)
    return raw


def rescore(start: Start, outcome: dict, tau: float = 0.0, offsets=None) -> dict:
    """Test metrics and `validation` of a refit's stored scores under `tau` and per-class `offsets`; no refit.

    Returns `evaluate()`'s dict plus `y_pred`, `tau` (as applied: 0 for the SVM), `offsets` and `validation`
    (out-of-fold metrics of the training images; None without folds).
    """
    tau = _check_tau(tau, start.record.approach)
    offsets = None if offsets is None else check_offsets(offsets, len(start.classes))
    decision, counts = {"tau": tau, "offsets": offsets}, start.dataset.train_counts
    y_pred = decide(outcome["scores"], counts, decision).argmax(axis=1)
    oof = outcome["oof_scores"]
    validation = None if oof is None else point_scores(
        start.features.y_train, decide(oof, counts, decision).argmax(axis=1), len(start.classes))
    scores = evaluate(start.features.y_test, y_pred, start.classes, counts)
    return {**scores, "per_class": class_rows(scores), "y_pred": y_pred, "tau": tau, "offsets": offsets,
            "validation": validation}


def check_offsets(offsets, n_classes: int) -> list[float]:
    """Validate per-class decision offsets: one finite number per class."""
    values = np.asarray(offsets, dtype=float)
    if values.shape != (n_classes,) or not np.isfinite(values).all():
        raise ConfigError(f"give one finite offset per class ({n_classes}); got {values.tolist()}")
    return values.tolist()


def weight_explanations(start: Start, outcome: dict) -> list[str]:
    """For an SVM refit: what a larger weight for a class does when none of its support vectors is at its bound
    C x weight, in words, with what else moves the boundary (else empty).

    Such a class has slack to spare: its own larger bound changes nothing. But weights here are rescaled to
    an average of 1 per training image, so raising it lowers every other class's bound, and that can move
    the boundary (see `SvmClassifier.support_counts`).
    """
    support = outcome.get("support")
    if not support:
        return []
    C, notes = start.config.svm_c, []
    for i, name in enumerate(start.classes):
        n_sv, n_bound = support["support_vectors"][i], support["at_bound"][i]
        if n_sv and not n_bound:
            notes.append(f"{name}: none of its {n_sv} support vectors sits at its bound C x weight "
                         f"({C:g} x {outcome['weights'][i]:.3g}), so a larger bound for it alone would change "
                         "nothing. Weights here are rescaled to an average of 1 per training image, though, so "
                         "raising its weight lowers every other class's bound, and that can move the boundary. "
                         "To favour it without loosening the other classes: a decision offset for it (below).")
    return notes


def validation_change(start: Start, outcome: dict) -> list[dict] | None:
    """Out-of-fold validation metrics before (the start run's) and after, with their change; None if either
    lacks them (e.g. a run stored before validation was recorded)."""
    before, after = start.record.validation, outcome.get("validation")
    if not before or not after:
        return None
    return [{"metric": HEADLINE_METRICS[key], "before": getattr(before, key), "after": after[key],
             "delta": after[key] - getattr(before, key)} for key in METRICS]


def refit_estimate(start: Start) -> float | None:
    """Seconds one refit of this run with its validation folds takes on the measuring machine (core.estimates'
    curves: the SVM model the run recorded, logistic regression at its chosen C, the head at its chosen epochs);
    None for a model without a curve (a linear-kernel SVM)."""
    (n_train, n_features), record = start.features.X_train.shape, start.record
    folds = len(cv_splits(start.features.y_train, start.config.seed))
    if record.approach == "svm" and start.config.svm_kernel == "rbf":
        exact = not refit_svm_model(start).startswith("Nystroem")
        steps = svm_steps(exact, n_train, n_features, folds, cached=True)
    elif record.approach == "logreg":
        steps = logreg_steps((start.config.logreg_c or 1.0,), n_train, n_features, len(start.classes), folds)
    elif record.approach == "head":
        epochs = start.head_epochs or start.config.epochs
        steps = head_steps(n_train, folds, epochs, epochs)
    else:
        return None
    return sum(seconds for _, seconds in steps)


def refit_svm_model(start: Start) -> str:
    """The SVM model a refit fits: the one the run recorded (a memory read only for runs stored without it)."""
    return start.record.svm_model or choose_svm("rbf", len(start.features.y_train)).model


def live_refit_note(start: Start, seconds: float | None) -> str | None:
    """A note when one refit of this run (with its validation folds), estimated at `seconds` (`refit_estimate`),
    takes past LIVE_REFIT_S: too slow to follow a slider, so the page refits on a button instead."""
    if seconds is None or seconds <= LIVE_REFIT_S:
        return None
    n_train = len(start.features.y_train)
    svm = start.record.approach == "svm"
    model = refit_svm_model(start) if svm else approaches.get_approach(start.record.approach).label.lower()
    growth = "the square of the images" if svm and not model.startswith("Nystroem") else "the images"
    return (f"A refit of this run's {model} on {n_train:,} training images, with its validation folds, takes about "
            f"{duration(seconds)} on the measuring machine (it grows with {growth}), so moves are not live here: "
            "set the weights, then press Refit.")


def per_class_deltas(record: RunRecord, outcome: dict) -> pd.DataFrame:
    """One row per class: minority flag, start and new weight, new P/R/F1 and their change from the start."""
    rows = []
    for before, after, old_w, new_w in zip(record.per_class, outcome["per_class"], record.class_weights,
                                           outcome["weights"]):
        row = {"class": before.name, "minority": before.minority, "start weight": old_w, "weight": new_w}
        for metric in ("precision", "recall", "f1"):
            row[metric] = getattr(after, metric)
            row[f"Δ {metric}"] = getattr(after, metric) - getattr(before, metric)
        rows.append(row)
    return pd.DataFrame(rows)


def compare_with_start(start: Start, outcome: dict) -> dict:
    """What changed: headline metric deltas, per-class deltas, confusion counts (tuned − start), and
    `paired`: McNemar's test and paired bootstrap intervals of tuned (B) minus start (A), None without
    the start's predictions (see `core.stats.paired_comparison`)."""
    record = start.record
    return {"headline": metric_deltas(record, outcome), "per_class": per_class_deltas(record, outcome),
            "confusion_change": (np.asarray(outcome["confusion_matrix"])
                                 - np.asarray(record.confusion_matrix)).tolist(), "paired": _paired(start, outcome)}


def _paired(start: Start, outcome: dict) -> dict | None:
    """The paired test of the tuned predictions against the start's, computed once per predictions (`PAIRED`)."""
    if start.start_pred is None:
        return None
    y_pred = np.asarray(outcome["y_pred"])
    key = (start.record.run_id, hashlib.sha256(y_pred.tobytes()).hexdigest())
    paired = PAIRED.get(key)
    if paired is None:
        paired = paired_comparison(start.features.y_test, start.start_pred, y_pred, len(start.classes),
                                   seed=start.record.seed or 0)
        PAIRED.put(key, paired)
    return paired


def save_as_run(start: Start, weights, tau: float, store: RunStore, offsets=None,
                test_visible: bool = True) -> RunRecord:
    """Store the tuned model as a normal run (custom weights, tau and offsets recorded per class); its record.

    It is the model `refit` showed: a head trains for the start's chosen epochs (recorded as `epochs`).
    `test_visible` is recorded as `chosen_with_test_visible`: the weights were chosen while the test
    scores were on screen, so this run's test scores are not a held-out estimate.
    """
    weights, tau = check_weights(weights, start.dataset.train_counts), _check_tau(tau, start.record.approach)
    offsets = None if offsets is None else check_offsets(offsets, len(start.classes))
    table = {name: float(w) for name, w in zip(start.classes, weights)}
    config = dataclasses.replace(start.config, remedies=(table,), tau=tau, tune=False,
                                 epochs=start.head_epochs or start.config.epochs)
    remedy = start.training_remedy
    if offsets is not None:
        remedy = Remedy(f"{remedy.label}+offsets", remedy.weights, remedy.parts | {"offsets"})
    with _refit_slot(owner=True):
        return train_and_record(config, start.dataset, start.features, start.record.approach, remedy, store,
                                head_epochs=start.head_epochs, weights=weights,
                                decision={"tau": tau, "offsets": offsets, "tuned": {}},
                                extra={"chosen_with_test_visible": test_visible})

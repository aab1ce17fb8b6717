"""Run approaches x remedies on one dataset and record every run.

Per run: the approach's fit (core.approaches), then the decision rule its remedy asks for (tau and
per-class offsets chosen on out-of-fold scores of the training images), the run's validation
metrics from those out-of-fold scores, their cross-fitted counterpart (every choice made on 2/3 of
the out-of-fold rows and scored on the other 1/3), and the test set scored once.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.approaches import Approach, Fitted, FitRequest, get_approach, names
from core.data import Dataset
from core.diagnostics import diagnostics
from core.errors import StoppedEarly
from core.estimates import duration
from core.config import ExperimentConfig, check_class_weight_spec, load_data, load_features
from core.jobs import OVERALL_STAGE
from core.features import FeatureSet, autocast_dtype, rank_world, resolve_device
from core.metrics import evaluate
from core.remedies import Remedy, check_remedies, choose_offsets, decide, parse_remedy
from core.records import RunRecord
from core.store import RunStore, new_run_id
from core.stats import paired_comparison, point_scores, run_intervals
from core.tuning import best_candidate, cross_fit, tune_tau
from core.weights import SCHEMES, adjust_logits, class_weights, read_custom_weights

FEATURE_APPROACHES = names(on_features=True)  # they train on cached features (What-if, feature map)


def resolve_class_weight(spec, dataset: Dataset, beta: float = 0.999) -> tuple[str, np.ndarray]:
    """Turn a scheme name, a JSON file path or a `{class: weight}` dict into (label, per-class weights)."""
    counts = dataset.train_counts
    if isinstance(spec, dict):
        return "custom", class_weights("custom", counts, dataset.classes, custom=spec)
    if spec in SCHEMES:
        return spec, class_weights(spec, counts, dataset.classes, beta=beta)
    check_class_weight_spec(spec)  # raises for an unknown scheme
    table = read_custom_weights(spec)
    return f"custom:{Path(spec).stem}", class_weights("custom", counts, dataset.classes, custom=table)


def run_experiment(config: ExperimentConfig, progress=None, store: RunStore | None = None) -> dict:
    """Load data, extract (cached) features once, train every approach x remedy x seed; results dict.

    The results dict is what the CLI writes to results.json: its runs are the records' JSON.

    >>> results = run_experiment(ExperimentConfig(data="cache/datasets/digits-demo"))  # doctest: +SKIP
    >>> [(r["approach"], r["remedy"], round(r["macro_f1"], 2)) for r in results["runs"]]  # doctest: +SKIP
    """
    config.validate()
    store = store or RunStore(Path(config.cache_dir) / "runs")
    seeds, planned = config.seed_list(), plan_runs(config.approaches, check_remedies(config.remedies))[0]
    count_run = _run_counter(progress, len(seeds) * len(planned))
    parts = [_run_seed(dataclasses.replace(config, seed=seed), progress, store, count_run) for seed in seeds]
    runs = [run for part in parts for run in part["runs"]]
    return {**parts[0], "config": config.to_dict(), "runs": [run.to_json() for run in runs],
            "best_by_validation": best_by_validation(runs),
            "comparisons": [pair for part in parts for pair in part["comparisons"]]}


def estimate_experiment(config) -> dict:
    """The fine-tune runs an ExperimentConfig asks for, estimated (`estimate_seconds` of one, times the runs):
    `runs`, `seconds` (all of them), `per_run` (the estimate's dict) and `text`, one line for people."""
    from core.finetune import estimate_seconds, finetune_config  # on use: the estimate probes torch

    runs = len(plan_runs(("finetune",), check_remedies(config.remedies))[0]) * len(config.seed_list())
    per_run = estimate_seconds(load_data(config), finetune_config(config))
    device = resolve_device(config.device).type
    cache = f"cache pass {duration(per_run['cache_seconds'])}, " if per_run["activation_cache"] else ""
    text = (f"fine-tune estimate: about {duration(per_run['seconds'])} per run, "
            f"{duration(runs * per_run['seconds'])} for {runs} run(s) on this machine's {device.upper()} (set-up "
            f"{duration(per_run['setup_seconds'])}, {cache}{duration(per_run['epoch_seconds'])} per epoch with "
            f"validation, test {duration(per_run['test_seconds'])}; from a {per_run['probe_seconds']:.0f} s probe; "
            f"frozen part {'cached once' if per_run['activation_cache'] else 'recomputed every epoch'}; a busy "
            "machine can make it slower)")
    if device == "cpu" and config.unfreeze not in ("none", "last"):
        text += "; training several blocks is where a CUDA GPU (--device cuda) helps most"
    return {"runs": runs, "seconds": runs * per_run["seconds"], "per_run": per_run, "text": text}


def plan_runs(approaches, remedies: tuple[Remedy, ...]) -> tuple[list[tuple[Approach, Remedy]], list[str]]:
    """The (approach, remedy) pairs to train, and a note for each pair skipped as unsupported."""
    planned, skipped = [], []
    for approach, remedy in itertools.product(map(get_approach, approaches), remedies):
        missing = approach.unsupported(remedy)
        if missing:
            skipped.append(f"{approach.name} · {remedy.label}: {approach.label} does not support "
                           f"{', '.join(missing)}; skipped")
        else:
            planned.append((approach, remedy))
    return planned, skipped


def _run_counter(progress, total: int):
    """`count_run()`, called when training starts (after the first extraction: the job's time left is measured
    from then) and after each run, reports the job-wide `OVERALL_STAGE`; later starts count nothing."""
    done, count = [0], lambda n: progress(OVERALL_STAGE, n, total) if progress else None

    def count_run(finished: bool = True) -> None:
        if finished or not done[0]:
            done[0] += finished
            count(done[0])
    return count_run


def _run_seed(config: ExperimentConfig, progress, store: RunStore, count_run=lambda finished=True: None) -> dict:
    """Every approach x remedy with one seed (its own split for single-folder datasets)."""
    report = progress or (lambda *_: None)
    report("read the dataset", 0, 1)
    dataset = load_data(config)
    report("read the dataset", 1, 1)
    planned, skipped = plan_runs(config.approaches, check_remedies(config.remedies))
    weights = {remedy.label: resolve_class_weight(remedy.weights, dataset, config.beta)[1] for _, remedy in planned}
    features = None  # weights are checked above, before any extraction
    if any(approach.on_features for approach, _ in planned):
        features = load_features(config, dataset, progress)
    count_run(finished=False)
    trained = []
    for approach, remedy in planned:
        trained.append(_train_and_record(config, dataset, features, approach.name, remedy, store, progress,
                                         weights=weights[remedy.label]))
        count_run()
    runs = [record for record, _ in trained]
    return {"dataset": dataset.summary(), "backbone": features.backbone if features else {"name": config.backbone},
            "extract_seconds": features.extract_seconds if features else 0.0,
            "feature_seconds": features.seconds if features else 0.0,
            "cache_hit": bool(features and features.cache_hit), "feature_key": features.key if features else None,
            "runtime": features.runtime if features else None, "skipped_runs": skipped,
            "runs": runs, "comparisons": compare_runs(trained, dataset)}


def best_by_validation(runs: list[RunRecord], metric: str = "macro_f1") -> str | None:
    """The run id with the best cross-fitted validation `metric` (ties: the first); None if no run has one.

    Cross-fitted, so that runs that chose a decision rule, C or epochs on their out-of-fold scores are
    not favoured by that choice's optimism (like with like)."""
    scored = [run for run in runs if run.validation_cross_fitted]
    return max(scored, key=lambda run: getattr(run.validation_cross_fitted, metric)).run_id if scored else None


def compare_runs(trained: list[tuple[RunRecord, np.ndarray]], dataset: Dataset) -> list[dict]:
    """Paired comparisons (B minus A) of runs on one test set that differ in approach or in remedy only."""
    y_test = np.array([s.label for s in dataset.test])
    return [{"run_a": a.run_id, "run_b": b.run_id,
             **paired_comparison(y_test, pred_a, pred_b, len(dataset.classes), seed=a.seed)}
            for (a, pred_a), (b, pred_b) in itertools.combinations(trained, 2)
            if a.approach == b.approach or a.remedy == b.remedy]


def train_and_record(config: ExperimentConfig, dataset: Dataset, features: FeatureSet | None, approach: str,
                     remedy, store: RunStore, progress=None, head_epochs: int | None = None,
                     weights: np.ndarray | None = None, decision: dict | None = None, extra: dict | None = None
                     ) -> RunRecord:
    """Fit one approach with one remedy, score the test set once, save the run; its record.

    `remedy` is a spec or a `Remedy`; `weights` overrides its class weights, `decision` (`{"tau", "offsets"}`)
    its chosen decision rule, and `head_epochs` fixes the head's epoch count (What-if refits); `extra`
    holds more RunRecord fields.
    """
    return _train_and_record(config, dataset, features, approach, remedy, store, progress, head_epochs, weights,
                             decision, extra)[0]


@dataclasses.dataclass(frozen=True)
class RunFit:
    """A fit and its decision rule, not yet scored or saved: `decision` holds tau, offsets and what was
    tuned; `validation` the out-of-fold metrics of the training images (None without folds) and
    `validation_cross_fitted` those with every choice cross-fitted (see `cross_fitted_validation`);
    `decision_seconds` choosing tau and offsets, `cross_fit_seconds` the cross-fitting."""

    fitted: Fitted
    weights: np.ndarray
    decision: dict
    y_pred: np.ndarray
    validation: dict | None
    validation_cross_fitted: dict | None
    remedy: Remedy
    decision_seconds: float
    cross_fit_seconds: float


def fit_run(config: ExperimentConfig, dataset: Dataset, features: FeatureSet | None, approach: str, remedy,
            weights: np.ndarray | None = None, progress=None, head_epochs: int | None = None,
            decision: dict | None = None) -> RunFit:
    """Fit and decide, without scoring or saving (see RunFit)."""
    approach, remedy = get_approach(approach), remedy if isinstance(remedy, Remedy) else parse_remedy(remedy)
    if config.tune and approach.logits:
        remedy = remedy.with_parts("tau")  # --tune picks tau by cross-validation, as the tau remedy does
    if weights is None:
        weights = resolve_class_weight(remedy.weights, dataset, config.beta)[1]
    fitted = approach.fit(FitRequest(config, dataset, features, np.asarray(weights, dtype=float), remedy, progress,
                                     head_epochs))
    y_train = np.array([s.label for s in dataset.train])[_validated_rows(fitted)]
    given, started = decision, time.perf_counter()
    decision = decision or choose_decision(approach, remedy, fitted.oof_scores, y_train, dataset.train_counts,
                                           config.tau)
    decision_s = time.perf_counter() - started
    y_pred = decide(fitted.scores, dataset.train_counts, decision).argmax(1)
    validation = cross_fitted = None
    if fitted.oof_scores is not None:
        validation = point_scores(y_train, decide(fitted.oof_scores, dataset.train_counts, decision).argmax(1),
                                  len(dataset.classes))
        cross_fitted = cross_fitted_validation(approach, remedy, fitted, y_train, dataset.train_counts, config, given)
    return RunFit(fitted, weights, decision, y_pred, validation, cross_fitted, remedy, decision_s,
                  time.perf_counter() - started - decision_s)


def cross_fitted_validation(approach: Approach, remedy: Remedy, fitted: Fitted, y_train, train_counts,
                            config: ExperimentConfig, decision: dict | None = None) -> dict:
    """Validation metrics with every choice made on out-of-fold scores cross-fitted (`core.tuning.cross_fit`):
    the approach's (C, the head's epochs: `fitted.oof_candidates`) and the decision rule (tau, offsets;
    `decision` when it was given instead). A run that chose nothing gets its validation back."""
    candidates = fitted.oof_scores[:, None] if fitted.oof_candidates is None else fitted.oof_candidates
    n_classes = len(train_counts)

    def choose_and_predict(fit_rows, held_rows):
        k = best_candidate(candidates[fit_rows], y_train[fit_rows], n_classes)[0]
        rule = decision or choose_decision(approach, remedy, candidates[fit_rows, k], y_train[fit_rows], train_counts,
                                           config.tau)
        return decide(candidates[held_rows, k], train_counts, rule).argmax(1)
    return cross_fit(choose_and_predict, y_train, n_classes, config.seed)


def choose_decision(approach: Approach, remedy: Remedy, oof_scores, y_train, train_counts, fixed_tau: float) -> dict:
    """tau (logit approaches: chosen on out-of-fold scores under `tau`, else `fixed_tau`) and per-class
    offsets (chosen on out-of-fold scores after tau under `offsets`, else none)."""
    n_classes, tuned = len(train_counts), {}
    tau = float(fixed_tau) if approach.logits else 0.0
    if remedy.has("tau") and oof_scores is not None:
        tuned = tune_tau(oof_scores, y_train, train_counts, n_classes)
        tau = tuned["tau"]
    offsets = None
    if remedy.has("offsets") and oof_scores is not None:
        offsets = choose_offsets(adjust_logits(oof_scores, train_counts, tau), y_train, n_classes).tolist()
        tuned = {**tuned, "offsets": offsets}
    return {"tau": tau, "offsets": offsets, "tuned": tuned}


def _train_and_record(config: ExperimentConfig, dataset: Dataset, features: FeatureSet | None, approach: str,
                      remedy, store: RunStore, progress=None, head_epochs: int | None = None,
                      weights: np.ndarray | None = None, decision: dict | None = None, extra: dict | None = None
                      ) -> tuple[RunRecord, np.ndarray]:
    """`train_and_record`, also returning the test predictions (for paired comparisons)."""
    run = fit_run(config, dataset, features, approach, remedy, weights, progress, head_epochs, decision)
    fitted, remedy, y_pred = run.fitted, run.remedy, run.y_pred
    y_test = np.array([s.label for s in dataset.test])
    on_features = features is not None and get_approach(approach).on_features
    scores = evaluate(y_test, y_pred, dataset.classes, dataset.train_counts)
    record = RunRecord.build({
        "run_id": new_run_id(approach, remedy.label), "approach": approach, "remedy": remedy.label,
        "class_weight": remedy.weight_label, "class_weights": [float(w) for w in run.weights],
        "tau": run.decision["tau"], "offsets": run.decision["offsets"], "seed": config.seed,
        "tuned": {**fitted.tuned, **run.decision["tuned"]}, "validation": run.validation,
        "validation_cross_fitted": run.validation_cross_fitted,
        **scores, "per_class": _with_svm_counts(scores["per_class"], fitted),
        **run_intervals(y_test, y_pred, len(dataset.classes), seed=config.seed),
        "fit_seconds": fitted.fit_seconds, "predict_seconds": fitted.predict_seconds,
        "refit_seconds": fitted.refit_seconds, "selection_seconds": fitted.selection_seconds + run.decision_seconds,
        "validation_seconds": fitted.validation_seconds + run.cross_fit_seconds,
        "learning_curve_seconds": fitted.learning_curve_seconds,
        "extract_seconds": features.extract_seconds if on_features else 0.0,
        "test_extract_seconds": _test_share(features, dataset) if on_features else 0.0,
        "device": resolve_device(config.device).type, "precision": used_precision(config),
        "history": fitted.history, "dataset": dataset.summary(),
        "backbone": features.backbone if features else {"name": config.backbone, "pool": config.pool},
        "feature_key": features.key if features else None, "config": config.to_dict(), **(extra or {}),
        **{name: value for name, value in fitted.extras.items() if name != "support"}})
    predictions = _predictions(dataset, y_pred, fitted.scores)
    validation = None if fitted.oof_scores is None else _validation_table(dataset, fitted)
    record = dataclasses.replace(record, **diagnostics(record, predictions, validation))
    if rank_world()[0] == 0:  # under torchrun, one rank records the run
        store.save(record, model=fitted.model, predictions=predictions, validation=validation)
    if fitted.stopped_by is not None:  # the user stopped a fine-tune: its best epoch is this run, the rest stops
        raise StoppedEarly(f"{approach} stopped early after {len(fitted.history)} epoch(s); its best validation epoch "
                           f"({record.chosen_epoch}) is kept as run {record.run_id}") from fitted.stopped_by
    return record, y_pred


def _with_svm_counts(per_class: list[dict], fitted: Fitted) -> list[dict]:
    """The per-class rows with each class's support-vector and at-bound counts (kernel SVMs)."""
    support = fitted.extras.get("support")
    if not support:
        return per_class
    return [{**row, "support_vectors": support["support_vectors"][i], "at_bound": support["at_bound"][i]}
            for i, row in enumerate(per_class)]


def used_precision(config: ExperimentConfig) -> str:
    """What `config.precision` is on this machine's device: 'bf16', 'fp16' or 'fp32' (features and fine-tune alike)."""
    dtype = autocast_dtype(resolve_device(config.device), config.precision)
    return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def _test_share(features: FeatureSet, dataset: Dataset) -> float:
    """The test images' share of the one-off extraction (by image count): part of predicting new images."""
    return features.extract_seconds * len(dataset.test) / len(dataset.samples)


def _score_columns(scores: np.ndarray) -> pd.DataFrame:
    """One raw score column per class: `score_<i>`."""
    return pd.DataFrame(scores, columns=[f"score_{i}" for i in range(scores.shape[1])])


def _validated_rows(fitted: Fitted):
    """The training rows that have validation scores: all (out-of-fold), or a fine-tune's held-out part."""
    return slice(None) if fitted.oof_rows is None else fitted.oof_rows


def _validation_table(dataset: Dataset, fitted: Fitted) -> pd.DataFrame:
    """Per training image with validation scores: its label (`true`) and its raw out-of-fold (or held-out) scores."""
    labels = np.array([s.label for s in dataset.train])[_validated_rows(fitted)]
    return pd.concat([pd.DataFrame({"true": labels}), _score_columns(fitted.oof_scores)], axis=1)


def _predictions(dataset: Dataset, y_pred: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Per-image table: path, true and predicted class, and one raw score column per class."""
    classes = dataset.classes
    table = pd.DataFrame({"path": [s.path for s in dataset.test], "true": [s.label for s in dataset.test],
                          "pred": y_pred})
    table["true_class"] = [classes[i] for i in table["true"]]
    table["pred_class"] = [classes[i] for i in table["pred"]]
    return pd.concat([table, _score_columns(scores)], axis=1)

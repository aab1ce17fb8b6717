"""The run record: one frozen, typed `RunRecord` per run, and its parts. The one shape of a run.

A run's `record.json` is `RunRecord.to_json()`; `RunRecord.from_json` reads it back (records written
before this module existed included), checking every field's type as declared here: a bad record raises
RunStoreError saying which field is wrong and what to do. JSON keys are the field names (a field whose
key is not a Python name says so: `key("class")`), written in declaration order.

Adding a field a run records is one line: a typed field with a default, e.g.
``calibration_error: float | None = optional()`` in `RunRecord` (or in a part such as `ClassRow`). Plain
defaults are always written (`None` as null); `optional()` fields are left out of the JSON while None,
so records that never had them stay as they were. Records are built whole (`RunRecord(...)`) and changed
with `dataclasses.replace`.

Light at import (standard library and core.storage): the store, bundles and pages read records without the engine.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone

from core.errors import RunStoreError
from core.storage import to_json_text

SCHEMA_VERSION = 1
_NUMBER = (int, float)
_OPTIONAL = "optional"
_KEY = "key"


def optional(default=None):
    """A field left out of the JSON while it is None (keys only some runs have, or older runs lack)."""
    return field(default=default, metadata={_OPTIONAL: True})


def key(name: str, **kwargs):
    """A field stored under JSON key `name` (when that is not a Python name, as `class`)."""
    return field(metadata={_KEY: name}, **kwargs)


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class _Part:
    """JSON in and out for a frozen dataclass, driven by its field types."""

    @classmethod
    def from_json(cls, obj, where: str = ""):
        where = where or cls.__name__
        if not isinstance(obj, dict):
            raise _damaged(where, f"must be a JSON object, got {type(obj).__name__}")
        hints, values = _hints(cls), {}
        for f in dataclasses.fields(cls):
            name = f.metadata.get(_KEY, f.name)
            if name in obj:
                values[f.name] = _convert(hints[f.name], obj[name], where, name)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RunStoreError(f"{where} lacks {name!r}; it is incomplete, delete it or re-export it")
        return cls(**values)

    def to_json(self) -> dict:
        """The JSON object of this part (plain dicts, lists, numbers, strings), in declaration order."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get(_OPTIONAL):
                continue
            out[f.metadata.get(_KEY, f.name)] = _plain(value)
        return out


@dataclass(frozen=True, kw_only=True)
class ClassRow(_Part):
    """One class of the test set: its scores, counts, Wilson 95% intervals and minority flag."""

    name: str = key("class")
    precision: float
    recall: float
    f1: float
    support: int
    predicted: int | None = None
    recall_low: float | None = None
    recall_high: float | None = None
    precision_low: float | None = None
    precision_high: float | None = None
    train_count: int | None = None
    minority: bool
    support_vectors: int | None = optional()  # kernel SVMs
    at_bound: int | None = optional()  # kernel SVMs: support vectors at the bound C


@dataclass(frozen=True, kw_only=True)
class Validation(_Part):
    """Out-of-fold scores of the training images under the run's decision rule."""

    accuracy: float
    macro_f1: float
    balanced_accuracy: float


@dataclass(frozen=True, kw_only=True)
class Calibration(_Part):
    """How far a run's softmax scores are from frequencies (`core.calibration.calibrate`): the temperature
    chosen on out-of-fold scores (None without them), the test ECE as trained (logits only) and after it."""

    temperature: float | None = None
    ece_raw: float | None = None
    ece: float | None = None


@dataclass(frozen=True, kw_only=True)
class LabelIssues(_Part):
    """Training images whose given label the out-of-fold scores doubt (cleanlab), in all and per class."""

    count: int
    per_class: list[int]


@dataclass(frozen=True, kw_only=True)
class DatasetSummary(_Part):
    """The dataset a run was trained and tested on (`core.data.Dataset.summary()`)."""

    root: str
    classes: list[str]
    train_counts: list[int]
    test_counts: list[int]
    skipped: list[dict] | None = optional()  # why files were skipped: at most 50 reasons
    skipped_total: int | None = optional()
    skipped_counts: dict | list | None = optional()
    skipped_file: str | None = optional()  # the CSV listing every skipped file
    fingerprint: str | None = optional()
    content_fingerprint: str | None = optional()
    overlap_count: int | None = optional()  # test images also in the training set (by content)
    overlap: list | None = optional()  # a sample of them


@dataclass(frozen=True, kw_only=True)
class RunRecord(_Part):
    """Everything a run records: settings, decision rule, test metrics with intervals, per class, timings.

    >>> record = RunRecord.from_json(json.loads(path.read_text()))  # doctest: +SKIP
    >>> record.approach, record.score("macro_f1"), record.interval("macro_f1")  # doctest: +SKIP
    ('svm', 0.61, (0.55, 0.67))
    """

    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=utc_now_iso)
    run_id: str
    approach: str
    remedy: str | None = optional()  # runs before remedies: their class_weight says it
    class_weight: str
    class_weights: list[float]
    tau: float | None = optional()
    offsets: list[float] | None = None
    seed: int | None = optional()
    tuned: dict | None = optional()  # what the fit chose on validation folds (tau, offsets, C, epochs, grid)
    validation: Validation | None = None
    validation_cross_fitted: Validation | None = optional()  # every choice cross-fitted: what runs are compared on
    accuracy: float
    balanced_accuracy: float
    macro_precision: float | None = optional()
    macro_recall: float | None = optional()
    macro_f1: float
    weighted_precision: float | None = optional()
    weighted_recall: float | None = optional()
    weighted_f1: float
    per_class: list[ClassRow]
    confusion_matrix: list[list[int]]
    never_predicted: list[str]
    no_test_support: list[str] | None = optional()
    accuracy_low: float | None = optional()
    accuracy_high: float | None = optional()
    macro_f1_low: float | None = optional()
    macro_f1_high: float | None = optional()
    balanced_accuracy_low: float | None = optional()
    balanced_accuracy_high: float | None = optional()
    fit_seconds: float
    predict_seconds: float
    refit_seconds: float | None = optional()
    selection_seconds: float | None = optional()  # choosing C, epochs, tau, offsets on out-of-fold scores
    validation_seconds: float | None = optional()
    learning_curve_seconds: float | None = optional()
    extract_seconds: float | None = optional()
    test_extract_seconds: float | None = optional()
    device: str | None = optional()
    precision: str | None = optional()
    history: list[dict]
    dataset: DatasetSummary
    backbone: dict | None = optional()
    feature_key: str | None = None
    config: dict | None = optional()  # core.config.ExperimentConfig.to_dict()
    chosen_with_test_visible: bool | None = optional()  # What-if saves: tuned while test scores were shown
    svm_model: str | None = optional()  # SVMs: the model fitted ("SVC (rbf kernel)", or its Nystroem approximation)
    svm_model_reason: str | None = optional()  # SVMs: why that model ("exact: ...", "approximate: ...")
    chosen_epoch: int | None = optional()  # fine-tunes: the epoch kept, best on the validation images
    stopped_early: bool | None = optional()  # fine-tunes: the user stopped it; its best epoch so far is the run
    unfreeze: str | None = optional()  # fine-tunes: how much of the backbone trained (none, last, N, all)
    trainable_blocks: int | None = optional()
    activation_cache: bool | None = optional()  # fine-tunes: trained on cached activations of the frozen part
    activation_cache_seconds: float | None = optional()
    calibration: Calibration | None = optional()
    label_issues: LabelIssues | None = optional()

    def __post_init__(self):
        _check_shapes(self)

    @classmethod
    def build(cls, values: dict) -> RunRecord:
        """A record from freshly computed values (numpy numbers allowed), checked as a stored one is."""
        return cls.from_json(json.loads(to_json_text(values)), f"run {values.get('run_id')!r}")

    @property
    def remedy_label(self) -> str:
        """The run's remedy; for runs recorded before remedies, its class weights."""
        return self.remedy or self.class_weight

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def decision(self) -> dict:
        """The run's decision rule as `core.remedies.decide` takes it: tau (0 when none) and per-class offsets."""
        return {"tau": float(self.tau or 0.0), "offsets": self.offsets}

    @property
    def minority(self) -> list[bool]:
        """The minority flag of each class, in class order."""
        return [row.minority for row in self.per_class]

    def score(self, metric: str) -> float:
        """The test score of `metric` (a headline metric name, e.g. "macro_f1")."""
        return getattr(self, _metric_field(metric))

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The bootstrap 95% interval of `metric` over test images; None for a metric without intervals
        (weighted F1) and for runs recorded before intervals."""
        if _metric_field(metric) not in INTERVAL_FIELDS:
            return None
        low, high = getattr(self, f"{metric}_low"), getattr(self, f"{metric}_high")
        return None if low is None or high is None else (low, high)

    def setting(self, name: str, default=None):
        """The experiment setting `name` the run was trained with (its config), else `default`."""
        return (self.config or {}).get(name, default)

    @property
    def backbone_name(self) -> str:
        return (self.backbone or {}).get("name") or self.setting("backbone", "?")


def class_rows(scores: dict) -> list[ClassRow]:
    """The per-class rows of new scores (`core.metrics.evaluate`'s) as the record holds them."""
    return [ClassRow.from_json(row, "per-class row") for row in scores["per_class"]]


HEADLINE_FIELDS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1")
INTERVAL_FIELDS = ("accuracy", "macro_f1", "balanced_accuracy")  # those with `<metric>_low` / `_high` fields


def _metric_field(metric: str) -> str:
    if metric not in HEADLINE_FIELDS:
        raise RunStoreError(f"unknown metric {metric!r}; choose one of: {', '.join(HEADLINE_FIELDS)}")
    return metric


def _damaged(where: str, what: str) -> RunStoreError:
    return RunStoreError(f"{where} {what}; it was edited by hand or is damaged, delete it or re-export it")


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _is(value, types_) -> bool:
    """isinstance, except that a bool never counts as a number and a float must be finite."""
    if isinstance(value, bool):
        return types_ is bool
    return isinstance(value, types_) and not (isinstance(value, float) and not math.isfinite(value))


def _convert(hint, value, where: str, name: str):
    """`value` of key `name` in `where`, read from JSON as type `hint` (parts become dataclasses);
    RunStoreError if it is not one."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        for option in options[:-1]:
            try:
                return _convert(option, value, where, name)
            except RunStoreError:
                continue
        return _convert(options[-1], value, where, name)
    if isinstance(hint, type) and issubclass(hint, _Part):
        return hint.from_json(value, f"{where} {name}")
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise _damaged(where, f"has {name!r} = {value!r:.80}, expected list")
        return [_convert(args[0], item, where, f"{name} row") for item in value] if args else value
    expected = {float: _NUMBER, int: int, str: str, bool: bool, dict: dict}[origin or hint]
    if not _is(value, expected):
        kind = "int or float" if expected is _NUMBER else expected.__name__
        raise _damaged(where, f"has {name!r} = {value!r:.80}, expected {kind}")
    return value


def _plain(value):
    if isinstance(value, _Part):
        return value.to_json()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _check_shapes(record: RunRecord) -> None:
    """Per-class lists have one entry per class, the confusion matrix is k x k, `created` is a date."""
    where = f"run {record.run_id!r}"
    try:
        datetime.fromisoformat(record.created)
    except (TypeError, ValueError):
        raise RunStoreError(f"{where} has 'created' = {record.created!r:.80}, not an ISO date and time; "
                            "delete it or re-export it") from None
    k = len(record.classes)
    shapes = {"dataset train_counts": (record.dataset.train_counts, "int"),
              "dataset test_counts": (record.dataset.test_counts, "int"), "per_class": (record.per_class, "dict"),
              "class_weights": (record.class_weights, "number"), "confusion_matrix": (record.confusion_matrix, "list")}
    for name, (values, kind) in shapes.items():
        if len(values) != k:
            raise RunStoreError(f"{where} {name} must list one {kind} per class ({k} classes); it is damaged, "
                                "delete it or re-export it")
    if not all(len(row) == k for row in record.confusion_matrix):
        raise RunStoreError(f"{where} confusion_matrix must be {k} x {k} counts; it is damaged, "
                            "delete it or re-export it")

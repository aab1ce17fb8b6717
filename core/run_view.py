"""One run as the pages and reports read it: its record, test predictions and out-of-fold validation scores.

fastai's `ClassificationInterpretation` is the model: built once per run, each table read on first use, short
methods over them (confusion pairs, misclassified images, rescoring with tau, paired tests, calibration, label
issues, ordinal scores). The Results, Compare, What-if and feature-map pages and the reports' paired tests use
it instead of passing a record and its tables around.

>>> view = RunView.from_store(store, run_id)  # doctest: +SKIP
>>> view.error_cells()[0], view.rescore(1.0)["macro_f1"]  # doctest: +SKIP
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from core.approaches import names as approach_names
from core.diagnostics import calibration, label_issue_table, reliability_curves, score_matrix
from core.errors import ConfigError
from core.metrics import check_confusion, evaluate
from core.records import RunRecord
from core.remedies import decide
from core.stats import ordinal_scores, paired_comparison, point_scores

LOGIT_APPROACHES = approach_names(logits=True)  # their scores are logits: tau applies


class RunView:
    """A run's record with its predictions and validation tables, each read by its loader on first use."""

    def __init__(self, record: RunRecord, predictions: Callable[[], pd.DataFrame],
                 validation: Callable[[], pd.DataFrame | None] = lambda: None):
        self.record = record
        self._read_predictions, self._read_validation = predictions, validation

    @classmethod
    def from_store(cls, store, run_id: str) -> RunView:
        """The view of run `run_id` of a `RunStore` (its tables read when first asked for)."""
        return cls(store.load(run_id), lambda: store.load_predictions(run_id),
                   lambda: store.load_validation(run_id))

    @functools.cached_property
    def predictions(self) -> pd.DataFrame:
        """The test images' table: `path`, `true`, `pred` and the raw `score_<i>` columns."""
        return self._read_predictions()

    @functools.cached_property
    def validation(self) -> pd.DataFrame | None:
        """The training images' out-of-fold scores (`true`, `score_<i>`), or None (runs stored without them)."""
        return self._read_validation()

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """The test images' true and predicted classes."""
        return (self.predictions["true"].to_numpy(dtype=int), self.predictions["pred"].to_numpy(dtype=int))

    def error_cells(self) -> list[dict]:
        """Nonzero off-diagonal cells of the confusion matrix, most frequent first: true, pred, count."""
        cm = check_confusion(self.record.confusion_matrix)
        cells = [{"true": int(i), "pred": int(j), "count": int(cm[i, j])}
                 for i, j in zip(*np.nonzero(cm)) if i != j]
        return sorted(cells, key=lambda cell: (-cell["count"], cell["true"], cell["pred"]))

    def misclassified(self, true: int, pred: int) -> tuple[list[str], int]:
        """Paths of test images of class `true` predicted as `pred` that still exist, and how many are missing."""
        table = self.predictions
        chosen = table.loc[(table["true"] == true) & (table["pred"] == pred), "path"]
        existing = [str(path) for path in chosen if Path(path).is_file()]
        return existing, len(chosen) - len(existing)

    def rescore(self, tau: float) -> dict:
        """Test metrics after post-hoc logit adjustment with `tau` (and the run's offsets); no retraining.

        The adjustment subtracts `tau * log(prior)` (train class frequencies) from the stored logits.
        """
        record = self.record
        y_pred = self._rescored(self.predictions, tau)
        return evaluate(self.labels()[0], y_pred, record.classes, record.dataset.train_counts)

    def rescore_validation(self, tau: float) -> dict | None:
        """Out-of-fold validation scores (accuracy, macro-F1, balanced accuracy) of the same rescoring; None
        for runs stored without validation scores."""
        if self.validation is None:
            return None
        y_true = self.validation["true"].to_numpy(dtype=int)
        return point_scores(y_true, self._rescored(self.validation, tau), len(self.record.classes))

    def _rescored(self, table: pd.DataFrame, tau: float) -> np.ndarray:
        record = self.record
        if record.approach not in LOGIT_APPROACHES:
            raise ConfigError(f"logit adjustment needs logits; {record.approach!r} runs store SVM decision "
                              f"values, so adjust a {' or '.join(LOGIT_APPROACHES)} run instead")
        scores = score_matrix(table, len(record.classes))
        decision = {"tau": tau, "offsets": record.offsets}
        return decide(scores, record.dataset.train_counts, decision).argmax(axis=1)

    def paired_with(self, other: RunView) -> dict | None:
        """McNemar's test and paired bootstrap intervals of `other` minus this run; None when they saw
        different test images."""
        same_images = (self.record.dataset.fingerprint == other.record.dataset.fingerprint
                       and self.predictions["path"].tolist() == other.predictions["path"].tolist())
        if not same_images:
            return None
        y_true, y_pred = self.labels()
        return paired_comparison(y_true, y_pred, other.labels()[1], len(self.record.classes))

    def reliability(self) -> dict:
        """The run's calibration and reliability curves (`core.diagnostics.reliability_curves`)."""
        return reliability_curves(self.record, self.predictions, self.validation)

    def label_issues(self) -> pd.DataFrame:
        """The training images whose labels the out-of-fold scores doubt, at the run's calibrated temperature."""
        record = self.record
        temperature = record.calibration.temperature if record.calibration else calibration(
            record, self.predictions, self.validation)["temperature"]
        return label_issue_table(record, self.validation, temperature)

    def ordinal(self) -> dict:
        """Quadratic weighted kappa, off-by-one accuracy and mean absolute grade error with intervals."""
        return ordinal_scores(*self.labels(), len(self.record.classes), seed=self.record.seed or 0)

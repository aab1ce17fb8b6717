"""A run's diagnostics, recorded with it: calibration (core.calibration) and suspected label errors
(core.label_issues), from the scores the run stores (its test predictions and out-of-fold table), so runs
stored before these fields existed get the same figures."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.calibration import calibrate, probabilities
from core.errors import ConfigError
from core.label_issues import find_label_issues, summarize
from core.remedies import decide

if TYPE_CHECKING:
    from core.records import RunRecord


def score_matrix(predictions: pd.DataFrame, n_classes: int) -> np.ndarray:
    """The raw scores `(n_samples, n_classes)` stored as `score_<i>` columns of a predictions table."""
    columns = [f"score_{i}" for i in range(n_classes)]
    missing = [c for c in columns if c not in predictions.columns]
    if missing:
        raise ConfigError(f"predictions lack score columns {missing[:3]}; retrain the run to store its scores")
    return predictions[columns].to_numpy(dtype=float)


def decided_scores(record: RunRecord, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The true labels and scores `(n, n_classes)` after the run's decision rule (tau, offsets) of a stored
    predictions or validation table."""
    scores = score_matrix(table, len(record.classes))
    return table["true"].to_numpy(dtype=np.int64), decide(scores, record.dataset.train_counts, record.decision)


def calibration(record: RunRecord, predictions: pd.DataFrame, validation: pd.DataFrame | None) -> dict:
    """The record field `calibration` (see `core.calibration.calibrate`); SVM scores get no raw ECE."""
    from core.approaches import get_approach

    y_test, test = decided_scores(record, predictions)
    y_train, oof = decided_scores(record, validation) if validation is not None else (None, None)
    return calibrate(test, y_test, oof, y_train, logits=get_approach(record.approach).logits)


def label_issue_table(record: RunRecord, validation: pd.DataFrame, temperature: float) -> pd.DataFrame:
    """The training images confident learning doubts under this run (see `core.label_issues.find_label_issues`)."""
    y_train, oof = decided_scores(record, validation)
    return find_label_issues(y_train, probabilities(oof, temperature))


def diagnostics(record: RunRecord, predictions: pd.DataFrame, validation: pd.DataFrame | None) -> dict:
    """The record fields `calibration` and `label_issues` (None without out-of-fold scores)."""
    calibrated = calibration(record, predictions, validation)
    issues = None if validation is None else summarize(
        label_issue_table(record, validation, calibrated["temperature"]), len(record.classes))
    return {"calibration": calibrated, "label_issues": issues}


def reliability_curves(record: RunRecord, predictions: pd.DataFrame, validation: pd.DataFrame | None
                       ) -> tuple[dict, dict[str, list[dict]]]:
    """A run's calibration (recorded, else computed) and its reliability rows on the test images: softmax of the
    scores as trained (logits only) and after the validation-chosen temperature (when it has folds)."""
    from core.approaches import get_approach
    from core.calibration import reliability

    calibrated = record.calibration.to_json() if record.calibration else calibration(record, predictions, validation)
    y_test, scores = decided_scores(record, predictions)
    curves = {}
    if get_approach(record.approach).logits:
        curves["softmax of the scores as trained"] = reliability(probabilities(scores), y_test)
    if calibrated["temperature"] is not None:
        curves[f"temperature {calibrated['temperature']:.2f} (chosen on validation folds)"] = reliability(
            probabilities(scores, calibrated["temperature"]), y_test)
    return calibrated, curves

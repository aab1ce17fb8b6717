"""Suspected label errors among the training images: confident learning (Northcutt et al. 2021, cleanlab) on
the out-of-fold scores a run stores, so no image is judged by a model that saw its label.

The scores are taken after the run's decision rule and turned into probabilities with the temperature
fitted on the same out-of-fold scores (core.diagnostics), which SVM scores need to be probabilities at all.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import ConfigError
from core.records import RunRecord


def find_label_issues(y, probs) -> pd.DataFrame:
    """Training images whose label confident learning doubts, most doubtful first: `index` (row of the
    training set), `given` and `suggested` class, `quality` (the model's probability of the given label).

    >>> find_label_issues([0, 0, 0, 1, 1, 1], [[.9, .1], [.9, .1], [.1, .9], [.1, .9], [.2, .8], [.1, .9]])["index"].tolist()
    [2]
    """
    from cleanlab.filter import find_label_issues as cleanlab_issues  # on use: importing cleanlab takes a second

    y, probs = np.asarray(y, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or y.shape != (len(probs),) or (y < 0).any() or (y >= probs.shape[1]).any():
        raise ConfigError(f"need one label in 0..{probs.shape[-1] - 1} per row of probabilities, got {y.shape} "
                          f"labels and probabilities {probs.shape}")
    ranked = cleanlab_issues(labels=y, pred_probs=probs, return_indices_ranked_by="self_confidence",
                             n_jobs=1)  # no worker processes: forking a threaded server can hang
    return pd.DataFrame({"index": ranked, "given": y[ranked], "suggested": probs[ranked].argmax(axis=1),
                         "quality": probs[ranked, y[ranked]]})


def summarize(issues: pd.DataFrame, n_classes: int) -> dict:
    """The record field `label_issues`: how many training images are suspect, in all and per given class."""
    return {"count": len(issues), "per_class": np.bincount(issues["given"], minlength=n_classes).tolist()}


def issue_source(records: list[RunRecord], fingerprint: str) -> RunRecord | None:
    """The run whose out-of-fold scores judge a dataset's labels: the best validation macro-F1 among the runs
    on it that have validation scores (the most accurate model makes the fewest false alarms); None if none."""
    scored = [r for r in records if r.dataset.fingerprint == fingerprint and r.validation]
    return max(scored, key=lambda r: r.validation.macro_f1) if scored else None

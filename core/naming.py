"""Run names: one rule for every place that shows a run (reports, CLI tables, Compare, run pickers).

A run is named by what tells it apart from the others shown with it: approach · remedy, then the
backbone where runs differ in backbone, the seed where they differ in seed, and the dataset's short
name in front where they come from more than one dataset. Two runs never share a name: runs alike in
all of these (a What-if run saved twice, the same grid run again) end in their run id's random part.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.records import RunRecord

from core.metric_labels import LABELS, RANKING
from core.style import score

LABEL_METRIC = (RANKING, LABELS[RANKING])  # what pickers show and runs are chosen by


def dataset_key(record: RunRecord) -> str:
    """What identifies a run's dataset: its content fingerprint (or, for old runs, its folder)."""
    dataset = record.dataset
    return dataset.content_fingerprint or dataset.fingerprint or dataset.root


def dataset_name(record: RunRecord) -> str:
    """The dataset's short name: its folder's name."""
    return Path(record.dataset.root).name or "?"


def _parts(record: RunRecord, varies: dict[str, bool]) -> list[str]:
    parts = [dataset_name(record)] if varies["dataset"] else []
    parts += [record.approach, record.remedy_label]
    if varies["backbone"]:
        parts.append(record.backbone_name)
    if varies["seed"]:
        parts.append(f"seed {record.seed or 0}")
    return parts


def run_names(records: list[RunRecord], show_dataset: bool | None = None) -> dict[str, str]:
    """`{run_id: name}` in the records' order, every name different, e.g. 'svm · balanced · seed 1'.

    `show_dataset`: name the dataset in front (None: only when the records span several datasets;
    pass True where the store holds several, even if these records come from one).

    >>> [run.approach, run.remedy, run.seed for run in records]  # doctest: +SKIP
    [('svm', 'none', 0), ('svm', 'balanced', 0), ('svm', 'none', 1)]
    >>> list(run_names(records).values())  # doctest: +SKIP
    ['svm · none · seed 0', 'svm · balanced · seed 0', 'svm · none · seed 1']
    """
    varies = {"dataset": len({dataset_key(r) for r in records}) > 1 if show_dataset is None else show_dataset,
              "backbone": len({r.backbone_name for r in records}) > 1,
              "seed": len({r.seed or 0 for r in records}) > 1}
    names = {r.run_id: " · ".join(map(str, _parts(r, varies))) for r in records}
    alike: dict[str, list[str]] = {}
    for run_id, name in names.items():
        alike.setdefault(name, []).append(run_id)
    for name, run_ids in alike.items():
        if len(run_ids) > 1:  # the random part of new_run_id's ids; the whole id if even those collide
            tails = [run_id.rsplit("-", 1)[-1] for run_id in run_ids]
            tails = tails if len(set(tails)) == len(tails) else run_ids
            names.update({run_id: f"{name} · #{tail}" for run_id, tail in zip(run_ids, tails)})
    return names


def run_labels(records: list[RunRecord], show_dataset: bool | None = None) -> dict[str, str]:
    """`{run_id: label}` for run pickers: the run's name and its test macro-F1 ('svm · balanced · macro-F1 0.664')."""
    key, label = LABEL_METRIC
    return {run_id: f"{name} · {label} {score(record.score(key))}"
            for (run_id, name), record in zip(run_names(records, show_dataset).items(), records)}

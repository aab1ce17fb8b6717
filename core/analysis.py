"""Pure helpers behind the dashboard pages: tables, labels, re-scoring and diffs of stored runs.

Everything here takes run records (`core.records.RunRecord`, from `RunStore`), datasets or data frames
and returns data; nothing draws or imports Streamlit.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from core.data import Dataset, Sample, open_rgb
from core.errors import ClassWeightError, ConfigError
from core.metrics import FREQUENCY_GROUPS, group_scores, minority_mask
from core.metric_labels import HEADLINE_METRICS, LABELS
from core.naming import dataset_key, run_names
from core.records import RunRecord
from core.report import per_class_table
from core.approaches import APPROACHES
from core.settings import BY_NAME
from core.stats import FEW_TEST_IMAGES, few_test_classes
from core.style import SCORE_DECIMALS, score
from core.weights import class_weights, custom_weights

APPROACH_NAMES = {a.name: a.label for a in APPROACHES.values()}  # display names, from the registry
MIN_FIT_S = 1e-3  # fit times are floored here so a speed-up factor never divides by 0


def class_table(dataset: Dataset) -> pd.DataFrame:
    """One row per class: train and test image counts, share of the training set, minority flag.

    >>> class_table(load_dataset("cache/datasets/digits-demo")).columns.tolist()  # doctest: +SKIP
    ['class', 'train', 'test', 'train share', 'minority']
    """
    train = np.asarray(dataset.train_counts)
    return pd.DataFrame({"class": dataset.classes, "train": train, "test": dataset.test_counts,
                         "train share": train / train.sum(), "minority": minority_mask(train)})


def image_size_summary(samples: list[Sample]) -> pd.DataFrame:
    """Min, median and max of image width, height (pixels) and aspect ratio (width / height)."""
    sizes = np.array([s.size for s in samples], dtype=float).reshape(-1, 2)
    columns = {"width (px)": sizes[:, 0], "height (px)": sizes[:, 1], "aspect (w/h)": sizes[:, 0] / sizes[:, 1]}
    return pd.DataFrame({name: [values.min(), np.median(values), values.max()] for name, values in columns.items()},
                        index=["min", "median", "max"])


def sample_paths(dataset: Dataset, per_class: int = 4) -> dict[str, list[str]]:
    """The first `per_class` training image paths of every class, in class order."""
    paths: dict[str, list[str]] = {name: [] for name in dataset.classes}
    for sample in dataset.train:
        shown = paths[dataset.classes[sample.label]]
        if len(shown) < per_class:
            shown.append(sample.path)
    return paths


def thumbnail(path: str, max_side_px: int = 240) -> bytes:
    """A PNG of the image at `path`, shrunk (aspect kept) so its longer side is at most `max_side_px`."""
    image = open_rgb(path)
    image.thumbnail((max_side_px, max_side_px))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def weight_table(dataset: Dataset, scheme: str, beta: float = 0.999) -> pd.DataFrame:
    """Editable class-weight table prefilled from a built-in scheme: class, train count, minority, weight."""
    weights = class_weights(scheme, dataset.train_counts, dataset.classes, beta=beta)
    table = class_table(dataset)[["class", "train", "minority"]]
    return table.assign(weight=weights.round(4))


def weights_from_table(table: pd.DataFrame, classes: list[str]) -> dict[str, float]:
    """Read an edited weight table back as `{class: weight}`; empty, negative or non-finite cells raise.

    >>> weights_from_table(pd.DataFrame({"class": ["a", "b"], "weight": [1.0, 2.5]}), ["a", "b"])
    {'a': 1.0, 'b': 2.5}
    """
    table_dict = {}
    for name, value in zip(table["class"], table["weight"]):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise ClassWeightError(f"class {name!r} has no weight; enter a number >= 0 (0 ignores the class)")
        table_dict[str(name)] = float(value)
    custom_weights(table_dict, classes)
    return table_dict


def on_dataset(records: list[RunRecord], dataset: Dataset) -> list[RunRecord]:
    """The records trained on `dataset`'s files (any split seed), in their order.

    A record matches by its files' fingerprint (`content_fingerprint`; older records: the split's fingerprint).
    """
    wanted = {dataset.content_fingerprint, dataset.fingerprint}
    return [record for record in records if dataset_key(record) in wanted]


def run_table(records: list[RunRecord]) -> pd.DataFrame:
    """The runs table of the Compare page, one row per record, in the records' order."""
    names = run_names(records)
    return pd.DataFrame({
        "run": [names[r.run_id] for r in records],
        "approach": [r.approach for r in records],
        "remedy": [r.remedy_label for r in records],
        **{LABELS[key]: [r.score(key) for r in records] for key in ("accuracy", "balanced_accuracy", "macro_f1")},
        f"validation {LABELS['macro_f1']}": [r.validation.macro_f1 if r.validation else None for r in records],
        f"cross-fitted validation {LABELS['macro_f1']}": [
            r.validation_cross_fitted.macro_f1 if r.validation_cross_fitted else None for r in records],
        **{f"{group} F1": [_group_f1(r, group) for r in records] for group in FREQUENCY_GROUPS},
        "fit s": [r.fit_seconds for r in records],
        "predict s": [r.predict_seconds for r in records],
        "run id": [r.run_id for r in records],
    })


def fit_time_note(record: RunRecord) -> str:
    """What the fit time counts and the stages recorded apart from it, in words (seconds to 2 decimals)."""
    stages = [("choosing C, epochs, tau or offsets on the training folds", record.selection_seconds),
              ("validation folds only", record.validation_seconds),
              ("predicting the test set", record.predict_seconds)]
    shown = "; ".join(f"{name}: {seconds:.2f} s" for name, seconds in stages if seconds)
    return f"the final fit alone (the SVM's kernel included); apart from it: {shown}" if shown else \
        "the final fit alone (the SVM's kernel included)"


def _group_f1(record: RunRecord, group: str) -> float | None:
    return next(row["f1"] for row in group_scores(record.per_class) if row["group"] == group)


def group_table(record: RunRecord) -> pd.DataFrame:
    """Recall and F1 averaged over the run's head, middle and tail classes (thirds by training count), with
    macro-F1 and balanced accuracy beside them."""
    rows = [{"classes": f"{row['group']} ({len(row['classes'])}: {row['train_min']}-{row['train_max']} training "
                        "images each)", "recall": row["recall"], "F1": row["f1"]}
            for row in group_scores(record.per_class)]
    rows.append({"classes": "all (balanced accuracy, macro-F1)", "recall": record.balanced_accuracy,
                 "F1": record.macro_f1})
    return pd.DataFrame(rows)


def _timing_seconds(record: RunRecord, stage: str, with_extraction: bool) -> float:
    """Fit or predict seconds of a run; svm/head optionally with the extraction of the images it needs.

    Fit counts the whole one-off extraction; predict counts the test images' share, since fine-tuning's
    predict time includes decoding the test images and running the CNN on them.
    """
    if stage == "predict":
        return record.predict_seconds + ((record.test_extract_seconds or 0.0) if with_extraction else 0.0)
    return record.fit_seconds + ((record.extract_seconds or 0.0) if with_extraction else 0.0)


def speedups(records: list[RunRecord], with_extraction: bool = False, stage: str = "fit") -> list[dict]:
    """How many times faster the fastest approach is than each other one (median time per approach).

    Pass runs of one like-for-like group (`comparable_groups`). `stage` is "fit" or "predict";
    `with_extraction` adds the feature extraction that svm and head runs rely on.

    >>> speedups([svm_run, finetune_run])  # fit in 0.5 s and 50 s  # doctest: +SKIP
    [{'fast': 'svm', 'slow': 'finetune', 'factor': 100.0}]
    """
    by_approach: dict[str, list[float]] = {}
    for record in records:
        seconds = _timing_seconds(record, stage, with_extraction)
        by_approach.setdefault(record.approach, []).append(max(seconds, MIN_FIT_S))
    medians = sorted((float(np.median(times)), approach) for approach, times in by_approach.items())
    if len(medians) < 2:
        return []
    fastest_s, fastest = medians[0]
    return [{"fast": fastest, "slow": approach, "factor": seconds / fastest_s} for seconds, approach in medians[1:]]


REPEAT_IGNORED = ("seed", "seeds", "data", "cache_dir", "workers")  # settings that don't define a configuration
# compared within a group (remedies, repeats) or replaced by the value the run actually used (device, precision):
GROUP_IGNORED = (*REPEAT_IGNORED, "approaches", "remedies", "class_weights", "tau", "beta", "device", "precision")
LABELLED = ("backbone", "pool", "image_size")  # always in a group's label; other settings when not at their default


def run_precision(record: RunRecord) -> str | None:
    """The feature/autocast precision a run used: 'bf16', 'fp16' or 'fp32' (old records: from their features'
    dtype; None when unknown)."""
    dtype = (record.backbone or {}).get("dtype")
    return record.precision or {"torch.bfloat16": "bf16", "torch.float16": "fp16", "None": "fp32"}.get(dtype)


def group_key(record: RunRecord) -> tuple:
    """What makes runs comparable: the dataset's files, the device and precision used, and every setting that
    changes the features or the fit's cost (backbone, pooling, image size, runtime, --tune, epochs, ...)."""
    dataset, config = record.dataset, record.config or {}
    files = dataset.content_fingerprint or dataset.fingerprint or dataset.root
    settings = sorted((k, repr(v)) for k, v in config.items() if k not in GROUP_IGNORED)
    return (files, record.backbone_name, record.device or config.get("device", "?"), run_precision(record),
            tuple(settings))


def _group_label(runs: list[RunRecord]) -> str:
    """'digits-demo · efficientnet_lite0 · avg · 224 px · bf16 · cpu · tune True (4 runs)'."""
    _, backbone, device, precision, _ = group_key(runs[0])
    config = runs[0].config or {}
    size = config.get("image_size") or next((r.backbone["image_size"] for r in runs
                                             if (r.backbone or {}).get("image_size")), None)
    changed = [f"{name} {value}" for name, value in config.items() if name in BY_NAME and name not in GROUP_IGNORED
               and name not in LABELLED and value != BY_NAME[name].default]
    parts = [Path(runs[0].dataset.root).name, backbone, config.get("pool"),
             f"{size} px" if size else None, precision, device, *changed]
    return f"{' · '.join(str(p) for p in parts if p)} ({len(runs)} run{'s' * (len(runs) != 1)})"


def comparable_groups(records: list[RunRecord]) -> list[dict]:
    """Runs grouped like for like (`group_key`), largest group first: `{"label": ..., "runs": [...]}`."""
    groups: dict[tuple, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(group_key(record), []).append(record)
    return [{"label": _group_label(runs), "runs": runs} for runs in sorted(groups.values(), key=len, reverse=True)]


def seed_summary(records: list[RunRecord]) -> pd.DataFrame:
    """Mean ± standard deviation over seeds of each configuration (approach, weights and the other settings)."""
    configurations: dict[str, list[RunRecord]] = {}
    for record in records:
        settings = {k: v for k, v in (record.config or {}).items() if k not in REPEAT_IGNORED}
        # the config holds a fixed tau; a tau the remedy chose on folds may differ from seed to seed
        key = repr((record.approach, record.remedy_label, sorted(settings.items())))
        configurations.setdefault(key, []).append(record)
    rows = []
    for runs in configurations.values():
        row = {"approach": runs[0].approach, "remedy": runs[0].remedy_label, "seeds": len(runs)}
        for key, label in [(key, LABELS[key]) for key in ("accuracy", "balanced_accuracy", "macro_f1")] + [
                ("fit_seconds", "fit s")]:
            values = np.array([getattr(run, key) for run in runs])
            shown = score if key != "fit_seconds" else "{:.3f}".format
            row[label] = f"{shown(values.mean())} ± {shown(values.std(ddof=1) if len(values) > 1 else 0.0)}"
        rows.append(row)
    return pd.DataFrame(rows)


def metric_deltas(before: RunRecord, after: dict) -> list[dict]:
    """Headline metrics of a run and of new scores (`evaluate`'s) side by side: label, before, after, change."""
    return [{"metric": label, "before": before.score(key), "after": after[key],
             "delta": after[key] - before.score(key)} for key, label in HEADLINE_METRICS.items()]


def _svm_model_before_13(kernel: str, n_train: int) -> str:
    """The SVM a run recorded before issue 13 fitted (not recorded then): LinearSVC above 20,000 training images."""
    return "LinearSVC" if n_train > 20_000 or kernel == "linear" else f"SVC ({kernel} kernel)"


def run_settings(record: RunRecord) -> pd.DataFrame:
    """What produced a run: approach, weights, backbone and the settings that matter for its approach."""
    config, backbone = record.config or {}, record.backbone or {}
    rows = {"run id": record.run_id, "created": record.created, "approach": record.approach,
            "class weights": record.class_weight, "backbone": backbone.get("name", config.get("backbone")),
            "pooling": config.get("pool"), "image size (short side, px)": config.get("image_size")
            or backbone.get("image_size"), "precision": run_precision(record), "dataset": record.dataset.root,
            "seed": config.get("seed")}
    if record.approach == "svm":
        fitted = record.svm_model or _svm_model_before_13(config.get("svm_kernel", "rbf"),
                                                          sum(record.dataset.train_counts))
        reason = {"SVM model chosen": record.svm_model_reason} if record.svm_model_reason else {}
        rows.update({"SVM model": fitted, **reason, "SVM C": config.get("svm_c")})
    else:
        rows.update({"epochs": config.get("epochs"), "learning rate": config.get("lr"),
                     "epochs run": len(record.history), "logit adjustment tau": record.tau})
    if record.approach == "finetune":
        # runs before issue 26 recorded unfreeze_last
        unfreeze = record.setting("unfreeze") or ("last" if record.setting("unfreeze_last") else "none")
        rows.update({"batch size": config.get("batch_size"), "unfreeze": unfreeze,
                     "chosen epoch (validation)": record.chosen_epoch,
                     "stopped early by the user": "yes" if record.stopped_early else "no"})
    return pd.DataFrame({"setting": list(rows), "value": [str(v) for v in rows.values()]})


def class_report(record: RunRecord) -> pd.DataFrame:
    """Per-class precision, recall, F1, counts, minority flag, the class weight the run trained with, and
    `unreliable`: scored on at most FEW_TEST_IMAGES test images (`few_test_note`)."""
    few = set(few_test_names(record))
    return per_class_table(record).assign(weight=np.round(record.class_weights, 4),
                                          unreliable=[row.name in few for row in record.per_class])


def paired_table(paired: dict) -> pd.DataFrame:
    """The change B − A of each metric with its paired bootstrap 95% interval."""
    return pd.DataFrame([{"metric": label, "B − A": paired[f"{key}_delta"], "95% low": paired[f"{key}_low"],
                          "95% high": paired[f"{key}_high"]}
                         for key, label in HEADLINE_METRICS.items() if f"{key}_delta" in paired])


def paired_verdict(paired: dict) -> str:
    """One sentence a student can read: the discordant images and McNemar's p-value."""
    p = paired["mcnemar_p"]
    verdict = "unlikely to be noise" if p < 0.05 else "could well be noise"
    return (f"B is right where A is wrong on {paired['n_b_only']} test images, the reverse on {paired['n_a_only']}; "
            f"McNemar's exact test p = {p:.3g}, so the difference in accuracy {verdict}.")


def noise_note(paired: dict) -> str:
    """Plain words on which metric changes could be noise: those whose 95% interval contains 0."""
    noisy = [label for key, label in HEADLINE_METRICS.items()
             if f"{key}_low" in paired and paired[f"{key}_low"] <= 0 <= paired[f"{key}_high"]]
    if not noisy:
        return "Every 95% interval excludes 0: each change is larger than resampling the test images explains."
    return (f"The 95% interval of the change in {', '.join(noisy)} contains 0: that change could be noise "
            "(B may be no better or worse than A on new images).")


def interval_caption(record: RunRecord) -> str | None:
    """'95% bootstrap intervals …: Accuracy 0.810–0.870 · …'; None for runs recorded before intervals.

    When classes have at most FEW_TEST_IMAGES test images it says the intervals understate (see `few_test_note`)."""
    parts = [f"{label} {score(interval[0])}–{score(interval[1])}" for key, label in HEADLINE_METRICS.items()
             if (interval := record.interval(key))]
    if not parts:
        return None
    few = " (too narrow for the macro figures: they rest on classes with very few test images, see below)" \
        if few_test_names(record) else ""
    return f"95% bootstrap intervals over test images (resampled within each class){few}: {' · '.join(parts)}"


def few_test_names(record: RunRecord) -> list[str]:
    """The classes of a run with 1 to FEW_TEST_IMAGES test images (`core.stats.few_test_classes`)."""
    rows = record.per_class
    return [rows[i].name for i in few_test_classes([row.support for row in rows])]


def few_test_note(records: list[RunRecord]) -> str | None:
    """A warning when the runs' macro figures rest on classes with very few test images, naming them; else None.

    The runs are tested on one test set (a Results run, a Compare group): the first one's counts are read."""
    names = few_test_names(records[0]) if records else []
    if not names:
        return None
    counts = {row.name: row.support for row in records[0].per_class}
    listed = ", ".join(f"{name} ({counts[name]})" for name in names)
    return (f"Macro-F1 and balanced accuracy rest on classes with at most {FEW_TEST_IMAGES} test images: {listed}. "
            "Each weighs as much as any class, yet one image more or less right moves its F1 by a third or more; "
            "the intervals resample within each class, so they cannot show that (they are too narrow). Their "
            "per-class scores are unreliable: add test images of these classes to measure them.")


def check_comparable(record_a: RunRecord, record_b: RunRecord) -> None:
    """Raise ConfigError unless two runs were evaluated on the same classes."""
    classes_a, classes_b = record_a.classes, record_b.classes
    if classes_a != classes_b:
        raise ConfigError(f"runs {record_a.run_id} and {record_b.run_id} have different classes "
                          f"({len(classes_a)} vs {len(classes_b)}); compare runs trained on the same dataset")


def metrics_diff(record_a: RunRecord, record_b: RunRecord) -> pd.DataFrame:
    """Headline metrics and timings of run A and run B with the change B − A."""
    keys = {**HEADLINE_METRICS, "fit_seconds": "Fit s", "predict_seconds": "Predict s"}
    return pd.DataFrame([{"metric": label, "A": getattr(record_a, key), "B": getattr(record_b, key),
                          # + 0.0 drops -0.0
                          "B − A": round(getattr(record_b, key) - getattr(record_a, key), SCORE_DECIMALS) + 0.0}
                         for key, label in keys.items()])

"""Panels that show why a run decides as it does: heat maps and nearest training images of misclassified test
images, calibration, head/middle/tail scores, ordinal scores (Results), suspected label errors (Dataset).

They call `dashboard.state` (which calls `core`) and draw; nothing here computes.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.analysis import group_table
from core.errors import ConfigError
from core.explain import GRADIENT, caption, overlay
from core.figures import reliability_figure
from core.records import RunRecord
from core.run_view import RunView
from core.report import escape_markdown
from core.stats import ORDINAL_METRICS
from core.style import score
from dashboard import access, state, widgets

WHY_MAX = 24  # heat maps shown for one confusion-matrix cell at most (about a second each on 2 CPU cores)
HEAT_PX = 230  # two maps side by side in 4 of 6 column units at 1280 px
THUMB_PX = 140
ISSUES_SHOWN = 24
ISSUE_COLUMNS = 6


def _reason(error: ConfigError) -> None:
    st.caption(f"Not available: {escape_markdown(access.shown_text(str(error)))}.")


def why_panel(view: RunView, true: int, pred: int) -> None:
    """Heat maps and the nearest training images (true and predicted class) of a cell's test images."""
    record, predictions = view.record, view.predictions
    classes = record.classes
    rows = predictions.index[(predictions["true"] == true) & (predictions["pred"] == pred)].tolist()
    if not st.toggle("Why? Heat maps and nearest training images", key="why_show",
                     help="computed on demand: about a second an image on 2 CPU cores, then kept"):
        return
    count = min(len(rows), WHY_MAX)
    if count > 1:
        count = st.slider("Images explained", 1, count, min(count, 3), key="why_count")
    rows = rows[:count]
    try:
        explained, seconds = state.explanations(record, predictions.loc[rows, "path"].tolist(), [true] * len(rows))
    except ConfigError as error:
        _reason(error)
        return
    try:
        nearest = state.nearest_training(record, rows, [[true, pred]] * len(rows))
    except ConfigError as error:
        nearest = None
        _reason(error)
    method = explained[0].method
    note = " (the positive part of the gradient-weighted map)" if method == GRADIENT else ""
    st.caption(f"{method}{note}: red areas raise the class score, blue ones lower it; the contrast map shows where "
               f"the image argues for {escape_markdown(classes[pred])} over {escape_markdown(classes[true])}. "
               f"{len(rows)} image(s) in {seconds:.1f} s.")
    for i, ex in enumerate(explained):
        cols = st.columns([2, 2, 1, 1])
        cols[0].image(overlay(ex.image, ex.predicted_map, positive_only=method == GRADIENT), width=HEAT_PX,
                      caption=f"{Path(ex.path).name}: map of {classes[ex.predicted]}")
        cols[1].image(overlay(ex.image, ex.contrast_map), width=HEAT_PX,
                      caption=f"{classes[ex.predicted]} minus {classes[true]}")
        cols[1].caption(escape_markdown(caption(ex, classes)))
        for col, match, role in zip(cols[2:], nearest[i] if nearest else (), ("true", "predicted")):
            if match is None:
                col.caption(f"no training image of the {role} class")
            else:
                col.image(state.thumbnails([match["path"]]), width=THUMB_PX,
                          caption=f"nearest {classes[match['label']]} ({role}), cosine {match['similarity']:.2f}")


def calibration_panel(record: RunRecord) -> None:
    st.subheader("How sure: calibration")
    calibrated, curves = state.reliability(record)
    if not curves:
        st.caption("No probabilities to check: SVM scores are not probabilities, and this run has no validation "
                   "folds to fit a temperature on.")
        return
    cols = st.columns(3)
    ece_raw, ece, temperature = calibrated["ece_raw"], calibrated["ece"], calibrated["temperature"]
    cols[0].metric("ECE as trained", "n/a" if ece_raw is None else score(ece_raw),
                   help="SVM scores are not probabilities" if ece_raw is None else None)
    cols[1].metric("ECE after temperature", "n/a" if ece is None else score(ece))
    cols[2].metric("Temperature", "n/a" if temperature is None else f"{temperature:.2f}",
                   help="chosen on the out-of-fold scores of the training images, never on the test images")
    widgets.chart(reliability_figure(curves), key="reliability")
    st.caption("Expected calibration error: how far, on average over 15 confidence bins, the share of right "
               "predictions is from the confidence shown (0 is perfect). Probabilities follow the run's decision "
               "rule (tau, offsets).")


def groups_panel(record: RunRecord) -> None:
    st.markdown("**Head, middle and tail classes** (thirds of the classes by training count)")
    st.dataframe(group_table(record), hide_index=True, key="group_table",
                 column_config=widgets.score_columns("recall", "F1"))


def ordinal_panel(record: RunRecord) -> None:
    if not st.toggle("Classes are ordered grades (in the order listed)", key="ordered_classes",
                     help="for graded labels (severity 0-4, ratings): most errors are then neighbouring grades"):
        return
    scores = state.ordinal(record)
    for col, (key, label) in zip(st.columns(len(ORDINAL_METRICS)), ORDINAL_METRICS.items()):
        col.metric(label, score(scores[key]))
        col.caption(f"95% interval {scores[f'{key}_low']:.3f}–{scores[f'{key}_high']:.3f}")


def label_issues_panel(data) -> None:
    """Suspected label errors of the training images, and near-duplicates that carry different labels."""
    st.subheader("Suspected label errors")
    try:
        record, issues = state.label_issues(data)
    except ConfigError as error:
        _reason(error)
        return
    st.caption(f"Confident learning (cleanlab) on the out-of-fold probabilities of run "
               f"{escape_markdown(record.run_id)} (the best validation macro-F1 on this dataset): images whose "
               "label the model, never trained on them, finds unlikely. On the clean demo set a run reports 17-85 "
               "such images by chance: treat them as images to look at, not as errors.")
    classes = data.classes
    counts = issues["given"].value_counts().reindex(range(len(classes)), fill_value=0)
    st.dataframe({"class": classes, "suspected": counts.tolist(), "training images": data.train_counts},
                 hide_index=True, key="label_issue_counts")
    columns = st.columns(ISSUE_COLUMNS)
    for i, row in enumerate(issues.head(ISSUES_SHOWN).itertuples()):
        with columns[i % ISSUE_COLUMNS]:
            widgets.gallery([data.train[row.index].path], [f"labelled {classes[row.given]}, looks like "
                                                           f"{classes[row.suggested]} (p {row.quality:.2f})"],
                            width_px=THUMB_PX)
    if len(issues) > ISSUES_SHOWN:
        st.caption(f"Showing the {ISSUES_SHOWN} most doubtful of {len(issues)}.")
    try:
        pairs = state.conflicting_labels(data, 0.97)
    except ConfigError as error:
        _reason(error)
        return
    if pairs:
        st.warning(f"{len(pairs)} pair(s) of nearly identical training images carry different labels.",
                   icon=":material/content_copy:")
        for pair in pairs[:ISSUES_SHOWN // 2]:
            a, b = data.train[pair["a"]], data.train[pair["b"]]
            widgets.gallery([a.path, b.path], [classes[a.label], classes[b.label]], width_px=THUMB_PX)
    else:
        st.caption("No two training images with different labels nearly match (centred cosine ≥ 0.97).")

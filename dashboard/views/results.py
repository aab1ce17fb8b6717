"""Results page: one run's metrics, confusion matrix, per-class scores, learning curve, errors, logit adjustment."""
import streamlit as st

from core.analysis import (class_report, few_test_note, fit_time_note, interval_caption, metric_deltas,
                           run_settings)
from core.figures import clickable_confusion_figure, learning_curve_figure, per_class_figure
from core.metric_labels import HEADLINE_METRICS
from core.records import RunRecord
from core.report import escape_markdown
from core.run_view import LOGIT_APPROACHES, RunView
from core.style import score, score_change
from dashboard import access, errors, state, why, widgets


def show_metrics(record: RunRecord) -> None:
    cols = st.columns(len(HEADLINE_METRICS) + 1)
    for col, (key, label) in zip(cols, HEADLINE_METRICS.items()):
        col.metric(label, score(record.score(key)))
    cols[-1].metric("Fit time", widgets.format_seconds(record.fit_seconds), help=fit_time_note(record))
    if interval_caption(record):
        st.caption(interval_caption(record) + " (how much the score could move with another sample of test images)")
    if note := few_test_note([record]):
        st.warning(escape_markdown(note), icon=":material/warning:")
    if record.no_test_support:
        unscored = ", ".join(map(escape_markdown, record.no_test_support))
        st.warning(f"No test images, so not scored (left out of the averages): {unscored}", icon=":material/warning:")
    if record.never_predicted:
        weights = "balanced class weights" if record.class_weight == "none" else "larger custom weights for them"
        remedy = " or the logit adjustment below" if record.approach in LOGIT_APPROACHES else ""
        st.warning(f"Never predicted (recall 0): {', '.join(map(escape_markdown, record.never_predicted))}. "
                   f"Try {weights}{remedy}.", icon=":material/warning:")


@st.fragment
def confusion_panel(view: RunView) -> None:
    record = view.record
    normalize = st.toggle("Row-normalize (share of each true class)", key="cm_normalize")
    with st.container(key="confusion_matrix"):
        figure = clickable_confusion_figure(record.confusion_matrix, record.classes, normalize,
                                            minority=record.minority)
        widgets.selected_points(figure, key="cm_click", modes="points", on_select=show_clicked_cell,
                                args=(view.error_cells(),))
    if st.session_state.pop("cm_clicked", False):
        st.rerun()  # the whole page, so the misclassified panel below shows the clicked cell


def show_clicked_cell(cells: list[dict]) -> None:
    """A click on a confusion-matrix cell picks that cell in the misclassified panel (its select box)."""
    points = st.session_state["cm_click"].selection.points
    if not points:
        return
    true, pred = points[0]["customdata"][:2]
    index = next((i for i, cell in enumerate(cells) if (cell["true"], cell["pred"]) == (true, pred)), None)
    if index is None:
        st.toast("That cell holds no misclassified images; click an off-diagonal cell with a count.")
        return
    st.session_state["error_cell"] = index
    st.session_state["cm_clicked"] = True


@st.fragment
def logit_panel(view: RunView) -> None:
    record = view.record
    st.subheader("Logit adjustment")
    if record.approach not in LOGIT_APPROACHES:
        st.caption("Post-hoc logit adjustment applies to head and fine-tune runs, whose scores are logits.")
        return
    st.caption("Subtract tau × log(class prior) from the stored logits: favours rare classes, no retraining.")
    stored_tau = float(record.tau or 0.0)
    tau = st.slider("tau", 0.0, max(2.0, stored_tau), stored_tau, 0.05, key="logit_tau")
    with errors.guard():
        before = record.validation
        after = view.rescore_validation(tau)
        if before and after:
            st.markdown("**Validation** (out-of-fold, on the training images): what to choose tau by")
            for col, key in zip(st.columns(len(after)), after):
                change = after[key] - getattr(before, key)
                col.metric(f"validation {HEADLINE_METRICS[key]} at tau {tau:g}", score(after[key]),
                           delta=score_change(change) if round(change, 3) else None)
        st.markdown("**Test** (held-out check): choosing tau by these numbers tunes on the test set")
        adjusted = view.rescore(tau)
        for col, row in zip(st.columns(len(HEADLINE_METRICS)), metric_deltas(record, adjusted)):
            col.metric(f"{row['metric']} at tau {tau:g}", score(row['after']),
                       delta=score_change(row['delta']) if round(row["delta"], 3) else None)
        if adjusted["never_predicted"]:
            names = ", ".join(map(escape_markdown, adjusted["never_predicted"]))
            st.warning(f"Never predicted at tau {tau:g}: {names}")


@st.fragment
def misclassified_panel(view: RunView) -> None:
    st.subheader("Misclassified test images")
    cells = view.error_cells()
    if not cells:
        st.success("Every test image was classified correctly.")
        return
    classes = view.record.classes
    st.caption("Click a cell of the confusion matrix above, or pick one here.")
    choice = st.selectbox("True class → predicted class", range(len(cells)), key="error_cell", format_func=lambda i:
                          f"{classes[cells[i]['true']]} → {classes[cells[i]['pred']]} ({cells[i]['count']} images)")
    with errors.guard():
        paths, missing = view.misclassified(cells[choice]["true"], cells[choice]["pred"])
        if missing:
            st.warning(f"{missing} image(s) are no longer at their recorded path (dataset moved?).")
        widgets.gallery(paths)
        why.why_panel(view, cells[choice]["true"], cells[choice]["pred"])


st.title("Results")
with errors.guard():
    runs = widgets.dataset_runs(state.list_runs(), "results_all_data")
    if not runs:
        widgets.no_runs_hint()
    else:
        view = state.run_view(widgets.pick_run(runs, "Run", "results_run").run_id)
        record = view.record
        show_metrics(record)
        confusion_panel(view)
        widgets.chart(per_class_figure(record.per_class), key="per_class")
        why.groups_panel(record)
        why.ordinal_panel(record)
        with st.expander("Per-class table and run settings"):
            left, right = st.columns([3, 2])
            left.dataframe(class_report(record), hide_index=True, key="class_report",
                           column_config=widgets.score_columns("precision", "recall", "F1"))
            right.dataframe(run_settings(access.shown_record(record)), hide_index=True, key="run_settings")
        logit_panel(view)
        if record.history:
            widgets.chart(learning_curve_figure(record.history), key="learning_curve")
        misclassified_panel(view)
        with errors.guard():
            why.calibration_panel(record)

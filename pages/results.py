"""Results page: one run's metrics, confusion matrix, per-class scores, learning curve, errors, logit adjustment."""
from pathlib import Path

import streamlit as st

import ui
from core.analysis import (HEADLINE_METRICS, LOGIT_APPROACHES, class_report, error_cells, interval_caption,
                           metric_deltas, misclassified_paths, rescore, run_labels, run_settings)
from core.figures import confusion_matrix_figure, learning_curve_figure, per_class_figure
from core.report import escape_markdown

GALLERY_MAX = 24
GALLERY_PX = 144


def pick_run(runs: list[dict]) -> str:
    """Run selectbox, newest first, in sync with the `?run=<id>` deep link."""
    labels = run_labels(runs)
    ids = list(labels)
    wanted = st.query_params.get("run")
    if wanted and wanted not in labels:
        st.warning("The run in the link does not exist (deleted?); showing the newest run instead.")
    run_id = st.selectbox("Run", ids, index=ids.index(wanted) if wanted in labels else 0, format_func=labels.get,
                          key="results_run")
    st.query_params["run"] = run_id
    return run_id


def show_metrics(record: dict) -> None:
    cols = st.columns(len(HEADLINE_METRICS) + 1)
    for col, (key, label) in zip(cols, HEADLINE_METRICS.items()):
        col.metric(label, f"{record[key]:.3f}")
    cols[-1].metric("Fit time", ui.format_seconds(record["fit_seconds"]),
                    help=f"predicting the test set took {ui.format_seconds(record['predict_seconds'])}")
    if interval_caption(record):
        st.caption(interval_caption(record) + " (how much the score could move with another sample of test images)")
    if record.get("no_test_support"):
        unscored = ", ".join(map(escape_markdown, record["no_test_support"]))
        st.warning(f"No test images, so not scored (left out of the averages): {unscored}", icon=":material/warning:")
    if record["never_predicted"]:
        weights = "balanced class weights" if record["class_weight"] == "none" else "larger custom weights for them"
        remedy = " or the logit adjustment below" if record["approach"] in LOGIT_APPROACHES else ""
        st.warning(f"Never predicted (recall 0): {', '.join(map(escape_markdown, record['never_predicted']))}. "
                   f"Try {weights}{remedy}.", icon=":material/warning:")


@st.fragment
def confusion_panel(record: dict) -> None:
    normalize = st.toggle("Row-normalize (share of each true class)", key="cm_normalize")
    minority = [row["minority"] for row in record["per_class"]]
    with st.container(key="confusion_matrix"):
        ui.chart(confusion_matrix_figure(record["confusion_matrix"], record["dataset"]["classes"], normalize,
                                         minority=minority))


@st.fragment
def logit_panel(record: dict) -> None:
    st.subheader("Logit adjustment")
    if record["approach"] not in LOGIT_APPROACHES:
        st.caption("Post-hoc logit adjustment applies to head and fine-tune runs, whose scores are logits.")
        return
    st.caption("Subtract tau × log(class prior) from the stored logits: favours rare classes, no retraining.")
    stored_tau = float(record.get("tau", 0.0))
    tau = st.slider("tau", 0.0, max(2.0, stored_tau), stored_tau, 0.05, key="logit_tau")
    with ui.guard():
        adjusted = rescore(record, ui.load_predictions(record["run_id"]), tau)
        for col, row in zip(st.columns(len(HEADLINE_METRICS)), metric_deltas(record, adjusted)):
            col.metric(f"{row['metric']} at tau {tau:g}", f"{row['after']:.3f}",
                       delta=f"{row['delta']:+.3f}" if round(row["delta"], 3) else None)
        if adjusted["never_predicted"]:
            names = ", ".join(map(escape_markdown, adjusted["never_predicted"]))
            st.warning(f"Never predicted at tau {tau:g}: {names}")


@st.fragment
def misclassified_panel(record: dict) -> None:
    st.subheader("Misclassified test images")
    cells = error_cells(record["confusion_matrix"])
    if not cells:
        st.success("Every test image was classified correctly.")
        return
    classes = record["dataset"]["classes"]
    choice = st.selectbox("True class → predicted class", range(len(cells)), key="error_cell", format_func=lambda i:
                          f"{classes[cells[i]['true']]} → {classes[cells[i]['pred']]} ({cells[i]['count']} images)")
    with ui.guard():
        paths, missing = misclassified_paths(ui.load_predictions(record["run_id"]), cells[choice]["true"],
                                             cells[choice]["pred"])
        paths, hidden = ui.viewable_paths(paths)
        if missing:
            st.warning(f"{missing} image(s) are no longer at their recorded path (dataset moved?).")
        if hidden:
            st.caption(f"{hidden} image(s) lie outside the shared dataset folder and are not shown to viewers.")
        shown = paths[:GALLERY_MAX]
        if shown:
            st.image(ui.thumbnails(shown), width=GALLERY_PX, caption=[Path(path).name for path in shown])
        if len(paths) > GALLERY_MAX:
            st.caption(f"Showing {GALLERY_MAX} of {len(paths)} images.")


st.title("Results")
with ui.guard():
    runs = ui.list_runs()
    if not runs:
        ui.no_runs_hint()
    else:
        record = ui.load_run(pick_run(runs))
        show_metrics(record)
        confusion_panel(record)
        ui.chart(per_class_figure(record["per_class"]), key="per_class")
        with st.expander("Per-class table and run settings"):
            left, right = st.columns([3, 2])
            left.dataframe(class_report(record), hide_index=True, key="class_report")
            right.dataframe(run_settings(record), hide_index=True, key="run_settings")
        logit_panel(record)
        if record["history"]:
            ui.chart(learning_curve_figure(record["history"]), key="learning_curve")
        misclassified_panel(record)

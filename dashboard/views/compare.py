"""Compare page: like-for-like runs only: findings first, then score versus fit time, speed-ups, seed repeats,
runs, the paired comparisons behind the findings and a two-run diff."""
import streamlit as st

from core.analysis import (APPROACH_NAMES, check_comparable, comparable_groups, few_test_note, metrics_diff,
                           seed_summary, speedups)
from core.backbone_compare import backbone_comparison
from core.findings import family_note
from core.naming import run_labels, run_names
from core.figures import confusion_diff_figure, f1_delta_figure, tradeoff_figure
from core.records import RunRecord
from core.metric_labels import LABELS, RANKING
from core.report import PAIRED_NOTE, comparisons_table, escape_markdown
from core.style import SCORE_FORMAT, faster
from dashboard import access, errors, state, widgets

SPEEDUP_VIEWS = (("fit", False, "Fit time; the shared feature extraction is not counted."),
                 ("fit", True, "Fit time counting the one-off feature extraction of svm and head."),
                 ("predict", True, "Predicting the test set; svm and head include extracting its features, as "
                                   "fine-tuning runs the CNN on every test image."))


def show_speedups(runs: list[RunRecord]) -> None:
    if not speedups(runs):
        st.caption("Train more than one approach in this group to compare their times.")
        return
    for stage, with_extraction, caption in SPEEDUP_VIEWS:
        for row in speedups(runs, with_extraction, stage):
            fast, slow = (escape_markdown(APPROACH_NAMES.get(row[k], row[k])) for k in ("fast", "slow"))
            st.markdown(f"- {faster(f'**{fast}**', slow, row['factor'])}")
        st.caption(f"{caption} Medians per approach.")


def delete_selected() -> None:
    with errors.guard():
        doomed = st.session_state["delete_select"]
        state.delete_runs(doomed)
        st.session_state["delete_select"] = []
        st.toast(f"Deleted {len(doomed)} run(s).", icon=":material/delete:")


def delete_runs(labels: dict[str, str]) -> None:
    with st.expander("Delete runs"):
        allowed = access.read_only_note("delete runs")
        doomed = st.multiselect("Runs to delete", list(labels), format_func=labels.get, key="delete_select",
                                disabled=not allowed)
        st.button("Delete selected runs", key="delete_runs", disabled=not doomed or not allowed,
                  icon=":material/delete:", on_click=delete_selected)


def show_paired(record_a: RunRecord, record_b: RunRecord, comparisons) -> None:
    paired = state.paired_diff(record_a.run_id, record_b.run_id)
    if paired is None:
        st.info("These runs were tested on different images (another split seed), so no paired test.")
        return
    widgets.paired_test(paired, "paired_table", family=family_note(comparisons, record_a.run_id, record_b.run_id))


def show_diff(labels: dict[str, str], comparisons) -> None:
    st.subheader("Two-run diff")
    ids = list(labels)
    col_a, col_b = st.columns(2)
    run_a = col_a.selectbox("Run A (baseline)", ids, index=1, format_func=labels.get, key="compare_a")
    run_b = col_b.selectbox("Run B", ids, index=0, format_func=labels.get, key="compare_b")
    if run_a == run_b:
        st.info("Pick two different runs to see what changed.")
        return
    record_a, record_b = state.load_run(run_a), state.load_run(run_b)
    check_comparable(record_a, record_b)
    st.dataframe(metrics_diff(record_a, record_b), hide_index=True, key="metrics_diff",
                 column_config=widgets.score_columns("A", "B", changes=("B − A",)))
    show_paired(record_a, record_b, comparisons)
    widgets.chart(confusion_diff_figure(record_a.confusion_matrix, record_b.confusion_matrix, record_a.classes,
                                        "A", "B", minority=record_a.minority), key="confusion_diff")
    widgets.chart(f1_delta_figure(record_a.per_class, record_b.per_class, "A", "B"), key="f1_delta")


def show_comparisons(runs: list[RunRecord]) -> None:
    """The paired tests the findings use; the rest of the group's family behind an expander."""
    found, comparisons = state.group_findings(runs)
    if not len(comparisons):
        return
    used = [pair for finding in found for pair in finding.pairs]
    st.subheader("Paired comparisons behind the findings")
    st.caption(f"{PAIRED_NOTE} Family: the {len(comparisons)} comparisons of this group.")
    st.dataframe(comparisons_table(runs, comparisons, used), hide_index=True, key="findings_pairs")
    shown = {frozenset(pair) for pair in used}
    rest = [pair for pair in comparisons.pairs if frozenset(pair) not in shown]
    if rest:
        with st.expander(f"The other {len(rest)} comparisons"):
            st.dataframe(comparisons_table(runs, comparisons, rest), hide_index=True, key="findings_rest")


def show_backbones(records: list[RunRecord]) -> None:
    """Per backbone, for runs that differ only in backbone: macro-F1 with its interval, extraction cost, size."""
    groups = backbone_comparison(records)
    if not groups:
        return
    st.subheader("Backbones")
    chosen = st.selectbox("Runs that differ only in backbone", range(len(groups)),
                          format_func=lambda i: groups[i]["label"], key="backbone_group")
    st.dataframe(groups[chosen]["table"], hide_index=True, key="backbone_table", column_config={
        "score": st.column_config.NumberColumn(LABELS[RANKING], format=SCORE_FORMAT),
        "low": st.column_config.NumberColumn("95% low", format=SCORE_FORMAT),
        "high": st.column_config.NumberColumn("95% high", format=SCORE_FORMAT),
        "extract s/image": st.column_config.NumberColumn(format="%.4f")})
    st.caption("Extraction: the one-off wall time of each backbone's features per image, as measured when "
               "they were extracted (on whatever else the machine was doing then).")


st.title("Compare")
with errors.guard():
    all_runs = state.list_runs()
    listed = widgets.dataset_runs(all_runs, "compare_all_data")
    if not listed:
        widgets.no_runs_hint()
    else:
        groups = comparable_groups([access.shown_record(run) for run in listed])
        chosen = st.selectbox("Runs compared like for like (same files, backbone, pooling, image size, precision, "
                              "device and settings)", range(len(groups)),
                              format_func=lambda i: groups[i]["label"], key="compare_group")
        runs = groups[chosen]["runs"]
        st.subheader("Findings")
        widgets.findings(state.group_findings(runs)[0], run_names(runs))
        chart_col, speed_col = st.columns([3, 1])
        with chart_col:
            widgets.chart(tradeoff_figure(runs), key="tradeoff")
            st.caption("Error bars: 95% bootstrap intervals over the test images.")
            if note := few_test_note(runs):
                st.warning(escape_markdown(note), icon=":material/warning:")
        with speed_col:
            st.subheader("Speed-up")
            show_speedups(runs)
        repeats = seed_summary(runs)
        if (repeats["seeds"] > 1).any():
            st.subheader("Repeats over seeds (mean ± standard deviation)")
            st.dataframe(repeats, hide_index=True, key="seed_summary")
        st.subheader("Runs")
        widgets.runs_dataframe(runs, key="runs_table")
        show_comparisons(runs)
        labels = run_labels(runs)
        if len(runs) < 2:
            st.info("Only one run in this group: train another one (e.g. with other class weights) to see a "
                    "two-run diff.", icon=":material/info:")
        else:
            show_diff(labels, state.group_findings(runs)[1])
        show_backbones(listed)
    if deletable := {**run_labels(all_runs), **state.broken_runs()}:
        delete_runs(deletable)

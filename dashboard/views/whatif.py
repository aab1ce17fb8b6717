"""What-if page: tune a feature run's per-class weights (a refit: live while it is estimated short, else on a
button), tau and offsets (no refit); the validation change comes first, the test change is a held-out check."""
import contextlib
import time

import numpy as np
import streamlit as st

from core.run_view import LOGIT_APPROACHES
from core.experiment import FEATURE_APPROACHES
from core.estimates import duration
from core.figures import confusion_diff_figure, per_class_delta_figure
from core.findings import tries_note
from core.records import RunRecord
from core.report import escape_markdown
from core.weights import SCALE_NOTE, SCHEMES
from core.style import score, score_change
from core.whatif import (WEIGHT_RANGE, compare_with_start, live_refit_note, refit_estimate, rescore, seed_weights,
                         validation_change, weight_explanations)
from dashboard import access, errors, state, widgets

DEBOUNCE_S = 0.3  # a newer slider change within this time restarts the page before the refit starts
WEIGHT_GRID = np.geomspace(*WEIGHT_RANGE, 49).round(3).tolist()  # 12 steps per decade, log scale
SLIDER_COLUMNS = 3


def weight_sliders(start, scheme: str) -> np.ndarray:
    """One log-scale slider per class, seeded from `scheme`; minority classes are marked."""
    weights, columns = [], st.columns(SLIDER_COLUMNS)
    rows = start.record.per_class
    for i, (row, seed) in enumerate(zip(rows, seed_weights(start, scheme))):
        options = sorted({*WEIGHT_GRID, float(seed)})
        label = f"{escape_markdown(row.name)} · {row.train_count} train" + (" · minority" * row.minority)
        weights.append(columns[i % SLIDER_COLUMNS].select_slider(
            label, options, value=float(seed), format_func=lambda w: f"{w:.3g}",
            key=f"whatif_{start.record.run_id}_{scheme}_{i}"))
    return np.array(weights)


def offset_sliders(start, outcome: dict) -> np.ndarray:
    """One additive offset per class on the decision scores, seeded from the run's (instant: a rescoring)."""
    finite = outcome["scores"][np.isfinite(outcome["scores"])]
    scale = float(finite.std()) or 1.0
    offsets, columns = [], st.columns(SLIDER_COLUMNS)
    chosen = start.record.offsets or [0.0] * len(start.classes)  # the run's own offsets, if it chose any
    for i, name in enumerate(start.classes):
        low, high = -3 * scale, 3 * scale
        offsets.append(columns[i % SLIDER_COLUMNS].slider(
            escape_markdown(name), low, high, min(max(float(chosen[i]), low), high), scale / 20, format="%.2f",
            key=f"whatif_offset_{start.record.run_id}_{i}"))
    return np.array(offsets)


def metric_row(rows: list[dict], extra=None) -> None:
    cols = st.columns(len(rows) + (extra is not None))
    for col, row in zip(cols, rows):
        delta = score_change(row['delta']) if round(row["delta"], 3) else None
        col.metric(row["metric"], score(row['after']), delta=delta)
    if extra is not None:
        label, value, note = extra
        cols[-1].metric(label, value, help=note)


def family_note(record: RunRecord, setting, paired: dict) -> str:
    """Holm over the settings this session tested against the run (each is one more paired test)."""
    tried = st.session_state.setdefault("whatif_tries", {}).setdefault(record.run_id, {})
    tried[setting] = paired.get("macro_f1_p")
    return tries_note(tried, setting)


def show_changes(start, outcome: dict, show_test: bool, setting=None) -> None:
    record, change = start.record, compare_with_start(start, outcome)
    st.markdown("**Validation** (out-of-fold, on the training images): what to tune by")
    validation = validation_change(start, outcome)
    if validation:
        metric_row(validation, ("Refit time", widgets.format_seconds(outcome["refit_seconds"]),
                                "kept from an earlier refit with these weights: shown at once"
                                if outcome.get("cached") else None))
    else:
        st.caption("This run was stored without validation scores (trained before they were recorded); "
                   "retrain it to tune by validation.")
    for note in weight_explanations(start, outcome):
        st.info(escape_markdown(note), icon=":material/info:")
    if not show_test:
        return
    st.markdown("**Test** (held-out check): tuning by these numbers tunes on the test set, and a run saved "
                "while they are shown records that")
    metric_row(change["headline"])
    if change["paired"]:
        with st.expander("Is the change noise? (paired test on the same test images)", expanded=True):
            widgets.paired_test(change["paired"], "whatif_paired", "A is the starting run, B the tuned model.",
                                family_note(record, setting, change["paired"]))
    if outcome["never_predicted"]:
        st.warning(f"Never predicted with these weights: {', '.join(map(escape_markdown, outcome['never_predicted']))}")
    widgets.chart(per_class_delta_figure(record.per_class, outcome["per_class"], "start", "tuned"),
                  key="whatif_deltas")
    widgets.chart(confusion_diff_figure(record.confusion_matrix, outcome["confusion_matrix"], record.classes,
                                        "start", "tuned", minority=record.minority), key="whatif_confusion")
    with st.expander("Per-class table"):
        columns = [name for name in change["per_class"].columns if name not in ("class", "minority")]
        changes = tuple(name for name in columns if name.startswith("Δ"))
        st.dataframe(change["per_class"], hide_index=True, key="whatif_table", column_config=widgets.score_columns(
            *[name for name in columns if name not in changes], changes=changes))


@st.fragment
def tuner(record: RunRecord) -> None:
    with errors.guard():  # inside: a fragment rerun runs only this body
        start = state.whatif_start(record)
        seeds = {"run": "this run's weights", **{scheme: scheme for scheme in SCHEMES}}
        scheme = st.segmented_control("Seed the weights from", list(seeds), format_func=seeds.get, default="run",
                                      required=True, key="whatif_seed")
        for note in start.notes():
            st.caption(note)
        estimate = refit_estimate(start)
        slow = live_refit_note(start, estimate)
        if slow:
            st.warning(slow, icon=":material/speed:")
        with st.form("whatif_weights", border=False) if slow else contextlib.nullcontext():
            weights = weight_sliders(start, scheme)  # in a form, the values it had at the last Refit press
            st.caption(SCALE_NOTE)
            if slow:
                st.form_submit_button("Refit", icon=":material/refresh:")
        tau = record.tau or 0.0
        if record.approach in LOGIT_APPROACHES:
            tau = st.slider("Logit adjustment tau (no refit)", 0.0, 3.0, float(tau), 0.05,
                            key=f"whatif_tau_{record.run_id}")
        inputs = (record.run_id, tuple(weights))
        last = st.session_state.get("whatif_last")
        if last is None or last[0] != inputs:
            time.sleep(DEBOUNCE_S)
            # a newer change arriving meanwhile restarts the page here
            with st.spinner("Refitting…" + (f" (about {duration(estimate)})" if estimate else "")):
                last = (inputs, state.whatif_refit(start, weights, 0.0))  # tau and offsets rescore below
            st.session_state["whatif_last"] = last
        with st.expander("Decision offsets per class (no refit)"):
            offsets = offset_sliders(start, last[1])
        outcome = {**last[1], **rescore(start, last[1], tau, offsets if offsets.any() else None)}
        show_test = st.toggle("Show the test scores (held-out check)", value=True, key="whatif_show_test")
        seen = st.session_state.setdefault("whatif_test_seen", set())
        if show_test:
            seen.add(record.run_id)
        show_changes(start, outcome, show_test, (inputs[1], float(tau), tuple(np.round(offsets, 6))))
        if access.read_only_note("save tuned weights as a run") and st.button("Save as run", key="whatif_save",
                                                                              icon=":material/save:"):
            saved = state.save_whatif(start, weights, tau, outcome["offsets"], record.run_id in seen)
            st.success(f"Saved run `{saved.run_id}`.")
            widgets.page_link("results", label="Open it on Results", icon=":material/insights:",
                              query_params={"run": saved.run_id})


st.title("What-if")
st.caption("Tune a run's class weights: move a class's weight and the model refits on the cached features "
           "(the SVM reuses its kernel; on a few thousand images the linear models retrain in about a second), "
           "with 3-fold validation on the training images; tau and per-class offsets only rescore. Nothing is "
           "stored until you save.")
with errors.guard():
    runs = widgets.dataset_runs([run for run in state.list_runs() if run.approach in FEATURE_APPROACHES],
                                "whatif_all_data")
    if not runs:
        widgets.no_runs_hint()
    else:
        tuner(widgets.pick_run(runs, "Start from run (on cached features)", "whatif_run"))

"""Train page: choose backbone, approaches and imbalance remedies, launch a job and follow its progress."""
import streamlit as st

from core.analysis import weight_table, weights_from_table
from core.errors import ClassWeightError
from core.metric_labels import LABELS, RANKING
from core.experiment import ExperimentConfig
from core.experiment import estimate_experiment
from core.paths import cache_dir
from core.report import escape_markdown, run_records
from core.settings import BY_NAME, SETTINGS
from core.remedies import describe, page_choices, parse_remedy, remedy_warnings
from core.weights import SCALE_NOTE, SCHEMES
from dashboard import access, errors, state, widgets

MAIN_SETTINGS = ("backbone", "pool", "approaches", "epochs")


def read_settings() -> dict:
    """The main and advanced settings (as declared in core.settings) as ExperimentConfig keyword arguments."""
    main = st.columns(2)
    settings = {name: widgets.setting_widget(main[i % 2], BY_NAME[name]) for i, name in enumerate(MAIN_SETTINGS)}
    with st.expander("Advanced"):
        columns = st.columns(3)
        advanced = [s for s in SETTINGS if s.on_page and s.name not in MAIN_SETTINGS]
        settings.update({s.name: widgets.setting_widget(columns[i % 3], s) for i, s in enumerate(advanced)})
    seeds = settings["seeds"]  # the page's one seed field: one seed, or several that repeat each run
    return {**settings, "seed": seeds[0] if seeds else BY_NAME["seed"].default, "seeds": seeds if len(seeds) > 1 else ()}


def reset_weight_editor() -> None:
    st.session_state.pop("weight_editor", None)


def edit_custom_weights(data, beta: float) -> dict | None:
    """The per-class weight editor; returns the edited `{class: weight}` or None (error shown) when invalid."""
    st.subheader("Custom class weights")
    base_col, reset_col = st.columns([3, 1], vertical_alignment="bottom")
    base = base_col.selectbox("Start from", list(SCHEMES), index=1, key="custom_base", on_change=reset_weight_editor)
    reset_col.button("Reset", key="reset_weights", on_click=reset_weight_editor, width="stretch")
    edited = st.data_editor(weight_table(data, base, beta), key="weight_editor", hide_index=True, height="content",
                            disabled=["class", "train", "minority"], column_config={
                                "weight": st.column_config.NumberColumn("weight", min_value=0.0, format="%.4f")})
    st.caption(SCALE_NOTE)
    try:
        return weights_from_table(edited, data.classes)
    except ClassWeightError as err:
        st.error(f"Invalid class weights: {err}", icon=":material/error:")
        return None


def render_job(job) -> bool:
    """Status, per-stage progress, cancel and outcome of `job`; returns whether it is still active."""
    if job is None:
        st.caption("No job yet: launch one on the left.")
        return False
    st.markdown(f"**{escape_markdown(job.name)}** · {escape_markdown(widgets.job_brief(job))}")
    if job.status != "done":
        for stage, (done, total) in job.progress.items():
            st.progress(min(done / total, 1.0) if total else 1.0, text=f"{stage}: {done}/{total}")
        if job.note:
            st.caption(job.note)  # e.g. a fine-tune's epoch, validation score so far and time left
    if state.is_active(job):
        st.button("Cancel", key="cancel_job", on_click=state.cancel_job, args=(job.id,), disabled=not access.can_act())
    elif job.status == "failed":
        errors.show_failure(f"The job failed: {job.error}", job.traceback)
    elif job.status == "cancelled":
        st.warning("The job was cancelled; runs finished before that are kept.", icon=":material/cancel:")
    else:
        show_outcome(job.result)
    return state.is_active(job)


def show_outcome(results: dict) -> None:
    extract = widgets.format_seconds(results["extract_seconds"])
    if results["cache_hit"]:
        st.success(f"Features loaded from cache in {widgets.format_seconds(results['feature_seconds'])} "
                   f"(the first extraction took {extract}).")
    elif results["feature_key"]:
        st.success(f"Features extracted in {extract} and cached for the next runs.")
    runs = run_records(results)
    widgets.runs_dataframe(runs, key="job_runs",  # few, short columns: this panel is narrow
                           columns=("run", LABELS[RANKING], f"cross-fitted validation {LABELS[RANKING]}"),
                           short={f"cross-fitted validation {LABELS[RANKING]}": "validation"})
    for note in results.get("skipped_runs", []):
        st.caption(note)
    chosen = next((run for run in runs if run.run_id == results.get("best_by_validation")), None)
    if chosen:
        widgets.page_link("results", label=f"Open the run validation picks ({chosen.approach} · {chosen.remedy_label}:"
                          f" best cross-fitted validation macro-F1 on the training images)", icon=":material/verified:",
                          query_params={"run": chosen.run_id})
    best = max(runs, key=lambda run: run.macro_f1)
    name = escape_markdown(f"{best.approach} · {best.remedy_label}")
    widgets.page_link("results", label=f"Open the run with the highest test macro-F1 ({name}); picked on the "
                      "test set, so not a validated choice",
                      icon=":material/insights:", query_params={"run": best.run_id})
    widgets.page_link("compare", label="Compare all runs", icon=":material/compare_arrows:")


st.title("Train")
settings_col, job_col = st.columns([5, 4], gap="large")
with settings_col, errors.guard():
    settings = read_settings()
    remedies = st.multiselect("Imbalance remedies", page_choices(), default=["none", "balanced"], key="train_schemes",
                              help="every approach is trained once per remedy it supports (the others are skipped "
                              "with a note); tau and offsets are chosen on training folds, never on the test set; "
                              "custom uses the table below")
    for remedy in remedies:
        st.caption(describe(remedy))  # each part named with what it does
        for warning in remedy_warnings(parse_remedy(remedy)):
            st.warning(escape_markdown(warning), icon=":material/warning:")
    data = state.dataset(state.data_dir(), settings["test_size"], settings["seed"])
    weights = [s for s in remedies if s != "custom"]
    if "custom" in remedies:
        weights.append(edit_custom_weights(data, settings["beta"]))
    incomplete = not settings["approaches"] or not weights
    if incomplete:
        st.caption("Pick at least one approach and one remedy to launch.")
    allowed = access.read_only_note("launch or cancel training jobs")
    ready = not incomplete and None not in weights and allowed

    def config() -> ExperimentConfig:
        return ExperimentConfig(data=data.root, remedies=tuple(weights), cache_dir=str(cache_dir()),
                                **state.data_options(), **settings)
    if "finetune" in settings["approaches"] and st.button(
            "Estimate fine-tune time", key="estimate_finetune", disabled=not ready, icon=":material/timer:",
            help="a short measured probe of this machine at this image size (about half a minute)"):
        with st.spinner("Measuring a fine-tune step on this machine…"):
            st.info(estimate_experiment(config().validate())["text"], icon=":material/timer:")
    if st.button("Launch training", key="launch", type="primary", disabled=not ready, icon=":material/play_arrow:"):
        state.launch(config())
with job_col:
    st.subheader("Job")
    widgets.live(lambda: render_job(state.current_job()), every_s=1, poll=state.is_active(state.current_job()))

"""Train page: choose backbone, approaches and class weights, launch a job and follow its progress."""
import streamlit as st

import ui
from core.analysis import weight_table, weights_from_table
from core.backbones import POOLS, list_backbones
from core.errors import ClassWeightError
from core.experiment import APPROACHES, SVM_KERNELS, ExperimentConfig
from core.weights import SCHEMES

BUILTIN_SCHEMES = [s for s in SCHEMES if s != "custom"]


def read_settings() -> dict:
    """The main and advanced settings as ExperimentConfig keyword arguments."""
    left, right = st.columns(2)
    settings = dict(
        backbone=left.selectbox("Backbone", list_backbones(), key="train_backbone"),
        pool=right.selectbox("Pooling", POOLS, key="train_pool"),
        approaches=tuple(left.multiselect(
            "Approaches", APPROACHES, default=["svm", "head"], key="train_approaches",
            help="svm and head reuse cached features; finetune trains through the backbone")),
        epochs=right.number_input("Epochs", 1, 500, 20, key="train_epochs", help="head and finetune only"),
    )
    with st.expander("Advanced"):
        a, b, c = st.columns(3)
        settings.update(
            image_size=a.number_input("Image size (short side, px)", 16, 2048, 224, key="train_image_size"),
            lr=b.number_input("Learning rate", 1e-6, 1.0, 3e-3, format="%.4f", key="train_lr"),
            batch_size=c.number_input("Batch size", 1, 1024, 32, key="train_batch_size"),
            test_size=a.number_input("Test size", 0.05, 0.9, 0.2, key="train_test_size",
                                     help="test fraction for single-folder datasets (DIR/<class>/*)"),
            seed=b.number_input("Seed", 0, 2**31 - 1, 0, key="train_seed"),
            unfreeze_last=c.checkbox("Unfreeze last", key="train_unfreeze",
                                     help="fine-tune also trains the backbone's last block (at lr / 10)"),
            svm_kernel=a.selectbox("SVM kernel", SVM_KERNELS, key="train_svm_kernel"),
            svm_c=b.number_input("SVM C", 1e-4, 1e4, 1.0, key="train_svm_c"),
            tau=c.number_input("Logit adjustment tau", 0.0, 5.0, 0.0, step=0.1, key="train_tau"),
            beta=a.number_input("Effective-number beta", 0.5, 0.99999, 0.999, format="%.5f", key="train_beta"),
        )
    return settings


def reset_weight_editor() -> None:
    st.session_state.pop("weight_editor", None)


def edit_custom_weights(data, beta: float) -> dict | None:
    """The per-class weight editor; returns the edited `{class: weight}` or None (error shown) when invalid."""
    st.subheader("Custom class weights")
    base_col, reset_col = st.columns([3, 1], vertical_alignment="bottom")
    base = base_col.selectbox("Start from", BUILTIN_SCHEMES, index=1, key="custom_base", on_change=reset_weight_editor)
    reset_col.button("Reset", key="reset_weights", on_click=reset_weight_editor, width="stretch")
    edited = st.data_editor(weight_table(data, base, beta), key="weight_editor", hide_index=True, height="content",
                            disabled=["class", "train", "minority"], column_config={
                                "weight": st.column_config.NumberColumn("weight", min_value=0.0, format="%.4f")})
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
    st.markdown(f"**{job.name}** · {ui.job_brief(job)}")
    if job.status != "done":
        for stage, (done, total) in job.progress.items():
            st.progress(min(done / total, 1.0) if total else 1.0, text=f"{stage}: {done}/{total}")
    if ui.is_active(job):
        st.button("Cancel", key="cancel_job", on_click=ui.cancel_job, args=(job.id,), disabled=not ui.can_act())
    elif job.status == "failed":
        ui.show_failure(f"The job failed: {job.error}", job.traceback)
    elif job.status == "cancelled":
        st.warning("The job was cancelled; runs finished before that are kept.", icon=":material/cancel:")
    else:
        show_outcome(job.result)
    return ui.is_active(job)


def show_outcome(results: dict) -> None:
    extract = ui.format_seconds(results["extract_seconds"])
    if results["cache_hit"]:
        st.success(f"Features loaded from cache in {ui.format_seconds(results['feature_seconds'])} "
                   f"(the first extraction took {extract}).")
    elif results["feature_key"]:
        st.success(f"Features extracted in {extract} and cached for the next runs.")
    ui.runs_dataframe(results["runs"], key="job_runs", columns=("approach", "class weight", "macro-F1"))
    best = max(results["runs"], key=lambda run: run["macro_f1"])
    st.page_link(ui.page("results"), label=f"Open the best run ({best['approach']} · {best['class_weight']})",
                 query_params={"run": best["run_id"]}, icon=":material/insights:")
    st.page_link(ui.page("compare"), label="Compare all runs", icon=":material/compare_arrows:")


st.title("Train")
settings_col, job_col = st.columns([3, 2], gap="large")
with settings_col, ui.guard():
    settings = read_settings()
    schemes = st.multiselect("Class weights", SCHEMES, default=["none", "balanced"], key="train_schemes",
                             help="every approach is trained once per scheme; custom uses the table below")
    data = ui.dataset(ui.data_dir(), settings["test_size"], settings["seed"])
    weights = [s for s in schemes if s != "custom"]
    if "custom" in schemes:
        weights.append(edit_custom_weights(data, settings["beta"]))
    incomplete = not settings["approaches"] or not weights
    if incomplete:
        st.caption("Pick at least one approach and one class-weight scheme to launch.")
    allowed = ui.read_only_note("launch or cancel training jobs")
    if st.button("Launch training", key="launch", type="primary", disabled=incomplete or None in weights or not allowed,
                 icon=":material/play_arrow:"):
        ui.launch(ExperimentConfig(data=data.root, class_weights=tuple(weights), cache_dir=str(ui.cache_dir()),
                                   **settings))
with job_col:
    st.subheader("Job")
    ui.live(lambda: render_job(ui.current_job()), every_s=1, poll=ui.is_active(ui.current_job()))

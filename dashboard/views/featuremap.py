"""Feature map page: train and test images placed by their cached features; select points to see the images."""
import streamlit as st

from core.estimates import duration, map_steps
from core.experiment import FEATURE_APPROACHES
from core.featuremap import map_points, misclassified_first
from core.figures import feature_map_figure
from core.records import RunRecord
from dashboard import access, errors, state, widgets


def show_map(record: RunRecord, coords) -> None:
    start = state.whatif_start(record)
    classes = start.classes
    points = map_points(start.dataset, state.run_view(record.run_id).labels()[1])
    fig = feature_map_figure(coords, points["labels"], classes, is_test=points["is_test"],
                             predicted=points["predicted"], names=points["names"],
                             minority=record.minority)
    st.caption("Colour = true class; ● train, ◆ test classified correctly, ✕ test misclassified by this run. "
               "Hover for file and classes; drag a box or lasso around points to see their images.")
    chosen = misclassified_first(points, [data[0] for data in widgets.selected_points(fig, key="feature_map")])
    if not chosen:
        return
    st.subheader(f"{len(chosen)} selected image(s)")
    st.caption("Misclassified test images first, then the other test images, then training images.")
    captions = [f"{points['names'][i]}: {classes[points['labels'][i]]}"
                + (f" → {classes[points['predicted'][i]]}" if points["predicted"][i] >= 0 else " (train)")
                for i in chosen]
    widgets.gallery([points["paths"][i] for i in chosen], captions)


def feature_map_job_panel(record: RunRecord) -> None:
    """Progress of the map job of this run's features, or the button that starts it (owner only)."""
    job = state.feature_map_job(record.feature_key)

    def render() -> bool:
        current = state.feature_map_job(record.feature_key)
        if state.is_active(current):
            st.progress(_share_done(current), text=f"Computing the feature map: {widgets.job_brief(current)}")
            st.caption(current.note)
        elif current is not None and current.status == "failed":
            errors.show_failure(f"The feature map failed: {current.error}", current.traceback)
        return state.is_active(current)

    widgets.live(render, every_s=1, poll=state.is_active(job))
    if state.is_active(job) or not access.read_only_note("compute the feature map"):
        return
    n_images = sum(record.dataset.train_counts) + sum(record.dataset.test_counts)
    seconds = sum(s for _, s in map_steps(n_images, (record.backbone or {}).get("feature_dim", 1280)))
    st.info(f"No map of these features yet: computing it for these {n_images:,} images takes about "
            f"{duration(seconds)} on a 2-core machine (it grows a little faster than the images), once.")
    if st.button("Compute the feature map", key="compute_map", icon=":material/scatter_plot:"):
        state.launch_feature_map(record)
        st.rerun()


def _share_done(job) -> float:
    done, total = job.progress.get(job.message, (0, 1))
    return done / max(total, 1)


st.title("Feature map")
with errors.guard():
    runs = widgets.dataset_runs([run for run in state.list_runs() if run.approach in FEATURE_APPROACHES],
                                "map_all_data")
    if not runs:
        widgets.no_runs_hint()
    else:
        record = widgets.pick_run(runs, f"Run on cached features ({' / '.join(FEATURE_APPROACHES)})", "map_run")
        coords = state.feature_map(record.feature_key)
        if coords is None:
            feature_map_job_panel(record)
        else:
            show_map(record, coords)

"""Feature map page: train and test images placed by their cached features; select points to see the images."""
import streamlit as st

import panels
import ui
from core.experiment import FEATURE_APPROACHES
from core.featuremap import map_points, misclassified_first
from core.figures import feature_map_figure


def show_map(record: dict, coords) -> None:
    start = ui.whatif_start(record)
    classes = start.classes
    points = map_points(start.dataset, ui.load_predictions(record["run_id"])["pred"].to_numpy())
    fig = feature_map_figure(coords, points["labels"], classes, is_test=points["is_test"],
                             predicted=points["predicted"], names=points["names"],
                             minority=[row["minority"] for row in record["per_class"]])
    st.caption("Colour = true class; ● train, ◆ test classified correctly, ✕ test misclassified by this run. "
               "Hover for file and classes; drag a box or lasso around points to see their images.")
    chosen = misclassified_first(points, [data[0] for data in panels.selected_points(fig, key="feature_map")])
    if not chosen:
        return
    st.subheader(f"{len(chosen)} selected image(s)")
    st.caption("Misclassified test images first, then the other test images, then training images.")
    captions = [f"{points['names'][i]}: {classes[points['labels'][i]]}"
                + (f" → {classes[points['predicted'][i]]}" if points["predicted"][i] >= 0 else " (train)")
                for i in chosen]
    panels.gallery([points["paths"][i] for i in chosen], captions)


st.title("Feature map")
with ui.guard():
    runs = [run for run in ui.list_runs() if run["approach"] in FEATURE_APPROACHES]
    if not runs:
        ui.no_runs_hint()
    else:
        record = panels.pick_run(runs, "Features and test predictions of run (svm or head)", "map_run")
        coords = ui.feature_map(record["feature_key"])
        if coords is None:
            panels.feature_map_job_panel(record)
        else:
            show_map(record, coords)

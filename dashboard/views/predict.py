"""Predict page: apply a stored run to new images (owner only): each image's class and its top-k classes."""
import streamlit as st

from core.experiment import best_by_validation
from core.scan import IMAGE_EXTENSIONS
from core.style import SCORE_FORMAT
from dashboard import access, errors, state, widgets

TOP_K = 3
COLUMNS = 4
MAX_SHOWN = 48


def show_explanation(run_id: str, path: str) -> None:
    """The place for why the run decided so on this image: the explanation issue draws its heat map here."""


def show_prediction(predictions, i: int, run_id: str, names: dict) -> None:
    path, best = predictions.paths[i], predictions.top_k(i, TOP_K)
    st.image(state.thumbnail(path), caption=names.get(path, access.shown_path(path).rsplit("/", 1)[-1]))
    st.markdown(f"**{best[0]['class']}**")
    value = "probability" if predictions.logits else "score"
    st.dataframe({"class": [b["class"] for b in best], value: [b[value] for b in best]}, hide_index=True,
                 key=f"top_k_{i}", column_config={"probability": st.column_config.ProgressColumn(
                     "probability", min_value=0.0, max_value=1.0, format=SCORE_FORMAT)})
    show_explanation(run_id, path)


st.title("Predict")
with errors.guard():
    runs = state.list_runs()
    if not runs:
        widgets.no_runs_hint()
    elif access.read_only_note("upload images or predict on them"):
        record = widgets.pick_run(runs, "Run", "predict_run", default=best_by_validation(runs))
        st.caption("Preselected: the run with the best validation macro-F1 (chosen without the test set). Images "
                   "go through the run's backbone, preprocessing, classifier and decision rule (tau, offsets).")
        source = st.radio("Images", ("Upload", "A folder on this machine"), horizontal=True, key="predict_source")
        if source == "Upload":
            files = st.file_uploader("Drop images here", type=[e.lstrip(".") for e in IMAGE_EXTENSIONS],
                                     accept_multiple_files=True, key="predict_upload")
            paths = state.save_uploads(files) if files else []
            names = dict(zip(paths, (file.name for file in files or [])))  # uploads are stored by content
        else:
            folder = st.text_input("Folder of images (searched recursively)", key="predict_folder").strip()
            paths, names = ([folder] if folder else []), {}
        if paths:
            predictions = state.predict_images(record.run_id, paths)
            for path, reason in predictions.skipped:
                st.warning(f"Skipped {access.shown_path(path)}: {reason}", icon=":material/warning:")
            for note in predictions.notes:
                st.info(note)
            shown = min(len(predictions.paths), MAX_SHOWN)
            if len(predictions.paths) > shown:
                st.caption(f"Showing {shown} of {len(predictions.paths)} images; `python -m core predict` writes all.")
            for start in range(0, shown, COLUMNS):
                for i, column in zip(range(start, min(start + COLUMNS, shown)), st.columns(COLUMNS)):
                    with column:
                        show_prediction(predictions, i, record.run_id, names)

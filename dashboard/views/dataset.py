"""Dataset page: class balance, minority classes, sample images, image sizes and skipped files."""
from pathlib import Path

import streamlit as st

from core.analysis import class_table, image_size_summary, sample_paths
from core.errors import ConfigError
from core.duplicates import DUPLICATE_SIMILARITY
from core.figures import class_distribution_figure
from core.metrics import MINORITY_FRACTION
from core.report import escape_markdown
from dashboard import access, errors, state, why, widgets

THUMBNAILS_PER_CLASS = 5
THUMBNAIL_PX = 120
DUPLICATES_SHOWN = 12
DUPLICATE_COLUMNS = 3
PAIR_PX = 112  # two side by side fit a third of the page at 1280 px
SKIPPED_ROWS = 1000  # skipped files and train/test file pairs listed (all are counted)
SKIP_REASONS_SHOWN = 3  # in the warning; the table below lists them all


def show_overview(data, table) -> None:
    counts = table["train"]
    cols = st.columns(4)
    cols[0].metric("Classes", len(data.classes))
    cols[1].metric("Train images", len(data.train))
    cols[2].metric("Test images", len(data.test))
    cols[3].metric("Imbalance (largest / smallest)", f"{counts.max() / counts.min():.1f}×")
    minority = table.loc[table["minority"], "class"].tolist()
    if minority:
        names = ", ".join(map(escape_markdown, minority))
        st.markdown(f"**Minority classes** (train count < {MINORITY_FRACTION:g} × median): {names}")


def show_balance(data, table) -> None:
    widgets.chart(class_distribution_figure(data.classes, data.train_counts, data.test_counts, table["minority"]),
                  key="class_distribution")
    counts_col, sizes_col = st.columns([3, 2])
    with counts_col:
        st.caption("Images per class")
        st.dataframe(table, hide_index=True, key="class_counts", height="content", column_config={
            "train share": st.column_config.NumberColumn(format="percent")})
    with sizes_col:
        st.caption("Image sizes")
        st.dataframe(image_size_summary(data.samples), key="image_sizes", column_config={
            "aspect (w/h)": st.column_config.NumberColumn(format="%.2f")})


def show_samples(data) -> None:
    st.subheader("Sample images")
    for name, paths in sample_paths(data, THUMBNAILS_PER_CLASS).items():
        name_col, images_col = st.columns([1, 4], vertical_alignment="center")
        name_col.markdown(f"**{escape_markdown(name)}**")
        images_col.image(state.thumbnails(paths), width=THUMBNAIL_PX)


def show_skipped(data) -> None:
    if data.skipped:
        reasons = "".join(f"\n- {row['count']} × {escape_markdown(access.shown_text(row['reason']))}"
                          for row in data.skipped_counts[:SKIP_REASONS_SHOWN])
        st.warning(f"{len(data.skipped)} file(s) or folder(s) were skipped and are used neither for training nor "
                   f"for testing; the most frequent reasons:{reasons}", icon=":material/warning:")
        st.dataframe(data.skipped_counts, hide_index=True, key="skipped_reasons")
        with st.expander("Skipped files"):
            rows = [{"file": access.shown_path(path), "reason": access.shown_text(reason)}
                    for path, reason in data.skipped[:SKIPPED_ROWS]]
            st.dataframe(rows, hide_index=True, key="skipped_files")
            if len(data.skipped) > SKIPPED_ROWS:
                where = f" (all in {escape_markdown(access.shown_path(data.skipped_file))})" if data.skipped_file else ""
                st.caption(f"The first {SKIPPED_ROWS} of {len(data.skipped)}{where}.")


def show_overlap(data) -> None:
    """Test images that are training files (copies, hard links): a leak the scan proves, before any feature."""
    if data.overlap:
        st.error(f"{len(data.overlap)} test image(s) are also training images (byte-identical files or hard "
                 "links): a leak that inflates test scores; remove them from one of the two splits.",
                 icon=":material/content_copy:")
        rows = [{"test": access.shown_path(test), "train": access.shown_path(train), "how": how}
                for train, test, how in data.overlap[:SKIPPED_ROWS]]
        st.dataframe(rows, hide_index=True, key="overlap_files")


def near_duplicates_panel(data) -> None:
    """Train/test pairs whose features nearly match (a possible leak), with thumbnails of each pair."""
    st.subheader("Near-duplicates between train and test")
    threshold = st.slider("Cosine similarity of centred features at least", 0.90, 1.0, DUPLICATE_SIMILARITY, 0.005,
                          key="duplicate_threshold", help="features minus the training mean; different photos "
                          "of the same kind of object score up to about 0.94, re-encoded or resized copies above 0.97")
    try:
        pairs = state.near_duplicate_pairs(data, threshold)
    except ConfigError as reason:  # no run with cached features yet: say why, this is no failure
        st.caption(f"No check yet: {escape_markdown(access.shown_text(reason))}.")
        return
    if not pairs:
        st.success(f"No test image has a training image with feature similarity ≥ {threshold:.3f}.")
        return
    st.warning(f"{len(pairs)} test image(s) nearly duplicate a training image: a possible leak that "
               "inflates test scores.", icon=":material/content_copy:")
    columns = st.columns(DUPLICATE_COLUMNS)
    for i, pair in enumerate(pairs[:DUPLICATES_SHOWN]):
        test, train = data.test[pair["test"]], data.train[pair["train"]]
        with columns[i % DUPLICATE_COLUMNS]:
            st.caption(f"similarity {pair['similarity']:.4f} · {escape_markdown(data.classes[test.label])} (test) ↔ "
                       f"{escape_markdown(data.classes[train.label])} (train)")
            widgets.gallery([test.path, train.path],
                            [f"test: {Path(test.path).name}", f"train: {Path(train.path).name}"], width_px=PAIR_PX)
    if len(pairs) > DUPLICATES_SHOWN:
        st.caption(f"Showing the {DUPLICATES_SHOWN} most similar of {len(pairs)} pairs.")


st.title("Dataset")
with errors.guard():
    folder = state.data_dir()
    folder_col, rescan_col = st.columns([5, 1], vertical_alignment="center")
    where = "change it in the sidebar" if access.can_act() else "set by the server"
    folder_col.caption(f"Folder: {escape_markdown(access.shown_path(folder))} ({where})")
    if rescan_col.button("Rescan", key="rescan", icon=":material/refresh:", help="read every file again",
                         disabled=not access.can_act()):
        state.rescan_dataset(folder)
    data = state.dataset(folder)
    table = class_table(data)
    show_overview(data, table)
    show_overlap(data)
    show_skipped(data)
    show_balance(data, table)
    show_samples(data)
    near_duplicates_panel(data)
    why.label_issues_panel(data)

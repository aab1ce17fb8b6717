"""Dataset page: class balance, minority classes, sample images, image sizes and skipped files."""
import streamlit as st

import panels
import ui
from core.analysis import class_table, image_size_summary, sample_paths
from core.figures import class_distribution_figure
from core.metrics import MINORITY_FRACTION
from core.report import escape_markdown

THUMBNAILS_PER_CLASS = 5
THUMBNAIL_PX = 120


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
    ui.chart(class_distribution_figure(data.classes, data.train_counts, data.test_counts, table["minority"]),
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
        images_col.image(ui.thumbnails(paths), width=THUMBNAIL_PX)


def show_skipped(data) -> None:
    if data.skipped:
        st.warning(f"{len(data.skipped)} file(s) were skipped and are not used for training.",
                   icon=":material/warning:")
        rows = [{"file": ui.shown_path(path), "reason": ui.shown_text(reason)} for path, reason in data.skipped]
        st.dataframe(rows, hide_index=True, key="skipped_files")


st.title("Dataset")
with ui.guard():
    folder = ui.data_dir()
    folder_col, rescan_col = st.columns([5, 1], vertical_alignment="center")
    where = "change it in the sidebar" if ui.can_act() else "set by the server"
    folder_col.caption(f"Folder: {escape_markdown(ui.shown_path(folder))} ({where})")
    if rescan_col.button("Rescan", key="rescan", icon=":material/refresh:", help="read every file again",
                         disabled=not ui.can_act()):
        ui.rescan_dataset(folder)
    data = ui.dataset(folder)
    table = class_table(data)
    show_overview(data, table)
    show_skipped(data)
    show_balance(data, table)
    show_samples(data)
    panels.near_duplicates_panel(data)

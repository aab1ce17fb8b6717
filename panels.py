"""Streamlit panels shared by several pages: image galleries, selectable charts, the feature map, near-duplicates."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

import ui
from core.analysis import noise_note, paired_table, paired_verdict, run_labels
from core.errors import ConfigError
from core.featuremap import DUPLICATE_SIMILARITY
from core.report import escape_markdown

GALLERY_MAX = 24
GALLERY_PX = 144
DUPLICATES_SHOWN = 12
DUPLICATE_COLUMNS = 3
PAIR_PX = 112  # two side by side fit a third of the page at 1280 px


def pick_run(runs: list[dict], label: str, key: str) -> dict:
    """Run selectbox, newest first, in sync with the `?run=<id>` deep link; the chosen record."""
    labels = run_labels(runs)
    ids = list(labels)
    wanted = st.query_params.get("run")
    if wanted and wanted not in labels:
        st.warning("The run in the link does not exist here (deleted, or not a run this page shows); "
                   "showing the newest run instead.")
    run_id = st.selectbox(label, ids, index=ids.index(wanted) if wanted in labels else 0, format_func=labels.get,
                          key=key)
    st.query_params["run"] = run_id
    return next(run for run in runs if run["run_id"] == run_id)


def gallery(paths: list[str], captions: list[str] | None = None, max_images: int = GALLERY_MAX,
            width_px: int = GALLERY_PX) -> None:
    """Thumbnails of `paths` this session may see and that still exist, at most `max_images`."""
    captions = dict(zip(paths, captions or [Path(path).name for path in paths]))
    allowed, hidden = ui.viewable_paths(paths)
    shown = [path for path in allowed if Path(path).is_file()]
    if hidden:
        st.caption(f"{hidden} image(s) lie outside the shared dataset folder and are not shown to viewers.")
    if len(shown) < len(allowed):
        st.caption(f"{len(allowed) - len(shown)} image(s) are no longer at their recorded path (dataset moved?).")
    if shown:
        st.image(ui.thumbnails(shown[:max_images]), width=width_px, caption=[captions[p] for p in shown[:max_images]])
    if len(shown) > max_images:
        st.caption(f"Showing {max_images} of {len(shown)} images.")


def selected_points(fig, key: str, modes=("box", "lasso"), on_select="rerun", args=()) -> list:
    """Draw a plotly figure whose points can be selected; the `customdata` of the selected points.

    `on_select` is "rerun" or a callback, called with `args` when the selection changes.
    """
    if callable(on_select):
        callback, on_select = on_select, lambda: callback(*args)
    event = st.plotly_chart(fig, width="stretch", key=key, on_select=on_select, selection_mode=modes,
                            config={"displaylogo": False})
    return [point["customdata"] for point in event.selection.points if "customdata" in point]


def feature_map_job_panel(record: dict) -> None:
    """Progress of the map job of this run's features, or the button that starts it (owner only)."""
    job = ui.feature_map_job(record["feature_key"])

    def render() -> bool:
        current = ui.feature_map_job(record["feature_key"])
        if ui.is_active(current):
            st.progress(_share_done(current), text=f"Computing the feature map: {ui.job_brief(current)}")
        elif current is not None and current.status == "failed":
            ui.show_failure(f"The feature map failed: {current.error}", current.traceback)
        return ui.is_active(current)

    ui.live(render, every_s=1, poll=ui.is_active(job))
    if ui.is_active(job) or not ui.read_only_note("compute the feature map"):
        return
    st.info("No map of these features yet: computing it takes a minute for a few thousand images, once.")
    if st.button("Compute the feature map", key="compute_map", icon=":material/scatter_plot:"):
        ui.launch_feature_map(record)
        st.rerun()


def _share_done(job) -> float:
    done, total = job.progress.get(job.message, (0, 1))
    return done / max(total, 1)


def near_duplicates_panel(data) -> None:
    """Train/test pairs whose features nearly match (a possible leak), with thumbnails of each pair."""
    st.subheader("Near-duplicates between train and test")
    threshold = st.slider("Cosine similarity of features at least", 0.90, 1.0, DUPLICATE_SIMILARITY, 0.005,
                          key="duplicate_threshold")
    try:
        pairs = ui.near_duplicate_pairs(data, threshold)
    except ConfigError as reason:  # no run with cached features yet: say why, this is no failure
        st.caption(f"No check yet: {escape_markdown(ui.shown_text(reason))}.")
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
            gallery([test.path, train.path], [f"test: {Path(test.path).name}", f"train: {Path(train.path).name}"],
                    width_px=PAIR_PX)
    if len(pairs) > DUPLICATES_SHOWN:
        st.caption(f"Showing the {DUPLICATES_SHOWN} most similar of {len(pairs)} pairs.")


def paired_test(paired: dict, key: str, names: str = "") -> None:
    """The paired comparison of B with A: each metric's change with its 95% interval, and what is noise."""
    st.dataframe(paired_table(paired), hide_index=True, key=key,
                 column_config={c: st.column_config.NumberColumn(format="%+.3f")
                                for c in ("B − A", "95% low", "95% high")})
    st.caption(" ".join(filter(None, (names, paired_verdict(paired), noise_note(paired)))))

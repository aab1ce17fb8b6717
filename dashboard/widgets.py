"""Widgets shared by the sidebar and several pages: run picker, gallery, charts, runs table, settings, paired test."""
from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from core.analysis import noise_note, on_dataset, paired_table, paired_verdict, run_table
from core.naming import dataset_key, run_labels
from core.jobs import Job
from core.estimates import duration
from core.records import RunRecord
from core.report import escape_markdown
from core.sharing import run_link
from core.settings import BY_NAME, DATASET_SETTINGS, Setting, parse_list
from core.style import SCORE_CHANGE_FORMAT, SCORE_FORMAT
from dashboard import access, state, views

DATA_DIR_HELP = "An image folder: DIR/<class>/* (split for you) or DIR/train/<class>/* + DIR/test/<class>/*"
GALLERY_MAX = 24
GALLERY_PX = 144


def page_link(name: str, label: str, icon: str, **kwargs) -> None:
    """A link to page `name` (`dashboard/views/<name>.py`, as app.py lists it); kwargs go to st.page_link."""
    st.page_link(st.Page(views.path(name)), label=label, icon=icon, **kwargs)


def dataset_folder_input() -> None:
    """The sidebar's dataset folder and label-file options, kept in the URL (`?data=`, `?labels=`, ...) so a
    reload, the back button or a link keep them; read-only, the server's dataset, for viewers (the URL's ignored)."""
    if access.can_act():
        fields = url_fields()
        for key, param in fields.items():  # a new session (reload, link) starts from the URL
            if key not in st.session_state:
                st.session_state[key] = st.query_params.get(param, state.default_data_dir() if key == "data_dir"
                                                            else "")
        st.text_input("Dataset folder", key="data_dir", help=DATA_DIR_HELP)
        with st.expander("Label files, separate test folder", expanded=any(st.session_state[f"data_{name}"]
                                                                           for name in DATASET_SETTINGS)):
            for name in DATASET_SETTINGS:
                st.text_input(BY_NAME[name].label, key=f"data_{name}", help=BY_NAME[name].help)
        for key, param in fields.items():
            value = st.session_state[key].strip()
            if value and value != (state.default_data_dir() if key == "data_dir" else ""):
                st.query_params[param] = value
            else:
                st.query_params.pop(param, None)
    else:
        if any(param in st.query_params for param in url_fields().values()):
            st.caption("The link's dataset folder is ignored: viewers see the server's dataset only.")
        st.text_input("Dataset folder", value=access.shown_path(state.default_data_dir()), key="data_dir_shared",
                      disabled=True,
                      help="The server's dataset; viewers of a shared dashboard cannot change it")


def url_fields() -> dict[str, str]:
    """{session-state key: URL query parameter} of the sidebar's dataset fields."""
    return {"data_dir": "data", **{f"data_{name}": name for name in DATASET_SETTINGS}}


def sharing_badge() -> None:
    """A sidebar badge on a shared dashboard: viewer or owner (nothing when not sharing)."""
    if not access.viewer_mode():
        return
    if access.can_act():
        st.badge("Owner", icon=":material/lock_open:", color="green")
    else:
        st.badge("Viewer mode (read-only)", icon=":material/visibility:", color="gray")


def sidebar_job_status() -> None:
    """The current job in brief, refreshed while it is queued or running."""
    def render() -> bool:
        job = state.current_job()
        if job is None:
            st.caption("No training job yet.")
            return False
        st.caption(f"Job **{escape_markdown(job.name)}**: {escape_markdown(job_brief(job))}")
        return state.is_active(job)

    live(render, every_s=2, poll=state.is_active(state.current_job()))


def live(render, every_s: float, poll: bool) -> None:
    """Run `render()` in a fragment that re-runs every `every_s` while `poll`; a full rerun once it stops.

    `render()` returns whether the thing it shows is still active.
    """
    @st.fragment(run_every=every_s if poll else None)
    def panel():
        if not render() and poll:
            st.rerun()

    panel()


def job_brief(job: Job) -> str:
    """One line: status plus the latest stage's progress or the queue position."""
    if job.status == "queued":
        return f"queued: {job.message or _jobs_ahead(job)}"
    if job.status == "running" and job.message:
        done, total = job.progress[job.message]
        left = job.time_left_s()
        estimate = "" if left is None else f" · about {duration(left)} left"
        return f"running · {job.message} {done}/{total} · {duration(time.time() - job.started)}{estimate}"
    return "running · starting (no stage reported yet)" if job.status == "running" else job.status


def _job_progress(job: Job) -> bool:
    """A progress bar of `job`'s latest stage; whether it is still active."""
    done, total = job.progress.get(job.message, (0, 1)) if job.message else (0, 1)
    st.progress(min(done / max(total, 1), 1.0), text=escape_markdown(job_brief(job)))
    return state.is_active(job)


def _jobs_ahead(job: Job) -> str:
    ahead = state.job_manager().queue_position(job.id) or 0
    return f"{ahead} job{'s' if ahead != 1 else ''} ahead"


def no_runs_hint() -> None:
    """Friendly empty state pointing to the Train page, or the progress of the demo's first comparison."""
    job = state.demo_comparison_job()
    if state.is_active(job):
        st.info("The demo's first comparison is being trained in the background; its runs appear here as they "
                "finish (the page refreshes).", icon=":material/hourglass_top:")
        live(lambda: _job_progress(state.demo_comparison_job()) and not state.run_store().list_runs(), every_s=2,
             poll=True)  # the whole page again once the first run is stored
        return
    st.info("No runs yet on this dataset. Train a model first: pick approaches and remedies, then launch.",
            icon=":material/info:")
    page_link("train", label="Go to Train", icon=":material/model_training:")


def score_columns(*names: str, changes: tuple[str, ...] = ()) -> dict:
    """Column configs showing scores (`names`) and signed changes of scores (`changes`) in the one declared format."""
    return {**{name: st.column_config.NumberColumn(format=SCORE_FORMAT) for name in names},
            **{name: st.column_config.NumberColumn(format=SCORE_CHANGE_FORMAT) for name in changes}}


def runs_dataframe(records: list[RunRecord], key: str, columns: tuple[str, ...] | None = None,
                   short: dict[str, str] | None = None) -> None:
    """The runs table (optionally only `columns`, some headed by `short` names, the full one in their help) with
    a link that opens each run on the Results page."""
    table = run_table(records)
    table.insert(0, "open", [f"results?run={record.run_id}" for record in records])
    scores = score_columns(*table.select_dtypes("number").columns)
    st.dataframe(table, hide_index=True, key=key, column_order=("open", *columns) if columns else None,
                 column_config={"open": st.column_config.LinkColumn("open", display_text="Results", width="small"),
                                **scores, **{name: st.column_config.NumberColumn(label, help=name, format=SCORE_FORMAT)
                                             for name, label in (short or {}).items()}})


def chart(fig, key: str | None = None) -> None:
    """A plotly figure at full container width."""
    st.plotly_chart(fig, width="stretch", key=key, config={"displaylogo": False})


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def dataset_runs(runs: list[RunRecord], key: str) -> list[RunRecord]:
    """The runs on the sidebar's dataset; every run behind a switch (on by itself for a deep link to another
    dataset's run). All runs when the dataset folder cannot be read."""
    current = state.current_dataset()
    here = runs if current is None else on_dataset(runs, current)
    others = len(runs) - len(here)
    if not others:
        return runs
    wanted = st.query_params.get("run")
    if wanted and wanted not in {run.run_id for run in here} and wanted in {run.run_id for run in runs}:
        st.session_state[key] = True
    if st.toggle(f"Show runs of other datasets too ({others})", key=key,
                 help="by default this page lists only the runs trained on the dataset folder in the sidebar"):
        return runs
    return here


def picker_labels(runs: list[RunRecord]) -> dict[str, str]:
    """`run_labels(runs)`, naming each run's dataset whenever the store holds runs of several datasets."""
    return run_labels(runs, show_dataset=len({dataset_key(run) for run in state.list_runs()}) > 1)


def pick_run(runs: list[RunRecord], label: str, key: str, default: str | None = None) -> RunRecord:
    """Run selectbox, newest first, in sync with the `?run=<id>` deep link; the chosen record.

    Without a link it starts on run `default` when given (e.g. the best by validation), else the newest."""
    labels = picker_labels(runs)
    ids = list(labels)
    wanted = st.query_params.get("run")
    if wanted and wanted not in labels:
        st.warning("The run in the link does not exist here (deleted, or not a run this page shows); "
                   f"showing the {'default' if default in labels else 'newest'} run instead.")
    start = wanted if wanted in labels else default if default in labels else ids[0]
    run_id = st.selectbox(label, ids, index=ids.index(start), format_func=labels.get, key=key)
    st.query_params["run"] = run_id
    return next(run for run in runs if run.run_id == run_id)


def gallery(paths: list[str], captions: list[str] | None = None, max_images: int = GALLERY_MAX,
            width_px: int = GALLERY_PX) -> None:
    """Thumbnails of `paths` this session may see and that still exist, at most `max_images`."""
    captions = dict(zip(paths, captions or [Path(path).name for path in paths]))
    allowed, hidden = access.viewable_paths(paths)
    shown = [path for path in allowed if Path(path).is_file()]
    if hidden:
        st.caption(f"{hidden} image(s) lie outside the shared dataset folder and are not shown to viewers.")
    if len(shown) < len(allowed):
        st.caption(f"{len(allowed) - len(shown)} image(s) are no longer at their recorded path (dataset moved?).")
    if shown:
        st.image(state.thumbnails(shown[:max_images]), width=width_px,
                 caption=[captions[p] for p in shown[:max_images]])
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


def paired_test(paired: dict, key: str, names: str = "", family: str = "") -> None:
    """The paired comparison of B with A: each metric's change with its 95% interval, and what is noise
    (`family`: what adjusting for the other comparisons shown with it says)."""
    st.dataframe(paired_table(paired), hide_index=True, key=key,
                 column_config=score_columns(changes=("B − A", "95% low", "95% high")))
    st.caption(" ".join(filter(None, (names, paired_verdict(paired), noise_note(paired), family))))


def findings(found, names: dict[str, str]) -> None:
    """A numbered list of findings (core.findings), each with its evidence and links that open its runs."""
    lines = []
    for i, finding in enumerate(found, 1):
        links = ", ".join(f"[{escape_markdown(names.get(run_id, run_id))}]({run_link(run_id)})"
                          for run_id in finding.run_ids)
        lines.append(f"{i}. {escape_markdown(finding.text)} *({escape_markdown(finding.evidence)})*"
                     + (f" — {links}" if links else ""))
    st.markdown("\n".join(lines) if lines else "Train more runs on this dataset to see findings.")


def setting_widget(container, setting: Setting):
    """The widget of one declared setting (key `train_<name>`); returns its value."""
    key, label, help_text = f"train_{setting.name}", setting.label, setting.help
    if setting.many and setting.choices:
        return tuple(container.multiselect(label, setting.choices, default=list(setting.default), key=key,
                                           help=help_text))
    if setting.many:
        return parse_list(container.text_input(label, ",".join(map(str, setting.default)), key=key, help=help_text),
                          setting.type)
    if setting.choices:
        return container.selectbox(label, setting.choices, index=setting.choices.index(setting.default), key=key,
                                   help=help_text)
    if setting.type is bool:
        return container.checkbox(label, setting.default, key=key, help=help_text)
    return container.number_input(label, setting.type(setting.low), setting.type(setting.high), setting.default,
                                  key=key, help=help_text, format="%g" if setting.type is float else "%d")

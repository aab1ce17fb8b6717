"""Streamlit helpers shared by app.py and the pages: settings, caches, jobs, errors and small widgets.

The only module that uses Streamlit caching. Runs are immutable once saved, so their records and
predictions are cached by run id; the run list itself is re-read on every script run.
"""
from __future__ import annotations

import contextlib
import os
import time
import traceback
from pathlib import Path

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core import analysis
from core.data import Dataset, build_demo_dataset, load_dataset
from core.errors import TransferScopeError
from core.experiment import ExperimentConfig, run_experiment
from core.jobs import ACTIVE_STATUSES, Job, JobManager
from core.runs import RunStore

APP_DIR = Path(__file__).resolve().parent
PAGES = {  # url path -> (title, icon)
    "dataset": ("Dataset", ":material/photo_library:"),
    "train": ("Train", ":material/model_training:"),
    "results": ("Results", ":material/insights:"),
    "compare": ("Compare", ":material/compare_arrows:"),
}
DEMO_DATASET = "datasets/digits-demo"


def _leave_legacy_pages_mode() -> None:
    """Make the first run of a fresh server go through app.py's router.

    Until st.navigation has run once in the process, Streamlit treats a `pages/` folder as a legacy
    multipage app and runs e.g. /train's script without app.py (no sidebar, wrong menu). This module is
    first imported during such a run: switch the mode off and rerun. (Unneeded if `pages/` is renamed.)
    """
    if PagesManager.uses_pages_directory and get_script_run_ctx() is not None:
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_legacy_pages_mode()


def page(name: str) -> st.Page:
    """The st.Page of `pages/<name>.py`, for st.navigation and st.page_link alike."""
    title, icon = PAGES[name]
    return st.Page(APP_DIR / "pages" / f"{name}.py", title=title, icon=icon, url_path=name,
                   default=name == next(iter(PAGES)))


# ---- settings --------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where features and runs live: env TRANSFERSCOPE_CACHE_DIR, default `cache`."""
    return Path(os.environ.get("TRANSFERSCOPE_CACHE_DIR", "cache"))


def default_data_dir() -> str:
    """Env TRANSFERSCOPE_DATA, else the demo dataset under the cache (built on first use)."""
    return os.environ.get("TRANSFERSCOPE_DATA") or _demo_dataset(str(cache_dir() / DEMO_DATASET))


@st.cache_resource(show_spinner="Building the demo dataset…")
def _demo_dataset(path: str) -> str:
    if not Path(path).is_dir():
        build_demo_dataset(path)
    return path


def data_dir() -> str:
    """The dataset folder typed in the sidebar, or the default one."""
    return st.session_state.get("data_dir", "").strip() or default_data_dir()


# ---- caches ----------------------------------------------------------------------------------------

@st.cache_resource(on_release=JobManager.shutdown)
def job_manager() -> JobManager:
    """One JobManager per server, so jobs outlive page switches, reloads and sessions."""
    return JobManager()


@st.cache_resource
def _run_store(root: str) -> RunStore:
    return RunStore(root)


def run_store() -> RunStore:
    return _run_store(str(cache_dir() / "runs"))


@st.cache_data(show_spinner="Scanning images…", max_entries=8)
def dataset(path: str, test_size: float = 0.2, seed: int = 0) -> Dataset:
    """The dataset at `path` (raises DataError for an unusable folder)."""
    return load_dataset(path, test_size=test_size, seed=seed)


@st.cache_data(max_entries=2000, show_spinner=False)
def thumbnail(path: str) -> bytes:
    """A small PNG of an image file, for galleries (full-size photos would be slow to send)."""
    return analysis.thumbnail(path)


def thumbnails(paths: list[str]) -> list[bytes]:
    return [thumbnail(path) for path in paths]


def list_runs() -> list[dict]:
    """All run records, newest first (not cached: jobs add runs at any time)."""
    return run_store().list_runs()


@st.cache_data(max_entries=256)
def _load_run(root: str, run_id: str) -> dict:
    return _run_store(root).load(run_id)


@st.cache_data(max_entries=32)
def _load_predictions(root: str, run_id: str):
    return _run_store(root).load_predictions(run_id)


def load_run(run_id: str) -> dict:
    return _load_run(str(run_store().root), run_id)


def load_predictions(run_id: str):
    return _load_predictions(str(run_store().root), run_id)


# ---- errors ----------------------------------------------------------------------------------------

def show_failure(message: str, details: str | None = None) -> None:
    """A readable error box, with the technical details folded away."""
    st.error(message, icon=":material/error:")
    if details:
        with st.expander("Details"):
            st.code(details, language=None)


@contextlib.contextmanager
def guard():
    """Show errors raised in the block as messages instead of tracebacks (Streamlit's rerun/stop pass)."""
    try:
        yield
    except TransferScopeError as err:
        show_failure(str(err))
    except Exception as err:  # noqa: BLE001 - the page must stay usable whatever went wrong
        show_failure(f"Something went wrong: {type(err).__name__}: {err}", traceback.format_exc())


# ---- jobs ------------------------------------------------------------------------------------------

def launch(config: ExperimentConfig) -> None:
    """Queue an experiment on the shared JobManager as this session's job, then rerun the app.

    The rerun makes the sidebar and the job panel follow the new job at once.
    """
    config.validate()
    name = f"{config.backbone}: {' + '.join(config.approaches)}"
    st.session_state["job_id"] = job_manager().submit(name, lambda report: run_experiment(config, progress=report)).id
    st.rerun()


def current_job() -> Job | None:
    """This session's job, else (new session, e.g. after a reload) the newest job of the server."""
    manager = job_manager()
    job = manager.get(st.session_state.get("job_id", ""))
    if job is None:
        job = next(iter(manager.jobs()), None)
    if job is not None:
        st.session_state["job_id"] = job.id
    return job


def is_active(job: Job | None) -> bool:
    return job is not None and job.status in ACTIVE_STATUSES


def job_brief(job: Job) -> str:
    """One line: status plus the latest stage's progress or the queue position."""
    if job.status == "queued":
        return f"queued: {_jobs_ahead(job)}"
    if job.status == "running" and job.message:
        done, total = job.progress[job.message]
        return f"running · {job.message} {done}/{total} · {time.time() - job.started:.0f} s"
    return job.status


def _jobs_ahead(job: Job) -> str:
    ahead = job_manager().queue_position(job.id) or 0
    return f"{ahead} job{'s' if ahead != 1 else ''} ahead"


def live(render, every_s: float, poll: bool) -> None:
    """Run `render()` in a fragment that re-runs every `every_s` while `poll`; a full rerun once it stops.

    `render()` returns whether the thing it shows is still active.
    """
    @st.fragment(run_every=every_s if poll else None)
    def panel():
        if not render() and poll:
            st.rerun()

    panel()


def sidebar_job_status() -> None:
    """The current job in brief, refreshed while it is queued or running."""
    def render() -> bool:
        job = current_job()
        if job is None:
            st.caption("No training job yet.")
            return False
        st.caption(f"Job **{job.name}**: {job_brief(job)}")
        return is_active(job)

    live(render, every_s=2, poll=is_active(current_job()))


# ---- small shared widgets --------------------------------------------------------------------------

def no_runs_hint() -> None:
    """Friendly empty state pointing to the Train page."""
    st.info("No runs yet. Train a model first: pick approaches and class weights, then launch.",
            icon=":material/info:")
    st.page_link(page("train"), label="Go to Train", icon=":material/model_training:")


def runs_dataframe(records: list[dict], key: str, columns: tuple[str, ...] | None = None) -> None:
    """The runs table (optionally only `columns`) with a link that opens each run on the Results page."""
    table = analysis.run_table(records)
    table.insert(0, "open", [f"results?run={record['run_id']}" for record in records])
    scores = {name: st.column_config.NumberColumn(format="%.3f")
              for name in ("accuracy", "balanced accuracy", "macro-F1", "fit s", "predict s")}
    st.dataframe(table, hide_index=True, key=key, column_order=("open", *columns) if columns else None,
                 column_config={"open": st.column_config.LinkColumn("open", display_text="Results", width="small"),
                                **scores})


def chart(fig, key: str | None = None) -> None:
    """A plotly figure at full container width."""
    st.plotly_chart(fig, width="stretch", key=key, config={"displaylogo": False})


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"

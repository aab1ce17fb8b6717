"""Streamlit helpers shared by app.py and the pages: settings, caches, jobs, errors and small widgets.

The only module that uses Streamlit caching. Runs are immutable once saved, so their records and
predictions are cached by run id; the run list itself is re-read on every script run. Any browser can
clear Streamlit's caches, so what must survive that (the job manager, dataset scans) lives in plain
module globals instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core import analysis, featuremap, sharing, whatif
from core.data import Dataset, build_demo_dataset, load_dataset
from core.errors import ConfigError, ReadOnlyError, TransferScopeError
from core.experiment import FEATURE_APPROACHES, ExperimentConfig, run_experiment
from core.jobs import ACTIVE_STATUSES, Job, JobManager, compute_slot_path
from core.report import escape_markdown, render_runs_report
from core.runs import RunStore

APP_DIR = Path(__file__).resolve().parent
PAGES = {  # url path -> (title, icon)
    "dataset": ("Dataset", ":material/photo_library:"),
    "train": ("Train", ":material/model_training:"),
    "results": ("Results", ":material/insights:"),
    "compare": ("Compare", ":material/compare_arrows:"),
    "whatif": ("What-if", ":material/tune:"),
    "featuremap": ("Feature map", ":material/scatter_plot:"),
    "share": ("Share", ":material/share:"),
}
DEMO_DATASET = "datasets/digits-demo"
OWNER_KEY = "owner_unlocked"  # session flag: the owner typed the token in this browser session
DATA_DIR_HELP = "An image folder: DIR/<class>/* (split for you) or DIR/train/<class>/* + DIR/test/<class>/*"
STRICT_ENV = "TRANSFERSCOPE_STRICT"  # "1" (tests): guard re-raises unexpected errors instead of showing them
VIEWER_BUILDS = sharing.Throttle(max_events=6, per_s=60)  # reports and bundles built for viewers, whole server
VIEWER_REFITS = sharing.Throttle(max_events=20, per_s=60)  # What-if refits of all viewers together
SESSION_REFITS = {"max_events": 6, "per_s": 60}  # What-if refits of one viewer session


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
    """The dataset folder typed in the sidebar, or the default one (always the default for viewers)."""
    if not can_act():
        return default_data_dir()
    return st.session_state.get("data_dir", "").strip() or default_data_dir()


def dataset_folder_input() -> None:
    """The sidebar's dataset folder: editable, or read-only showing the server's dataset for viewers."""
    if can_act():
        st.text_input("Dataset folder", value=default_data_dir(), key="data_dir", help=DATA_DIR_HELP)
    else:
        st.text_input("Dataset folder", value=shown_path(default_data_dir()), key="data_dir_shared", disabled=True,
                      help="The server's dataset; viewers of a shared dashboard cannot change it")


# ---- sharing ---------------------------------------------------------------------------------------

def viewer_mode() -> bool:
    """Whether the server shares the dashboard read-only (`make share`)."""
    return sharing.viewer_mode()


def can_act() -> bool:
    """Whether this session may change things: always, unless the dashboard is shared and still locked.

    The one check behind every action (launch, cancel, delete, import, dataset folder). Pages disable
    their buttons with it; the actions below check it again, since a browser can send a disabled
    widget's value anyway.
    """
    return not viewer_mode() or bool(st.session_state.get(OWNER_KEY))


def require_owner(action: str) -> None:
    """Raise ReadOnlyError naming `action` unless this session may act."""
    if not can_act():
        raise ReadOnlyError(f"cannot {action}: this dashboard is shared read-only; "
                            "the owner unlocks actions with the token on the Share page")


def read_only_note(action: str) -> bool:
    """Explain to a viewer why they cannot `action` and how the owner unlocks it; return can_act()."""
    if can_act():
        return True
    st.info(f"Read-only: this dashboard is shared for viewing, so you cannot {action} here. The owner unlocks "
            "actions on the Share page with the token printed by `make share` (or `python -m core owner-token`).",
            icon=":material/lock:")
    return False


def client_is_local() -> bool:
    """Whether this browser connects from the server machine itself (Streamlit gives no IP for loopback)."""
    return sharing.is_loopback(st.context.ip_address)


def unlock(token: str) -> bool:
    """Unlock actions for this browser session if `token` is the owner's and typed on this machine."""
    if not client_is_local() or not sharing.is_owner(token, cache_dir()):
        return False
    st.session_state[OWNER_KEY] = True
    return True


def lock() -> None:
    st.session_state.pop(OWNER_KEY, None)


def sharing_badge() -> None:
    """A sidebar badge on a shared dashboard: viewer or owner (nothing when not sharing)."""
    if not viewer_mode():
        return
    if can_act():
        st.badge("Owner", icon=":material/lock_open:", color="green")
    else:
        st.badge("Viewer mode (read-only)", icon=":material/visibility:", color="gray")


def viewable_paths(paths: list[str]) -> tuple[list[str], int]:
    """The image paths this session may see, and how many were held back.

    Viewers see only files inside the server's dataset folder, whatever paths a run recorded.
    """
    if can_act():
        return list(paths), 0
    root = default_data_dir()
    shown = [path for path in paths if sharing.is_within(path, root)]
    return shown, len(paths) - len(shown)


def shown_path(path: str) -> str:
    """`path` as this session may see it: whole for the owner; for viewers relative to the served dataset."""
    return str(path) if can_act() else _path_names().name(path, sharing.OTHER_FOLDER)


def shown_text(text: str) -> str:
    """A message as this session may see it: for viewers, every path in it relative to the served dataset."""
    return str(text) if can_act() else _path_names().text(text)


def shown_record(record: dict) -> dict:
    """A run record as this session may see it (for viewers a copy: dataset folder and paths renamed)."""
    return record if can_act() else _path_names().record(record)


def _path_names() -> sharing.PathNames:
    return sharing.PathNames(default_data_dir(), cache_dir())


def app_url() -> str:
    """The dashboard's root URL as this browser sees it ("" when unknown), for links to share."""
    return sharing.app_base_url(st.context.url, PAGES)


# ---- caches ----------------------------------------------------------------------------------------

_JOB_MANAGERS: dict[str, JobManager] = {}  # compute-slot path -> manager; no Streamlit message reaches it
_JOB_MANAGERS_LOCK = threading.Lock()


def job_manager() -> JobManager:
    """The server's JobManager for this cache folder, so jobs outlive page switches, reloads and sessions.

    Held in a module global, not st.cache_resource: any connected browser can clear Streamlit's caches.
    """
    slot = str(compute_slot_path(cache_dir().resolve()))
    with _JOB_MANAGERS_LOCK:
        if slot not in _JOB_MANAGERS:
            _JOB_MANAGERS[slot] = JobManager(slot_path=slot)
        return _JOB_MANAGERS[slot]


def shutdown_job_managers() -> None:
    """Cancel every job and forget the managers (tests start each from scratch)."""
    with _JOB_MANAGERS_LOCK:
        managers = list(_JOB_MANAGERS.values())
        _JOB_MANAGERS.clear()
    for manager in managers:
        manager.shutdown()


@st.cache_resource
def _run_store(root: str) -> RunStore:
    return RunStore(root)


def run_store() -> RunStore:
    return _run_store(str(cache_dir() / "runs"))


SPLIT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ExperimentConfig) if f.name in ("test_size", "seed")}


@functools.lru_cache(maxsize=8)
def _scan(path: str, test_size: float, seed: int, cache: str) -> Dataset:
    return load_dataset(path, test_size=test_size, seed=seed, cache_dir=cache)


def dataset(path: str, test_size: float = SPLIT_DEFAULTS["test_size"], seed: int = SPLIT_DEFAULTS["seed"]) -> Dataset:
    """The dataset at `path`, scanned once per server process (raises DataError for an unusable folder).

    Unchanged files are not re-read. Viewers always get the default split, so their inputs cannot make
    the server scan the folder again.
    """
    if not can_act():
        test_size, seed = SPLIT_DEFAULTS["test_size"], SPLIT_DEFAULTS["seed"]
    with st.spinner("Scanning images…"):
        return _scan(path, float(test_size), int(seed), str(cache_dir()))


def rescan_dataset(path: str) -> None:
    """Read every file under `path` again (refreshing its file index), then forget the scans (owner only)."""
    require_owner("rescan the dataset")
    load_dataset(path, cache_dir=cache_dir(), rescan=True)
    _scan.cache_clear()


@st.cache_data(max_entries=2000, show_spinner=False)
def thumbnail(path: str) -> bytes:
    """A small PNG of an image file, for galleries (full-size photos would be slow to send)."""
    return analysis.thumbnail(path)


def thumbnails(paths: list[str]) -> list[bytes]:
    """Thumbnails of `paths`; refuses, for viewers, any file outside the server's dataset folder."""
    shown, hidden = viewable_paths(paths)
    if hidden:
        raise ReadOnlyError(f"{hidden} image(s) lie outside the shared dataset folder; viewers see only its images")
    return [thumbnail(path) for path in shown]


def list_runs() -> list[dict]:
    """All valid run records, newest first (not cached: jobs add runs at any time).

    Warns about run folders that cannot be read; they stay listed for deletion on the Compare page.
    """
    records, broken = run_store().scan()
    if broken:
        reasons = "".join(f"\n- {reason}" for reason in broken.values()) if can_act() else ""
        st.warning(f"{len(broken)} run folder(s) cannot be read and are left out; the owner can delete them "
                   f"on the Compare page.{escape_markdown(reasons)}", icon=":material/warning:")
    return records


def broken_runs() -> dict[str, str]:
    """{run id: label} of the run folders list_runs leaves out, so they can still be deleted."""
    return {run_id: f"{run_id} (cannot be read)" for run_id in run_store().scan()[1]}


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


def _check_viewer_build(for_viewer: bool) -> None:
    """Refuse a viewer's build when viewers together asked for too many lately (builds cost CPU)."""
    wait_s = VIEWER_BUILDS.wait_s() if for_viewer else 0.0
    if wait_s:
        raise ReadOnlyError(f"viewers of this shared dashboard asked for many downloads just now; "
                            f"try again in {wait_s:.0f} s")


@st.cache_data(max_entries=4, show_spinner=False)  # built in a download click, outside any script run
def _report(root: str, run_ids: tuple[str, ...], fmt: str, for_viewer: bool, _names: sharing.PathNames) -> str:
    _check_viewer_build(for_viewer)  # only on a cache miss: a cached report costs nothing
    records = [_run_store(root).load(run_id) for run_id in run_ids]
    return render_runs_report([_names.record(r) for r in records] if for_viewer else records, fmt)


@st.cache_data(max_entries=2, show_spinner=False)
def _bundle(root: str, run_ids: tuple[str, ...], for_viewer: bool, _names: sharing.PathNames) -> bytes:
    _check_viewer_build(for_viewer)
    return _run_store(root).export_bundle_bytes(run_ids, _names.bundle_run if for_viewer else None)


def deferred_report(run_ids: list[str], fmt: str):
    """The 'html' (self-contained) or 'md' report of these runs as a download_button callable.

    It runs when the button is clicked, outside the script, with this session's rights (rate-limited
    for viewers, who get paths relative to the served dataset only).
    """
    root, run_ids, for_viewer, names = str(run_store().root), tuple(run_ids), not can_act(), _path_names()
    return lambda: _report(root, run_ids, fmt, for_viewer, names)


def deferred_bundle(run_ids: list[str]):
    """A zip bundle of these runs, for another TransferScope to import, as a download_button callable."""
    root, run_ids, for_viewer, names = str(run_store().root), tuple(run_ids), not can_act(), _path_names()
    return lambda: _bundle(root, run_ids, for_viewer, names)


@functools.lru_cache(maxsize=16)  # a module global, like the scans: no browser message clears it
def _paired(root: str, run_a: str, run_b: str) -> dict | None:
    store = _run_store(root)
    return analysis.paired_diff(store.load(run_a), store.load_predictions(run_a), store.load(run_b),
                                store.load_predictions(run_b))


def paired_diff(run_a: str, run_b: str) -> dict | None:
    """McNemar's test and paired bootstrap intervals of run B minus run A (see `core.analysis.paired_diff`).

    Computed once per pair of runs (they never change once saved): the bootstrap takes seconds on large
    test sets, and the Compare page runs again at every click.
    """
    return _paired(str(run_store().root), run_a, run_b)


def clear_run_caches() -> None:
    """Forget cached records, predictions, paired tests, reports and bundles (after runs were imported or deleted)."""
    for cached in (_load_run, _load_predictions, _report, _bundle):
        cached.clear()
    _paired.cache_clear()


def import_bundle(file) -> list[str]:
    """Import the runs of an uploaded bundle (owner only); return the ids newly imported."""
    require_owner("import runs")
    try:
        return run_store().import_bundle(file)
    finally:
        clear_run_caches()


def delete_runs(run_ids: list[str]) -> None:
    """Delete these runs (owner only)."""
    require_owner("delete runs")
    try:
        for run_id in run_ids:
            run_store().delete(run_id)
    finally:
        clear_run_caches()


# ---- errors ----------------------------------------------------------------------------------------

def show_failure(message: str, details: str | None = None) -> None:
    """A readable error box (shown literally: messages quote names), technical details folded away for the owner.

    Viewers see the paths in `message` relative to the served dataset only.
    """
    st.error(escape_markdown(shown_text(message)), icon=":material/error:")
    if details and can_act():
        with st.expander("Details"):
            st.code(details, language=None)


@contextlib.contextmanager
def guard():
    """Show errors raised in the block as messages instead of tracebacks (Streamlit's rerun/stop pass).

    An unexpected error (not a TransferScopeError) is a bug: with env TRANSFERSCOPE_STRICT=1 (the tests)
    it propagates, so Streamlit and the tests see it. Viewers see only its type, never its message or trace.
    """
    try:
        yield
    except TransferScopeError as err:
        show_failure(str(err))
    except Exception as err:  # noqa: BLE001 - the page must stay usable whatever went wrong
        if os.environ.get(STRICT_ENV) == "1":
            raise
        if can_act():
            show_failure(f"Something went wrong: {type(err).__name__}: {err}", traceback.format_exc())
        else:
            show_failure(f"Something went wrong ({type(err).__name__}); the owner sees the details.")


# ---- jobs ------------------------------------------------------------------------------------------

def launch(config: ExperimentConfig) -> None:
    """Queue an experiment on the shared JobManager as this session's job, then rerun the app.

    The rerun makes the sidebar and the job panel follow the new job at once.
    """
    require_owner("launch training")
    config.validate()
    name = f"{config.backbone}: {' + '.join(config.approaches)}"
    st.session_state["job_id"] = job_manager().submit(name, lambda report: run_experiment(config, progress=report)).id
    st.rerun()


def cancel_job(job_id: str) -> None:
    """Cancel a job (owner only); a button callback, so a refusal is shown, not raised."""
    with guard():
        require_owner("cancel jobs")
        job_manager().cancel(job_id)


def current_job() -> Job | None:
    """This session's job, else (new session, e.g. after a reload) the newest job of the server."""
    manager = job_manager()
    job = manager.get(st.session_state.get("job_id", ""))
    if job is None:  # training jobs only: feature-map jobs have pages of their own
        job = next((job for job in manager.jobs() if not job.name.startswith(MAP_JOB_PREFIX)), None)
    if job is not None:
        st.session_state["job_id"] = job.id
    return job


def is_active(job: Job | None) -> bool:
    return job is not None and job.status in ACTIVE_STATUSES


def job_brief(job: Job) -> str:
    """One line: status plus the latest stage's progress or the queue position."""
    if job.status == "queued":
        return f"queued: {job.message or _jobs_ahead(job)}"
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
        st.caption(f"Job **{escape_markdown(job.name)}**: {escape_markdown(job_brief(job))}")
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


# ---- what-if refits --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)  # a module global, like the scans: no browser message clears it
def _whatif_start(root: str, run_id: str, cache: str) -> whatif.Start:
    store = _run_store(root)
    record = store.load(run_id)
    split = {name: record.get("config", {}).get(name, default) for name, default in SPLIT_DEFAULTS.items()}
    return whatif.start_from(record, dataset(record["dataset"]["root"], **split), cache, store.load_predictions(run_id))


def whatif_start(record: dict) -> whatif.Start:
    """A svm or head run with its cached features, shared by every session (read-only, never mutated).

    Viewers may tune only runs on the server's dataset folder.
    """
    if not can_act() and not sharing.is_within(record["dataset"]["root"], default_data_dir()):
        raise ReadOnlyError("this run was trained on a folder outside the shared dataset; viewers may tune only "
                            "runs on the server's dataset")
    with st.spinner("Loading the run's cached features…"):
        return _whatif_start(str(run_store().root), record["run_id"], str(cache_dir()))


def whatif_refit(start: whatif.Start, weights, tau: float) -> dict:
    """`whatif.refit` for this session: the owner goes first; a viewer's fits are rate-limited (cached refits
    and tau changes are free) and wait while the owner's jobs run."""
    owner = can_act()
    return whatif.refit(start, weights, tau, owner=owner, admit=None if owner else _admit_viewer_refit)


def _admit_viewer_refit() -> None:
    if any(is_active(job) for job in job_manager().jobs()):
        raise ReadOnlyError("the owner's job is running on this server; viewers' What-if refits resume when it ends")
    session = st.session_state.setdefault("whatif_refits", sharing.Throttle(**SESSION_REFITS))
    wait_s = sharing.admit(session, VIEWER_REFITS)
    if wait_s:
        raise ReadOnlyError(f"viewers refit many times just now; this one can run in {wait_s:.0f} s "
                            "(weights tried before show at once)")


def save_whatif(start: whatif.Start, weights, tau: float) -> dict:
    """Store tuned weights as a normal run (owner only); its record."""
    require_owner("save runs")
    return whatif.save_as_run(start, weights, tau, run_store())


# ---- feature map and near-duplicates ---------------------------------------------------------------

MAP_JOB_PREFIX = "feature map "  # + feature key: the job's name

def feature_map(key: str):
    """The stored 2-D map of feature set `key`, or None before it was computed."""
    return featuremap.load_map(cache_dir(), key)


def feature_map_job(key: str) -> Job | None:
    """The newest job (any session's) computing the map of feature set `key`."""
    return next((job for job in job_manager().jobs() if job.name == f"{MAP_JOB_PREFIX}{key}"), None)


def launch_feature_map(record: dict) -> None:
    """Queue the map of a run's features on the shared JobManager (owner only)."""
    require_owner("compute the feature map")
    features, folder = whatif_start(record).features, cache_dir()
    X = (features.X_train, features.X_test)
    job_manager().submit(f"{MAP_JOB_PREFIX}{features.key}",
                         lambda report: featuremap.build_map(np.vstack(X), folder, features.key, report))


@st.cache_data(max_entries=8, show_spinner="Comparing train and test features…")
def _near_duplicates(root: str, run_id: str, cache: str, threshold: float) -> list[dict]:
    features = _whatif_start(root, run_id, cache).features
    return featuremap.near_duplicates(features.X_train, features.X_test, threshold)


def near_duplicate_pairs(data: Dataset, threshold: float) -> list[dict]:
    """Near-duplicate train/test pairs by the cached features of the newest svm/head run on `data`.

    Raises ConfigError (a reason to show, not a failure) when no such run has its features cached.
    """
    record = next((r for r in list_runs() if r["approach"] in FEATURE_APPROACHES
                   and r["dataset"].get("fingerprint") == data.fingerprint), None)
    if record is None:
        raise ConfigError("train a svm or head run on this dataset first: the check compares its cached features")
    whatif_start(record)  # checks what viewers may read, and that the features are still cached
    return _near_duplicates(str(run_store().root), record["run_id"], str(cache_dir()), threshold)

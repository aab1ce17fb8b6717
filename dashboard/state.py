"""The dashboard's server-side state: Streamlit caches, the job manager, dataset scans, run store access.

The only module that uses Streamlit caching. Runs are immutable once saved, so their records and
predictions are cached by run id; the run list is re-read whenever the runs folder changes. Any browser can
clear Streamlit's caches, so what must survive that (the job manager, dataset scans) lives in plain
module globals instead. Every action here checks `access.require_owner` itself.
"""
from __future__ import annotations

import functools
import threading
from pathlib import Path

import streamlit as st

from core.findings import Comparisons, Finding, family_pairs, findings
from core import analysis, bundles, duplicates, explain, featuremap, predict, sharing, whatif
from core import label_issues as label_issues_module
from core.config import run_split
from core.data import Dataset, build_demo_dataset, load_dataset
from core.errors import ConfigError, DataError, ReadOnlyError
from core.experiment import ExperimentConfig, run_experiment
from core.features import split_key
from core.jobs import ACTIVE_STATUSES, Job, JobManager, compute_slot_path
from core.paths import cache_dir, demo_dir
from core.report import escape_markdown, render_runs_report
from core.model_io import MODEL_FILE
from core.records import RunRecord
from core.run_view import RunView
from core.store import RunStore
from core.settings import DATASET_SETTINGS
from dashboard import access, errors

VIEWER_BUILDS = sharing.Throttle(max_events=6, per_s=60)  # reports and bundles built for viewers, whole server
VIEWER_REFITS = sharing.Throttle(max_events=20, per_s=60)  # What-if refits of all viewers together
SESSION_REFITS = {"max_events": 6, "per_s": 60}  # What-if refits of one viewer session
SPLIT_DEFAULTS = run_split()  # the declared test_size and seed
TRAINING_JOB = "experiment"  # job kinds; a training job's name says what it trains
MAP_JOB = "feature map"  # its name is the key of the feature set it maps
DUPLICATES_JOB = "near-duplicates"  # its name is the split key of the feature set it compares
_JOB_MANAGERS: dict[str, JobManager] = {}  # compute-slot path -> manager; no Streamlit message reaches it
_JOB_MANAGERS_LOCK = threading.Lock()
DEMO_JOB = "demo comparison: svm + logreg + head, none and balanced"
DEMO_COMPARISON = {"approaches": ("svm", "logreg", "head"), "remedies": ("none", "balanced")}  # else the defaults
_DEMO_LOCK = threading.Lock()


def default_data_dir() -> str:
    """The server's dataset folder (`access.server_data_dir`); the demo dataset is built there on first use."""
    folder = access.server_data_dir()
    return _demo_dataset(folder) if folder == str(demo_dir()) else folder


@st.cache_resource(show_spinner="Building the demo dataset…")
def _demo_dataset(path: str) -> str:
    if not Path(path).is_dir():
        build_demo_dataset(path)
    return path


def data_dir() -> str:
    """The dataset folder typed in the sidebar, or the default one (always the default for viewers)."""
    if not access.can_act():
        return default_data_dir()
    return st.session_state.get("data_dir", "").strip() or default_data_dir()


def job_manager() -> JobManager:
    """The server's JobManager for this cache folder, so jobs outlive page switches, reloads and sessions.

    Held in a module global, not st.cache_resource: any connected browser can clear Streamlit's caches.
    """
    slot = str(compute_slot_path(cache_dir().resolve()))
    with _JOB_MANAGERS_LOCK:
        if slot not in _JOB_MANAGERS:
            _JOB_MANAGERS[slot] = JobManager(slot_path=slot)
        return _JOB_MANAGERS[slot]


def reset_server_state() -> None:
    """Forget what this process holds outside Streamlit's caches, as a restart would (tests start each afresh):
    cancel every job, drop the job managers, the dataset scans, the what-if starts and refits, the paired tests."""
    with _JOB_MANAGERS_LOCK:
        managers = list(_JOB_MANAGERS.values())
        _JOB_MANAGERS.clear()
    for manager in managers:
        manager.shutdown()
    _scan.cache_clear()
    _whatif_start.cache_clear()
    _paired.cache_clear()
    _findings.cache_clear()
    whatif.REFITS.clear()
    whatif.PAIRED.clear()


@st.cache_resource
def _run_store(root: str) -> RunStore:
    return RunStore(root)


def run_store() -> RunStore:
    return _run_store(str(cache_dir() / "runs"))


def data_options() -> dict:
    """The dataset picker's label files and test folder (None when empty; viewers get the server's dataset)."""
    typed = {name: (st.session_state.get(f"data_{name}") or "").strip() if access.can_act() else ""
             for name in DATASET_SETTINGS}
    return {name: value or None for name, value in typed.items()}


@functools.lru_cache(maxsize=8)
def _scan(path: str, test_size: float, seed: int, cache: str, options: tuple) -> Dataset:
    return load_dataset(path, test_size=test_size, seed=seed, cache_dir=cache, **dict(options))


def dataset(path: str, test_size: float = SPLIT_DEFAULTS["test_size"], seed: int = SPLIT_DEFAULTS["seed"],
            options: dict | None = None) -> Dataset:
    """The dataset at `path`, scanned once per server process (raises DataError for an unusable folder).

    `options`: label files and test folder (default: the dataset picker's). Unchanged files are not
    re-read. Viewers always get the default split, so their inputs cannot make the server scan again.
    """
    options = data_options() if options is None else options
    if not access.can_act():
        test_size, seed = SPLIT_DEFAULTS["test_size"], SPLIT_DEFAULTS["seed"]
    with st.spinner("Scanning images…"):
        return _scan(path, float(test_size), int(seed), str(cache_dir()), tuple(sorted(options.items())))


def current_dataset() -> Dataset | None:
    """The sidebar's dataset with the default split, or None when its folder cannot be used (the Dataset page
    says why)."""
    try:
        return dataset(data_dir())
    except DataError:
        return None


def rescan_dataset(path: str) -> None:
    """Read every file under `path` again (refreshing its file index), then forget the scans (owner only)."""
    access.require_owner("rescan the dataset")
    load_dataset(path, cache_dir=cache_dir(), rescan=True, **data_options())
    _scan.cache_clear()


@st.cache_data(max_entries=2000, show_spinner=False)
def thumbnail(path: str) -> bytes:
    """A small PNG of an image file, for galleries (full-size photos would be slow to send)."""
    return analysis.thumbnail(path)


def thumbnails(paths: list[str]) -> list[bytes]:
    """Thumbnails of `paths`; refuses, for viewers, any file outside the server's dataset folder."""
    shown, hidden = access.viewable_paths(paths)
    if hidden:
        raise ReadOnlyError(f"{hidden} image(s) lie outside the shared dataset folder; viewers see only its images")
    return [thumbnail(path) for path in shown]


@st.cache_data(max_entries=4, show_spinner=False)
def _scan_runs(root: str, stamp: int | None) -> tuple[list[RunRecord], dict[str, str]]:
    return _run_store(root).scan()


def scan_runs() -> tuple[list[RunRecord], dict[str, str]]:
    """(valid records newest first, {broken run folder: why}), read again only when the runs folder changed.

    A run is published, imported or deleted by renaming its folder in or out, which changes the folder's
    modification time; until then every page run (each viewer's included) gets the list without reading a file.
    """
    root = run_store().root
    try:
        stamp = root.stat().st_mtime_ns
    except OSError:
        stamp = None  # no run stored yet
    return _scan_runs(str(root), stamp)


def list_runs() -> list[RunRecord]:
    """All valid run records, newest first (read again whenever a run was added or removed, see scan_runs).

    Warns about run folders that cannot be read; they stay listed for deletion on the Compare page.
    """
    records, broken = scan_runs()
    if broken:
        reasons = "".join(f"\n- {reason}" for reason in broken.values()) if access.can_act() else ""
        st.warning(f"{len(broken)} run folder(s) cannot be read and are left out; the owner can delete them "
                   f"on the Compare page.{escape_markdown(reasons)}", icon=":material/warning:")
    return records


def broken_runs() -> dict[str, str]:
    """{run id: label} of the run folders list_runs leaves out, so they can still be deleted."""
    return {run_id: f"{run_id} (cannot be read)" for run_id in scan_runs()[1]}


@st.cache_data(max_entries=256)
def _load_run(root: str, run_id: str) -> RunRecord:
    return _run_store(root).load(run_id)


@st.cache_data(max_entries=32)
def _load_predictions(root: str, run_id: str):
    return _run_store(root).load_predictions(run_id)


@st.cache_data(max_entries=32)
def _load_validation(root: str, run_id: str):
    return _run_store(root).load_validation(run_id)


def _view(root: str, run_id: str) -> RunView:
    return RunView(_load_run(root, run_id), lambda: _load_predictions(root, run_id),
                   lambda: _load_validation(root, run_id))


def run_view(run_id: str) -> RunView:
    """The run as pages read it (`core.run_view.RunView`): its tables come from these caches on first use."""
    return _view(str(run_store().root), run_id)


def load_run(run_id: str) -> RunRecord:
    return _load_run(str(run_store().root), run_id)


def check_downloads(count: bool = False) -> None:
    """Refuse a viewer's report or bundle build when viewers together asked for too many lately (builds cost
    CPU); the page checks first (`count=False`), where the reason shows, the build itself counts."""
    _check_viewer_build(not access.can_act(), count)


def _check_viewer_build(for_viewer: bool, count: bool = True) -> None:
    wait_s = VIEWER_BUILDS.wait_s(count=count) if for_viewer else 0.0
    if wait_s:
        raise ReadOnlyError(f"viewers of this shared dashboard asked for many downloads just now; "
                            f"try again in {wait_s:.0f} s")


@st.cache_data(max_entries=4, show_spinner=False)  # built in a download click, outside any script run
def _report(root: str, run_ids: tuple[str, ...], fmt: str, for_viewer: bool, base_url: str,
            _names: sharing.PathNames) -> str:
    _check_viewer_build(for_viewer)  # only on a cache miss: a cached report costs nothing
    records = [_run_store(root).load(run_id) for run_id in run_ids]
    return render_runs_report([_names.record(r) for r in records] if for_viewer else records, fmt,
                              compute=functools.partial(_paired, root), base_url=base_url)


@st.cache_data(max_entries=2, show_spinner=False)
def _bundle(root: str, run_ids: tuple[str, ...], for_viewer: bool, _names: sharing.PathNames) -> bytes:
    _check_viewer_build(for_viewer)
    return bundles.export_bundle_bytes(_run_store(root), run_ids, _names.bundle_run if for_viewer else None)


def deferred_report(run_ids: list[str], fmt: str, base_url: str = ""):
    """The 'html' (self-contained) or 'md' report of these runs as a download_button callable; its run links
    start with `base_url` (the dashboard's address).

    It runs when the button is clicked, outside the script, with this session's rights (rate-limited
    for viewers, who get paths relative to the served dataset only).
    """
    root, run_ids, for_viewer, names = str(run_store().root), tuple(run_ids), not access.can_act(), access.path_names()
    return _or_refusal(lambda: _report(root, run_ids, fmt, for_viewer, base_url, names), fmt)


def deferred_bundle(run_ids: list[str]):
    """A zip bundle of these runs, for another TransferScope to import, as a download_button callable."""
    root, run_ids, for_viewer, names = str(run_store().root), tuple(run_ids), not access.can_act(), access.path_names()
    return _or_refusal(lambda: _bundle(root, run_ids, for_viewer, names), "zip")


def _or_refusal(build, fmt: str):
    """`build` as a download callable whose refusal (a viewer over the build limit) is the file downloaded: it says
    why and when to try again, where a raised error would only log a traceback and fail the download."""
    def make():
        try:
            return build()
        except ReadOnlyError as refusal:
            return sharing.refusal_file(f"This download was not built: {refusal}.", fmt)
    return make


@functools.lru_cache(maxsize=16)  # a module global, like the scans: no browser message clears it
def _paired(root: str, run_a: str, run_b: str) -> dict | None:
    store = _run_store(root)
    return RunView.from_store(store, run_a).paired_with(RunView.from_store(store, run_b))


def paired_diff(run_a: str, run_b: str) -> dict | None:
    """McNemar's test and paired bootstrap intervals of run B minus run A (see `core.analysis.paired_diff`).

    Computed once per pair of runs (they never change once saved): the bootstrap takes seconds on large
    test sets, and the Compare page runs again at every click.
    """
    return _paired(str(run_store().root), run_a, run_b)


@functools.lru_cache(maxsize=8)
def _findings(root: str, run_ids: tuple[str, ...]) -> tuple[list[Finding], Comparisons]:
    records = [_run_store(root).load(run_id) for run_id in run_ids]
    comparisons = Comparisons(family_pairs(records), compute=functools.partial(_paired, root))
    return findings(records, comparisons), comparisons


def group_findings(records: list[RunRecord]) -> tuple[list[Finding], Comparisons]:
    """The findings of these runs (core.findings) and the Holm-adjusted family of paired tests behind them,
    computed once per set of runs (the paired tests come from `paired_diff`'s cache)."""
    return _findings(str(run_store().root), tuple(r.run_id for r in records))


def clear_run_caches() -> None:
    """Forget cached records, predictions, validation scores, paired tests, reports and bundles (after runs were
    imported or deleted)."""
    for cached in (_scan_runs, _load_run, _load_predictions, _load_validation, _report, _bundle):
        cached.clear()
    _paired.cache_clear()
    _findings.cache_clear()


def import_bundle(file) -> list[str]:
    """Import the runs of an uploaded bundle (owner only); return the ids newly imported."""
    access.require_owner("import runs")
    try:
        return bundles.import_bundle(run_store(), file)
    finally:
        clear_run_caches()


def delete_runs(run_ids: list[str]) -> None:
    """Delete these runs (owner only)."""
    access.require_owner("delete runs")
    try:
        for run_id in run_ids:
            run_store().delete(run_id)
    finally:
        clear_run_caches()


def start_demo_comparison() -> None:
    """On the demo's first start (the server shows the demo, no run stored, none building), queue a small
    comparison of it as a background job, so every page has runs to show within a minute or two."""
    folder = access.server_data_dir()
    if Path(folder).resolve() != demo_dir().resolve() or demo_comparison_job() is not None or run_store().list_runs():
        return
    config = ExperimentConfig(data=default_data_dir(), cache_dir=str(cache_dir()), **DEMO_COMPARISON)
    with _DEMO_LOCK:
        if demo_comparison_job() is None:
            job_manager().submit(DEMO_JOB, lambda report: run_experiment(config, progress=report), kind=TRAINING_JOB)


def demo_comparison_job() -> Job | None:
    """The job building the demo's first comparison, if this server started one."""
    return next((job for job in job_manager().jobs() if job.kind == TRAINING_JOB and job.name == DEMO_JOB), None)


def launch(config: ExperimentConfig) -> None:
    """Queue an experiment on the shared JobManager as this session's job, then rerun the app.

    The rerun makes the sidebar and the job panel follow the new job at once.
    """
    access.require_owner("launch training")
    config.validate()
    name = f"{config.backbone}: {' + '.join(config.approaches)}"
    st.session_state["job_id"] = job_manager().submit(name, lambda report: run_experiment(config, progress=report),
                                                      kind=TRAINING_JOB).id
    st.rerun()


def cancel_job(job_id: str) -> None:
    """Cancel a job (owner only); a button callback, so a refusal is shown, not raised."""
    with errors.guard():
        access.require_owner("cancel jobs")
        job_manager().cancel(job_id)


def current_job() -> Job | None:
    """This session's job, else (new session, e.g. after a reload) the newest job of the server."""
    manager = job_manager()
    job = manager.get(st.session_state.get("job_id", ""))
    if job is None:  # training jobs only: feature-map jobs have pages of their own
        job = next((job for job in manager.jobs() if job.kind == TRAINING_JOB), None)
    if job is not None:
        st.session_state["job_id"] = job.id
    return job


def is_active(job: Job | None) -> bool:
    return job is not None and job.status in ACTIVE_STATUSES


@functools.lru_cache(maxsize=2)  # a module global, like the scans: no browser message clears it
def _whatif_start(root: str, run_id: str, cache: str) -> whatif.Start:
    view = RunView.from_store(_run_store(root), run_id)
    record = view.record
    options = {name: record.setting(name) for name in DATASET_SETTINGS}
    data = dataset(record.dataset.root, **run_split(record), options=options)
    return whatif.start_from(record, data, cache, view.predictions)


def whatif_start(record: RunRecord) -> whatif.Start:
    """A svm or head run with its cached features, shared by every session (read-only, never mutated).

    Viewers may tune only runs on the server's dataset folder.
    """
    if not access.can_act() and not sharing.is_within(record.dataset.root, default_data_dir()):
        raise ReadOnlyError("this run was trained on a folder outside the shared dataset; viewers may tune only "
                            "runs on the server's dataset")
    with st.spinner("Loading the run's cached features…"):
        return _whatif_start(str(run_store().root), record.run_id, str(cache_dir()))


def whatif_refit(start: whatif.Start, weights, tau: float) -> dict:
    """`whatif.refit` for this session: the owner goes first; a viewer's fits are rate-limited (kept refits
    and tau changes are free) and wait while the owner's jobs run."""
    owner = access.can_act()
    return whatif.refit(start, weights, tau, owner=owner, admit=None if owner else _admit_viewer_refit)


def _admit_viewer_refit() -> None:
    if any(is_active(job) for job in job_manager().jobs()):
        raise ReadOnlyError("the owner's job is running on this server; viewers' What-if refits resume when it ends")
    session = st.session_state.setdefault("whatif_refits", sharing.Throttle(**SESSION_REFITS))
    wait_s = sharing.admit(session, VIEWER_REFITS)
    if wait_s:
        raise ReadOnlyError(f"viewers refit many times just now; this one can run in {wait_s:.0f} s "
                            "(weights tried before show at once)")


def save_whatif(start: whatif.Start, weights, tau: float, offsets=None, test_visible: bool = True) -> RunRecord:
    """Store tuned weights (and tau, offsets) as a normal run (owner only); its record."""
    access.require_owner("save runs")
    return whatif.save_as_run(start, weights, tau, run_store(), offsets=offsets, test_visible=test_visible)


def feature_map(key: str):
    """The stored 2-D map of feature set `key`, or None before it was computed."""
    return featuremap.load_map(cache_dir(), key)


def feature_map_job(key: str) -> Job | None:
    """The newest job (any session's) computing the map of feature set `key`."""
    return next((job for job in job_manager().jobs() if job.kind == MAP_JOB and job.name == key), None)


def launch_feature_map(record: RunRecord) -> None:
    """Queue the map of a run's features on the shared JobManager (owner only)."""
    access.require_owner("compute the feature map")
    features, folder = whatif_start(record).features, cache_dir()
    job_manager().submit(features.key, lambda report: featuremap.map_feature_set(features, folder, report),
                         kind=MAP_JOB)


def near_duplicate_pairs(data: Dataset, threshold: float) -> list[dict]:
    """Near-duplicate train/test pairs by the cached features of the newest svm/head run on `data`.

    Each test image's closest training image is computed once per feature set and split and stored (as a
    background job above `duplicates.INLINE_PAIRS` pairs); the threshold only filters. Raises ConfigError
    (a reason to show, not a failure) when no such run has its features cached, or while the job runs.
    """
    record = whatif.newest_feature_run(list_runs(), data.fingerprint)
    if record is None:
        raise ConfigError("train a svm or head run on this dataset first: the check compares its cached features")
    start = whatif_start(record)  # checks what viewers may read, and that the features are still cached
    key = split_key(start.features, start.dataset)
    matches = duplicates.load_matches(cache_dir(), key) or _compute_matches(start.features, key)
    return duplicates.near_duplicates(matches, threshold)


def _compute_matches(features, key: str) -> duplicates.Matches:
    """Compare inline when small; else queue one background job (owner only) and raise ConfigError meanwhile."""
    X, folder = (features.X_train, features.X_test), cache_dir()
    if len(X[0]) * len(X[1]) <= duplicates.INLINE_PAIRS:
        with st.spinner("Comparing train and test features…"):
            return duplicates.build_matches(*X, folder, key)
    job = next((job for job in job_manager().jobs() if job.kind == DUPLICATES_JOB and job.name == key), None)
    if job is not None and job.status == "failed":
        raise ConfigError(f"comparing the features failed: {job.error}")
    if not is_active(job):
        if not access.can_act():
            raise ConfigError("the owner's dashboard has not compared this dataset's train and test features yet")
        job = job_manager().submit(key, lambda report: duplicates.build_matches(*X, folder, key, report),
                                   kind=DUPLICATES_JOB)
    raise ConfigError(f"comparing {len(X[1])} test with {len(X[0])} training images in the background "
                      f"({job.status}); reload the page in a moment")


@st.cache_resource(max_entries=4)
def _run_model(root: str, run_id: str):
    return _run_store(root).load_model(run_id)


@st.cache_data(max_entries=64, show_spinner=False)
def _explanations(root: str, run_id: str, paths: tuple[str, ...], trues: tuple[int, ...]):
    record = _load_run(root, run_id)
    return explain.explain_images(record, _run_model(root, run_id), list(paths), list(trues))


def explanations(record: RunRecord, paths: list[str], trues: list[int]):
    """Heat maps of test images under a run (`core.explain`) and the seconds they took; computed once per images.

    Raises ConfigError (a reason to show) for runs whose model is not on this machine (imported bundles carry
    none) or that heat maps cannot follow (fused backbones, max pooling)."""
    explain.check_explainable(record)
    shown, hidden = access.viewable_paths(paths)
    if hidden:
        raise ReadOnlyError(f"{hidden} image(s) lie outside the shared dataset folder; viewers see only its images")
    if not (run_store().root / record.run_id / MODEL_FILE).is_file():
        raise ConfigError("this run's model is not on this machine (runs imported from a bundle carry none), and "
                          "heat maps need it; train the run here to see them")
    return _explanations(str(run_store().root), record.run_id, tuple(paths), tuple(trues))


def nearest_training(record: RunRecord, test_rows: list[int], wanted: list[list[int]]) -> list[list[dict]]:
    """For each test row: the closest training image of each class asked (`path`, `label`, `similarity`), by the
    run's cached features (`core.duplicates.nearest_of_classes`). Raises ConfigError for runs without them."""
    start = whatif_start(record)
    features = start.features
    index, similarity = duplicates.nearest_of_classes(features.X_train, features.y_train,
                                                      features.X_test[test_rows], wanted)
    return [[None if i < 0 else {"path": start.dataset.train[i].path, "label": start.dataset.train[i].label,
                                 "similarity": float(s)} for i, s in zip(row_i, row_s)]
            for row_i, row_s in zip(index, similarity)]


@st.cache_data(max_entries=32, show_spinner=False)
def _reliability(root: str, run_id: str):
    return _view(root, run_id).reliability()


def reliability(record: RunRecord):
    """The run's calibration and reliability curves (`core.diagnostics.reliability_curves`)."""
    return _reliability(str(run_store().root), record.run_id)


@st.cache_data(max_entries=16, show_spinner=False)
def _label_issues(root: str, run_id: str):
    return _view(root, run_id).label_issues()


def label_issues(data: Dataset):
    """`(run, table)`: the training images whose labels the best-validated run on `data` doubts (see
    `core.label_issues.issue_source`). Raises ConfigError (a reason to show) when no run has out-of-fold scores."""
    record = label_issues_module.issue_source(list_runs(), data.fingerprint)
    if record is None:
        raise ConfigError("train a svm, head or logreg run on this dataset first: its out-of-fold scores judge "
                          "the labels")
    return record, _label_issues(str(run_store().root), record.run_id)


def conflicting_labels(data: Dataset, threshold: float) -> list[dict]:
    """Near-duplicate training pairs with different labels, by the cached features of the newest feature run."""
    record = whatif.newest_feature_run(list_runs(), data.fingerprint)
    if record is None:
        raise ConfigError("train a svm or head run on this dataset first: the check compares its cached features")
    features = whatif_start(record).features
    return _conflicts(features.key, split_key(features, data), threshold, features.X_train, features.y_train)


@st.cache_data(max_entries=8, show_spinner="Comparing training images…")
def _conflicts(key: str, split: str, threshold: float, _X_train, _y_train) -> list[dict]:
    """Keyed by the feature set and split; the arrays themselves are not hashed."""
    return duplicates.conflicting_duplicates(_X_train, _y_train, threshold)


@st.cache_data(max_entries=32, show_spinner=False)
def _ordinal(root: str, run_id: str) -> dict:
    return _view(root, run_id).ordinal()


def ordinal(record: RunRecord) -> dict:
    """Quadratic weighted kappa, off-by-one accuracy and mean absolute grade error with intervals (classes in order)."""
    return _ordinal(str(run_store().root), record.run_id)
UPLOADS_FOLDER = "uploads"  # inside the cache folder: uploaded images, named by content


@st.cache_resource(max_entries=4)
def _predictor(cache: str, run_id: str) -> predict.Predictor:
    return predict.load_predictor(run_id, cache)


@st.cache_data(max_entries=16, show_spinner="Predicting (features of new images are cached)…")
def _predictions(cache: str, run_id: str, paths: tuple[str, ...], stamps: tuple) -> predict.Predictions:
    return predict.predict_images(_predictor(cache, run_id), list(paths), skip_unreadable=True)


def predict_images(run_id: str, paths: list[str]) -> predict.Predictions:
    """The run's predictions for image files or folders on this machine (owner only; cached by file stamps)."""
    access.require_owner("predict on new images")
    stamps = tuple(Path(p).stat().st_mtime_ns if Path(p).exists() else None for p in paths)
    return _predictions(str(cache_dir()), run_id, tuple(paths), stamps)


def save_uploads(files) -> list[str]:
    """Store uploaded images in the cache by content (owner only: a viewer's upload is refused here)."""
    access.require_owner("upload images")
    return predict.save_uploads([(file.name, file.getvalue()) for file in files], cache_dir() / UPLOADS_FOLDER)

"""Sharing under AppTest: viewer mode locks actions, the owner token unlocks them, the Share page exports and
imports runs. The runs are conftest's `demo_experiment` (svm + head x none + balanced on the demo data)."""
import io
import json
import os
import re
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest
import streamlit as st
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

import core.bundles
import core.report
from core.bundles import export_bundle_bytes, import_bundle
from core.store import RunStore
from core.errors import DataError
from core.settings import APPROACHES
from core.sharing import OTHER_FOLDER, Throttle, owner_token
from dashboard import access, errors, state

ROOT = Path(__file__).resolve().parents[1]
PAGE_TIMEOUT_S = 60
READ_ONLY = "Read-only: this dashboard is shared for viewing"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_streamlit_caches")]


def page(name: str) -> AppTest:
    script = ROOT / "app.py" if name == "app" else ROOT / "dashboard" / "views" / f"{name}.py"
    return AppTest.from_file(str(script), default_timeout=PAGE_TIMEOUT_S)


def texts(elements) -> str:
    return "\n".join(str(element.value) for element in elements)



@pytest.fixture
def cache(monkeypatch, tmp_path, demo_experiment, demo_dir) -> Path:
    """A private cache holding the demo runs, used by the app (not viewer mode yet)."""
    _, store = demo_experiment
    cache = tmp_path / "cache"
    shutil.copytree(store.root, cache / "runs")
    monkeypatch.setenv("TRANSFERSCOPE_CACHE_DIR", str(cache))
    monkeypatch.setenv("TRANSFERSCOPE_DATA", str(demo_dir))
    monkeypatch.delenv("TRANSFERSCOPE_VIEWER", raising=False)
    client_at(monkeypatch, None)
    return cache


def client_at(monkeypatch, ip: str | None) -> None:
    """Make the AppTest client connect from `ip` (None: this machine; AppTest's own client is a mock)."""
    monkeypatch.setattr(type(st.context), "ip_address", property(lambda self: ip))


@pytest.fixture
def viewer(monkeypatch, cache) -> Path:
    monkeypatch.setenv("TRANSFERSCOPE_VIEWER", "1")
    monkeypatch.setattr(state, "VIEWER_BUILDS", Throttle(max_events=6, per_s=60))  # no downloads of earlier tests
    return cache


@pytest.fixture
def downloads(monkeypatch) -> dict:
    """{file name: bytes} of every download button the pages draw (captured from Streamlit's media storage)."""
    captured = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def capture(self, path_or_data, mimetype, kind, filename=None):
        captured[filename] = path_or_data.encode() if isinstance(path_or_data, str) else path_or_data
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", capture)
    return captured


@pytest.fixture
def click(monkeypatch):
    """`click(button)` builds a download as a browser click does (download data is deferred until then)."""
    managers = {}  # deferred file id -> the media file manager of the AppTest run that registered it
    original = MediaFileManager.add_deferred

    def remember(self, *args, **kwargs):
        file_id = original(self, *args, **kwargs)
        managers[file_id] = self
        return file_id

    monkeypatch.setattr(MediaFileManager, "add_deferred", remember)
    return lambda button: managers[button.proto.deferred_file_id].execute_deferred(button.proto.deferred_file_id)


def click_downloads(at: AppTest, click) -> None:
    for button in at.get("download_button"):
        click(button)


def entries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.name.endswith(".lock"))


# ---- viewer mode -----------------------------------------------------------------------------------

def test_viewer_cannot_launch_or_change_dataset(viewer, demo_dir, tmp_path):
    at = page("app")
    at.session_state["data_dir"] = str(tmp_path)  # a folder typed earlier must not be used by a viewer
    at.run()
    assert not at.exception and not at.error
    assert "Viewer mode (read-only)" in texts(at.sidebar.markdown)
    folder = at.sidebar.text_input(key="data_dir_shared")
    assert folder.disabled and folder.value == demo_dir.name  # its name, never where it lies on the server
    assert f"Folder: {demo_dir.name} (set by the server)" in texts(at.caption)
    assert str(demo_dir.parent) not in texts(at.caption) + folder.value
    assert {m.label: m.value for m in at.metric}["Classes"] == "10"
    at.switch_page("dashboard/views/train.py").run()
    assert not at.exception
    assert at.button(key="launch").disabled
    assert READ_ONLY in texts(at.info)


def test_viewer_cannot_delete_runs(viewer):
    at = page("compare").run()
    assert not at.exception
    assert at.button(key="delete_runs").disabled and at.multiselect(key="delete_select").disabled
    assert READ_ONLY in texts(at.info)


@pytest.mark.parametrize("action, refusal", [
    ("state.delete_runs([RUN])", "cannot delete runs"),
    ("state.import_bundle(io.BytesIO(state.deferred_bundle([RUN])()))", "cannot import runs"),
    ("state.launch(ExperimentConfig(data=state.data_dir()))", "cannot launch training"),
    ("state.cancel_job('no-such-job')", "cannot cancel jobs"),
    ("state.rescan_dataset(state.data_dir())", "cannot rescan the dataset"),
])
def test_ui_actions_refuse_viewers_whatever_the_widgets_say(viewer, action, refusal):
    """Streamlit already drops clicks on disabled widgets; the actions in dashboard.state check again."""
    before = entries(viewer)
    run_id = RunStore(viewer / "runs").list_runs()[0].run_id
    script = (f"import io\nfrom core.experiment import ExperimentConfig\nfrom dashboard import errors, state\n"
              f"RUN = {run_id!r}\nwith errors.guard():\n    {action}\n")
    at = AppTest.from_string(script, default_timeout=PAGE_TIMEOUT_S).run()
    assert not at.exception
    assert refusal in texts(at.error)
    assert entries(viewer) == before and state.job_manager().jobs() == []


def test_viewer_sees_only_images_inside_the_served_dataset(viewer, monkeypatch, tmp_path):
    at = page("results").run()
    assert at.image  # the runs' test images lie inside the served demo folder
    monkeypatch.setenv("TRANSFERSCOPE_DATA", str(tmp_path / "other-dataset"))
    at = page("results").run()
    assert not at.exception
    assert not at.image
    assert "outside the shared dataset folder" in texts(at.caption)


def test_thumbnails_refuse_files_outside_the_dataset_for_viewers(viewer, tmp_path, make_image):
    secret = make_image(tmp_path / "secret.png")
    at = AppTest.from_string(f"from dashboard import errors, state\nwith errors.guard():\n"
                             f"    state.thumbnails([{str(secret)!r}])\n").run()
    assert "outside the shared dataset folder" in texts(at.error)


def test_outside_mode_everything_is_unlocked(cache):
    at = page("app").run()
    assert not at.exception
    assert "Viewer mode" not in texts(at.sidebar.markdown)
    assert not at.sidebar.text_input(key="data_dir").disabled
    at.switch_page("dashboard/views/share.py").run()
    assert not at.exception
    assert "owner_token" not in [widget.key for widget in at.text_input]
    assert READ_ONLY not in texts(at.info)
    assert not at.file_uploader(key="bundle_upload").disabled


# ---- owner unlock ----------------------------------------------------------------------------------

def test_wrong_token_stays_locked_right_token_unlocks(viewer):
    at = page("app").run()
    at.switch_page("dashboard/views/share.py").run()
    at.text_input(key="owner_token").set_value("not-the-token")
    at.button(key="unlock").click().run()
    assert not at.exception
    assert "Wrong token" in texts(at.error)
    assert access.OWNER_KEY not in at.session_state
    assert not at.get("file_uploader")

    at.text_input(key="owner_token").set_value(owner_token(viewer))
    at.button(key="unlock").click().run()
    assert not at.exception and not at.error
    assert "unlocked in this browser session" in texts(at.success)
    assert not at.file_uploader(key="bundle_upload").disabled
    at.switch_page("dashboard/views/train.py").run()
    assert not at.button(key="launch").disabled
    assert READ_ONLY not in texts(at.info)

    at.switch_page("dashboard/views/share.py").run()
    at.button(key="lock").click().run()
    assert not at.get("file_uploader")


def test_sidebar_of_an_unlocked_session_says_owner(viewer):
    at = page("app")
    at.session_state[access.OWNER_KEY] = True
    at.run()
    assert not at.exception
    assert "Owner" in texts(at.sidebar.markdown) and "Viewer mode" not in texts(at.sidebar.markdown)
    assert not at.sidebar.text_input(key="data_dir").disabled


# ---- Share page: downloads -------------------------------------------------------------------------

def test_share_page_offers_self_contained_html_report(viewer, downloads, click):
    at = page("share").run()
    assert not at.exception
    runs = RunStore(viewer / "runs").list_runs()
    assert at.multiselect(key="share_runs").value == [run.run_id for run in runs]
    assert {b.label for b in at.get("download_button")} == {"HTML report", "Markdown report", "Run bundle (zip)"}
    click_downloads(at, click)
    page_html = downloads["transferscope-report.html"].decode()
    assert "<html" in page_html
    assert "svm" in page_html and "head" in page_html
    assert not re.search(r"<script[^>]*\bsrc\s*=", page_html), "the report must not load external scripts"
    markdown = downloads["transferscope-report.md"].decode()
    assert all(run.run_id in markdown for run in runs)
    with zipfile.ZipFile(io.BytesIO(downloads["transferscope-runs.zip"])) as zf:
        assert json.loads(zf.read("manifest.json"))["runs"] == [run.run_id for run in runs]


def test_share_page_exports_only_the_picked_runs_and_links_them(viewer, downloads, click):
    at = page("share").run()
    run = RunStore(viewer / "runs").list_runs()[-1]
    at.multiselect(key="share_runs").set_value([run.run_id]).run()
    assert not at.exception
    click_downloads(at, click)
    markdown = downloads["transferscope-report.md"].decode()
    assert markdown.count("\n### ") == 3  # the runs table, the best runs' F1 per class, the one run
    assert "## Findings" in markdown and f"results?run={run.run_id})" in markdown  # findings link their run
    assert f"results?run={run.run_id}" in at.dataframe[0].value.to_string()
    at.multiselect(key="share_runs").set_value([]).run()
    assert "Pick at least one run" in texts(at.caption)
    assert not at.get("download_button")


# ---- Share page: import ----------------------------------------------------------------------------

def upload_and_import(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader(key="bundle_upload").set_value((name, data, "application/zip"))
    at.run()
    at.button(key="import_bundle").click()
    return at.run()


def test_bundle_exported_here_imports_into_a_fresh_cache(cache, monkeypatch, tmp_path):
    run_ids = [run.run_id for run in RunStore(cache / "runs").list_runs()]
    data = export_bundle_bytes(RunStore(cache / "runs"), run_ids[:2])
    monkeypatch.setenv("TRANSFERSCOPE_CACHE_DIR", str(tmp_path / "fresh"))
    at = upload_and_import(page("share").run(), "runs.zip", data)
    assert not at.exception and not at.error
    assert f"Imported 2 run(s): {', '.join(run_ids[:2])}" in texts(at.success)
    assert [run.run_id for run in state.list_runs()] == run_ids[:2]
    assert RunStore(tmp_path / "fresh" / "runs").load(run_ids[0]) == RunStore(cache / "runs").load(run_ids[0])
    at.button(key="import_bundle").click().run()
    assert "Nothing new" in texts(at.info)


def test_malicious_bundle_is_refused_and_writes_nothing(cache):
    run_id = RunStore(cache / "runs").list_runs()[0].run_id
    fresh = RunStore(cache / "fresh-runs")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"schema_version": 1, "runs": [run_id]}))
        zf.writestr(f"{run_id}/record.json", (cache / "runs" / run_id / "record.json").read_bytes())
        zf.writestr("../evil", b"owned")
    shutil.rmtree(cache / "runs")
    before = entries(cache.parent)
    at = upload_and_import(page("share").run(), "evil.zip", buffer.getvalue())
    assert not at.exception
    assert "run id '..' is not valid" in texts(at.error)
    assert not at.success
    assert entries(cache.parent) == before  # no run folder, no staging folder, no ../evil
    assert fresh.list_runs() == []


@pytest.mark.parametrize("change, refusal", [
    ({"created": "2099-01-01T00:00:00+00:00"}, "in the future"),  # it would open first on every page
    ({"approach": "[svm](http://evil.example)"}, f"TransferScope knows {', '.join(APPROACHES)}"),  # a link on Compare
])
def test_bundle_that_would_take_over_the_pages_is_refused(cache, monkeypatch, tmp_path, change, refusal):
    run_id = RunStore(cache / "runs").list_runs()[-1].run_id
    record = {**json.loads((cache / "runs" / run_id / "record.json").read_text()), **change}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"schema_version": 1, "runs": [run_id]}))
        zf.writestr(f"{run_id}/record.json", json.dumps(record))
    monkeypatch.setenv("TRANSFERSCOPE_CACHE_DIR", str(tmp_path / "fresh"))
    at = upload_and_import(page("share").run(), "runs.zip", buffer.getvalue())
    assert not at.exception and not at.success
    assert refusal in texts(at.error)
    assert state.list_runs() == []


def test_viewer_cannot_import(viewer):
    at = page("share").run()
    assert not at.exception
    assert not at.get("file_uploader") and not [button for button in at.button if button.key == "import_bundle"]
    assert READ_ONLY in texts(at.info) and "cannot import runs here" in texts(at.info)


# ---- what viewers can make the server do -----------------------------------------------------------

def test_job_survives_a_clear_caches_message(viewer):
    """Any browser can send Streamlit's ClearCache; the server then clears every st.cache_* (see AppSession)."""
    started, release = threading.Event(), threading.Event()
    manager = state.job_manager()
    job = manager.submit("long", lambda report: started.wait(5) and release.wait(10) and "done")
    started.set()
    st.cache_data.clear()
    st.cache_resource.clear()
    assert state.job_manager() is manager and manager.get(job.id) is job
    release.set()
    deadline = time.monotonic() + 10
    while job.status != "done":
        assert time.monotonic() < deadline, job.status
        time.sleep(0.01)
    assert job.result == "done"


def test_viewer_cannot_rescan_and_split_inputs_do_not_rescan(viewer, monkeypatch):
    scans = []
    real = state.load_dataset
    monkeypatch.setattr(state, "load_dataset", lambda *args, **kwargs: scans.append(kwargs) or real(*args, **kwargs))
    at = page("dataset").run()
    assert not at.exception and at.button(key="rescan").disabled
    at = page("train").run()
    at.number_input(key="train_test_size").set_value(0.5).run()
    at.text_input(key="train_seeds").set_value("7").run()
    st.cache_data.clear()  # a viewer's ClearCache message must not force a rescan either
    page("dataset").run()
    assert not at.exception
    assert [(scan["test_size"], scan["seed"]) for scan in scans] == [(0.2, 0)]


def test_downloads_are_built_only_when_clicked(cache, monkeypatch, downloads, click):
    builds = []
    for module, name in ((core.report, "render_runs_report"), (state, "render_runs_report")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda records, fmt, real=real, **kwargs: builds.append(fmt) or real(records, fmt, **kwargs))
    real_bundle = core.bundles.export_bundle_bytes
    monkeypatch.setattr(core.bundles, "export_bundle_bytes",
                        lambda store, *args: builds.append("zip") or real_bundle(store, *args))
    at = page("share").run()
    at.multiselect(key="share_runs").set_value(at.multiselect(key="share_runs").value[:1]).run()
    assert not at.exception and len(at.get("download_button")) == 3
    assert builds == [] and downloads == {}
    click_downloads(at, click)
    assert sorted(builds) == ["html", "md", "zip"]
    assert set(downloads) == {"transferscope-report.html", "transferscope-report.md", "transferscope-runs.zip"}


def test_viewer_downloads_are_rate_limited_across_sessions(viewer, monkeypatch, downloads, click, caplog):
    """A refused download raised: Streamlit logged a traceback and the viewer's browser got no file and no reason."""
    monkeypatch.setattr(state, "VIEWER_BUILDS", Throttle(max_events=2, per_s=600))
    html, md, _ = page("share").run().get("download_button")
    click(html)
    click(html)  # cached: costs nothing, counts nothing
    drawn_before = page("share").run()  # before the limit was reached
    click(md)
    click(drawn_before.get("download_button")[2])  # a page drawn before the limit: the file says why
    with zipfile.ZipFile(io.BytesIO(downloads.pop("transferscope-runs.zip"))) as refused:
        assert refused.namelist() == ["NOT-BUILT.txt"]
        assert "try again in" in refused.read("NOT-BUILT.txt").decode()
    assert "Traceback" not in caplog.text
    other_viewer = page("share").run()  # drawn now: the page says why and offers no download
    assert "try again in" in texts(other_viewer.error)
    assert all(button.proto.disabled for button in other_viewer.get("download_button"))


# ---- what viewers can read -------------------------------------------------------------------------

BUG = "from dashboard import errors\nwith errors.guard():\n    raise ValueError('/home/owner/secret/path.png is odd')\n"


def test_unexpected_errors_fail_the_tests():
    assert os.environ.get(errors.STRICT_ENV) == "1"  # set by conftest for every test, and for the browser server
    at = AppTest.from_string(BUG).run()
    assert at.exception and "secret/path.png" in at.exception[0].message


def test_user_errors_are_still_shown_under_strict():
    at = AppTest.from_string("from core.errors import DataError\nfrom dashboard import errors\n"
                             "with errors.guard():\n    raise DataError('folder has no images')\n").run()
    assert not at.exception and "folder has no images" in texts(at.error)


def test_viewers_see_no_error_details_the_owner_does(cache, monkeypatch):
    monkeypatch.delenv(errors.STRICT_ENV)
    at = AppTest.from_string(BUG).run()
    assert "secret/path.png" in texts(at.error) and at.expander and "Traceback" in texts(at.code)
    monkeypatch.setenv("TRANSFERSCOPE_VIEWER", "1")
    at = AppTest.from_string(BUG).run()
    assert not at.exception
    assert "Something went wrong (ValueError)" in texts(at.error)
    assert "secret" not in texts(at.error) and not at.expander and not at.code


def move_run_elsewhere(cache: Path, run_id: str, elsewhere: str) -> None:
    """Make a stored run look trained on folder `elsewhere` (another dataset of the owner's)."""
    record_path = cache / "runs" / run_id / "record.json"
    record = json.loads(record_path.read_text())
    old_root, record["dataset"]["root"], record["config"]["data"] = record["dataset"]["root"], elsewhere, elsewhere
    record_path.write_text(json.dumps(record))
    predictions = cache / "runs" / run_id / "predictions.csv"
    predictions.write_text(predictions.read_text().replace(old_root, elsewhere))


def test_viewers_see_dataset_folders_by_name_and_other_folders_not_at_all(viewer, demo_dir):
    runs = RunStore(viewer / "runs").list_runs()
    move_run_elsewhere(viewer, runs[1].run_id, "/home/owner/secret-project")
    settings = {}
    for run in runs[:2]:
        at = page("results")
        at.query_params["run"] = run.run_id
        at.run()
        assert not at.exception
        table = next(frame.value for frame in at.dataframe if "setting" in frame.value.columns)
        settings[run.run_id] = table.set_index("setting")["value"]
    assert settings[runs[0].run_id]["dataset"] == demo_dir.name
    assert settings[runs[1].run_id]["dataset"] == OTHER_FOLDER
    at = page("compare").run()
    assert not at.exception and "secret-project" not in "".join(map(str, at.selectbox(key="compare_group").options))


def test_viewer_bundles_and_reports_name_paths_inside_the_dataset_only(viewer, demo_dir, downloads, click):
    runs = RunStore(viewer / "runs").list_runs()
    move_run_elsewhere(viewer, runs[1].run_id, "/home/owner/secret-project")
    click_downloads(page("share").run(), click)
    for name, data in downloads.items():
        if name.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                data = b"".join(zf.read(member) for member in zf.namelist())
        text = data.decode()
        assert str(demo_dir.parent) not in text and "/home/owner" not in text and str(viewer) not in text, name
    with zipfile.ZipFile(io.BytesIO(downloads["transferscope-runs.zip"])) as zf:
        served = zf.read(f"{runs[0].run_id}/predictions.csv").decode().splitlines()[1]
        elsewhere = json.loads(zf.read(f"{runs[1].run_id}/record.json"))["dataset"]["root"]
    assert served.startswith(f"{demo_dir.name}/test/") and elsewhere == OTHER_FOLDER
    fresh = RunStore(viewer.parent / "fresh")  # still a bundle another TransferScope imports
    assert import_bundle(fresh, io.BytesIO(downloads["transferscope-runs.zip"])) == [run.run_id for run in runs]


def test_viewers_see_no_path_in_failed_jobs_or_whatif_errors(viewer, tmp_path):
    secret = "/home/owner/private/photos/cat.png"

    def fail(report):
        raise DataError(f"image {secret!r} cannot be read; check the file")

    job = state.job_manager().submit("doomed", fail, kind=state.TRAINING_JOB)  # the Train page shows training jobs
    while job.status not in ("failed", "done"):
        time.sleep(0.01)
    at = page("train").run()
    assert "The job failed: image" in texts(at.error) and "/home/owner" not in texts(at.error)
    # this cache holds the runs but not their features: what-if cannot refit and says where it looked
    run = next(run for run in RunStore(viewer / "runs").list_runs() if run.approach == "svm")
    at = page("whatif")
    at.query_params["run"] = run.run_id
    at.run()
    assert not at.exception and "no longer cached under cache" in texts(at.error)
    assert str(viewer) not in texts(at.error)


def test_crafted_run_link_is_not_echoed(viewer):
    at = page("results")
    at.query_params["run"] = "x](http://evil.example/phish) [click"
    at.run()
    assert not at.exception
    assert "does not exist" in texts(at.warning)
    assert "evil.example" not in texts(at.warning) + texts(at.markdown)


def test_token_is_refused_from_another_machine(viewer, monkeypatch):
    client_at(monkeypatch, "192.168.1.20")
    at = page("share").run()
    assert not at.exception
    assert "server machine itself" in texts(at.info)
    assert at.text_input(key="owner_token").disabled and at.button(key="unlock").disabled
    at = AppTest.from_string(f"from dashboard import access\naccess.unlock({owner_token(viewer)!r})\n").run()
    assert access.OWNER_KEY not in at.session_state
    assert "Threat model" in page("share").run().expander[0].label


# ---- broken runs -----------------------------------------------------------------------------------

def test_incomplete_run_is_reported_and_can_still_be_deleted(cache):
    good = RunStore(cache / "runs").list_runs()
    broken = good[0].run_id
    record_path = cache / "runs" / broken / "record.json"
    record = json.loads(record_path.read_text())
    del record["approach"]
    record_path.write_text(json.dumps(record))
    for name in ("results", "share", "compare"):
        at = page(name).run()
        assert not at.exception and not at.error, name
        assert "1 run folder(s) cannot be read" in texts(at.warning) and "lacks 'approach'" in texts(at.warning)
    at.multiselect(key="delete_select").set_value([broken]).run()
    at.button(key="delete_runs").click().run()
    # what remains is the page's own note on classes with few test images (issue 25), not the broken run
    assert not at.exception and "cannot be read" not in texts(at.warning), texts(at.warning)
    assert not (cache / "runs" / broken).exists()
    assert [run.run_id for run in RunStore(cache / "runs").list_runs()] == [run.run_id for run in good[1:]]

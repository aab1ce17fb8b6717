"""Sharing under AppTest: viewer mode locks actions, the owner token unlocks them, the Share page exports and
imports runs. The runs are conftest's `demo_experiment` (svm + head x none + balanced on the demo data)."""
import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

import ui
from core.runs import RunStore
from core.sharing import owner_token

ROOT = Path(__file__).resolve().parents[1]
PAGE_TIMEOUT_S = 60
READ_ONLY = "Read-only: this dashboard is shared for viewing"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_streamlit_caches")]


def page(name: str) -> AppTest:
    script = ROOT / "app.py" if name == "app" else ROOT / "pages" / f"{name}.py"
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
    return cache


@pytest.fixture
def viewer(monkeypatch, cache) -> Path:
    monkeypatch.setenv("TRANSFERSCOPE_VIEWER", "1")
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


def entries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---- viewer mode -----------------------------------------------------------------------------------

def test_viewer_cannot_launch_or_change_dataset(viewer, demo_dir, tmp_path):
    at = page("app")
    at.session_state["data_dir"] = str(tmp_path)  # a folder typed earlier must not be used by a viewer
    at.run()
    assert not at.exception and not at.error
    assert "Viewer mode (read-only)" in texts(at.sidebar.markdown)
    folder = at.sidebar.text_input(key="data_dir_shared")
    assert folder.disabled and folder.value == str(demo_dir)
    assert f"Folder: `{demo_dir}` (set by the server)" in texts(at.caption)
    assert {m.label: m.value for m in at.metric}["Classes"] == "10"
    at.switch_page("pages/train.py").run()
    assert not at.exception
    assert at.button(key="launch").disabled
    assert READ_ONLY in texts(at.info)


def test_viewer_cannot_delete_runs(viewer):
    at = page("compare").run()
    assert not at.exception
    assert at.button(key="delete_runs").disabled and at.multiselect(key="delete_select").disabled
    assert READ_ONLY in texts(at.info)


@pytest.mark.parametrize("action, refusal", [
    ("ui.delete_runs([RUN])", "cannot delete runs"),
    ("ui.import_bundle(io.BytesIO(ui.bundle([RUN])))", "cannot import runs"),
    ("ui.launch(ExperimentConfig(data=ui.data_dir()))", "cannot launch training"),
    ("ui.cancel_job('no-such-job')", "cannot cancel jobs"),
])
def test_ui_actions_refuse_viewers_whatever_the_widgets_say(viewer, action, refusal):
    """Streamlit already drops clicks on disabled widgets; the actions in ui check again."""
    before = entries(viewer)
    run_id = RunStore(viewer / "runs").list_runs()[0]["run_id"]
    script = (f"import io\nimport ui\nfrom core.experiment import ExperimentConfig\nRUN = {run_id!r}\n"
              f"with ui.guard():\n    {action}\n")
    at = AppTest.from_string(script, default_timeout=PAGE_TIMEOUT_S).run()
    assert not at.exception
    assert refusal in texts(at.error)
    assert entries(viewer) == before and ui.job_manager().jobs() == []


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
    at = AppTest.from_string(f"import ui\nwith ui.guard():\n    ui.thumbnails([{str(secret)!r}])\n").run()
    assert "outside the shared dataset folder" in texts(at.error)


def test_outside_mode_everything_is_unlocked(cache):
    at = page("app").run()
    assert not at.exception
    assert "Viewer mode" not in texts(at.sidebar.markdown)
    assert not at.sidebar.text_input(key="data_dir").disabled
    at.switch_page("pages/share.py").run()
    assert not at.exception
    assert "owner_token" not in [widget.key for widget in at.text_input]
    assert READ_ONLY not in texts(at.info)
    assert not at.file_uploader(key="bundle_upload").disabled


# ---- owner unlock ----------------------------------------------------------------------------------

def test_wrong_token_stays_locked_right_token_unlocks(viewer):
    at = page("app").run()
    at.switch_page("pages/share.py").run()
    at.text_input(key="owner_token").set_value("not-the-token")
    at.button(key="unlock").click().run()
    assert not at.exception
    assert "Wrong token" in texts(at.error)
    assert ui.OWNER_KEY not in at.session_state
    assert at.file_uploader(key="bundle_upload").disabled

    at.text_input(key="owner_token").set_value(owner_token(viewer))
    at.button(key="unlock").click().run()
    assert not at.exception and not at.error
    assert "unlocked in this browser session" in texts(at.success)
    assert not at.file_uploader(key="bundle_upload").disabled
    at.switch_page("pages/train.py").run()
    assert not at.button(key="launch").disabled
    assert READ_ONLY not in texts(at.info)

    at.switch_page("pages/share.py").run()
    at.button(key="lock").click().run()
    assert at.file_uploader(key="bundle_upload").disabled


def test_sidebar_of_an_unlocked_session_says_owner(viewer):
    # A fresh AppTest: after its first run AppTest falls back to the legacy `pages/` mode, without app.py's sidebar.
    at = page("app")
    at.session_state[ui.OWNER_KEY] = True
    at.run()
    assert not at.exception
    assert "Owner" in texts(at.sidebar.markdown) and "Viewer mode" not in texts(at.sidebar.markdown)
    assert not at.sidebar.text_input(key="data_dir").disabled


# ---- Share page: downloads -------------------------------------------------------------------------

def test_share_page_offers_self_contained_html_report(viewer, downloads):
    at = page("share").run()
    assert not at.exception
    runs = RunStore(viewer / "runs").list_runs()
    assert at.multiselect(key="share_runs").value == [run["run_id"] for run in runs]
    assert {b.label for b in at.get("download_button")} == {"HTML report", "Markdown report", "Run bundle (zip)"}
    page_html = downloads["transferscope-report.html"].decode()
    assert "<html" in page_html
    assert "svm" in page_html and "head" in page_html
    assert not re.search(r"<script[^>]*\bsrc\s*=", page_html), "the report must not load external scripts"
    markdown = downloads["transferscope-report.md"].decode()
    assert all(run["run_id"] in markdown for run in runs)
    with zipfile.ZipFile(io.BytesIO(downloads["transferscope-runs.zip"])) as zf:
        assert json.loads(zf.read("manifest.json"))["runs"] == [run["run_id"] for run in runs]


def test_share_page_exports_only_the_picked_runs_and_links_them(viewer, downloads):
    at = page("share").run()
    run = RunStore(viewer / "runs").list_runs()[-1]
    at.multiselect(key="share_runs").set_value([run["run_id"]]).run()
    assert not at.exception
    markdown = downloads["transferscope-report.md"].decode()
    assert markdown.count("\n## ") == 2  # the runs table and the one run
    assert f"results?run={run['run_id']}" in at.dataframe[0].value.to_string()
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
    run_ids = [run["run_id"] for run in RunStore(cache / "runs").list_runs()]
    data = RunStore(cache / "runs").export_bundle_bytes(run_ids[:2])
    monkeypatch.setenv("TRANSFERSCOPE_CACHE_DIR", str(tmp_path / "fresh"))
    at = upload_and_import(page("share").run(), "runs.zip", data)
    assert not at.exception and not at.error
    assert f"Imported 2 run(s): {', '.join(run_ids[:2])}" in texts(at.success)
    assert [run["run_id"] for run in ui.list_runs()] == run_ids[:2]
    assert RunStore(tmp_path / "fresh" / "runs").load(run_ids[0]) == RunStore(cache / "runs").load(run_ids[0])
    at.button(key="import_bundle").click().run()
    assert "Nothing new" in texts(at.info)


def test_malicious_bundle_is_refused_and_writes_nothing(cache):
    run_id = RunStore(cache / "runs").list_runs()[0]["run_id"]
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


def test_viewer_cannot_import(viewer):
    at = page("share").run()
    assert not at.exception
    assert at.file_uploader(key="bundle_upload").disabled and at.button(key="import_bundle").disabled
    assert READ_ONLY in texts(at.info) and "cannot import runs here" in texts(at.info)

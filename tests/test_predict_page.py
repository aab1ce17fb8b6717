"""The Predict page under AppTest (a folder on this machine; uploads are driven in tests/test_browser.py)."""
from pathlib import Path

import pytest

from core.data import DEMO_CLASSES

from core.errors import ReadOnlyError
from dashboard import state
from test_pages import demo_data, page, texts, trained, trained_cache  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_streamlit_caches")]


def test_predict_page_preselects_the_best_run_and_predicts_a_folder(trained, demo_data):
    from core.experiment import best_by_validation

    at = page("predict").run()
    assert not at.exception
    best = best_by_validation(state.run_store().list_runs())
    assert at.query_params["run"] == best, "the best run by validation is preselected"
    at.radio(key="predict_source").set_value("A folder on this machine").run()
    at.text_input(key="predict_folder").set_value(f"{demo_data}/test/8-eight").run()
    assert not at.exception and not at.error
    n_images = len(list(Path(demo_data, "test", "8-eight").iterdir()))
    decided = [m.value.strip("*") for m in at.markdown if m.value.startswith("**")]
    assert len(decided) == n_images and set(decided) <= set(DEMO_CLASSES), decided
    assert len(at.dataframe) == n_images, "one top-k table per image"


def test_predict_page_deep_link_picks_that_run(trained):
    run_id = state.run_store().list_runs()[-1].run_id
    at = page("predict")
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception and at.query_params["run"] == run_id


def test_viewers_see_no_uploader_and_the_server_refuses_their_upload(trained, monkeypatch):
    monkeypatch.setenv("TRANSFERSCOPE_VIEWER", "1")
    at = page("predict").run()
    assert not at.exception
    assert "Read-only" in texts(at.info)
    assert not at.radio and not at.text_input, "no image source for viewers"

    class Upload:
        name, getvalue = "x.png", staticmethod(lambda: b"\x89PNG")
    with pytest.raises(ReadOnlyError, match="cannot upload images"):
        state.save_uploads([Upload()])
    with pytest.raises(ReadOnlyError, match="cannot predict"):
        state.predict_images(state.run_store().list_runs()[0].run_id, ["/etc"])

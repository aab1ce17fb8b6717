"""A fresh `make run` (issue 30): the server on the demo with an empty cache queues a small comparison by itself,
and the empty pages show its progress instead of "No runs yet". The comparison itself is replaced by a job
that waits, so the test checks what was queued without training (the browser test trains it for real). Also the
Train page's one seed field."""
import shutil
import threading

import pytest

from core.paths import demo_dir
from dashboard import state
from test_pages import (demo_data, features_only, page, texts, trained_cache, trained_copy,  # noqa: F401 (fixtures)
                        use_cache)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_streamlit_caches")]


@pytest.fixture
def queued(monkeypatch):
    """The configs the demo comparison was started with; its job waits until the test ends."""
    configs, release = [], threading.Event()

    def waiting_experiment(config, progress=None, store=None):
        configs.append(config)
        progress("extract features", 0, 10)
        release.wait(60)
    monkeypatch.setattr(state, "run_experiment", waiting_experiment)
    yield configs
    release.set()


@pytest.fixture
def fresh_demo(monkeypatch, tmp_path, demo_data):
    """An empty cache whose demo folder holds the demo (as `make run` builds it), and no TRANSFERSCOPE_DATA."""
    use_cache(monkeypatch, tmp_path / "cache", demo_data)
    monkeypatch.delenv("TRANSFERSCOPE_DATA")
    shutil.copytree(demo_data, demo_dir())
    return demo_dir()


def test_a_fresh_demo_server_queues_one_comparison_and_empty_pages_show_it(fresh_demo, queued):
    at = page("app").run()
    assert not at.exception
    job = state.demo_comparison_job()
    assert job is not None and job.name == state.DEMO_JOB
    page("app").run()  # another visit, another session: still one job
    assert [j.name for j in state.job_manager().jobs()] == [state.DEMO_JOB]
    results = page("results").run()
    assert not results.exception
    assert "No runs yet" not in texts(results.info)
    assert "first comparison is being trained in the background" in texts(results.info)
    assert len(queued) == 1 and queued[0].data == str(fresh_demo)
    assert (queued[0].approaches, queued[0].remedies) == (("svm", "logreg", "head"), ("none", "balanced"))


def test_no_comparison_is_queued_for_another_dataset_or_a_cache_with_runs(monkeypatch, trained_copy, demo_data,
                                                                          queued):
    page("app").run()  # TRANSFERSCOPE_DATA: a folder that is not the cache's demo folder
    assert state.demo_comparison_job() is None
    monkeypatch.delenv("TRANSFERSCOPE_DATA")
    shutil.copytree(demo_data, demo_dir())  # the demo, but runs are stored already
    page("app").run()
    assert state.demo_comparison_job() is None and not queued


@pytest.mark.parametrize("typed, seed, seeds", [("", 0, ()), ("3", 3, ()), ("4,5", 4, (4, 5))])
def test_the_train_pages_one_seed_field_sets_the_seed_or_repeats(features_only, monkeypatch, typed, seed, seeds):
    """Advanced had "Seed" and "Seeds"; now one field: one seed is the run's seed, several repeat each run."""
    launched = []
    monkeypatch.setattr(state, "launch", launched.append)
    at = page("train").run()
    at.multiselect(key="train_schemes").set_value(["none"])
    at.text_input(key="train_seeds").set_value(typed)
    at.run().button(key="launch").click().run()
    assert not at.exception
    (config,) = launched
    assert (config.seed, config.seeds, config.seed_list()) == (seed, seeds, seeds or (seed,))

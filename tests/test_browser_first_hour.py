"""A student's first hour, in headless Chromium as they meet it (issue 30).

A server with runs on two datasets (the demo and a three-class one): exports and run pickers default to the
sidebar's dataset and a report of mixed datasets says why on the page; the dataset folder lives in the URL;
a `val/` folder and an unexpected one are reported; a fresh `make run` opens on a demo with a comparison.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from core.naming import run_labels
from core.store import RunStore
from live import served
from test_browser import (FAST, MENU, PAGE_TIMEOUT_MS, SETTLE_MS, assert_healthy, browser, new_tab, open_page,  # noqa: F401
                          screenshot, settle)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FIRST_MINUTE_S = 180  # the demo comparison's first run, on a loaded 2-core machine (under a minute when idle)
DEMO_JOB_S = 300  # the whole demo comparison, likewise


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_dir, tiny_dir):
    """The dashboard on the demo, with one svm run on the demo and one on the three-class tiny dataset."""
    from core.experiment import ExperimentConfig, run_experiment

    tmp = tmp_path_factory.mktemp("first-hour")
    data = shutil.copytree(demo_dir, tmp / "digits-demo")
    with served("app.py", tmp, data, env={"TRANSFERSCOPE_STRICT": "1"}) as running:
        for folder in (tiny_dir, data):  # the demo's run is the newest
            run_experiment(ExperimentConfig(data=str(folder), approaches=("svm",), remedies=("none",),
                                            cache_dir=str(running.cache), workers=0, **FAST))
        running.data, running.tiny = Path(data), Path(tiny_dir)
        yield running


def runs_on(server, folder: Path) -> dict[str, str]:
    """{run id: picker label} of the server's runs trained on `folder` (named with their dataset: the store holds two)."""
    runs = RunStore(server.cache / "runs").list_runs()
    return run_labels([run for run in runs if Path(run.dataset.root) == folder], show_dataset=True)


def options(tab, key: str) -> list[str]:
    """The options a selectbox offers (opened, read, closed)."""
    tab.locator(f'.st-key-{key} input').first.click()
    listed = tab.locator('[role="option"]')
    listed.first.wait_for(state="visible")
    texts = [text.strip() for text in listed.all_inner_texts()]
    tab.keyboard.press("Escape")
    return texts


def show_other_datasets(tab, server) -> None:
    """Flip the page's switch that lists every dataset's runs, and wait for the rerun it starts."""
    switch = tab.get_by_text("Show runs of other datasets too")
    switch.click()
    tab.wait_for_timeout(SETTLE_MS)  # the rerun starts
    settle(tab, server)


def eventually(read, expected, timeout_s: float = 30):
    """`read()` once it equals `expected`, polled for up to `timeout_s` (the rerun a click starts may lag)."""
    deadline = time.monotonic() + timeout_s
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


def chips(tab, key: str) -> list[str]:
    """The values picked in a multiselect."""
    tags = tab.locator(f'.st-key-{key} [data-testid="stMultiSelectTagsContainer"] [data-tag]')
    return [tags.nth(i).get_attribute("aria-label") for i in range(tags.count())]


@pytest.mark.timeout(300)
def test_share_exports_this_datasets_runs_and_says_why_a_mixed_report_cannot_be_built(browser, server):
    demo, tiny = runs_on(server, server.data), runs_on(server, server.tiny)
    with new_tab(browser, server) as tab:
        open_page(tab, server, "share")
        assert_healthy(tab, server, "Share")
        assert chips(tab, "share_runs_this_dataset") == list(demo.values()), "exports should default to this dataset"
        with tab.expect_download(timeout=PAGE_TIMEOUT_MS) as download:
            tab.locator(".st-key-download_html button").click()
        report = Path(download.value.path()).read_text()
        assert all(run_id in report for run_id in demo) and not any(run_id in report for run_id in tiny)

        show_other_datasets(tab, server)
        everything = {*demo.values(), *tiny.values()}
        assert eventually(lambda: set(chips(tab, "share_runs")), everything) == everything
        error = tab.locator('[data-testid="stMain"] [data-testid="stAlertContentError"]')
        assert "different classes" in error.inner_text() and "select the runs of one" in error.inner_text()
        assert tab.locator(".st-key-download_html button").is_disabled(), "a report that cannot be built"
        assert tab.locator(".st-key-download_bundle button").is_enabled(), "a bundle may mix datasets"
        screenshot(tab, "share-mixed-datasets")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name, key", [("results", "results_run"), ("whatif", "whatif_run"),
                                       ("featuremap", "map_run")])
def test_run_pickers_list_the_sidebar_datasets_runs(browser, server, name, key):
    demo, tiny = runs_on(server, server.data), runs_on(server, server.tiny)
    with new_tab(browser, server) as tab:
        open_page(tab, server, name)
        assert_healthy(tab, server, MENU[name])
        assert options(tab, key) == list(demo.values())
        open_page(tab, server, f"{name}?data={server.tiny}")
        assert options(tab, key) == list(tiny.values()), "the tiny dataset's runs, once it is the sidebar's"
        show_other_datasets(tab, server)
        everything = {*demo.values(), *tiny.values()}
        assert eventually(lambda: set(options(tab, key)), everything) == everything
        screenshot(tab, f"{name}-other-datasets")


@pytest.mark.timeout(300)
def test_compare_groups_default_to_the_sidebar_dataset(browser, server):
    with new_tab(browser, server) as tab:
        open_page(tab, server, f"compare?data={server.tiny}")
        assert_healthy(tab, server, "Compare")
        groups = options(tab, "compare_group")
        assert len(groups) == 1 and groups[0].startswith(server.tiny.name), groups


@pytest.mark.timeout(300)
def test_the_dataset_folder_lives_in_the_url(browser, server):
    with new_tab(browser, server) as tab:
        open_page(tab, server, f"train?data={server.tiny}")
        folder = tab.locator('[data-testid="stSidebar"]').get_by_label("Dataset folder", exact=True)
        assert folder.input_value() == str(server.tiny)
        tab.reload(wait_until="domcontentloaded")
        settle(tab, server)
        assert folder.input_value() == str(server.tiny), "a reload went back to the demo"

        tab.locator('[data-testid="stSidebarNavLink"]').filter(has_text="Dataset").click()
        tab.wait_for_url(lambda url: urlsplit(url).path in ("", "/"))
        settle(tab, server)
        assert parse_qs(urlsplit(tab.url).query).get("data") == [str(server.tiny)], tab.url
        classes = tab.locator('[data-testid="stMain"] [data-testid="stMetric"]').first.inner_text()
        assert classes.split()[-1] == "3", f"the Dataset page should show the tiny dataset: {classes!r}"
        tab.go_back(wait_until="domcontentloaded")
        settle(tab, server)
        assert folder.input_value() == str(server.tiny), "back went to the demo"

        folder.fill(str(server.data))
        folder.press("Enter")
        settle(tab, server)
        try:  # the URL follows the rerun the new folder starts
            tab.wait_for_url(lambda url: "data" not in parse_qs(urlsplit(url).query), timeout=20_000)
        except Exception:  # noqa: BLE001 - the assertion below says what the URL kept
            pass
        assert "data" not in parse_qs(urlsplit(tab.url).query), "the server's own dataset needs no ?data="
        screenshot(tab, "train-dataset-from-url")


@pytest.mark.timeout(300)
def test_a_val_folder_beside_train_and_test_is_reported(browser, server, tmp_path):
    folder = shutil.copytree(server.tiny, tmp_path / "with-val")
    shutil.copytree(folder / "test", folder / "val")
    shutil.copytree(folder / "test", folder / "old-copies")
    with new_tab(browser, server) as tab:
        open_page(tab, server, f"?data={folder}")
        assert_healthy(tab, server, "Dataset")
        main = tab.locator('[data-testid="stMain"]')
        warning = main.locator('[data-testid="stAlertContentWarning"]').first.inner_text()
        assert "validation split (val/), not read" in warning and "(old-copies/), not read" in warning, warning
        screenshot(tab, "dataset-val-folder")


@pytest.mark.timeout(900)
def test_a_fresh_start_opens_on_the_demo_with_a_comparison(browser, tmp_path):
    """As `make run` on a fresh clone: the server's dataset is the demo in an empty cache folder."""
    demo = tmp_path / "cache" / "datasets" / "digits-demo"
    with served("app.py", tmp_path, demo, env={"TRANSFERSCOPE_STRICT": "1"}) as fresh, new_tab(browser, fresh) as tab:
        open_page(tab, fresh, "results")
        assert_healthy(tab, fresh, "Results")
        main = tab.locator('[data-testid="stMain"]')
        assert "No runs yet" not in main.inner_text(), "a fresh start has nothing to show"
        screenshot(tab, "first-start-results-building")
        tab.locator(".st-key-results_run").wait_for(timeout=FIRST_MINUTE_S * 1000)  # the first run, shown by itself
        store, deadline = RunStore(fresh.cache / "runs"), time.monotonic() + DEMO_JOB_S
        while len(store.list_runs()) < 6 and time.monotonic() < deadline:
            time.sleep(2)
        assert len(store.list_runs()) == 6, f"svm, logreg, head x none, balanced\n{fresh.log_tail()}"
        for name in ("results", "compare", "whatif", "featuremap", "share"):
            open_page(tab, fresh, name)
            assert_healthy(tab, fresh, MENU[name])
            assert "No runs yet" not in main.inner_text(), f"{name}: no runs on a fresh start"
            screenshot(tab, f"first-start-{name}")

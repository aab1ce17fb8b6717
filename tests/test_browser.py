"""End-to-end: the real dashboard server driven by headless Chromium (Debian's, through Playwright).

One server per module, on a free port of 127.0.0.1, with a private cache folder and the demo dataset.
Every page must render without a Streamlit exception; a training job launched from the Train page must
finish and show its confusion matrix on the Results page; deep links and the Compare chart must work.
Full-page screenshots go to `artifacts/screenshots/` (git-ignored) for a human to look at.

Needs `/usr/bin/chromium` (`make browser-deps`); the tests fail, never skip, when it is missing.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from core.naming import run_labels
from core.data import DEMO_CLASSES, build_demo_dataset
from core.store import RunStore
from dashboard import errors
from live import free_port, healthy, stop

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
MENU = {"dataset": "Dataset", "train": "Train", "results": "Results", "compare": "Compare",  # url path -> title
        "whatif": "What-if", "featuremap": "Feature map", "predict": "Predict", "share": "Share"}
DEFAULT_PAGE = next(iter(MENU))  # it lives at "/": Streamlit answers "/<its url_path>" with "Page not found"
FAST = {"image_size": 48, "epochs": 3}  # small enough for a job of a few seconds on 2 CPU cores
SERVER_START_S = 60
PAGE_TIMEOUT_MS = 60_000
JOB_TIMEOUT_MS = 240_000
SETTLE_MS = 500
VIEWPORT = {"width": 1400, "height": 900}
MAX_SCREENSHOT_PX = 6000

# The app is connected and its script (or fragment) finished, continuously for `settle` ms.
SETTLED_JS = """
(settle) => {
  const app = document.querySelector('[data-testid="stApp"]');
  const done = app && app.getAttribute('data-test-connection-state') === 'CONNECTED'
    && app.getAttribute('data-test-script-state') === 'notRunning'
    && !(document.querySelector('[data-testid="stStatusWidget"]')?.innerText || '').includes('Running')
    && !document.querySelector('[data-testid="stMain"] [data-testid="stSpinner"]')
    && !document.querySelector('[data-testid="stMain"] [data-testid="stSkeleton"]');
  if (!done) { window.__settledSince = null; return false; }
  if (window.__settledSince == null) window.__settledSince = performance.now();
  return performance.now() - window.__settledSince >= settle;
}
"""
APP_STATE_JS = """() => { const app = document.querySelector('[data-testid="stApp"]');
  return app ? `connection=${app.getAttribute('data-test-connection-state')}, `
             + `script=${app.getAttribute('data-test-script-state')}` : 'no stApp element'; }"""
# Every distinct sidebar menu the tab shows, from its first paint on, and whether the page title was drawn yet.
RECORD_MENUS_JS = r"""
window.__menus = [];
new MutationObserver(() => {
  const links = [...document.querySelectorAll('[data-testid="stSidebarNavLink"]')]
    .map(a => a.innerText.trim().split('\n').pop().trim());  // the title (an icon's ligature name comes first)
  const menu = links.join(' | '), last = window.__menus[window.__menus.length - 1];
  if (links.length && (!last || last.menu !== menu))
    window.__menus.push({menu, titleShown: !!document.querySelector('[data-testid="stMain"] h1')});
}).observe(document, {subtree: true, childList: true, characterData: true});
"""
# Streamlit scrolls inside its own container, so a full-page screenshot needs a taller viewport.
CONTENT_HEIGHT_JS = """() => Math.max(document.body.scrollHeight, ...['stMain', 'stAppViewContainer', 'stSidebarContent']
  .map(t => document.querySelector(`[data-testid="${t}"]`)).filter(Boolean).map(e => e.scrollHeight))"""


# ---- the server ------------------------------------------------------------------------------------

class Server:
    """A running `streamlit run app.py` on 127.0.0.1, its cache folder and its log."""

    def __init__(self, url: str, cache: Path, data: Path, log: Path):
        self.url, self.cache, self.data, self.log = url, cache, data, log
        self.visited = False  # whether a tab opened a page yet (the first script run imports torch & co.)

    def log_tail(self, n_chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n_chars:] if self.log.exists() else "(no log)"

    def runs(self) -> list[dict]:
        """The run records the server has stored, newest first."""
        return RunStore(self.cache / "runs").list_runs()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    tmp = tmp_path_factory.mktemp("browser")
    cache, log = tmp / "cache", tmp / "streamlit.log"
    data = build_demo_dataset(tmp / "digits-demo")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TRANSFERSCOPE_CACHE_DIR": str(cache), "TRANSFERSCOPE_DATA": str(data),
           errors.STRICT_ENV: "1"}  # unexpected errors surface as Streamlit exceptions, not friendly boxes
    env.pop("TRANSFERSCOPE_VIEWER", None)
    command = [str(Path(sys.executable).with_name("streamlit")), "run", "app.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none"]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    running = Server(url, cache, Path(data), log)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not healthy(url):
            if process.poll() is not None:
                pytest.fail(f"streamlit exited with code {process.returncode}:\n{running.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{url}/_stcore/health did not answer within {SERVER_START_S} s:\n{running.log_tail()}")
            time.sleep(0.5)
        yield running
    finally:
        stop(process)


# ---- the browser -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: browser tests need Debian's Chromium. Install it with "
                    "`make browser-deps` (as root) or `sudo apt-get install chromium chromium-driver`.")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: `make install` (it is in requirements.txt); "
                    "no `playwright install` is needed, Debian's chromium is used")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                                              timeout=PAGE_TIMEOUT_MS)
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def new_tab(browser, server, init_script: str | None = None):
    """A fresh browser tab (own session) that may only reach the server; JS errors are collected.

    `init_script` runs in the tab before any of the app's own scripts.
    """
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    if init_script:
        context.add_init_script(init_script)
    origin = urlsplit(server.url).netloc

    def only_the_server(route):
        target = urlsplit(route.request.url)
        if target.scheme in ("data", "blob") or target.netloc == origin:
            route.continue_()
        else:
            route.abort()

    context.route("**/*", only_the_server)
    tab = context.new_page()
    tab.js_errors = []
    tab.on("pageerror", lambda error: tab.js_errors.append(str(error)))
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture
def page(browser, server):
    with new_tab(browser, server) as tab:
        yield tab


def open_page(tab, server: Server, path: str) -> None:
    """Go to `path` (e.g. "train", "results?run=x") and wait until Streamlit has finished running."""
    tab.goto(f"{server.url}/{path}", wait_until="domcontentloaded")
    server.visited = True
    settle(tab, server)


def settle(tab, server: Server, timeout_ms: int = PAGE_TIMEOUT_MS) -> None:
    """Wait until the script ran to the end and stayed idle for SETTLE_MS (no spinner, no skeleton)."""
    try:
        tab.wait_for_function(SETTLED_JS, arg=SETTLE_MS, polling=100, timeout=timeout_ms)
    except Exception as err:  # noqa: BLE001 - turn Playwright's timeout into a readable failure
        pytest.fail(f"{tab.url} did not finish running within {timeout_ms / 1000:.0f} s "
                    f"({tab.evaluate(APP_STATE_JS)}): {err}\n--- server log ---\n{server.log_tail()}")
    try:  # lazily loaded chunks (plotly, data grids)
        tab.wait_for_load_state("networkidle", timeout=10_000)
    except Exception:  # noqa: BLE001 - websocket traffic may keep the network busy; the page is settled
        pass


def assert_healthy(tab, server: Server, title: str) -> None:
    """No Streamlit exception, no error dialog, no JS error; the title is shown; app.py's sidebar is there."""
    exceptions = tab.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, (f"{tab.url} shows an exception:\n{exceptions.first.inner_text()}"
                                     f"\n--- server log ---\n{server.log_tail()}")
    swallowed = tab.get_by_text("Something went wrong")
    assert swallowed.count() == 0, f"{tab.url} shows an unexpected error: {swallowed.first.inner_text()}"
    dialogs = [text for text in tab.locator('[role="dialog"]').all_inner_texts() if text.strip()]
    assert not dialogs, f"{tab.url} shows a dialog: {dialogs}"
    heading = tab.locator('[data-testid="stMain"] h1').first
    assert heading.is_visible() and heading.inner_text().strip() == title, f"{tab.url}: no visible '{title}' title"
    assert tab.locator('[data-testid="stSidebar"]').get_by_label("Dataset folder", exact=True).is_visible(), (
        f"{tab.url}: the sidebar of app.py is missing (page run outside the router?)")
    assert not tab.js_errors, f"{tab.url}: JavaScript errors: {tab.js_errors}"


def screenshot(tab, name: str) -> Path:
    """Save the whole app (not only the viewport) as artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    height = min(max(int(tab.evaluate(CONTENT_HEIGHT_JS)), VIEWPORT["height"]), MAX_SCREENSHOT_PX)
    tab.set_viewport_size({"width": VIEWPORT["width"], "height": height})
    tab.wait_for_timeout(400)  # plotly charts resize to the new viewport
    tab.screenshot(path=str(path), full_page=True)
    tab.set_viewport_size(VIEWPORT)
    return path


def plotly_chart(tab, container: str):
    """The rendered plotly chart inside the keyed element `container` (class st-key-<key>)."""
    chart = tab.locator(f'.st-key-{container} [data-testid="stPlotlyChart"]').first
    chart.locator(".main-svg").first.wait_for(state="visible")
    return chart


# ---- the tests -------------------------------------------------------------------------------------

def url_path(name: str) -> str:
    return "" if name == DEFAULT_PAGE else name


# First of all: a fresh server's first visit (to a non-default page) must go through app.py's router at once.
@pytest.mark.timeout(180)
def test_first_visit_shows_the_real_menu_from_the_start(browser, server):
    """Never Streamlit's legacy menu of file names (app, compare, dataset, ...), not even for a moment."""
    fresh = not server.visited
    with new_tab(browser, server, RECORD_MENUS_JS) as tab:
        open_page(tab, server, "train")
        assert_healthy(tab, server, "Train")
        menus = tab.evaluate("window.__menus")
    assert [entry["menu"] for entry in menus] == [" | ".join(MENU.values())], f"menus shown: {menus}"
    if fresh:  # app.py draws the menu before it imports the engine, while the first script run still loads it
        assert not menus[0]["titleShown"], "the menu appeared only with the page, after the imports"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", ["train", *(name for name in MENU if name != "train")])
def test_page_renders(page, server, name):
    open_page(page, server, url_path(name))
    assert_healthy(page, server, MENU[name])
    nav = " | ".join(page.locator('[data-testid="stSidebarNavLink"]').all_inner_texts())
    assert all(title in nav for title in MENU.values()), f"sidebar navigation: {nav!r}"
    main = page.locator('[data-testid="stMain"]')
    if name == "dataset":
        chart = plotly_chart(page, "class_distribution")
        assert DEMO_CLASSES[0] in chart.inner_text() and DEMO_CLASSES[-1] in chart.inner_text()
        assert main.locator('[data-testid="stMetric"]').count() == 4
    elif name == "train":
        assert page.locator(".st-key-launch button").is_enabled()
    elif name in ("results", "compare", "predict") and not server.runs():
        assert main.get_by_text("No runs yet").is_visible(), f"{name}: no friendly empty state without runs"
    screenshot(page, name)


def launch_from_train_page(tab, server: Server, epochs: int, image_size: int):
    """Launch svm + head x none + balanced with these settings; return the locator of the finished job.

    Until the launch's rerun arrives, a new session's panel still shows the server's previous job, done:
    wait with `wait_for_outcome`, which tells the two apart, not on this locator alone.
    """
    open_page(tab, server, "train")
    assert_healthy(tab, server, "Train")
    approaches = tab.locator(".st-key-train_approaches").inner_text()
    assert "svm" in approaches and "head" in approaches, f"default approaches changed: {approaches!r}"
    set_number(tab, server, "train_epochs", epochs)
    tab.locator('[data-testid="stExpander"] summary').filter(has_text="Advanced").click()
    set_number(tab, server, "train_image_size", image_size)
    tab.locator(".st-key-launch button").click()
    job_panel = tab.locator('[data-testid="stMain"]')
    return job_panel.get_by_text("Open the run with the highest test macro-F1").or_(
        job_panel.get_by_text("The job failed")).or_(
        job_panel.get_by_text("The job was cancelled"))


def wait_for_outcome(tab, server: Server, finished, runs_before: list[dict], also=None) -> None:
    """Wait until the launched job ended: its outcome links to a run stored after `runs_before` (the previous
    job's outcome links to an older one), or it failed, or was cancelled, or `also` shows."""
    old_ids = {record.run_id for record in runs_before}
    best_link = tab.locator('[data-testid="stMain"] a[href*="run="]').filter(has_text="highest test macro-F1")
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        (finished if also is None else finished.or_(also)).first.wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
        settle(tab, server)
        linked = parse_qs(urlsplit(best_link.first.get_attribute("href")).query) if best_link.count() else {}
        if linked.get("run", [""])[0] not in old_ids:
            return
        time.sleep(0.5)
    pytest.fail(f"the launched job did not end within {JOB_TIMEOUT_MS / 1000:.0f} s\n{server.log_tail()}")


def set_number(tab, server: Server, key: str, value) -> None:
    """Type into the number_input with `key` and commit it (Enter), then wait for the rerun."""
    field = tab.locator(f".st-key-{key} input")
    field.fill(str(value))
    field.press("Enter")
    settle(tab, server)
    assert field.input_value() == str(value), f"{key} did not take {value}"


@pytest.mark.timeout(360)
def test_train_from_browser_then_results(page, server):
    runs_before = server.runs()
    finished = launch_from_train_page(page, server, FAST["epochs"], FAST["image_size"])
    progress = page.locator('[data-testid="stMain"] [data-testid="stProgress"]')
    try:  # the job may be over before its progress shows: the running screenshot is best effort
        progress.or_(finished).first.wait_for(state="visible", timeout=30_000)
        if progress.first.is_visible():
            screenshot(page, "train-running")
    except Exception:  # noqa: BLE001
        pass
    wait_for_outcome(page, server, finished, runs_before)
    failure = page.locator('[data-testid="stAlertContentError"]')
    assert failure.count() == 0, f"the job failed: {failure.first.inner_text()}\n{server.log_tail()}"
    assert_healthy(page, server, "Train")
    sidebar_job = page.locator('[data-testid="stSidebar"]').get_by_text("efficientnet_lite0: svm + head")
    assert sidebar_job.is_visible() and "done" in sidebar_job.locator("..").inner_text(), "sidebar job status"
    assert len(server.runs()) == len(runs_before) + 4, "svm + head x none + balanced should store 4 runs"
    # st.dataframe is no widget here (no selections), so it has no st-key-<key> class to find it by
    assert page.locator('[data-testid="stMain"] [data-testid="stDataFrame"]').first.is_visible(), (
        "the finished job shows no runs table")
    screenshot(page, "train-done")

    page.get_by_text("Open the run with the highest test macro-F1").click()
    page.wait_for_url(re.compile(r"/results\?run=\w+"))
    settle(page, server)
    assert_healthy(page, server, "Results")
    confusion = plotly_chart(page, "confusion_matrix")
    text = confusion.inner_text()
    assert "Confusion matrix" in text and all(name in text for name in DEMO_CLASSES), (
        f"confusion matrix lacks the demo classes: {text[:300]!r}")
    metrics = page.locator('[data-testid="stMain"] [data-testid="stMetric"]')
    labels = " | ".join(metrics.all_inner_texts())
    for label in ("Accuracy", "Balanced accuracy", "Macro-F1", "Weighted F1", "Fit time"):
        assert label in labels, f"headline metric {label!r} missing from {labels!r}"
    values = page.locator('[data-testid="stMain"] [data-testid="stMetricValue"]').all_inner_texts()
    assert any(re.fullmatch(r"[01]\.\d{3}", value.strip()) for value in values), values
    best = max(server.runs()[:4], key=lambda record: record.macro_f1)
    assert f"run={best.run_id}" in page.url, "the link should open the best run of the job"
    screenshot(page, "results-run")


@pytest.fixture
def trained(server) -> list[dict]:
    """At least two stored runs; trained in-process into the server's cache when the browser test did not."""
    if len(server.runs()) < 2:
        from core.experiment import ExperimentConfig, run_experiment

        run_experiment(ExperimentConfig(data=str(server.data), approaches=("svm", "head"), remedies=("none",),
                                        cache_dir=str(server.cache), workers=0, **FAST))
    return server.runs()


@pytest.mark.timeout(180)
def test_deep_link_opens_that_run(page, server, trained):
    oldest = trained[-1]  # not the default (newest) run, so the link is what selects it
    open_page(page, server, f"results?run={oldest.run_id}")
    assert_healthy(page, server, "Results")
    picked = page.locator(".st-key-results_run input").input_value()
    assert picked == run_labels([oldest])[oldest.run_id], f"deep link opened {picked!r}, not {oldest.run_id}"
    assert f"run={oldest.run_id}" in page.url
    plotly_chart(page, "confusion_matrix")
    screenshot(page, "results-deeplink")

    open_page(page, server, "results?run=no-such-run")
    assert_healthy(page, server, "Results")
    assert page.get_by_text("does not exist").is_visible(), "a stale deep link should say the run is gone"
    assert f"run={trained[0].run_id}" in page.url, "a stale deep link should fall back to the newest run"


@pytest.mark.timeout(180)
def test_compare_shows_tradeoff_chart(page, server, trained):
    open_page(page, server, "compare")
    assert_healthy(page, server, "Compare")
    text = plotly_chart(page, "tradeoff").inner_text()
    assert "Score versus fit time" in text and "Fit time" in text, f"trade-off chart text: {text[:300]!r}"
    assert page.locator('[data-testid="stMain"] [data-testid="stDataFrame"]').first.is_visible(), "no runs table"
    assert page.get_by_text("Two-run diff").is_visible()
    plotly_chart(page, "confusion_diff")
    screenshot(page, "compare-runs")


@pytest.mark.timeout(180)
def test_share_page_with_runs(page, server, trained):
    open_page(page, server, "share")
    assert_healthy(page, server, "Share")
    assert page.locator('[data-testid="stMain"] [data-testid="stDataFrame"]').first.is_visible(), "no run links"
    screenshot(page, "share-runs")
    with page.expect_download(timeout=PAGE_TIMEOUT_MS) as download:  # built on the server only now
        page.locator(".st-key-download_md button").click()
    report = Path(download.value.path()).read_text()
    assert report.startswith("# Lab report") and all(run.run_id in report for run in trained)


# The frontend sends BackMsg{clear_cache: true} on its websocket ("Clear caches" in the developer menu);
# any browser that reaches the server can send it, so a viewer's script does it here, from its own session.
SEND_BACKMSG_JS = """
async ([url, bytes]) => await new Promise((resolve, reject) => {
  const ws = new WebSocket(url, ["streamlit"]);
  ws.binaryType = "arraybuffer";
  ws.onerror = () => reject(new Error("websocket error"));
  ws.onopen = () => { ws.send(new Uint8Array(bytes)); setTimeout(() => { ws.close(); resolve(true); }, 1500); };
})
"""


@pytest.mark.timeout(480)
def test_job_survives_another_session_clearing_caches(page, browser, server):
    from streamlit.proto.BackMsg_pb2 import BackMsg

    runs_before = server.runs()
    # a new image size: the job extracts afresh, and 300 head epochs keep it busy for a while
    finished = launch_from_train_page(page, server, epochs=300, image_size=FAST["image_size"] + 8)
    sidebar = page.locator('[data-testid="stSidebar"]')
    # usually still running; on a fast machine the job may be done already: a cleared manager forgets both
    listed = re.compile(r"running|: done")
    sidebar.get_by_text(listed).first.wait_for(state="visible", timeout=60_000)

    other = browser.new_context()
    try:
        intruder = other.new_page()
        intruder.goto(server.url, wait_until="domcontentloaded")
        stream = server.url.replace("http://", "ws://") + "/_stcore/stream"
        intruder.evaluate(SEND_BACKMSG_JS, [stream, list(BackMsg(clear_cache=True).SerializeToString())])
    finally:
        other.close()
    assert listed.search(sidebar.inner_text()), "the job should still be listed after the clear-cache message"

    forgotten = page.locator('[data-testid="stMain"]').get_by_text("No job yet")  # a new, empty job manager
    wait_for_outcome(page, server, finished, runs_before, also=forgotten)
    assert page.get_by_text("Open the run with the highest test macro-F1").is_visible(), (
        f"the job did not finish: {page.locator('[data-testid=stMain]').inner_text()[:500]}\n{server.log_tail()}")
    assert_healthy(page, server, "Train")
    assert len(server.runs()) == len(runs_before) + 4
    open_page(page, server, "train")  # a fresh script run still lists the finished job
    assert "done" in page.locator('[data-testid="stSidebar"]').inner_text()
    assert page.get_by_text("Open the run with the highest test macro-F1").is_visible()


def plot_area(chart):
    """The bounding box of a plotly chart's plotting area (its drag layer), scrolled into view."""
    area = chart.locator(".nsewdrag").first
    area.wait_for(state="visible")
    area.scroll_into_view_if_needed()
    return area.bounding_box()


@pytest.mark.timeout(240)
def test_confusion_cell_click_shows_that_cells_images(page, server, trained):
    from core.run_view import RunView

    record = next(r for r in trained if len(RunView(r, lambda: None).error_cells()) > 1)
    cells, classes = RunView(record, lambda: None).error_cells(), record.classes
    target = cells[-1]  # not the default (first) cell, so the click is what selects it
    open_page(page, server, f"results?run={record.run_id}")
    assert_healthy(page, server, "Results")
    box, k = plot_area(plotly_chart(page, "confusion_matrix")), len(classes)
    page.mouse.click(box["x"] + (target["pred"] + 0.5) * box["width"] / k,
                     box["y"] + (target["true"] + 0.5) * box["height"] / k)
    picked = f"{classes[target['true']]} → {classes[target['pred']]} ({target['count']} images)"
    choice = page.locator(".st-key-error_cell input")
    deadline = time.monotonic() + 30
    while choice.input_value() != picked and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert choice.input_value() == picked, "a click on the cell should pick it in the misclassified panel"
    settle(page, server)
    predictions = RunStore(server.cache / "runs").load_predictions(record.run_id)
    chosen = predictions[(predictions["true"] == target["true"]) & (predictions["pred"] == target["pred"])]
    expected = {Path(path).name for path in chosen["path"]}
    shown = page.locator('[data-testid="stMain"] [data-testid="stImageCaption"]').all_inner_texts()
    assert shown and set(shown) <= expected and len(shown) == min(len(expected), 24), (shown, expected)
    assert_healthy(page, server, "Results")
    screenshot(page, "results-cell-click")


@pytest.mark.timeout(300)
def test_feature_map_box_selection_shows_images(page, server, trained):
    from core.data import load_dataset
    from core.featuremap import map_feature_set
    from core.whatif import start_from

    record = next(r for r in trained if r.approach in ("svm", "head"))
    map_feature_set(start_from(record, load_dataset(server.data), server.cache).features, server.cache)
    open_page(page, server, f"featuremap?run={record.run_id}")
    assert_healthy(page, server, "Feature map")
    chart = page.locator('.st-key-feature_map [data-testid="stPlotlyChart"]').first
    box = plot_area(chart)
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=10)
    page.mouse.move(box["x"] + box["width"] - 5, box["y"] + box["height"] - 5, steps=10)
    page.mouse.up()
    heading = page.locator('[data-testid="stMain"] h3').filter(has_text="selected image(s)")
    heading.wait_for(state="visible", timeout=30_000)
    settle(page, server)
    n_selected = int(heading.inner_text().split()[0])
    assert n_selected > 10, heading.inner_text()
    captions = page.locator('[data-testid="stMain"] [data-testid="stImageCaption"]').all_inner_texts()
    assert len(captions) == min(n_selected, 24) and all(".png: " in caption for caption in captions), captions
    assert_healthy(page, server, "Feature map")
    screenshot(page, "feature-map-selection")


@pytest.mark.timeout(240)
def test_predict_page_uploads_an_image_and_shows_its_class(page, server, trained):
    image = sorted((server.data / "test" / DEMO_CLASSES[0]).iterdir())[0]
    open_page(page, server, "predict")
    assert_healthy(page, server, "Predict")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(image))
    decided = page.locator('[data-testid="stMain"] [data-testid="stMarkdownContainer"] strong').filter(
        has_text=re.compile("^(" + "|".join(map(re.escape, DEMO_CLASSES)) + ")$"))
    decided.first.wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
    settle(page, server)
    assert_healthy(page, server, "Predict")
    assert decided.count() == 1, "one uploaded image, one decided class"
    assert page.locator('[data-testid="stMain"] [data-testid="stImage"]').count() >= 1
    assert list((server.cache / "uploads").iterdir()), "the upload is stored in the cache by content"
    caption = page.locator('[data-testid="stMain"] [data-testid="stImage"]').first.inner_text()
    assert image.name in caption, f"captioned {caption!r}, not with the name it was uploaded as"
    screenshot(page, "predict-upload")

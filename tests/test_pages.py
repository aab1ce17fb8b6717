"""Dashboard pages under AppTest: the real efficientnet_lite0 on the demo data at a small image size."""
import json
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.errors import DataError, RunStoreError
from core.experiment import ExperimentConfig, run_experiment
from core.jobs import ACTIVE_STATUSES
from core.records import RunRecord
from core.weights import class_weights
from dashboard import state

ROOT = Path(__file__).resolve().parents[1]
FAST = {"image_size": 48, "epochs": 3}
JOB_TIMEOUT_S = 300
PAGE_TIMEOUT_S = 60

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_streamlit_caches")]


def page(name: str) -> AppTest:
    script = ROOT / "app.py" if name == "app" else ROOT / "dashboard" / "views" / f"{name}.py"
    return AppTest.from_file(str(script), default_timeout=PAGE_TIMEOUT_S)


@pytest.fixture(scope="session")
def demo_data(demo_dir) -> str:
    return str(demo_dir)


@pytest.fixture(scope="session")
def trained_cache(tmp_path_factory, demo_data) -> Path:
    """A cache with features and four runs: svm and head, each with none and balanced weights."""
    cache = tmp_path_factory.mktemp("trained")
    run_experiment(ExperimentConfig(data=demo_data, approaches=("svm", "head"), remedies=("none", "balanced"),
                                    cache_dir=str(cache), workers=0, **FAST))
    return cache



def use_cache(monkeypatch, cache: Path, data: str) -> Path:
    monkeypatch.setenv("TRANSFERSCOPE_CACHE_DIR", str(cache))
    monkeypatch.setenv("TRANSFERSCOPE_DATA", data)
    return cache


@pytest.fixture
def empty_cache(monkeypatch, tmp_path, demo_data) -> Path:
    return use_cache(monkeypatch, tmp_path / "cache", demo_data)


@pytest.fixture
def trained(monkeypatch, trained_cache, demo_data) -> Path:
    return use_cache(monkeypatch, trained_cache, demo_data)


@pytest.fixture
def trained_copy(monkeypatch, tmp_path, trained_cache, demo_data) -> Path:
    """A private copy of the trained cache, for tests that add or delete runs."""
    return use_cache(monkeypatch, shutil.copytree(trained_cache, tmp_path / "cache"), demo_data)


@pytest.fixture
def features_only(monkeypatch, tmp_path, trained_cache, demo_data) -> Path:
    """Cached features but no runs: training jobs skip extraction."""
    shutil.copytree(trained_cache / "features", tmp_path / "cache" / "features")
    return use_cache(monkeypatch, tmp_path / "cache", demo_data)


def texts(elements) -> str:
    return "\n".join(str(element.value) for element in elements)


def charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def wait_until_ended(job):
    """Poll `job` until it is no longer queued or running (at most JOB_TIMEOUT_S); return it."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while job.status in ACTIVE_STATUSES:
        assert time.monotonic() < deadline, (f"{job.kind or 'job'} {job.name!r} still {job.status} after "
                                             f"{JOB_TIMEOUT_S} s: {job.progress}")
        time.sleep(0.05)
    return job


def wait_for_job(at: AppTest):
    return wait_until_ended(state.job_manager().get(at.session_state["job_id"]))


def configure_training(at: AppTest, approaches, schemes) -> AppTest:
    at.run()
    at.multiselect(key="train_approaches").set_value(approaches)
    at.multiselect(key="train_schemes").set_value(schemes)
    at.number_input(key="train_image_size").set_value(FAST["image_size"])
    at.number_input(key="train_epochs").set_value(FAST["epochs"])
    return at.run()


def edit_weight(at: AppTest, row: int, value) -> AppTest:
    at.session_state["weight_editor"] = {"edited_rows": {row: {"weight": value}}, "added_rows": [], "deleted_rows": []}
    return at.run()


# ---- router and Dataset ----------------------------------------------------------------------------

def test_app_routes_to_dataset_page_with_sidebar(empty_cache, demo_data):
    at = page("app").run()
    assert not at.exception
    assert at.sidebar.text_input(key="data_dir").value == demo_data
    assert [at.sidebar.text_input(key=f"data_{name}").label for name in ("labels", "test_data", "test_labels")] == [
        "Label file", "Test folder", "Test label file"]  # the dataset picker's advanced options
    assert "No training job yet." in texts(at.sidebar.caption)
    assert at.title[0].value == "Dataset"


def test_dataset_page_shows_distribution_and_minority_classes(empty_cache):
    at = page("dataset").run()
    assert not at.exception
    assert charts(at) == 1
    assert {m.label: m.value for m in at.metric}["Classes"] == "10"
    minority_line = next(m.value for m in at.markdown if m.value.startswith("**Minority classes**"))
    assert "9-nine" in minority_line and "0-zero" not in minority_line
    assert len(at.image) == 10


def test_dataset_page_lists_skipped_files(empty_cache, demo_data, tmp_path):
    folder = shutil.copytree(demo_data, tmp_path / "data")
    (folder / "train" / "0-zero" / "broken.png").write_bytes(b"not a png")
    at = page("dataset")
    at.session_state["data_dir"] = str(folder)
    at.run()
    assert not at.exception
    assert "1 file(s) or folder(s) were skipped" in texts(at.warning)


def test_dataset_page_lists_skipped_test_labels_of_a_flat_test_folder(empty_cache, demo_data, tmp_path):
    test = tmp_path / "flat-test"
    test.mkdir()
    rows = []
    for class_dir in sorted((Path(demo_data) / "test").iterdir()):
        image = sorted(class_dir.iterdir())[0]
        shutil.copy(image, test / f"{class_dir.name}.png")
        rows.append(f"{class_dir.name}.png,{class_dir.name}")
    for name in ("owl-1.png", "owl-2.png"):
        shutil.copy(test / "0-zero.png", test / name)
        rows.append(f"{name},owl")
    (test / "labels.csv").write_text("\n".join(rows))
    at = page("dataset")
    at.session_state["data_dir"] = str(Path(demo_data) / "train")
    at.session_state["data_test_data"] = str(test)
    at.session_state["data_test_labels"] = str(test / "labels.csv")
    at.run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Test images"] == "10"
    assert "2 file(s) or folder(s) were skipped" in texts(at.warning)
    tables = [frame.value.to_dict("records") for frame in at.dataframe]
    assert [{"reason": "label 'owl' is not a training class", "count": 2}] in tables


def test_dataset_page_says_which_test_images_are_training_files(empty_cache, demo_data, tmp_path):
    folder = shutil.copytree(demo_data, tmp_path / "data")
    shutil.copy(sorted((folder / "train" / "0-zero").iterdir())[0], folder / "test" / "0-zero" / "copy.png")
    at = page("dataset")
    at.session_state["data_dir"] = str(folder)
    at.run()
    assert not at.exception
    assert "1 test image(s) are also training images" in texts(at.error)
    (overlap,) = [frame.value for frame in at.dataframe if "how" in frame.value.columns]
    assert overlap["test"].str.endswith("copy.png").all()


def test_dataset_page_bad_folder_is_a_message_not_a_traceback(empty_cache, tmp_path):
    at = page("dataset")
    at.session_state["data_dir"] = str(tmp_path / "nowhere")
    at.run()
    assert not at.exception
    assert "does not exist" in texts(at.error)


# ---- Train -----------------------------------------------------------------------------------------

def test_train_launches_job_that_finishes_and_runs_appear(features_only):
    at = configure_training(page("train"), ["svm", "head"], ["none"])
    at.button(key="launch").click().run()
    assert not at.exception
    assert wait_for_job(at).status == "done"
    at.run()
    assert "Features loaded from cache" in texts(at.success)
    runs = state.list_runs()
    assert sorted(run.approach for run in runs) == ["head", "svm"]
    reloaded = page("train").run()  # a new session falls back to the server's latest job
    assert "Features loaded from cache" in texts(reloaded.success)
    results = page("results").run()
    assert {results.selectbox(key="results_run").value} <= {run.run_id for run in runs}


def test_train_page_settings_reach_the_launched_config(features_only, monkeypatch):
    """Image size left empty means the backbone's own (not 224); seeds and tuning come from the declared widgets."""
    launched = []
    monkeypatch.setattr(state, "launch", launched.append)
    at = page("train").run()
    at.multiselect(key="train_schemes").set_value(["none"])
    at.text_input(key="train_seeds").set_value("0,1,2")
    at.checkbox(key="train_tune").check()
    at.run().button(key="launch").click().run()
    assert not at.exception
    (config,) = launched
    assert config.image_size is None and config.seeds == (0, 1, 2) and config.tune
    assert config.epochs == 20 and config.batch_size == 32  # the declared defaults


def test_train_page_launches_with_the_pickers_test_folder(features_only, demo_data, monkeypatch):
    launched = []
    monkeypatch.setattr(state, "launch", launched.append)
    at = page("train")
    at.session_state["data_dir"] = str(Path(demo_data) / "train")
    at.session_state["data_test_data"] = str(Path(demo_data) / "test")
    at.run().multiselect(key="train_schemes").set_value(["none"])
    at.run().button(key="launch").click().run()
    assert not at.exception
    (config,) = launched
    assert (config.data, config.test_data, config.test_labels) == (str(Path(demo_data) / "train"),
                                                                   str(Path(demo_data) / "test"), None)


def test_train_page_offers_a_fused_backbone(features_only, monkeypatch):
    launched = []
    monkeypatch.setattr(state, "launch", launched.append)
    at = page("train").run()
    at.selectbox(key="train_backbone").set_value("efficientnet_lite0+efficientnet_lite2")
    at.multiselect(key="train_schemes").set_value(["none"])
    at.run().button(key="launch").click().run()
    assert not at.exception
    assert [config.backbone for config in launched] == ["efficientnet_lite0+efficientnet_lite2"]


def test_train_page_says_once_what_each_picked_remedy_does(empty_cache):
    at = page("train").run()
    at.multiselect(key="train_schemes").set_value(["none", "balanced+offsets"]).run()
    assert not at.exception
    captions = texts(at.caption).replace("**", "")  # as read on screen, without the Markdown
    assert "none: no remedy" in captions and "none: none:" not in captions
    assert "balanced: class weights" in captions and "offsets: " in captions


def test_train_page_warns_when_tau_corrects_the_imbalance_a_second_time(empty_cache):
    """Issue 25: balanced+tau corrected the imbalance twice without a word."""
    at = page("train").run()
    at.multiselect(key="train_schemes").set_value(["balanced", "balanced+tau"]).run()
    assert not at.exception
    (warning,) = [str(w.value) for w in at.warning if "tau adjusts the decision" in str(w.value)]
    assert warning.startswith("balanced+tau: tau adjusts the decision for the imbalance on top of balanced")


def test_train_page_bad_seed_list_is_a_message(features_only):
    at = page("train").run()
    at.text_input(key="train_seeds").set_value("0,one").run()
    assert not at.exception
    assert "0,one" in texts(at.error)


def test_edited_class_weight_trains_a_custom_run(features_only):
    at = configure_training(page("train"), ["svm"], ["custom"])
    assert at.selectbox(key="custom_base").value == "balanced"
    edit_weight(at, 2, 7.5)
    assert not at.error
    at.button(key="launch").click().run()
    assert wait_for_job(at).status == "done"
    (run,) = state.list_runs()
    assert run.class_weight == "custom"
    balanced_0 = class_weights("balanced", run.dataset.train_counts)[0].round(4)  # the editor's row 0
    assert run.class_weights[2] / run.class_weights[0] == pytest.approx(7.5 / balanced_0)  # rescaled


@pytest.mark.parametrize("value, message", [(-1.0, "must be a finite number >= 0"), (None, "has no weight")])
def test_invalid_class_weight_shows_error_and_cannot_launch(features_only, value, message):
    at = edit_weight(configure_training(page("train"), ["svm"], ["custom"]), 3, value)
    assert not at.exception
    assert message in texts(at.error) and "3-three" in texts(at.error)
    assert at.button(key="launch").disabled
    assert state.job_manager().jobs() == []
    at.button(key="reset_weights").click().run()
    assert not at.error and not at.button(key="launch").disabled


def test_job_panel_shows_queue_position_and_cancels(empty_cache):
    started, release = threading.Event(), threading.Event()
    manager = state.job_manager()
    manager.submit("blocker", lambda report: started.set() or release.wait(10), kind=state.TRAINING_JOB)
    waiting = manager.submit("waiting", lambda report: None, kind=state.TRAINING_JOB)
    assert started.wait(5)
    at = page("train").run()
    assert "queued: 1 job ahead" in texts(at.markdown)
    at.button(key="cancel_job").click().run()
    assert manager.get(waiting.id).status == "cancelled"
    assert "was cancelled" in texts(at.warning)
    release.set()


def test_train_page_estimates_the_finetune_from_the_chosen_settings(features_only, monkeypatch):
    asked = []

    def estimate(config):
        asked.append(config)
        return {"text": "fine-tune estimate: about 42 s per run"}

    monkeypatch.setattr("core.experiment.estimate_experiment", estimate)
    at = configure_training(page("train"), ["finetune"], ["balanced"])
    at.selectbox(key="train_unfreeze").set_value("last").run()
    at.button(key="estimate_finetune").click().run()
    assert not at.exception and "about 42 s per run" in texts(at.info)
    assert [(c.approaches, c.unfreeze, c.remedies) for c in asked] == [(("finetune",), "last", ("balanced",))]


def test_job_panel_shows_the_finetune_note(empty_cache):
    release = threading.Event()

    def work(report):
        report("fine-tune (images)", 10, 40, note="epoch 1/4 · validation macro-F1 0.512 (best: epoch 1) · about 9 s left")
        release.wait(10)

    state.job_manager().submit("tuning", work, kind=state.TRAINING_JOB)
    deadline = time.time() + 5
    while not state.job_manager().jobs()[0].note and time.time() < deadline:
        time.sleep(0.05)
    at = page("train").run()
    release.set()
    assert not at.exception and "validation macro-F1 0.512" in texts(at.caption) and "9 s left" in texts(at.caption)


def test_failed_job_shows_its_error(empty_cache):
    def fail(report):
        report("extract features", 1, 4)
        raise DataError("image folder vanished; check the path")

    wait_until_ended(state.job_manager().submit("doomed", fail, kind=state.TRAINING_JOB))
    at = page("train").run()
    assert not at.exception
    assert "The job failed: image folder vanished" in texts(at.error)


# ---- Results ---------------------------------------------------------------------------------------

def head_run(kind: str = "none") -> RunRecord:
    return next(r for r in state.list_runs() if r.approach == "head" and r.class_weight == kind)


def test_results_deep_link_metrics_and_confusion_toggle(trained):
    run = head_run()
    at = page("results")
    at.query_params["run"] = run.run_id
    at.run()
    assert not at.exception
    assert at.selectbox(key="results_run").value == run.run_id
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Accuracy"] == f"{run.accuracy:.3f}"
    assert metrics["Macro-F1"] == f"{run.macro_f1:.3f}"
    assert charts(at) == 4  # confusion matrix, per-class bars, learning curve, reliability diagram
    at.toggle(key="cm_normalize").set_value(True).run()
    assert not at.exception and at.toggle(key="cm_normalize").value


def test_results_charts_show_markup_class_names_as_text(trained_copy):
    """Plotly renders <a href> found in axis labels and hovers: a class named so was a live link on the page."""
    run = head_run()
    path = trained_copy / "runs" / run.run_id / "record.json"
    record = json.loads(path.read_text())
    link = '<a href="http://evil.example">zero</a>'
    record["dataset"]["classes"][0] = record["per_class"][0]["class"] = link
    path.write_text(json.dumps(record))
    at = page("results")
    at.query_params["run"] = run.run_id
    at.run()
    assert not at.exception and charts(at) == 4
    specs = [json.dumps(json.loads(chart.proto.spec), ensure_ascii=False) for chart in at.get("plotly_chart")]
    assert not [spec for spec in specs if '<a href=\\"http' in spec]
    assert all("&lt;a href=" in spec for spec in specs[:2])  # the confusion matrix and per-class bars name it


def test_results_show_bootstrap_intervals(trained):
    run = head_run()
    at = page("results")
    at.query_params["run"] = run.run_id
    at.run()
    assert f"Macro-F1 {run.macro_f1_low:.3f}–{run.macro_f1_high:.3f}" in texts(at.caption)


def test_results_and_compare_say_when_macro_figures_rest_on_a_handful_of_test_images(trained):
    """Issue 25: the demo's rarest class has 2 test images; nothing said the intervals could not show that."""
    run = head_run()
    few = [row.name for row in run.per_class if 0 < row.support <= 3]
    assert few, "the demo split should leave a class with at most 3 test images"
    at = page("results")
    at.query_params["run"] = run.run_id
    at.run()
    assert not at.exception
    warning = texts(at.warning)
    assert all(f"{name} (" in warning for name in few) and "per-class scores are unreliable" in warning
    assert "too narrow for the macro figures" in texts(at.caption)
    report = next(df.value for df in at.dataframe if "unreliable" in df.value.columns)
    assert report.loc[report["unreliable"], "class"].tolist() == few
    at = page("compare").run()
    assert not at.exception and all(f"{name} (" in texts(at.warning) for name in few)


OLD_KEYS = ("seed", "device", "tuned", "no_test_support", "learning_curve_seconds", "test_extract_seconds",
            *(f"{m}_{end}" for m in ("accuracy", "macro_f1", "balanced_accuracy") for end in ("low", "high")))


def add_old_style_run(cache: Path):
    """A copy of a stored run as recorded before issue 8 (no intervals, seed or device) and on a GPU."""
    from core.store import RunStore, new_run_id

    store = RunStore(cache / "runs")
    source = head_run()
    old = {k: v for k, v in source.to_json().items() if k not in OLD_KEYS and k not in ("created", "schema_version")}
    old.update(run_id=new_run_id("head", "old"), config={**source.config, "device": "cuda"},
               dataset={k: v for k, v in source.dataset.to_json().items() if k != "content_fingerprint"})
    old = RunRecord.from_json(old)
    store.save(old, predictions=store.load_predictions(source.run_id))
    state.clear_run_caches()
    return old


def test_deleting_a_run_forgets_its_cached_validation_scores(trained_copy):
    run = next(r for r in state.list_runs() if r.validation)
    assert state.run_view(run.run_id).validation is not None  # read once: now cached
    state.delete_runs([run.run_id])
    with pytest.raises(RunStoreError):
        state.run_view(run.run_id).validation


def test_old_run_records_still_render(trained_copy):
    old = add_old_style_run(trained_copy)
    at = page("results")
    at.query_params["run"] = old.run_id
    at.run()
    assert not at.exception
    assert not any("bootstrap" in caption for caption in texts(at.caption).splitlines())
    compare = page("compare").run()
    assert not compare.exception


def test_results_selection_updates_query_param(trained):
    at = page("results").run()
    other = state.list_runs()[-1].run_id
    at.selectbox(key="results_run").set_value(other).run()
    assert at.query_params["run"] == other


def test_results_logit_slider_rescores_without_retraining(trained):
    at = page("results")
    at.query_params["run"] = head_run().run_id
    at.run()
    before = {m.label: m.value for m in at.metric}
    at.slider(key="logit_tau").set_value(2.0).run()
    after = {m.label: (m.value, m.delta) for m in at.metric if "at tau 2" in m.label}
    assert not at.exception
    assert after["Balanced accuracy at tau 2"][0] != before["Balanced accuracy at tau 0"]
    assert after["Balanced accuracy at tau 2"][1] != "+0.000"
    validation = after["validation Balanced accuracy at tau 2"]  # shown first: what to choose tau by
    assert validation[0] != f"{head_run().validation.balanced_accuracy:.3f}" and validation[1]
    labels = [m.label for m in at.metric if "at tau 2" in m.label]
    assert labels.index("validation Macro-F1 at tau 2") < labels.index("Macro-F1 at tau 2")


def test_results_misclassified_gallery_shows_images(trained):
    at = page("results")
    at.query_params["run"] = head_run().run_id
    at.run()
    assert at.selectbox(key="error_cell").options
    assert at.image and all(caption.endswith(".png") for caption in at.image[0].captions)


def test_results_explain_a_cell_with_heat_maps_and_nearest_training_images(trained):
    """The toggle under the misclassified gallery draws, per image, its two heat maps and two neighbours."""
    run = head_run()
    at = page("results")
    at.query_params["run"] = run.run_id
    at.run()
    at.toggle(key="why_show").set_value(True).run()
    assert not at.exception
    captions = [c for image in at.image for c in image.captions]
    assert sum("map of" in c for c in captions) >= 1
    assert any(" minus " in c for c in captions) and any(c.startswith("nearest ") for c in captions)
    assert "exact CAM" in texts(at.caption) and "prior adjustment" in texts(at.caption)


def test_results_show_calibration_groups_and_ordinal_scores(trained):
    run = head_run()
    at = page("results")
    at.query_params["run"] = run.run_id
    at.run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["ECE after temperature"] == f"{run.calibration.ece:.3f}"
    groups = next(df.value for df in at.dataframe if "F1" in df.value.columns)
    assert groups["classes"].str.startswith(("head", "middle", "tail", "all")).all() and len(groups) == 4
    at.toggle(key="ordered_classes").set_value(True).run()
    assert not at.exception and "Quadratic weighted kappa" in {m.label for m in at.metric}


def test_svm_results_say_its_scores_are_not_probabilities(trained):
    svm = next(r for r in state.run_store().list_runs() if r.approach == "svm")
    at = page("results")
    at.query_params["run"] = svm.run_id
    at.run()
    assert not at.exception and {m.label: m.value for m in at.metric}["ECE as trained"] == "n/a"


def test_dataset_page_shows_suspected_label_errors(trained):
    at = page("dataset")
    at.run()
    assert not at.exception
    counts = next(df.value for df in at.dataframe if "suspected" in df.value.columns)
    assert counts["suspected"].sum() > 0 and "Confident learning" in texts(at.caption)
    assert any("looks like" in c for image in at.image for c in image.captions)


def test_results_unknown_run_link_warns_and_shows_newest(trained):
    at = page("results")
    at.query_params["run"] = "no-such-run"
    at.run()
    assert not at.exception
    assert "does not exist" in texts(at.warning)
    assert at.selectbox(key="results_run").value == state.list_runs()[0].run_id


# ---- Compare ---------------------------------------------------------------------------------------

def test_compare_shows_tradeoff_speedup_and_diff(trained):
    at = page("compare").run()
    assert not at.exception
    # The fixture's fits take fractions of a second, so the factor is timing noise: either sentence is right
    assert re.search(r"\*\*[^*]+\*\* is (\d[\d.]*× faster than|about as fast as) ", texts(at.markdown))
    assert charts(at) == 3  # trade-off scatter, confusion diff, F1 delta
    assert "McNemar's exact test p =" in texts(at.caption)
    (paired,) = [df.value for df in at.dataframe if "95% low" in df.value.columns]
    assert paired["metric"].tolist() == ["Accuracy", "Balanced accuracy", "Macro-F1"]
    runs = state.list_runs()
    at.selectbox(key="compare_a").set_value(runs[0].run_id)
    at.selectbox(key="compare_b").set_value(runs[0].run_id).run()
    assert "Pick two different runs" in texts(at.info)
    assert charts(at) == 1


def test_compare_leads_with_findings_and_the_comparisons_they_use(trained):
    at = page("compare").run()
    assert not at.exception
    headers = [h.value for h in at.subheader]
    assert headers.index("Findings") < headers.index("Speed-up")  # findings first, above the charts
    found = next(m.value for m in at.markdown if m.value.startswith("1. "))
    assert "is the run chosen by validation" in found and "Holm over" in found and "(results?run=" in found
    (used,) = [df.value for df in at.dataframe if "macro-F1 p (Holm)" in df.value.columns]
    assert {"A", "B", "Δ macro-F1 [95%]", "McNemar p (Holm)", "verdict"} <= set(used.columns)
    assert "Adjusted with Holm over the" in texts(at.caption)  # the two-run diff's p, adjusted over the group


def test_paired_tests_are_computed_once_per_pair_of_runs(trained, monkeypatch):
    """The paired bootstrap ran at every page run (2.4 s and +362 MB at 20k test images)."""
    import core.run_view
    import core.whatif

    computed, real = [], core.run_view.paired_comparison
    counting = lambda *args, **kwargs: computed.append(len(args[0])) or real(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(core.run_view, "paired_comparison", counting)
    monkeypatch.setattr(core.whatif, "paired_comparison", counting)
    at = page("compare").run()
    first = len(computed)  # the group's family of comparisons (findings), the two-run diff among them
    assert 4 <= first <= 6  # 4 runs: 4 same-approach or same-remedy pairs, and the pairs the findings add
    at.run()
    page("compare").run()  # another session, the same runs
    assert not at.exception and len(computed) == first
    run = next(r for r in state.list_runs() if r.approach == "svm" and r.class_weight == "none")
    core.whatif.PAIRED.clear()
    at = whatif_page(run)
    at.run()
    assert not at.exception and len(computed) == first + 1


def test_compare_keeps_other_devices_in_their_own_group(trained_copy):
    add_old_style_run(trained_copy)
    at = page("compare").run()
    group = at.selectbox(key="compare_group")
    assert " · cpu" in group.options[0] and group.options[0].endswith("(4 runs)")
    assert " · cuda" in group.options[1] and group.options[1].endswith("(1 run)")
    assert len(group.options) == 2
    at.selectbox(key="compare_group").set_value(1).run()
    assert not at.exception
    assert "Only one run in this group" in texts(at.info)
    assert charts(at) == 1


def test_compare_tables_backbones_of_runs_that_differ_only_in_backbone(trained_copy, demo_data):
    run_experiment(ExperimentConfig(data=demo_data, backbone="efficientnet_lite1", approaches=("head",),
                                    remedies=("none",), cache_dir=str(trained_copy), workers=0, **FAST))
    at = page("compare").run()
    assert not at.exception
    assert at.selectbox(key="backbone_group").value == 0
    table = next(df.value for df in at.dataframe if "extract s/image" in df.value.columns)
    assert sorted(table["backbone"]) == ["efficientnet_lite0", "efficientnet_lite1"]
    assert (table["features"] == 1280).all() and (table["extract s/image"] > 0).all()


def test_compare_deletes_selected_runs(trained_copy):
    at = page("compare").run()
    doomed = state.list_runs()[0].run_id
    at.multiselect(key="delete_select").set_value([doomed]).run()
    at.button(key="delete_runs").click().run()
    assert not at.exception
    assert doomed not in {run.run_id for run in state.list_runs()}
    assert len(state.list_runs()) == 3


# ---- empty states ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["results", "compare"])
def test_pages_without_runs_point_to_train(empty_cache, name):
    at = page(name).run()
    assert not at.exception
    assert "No runs yet on this dataset." in texts(at.info)
    assert at.get("page_link")


def test_train_page_without_jobs(empty_cache):
    at = page("train").run()
    assert not at.exception
    assert "No job yet" in texts(at.caption)


# ---- What-if ---------------------------------------------------------------------------------------

def whatif_page(run: dict) -> AppTest:
    at = page("whatif")
    at.query_params["run"] = run.run_id
    return at.run()


def rarest_slider(at: AppTest, run: RunRecord, seed: str = "run"):
    rare = min(range(len(run.per_class)), key=lambda i: run.per_class[i].train_count)
    return at.select_slider(key=f"whatif_{run.run_id}_{seed}_{rare}")


def rarest_weight_seeded_from(scheme: str) -> float:
    """The rarest class's What-if slider on the unweighted SVM run, once the weights are seeded from `scheme`."""
    run = next(r for r in state.list_runs() if r.approach == "svm" and r.class_weight == "none")
    at = whatif_page(run)
    at.segmented_control(key="whatif_seed").set_value(scheme).run()
    assert not at.exception
    return rarest_slider(at, run, scheme).value


@pytest.mark.parametrize("approach", ["svm", "head"])
def test_whatif_refits_on_a_weight_change_and_shows_deltas(trained, approach):
    run = next(r for r in state.list_runs() if r.approach == approach and r.class_weight == "none")
    at = whatif_page(run)
    assert not at.exception and not at.error
    metrics = {m.label: m for m in at.metric}
    assert metrics["Macro-F1"].value == f"{run.macro_f1:.3f}" and not metrics["Macro-F1"].delta
    assert "Refit time" in metrics and charts(at) == 2
    rarest_slider(at, run).set_value(100.0).run()
    assert not at.exception and not at.error
    metrics = {m.label: m for m in at.metric}
    assert any(metrics[label].delta for label in ("Accuracy", "Balanced accuracy", "Macro-F1")), metrics
    table = next(frame.value for frame in at.dataframe if "Δ recall" in frame.value.columns)
    assert table["weight"].max() / table["weight"].min() == pytest.approx(100.0)  # rescaled, ratio kept
    assert table["Δ recall"].abs().sum() > 0
    assert at.session_state["whatif_last"][0][1].count(100.0) == 1  # the refit ran with the new weight
    paired = next(frame.value for frame in at.dataframe if "95% low" in frame.value.columns)
    macro = paired.set_index("metric").loc["Macro-F1"]
    assert macro["B − A"] == pytest.approx(float(metrics["Macro-F1"].value) - run.macro_f1, abs=1e-3)
    assert macro["95% low"] <= macro["B − A"] <= macro["95% high"]
    caption = next(str(c.value) for c in at.caption if "McNemar's exact test p =" in str(c.value))
    assert caption.startswith("A is the starting run, B the tuned model.")
    assert ("contains 0" in caption) == any(low <= 0 <= high for low, high in zip(paired["95% low"], paired["95% high"]))


def test_whatif_unchanged_weights_show_no_validation_change(trained):
    """Issue 25: a head's validation folds chose their own epochs, the refit's folds reused the final head's: the
    page showed a validation change before anything was moved."""
    run = head_run("balanced")
    at = whatif_page(run)
    assert not at.exception and not at.error
    validation = at.metric[:3]  # the validation row comes first
    assert {m.label for m in validation} == {"Accuracy", "Balanced accuracy", "Macro-F1"}
    assert not any(m.delta for m in validation), [(m.label, m.value, m.delta) for m in validation]
    assert f"{run.tuned['epochs']} epochs chosen on this run's training folds" in texts(at.caption)


def test_whatif_svm_note_says_what_rescaled_weights_do(trained):
    """Issue 25: the note said a larger weight could not change the boundary, yet the weights are rescaled."""
    run = next(r for r in state.list_runs() if r.approach == "svm" and r.class_weight == "none")
    at = whatif_page(run)
    rarest_slider(at, run).set_value(100.0).run()  # a bound far above what its support vectors need
    notes = texts(at.info)
    rare = min(run.per_class, key=lambda row: row.train_count).name
    assert not at.exception and f"{rare}: none of its" in notes and "sits at its bound" in notes
    assert "lowers every other class's bound" in notes and "cannot change the boundary" not in notes


def test_a_weight_scheme_declared_once_appears_on_the_train_page_and_seeds_what_if(trained, monkeypatch):
    """Issue 24: adding a scheme to `core.weights.SCHEMES` alone offers it on the Train page and in What-if."""
    import core.weights

    monkeypatch.setitem(core.weights.SCHEMES, "log", core.weights.Scheme(
        "class weights proportional to 1 / log(1 + training frequency)", lambda counts, beta: 1 / np.log1p(counts)))
    train = page("train").run()
    assert "log" in train.multiselect(key="train_schemes").options and not train.exception
    assert rarest_weight_seeded_from("log") > 1.0


def test_whatif_seed_scheme_reseeds_the_sliders(trained):
    assert rarest_weight_seeded_from("balanced") > 1.0


def test_whatif_save_stores_a_custom_run(trained_copy):
    run = next(r for r in state.list_runs() if r.approach == "head" and r.class_weight == "none")
    at = whatif_page(run)
    rarest_slider(at, run).set_value(100.0).run()
    at.button(key="whatif_save").click().run()
    assert not at.exception and "Saved run" in texts(at.success)
    saved = next(r for r in state.list_runs() if r.class_weight == "custom:what-if")
    assert max(saved.class_weights) / min(saved.class_weights) == pytest.approx(100.0)
    assert saved.approach == "head" and saved.chosen_with_test_visible is True


def test_whatif_viewers_play_but_cannot_save(trained, monkeypatch):
    monkeypatch.setenv("TRANSFERSCOPE_VIEWER", "1")
    run = next(r for r in state.list_runs() if r.approach == "svm" and r.class_weight == "none")
    at = whatif_page(run)
    rarest_slider(at, run).set_value(100.0).run()
    assert not at.exception and not at.error
    assert "Read-only" in texts(at.info)
    assert not [b for b in at.button if b.key == "whatif_save"]
    assert len(state.list_runs()) == 4


# ---- Feature map and near-duplicates ---------------------------------------------------------------

def test_feature_map_is_computed_once_as_a_job_then_drawn(trained_copy):
    at = page("featuremap").run()
    assert not at.exception and charts(at) == 0 and "takes about" in texts(at.info)
    at.button(key="compute_map").click().run()
    job = wait_until_ended(next(job for job in state.job_manager().jobs() if job.kind == state.MAP_JOB))
    assert job.status == "done", job.error
    at = page("featuremap").run()  # a new session finds the stored map
    assert not at.exception and charts(at) == 1
    assert not [b for b in at.button if b.key == "compute_map"]
    train = page("train").run()  # the map job is not a training job: a new session's Train page ignores it
    assert not train.exception and "No job yet" in texts(train.caption)


def test_dataset_page_lists_near_duplicate_pairs_with_thumbnails(trained):
    at = page("dataset").run()
    assert not at.exception
    at.slider(key="duplicate_threshold").set_value(0.9).run()
    assert not at.exception
    assert "nearly duplicate a training image" in texts(at.warning)
    pair_captions = [image.captions for image in at.image if any(c.startswith("test: ") for c in image.captions)]
    assert pair_captions and all(c[0].startswith("test: ") and c[1].startswith("train: ") for c in pair_captions)


def test_demo_dataset_shows_no_leak_and_each_threshold_only_filters(trained_copy, monkeypatch):
    import core.duplicates

    shutil.rmtree(trained_copy / "duplicates", ignore_errors=True)
    calls, real = [], core.duplicates.best_matches
    monkeypatch.setattr(core.duplicates, "best_matches", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    at = page("dataset").run()
    assert not at.exception and not at.warning  # distinct digits are no leak at the default threshold
    assert "No test image has a training image" in texts(at.success)
    for threshold in (0.9, 0.95, 0.92):
        at.slider(key="duplicate_threshold").set_value(threshold).run()
        assert not at.exception
    assert "nearly duplicate a training image" in texts(at.warning)
    assert len(calls) == 1  # computed once for the feature set and split, then filtered per threshold


def test_a_large_duplicate_check_runs_as_a_background_job(trained_copy, monkeypatch):
    import core.duplicates

    shutil.rmtree(trained_copy / "duplicates", ignore_errors=True)
    monkeypatch.setattr(core.duplicates, "INLINE_PAIRS", 0)
    at = page("dataset").run()
    assert not at.exception and "in the background" in texts(at.caption)
    job = wait_until_ended(next(job for job in state.job_manager().jobs() if job.kind == state.DUPLICATES_JOB))
    assert job.status == "done", job.error
    at = page("dataset").run()
    assert not at.exception and "No test image has a training image" in texts(at.success)


def test_dataset_page_without_runs_explains_the_duplicate_check(empty_cache):
    at = page("dataset").run()
    assert not at.exception
    assert "No check yet: train a svm or head run on this dataset first" in texts(at.caption)


def count_fits(monkeypatch) -> list:
    """The weights of every real fit What-if makes (kept refits and tau changes make none)."""
    import core.whatif

    fits, real = [], core.whatif.fit_run
    monkeypatch.setattr(core.whatif, "fit_run", lambda *args, **kwargs: fits.append(args[5].copy())
                        or real(*args, **kwargs))
    core.whatif.REFITS.clear()
    return fits


def test_whatif_refits_only_for_weights_not_tried_and_rescores_tau(trained, monkeypatch):
    fits = count_fits(monkeypatch)
    run = next(r for r in state.list_runs() if r.approach == "head" and r.class_weight == "none")
    at = whatif_page(run)
    at.run()  # a rerun with the same inputs (e.g. another widget) reuses the last refit
    assert len(fits) == 1
    start_weight = rarest_slider(at, run).value
    rarest_slider(at, run).set_value(100.0).run()
    assert len(fits) == 2 and fits[1].max() / fits[1].min() == pytest.approx(100.0)  # fits see rescaled weights
    at.slider(key=f"whatif_tau_{run.run_id}").set_value(1.0).run()
    assert not at.exception and not at.error and len(fits) == 2  # tau rescales the kept scores: no refit
    tuned = {m.label: m.value for m in at.metric}
    rarest_slider(at, run).set_value(start_weight).run()
    rarest_slider(at, run).set_value(100.0).run()
    assert len(fits) == 2 and {m.label: m.value for m in at.metric} == tuned  # weights tried before: kept


def test_whatif_refits_on_a_button_when_a_refit_is_estimated_slow(trained, monkeypatch):
    """Found on 30k photos: a head refit on 24k images took 30 s, and every slider move started one, while the
    page said the linear models refit in about a second at any size."""
    import core.whatif

    monkeypatch.setattr(core.whatif, "LIVE_REFIT_S", 0.0)  # the demo's refits as if they were long
    fits = count_fits(monkeypatch)
    run = next(r for r in state.list_runs() if r.approach == "head" and r.class_weight == "none")
    at = whatif_page(run)
    assert not at.exception and len(fits) == 1  # the start's own weights
    assert "so moves are not live here" in texts(at.warning)
    rarest_slider(at, run).set_value(100.0).run()
    assert not at.exception and len(fits) == 1  # a move alone refits nothing
    rarest_slider(at, run).set_value(100.0)  # a form sends its values with the press (AppTest: in the same run)
    next(button for button in at.button if button.label == "Refit").click().run()
    assert not at.exception and len(fits) == 2 and fits[1].max() / fits[1].min() == pytest.approx(100.0)


def test_whatif_viewers_are_rate_limited_and_wait_for_the_owners_jobs(trained, monkeypatch):
    """Viewers moving sliders refit without limit and starved the owner's refits and training."""
    monkeypatch.setenv("TRANSFERSCOPE_VIEWER", "1")
    monkeypatch.setattr(state, "SESSION_REFITS", {"max_events": 2, "per_s": 600})
    monkeypatch.setattr(state, "VIEWER_REFITS", state.sharing.Throttle(max_events=20, per_s=600))
    fits = count_fits(monkeypatch)
    run = next(r for r in state.list_runs() if r.approach == "svm" and r.class_weight == "none")
    at = whatif_page(run)
    rarest_slider(at, run).set_value(100.0).run()
    assert len(fits) == 2 and not at.error
    rarest_slider(at, run).set_value(10.0).run()  # 10 and 100 lie on the sliders' grid
    assert len(fits) == 2 and "this one can run in" in texts(at.error)
    rarest_slider(at, run).set_value(100.0).run()  # tried before: shown at once, within the limit
    assert not at.error and len(fits) == 2
    release = threading.Event()
    job = state.job_manager().submit("owner's training", lambda report: release.wait(30))
    try:
        other_viewer = whatif_page(run)  # the run's own weights were fitted before: shown at once
        assert not other_viewer.error
        rarest_slider(other_viewer, run).set_value(10.0).run()
        assert len(fits) == 2 and "viewers' What-if refits resume when it ends" in texts(other_viewer.error)
    finally:
        release.set()
    wait_until_ended(job)


def test_whatif_shows_validation_first_offsets_rescore_and_the_svm_explains(trained, monkeypatch):
    calls = count_fits(monkeypatch)
    run = next(r for r in state.list_runs() if r.approach == "svm" and r.class_weight == "none")
    at = whatif_page(run)
    assert not at.exception and not at.error
    assert texts(at.markdown).index("**Validation**") < texts(at.markdown).index("**Test**")
    validation = [m for m in at.metric if m.label == "Macro-F1"][0]
    assert validation.value == f"{run.validation.macro_f1:.3f}"  # the start's own weights: no change
    support = {row.name: (row.support_vectors, row.at_bound) for row in run.per_class}
    free = [name for name, (n_sv, n_bound) in support.items() if n_sv and not n_bound]
    assert len([i for i in at.info if "cannot change the boundary" in str(i.value)]) == len(free)
    rare = min(range(len(run.per_class)), key=lambda i: run.per_class[i].train_count)
    slider = at.slider(key=f"whatif_offset_{run.run_id}_{rare}")
    slider.set_value(slider.max).run()
    assert not at.exception and len(calls) == 1  # offsets rescore, no refit
    test_macro = [m for m in at.metric if m.label == "Macro-F1"]
    assert test_macro[0].delta  # the validation score moved with the offset
    at.toggle(key="whatif_show_test").set_value(False).run()
    assert not at.exception and len([m for m in at.metric if m.label == "Macro-F1"]) == 1  # test scores hidden


def test_class_names_never_render_as_links_or_headings(empty_cache, demo_data, tmp_path):
    """A bare www. name became a link (GFM autolink), a name with a newline and `#` a heading."""
    folder = shutil.copytree(demo_data, tmp_path / "data")
    for split in ("train", "test"):
        (folder / split / "9-nine").rename(folder / split / "www.evil.example")
    at = page("dataset")
    at.session_state["data_dir"] = str(folder)
    at.run()
    assert not at.exception
    names = [m.value for m in at.markdown if "evil" in m.value]
    assert names and all("www\\.evil" in value for value in names)


def test_page_runs_read_the_run_list_again_only_when_runs_change(trained_copy, monkeypatch):
    """Every page run re-read every record: viewers' reruns cost the owner's server a file read per run."""
    from core.store import RunStore

    scans, original = [], RunStore.scan
    monkeypatch.setattr(RunStore, "scan", lambda self: scans.append(len(original(self)[0])) or original(self))
    state.clear_run_caches()
    assert not page("share").run().exception and not page("share").run().exception
    assert len(scans) == 1  # the second page run read no record
    runs = trained_copy / "runs"
    removed = sorted(p for p in runs.iterdir() if not p.name.startswith("."))[0]
    removed.rename(runs / f".gone-{removed.name}")  # as a delete moves a run out
    assert not page("share").run().exception
    assert len(scans) == 2 and scans[1] == scans[0] - 1

"""The command line (`python -m core`): its outputs, the results.json contract and its exit codes."""
import contextlib
import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch.hub

from core.report import run_records
from core.cli import main
from core.data import load_dataset
from core.errors import Cancelled
from core.store import RunStore

REPO = Path(__file__).resolve().parents[1]
FAST = ["--image-size", "32", "--device", "cpu", "--workers", "0"]


def run_main(argv) -> tuple[int, str, str]:
    """Call `main(argv)` and return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def assert_usage_error(code, stdout, stderr, *fragments, quiet_stdout=True):
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one error line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    if quiet_stdout:
        assert stdout == ""


@pytest.fixture(scope="module")
def first_run(tiny_dir, tmp_path_factory):
    """`experiment` on the tiny dataset with an empty cache.

    Returns (cache dir, results path, exit code, stdout, stderr, run folders right after the run).
    """
    work = tmp_path_factory.mktemp("cli")
    cache, out = work / "cache", work / "results.json"
    code, stdout, stderr = run_main(["experiment", "--data", tiny_dir, "--cache-dir", cache, "--epochs", "5",
                                     "--out", out, *FAST])
    stored = sorted(p.name for p in (cache / "runs").iterdir()) if (cache / "runs").exists() else []
    return cache, out, code, stdout, stderr, stored


# ---------------------------------------------------------------- commands that work


def test_demo_data_writes_the_dataset(tmp_path, demo_dataset):
    code, stdout, _ = run_main(["demo-data", "--out", tmp_path / "demo"])
    assert code == 0
    assert stdout.strip() == str(tmp_path / "demo")
    assert load_dataset(tmp_path / "demo").fingerprint == demo_dataset.fingerprint


def test_demo_data_never_deletes_a_users_folder(tmp_path):
    pictures = tmp_path / "Pictures"
    (pictures / "holiday").mkdir(parents=True)
    (pictures / "holiday" / "beach.jpg").write_bytes(b"my only copy")
    assert_usage_error(*run_main(["demo-data", "--out", pictures]), str(pictures), "empty")
    assert (pictures / "holiday" / "beach.jpg").read_bytes() == b"my only copy"
    assert sorted(p.name for p in pictures.iterdir()) == ["holiday"]


def test_demo_data_rebuilds_an_earlier_demo_or_an_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_main(["demo-data", "--out", empty])[0] == 0
    first = load_dataset(empty).fingerprint
    assert run_main(["demo-data", "--out", empty])[0] == 0  # an earlier demo (its marker file) is rebuilt
    assert load_dataset(empty).fingerprint == first
    assert_usage_error(*run_main(["demo-data", "--out", empty / "train" / "0-zero" / "0000.png"]), "not a folder")


def test_experiment_writes_results(first_run, tiny_dir, check_results_schema):
    cache, out, code, stdout, stderr, stored = first_run
    assert code == 0, stderr
    results = json.loads(out.read_text())
    check_results_schema(results, n_runs=4)
    assert results["cache_hit"] is False and results["extract_seconds"] > 0
    assert results["dataset"]["root"] == str(tiny_dir)
    assert results["dataset"]["train_counts"] == [12, 8, 6] and results["dataset"]["test_counts"] == [3, 3, 3]
    assert [(r.approach, r.class_weight) for r in run_records(results)] == [
        ("svm", "none"), ("svm", "balanced"), ("head", "none"), ("head", "balanced")]
    assert results["backbone"]["name"] == "efficientnet_lite0" and results["backbone"]["image_size"] == 32  # as used
    assert results["config"]["image_size"] == 32 and results["config"]["epochs"] == 5
    assert stdout == ""  # results go to the file; progress and the summary to stderr
    assert "results written to" in stderr and "extracted" in stderr
    assert stored == sorted(r.run_id for r in run_records(results))


def test_experiment_shows_the_svm_estimate_before_its_first_step(first_run):
    stderr = first_run[4]
    shown = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("fit SVM:")]
    assert " 0/100 " in shown[1] and "SVC (rbf kernel) on 26 images; estimate about" in shown[1]


def test_extract_prints_key_n_and_seconds(first_run, tiny_dir):
    cache, out, *_ = first_run
    code, stdout, _ = run_main(["extract", "--data", tiny_dir, "--cache-dir", cache, *FAST])
    assert code == 0
    info = json.loads(stdout)
    assert info["key"] == json.loads(out.read_text())["feature_key"]
    assert info["n"] == 35 and info["feature_dim"] == 1280
    assert isinstance(info["seconds"], float) and info["seconds"] >= 0
    assert info["cache_hit"] is True and info["skipped"] == 0


def test_extract_new_setting_is_a_cache_miss(tiny_dir, tmp_path):
    code, stdout, stderr = run_main(["extract", "--data", tiny_dir, "--cache-dir", tmp_path, "--pool", "max", *FAST])
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info["cache_hit"] is False and info["n"] == 35
    assert (tmp_path / "features" / info["key"] / "meta.json").exists()


def test_cache_dir_defaults_to_the_folder_the_dashboard_reads(first_run, tiny_dir, tmp_path, monkeypatch):
    """TRANSFERSCOPE_CACHE_DIR (read by the dashboard too) is the default of every command's --cache-dir."""
    cache, *_ = first_run
    monkeypatch.setenv("TRANSFERSCOPE_CACHE_DIR", str(cache))
    code, stdout, stderr = run_main(["extract", "--data", tiny_dir, *FAST])
    assert code == 0, stderr
    assert json.loads(stdout)["cache_hit"] is True  # the features the first run cached in that folder
    monkeypatch.setenv("TRANSFERSCOPE_CACHE_DIR", str(tmp_path / "shared"))
    code, stdout, _ = run_main(["owner-token"])
    assert code == 0 and (tmp_path / "shared" / "owner_token").read_text().strip() in stdout


@pytest.mark.slow
def test_second_run_in_a_real_process_is_a_cache_hit(first_run, tiny_dir, tmp_path):
    cache, *_ = first_run
    out = tmp_path / "again.json"
    proc = subprocess.run([sys.executable, "-m", "core", "experiment", "--data", str(tiny_dir), "--cache-dir",
                           str(cache), "--approaches", "svm", "--class-weight", "balanced", "--out", str(out), *FAST],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    results = json.loads(out.read_text())
    assert results["cache_hit"] is True
    assert [(r.approach, r.class_weight) for r in run_records(results)] == [("svm", "balanced")]
    assert "cache hit" in proc.stderr


@pytest.mark.slow
def test_usage_error_in_a_real_process_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "core", "experiment", "--data", str(tmp_path), "--backbone",
                           "resnet19", "--out", str(tmp_path / "r.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert_usage_error(proc.returncode, proc.stdout, proc.stderr, "resnet19", "resnet18")


def test_report_markdown(first_run, tmp_path):
    _, results, *_ = first_run
    code, stdout, _ = run_main(["report", results, "--out", tmp_path / "report.md"])
    assert code == 0 and stdout.strip() == str(tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert "### Runs" in text and "| run " in text
    assert text.count("| 0-zero") == 5  # the best runs' F1 per class, then one per-class table per run
    findings = text.split("## Findings")[1].split("\n## ")[0]
    assert "is the run chosen by validation" in findings and "(http://localhost:8501/results?run=" in findings
    code, _, _ = run_main(["report", results, "--out", tmp_path / "r.md", "--base-url", "http://host:9"])
    assert code == 0 and "(http://host:9/results?run=" in (tmp_path / "r.md").read_text()


def test_summary_table_names_runs_by_remedy(first_run, tiny_dir):
    """It printed the class-weight label: a remedy grid read 'head none' three times."""
    cache, *_ = first_run
    code, _, stderr = run_main(["experiment", "--data", tiny_dir, "--cache-dir", cache, "--epochs", "5",
                                "--approaches", "head", "--remedy", "none,la-loss,offsets",
                                "--out", cache.parent / "grid.json", *FAST])
    assert code == 0, stderr
    table = stderr.split("macroF1 [95% interval]")[1].splitlines()[1:4]
    assert [line.split("  ")[0] for line in table] == ["head · none", "head · la-loss", "head · offsets"]


def test_report_html_is_self_contained(first_run, tmp_path):
    _, results, *_ = first_run
    code, _, stderr = run_main(["report", results, "--out", tmp_path / "report.html"])
    assert code == 0, stderr
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!doctype html>")
    assert re.search(r"plotly\.js v\d", page), "plotly.js is not inlined"
    assert len(re.findall(r"plotly\.js v\d", page)) == 1, "plotly.js inlined more than once"
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, flags=re.I), "external script in a self-contained page"
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?https?:", page, flags=re.I)
    assert "svm · balanced" in page and "head · none" in page
    md = tmp_path / "forced.txt"
    assert run_main(["report", results, "--format", "html", "--out", md])[0] == 0
    assert md.read_text().startswith("<!doctype html>")


def test_custom_weight_file_is_used(first_run, tiny_dir, tmp_path):
    cache, *_ = first_run
    weights = tmp_path / "rare.json"
    weights.write_text('{"2-two": 5, "0-zero": 0.5}')
    out = tmp_path / "r.json"
    code, _, stderr = run_main(["experiment", "--data", tiny_dir, "--cache-dir", cache, "--approaches", "svm",
                                "--class-weight", f"balanced,{weights}", "--out", out, *FAST])
    assert code == 0, stderr
    results = json.loads(out.read_text())
    assert results["cache_hit"] is True
    runs = run_records(results)
    assert [r.class_weight for r in runs] == ["balanced", "custom:rare"]
    raw, counts = np.array([0.5, 1.0, 5.0]), np.array(results["dataset"]["train_counts"])
    assert runs[1].class_weights == pytest.approx((raw * counts.sum() / (raw * counts).sum()).tolist())


def test_a_file_name_that_is_not_utf8_is_listed_as_skipped(tiny_dir, tmp_path):
    data = shutil.copytree(tiny_dir, tmp_path / "data")
    odd = os.fsdecode(bytes(data / "train" / "1-one") + b"/Z\xfcrich.png")  # Latin-1, from an old zip tool
    shutil.copy(next((data / "train" / "1-one").iterdir()), odd)
    code, stdout, stderr = run_main(["extract", "--data", data, "--cache-dir", tmp_path / "cache", "--runtime", "torch",
                                     *FAST])
    assert code == 0, stderr
    assert json.loads(stdout)["skipped"] == 1 and json.loads(stdout)["n"] == 35


@pytest.fixture(scope="module")
def flat_test_folder(tiny_dir, tmp_path_factory):
    """The tiny dataset's test images moved into one flat folder, labelled by `labels.txt` (semicolons, header),
    with two images of a class that has no training images (owl)."""
    test = tmp_path_factory.mktemp("flat") / "test"
    test.mkdir()
    rows = ["file;label"]
    for class_dir in sorted((tiny_dir / "test").iterdir()):
        for image in sorted(class_dir.iterdir()):
            shutil.copy(image, test / f"{class_dir.name}-{image.name}")
            rows.append(f"{class_dir.name}-{image.name};{class_dir.name}")
    for i, image in enumerate(sorted((tiny_dir / "test" / "2-two").iterdir())[:2]):
        shutil.copy(image, test / f"owl-{i}.png")
        rows.append(f"owl-{i}.png;owl")
    (test / "labels.txt").write_text("\n".join(rows) + "\n")
    return test


def test_experiment_with_a_flat_test_folder_and_its_label_file(tiny_dir, flat_test_folder, tmp_path,
                                                               check_results_schema):
    out = tmp_path / "r.json"
    code, _, stderr = run_main(["experiment", "--data", tiny_dir / "train", "--test-data", flat_test_folder,
                                "--test-labels", flat_test_folder / "labels.txt", "--cache-dir", tmp_path / "cache",
                                "--epochs", "3", "--out", out, *FAST])
    assert code == 0, stderr
    results = json.loads(out.read_text())
    check_results_schema(results, n_runs=4)
    dataset = results["dataset"]
    assert dataset["classes"] == ["0-zero", "1-one", "2-two"]
    assert dataset["train_counts"] == [12, 8, 6] and dataset["test_counts"] == [3, 3, 3]
    assert dataset["skipped_counts"] == [{"reason": "label 'owl' is not a training class", "count": 2}]
    assert results["config"]["test_labels"] == str(flat_test_folder / "labels.txt")


@pytest.mark.parametrize("extra,fragment", [
    (["--test-labels", "labels.txt"], "needs the test folder"),
    (["--labels", "."], "is a folder"),
    (["--test-data", "nowhere"], "does not exist"),
])
def test_bad_label_options_fail_before_any_work(tiny_dir, tmp_path, extra, fragment):
    cache = tmp_path / "cache"
    assert_usage_error(*run_main(["experiment", "--data", tiny_dir, "--cache-dir", cache, "--out", tmp_path / "r.json",
                                  *extra, *FAST]), fragment)
    assert not cache.exists()


def test_list_backbones_says_which_load_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))  # no ResNet file cached
    code, stdout, _ = run_main(["list-backbones"])
    assert code == 0
    rows = {line.split()[0]: line for line in stdout.splitlines() if line.startswith(("efficientnet", "resnet"))}
    assert list(rows) == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                          "resnet18", "resnet34", "resnet50"]
    for name, size in (("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)):
        assert rows[name].split()[1:3] == [f"{size}px", "offline"]
    assert "needs weights" in rows["resnet18"] and "resnet18-f37072fd.pth" in rows["resnet18"]


# ---------------------------------------------------------------- bad input: exit 2, one line


def test_missing_data_dir(tmp_path):
    assert_usage_error(*run_main(["experiment", "--data", tmp_path / "nope", "--out", tmp_path / "r.json"]),
                       "does not exist", "nope")
    assert_usage_error(*run_main(["extract", "--data", tmp_path / "nope"]), "does not exist")
    assert not (tmp_path / "r.json").exists()


def test_unknown_backbone(tiny_dir, tmp_path):
    assert_usage_error(*run_main(["experiment", "--data", tiny_dir, "--backbone", "resnet19", "--out",
                                  tmp_path / "r.json"]), "resnet19", "did you mean resnet18")


def test_unknown_approach(tiny_dir, tmp_path):
    assert_usage_error(*run_main(["experiment", "--data", tiny_dir, "--approaches", "svm,knn", "--out",
                                  tmp_path / "r.json", "--cache-dir", tmp_path]), "knn", "finetune")
    assert not (tmp_path / "features").exists()


def test_unknown_pool_and_device_are_usage_errors(tiny_dir, tmp_path):
    assert_usage_error(*run_main(["extract", "--data", tiny_dir, "--pool", "min"]), "min")
    assert_usage_error(*run_main(["extract", "--data", tiny_dir, "--device", "tpu"]), "tpu")


@pytest.mark.parametrize("table,fragment", [
    ('{"cow": 2}', "unknown classes"),
    ('{"1-one": -3}', "-3"),
    ('{"1-one": NaN}', "nan"),
    ('{"1-one": "heavy"}', "'heavy'"),
    ('{"1-one": true}', "True"),
    ('{"1-one": 2', "not valid JSON"),
    ('{"1-one": 1e308}', "1e+308"),  # finite, but inf in float32: the head's loss would be NaN
    ('[1, 2]', "JSON object"),
])
def test_bad_custom_class_weight_file(tiny_dir, tmp_path, table, fragment):
    weights = tmp_path / "weights.json"
    weights.write_text(table)
    cache = tmp_path / "cache"
    assert_usage_error(*run_main(["experiment", "--data", tiny_dir, "--class-weight", f"none,{weights}",
                                  "--cache-dir", cache, "--out", tmp_path / "r.json", *FAST]), fragment)
    assert not (cache / "features").exists() and not (cache / "runs").exists()  # only the scan's file index
    assert not (tmp_path / "r.json").exists()


def test_custom_weight_path_that_is_a_folder(tiny_dir, tmp_path):
    (tmp_path / "weights.json").mkdir()
    assert_usage_error(*run_main(["experiment", "--data", tiny_dir, "--class-weight", tmp_path / "weights.json",
                                  "--cache-dir", tmp_path / "cache", "--out", tmp_path / "r.json", *FAST]),
                       "is a folder")


def test_custom_weight_file_with_a_utf8_bom_is_read(first_run, tiny_dir, tmp_path):
    weights = tmp_path / "notepad.json"
    weights.write_bytes('{"2-two": 4}'.encode("utf-8-sig"))  # as Windows Notepad saves UTF-8
    out = tmp_path / "r.json"
    code, _, stderr = run_main(["experiment", "--data", tiny_dir, "--cache-dir", first_run[0], "--approaches", "svm",
                                "--class-weight", weights, "--out", out, *FAST])
    assert code == 0, stderr
    results = json.loads(out.read_text())
    raw, counts = np.array([1.0, 1.0, 4.0]), np.array(results["dataset"]["train_counts"])
    assert results["runs"][0]["class_weights"] == pytest.approx((raw * counts.sum() / (raw * counts).sum()).tolist())


@pytest.mark.parametrize("make_out,fragment", [
    (lambda tmp: tmp / "folder", "is a folder"),
    (lambda tmp: tmp / "a-file" / "r.json", "is a file, not a folder"),
])
def test_results_out_that_cannot_be_a_file_fails_before_any_work(tiny_dir, tmp_path, make_out, fragment):
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    cache = tmp_path / "cache"
    assert_usage_error(*run_main(["experiment", "--data", tiny_dir, "--cache-dir", cache, "--out", make_out(tmp_path),
                                  *FAST]), fragment, str(make_out(tmp_path)))
    assert not cache.exists()  # checked before scanning, queueing or extracting


def test_cache_dir_that_is_a_file_fails_before_any_work(tiny_dir, tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    for argv in (["experiment", "--out", tmp_path / "r.json"], ["extract"]):
        assert_usage_error(*run_main([*argv, "--data", tiny_dir, "--cache-dir", tmp_path / "cache", *FAST]),
                           "cache", "is a file, not a folder")
    assert (tmp_path / "cache").read_text() == "not a folder"


def test_report_out_that_is_a_folder(first_run, tmp_path):
    assert_usage_error(*run_main(["report", first_run[1], "--out", tmp_path]), "is a folder", str(tmp_path))


def test_a_full_disk_is_one_error_line_and_leaves_no_trusted_cache_entry(tiny_dir, tmp_path, monkeypatch):
    real_write_bytes = Path.write_bytes

    def full_disk(self, data):
        if ".shard-" in self.name:
            real_write_bytes(self, data[: len(data) // 2])  # the disk fills up half-way through the shard
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_bytes(self, data)

    cache, argv = tmp_path / "cache", ["extract", "--data", tiny_dir, "--runtime", "torch", *FAST]
    monkeypatch.setattr(Path, "write_bytes", full_disk)
    code, stdout, stderr = run_main([*argv, "--cache-dir", cache])
    assert code == 2 and stdout == "" and "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("error:")]  # after the progress bar
    assert "shard-00000.npz" in line and "disk is full" in line
    [entry] = (cache / "features").iterdir()
    assert sorted(p.name for p in entry.iterdir()) == []  # no partial shard, no temporary file, no meta.json
    monkeypatch.undo()
    code, stdout, stderr = run_main([*argv, "--cache-dir", cache])
    assert code == 0, stderr
    assert json.loads(stdout)["cache_hit"] is False and json.loads(stdout)["n"] == 35


def test_openvino_save_on_a_full_disk_is_one_error_line(tiny_dir, tmp_path, monkeypatch):
    import openvino as ov

    def full_disk(*args, **kwargs):
        raise RuntimeError("Exception from src/core/src/pass/serialize.cpp: Can't write to model.bin")

    monkeypatch.setattr(ov, "save_model", full_disk)
    cache = tmp_path / "cache"
    assert_usage_error(*run_main(["extract", "--data", tiny_dir, "--runtime", "openvino", "--cache-dir", cache,
                                  *FAST]), "OpenVINO", str(cache / "openvino"), "disk space")
    assert [p.name for p in (cache / "openvino").iterdir()] == []


def test_unknown_class_weight_scheme(tiny_dir, tmp_path):
    assert_usage_error(*run_main(["experiment", "--data", tiny_dir, "--class-weight", "inverse", "--out",
                                  tmp_path / "r.json", "--cache-dir", tmp_path]), "inverse")


@pytest.mark.parametrize("argv,fragment", [
    (["experiment", "--data", "x", "--out", "r.json", "--bogus"], "--bogus"),
    (["experiment", "--data", "x"], "--out"),
    (["experiment", "--epochs", "many", "--data", "x", "--out", "r.json"], "many"),
    (["transmogrify"], "transmogrify"),
    ([], "command"),
])
def test_bad_command_lines(argv, fragment):
    code, stdout, stderr = run_main(argv)
    assert_usage_error(code, stdout, stderr, fragment, "--help")


def test_report_of_missing_or_bad_results(tmp_path):
    assert_usage_error(*run_main(["report", tmp_path / "none.json", "--out", tmp_path / "r.md"]), "not found")
    bad = tmp_path / "bad.json"
    bad.write_text('{"runs": []}')
    assert_usage_error(*run_main(["report", bad, "--out", tmp_path / "r.md"]), "dataset")
    assert not (tmp_path / "r.md").exists()


@pytest.fixture
def fake_torch_hub(tmp_path, monkeypatch):
    """An empty TORCH_HOME and a stand-in for torch's downloader (never touches the network)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_resnet_offline_names_the_weights_file(tiny_dir, tmp_path, monkeypatch, fake_torch_hub):
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    code, stdout, stderr = run_main(["extract", "--data", tiny_dir, "--backbone", "resnet18", "--cache-dir",
                                     tmp_path / "cache", *FAST])
    assert_usage_error(code, stdout, stderr, "resnet18-f37072fd.pth", str(fake_torch_hub), quiet_stdout=False)


def test_extract_stdout_stays_json_when_weights_download(tiny_dir, tmp_path, monkeypatch, fake_torch_hub):
    """A first run that downloads resnet weights must still print only the JSON line on stdout."""
    import torchvision

    def fake_download(url, dst, *args, **kwargs):
        torch.save(torchvision.models.resnet18().state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    code, stdout, stderr = run_main(["extract", "--data", tiny_dir, "--backbone", "resnet18", "--cache-dir",
                                     tmp_path / "cache", *FAST])
    assert code == 0, stderr
    assert (fake_torch_hub / "resnet18-f37072fd.pth").exists()
    info = json.loads(stdout)  # fails if anything else was printed to stdout
    assert info["feature_dim"] == 512 and info["n"] == 35


# ---------------------------------------------------------------- other exit codes


def test_unexpected_failure_exits_1_with_traceback(tiny_dir, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr("core.experiment.run_experiment", boom)
    code, _, stderr = run_main(["experiment", "--data", tiny_dir, "--out", tmp_path / "r.json",
                                 "--cache-dir", tmp_path / "cache"])
    assert code == 1
    assert "Traceback" in stderr and "kaboom" in stderr


def test_cancel_exits_130(tiny_dir, tmp_path, monkeypatch):
    def cancelled(*args, **kwargs):
        raise Cancelled()

    monkeypatch.setattr("core.experiment.run_experiment", cancelled)
    code, _, stderr = run_main(["experiment", "--data", tiny_dir, "--out", tmp_path / "r.json",
                                 "--cache-dir", tmp_path / "cache"])
    assert code == 130 and "resumes" in stderr



# ---------------------------------------------------------------- settings declared once, seeds, tuning


def test_every_declared_setting_reaches_the_config(tiny_dir, tmp_path, monkeypatch):
    from core.settings import SETTINGS

    launched = []
    monkeypatch.setattr("core.experiment.run_experiment",
                        lambda config, progress: launched.append(config) or {"runs": [], "cache_hit": True})
    code, _, stderr = run_main(
        ["experiment", "--data", tiny_dir, "--out", tmp_path / "r.json", "--cache-dir", tmp_path, "--seeds", "0,2",
         "--tune", "--no-hflip", "--svm-c", "3", "--class-weight", "none,sqrt", "--image-size", "64", "--workers", "1"])
    assert code == 0, stderr
    (config,) = launched
    assert (config.seeds, config.tune, config.hflip, config.svm_c) == ((0, 2), True, False, 3.0)
    assert (config.remedies, config.image_size, config.workers) == (("none", "sqrt"), 64, 1)
    experiment_settings = {s.name for s in SETTINGS if "experiment" in s.commands}
    assert experiment_settings == {f.name for f in __import__("dataclasses").fields(config)}


def test_bad_seed_list_is_a_usage_error(tmp_path):
    assert_usage_error(*run_main(["experiment", "--data", tmp_path, "--seeds", "0,x", "--out", tmp_path / "r.json"]),
                       "0,x")


def test_seeds_and_tune_end_to_end(first_run, tiny_dir, tmp_path):
    cache, out = first_run[0], tmp_path / "seeds.json"
    code, _, stderr = run_main(["experiment", "--data", tiny_dir, "--cache-dir", cache, "--epochs", "3", "--seeds",
                                "0,1", "--tune", "--out", out, *FAST])
    assert code == 0, stderr
    runs = run_records(json.loads(out.read_text()))
    assert sorted((r.seed, r.approach, r.class_weight) for r in runs) == sorted(
        (seed, a, w) for seed in (0, 1) for a in ("svm", "head") for w in ("none", "balanced"))
    assert all(("svm_c" if r.approach == "svm" else "tau") in r.tuned for r in runs)
    assert "macroF1 [95% interval]" in stderr


# ---------------------------------------------------------------- issue 13: numbers that hold


@pytest.fixture(scope="module")
def single_folder(demo_dir, tmp_path_factory) -> Path:
    """Demo digits merged into `DIR/<class>/*` (at most 30 per class), so every seed draws its own split."""
    root = tmp_path_factory.mktemp("flat") / "digits-flat"
    for class_dir in sorted((demo_dir / "train").iterdir()):
        files = sorted(class_dir.glob("*.png")) + sorted((demo_dir / "test" / class_dir.name).glob("*.png"))
        (root / class_dir.name).mkdir(parents=True)
        for f in files[:30]:
            shutil.copy(f, root / class_dir.name / f.name)
    return root


@pytest.mark.slow
def test_seed_repeats_score_each_seed_like_that_seed_alone(single_folder, tmp_path):
    """`--seeds 0,1` in one process gives seed 1 the predictions `--seed 1` alone gives (svm and head)."""
    cache, common = tmp_path / "cache", ["--approaches", "svm,head", "--class-weight", "none", "--epochs", "3", *FAST]
    code, _, stderr = run_main(["experiment", "--data", single_folder, "--cache-dir", cache, "--seeds", "0,1",
                                "--out", tmp_path / "seeds.json", *common])
    assert code == 0, stderr
    alone = subprocess.run([sys.executable, "-m", "core", "experiment", "--data", str(single_folder), "--cache-dir",
                            str(cache), "--seed", "1", "--out", str(tmp_path / "alone.json"), *common],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr
    store = RunStore(cache / "runs")

    def predictions(results_file, seed):
        runs = json.loads((tmp_path / results_file).read_text())["runs"]
        return {r["approach"]: store.load_predictions(r["run_id"]) for r in runs if r["seed"] == seed}
    repeated, reference = predictions("seeds.json", 1), predictions("alone.json", 1)
    assert sorted(repeated) == sorted(reference) == ["head", "svm"]
    for approach, table in reference.items():
        assert table["path"].tolist() == repeated[approach]["path"].tolist()  # seed 1's own test images
        assert table["pred"].tolist() == repeated[approach]["pred"].tolist(), approach


def test_precision_setting_reaches_the_features_and_is_recorded_on_every_run(tiny_dir, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # auto = bf16 on any CPU
    results = {}
    for precision in ("auto", "fp32"):
        out = tmp_path / f"{precision}.json"
        code, _, stderr = run_main(["experiment", "--data", tiny_dir, "--cache-dir", tmp_path / "cache", "--precision",
                                    precision, "--approaches", "svm,head", "--class-weight", "none", "--epochs", "2",
                                    "--runtime", "torch", "--out", out, *FAST])
        assert code == 0, stderr
        results[precision] = json.loads(out.read_text())
    assert [r["precision"] for r in results["auto"]["runs"]] == ["bf16", "bf16"]
    assert [r["precision"] for r in results["fp32"]["runs"]] == ["fp32", "fp32"]
    assert results["auto"]["backbone"]["dtype"] == "torch.bfloat16" and results["fp32"]["backbone"]["dtype"] == "None"
    assert results["auto"]["feature_key"] != results["fp32"]["feature_key"]  # features of their own


def test_the_summary_names_each_runs_remedy_and_a_double_correction_is_refused_or_warned(tiny_dir, tmp_path):
    """Issue 25: the table printed the class-weight label (a remedy grid read 'head none' on every row), and
    balanced+resample / balanced+tau corrected the imbalance twice without a word."""
    common = ["--data", tiny_dir, "--cache-dir", tmp_path / "cache", "--approaches", "head", "--epochs", "2", *FAST]
    code, stdout, stderr = run_main(["experiment", "--remedy", "none,balanced+resample", "--out", tmp_path / "a.json",
                                     *common])
    assert_usage_error(code, stdout, stderr, "'balanced+resample' corrects training for the imbalance twice",
                       "keep one of them")
    assert not (tmp_path / "a.json").exists()
    code, _, stderr = run_main(["experiment", "--remedy", "none,tau,offsets,balanced+tau", "--out",
                                tmp_path / "b.json", *common])
    assert code == 0, stderr
    assert "warning: balanced+tau: tau adjusts the decision for the imbalance on top of balanced" in stderr
    rows = [line.split() for line in stderr.splitlines() if line.startswith("head · ")]
    assert [row[2] for row in rows] == ["none", "tau", "offsets", "balanced+tau"]  # the run's name: head · remedy

"""Odd inputs met through the command line: layouts that leak test images into training, label paths named
in several ways, outputs that must stay bounded. Each is run the way a user runs it (`python -m core`)."""
import json
import os
import shutil

import pytest

from test_cli import FAST, assert_usage_error, run_main

QUICK = ["--approaches", "svm", "--remedy", "none", *FAST]


def copy_tree(source, target):
    shutil.copytree(source, target)
    return target


def experiment(tmp_path, *args):
    """`experiment` with the quickest settings; (exit code, stderr, results or None)."""
    out = tmp_path / "r.json"
    code, _, stderr = run_main(["experiment", *args, "--cache-dir", tmp_path / "cache", "--out", out, *QUICK])
    return code, stderr, json.loads(out.read_text()) if code == 0 else None


# ---------------------------------------------------------------- layouts that leak

def test_a_test_folder_inside_the_training_folder_is_no_class(tiny_dir, tmp_path):
    """It was scanned as a class: its images were trained on and every test image predicted as that class."""
    data = copy_tree(tiny_dir / "train", tmp_path / "data")
    copy_tree(tiny_dir / "test", data / "holdout")
    code, stderr, results = experiment(tmp_path, "--data", data, "--test-data", data / "holdout")
    assert code == 0, stderr
    assert results["dataset"]["classes"] == ["0-zero", "1-one", "2-two"]
    assert results["dataset"]["test_counts"] == [3, 3, 3] and results["dataset"]["overlap_count"] == 0
    assert not any("holdout" in entry["path"] for entry in results["dataset"]["skipped"])


@pytest.mark.parametrize("same", ["folder", "labels"])
def test_testing_on_the_training_images_is_refused(tiny_dir, tmp_path, same):
    """Both trained and tested on the same images and reported 100% without a word."""
    if same == "folder":
        args = ["--data", tiny_dir / "train", "--test-data", tiny_dir / "train"]
    else:
        rows = [f"{p.relative_to(tiny_dir / 'train')},{p.parent.name}" for p in (tiny_dir / "train").rglob("*.png")]
        (tmp_path / "labels.csv").write_text("\n".join(rows))
        args = ["--data", tiny_dir / "train", "--labels", tmp_path / "labels.csv", "--test-data", tiny_dir / "train",
                "--test-labels", tmp_path / "labels.csv"]
    code, stdout, stderr = run_main(["experiment", *args, "--cache-dir", tmp_path / "cache",
                                     "--out", tmp_path / "r.json", *QUICK])
    assert_usage_error(code, stdout, stderr, "the training", "would score the training images")
    assert not (tmp_path / "cache").exists()


def test_copies_and_hard_links_in_both_splits_are_reported(tiny_dir, tmp_path):
    data = copy_tree(tiny_dir, tmp_path / "data")
    train_files = sorted((data / "train" / "0-zero").glob("*.png"))
    shutil.copy(train_files[0], data / "test" / "0-zero" / "copy.png")
    os.link(train_files[1], data / "test" / "0-zero" / "link.png")
    with pytest.warns(UserWarning, match=r"2 test image\(s\) are also training images"):  # on stderr, before training
        code, stderr, results = experiment(tmp_path, "--data", data)
    assert code == 0, stderr
    overlap = results["dataset"]["overlap"]
    assert results["dataset"]["overlap_count"] == 2
    assert {(os.path.basename(pair["test"]), pair["how"]) for pair in overlap} == {
        ("copy.png", "byte-identical"), ("link.png", "the same file (a hard link)")}
    record = json.loads((tmp_path / "cache" / "runs" / results["runs"][0]["run_id"] / "record.json").read_text())
    assert record["dataset"]["overlap_count"] == 2

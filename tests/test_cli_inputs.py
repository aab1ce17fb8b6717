"""Odd inputs met through the command line: layouts that leak test images into training, label paths named
in several ways, outputs that must stay bounded. Each is run the way a user runs it (`python -m core`)."""
import json
import unicodedata
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


# ---------------------------------------------------------------- label paths, resolved once

NFD_NAME, NFC_NAME = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")


@pytest.fixture
def named_many_ways(tmp_path, make_image):
    """A flat folder of 12 images and a label file naming some of them in the ways users' tools write paths."""
    root = tmp_path / "flat"
    names = {"a0.png": "a", "a1.png": "a", "sub/a2.png": "a", f"{NFD_NAME}.png": "a", "two\nlines.png": "a",
             "b0.PNG": "b", "b1.png": "b", "b2.png": "b", "b3.png": "b", "b4.png": "b", "x.png": "a", "y.png": "b"}
    for i, name in enumerate(names):
        make_image(root / name, seed=700 + i)
    rows = ["file,label", "a0.png,a", "a0,a",  # one image, with and without its extension: counted once
            "a1.png,a", "./a1.PNG,a",  # upper-case extension, ./ prefix
            "sub\\a2.png,a", "sub/a2,a",  # Windows separator
            f"{NFC_NAME}.png,a",  # NFC in the file, NFD on disk (macOS)
            '"two\nlines.png",a',  # a quoted newline is part of the name
            "b0,b",  # no extension given, upper-case on disk
            "b1.png,b", "b2.png,b", "b3.png,b", "b4.png,b",
            "x.png,a", "x,b",  # one image named two ways with two labels: a conflict
            "y.png,"]  # no label
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_label_paths_are_resolved_to_their_files_before_duplicates_are_checked(named_many_ways, tmp_path):
    code, stderr, results = experiment(tmp_path, "--data", named_many_ways, "--labels",
                                       named_many_ways / "labels.csv", "--test-size", "0.4")
    assert code == 0, stderr
    dataset = results["dataset"]
    assert dataset["classes"] == ["a", "b"]
    assert [t + s for t, s in zip(dataset["train_counts"], dataset["test_counts"])] == [5, 5]
    reasons = {os.path.basename(entry["path"]): entry["reason"] for entry in dataset["skipped"]}
    assert reasons == {"x.png": "listed twice in labels.csv with different labels ('a', 'b')",
                       "y.png": "listed in labels.csv without a label (an empty label cell)"}


@pytest.mark.parametrize("rows,fragment", [
    (["/etc/hostname,a", "/etc/passwd,b"], "2 × lies outside"),  # was: "names 0 classes"
    (["a0.png,", "b1.png,"], "each row needs a label"),
])
def test_a_label_file_with_no_usable_row_says_why(named_many_ways, tmp_path, rows, fragment):
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    code, stdout, stderr = run_main(["experiment", "--data", named_many_ways, "--labels", tmp_path / "labels.csv",
                                     "--cache-dir", tmp_path / "cache", "--out", tmp_path / "r.json", *QUICK])
    assert_usage_error(code, stdout, stderr, fragment)


def test_a_label_file_that_is_a_pipe_is_named_as_one(tiny_dir, tmp_path):
    os.mkfifo(tmp_path / "labels.csv")  # was: "does not exist"
    code, stdout, stderr = run_main(["experiment", "--data", tiny_dir / "train", "--labels", tmp_path / "labels.csv",
                                     "--cache-dir", tmp_path / "cache", "--out", tmp_path / "r.json", *QUICK])
    assert_usage_error(code, stdout, stderr, "is not a regular file (a pipe or device)")


def test_test_classes_that_match_no_training_class_are_named(tiny_dir, tmp_path):
    test = tmp_path / "test"
    for name in ("0-zero", "1-one", "2-two"):
        shutil.copytree(tiny_dir / "test" / name, test / name.upper())
    code, stdout, stderr = run_main(["experiment", "--data", tiny_dir / "train", "--test-data", test,
                                     "--cache-dir", tmp_path / "cache", "--out", tmp_path / "r.json", *QUICK])
    assert_usage_error(code, stdout, stderr, "'0-ZERO'", "training classes '0-zero'")


def test_an_nfd_class_folder_keeps_its_nfc_labelled_test_images(tiny_dir, tmp_path):
    """A macOS folder name (decomposed) against a label file's composed name silently dropped the class's tests."""
    train, test = tmp_path / "train", tmp_path / "test"
    for name in ("0-zero", "1-one"):
        shutil.copytree(tiny_dir / "train" / name, train / (NFD_NAME if name == "0-zero" else name))
    rows = [f"{p.name},{NFC_NAME if p.parent.name == '0-zero' else p.parent.name}"
            for name in ("0-zero", "1-one") for p in sorted((tiny_dir / "test" / name).glob("*.png"))]
    test.mkdir()
    for name in ("0-zero", "1-one"):
        for p in (tiny_dir / "test" / name).glob("*.png"):
            shutil.copy(p, test / p.name)
    (test / "labels.csv").write_text("\n".join(rows) + "\n")
    code, stderr, results = experiment(tmp_path, "--data", train, "--test-data", test,
                                       "--test-labels", test / "labels.csv")
    assert code == 0, stderr
    assert results["dataset"]["test_counts"] == [3, 3] and not results["dataset"]["skipped"]


# ---------------------------------------------------------------- documented inputs that crashed

def test_a_class_weight_of_0_leaves_that_class_out_of_the_svm(tiny_dir, tmp_path):
    """The README allows weights from 0; the SVM fit ended in "dual coefficients ... are not finite", exit 1."""
    weights = tmp_path / "drop.json"
    weights.write_text('{"2-two": 0}')
    out = tmp_path / "r.json"
    with pytest.warns(UserWarning, match=r"1 class\(es\) weigh 0: the SVM is fit without their 6 training images"):
        code, _, stderr = run_main(["experiment", "--data", tiny_dir, "--cache-dir", tmp_path / "cache",
                                    "--approaches", "svm", "--remedy", str(weights), "--out", out, *FAST])
    assert code == 0, stderr
    run = json.loads(out.read_text())["runs"][0]
    predicted = [row["predicted"] for row in run["per_class"]]  # in class order: 0-zero, 1-one, 2-two
    assert run["class_weights"][2] == 0 and predicted[2] == 0 and sum(predicted) == 9


# ---------------------------------------------------------------- bounded outputs

def test_a_label_file_of_many_missing_files_keeps_results_and_records_small(named_many_ways, tmp_path):
    """A million such rows made a 278 MB results file, the list copied into every run's record."""
    rows = (named_many_ways / "labels.csv").read_text().splitlines()
    rows += [f"gone/{i:05d}.png,a" for i in range(5000)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    code, stderr, results = experiment(tmp_path, "--data", named_many_ways, "--labels", tmp_path / "labels.csv",
                                       "--test-size", "0.4")
    assert code == 0, stderr
    dataset = results["dataset"]
    assert dataset["skipped_total"] == 5002 and len(dataset["skipped"]) == 50
    assert dataset["skipped_counts"][0] == {"reason": "listed in labels.csv but missing", "count": 5000}
    listed = (tmp_path / "cache" / "index" / "skipped").glob("*.csv")
    assert [path.read_text().count("\n") for path in listed] == [5003]  # header + every skipped file
    assert dataset["skipped_file"].endswith(".csv")
    record = tmp_path / "cache" / "runs" / results["runs"][0]["run_id"] / "record.json"
    assert record.stat().st_size < 40_000


def test_an_error_that_lists_names_is_capped(tiny_dir, tmp_path):
    """One such message was 46 million characters."""
    weights = tmp_path / "many.json"
    weights.write_text(json.dumps({f"class-{i:05d}-{'x' * 200}": 1 for i in range(3000)}))
    code, stdout, stderr = run_main(["experiment", "--data", tiny_dir, "--cache-dir", tmp_path / "cache",
                                     "--approaches", "svm", "--remedy", weights, "--out", tmp_path / "r.json", *FAST])
    assert_usage_error(code, stdout, stderr, "unknown classes", "and 2995 more")
    assert len(stderr) < 1000


# ---------------------------------------------------------------- class names shown safely

def test_class_names_with_control_characters_or_too_long_are_refused(tiny_dir, tmp_path):
    data = copy_tree(tiny_dir, tmp_path / "data")
    for odd in ("evil\n# Big heading", "x" * 101):
        copy_tree(data / "train" / "2-two", data / "train" / odd)
    code, stderr, results = experiment(tmp_path, "--data", data)
    assert code == 0, stderr
    assert results["dataset"]["classes"] == ["0-zero", "1-one", "2-two"]
    reasons = " ".join(entry["reason"] for entry in results["dataset"]["skipped"])
    assert "holds control characters" in reasons and "longer than 100 characters" in reasons

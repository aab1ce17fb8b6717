"""Run names (core.naming): what tells runs apart, never two alike, in every report of the demo grid."""
import pytest

from builders import make_record
from core.naming import run_labels, run_names
from core.records import RunRecord


def record(run_id, approach="svm", remedy="none", seed=0, backbone="efficientnet_lite0", root="/data/boats",
           fingerprint="f1", macro_f1=0.5):
    return make_record(run_id=run_id, approach=approach, remedy=remedy, class_weight=remedy.split("+")[0], seed=seed,
                       macro_f1=macro_f1, backbone={"name": backbone},
                       dataset={"root": root, "content_fingerprint": fingerprint})


def test_names_say_remedy_not_class_weight():
    """The CLI and report used to print the class-weight label: la-loss and offsets runs read 'none'."""
    names = run_names([record("a-1", remedy="none"), record("a-2", remedy="la-loss"), record("a-3", remedy="offsets")])
    assert list(names.values()) == ["svm · none", "svm · la-loss", "svm · offsets"]


def test_backbone_seed_and_dataset_appear_only_where_they_vary():
    runs = [record("a-1"), record("a-2", backbone="efficientnet_lite2"), record("a-3", seed=1)]
    assert list(run_names(runs).values()) == ["svm · none · efficientnet_lite0 · seed 0",
                                              "svm · none · efficientnet_lite2 · seed 0",
                                              "svm · none · efficientnet_lite0 · seed 1"]
    two_sets = [record("a-1"), record("a-2", root="/data/xray", fingerprint="f2")]
    assert list(run_names(two_sets).values()) == ["boats · svm · none", "xray · svm · none"]
    assert run_names([record("a-1")], show_dataset=True) == {"a-1": "boats · svm · none"}


def test_alike_runs_never_share_a_name():
    runs = [record("20261205-091322-svm-none-42fcebae"), record("20261205-091323-svm-none-0badc0de")]
    assert list(run_names(runs).values()) == ["svm · none · #42fcebae", "svm · none · #0badc0de"]
    tails_collide = list(run_names([record("x-1"), record("y-1")]).values())
    assert tails_collide == ["svm · none · #x-1", "svm · none · #y-1"]  # the whole id


def test_picker_labels_lead_with_the_name_and_macro_f1():
    assert run_labels([record("a-1", macro_f1=0.6641)]) == {"a-1": "svm · none · macro-F1 0.664"}


@pytest.mark.slow
def test_no_two_labels_alike_in_any_report_of_the_demo_grid(demo_grid):
    from core.report import render_markdown

    results = demo_grid[0]
    names = run_names([RunRecord.from_json(run) for run in results["runs"]])
    assert len(set(names.values())) == len(results["runs"]) == 11
    text = render_markdown(results)
    for run in results["runs"]:
        assert names[run["run_id"]] in text
    assert "svm · none" in text and "svm · offsets" in text and "logreg · la-loss" in text

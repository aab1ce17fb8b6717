"""Pure helpers behind the pages, on tiny synthetic datasets, records and predictions."""
import dataclasses
import io
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import builders
from core.analysis import (check_comparable, class_report, class_table, comparable_groups, few_test_note,
                           image_size_summary, interval_caption, metric_deltas, metrics_diff, paired_table,
                           paired_verdict, run_table, sample_paths, run_settings, seed_summary, speedups, thumbnail,
                           weight_table, weights_from_table)
from core.data import Dataset, Sample
from core.errors import ClassWeightError, ConfigError
from core.metrics import evaluate
from core.records import RunRecord
from core.run_view import RunView
from core.diagnostics import score_matrix

CLASSES = ["common", "usual", "rare"]


def make_dataset() -> Dataset:
    train = [Sample(f"train/{c}/{i}.png", label, (90, 30)) for label, (c, n) in
             enumerate(zip(CLASSES, (8, 6, 1))) for i in range(n)]
    test = [Sample("test/common/0.png", 0, (40, 20)), Sample("test/rare/0.png", 2, (30, 60))]
    return Dataset("root", CLASSES, train, test)


def make_record(approach="head", class_weight="none", dataset=None, **fields) -> RunRecord:
    """A run on CLASSES (one rare test image misclassified); `dataset` entries and `fields` override."""
    return builders.make_record(approach=approach, class_weight=class_weight, y_true=(0, 0, 1, 2), y_pred=(0, 0, 1, 0),
                                classes=CLASSES, train_counts=(80, 15, 5), dataset={"root": "root", **(dataset or {})},
                                **{"tau": 0.0, "fit_seconds": 1.0, "predict_seconds": 0.1, **fields})


def make_predictions(paths=("a.png", "b.png", "c.png", "d.png")) -> pd.DataFrame:
    """The rare test image (row 3) scores a bit below 'common': logit adjustment flips it."""
    scores = np.array([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.5]])
    table = pd.DataFrame({"path": list(paths), "true": [0, 0, 1, 2], "pred": [0, 0, 1, 0]})
    return pd.concat([table, pd.DataFrame(scores, columns=[f"score_{i}" for i in range(3)])], axis=1)


def test_class_table_counts_shares_and_minority():
    table = class_table(make_dataset())
    assert table["train"].tolist() == [8, 6, 1]
    assert table["test"].tolist() == [1, 0, 1]
    assert table["train share"].sum() == pytest.approx(1.0)
    assert table["minority"].tolist() == [False, False, True]


def test_image_size_summary_ranges():
    summary = image_size_summary(make_dataset().samples)
    assert summary.loc["min", "width (px)"] == 30 and summary.loc["max", "height (px)"] == 60
    assert summary.loc["max", "aspect (w/h)"] == 3.0 and summary.loc["min", "aspect (w/h)"] == 0.5


def test_sample_paths_caps_each_class():
    paths = sample_paths(make_dataset(), per_class=2)
    assert list(paths) == CLASSES
    assert paths["common"] == ["train/common/0.png", "train/common/1.png"] and len(paths["rare"]) == 1


def test_thumbnail_shrinks_keeping_the_aspect_ratio(tmp_path):
    Image.new("L", (900, 300), 128).save(tmp_path / "wide.png")
    with Image.open(io.BytesIO(thumbnail(str(tmp_path / "wide.png"), max_side_px=120))) as small:
        assert small.size == (120, 40) and small.mode == "RGB"


def test_weight_table_prefills_scheme_and_round_trips():
    table = weight_table(make_dataset(), "balanced")
    assert table.columns.tolist() == ["class", "train", "minority", "weight"]
    assert table["weight"].iloc[2] > table["weight"].iloc[0]
    assert weights_from_table(table, CLASSES) == dict(zip(CLASSES, table["weight"]))


@pytest.mark.parametrize("value, message", [(-1.0, "finite number >= 0"), (math.nan, "has no weight"),
                                            (None, "has no weight"), (math.inf, "finite number >= 0")])
def test_weights_from_table_rejects_bad_cells_naming_the_class(value, message):
    table = pd.DataFrame({"class": CLASSES, "weight": [1.0, 1.0, value]}, dtype=object)
    with pytest.raises(ClassWeightError, match=message) as err:
        weights_from_table(table, CLASSES)
    assert "rare" in str(err.value)


def test_weights_from_table_rejects_all_zero():
    with pytest.raises(ClassWeightError, match="all 0"):
        weights_from_table(pd.DataFrame({"class": CLASSES, "weight": [0.0, 0.0, 0.0]}), CLASSES)


def test_run_table():
    record = make_record(class_weight="balanced")
    table = run_table([record, make_record(approach="svm", run_id="r2")])
    assert table["run id"].tolist() == ["r1", "r2"]
    assert table["run"].tolist() == ["head · balanced", "svm · none"]
    assert table.columns.tolist() == ["run", "approach", "remedy", "accuracy", "balanced accuracy", "macro-F1",
                                      "validation macro-F1", "cross-fitted validation macro-F1", "head F1",
                                      "middle F1", "tail F1", "fit s",
                                      "predict s", "run id"]


def test_speedups_compare_median_fit_times_to_the_fastest_approach():
    records = [make_record("svm", fit_seconds=s) for s in (0.2, 0.4, 10.0)] + \
              [make_record("finetune", fit_seconds=40.0), make_record("head", fit_seconds=0.0)]
    rows = speedups(records)
    assert [(row["fast"], row["slow"]) for row in rows] == [("head", "svm"), ("head", "finetune")]
    assert rows[0]["factor"] == pytest.approx(400.0) and rows[1]["factor"] == pytest.approx(40000.0)
    assert speedups(records[:3]) == []


def test_rescore_at_zero_tau_reproduces_stored_metrics_and_tau_helps_the_rare_class():
    record, predictions = make_record(), make_predictions()
    view = RunView(record, lambda: predictions)
    same = view.rescore(0.0)
    assert same["accuracy"] == record.accuracy and same["confusion_matrix"] == record.confusion_matrix
    adjusted = view.rescore(1.0)
    assert adjusted["accuracy"] == 1.0 and adjusted["never_predicted"] == []
    deltas = {row["metric"]: row["delta"] for row in metric_deltas(record, adjusted)}
    assert deltas["Accuracy"] == pytest.approx(0.25) and deltas["Balanced accuracy"] > 0


def test_rescore_refuses_svm_runs_and_missing_scores():
    with pytest.raises(ConfigError, match="logits"):
        RunView(make_record(approach="svm"), make_predictions).rescore(1.0)
    with pytest.raises(ConfigError, match="score columns"):
        score_matrix(make_predictions().drop(columns="score_2"), 3)


def test_error_cells_lists_off_diagonal_cells_most_frequent_first():
    def error_cells(confusion):
        return RunView(make_record(confusion_matrix=confusion), make_predictions).error_cells()

    assert error_cells([[5, 1, 0], [3, 2, 0], [1, 0, 0]]) == [
        {"true": 1, "pred": 0, "count": 3}, {"true": 0, "pred": 1, "count": 1}, {"true": 2, "pred": 0, "count": 1}]
    assert error_cells([[2, 0, 0], [0, 2, 0], [0, 0, 1]]) == []


def test_misclassified_paths_keeps_existing_files_and_counts_missing(tmp_path):
    present = tmp_path / "d.png"
    present.write_bytes(b"png")
    predictions = make_predictions(paths=("a.png", "b.png", "c.png", str(present)))
    assert RunView(make_record(), lambda: predictions).misclassified(2, 0) == ([str(present)], 0)
    predictions.loc[3, "path"] = str(tmp_path / "gone.png")
    view = RunView(make_record(), lambda: predictions)
    assert view.misclassified(2, 0) == ([], 1)
    assert view.misclassified(1, 2) == ([], 0)


def test_metrics_diff_and_comparability():
    a, b = make_record(), make_record(run_id="r2", accuracy=1.0, fit_seconds=3.0)
    diff = metrics_diff(a, b).set_index("metric")
    assert diff.loc["Accuracy", "B − A"] == pytest.approx(0.25)
    assert diff.loc["Fit s", "B − A"] == pytest.approx(2.0)
    check_comparable(a, b)
    other = make_record(run_id="r3", dataset={"classes": ["x", "y", "z"]})
    with pytest.raises(ConfigError, match="different classes"):
        check_comparable(a, other)


def test_metrics_diff_never_shows_negative_zero():
    diff = metrics_diff(make_record(predict_seconds=0.00004), make_record(predict_seconds=0.00001))
    diff = diff.set_index("metric")
    assert f"{diff.loc['Predict s', 'B − A']:+.3f}" == "+0.000"


def test_run_settings_show_what_matters_for_each_approach():
    config = {"backbone": "efficientnet_lite0", "pool": "max", "image_size": 64, "seed": 3, "epochs": 20,
              "lr": 0.003, "batch_size": 16, "unfreeze_last": True, "svm_kernel": "linear", "svm_c": 2.0}
    base = {"config": config, "backbone": {"name": "efficientnet_lite0"}, "history": [{}] * 7, "precision": "fp32"}
    svm = run_settings(make_record("svm", **base, dataset={"root": "/data"})).set_index("setting")["value"]
    assert svm["SVM model"] == "LinearSVC" and svm["pooling"] == "max" and svm["dataset"] == "/data"
    assert svm["precision"] == "fp32"
    assert "epochs" not in svm.index
    ft = run_settings(make_record("finetune", **base, dataset={"root": "/d"})).set_index("setting")["value"]
    assert ft["epochs run"] == "7" and ft["unfreeze"] == "last" and ft["image size (short side, px)"] == "64"
    assert "SVM C" not in ft.index
    new = make_record("finetune", **{**base, "config": {**config, "unfreeze": "2"}}, chosen_epoch=5,
                      dataset={"root": "/d"})
    ft = run_settings(new).set_index("setting")["value"]
    assert ft["unfreeze"] == "2" and ft["chosen epoch (validation)"] == "5"
    assert ft["stopped early by the user"] == "no"
    stopped = run_settings(dataclasses.replace(new, stopped_early=True)).set_index("setting")["value"]
    assert stopped["stopped early by the user"] == "yes"


def test_class_report_adds_the_trained_weights():
    table = class_report(make_record(class_weights=[0.5, 1.0, 8.0]))
    assert table["class"].tolist() == CLASSES
    assert table["weight"].tolist() == [0.5, 1.0, 8.0]
    assert table["minority"].tolist()[-1] == "yes"


def test_speedups_can_count_the_one_off_extraction():
    records = [make_record("svm", fit_seconds=0.1, extract_seconds=9.9),
               make_record("finetune", fit_seconds=300.0, extract_seconds=0.0)]
    assert speedups(records)[0]["factor"] == pytest.approx(3000.0)
    assert speedups(records, with_extraction=True)[0]["factor"] == pytest.approx(30.0)


def test_predict_speedup_counts_extracting_the_test_images_for_feature_approaches():
    records = [make_record("svm", fit_seconds=0.1, predict_seconds=0.01, test_extract_seconds=2.0),
               make_record("finetune", fit_seconds=300.0, predict_seconds=4.0)]
    assert speedups(records, stage="predict")[0] == {"fast": "svm", "slow": "finetune", "factor": pytest.approx(400)}
    assert speedups(records, True, "predict")[0]["factor"] == pytest.approx(4.0 / 2.01)


def grouped_record(run_id, files="f1", backbone="efficientnet_lite0", device="cpu", **extra):
    return make_record(run_id=run_id, device=device, backbone={"name": backbone},
                       dataset={"root": "/data/boats", "fingerprint": files + "-split", "content_fingerprint": files},
                       **extra)


def test_comparable_groups_keep_dataset_backbone_and_device_apart():
    records = [grouped_record("a"), grouped_record("b"), grouped_record("c", device="cuda"),
               grouped_record("d", backbone="resnet18"), grouped_record("e", files="f2")]
    groups = comparable_groups(records)
    assert [[r.run_id for r in g["runs"]] for g in groups] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert groups[0]["label"] == "boats · efficientnet_lite0 · cpu (2 runs)"
    old = make_record(run_id="old")  # recorded before devices and fingerprints
    assert comparable_groups([old])[0]["runs"] == [old]


def test_seed_summary_gives_mean_and_std_per_configuration():
    config = {"epochs": 20, "seed": 0}
    records = [make_record(run_id=f"r{seed}", config={**config, "seed": seed}, macro_f1=value)
               for seed, value in ((0, 0.5), (1, 0.7), (2, 0.6))]
    records.append(make_record(run_id="other", config={**config, "epochs": 5}, macro_f1=0.1))
    table = seed_summary(records)
    assert table["seeds"].tolist() == [3, 1]
    assert table["macro-F1"].tolist() == ["0.600 ± 0.100", "0.100 ± 0.000"]


def test_paired_diff_needs_the_same_test_images():
    a, b = (make_record(run_id=run_id, dataset={"fingerprint": "same"}) for run_id in ("a", "b"))
    preds_a = make_predictions()
    preds_b = preds_a.assign(pred=[0, 0, 1, 2])  # B gets the rare image right
    paired = RunView(a, lambda: preds_a).paired_with(RunView(b, lambda: preds_b))
    assert (paired["n_a_only"], paired["n_b_only"]) == (0, 1)
    assert paired_table(paired)["B − A"].tolist()[0] == pytest.approx(0.25)
    verdict = paired_verdict(paired)
    assert "on 1 test images, the reverse on 0" in verdict and "could well be noise" in verdict
    other = make_predictions(paths=("e.png", "b.png", "c.png", "d.png"))
    assert RunView(a, lambda: preds_a).paired_with(RunView(b, lambda: other)) is None


def test_interval_caption_and_old_records():
    record = make_record(accuracy_low=0.5, accuracy_high=0.9, macro_f1_low=0.2, macro_f1_high=0.6)
    assert interval_caption(record) == ("95% bootstrap intervals over test images (resampled within each class) "
                                        "(too narrow for the macro figures: they rest on classes with very few "
                                        "test images, see below): Accuracy 0.500–0.900 · Macro-F1 0.200–0.600")
    assert interval_caption(make_record()) is None


def test_comparable_groups_keep_apart_whatever_changes_the_features_or_the_fit_cost():
    config = {"backbone": "efficientnet_lite0", "pool": "avg", "image_size": None, "tune": False, "epochs": 20,
              "seed": 0, "class_weights": ["none"], "approaches": ["svm", "head"]}
    base = {"backbone": {"name": "efficientnet_lite0", "image_size": 224}, "precision": "bf16"}

    def run(run_id, backbone=None, config_changes=None, **changes):
        fields = {**base, "backbone": {**base["backbone"], **(backbone or {})}, **changes,
                  "config": {**config, **(config_changes or {})}}
        return make_record(run_id=run_id, dataset=grouped_record(run_id).dataset.to_json(), **{"device": "cpu", **fields})
    records = [run("a"), run("b", config_changes={"seed": 1, "class_weights": ["balanced"]}),  # a repeat, a remedy
               run("tuned", config_changes={"tune": True}), run("small", backbone={"image_size": 64}, config_changes={"image_size": 64}),
               run("max", config_changes={"pool": "max"}), run("fp32", precision="fp32"),
               run("short", config_changes={"epochs": 5})]
    groups = comparable_groups(records)
    assert [[r.run_id for r in g["runs"]] for g in groups] == [["a", "b"], ["tuned"], ["small"], ["max"],
                                                                   ["fp32"], ["short"]]
    labels = [g["label"] for g in groups]
    assert labels[0] == "boats · efficientnet_lite0 · avg · 224 px · bf16 · cpu (2 runs)"
    assert "tune True" in labels[1] and "64 px" in labels[2] and "fp32" in labels[4] and "epochs 5" in labels[5]
    assert len(set(labels)) == len(labels)


def test_classes_with_few_test_images_are_named_and_their_rows_marked_unreliable():
    """Issue 25: the stratified bootstrap keeps a one-image class fixed, so a toy case had a zero-width interval
    that no view qualified."""
    from core.stats import run_intervals

    y_true = np.array([0] * 30 + [1] * 30 + [2])  # 'rare': one test image, right every time
    intervals = run_intervals(y_true, y_true, 3)
    assert intervals["macro_f1_low"] == intervals["macro_f1_high"] == 1.0  # what the bootstrap claims
    record = make_record(**evaluate(y_true, y_true, CLASSES), **intervals,
                         dataset={"train_counts": [80, 15, 5], "test_counts": [30, 30, 1]})
    assert "too narrow for the macro figures" in interval_caption(record)
    note = few_test_note([record])
    assert "rare (1)" in note and "common" not in note and "unreliable" in note
    assert class_report(record)["unreliable"].tolist() == [False, False, True]
    plenty = make_record(**evaluate(np.repeat([0, 1, 2], 4), np.repeat([0, 1, 2], 4), CLASSES), **intervals)
    assert few_test_note([plenty]) is None and "too narrow" not in interval_caption(plenty)

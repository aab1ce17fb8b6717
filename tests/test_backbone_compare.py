"""Backbone comparison (core.backbone_compare): runs differing only in backbone, per backbone score and cost."""
import math

import pytest

from core.backbone_compare import backbone_comparison
from core.errors import ConfigError
from core.experiment import ExperimentConfig, run_experiment
from core.store import RunStore

from builders import make_record


def record(run_id, backbone, *, macro_f1=0.8, extract_s=6.0, dim=1280, approach="head", weights="none", seed=0,
           device="cpu", files="abc", **config):
    return make_record(run_id=run_id, approach=approach, class_weight=weights, tau=0.0, seed=seed, device=device,
                       y_true=[0] * 10 + [1] * 5, y_pred=[0] * 10 + [1] * 5, train_counts=[40, 20],
                       macro_f1=macro_f1, macro_f1_low=macro_f1 - 0.1, macro_f1_high=macro_f1 + 0.05,
                       accuracy=0.9, extract_seconds=extract_s, dataset={"content_fingerprint": files},
                       backbone={"name": backbone, "feature_dim": dim},
                       config={"backbone": backbone, "epochs": 20, "approaches": [approach], "cache_dir": "x",
                               **config})


def test_runs_differing_only_in_backbone_form_one_table_best_first():
    runs = [record("a", "efficientnet_lite0", macro_f1=0.80, extract_s=7.5),
            record("b", "efficientnet_lite2", macro_f1=0.84, extract_s=22.5),
            record("c", "efficientnet_lite0+efficientnet_lite2", macro_f1=0.86, extract_s=30.0, dim=2560,
                   approaches=["svm", "head"], cache_dir="elsewhere")]  # experiment-level lists don't count
    (group,) = backbone_comparison(runs)
    table = group["table"]
    assert group["label"] == "head · none · seed 0 (3 backbones)"
    assert table["backbone"].tolist() == ["efficientnet_lite0+efficientnet_lite2", "efficientnet_lite2",
                                          "efficientnet_lite0"]
    assert table["score"].tolist() == [0.86, 0.84, 0.80]
    assert table["low"].tolist() == pytest.approx([0.76, 0.74, 0.70])
    assert table["high"].tolist() == pytest.approx([0.91, 0.89, 0.85])
    assert table["extract s/image"].tolist() == pytest.approx([0.4, 0.3, 0.1])  # seconds / 75 images
    assert table["features"].tolist() == [2560, 1280, 1280]
    assert table["run_id"].tolist() == ["c", "b", "a"]


@pytest.mark.parametrize("change", [{"approach": "svm"}, {"weights": "balanced"}, {"seed": 1}, {"device": "cuda"},
                                    {"files": "other"}, {"epochs": 5}, {"pool": "max"}])
def test_runs_that_differ_in_anything_else_are_not_compared(change):
    runs = [record("a", "efficientnet_lite0"), record("b", "efficientnet_lite2", **change)]
    assert backbone_comparison(runs) == []


def test_one_row_per_backbone_the_first_record_wins_and_single_backbones_are_left_out():
    runs = [record("new", "efficientnet_lite0", macro_f1=0.81), record("old", "efficientnet_lite0", macro_f1=0.79),
            record("b", "efficientnet_lite1"), record("lonely", "resnet18", approach="svm")]
    (group,) = backbone_comparison(runs)
    assert sorted(group["table"]["run_id"]) == ["b", "new"]


def test_groups_with_more_backbones_first_other_metric_and_missing_times():
    runs = [record("a", "efficientnet_lite0", weights="balanced"), record("b", "efficientnet_lite1", weights="balanced"),
            record("c", "efficientnet_lite0", approach="finetune", extract_s=0.0, dim=None),
            record("d", "efficientnet_lite1", approach="finetune", extract_s=0.0, dim=None),
            record("e", "efficientnet_lite2", approach="finetune", extract_s=0.0, dim=None)]
    first, second = backbone_comparison(runs, metric="accuracy")
    assert first["label"].startswith("finetune") and second["label"].startswith("head · balanced")
    assert first["table"]["score"].tolist() == [0.9, 0.9, 0.9]
    assert all(math.isnan(v) for v in first["table"]["extract s/image"])  # fine-tune extracts no features
    with pytest.raises(ConfigError, match="unknown metric 'f2'"):
        backbone_comparison(runs, metric="f2")


def test_real_runs_with_two_backbones_on_the_demo(demo_dir, demo_features, feature_cache, image_size, tmp_path):
    store = RunStore(tmp_path / "runs")
    for backbone in ("efficientnet_lite0", "efficientnet_lite1"):
        run_experiment(ExperimentConfig(data=str(demo_dir), backbone=backbone, approaches=("head",),
                                        remedies=("balanced",), epochs=3, image_size=image_size, device="cpu",
                                        cache_dir=str(feature_cache), workers=0), store=store)
    (group,) = backbone_comparison(store.list_runs())
    table = group["table"].set_index("backbone")
    assert sorted(table.index) == ["efficientnet_lite0", "efficientnet_lite1"]
    assert (table["features"] == 1280).all() and (table["extract s/image"] > 0).all()
    assert ((table["low"] <= table["score"]) & (table["score"] <= table["high"])).all()
    n_images = len(demo_features.X_train) + len(demo_features.X_test)
    assert table.loc["efficientnet_lite0", "extract s/image"] == pytest.approx(demo_features.extract_seconds / n_images)

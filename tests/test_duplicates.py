"""Train/test near-duplicates by centred feature cosine, computed once per feature set and split (core.duplicates)."""
import numpy as np
import pytest
from PIL import Image

from core.duplicates import (Matches, best_matches, build_matches, conflicting_duplicates, load_matches, matches_path,
                             near_duplicates, nearest_of_classes)
from core.errors import ConfigError


def test_a_shared_positive_base_is_no_leak_but_the_planted_copy_is():
    """Non-negative features share a large common part: raw cosine is high for every pair, centred it is not."""
    rng = np.random.default_rng(0)
    base = rng.uniform(1, 2, size=64)
    train, test = base + rng.uniform(0, 0.3, size=(100, 64)), base + rng.uniform(0, 0.3, size=(20, 64))
    test[5] = train[42] + rng.normal(scale=0.005, size=64)
    pairs = near_duplicates(best_matches(train, test, chunk=7))
    assert [(p["test"], p["train"]) for p in pairs] == [(5, 42)]
    assert pairs[0]["similarity"] > 0.99


def test_threshold_only_filters_and_is_checked():
    matches = Matches(np.array([3, 1, 0]), np.array([0.5, 0.99, 0.95]))
    assert [p["test"] for p in near_duplicates(matches, 0.9)] == [1, 2]
    assert near_duplicates(matches, 1.0) == []
    with pytest.raises(ConfigError, match="threshold must be in \\(0, 1\\], got 1.5"):
        near_duplicates(matches, threshold=1.5)


def test_matches_are_stored_per_key(tmp_path):
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(30, 8)), rng.normal(size=(10, 8))
    assert load_matches(tmp_path, "k") is None
    built = build_matches(train, test, tmp_path, "k")
    loaded = load_matches(tmp_path, "k")
    np.testing.assert_array_equal(loaded.train, built.train)
    np.testing.assert_array_equal(loaded.similarity, built.similarity)
    assert matches_path(tmp_path, "k").parent == tmp_path / "duplicates" and load_matches(tmp_path, "j") is None


def test_features_of_other_shapes_are_refused():
    with pytest.raises(ConfigError, match="same columns"):
        best_matches(np.zeros((3, 4)), np.zeros((2, 5)))


def _photo_tiles(root):
    """Wide 3:1 tiles of skimage's bundled photos, one class per photo; every third tile is a test image."""
    from skimage import data

    photos = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee(),
              "rocket": data.rocket(), "hubble": data.hubble_deep_field(), "retina": data.retina()}
    for name, pixels in photos.items():
        image = Image.fromarray(pixels).convert("RGB")
        width, height = image.size
        tile_w, tile_h = width // 2, width // 6
        corners = [(x, y) for y in range(0, height - tile_h + 1, tile_h) for x in (0, tile_w)]
        for k, (x, y) in enumerate(corners):
            path = root / ("test" if k % 3 == 2 else "train") / name / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.crop((x, y, x + tile_w, y + tile_h)).save(path)
    return root / "train" / "chelsea" / "0.png"


@pytest.mark.slow
def test_a_reencoded_or_resized_photo_is_found_and_other_photos_are_not(tmp_path, image_size):
    from core.data import load_dataset
    from core.features import extract_features

    source = _photo_tiles(tmp_path / "photos")
    photo = Image.open(source)
    photo.save(source.parents[2] / "test" / "chelsea" / "copy-reencoded.jpg", quality=75)
    photo.resize((photo.width * 3 // 4, photo.height * 3 // 4)).save(source.parents[2] / "test" / "chelsea" /
                                                                    "copy-resized.png")
    dataset = load_dataset(tmp_path / "photos")
    features = extract_features(dataset, image_size=image_size, cache_dir=tmp_path / "cache", device="cpu",
                                precision="fp32", workers=0)
    pairs = near_duplicates(best_matches(features.X_train, features.X_test))
    found = sorted((dataset.test[p["test"]].path, dataset.train[p["train"]].path) for p in pairs)
    assert [(test.rsplit("/", 1)[1], train) for test, train in found] == [
        ("copy-reencoded.jpg", str(source)), ("copy-resized.png", str(source))]


def test_nearest_training_image_of_each_asked_class_is_found():
    """Three clusters; each query sits next to a planted training row of its cluster's class and another class's."""
    rng = np.random.default_rng(2)
    centres = rng.normal(scale=5, size=(3, 16))
    y = np.repeat([0, 1, 2], 20)
    X = centres[y] + rng.normal(scale=1.0, size=(60, 16))
    queries = X[[5, 27]] + rng.normal(scale=0.01, size=(2, 16))  # copies of training rows 5 (class 0), 27 (class 1)
    index, similarity = nearest_of_classes(X, y, queries, [[0, 2], [1, 0]])
    assert index[:, 0].tolist() == [5, 27] and (similarity[:, 0] > 0.99).all()
    assert y[index[0, 1]] == 2 and y[index[1, 1]] == 0 and (similarity[:, 1] < similarity[:, 0]).all()
    # the closest class-2 row to query 0 is the one nearest by centred cosine, checked by brute force
    centred = X - X.mean(axis=0)
    q = (queries[0] - X.mean(axis=0))
    cos = centred @ q / np.linalg.norm(centred, axis=1) / np.linalg.norm(q)
    assert index[0, 1] == np.flatnonzero(y == 2)[cos[y == 2].argmax()]


def test_a_class_without_training_images_has_no_neighbour():
    index, similarity = nearest_of_classes(np.eye(3), [0, 0, 1], np.eye(3)[:1], [[2, 0]])
    assert index.tolist() == [[-1, 0]] and np.isnan(similarity[0, 0])


def test_near_duplicate_training_images_with_different_labels_are_flagged():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 32))
    y = np.arange(40) % 4
    X[30] = X[3] + rng.normal(scale=0.001, size=32)  # a copy, other label (30 % 4 = 2, 3 % 4 = 3)
    X[8] = X[4] + rng.normal(scale=0.001, size=32)  # a copy with the same label: no conflict
    pairs = conflicting_duplicates(X, y, chunk=7)
    assert [(p["a"], p["b"]) for p in pairs] == [(3, 30)] and pairs[0]["similarity"] > 0.99

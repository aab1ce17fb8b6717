"""Dataset discovery, image validation, decoding and the demo dataset (core.data)."""
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from core.data import DEMO_CLASSES, build_demo_dataset, decode_rgb, demo_counts, load_dataset, open_rgb
from core.errors import DataError


# ---------------------------------------------------------------- demo dataset

def test_demo_dataset_is_deterministic(demo_dataset, tmp_path):
    again = load_dataset(build_demo_dataset(tmp_path / "demo-again"))
    assert again.fingerprint == demo_dataset.fingerprint
    assert again.train_counts == demo_dataset.train_counts
    assert again.test_counts == demo_dataset.test_counts
    first = sorted(pathlib.Path(demo_dataset.root).rglob("*.png"))
    second = sorted((tmp_path / "demo-again").rglob("*.png"))
    assert [p.relative_to(demo_dataset.root) for p in first] == [p.relative_to(tmp_path / "demo-again") for p in second]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_demo_dataset_rebuild_in_place_replaces_it(tmp_path):
    out = build_demo_dataset(tmp_path / "demo")
    first = sorted((out / "train" / DEMO_CLASSES[0]).iterdir())[0]
    first.unlink()
    build_demo_dataset(out)
    assert first.exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "demo"], "temporary build folder left behind"


def test_demo_dataset_keeps_a_file_added_to_an_earlier_demo(tmp_path):
    out = build_demo_dataset(tmp_path / "demo")
    (out / "train" / DEMO_CLASSES[0] / "mine.png").write_bytes(b"the user's")
    with pytest.raises(DataError, match="mine.png"):
        build_demo_dataset(out)
    assert (out / "train" / DEMO_CLASSES[0] / "mine.png").read_bytes() == b"the user's"
    assert not [p for p in tmp_path.iterdir() if p.name != "demo"], "temporary build folder left behind"


def test_demo_dataset_is_imbalanced(demo_dataset):
    train, test = demo_dataset.train_counts, demo_dataset.test_counts
    assert demo_dataset.classes == list(DEMO_CLASSES)
    assert max(train) >= 15 * min(train)
    assert sum(n < 10 for n in test) >= 2
    assert min(test) >= 1 and min(train) >= 1
    assert not demo_dataset.skipped
    assert demo_counts()[0] / demo_counts()[-1] == pytest.approx(17, rel=0.01)


def test_demo_images_are_wide(demo_dataset):
    for sample in demo_dataset.train[::25] + demo_dataset.test[::25]:
        width, height = sample.size
        assert 2.5 <= width / height <= 3.5
        with Image.open(sample.path) as img:
            assert img.size == sample.size


def test_demo_samples_order_is_train_then_test(demo_dataset):
    assert demo_dataset.samples == demo_dataset.train + demo_dataset.test
    assert all("/train/" in s.path for s in demo_dataset.train)
    assert all("/test/" in s.path for s in demo_dataset.test)


# ---------------------------------------------------------------- layouts

def test_train_test_layout(make_class_tree, tmp_path):
    make_class_tree(tmp_path / "ds" / "train", {"cat": 5, "dog": 3})
    make_class_tree(tmp_path / "ds" / "test", {"cat": 2, "dog": 1})
    ds = load_dataset(tmp_path / "ds")
    assert ds.classes == ["cat", "dog"]
    assert ds.train_counts == [5, 3] and ds.test_counts == [2, 1]
    assert {s.label for s in ds.train if "/cat/" in s.path} == {0}
    assert ds.train[0].size == (48, 16)
    summary = ds.summary()
    assert summary["classes"] == ["cat", "dog"] and summary["train_counts"] == [5, 3]
    assert summary["fingerprint"] == ds.fingerprint and len(ds.fingerprint) == 16


def test_flat_layout_is_split_stratified_and_seeded(make_class_tree, tmp_path):
    root = make_class_tree(tmp_path / "flat", {"a": 40, "b": 20, "c": 10})
    first, again = load_dataset(root, test_size=0.2, seed=3), load_dataset(root, test_size=0.2, seed=3)
    assert [s.path for s in first.test] == [s.path for s in again.test]
    assert first.fingerprint == again.fingerprint
    assert first.test_counts == [8, 4, 2] and first.train_counts == [32, 16, 8]  # stratified
    assert not {s.path for s in first.train} & {s.path for s in first.test}
    other = load_dataset(root, test_size=0.2, seed=4)
    assert {s.path for s in other.test} != {s.path for s in first.test}
    assert other.fingerprint != first.fingerprint  # the split is part of the cache key


def test_a_remembered_split_is_the_same_split_without_scikit_learn(make_class_tree, tmp_path, monkeypatch):
    """The split is kept in the cache folder (a cached command need not import scikit-learn); it is the split
    scikit-learn made, in the same order, and another seed, test size or file set splits afresh."""
    import sklearn.model_selection

    root, cache = make_class_tree(tmp_path / "flat", {"a": 30, "b": 12, "c": 6}), tmp_path / "cache"
    direct = load_dataset(root, test_size=0.25, seed=2)  # no cache folder: always split by scikit-learn
    first = load_dataset(root, test_size=0.25, seed=2, cache_dir=cache)
    assert [s.path for s in first.train] == [s.path for s in direct.train]
    assert [s.path for s in first.test] == [s.path for s in direct.test]

    calls = []
    real = sklearn.model_selection.train_test_split
    monkeypatch.setattr(sklearn.model_selection, "train_test_split", lambda *a, **k: calls.append(k) or real(*a, **k))
    again = load_dataset(root, test_size=0.25, seed=2, cache_dir=cache)
    assert calls == [] and [s.path for s in again.train] == [s.path for s in first.train]
    assert again.fingerprint == first.fingerprint
    load_dataset(root, test_size=0.25, seed=3, cache_dir=cache)
    load_dataset(root, test_size=0.3, seed=2, cache_dir=cache)
    (root / "c" / sorted(p.name for p in (root / "c").iterdir())[0]).unlink()
    load_dataset(root, test_size=0.25, seed=2, cache_dir=cache)
    assert [(k["random_state"], k["test_size"]) for k in calls] == [(3, 0.25), (2, 0.3), (2, 0.25)]

    for entry in (cache / "index" / "splits").glob("*.json"):
        entry.write_text("{not json")  # a damaged entry is split again, not trusted
    damaged = load_dataset(root, test_size=0.25, seed=3, cache_dir=cache)
    assert len(calls) == 4 and [s.path for s in damaged.test] == [
        s.path for s in load_dataset(root, test_size=0.25, seed=3).test]


def test_single_image_class_goes_to_train_with_a_warning(make_class_tree, tmp_path):
    """One image cannot be both trained on and tested: keep it for training instead of refusing the dataset."""
    root = make_class_tree(tmp_path / "flat", {"a": 20, "b": 10, "solo": 1})
    for seed in range(5):  # every seed, not just a lucky one
        with pytest.warns(UserWarning, match="solo"):
            ds = load_dataset(root, test_size=0.2, seed=seed)
        assert ds.train_counts[2] == 1 and ds.test_counts == [4, 2, 0]


def test_content_fingerprint_ignores_the_split_seed(make_class_tree, tmp_path):
    root = make_class_tree(tmp_path / "flat", {"a": 10, "b": 10})
    first, other = load_dataset(root, seed=0), load_dataset(root, seed=1)
    assert first.fingerprint != other.fingerprint and first.content_fingerprint == other.content_fingerprint
    assert first.summary()["content_fingerprint"] == first.content_fingerprint


def test_fingerprint_changes_with_content(make_class_tree, make_image, tmp_path):
    root = make_class_tree(tmp_path / "flat", {"a": 6, "b": 6})
    before = load_dataset(root).fingerprint
    make_image(root / "a" / "a-000.png", seed=999)  # same name, new pixels
    assert load_dataset(root).fingerprint != before


def test_hidden_files_and_folders_are_ignored(make_class_tree, tmp_path):
    root = make_class_tree(tmp_path / "flat", {"a": 5, "b": 5})
    (root / ".DS_Store").write_bytes(b"junk")
    (root / "a" / ".hidden.png").write_bytes(b"junk")
    (root / ".thumbs").mkdir()
    ds = load_dataset(root)
    assert ds.classes == ["a", "b"]
    assert not ds.skipped


def test_hidden_folders_inside_a_class_are_skipped_and_listed(make_class_tree, make_image, tmp_path):
    root = make_class_tree(tmp_path / "flat", {"a": 5, "b": 5})
    for hidden in (".ipynb_checkpoints", ".thumbnails", ".git/objects"):
        make_image(root / "a" / hidden / "a-000.png")
    ds = load_dataset(root)
    assert len(ds.samples) == 10 and not any("/." in s.path for s in ds.samples)
    listed = dict(ds.skipped)
    assert sorted(listed) == [str(root / "a" / name) for name in (".git", ".ipynb_checkpoints", ".thumbnails")]
    assert all("hidden folder" in reason and "1 file" in reason for reason in listed.values())


@pytest.mark.parametrize("name", ["val", "valid", "Validation"])
def test_a_validation_folder_and_other_folders_beside_train_and_test_are_listed_with_why(make_class_tree, tmp_path,
                                                                                        name):
    root = tmp_path / "split"
    for split, n in (("train", 6), ("test", 3), (name, 4), ("extra", 2)):
        make_class_tree(root / split, {"a": n, "b": n})
    (root / "empty").mkdir()
    ds = load_dataset(root)
    assert (len(ds.train), len(ds.test)) == (12, 6), "only train/ and test/ are read"
    listed = dict(ds.skipped)
    assert set(listed) == {str(root / "extra"), str(root / name)}
    assert listed[str(root / name)].startswith(f"validation split ({name}/), not read") and "8 file(s)" in listed[
        str(root / name)]
    assert "beside train/ and test/" in listed[str(root / "extra")]


def test_macosx_zip_metadata_is_not_a_class(make_class_tree, tmp_path):
    root = make_class_tree(tmp_path / "unzipped", {"cats": 5, "dogs": 5})
    for name in ("cats", "dogs"):  # what every zip made on macOS holds beside the folders
        (root / "__MACOSX" / name).mkdir(parents=True)
        (root / "__MACOSX" / name / f"._{name}-000.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    ds = load_dataset(root)
    assert ds.classes == ["cats", "dogs"] and len(ds.samples) == 10
    assert [(p, "__MACOSX" in r) for p, r in ds.skipped] == [(str(root / "__MACOSX"), True)]


def test_file_names_that_are_not_utf8_are_skipped_and_listed(make_class_tree, make_image, tmp_path):
    root = make_class_tree(tmp_path / "flat", {"a": 5, "b": 5})
    odd = os.fsdecode(bytes(root / "a") + b"/caf\xe9.png")  # Latin-1 name from an old camera or zip
    make_image(odd)
    ds = load_dataset(root, cache_dir=tmp_path / "cache")
    assert len(ds.samples) == 10
    [(path, reason)] = ds.skipped
    assert "UTF-8" in reason and path.encode("utf-8")  # shown with a replacement character, printable
    json.dumps(ds.summary()).encode("utf-8")


# ---------------------------------------------------------------- formats and modes

@pytest.mark.parametrize("suffix,fmt", [(".jpg", "JPEG"), (".png", "PNG"), (".bmp", "BMP"), (".webp", "WEBP")])
def test_common_formats_load_as_rgb(make_image, tmp_path, suffix, fmt):
    path = make_image(tmp_path / f"img{suffix}", size=(60, 20), fmt=fmt)
    img = open_rgb(path)
    assert img.mode == "RGB" and img.size == (60, 20)
    pixels = np.asarray(img)
    assert 20 < pixels.mean() < 235


@pytest.mark.parametrize("mode,suffix", [("L", ".png"), ("RGBA", ".png"), ("CMYK", ".jpg"), ("CMYK", ".tif"),
                                         ("I;16", ".png"), ("I;16", ".tif")])
def test_unusual_modes_load_as_rgb(make_image, tmp_path, mode, suffix):
    path = make_image(tmp_path / f"img-{mode.replace(';', '')}{suffix}", size=(60, 20), mode=mode)
    with Image.open(path) as raw:
        assert raw.mode.startswith(mode[:4])  # the file really is in that mode
    img = open_rgb(path)
    assert img.mode == "RGB" and img.size == (60, 20)
    pixels = np.asarray(img).astype(int)
    assert pixels.min() >= 0 and pixels.max() <= 255
    assert pixels.std() > 5, "image collapsed to one colour"
    assert pixels.mean() < 250, "image decoded as (nearly) all white"


@pytest.mark.parametrize("mode,suffix,rotate", [("RGB", ".jpg", True), ("L", ".jpg", False), ("CMYK", ".jpg", False),
                                                ("RGB", ".png", False), ("RGBA", ".png", False)])
def test_fast_decoder_gives_the_pixels_pil_gives(make_image, tmp_path, mode, suffix, rotate):
    """Extraction decodes JPEGs with torchvision's decoder: the same pixels as PIL, EXIF orientation included."""
    path = make_image(tmp_path / f"img-{mode}{suffix}", size=(60, 20), mode=mode)
    if rotate:
        with Image.open(path) as img:
            exif = img.getexif()
            exif[0x0112] = 6  # shown rotated by 90 degrees
            img.save(path, exif=exif, quality=90)
    expected = np.asarray(open_rgb(path)).transpose(2, 0, 1)
    assert expected.shape == ((3, 60, 20) if rotate else (3, 20, 60))
    assert np.array_equal(decode_rgb(path).numpy(), expected)


def test_truncated_jpeg_decodes_as_pil_decodes_it(make_image, tmp_path):
    path = make_image(tmp_path / "cut.jpg", size=(60, 20))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(OSError):  # the fast decoder refuses it; PIL's error is what the caller sees
        decode_rgb(path)


def test_sixteen_bit_keeps_its_gradient(make_image, tmp_path):
    path = make_image(tmp_path / "deep.png", size=(64, 16), mode="I;16")  # ramp 0..40000 of 65535
    pixels = np.asarray(open_rgb(path))[..., 0].astype(int)
    assert pixels[0, 0] < 10 and pixels[-1, -1] > 240  # scaled to use the full 8-bit range
    assert np.all(np.diff(pixels.ravel()) >= 0)  # monotone ramp survives
    assert len(np.unique(pixels)) > 100


def test_rgba_transparency_becomes_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(path)
    assert np.asarray(open_rgb(path)).min() == 255


def test_unusual_modes_are_accepted_by_load_dataset(make_image, tmp_path):
    for i, (mode, suffix) in enumerate([("L", ".png"), ("RGBA", ".png"), ("CMYK", ".jpg"), ("I;16", ".png"),
                                        ("RGB", ".bmp"), ("RGB", ".webp")]):
        make_image(tmp_path / "ds" / "a" / f"a{i}{suffix}", mode=mode, seed=i)
        make_image(tmp_path / "ds" / "b" / f"b{i}{suffix}", mode=mode, seed=10 + i)
    ds = load_dataset(tmp_path / "ds", test_size=0.5)
    assert not ds.skipped
    assert len(ds.train) + len(ds.test) == 12


# ---------------------------------------------------------------- bad files

def _bad_files(folder, good_png: pathlib.Path, good_jpg: pathlib.Path) -> dict:
    png, jpg = good_png.read_bytes(), good_jpg.read_bytes()
    files = {
        "empty.png": b"",
        "notes.txt": b"hello",
        "text.jpg": b"this is not a picture at all",
        "cut-header.png": png[:20],
        "cut-half.png": png[: len(png) // 2],
        "cut-half.jpg": jpg[: len(jpg) // 2],
        "cut-end.jpg": jpg[:-200],
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_broken_files_are_skipped_with_reasons(make_class_tree, make_image, tmp_path):
    root = make_class_tree(tmp_path / "ds", {"a": 6, "b": 6}, size=(120, 40))
    good_jpg = make_image(tmp_path / "good.jpg", size=(120, 40), fmt="JPEG")
    bad = _bad_files(root / "a", root / "a" / "a-000.png", good_jpg)
    ds = load_dataset(root)
    skipped = dict(ds.skipped)
    assert set(map(lambda p: pathlib.Path(p).name, skipped)) == set(bad)
    reasons = {pathlib.Path(p).name: r for p, r in skipped.items()}
    assert "0 bytes" in reasons["empty.png"]
    assert "extension" in reasons["notes.txt"]
    others = [r for n, r in reasons.items() if n not in ("empty.png", "notes.txt")]
    assert others and all(r.startswith(("unreadable image", "not a recognised image format")) for r in others)
    assert not any("BytesIO" in r for r in reasons.values())  # no Python object reprs in user-facing reasons
    assert len(ds.train) + len(ds.test) == 12
    assert ds.summary()["skipped"][0].keys() == {"path", "reason"}


def test_unreadable_file_is_skipped_not_a_crash(make_class_tree, monkeypatch, tmp_path):
    """A file the user may not read (permission denied) is listed as skipped, like a corrupt one."""
    root = make_class_tree(tmp_path / "ds", {"a": 5, "b": 5})
    locked = root / "a" / "a-001.png"
    real_read_bytes = pathlib.Path.read_bytes

    def read_bytes(self):  # as root chmod 000 does not block reads, so deny this one file by hand
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    ds = load_dataset(root)
    assert [p for p, _ in ds.skipped] == [str(locked)]
    assert "denied" in ds.skipped[0][1].lower()


# ---------------------------------------------------------------- clear errors

def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_a_file_instead_of_a_folder_is_a_data_error(tmp_path):
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_dataset(tmp_path / "file.png")


def test_an_empty_data_path_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="no dataset folder given"):
        load_dataset("")


def test_classes_too_small_to_split_say_which_and_what_test_size_does(make_class_tree, tmp_path):
    root = make_class_tree(tmp_path / "ds", {"a": 2, "b": 2, "c": 2, "d": 2, "e": 2})
    with pytest.raises(DataError) as caught:
        load_dataset(root, test_size=0.2)
    message = str(caught.value)
    assert "a (2), b (2)" in message and "--test-size 0.5" in message and "test_size=" not in message
    assert len(load_dataset(root, test_size=0.5).test) == 5


def test_one_class_is_a_data_error(make_class_tree, tmp_path):
    root = make_class_tree(tmp_path / "ds", {"only": 8})
    with pytest.raises(DataError, match="1 class folder"):
        load_dataset(root)


def test_no_class_folders_is_a_data_error(make_image, tmp_path):
    make_image(tmp_path / "ds" / "loose.png")
    with pytest.raises(DataError, match="0 class folder"):
        load_dataset(tmp_path / "ds")


def test_class_without_training_images_is_a_data_error(make_class_tree, tmp_path):
    make_class_tree(tmp_path / "ds" / "train", {"cat": 4, "dog": 4})
    make_class_tree(tmp_path / "ds" / "test", {"cat": 2, "dog": 2, "owl": 2})
    (tmp_path / "ds" / "train" / "owl").mkdir()
    with pytest.raises(DataError, match="owl"):
        load_dataset(tmp_path / "ds")


def test_class_with_only_broken_images_is_a_data_error(make_class_tree, tmp_path):
    root = make_class_tree(tmp_path / "ds", {"cat": 6, "dog": 6})
    (root / "owl").mkdir()
    for i in range(3):
        (root / "owl" / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="owl"):
        load_dataset(root)


def test_empty_test_split_is_a_data_error(make_class_tree, tmp_path):
    make_class_tree(tmp_path / "ds" / "train", {"cat": 4, "dog": 4})
    (tmp_path / "ds" / "test" / "cat").mkdir(parents=True)
    (tmp_path / "ds" / "test" / "dog").mkdir(parents=True)
    with pytest.raises(DataError, match="0 test"):
        load_dataset(tmp_path / "ds")


@pytest.mark.parametrize("test_size", [0, 1, 1.5, -0.1])
def test_bad_test_size_is_a_data_error(make_class_tree, tmp_path, test_size):
    root = make_class_tree(tmp_path / "ds", {"a": 5, "b": 5})
    with pytest.raises(DataError, match="test size"):
        load_dataset(root, test_size=test_size)


def test_only_non_images_is_a_data_error(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "ds" / name).mkdir(parents=True)
        (tmp_path / "ds" / name / "readme.txt").write_text("no pictures here")
    with pytest.raises(DataError, match="0 readable images"):
        load_dataset(tmp_path / "ds")


def test_demo_copy_with_missing_test_folder_uses_flat_layout(demo_dir, tmp_path):
    """Without BOTH train/ and test/, the folder is read as DIR/<class>: here 'train' becomes a class."""
    root = tmp_path / "half"
    shutil.copytree(demo_dir / "train" / "0-zero", root / "train" / "x")
    shutil.copytree(demo_dir / "train" / "1-one", root / "other" / "y")
    ds = load_dataset(root)
    assert ds.classes == ["other", "train"]


def _exif_rotated_jpeg(path, raw_size=(120, 40), orientation=6):
    """A JPEG stored as `raw_size` whose EXIF orientation says: display rotated by 90 degrees."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", raw_size, (200, 30, 30))
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif)
    return path


def test_exif_rotation_is_applied(tmp_path):
    path = _exif_rotated_jpeg(tmp_path / "phone.jpg")
    assert open_rgb(path).size == (40, 120)  # shown upright, as a portrait


def test_sample_size_is_the_displayed_size(tmp_path):
    """Phone photos carry an EXIF orientation; the recorded size must match what open_rgb returns,
    or the resize plan squashes every rotated photo into the wrong aspect ratio."""
    for name in ("a", "b"):
        for i in range(3):
            _exif_rotated_jpeg(tmp_path / "ds" / name / f"{i}.jpg")
    ds = load_dataset(tmp_path / "ds", test_size=0.34)
    for sample in ds.samples:
        assert sample.size == open_rgb(sample.path).size == (40, 120)


# ---------------------------------------------------------------- file index: re-validation from stat


@pytest.fixture
def count_reads(monkeypatch):
    """Records the paths whose bytes load_dataset reads (and hashes and decodes)."""
    import core.scan as scan

    reads, real = [], scan.inspect_image
    monkeypatch.setattr(scan, "inspect_image", lambda path: reads.append(path.name) or real(path))
    return reads


def test_unchanged_folder_is_revalidated_without_reading_files(tmp_path, make_class_tree, count_reads):
    root = make_class_tree(tmp_path / "ds", {"a": 4, "b": 4})
    (root / "a" / "notes.txt").write_text("not an image")
    first = load_dataset(root, cache_dir=tmp_path / "cache")
    assert len(count_reads) == 9
    count_reads.clear()
    again = load_dataset(root, cache_dir=tmp_path / "cache")
    assert count_reads == []  # stat alone
    assert again.fingerprint == first.fingerprint and again.skipped == first.skipped
    assert again.train == first.train and again.test == first.test


def test_index_gives_the_fingerprint_of_a_full_scan(tmp_path, make_class_tree):
    root = make_class_tree(tmp_path / "ds", {"a": 4, "b": 4})
    load_dataset(root, cache_dir=tmp_path / "cache")
    assert load_dataset(root, cache_dir=tmp_path / "cache").fingerprint == load_dataset(root).fingerprint


def test_changed_and_new_files_are_read_again(tmp_path, make_class_tree, make_image, count_reads):
    root = make_class_tree(tmp_path / "ds", {"a": 4, "b": 4})
    before = load_dataset(root, cache_dir=tmp_path / "cache")
    count_reads.clear()
    make_image(root / "a" / "a-000.png", size=(64, 16), seed=99)  # same name, new content and size
    make_image(root / "b" / "b-new.png", seed=7)
    after = load_dataset(root, cache_dir=tmp_path / "cache")
    assert sorted(count_reads) == ["a-000.png", "b-new.png"]
    assert after.fingerprint != before.fingerprint
    assert (64, 16) in [s.size for s in after.samples] and len(after.samples) == 9


def test_a_file_rewritten_with_its_size_and_mtime_kept_is_read_again(tmp_path, make_class_tree, make_image):
    """Tools that rewrite EXIF orientation keep the timestamps; ctime and inode still change."""
    root = make_class_tree(tmp_path / "ds", {"a": 4, "b": 4})
    photo = make_image(root / "a" / "photo.bmp", size=(48, 16))  # uncompressed: 16x48 has the same byte size
    before = load_dataset(root, cache_dir=tmp_path / "cache")
    kept = photo.stat()
    replacement = make_image(tmp_path / "turned.bmp", size=(16, 48), seed=5)
    os.replace(replacement, photo)  # how editors save: a new file (new inode) moved over the old one
    os.utime(photo, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert (photo.stat().st_size, photo.stat().st_mtime_ns) == (kept.st_size, kept.st_mtime_ns)
    after = load_dataset(root, cache_dir=tmp_path / "cache")
    assert after.fingerprint != before.fingerprint
    assert [s.size for s in after.samples if s.path == str(photo)] == [(16, 48)]


def test_rescan_reads_every_file(tmp_path, make_class_tree, count_reads):
    root = make_class_tree(tmp_path / "ds", {"a": 3, "b": 3})
    load_dataset(root, cache_dir=tmp_path / "cache")
    count_reads.clear()
    load_dataset(root, cache_dir=tmp_path / "cache", rescan=True)
    assert len(count_reads) == 6


def test_unreadable_index_means_a_full_scan(tmp_path, make_class_tree, count_reads):
    root = make_class_tree(tmp_path / "ds", {"a": 3, "b": 3})
    load_dataset(root, cache_dir=tmp_path / "cache")
    for index in (tmp_path / "cache" / "index").glob("*.json"):
        index.write_text("{ not json")
    count_reads.clear()
    assert len(load_dataset(root, cache_dir=tmp_path / "cache").samples) == 6
    assert len(count_reads) == 6


# ---------------------------------------------------------------- label files and a separate test folder


def write_flat(folder, names, make_image):
    """Images `names` (relative paths) in one folder tree, each with its own pixels."""
    for i, name in enumerate(names):
        make_image(pathlib.Path(folder) / name, seed=500 + i)
    return pathlib.Path(folder)


@pytest.fixture
def flat_test_dataset(tmp_path, make_class_tree, make_image):
    """Training images in class folders; test images in one flat folder, labelled by `labels.txt`.

    The label file (semicolon, with a header) names a class without training images (owl, twice), lists one
    image that is not there, and leaves one image out.
    """
    train = make_class_tree(tmp_path / "train", {"cat": 6, "dog": 4})
    test = write_flat(tmp_path / "test", ["c1.png", "c2.png", "c3.png", "d1.png", "d2.png", "o1.png", "o2.png",
                                          "stray.png"], make_image)
    rows = ["file;label", "c1.png;cat", "c2.png;cat", "c3.png;cat", "d1.png;dog", "d2.png;dog", "o1.png;owl",
            "o2.png;owl", "gone.png;dog"]
    (test / "labels.txt").write_text("\n".join(rows) + "\n")
    return train, test


def test_flat_test_folder_with_a_label_file_counts_and_skips(flat_test_dataset):
    train, test = flat_test_dataset
    ds = load_dataset(train, test_data=test, test_labels=test / "labels.txt")
    assert ds.classes == ["cat", "dog"]
    assert ds.train_counts == [6, 4] and ds.test_counts == [3, 2]
    assert sorted(pathlib.Path(s.path).name for s in ds.test) == ["c1.png", "c2.png", "c3.png", "d1.png", "d2.png"]
    assert ds.summary()["skipped_counts"] == [
        {"reason": "label 'owl' is not a training class", "count": 2},
        {"reason": "listed in labels.txt but missing", "count": 1},
        {"reason": "not listed in labels.txt", "count": 1},
    ]
    skipped = dict(ds.skipped)
    assert skipped[str(test / "gone.png")] == "listed in labels.txt but missing"
    assert skipped[str(test / "stray.png")] == "not listed in labels.txt"
    assert skipped[str(test / "o1.png")] == skipped[str(test / "o2.png")] == "label 'owl' is not a training class"


@pytest.mark.parametrize("text", [
    "file,label\nsub/a1.png,a\nsub/a2.png,a\nb1.png,b\nb2.png,b\n",          # CSV with a header
    "sub/a1.png\ta\nsub/a2.png\ta\nb1.png\tb\nb2.png\tb\n",                  # TSV, no header
    "\ufeffimage;class\r\nsub\\a1.png;a\r\nsub\\a2.png;a\r\nb1.png;b\r\nb2.png;b\r\n",  # BOM, CRLF, Windows paths
    "filename,species,width\nsub/a1.png,a,48\nsub/a2.png,a,48\nb1.png,b,48\nb2.png,b,48\n",  # named columns
    "sub/a1,a\nsub/a2,a\nb1,b\nb2,b\n",                                     # names without their extension
])
def test_label_file_formats_are_sniffed(tmp_path, make_class_tree, make_image, text):
    train = make_class_tree(tmp_path / "train", {"a": 4, "b": 4})
    test = write_flat(tmp_path / "test", ["sub/a1.png", "sub/a2.png", "b1.png", "b2.png"], make_image)
    (tmp_path / "labels.csv").write_bytes(text.encode("utf-8"))
    ds = load_dataset(train, test_data=test, test_labels=tmp_path / "labels.csv")
    assert ds.test_counts == [2, 2] and not ds.skipped
    assert {pathlib.Path(s.path).name: ds.classes[s.label] for s in ds.test} == {
        "a1.png": "a", "a2.png": "a", "b1.png": "b", "b2.png": "b"}


def test_labels_for_the_data_folder_are_split_stratified(tmp_path, make_image):
    names = [f"img{i:02d}.png" for i in range(20)]
    root = write_flat(tmp_path / "flat", names, make_image)
    (root / "meta.csv").write_text("file_name,label\n" + "".join(
        f"{name},{'rare' if i < 5 else 'common'}\n" for i, name in enumerate(names)))
    ds = load_dataset(root, labels=root / "meta.csv", test_size=0.2, seed=0)
    assert ds.classes == ["common", "rare"]
    assert ds.train_counts == [12, 4] and ds.test_counts == [3, 1] and not ds.skipped


def test_test_class_folder_without_training_images_is_skipped_and_counted(tmp_path, make_class_tree):
    train = make_class_tree(tmp_path / "train", {"cat": 4, "dog": 4})
    test = make_class_tree(tmp_path / "test", {"cat": 2, "dog": 2, "owl": 3})
    ds = load_dataset(train, test_data=test)
    assert ds.classes == ["cat", "dog"] and ds.test_counts == [2, 2]
    assert ds.summary()["skipped_counts"] == [{"reason": "class 'owl' is not a training class", "count": 3}]


def test_fingerprint_and_feature_key_cover_the_label_files(flat_test_dataset):
    from core.backbones import get_entry
    from core.features import Preprocess, feature_key

    train, test = flat_test_dataset
    labels = test / "labels.txt"
    before = load_dataset(train, test_data=test, test_labels=labels)
    labels.write_text(labels.read_text().replace("c3.png;cat", "c3.png;dog"))
    after = load_dataset(train, test_data=test, test_labels=labels)
    assert after.test_counts == [2, 3]
    assert after.fingerprint != before.fingerprint and after.content_fingerprint != before.content_fingerprint
    entry = get_entry("efficientnet_lite0")
    keys = {feature_key(ds, entry, "avg", Preprocess.for_backbone(entry), None) for ds in (before, after)}
    assert len(keys) == 2


def test_label_paths_outside_the_folder_and_conflicting_duplicates_are_skipped(tmp_path, make_class_tree, make_image):
    train = make_class_tree(tmp_path / "train", {"a": 4, "b": 4})
    test = write_flat(tmp_path / "test", ["a1.png", "b1.png", "twice.png"], make_image)
    make_image(tmp_path / "secret.png")
    (test / "labels.csv").write_text("a1.png,a\nb1.png,b\n../secret.png,a\n/etc/passwd,a\ntwice.png,a\ntwice.png,b\n")
    ds = load_dataset(train, test_data=test, test_labels=test / "labels.csv")
    assert ds.test_counts == [1, 1]
    reasons = {reason for _, reason in ds.skipped}
    assert any("outside" in r for r in reasons) and any("different labels" in r for r in reasons)
    assert str(tmp_path / "secret.png") not in [s.path for s in ds.samples]


@pytest.mark.parametrize("text,fragment", [
    ("a1.png,a,x\nb1.png,b,y\n", "3 columns"),
    ("photo,kind\n", "lists no images"),
    ("x/a1.png,a\nx/b1.png,b\n", "none of the 2 images"),  # paths relative to another folder: say so
    (b"caf\xe9.png,a\n", "UTF-8"),
])
def test_unusable_label_file_is_a_data_error(tmp_path, make_class_tree, make_image, text, fragment):
    train = make_class_tree(tmp_path / "train", {"a": 4, "b": 4})
    test = write_flat(tmp_path / "test", ["a1.png", "b1.png"], make_image)
    (test / "labels.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError, match=fragment):
        load_dataset(train, test_data=test, test_labels=test / "labels.csv")

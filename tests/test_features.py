"""Aspect-preserving preprocessing, size-grouped batches, cached and resumable extraction (core.features)."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

import core.features as features
from core.backbones import get_entry
from core.data import Sample, load_dataset, open_rgb
from core.errors import Cancelled, ConfigError, DataError
from core.features import (Preprocess, autocast_dtype, extract_features, feature_key, resize_uint8, resolve_device,
                           size_grouped_batches)

# ---------------------------------------------------------------- preprocessing


def test_output_size_keeps_aspect_ratio():
    pre = Preprocess(image_size=224)
    assert pre.output_size((800, 240)) == (224, 756)  # (height, width) from (width, height); 3.33 -> 3.375
    assert pre.output_size((240, 800)) == (756, 224)  # tall images too
    assert pre.output_size((500, 500)) == (224, 224)
    assert pre.output_size((96, 32)) == (224, 672)


def test_similar_photos_share_one_batch_shape():
    pre = Preprocess(image_size=224)
    shapes = {pre.output_size((w, 240)) for w in range(780, 821)}  # aspect 3.25 .. 3.42
    assert len(shapes) <= 2
    for w in (300, 480, 800, 1000):
        out_h, out_w = pre.output_size((w, 240))
        assert abs(out_w / out_h - w / 240) / (w / 240) <= 0.07  # at most ~6% stretch


def test_output_size_caps_the_long_side():
    pre = Preprocess(image_size=224, max_long_side=1024)
    assert pre.output_size((4000, 240)) == (61, 1024)
    assert pre.output_size((240, 4000)) == (1024, 61)
    assert max(pre.output_size((100_000, 10))) == 1024


def test_for_backbone_uses_the_entry_and_checks_the_size():
    entry = get_entry("efficientnet_lite0")
    pre = Preprocess.for_backbone(entry)
    assert pre.image_size == 224 and pre.max_long_side == 1024 and pre.interpolation == entry.interpolation
    assert Preprocess.for_backbone(entry, 512).max_long_side == 2048
    for bad in (8, 4096):
        with pytest.raises(ConfigError, match=str(bad)):
            Preprocess.for_backbone(entry, bad)


def test_preprocess_produces_uint8_tensor_of_planned_size():
    pre = Preprocess(image_size=32)
    img = Image.new("RGB", (300, 90), (124, 116, 104))
    out_size = pre.output_size(img.size)
    tensor = pre(F.pil_to_tensor(img), out_size)
    assert tensor.shape == (3, *out_size) == (3, 32, 108)  # aspect 3.33 rounds to 3.375
    assert tensor.dtype == torch.uint8  # a quarter of the bytes between processes; the model normalizes
    assert tensor[:, 5, 50].tolist() == [124, 116, 104]


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("capability", [None, "DEFAULT"])  # DEFAULT: a CPU without AVX2, where bilinear runs in float
def test_resize_gives_the_pixels_torchvision_gives(mode, capability, monkeypatch):
    from torchvision.transforms.v2 import InterpolationMode

    if capability is not None:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(features.platform, "machine", lambda: "x86_64")
    hwc = torch.randint(0, 256, (40, 130, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for image in (hwc.permute(2, 0, 1), hwc.permute(2, 0, 1).contiguous()):  # as decoded, and as PIL tensors were
        for size in ((32, 100), (56, 181), (40, 130), (17, 40)):
            expected = F.resize(image, list(size), interpolation=InterpolationMode(mode), antialias=True)
            resized = resize_uint8(image, size, mode)
            assert resized.dtype == torch.uint8 and torch.equal(resized, expected), (mode, size)
    assert resize_uint8(hwc.permute(2, 0, 1), (32, 100), mode).permute(1, 2, 0).is_contiguous()  # channels-last


def test_decoding_and_resizing_do_not_import_torchvision(demo_dataset):
    """Extraction's loader runs without torchvision (1 s to import; the model was converted earlier)."""
    code = ("import sys; from core.data import load_dataset; from core.features import ImageDataset, Preprocess, "
            "make_loader, prefetch; import torch; "
            f"ds = load_dataset({demo_dataset.root!r}); "
            "loader = make_loader(ImageDataset(ds.samples[:4], Preprocess(64)), [[0, 1], [2, 3]], "
            "torch.device('cpu'), 0); "
            "shapes = [tuple(b.shape) for b, _, _ in prefetch(loader)]; "
            "print(shapes, 'torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split()[-1] == "False", done.stdout
    assert "(2, 3, 64" in done.stdout


def test_size_grouped_batches_never_mix_sizes():
    sizes = [(96, 32), (32, 96), (96, 32), (50, 50), (96, 32), (32, 96), (96, 32), (200, 60)]
    samples = [Sample(f"{i}.png", i % 2, s) for i, s in enumerate(sizes)]
    pre = Preprocess(image_size=32)
    batches = size_grouped_batches(samples, pre, batch_size=2)
    assert sorted(i for b in batches for i in b) == list(range(len(samples)))
    for batch in batches:
        assert 1 <= len(batch) <= 2
        assert len({pre.output_size(samples[i].size) for i in batch}) == 1
    shuffled = size_grouped_batches(samples, pre, batch_size=2, shuffle_seed=1)
    assert shuffled == size_grouped_batches(samples, pre, batch_size=2, shuffle_seed=1)
    assert sorted(i for b in shuffled for i in b) == list(range(len(samples)))
    for batch in shuffled:
        assert len({pre.output_size(samples[i].size) for i in batch}) == 1


def test_device_and_precision_choices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="tpu"):
        resolve_device("tpu")
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu) in (None, torch.bfloat16)
    assert autocast_dtype(torch.device("cuda")) == torch.float16
    with pytest.raises(ConfigError, match="fp8"):
        autocast_dtype(cpu, "fp8")


@pytest.mark.parametrize("caps, dtype", [
    ({"avx2": True, "avx512_bw": False}, None),  # AVX2 only: no bf16 kernels (autocast there is 10x slower)
    ({"avx512_bw": True, "avx512_vl": True, "avx512_dq": True}, torch.bfloat16),
    ({"avx_ne_convert": True}, torch.bfloat16),
    ({"bf16": True}, torch.bfloat16),  # ARM
])
def test_cpu_autocast_follows_the_cpus_bf16_support(monkeypatch, caps, dtype):
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # torch's own (private) check, on this machine
    assert autocast_dtype(torch.device("cpu")) == (torch.bfloat16 if native else None)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert autocast_dtype(torch.device("cpu")) == dtype


# ---------------------------------------------------------------- extraction and cache


def test_extracted_features_shapes(demo_features, demo_dataset):
    fs = demo_features
    n_train, n_test = len(demo_dataset.train), len(demo_dataset.test)
    assert fs.X_train.shape == (n_train, 1280) and fs.X_test.shape == (n_test, 1280)
    assert fs.X_train.dtype == np.float32 and fs.X_test.dtype == np.float32
    assert fs.y_train.tolist() == [s.label for s in demo_dataset.train]
    assert fs.y_test.tolist() == [s.label for s in demo_dataset.test]
    assert np.isfinite(fs.X_train).all() and np.isfinite(fs.X_test).all()
    assert fs.X_train.std(axis=0).mean() > 1e-3  # images give different features
    assert not fs.cache_hit and fs.extract_seconds > 0
    assert fs.backbone["name"] == "efficientnet_lite0" and fs.backbone["feature_dim"] == 1280


def test_features_match_a_direct_forward_pass(demo_features, demo_dataset, backbone, image_size):
    """Rows line up with `dataset.samples` (train first, then test), whatever the batch order was."""
    pre = Preprocess.for_backbone(backbone.entry, image_size)
    picks = list(range(0, len(demo_dataset.samples), 37))
    x = [pre(F.pil_to_tensor(open_rgb(demo_dataset.samples[i].path)), pre.output_size(demo_dataset.samples[i].size))
         for i in picks]
    with torch.inference_mode():
        expected = backbone.features(torch.stack(x)).numpy()  # fp32 reference
    got = np.vstack([demo_features.X_train, demo_features.X_test])[picks]
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() > 0.99  # bf16 on CPUs with native support: the same direction, ~1% off
    if demo_features.backbone["dtype"] == "None":
        assert np.allclose(got, expected, atol=1e-4, rtol=1e-4)
    distances = ((got[:, None, :] - expected[None, :, :]) ** 2).sum(-1)
    assert distances.argmin(axis=1).tolist() == list(range(len(picks)))  # each row is nearest its own image


def test_second_call_is_a_cache_hit(demo_features, demo_dataset, feature_cache, image_size):
    again = extract_features(demo_dataset, "efficientnet_lite0", image_size=image_size, cache_dir=feature_cache,
                             device="cpu", workers=0)
    assert again.cache_hit and again.key == demo_features.key
    assert np.array_equal(again.X_train, demo_features.X_train)
    assert np.array_equal(again.X_test, demo_features.X_test)
    assert again.extract_seconds == pytest.approx(demo_features.extract_seconds)
    meta = json.loads((feature_cache / "features" / again.key / "meta.json").read_text())
    assert meta["n"] == len(demo_dataset.samples) and meta["feature_dim"] == 1280


def test_cache_key_covers_what_changes_the_features(demo_dataset, tmp_path, make_class_tree):
    entry = get_entry("efficientnet_lite0")
    base = feature_key(demo_dataset, entry, "avg", Preprocess.for_backbone(entry, 32), torch.bfloat16)
    assert base == feature_key(demo_dataset, entry, "avg", Preprocess.for_backbone(entry, 32), torch.bfloat16)
    variants = [
        feature_key(demo_dataset, entry, "max", Preprocess.for_backbone(entry, 32), torch.bfloat16),
        feature_key(demo_dataset, entry, "avg", Preprocess.for_backbone(entry, 48), torch.bfloat16),
        feature_key(demo_dataset, entry, "avg", Preprocess.for_backbone(entry, 32), None),
        feature_key(demo_dataset, get_entry("resnet18"), "avg", Preprocess.for_backbone(get_entry("resnet18"), 32),
                    torch.bfloat16),
        feature_key(load_dataset(make_class_tree(tmp_path / "other", {"a": 4, "b": 4})), entry, "avg",
                    Preprocess.for_backbone(entry, 32), torch.bfloat16),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_another_split_seed_reuses_the_features_in_its_own_row_order(tmp_path, make_class_tree, count_decodes):
    root = make_class_tree(tmp_path / "ds", {"a": 6, "b": 6}, size=(96, 32))
    first = extract_features(load_dataset(root, test_size=0.34, seed=0), image_size=32, cache_dir=tmp_path / "c",
                             device="cpu", workers=0)
    count_decodes.clear()
    other = load_dataset(root, test_size=0.34, seed=1)
    again = extract_features(other, image_size=32, cache_dir=tmp_path / "c", device="cpu", workers=0)
    assert again.cache_hit and again.key == first.key and not count_decodes
    assert [s.path for s in other.train] != [s.path for s in load_dataset(root, test_size=0.34, seed=0).train]
    fresh = extract_features(other, image_size=32, cache_dir=tmp_path / "fresh", device="cpu", workers=0)
    assert np.allclose(again.X_train, fresh.X_train, atol=1e-3) and np.allclose(again.X_test, fresh.X_test, atol=1e-3)
    assert again.y_train.tolist() == [s.label for s in other.train]


def test_extract_with_other_pool_uses_another_cache_entry(tmp_path, make_class_tree):
    ds = load_dataset(make_class_tree(tmp_path / "ds", {"a": 3, "b": 3}, size=(96, 32)), test_size=0.34)
    cache = tmp_path / "cache"
    avg = extract_features(ds, image_size=32, cache_dir=cache, device="cpu", workers=0)
    mx = extract_features(ds, image_size=32, pool="max", cache_dir=cache, device="cpu", workers=0)
    bigger = extract_features(ds, image_size=48, cache_dir=cache, device="cpu", workers=0)
    assert not mx.cache_hit and not bigger.cache_hit
    assert len({avg.key, mx.key, bigger.key}) == 3
    assert sorted(p.name for p in (cache / "features").iterdir()) == sorted([avg.key, mx.key, bigger.key])
    assert not np.allclose(avg.X_train, mx.X_train)


def test_unknown_backbone_fails_before_creating_cache(demo_dataset, tmp_path):
    from core.errors import BackboneError

    with pytest.raises(BackboneError):
        extract_features(demo_dataset, "resnet19", cache_dir=tmp_path / "c", device="cpu")
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------- resume after a kill


@pytest.fixture
def resume_dataset(demo_dir):
    """20 demo images (same size): with SHARD_IMAGES = 8 that is three shards of 8, 8 and 4 images."""
    ds = load_dataset(demo_dir)
    ds.train, ds.test = ds.train[:14], ds.test[:6]
    return ds


class Recorder:
    """Progress callback that counts images and can cancel once `cancel_after` images are done."""

    def __init__(self, cancel_after=None):
        self.calls, self.cancel_after = [], cancel_after

    def __call__(self, stage, done, total):
        if stage != "extract features":  # e.g. "load the backbone" before the first image
            return
        self.calls.append((done, total))
        if self.cancel_after is not None and done > self.cancel_after:
            raise Cancelled("user cancelled")


@pytest.fixture
def count_decodes(monkeypatch) -> list:
    return _count_decodes(monkeypatch)


def _count_decodes(monkeypatch) -> list:
    decoded = []
    real = features.ImageDataset.__getitem__

    def getitem(self, index):
        decoded.append(index)
        return real(self, index)

    monkeypatch.setattr(features.ImageDataset, "__getitem__", getitem)
    return decoded


def _extract(ds, cache, progress=None):
    return extract_features(ds, image_size=32, cache_dir=cache, device="cpu", batch_size=4, workers=0,
                            progress=progress)


def test_killed_extraction_resumes_where_it_stopped(resume_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(features, "SHARD_IMAGES", 8)
    reference = _extract(resume_dataset, tmp_path / "straight")

    cache = tmp_path / "resumed"
    killer = Recorder(cancel_after=8)
    with pytest.raises(Cancelled):
        _extract(resume_dataset, cache, killer)
    folder = cache / "features" / reference.key
    shards = sorted(p.name for p in folder.glob("shard-*.npz"))
    assert shards == ["shard-00000.npz"]
    assert not (folder / "meta.json").exists()
    assert not [p for p in folder.iterdir() if p.suffix == ".tmp" or p.name.startswith(".")]

    decoded = _count_decodes(monkeypatch)
    recorder = Recorder()
    resumed = _extract(resume_dataset, cache, recorder)
    assert not resumed.cache_hit and resumed.key == reference.key
    assert recorder.calls[0] == (8, 20)  # starts from the finished shard
    assert recorder.calls[-1] == (20, 20)
    assert len(decoded) == 12 and len(set(decoded)) == 12  # only the remaining images
    with np.load(folder / "shard-00000.npz") as first:
        assert not set(first["indices"].tolist()) & set(decoded)
    assert np.allclose(resumed.X_train, reference.X_train, atol=2e-2, rtol=1e-2)
    assert np.allclose(resumed.X_test, reference.X_test, atol=2e-2, rtol=1e-2)
    assert sorted(p.name for p in folder.iterdir()) == ["elapsed-0.json", "meta.json", "shard-00000.npz",
                                                        "shard-00001.npz", "shard-00002.npz"]

    decoded.clear()
    hit = _extract(resume_dataset, cache)
    assert hit.cache_hit and not decoded
    assert np.array_equal(hit.X_train, resumed.X_train)


class SlowRecorder(Recorder):
    """A Recorder that takes `pause_s` at every report, like a slow machine."""

    def __init__(self, pause_s, cancel_after=None):
        super().__init__(cancel_after)
        self.pause_s = pause_s

    def __call__(self, stage, done, total):
        time.sleep(self.pause_s)
        super().__call__(stage, done, total)


def test_resumed_extraction_records_the_total_time(resume_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(features, "SHARD_IMAGES", 8)
    with pytest.raises(Cancelled):
        _extract(resume_dataset, tmp_path, SlowRecorder(2.0, cancel_after=8))  # 3 reports before shard 0 is kept
    started = time.perf_counter()
    resumed = _extract(resume_dataset, tmp_path)
    resumed_call_s = time.perf_counter() - started
    assert resumed.extract_seconds > 6.0  # the killed call's share counts
    assert resumed.extract_seconds > resumed_call_s  # more than the last call alone


def test_shards_are_size_grouped_and_cover_every_image(resume_dataset, monkeypatch):
    monkeypatch.setattr(features, "SHARD_IMAGES", 8)
    plan = features._shard_plan(resume_dataset.samples, Preprocess(image_size=32))
    assert [len(s) for s in plan] == [8, 8, 4]
    assert sorted(i for s in plan for i in s) == list(range(20))


def test_rotated_photo_keeps_its_aspect_ratio(tmp_path):
    """An EXIF-rotated (portrait) JPEG must reach the model as a portrait tensor, not squashed to landscape."""
    for name in ("a", "b"):
        for i in range(3):
            path = tmp_path / "ds" / name / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            img = Image.new("RGB", (120, 40), (200, 30, 30))
            exif = img.getexif()
            exif[0x0112] = 6  # rotate 90 degrees for display
            img.save(path, exif=exif)
    ds = load_dataset(tmp_path / "ds", test_size=0.34)
    tensor, _, _ = features.ImageDataset(ds.train, Preprocess(image_size=32))[0]
    assert tensor.shape == (3, 96, 32)  # 40x120 portrait -> short side 32, long side 96


def test_mixed_sizes_map_back_to_the_right_rows(tmp_path, make_class_tree, backbone):
    """Images of several sizes are batched by size; each row must still belong to its own image."""
    root = tmp_path / "mixed"
    make_class_tree(root, {"a": 3, "b": 3}, size=(96, 32))
    make_class_tree(root, {"a": 2, "b": 2}, size=(40, 40), suffix=".bmp")
    make_class_tree(root, {"a": 2}, size=(32, 80), suffix=".jpg")
    ds = load_dataset(root, test_size=0.3)
    fs = extract_features(ds, image_size=32, cache_dir=tmp_path / "cache", device="cpu", precision="fp32",
                          batch_size=3, workers=0)
    pre = Preprocess.for_backbone(backbone.entry, 32)
    X = np.vstack([fs.X_train, fs.X_test])
    with torch.inference_mode():
        for row, sample in zip(X, ds.samples):
            x = pre(F.pil_to_tensor(open_rgb(sample.path)), pre.output_size(sample.size))[None]
            assert np.allclose(row, backbone.features(x).numpy()[0], atol=1e-4, rtol=1e-4), sample.path


def test_worker_processes_give_the_same_features(tmp_path, make_class_tree):
    ds = load_dataset(make_class_tree(tmp_path / "ds", {"a": 5, "b": 5}, size=(96, 32)), test_size=0.3)
    inline = extract_features(ds, image_size=32, cache_dir=tmp_path / "c0", device="cpu", precision="fp32",
                              workers=0)
    pooled = extract_features(ds, image_size=32, cache_dir=tmp_path / "c1", device="cpu", precision="fp32",
                              workers=1)
    assert inline.key == pooled.key
    assert np.allclose(inline.X_train, pooled.X_train, atol=1e-5)
    assert np.allclose(inline.X_test, pooled.X_test, atol=1e-5)


def test_incomplete_cache_entry_is_a_clear_error(demo_dataset, tmp_path):
    first = features.extract_features(demo_dataset, image_size=32, cache_dir=tmp_path, workers=0)
    shards = sorted((tmp_path / "features" / first.key).glob("shard-*.npz"))
    shards[0].unlink()  # e.g. removed by hand or lost on a full disk
    with pytest.raises(DataError, match="incomplete.*delete that folder"):
        features.extract_features(demo_dataset, image_size=32, cache_dir=tmp_path, workers=0)


def test_prefetch_yields_every_batch_in_order_and_raises_decode_errors():
    class Loader(list):
        num_workers = 0

    assert list(features.prefetch(Loader(range(7)))) == list(range(7))

    class Broken:
        num_workers = 0

        def __iter__(self):
            yield 1
            raise DataError("image 2 is unreadable")

    got = []
    with pytest.raises(DataError, match="unreadable"):
        for item in features.prefetch(Broken()):
            got.append(item)
    assert got == [1]


def test_prefetch_decodes_on_one_torch_thread_and_leaves_the_callers_threads_alone():
    class Loader:
        num_workers = 0

        def __iter__(self):
            yield torch.get_num_threads()  # what a resize inside the decoding thread would run on

    before = torch.get_num_threads()
    assert list(features.prefetch(Loader())) == [1]
    assert torch.get_num_threads() == before


def test_prefetch_stops_its_thread_when_the_loop_is_left(monkeypatch):
    import threading

    class Endless:
        num_workers = 0

        def __iter__(self):
            n = 0
            while True:
                n += 1
                yield n

    batches = features.prefetch(Endless())
    assert next(batches) == 1
    batches.close()  # e.g. a cancelled extraction
    for _ in range(50):
        if not any(t.name == "transferscope-decode" for t in threading.enumerate()):
            break
        time.sleep(0.05)
    assert not any(t.name == "transferscope-decode" for t in threading.enumerate())

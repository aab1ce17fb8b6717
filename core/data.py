"""Discover ImageFolder-style datasets, validate their images and build the demo dataset."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEMO_CLASSES = ("0-zero", "1-one", "2-two", "3-three", "4-four", "5-five", "6-six", "7-seven", "8-eight", "9-nine")
DEMO_SIZE = (96, 32)  # width x height: about 3:1, like the reference 800x240 boat photos
# torchvision 0.29 (pinned) announces on every decode that TorchCodec will take over image decoding; its decoder
# is what extraction uses today (decode_rgb), so the notice is silenced once here instead of on every image
TORCHVISION_DECODE_NOTICE = "The image decoding and encoding capabilities of TorchVision are deprecated"
warnings.filterwarnings("ignore", message=TORCHVISION_DECODE_NOTICE, category=DeprecationWarning)


@dataclass(frozen=True)
class Sample:
    """One validated image: where it is, its label index and its size (width, height)."""

    path: str
    label: int
    size: tuple[int, int]


@dataclass
class Dataset:
    """A labelled image dataset split into train and test, with the files that were skipped."""

    root: str
    classes: list[str]
    train: list[Sample]
    test: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    fingerprint: str = ""
    content_fingerprint: str = ""  # the files alone, without the split: equal across split seeds

    @property
    def train_counts(self) -> list[int]:
        return np.bincount([s.label for s in self.train], minlength=len(self.classes)).tolist()

    @property
    def test_counts(self) -> list[int]:
        return np.bincount([s.label for s in self.test], minlength=len(self.classes)).tolist()

    @property
    def samples(self) -> list[Sample]:
        """Train samples followed by test samples (the order features are stored in)."""
        return self.train + self.test

    def summary(self) -> dict:
        """JSON-ready description used in results files and on the Dataset page."""
        return {
            "root": self.root,
            "classes": self.classes,
            "train_counts": self.train_counts,
            "test_counts": self.test_counts,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "fingerprint": self.fingerprint,
            "content_fingerprint": self.content_fingerprint,
        }


def load_dataset(root, *, test_size: float = 0.2, seed: int = 0, cache_dir=None, rescan: bool = False) -> Dataset:
    """Load `root/train/<class>/*` + `root/test/<class>/*`, or split `root/<class>/*` stratified.

    Unreadable, empty or non-image files are skipped and listed in `Dataset.skipped`. With `cache_dir`,
    a file index (path, size, mtime -> content hash, image size) is kept under it, so files unchanged
    since the last scan are re-validated from `stat` alone; `rescan=True` reads every file again.

    >>> ds = load_dataset("cache/datasets/digits-demo", cache_dir="cache")  # doctest: +SKIP
    >>> ds.classes[:3], len(ds.train) > len(ds.test)  # doctest: +SKIP
    """
    root = check_data_dir(root)
    if not 0 < test_size < 1:
        raise DataError(f"test size must be between 0 and 1 (exclusive), got {test_size}")
    scanner, content = FileIndex(root, cache_dir, rescan), None
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = sorted(set(_class_names(root / "train")) | set(_class_names(root / "test")))
        train = scanner.scan(root / "train", classes)
        test = scanner.scan(root / "test", classes)
    else:
        classes = _class_names(root)
        samples = scanner.scan(root, classes)
        content = scanner.hasher.hexdigest()[:16]
        train, test = _split(samples, test_size, seed, len(classes))
        scanner.hasher.update(f"split:{test_size}:{seed}".encode())
    scanner.save()
    _check_usable(root, classes, train, test)
    fingerprint = scanner.hasher.hexdigest()[:16]
    return Dataset(str(root), classes, train, test, scanner.skipped, fingerprint, content or fingerprint)


def check_data_dir(root) -> Path:
    """`root` as a Path if it is a folder, else a DataError saying what to pass."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder {str(root)!r} does not exist; pass a folder with one sub-folder per class")
    return root


def _class_names(folder: Path) -> list[str]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"{str(folder)!r} has {len(classes)} class folder(s); put each class's images in its own "
            "sub-folder (at least two), e.g. DIR/cats/*.jpg and DIR/dogs/*.jpg, or DIR/train/<class> + DIR/test/<class>"
        )
    return classes


class FileIndex:
    """Scans class folders, remembering each file's content hash and image size by (path, size, mtime).

    The dataset fingerprint hashes every file's label, name and content hash, whether read or remembered.
    """

    VERSION = 1

    def __init__(self, root: Path, cache_dir=None, rescan: bool = False):
        self.hasher, self.skipped = hashlib.sha256(), []
        name = f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]}.json"
        self.path = Path(cache_dir) / "index" / name if cache_dir is not None else None
        self.known = {} if rescan or self.path is None else self._read()
        self.seen: dict[str, list] = {}

    def _read(self) -> dict:
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # no index yet, or an unreadable one: scan everything
        return saved.get("files", {}) if isinstance(saved, dict) and saved.get("version") == self.VERSION else {}

    def save(self) -> None:
        """Write the index of the files seen in this scan (atomically); a no-op without a cache folder."""
        if self.path is not None and self.seen != self.known:
            from core.runs import atomic_write_json

            atomic_write_json(self.path, {"version": self.VERSION, "files": self.seen})

    def scan(self, folder: Path, classes: list[str]) -> list[Sample]:
        """Samples of `folder/<class>/**` in class then path order; unusable files go to `skipped`."""
        samples = []
        for label, name in enumerate(classes):
            class_dir = folder / name
            files = sorted(p for p in class_dir.rglob("*") if p.is_file()) if class_dir.is_dir() else []
            for path in files:
                if path.name.startswith("."):
                    continue
                digest, size, reason = self._inspect(path)
                if reason:
                    self.skipped.append((str(path), reason))
                    continue
                self.hasher.update(f"{label}:{path.name}:".encode())
                self.hasher.update(bytes.fromhex(digest))
                samples.append(Sample(str(path), label, size))
        return samples

    def _inspect(self, path: Path) -> tuple[str | None, tuple[int, int] | None, str | None]:
        """(content hash, image size, skip reason) from the index when size and mtime match, else read."""
        try:
            st = path.stat()
            stamp = [st.st_size, st.st_mtime_ns]
        except OSError as err:
            return None, None, f"cannot read file: {err.strerror or err}"
        entry = self.known.get(str(path))
        if entry is None or entry[:2] != stamp:
            digest, size, reason = _inspect_image(path)
            entry = [*stamp, digest, list(size) if size else None, reason]
        self.seen[str(path)] = entry
        return entry[2], tuple(entry[3]) if entry[3] else None, entry[4]


def _inspect_image(path: Path) -> tuple[str | None, tuple[int, int] | None, str | None]:
    """Decode an image cheaply (JPEG draft mode) and hash its bytes; return (hash, size, skip reason)."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return None, None, f"not an image extension ({path.suffix or 'none'})"
    try:
        data = path.read_bytes()
    except OSError as err:
        return None, None, f"cannot read file: {err.strerror or err}"
    if not data:
        return None, None, "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation turns it sideways when opened
                size = size[::-1]
            img.draft("RGB", (64, 64))
            img.load()
    except UnidentifiedImageError:
        return None, None, "not a recognised image format (corrupt, or not really an image)"
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return None, None, f"unreadable image: {err}"
    return hashlib.sha256(data).hexdigest(), size, None


def _split(samples: list[Sample], test_size: float, seed: int, n_classes: int):
    """Seeded split, stratified when every class has 2+ images; a class of one image goes to train (warned)."""
    from sklearn.model_selection import train_test_split  # imported on use: scans stay fast to start

    if len(samples) < 2:
        raise DataError(f"found {len(samples)} readable images in the class folders; need at least 2 to split "
                        "into train and test (see the skipped files for what could not be read)")
    counts = np.bincount([s.label for s in samples], minlength=n_classes)
    singles = [s for s in samples if counts[s.label] == 1]
    if singles:
        warnings.warn(f"{len(singles)} class(es) have a single image, kept for training with no test image: "
                      f"{', '.join(Path(s.path).parent.name for s in singles)}; their scores are not measured",
                      stacklevel=3)
    rest = [s for s in samples if counts[s.label] > 1]
    try:
        train, test = train_test_split(rest, test_size=test_size, random_state=seed, stratify=[s.label for s in rest])
    except ValueError as err:
        raise DataError(f"cannot split {len(samples)} images with test size {test_size}: {err}") from err
    return singles + train, test


def _check_usable(root: Path, classes, train, test) -> None:
    if not train or not test:
        raise DataError(
            f"{str(root)!r} has {len(train)} readable training and {len(test)} test images; "
            "need at least one of each (check the folder layout and image formats)"
        )
    empty = [c for c, n in zip(classes, np.bincount([s.label for s in train], minlength=len(classes))) if n == 0]
    if empty:
        raise DataError(f"classes without any training image: {', '.join(empty)}; add images or remove those folders")


def demo_counts(n_classes: int = 10, largest: int = 170, smallest: int = 10) -> list[int]:
    """Geometric per-class image counts from `largest` down to `smallest` (17x imbalance)."""
    ratio = (smallest / largest) ** (1 / (n_classes - 1))
    return [round(largest * ratio**i) for i in range(n_classes)]


def build_demo_dataset(out_dir, *, test_fraction: float = 0.25, seed: int = 0) -> Path:
    """Write scikit-learn's digits as wide (3:1) grayscale PNGs, deterministically imbalanced.

    Layout: `out_dir/train/<class>/*.png` and `out_dir/test/<class>/*.png`. Rebuilding gives
    byte-identical files, so the feature cache stays valid.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    tmp_dir = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    for label, count in enumerate(demo_counts()):
        indices = rng.permutation(np.flatnonzero(digits.target == label))[:count]
        n_test = max(2, round(count * test_fraction))
        for i, index in enumerate(indices):
            split = "test" if i < n_test else "train"
            path = tmp_dir / split / DEMO_CLASSES[label] / f"{index:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _render_digit(digits.images[index], rng).save(path, optimize=False)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp_dir, out_dir)
    return out_dir


def _render_digit(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Place an 8x8 digit (values 0..16) at a random spot on a wide noisy canvas."""
    width, height = DEMO_SIZE
    digit = Image.fromarray((pixels * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BICUBIC)
    canvas = rng.normal(20, 8, size=(height, width)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(canvas, mode="L")
    x, y = int(rng.integers(0, width - 28)), int(rng.integers(0, height - 28))
    img.paste(digit, (x, y), mask=digit)
    return img


def decode_rgb(path):
    """`open_rgb` as a uint8 tensor `(3, H, W)`: JPEGs through torchvision's libjpeg-turbo decoder (about half
    PIL's time, the same pixels, EXIF orientation applied), anything else, or a JPEG it refuses, through PIL."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file  # on use: cache hits start fast
    from torchvision.transforms.v2.functional import pil_to_tensor

    data = read_file(str(path))
    if data[:3].tolist() == [0xFF, 0xD8, 0xFF]:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except RuntimeError:
            pass  # e.g. a truncated file: PIL either reads it or raises the error users are told about
    return pil_to_tensor(open_rgb(path))


def open_rgb(path) -> Image.Image:
    """Decode any supported image (grayscale, RGBA, CMYK, 16-bit, ...) as 8-bit RGB."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            pixels = np.asarray(img, dtype=np.float64)
            peak = pixels.max() or 1.0
            img = Image.fromarray((pixels * (255.0 / peak)).astype(np.uint8), mode="L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")

"""Discover ImageFolder-style datasets, validate their images and build the demo dataset."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from core.errors import DataError
from core.labels import nfc, read_labels
from core.csvcells import csv_text
from core.storage import atomic_write_bytes, atomic_write_json
from core.scan import FileIndex, Sample, check_class_count, few, folder_skip_reason, is_utf8, printable

DEMO_CLASSES = ("0-zero", "1-one", "2-two", "3-three", "4-four", "5-five", "6-six", "7-seven", "8-eight", "9-nine")
DEMO_MARKER = ".transferscope-demo.json"  # lists the files the demo wrote: only those are replaced
VALIDATION_FOLDERS = ("val", "valid", "validation")  # a split's validation folder, beside train/ and test/
DEMO_SIZE = (96, 32)  # width x height: about 3:1, like the reference 800x240 boat photos
OVERLAP_SAMPLE = 20  # train/test pairs of one file kept in results and records (all are counted)
SKIPPED_SAMPLE = 50  # skipped files kept in results and records (all are counted; all listed in a side file)
SKIPPED_REASONS = 50  # distinct reasons counted one by one; the rest are counted together


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
    overlap: list[tuple[str, str, str]] = field(default_factory=list)  # (train path, test path, how): a leak
    skipped_file: str | None = None  # every skipped file, when more than the summary holds (a CSV in the cache)

    @property
    def train_counts(self) -> list[int]:
        return np.bincount([s.label for s in self.train], minlength=len(self.classes)).tolist()

    @property
    def test_counts(self) -> list[int]:
        return np.bincount([s.label for s in self.test], minlength=len(self.classes)).tolist()

    @property
    def skipped_counts(self) -> list[dict]:
        """How many files were skipped for each reason, most frequent first: `[{"reason", "count"}]`; past
        SKIPPED_REASONS reasons, the rest are counted under one entry."""
        ranked = Counter(reason for _, reason in self.skipped).most_common()
        rest = sum(n for _, n in ranked[SKIPPED_REASONS:])
        return ([{"reason": reason, "count": n} for reason, n in ranked[:SKIPPED_REASONS]]
                + ([{"reason": f"{len(ranked) - SKIPPED_REASONS} other reasons", "count": rest}] if rest else []))

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
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped[:SKIPPED_SAMPLE]],
            "skipped_total": len(self.skipped),
            "skipped_counts": self.skipped_counts,
            "skipped_file": self.skipped_file,
            "fingerprint": self.fingerprint,
            "content_fingerprint": self.content_fingerprint,
            "overlap_count": len(self.overlap),
            "overlap": [{"train": a, "test": b, "how": how} for a, b, how in self.overlap[:OVERLAP_SAMPLE]],
        }


def load_dataset(root, *, labels=None, test_data=None, test_labels=None, test_size: float = 0.2, seed: int = 0,
                 cache_dir=None, rescan: bool = False) -> Dataset:
    """Load a labelled image dataset in any of the layouts README's dataset section lists.

    - `root/train/<class>/*` + `root/test/<class>/*`; or `root/<class>/*`, split stratified and seeded;
    - `labels`: a label file (`file,label` lines) naming the images under `root`, split the same way;
    - `test_data`: a separate test folder, `test_data/<class>/*` or, with `test_labels`, any images a label
      file names; training images then come from `root/train/<class>` (if present), `root/<class>` or `labels`.

    Test images whose label is not a training class are left out; they, unreadable or non-image files, and
    images listed but missing or present but unlisted are in `Dataset.skipped`, each with its reason. With
    `cache_dir`, a file index (path, size, mtime, ctime, inode -> content hash, image size) is kept under
    it, so unchanged files are re-validated from `stat` alone; `rescan=True` reads every file again.

    >>> ds = load_dataset("cache/datasets/digits-demo", cache_dir="cache")  # doctest: +SKIP
    >>> ds.classes[:3], len(ds.train) > len(ds.test)  # doctest: +SKIP
    """
    root = check_data_dir(root)
    if not 0 < test_size < 1:
        raise DataError(f"test size must be between 0 and 1 (exclusive), got {test_size}")
    if test_labels is not None and test_data is None:
        raise DataError("a test label file (--test-labels) needs the test folder it describes (--test-data)")
    scanner, content = FileIndex(root, cache_dir, rescan), None
    train_folder, test_folder = _layout(root, labels, test_data, test_labels)
    if test_folder is not None and _inside(test_folder, train_folder):
        scanner.exclude(test_folder)
    _skip_folders_beside(scanner, root, train_folder, test_folder)
    classes, train = _training_images(scanner, train_folder, labels)
    if test_folder is None:
        content = scanner.hasher.hexdigest()[:16]
        train, test = _split(train, test_size, seed, classes, cache_dir)
        scanner.hasher.update(f"split:{test_size}:{seed}".encode())
    else:
        test = _test_images(scanner, test_folder, test_labels, classes)
    scanner.save()
    _check_usable(root, classes, train, test)
    fingerprint = scanner.hasher.hexdigest()[:16]
    overlap = scanner.same_files(train, test)
    if overlap:
        warnings.warn(overlap_message(len(overlap), overlap[0]), stacklevel=2)
    return Dataset(str(root), classes, train, test, scanner.skipped, fingerprint, content or fingerprint, overlap,
                   _write_skipped(scanner.skipped, cache_dir, fingerprint))


def _write_skipped(skipped: list[tuple[str, str]], cache_dir, fingerprint: str) -> str | None:
    """Every skipped file in one CSV (path, reason) under the cache when the summary holds only a sample."""
    if cache_dir is None or len(skipped) <= SKIPPED_SAMPLE:
        return None
    path = Path(cache_dir) / "index" / "skipped" / f"{fingerprint}.csv"
    if not path.exists():
        atomic_write_bytes(path, csv_text(["path", "reason"], skipped).encode("utf-8"), "skipped-files list")
    return str(path)


def overlap_message(n: int, first: tuple[str, str, str]) -> str:
    """What to tell a user whose test set holds `n` files that are also training images (`first` of them)."""
    return (f"{n} test image(s) are also training images ({first[2]}, e.g. test {printable(first[1])!r} = train "
            f"{printable(first[0])!r}): a leak that inflates test scores; remove them from one of the two")


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` lies under `folder` (symlinks resolved)."""
    return path.resolve() != folder.resolve() and path.resolve().is_relative_to(folder.resolve())


def _layout(root: Path, labels, test_data, test_labels) -> tuple[Path, Path | None]:
    """(folder of the training images, separate test folder or None to split the training images)."""
    if test_data is not None:
        check_separate_test(root, labels, test_data, test_labels)
        return _training_folder(root, labels), check_data_dir(test_data, "test folder (--test-data)")
    if labels is None and (root / "train").is_dir() and (root / "test").is_dir():
        return root / "train", root / "test"
    return root, None


def _skip_folders_beside(scanner: FileIndex, root: Path, train_folder: Path, test_folder: Path | None) -> None:
    """List the folders beside `root/train` that are not read, with why (a `val/` split among them)."""
    if train_folder != root / "train":
        return
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and d not in (train_folder, test_folder)):
        if folder.name.lower() in VALIDATION_FOLDERS:
            reason = (f"validation split ({folder.name}/), not read: choices (C, tau, offsets, epochs) are made on "
                      "out-of-fold scores of train/; move its images into train/ to train on them")
        else:
            reason = folder_skip_reason(folder) or f"folder beside train/ and test/ ({folder.name}/), not read"
        scanner.skip_folder(folder, reason)


def _training_images(scanner: FileIndex, folder: Path, labels) -> tuple[list[str], list[Sample]]:
    """(classes, samples) of the class folders under `folder`, or of the images `labels` names there."""
    if labels is None:
        classes = check_class_count(folder, scanner.class_names(folder))
        return classes, scanner.scan(folder, classes)
    entries = read_labels(labels, folder, scanner)
    classes = sorted({label for _, label in entries})
    if len(classes) < 2:
        raise DataError(f"label file {str(labels)!r} names {len(classes)} class(es) among the images found; "
                        "a classifier needs at least two")
    index = {name: i for i, name in enumerate(classes)}
    return classes, scanner.add([(path, index[label]) for path, label in entries])


def _test_images(scanner: FileIndex, folder: Path, labels, classes: list[str]) -> list[Sample]:
    """Samples of the test folder (class folders, or a label file); images of unknown classes are skipped."""
    if labels is None:
        entries, kind = [(path, name) for name in scanner.class_names(folder)
                         for path in scanner.files(folder / name)], "class"
    else:
        entries, kind = read_labels(labels, folder, scanner), "label"
    index, known = {nfc(name): i for i, name in enumerate(classes)}, []  # a macOS folder name is NFD
    for path, name in entries:
        if nfc(name) in index:
            known.append((path, index[nfc(name)]))
        else:
            scanner.skip(path, f"{kind} {name!r} is not a training class")
    if not known and entries:
        raise DataError(f"no test {kind} matches a training class: test {kind}s {few(sorted({n for _, n in entries}))}"
                        f"; training classes {few(classes)}; name the test {kind}s as the training classes")
    return scanner.add(known)


def _training_folder(root: Path, labels) -> Path:
    return root / "train" if labels is None and (root / "train").is_dir() else root


def check_separate_test(root, labels, test_data, test_labels) -> None:
    """Refuse a test set that would be the training images: the same label file for both, or the training folder
    as test folder with nothing (no label file, or the same one) telling test images apart."""
    if test_labels is not None and labels is not None and _same_file(test_labels, labels):
        raise DataError(f"the test label file (--test-labels) {str(test_labels)!r} is the training label file "
                        "(--labels): the test would score the training images; give the test images' own file")
    train_folder = _training_folder(Path(root).expanduser(), labels)
    if Path(test_data).expanduser().resolve() == train_folder.resolve() and (test_labels is None) == (labels is None):
        raise DataError(f"the test folder (--test-data) {str(test_data)!r} is the training folder: the test "
                        "would score the training images; give a folder of other images (or a label file "
                        "for each split, --labels and --test-labels)")


def _same_file(a, b) -> bool:
    try:
        return Path(a).expanduser().samefile(Path(b).expanduser())
    except OSError:
        return False  # a missing file is reported when it is read


def check_data_dir(root, what: str = "dataset folder") -> Path:
    """`root` as a Path if it is a folder, else a DataError saying what was wrong and what to pass."""
    if not str(root).strip():
        raise DataError(f"no {what} given (the path is empty); pass a folder with one sub-folder per class")
    path = Path(root).expanduser()
    if not is_utf8(str(path)):
        raise DataError(f"{what} {printable(path)!r}: its path is not valid UTF-8 text; rename it")
    if path.is_file():
        raise DataError(f"{what} {str(path)!r} is a file, not a folder; pass the folder that holds the images "
                        "(one sub-folder per class)")
    if not path.is_dir():
        raise DataError(f"{what} {str(path)!r} does not exist; pass a folder with one sub-folder per class")
    return path


def _split(samples: list[Sample], test_size: float, seed: int, classes: list[str], cache_dir=None):
    """Seeded split, stratified when every class has 2+ images; a class of one image goes to train (warned)."""
    if len(samples) < 2:
        raise DataError(f"found {len(samples)} readable images in the class folders; need at least 2 to split "
                        "into train and test (see the skipped files for what could not be read)")
    counts = np.bincount([s.label for s in samples], minlength=len(classes))
    singles = [s for s in samples if counts[s.label] == 1]
    if singles:
        warnings.warn(f"{len(singles)} class(es) have a single image, kept for training with no test image: "
                      f"{few(classes[s.label] for s in singles)}; their scores are not measured",
                      stacklevel=3)
    rest = [s for s in samples if counts[s.label] > 1]
    _check_splittable({classes[i]: int(n) for i, n in enumerate(counts) if n > 1}, test_size)
    train, test = _stratified_split(rest, test_size, seed, cache_dir)
    return singles + train, test


def _stratified_split(samples: list[Sample], test_size: float, seed: int, cache_dir) -> tuple[list, list]:
    """scikit-learn's seeded stratified `train_test_split`, remembered under `cache_dir/index/splits/`.

    Importing scikit-learn alone takes 1.5 s: a command that finds its features cached never needs it. The
    entry is keyed by every sample's label and path, the split's settings and scikit-learn's version.
    """
    from importlib.metadata import version

    fields = [version("scikit-learn"), repr(test_size), str(seed), *(f"{s.label}:{s.path}" for s in samples)]
    key = hashlib.sha256("\n".join(fields).encode()).hexdigest()[:20]
    path = Path(cache_dir) / "index" / "splits" / f"{key}.json" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            saved = json.loads(path.read_text())
            return [samples[i] for i in saved["train"]], [samples[i] for i in saved["test"]]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            pass  # an unreadable entry: split again, and replace it
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(range(len(samples)), test_size=test_size, random_state=seed,
                                   stratify=[s.label for s in samples])
    if path is not None:
        atomic_write_json(path, {"train": [int(i) for i in train], "test": [int(i) for i in test]}, "split")
    return [samples[i] for i in train], [samples[i] for i in test]


def _check_splittable(counts: dict[str, int], test_size: float) -> None:
    """A stratified split needs a test and a training image per class: else say which classes and what to do."""
    n, k = sum(counts.values()), len(counts)
    n_test = math.ceil(test_size * n)
    if k <= n_test <= n - k:
        return
    smallest = ", ".join(f"{name} ({c})" for name, c in sorted(counts.items(), key=lambda item: item[1])[:5])
    fits = math.ceil(k / n * 100) / 100 if n_test < k else math.floor((n - k) / n * 100) / 100
    raise DataError(
        f"cannot split {n} images of {k} classes with test size {test_size:g}: that gives {n_test} test and "
        f"{n - n_test} training images, and a stratified split needs at least one of each per class; smallest "
        f"classes: {smallest}; use --test-size {fits:g} (Test size on the Train page), add images, or give a "
        "separate test folder (--test-data)"
    )


def _check_usable(root: Path, classes, train, test) -> None:
    if not train or not test:
        raise DataError(
            f"{str(root)!r} has {len(train)} readable training and {len(test)} test images; "
            "need at least one of each (check the folder layout and image formats; a flat test folder "
            "needs its label file: --test-data DIR --test-labels FILE)"
        )
    empty = [c for c, n in zip(classes, np.bincount([s.label for s in train], minlength=len(classes))) if n == 0]
    if empty:
        raise DataError(f"classes without any training image: {few(empty)}; add images or remove those folders")


def demo_counts(n_classes: int = 10, largest: int = 170, smallest: int = 10) -> list[int]:
    """Geometric per-class image counts from `largest` down to `smallest` (17x imbalance)."""
    ratio = (smallest / largest) ** (1 / (n_classes - 1))
    return [round(largest * ratio**i) for i in range(n_classes)]


def build_demo_dataset(out_dir, *, test_fraction: float = 0.25, seed: int = 0) -> Path:
    """Write scikit-learn's digits as wide (3:1) grayscale PNGs, deterministically imbalanced.

    Layout: `out_dir/train/<class>/*.png` and `out_dir/test/<class>/*.png`, plus a marker file listing
    them. Rebuilding gives byte-identical files, so the feature cache stays valid. Only a new or empty
    folder, or an earlier demo holding nothing but its own files, is written to; anything else is refused.
    """
    from sklearn.datasets import load_digits

    out_dir = Path(out_dir).expanduser()
    _check_demo_target(out_dir)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    try:
        written = []
        for label, count in enumerate(demo_counts()):
            indices = rng.permutation(np.flatnonzero(digits.target == label))[:count]
            n_test = max(2, round(count * test_fraction))
            for i, index in enumerate(indices):
                relative = f"{'test' if i < n_test else 'train'}/{DEMO_CLASSES[label]}/{index:04d}.png"
                (tmp_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                _render_digit(digits.images[index], rng).save(tmp_dir / relative, optimize=False)
                written.append(relative)
        (tmp_dir / DEMO_MARKER).write_text(json.dumps({"demo": "digits", "files": written}, indent=1))
        _check_demo_target(out_dir)  # nothing of the user's appeared there meanwhile
        _swap_in(tmp_dir, out_dir)
    except OSError as err:
        from core.storage import storage_error

        raise storage_error(err, out_dir, "the demo dataset") from err
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def _check_demo_target(out_dir: Path) -> None:
    """Refuse a demo target that is a file, or a folder holding anything but an earlier demo's files."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise DataError(f"demo output {str(out_dir)!r} is not a folder; pass a new or empty folder as --out")
    foreign = _foreign_files(out_dir)
    if foreign:
        raise DataError(f"demo output {str(out_dir)!r} is not empty and not an earlier demo (it holds "
                        f"{foreign[0]!r}); nothing was written; pass a new or empty folder as --out")


def _foreign_files(folder: Path) -> list[str]:
    """Entries of `folder` that the demo marker there does not list (every entry without a marker)."""
    try:
        listed = json.loads((folder / DEMO_MARKER).read_text())["files"]
        own = {DEMO_MARKER} | {str(p) for f in listed for p in (Path(f), *Path(f).parents) if str(p) != "."}
    except (OSError, ValueError, KeyError, TypeError):
        own = set()
    return sorted(rel for rel in (str(p.relative_to(folder)) for p in folder.rglob("*")) if rel not in own)


def _swap_in(new: Path, target: Path) -> None:
    """Move `new` onto `target` (an empty folder or an earlier demo), keeping one or the other whole."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, target)


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
    """`open_rgb` as a uint8 tensor `(3, H, W)`, channels-last in memory: JPEGs through TorchCodec's libjpeg-turbo
    decoder (torchvision's successor for decoding, about half PIL's time, the same pixels, EXIF orientation
    applied; importing it takes 0.02 s where torchvision takes 1 s), anything else, or a JPEG it refuses, through
    PIL."""
    import torch
    from torchcodec.decoders import decode_jpeg  # on use: cache hits start fast

    data = Path(path).read_bytes()
    if data.startswith(b"\xff\xd8\xff"):
        try:
            return decode_jpeg(data, mode="RGB")
        except RuntimeError:
            pass  # e.g. a truncated file: PIL either reads it or raises the error users are told about
    return torch.from_numpy(np.array(open_rgb(path))).permute(2, 0, 1)


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

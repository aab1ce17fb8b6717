"""Synthetic photo sets: the reference boat dataset's stand-in (wide 800x240 JPEG photos, 16 imbalanced
classes) and, for the scale bench, small photos in many classes.

Each image is a random crop of one of scikit-image's sample photos (scaled, shifted, colour-jittered),
so decoding costs what real JPEG photos cost. Deterministic for a given seed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

SIZE = (800, 240)  # width x height
N_CLASSES = 16


def _sources() -> list[Image.Image]:
    from skimage import data

    photos = (data.astronaut, data.chelsea, data.coffee, data.rocket, data.cat)  # bundled, no download
    return [Image.fromarray(photo()).convert("RGB") for photo in photos]


def class_counts(n_images: int, n_classes: int = N_CLASSES, imbalance: float = 40.0) -> list[int]:
    """Geometric per-class counts summing to about `n_images`, largest/smallest = `imbalance`."""
    shares = imbalance ** (-np.arange(n_classes) / (n_classes - 1))
    return np.maximum(2, np.round(n_images * shares / shares.sum())).astype(int).tolist()


def build_wide_photos(out_dir, n_images: int = 5000, *, seed: int = 0, quality: int = 90) -> Path:
    """Write `out_dir/<class>/*.jpg` (single-folder layout) unless it already holds that many images.

    A class does not decide what its images show (they cycle through the sources): a set for timing.
    """
    return _build(out_dir, class_counts(n_images), SIZE, lambda label, i: (label + i, 0), seed, quality)


def build_small_photos(out_dir, n_images: int = 30000, *, n_classes: int = 24, imbalance: float = 700.0,
                       size: tuple[int, int] = (64, 48), seed: int = 0, quality: int = 90) -> Path:
    """Write `out_dir/<class>/*.jpg` (single-folder layout): small photos whose class decides what they show
    (one source photo and one of five looks: as is, rotated, grey, inverted, channels swapped), so a classifier
    on their features has something to learn. Kept when it already holds that many images."""
    return _build(out_dir, class_counts(n_images, n_classes, imbalance), size,
                  lambda label, i: (label, label // 5), seed, quality)


LOOKS = (lambda image: image, lambda image: image.transpose(Image.Transpose.ROTATE_90),
         lambda image: image.convert("L").convert("RGB"), lambda image: Image.eval(image, lambda v: 255 - v),
         lambda image: Image.merge("RGB", image.split()[::-1]))


def _build(out_dir, counts: list[int], size: tuple[int, int], content, seed: int, quality: int) -> Path:
    """Write `counts[label]` crops per class folder, `content(label, i)` = (source index, look index)."""
    out_dir = Path(out_dir)
    if out_dir.is_dir() and sum(1 for _ in out_dir.rglob("*.jpg")) == sum(counts):
        return out_dir
    rng = np.random.default_rng(seed)
    sources, looked = _sources(), {}
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    for label, count in enumerate(counts):
        folder = tmp / f"class-{label:02d}-{'long-descriptive-name-' * (label % 2)}vessel"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            source, look = (index % len(options) for index, options in zip(content(label, i), (sources, LOOKS)))
            if (source, look) not in looked:
                looked[source, look] = LOOKS[look](sources[source])
            image = _crop(looked[source, look], rng, size)
            image.save(folder / f"{i:05d}.jpg", quality=quality)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def _crop(source: Image.Image, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    scale = rng.uniform(1.0, 2.0) * max(size[0] / source.width, size[1] / source.height)
    image = source.resize((round(source.width * scale) + 1, round(source.height * scale) + 1), Image.BILINEAR)
    x = int(rng.integers(0, image.width - size[0] + 1))
    y = int(rng.integers(0, image.height - size[1] + 1))
    image = image.crop((x, y, x + size[0], y + size[1]))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    return ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))

"""A synthetic stand-in for the reference boat dataset: wide 800x240 JPEG photos, 16 imbalanced classes.

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
    """Write `out_dir/<class>/*.jpg` (single-folder layout) unless it already holds that many images."""
    out_dir = Path(out_dir)
    counts = class_counts(n_images)
    if out_dir.is_dir() and sum(1 for _ in out_dir.rglob("*.jpg")) == sum(counts):
        return out_dir
    rng = np.random.default_rng(seed)
    sources = _sources()
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    for label, count in enumerate(counts):
        folder = tmp / f"class-{label:02d}-{'long-descriptive-name-' * (label % 2)}vessel"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            _crop(sources[(label + i) % len(sources)], rng).save(folder / f"{i:05d}.jpg", quality=quality)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def _crop(source: Image.Image, rng: np.random.Generator) -> Image.Image:
    scale = rng.uniform(1.0, 2.0) * max(SIZE[0] / source.width, SIZE[1] / source.height)
    image = source.resize((round(source.width * scale) + 1, round(source.height * scale) + 1), Image.BILINEAR)
    x = int(rng.integers(0, image.width - SIZE[0] + 1))
    y = int(rng.integers(0, image.height - SIZE[1] + 1))
    image = image.crop((x, y, x + SIZE[0], y + SIZE[1]))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    return ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))

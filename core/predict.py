"""Apply a stored run to new images: its backbone, preprocessing, pooling, precision, classifier and decision rule.

Features of new images go through `core.features.extract_features` with the run's settings, so they are
cached by content like any others. The classifier is the stored model (core.model_io) run as the torch
module that `export` traces (core.model_graph); the decision rule is `core.remedies.decide` with the run's
tau and offsets, as when the run was scored.
"""
from __future__ import annotations

import os
from types import SimpleNamespace
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.approaches import get_approach
from core.backbones import get_entry, is_fused
from core.data import Dataset
from core.errors import BackboneError, DataError, RunStoreError
from core.model_io import StoredModel
from core.records import RunRecord
from core.remedies import decide
from core.storage import atomic_write_bytes, atomic_write_json
from core.store import RunStore
from core.scan import IMAGE_EXTENSIONS, FileIndex, printable

FORMATS = ("csv", "json")


@dataclass(frozen=True)
class Predictor:
    """A stored run ready to score images: its record and its model."""

    record: RunRecord
    model: StoredModel
    cache_dir: Path

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def classes(self) -> list[str]:
        return self.record.classes

    @property
    def decision(self) -> dict:
        return self.record.decision

    @property
    def train_counts(self) -> list[int]:
        return self.record.dataset.train_counts

    @property
    def logits(self) -> bool:
        """Whether its scores are logits (softmax of them is a probability); the SVM's are not."""
        return get_approach(self.record.approach).logits

    def setting(self, name: str):
        """A setting of the experiment the run came from (its config), else the backbone record's."""
        backbone = self.record.backbone or {}
        defaults = {"pool": "avg", "image_size": None, "precision": "auto", "runtime": "auto", "device": "auto",
                    "batch_size": 32, "backbone": backbone.get("name")}
        return self.record.setting(name, backbone.get(name, defaults.get(name)))

    def decision_shift(self) -> np.ndarray:
        """What the decision rule adds to raw scores: -tau log prior + offsets (the rule `decide` applies)."""
        return decide(np.zeros((1, len(self.classes))), self.train_counts, self.decision)[0]


def load_predictor(run_id: str, cache_dir) -> Predictor:
    """The run `run_id` of the store under `cache_dir`, checked usable before any image is read.

    Raises RunStoreError for an unknown run, one without a model (trained or imported by an earlier version)
    or whose model does not match its record, BackboneError when its backbone weights are not installed.
    """
    store = RunStore(Path(cache_dir) / "runs")
    record = store.load(run_id)
    model = store.load_model(run_id)
    if model.n_classes != len(record.classes):
        raise RunStoreError(f"run {run_id!r} has a model for {model.n_classes} classes but {len(record.classes)} "
                            "in its record; it is damaged, train it again")
    predictor = Predictor(record, model, Path(cache_dir))
    check_backbone(predictor)
    return predictor


def check_backbone(predictor: Predictor) -> None:
    """The run's backbone is known here and its pretrained weights load offline; else say what to install."""
    name = predictor.setting("backbone")
    if is_fused(name):
        raise BackboneError(f"run {predictor.run_id!r} uses the fused backbone {name!r}; predict and export take "
                            "runs on one backbone: train the approach on one of its parts")
    offline, note = get_entry(name).availability()
    if not offline:
        raise BackboneError(f"run {predictor.run_id!r} needs the backbone {name!r}, whose weights are missing on "
                            f"this machine: {note}")


@dataclass
class Predictions:
    """Per image: `paths`, raw `scores` and `decision` scores `(n, n_classes)`; `skipped` files with reasons."""

    classes: list[str]
    paths: list[str]
    scores: np.ndarray
    decision: np.ndarray
    logits: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def predicted(self) -> np.ndarray:
        return self.decision.argmax(axis=1)

    @property
    def probabilities(self) -> np.ndarray | None:
        """Softmax of the decision scores for logit approaches; None for the SVM (its scores are not logits)."""
        if not self.logits:
            return None
        return torch.softmax(torch.from_numpy(self.decision), dim=1).numpy()

    def top_k(self, i: int, k: int) -> list[dict]:
        """The `k` best classes of image `i`: class, decision score and probability (None for the SVM)."""
        probabilities = self.probabilities
        order = np.argsort(-self.decision[i], kind="stable")[:k]
        return [{"class": self.classes[c], "score": float(self.decision[i, c]),
                 "probability": None if probabilities is None else float(probabilities[i, c])} for c in order]

    def table(self, k: int = 3) -> pd.DataFrame:
        """One row per image: path, predicted class, its score and probability, the top k, raw `score_<i>`."""
        rows = []
        for i, path in enumerate(self.paths):
            best = self.top_k(i, k)
            row = {"path": path, "predicted_class": best[0]["class"], "score": best[0]["score"],
                   "probability": best[0]["probability"]}
            for rank, entry in enumerate(best, 1):
                row.update({f"top{rank}_class": entry["class"], f"top{rank}_score": entry["score"],
                            f"top{rank}_probability": entry["probability"]})
            rows.append({**row, **{f"score_{c}": self.scores[i, c] for c in range(len(self.classes))}})
        rows += [{"path": path, "error": reason} for path, reason in self.skipped]
        return pd.DataFrame(rows)


def image_files(inputs, cache_dir) -> tuple[Path, FileIndex, list[Path]]:
    """The image files named by `inputs` (files, or folders searched recursively), with the scanner that
    reads and hashes them. Files without an image extension inside a folder are listed as skipped."""
    paths = [Path(p).expanduser().resolve() for p in inputs]
    if not paths:
        raise DataError("no images given; pass --data DIR or image files")
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{printable(missing[0])!r} does not exist; give an image file or a folder of images")
    root = Path(os.path.commonpath([p if p.is_dir() else p.parent for p in paths]))
    scanner, files = FileIndex(root, cache_dir), []
    for path in paths:
        if path.is_dir():
            found = scanner.files(path)
            files += [f for f in found if f.suffix.lower() in IMAGE_EXTENSIONS]
            for f in found:
                if f.suffix.lower() not in IMAGE_EXTENSIONS:
                    scanner.skip(f, f"not an image extension ({f.suffix or 'none'})")
        else:
            files.append(path)
    return root, scanner, list(dict.fromkeys(files))


def predict_images(predictor: Predictor, inputs, *, skip_unreadable: bool = False, progress=None) -> Predictions:
    """Score the images named by `inputs` (files or folders) with the run, exactly as its test images were.

    Unreadable images raise a DataError naming the first one and its reason, unless `skip_unreadable`:
    then they are listed in `skipped`.

    >>> p = predict_images(load_predictor(run_id, "cache"), ["photos/"])  # doctest: +SKIP
    >>> p.table(k=3).head()  # doctest: +SKIP
    """
    root, scanner, files = image_files(inputs, predictor.cache_dir)
    listed = len(scanner.skipped)  # so far: folders and files that are not images (hidden ones, other extensions)
    samples = scanner.add([(path, 0) for path in files])
    broken = scanner.skipped[listed:]
    if broken and not skip_unreadable:
        path, reason = broken[0]
        raise DataError(f"{len(broken)} of {len(files)} image(s) cannot be read, e.g. {path!r}: {reason}; remove "
                        "them, or pass --skip-unreadable to predict the others (the skipped are listed with reasons)")
    if not samples:
        raise DataError(f"no readable image among {len(files)} file(s) under {printable(root)!r}; give JPEG, PNG, "
                        "BMP, WebP or TIFF images")
    scanner.save()
    fingerprint = scanner.hasher.hexdigest()[:16]
    dataset = Dataset(str(root), predictor.classes, [], samples, scanner.skipped, fingerprint, fingerprint)
    scores, notes = _scores(predictor, dataset, progress)
    decision = decide(scores, predictor.train_counts, predictor.decision)
    return Predictions(predictor.classes, [s.path for s in samples], scores, np.asarray(decision, dtype=np.float64),
                       predictor.logits, list(scanner.skipped), notes)


def _scores(predictor: Predictor, dataset: Dataset, progress) -> tuple[np.ndarray, list[str]]:
    """Raw scores `(n, n_classes)` of the dataset's (test) images, and notes on what differs from the run."""
    from core.experiment import used_precision
    from core.features import autocast_dtype, extract_features, resolve_device
    from core.model_graph import score_module

    settings = {name: predictor.setting(name) for name in ("pool", "image_size", "precision", "runtime", "device",
                                                           "batch_size")}
    device = resolve_device("cpu" if settings["device"] == "cuda" and not torch.cuda.is_available()
                            else settings["device"])
    notes = []
    precision = used_precision(SimpleNamespace(precision=settings["precision"], device=device.type))
    if predictor.record.precision not in (None, precision):
        notes.append(f"run {predictor.run_id!r} was scored with {predictor.record.precision} features, this "
                     f"machine computes {precision}: scores differ slightly and near-ties may flip")
    if predictor.model.kind == "finetune":
        from core.model_io import finetune_modules

        features_module, head = finetune_modules(predictor.model)
        dtype = autocast_dtype(device, settings["precision"])
        if features_module is not None:  # a trained backbone block: run the run's own backbone in torch
            return _torch_finetune_scores(features_module, head, dataset, predictor, device, dtype, progress), notes
    features = extract_features(dataset, predictor.setting("backbone"), cache_dir=predictor.cache_dir,
                                device=device.type, progress=progress, **{k: settings[k] for k in
                                ("pool", "image_size", "precision", "runtime", "batch_size")})
    if predictor.model.kind == "finetune":
        return _head_scores(head, torch.from_numpy(features.X_test), device, dtype), notes
    with torch.inference_mode():
        return score_module(predictor.model)(torch.from_numpy(features.X_test)).numpy(), notes


def _head_scores(head: torch.nn.Module, features: torch.Tensor, device, dtype) -> np.ndarray:
    """The fine-tune head's logits as its test scores were computed (autocast in the run's precision)."""
    head = head.to(device).eval()
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return head(features.to(device)).float().cpu().numpy().astype(np.float64)


def _torch_finetune_scores(features_module, head, dataset: Dataset, predictor: Predictor, device, dtype,
                           progress) -> np.ndarray:
    """Images through the run's fine-tuned backbone and head in torch, batched by shape."""
    from core.features import ImageDataset, Preprocess, make_loader, prefetch, size_grouped_batches

    preprocess = Preprocess.for_backbone(get_entry(predictor.setting("backbone")), predictor.setting("image_size"))
    batches = size_grouped_batches(dataset.test, preprocess, int(predictor.setting("batch_size")))
    loader = make_loader(ImageDataset(dataset.test, preprocess), batches, device, 0)
    model = torch.nn.Sequential(features_module, head).to(device, memory_format=torch.channels_last).eval()
    scores, done = np.zeros((len(dataset.test), len(predictor.classes))), 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for images, _, index in prefetch(loader):
            images = images.to(device, memory_format=torch.channels_last)
            scores[index.numpy()] = model(images).float().cpu().numpy()
            done += len(index)
            if progress:
                progress("fine-tuned backbone", done, len(dataset.test))
    return scores


def write_predictions(predictions: Predictions, out, fmt: str = "csv", k: int = 3, run_id: str = "") -> Path:
    """Write the predictions to `out` atomically: a CSV table, or JSON with top-k lists and skipped files."""
    if fmt == "csv":
        atomic_write_bytes(out, predictions.table(k).to_csv(index=False).encode("utf-8"), "predictions file")
        return Path(out)
    rows = [{"path": path, "predicted_class": predictions.classes[int(predictions.predicted[i])],
             "top_k": predictions.top_k(i, k), "scores": predictions.scores[i].tolist()}
            for i, path in enumerate(predictions.paths)]
    atomic_write_json(out, {"run_id": run_id, "classes": predictions.classes, "predictions": rows,
                            "skipped": [{"path": p, "reason": r} for p, r in predictions.skipped]}, "predictions file")
    return Path(out)


def save_uploads(files, folder) -> list[str]:
    """Store uploaded images `[(file name, bytes)]` under `folder` by content (`<sha256 prefix><extension>`),
    so the same image uploaded again is the same file (and its features a cache hit); their paths."""
    import hashlib

    paths = []
    for name, data in files:
        suffix = Path(name).suffix.lower()
        if suffix not in IMAGE_EXTENSIONS:
            raise DataError(f"{name!r} is not an image file ({suffix or 'no extension'}); upload JPEG, PNG, BMP, "
                            "WebP or TIFF images")
        path = Path(folder) / f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
        if not path.is_file():
            atomic_write_bytes(path, data, "uploaded image")
        paths.append(str(path))
    return paths

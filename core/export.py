"""Export a stored run as a self-contained ONNX model with its decision rule inside, plus how to feed it.

The graph takes uint8 RGB images `(N, 3, H, W)`, already resized by the run's size rule (normalisation is
inside), and returns `scores` (the classifier's raw class scores), `decision_scores` (after the run's tau
and offsets) and `label` (the decided class index). `preprocessing.json` and `README.md` beside it give the
size rule, mean/std, class names and the decision rule, so onnxruntime alone runs it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from core.errors import StorageError
from core.predict import Predictor
from core.storage import check_output_dir, storage_error

ONNX_FILE = "model.onnx"
PREPROCESSING_FILE = "preprocessing.json"
OPSET = 17
EXPORT_FORMAT = 1


def image_classifier(predictor: Predictor) -> torch.nn.Module:
    """The run as one torch module: fp32 backbone (with a fine-tune's trained block), float64 classifier, rule."""
    from core.backbones import create_backbone
    from core.model_graph import ImageClassifier, score_module
    from core.model_io import finetune_modules

    features = None
    if predictor.model.kind == "finetune":
        features, _ = finetune_modules(predictor.model)
    if features is None:
        features = create_backbone(predictor.setting("backbone"), pool=predictor.setting("pool")).features
    return ImageClassifier(features.eval(), score_module(predictor.model), predictor.decision_shift()).eval()


def preprocessing(predictor: Predictor) -> dict:
    """What a caller must do before the graph, and what comes out: JSON-ready."""
    from core.backbones import get_entry
    from core.features import Preprocess

    entry = get_entry(predictor.setting("backbone"))
    rule = Preprocess.for_backbone(entry, predictor.setting("image_size"))
    return {
        "format": EXPORT_FORMAT, "run_id": predictor.run_id, "approach": predictor.record.approach,
        "remedy": predictor.record.remedy, "classes": predictor.classes,
        "input": {"name": "image", "dtype": "uint8", "layout": "NCHW", "channels": "RGB",
                  "normalisation": "inside the graph: (x / 255 - mean) / std", "mean": list(rule.mean),
                  "std": list(rule.std)},
        "resize": {"short_side": rule.image_size, "max_long_side": rule.max_long_side,
                   "aspect_step": rule.aspect_step, "interpolation": rule.interpolation, "antialias": True,
                   "rule": "keep the aspect ratio: round long/short to a multiple of aspect_step (at least 1), "
                           "short side -> short_side, long side -> round(short_side x that ratio); if the long "
                           "side would exceed max_long_side, scale so it equals max_long_side. No crop, no pad."},
        "outputs": {"scores": "raw class scores (float64; -inf for a class without training images)",
                    "decision_scores": "scores + decision_shift (the run's tau and offsets)",
                    "label": "index into classes of the decided class (argmax of decision_scores)"},
        "decision_rule": {"tau": predictor.decision["tau"], "offsets": predictor.decision["offsets"],
                          "train_counts": predictor.train_counts,
                          "decision_shift": predictor.decision_shift().tolist()},
        "precision": {"run": predictor.record.precision, "graph": "fp32 backbone, float64 classifier"},
    }


def export_run(predictor: Predictor, out_dir) -> Path:
    """Write `model.onnx`, `preprocessing.json` and `README.md` into `out_dir` (new or empty), all or nothing.

    >>> export_run(load_predictor(run_id, "cache"), "exported/")  # doctest: +SKIP
    """
    out_dir = check_output_dir(out_dir, "export folder (--out)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise StorageError(f"export folder {out_dir} is not empty; give a new or empty folder")
    module, info = image_classifier(predictor), preprocessing(predictor)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as err:
        raise storage_error(err, out_dir, "export folder") from err
    try:
        _write_onnx(module, staging / ONNX_FILE, info["resize"]["short_side"])
        (staging / PREPROCESSING_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        (staging / "README.md").write_text(_readme(info), encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(staging, out_dir)
    except OSError as err:
        raise storage_error(err, out_dir, "export folder") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _write_onnx(module: torch.nn.Module, path: Path, short_side: int) -> None:
    """Trace with torch's TorchScript-based exporter, batch, height and width dynamic.

    The torch.export-based exporter gives the same graph but took 237 s against 4 s for the backbone on
    this 2-core machine; the traced graph is checked at other sizes by the tests (timm computes the
    "same" padding with traceable ops).
    """
    example = torch.zeros(1, 3, short_side, 3 * short_side, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes mean nothing to users
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["scores", "decision_scores", "label"],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "scores": {0: "batch"},
                                        "decision_scores": {0: "batch"}, "label": {0: "batch"}})


def _readme(info: dict) -> str:
    classes = ", ".join(f"{i}: {name}" for i, name in enumerate(info["classes"]))
    resize = info["resize"]
    return f"""# Run {info['run_id']} ({info['approach']}, {info['remedy']})

`model.onnx` classifies RGB images into: {classes}.

Input `image`: uint8 `(N, 3, H, W)`, RGB, resized beforehand: {resize['rule']}
Here: short side {resize['short_side']} px, {resize['interpolation']} with antialiasing, aspect step
{resize['aspect_step']}. Normalisation (mean {info['input']['mean']}, std {info['input']['std']}) is inside the graph.
Images of one batch must share one size.

Outputs: `scores` (raw class scores), `decision_scores` (scores + the run's decision rule: tau
{info['decision_rule']['tau']}, offsets {info['decision_rule']['offsets']}), `label` (the decided class).

```python
import numpy as np, onnxruntime as ort
from PIL import Image

session = ort.InferenceSession("model.onnx")
image = Image.open("photo.jpg").convert("RGB")
w, h = image.size
ratio = max(1.0, round(max(w, h) / min(w, h) / {resize['aspect_step']}) * {resize['aspect_step']})
short, long = {resize['short_side']}, round({resize['short_side']} * ratio)
size = (long, short) if w >= h else (short, long)          # PIL wants (width, height)
pixels = np.asarray(image.resize(size, Image.BILINEAR)).transpose(2, 0, 1)[None]
scores, decision, label = session.run(None, {{"image": pixels}})
```

PIL's resize is close to, not identical with, TransferScope's (torch's antialiased resize); use
`core.features.Preprocess` for the exact pixels. The graph runs the backbone in fp32; the run was scored with
{info['precision']['run']} features, so with bf16 runs a few near-tie images may decide differently.
"""


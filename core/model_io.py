"""A run's model as named arrays plus JSON in one safetensors file: what predicting needs, never a pickle.

Loading a pickle runs whatever code it names, so models leave the machine (bundles) and come back (predict)
only as numbers. Three kinds cover every approach:

- `linear` (head, logreg, LinearSVC): standardise with `mean`/`scale`, then `weight @ x + bias`;
- `svm` (SVC, any kernel): standardise, kernel against `support_vectors` (sklearn's `dual_coef`,
  `intercept`, `n_support`), one-vs-one decisions turned into sklearn's one-vs-rest scores;
- `kernel` (the SVM's Nystroem approximation): standardise, kernel against the Nystroem components
  (`support_vectors`), then `weight @ k + bias` (the ridge's weights with the Nystroem normalisation folded in);
- `finetune`: the fine-tune checkpoint's tensors (`head.*`, the trained blocks' `body.*`) and its plain values.

`classes` maps the model's output columns to class indices (classes absent from training score -inf).
`read_model` checks the kind, the format version, every array's name and shape before anything uses them.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from core.errors import RunStoreError

MODEL_FILE = "model.safetensors"
FORMAT_VERSION = 1
MAX_MODEL_BYTES = 512 * 1024**2
_META_KEY = "transferscope"
KINDS = ("linear", "svm", "kernel", "finetune")
SVM_KERNELS = ("rbf", "linear", "poly", "sigmoid")


@dataclass(frozen=True)
class StoredModel:
    """A model as arrays (`float64` for the probes, the checkpoint's dtype for fine-tunes) and JSON `meta`."""

    kind: str
    arrays: dict
    meta: dict

    @property
    def n_classes(self) -> int:
        return int(self.meta["n_classes"])


def model_state(model) -> StoredModel:
    """The arrays and meta data of a fitted estimator of core.classifiers or a fine-tune checkpoint dict."""
    from core.classifiers import LinearHead, LogisticProbe, SvmClassifier

    if isinstance(model, (LinearHead, LogisticProbe)):
        layer = model.layer_
        return _linear(model.mean_, model.std_, layer.weight.detach().numpy(), layer.bias.detach().numpy(),
                       np.arange(model.n_classes_), model.n_classes_)
    if isinstance(model, SvmClassifier):
        return _svm_state(model)
    if isinstance(model, dict) and "head" in model:
        return finetune_state(model)
    raise RunStoreError(f"cannot store a {type(model).__name__} as arrays; TransferScope stores its own "
                        "estimators (SvmClassifier, LinearHead, LogisticProbe) and fine-tune checkpoints")


def _linear(mean, scale, weight, bias, classes, n_classes) -> StoredModel:
    arrays = {"mean": mean, "scale": scale, "weight": weight, "bias": bias, "classes": np.asarray(classes)}
    return StoredModel("linear", {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()},
                       {"n_classes": int(n_classes)})


def _svm_state(svm) -> StoredModel:
    """LinearSVC as a linear model; SVC (direct pipeline or fit on a precomputed kernel) as support vectors; the
    Nystroem approximation as a kernel expansion over its components."""
    if svm.nystroem_ is not None:
        return _kernel_expansion(svm)
    if svm.support_X_ is not None:  # fit on the precomputed rbf kernel: support rows kept already scaled
        svc, scaler, vectors, gamma, kernel = svm.model_, svm.scaler_, svm.support_X_, svm.gamma_, "rbf"
    else:
        scaler, svc = svm.model_[0], svm.model_[-1]
        if not hasattr(svc, "support_vectors_"):  # LinearSVC: one-vs-rest linear scores
            weight, bias = svc.coef_, svc.intercept_
            if len(svc.classes_) == 2:  # sklearn returns one column for two classes; SvmClassifier stacks [-d, d]
                weight, bias = np.concatenate([-weight, weight]), np.concatenate([-bias, bias])
            return _linear(scaler.mean_, scaler.scale_, weight, bias, svc.classes_, svm.n_classes_)
        vectors, gamma, kernel = svc.support_vectors_, svm.gamma_, svc.kernel
    arrays = {"mean": scaler.mean_, "scale": scaler.scale_, "support_vectors": vectors,
              "dual_coef": svc.dual_coef_, "intercept": svc.intercept_, "n_support": svc.n_support_,
              "classes": svc.classes_}
    meta = {"n_classes": int(svm.n_classes_), "kernel": kernel, "gamma": float(gamma), "coef0": float(svc.coef0),
            "degree": int(svc.degree)}
    return StoredModel("svm", {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}, meta)


def _kernel_expansion(svm) -> StoredModel:
    """Ridge scores on Nystroem features, K(x, components) @ normalization.T @ coef.T + intercept, as one kernel
    expansion: weight = coef @ normalization."""
    ridge, scaler, nystroem = svm.model_, svm.nystroem_.scaler, svm.nystroem_.nystroem
    weight, bias = np.atleast_2d(ridge.coef_) @ nystroem.normalization_, np.atleast_1d(ridge.intercept_)
    if len(ridge.classes_) == 2:  # one column for two classes; SvmClassifier stacks [-d, d]
        weight, bias = np.concatenate([-weight, weight]), np.concatenate([-bias, bias])
    arrays = {"mean": scaler.mean_, "scale": scaler.scale_, "support_vectors": nystroem.components_,
              "weight": weight, "bias": bias, "classes": ridge.classes_}
    meta = {"n_classes": int(svm.n_classes_), "kernel": nystroem.kernel, "gamma": float(svm.gamma_), "coef0": 0.0,
            "degree": 3}
    return StoredModel("kernel", {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}, meta)


def finetune_state(checkpoint: dict) -> StoredModel:
    """A fine-tune checkpoint (`core.finetune.make_checkpoint`: `head` and the trained blocks' `body` state, plus
    plain values) as arrays `head.<name>` and `body.<name>` and its plain values. With `finetune_modules`, the one
    place that reads the checkpoint's shape."""
    arrays = {f"{part}.{k}": v.detach().cpu().numpy() for part in ("head", "body") for k, v in checkpoint[part].items()}
    config = {k: v for k, v in checkpoint["config"].items() if isinstance(v, (str, int, float, bool, type(None)))}
    plain = {k: checkpoint[k] for k in ("format", "backbone", "pool", "trainable_stages", "n_classes", "epoch")}
    return StoredModel("finetune", arrays, {**plain, "config": config})


def model_bytes(stored: StoredModel) -> bytes:
    """The safetensors file of `stored`: its arrays, and its kind and meta as JSON in the header."""
    from safetensors.numpy import save

    meta = {"format": FORMAT_VERSION, "kind": stored.kind, **stored.meta}
    return save({k: np.ascontiguousarray(v) for k, v in stored.arrays.items()},
                metadata={_META_KEY: json.dumps(meta)})


def read_model(path_or_bytes, where: str = "the model file") -> StoredModel:
    """The stored model of a file path or bytes, validated (kind, format version, array names and shapes).

    >>> read_model("cache/runs/<run_id>/model.safetensors").kind  # doctest: +SKIP
    'svm'
    """
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else _read_bytes(path_or_bytes, where)
    meta = _header_meta(data, where)
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        arrays = load(data)
    except (SafetensorError, ValueError) as err:
        raise RunStoreError(f"{where} is damaged ({err}); retrain the run or import it again") from None
    stored = StoredModel(meta.pop("kind"), arrays, meta)
    _check_arrays(stored, where)
    return stored


def _read_bytes(path, where: str) -> bytes:
    try:
        return open(path, "rb").read()
    except FileNotFoundError:
        raise RunStoreError(f"{where} is missing") from None
    except OSError as err:
        raise RunStoreError(f"{where} cannot be read: {err.strerror or err}") from None


def _header_meta(data: bytes, where: str) -> dict:
    """The JSON meta data in the safetensors header (8-byte little-endian length, then JSON), checked."""
    damaged = f"{where} is not a TransferScope model file (a safetensors file with its meta data)"
    if len(data) < 8 or len(data) > MAX_MODEL_BYTES:
        raise RunStoreError(f"{damaged}; it has {len(data)} bytes")
    (size,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + size]) if size <= len(data) - 8 else None
        meta = json.loads(header["__metadata__"][_META_KEY])
    except (ValueError, TypeError, KeyError):
        raise RunStoreError(f"{damaged}; retrain the run or import a bundle exported by this version") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        version = meta.get("format") if isinstance(meta, dict) else None
        raise RunStoreError(f"{where} has model format {version!r}, but this TransferScope reads {FORMAT_VERSION}; "
                            "it was stored by another version: retrain the run, or export it from a matching version")
    if meta.get("kind") not in KINDS or not isinstance(meta.get("n_classes"), int) or meta["n_classes"] < 2:
        raise RunStoreError(f"{damaged}: kind {meta.get('kind')!r:.40}, n_classes {meta.get('n_classes')!r:.40}")
    return meta


def _check_arrays(stored: StoredModel, where: str) -> None:
    """Every array the kind needs, with consistent shapes and finite values; a clear error otherwise."""
    a, k = stored.arrays, stored.n_classes
    problem = None
    if stored.kind == "finetune":
        weight, bias = a.get("head.weight"), a.get("head.bias")
        if weight is None or bias is None or weight.shape[0] != k or bias.shape != (k,):
            problem = "its head weights are missing or do not match its classes"
        elif not isinstance(stored.meta.get("config"), dict) or "backbone" not in stored.meta["config"]:
            problem = "its fine-tune config (backbone, pool, precision) is missing"
    else:
        needed = ("mean", "scale", "classes") + {
            "linear": ("weight", "bias"), "kernel": ("support_vectors", "weight", "bias"),
            "svm": ("support_vectors", "dual_coef", "intercept", "n_support")}[stored.kind]
        missing = [name for name in needed if name not in a]
        problem = f"it lacks {', '.join(missing)}" if missing else _shape_problem(stored)
    if problem is None and not all(np.isfinite(v).all() for v in a.values() if v.dtype.kind == "f"):
        problem = "it holds NaN or infinite numbers"
    if problem:
        raise RunStoreError(f"{where} is damaged: {problem}; retrain the run or import it again")


def _shape_problem(stored: StoredModel) -> str | None:
    a, k = stored.arrays, stored.n_classes
    d, classes = a["mean"].shape[0], a["classes"]
    if a["mean"].shape != (d,) or a["scale"].shape != (d,) or (a["scale"] == 0).any():
        return "its standardisation (mean, scale) is inconsistent"
    if classes.ndim != 1 or len(classes) < 2 or len(set(classes.tolist())) != len(classes) \
            or not all(0 <= c < k and c == int(c) for c in classes):
        return f"its class indices {classes.tolist()!r:.80} do not fit {k} classes"
    m = len(classes)
    if stored.kind == "linear":
        return None if a["weight"].shape == (m, d) and a["bias"].shape == (m,) else "its weights have wrong shapes"
    n_sv, n_pairs = a["support_vectors"].shape[0], m * (m - 1) // 2
    if stored.kind == "kernel":
        if a["support_vectors"].shape != (n_sv, d) or a["weight"].shape != (m, n_sv) or a["bias"].shape != (m,):
            return "its kernel components and weights have inconsistent shapes"
    elif (a["support_vectors"].shape != (n_sv, d) or a["dual_coef"].shape != (m - 1, n_sv)
            or a["intercept"].shape != (n_pairs,) or a["n_support"].shape != (m,) or a["n_support"].sum() != n_sv):
        return "its support vectors and coefficients have inconsistent shapes"
    if stored.meta.get("kernel") not in SVM_KERNELS or not isinstance(stored.meta.get("gamma"), float):
        return f"its kernel {stored.meta.get('kernel')!r:.40} is not one of {', '.join(SVM_KERNELS)}"
    return None


def finetune_modules(stored: StoredModel):
    """(the backbone's features with the run's trained blocks, or None where the backbone stayed frozen; the head)
    of a stored fine-tune, rebuilt by `core.finetune.load_finetuned`."""
    import torch

    from core.finetune import load_finetuned

    parts = {part: {k.removeprefix(f"{part}."): torch.from_numpy(v) for k, v in stored.arrays.items()
                    if k.startswith(f"{part}.")} for part in ("head", "body")}
    try:
        features, head = load_finetuned({**stored.meta, **parts})  # a Sequential of the two
    except (RuntimeError, KeyError) as err:
        raise RunStoreError(f"the fine-tune weights do not fit the backbone's layers ({str(err)[:200]}); "
                            "retrain the run") from None
    return (features if parts["body"] else None), head

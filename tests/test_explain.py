"""Heat maps: the exact CAM of linear models, the contrast map, the SVM's differentiable scores."""
import dataclasses

import numpy as np
import pytest
import torch

from builders import make_record
from core.classifiers import LinearHead, LogisticProbe, SvmClassifier, rbf_kernels
from core.errors import ConfigError
from core.explain import (EXACT, GRADIENT, contrast, explain_images, feature_map, linear_cam, linear_weights,
                          load_backbone, overlay, svm_scores_torch)
from core.records import RunRecord


def _record(n_classes: int, image_size: int, tau: float = 0.0, offsets=None, pool: str = "avg") -> RunRecord:
    counts = [40 - 3 * i for i in range(n_classes)]
    return make_record(classes=[f"c{i}" for i in range(n_classes)], train_counts=counts, y_true=range(n_classes),
                       y_pred=range(n_classes), tau=tau, offsets=offsets,
                       backbone={"name": "efficientnet_lite0", "pool": pool, "image_size": image_size})


def test_contrast_changes_sign_where_the_classes_differ():
    """Channel 0 (class 0's evidence) fills the left half, channel 1 (class 1's) the right half."""
    fmap = np.zeros((2, 2, 4))
    fmap[0, :, :2], fmap[1, :, 2:] = 1.0, 1.0
    maps = linear_cam(fmap, np.eye(2))
    diff = contrast(maps, predicted=0, true=1)
    assert (diff[:, :2] > 0).all() and (diff[:, 2:] < 0).all()
    assert (contrast(maps, predicted=1, true=0) == -diff).all()


def test_linear_cam_refuses_mismatched_shapes():
    with pytest.raises(ConfigError, match="same C"):
        linear_cam(np.zeros((3, 2, 2)), np.zeros((2, 4)))


@pytest.mark.parametrize("make", [lambda **kw: LogisticProbe(C=0.1, **kw), lambda **kw: LinearHead(epochs=3, **kw)])
def test_exact_cam_mean_is_the_class_score_minus_the_bias(make, demo_dataset, image_size):
    """On the real backbone: the pooled vector is the map's mean, and each map's mean is score - bias."""
    rng = np.random.default_rng(0)
    n_classes = len(demo_dataset.classes)
    X, y = rng.normal(1.0, 0.5, size=(80, 1280)).astype(np.float32), np.arange(80) % n_classes
    model = make(n_classes=n_classes).fit(X, y)
    record = _record(n_classes, image_size)
    paths = [s.path for s in demo_dataset.test[:3]]
    explanations, _ = explain_images(record, model, paths, [s.label for s in demo_dataset.test[:3]])
    weight, bias = linear_weights(model)
    backbone, preprocess = load_backbone(record, model)
    for ex in explanations:
        assert ex.method == EXACT
        image = torch.from_numpy(ex.image).permute(2, 0, 1)
        pooled = feature_map(backbone, image).double().mean(dim=(1, 2)).numpy()
        with torch.inference_mode():
            backbone_pooled = backbone.features(image.unsqueeze(0))[0].double().numpy()
        np.testing.assert_allclose(pooled, backbone_pooled, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ex.scores, model.decision_function(pooled[None])[0], rtol=1e-4, atol=1e-4)
        assert ex.predicted_map.mean() == pytest.approx(ex.scores[ex.predicted] - bias[ex.predicted], abs=1e-6)
        if ex.true != ex.predicted:
            assert ex.contrast_map.mean() == pytest.approx(ex.margin - (bias[ex.predicted] - bias[ex.true]), abs=1e-6)


def test_prior_adjustment_is_reported_as_a_number(demo_dataset, image_size):
    n_classes = len(demo_dataset.classes)
    rng = np.random.default_rng(1)
    model = LogisticProbe(n_classes=n_classes).fit(rng.normal(size=(50, 1280)), np.arange(50) % n_classes)
    offsets = [0.0] * n_classes
    offsets[3] = 2.5
    record = _record(n_classes, image_size, tau=1.0, offsets=offsets)
    sample = demo_dataset.test[0]
    (ex,), _ = explain_images(record, model, [sample.path], [3])
    counts = np.array(record.dataset.train_counts, dtype=float)
    shift = -np.log(counts / counts.sum()) + np.array(offsets)
    assert ex.prior_margin == pytest.approx(shift[ex.predicted] - shift[3])
    assert ex.predicted == int(np.argmax(ex.scores + shift))


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("precomputed", [False, True])
def test_svm_torch_scores_match_scikit_learn(n_classes, precomputed):
    rng = np.random.default_rng(n_classes)
    X, y = rng.normal(size=(60, 6)).astype(np.float32), np.arange(60) % n_classes
    X[:, 0] += y
    svm = SvmClassifier(n_classes=n_classes + 1).fit(X, y, kernels=rbf_kernels(X) if precomputed else None)
    expected = svm.decision_function(X[:6])
    got = np.stack([svm_scores_torch(svm, torch.from_numpy(x.astype(np.float64))).detach().numpy() for x in X[:6]])
    seen = np.isfinite(expected)
    assert (np.isinf(got) == ~seen).all()
    np.testing.assert_allclose(got[seen], expected[seen], atol=1e-6)


def test_linear_svm_is_explained_exactly():
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(60, 6)).astype(np.float32), np.arange(60) % 3
    svm = SvmClassifier(kernel="linear", n_classes=3).fit(X, y)
    weight, bias = linear_weights(svm)
    np.testing.assert_allclose(X @ weight.T + bias, svm.decision_function(X), atol=1e-5)


def test_rbf_svm_gets_grad_cam(demo_dataset, image_size):
    rng = np.random.default_rng(2)
    n_classes = len(demo_dataset.classes)
    X, y = rng.normal(1.0, 0.5, size=(60, 1280)).astype(np.float32), np.arange(60) % n_classes
    svm = SvmClassifier(n_classes=n_classes).fit(X, y)
    (ex,), _ = explain_images(_record(n_classes, image_size), svm, [demo_dataset.test[0].path], [1])
    assert ex.method == GRADIENT and np.isfinite(ex.predicted_map).all()
    assert ex.predicted == int(np.argmax(ex.scores))


def test_max_pooled_and_fused_runs_are_refused_with_a_reason():
    with pytest.raises(ConfigError, match="average pooling"):
        load_backbone(_record(3, 32, pool="max"))
    fused = dataclasses.replace(_record(3, 32), backbone={"name": "efficientnet_lite0+efficientnet_lite2", "pool": "avg"})
    with pytest.raises(ConfigError, match="fuses"):
        load_backbone(fused)


def test_overlay_colours_positive_red_and_negative_blue():
    image = np.full((4, 4, 3), 128, dtype=np.uint8)
    heat = np.array([[1.0, -1.0]])
    out = overlay(image, heat).astype(int)
    assert out[0, 0, 0] > out[0, 0, 2] and out[0, -1, 2] > out[0, -1, 0]
    assert out.shape == image.shape and out.dtype == np.int64

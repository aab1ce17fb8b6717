"""SVM and linear head on feature matrices: accuracy, class weights, history, per-epoch scores, validation."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs, make_classification
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import RidgeClassifier
from sklearn.svm import SVC

import core.classifiers
from core.classifiers import (EXACT_SVM_MAX_TRAIN, SVM_MEMORY_SHARE, KernelCache, LinearHead, SvmClassifier,
                              check_features, choose_svm, exact_svm_bytes, kernel_bytes, nystroem_features,
                              rbf_kernels)
from core.errors import ConfigError
from core.weights import class_weights


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=400, centers=4, n_features=16, cluster_std=1.0, random_state=0)
    return X[:300].astype(np.float32), y[:300], X[300:].astype(np.float32), y[300:]


def imbalanced(n_major, n_minor, seed, shift=1.2, dim=8):
    """Two overlapping Gaussians: class 0 is common, class 1 is rare and shifted by `shift` per dim."""
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(0, 1, (n_major, dim)), rng.normal(shift / np.sqrt(dim) * 2, 1, (n_minor, dim))])
    y = np.array([0] * n_major + [1] * n_minor)
    return X.astype(np.float32), y


def minority_recall(model, X, y, **kw):
    pred = model.predict(X, **kw)
    return float((pred[y == 1] == 1).mean())


# ---------------------------------------------------------------- accuracy on separable data


@pytest.mark.parametrize("model", [SvmClassifier(), SvmClassifier(kernel="linear"), LinearHead(epochs=30)],
                         ids=["svm-rbf", "svm-linear", "head"])
def test_separable_blobs_are_learned(blobs, model):
    X, y, X_test, y_test = blobs
    assert model.fit(X, y) is model
    assert (model.predict(X_test) == y_test).mean() >= 0.97
    scores = model.decision_function(X_test)
    assert scores.shape == (len(X_test), 4)
    assert (scores.argmax(1) == model.predict(X_test)).all()
    assert model.score(X_test, y_test) >= 0.97  # sklearn's ClassifierMixin.score works


def test_svm_binary_scores_have_two_columns():
    X, y = make_blobs(n_samples=100, centers=2, n_features=4, random_state=1)
    svm = SvmClassifier().fit(X, y)
    scores = svm.decision_function(X)
    assert scores.shape == (100, 2)
    assert (svm.predict(X) == y).mean() > 0.95


def test_svm_class_absent_from_training_is_never_predicted():
    X, y = make_blobs(n_samples=90, centers=3, n_features=4, random_state=2)
    y = np.where(y == 1, 2, y)  # labels 0 and 2 only
    svm = SvmClassifier(n_classes=4).fit(X, y)
    scores = svm.decision_function(X)
    assert scores.shape == (90, 4)
    assert np.isneginf(scores[:, [1, 3]]).all()
    assert set(svm.predict(X)) <= {0, 2}


def test_svm_follows_its_rule_at_the_thresholds():
    """Exact up to EXACT_SVM_MAX_TRAIN images while its kernel fits SVM_MEMORY_SHARE of the memory, else the
    Nystroem approximation, named as one and saying why; a linear kernel is LinearSVC at any size."""
    n, plenty = EXACT_SVM_MAX_TRAIN, 10**15
    at, past = choose_svm("rbf", n, memory_bytes=plenty), choose_svm("rbf", n + 1, memory_bytes=plenty)
    assert at.exact and at.model == "SVC (rbf kernel)" and at.reason.startswith("exact:")
    assert not past.exact and past.model.startswith("Nystroem approximation of the rbf kernel")
    assert past.reason.startswith("approximate:") and f"{n + 1:,} training images > {n:,}" in past.reason
    fits = int(exact_svm_bytes(4000) / SVM_MEMORY_SHARE) + 1
    assert choose_svm("rbf", 4000, memory_bytes=fits).exact
    short = choose_svm("rbf", 4000, memory_bytes=fits - 2)
    assert not short.exact and "over 50% of the memory available" in short.reason
    assert choose_svm("linear", 10 * n, memory_bytes=1).model == "LinearSVC"
    assert choose_svm("rbf", 10, solver="nystroem").reason == "nystroem, as asked"


def test_past_the_threshold_the_svm_fits_its_nystroem_approximation(blobs, monkeypatch):
    X, y, X_test, y_test = blobs
    monkeypatch.setattr(core.classifiers, "EXACT_SVM_MAX_TRAIN", 100)
    big = SvmClassifier().fit(X, y)  # 300 training images > 100
    assert isinstance(big.model_, RidgeClassifier) and not big.exact_
    assert big.model_name_ == "Nystroem approximation of the rbf kernel (300 components) + RidgeClassifier"
    assert (big.predict(X_test) == y_test).mean() >= 0.95
    assert big.decision_function(X_test).shape == (len(X_test), 4) and big.support_counts(y) is None
    exact = SvmClassifier(solver="exact").fit(X, y)
    assert isinstance(exact.model_[-1], SVC) and exact.exact_
    assert (big.predict(X_test) == exact.predict(X_test)).mean() >= 0.95


def test_nystroem_features_reused_fit_like_a_fresh_approximation(four_imbalanced_classes):
    X, y, X_test = four_imbalanced_classes
    weights = [1.0, 2.0, 5.0, 9.0]
    fresh = SvmClassifier(solver="nystroem", class_weight=weights).fit(X, y)
    reused = SvmClassifier(solver="nystroem", class_weight=weights).fit(X, y, kernels=nystroem_features(X))
    np.testing.assert_allclose(reused.decision_function(X_test), fresh.decision_function(X_test), atol=1e-8)
    cache = KernelCache()
    assert cache.get("a", X, exact=False) is cache.get("a", X, exact=False)
    assert isinstance(cache.get("a", X), core.classifiers.RbfKernels)  # the exact kernel, kept apart


@pytest.mark.parametrize("solver", ["exact", "nystroem"])
@pytest.mark.parametrize("weights", [None, [1.0, 0.0, 5.0, 9.0]], ids=["unweighted", "a class at weight 0"])
def test_held_out_scores_read_the_kernel_computed_once(four_imbalanced_classes, solver, weights):
    X, y, _ = four_imbalanced_classes
    kernels = rbf_kernels(X) if solver == "exact" else nystroem_features(X)
    fit_index, val_index = np.arange(0, 500, 3), np.setdiff1d(np.arange(500), np.arange(0, 500, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class at weight 0 is left out, with a warning
        fold = SvmClassifier(solver=solver, class_weight=weights).fit(X[fit_index], y[fit_index],
                                                                      kernels=kernels.fold(fit_index))
    np.testing.assert_allclose(fold.held_out_scores(kernels, fit_index, val_index),
                               fold.decision_function(X[val_index]), atol=1e-8)


def test_a_large_kernel_is_computed_in_blocks(four_imbalanced_classes, monkeypatch):
    X, y, X_test = four_imbalanced_classes
    whole = rbf_kernels(X)
    monkeypatch.setattr(core.classifiers, "KERNEL_BLOCK_BYTES", 8 * len(X) * 7)  # 7 rows a block
    blocks = rbf_kernels(X)
    np.testing.assert_allclose(blocks.train, whole.train, atol=1e-12)
    svm = SvmClassifier().fit(X, y, kernels=whole)
    np.testing.assert_allclose(svm.decision_function(X_test), SvmClassifier().fit(X, y).decision_function(X_test),
                               atol=1e-8)


# ---------------------------------------------------------------- precomputed RBF kernels


@pytest.fixture(scope="module")
def four_imbalanced_classes():
    X, y = make_classification(n_samples=700, n_features=40, n_informative=10, n_classes=4,
                               weights=[0.6, 0.25, 0.1, 0.05], random_state=0)
    X = X.astype(np.float32)
    return X[:500], y[:500], X[500:]


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 5.0, 9.0]], ids=["unweighted", "weighted"])
def test_kernel_reuse_predicts_like_the_direct_svc(four_imbalanced_classes, weights):
    X, y, X_test = four_imbalanced_classes
    kernels = rbf_kernels(X)
    direct = SvmClassifier(class_weight=weights).fit(X, y)
    reused = SvmClassifier(class_weight=weights).fit(X, y, kernels=kernels)
    assert isinstance(reused.model_, SVC) and reused.model_.kernel == "precomputed"
    assert kernels.gamma == pytest.approx(direct.model_[-1]._gamma, rel=1e-12)
    np.testing.assert_allclose(reused.decision_function(X_test), direct.decision_function(X_test), atol=1e-8)
    assert np.array_equal(reused.predict(X_test), direct.predict(X_test))


def test_a_class_weight_change_changes_the_precomputed_fit(four_imbalanced_classes):
    X, y, X_test = four_imbalanced_classes
    kernels = rbf_kernels(X)
    plain = SvmClassifier().fit(X, y, kernels=kernels)
    rare_heavy = SvmClassifier(class_weight=[1.0, 1.0, 1.0, 20.0]).fit(X, y, kernels=kernels)
    assert (rare_heavy.predict(X_test) == 3).sum() > (plain.predict(X_test) == 3).sum()


def test_kernel_cache_computes_each_set_once_within_its_budget(four_imbalanced_classes, monkeypatch):
    X, _, _ = four_imbalanced_classes
    calls = []
    monkeypatch.setattr(core.classifiers, "rbf_kernels", lambda *a: calls.append(a) or rbf_kernels(*a))
    one_set = kernel_bytes(len(X))
    cache = KernelCache(budget_bytes=one_set)
    first = cache.get("a", X)
    assert cache.get("a", X) is first and len(calls) == 1
    assert first.nbytes == one_set and first.train.shape == (500, 500) and first.seconds > 0
    cache.get("b", X[::-1])  # a second set pushes the first out of a one-set budget
    assert cache.get("a", X) is not first and len(calls) == 3
    assert KernelCache(budget_bytes=one_set - 1).get("a", X) is None  # over budget: fit directly


def test_kernels_for_other_samples_are_refused(four_imbalanced_classes):
    X, y, _ = four_imbalanced_classes
    with pytest.raises(ConfigError, match="500 training samples but 400"):
        SvmClassifier().fit(X[:400], y[:400], kernels=rbf_kernels(X))


def test_a_direct_refit_forgets_the_precomputed_kernels(four_imbalanced_classes):
    X, y, X_test = four_imbalanced_classes
    svm = SvmClassifier().fit(X, y, kernels=rbf_kernels(X)).fit(X[:400], y[:400])
    assert svm.support_X_ is None
    fresh = SvmClassifier().fit(X[:400], y[:400])
    np.testing.assert_allclose(svm.decision_function(X_test), fresh.decision_function(X_test))


# ---------------------------------------------------------------- class weights


@pytest.mark.parametrize("make_model", [SvmClassifier, lambda **kw: LinearHead(epochs=40, **kw)], ids=["svm", "head"])
def test_balanced_weights_raise_minority_recall(make_model):
    X, y = imbalanced(400, 20, seed=0)
    X_test, y_test = imbalanced(300, 300, seed=1)
    plain = make_model().fit(X, y)
    weighted = make_model(class_weight=class_weights("balanced", np.bincount(y))).fit(X, y)
    plain_recall, weighted_recall = minority_recall(plain, X_test, y_test), minority_recall(weighted, X_test, y_test)
    assert weighted_recall >= plain_recall + 0.2, (plain_recall, weighted_recall)


def test_logit_adjustment_raises_minority_recall_without_refit():
    X, y = imbalanced(400, 20, seed=0)
    X_test, y_test = imbalanced(300, 300, seed=1)
    head = LinearHead(epochs=40).fit(X, y)
    assert head.class_prior_ == pytest.approx([400 / 420, 20 / 420])
    assert minority_recall(head, X_test, y_test, tau=1.0) >= minority_recall(head, X_test, y_test) + 0.2
    assert np.array_equal(head.decision_function(X_test, tau=0.0), head.decision_function(X_test))


# ---------------------------------------------------------------- history and per-epoch scores


def test_head_history_has_a_row_per_epoch(blobs):
    X, y, X_test, y_test = blobs
    head = LinearHead(epochs=4).fit(X, y, eval_set=(X_test, y_test))
    assert [r["epoch"] for r in head.history_] == [1, 2, 3, 4]
    for row in head.history_:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "seconds"):
            assert key in row and np.isfinite(row[key])
        assert 0 <= row["train_acc"] <= 1 and 0 <= row["test_acc"] <= 1
    assert head.history_[-1]["train_loss"] < head.history_[0]["train_loss"]


def test_head_progress_reports_epochs(blobs):
    X, y, _, _ = blobs
    calls = []
    LinearHead(epochs=3).fit(X, y, progress=lambda *a: calls.append(a))
    assert calls == [("train head (epochs)", 1, 3), ("train head (epochs)", 2, 3), ("train head (epochs)", 3, 3)]


def test_each_epochs_scores_are_those_of_a_head_trained_that_many_epochs(blobs):
    """The folds choose the epoch count from these scores: epoch e's must be what the final head of e epochs gives."""
    X, y, X_test, _ = blobs
    weights = [1.0, 2.0, 1.0, 3.0]
    long = LinearHead(epochs=6, class_weight=weights, seed=3).fit(X, y)
    staged = long.epoch_decision_function(X_test)
    assert staged.shape == (len(X_test), 6, 4)
    for epochs in (1, 4, 6):
        short = LinearHead(epochs=epochs, class_weight=weights, seed=3).fit(X, y)
        np.testing.assert_allclose(staged[:, epochs - 1], short.decision_function(X_test), rtol=1e-5, atol=1e-5)


def test_the_head_clones_with_its_settings_for_cross_validation(blobs):
    """Hyper-parameters live in __init__, so scikit-learn's clone / cross_val_predict run the folds."""
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_predict

    X, y, _, _ = blobs
    X, y = np.vstack([X, X[:1] + 5]), np.append(y, 4)  # class 4: one image, so one fold trains without it
    head = LinearHead(epochs=2, class_weight=np.array([1.0, 2.0, 3.0, 4.0, 1.0]), n_classes=5, la_tau=0.5)
    copy = clone(head)
    assert copy.get_params()["la_tau"] == 0.5 and list(copy.class_weight) == [1.0, 2.0, 3.0, 4.0, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # sklearn warns when a fold's model lacks a class column
        oof = cross_val_predict(head, X, y, cv=3, method="decision_function")
    assert oof.shape == (len(X), 5)  # every class's column, even one no fold has


def test_head_leaves_the_global_torch_rng_alone(blobs):
    X, y, _, _ = blobs
    torch.manual_seed(123)
    state = torch.get_rng_state()
    LinearHead(epochs=2, seed=5).fit(X, y)
    assert torch.equal(torch.get_rng_state(), state)


def test_head_batch_size_sets_the_optimizer_steps(blobs, monkeypatch):
    X, y, _, _ = blobs
    steps = []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: steps.append(1))
    LinearHead(epochs=1, batch_size=10).fit(X, y)
    assert len(steps) == 30  # 300 images / 10 per batch


def test_class_weight_acts_even_when_every_batch_holds_one_class():
    """Batches of one image: torch's weighted mean cancelled the weight; the weighted sum / batch size keeps it."""
    X, y = imbalanced(80, 12, seed=3)
    plain = LinearHead(epochs=3, batch_size=1, class_weight=[1.0, 1.0]).fit(X, y)
    heavy = LinearHead(epochs=3, batch_size=1, class_weight=[1.0, 30.0]).fit(X, y)
    assert minority_recall(heavy, X, y) > minority_recall(plain, X, y)


def test_head_fits_a_small_dataset():
    """5 classes x 4 images is a realistic first try."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 8)).astype(np.float32), np.repeat(np.arange(5), 4)
    X[np.arange(20), y] += 4
    head = LinearHead(epochs=5).fit(X, y)
    assert len(head.history_) >= 1
    assert head.predict(X).shape == (20,)


def test_head_is_deterministic_for_a_seed(blobs):
    X, y, X_test, _ = blobs
    a = LinearHead(epochs=3, seed=7).fit(X, y).decision_function(X_test)
    b = LinearHead(epochs=3, seed=7).fit(X, y).decision_function(X_test)
    assert np.array_equal(a, b)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("model", [SvmClassifier(), LinearHead()], ids=["svm", "head"])
def test_predict_before_fit_raises(model):
    with pytest.raises(NotFittedError):
        model.predict(np.zeros((2, 3)))


@pytest.mark.parametrize("model", [SvmClassifier(), LinearHead(epochs=2)], ids=["svm", "head"])
def test_feature_count_mismatch_names_both_numbers(blobs, model):
    X, y, _, _ = blobs
    model.fit(X, y)
    with pytest.raises(ConfigError) as err:
        model.predict(np.zeros((3, 12), dtype=np.float32))
    assert "12" in str(err.value) and "16" in str(err.value)


@pytest.mark.parametrize("model", [SvmClassifier(), LinearHead(epochs=2)], ids=["svm", "head"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_raise(blobs, model, bad):
    X, y, X_test, _ = blobs
    broken = X.copy()
    broken[3, 5] = bad
    with pytest.raises(ConfigError, match="NaN or infinite"):
        model.fit(broken, y)
    model.fit(X, y)
    broken_test = X_test.copy()
    broken_test[0, 0] = bad
    with pytest.raises(ConfigError, match="NaN or infinite"):
        model.predict(broken_test)


def test_check_features_rejects_bad_shapes():
    with pytest.raises(ConfigError, match=r"\(5,\)"):
        check_features(np.zeros(5))
    with pytest.raises(ConfigError, match="non-empty"):
        check_features(np.zeros((0, 3)))
    with pytest.raises(ConfigError, match=r"labels must have shape \(4,\)"):
        check_features(np.zeros((4, 3)), [0, 1])
    X, y = check_features([[1, 2], [3, 4]], [0, 1])
    assert X.dtype == np.float32 and y.tolist() == [0, 1]


def test_head_rejects_zero_epochs(blobs):
    X, y, _, _ = blobs
    with pytest.raises(ConfigError, match="epochs"):
        LinearHead(epochs=0).fit(X, y)

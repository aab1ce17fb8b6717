"""Classifiers on cached features: an SVM (scikit-learn) and a new linear head (torch)."""
from __future__ import annotations

import math
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.validation import check_is_fitted

from core.errors import ClassWeightError, ConfigError
from core.remedies import balanced_batches, log_prior
from core.weights import adjust_logits, weighted_cross_entropy

LINEAR_SVM_ABOVE = 20_000  # samples; kernel SVC scales ~n^2, LinearSVC stays fast
KERNEL_BUDGET_BYTES = 1 << 30  # RBF kernel matrices kept in memory per process, all feature sets together


def check_features(X, y=None, n_features: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate a feature matrix `(n_samples, n_features)` and optional integer labels."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ConfigError(f"features must be a non-empty 2-D array (n_samples, n_features), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ConfigError("features contain NaN or infinite values; re-extract them (delete the cache entry)")
    if n_features is not None and X.shape[1] != n_features:
        raise ConfigError(f"features have {X.shape[1]} columns but this model was fit on {n_features}; "
                          "re-extract with the same backbone or refit")
    if y is not None:
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise ConfigError(f"labels must have shape ({X.shape[0]},) to match the features, got {y.shape}")
    return X, y


def _weight_dict(class_weight, n_classes: int) -> dict | None:
    return None if class_weight is None else {i: float(w) for i, w in enumerate(np.asarray(class_weight)[:n_classes])}


def _set_classes(model, y) -> None:
    """`n_classes_` (the `n_classes` given, else from `y`) and `classes_` = every class index, so that
    scikit-learn's `cross_val_predict` keeps one score column per class even in a fold that misses one."""
    model.n_classes_ = model.n_classes or int(y.max()) + 1
    model.classes_ = np.arange(model.n_classes_)


@dataclass(frozen=True)
class RbfKernels:
    """The RBF kernel of standardized training features with sklearn's gamma='scale', reusable across class weights.

    `train` is `(n_train, n_train)` and depends on neither class weights nor C; `seconds` is the time it took to
    compute, which every fit on it costs when it stands alone.
    """

    scaler: StandardScaler
    gamma: float
    train: np.ndarray
    seconds: float

    @property
    def nbytes(self) -> int:
        return self.train.nbytes

    def fold(self, fit_index) -> RbfKernels:
        """The kernel of a cross-validation fold's fit rows, sliced from this one (no recomputation).

        The scaler and gamma stay those of all training rows (no labels enter them).
        """
        return RbfKernels(self.scaler, self.gamma, self.train[np.ix_(fit_index, fit_index)], 0.0)


def kernel_bytes(n_train: int) -> int:
    """Memory the float64 train x train kernel matrix takes."""
    return 8 * n_train * n_train


def rbf_kernels(X_train) -> RbfKernels:
    """Fit the scaler on train, derive gamma as `SVC(gamma='scale')` does, compute the train kernel once.

    >>> kernels = rbf_kernels(X_train)  # doctest: +SKIP
    >>> SvmClassifier().fit(X_train, y_train, kernels=kernels).decision_function(X_test)  # doctest: +SKIP
    """
    started = time.perf_counter()
    X_train, _ = check_features(X_train)
    scaler = StandardScaler().fit(X_train)
    train = scaler.transform(X_train).astype(np.float64)  # what the Pipeline hands SVC, which works in float64
    gamma = scale_gamma(train)
    return RbfKernels(scaler, gamma, rbf_kernel(train, gamma=gamma), time.perf_counter() - started)


def scale_gamma(X_scaled) -> float:
    """The kernel width `SVC(gamma='scale')` derives from the (standardised) training features."""
    variance = float(np.asarray(X_scaled, dtype=np.float64).var())
    return 1.0 / (X_scaled.shape[1] * variance) if variance != 0 else 1.0


class KernelCache:
    """RBF train kernels per set of training rows (keyed by the caller, e.g. `core.features.split_key`),
    computed once, kept up to `budget_bytes`.

    Thread-safe; the least recently used sets are dropped first. `get` returns None when one set alone
    would exceed the budget: fit the SVM directly then.
    """

    def __init__(self, budget_bytes: int = KERNEL_BUDGET_BYTES):
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, RbfKernels] = OrderedDict()

    def get(self, key: str, X_train) -> RbfKernels | None:
        if kernel_bytes(len(X_train)) > self.budget_bytes:
            return None
        with self._lock:  # held while computing, so concurrent callers compute a set once
            if key not in self._entries:
                self._entries[key] = rbf_kernels(X_train)
            self._entries.move_to_end(key)
            while sum(k.nbytes for k in self._entries.values()) > self.budget_bytes:
                self._entries.popitem(last=False)
            return self._entries[key]


KERNEL_CACHE = KernelCache()  # one per process: experiments and what-if refits share it


def svm_model_name(kernel: str, n_train: int, linear_above: int = LINEAR_SVM_ABOVE) -> str:
    """The model `SvmClassifier` fits for `n_train` samples: 'LinearSVC' or e.g. 'SVC (rbf kernel)'."""
    return "LinearSVC" if n_train > linear_above or kernel == "linear" else f"SVC ({kernel} kernel)"


def _kept(y: np.ndarray, weights: dict | None) -> np.ndarray | None:
    """The training samples an SVM fits when some class weighs 0 (those of the other classes; warned), else None.

    Such a class gets no score and is never predicted, as if it had no training image.
    """
    zero = sorted(c for c, w in (weights or {}).items() if w == 0 and (y == c).any())
    if not zero:
        return None
    keep = ~np.isin(y, zero)
    if len(np.unique(y[keep])) < 2:
        raise ClassWeightError("class weights give weight 0 to every class but one; an SVM needs two classes "
                               "of weight above 0")
    warnings.warn(f"{len(zero)} class(es) weigh 0: the SVM is fit without their {int((~keep).sum())} training "
                  "images and never predicts them", stacklevel=3)
    return keep


class SvmClassifier(ClassifierMixin, BaseEstimator):
    """StandardScaler + SVC (rbf by default); LinearSVC above `linear_above` samples (`model_name_` says which).

    Given a precomputed train kernel (see `rbf_kernels`), an rbf fit reuses it: `SVC(kernel='precomputed')`
    gives the same model as the direct fit without recomputing the kernel for every class-weight vector;
    predictions compute the kernel of the new images against the support vectors only.

    `class_weight` (one weight per class, e.g. `core.weights.class_weights`) multiplies C per class:
    class c's support vectors are bounded by C x class_weight[c]. `n_classes` fixes the score columns
    (folds that miss a class still score every class).

    >>> svm = SvmClassifier(class_weight=[1.0, 5.0]).fit(X_train, y_train)  # doctest: +SKIP
    >>> svm.predict(X_test)  # doctest: +SKIP
    """

    def __init__(self, *, kernel: str = "rbf", C: float = 1.0, class_weight=None, n_classes: int | None = None,
                 linear_above: int = LINEAR_SVM_ABOVE, seed: int = 0):
        self.kernel, self.C, self.class_weight, self.n_classes = kernel, C, class_weight, n_classes
        self.linear_above, self.seed = linear_above, seed

    def fit(self, X, y, kernels: RbfKernels | None = None) -> SvmClassifier:
        X, y = check_features(X, y)
        _set_classes(self, y)
        self.n_features_ = X.shape[1]
        weights = _weight_dict(self.class_weight, self.n_classes_)
        self.kept_ = _kept(y, weights)
        if self.kept_ is not None:  # a class weighing 0 is left out of the fit: libsvm cannot bound it at C * 0
            X, y = X[self.kept_], y[self.kept_]
            weights = {c: w for c, w in weights.items() if w > 0}
            if kernels is not None:
                kernels = kernels.fold(np.flatnonzero(self.kept_))
        self.support_X_ = None  # set by a fit on precomputed kernels
        self.model_name_ = svm_model_name(self.kernel, len(X), self.linear_above)
        if self.model_name_ == "LinearSVC":
            self.model_ = make_pipeline(StandardScaler(), LinearSVC(C=self.C, class_weight=weights,
                                                                    random_state=self.seed)).fit(X, y)
        elif kernels is not None and self.kernel == "rbf":
            if kernels.train.shape[0] != len(X):
                raise ConfigError(f"kernels were computed for {kernels.train.shape[0]} training samples but "
                                  f"{len(X)} were given; compute them with rbf_kernels on these features")
            self.model_ = SVC(kernel="precomputed", C=self.C, class_weight=weights).fit(kernels.train, y)
            self.scaler_, self.gamma_, self.n_train_ = kernels.scaler, kernels.gamma, len(X)
            self.support_X_ = kernels.scaler.transform(X[self.model_.support_]).astype(np.float64)
        else:
            scaler = StandardScaler().fit(X)
            self.gamma_ = scale_gamma(scaler.transform(X))  # gamma='scale', kept public for stored models
            svm = SVC(kernel=self.kernel, C=self.C, gamma=self.gamma_, class_weight=weights,
                      decision_function_shape="ovr")
            self.model_ = make_pipeline(scaler, svm).fit(X, y)
        return self

    def decision_function(self, X) -> np.ndarray:
        """Scores `(n_samples, n_classes)`; classes absent from training get -inf."""
        check_is_fitted(self, "model_")
        X, _ = check_features(X, n_features=self.n_features_)
        if self.support_X_ is None:
            return self._scores(self.model_.decision_function(X))
        kernel = np.zeros((len(X), self.n_train_))  # libsvm reads only the support vectors' columns
        kernel[:, self.model_.support_] = rbf_kernel(self.scaler_.transform(X).astype(np.float64), self.support_X_,
                                                     gamma=self.gamma_)
        return self._scores(self.model_.decision_function(kernel))

    def _scores(self, raw: np.ndarray) -> np.ndarray:
        seen = self.model_.classes_
        if raw.ndim == 1:  # binary problems return one column
            raw = np.stack([-raw, raw], axis=1)
        scores = np.full((len(raw), self.n_classes_), -np.inf)
        scores[:, seen] = raw
        return scores

    def predict(self, X) -> np.ndarray:
        return self.decision_function(X).argmax(axis=1)

    def support_counts(self, y) -> dict[str, list[int]] | None:
        """Per class: `support_vectors` and `at_bound`, the support vectors whose dual coefficient is at its
        bound C * weight (in any of the one-vs-one problems they take part in); None for LinearSVC.

        A class with no support vector at the bound has slack to spare: raising its weight *alone* (the
        other classes' C x weight unchanged) leaves the fit as it is. Weights rescaled to an average of 1
        per training image (the schemes, What-if) are another matter: raising that class's weight then
        lowers every other class's C x weight, which does move the boundary. What moves it towards the
        class without touching the others: a decision offset for it, or a lower C for all.
        """
        check_is_fitted(self, "model_")
        svc = self.model_ if isinstance(self.model_, SVC) else self.model_[-1]
        if not isinstance(svc, SVC):
            return None
        weights = np.ones(self.n_classes_) if self.class_weight is None else np.asarray(self.class_weight, float)
        labels = np.asarray(y)[self.kept_ if self.kept_ is not None else slice(None)][svc.support_]
        bound = self.C * weights[labels]
        at_bound = np.isclose(np.abs(svc.dual_coef_).max(axis=0), bound, rtol=1e-6, atol=1e-9)
        return {"support_vectors": np.bincount(labels, minlength=self.n_classes_).tolist(),
                "at_bound": np.bincount(labels[at_bound], minlength=self.n_classes_).tolist()}


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on standardized features, trained full batch with L-BFGS in torch.

    Minimises mean_i w_i CE(z_i + la_tau * log prior, y_i) + ||W||^2 / (2 C n): scikit-learn's
    `LogisticRegression` objective (C * sum of losses + ||W||^2 / 2, bias unpenalised) divided by C n,
    so C means the same; about 100x faster than its lbfgs on 4k x 1280 features.

    >>> LogisticProbe(C=0.1).fit(X_train, y_train).decision_function(X_test)  # doctest: +SKIP
    """

    def __init__(self, *, C: float = 1.0, class_weight=None, n_classes: int | None = None, la_tau: float = 0.0,
                 max_iter: int = 100, seed: int = 0):
        self.C, self.class_weight, self.n_classes, self.la_tau = C, class_weight, n_classes, la_tau
        self.max_iter, self.seed = max_iter, seed

    def fit(self, X, y) -> LogisticProbe:
        X, y = check_features(X, y)
        if not (math.isfinite(self.C) and self.C > 0):
            raise ConfigError(f"logistic regression C must be a finite number > 0, got {self.C!r}")
        _set_classes(self, y)
        self.n_features_ = X.shape[1]
        self.mean_, self.std_ = X.mean(axis=0), X.std(axis=0) + 1e-6
        prior = np.bincount(y, minlength=self.n_classes_) / len(y)
        shift = torch.tensor(self.la_tau * log_prior(prior), dtype=torch.float32)
        weight = None if self.class_weight is None else torch.tensor(np.asarray(self.class_weight), dtype=torch.float32)
        inputs, labels = self._tensor(X), torch.as_tensor(y)
        self.layer_ = torch.nn.Linear(self.n_features_, self.n_classes_)
        torch.nn.init.zeros_(self.layer_.weight), torch.nn.init.zeros_(self.layer_.bias)  # convex: start anywhere
        optimizer = torch.optim.LBFGS(self.layer_.parameters(), lr=1.0, max_iter=self.max_iter, history_size=20,
                                      tolerance_grad=1e-5, tolerance_change=1e-7, line_search_fn="strong_wolfe")
        penalty = 1.0 / (2.0 * self.C * len(y))

        def closure():
            optimizer.zero_grad()
            loss = weighted_cross_entropy(self.layer_(inputs) + shift, labels, weight)
            loss = loss + penalty * self.layer_.weight.pow(2).sum()
            loss.backward()
            return loss
        optimizer.step(closure)
        return self

    def _tensor(self, X) -> torch.Tensor:
        return torch.as_tensor((np.asarray(X, dtype=np.float32) - self.mean_) / self.std_, dtype=torch.float32)

    def decision_function(self, X) -> np.ndarray:
        """Logits `(n_samples, n_classes)`."""
        check_is_fitted(self, "layer_")
        X, _ = check_features(X, n_features=self.n_features_)
        with torch.inference_mode():
            return self.layer_(self._tensor(X)).numpy().astype(np.float64)

    def predict(self, X) -> np.ndarray:
        return self.decision_function(X).argmax(axis=1)


def seeded_linear(n_in: int, n_out: int, seed: int) -> torch.nn.Linear:
    """A new `Linear(n_in, n_out)` with torch's default uniform init drawn from its own generator.

    The global torch RNG is neither reseeded nor consumed, so concurrent jobs don't disturb each other.
    """
    layer = torch.nn.Linear(n_in, n_out, device="meta").to_empty(device="cpu")
    generator, bound = torch.Generator().manual_seed(seed), 1 / math.sqrt(n_in)
    with torch.no_grad():
        for param in layer.parameters():
            param.uniform_(-bound, bound, generator=generator)
    return layer


class LinearHead(ClassifierMixin, BaseEstimator):
    """A new linear layer on standardized features, trained with Adam for exactly `epochs` epochs.

    The epoch count is chosen outside, on cross-validation folds (`core.tuning.choose_epochs`): fold heads
    train to the most epochs allowed, `epoch_decision_function` scores the weights every epoch left, and
    the final head trains for the epoch count whose out-of-fold macro-F1 is best. `history_` holds per
    epoch the train (and, with `eval_set`, test) loss and accuracy; `eval_seconds_` is the time spent
    scoring `eval_set` (not part of fitting). `class_weight` weights the cross-entropy per class;
    `resample` draws class-balanced batches (see `core.remedies.balanced_batches`); `la_tau > 0` trains on
    the logit-adjusted loss CE(z + la_tau * log prior) and predicts with the plain logits z (Menon et al.
    2021). Training never touches the global torch RNG (see `seeded_linear`).

    >>> head = LinearHead(epochs=9, class_weight=[1.0, 4.0]).fit(X_train, y_train)  # doctest: +SKIP
    >>> head.epoch_decision_function(X_val).shape  # (n_val, 9 epochs, n_classes)  # doctest: +SKIP
    """

    def __init__(self, *, epochs: int = 20, lr: float = 3e-3, batch_size: int = 64, weight_decay: float = 1e-4,
                 class_weight=None, n_classes: int | None = None, seed: int = 0, resample: bool = False,
                 la_tau: float = 0.0):
        self.epochs, self.lr, self.batch_size, self.weight_decay = epochs, lr, batch_size, weight_decay
        self.class_weight, self.n_classes, self.seed = class_weight, n_classes, seed
        self.resample, self.la_tau = resample, la_tau

    def fit(self, X, y, *, eval_set=None, progress=None) -> LinearHead:
        """Train; `eval_set=(X_test, y_test)` records test metrics per epoch; `progress(stage, done, total)`."""
        X, y = check_features(X, y)
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch size must be at least 1, got {self.epochs} and {self.batch_size}")
        _set_classes(self, y)
        self.n_features_ = X.shape[1]
        self.mean_, self.std_ = X.mean(axis=0), X.std(axis=0) + 1e-6
        self.class_prior_ = np.bincount(y, minlength=self.n_classes_) / len(y)
        self.loss_shift_ = torch.tensor(self.la_tau * log_prior(self.class_prior_), dtype=torch.float32)
        weight = self.class_weight
        self.weight_ = None if weight is None else torch.tensor(np.asarray(weight), dtype=torch.float32)
        test = None if eval_set is None else (self._tensor(eval_set[0]), np.asarray(eval_set[1]))
        self.eval_seconds_, self.history_, self.epoch_weights_ = 0.0, [], []
        self.layer_ = seeded_linear(self.n_features_, self.n_classes_, self.seed)
        optimizer = torch.optim.Adam(self.layer_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        inputs, labels = self._tensor(X), torch.as_tensor(y)
        for epoch in range(1, self.epochs + 1):
            started = time.perf_counter()
            self._train_epoch(inputs, labels, optimizer, epoch)
            row = {"epoch": epoch, "seconds": time.perf_counter() - started, **self._score("train", inputs, y)}
            if test is not None:
                started = time.perf_counter()
                row.update(self._score("test", *test))
                self.eval_seconds_ += time.perf_counter() - started
            self.history_.append(row)
            with torch.no_grad():  # the layer as it stands after this epoch, bias as the last column
                self.epoch_weights_.append(torch.cat([self.layer_.weight, self.layer_.bias[:, None]], 1).clone())
            if progress:
                progress("train head (epochs)", epoch, self.epochs)
        return self

    def _tensor(self, X) -> torch.Tensor:
        return torch.as_tensor((np.asarray(X, dtype=np.float32) - self.mean_) / self.std_, dtype=torch.float32)

    def _train_epoch(self, X, y, optimizer, epoch: int) -> None:
        self.layer_.train()
        generator = torch.Generator().manual_seed(self.seed + epoch)
        if self.resample:
            batches = balanced_batches(y.numpy(), self.batch_size, generator)
        else:
            order = torch.randperm(len(X), generator=generator)
            batches = [order[start:start + self.batch_size] for start in range(0, len(X), self.batch_size)]
        for batch in batches:
            optimizer.zero_grad()
            self._loss(self.layer_(X[batch]), y[batch]).backward()
            optimizer.step()

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss: class-weighted cross-entropy, of logit-adjusted logits under la-loss."""
        return weighted_cross_entropy(logits + self.loss_shift_, y, self.weight_)

    def _score(self, prefix: str, X: torch.Tensor, y: np.ndarray) -> dict:
        self.layer_.eval()
        with torch.inference_mode():
            logits = self.layer_(X)
            loss = self._loss(logits, torch.as_tensor(y)).item()
        return {f"{prefix}_loss": loss, f"{prefix}_acc": float((logits.argmax(1).numpy() == y).mean())}

    def decision_function(self, X, tau: float = 0.0) -> np.ndarray:
        """Logits `(n_samples, n_classes)`, optionally logit-adjusted by `tau` (no retraining)."""
        check_is_fitted(self, "layer_")
        X, _ = check_features(X, n_features=self.n_features_)
        self.layer_.eval()
        with torch.inference_mode():
            logits = self.layer_(self._tensor(X)).numpy()
        return adjust_logits(logits, self.class_prior_, tau) if tau else logits

    def epoch_decision_function(self, X) -> np.ndarray:
        """Logits `(n_samples, epochs, n_classes)` of the layer as it stood after each epoch (no logit adjustment)."""
        check_is_fitted(self, "epoch_weights_")
        X, _ = check_features(X, n_features=self.n_features_)
        inputs = torch.cat([self._tensor(X), torch.ones(len(X), 1)], 1)
        with torch.inference_mode():
            return torch.einsum("nf,ecf->nec", inputs, torch.stack(self.epoch_weights_)).numpy().astype(np.float64)

    def predict(self, X, tau: float = 0.0) -> np.ndarray:
        return self.decision_function(X, tau).argmax(axis=1)


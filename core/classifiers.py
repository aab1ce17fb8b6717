"""Classifiers on cached features: an SVM (scikit-learn; exact, or its Nystroem approximation past
EXACT_SVM_MAX_TRAIN images), logistic regression and a new linear head (torch)."""
from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils import gen_batches
from sklearn.utils.validation import check_is_fitted

from core.errors import ClassWeightError, ConfigError
from core.remedies import balanced_batches, log_prior
from core.weights import adjust_logits, weighted_cross_entropy

# The SVM's rule (`choose_svm`): the exact kernel SVM up to EXACT_SVM_MAX_TRAIN training images while its kernel
# fits SVM_MEMORY_SHARE of the memory available, else the Nystroem approximation (bench/scale.py measured both)
EXACT_SVM_MAX_TRAIN = 15_000
SVM_MEMORY_SHARE = 0.5  # of the memory available when the fit starts; also the kernel cache's budget
NYSTROEM_COMPONENTS = 1000


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


KERNEL_BLOCK_BYTES = 256 * 1024**2  # one block of kernel rows: OpenBLAS 0.3.31 crashed on a 20k x 20k product


def chunked_rbf_kernel(X, Y, gamma: float) -> np.ndarray:
    """`rbf_kernel(X, Y, gamma)` `(len(X), len(Y))` computed a block of rows at a time (sklearn's `gen_batches`).

    One matrix product of 20,000 x 1,280 by its transpose (3.2 GB out) segfaulted in OpenBLAS (numpy 2.4.6);
    blocks of at most KERNEL_BLOCK_BYTES do not, and need no temporary the size of the whole kernel.
    """
    kernel = np.empty((len(X), len(Y)))
    for rows in gen_batches(len(X), max(1, KERNEL_BLOCK_BYTES // (8 * len(Y)))):
        kernel[rows] = rbf_kernel(X[rows], Y, gamma=gamma)
    return kernel


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
    kernel = chunked_rbf_kernel(train, train, gamma)
    np.fill_diagonal(kernel, 1.0)  # exp(-gamma * 0), as rbf_kernel(X) gives; blocks leave rounding noise there
    return RbfKernels(scaler, gamma, kernel, time.perf_counter() - started)


def scale_gamma(X_scaled) -> float:
    """The kernel width `SVC(gamma='scale')` derives from the (standardised) training features."""
    variance = float(np.asarray(X_scaled, dtype=np.float64).var())
    return 1.0 / (X_scaled.shape[1] * variance) if variance != 0 else 1.0


def available_memory_bytes() -> int:
    """Memory the system can give without swapping (`MemAvailable` in /proc/meminfo), else its free pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def exact_svm_bytes(n_train: int) -> int:
    """Memory the exact RBF SVM's fits hold at once: the train kernel and one validation fold's slice of it (2/3)."""
    return kernel_bytes(n_train) + kernel_bytes(-(-2 * n_train // 3))


@dataclass(frozen=True)
class SvmChoice:
    """Which SVM a fit uses: `model` (as the run records it), `exact` (False: a kernel approximation), `reason`."""

    model: str
    exact: bool
    reason: str


SOLVERS = ("auto", "exact", "nystroem")


def choose_svm(kernel: str, n_train: int, solver: str = "auto", memory_bytes: int | None = None) -> SvmChoice:
    """The SVM for `n_train` training images: the rule of EXACT_SVM_MAX_TRAIN and SVM_MEMORY_SHARE under 'auto'.

    The exact SVC up to EXACT_SVM_MAX_TRAIN images, while its kernel and a fold's slice (`exact_svm_bytes`, rbf)
    fit SVM_MEMORY_SHARE of `memory_bytes` (default: the memory available now); else the Nystroem approximation
    of the kernel (NYSTROEM_COMPONENTS rows) with a RidgeClassifier on it, a least-squares SVM. A linear kernel is
    always LinearSVC (exact at any size).

    >>> choose_svm("rbf", 30_000).model  # doctest: +SKIP
    'Nystroem approximation of the rbf kernel (1000 components) + RidgeClassifier'
    """
    if kernel == "linear":
        return SvmChoice("LinearSVC", True, "a linear kernel: LinearSVC fits it exactly at any size")
    exact = SvmChoice(f"SVC ({kernel} kernel)", True, "")
    approximate = SvmChoice(f"Nystroem approximation of the {kernel} kernel "
                            f"({min(NYSTROEM_COMPONENTS, n_train)} components) + RidgeClassifier", False, "")
    if solver != "auto":
        return dataclasses.replace(exact if solver == "exact" else approximate, reason=f"{solver}, as asked")
    budget = SVM_MEMORY_SHARE * (available_memory_bytes() if memory_bytes is None else memory_bytes)
    need = exact_svm_bytes(n_train) if kernel == "rbf" else 0  # other kernels fit directly (libsvm's own cache)
    if n_train > EXACT_SVM_MAX_TRAIN:
        why = (f"{n_train:,} training images > {EXACT_SVM_MAX_TRAIN:,}: the exact fit and its validation folds "
               "grow with the square of the images (bench/scale.py)")
    elif need > budget:
        why = (f"the exact kernel would hold {need / 1e9:.1f} GB, over {SVM_MEMORY_SHARE:.0%} of the memory "
               f"available ({budget / 1e9:.1f} GB)")
    else:
        return dataclasses.replace(exact, reason=(
            f"exact: {n_train:,} training images <= {EXACT_SVM_MAX_TRAIN:,} and its kernel ({need / 1e9:.1f} GB) "
            f"within {SVM_MEMORY_SHARE:.0%} of the memory available ({budget / 1e9:.1f} GB)"))
    return dataclasses.replace(approximate, reason=f"approximate: {why}")


@dataclass(frozen=True)
class NystroemFeatures:
    """The Nystroem approximation of a kernel on standardised training features (scikit-learn's `Nystroem`, its
    components drawn from the training rows), reusable across class weights like `RbfKernels`.

    `train` `(n_train, n_components)`: the training rows mapped; `seconds`: the time to fit and map them.
    """

    scaler: StandardScaler
    gamma: float
    nystroem: Nystroem
    train: np.ndarray
    seconds: float

    @property
    def nbytes(self) -> int:
        return self.train.nbytes

    def fold(self, fit_index) -> NystroemFeatures:
        """A cross-validation fold's rows (scaler, gamma and components stay those of all training rows)."""
        return NystroemFeatures(self.scaler, self.gamma, self.nystroem, self.train[fit_index], 0.0)

    def transform(self, X) -> np.ndarray:
        """`(n_samples, n_components)` in float64, as the stored model computes them."""
        return self.nystroem.transform(self.scaler.transform(X).astype(np.float64))


def nystroem_features(X_train, kernel: str = "rbf", seed: int = 0) -> NystroemFeatures:
    """Fit the scaler, gamma='scale' and a Nystroem map of `kernel` (SVC's degree and coef0) on the training rows."""
    started = time.perf_counter()
    X_train, _ = check_features(X_train)
    scaler = StandardScaler().fit(X_train)
    scaled = scaler.transform(X_train).astype(np.float64)
    gamma = scale_gamma(scaled)
    nystroem = Nystroem(kernel=kernel, gamma=gamma, degree=3, coef0=0.0, random_state=seed,
                        n_components=min(NYSTROEM_COMPONENTS, len(X_train))).fit(scaled)
    return NystroemFeatures(scaler, gamma, nystroem, nystroem.transform(scaled), time.perf_counter() - started)


class KernelCache:
    """What SVM fits reuse across class weights, per set of training rows (keyed by the caller, e.g.
    `core.features.split_key`): the exact RBF train kernel (`rbf_kernels`) or its Nystroem features
    (`nystroem_features`), computed once, kept up to `budget_bytes`.

    The default budget is SVM_MEMORY_SHARE of the memory available (what the cache holds counted as available).
    Thread-safe; the least recently used sets are dropped first. `get` returns None when one set alone
    would exceed the budget: fit the SVM directly then.
    """

    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, RbfKernels | NystroemFeatures] = OrderedDict()

    def _budget(self) -> int:
        if self.budget_bytes is not None:
            return self.budget_bytes
        return int(SVM_MEMORY_SHARE * (available_memory_bytes() + sum(e.nbytes for e in self._entries.values())))

    @staticmethod
    def _key(key: str, exact: bool) -> str:
        return f"{key}:{'rbf' if exact else 'nystroem-rbf'}"

    def holds(self, key: str, exact: bool = True) -> bool:
        """Whether `get(key, ..., exact)` would return what is kept, without computing."""
        return self._key(key, exact) in self._entries

    def get(self, key: str, X_train, exact: bool = True) -> RbfKernels | NystroemFeatures | None:
        n_bytes = kernel_bytes(len(X_train)) if exact else 8 * len(X_train) * NYSTROEM_COMPONENTS
        key = self._key(key, exact)
        with self._lock:  # held while computing, so concurrent callers compute a set once
            budget = self._budget()
            if n_bytes > budget:
                return None
            if key not in self._entries:
                self._entries[key] = rbf_kernels(X_train) if exact else nystroem_features(X_train)
            self._entries.move_to_end(key)
            while sum(k.nbytes for k in self._entries.values()) > budget:
                self._entries.popitem(last=False)
            return self._entries[key]


KERNEL_CACHE = KernelCache()  # one per process: experiments and what-if refits share it


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
    """StandardScaler + SVC (rbf by default), or its Nystroem approximation: `choose_svm` picks by the training
    images and the memory available under `solver='auto'` (`model_name_`, `exact_` and `reason_` say which).

    Given a precomputed train kernel (see `rbf_kernels`), an exact rbf fit reuses it: `SVC(kernel='precomputed')`
    gives the same model as the direct fit without recomputing the kernel for every class-weight vector;
    predictions compute the kernel of the new images against the support vectors only. The approximation maps
    the rows with `nystroem_features` (or reuses given ones) and fits a `RidgeClassifier` with alpha = 1 / C:
    the least-squares SVM's objective, ||w||^2 / 2 + C / 2 * sum of squared errors, on the approximate kernel.

    `class_weight` (one weight per class, e.g. `core.weights.class_weights`) multiplies C per class:
    class c's support vectors are bounded by C x class_weight[c]. `n_classes` fixes the score columns
    (folds that miss a class still score every class).

    >>> svm = SvmClassifier(class_weight=[1.0, 5.0]).fit(X_train, y_train)  # doctest: +SKIP
    >>> svm.predict(X_test)  # doctest: +SKIP
    """

    def __init__(self, *, kernel: str = "rbf", C: float = 1.0, class_weight=None, n_classes: int | None = None,
                 solver: str = "auto", seed: int = 0):
        self.kernel, self.C, self.class_weight, self.n_classes = kernel, C, class_weight, n_classes
        self.solver, self.seed = solver, seed

    def fit(self, X, y, kernels: RbfKernels | NystroemFeatures | None = None) -> SvmClassifier:
        X, y = check_features(X, y)
        if self.solver not in SOLVERS:
            raise ConfigError(f"SVM solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        _set_classes(self, y)
        self.n_features_ = X.shape[1]
        weights = _weight_dict(self.class_weight, self.n_classes_)
        self.kept_ = _kept(y, weights)
        if self.kept_ is not None:  # a class weighing 0 is left out of the fit: libsvm cannot bound it at C * 0
            X, y = X[self.kept_], y[self.kept_]
            weights = {c: w for c, w in weights.items() if w > 0}
            if kernels is not None:
                kernels = kernels.fold(np.flatnonzero(self.kept_))
        choice = choose_svm(self.kernel, len(X), self.solver)
        self.model_name_, self.exact_, self.reason_ = choice.model, choice.exact, choice.reason
        self.support_X_ = self.nystroem_ = None  # set by a fit on precomputed kernels, by an approximate fit
        if kernels is not None and kernels.train.shape[0] != len(X):
            raise ConfigError(f"kernels were computed for {kernels.train.shape[0]} training samples but "
                              f"{len(X)} were given; compute them with rbf_kernels on these features")
        if self.kernel == "linear":
            self.model_ = make_pipeline(StandardScaler(), LinearSVC(C=self.C, class_weight=weights,
                                                                    random_state=self.seed)).fit(X, y)
        elif not choice.exact:
            mapped = kernels if isinstance(kernels, NystroemFeatures) else nystroem_features(X, self.kernel, self.seed)
            self.model_ = RidgeClassifier(alpha=1.0 / self.C, class_weight=weights).fit(mapped.train, y)
            self.nystroem_ = dataclasses.replace(mapped, train=mapped.train[:0], seconds=0.0)  # the map, not its rows
            self.gamma_ = mapped.gamma
        elif isinstance(kernels, RbfKernels) and self.kernel == "rbf":
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
        if self.nystroem_ is not None:
            return self._scores(self.model_.decision_function(self.nystroem_.transform(X)))
        if self.support_X_ is None:
            return self._scores(self.model_.decision_function(X))
        block = max(1, KERNEL_BLOCK_BYTES // (8 * self.n_train_))  # test rows at a time: a bounded kernel block
        return np.vstack([self._scores(self._precomputed_scores(X[rows])) for rows in gen_batches(len(X), block)])

    def held_out_scores(self, kernels: RbfKernels | NystroemFeatures, fit_index, val_index) -> np.ndarray:
        """Scores of training rows `val_index` of a fold fitted on `kernels.fold(fit_index)`, read from what was
        computed over all training rows (kernel columns, or Nystroem rows): nothing is recomputed.

        Equal to `decision_function(X[val_index])` up to rounding.
        """
        check_is_fitted(self, "model_")
        if isinstance(kernels, NystroemFeatures):
            return self._scores(self.model_.decision_function(kernels.train[val_index]))
        columns = np.asarray(fit_index) if self.kept_ is None else np.asarray(fit_index)[self.kept_]
        return self._scores(self.model_.decision_function(kernels.train[np.ix_(val_index, columns)]))

    def _precomputed_scores(self, X) -> np.ndarray:
        kernel = np.zeros((len(X), self.n_train_))  # libsvm reads only the support vectors' columns
        kernel[:, self.model_.support_] = chunked_rbf_kernel(self.scaler_.transform(X).astype(np.float64),
                                                             self.support_X_, self.gamma_)
        return self.model_.decision_function(kernel)

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
        bound C * weight (in any of the one-vs-one problems they take part in); None for LinearSVC and the
        Nystroem approximation.

        A class with no support vector at the bound has slack to spare: raising its weight *alone* (the
        other classes' C x weight unchanged) leaves the fit as it is. Weights rescaled to an average of 1
        per training image (the schemes, What-if) are another matter: raising that class's weight then
        lowers every other class's C x weight, which does move the boundary. What moves it towards the
        class without touching the others: a decision offset for it, or a lower C for all.
        """
        check_is_fitted(self, "model_")
        svc = self.model_[-1] if isinstance(self.model_, Pipeline) else self.model_
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


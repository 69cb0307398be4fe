"""Active learning for the labelling page: which frame to label next, and how good it is so far.

The model is the method's own, PCA then logistic regression
(:class:`hpcdiff.learn.DiffuseClassifier`), with one difference that suits a few labels:
the PCA axes are fitted once on the features of *every* frame (unsupervised, so no label
is needed), and only the logistic regression is refitted as labels arrive.

Selection (:meth:`ActiveLearner.select`) is uncertainty sampling with a diversity term:
among the ``n_candidates`` unlabelled frames with the smallest margin between their two
most probable classes, the frame farthest (Euclidean, in whitened PCA space) from every
labelled frame is offered first; a batch repeats this, counting the frames already chosen.

The running accuracy (:meth:`ActiveLearner.accuracy_estimate`) is stratified k-fold
cross-validation on the labelled frames, with a Wilson 95 % interval.  Frames chosen as
uncertain are harder than average, so under active ordering it *under*-states the accuracy
on all frames (by 19 points, median, on the simulated ``hard`` preset); the model's own
expected accuracy over every frame (:meth:`ActiveLearner.expected_accuracy`) is shown
beside it, within a few points of held-out accuracy there
(``benchmarks/bench_active_learning.py`` measures both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcdiff.learn.pca_stats import PCABasis, pca_from_array

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

MIN_PER_CLASS = 3
"""Labels of each class before the model is fitted (before that, frames come in random order)."""


@dataclass(frozen=True)
class AccuracyEstimate:
    """Cross-validated accuracy on the labelled frames.

    Attributes
    ----------
    accuracy
        Fraction of labelled frames whose held-out prediction is right.
    low, high
        Wilson score 95 % interval of ``accuracy``.
    n
        Labelled frames used.
    folds
        Cross-validation folds.
    """

    accuracy: float
    low: float
    high: float
    n: int
    folds: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "accuracy": self.accuracy,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "folds": self.folds,
        }


def wilson_interval(k: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (``(0, 1)`` when ``n == 0``)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def margin_uncertainty(proba: np.ndarray) -> np.ndarray:
    """``(n,)`` uncertainty ``1 - (p_first - p_second)`` of ``(n, K)`` class probabilities."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape[1] < 2:
        return np.zeros(proba.shape[0])
    top2 = np.sort(proba, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


class ActiveLearner:
    """PCA + logistic regression over a fixed set of frames, refitted as labels arrive.

    Parameters
    ----------
    features
        ``(n, d)`` float32 feature vectors of the frames that can be offered (rows are
        the learner's frame numbers).
    n_classes
        Number of classes ``K``; labels are ``0..K-1``.
    n_components
        PCA dimension (capped at ``min(n - 1, d)``).
    C
        Inverse regularisation strength of the logistic regression.
    min_per_class
        Labels of each class needed before :meth:`fit` fits.
    n_candidates
        Most uncertain frames among which the diversity term chooses.
    random_state
        Seed of PCA's solver and of tie-breaking.

    Attributes
    ----------
    pca_ : PCABasis
    z_ : ndarray, (n, k) float64, whitened PCA scores of every frame
    coef_, intercept_, classes_ : fitted logistic regression (after a successful fit)
    """

    def __init__(
        self,
        features: np.ndarray,
        *,
        n_classes: int,
        n_components: int = 50,
        C: float = 1.0,
        min_per_class: int = MIN_PER_CLASS,
        n_candidates: int = 20,
        random_state: int = 0,
    ) -> None:
        x = np.asarray(features)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"features must be (n >= 2, d); got {x.shape}")
        if n_classes < 2:
            raise ValueError(f"need at least two classes, got {n_classes}")
        self.n_classes = int(n_classes)
        self.C = float(C)
        self.min_per_class = int(min_per_class)
        self.n_candidates = int(n_candidates)
        self.random_state = int(random_state)
        k = max(1, min(int(n_components), x.shape[0] - 1, x.shape[1]))
        self.pca_: PCABasis = pca_from_array(x, k, random_state=random_state)
        z = self.pca_.transform(x)
        scale = np.sqrt(np.maximum(self.pca_.explained_variance_, 1e-12))
        self.z_ = np.asarray(z, dtype=np.float64) / scale
        self._scale = scale
        self.fitted = False

    @property
    def n_frames(self) -> int:
        return int(self.z_.shape[0])

    def ready(self, y: np.ndarray) -> bool:
        """True when ``y`` holds at least ``min_per_class`` labels of every class."""
        counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=self.n_classes)
        return bool((counts[: self.n_classes] >= self.min_per_class).all())

    def _lr(self) -> LogisticRegression:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, max_iter=2000, random_state=self.random_state)

    def fit(self, rows: np.ndarray, y: np.ndarray, *, force: bool = False) -> bool:
        """Fit the logistic regression on labelled ``rows`` with labels ``y``.

        Returns whether a model is fitted: ``False`` (and nothing fitted) until every class
        has ``min_per_class`` labels, unless ``force`` (then two distinct classes suffice).
        """
        rows = np.asarray(rows, dtype=np.int64)
        y = np.asarray(y, dtype=np.int64)
        if rows.shape != y.shape:
            raise ValueError(f"rows {rows.shape} and y {y.shape} differ")
        if y.size and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"labels must lie in 0..{self.n_classes - 1}")
        enough = self.ready(y) if not force else np.unique(y).size >= 2
        if not enough:
            self.fitted = False
            return False
        with _one_blas_thread():
            lr = self._lr().fit(self.z_[rows], y)
        self.coef_ = lr.coef_
        self.intercept_ = lr.intercept_
        self.classes_ = lr.classes_.astype(np.int64)
        self.fitted = True
        return True

    def _proba_z(self, z: np.ndarray) -> np.ndarray:
        scores = z @ self.coef_.T + self.intercept_
        if self.coef_.shape[0] == 1:
            p1 = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            seen = np.stack([1.0 - p1, p1], axis=1)
        else:
            scores = scores - scores.max(axis=1, keepdims=True)
            e = np.exp(scores)
            seen = e / e.sum(axis=1, keepdims=True)
        out = np.zeros((z.shape[0], self.n_classes))
        out[:, self.classes_] = seen
        return out

    def predict_proba(self, rows: np.ndarray | None = None) -> np.ndarray:
        """``(n, K)`` class probabilities of the learner's frames (all, or ``rows``)."""
        if not self.fitted:
            raise RuntimeError("the learner is not fitted yet")
        z = self.z_ if rows is None else self.z_[np.asarray(rows, dtype=np.int64)]
        return self._proba_z(z)

    def predict_proba_rows_of(self, features: np.ndarray) -> np.ndarray:
        """``(m, K)`` class probabilities of other frames' ``(m, d)`` features."""
        if not self.fitted:
            raise RuntimeError("the learner is not fitted yet")
        z = np.asarray(self.pca_.transform(np.asarray(features)), dtype=np.float64) / self._scale
        return self._proba_z(z)

    def select(
        self,
        labelled: np.ndarray,
        *,
        n: int = 1,
        exclude: np.ndarray | None = None,
        random_state: np.random.Generator | int | None = None,
    ) -> list[int]:
        """Frames to offer next, most useful first (empty when none is left).

        Parameters
        ----------
        labelled
            ``(m,)`` rows already labelled (they anchor the diversity term).
        n
            How many to return.
        exclude
            Rows never to offer (skipped, or being labelled on another page).
        random_state
            Breaks ties among equally uncertain, equally far frames.
        """
        if not self.fitted:
            raise RuntimeError("the learner is not fitted yet")
        rng = np.random.default_rng(random_state)
        labelled = np.asarray(labelled, dtype=np.int64).ravel()
        free = np.ones(self.n_frames, dtype=bool)
        free[labelled] = False
        if exclude is not None and len(exclude):
            free[np.asarray(exclude, dtype=np.int64)] = False
        avail = np.flatnonzero(free)
        if avail.size == 0:
            return []
        unc = margin_uncertainty(self._proba_z(self.z_[avail]))
        # tiny jitter breaks ties reproducibly
        unc = unc + rng.uniform(0, 1e-9, unc.size)
        m = min(avail.size, max(self.n_candidates, n))
        cand = avail[np.argsort(-unc)[:m]]
        if labelled.size:
            d2 = _min_sq_dist(self.z_[cand], self.z_[labelled])
        else:
            d2 = np.full(cand.size, np.inf)
        picked: list[int] = []
        for _ in range(min(n, cand.size)):
            k = int(np.argmax(d2))
            picked.append(int(cand[k]))
            d2 = np.minimum(d2, ((self.z_[cand] - self.z_[cand[k]]) ** 2).sum(axis=1))
            d2[k] = -1.0
        return picked

    def expected_accuracy(self) -> float:
        """Mean over every frame of the most probable class's probability: the accuracy the
        model expects of itself on the whole run, if its probabilities are calibrated.

        Unlike :meth:`accuracy_estimate` it is not pulled down by actively chosen (hard)
        labels; ``benchmarks/bench_active_learning.py`` measures both against held-out frames.
        """
        if not self.fitted:
            raise RuntimeError("the learner is not fitted yet")
        return float(self._proba_z(self.z_).max(axis=1).mean())

    def accuracy_estimate(
        self, rows: np.ndarray, y: np.ndarray, *, folds: int = 5
    ) -> AccuracyEstimate | None:
        """Stratified k-fold CV accuracy of the labelled ``rows`` (``None``: too few labels).

        The folds are ``min(folds, fewest labels of a class)``; at least 2 are needed, and
        at least two classes.
        """
        from sklearn.model_selection import StratifiedKFold

        rows = np.asarray(rows, dtype=np.int64)
        y = np.asarray(y, dtype=np.int64)
        present = np.unique(y)
        if present.size < 2:
            return None
        k = int(min(folds, np.bincount(y)[present].min()))
        if k < 2:
            return None
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.random_state)
        right = 0
        with _one_blas_thread():
            for tr, te in skf.split(rows, y):
                lr = self._lr().fit(self.z_[rows[tr]], y[tr])
                right += int((lr.predict(self.z_[rows[te]]) == y[te]).sum())
        low, high = wilson_interval(right, y.size)
        return AccuracyEstimate(right / y.size, low, high, int(y.size), k)


def _min_sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a),)`` squared distance from each row of ``a`` to its nearest row of ``b``."""
    out = np.full(a.shape[0], np.inf)
    for start in range(0, b.shape[0], 2048):
        blk = b[start : start + 2048]
        d = (a * a).sum(1)[:, None] - 2 * a @ blk.T + (blk * blk).sum(1)[None, :]
        out = np.minimum(out, d.min(axis=1))
    return np.maximum(out, 0.0)


def _one_blas_thread() -> Any:
    """Context limiting BLAS/OpenMP to one thread: these fits are tiny, and on a busy
    login node threaded BLAS makes each one ~10x slower (measured: 285 ms -> 23 ms)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)

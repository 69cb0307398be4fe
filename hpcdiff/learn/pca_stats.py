"""PCA from mergeable sufficient statistics (count, sum, Gram matrix).

Each rank (or dask task) reduces its feature rows to a :class:`PCAStatistics`; statistics add
with ``+`` (an MPI ``Reduce`` with ``op=SUM`` over :meth:`PCAStatistics.to_buffer`, or a dask tree
reduction, give the same total), and :func:`pca_from_statistics` turns the total into the
same principal axes as :class:`sklearn.decomposition.PCA` on the gathered matrix (up to sign).
Only ``d * d`` numbers travel, whatever the number of frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class PCAStatistics:
    """Sufficient statistics of a set of feature rows.

    Attributes
    ----------
    count
        Number of rows.
    sum
        ``(d,)`` float64, sum of the rows.
    gram
        ``(d, d)`` float64, ``X.T @ X``.
    """

    count: int
    sum: np.ndarray
    gram: np.ndarray

    @classmethod
    def empty(cls, n_features: int) -> PCAStatistics:
        """Statistics of no rows (the identity of ``+``)."""
        return cls(0, np.zeros(n_features), np.zeros((n_features, n_features)))

    @classmethod
    def from_array(cls, x: np.ndarray) -> PCAStatistics:
        """Statistics of the rows of ``x``, ``(n, d)`` (any float dtype; accumulated in float64)."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"expected a (n, d) array, got shape {x.shape}")
        x64 = x.astype(np.float64, copy=False)
        return cls(int(x.shape[0]), x64.sum(axis=0), x64.T @ x64)

    @property
    def n_features(self) -> int:
        return int(self.sum.shape[0])

    def __add__(self, other: PCAStatistics) -> PCAStatistics:
        if not isinstance(other, PCAStatistics):
            return NotImplemented
        if other.n_features != self.n_features:
            raise ValueError(
                f"cannot merge statistics of {self.n_features} and {other.n_features} features"
            )
        return PCAStatistics(self.count + other.count, self.sum + other.sum, self.gram + other.gram)

    def update(self, x: np.ndarray) -> PCAStatistics:
        """These statistics plus those of the rows of ``x``."""
        return self + PCAStatistics.from_array(x)

    def allclose(self, other: PCAStatistics, *, rtol: float = 1e-10) -> bool:
        """Equal counts and numerically equal sums and Gram matrices."""
        return (
            self.count == other.count
            and np.allclose(self.sum, other.sum, rtol=rtol, atol=0)
            and np.allclose(self.gram, other.gram, rtol=rtol, atol=1e-12)
        )

    @property
    def mean(self) -> np.ndarray:
        """``(d,)`` float64 mean row."""
        if self.count == 0:
            raise ValueError("mean of no rows")
        return self.sum / self.count

    def covariance(self) -> np.ndarray:
        """``(d, d)`` float64 sample covariance (divided by ``count - 1``)."""
        if self.count < 2:
            raise ValueError(f"covariance needs at least 2 rows, got {self.count}")
        mean = self.mean
        centred = self.gram - self.count * np.outer(mean, mean)
        cov = centred / (self.count - 1)
        return (cov + cov.T) / 2

    def to_buffer(self) -> np.ndarray:
        """Flat float64 buffer ``[count, sum..., gram...]`` for ``MPI.Reduce(op=SUM)``."""
        return np.concatenate([[float(self.count)], self.sum, self.gram.ravel()])

    @classmethod
    def from_buffer(cls, buf: np.ndarray, n_features: int) -> PCAStatistics:
        """Inverse of :meth:`to_buffer`."""
        d = n_features
        buf = np.asarray(buf, dtype=np.float64)
        if buf.shape != (1 + d + d * d,):
            raise ValueError(
                f"buffer of shape {buf.shape} does not hold statistics of {d} features"
            )
        return cls(int(round(buf[0])), buf[1 : 1 + d].copy(), buf[1 + d :].reshape(d, d).copy())


@dataclass(frozen=True)
class PCABasis:
    """Principal axes (the arrays of a fitted :class:`sklearn.decomposition.PCA`).

    Attributes
    ----------
    mean_
        ``(d,)`` float64.
    components_
        ``(k, d)`` float64, orthonormal rows, by decreasing variance.
    explained_variance_
        ``(k,)`` float64, variance along each axis (``ddof=1``).
    explained_variance_ratio_
        ``(k,)`` float64, fraction of the total variance.
    """

    mean_: np.ndarray
    components_: np.ndarray
    explained_variance_: np.ndarray
    explained_variance_ratio_: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.components_.shape[0])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Project ``(n, d)`` rows: ``(x - mean_) @ components_.T`` -> ``(n, k)`` float64."""
        return (np.asarray(x, dtype=np.float64) - self.mean_) @ self.components_.T


def flip_signs(components: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of each row positive (a deterministic sign)."""
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), idx])
    signs[signs == 0] = 1
    return components * signs[:, None]


def pca_from_statistics(stats: PCAStatistics, n_components: int) -> PCABasis:
    """Principal axes from sufficient statistics.

    Parameters
    ----------
    stats
        Merged statistics of all training rows.
    n_components
        Number of axes, in ``[1, min(d, count - 1)]``.

    Returns
    -------
    PCABasis
        Equal to sklearn's ``PCA(n_components).fit(X)`` (components up to sign; here the largest
        entry of each component is positive).

    Notes
    -----
    The eigendecomposition of the ``(d, d)`` covariance costs O(d^3) (about a minute for d = 8192
    on two cores); with few frames, gathering the rows and using an SVD is cheaper.
    """
    from scipy.linalg import eigh

    d = stats.n_features
    if not 1 <= n_components <= min(d, stats.count - 1):
        raise ValueError(
            f"n_components must lie in [1, min(n_features={d}, n_rows - 1={stats.count - 1})], "
            f"got {n_components}"
        )
    cov = stats.covariance()
    values, vectors = eigh(cov, subset_by_index=[d - n_components, d - 1])
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    components = flip_signs(vectors[:, order].T)
    total = float(np.trace(cov))
    ratio = values / total if total > 0 else np.zeros_like(values)
    return PCABasis(stats.mean.copy(), components, values, ratio)


@dataclass(frozen=True)
class PCAReduction:
    """PCA from mergeable statistics, as a distributed collect reduces it.

    Implements :class:`hpcdiff.parallel.collect.Reduction`: every rank summarises its rows
    (:meth:`summarise`: :class:`PCAStatistics` as a flat buffer), the buffers are summed,
    the root computes the axes (:meth:`basis`) and every rank projects its rows
    (:meth:`project`).  Nothing here knows about MPI.
    """

    n_features: int
    n_components: int

    def summarise(self, rows: np.ndarray) -> np.ndarray:
        """``(m, d)`` rows (``m`` may be 0) -> statistics buffer (``to_buffer``)."""
        stats = (
            PCAStatistics.from_array(rows) if len(rows) else PCAStatistics.empty(self.n_features)
        )
        return stats.to_buffer()

    def basis(self, total: np.ndarray) -> PCABasis:
        """The principal axes of the summed statistics buffer."""
        return pca_from_statistics(
            PCAStatistics.from_buffer(total, self.n_features), self.n_components
        )

    def project(self, basis: PCABasis, rows: np.ndarray) -> np.ndarray:
        """``(m, d)`` rows -> ``(m, n_components)`` float64 projections."""
        return basis.transform(rows)


def pca_from_array(x: np.ndarray, n_components: int, *, random_state: int = 0) -> PCABasis:
    """Principal axes of gathered rows with scikit-learn's PCA (signs as :func:`flip_signs`)."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float64)
    limit = min(x.shape[0] - 1, x.shape[1])
    if not 1 <= n_components <= limit:
        raise ValueError(
            f"n_components must lie in [1, min(n_features={x.shape[1]}, n_rows - 1={x.shape[0] - 1})],"
            f" got {n_components}"
        )
    pca = PCA(n_components=n_components, svd_solver="full", random_state=random_state).fit(x)
    return PCABasis(
        pca.mean_.astype(np.float64),
        flip_signs(pca.components_.astype(np.float64)),
        pca.explained_variance_.astype(np.float64),
        pca.explained_variance_ratio_.astype(np.float64),
    )

"""Diffusion maps (Coifman and Lafon 2006) from similarity or distance matrices.

Kernels
    From a correlation-type similarity ``S`` (the method's choice): ``K = exp((S - 1) / eps)``,
    which equals ``exp(S / eps)`` up to a constant factor that the normalisation removes.
    From distances ``D``: a Gaussian ``K = exp(-D^2 / eps)`` with ``eps`` by default the
    squared median distance to each point's ``k``-th nearest neighbour (:func:`knn_bandwidth`).
    Missing similarities (NaN) give kernel 0.

Normalisation
    ``alpha = 1`` density normalisation ``K_a = K / (q_i q_j)`` with ``q = K 1``, then the
    row-stochastic ``P = D^-1 K_a``.  Its eigenvectors come from the symmetric conjugate
    ``D^-1/2 K_a D^-1/2`` with :func:`scipy.linalg.eigh`; right eigenvectors
    ``psi = D^-1/2 v``, scaled so ``psi_0 = 1``; diffusion coordinates
    ``lambda_k^t psi_k``, ``k = 1..n_coords``.  Frames with no kernel weight to any other
    frame (isolated) get NaN coordinates.

Sparse nearest-neighbour kernels (what the Fourier job uses)
    :func:`knn_points` finds each point's ``k`` nearest neighbours in blocks of rows
    (``(n, k)`` memory), :func:`knn_kernel` turns them into a symmetric sparse Gaussian
    kernel ``exp(-d^2 / eps)`` (``eps`` by default the median squared distance to the
    ``k``-th neighbour: the median heuristic), and :func:`diffusion_map_sparse` does the same
    normalisation as :func:`diffusion_map` on the sparse matrix, with
    :func:`scipy.sparse.linalg.eigsh` for the leading eigenvectors.  With every pair kept,
    it equals the dense :func:`diffusion_map` of the same kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.sparse as sp


def kernel_from_similarity(similarity: np.ndarray, *, epsilon: float = 1.0) -> np.ndarray:
    """Kernel ``exp((S - 1) / epsilon)`` from a correlation-type similarity.

    Parameters
    ----------
    similarity
        ``(n, n)`` symmetric, values in [-1, 1], NaN where undefined.
    epsilon
        Kernel width in correlation units (1.0: plain ``exp(S)`` as in the method).

    Returns
    -------
    np.ndarray
        ``(n, n)`` float64 in [0, 1], 0 where the similarity is NaN.
    """
    s = _square(similarity, "similarity")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    with np.errstate(invalid="ignore"):
        k = np.exp((s - 1.0) / epsilon)
    return np.where(np.isfinite(k), k, 0.0)


def knn_bandwidth(distances: np.ndarray, *, k: int = 10) -> float:
    """Gaussian bandwidth ``eps``: the squared median distance to the ``k``-th nearest neighbour.

    Parameters
    ----------
    distances
        ``(n, n)`` distances, NaN where missing; the diagonal is ignored.
    k
        Neighbour rank (clipped to ``n - 1``).

    Returns
    -------
    float
        ``eps`` in squared distance units (> 0).
    """
    d = _square(distances, "distances").copy()
    n = d.shape[0]
    if n < 2:
        raise ValueError("need at least 2 points for a bandwidth")
    np.fill_diagonal(d, np.inf)
    d = np.where(np.isfinite(d), d, np.inf)
    kk = min(max(k, 1), n - 1)
    kth = np.sort(d, axis=1)[:, kk - 1]
    kth = kth[np.isfinite(kth)]
    if kth.size == 0:
        raise ValueError("no finite distances to set a bandwidth from")
    med = float(np.median(kth))
    if med <= 0:
        positive = kth[kth > 0]
        med = float(np.median(positive)) if positive.size else 1.0
    return med * med


def kernel_from_distances(
    distances: np.ndarray, *, epsilon: float | None = None, k: int = 10
) -> tuple[np.ndarray, float]:
    """Gaussian kernel ``exp(-D^2 / eps)``.

    Parameters
    ----------
    distances
        ``(n, n)`` symmetric distances, NaN where missing.
    epsilon
        Bandwidth (squared distance units); None: :func:`knn_bandwidth` with ``k``.
    k
        Neighbour rank of the bandwidth heuristic.

    Returns
    -------
    kernel : np.ndarray
        ``(n, n)`` float64, 0 where the distance is NaN.
    epsilon : float
        The bandwidth used.
    """
    d = _square(distances, "distances")
    eps = knn_bandwidth(d, k=k) if epsilon is None else float(epsilon)
    if not eps > 0:
        raise ValueError(f"epsilon must be > 0, got {eps}")
    with np.errstate(invalid="ignore"):
        kern = np.exp(-(d * d) / eps)
    return np.where(np.isfinite(kern), kern, 0.0), eps


@dataclass(frozen=True)
class DiffusionMap:
    """Result of :func:`diffusion_map`.

    Attributes
    ----------
    eigenvalues
        ``(n_coords + 1,)`` float64 of the Markov matrix, descending; the first is 1.
    coords
        ``(n, n_coords)`` float64 diffusion coordinates ``lambda_k^t psi_k``, NaN for
        isolated frames.
    connected
        ``(n,)`` bool, frames with kernel weight to at least one other frame.
    """

    eigenvalues: np.ndarray
    coords: np.ndarray
    connected: np.ndarray


def diffusion_map(
    kernel: np.ndarray, *, n_coords: int = 4, alpha: float = 1.0, t: float = 1.0
) -> DiffusionMap:
    """Diffusion coordinates from a symmetric, non-negative kernel.

    Parameters
    ----------
    kernel
        ``(n, n)`` symmetric, >= 0 (NaN treated as 0).
    n_coords
        Nontrivial coordinates to return (fewer if fewer connected frames).
    alpha
        Density normalisation exponent (1: Laplace-Beltrami, independent of sampling density).
    t
        Diffusion time.

    Returns
    -------
    DiffusionMap
    """
    k = _square(kernel, "kernel")
    k = np.where(np.isfinite(k), k, 0.0)
    if np.any(k < 0):
        raise ValueError("kernel has negative entries")
    if not np.allclose(k, k.T, rtol=1e-10, atol=1e-12):
        raise ValueError("kernel is not symmetric")
    n = k.shape[0]
    off = k - np.diag(np.diag(k))
    connected = off.sum(axis=1) > 0
    idx = np.flatnonzero(connected)
    coords = np.full((n, n_coords), np.nan)
    m = idx.size
    n_eff = min(n_coords, max(m - 1, 0))
    if n_eff == 0:
        return DiffusionMap(np.ones(1), coords, connected)
    kc = k[np.ix_(idx, idx)]
    q = kc.sum(axis=1)
    ka = kc / np.outer(q**alpha, q**alpha)
    d = ka.sum(axis=1)
    sq = np.sqrt(d)
    sym = ka / np.outer(sq, sq)
    sym = 0.5 * (sym + sym.T)
    w, v = scipy.linalg.eigh(sym, subset_by_index=[m - n_eff - 1, m - 1])
    w, psi = _right_eigenvectors(w, v, d)
    coords[idx, :n_eff] = psi[:, 1:] * (w[1:] ** t)
    return DiffusionMap(w, coords, connected)


def _right_eigenvectors(
    w: np.ndarray, v: np.ndarray, d: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and right eigenvectors of the Markov matrix ``P`` from the
    eigenpairs ``w, v`` of its symmetric form (degrees ``d``), normalised so
    ``sum_i pi_i psi_k(i)^2 = 1`` (``pi = d / sum d``: ``psi_0 = 1`` for a connected kernel),
    each sign fixed so its largest ``|entry|`` is positive."""
    order = np.argsort(w)[::-1]
    w, v = w[order], v[:, order]
    psi = v / np.sqrt(d)[:, None] * np.sqrt(d.sum())
    big = psi[np.argmax(np.abs(psi), axis=0), np.arange(psi.shape[1])]
    return w, psi * np.where(big < 0, -1.0, 1.0)


def knn_points(points: np.ndarray, *, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest neighbours of every point (Euclidean), in blocks of rows.

    Parameters
    ----------
    points
        ``(n, d)`` float coordinates; rows with a non-finite entry get no neighbours and
        are nobody's neighbour.
    k
        Neighbours per point (clipped to ``n - 1``); the point itself is excluded.
    block
        Rows per distance block (``block * n`` float64 of memory).

    Returns
    -------
    indices : np.ndarray
        ``(n, k)`` int64 neighbour indices, nearest first; -1 where missing.
    d2 : np.ndarray
        ``(n, k)`` float64 squared distances (inf where missing).
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"points must be (n, d), got shape {x.shape}")
    n = x.shape[0]
    kk = min(int(k), max(n - 1, 0))
    if kk < 1:
        raise ValueError(f"need k >= 1 and at least 2 points, got k={k}, n={n}")
    ok = np.all(np.isfinite(x), axis=1)
    xs = np.where(ok[:, None], x, 0.0)
    sq = np.einsum("ij,ij->i", xs, xs)
    idx = np.full((n, kk), -1, np.int64)
    dist = np.full((n, kk), np.inf)
    for s in range(0, n, block):
        e = min(s + block, n)
        d2 = np.maximum(sq[s:e, None] + sq[None, :] - 2.0 * (xs[s:e] @ xs.T), 0.0)
        d2[:, ~ok] = np.inf
        d2[~ok[s:e]] = np.inf
        d2[np.arange(e - s), np.arange(s, e)] = np.inf
        part = np.argpartition(d2, kk - 1, axis=1)[:, :kk]
        pd = np.take_along_axis(d2, part, axis=1)
        order = np.argsort(pd, axis=1, kind="stable")
        part, pd = np.take_along_axis(part, order, 1), np.take_along_axis(pd, order, 1)
        idx[s:e] = np.where(np.isfinite(pd), part, -1)
        dist[s:e] = pd
    return idx, dist


def knn_kernel(
    indices: np.ndarray, d2: np.ndarray, *, epsilon: float | None = None
) -> tuple[sp.csr_matrix, float]:
    """Symmetric sparse Gaussian kernel on a nearest-neighbour graph.

    ``K_ij = exp(-d_ij^2 / eps)`` for ``j`` among ``i``'s neighbours or ``i`` among ``j``'s
    (the larger of the two weights), 0 elsewhere and on the diagonal.

    Parameters
    ----------
    indices, d2
        ``(n, k)`` from :func:`knn_points` (-1 / inf where missing).
    epsilon
        Bandwidth in squared distance units; None: the median heuristic, the median over
        points of the squared distance to the ``k``-th neighbour.

    Returns
    -------
    kernel : scipy.sparse.csr_matrix
        ``(n, n)`` float64, symmetric, at most ``2 n k`` entries.
    epsilon : float
        The bandwidth used.
    """
    indices = np.asarray(indices, dtype=np.int64)
    d2 = np.asarray(d2, dtype=np.float64)
    if indices.shape != d2.shape or indices.ndim != 2:
        raise ValueError(f"indices {indices.shape} and d2 {d2.shape} must be one (n, k) shape")
    n, k = indices.shape
    if epsilon is None:
        kth = d2[:, -1][np.isfinite(d2[:, -1])]
        if kth.size == 0:
            raise ValueError("no finite neighbour distances to set a bandwidth from")
        eps = float(np.median(kth))
        if eps <= 0:
            pos = d2[np.isfinite(d2) & (d2 > 0)]
            eps = float(np.median(pos)) if pos.size else 1.0
    else:
        eps = float(epsilon)
    if not eps > 0:
        raise ValueError(f"epsilon must be > 0, got {eps}")
    ok = indices >= 0
    rows = np.repeat(np.arange(n), k)[ok.ravel()]
    cols = indices[ok]
    w = np.exp(-d2[ok] / eps)
    kern = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    kern = kern.maximum(kern.T).tocsr()
    kern.setdiag(0.0)
    kern.eliminate_zeros()
    return kern, eps


def diffusion_map_sparse(
    kernel: sp.spmatrix | sp.sparray,
    *,
    n_coords: int = 4,
    alpha: float = 1.0,
    t: float = 1.0,
    dense_below: int = 64,
) -> DiffusionMap:
    """:func:`diffusion_map` of a sparse symmetric kernel, with :func:`scipy.sparse.linalg.eigsh`.

    Parameters
    ----------
    kernel
        ``(n, n)`` sparse, symmetric, >= 0.
    n_coords, alpha, t
        As :func:`diffusion_map`.
    dense_below
        Fewer connected frames than this: solved densely (eigsh needs ``k < n``).

    Returns
    -------
    DiffusionMap
        Same normalisation and sign convention as :func:`diffusion_map`.
    """
    from scipy.sparse.linalg import eigsh

    k = sp.csr_matrix(kernel, dtype=np.float64)
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"kernel must be square, got shape {k.shape}")
    if k.nnz and (np.any(k.data < 0) or not np.all(np.isfinite(k.data))):
        raise ValueError("kernel has negative or non-finite entries")
    if k.nnz and abs(k - k.T).max() > 1e-10 * abs(k).max():
        raise ValueError("kernel is not symmetric")
    n = k.shape[0]
    diag = k.diagonal()
    connected = np.asarray(k.sum(axis=1)).ravel() - diag > 0
    idx = np.flatnonzero(connected)
    coords = np.full((n, n_coords), np.nan)
    m = idx.size
    n_eff = min(n_coords, max(m - 1, 0))
    if n_eff == 0:
        return DiffusionMap(np.ones(1), coords, connected)
    kc = k[idx][:, idx]
    q = np.asarray(kc.sum(axis=1)).ravel()
    qa = q**alpha
    ka = sp.diags(1.0 / qa) @ kc @ sp.diags(1.0 / qa)
    d = np.asarray(ka.sum(axis=1)).ravel()
    sq = np.sqrt(d)
    sym = sp.diags(1.0 / sq) @ ka @ sp.diags(1.0 / sq)
    sym = (0.5 * (sym + sym.T)).tocsr()
    if m < max(dense_below, n_eff + 3):
        w, v = scipy.linalg.eigh(sym.toarray(), subset_by_index=[m - n_eff - 1, m - 1])
    else:
        # start vector: the known top eigenvector sqrt(d) (deterministic, fast convergence)
        w, v = eigsh(sym, k=n_eff + 1, which="LA", v0=sq / np.linalg.norm(sq), tol=1e-10)
    w, psi = _right_eigenvectors(w, v, d)
    coords[idx, :n_eff] = psi[:, 1:] * (w[1:] ** t)
    return DiffusionMap(w, coords, connected)


def diffusion_map_of_points(
    points: np.ndarray,
    *,
    k: int = 20,
    n_coords: int = 4,
    n_components: int | None = None,
    epsilon: float | None = None,
    alpha: float = 1.0,
) -> tuple[DiffusionMap, float]:
    """Diffusion map of points on a sparse ``k``-nearest-neighbour Gaussian kernel.

    Parameters
    ----------
    points
        ``(n, d)`` float coordinates (e.g. a :class:`~hpcdiff.similarity.ProfileSketch`).
    k
        Neighbours per point.
    n_coords, alpha
        As :func:`diffusion_map`.
    n_components
        If given and ``< d``: the points' leading principal components first (centred SVD;
        keeps the directions the frames differ along, drops isotropic noise).
    epsilon
        Kernel bandwidth (squared distance units); None: the median heuristic of
        :func:`knn_kernel`.

    Returns
    -------
    (DiffusionMap, float)
        The map and the bandwidth used.
    """
    x = np.asarray(points, dtype=np.float64)
    ok = np.all(np.isfinite(x), axis=1)
    if n_components is not None and n_components < x.shape[1] and ok.sum() > n_components:
        xc = x[ok] - x[ok].mean(axis=0)
        u, s, _ = np.linalg.svd(xc, full_matrices=False)
        y = np.full((x.shape[0], n_components), np.nan)
        y[ok] = u[:, :n_components] * s[:n_components]
        x = y
    idx, d2 = knn_points(x, k=k)
    kern, eps = knn_kernel(idx, d2, epsilon=epsilon)
    return diffusion_map_sparse(kern, n_coords=n_coords, alpha=alpha), eps


def profile_points(
    sketch: np.ndarray,
    *,
    score: np.ndarray | None = None,
    n_components: int = 8,
    score_weight: float = 2.0,
) -> np.ndarray:
    """Points for the common-arc diffusion map: a per-frame score beside the profile's PCs.

    One frame's similarity profile is mostly noise, while the per-frame score (its mean
    correlation to all the others) averages that noise over every pair.  The points are
    ``[score_weight * (score - mean) / std, pc_1 / sd_1, ..., pc_m / sd_1]``: the
    standardised score as one coordinate and the sketch's ``m = n_components`` leading
    principal components (centred SVD), all scaled so the first component has unit standard
    deviation (relative scales between components are kept).  The kernel then follows the
    score where the profiles carry only noise, and the profiles' structure where they do.

    Parameters
    ----------
    sketch
        ``(n, d)`` float profile sketch (:class:`~hpcdiff.similarity.ProfileSketch`).
    score
        ``(n,)`` float per-frame score (e.g. :attr:`~hpcdiff.similarity.FrameScores.mean_cc`),
        NaN where a frame has none; None or ``score_weight == 0``: principal components only.
    n_components
        Principal components kept (clipped to ``d`` and to the finite rows - 1).
    score_weight
        Weight of the standardised score against the first principal component (>= 0).

    Returns
    -------
    np.ndarray
        ``(n, m)`` or ``(n, m + 1)`` float64 (score column first); rows NaN where the sketch
        or the score is not finite (such frames get no diffusion coordinates).
    """
    x = np.asarray(sketch, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"sketch must be (n, d), got shape {x.shape}")
    if score_weight < 0:
        raise ValueError(f"score_weight must be >= 0, got {score_weight}")
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    n = x.shape[0]
    ok = np.all(np.isfinite(x), axis=1)
    use_score = score is not None and score_weight > 0
    if use_score:
        sc = np.asarray(score, dtype=np.float64)
        if sc.shape != (n,):
            raise ValueError(f"score must have shape ({n},), got {sc.shape}")
        ok &= np.isfinite(sc)
    m = max(1, min(int(n_components), x.shape[1], max(int(ok.sum()) - 1, 1)))
    pcs = np.full((n, m), np.nan)
    if ok.sum() >= 2:
        xc = x[ok] - x[ok].mean(axis=0)
        u, s, _ = np.linalg.svd(xc, full_matrices=False)
        p = u[:, :m] * s[:m]
        sd = float(p[:, 0].std())
        pcs[ok] = p / sd if sd > 0 else p
    if not use_score:
        return pcs
    z = np.full(n, np.nan)
    if ok.sum() >= 2:
        v = sc[ok]
        sd = float(v.std())
        z[ok] = score_weight * ((v - v.mean()) / sd if sd > 0 else v * 0.0)
    return np.column_stack([z, pcs])


class BlockKnn:
    """Each frame's ``k`` nearest neighbours, from upper-triangle blocks of a pair matrix.

    Feed every row block ``values[i - start, j - start]`` (rows ``start:stop``, columns
    ``start:``) once with :meth:`add`; entries at or below the diagonal are ignored and
    each pair counts for both frames.  Memory ``(n, k)``: the matrix is never whole.

    Parameters
    ----------
    n
        Number of frames.
    k
        Neighbours kept per frame (clipped to ``n - 1``).
    largest
        False: the smallest values are nearest (distances); True: the largest
        (similarities).  NaN values are never neighbours.
    """

    def __init__(self, n: int, k: int, *, largest: bool = False) -> None:
        self.n, self.k = int(n), max(1, min(int(k), max(int(n) - 1, 1)))
        self.largest = largest
        self.keys = np.full((self.n, self.k), np.inf)
        self.indices = np.full((self.n, self.k), -1, np.int64)

    def add(self, start: int, values: np.ndarray) -> None:
        """Add rows ``start:start + len(values)``, columns ``start:``."""
        v = np.asarray(values, dtype=np.float64)
        b, w = v.shape
        key = -v if self.largest else v.copy()
        rows = np.arange(start, start + b)[:, None]
        cols = np.arange(start, start + w)[None, :]
        key = np.where((cols > rows) & np.isfinite(key), key, np.inf)
        col_idx = np.broadcast_to(cols, key.shape)
        self._merge(np.arange(start, start + b), key, col_idx)
        row_idx = np.broadcast_to(np.arange(start, start + b)[None, :], (w, b))
        self._merge(np.arange(start, start + w), key.T, row_idx)

    def _merge(self, who: np.ndarray, key: np.ndarray, idx: np.ndarray) -> None:
        allk = np.concatenate([self.keys[who], key], axis=1)
        alli = np.concatenate([self.indices[who], idx], axis=1)
        kk = self.k
        if allk.shape[1] > kk:
            part = np.argpartition(allk, kk - 1, axis=1)[:, :kk]
            allk = np.take_along_axis(allk, part, 1)
            alli = np.take_along_axis(alli, part, 1)
        # ties broken by index, so the result does not depend on the order of the blocks
        order = _row_lexsort(allk, alli)
        self.keys[who] = np.take_along_axis(allk, order, 1)
        self.indices[who] = np.where(
            np.isfinite(self.keys[who]), np.take_along_axis(alli, order, 1), -1
        )

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, values)``: ``(n, k)`` neighbours nearest first (-1 where missing)
        and their values (NaN where missing)."""
        vals = np.where(np.isfinite(self.keys), -self.keys if self.largest else self.keys, np.nan)
        return self.indices.copy(), vals


def _row_lexsort(keys: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per row: order by key, then index."""
    order = np.argsort(idx, axis=1, kind="stable")
    k2 = np.take_along_axis(keys, order, 1)
    o2 = np.argsort(k2, axis=1, kind="stable")
    return np.take_along_axis(order, o2, 1)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count half).

    Parameters
    ----------
    scores
        ``(n,)`` float; NaN entries are left out.
    labels
        ``(n,)`` 0/1 or bool; 1 is the positive class (diffuse).

    Returns
    -------
    float
        AUC in [0, 1] (Mann-Whitney U / (n_pos n_neg)); NaN if a class is empty.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ")
    ok = np.isfinite(scores)
    s, y = scores[ok], labels[ok]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def coordinate_aucs(coords: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """ROC AUC of each diffusion coordinate as a diffuse / non-diffuse score.

    A coordinate's sign is arbitrary, so the separating power is stated as
    ``max(AUC, 1 - AUC)`` alongside the raw AUC.

    Returns
    -------
    list of dict
        One per coordinate: ``coordinate`` (1-based), ``auc``, ``auc_max`` (= max(AUC, 1-AUC)).
    """
    coords = np.asarray(coords)
    out = []
    for j in range(coords.shape[1]):
        auc = roc_auc(coords[:, j], labels)
        out.append({"coordinate": j + 1, "auc": auc, "auc_max": float(max(auc, 1.0 - auc))})
    return out


def plot_diffusion(
    coords: np.ndarray,
    labels: np.ndarray | None,
    path: str | Path,
    *,
    title: str = "diffusion map",
    label_names: tuple[str, str] = ("no diffuse", "diffuse"),
) -> Path:
    """Scatter plot of the first two diffusion coordinates coloured by label, saved as PNG.

    Parameters
    ----------
    coords
        ``(n, >=1)`` diffusion coordinates (NaN rows skipped).
    labels
        ``(n,)`` 0/1, or None for one colour.
    path
        PNG file to write (the caller checks for overwrites).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    coords = np.asarray(coords, dtype=np.float64)
    fig = Figure(figsize=(5.0, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = coords[:, 0]
    y = coords[:, 1] if coords.shape[1] > 1 else np.zeros_like(x)
    ok = np.isfinite(x) & np.isfinite(y)
    if labels is None:
        ax.scatter(x[ok], y[ok], s=8, c="tab:blue")
    else:
        lab = np.asarray(labels).astype(bool)
        for value, colour, name in (
            (False, "tab:blue", label_names[0]),
            (True, "tab:red", label_names[1]),
        ):
            sel = ok & (lab == value)
            ax.scatter(x[sel], y[sel], s=8, c=colour, label=f"{name} ({int(sel.sum())})", alpha=0.7)
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("diffusion coordinate 1")
    ax.set_ylabel("diffusion coordinate 2" if coords.shape[1] > 1 else "")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100, format="png")
    return path


def _square(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square (n, n) matrix, got shape {a.shape}")
    return a


__all__ = [
    "diffusion_map_of_points",
    "BlockKnn",
    "DiffusionMap",
    "coordinate_aucs",
    "diffusion_map",
    "diffusion_map_sparse",
    "kernel_from_distances",
    "kernel_from_similarity",
    "knn_bandwidth",
    "knn_kernel",
    "knn_points",
    "plot_diffusion",
    "profile_points",
    "roc_auc",
]

"""Pairwise frame similarities: common-arc correlation in reciprocal space, and image space.

Common arc
    Each frame, binned into the merge grid (:class:`hpcdiff.merge.FrameVoxels`), is a
    sparse row of a matrix ``X`` (frames x voxels) holding its mean value per voxel, with
    ``M`` the matching indicator matrix.  Two frames' Ewald spheres cross along an arc;
    their similarity is the Pearson correlation over the voxels both touch.  All the sums
    it needs come from sparse products, never from dense volumes::

        n   = M M^T        (voxels in common)
        sx  = X M^T        (sum of frame i's values over the common voxels)
        sxx = X^2 M^T
        sxy = X X^T

    computed in blocks of rows (:func:`common_arc_block`), upper triangle only, so blocks
    can run as independent tasks and the result is exactly symmetric.  Pairs with fewer
    than ``min_overlap`` common voxels, or with no variance there, get NaN: no similarity,
    not a fake zero.

Image space
    Preprocessed frames, optionally mean-pooled (:func:`downsample`), flattened into a
    dense ``(n, d)`` matrix; Euclidean distances and correlation coefficients from blocked
    Gram products (:func:`image_similarity`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from hpcdiff.merge import FrameVoxels

ProfileForm = Literal["cc", "fisher", "significance"]


@dataclass(frozen=True)
class SparseFrames:
    """Frames as sparse rows over the voxel grid, with the column-side products prepared.

    Attributes
    ----------
    x
        ``(n_frames, n_touched)`` CSR float64 over the voxels some frame touches (in voxel
        order): each frame's mean value per voxel, centred and
        scaled to unit variance over the frame's own voxels (Pearson correlations do not
        change under a per-frame offset and scale; the sums stay well conditioned).
    m
        ``(n_frames, n_touched)`` CSR float64 indicator (1 where the frame has a value), with
        the same sparsity structure as ``x``.
    x2
        ``x`` squared elementwise.
    column_block
        Frames per column block.
    columns
        Per column block ``J``: ``(m_J^T, x_J^T, x2_J^T)``, each ``(n_touched, n_J)`` CSR,
        so every block product is CSR @ CSR with no per-task format conversion.
    """

    x: sp.csr_matrix
    m: sp.csr_matrix
    x2: sp.csr_matrix
    column_block: int
    columns: tuple[tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix], ...]

    @property
    def n_frames(self) -> int:
        """Number of frames (rows)."""
        return int(self.x.shape[0])


def sparse_frames(
    frames: Sequence[FrameVoxels], *, n_voxels: int, column_block: int = 4096
) -> SparseFrames:
    """Stack binned frames into the sparse matrices of :class:`SparseFrames`.

    Parameters
    ----------
    frames
        One :class:`~hpcdiff.merge.FrameVoxels` per frame.
    n_voxels
        Columns: the grid's ``n_voxels``.
    column_block
        Frames per prepared column block.  A block product costs about one random access
        into the column side per stored element of the row block, whatever the number of
        columns, so few wide column blocks are fastest (the few pairs are cheap: a voxel is
        touched by few frames); narrower blocks bound the memory of one product.
    """
    if column_block < 1:
        raise ValueError(f"column_block must be >= 1, got {column_block}")
    lengths = np.array([len(f) for f in frames], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    if frames:
        indices = np.concatenate([f.voxels for f in frames])
        values = np.concatenate([_standardise(f.means) for f in frames])
    else:
        indices = np.zeros(0, np.int64)
        values = np.zeros(0, np.float64)
    if indices.size and (indices.min() < 0 or indices.max() >= n_voxels):
        raise ValueError(f"voxel indices outside [0, {n_voxels})")
    # columns: only the voxels some frame touches, in voxel order (a smaller, denser
    # address space for the products' random accesses; the sums do not change)
    touched, columns_of = np.unique(indices, return_inverse=True)
    indices = columns_of.reshape(-1)
    index_dtype = np.int32 if touched.size < 2**31 and indices.size < 2**31 else np.int64
    shape = (len(frames), max(int(touched.size), 1))
    ind, ptr = indices.astype(index_dtype), indptr.astype(index_dtype)
    x = sp.csr_matrix((values, ind, ptr), shape=shape)
    m = sp.csr_matrix((np.ones_like(values), ind, ptr), shape=shape)
    x2 = sp.csr_matrix((values * values, ind, ptr), shape=shape)
    columns = tuple(
        (m[s:e].T.tocsr(), x[s:e].T.tocsr(), x2[s:e].T.tocsr())
        for s, e in blocks(len(frames), column_block)
    )
    return SparseFrames(x, m, x2, column_block, columns)


def _standardise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if v.size == 0:
        return v
    c = v - v.mean()
    s = np.sqrt(np.mean(c * c))
    return c / s if s > 0 else c


def blocks(n: int, size: int) -> list[tuple[int, int]]:
    """Row blocks ``[(start, stop), ...]`` of at most ``size`` covering ``range(n)``."""
    if size < 1:
        raise ValueError(f"block size must be >= 1, got {size}")
    return [(s, min(s + size, n)) for s in range(0, n, size)]


@dataclass(frozen=True)
class SimilarityBlock:
    """Rows ``start:stop`` of a similarity matrix, columns ``start:`` (upper triangle part).

    Attributes
    ----------
    start, stop
        Row range.
    similarity
        ``(stop - start, n - start)`` float64, NaN where undefined.
    overlap
        ``(stop - start, n - start)`` int64 number of common voxels (or pixels).
    """

    start: int
    stop: int
    similarity: np.ndarray
    overlap: np.ndarray


def common_arc_block(
    frames: SparseFrames, start: int, stop: int, *, min_overlap: int
) -> SimilarityBlock:
    """Pearson correlation over common voxels for rows ``start:stop``, columns ``start:``.

    Parameters
    ----------
    frames
        All frames (:func:`sparse_frames`).
    start, stop
        Row range of this block.
    min_overlap
        Pairs with fewer common voxels get NaN.

    Returns
    -------
    SimilarityBlock
    """
    n_all = frames.n_frames
    if not 0 <= start < stop <= n_all:
        raise ValueError(f"block rows {start}:{stop} outside 0:{n_all}")
    mb, xb, x2b = frames.m[start:stop], frames.x[start:stop], frames.x2[start:stop]
    # six sums, six row-block passes (the minimum): [m; x; x^2] m^T, [m; x] x^T, m (x^2)^T
    left1 = sp.vstack([mb, xb, x2b], format="csr")
    left2 = sp.vstack([mb, xb], format="csr")
    b = stop - start
    first = start // frames.column_block
    parts = []
    for mt, xt, x2t in frames.columns[first:]:
        p1 = _dense(left1 @ mt)
        p2 = _dense(left2 @ xt)
        syy = _dense(mb @ x2t)
        n, sx, sxx = p1[:b], p1[b : 2 * b], p1[2 * b :]
        sy, sxy = p2[:b], p2[b:]
        corr = pearson_from_sums(n, sx, sy, sxx, syy, sxy, min_overlap=min_overlap)
        parts.append((corr, n))
    trim = start - first * frames.column_block
    corr = np.concatenate([p[0] for p in parts], axis=1)[:, trim:]
    n = np.concatenate([p[1] for p in parts], axis=1)[:, trim:]
    return SimilarityBlock(start, stop, corr, n.astype(np.int64))


def frame_rows(
    frames: Sequence[FrameVoxels], *, n_voxels: int
) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """``(x, m, x2)`` CSR rows of :class:`SparseFrames` over the whole grid (no remapping).

    Parameters
    ----------
    frames
        Frames on a grid of ``n_voxels`` voxels.

    Returns
    -------
    (x, m, x2)
        ``(len(frames), n_voxels)`` CSR float64: standardised values, indicator, squares.
    """
    lengths = np.array([len(f) for f in frames], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    if frames:
        indices = np.concatenate([np.asarray(f.voxels, np.int64) for f in frames])
        values = np.concatenate([_standardise(f.means) for f in frames])
    else:
        indices, values = np.zeros(0, np.int64), np.zeros(0)
    if indices.size and (indices.min() < 0 or indices.max() >= n_voxels):
        raise ValueError(f"voxel indices outside [0, {n_voxels})")
    dt = np.int32 if n_voxels < 2**31 and indices.size < 2**31 else np.int64
    ind, ptr, shape = indices.astype(dt), indptr.astype(dt), (len(frames), max(n_voxels, 1))
    x = sp.csr_matrix((values, ind, ptr), shape=shape)
    m = sp.csr_matrix((np.ones_like(values), ind, ptr), shape=shape)
    x2 = sp.csr_matrix((values * values, ind, ptr), shape=shape)
    return x, m, x2


def common_arc_rows(
    rows: Sequence[FrameVoxels],
    column_blocks: Iterable[Sequence[FrameVoxels]],
    *,
    start: int,
    n_voxels: int,
    min_overlap: int,
) -> SimilarityBlock:
    """:func:`common_arc_block` of rows ``start:start + len(rows)`` with columns streamed.

    The column frames arrive in blocks (e.g. read from disk one at a time), in frame
    order from frame ``start`` to the last; only one column block is in memory at once.

    Parameters
    ----------
    rows
        The block's frames.
    column_blocks
        Frames ``start, start + 1, ..., n - 1`` in consecutive blocks.
    start
        Frame number of ``rows[0]``.
    n_voxels, min_overlap
        As :func:`common_arc_similarity`.

    Returns
    -------
    SimilarityBlock
        Rows ``start:start + len(rows)``, columns ``start:``.
    """
    xb, mb, x2b = frame_rows(rows, n_voxels=n_voxels)
    left1 = sp.vstack([mb, xb, x2b], format="csr")
    left2 = sp.vstack([mb, xb], format="csr")
    b = len(rows)
    corrs, counts = [], []
    for cols in column_blocks:
        xc, mc, x2c = frame_rows(cols, n_voxels=n_voxels)
        p1 = _dense(left1 @ mc.T.tocsr())
        p2 = _dense(left2 @ xc.T.tocsr())
        syy = _dense(mb @ x2c.T.tocsr())
        n, sx, sxx = p1[:b], p1[b : 2 * b], p1[2 * b :]
        sy, sxy = p2[:b], p2[b:]
        corrs.append(pearson_from_sums(n, sx, sy, sxx, syy, sxy, min_overlap=min_overlap))
        counts.append(n)
    if not corrs:
        raise ValueError("no column blocks")
    corr = np.concatenate(corrs, axis=1)
    n_all = np.concatenate(counts, axis=1)
    return SimilarityBlock(start, start + b, corr, n_all.astype(np.int64))


def _dense(a: sp.spmatrix) -> np.ndarray:
    return np.asarray(a.toarray(), dtype=np.float64)


def pearson_from_sums(
    n: np.ndarray,
    sx: np.ndarray,
    sy: np.ndarray,
    sxx: np.ndarray,
    syy: np.ndarray,
    sxy: np.ndarray,
    *,
    min_overlap: int,
    rtol: float = 1e-10,
) -> np.ndarray:
    """Pearson correlation from pairwise sums over common elements.

    Parameters
    ----------
    n, sx, sy, sxx, syy, sxy
        Arrays of one shape: counts and sums of ``x``, ``y``, ``x^2``, ``y^2``, ``xy``.
    min_overlap
        Entries with ``n < min_overlap`` (and always ``n < 2``) are NaN.
    rtol
        A variance below ``rtol * sum of squares`` counts as none (NaN).

    Returns
    -------
    np.ndarray
        float64 in [-1, 1] or NaN.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        nn = np.maximum(n, 1)
        cov = sxy - sx * sy / nn
        vx = sxx - sx * sx / nn
        vy = syy - sy * sy / nn
        ok = (n >= max(min_overlap, 2)) & (vx > rtol * sxx) & (vy > rtol * syy)
        corr = np.where(ok, cov / np.sqrt(np.where(ok, vx * vy, 1.0)), np.nan)
    return np.clip(corr, -1.0, 1.0)


def assemble(
    n: int, parts: Sequence[SimilarityBlock], *, diagonal: float | None = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Assemble upper-triangle blocks into full symmetric matrices.

    Parameters
    ----------
    n
        Number of frames.
    parts
        Blocks covering every row once (any order).
    diagonal
        Value put on the diagonal where the frame's self-overlap meets the block's rule
        (its self-similarity is finite); None keeps the computed values.

    Returns
    -------
    similarity : np.ndarray
        ``(n, n)`` float64, symmetric, NaN where undefined.
    overlap : np.ndarray
        ``(n, n)`` int64, symmetric.
    """
    sim = np.full((n, n), np.nan)
    ovl = np.zeros((n, n), np.int64)
    covered = np.zeros(n, bool)
    for b in parts:
        if covered[b.start : b.stop].any():
            raise ValueError(f"rows {b.start}:{b.stop} covered twice")
        covered[b.start : b.stop] = True
        sim[b.start : b.stop, b.start :] = b.similarity
        ovl[b.start : b.stop, b.start :] = b.overlap
    if not covered.all():
        raise ValueError(f"rows {np.flatnonzero(~covered)[:10].tolist()} not covered by any block")
    upper = np.triu(np.ones((n, n), bool), 1)
    sim = np.where(upper, sim, sim.T)  # the diagonal keeps the row blocks' own values
    ovl = np.where(upper, ovl, ovl.T)
    if diagonal is not None:
        d = np.diag(sim)
        np.fill_diagonal(sim, np.where(np.isfinite(d), diagonal, np.nan))
    return sim, ovl


def common_arc_similarity(
    frames: Sequence[FrameVoxels],
    *,
    n_voxels: int,
    min_overlap: int,
    block: int = 256,
    column_block: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Serial common-arc similarity of all frame pairs (see the module notes).

    Parameters
    ----------
    frames
        One :class:`~hpcdiff.merge.FrameVoxels` per frame.
    n_voxels
        The grid's ``n_voxels``.
    min_overlap
        Minimum common voxels for a pair to have a similarity.
    block
        Rows per block.
    column_block
        Frames per column block (:func:`sparse_frames`).

    Returns
    -------
    similarity : np.ndarray
        ``(n, n)`` float64 symmetric, 1 on the diagonal, NaN where undefined.
    overlap : np.ndarray
        ``(n, n)`` int64 common voxels.
    """
    mats = sparse_frames(frames, n_voxels=n_voxels, column_block=column_block)
    parts = [
        common_arc_block(mats, s, e, min_overlap=min_overlap) for s, e in blocks(len(frames), block)
    ]
    return assemble(len(frames), parts)


def common_arc_similarity_dense(
    frames: Sequence[FrameVoxels], *, n_voxels: int, min_overlap: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reference implementation: every frame a dense volume, pairs compared voxel by voxel.

    Each frame becomes a dense ``(n_voxels,)`` float64 array (NaN where untouched) and each
    pair is correlated over the voxels finite in both.  Memory ``n * n_voxels * 8`` bytes
    and time ``O(n^2 n_voxels)``: for tests and the benchmark only.

    Returns
    -------
    similarity, overlap
        As :func:`common_arc_similarity`.
    """
    n = len(frames)
    dense = np.full((n, n_voxels), np.nan)
    for i, f in enumerate(frames):
        dense[i, f.voxels] = f.means
    finite = np.isfinite(dense)
    sim = np.full((n, n), np.nan)
    ovl = np.zeros((n, n), np.int64)
    for i in range(n):
        for j in range(i, n):
            both = finite[i] & finite[j]
            c = int(both.sum())
            ovl[i, j] = ovl[j, i] = c
            if c < max(min_overlap, 2):
                continue
            x, y = dense[i, both], dense[j, both]
            x = x - x.mean()
            y = y - y.mean()
            den = np.sqrt(np.dot(x, x) * np.dot(y, y))
            if den > 0:
                sim[i, j] = sim[j, i] = 1.0 if i == j else np.clip(np.dot(x, y) / den, -1, 1)
    return sim, ovl


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Mean-pool the last two axes by ``factor``, ignoring non-finite pixels.

    Parameters
    ----------
    images
        ``(..., h, w)`` float.
    factor
        Pooling size; edges that do not fill a whole cell are dropped.  1 returns a float32
        copy.

    Returns
    -------
    np.ndarray
        ``(..., h // factor, w // factor)`` float32; NaN where a cell had no finite pixel.
    """
    images = np.asarray(images, dtype=np.float32)
    if factor < 1:
        raise ValueError(f"downsample factor must be >= 1, got {factor}")
    if factor == 1:
        return images.copy()
    h, w = images.shape[-2] // factor, images.shape[-1] // factor
    if h == 0 or w == 0:
        raise ValueError(f"images {images.shape[-2:]} are smaller than the factor {factor}")
    cut = images[..., : h * factor, : w * factor]
    cells = cut.reshape(*cut.shape[:-2], h, factor, w, factor)
    finite = np.isfinite(cells)
    total = np.where(finite, cells, 0).sum(axis=(-3, -1), dtype=np.float64)
    count = finite.sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def image_vectors(images: np.ndarray) -> np.ndarray:
    """Flatten images to ``(n, d)`` float64 rows; pixels not finite in every image are dropped."""
    images = np.asarray(images)
    flat = images.reshape(images.shape[0], -1).astype(np.float64)
    keep = np.all(np.isfinite(flat), axis=0)
    return np.ascontiguousarray(flat[:, keep])


def image_block(
    vectors: np.ndarray, start: int, stop: int
) -> tuple[SimilarityBlock, SimilarityBlock]:
    """Euclidean distance and correlation for rows ``start:stop``, columns ``start:``.

    Parameters
    ----------
    vectors
        ``(n, d)`` float64 image rows (:func:`image_vectors`).

    Returns
    -------
    (SimilarityBlock, SimilarityBlock)
        Distances (same units as the images) and correlation coefficients (NaN for a
        constant image); ``overlap`` is ``d``, the pixels compared.
    """
    dist, corr = image_pairs(vectors[start:stop], vectors[start:])
    ovl = np.full(dist.shape, vectors.shape[1], np.int64)
    return SimilarityBlock(start, stop, dist, ovl), SimilarityBlock(start, stop, corr, ovl)


def image_pairs(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances and correlations between ``(a, d)`` rows and ``(b, d)`` columns.

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``(a, b)`` float64 distances and correlations (NaN for a constant image).
    """
    sq_r = np.einsum("ij,ij->i", rows, rows)
    sq_c = np.einsum("ij,ij->i", cols, cols)
    dist = np.sqrt(np.maximum(sq_r[:, None] + sq_c[None, :] - 2.0 * (rows @ cols.T), 0.0))
    rc = rows - rows.mean(axis=1, keepdims=True)
    cc = cols - cols.mean(axis=1, keepdims=True)
    nr = np.sqrt(np.einsum("ij,ij->i", rc, rc))
    nc = np.sqrt(np.einsum("ij,ij->i", cc, cc))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (rc @ cc.T) / (nr[:, None] * nc[None, :])
    corr = np.where(np.isfinite(corr), np.clip(corr, -1.0, 1.0), np.nan)
    return dist, corr


def image_similarity(
    images: np.ndarray, *, downsample_factor: int = 1, block: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance and correlation between preprocessed frames.

    Parameters
    ----------
    images
        ``(n, h, w)`` preprocessed frames (NaN where no data).
    downsample_factor
        Mean-pool by this factor first.
    block
        Rows per block.

    Returns
    -------
    distance : np.ndarray
        ``(n, n)`` float64, zero diagonal.
    correlation : np.ndarray
        ``(n, n)`` float64, 1 on the diagonal (NaN for constant images).
    """
    vectors = image_vectors(downsample(images, downsample_factor))
    parts = [image_block(vectors, s, e) for s, e in blocks(vectors.shape[0], block)]
    dist, _ = assemble(vectors.shape[0], [p[0] for p in parts], diagonal=0.0)
    corr, _ = assemble(vectors.shape[0], [p[1] for p in parts], diagonal=1.0)
    return dist, corr


# --------------------------------------------------------------------------- noise


def fisher_z(
    similarity: np.ndarray, overlap: np.ndarray, *, significance: bool = True
) -> np.ndarray:
    """Fisher-z form of correlations measured over ``overlap`` common elements.

    ``z = atanh(r)`` has standard error ``1 / sqrt(n - 3)`` for ``n`` common elements, so
    ``atanh(r) * sqrt(n - 3)`` is a significance: standard normal when two frames share
    nothing but noise, whatever their overlap.

    Parameters
    ----------
    similarity
        Pearson correlations in [-1, 1], NaN where undefined (any shape).
    overlap
        Common elements of each pair, same shape (int).
    significance
        True: ``atanh(r) * sqrt(n - 3)`` (dimensionless, ~N(0, 1) under no correlation);
        False: ``atanh(r)``.

    Returns
    -------
    np.ndarray
        float64, same shape; NaN where the correlation is NaN or ``n <= 3``.  ``|r| = 1``
        is clipped to ``1 - 1e-12`` (a finite z).
    """
    r = np.asarray(similarity, dtype=np.float64)
    n = np.asarray(overlap, dtype=np.float64)
    if r.shape != n.shape:
        raise ValueError(f"similarity {r.shape} and overlap {n.shape} differ")
    with np.errstate(invalid="ignore"):
        z = np.arctanh(np.clip(r, -1.0 + 1e-12, 1.0 - 1e-12))
        z = np.where(n > 3, z, np.nan)
        if significance:
            z = z * np.sqrt(np.maximum(n - 3.0, 0.0))
    return z


def _not_upper(block: SimilarityBlock) -> np.ndarray:
    """``(rows, cols)`` bool of a block: True on and below the diagonal."""
    rows = np.arange(block.start, block.stop)[:, None]
    cols = np.arange(block.start, block.start + block.similarity.shape[1])[None, :]
    return cols <= rows


class FrameScores:
    """Per-frame scores from similarity blocks, accumulated without the N x N matrix.

    For frame ``i``, over the other frames ``j`` with a similarity:

    * ``mean_z``: the inverse-variance (``n_ij - 3``) weighted mean of ``atanh(r_ij)``,
      the frame's typical Fisher-z to the others (a correlation after ``tanh``);
    * ``significance``: ``sum_j w_ij z_ij / sqrt(sum_j w_ij)``, the same sum in units of its
      standard error: N(0, 1) for a frame that shares only noise with the others;
    * ``mean_cc``: the plain mean correlation; ``pairs``: the pairs counted.

    Feed it every upper-triangle :class:`SimilarityBlock` once (:meth:`add`); each pair
    counts for both frames.

    Parameters
    ----------
    n
        Number of frames.
    """

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self.sum_wz = np.zeros(self.n)
        self.sum_w = np.zeros(self.n)
        self.sum_r = np.zeros(self.n)
        self.pairs = np.zeros(self.n, np.int64)

    def add(self, block: SimilarityBlock) -> None:
        """Add rows ``block.start:block.stop`` (columns ``block.start:``, diagonal skipped)."""
        r = np.array(block.similarity, dtype=np.float64)
        ovl = np.asarray(block.overlap)
        rows = np.arange(block.start, block.stop)
        r[_not_upper(block)] = np.nan  # each pair once: strictly above the diagonal
        z = fisher_z(r, ovl, significance=False)
        ok = np.isfinite(z)
        w = np.where(ok, np.maximum(ovl - 3.0, 0.0), 0.0)
        wz = np.where(ok, w * z, 0.0)
        rr = np.where(ok, r, 0.0)
        cols = slice(block.start, block.start + r.shape[1])
        for arr, vals in ((self.sum_wz, wz), (self.sum_w, w), (self.sum_r, rr)):
            arr[rows] += vals.sum(axis=1)
            arr[cols] += vals.sum(axis=0)
        counts = ok.astype(np.int64)
        self.pairs[rows] += counts.sum(axis=1)
        self.pairs[cols] += counts.sum(axis=0)

    @property
    def mean_z(self) -> np.ndarray:
        """``(n,)`` float64 weighted mean Fisher z (NaN for a frame without pairs)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.sum_w > 0, self.sum_wz / self.sum_w, np.nan)

    @property
    def significance(self) -> np.ndarray:
        """``(n,)`` float64 ``sum w z / sqrt(sum w)`` (NaN for a frame without pairs)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.sum_w > 0, self.sum_wz / np.sqrt(self.sum_w), np.nan)

    @property
    def mean_cc(self) -> np.ndarray:
        """``(n,)`` float64 plain mean correlation to the others (NaN without pairs)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.pairs > 0, self.sum_r / self.pairs, np.nan)


def frame_scores(similarity: np.ndarray, overlap: np.ndarray) -> FrameScores:
    """:class:`FrameScores` of full ``(n, n)`` matrices (one block of every row)."""
    n = similarity.shape[0]
    scores = FrameScores(n)
    scores.add(SimilarityBlock(0, n, np.asarray(similarity), np.asarray(overlap)))
    return scores


class ProfileSketch:
    """Random projection of each frame's similarity profile, accumulated from blocks.

    Frame ``i``'s *profile* is its row of the common-arc matrix ``Z`` in the chosen
    ``form`` (0 where a pair has no similarity, and on the diagonal).  One pair's value is
    mostly noise (a few tens of common voxels), but frames of one kind share an offset over
    all the frames of that kind, which the profile collects.  ``sketch = Z @ R`` with ``R``
    an ``(n, dims)`` Gaussian matrix ``/ sqrt(dims)`` (Johnson-Lindenstrauss: distances
    between profiles are kept to a relative ``~ sqrt(2 / dims)``), built block by block:
    ``(n, dims)`` memory, never ``Z`` itself.  ``R``'s rows come from ``seed`` and the frame
    number alone, so the sketch does not depend on the block layout.

    Parameters
    ----------
    n
        Number of frames.
    dims
        Sketch dimensions.
    seed
        Seed of ``R``.
    form
        ``"cc"``: the correlations themselves (every pair weighs the same);
        ``"fisher"``: ``atanh(r)``; ``"significance"``: ``atanh(r) sqrt(n - 3)``
        (:func:`fisher_z`; pairs weighted by their overlap).
    """

    def __init__(self, n: int, *, dims: int = 256, seed: int = 0, form: ProfileForm = "cc") -> None:
        if dims < 1:
            raise ValueError(f"dims must be >= 1, got {dims}")
        if form not in ("cc", "fisher", "significance"):
            raise ValueError(f"form must be 'cc', 'fisher' or 'significance', got {form!r}")
        self.n, self.dims, self.seed, self.form = int(n), int(dims), int(seed), form
        self.sketch = np.zeros((self.n, self.dims))
        self._r: np.ndarray | None = None

    @property
    def projection(self) -> np.ndarray:
        """``(n, dims)`` float64 ``R``."""
        if self._r is None:
            rng = np.random.default_rng(self.seed)
            self._r = rng.standard_normal((self.n, self.dims)) / np.sqrt(self.dims)
        return self._r

    def add(self, block: SimilarityBlock) -> None:
        """Add an upper-triangle block's contribution (both ``Z[rows, cols]`` and its transpose)."""
        if self.form == "cc":
            z = np.array(block.similarity, dtype=np.float64)
        else:
            z = fisher_z(block.similarity, block.overlap, significance=self.form == "significance")
        rows = np.arange(block.start, block.stop)
        z[_not_upper(block)] = np.nan  # each pair once; the diagonal is no evidence
        z = np.where(np.isfinite(z), z, 0.0)
        cols = slice(block.start, block.start + z.shape[1])
        r = self.projection
        self.sketch[rows] += z @ r[cols]
        self.sketch[cols] += z.T @ r[rows]


__all__ = [
    "FrameScores",
    "ProfileForm",
    "ProfileSketch",
    "SimilarityBlock",
    "SparseFrames",
    "assemble",
    "blocks",
    "common_arc_block",
    "common_arc_rows",
    "common_arc_similarity",
    "common_arc_similarity_dense",
    "downsample",
    "fisher_z",
    "frame_rows",
    "frame_scores",
    "image_block",
    "image_pairs",
    "image_similarity",
    "image_vectors",
    "pearson_from_sums",
    "sparse_frames",
]

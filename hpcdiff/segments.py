"""Labelled pixel groups of a detector slab (|q| rings, ASICs, panels) and robust statistics over them.

This module sits below both :mod:`hpcdiff.corrections` and :mod:`hpcdiff.background`
(it imports only :mod:`hpcdiff.backend`); both group pixels through it.

A :class:`Segments` object groups the pixels of a detector slab by an integer label
(ring index, ASIC index; ``-1`` = not in any group).  It is built once per detector and
reused for every frame.  For cupy arrays the statistics are vectorised over all segments
and all frames of a batch at once, with no Python loop over segments:

* percentiles and medians of equal-size segments (ASICs) are rows of a 2-D array whose
  order statistics one ``partition`` call selects (excluded pixels split between -inf
  and +inf so that the wanted order statistic of every row lands in the same column);
  other float32 segments (|q| rings) sort the batch's real pixels once as uint64 keys
  ``(frame, segment, value)`` and read each segment's order statistics at its offset
  (no padding to the largest segment);
* means, clipped means (a fixed number of passes) and standard deviations are masked
  running sums differenced at the segment offsets.

No device value is read back by the host (no ``bool``/``int`` of a device array, no
boolean-mask indexing, no ``bincount``), so a batch runs without synchronisation;
:mod:`hpcdiff.host_sync` checks that on a CPU.

On the CPU (numpy arrays) two faster exact paths replace these: the pixels are gathered
in segment order once, order statistics come from ``np.partition`` on each segment's
contiguous slice (:func:`_percentile_sorted`), and every clipping pass sums contiguous
slices with ``np.add.reduceat`` (:func:`_moments_sorted`).  cupy arrays keep the
vectorised path above, which suits a GPU.

All functions take numpy or cupy arrays (see :mod:`hpcdiff.backend`) and return arrays
of the same kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from hpcdiff.backend import array_module, to_numpy


class Segments:
    """Pixels of a slab grouped by label, with the index arrays the statistics need.

    Parameters
    ----------
    labels
        ``(n_ss, n_fs)`` integer array; pixel ``p`` belongs to segment ``labels[p]``,
        ``-1`` (any negative value) excludes it.
    n_segments
        Number of segments; default ``labels.max() + 1``.  Segments with no pixels are
        allowed (their statistics are NaN).

    Attributes
    ----------
    shape : tuple of int
        The slab shape ``(n_ss, n_fs)``.
    n_segments : int
    labels : ndarray, (n_ss * n_fs,) int64
        Flat labels, ``-1`` for excluded pixels.
    order : ndarray, (m,) int64
        Flat indices of the ``m`` labelled pixels, grouped by segment (stable).
    sorted_labels : ndarray, (m,) int64
        ``labels[order]``, non-decreasing.
    positions : ndarray, (m,) int64
        Position of each of the ``order`` pixels within its segment.
    starts, sizes : ndarray, (n_segments,) int64
        Where each segment starts in ``order`` and how many pixels it has.
    """

    def __init__(self, labels: Any, *, n_segments: int | None = None) -> None:
        lab = to_numpy(labels)
        if lab.ndim != 2:
            raise ValueError(
                f"segment labels must be a 2-D slab (n_ss, n_fs), got shape {lab.shape}"
            )
        if not np.issubdtype(lab.dtype, np.integer):
            raise TypeError(f"segment labels must be integers, got dtype {lab.dtype}")
        flat = lab.astype(np.int64).ravel()
        flat[flat < 0] = -1
        top = int(flat.max()) + 1 if flat.size else 0
        if n_segments is None:
            n_segments = top
        elif top > n_segments:
            raise ValueError(f"label {top - 1} found but n_segments is {n_segments}")
        self.shape: tuple[int, int] = (int(lab.shape[0]), int(lab.shape[1]))
        self.n_segments = int(n_segments)
        self.labels = flat
        inside = np.flatnonzero(flat >= 0)
        self.order = inside[np.argsort(flat[inside], kind="stable")]
        self.sorted_labels = flat[self.order]
        self.sizes = np.bincount(self.sorted_labels, minlength=self.n_segments).astype(np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.sizes)[:-1])).astype(np.int64)
        self.positions = np.arange(self.order.size) - self.starts[self.sorted_labels]
        # equal-size segments (ASICs) are sorted as rows of a 2-D array instead
        self.uniform = bool(self.n_segments > 0 and (self.sizes == self.sizes[0]).all())
        self._device: dict[int, dict[str, Any]] = {}
        self._subsamples: dict[tuple[int, int], Segments] = {}

    def subsample(self, stride: int, *, keep_below: int = 256) -> Segments:
        """Every ``stride``-th pixel of each segment (all of segments smaller than ``keep_below``).

        For statistics that need not see every pixel (first estimates, noise levels);
        cached, so it costs nothing after the first call.
        """
        if stride <= 1:
            return self
        key = (int(stride), int(keep_below))
        cache = self._subsamples
        if key not in cache:
            keep = (self.positions % stride == 0) | (self.sizes[self.sorted_labels] < keep_below)
            labels = np.full(self.labels.size, -1, dtype=np.int64)
            labels[self.order[keep]] = self.sorted_labels[keep]
            cache[key] = Segments(labels.reshape(self.shape), n_segments=self.n_segments)
        return cache[key]

    @property
    def n_pixels(self) -> int:
        """Number of labelled pixels."""
        return int(self.order.size)

    def arrays(self, xp: ModuleType) -> dict[str, Any]:
        """The index arrays as arrays of module ``xp`` (copied to the device once, cached)."""
        names = ("labels", "order", "sorted_labels", "positions", "sizes", "starts")
        if xp is np:
            return {k: getattr(self, k) for k in names}
        key = id(xp)
        if key not in self._device:
            self._device[key] = {k: xp.asarray(getattr(self, k)) for k in names}
        return self._device[key]


@dataclass(frozen=True)
class PanelRect:
    """One panel's rectangle in the slab: rows ``ss0:ss1``, columns ``fs0:fs1`` (stop exclusive)."""

    panel: int
    ss0: int
    ss1: int
    fs0: int
    fs1: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the panel."""
        return (self.ss1 - self.ss0, self.fs1 - self.fs0)


def panel_rectangles(panel_index: Any) -> tuple[PanelRect, ...]:
    """The slab rectangle of every panel.

    Parameters
    ----------
    panel_index
        ``(n_ss, n_fs)`` int, the panel of each pixel, ``-1`` where there is none.

    Returns
    -------
    tuple of PanelRect
        One per panel index present, in index order.

    Raises
    ------
    ValueError
        If a panel's pixels do not fill a rectangle exactly.
    """
    idx = to_numpy(panel_index)
    if idx.ndim != 2:
        raise ValueError(f"panel_index must be (n_ss, n_fs), got shape {idx.shape}")
    rects = []
    for p in np.unique(idx[idx >= 0]):
        rows = np.flatnonzero((idx == p).any(axis=1))
        cols = np.flatnonzero((idx == p).any(axis=0))
        r = PanelRect(int(p), int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
        if not (idx[r.ss0 : r.ss1, r.fs0 : r.fs1] == p).all():
            raise ValueError(f"panel {p} does not fill a rectangle of the slab")
        rects.append(r)
    return tuple(rects)


def as_segments(labels: Segments | Any, *, n_segments: int | None = None) -> Segments:
    """``labels`` itself if it is a :class:`Segments`, else ``Segments(labels)``."""
    return labels if isinstance(labels, Segments) else Segments(labels, n_segments=n_segments)


def _rows(values: Any, shape: tuple[int, int]) -> Any:
    if values.shape[-2:] != shape:
        raise ValueError(f"frames have slab shape {values.shape[-2:]}, segments expect {shape}")
    return values.reshape(-1, shape[0] * shape[1])


def _valid_rows(values_rows: Any, valid: Any | None, xp: ModuleType) -> Any:
    finite = xp.isfinite(values_rows)
    if valid is None:
        return finite
    v = valid.reshape(-1, values_rows.shape[1]) if valid.ndim > 2 else valid.reshape(1, -1)
    return finite & v


def percentile_rows(x: Any, ok: Any, q: float) -> Any:
    """Percentile of the valid entries of each row (numpy's ``"linear"`` interpolation).

    Rows may hold different numbers of valid entries.  The invalid entries of each row
    are set to -inf or +inf in such numbers that the two order statistics the percentile
    needs fall in the same two columns of every row, columns fixed by the row length
    alone (``t = floor((L - 1) q / 100)`` and ``t + 1``); one ``partition`` then finds
    them all (O(size)).  A row with ``c`` valid entries needs ``t - floor((c - 1) q / 100)
    <= L - c`` entries at -inf, always available, so no value is read back to the host
    (no synchronisation on a GPU).

    Parameters
    ----------
    x
        ``(..., L)`` values.
    ok
        ``(..., L)`` bool, entries that count (non-finite values never count).
    q
        Percentile in [0, 100].

    Returns
    -------
    ndarray, (...)
        dtype of ``x`` (float64 for integer ``x``); NaN for rows without a valid entry.
    """
    xp = array_module(x, ok)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(xp.float64)
    ok = ok & xp.isfinite(x)
    length = x.shape[-1]
    count = ok.sum(axis=-1)
    lo, step, frac = _linear_rule(count, q, x.dtype, xp)
    if length == 0:
        return xp.full(count.shape, np.nan, dtype=x.dtype)
    inf = x.dtype.type(np.inf)
    target = int(np.floor((length - 1) * (q / 100.0)))  # from the shape: no device read
    n_low = xp.where(count > 0, target - lo, 0)
    rank = xp.cumsum(~ok, axis=-1, dtype=xp.int32)  # 1-based rank among invalid entries
    y = xp.where(ok, x, xp.where(rank <= n_low[..., None], -inf, inf))
    second = min(target + 1, length - 1)
    part = xp.partition(y, [target, second] if second > target else target, axis=-1)
    a = part[..., target]
    b = xp.where(step > 0, part[..., second], a)
    with np.errstate(invalid="ignore"):
        out = a + (b - a) * frac
    return xp.where(count > 0, out, x.dtype.type(np.nan))


def _linear_rule(count: Any, q: float, dtype: Any, xp: ModuleType) -> tuple[Any, Any, Any]:
    """numpy's ``"linear"`` rule for ``count`` values: the lower order statistic ``lo``
    (0-based), ``step`` (0 or 1) to the upper one, and the weight ``frac`` (``dtype``)."""
    top = (count - 1).clip(0)
    pos = top * (q / 100.0)
    lo = xp.floor(pos).astype(xp.int64)
    step = xp.minimum(lo + 1, top) - lo
    frac = (pos - lo).astype(dtype)
    return lo, step, frac


def segment_percentile(
    values: Any, segments: Segments, q: float, *, valid: Any | None = None
) -> Any:
    """Per-frame, per-segment percentile (numpy's ``"linear"`` interpolation).

    Parameters
    ----------
    values
        ``(n, n_ss, n_fs)`` frames (or one ``(n_ss, n_fs)`` frame, treated as ``n = 1``).
    segments
        The pixel groups.
    q
        Percentile in [0, 100]; 50 is the median.
    valid
        Optional bool mask, slab or per frame; excluded pixels do not count.

    Returns
    -------
    ndarray, (n, n_segments)
        float32 for float32 input, else float64; NaN where a segment has no valid pixel.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {q}")
    xp = array_module(values, valid)
    g, gok, _ = _gather(values, segments, valid, xp)
    n, k = g.shape[0], segments.n_segments
    if xp is np:
        return _percentile_sorted(g, gok, segments, q)
    if segments.uniform:
        size = int(segments.sizes[0])
        return percentile_rows(g.reshape(n, k, size), gok.reshape(n, k, size), q)
    if g.dtype == np.float32:
        return _percentile_packed(g, gok, segments, q, xp)
    return _percentile_padded(g, gok, segments, q, xp)  # other dtypes


def _percentile_padded(g: Any, gok: Any, segments: Segments, q: float, xp: ModuleType) -> Any:
    """:func:`segment_percentile` through rows padded to the largest segment
    (``(n, n_segments, max_size)``: 2.8 times the real pixels for CSPAD |q| rings), for
    dtypes :func:`_percentile_packed` does not take (and to compare with it)."""
    n, k = g.shape[0], segments.n_segments
    ix = segments.arrays(xp)
    width = int(segments.sizes.max()) if k else 0
    rows = xp.zeros((n, k, width), dtype=g.dtype)
    rows_ok = xp.zeros((n, k, width), dtype=bool)
    rows[:, ix["sorted_labels"], ix["positions"]] = g
    rows_ok[:, ix["sorted_labels"], ix["positions"]] = gok
    return percentile_rows(rows, rows_ok, q)


_SIGN = np.uint32(0x80000000)
_ALL = np.uint32(0xFFFFFFFF)


def orderable_bits(x: Any) -> Any:
    """float32 -> uint32 whose unsigned order is the float order (-inf < ... < +inf < NaN
    for positive NaNs): the sign bit flipped for positive values, every bit for negative."""
    xp = array_module(x)
    u = x.view(xp.uint32)
    return u ^ xp.where(u >= _SIGN, _ALL, _SIGN).astype(xp.uint32, copy=False)


def from_orderable_bits(k: Any) -> Any:
    """The inverse of :func:`orderable_bits`: uint32 -> float32."""
    xp = array_module(k)
    flip = xp.where(k >= _SIGN, _SIGN, _ALL).astype(xp.uint32, copy=False)
    return (k ^ flip).astype(xp.uint32, copy=False).view(xp.float32)


def _percentile_packed(g: Any, gok: Any, segments: Segments, q: float, xp: ModuleType) -> Any:
    """Device path of :func:`segment_percentile` for float32 pixels, without padding.

    One sort of the batch's ``n m`` real pixels as uint64 keys ``(frame, segment) << 32 |
    orderable bits of the value`` (excluded pixels get the largest low word, so they sort
    after every valid value of their segment): each segment's valid values come out
    sorted, in place, at the segment's offset ``i m + starts[s]`` (a CSR layout).  The
    order statistics are read there, with the ``"linear"`` rule of
    :func:`percentile_rows` (the same float32 arithmetic, so equal results).  Static
    shapes, no host read.
    """
    n, m = g.shape
    k = segments.n_segments
    ix = segments.arrays(xp)
    count = _segment_sums(gok.astype(xp.int64), segments, xp)  # (n, k) exact
    lo, step, frac = _linear_rule(count, q, g.dtype, xp)
    if m == 0:
        return xp.full((n, k), np.nan, dtype=g.dtype)
    low = xp.where(gok, orderable_bits(xp.ascontiguousarray(g)), _ALL).astype(xp.uint64)
    seg = ix["sorted_labels"][None, :] + k * xp.arange(n, dtype=xp.int64)[:, None]
    keys = (seg.astype(xp.uint64) << xp.uint64(32)) | low
    ordered = xp.sort(keys.ravel())
    base = ix["starts"][None, :] + m * xp.arange(n, dtype=xp.int64)[:, None]
    last = n * m - 1
    at_lo = xp.take(ordered, xp.clip(base + lo, 0, last))
    at_hi = xp.take(ordered, xp.clip(base + lo + step, 0, last))
    mask = xp.uint64(0xFFFFFFFF)
    a = from_orderable_bits((at_lo & mask).astype(xp.uint32))
    b = from_orderable_bits((at_hi & mask).astype(xp.uint32))
    with np.errstate(invalid="ignore"):
        out = a + (b - a) * frac
    return xp.where(count > 0, out, np.float32(np.nan))


def percentile_sorted_1d(v: np.ndarray, q: float) -> Any:
    """Percentile of a 1-D numpy array of valid values, as :func:`percentile_rows`.

    One ``np.partition`` finds the lower order statistic the ``"linear"`` rule needs and a
    minimum over the upper part the next one; the
    interpolation is done in the dtype of ``v`` exactly as :func:`percentile_rows` does
    it, so the two agree bit for bit.  ``v`` must be floating and non-empty.
    """
    count = v.size
    pos = (count - 1) * (q / 100.0)
    lo = int(np.floor(pos))
    hi = min(lo + 1, count - 1)
    frac = v.dtype.type(pos - lo)
    part = np.partition(v, lo)
    a = part[lo]
    # the next order statistic is the smallest value above position lo: a linear scan,
    # much cheaper than a second selection
    b = part[lo + 1 :].min() if hi > lo else a
    return a + (b - a) * frac


def _percentile_sorted(g: np.ndarray, gok: np.ndarray, segments: Segments, q: float) -> Any:
    """numpy path of :func:`segment_percentile`: one partition per frame and segment.

    ``g`` and ``gok`` are ``(n, m)`` pixels gathered in segment order, so each segment's
    valid pixels form one contiguous slice once the invalid ones are dropped.
    """
    if not np.issubdtype(g.dtype, np.floating):
        g = g.astype(np.float64)
    gok = gok & np.isfinite(g)
    n, k = g.shape[0], segments.n_segments
    out = np.full((n, k), np.nan, dtype=g.dtype)
    nz = np.flatnonzero(segments.sizes > 0)
    if nz.size == 0:
        return out
    starts = segments.starts[nz]
    for i in range(n):
        vals = g[i][gok[i]]
        counts = np.add.reduceat(gok[i], starts, dtype=np.int64)
        ends = np.cumsum(counts)
        row = out[i]
        for s, c, e in zip(nz.tolist(), counts.tolist(), ends.tolist(), strict=True):
            if c:
                row[s] = percentile_sorted_1d(vals[e - c : e], q)
    return out


def segment_median(values: Any, segments: Segments, *, valid: Any | None = None) -> Any:
    """Per-frame, per-segment median; see :func:`segment_percentile`."""
    return segment_percentile(values, segments, 50.0, valid=valid)


def segment_moments(
    values: Any, segments: Segments, *, valid: Any | None = None
) -> tuple[Any, Any, Any]:
    """Per-frame, per-segment count, mean and standard deviation (float64 accumulation).

    Returns
    -------
    count, mean, std : ndarray, (n, n_segments)
        ``count`` int64; ``mean`` and ``std`` float64, NaN where ``count == 0``.
    """
    xp = array_module(values, valid)
    g, gok, labels = _gather(values, segments, valid, xp)
    if xp is np:
        return _moments_sorted(g, gok, segments)
    return _moments_device(g, gok, segments, xp)


def _gather(values: Any, segments: Segments, valid: Any | None, xp: ModuleType) -> tuple:
    """Labelled pixels in segment order: values (n, m), valid (n, m), labels (m,)."""
    ix = segments.arrays(xp)
    rows = _rows(values, segments.shape)
    ok = xp.broadcast_to(_valid_rows(rows, valid, xp), rows.shape)
    g = xp.take(rows, ix["order"], axis=1)
    gok = xp.take(ok, ix["order"], axis=1)
    return g, gok, ix["sorted_labels"]


def _segment_sums(w: Any, segments: Segments, xp: ModuleType) -> Any:
    """``(n, m)`` values in segment order (:func:`_gather`) -> ``(n, n_segments)`` sums.

    Differences of one running sum at the segment offsets: static shapes and no scatter
    (``bincount`` on cupy reads the largest index back to size its output).  Integer
    sums are exact; float64 sums differ from a direct sum by the running sum's rounding,
    about ``1e-16`` of the frame's total.
    """
    n = w.shape[0]
    ix = segments.arrays(xp)
    run = xp.concatenate([xp.zeros((n, 1), dtype=w.dtype), xp.cumsum(w, axis=1)], axis=1)
    return xp.take(run, ix["starts"] + ix["sizes"], axis=1) - xp.take(run, ix["starts"], axis=1)


def _moments(rows: Any, ok: Any, labels: Any, n_seg: int, xp: ModuleType) -> tuple[Any, Any, Any]:
    """Count, mean and std per frame and label with ``bincount`` over
    ``frame * n_seg + label`` (any pixel order): the reference the segment-order paths
    are checked against (on cupy it reads back to the host: not used on the device)."""
    n = rows.shape[0]
    ok = xp.broadcast_to(ok, rows.shape)
    idx = (labels[None, :] + n_seg * xp.arange(n)[:, None])[ok]
    v = rows[ok].astype(xp.float64)
    size = n * n_seg
    cnt = xp.bincount(idx, minlength=size)
    s1 = xp.bincount(idx, weights=v, minlength=size)
    s2 = xp.bincount(idx, weights=v * v, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / cnt
        var = xp.maximum(s2 / cnt - mean * mean, 0.0)
    shape = (n, n_seg)
    return cnt.reshape(shape).astype(xp.int64), mean.reshape(shape), xp.sqrt(var).reshape(shape)


def _moments_device(g: Any, ok: Any, segments: Segments, xp: ModuleType) -> tuple[Any, Any, Any]:
    """Device path of :func:`segment_moments` on pixels gathered in segment order:
    masked running sums (no boolean indexing, no ``bincount``), float64."""
    ok = xp.broadcast_to(ok, g.shape)
    cnt = _segment_sums(ok.astype(xp.int64), segments, xp)
    w = xp.where(ok, g, 0).astype(xp.float64)
    s1 = _segment_sums(w, segments, xp)
    s2 = _segment_sums(w * w, segments, xp)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / cnt
        var = xp.maximum(s2 / cnt - mean * mean, 0.0)
    return cnt, mean, xp.sqrt(var)


def _moments_sorted(g: np.ndarray, keep: np.ndarray, segments: Segments) -> tuple:
    """numpy path of :func:`_moments` for pixels gathered in segment order.

    Contiguous per-segment sums (``np.add.reduceat``) instead of a scattered ``bincount``;
    the same count, mean and std up to float64 summation order.
    """
    n, k = g.shape[0], segments.n_segments
    cnt = np.zeros((n, k), dtype=np.int64)
    s1 = np.zeros((n, k), dtype=np.float64)
    s2 = np.zeros((n, k), dtype=np.float64)
    nz = np.flatnonzero(segments.sizes > 0)
    if nz.size:
        starts = segments.starts[nz]
        w = np.where(keep, g, 0).astype(np.float64, copy=False)
        cnt[:, nz] = np.add.reduceat(keep, starts, axis=1, dtype=np.int64)
        s1[:, nz] = np.add.reduceat(w, starts, axis=1)
        np.multiply(w, w, out=w)
        s2[:, nz] = np.add.reduceat(w, starts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / cnt
        var = np.maximum(s2 / cnt - mean * mean, 0.0)
    return cnt, mean, np.sqrt(var)


def _clipped_sorted(
    g: np.ndarray, ok: np.ndarray, segments: Segments, sigma: float, max_iter: int
) -> tuple[Any, Any]:
    """numpy path of :func:`segment_clipped_stats` on pixels gathered in segment order.

    One frame at a time, so that the float64 working arrays of a frame stay in the CPU
    cache; a frame stops iterating once its kept pixels no longer change (the batch-wide
    loop of the cupy path gives the same result: further passes change nothing).
    """
    n, k = g.shape[0], segments.n_segments
    mean = np.full((n, k), np.nan)
    std = np.full((n, k), np.nan)
    sizes = segments.sizes
    for i in range(n):
        gi, oki = g[i : i + 1], ok[i : i + 1]
        _, m, s = _moments_sorted(gi, oki, segments)
        keep = oki
        for _ in range(max_iter):
            # np.repeat spreads each segment's value over its contiguous slice (no gather)
            d = np.repeat(m, sizes, axis=1)
            np.subtract(gi, d, out=d)  # |g - mean| in float64, in one buffer
            np.abs(d, out=d)
            new = d <= np.repeat(sigma * s, sizes, axis=1)
            new &= oki
            if bool((new == keep).all()):
                break
            keep = new
            _, m, s = _moments_sorted(gi, keep, segments)
        mean[i], std[i] = m[0], s[0]
    return mean, std


def segment_clipped_stats(
    values: Any,
    segments: Segments,
    *,
    valid: Any | None = None,
    sigma: float = 3.0,
    max_iter: int = 5,
) -> tuple[Any, Any]:
    """Sigma-clipped mean and standard deviation per frame and segment.

    Pixels further than ``sigma`` standard deviations from their segment's mean are
    dropped and the moments recomputed, until nothing changes or ``max_iter`` passes.

    Returns
    -------
    mean, std : ndarray, (n, n_segments) float64
        NaN where a segment has no valid pixel.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    xp = array_module(values, valid)
    g, ok, labels = _gather(values, segments, valid, xp)
    if xp is np:
        return _clipped_sorted(g, ok, segments, sigma, max_iter)
    # device path: always max_iter passes (a pass after convergence keeps the same pixels
    # and gives the same moments), so no convergence test reads the device
    _, mean, std = _moments_device(g, ok, segments, xp)
    for _ in range(max_iter):
        m = xp.take(mean, labels, axis=1)
        s = xp.take(std, labels, axis=1)
        keep = ok & (xp.abs(g - m) <= sigma * s)
        _, mean, std = _moments_device(g, keep, segments, xp)
    return mean, std


def expand(profile: Any, segments: Segments, *, fill: float = np.nan) -> Any:
    """Spread per-segment values back onto the slab.

    Parameters
    ----------
    profile
        ``(n, n_segments)`` values.
    segments
        The pixel groups.
    fill
        Value of pixels outside every segment.

    Returns
    -------
    ndarray, (n, n_ss, n_fs)
        ``out[i, p] = profile[i, labels[p]]``; same dtype as ``profile``.
    """
    xp = array_module(profile)
    labels = segments.arrays(xp)["labels"]
    if profile.ndim != 2 or profile.shape[1] != segments.n_segments:
        raise ValueError(
            f"profile must have shape (n, {segments.n_segments}), got {tuple(profile.shape)}"
        )
    padded = xp.concatenate(
        [profile, xp.full((profile.shape[0], 1), fill, dtype=profile.dtype)], axis=1
    )
    out = xp.take(padded, xp.where(labels >= 0, labels, segments.n_segments), axis=1)
    return out.reshape((profile.shape[0], *segments.shape))


__all__ = [
    "PanelRect",
    "Segments",
    "panel_rectangles",
    "percentile_rows",
    "percentile_sorted_1d",
    "as_segments",
    "expand",
    "from_orderable_bits",
    "orderable_bits",
    "segment_clipped_stats",
    "segment_median",
    "segment_moments",
    "segment_percentile",
]

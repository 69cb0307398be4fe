"""Smooth local background: a median or percentile filter, panel by panel.

Every panel occupies a rectangle of the slab; each rectangle is filtered on its own, so
the filter never reaches across a panel gap (neighbours in the slab need not be
neighbours in space).  Panels of equal shape (the 64 ASICs of a CSPAD) are stacked and
filtered in one call with a filter of size 1 along the stack axis.

Masked pixels do not vote: with ``bin_px > 1`` (the fast default) each ``bin_px x
bin_px`` block is reduced to the percentile of its valid pixels, the coarse image is
filtered with a window of ``size_px / bin_px`` blocks and interpolated back bilinearly;
with ``bin_px = 1`` (exact) masked pixels are first filled with that smooth binned
estimate.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Literal

import numpy as np

from hpcdiff.backend import array_module, ndimage_module
from hpcdiff.segments import PanelRect, panel_rectangles, percentile_rows

LocalFilter = Literal["median", "percentile"]


@functools.lru_cache(maxsize=32)
def _interp_matrix(n_fine: int, n_coarse: int, bin_px: int, xp: ModuleType, dtype: Any) -> Any:
    """(n_fine, n_coarse) bilinear weights from block centres to pixel centres (made once
    per shape and module: read-only, never uploaded again)."""
    pos = (np.arange(n_fine) + 0.5) / bin_px - 0.5
    pos = np.clip(pos, 0, n_coarse - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_coarse - 1)
    w = np.zeros((n_fine, n_coarse))
    np.add.at(w, (np.arange(n_fine), lo), 1 - (pos - lo))
    np.add.at(w, (np.arange(n_fine), hi), pos - lo)
    return xp.asarray(w.astype(dtype))


def _separable(uy: Any, coarse: Any, ux: Any, xp: ModuleType) -> Any:
    """``uy @ coarse[i] @ ux.T`` for every ``i``, as two plain 2-D matrix products.

    (Batched ``matmul`` with a broadcast 2-D operand is a slow loop in numpy.)
    """
    k, hc, wc = coarse.shape
    h, w = uy.shape[0], ux.shape[0]
    rows = uy @ coarse.transpose(1, 0, 2).reshape(hc, k * wc)  # (h, k * wc)
    both = rows.reshape(h * k, wc) @ ux.T  # (h * k, w)
    return both.reshape(h, k, w).transpose(1, 0, 2)


def _filter_stack(
    stack: Any,
    ok: Any,
    *,
    size_px: int,
    q: float,
    bin_px: int,
    xp: ModuleType,
) -> Any:
    """Filter a stack of equal-shape panels ``(k, h, w)``; returns the background."""
    ndi = ndimage_module(xp)
    k, h, w = stack.shape
    panel_level = percentile_rows(stack.reshape(k, h * w), ok.reshape(k, h * w), q)  # (k,)
    if bin_px == 1:
        good = ok & xp.isfinite(stack)
        if xp is np and bool(good.all()):  # a host shortcut; the device never reads back
            filled = stack
        else:  # masked pixels take the smooth (binned) estimate, so they do not pull
            coarse_bin = max(2, size_px // 3)
            fill = _filter_stack(stack, ok, size_px=size_px, q=q, bin_px=coarse_bin, xp=xp)
            filled = xp.where(good, stack, fill)
            filled = xp.where(xp.isfinite(filled), filled, 0)
        out = ndi.percentile_filter(filled, q, size=(1, size_px, size_px), mode="nearest")
        return xp.where(xp.isfinite(panel_level)[:, None, None], out, xp.nan).astype(stack.dtype)
    hc, wc = -(-h // bin_px), -(-w // bin_px)
    pad = ((0, 0), (0, hc * bin_px - h), (0, wc * bin_px - w))
    padded = xp.pad(stack, pad)
    pok = xp.pad(ok, pad)  # pads with False: padding never votes
    blocks = padded.reshape(k, hc, bin_px, wc, bin_px).transpose(0, 1, 3, 2, 4)
    bok = pok.reshape(k, hc, bin_px, wc, bin_px).transpose(0, 1, 3, 2, 4)
    coarse = percentile_rows(blocks.reshape(k, hc, wc, -1), bok.reshape(k, hc, wc, -1), q)
    coarse = xp.where(xp.isfinite(coarse), coarse, panel_level[:, None, None])
    coarse = xp.where(xp.isfinite(coarse), coarse, 0)
    win = max(1, int(round(size_px / bin_px)))
    coarse = ndi.percentile_filter(coarse, q, size=(1, win, win), mode="nearest")
    uy = _interp_matrix(h, hc, bin_px, xp, stack.dtype)
    ux = _interp_matrix(w, wc, bin_px, xp, stack.dtype)
    out = _separable(uy, coarse, ux, xp)
    return xp.where(xp.isfinite(panel_level)[:, None, None], out, xp.nan).astype(stack.dtype)


def local_background(
    frames: Any,
    panels: Any,
    *,
    valid: Any | None = None,
    size_px: int = 15,
    statistic: LocalFilter = "median",
    percentile: float = 50.0,
    bin_px: int = 5,
) -> Any:
    """Smooth local background of every panel, never mixing panels.

    Parameters
    ----------
    frames
        ``(n, n_ss, n_fs)`` slab frames (or one ``(n_ss, n_fs)`` frame), floating point.
    panels
        Panel index ``(n_ss, n_fs)`` int (``-1`` = no panel), or the output of
        :func:`panel_rectangles` for it (computed once per detector).
    valid
        Optional bool mask, ``(n_ss, n_fs)`` or ``(n, n_ss, n_fs)``; False pixels do not
        vote.
    size_px
        Filter window edge in pixels.
    statistic
        ``"median"`` or ``"percentile"`` (then ``percentile`` in [0, 100] is used).
    percentile
        The percentile of ``"percentile"``.
    bin_px
        Block size of the fast path; 1 filters at full resolution (exact, slower).

    Returns
    -------
    ndarray, same shape and dtype as ``frames``
        The background; NaN off-panel and on panels without any valid pixel.
    """
    if statistic == "median":
        q = 50.0
    elif statistic == "percentile":
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
        q = float(percentile)
    else:
        raise ValueError(f"unknown local filter {statistic!r}; valid: 'median', 'percentile'")
    if size_px < 1 or bin_px < 1:
        raise ValueError(f"size_px and bin_px must be >= 1, got {size_px} and {bin_px}")
    xp = array_module(frames, valid)
    single = frames.ndim == 2
    batch = frames[None] if single else frames
    if batch.ndim != 3:
        raise ValueError(f"frames must be (n, n_ss, n_fs) or (n_ss, n_fs), got {frames.shape}")
    if not np.issubdtype(batch.dtype, np.floating):
        batch = batch.astype(xp.float64)
    rects = panels if isinstance(panels, tuple) else panel_rectangles(panels)
    n = batch.shape[0]
    if valid is None:
        ok = xp.ones(batch.shape, dtype=bool)
    else:
        ok = xp.broadcast_to(valid, batch.shape)
    out = xp.full(batch.shape, xp.nan, dtype=batch.dtype)
    groups: dict[tuple[int, int], list[PanelRect]] = {}
    for r in rects:
        groups.setdefault(r.shape, []).append(r)
    for (h, w), members in groups.items():
        stack = xp.stack([batch[:, r.ss0 : r.ss1, r.fs0 : r.fs1] for r in members], axis=1)
        sok = xp.stack([ok[:, r.ss0 : r.ss1, r.fs0 : r.fs1] for r in members], axis=1)
        res = _filter_stack(
            stack.reshape(-1, h, w),
            sok.reshape(-1, h, w),
            size_px=size_px,
            q=q,
            bin_px=bin_px,
            xp=xp,
        ).reshape(n, len(members), h, w)
        for j, r in enumerate(members):
            out[:, r.ss0 : r.ss1, r.fs0 : r.fs1] = res[:, j]
    return out[0] if single else out


__all__ = ["LocalFilter", "PanelRect", "local_background", "panel_rectangles"]

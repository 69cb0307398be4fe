"""Bragg-peak masking: pixels standing well above the background are not diffuse signal."""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcdiff.backend import array_module
from hpcdiff.segments import Segments, as_segments, expand, segment_clipped_stats

NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
"""The 8 neighbours of a pixel, ``(row step, column step)``, that peak masks grow into."""


def _shift_pair(d: int, n: int) -> tuple[slice, slice]:
    """Slices (target, source) so that ``target[i] = source[i + d]``."""
    if d > 0:
        return slice(0, n - d), slice(d, n)
    if d < 0:
        return slice(-d, n), slice(0, n + d)
    return slice(0, n), slice(0, n)


def grow_mask(mask: Any, *, panel_index: Any | None = None, grow_px: int = 1) -> Any:
    """Grow a bool mask by ``grow_px`` pixels (8-connected), never across panels.

    Parameters
    ----------
    mask
        ``(..., n_ss, n_fs)`` bool.
    panel_index
        Optional ``(n_ss, n_fs)`` int panel of each pixel; growth only reaches pixels of
        the same panel.  Without it the slab is treated as one panel.
    grow_px
        Number of one-pixel growth steps.

    Returns
    -------
    ndarray of bool, same shape as ``mask``.
    """
    out = mask.astype(bool, copy=True)
    n_ss, n_fs = mask.shape[-2:]
    for _ in range(grow_px):
        src = out.copy()
        for dy, dx in NEIGHBOURS:
            ty, sy = _shift_pair(dy, n_ss)
            tx, sx = _shift_pair(dx, n_fs)
            moved = src[..., sy, sx]
            if panel_index is not None:
                moved = moved & (panel_index[ty, tx] == panel_index[sy, sx])
            out[..., ty, tx] |= moved
    return out


def _floor(min_excess: Any, dtype: Any, xp: Any) -> Any:
    """``min_excess`` as a scalar (host values all equal: nothing to upload) or an
    ``(n, 1)`` array on the device, dtype ``dtype``."""
    if array_module(min_excess) is np:
        host = np.asarray(min_excess, dtype=dtype)
        if host.ndim == 0 or (host.size and (host == host.flat[0]).all()):
            return host.dtype.type(host.flat[0])
    floor = xp.asarray(min_excess, dtype=dtype)
    return floor[:, None] if floor.ndim == 1 else floor  # one value per frame


def bragg_mask(
    residual: Any,
    segments: Segments | Any,
    *,
    valid: Any | None = None,
    k_sigma: float = 5.0,
    clip_sigma: float = 3.0,
    grow_px: int = 1,
    panel_index: Any | None = None,
    noise_stride: int = 4,
    min_excess: Any = 0.0,
) -> Any:
    """Pixels standing more than ``k_sigma`` noise levels above the background.

    The noise level is the sigma-clipped standard deviation of the background-subtracted
    frame in each segment (|q| ring or panel), so the peaks themselves do not inflate it.
    At low photon counts the Poisson tail is heavier than a Gaussian one: expect a few
    tenths of a per cent of noise pixels to be masked as well (harmless: masked pixels
    are neutral in the images).

    Parameters
    ----------
    residual
        ``(n, n_ss, n_fs)`` frames minus their background (radial or local).
    segments
        Ring index or panel index ``(n_ss, n_fs)`` (``-1`` = none), or a Segments.
    valid
        Optional bool mask; invalid pixels are never flagged and do not enter the noise.
    k_sigma
        Threshold in noise standard deviations above the segment's clipped mean.
    clip_sigma
        Clipping of the noise estimate.
    grow_px
        Grow the peak mask by this many pixels (peak tails), within panels.
    panel_index
        Panel of each pixel, to keep the growth inside panels.
    min_excess
        Also require this excess over the segment's mean (unit of ``residual``): at low
        photon counts, speckles of diffuse scattering reach ``k_sigma`` too; Bragg peaks
        are far brighter (the preprocessor uses 5 photons).  A scalar, or ``(n,)`` one
        value per frame.
    noise_stride
        Estimate the noise from every ``noise_stride``-th pixel of each segment (all
        pixels of segments under 256 pixels); 1 = every pixel.

    Returns
    -------
    ndarray of bool, same shape as ``residual``
        True on Bragg-peak pixels.
    """
    if k_sigma <= 0:
        raise ValueError(f"k_sigma must be > 0, got {k_sigma}")
    xp = array_module(residual, valid)
    single = residual.ndim == 2
    batch = residual[None] if single else residual
    segs = as_segments(segments)
    noise_segs = segs.subsample(noise_stride)
    mean, std = segment_clipped_stats(batch, noise_segs, valid=valid, sigma=clip_sigma, max_iter=3)
    floor = _floor(min_excess, std.dtype, xp)
    threshold = expand(mean + xp.maximum(k_sigma * std, floor), segs)
    with_noise = xp.isfinite(threshold)
    peaks = with_noise & (batch > xp.where(with_noise, threshold, 0))
    if valid is not None:
        peaks &= valid
    if grow_px > 0:
        peaks = grow_mask(peaks, panel_index=panel_index, grow_px=grow_px)
        if valid is not None:
            peaks &= valid
    return peaks[0] if single else peaks


__all__ = ["bragg_mask", "grow_mask"]

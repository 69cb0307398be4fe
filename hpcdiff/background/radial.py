"""Isotropic background: a robust statistic per |q| ring, subtracted from every pixel.

Works on unassembled slabs through the per-pixel ring index (``DetectorModel.radial_bins``),
so frames are never assembled for background removal.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from hpcdiff.backend import array_module
from hpcdiff.segments import (
    Segments,
    as_segments,
    expand,
    segment_clipped_stats,
    segment_moments,
    segment_percentile,
)

RadialStatistic = Literal["median", "clipped_mean", "mean"]


def _batch(frames: Any) -> tuple[Any, bool]:
    if frames.ndim == 2:
        return frames[None], True
    if frames.ndim != 3:
        raise ValueError(f"frames must be (n, n_ss, n_fs) or (n_ss, n_fs), got {frames.shape}")
    return frames, False


def radial_profile(
    frames: Any,
    rings: Segments | Any,
    *,
    valid: Any | None = None,
    statistic: RadialStatistic = "median",
    clip_sigma: float = 3.0,
) -> Any:
    """Robust background level of every |q| ring of every frame.

    Parameters
    ----------
    frames
        ``(n, n_ss, n_fs)`` slab frames (or one ``(n_ss, n_fs)`` frame), any unit.
    rings
        Ring index ``(n_ss, n_fs)`` int (``-1`` = no ring), or a :class:`Segments` built
        from it once per detector (faster for repeated calls).
    valid
        Optional bool mask ``(n_ss, n_fs)`` or ``(n, n_ss, n_fs)``; False pixels (bad
        pixels, Bragg peaks) and non-finite values are excluded.
    statistic
        ``"median"`` (exact, sort-based), ``"clipped_mean"`` (mean after iterative
        ``clip_sigma`` clipping) or ``"mean"`` (plain mean, as azimuthal integrators give).
    clip_sigma
        Clipping threshold of ``"clipped_mean"``.

    Returns
    -------
    ndarray, (n, n_rings)
        Same dtype as ``frames`` for floating input (float32 stays float32); NaN for
        rings with no valid pixel.  ``(n_rings,)`` for a single 2-D frame.
    """
    xp = array_module(frames, valid)
    batch, single = _batch(frames)
    segs = as_segments(rings)
    if statistic == "median":
        prof = segment_percentile(batch, segs, 50.0, valid=valid)
    elif statistic == "clipped_mean":
        prof, _ = segment_clipped_stats(batch, segs, valid=valid, sigma=clip_sigma)
    elif statistic == "mean":
        _, prof, _ = segment_moments(batch, segs, valid=valid)
    else:
        raise ValueError(
            f"unknown radial statistic {statistic!r}; valid: 'median', 'clipped_mean', 'mean'"
        )
    dtype = batch.dtype if np.issubdtype(batch.dtype, np.floating) else xp.float64
    prof = prof.astype(dtype, copy=False)
    return prof[0] if single else prof


def radial_background(
    frames: Any,
    rings: Segments | Any,
    *,
    valid: Any | None = None,
    statistic: RadialStatistic = "median",
    clip_sigma: float = 3.0,
) -> Any:
    """The isotropic background image: each pixel gets its ring's level.

    Parameters are those of :func:`radial_profile`.

    Returns
    -------
    ndarray, same shape as ``frames``
        Background in the unit of ``frames``; NaN for pixels in no ring or in a ring with
        no valid pixel (these cannot be corrected and must be masked).
    """
    batch, single = _batch(frames)
    segs = as_segments(rings)
    prof = radial_profile(batch, segs, valid=valid, statistic=statistic, clip_sigma=clip_sigma)
    out = expand(prof, segs)
    return out[0] if single else out


__all__ = ["RadialStatistic", "radial_background", "radial_profile"]

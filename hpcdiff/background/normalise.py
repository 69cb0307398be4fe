"""Robust per-frame normalisation of background-subtracted frames.

Each frame is centred on the median of its valid pixels and divided by their robust
spread (1.4826 x MAD; the mean absolute deviation x 1.2533 where the MAD is zero, as in
sparse photon-counting frames), clipped to ``+-clip_sigma`` and optionally compressed
(``sqrt``: sign(z) sqrt|z|, ``log``: sign(z) log(1 + |z|)).  The result does not change when
a frame is multiplied by a positive constant.

Masked pixels travel as a bool mask beside the data.  In the returned array they hold the
neutral value 0 (the centre of the normalised scale), documented here so nobody reads
them as data: always carry the mask along.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from hpcdiff.backend import array_module
from hpcdiff.segments import percentile_rows

Compression = Literal["none", "sqrt", "log"]

MAD_TO_SIGMA = 1.4826
MEAN_ABS_TO_SIGMA = 1.2533


def _compress(z: Any, compression: str, xp: Any) -> Any:
    if compression == "none":
        return z
    if compression == "sqrt":
        return xp.sign(z) * xp.sqrt(xp.abs(z))
    if compression == "log":
        return xp.sign(z) * xp.log1p(xp.abs(z))
    raise ValueError(f"unknown compression {compression!r}; valid: 'none', 'sqrt', 'log'")


def normalised_limit(*, compression: Compression = "none", clip_sigma: float = 5.0) -> float:
    """The largest absolute value :func:`normalise` can return."""
    return float(_compress(np.float64(clip_sigma), compression, np))


def robust_scale(
    residual: Any, *, valid: Any | None = None, max_samples: int | None = 1 << 18
) -> tuple[Any, Any]:
    """Per-frame robust centre and spread of the valid pixels.

    Parameters
    ----------
    residual
        ``(n, n_ss, n_fs)`` background-subtracted frames.
    valid
        Optional bool mask, ``(n_ss, n_fs)`` or ``(n, n_ss, n_fs)``.
    max_samples
        Estimate from a regular subsample (every ``k``-th pixel of the slab) when a frame
        has more pixels than this (a CSPAD frame: every 9th of 2.3 M); ``None`` = all.

    Returns
    -------
    centre, scale : ndarray, (n,)
        Median and robust standard deviation (dtype of ``residual``); ``scale`` is 1 for a
        frame whose valid pixels are all equal, NaN (both) for a frame with none.
    """
    xp = array_module(residual, valid)
    n = residual.shape[0]
    rows = residual.reshape(n, -1)
    ok = xp.isfinite(rows)
    if valid is not None:
        ok &= xp.broadcast_to(valid, residual.shape).reshape(n, -1)
    if max_samples is not None and rows.shape[1] > max_samples:
        step = -(-rows.shape[1] // max_samples)
        rows, ok = rows[:, ::step], ok[:, ::step]
    centre = percentile_rows(rows, ok, 50.0)
    dev = xp.abs(rows - centre[:, None])
    mad = percentile_rows(dev, ok, 50.0) * MAD_TO_SIGMA
    count = ok.sum(axis=1)
    mean_abs = xp.where(ok, dev, 0).sum(axis=1) / xp.maximum(count, 1) * MEAN_ABS_TO_SIGMA
    scale = xp.where(mad > 0, mad, xp.where(mean_abs > 0, mean_abs, 1.0))
    scale = xp.where(count > 0, scale, xp.nan)
    return centre.astype(residual.dtype), scale.astype(residual.dtype)


def normalise(
    residual: Any,
    *,
    valid: Any | None = None,
    compression: Compression = "none",
    clip_sigma: float = 5.0,
) -> Any:
    """Robustly standardise, clip and compress each frame; masked pixels become 0.

    Parameters
    ----------
    residual
        ``(n, n_ss, n_fs)`` (or ``(n_ss, n_fs)``) background-subtracted frames, floating.
    valid
        Optional bool mask, slab or per frame; non-finite pixels are invalid as well.
    compression
        ``"none"``, ``"sqrt"`` or ``"log"``, applied after standardising and clipping.
    clip_sigma
        Clip the standardised values to ``+-clip_sigma`` (before compression).

    Returns
    -------
    ndarray, same shape and dtype as ``residual``
        Values in ``[-L, L]`` with ``L = normalised_limit(compression=..., clip_sigma=...)``;
        0 (neutral) on invalid pixels.
    """
    if clip_sigma <= 0:
        raise ValueError(f"clip_sigma must be > 0, got {clip_sigma}")
    xp = array_module(residual, valid)
    single = residual.ndim == 2
    batch = residual[None] if single else residual
    if not np.issubdtype(batch.dtype, np.floating):
        batch = batch.astype(xp.float64)
    centre, scale = robust_scale(batch, valid=valid)
    z = (batch - centre[:, None, None]) / scale[:, None, None]
    z = _compress(xp.clip(z, -clip_sigma, clip_sigma), compression, xp)
    ok = xp.isfinite(z)
    if valid is not None:
        ok &= xp.broadcast_to(valid, batch.shape)
    out = xp.where(ok, z, 0).astype(batch.dtype, copy=False)
    return out[0] if single else out


__all__ = ["Compression", "normalise", "normalised_limit", "robust_scale"]

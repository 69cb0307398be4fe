"""Smoothing of a merged map, its width chosen from the data by leave-one-voxel-out prediction.

A merge of few frames puts about one pixel in each measured voxel (the small detector's 80
diffuse frames on a 100^3 hkl grid: median 1 pixel, 13% of the voxels measured), so the
map's voxel means are mostly noise, while diffuse scattering varies over several voxels
(the truth smoothed over 3^3 voxels keeps CC 0.98 with itself).  The map is then better
estimated by a normalised Gaussian convolution of the sums and counts,
``M_s = (G * S) / (G * C)``: a count-weighted mean over neighbouring voxels.

The width is chosen without a truth: for each candidate ``sigma`` every measured voxel is
predicted from its neighbours alone (the kernel without its centre) and the prediction
error, weighted by the voxel's counts, is averaged (:func:`loo_error`); the candidate of the
smallest error wins (:func:`choose_sigma`).  A voxel's own noise is independent of its
neighbours', so the error is the voxel's noise (the same for every candidate) plus the error
of the smoothed estimate: too narrow a kernel averages too few pixels, too wide a kernel
blurs the map.  Pixel noise correlated between neighbouring voxels (one frame's background
error) makes the choice err towards narrower kernels.

All functions take grid-shaped ``(n0, n1, n2)`` arrays (see
:class:`hpcdiff.merge.MergeAccumulator`), and widths in voxels along each axis (the
fitted grids of :mod:`hpcdiff.fourier_grid` have voxels of about equal ``|q|`` extent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

#: Candidate widths (voxels, Gaussian sigma) the data-driven choice scans.
DEFAULT_SIGMAS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)

#: Kernel radius in sigmas.
TRUNCATE = 3.0


def _filter(a: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(a, sigma, mode="constant", cval=0.0, truncate=TRUNCATE)


def _centre_weight(sigma: float, ndim: int) -> float:
    """The weight a voxel gives itself in :func:`_filter` (product of the 1-D centres)."""
    r = int(TRUNCATE * sigma + 0.5)
    delta = np.zeros(2 * r + 1)
    delta[r] = 1.0
    from scipy.ndimage import gaussian_filter1d

    c = float(gaussian_filter1d(delta, sigma, mode="constant", truncate=TRUNCATE)[r])
    return c**ndim


def _check(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(sums, np.float64)
    c = np.asarray(counts, np.float64)
    if s.shape != c.shape or s.ndim != 3:
        raise ValueError(f"sums {s.shape} and counts {c.shape} must be the same 3-D grid shape")
    if (c < 0).any():
        raise ValueError("counts must be non-negative")
    return np.where(c > 0, s, 0.0), c


def smoothed_mean(
    sums: np.ndarray,
    counts: np.ndarray,
    *,
    sigma_voxels: float,
    support: Literal["measured", "kernel"] = "measured",
) -> np.ndarray:
    """Normalised Gaussian convolution ``(G * sums) / (G * counts)`` of a merged map.

    Parameters
    ----------
    sums
        ``(n0, n1, n2)`` summed (weighted) values per voxel.
    counts
        ``(n0, n1, n2)`` pixels (or summed weights) per voxel, >= 0.
    sigma_voxels
        Gaussian sigma in voxels; 0: the plain voxel mean ``sums / counts``.
    support
        ``"measured"``: NaN where ``counts == 0`` (the raw map's voxels); ``"kernel"``:
        every voxel with a measured voxel within the kernel (fills gaps).

    Returns
    -------
    np.ndarray
        ``(n0, n1, n2)`` float64 smoothed mean, NaN outside the support.
    """
    s, c = _check(sums, counts)
    if sigma_voxels < 0:
        raise ValueError(f"sigma_voxels must be >= 0, got {sigma_voxels}")
    if sigma_voxels == 0:
        gs, gc = s, c
    else:
        gs, gc = _filter(s, sigma_voxels), _filter(c, sigma_voxels)
    keep = c > 0 if support == "measured" else gc > 1e-12 * max(float(gc.max()), 1e-300)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(keep & (gc > 0), gs / gc, np.nan)


def loo_error(
    sums: np.ndarray,
    counts: np.ndarray,
    *,
    sigma_voxels: float,
    where: np.ndarray | None = None,
) -> float:
    """Count-weighted mean squared error of predicting each measured voxel's mean from its
    neighbours (the Gaussian kernel of ``sigma_voxels`` without its centre).

    Parameters
    ----------
    sums, counts
        ``(n0, n1, n2)`` as in :func:`smoothed_mean`.
    sigma_voxels
        Gaussian sigma in voxels, > 0.
    where
        ``(n0, n1, n2)`` bool voxels to score (default: every measured voxel with a
        measured neighbour within the kernel).

    Returns
    -------
    float
        ``sum(c (mean - prediction)^2) / sum(c)`` over the scored voxels; NaN when none.
    """
    if not sigma_voxels > 0:
        raise ValueError(f"sigma_voxels must be > 0, got {sigma_voxels}")
    s, c = _check(sums, counts)
    g0 = _centre_weight(sigma_voxels, 3)
    ls = _filter(s, sigma_voxels) - g0 * s
    lc = _filter(c, sigma_voxels) - g0 * c
    tiny = 1e-9 * max(float(c.max()), 1e-300)
    ok = (c > 0) & (lc > tiny)
    if where is not None:
        ok &= np.asarray(where, bool)
    if not ok.any():
        return float("nan")
    cw = c[ok]
    resid = s[ok] / cw - ls[ok] / lc[ok]
    return float(np.dot(cw, resid * resid) / cw.sum())


@dataclass(frozen=True)
class SmoothingChoice:
    """The smoothing width chosen for a map.

    Attributes
    ----------
    sigma_voxels
        The chosen Gaussian sigma in voxels (0: no smoothing).
    method
        ``"loo"`` (chosen by :func:`choose_sigma`) or ``"fixed"`` (given).
    loo_errors
        Candidate sigma -> leave-one-voxel-out error (:func:`loo_error`); empty when fixed.
    """

    sigma_voxels: float
    method: Literal["loo", "fixed"]
    loo_errors: dict[float, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON form (for ``fourier_summary.json``)."""
        return {
            "sigma_voxels": self.sigma_voxels,
            "method": self.method,
            "loo_errors": {f"{k:g}": v for k, v in self.loo_errors.items()},
        }


def choose_sigma(
    sums: np.ndarray,
    counts: np.ndarray,
    *,
    candidates: tuple[float, ...] = DEFAULT_SIGMAS,
) -> SmoothingChoice:
    """The candidate width of the smallest leave-one-voxel-out error (:func:`loo_error`).

    Every candidate is scored on the same voxels: those the narrowest candidate can
    predict.  With no voxel to score (an empty or single-voxel map) the choice is 0.

    Parameters
    ----------
    sums, counts
        ``(n0, n1, n2)`` as in :func:`smoothed_mean`.
    candidates
        Gaussian sigmas in voxels, each > 0.
    """
    if not candidates or min(candidates) <= 0:
        raise ValueError(f"candidates must be positive sigmas, got {candidates}")
    s, c = _check(sums, counts)
    narrow = min(candidates)
    g0 = _centre_weight(narrow, 3)
    lc = _filter(c, narrow) - g0 * c
    where = (c > 0) & (lc > 1e-9 * max(float(c.max()), 1e-300))
    errors = {float(sg): loo_error(s, c, sigma_voxels=sg, where=where) for sg in candidates}
    finite = {k: v for k, v in errors.items() if np.isfinite(v)}
    if not finite:
        return SmoothingChoice(0.0, "loo", errors)
    best = min(finite, key=lambda k: (finite[k], k))
    return SmoothingChoice(best, "loo", errors)


def smoothing_for(
    sums: np.ndarray, counts: np.ndarray, *, sigma_voxels: float | Literal["auto"]
) -> SmoothingChoice:
    """:func:`choose_sigma` for ``"auto"``, else the fixed width."""
    if sigma_voxels == "auto":
        return choose_sigma(sums, counts)
    return SmoothingChoice(float(sigma_voxels), "fixed")


__all__ = [
    "DEFAULT_SIGMAS",
    "SmoothingChoice",
    "choose_sigma",
    "loo_error",
    "smoothed_mean",
    "smoothing_for",
]

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

Neighbouring voxels' noise is not always independent of a voxel's own structure (fine speckle
of correlated disorder, one frame's error spread over neighbouring voxels), and leave-one-out
cannot choose "no smoothing".  With the frames split in two halves (by a hash of the global frame
number, :func:`hpcdiff.merge.frame_half`; :attr:`hpcdiff.merge.MergeAccumulator.half_a`) the choice is made across halves
(:func:`choose_sigma_halves`): each candidate width (0 = no smoothing included) smooths half A
and is correlated with the *unsmoothed* voxel means of half B, and vice versa; the largest
correlation wins (the squared error, :func:`half_map_error`, is recorded beside).  B's noise
is independent of A, so there is no bias from correlations between neighbours.  The
width is chosen for a half of the frames, so it is, if anything, a little wider than the best
for the full map.  :func:`half_map_cc` gives the half-maps' correlation (``CC1/2``).

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
        ``"loo"`` (chosen by :func:`choose_sigma`), ``"half-maps"`` (chosen by
        :func:`choose_sigma_halves`) or ``"fixed"`` (given).
    loo_errors
        Candidate sigma -> leave-one-voxel-out error (:func:`loo_error`), or (half-maps)
        candidate sigma -> cross-half prediction error (:func:`half_map_error`); empty when
        fixed.
    half_map_ccs
        (half-maps) candidate sigma -> cross-half correlation, the criterion
        (:func:`choose_sigma_halves`); else empty.
    """

    sigma_voxels: float
    method: Literal["loo", "half-maps", "fixed"]
    loo_errors: dict[float, float] = field(default_factory=dict)
    half_map_ccs: dict[float, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON form (for ``fourier_summary.json``): ``sigma_voxels``, ``method`` (also as
        ``rule``) and the candidates' errors (``loo_errors`` or ``half_map_errors``)."""
        errors = {f"{k:g}": v for k, v in self.loo_errors.items()}
        key = "half_map_errors" if self.method == "half-maps" else "loo_errors"
        out: dict[str, object] = {
            "sigma_voxels": self.sigma_voxels,
            "method": self.method,
            "rule": self.method,
            key: errors,
        }
        if self.method == "half-maps":
            out["criterion"] = "largest cross-half correlation (half_map_ccs)"
            out["half_map_ccs"] = {f"{k:g}": v for k, v in self.half_map_ccs.items()}
        return out


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


def half_map_error(
    sums_a: np.ndarray,
    counts_a: np.ndarray,
    sums_b: np.ndarray,
    counts_b: np.ndarray,
    *,
    sigma_voxels: float,
    where: np.ndarray | None = None,
) -> tuple[float, float]:
    """Weighted squared error of predicting half B's voxel means from half A smoothed.

    Parameters
    ----------
    sums_a, counts_a, sums_b, counts_b
        ``(n0, n1, n2)`` sums and counts (or summed weights) of the two halves, as in
        :func:`smoothed_mean`.
    sigma_voxels
        Gaussian sigma in voxels applied to A, >= 0 (0: A's own voxel means).
    where
        ``(n0, n1, n2)`` bool voxels to score (default: those measured in both halves).

    Returns
    -------
    (float, float)
        ``sum(c_B (mean_B - smoothed_A)^2)`` over the scored voxels and ``sum(c_B)``
        (the error's numerator and denominator, to add over both directions).
    """
    sa, ca = _check(sums_a, counts_a)
    sb, cb = _check(sums_b, counts_b)
    if sa.shape != sb.shape:
        raise ValueError(f"half-maps {sa.shape} and {sb.shape} differ in shape")
    ok = (ca > 0) & (cb > 0) if where is None else np.asarray(where, bool) & (cb > 0)
    pred = smoothed_mean(sa, ca, sigma_voxels=sigma_voxels, support="kernel")
    ok &= np.isfinite(pred)
    if not ok.any():
        return 0.0, 0.0
    w = cb[ok]
    resid = sb[ok] / w - pred[ok]
    return float(np.dot(w, resid * resid)), float(w.sum())


def choose_sigma_halves(
    sums_a: np.ndarray,
    counts_a: np.ndarray,
    sums_b: np.ndarray,
    counts_b: np.ndarray,
    *,
    candidates: tuple[float, ...] = (0.0, *DEFAULT_SIGMAS),
) -> SmoothingChoice:
    """The candidate width of the largest cross-half correlation.

    Each candidate smooths A and is correlated with B's unsmoothed voxel means, and B with
    A's (:func:`half_map_cc`, the mean of both directions); the largest wins.  B's noise is
    independent of A, so the correlation is that of A's smoothed estimate with the map
    under B's noise.  The correlation, not the squared error, decides: the error is
    dominated by the largest-weight voxels and by the map's smooth large-scale part (a
    background left in both halves), and chose blurring widths where the fine structure
    is the signal (RM3: error 8 voxels, correlation 1 voxel, the best against the truth).
    The errors (:func:`half_map_error`, both directions, over the summed weights) are
    recorded beside.  Every candidate is scored on the same voxels: those measured in both
    halves (where the unsmoothed candidate 0 predicts).  With none, the choice is 0.

    Parameters
    ----------
    sums_a, counts_a, sums_b, counts_b
        ``(n0, n1, n2)`` sums and counts (or summed weights) of the two halves.
    candidates
        Gaussian sigmas in voxels, each >= 0 (0: no smoothing).
    """
    if not candidates or min(candidates) < 0:
        raise ValueError(f"candidates must be sigmas >= 0, got {candidates}")
    sa, ca = _check(sums_a, counts_a)
    sb, cb = _check(sums_b, counts_b)
    both = (ca > 0) & (cb > 0)
    errors: dict[float, float] = {}
    ccs: dict[float, float] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_a = np.where(both, sa / np.where(both, ca, 1.0), np.nan)
        mean_b = np.where(both, sb / np.where(both, cb, 1.0), np.nan)
    for sg in candidates:
        n1, d1 = half_map_error(sa, ca, sb, cb, sigma_voxels=sg, where=both)
        n2, d2 = half_map_error(sb, cb, sa, ca, sigma_voxels=sg, where=both)
        errors[float(sg)] = (n1 + n2) / (d1 + d2) if d1 + d2 > 0 else float("nan")
        pa = smoothed_mean(sa, ca, sigma_voxels=sg, support="kernel")
        pb = smoothed_mean(sb, cb, sigma_voxels=sg, support="kernel")
        c1, _ = half_map_cc(pa, mean_b)
        c2, _ = half_map_cc(pb, mean_a)
        ccs[float(sg)] = 0.5 * (c1 + c2)
    finite = {k: v for k, v in ccs.items() if np.isfinite(v)}
    if not finite:
        return SmoothingChoice(0.0, "half-maps", errors, ccs)
    best = max(finite, key=lambda k: (finite[k], -k))
    return SmoothingChoice(best, "half-maps", errors, ccs)


def half_map_cc(mean_a: np.ndarray, mean_b: np.ndarray) -> tuple[float, int]:
    """Pearson correlation of two half-maps' voxel means (``CC1/2``) where both are finite.

    Parameters
    ----------
    mean_a, mean_b
        Maps of one shape, float, NaN where unmeasured.

    Returns
    -------
    (float, int)
        The correlation (NaN with fewer than 2 voxels or a constant map) and the voxels.
    """
    from hpcdiff.merge import map_correlation

    return map_correlation(mean_a, mean_b)


def cc_star(cc_half: float | None) -> float | None:
    """``CC* = sqrt(2 CC1/2 / (1 + CC1/2))`` (Karplus & Diederichs 2012): the correlation the
    full map (both halves merged) is expected to have with the noise-free signal the data
    measure, from the correlation ``CC1/2`` of two half-maps with independent noise.

    A truth correlation well below ``CC*`` is error the two halves share: systematic, not
    noise (Bragg leftovers, a background misfit).  0 for ``CC1/2 <= 0`` (no measurable
    signal); None for None or NaN.
    """
    if cc_half is None or not np.isfinite(cc_half):
        return None
    c = min(float(cc_half), 1.0)
    return float(np.sqrt(2.0 * c / (1.0 + c))) if c > 0 else 0.0


def smoothing_for(
    sums: np.ndarray,
    counts: np.ndarray,
    *,
    sigma_voxels: float | Literal["auto"],
    halves: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> SmoothingChoice:
    """The fixed width, or for ``"auto"``: :func:`choose_sigma_halves` of ``halves``
    (``(sums_a, counts_a, sums_b, counts_b)``) when given, else :func:`choose_sigma`."""
    if sigma_voxels == "auto":
        if halves is not None:
            return choose_sigma_halves(*halves)
        return choose_sigma(sums, counts)
    return SmoothingChoice(float(sigma_voxels), "fixed")


__all__ = [
    "DEFAULT_SIGMAS",
    "SmoothingChoice",
    "cc_star",
    "choose_sigma",
    "choose_sigma_halves",
    "half_map_cc",
    "half_map_error",
    "loo_error",
    "smoothed_mean",
    "smoothing_for",
]

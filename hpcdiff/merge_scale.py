"""Per-frame scales of the Fourier merge: fitted across half-maps, kept or left out with their error.

A frame's merge values carry the diffuse map times a scale, ``v = g M + noise`` (``g`` 0
for a frame with no diffuse scattering, larger for a strongly diffuse one).  One scale
pass (:func:`hpcdiff.pipelines.fourier_frames.refine_scales`) measures each frame's
``g`` and merges again.

Reference (:func:`half_reference`)
    The frames are split in two halves by a hash of their frame number
    (:func:`hpcdiff.merge.frame_half`, the job's half-maps); a frame of half A is fitted
    against the map of half B and vice versa, so the reference carries none of the frame's
    own noise (no leave-one-out, no noise to take out of the normal equation).  Each
    half-map is smoothed (:func:`hpcdiff.map_smooth.smoothed_mean`, width chosen by
    leave-one-voxel-out, :func:`hpcdiff.map_smooth.choose_sigma`; ``support="kernel"``
    so gaps between the half's voxels are filled): a single half's voxel means are mostly
    noise, diffuse scattering varies over several voxels.

Fit (:func:`fit_scale`)
    Weighted least squares ``g = sum(w x v) / sum(w x^2)`` over the frame's pixels
    (``x`` the reference at each pixel's voxel, ``w`` the pixel's inverse noise variance).
    Its standard error is a delete-one-block jackknife over :data:`JACKKNIFE_BLOCKS`
    contiguous blocks of pixels (panels, rows): a frame's residuals are correlated over
    the detector (a background misfit, a panel offset), and the error from pixel noise
    alone is several times too small (measured: the scales of frames with no diffuse
    scattering scattered 2.5-3.3 of those errors about 0, 1.3 jackknife errors).

Decision (:func:`decide_scales`)
    The scales are *measurable* when at least :data:`MEASURABLE_FRACTION` of the frames
    (and :data:`MEASURABLE_MIN` frames) have ``g > 2 e``; otherwise no frame's copy of the
    map can be told from noise and the pass changes nothing (every frame kept with scale
    1).  When measurable, the typical scale ``g_typ`` starts as the median ``g`` of those
    frames and is then the median ``g`` of the frames kept (a fixed point: the significant
    frames alone are the strong ones), and a frame is left out only when its scale is
    *confidently* small,
    ``g + e < scale_min * g_typ``: a frame whose scale is uncertain is kept.  Kept frames
    are merged unscaled (``scale_model = "select"``), or (``"shrunk"``) as ``v / g'`` with
    weight ``g'^2 / var``, ``g'`` the scale shrunk towards ``g_typ`` by its error
    (``g' = (g / e^2 + g_typ / t^2) / (1 / e^2 + 1 / t^2)``, ``t^2`` the spread of the
    scales less their errors, robustly), floored at ``scale_min * g_typ``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from hpcdiff.merge import MergeAccumulator

ScaleModel = Literal["select", "shrunk"]

#: Fewest pixels with a reference value for a fitted scale (fewer: NaN, the frame is kept).
MIN_SCALE_PIXELS = 50

#: Contiguous pixel blocks of the jackknife error.
JACKKNIFE_BLOCKS = 16

#: Fraction of the fitted frames that must carry a significant scale (``g > 2 e``) for the
#: scales to be used at all (by chance about 2%).
MEASURABLE_FRACTION = 0.2

#: Fewest frames with a significant scale for the scales to be used.
MEASURABLE_MIN = 5

#: Most fixed-point steps of the typical scale (median of the frames kept).
TYPICAL_ITERATIONS = 20


@dataclass(frozen=True)
class HalfReference:
    """The two smoothed half-maps a scale pass fits each frame against.

    Attributes
    ----------
    maps
        ``((n_voxels,), (n_voxels,))`` float32 smoothed maps of half A and half B
        (:func:`hpcdiff.merge.frame_half` 0 and 1), NaN where neither is measured nearby.
    sigma_voxels
        ``(2,)`` the smoothing widths (voxels) of the two half-maps.
    """

    maps: tuple[np.ndarray, np.ndarray]
    sigma_voxels: tuple[float, float] = (0.0, 0.0)

    def at(self, voxels: np.ndarray, *, half: int) -> np.ndarray:
        """``(n,)`` float64 the *other* half's map at ``voxels`` (``(n,)`` int, -1: NaN) for a
        frame of ``half`` (0: A, 1: B)."""
        m = self.maps[1 - int(half)]
        v = np.asarray(voxels)
        ok = v >= 0
        out = np.full(v.shape, np.nan)
        out[ok] = m[v[ok]]
        return out


def half_reference(merged: MergeAccumulator, *, sigma_voxels: float | None = None) -> HalfReference:
    """The :class:`HalfReference` of a merged accumulator with half-maps.

    Parameters
    ----------
    merged
        The merge (after symmetrising, if any), ``merged.half_a`` set.
    sigma_voxels
        A fixed smoothing width (voxels), or None: chosen per half by leave-one-voxel-out
        (:func:`hpcdiff.map_smooth.choose_sigma`).
    """
    from hpcdiff.map_smooth import smoothed_mean, smoothing_for

    if merged.half_a is None:
        raise ValueError("the scale pass needs the merge's half-maps (half_a)")
    shape = merged.grid.shape
    maps, sigmas = [], []
    for half in (merged.half_a, merged.half_b()):
        s, c = half.sums.reshape(shape), half.denominator().reshape(shape)
        if not (c > 0).any():
            maps.append(np.full(merged.grid.n_voxels, np.nan, np.float32))
            sigmas.append(0.0)
            continue
        sigma = (
            smoothing_for(s, c, sigma_voxels="auto").sigma_voxels
            if sigma_voxels is None
            else float(sigma_voxels)
        )
        m = smoothed_mean(s, c, sigma_voxels=sigma, support="kernel")
        maps.append(m.ravel().astype(np.float32))
        sigmas.append(float(sigma))
    return HalfReference((maps[0], maps[1]), (sigmas[0], sigmas[1]))


def fit_scale(
    values: np.ndarray,
    *,
    reference: np.ndarray,
    weights: np.ndarray,
    blocks: int = JACKKNIFE_BLOCKS,
) -> tuple[float, float]:
    """Weighted least-squares scale ``g`` of ``values ~ g * reference`` and its jackknife error.

    Parameters
    ----------
    values
        ``(n,)`` float the frame's pixel values (NaN: not merged), in pixel (slab) order.
    reference
        ``(n,)`` float the reference map at each pixel (NaN: none).
    weights
        ``(n,)`` float inverse noise variance of each pixel.
    blocks
        Contiguous blocks of the usable pixels for the delete-one-block jackknife.

    Returns
    -------
    (float, float)
        ``g`` and its standard error; ``(nan, nan)`` with fewer than
        :data:`MIN_SCALE_PIXELS` usable pixels or a reference that is 0 there.
    """
    v = np.asarray(values, np.float64)
    x = np.asarray(reference, np.float64)
    w = np.asarray(weights, np.float64)
    if not (v.shape == x.shape == w.shape and v.ndim == 1):
        raise ValueError(f"values, reference and weights must be one (n,) shape: {v.shape}, "
                         f"{x.shape}, {w.shape}")  # fmt: skip
    ok = np.isfinite(v) & np.isfinite(x) & np.isfinite(w) & (w > 0)
    n = int(ok.sum())
    if n < MIN_SCALE_PIXELS:
        return float("nan"), float("nan")
    v, x, w = v[ok], x[ok], w[ok]
    k = max(2, min(int(blocks), n // 8))
    blk = (np.arange(n) * k) // n
    a = np.bincount(blk, w * x * v, k)
    b = np.bincount(blk, w * x * x, k)
    if not b.sum() > 0:
        return float("nan"), float("nan")
    g = float(a.sum() / b.sum())
    rest = b.sum() - b
    with np.errstate(invalid="ignore", divide="ignore"):
        gj = (a.sum() - a) / rest
    gj = gj[rest > 0]
    if gj.size < 2:
        return g, float("nan")
    err = float(np.sqrt((gj.size - 1) / gj.size * np.sum((gj - gj.mean()) ** 2)))
    return g, err


@dataclass(frozen=True)
class ScaleDecision:
    """What a scale pass does with each frame.

    Attributes
    ----------
    fitted, error
        ``(n,)`` float64 :func:`fit_scale` scale and error of each frame (NaN: not fitted).
    scale
        ``(n,)`` float64 the scale each frame is merged with (``v / scale``, weight
        ``scale^2 / var``); 0: left out.
    measurable
        Whether the scales could be told from noise (else every frame keeps scale 1).
    typical
        The typical scale ``g_typ`` of the frames that carry the map (NaN: not measurable).
    model
        ``"select"`` or ``"shrunk"``.
    scale_min
        The fraction of ``g_typ`` below which a confidently small frame is left out.
    prior_sd
        ``t``, the spread of the true scales about ``g_typ`` (``"shrunk"``; else NaN).
    """

    fitted: np.ndarray
    error: np.ndarray
    scale: np.ndarray
    measurable: bool
    typical: float
    model: ScaleModel = "select"
    scale_min: float = 0.5
    prior_sd: float = float("nan")

    @property
    def kept(self) -> np.ndarray:
        """``(n,)`` bool frames merged (scale > 0)."""
        return np.asarray(self.scale > 0)

    @property
    def changes_nothing(self) -> bool:
        """Whether the refined merge equals the first one (every frame kept, scale 1)."""
        return bool(np.all(self.scale == 1.0))

    def summary(self) -> dict[str, Any]:
        """Numbers for ``fourier_summary.json`` (``frame_scales.refined``)."""

        stats = percentile_stats

        return {
            "model": self.model,
            "measurable": self.measurable,
            "typical": None if not np.isfinite(self.typical) else float(self.typical),
            "fitted": stats(self.fitted),
            "error": stats(self.error),
            "applied": stats(self.scale[self.scale > 0]),
            "n_fitted": int(np.isfinite(self.fitted).sum()),
            "n_left_out": int((self.scale <= 0).sum()),
            "prior_sd": None if not np.isfinite(self.prior_sd) else float(self.prior_sd),
        }


def percentile_stats(values: np.ndarray) -> dict[str, float] | None:
    """The 5th, 50th and 95th percentiles of the finite ``values`` (``p5``, ``median``,
    ``p95``; None when none is finite), as the summaries print them."""
    a = np.asarray(values)[np.isfinite(values)]
    if not a.size:
        return None
    q = np.percentile(a, [5, 50, 95])
    return {"p5": float(q[0]), "median": float(q[1]), "p95": float(q[2])}


def decide_scales(
    fitted: np.ndarray,
    error: np.ndarray,
    *,
    scale_min: float = 0.5,
    model: ScaleModel = "select",
) -> ScaleDecision:
    """Which frames a scale pass keeps, and with what scale (see the module docstring).

    Parameters
    ----------
    fitted, error
        ``(n,)`` float :func:`fit_scale` results (NaN: not fitted; such frames are kept).
    scale_min
        Frames with ``g + e < scale_min * g_typ`` are left out.
    model
        ``"select"``: kept frames merge with scale 1; ``"shrunk"``: with the shrunk scale.

    Returns
    -------
    ScaleDecision
    """
    g = np.asarray(fitted, np.float64)
    e = np.asarray(error, np.float64)
    if g.shape != e.shape or g.ndim != 1:
        raise ValueError(f"fitted {g.shape} and error {e.shape} must be one (n,) shape")
    if model not in ("select", "shrunk"):
        raise ValueError(f"model must be 'select' or 'shrunk', got {model!r}")
    fit = np.isfinite(g) & np.isfinite(e)
    sig = fit & (g > 2.0 * e)
    n_sig = int(sig.sum())
    measurable = n_sig >= MEASURABLE_MIN and n_sig >= MEASURABLE_FRACTION * int(fit.sum())
    scale = np.ones(g.shape)
    if not measurable:
        return ScaleDecision(g, e, scale, False, float("nan"), model, scale_min)
    # the typical scale of the frames that carry the map: first the median of the significant
    # ones (biased high when few are: only strong frames reach 2 e), then the median of the
    # frames kept, until it settles
    typ = float(np.median(g[sig]))
    for _ in range(TYPICAL_ITERATIONS):
        left_out = fit & (g + e < scale_min * typ)
        new = float(np.median(g[fit & ~left_out]))
        if not new > 0 or abs(new - typ) <= 1e-9 * typ:
            break
        typ = new
    left_out = fit & (g + e < scale_min * typ)
    scale[left_out] = 0.0
    prior_sd = float("nan")
    if model == "shrunk":
        kept = fit & ~left_out
        gk, ek = g[kept], e[kept]
        spread = 1.4826 * float(np.median(np.abs(gk - np.median(gk)))) if gk.size else 0.0
        t2 = max(spread**2 - float(np.median(ek**2)) if ek.size else 0.0, 0.0)
        prior_sd = float(np.sqrt(t2))
        with np.errstate(invalid="ignore", divide="ignore"):
            shrunk = (
                (g / e**2 + typ / t2) / (1.0 / e**2 + 1.0 / t2) if t2 > 0 else np.full(g.shape, typ)
            )
        shrunk = np.where(e > 0, shrunk, g)
        shrunk = np.maximum(shrunk, scale_min * typ) / typ  # relative to the typical frame
        scale = np.where(left_out, 0.0, np.where(fit, shrunk, 1.0))
    return ScaleDecision(g, e, scale, True, typ, model, scale_min, prior_sd)


__all__ = [
    "JACKKNIFE_BLOCKS",
    "MEASURABLE_FRACTION",
    "MEASURABLE_MIN",
    "MIN_SCALE_PIXELS",
    "TYPICAL_ITERATIONS",
    "HalfReference",
    "ScaleDecision",
    "ScaleModel",
    "decide_scales",
    "fit_scale",
    "half_reference",
]

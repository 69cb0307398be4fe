"""How noisy a frame's pixels are, measured from the frame itself.

The merge weighs each pixel by the inverse of its noise variance.  The photon model of that
variance is ``max(B, 0) + read_noise_photons^2`` (``B`` the background, photons): right for
frames in photons, wrong by a common factor for frames in ADU with an unknown or wrong gain
(``ADU = g * photons`` gives variance ``g`` times the model), and wrong in shape for frames
that another program has already background-subtracted or rescaled (Cheetah int16 ADU, a
geometry without ``adu_per_photon``).

:func:`noise_ratio` measures, per frame, the ratio ``k`` of the observed noise variance to
the photon model from differences of neighbouring pixels along the fast-scan axis (same
panel, both valid, Bragg-peak pixels already left out by the chain): in noise units
``z = r / sqrt(model)``, ``(z[i] - z[i+1]) / sqrt(2)`` has variance ``k`` whatever smooth
structure ``r`` carries (diffuse scattering, a background misfit, a panel offset), which a
plain spread of ``z`` would count as noise.  The spread is a clipped standard deviation
(:func:`hpcdiff.background.standard.noise_scale_flat`), so isolated outliers (missed peaks,
hot pixels) do not inflate it.

Photon frames give ``k`` near 1 (slightly less at a few photons per pixel, where the clipped
spread of Poisson counts falls a little short; diffuse scattering that varies from pixel to
pixel adds to it: up to 1.3-1.5 on strongly diffuse simulated frames, 2.1-3.6 on the
strongest frames of randomised experiments); frames whose ``k``
lies outside :data:`PHOTON_BAND` are evidently not photons: the merge then uses ``k *
model`` (:meth:`hpcdiff.pipelines.fourier_frames.FrameChain.merge_values`), and
:func:`noise_summary` says so when the median frame is outside.
Neighbouring pixels whose noise is correlated (charge sharing, interpolated or binned
pixels) make ``k`` too small; the band check then warns as well.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Median noise ratio of frames that are photons (outside: the summary warns).
PHOTON_BAND: tuple[float, float] = (0.5, 2.0)

#: Most neighbour pairs used per frame (rows are strided beyond that).
MAX_PAIRS = 200_000

#: |q| bands a frame's ratio is measured in (the quietest band is used).
N_BANDS = 6

#: Fewest neighbour pairs for a ratio (fewer: NaN, the photon model is kept).
MIN_PAIRS = 100


def noise_ratio(
    residual: np.ndarray,
    *,
    model_var: np.ndarray,
    valid: np.ndarray,
    panel_index: np.ndarray | None = None,
    rings: np.ndarray | None = None,
    n_bands: int = N_BANDS,
) -> float:
    """Ratio of a frame's observed noise variance to its model variance.

    Parameters
    ----------
    residual
        ``(n_ss, n_fs)`` float frame minus its background (any unit).
    model_var
        ``(n_ss, n_fs)`` float model noise variance of ``residual``, its unit squared
        (e.g. ``max(B, 0) + read_noise_photons^2`` photons^2).
    valid
        ``(n_ss, n_fs)`` bool pixels to use (Bragg peaks and bad pixels excluded).
    panel_index
        ``(n_ss, n_fs)`` int panel of each pixel (pairs across a panel edge are skipped),
        or None.
    rings
        ``(n_ss, n_fs)`` int |q| ring of each pixel (increasing with |q|), or None: the
        pairs are split into ``n_bands`` |q| bands of equal size and the smallest band
        ratio is returned (diffuse scattering that varies from pixel to pixel adds to the
        ratio where it is strong; the quietest band is nearest the noise alone).
    n_bands
        |q| bands with ``rings``.

    Returns
    -------
    float
        The clipped variance of ``(z[:, j] - z[:, j+1]) / sqrt(2)``, ``z = residual /
        sqrt(model_var)`` (the smallest over the |q| bands with ``rings``); NaN with fewer
        than :data:`MIN_PAIRS` usable pairs.
    """
    r = np.asarray(residual)
    if r.ndim != 2 or np.shape(model_var) != r.shape or np.shape(valid) != r.shape:
        raise ValueError(
            f"residual, model_var and valid must be one (n_ss, n_fs) shape, got {r.shape}, "
            f"{np.shape(model_var)}, {np.shape(valid)}"
        )
    n_pairs = r.shape[0] * max(r.shape[1] - 1, 0)
    stride = max(1, int(np.ceil(n_pairs / MAX_PAIRS)))
    rows = slice(None, None, stride)
    r = np.asarray(r[rows], np.float64)
    var = np.asarray(model_var, np.float64)[rows]
    ok = np.asarray(valid, bool)[rows] & np.isfinite(r) & np.isfinite(var) & (var > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(ok, r / np.sqrt(np.where(ok, var, 1.0)), 0.0)
    pair = ok[:, 1:] & ok[:, :-1]
    if panel_index is not None:
        p = np.asarray(panel_index)[rows]
        pair &= p[:, 1:] == p[:, :-1]
    if int(pair.sum()) < MIN_PAIRS:
        return float("nan")
    from hpcdiff.background.standard import noise_scale_flat

    d = (z[:, 1:] - z[:, :-1])[pair] / np.sqrt(2.0)
    bands = [d]
    if rings is not None and n_bands > 1 and d.size >= n_bands * MIN_PAIRS:
        order = np.argsort(np.asarray(rings)[rows][:, :-1][pair], kind="stable")
        bands = np.array_split(d[order], n_bands)
    best = float("nan")
    for b in bands:
        s = float(noise_scale_flat(b, np.ones(b.shape, bool))[0])
        if np.isfinite(s) and s > 0 and not s * s >= best:
            best = s * s
    return best


def noise_summary(ratios: np.ndarray) -> dict[str, Any]:
    """Summary of the frames' noise ratios (for ``fourier_summary.json``).

    Parameters
    ----------
    ratios
        ``(n,)`` float per-frame :func:`noise_ratio` (NaN: not measured).

    Returns
    -------
    dict
        ``p5``, ``median``, ``p95`` of the measured ratios, ``n_measured``,
        ``photon_band`` and ``photons`` (whether the median lies in the band), and
        ``warning`` (a sentence, or None).
    """
    r = np.asarray(ratios, np.float64)
    r = r[np.isfinite(r)]
    out: dict[str, Any] = {"n_measured": int(r.size), "photon_band": list(PHOTON_BAND)}
    if not r.size:
        out.update(p5=None, median=None, p95=None, photons=None, warning=None)
        return out
    q = np.percentile(r, [5, 50, 95])
    out.update(p5=float(q[0]), median=float(q[1]), p95=float(q[2]))
    lo, hi = PHOTON_BAND
    photons = bool(lo <= q[1] <= hi)
    out["photons"] = photons
    out["warning"] = (
        None
        if photons
        else (
            f"the frames are evidently not photons: their pixel noise is {q[1]:.3g} times the "
            f"photon model's (median over {r.size} frames; photons give {lo:g}-{hi:g}). "
            "Check the geometry's adu_per_eV / adu_per_photon and [corrections] "
            "convert_to_photons, and whether the frames were already background-subtracted "
            "or scaled; the merge weights use the measured noise."
        )
    )
    return out


__all__ = ["MAX_PAIRS", "MIN_PAIRS", "N_BANDS", "PHOTON_BAND", "noise_ratio", "noise_summary"]

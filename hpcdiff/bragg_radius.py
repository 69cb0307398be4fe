"""The Fourier job's Bragg mask radius measured from the job's own frames.

``[fourier] mask_bragg_radius_per_nm = "auto"``: before the merge, a sample of the
oriented frames (at most ``MAX_FRAMES``, spread evenly over the run) goes through the frame
chain (:meth:`~hpcdiff.pipelines.fourier_frames.FrameChain.merge_values`), and each valid
pixel's residual in noise units ``z = v / sqrt(noise_var)`` is binned against its ``|q|``
distance ``d`` (nm^-1, no 2 pi) to its nearest reciprocal-lattice point (the merge's own
rule, :meth:`~hpcdiff.merge.PixelDirections.voxels`).

Profile
    Per bin of ``d`` (``N_BINS`` bins from 0 to the upper bound): the mean ``z`` of the
    pixels whose nearest point lies within the excitation cut of the frame's Ewald sphere
    (``[fourier] mask_bragg_excitation_per_nm``: the points that put a peak on the
    detector and that the merge masks around), minus the reference: the mean ``z`` of the
    pixels at the same ``d`` from a point *off* the sphere.  Those carry the same diffuse
    halo around lattice points (correlated disorder) but no Bragg tail, so the excess is
    the tail alone.  Bins without enough reference pixels (inside the excitation cut,
    where no pixel is that near a point off the sphere) take the nearest bin outwards
    that has them; without any, the mean ``z`` of the pixels beyond the upper bound.
    Each bin's standard error is that of both means.

Radius
    The tail from bin ``i`` outwards is pooled (each bin's excess weighted by its pixels);
    the radius is the inner edge of the first bin ``i`` whose pooled tail excess is below
    ``SIGNIFICANCE`` (3) standard errors: beyond it no excess is detectable in the sample,
    and a single noisy bin neither ends the tail early nor stretches it.  Bins with fewer
    than ``MIN_REFERENCE_PIXELS`` pixels (inside the chain's own peak mask) are not judged.
    With nothing to compare with (no sampled pixel near a point off the sphere or beyond
    the upper bound) the radius is the upper bound.

Bounds
    Lower: the stream's ``profile_radius`` (CrystFEL's reflection radius, nm^-1; the
    median over the chosen frames' crystals) where the stream gives one: a spot is at least
    as wide as the indexer's own model of it.  Upper: ``UPPER_FRACTION`` (0.5) of the
    smallest reciprocal-lattice spacing (the shortest of ``a*, b*, c*``, median over
    frames): a pixel is never farther than half that spacing from its nearest point along
    that axis, so a larger radius masks nothing more there, only more of the longer axes'
    gaps; the balls around neighbouring points then touch, and the diffuse scattering
    between points off the sphere (all lattice points but the few on it) is kept.  On the
    benchmark configurations (``benchmarks/bench_fourier_chain.py``) 0.3 of the spacing
    capped the radius below the measured tail (RM0: 0.024 vs 0.038 nm^-1, CC 0.43 vs
    0.53).  When the lower bound exceeds the upper, the upper wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hpcdiff.merge import PixelDirections
    from hpcdiff.pipelines.fourier import FourierSettings
    from hpcdiff.pipelines.fourier_frames import FramePlan

UPPER_FRACTION = 0.5
"""Upper bound of the radius, as a fraction of the smallest reciprocal spacing."""
SIGNIFICANCE = 3.0
"""An excess counts while it is above this many standard errors."""
N_BINS = 20
"""Distance bins between 0 and the upper bound."""
MIN_REFERENCE_PIXELS = 30
"""Pixels a bin needs to be judged (and a reference bin to be used)."""
MAX_FRAMES = 50
"""Frames sampled (spread over the run)."""


@dataclass(frozen=True)
class BraggProfile:
    """A measured excess profile and the radius chosen from it.

    Attributes
    ----------
    edges
        ``(N_BINS + 1,)`` float64 bin edges of the distance to the nearest lattice point
        on the Ewald sphere, nm^-1.
    excess, stderr
        ``(N_BINS,)`` float64 mean residual (noise units) minus the far level, and its
        standard error; NaN for an empty bin.
    pixels
        ``(N_BINS,)`` int64 pixels per bin.
    far_level, far_pixels
        Mean residual (noise units) of the pixels beyond ``upper``, and how many.
    measured
        The radius the profile gives (nm^-1), before the bounds.
    lower, upper
        The bounds (nm^-1; ``lower`` None without a stream ``profile_radius``).
    radius
        The chosen radius, nm^-1.
    n_frames
        Frames sampled.
    excitation_per_nm
        The excitation cut used (None: every lattice point).
    """

    edges: np.ndarray
    excess: np.ndarray
    stderr: np.ndarray
    pixels: np.ndarray
    far_level: float
    far_pixels: int
    measured: float
    lower: float | None
    upper: float
    radius: float
    n_frames: int
    excitation_per_nm: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (``fourier_summary.json`` ``bragg_radius``)."""

        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "rule": "auto",
            "radius_per_nm": float(self.radius),
            "measured_per_nm": float(self.measured),
            "lower_per_nm": None if self.lower is None else float(self.lower),
            "lower_from": "stream profile_radius (median)" if self.lower is not None else None,
            "upper_per_nm": float(self.upper),
            "upper_from": f"{UPPER_FRACTION} x smallest reciprocal spacing",
            "significance": SIGNIFICANCE,
            "n_frames": int(self.n_frames),
            "excitation_per_nm": self.excitation_per_nm,
            "far_level": num(self.far_level),
            "far_pixels": int(self.far_pixels),
            "profile": [
                {
                    "d_min_per_nm": float(self.edges[i]),
                    "d_max_per_nm": float(self.edges[i + 1]),
                    "excess": num(float(self.excess[i])),
                    "stderr": num(float(self.stderr[i])),
                    "pixels": int(self.pixels[i]),
                }
                for i in range(self.excess.size)
            ],
        }


def bragg_radius_text(record: dict[str, Any]) -> str:
    """One line for the job's text output from :meth:`BraggProfile.to_dict`'s record."""
    lo = record.get("lower_per_nm")
    lo_text = "none" if lo is None else f"{lo:.4f}"
    prof = " ".join(
        "."
        if b["excess"] is None or b["stderr"] is None
        else f"{b['excess'] / b['stderr']:.0f}"
        if b["stderr"] > 0
        else "inf"
        for b in record["profile"]
    )
    width = record["profile"][0]["d_max_per_nm"] if record["profile"] else 0.0
    return (
        f"fourier: Bragg mask radius {record['radius_per_nm']:.4f} nm^-1 (auto: measured "
        f"{record['measured_per_nm']:.4f} on {record['n_frames']} frames, bounds "
        f"[{lo_text}, {record['upper_per_nm']:.4f}]); excess/stderr per {width:.4f} nm^-1 "
        f"bin: {prof}"
    )


def radius_upper(orientations: np.ndarray) -> float:
    """``UPPER_FRACTION`` of the smallest reciprocal spacing, nm^-1.

    Parameters
    ----------
    orientations
        ``(n, 3, 3)`` rows ``astar, bstar, cstar`` (nm^-1).
    """
    o = np.asarray(orientations, np.float64).reshape(-1, 3, 3)
    shortest = np.linalg.norm(o, axis=2).min(axis=1)
    return float(UPPER_FRACTION * np.median(shortest))


def lattice_distance(
    pixels: PixelDirections,
    orientation: np.ndarray,
    *,
    wavelength_nm: float,
    excitation_per_nm: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's ``|q|`` distance to its nearest lattice point, and whether that point
    is on the Ewald sphere (the rule of :meth:`~hpcdiff.merge.PixelDirections.voxels`).

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``(n,)`` float64 distance (nm^-1) and ``(n,)`` bool on the sphere (all True for
        ``excitation_per_nm`` None).
    """
    a = np.asarray(orientation, np.float64)
    hkl = pixels.hkl(a, wavelength_nm=wavelength_nm).astype(np.float64)
    node = np.rint(hkl)
    d = hkl - node
    dist = np.sqrt(np.einsum("in,ij,jn->n", d, a @ a.T, d))
    if excitation_per_nm is None:
        return dist, np.ones(dist.size, bool)
    g = (node.T @ a).T  # (3, n) lattice point, nm^-1
    g[2] += 1.0 / wavelength_nm  # + k_in along +z
    exc = np.abs(np.linalg.norm(g, axis=0) - 1.0 / wavelength_nm)
    return dist, exc <= excitation_per_nm


def excess_profile(
    z: np.ndarray,
    dist: np.ndarray,
    on_sphere: np.ndarray,
    *,
    upper: float,
    lower: float | None = None,
    n_frames: int = 0,
    excitation_per_nm: float | None = None,
    n_bins: int = N_BINS,
) -> BraggProfile:
    """The excess profile of pooled pixels and the radius it gives (array in, record out).

    Parameters
    ----------
    z
        ``(n,)`` residuals in noise units (non-finite: left out).
    dist
        ``(n,)`` distance to the nearest lattice point, nm^-1.
    on_sphere
        ``(n,)`` bool: that point is within the excitation cut.
    upper, lower
        Bounds of the radius (nm^-1); ``lower`` None for none.
    n_frames, excitation_per_nm
        Recorded.
    n_bins
        Bins between 0 and ``upper``.
    """
    if not upper > 0:
        raise ValueError(f"upper bound must be > 0, got {upper}")
    z = np.asarray(z, np.float64)
    dist = np.asarray(dist, np.float64)
    on_sphere = np.asarray(on_sphere, bool)
    ok = np.isfinite(z) & np.isfinite(dist)
    far = ok & (dist > upper)
    far_n = int(far.sum())
    far_mean = float(z[far].mean()) if far_n else float("nan")
    far_var = float(z[far].var() / far_n) if far_n > 1 else float("nan")
    edges = np.linspace(0.0, upper, n_bins + 1)
    inside = ok & (dist <= upper)
    b_all = np.minimum((dist / upper * n_bins).astype(np.int64), n_bins - 1)
    on_mean, on_var, on_n = _bin_stats(z, b_all, inside & on_sphere, n_bins)
    off_mean, off_var, off_n = _bin_stats(z, b_all, inside & ~on_sphere, n_bins)
    # reference: pixels at the same distance from a lattice point off the sphere (the
    # diffuse halo around lattice points, no Bragg tail); where a bin has too few (inside
    # the excitation cut), the nearest bin outwards that has enough; else the far level
    ref = np.full(n_bins, far_mean)
    ref_var = np.full(n_bins, far_var)
    nxt = None
    for i in range(n_bins - 1, -1, -1):
        if off_n[i] >= MIN_REFERENCE_PIXELS:
            nxt = i
        if nxt is not None:
            ref[i], ref_var[i] = off_mean[nxt], off_var[nxt]
    excess = on_mean - ref
    stderr = np.sqrt(on_var + ref_var)
    # the tail from bin i on, pooled (each bin's excess weighted by its pixels): the radius
    # is the first i beyond which the pooled excess is no longer significant
    use = (on_n >= MIN_REFERENCE_PIXELS) & np.isfinite(excess) & np.isfinite(stderr)
    w = np.where(use, on_n, 0).astype(np.float64)
    wx = np.cumsum((w * np.where(use, excess, 0.0))[::-1])[::-1]
    wv = np.cumsum((w * w * np.where(use, stderr, 0.0) ** 2)[::-1])[::-1]
    wn = np.cumsum(w[::-1])[::-1]
    measured = upper
    for i in range(n_bins):
        if wn[i] <= 0 or not wx[i] > SIGNIFICANCE * np.sqrt(wv[i]):
            measured = float(edges[i])
            break
    if not np.isfinite(ref).any():
        measured = upper  # nothing to compare with
    radius = measured if lower is None else max(measured, lower)
    radius = min(radius, upper)
    return BraggProfile(
        edges=edges,
        excess=excess,
        stderr=stderr,
        pixels=on_n.astype(np.int64),
        far_level=far_mean,
        far_pixels=far_n,
        measured=float(measured),
        lower=lower,
        upper=float(upper),
        radius=float(radius),
        n_frames=int(n_frames),
        excitation_per_nm=excitation_per_nm,
    )


def _bin_stats(
    z: np.ndarray, bins: np.ndarray, sel: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: mean of ``z[sel]``, the variance of that mean, and the count."""
    b, zs = bins[sel], z[sel]
    cnt = np.bincount(b, minlength=n_bins)
    s1 = np.bincount(b, weights=zs, minlength=n_bins)
    s2 = np.bincount(b, weights=zs * zs, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / cnt
        var = np.maximum(s2 / cnt - mean * mean, 0.0) / np.maximum(cnt - 1, 1)
    return mean, var, cnt


def sample_rows(n: int, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """``(m,)`` int64 rows of ``n`` frames, at most ``max_frames``, spread evenly."""
    if n <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(np.int64))


def measure_bragg_radius(
    plan: FramePlan, settings: FourierSettings, *, max_frames: int = MAX_FRAMES
) -> BraggProfile:
    """Measure the radius on a sample of the plan's frames (read and run through the chain).

    ``settings``: the job's settings (its frame chain and excitation cut; its radius is
    not used).  Bounds from the plan's orientations and stream profile radii.
    """
    from hpcdiff.geometry import detector_shift_m
    from hpcdiff.pipelines.fourier_frames import (
        _frame_shifts,
        _number,
        chain_for,
        open_plan_source,
    )

    rows = sample_rows(len(plan), max_frames)
    upper = radius_upper(plan.orientations)
    pr = getattr(plan, "profile_radius_nm_inv", None)
    lower = None
    if pr is not None and np.isfinite(pr).any():
        lower = float(np.nanmedian(np.asarray(pr, np.float64)))
    chain = chain_for(plan, settings.chain)
    exc = settings.bragg_excitation_per_nm
    zs, ds, ons = [], [], []
    with open_plan_source(plan) as source:
        for r in rows:
            num = int(plan.numbers[r])
            frame = source.read(num, num + 1)[0]
            values = source.frame_values(num, num + 1)
            masks = chain.model.pixel_masks
            if masks is not None and masks.frame_masks:
                bad = masks.read_frame_bad([plan.frame_ids[r]])
                if bad is not None:
                    frame = frame.astype(np.float64 if frame.dtype == np.float64 else np.float32)
                    frame[bad[0]] = np.nan
            energy = float(plan.photon_energy_ev[r])
            if not math.isfinite(energy):
                energy = _number(
                    values, "photon_energy_ev", plan.geometry.photon_energy, "photon energy", plan
                )
            clen = _number(
                values, "clen_m", plan.geometry.panels[0].clen, "camera length (clen)", plan
            )
            shift = _frame_shifts(
                plan, np.array([r]), [values], chain.model.shift_m, detector_shift_m
            )
            mv = chain.merge_values(
                frame,
                photon_energy_ev=energy,
                clen_m=clen,
                det_shift_m=None if shift is None else shift[0],
            )
            if mv.noise_var is None or not math.isfinite(mv.shot):
                continue
            v = mv.pixels.values(mv.values).astype(np.float64)
            var = mv.pixels.values(mv.noise_var).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                z = np.where(var > 0, v / np.sqrt(var), np.nan)
            dist, on = lattice_distance(
                mv.pixels,
                plan.orientations[r],
                wavelength_nm=mv.wavelength_nm,
                excitation_per_nm=exc,
            )
            zs.append(z)
            ds.append(dist)
            ons.append(on)
    if not zs:
        z = d = np.zeros(0)
        on = np.zeros(0, bool)
    else:
        z, d, on = np.concatenate(zs), np.concatenate(ds), np.concatenate(ons)
    return excess_profile(
        z, d, on, upper=upper, lower=lower, n_frames=len(zs), excitation_per_nm=exc
    )

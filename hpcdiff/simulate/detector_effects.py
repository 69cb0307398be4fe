"""What the detector does to expected photon counts: gains, offsets, noise, ADU, defects.

One :class:`DetectorResponse` per experiment holds the fixed properties (relative gain of
each panel, dead pixels, panel-edge pixels, ADU scale, saturation); each frame draws a
:class:`FrameDrift` (gain drift and common-mode offset of each panel, here one CrystFEL
panel = one ASIC).  :meth:`DetectorResponse.to_adu` turns expected photons into the ADU
frame a detector would write:

``adu = min(max_adu, photons * adu_per_photon * gain[p] * drift[p] + offset[p] + read_noise)``

with ``photons`` Poisson-distributed around the expectation (``noise=True``), dead pixels
reading 0 and panel-edge pixels reading with 3x the read noise (they are masked in the
geometry the simulator writes).  Pixels that belong to no panel read 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class FrameDrift:
    """Per-frame detector state.

    Attributes
    ----------
    gain
        (n_panels,) float32 relative gain of each panel this frame (fixed gain x drift).
    offset_adu
        (n_panels,) float32 common-mode offset of each panel (ADU).
    """

    gain: np.ndarray
    offset_adu: np.ndarray


@dataclass(frozen=True)
class DetectorResponse:
    """Fixed response of the simulated detector.

    Attributes
    ----------
    panel_index
        (n_ss, n_fs) int16 panel of each slab pixel, -1 where no panel.
    panel_gain
        (n_panels,) float32 fixed relative gain (mean 1, RMS ``gain_spread``).
    dead
        (n_ss, n_fs) bool, pixels that always read 0.
    edge
        (n_ss, n_fs) bool, outermost pixel row/column of every panel.
    adu_per_photon
        ADU per detected photon (``adu_per_eV * photon_energy_eV``).
    max_adu
        Saturation level (ADU); values are clipped to it.
    read_noise_adu
        RMS electronic noise (ADU) of ordinary pixels.
    offset_sigma_adu
        RMS common-mode offset per panel and frame (ADU).
    gain_drift
        RMS relative gain drift per panel and frame.
    """

    panel_index: np.ndarray
    panel_gain: np.ndarray
    dead: np.ndarray
    edge: np.ndarray
    adu_per_photon: float
    max_adu: float
    read_noise_adu: float
    offset_sigma_adu: float
    gain_drift: float

    @property
    def n_panels(self) -> int:
        """Number of panels."""
        return int(self.panel_gain.shape[0])

    @classmethod
    def build(
        cls,
        panel_index: np.ndarray,
        *,
        rng: np.random.Generator,
        adu_per_photon: float,
        max_adu: float,
        dead_fraction: float = 5e-4,
        gain_spread: float = 0.05,
        read_noise_photons: float = 0.12,
        offset_sigma_photons: float = 0.3,
        gain_drift: float = 0.01,
        dead_panels: tuple[int, ...] = (),
    ) -> DetectorResponse:
        """Draw a detector's fixed defects and gains.

        Parameters
        ----------
        panel_index
            (n_ss, n_fs) integer panel of each pixel, -1 where no panel.
        rng
            Generator for the fixed properties (the experiment's detector stream).
        adu_per_photon, max_adu
            ADU scale and saturation.
        dead_fraction
            Fraction of on-panel pixels that are dead.
        gain_spread
            RMS of the fixed relative gain of the panels.
        read_noise_photons, offset_sigma_photons
            Read noise and common-mode RMS, in photon units (converted to ADU).
        gain_drift
            RMS relative gain drift per frame.
        dead_panels
            Panels (ASICs) whose every pixel is dead (reads 0).
        """
        panel_index = np.asarray(panel_index).astype(np.int16, copy=False)
        n_panels = int(panel_index.max()) + 1 if panel_index.size else 0
        gain = (1.0 + gain_spread * rng.standard_normal(n_panels)).astype(np.float32)
        on = panel_index >= 0
        dead = on & (rng.random(panel_index.shape) < dead_fraction)
        if dead_panels:
            dead |= np.isin(panel_index, np.asarray(dead_panels, dtype=np.int16))
        return cls(
            panel_index=panel_index,
            panel_gain=np.clip(gain, 0.5, 1.5),
            dead=dead,
            edge=panel_edges(panel_index),
            adu_per_photon=float(adu_per_photon),
            max_adu=float(max_adu),
            read_noise_adu=float(read_noise_photons * adu_per_photon),
            offset_sigma_adu=float(offset_sigma_photons * adu_per_photon),
            gain_drift=float(gain_drift),
        )

    def draw_drift(self, rng: np.random.Generator) -> FrameDrift:
        """One frame's gains and common-mode offsets (consumes 2 x n_panels normals)."""
        z = rng.standard_normal((2, self.n_panels)).astype(np.float32)
        gain = self.panel_gain * (1 + np.float32(self.gain_drift) * z[0])
        return FrameDrift(gain=gain, offset_adu=np.float32(self.offset_sigma_adu) * z[1])

    def to_adu(
        self,
        photons: np.ndarray,
        drift: FrameDrift,
        *,
        rng: np.random.Generator | None,
    ) -> np.ndarray:
        """Detect expected photons: Poisson, gain, offset, read noise, saturation, defects.

        Parameters
        ----------
        photons
            (n_ss, n_fs) float32 expected photons (>= 0).
        drift
            This frame's gains and offsets.
        rng
            Generator for Poisson and read noise; ``None`` gives the noise-free frame
            (expected photons, no read noise), all else unchanged.

        Returns
        -------
        numpy.ndarray
            (n_ss, n_fs) float32 ADU.
        """
        if rng is not None:
            adu = poisson(rng, photons)
            noise = rng.standard_normal(photons.shape, dtype=np.float32)
            noise *= np.float32(self.read_noise_adu)
            noise.reshape(-1)[self._edge_flat] *= np.float32(3.0)
        else:
            adu = np.array(photons, dtype=np.float32)
            noise = None
        scale = drift.gain * np.float32(self.adu_per_photon)
        self._per_panel(adu, scale, drift.offset_adu)
        if noise is not None:
            adu += noise
        np.minimum(adu, np.float32(self.max_adu), out=adu)
        adu.reshape(-1)[self._zero_flat] = 0
        return adu

    def photons_to_adu_linear(self, photons: np.ndarray, drift: FrameDrift) -> np.ndarray:
        """The linear part of :meth:`to_adu` (gain only): ADU a photon signal adds.

        Parameters
        ----------
        photons
            (n_ss, n_fs) expected photons.

        Returns
        -------
        numpy.ndarray
            (n_ss, n_fs) float32; 0 off-panel and on dead pixels.
        """
        out = np.array(photons, dtype=np.float32)
        scale = drift.gain * np.float32(self.adu_per_photon)
        self._per_panel(out, scale, np.zeros_like(scale))
        out.reshape(-1)[self._zero_flat] = 0
        return out

    def _per_panel(self, values: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> None:
        """In place ``values = values * scale[p] + offset[p]`` over each panel's pixels."""
        boxes = self._boxes
        if boxes is not None:
            for p, (s0, s1, f0, f1) in enumerate(boxes):
                block = values[s0:s1, f0:f1]
                block *= scale[p]
                block += offset[p]
        else:
            panel = np.where(self.panel_index >= 0, self.panel_index, 0)
            values *= scale[panel]
            values += offset[panel]

    @cached_property
    def _boxes(self) -> list[tuple[int, int, int, int]] | None:
        """Slab box of each panel, or ``None`` if a panel is not exactly a rectangle."""
        return panel_boxes(self.panel_index)

    @cached_property
    def _edge_flat(self) -> np.ndarray:
        return np.flatnonzero(self.edge)

    @cached_property
    def _zero_flat(self) -> np.ndarray:
        return np.flatnonzero(self.dead | (self.panel_index < 0))


def quantise(adu: np.ndarray, *, dtype: str, max_adu: float = np.inf) -> np.ndarray:
    """Detector integers from float ADU: rounded, saturating at ``min(max_adu, dtype max)``.

    Parameters
    ----------
    adu
        (...) float32 ADU.
    dtype
        ``"int16"`` or ``"int32"`` (or any numpy integer type name).
    max_adu
        The detector's saturation level (ADU).

    Returns
    -------
    numpy.ndarray
        (...) of ``dtype``; values below the type's minimum clip to it.
    """
    info = np.iinfo(np.dtype(dtype))
    high = float(min(max_adu, info.max))
    # float32 holds every int16 exactly; wider integers are rounded in float64
    out = np.rint(adu) if info.bits <= 16 else np.rint(np.asarray(adu, dtype=np.float64))
    np.clip(out, float(info.min), high, out=out)
    return out.astype(dtype)


def poisson(
    rng: np.random.Generator,
    lam: np.ndarray,
    *,
    cutoff: float = 12.0,
    dense_passes: int | None = None,
) -> np.ndarray:
    """Poisson deviates, fast for the low means of diffraction backgrounds.

    Means up to ``cutoff`` use inverse-CDF sampling with one float32 uniform per pixel:
    the first ``dense_passes`` counts are tested on every pixel at once, the rest on the
    shrinking set of pixels still above their CDF (``None``: ``mean + 3 sqrt(mean) + 2``
    passes, 4 to 8, from the mean expectation; the draws do not depend on it).  Larger means (Bragg spots, a few
    pixels) use ``rng.poisson``.  Float32 rounding of the CDF (relative 1e-7) is the only
    departure from exact Poisson statistics.

    Parameters
    ----------
    rng
        Random generator.
    lam
        (...) float expected counts, >= 0.

    Returns
    -------
    numpy.ndarray
        (...) float32 counts.
    """
    lam = np.asarray(lam, dtype=np.float32)
    flat = lam.reshape(-1)
    if dense_passes is None:
        mean = float(np.mean(flat, dtype=np.float64)) if flat.size else 0.0
        dense_passes = int(min(8, max(4, mean + 3.0 * np.sqrt(mean) + 2.0)))
    big = np.flatnonzero(flat > cutoff)
    u = rng.random(flat.shape, dtype=np.float32)
    p = np.exp(-flat)
    cdf = p.copy()
    out = (u > cdf).astype(np.float32)
    for k in range(1, dense_passes):
        p *= flat
        p *= np.float32(1.0 / k)
        cdf += p
        out += u > cdf
    active = np.flatnonzero(u > cdf)
    if big.size:
        active = np.setdiff1d(active, big, assume_unique=True)
    lam_a, p, cdf, u_a = flat[active], p[active], cdf[active], u[active]
    k = dense_passes - 1
    while active.size:
        k += 1
        p *= lam_a / np.float32(k)
        cdf += p
        # stop where the remaining tail is below float32 resolution of the CDF
        keep = (u_a > cdf) & (p > np.float32(1e-9))
        active, lam_a, p, cdf, u_a = active[keep], lam_a[keep], p[keep], cdf[keep], u_a[keep]
        out[active] += 1
    if big.size:
        out[big] = rng.poisson(flat[big].astype(np.float64))
    return out.reshape(lam.shape)


def panel_boxes(panel_index: np.ndarray) -> list[tuple[int, int, int, int]] | None:
    """Slab box ``(ss0, ss1, fs0, fs1)`` (half-open) of each panel 0..n-1.

    Returns ``None`` when some panel's pixels do not fill their bounding box exactly (then
    per-panel work falls back to gathering by panel index).
    """
    panel_index = np.asarray(panel_index)
    n = int(panel_index.max()) + 1 if panel_index.size else 0
    boxes = []
    for p in range(n):
        rows = np.flatnonzero((panel_index == p).any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero((panel_index[rows[0] : rows[-1] + 1] == p).any(axis=0))
        box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
        if not (panel_index[box[0] : box[1], box[2] : box[3]] == p).all():
            return None
        boxes.append(box)
    return boxes


def panel_edges(panel_index: np.ndarray) -> np.ndarray:
    """Pixels on the border of their panel in the slab.

    A pixel is an edge pixel when one of its four slab neighbours belongs to another panel
    (or to none) or lies outside the slab.

    Parameters
    ----------
    panel_index
        (n_ss, n_fs) integer, -1 where no panel.

    Returns
    -------
    numpy.ndarray
        (n_ss, n_fs) bool.
    """
    p = np.pad(np.asarray(panel_index), 1, constant_values=-1)
    centre = p[1:-1, 1:-1]
    edge = (
        (p[:-2, 1:-1] != centre)
        | (p[2:, 1:-1] != centre)
        | (p[1:-1, :-2] != centre)
        | (p[1:-1, 2:] != centre)
    )
    return edge & (centre >= 0)


__all__ = ["DetectorResponse", "FrameDrift", "panel_boxes", "panel_edges", "poisson", "quantise"]

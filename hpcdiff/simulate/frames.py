"""One simulated frame at a time: per-detector arrays computed once, frames from (seed, i).

:class:`FrameSimulator` holds everything that is the same for every frame of an
experiment (pixel q vectors, polarisation x solid angle, the molecule's transform, the
detector's fixed response, the diffuse scale of each preset) and draws frame ``i`` from
``numpy.random.default_rng([seed, i])`` alone (its Poisson and read noise from
``default_rng([seed, i, 1])``), so any process can make any frame.  Experiment-level random
streams use keys ``>= 2**32`` that no frame index reaches: ``[seed, 2**32]`` the molecule,
``[seed, 2**32 + 1]`` the detector, ``[seed, 2**32 + 2, k]`` the preset calibration.

Expected photons of a pixel with scattering vector ``q`` (nm^-1), solid angle ``Omega``
(usr) and polarisation factor ``P``, for a frame with pulse scale ``s_pulse``::

    photons = s_pulse * P * (Omega * (background(|q|) + debris * K * <w |F|^2>_sphere(|q|)
                                      + strength * K * w(|q|) |F(hkl)|^2)
                             + bragg(q))

``K`` (:attr:`FrameSimulator.diffuse_scale_per_usr`) makes ``strength`` the nominal
diffuse-to-background ratio in the ratio band (see :mod:`hpcdiff.simulate.presets`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpcdiff.simulate.detector_effects import DetectorResponse, FrameDrift
from hpcdiff.simulate.physics import (
    NOMINAL_BACKGROUND,
    BackgroundParams,
    MolecularTransform,
    background_per_usr,
    bragg_photons,
    diffuse_weight,
    draw_background,
    random_rotation,
    reciprocal_basis,
    wavelength_nm,
)
from hpcdiff.simulate.presets import (
    PRESETS,
    RATIO_BAND_PER_NM,
    Preset,
    diffuse_class,
    draw_debris,
    draw_diffuse_strength,
    get_preset,
)

EXPERIMENT_KEY = 2**32
"""First random-stream key of experiment-level draws (frame indices stay below it)."""

DEFAULT_ADU_PER_EV = 0.00338
"""CSPAD-like gain (about 32 ADU per 9.5 keV photon) when the geometry gives none."""
DEFAULT_MAX_ADU = 14000.0
"""CSPAD-like saturation (ADU) when the geometry gives none."""

SPOT_SIGMA_PER_NM = 0.007
"""RMS Bragg spot width in the detector plane (nm^-1; about 0.8 CSPAD pixel at 0.1 m)."""
EXCITATION_SIGMA_PER_NM = 0.004
"""RMS excitation-error width of the partiality (mosaicity + bandwidth, nm^-1)."""
LATTICE_PHOTONS = 400.0
"""Median photons of a fully recorded reflection with |F|^2 = 1 (band mean)."""


@dataclass(frozen=True)
class DetectorArrays:
    """The per-pixel arrays the simulator needs, all (n_ss, n_fs).

    Built from a :class:`hpcdiff.geometry.DetectorModel` by :meth:`from_model`, or directly
    (tests).  ``q_vectors`` nm^-1 (NaN off-panel), ``polarisation`` dimensionless,
    ``solid_angle_sr`` sr, ``panel_index`` int16 (-1 off-panel), ``valid`` bool.
    """

    q_vectors: np.ndarray
    polarisation: np.ndarray
    solid_angle_sr: np.ndarray
    panel_index: np.ndarray
    valid: np.ndarray
    photon_energy_ev: float
    adu_per_ev: float = DEFAULT_ADU_PER_EV
    max_adu: float = DEFAULT_MAX_ADU

    @property
    def slab_shape(self) -> tuple[int, int]:
        """(n_ss, n_fs)."""
        n_ss, n_fs = self.panel_index.shape
        return int(n_ss), int(n_fs)

    @classmethod
    def from_model(cls, model: Any) -> DetectorArrays:
        """Arrays of a :class:`hpcdiff.geometry.DetectorModel` (gain from its first panel)."""
        panel = model.geom.panels[0]
        adu_per_ev = panel.adu_per_ev
        if adu_per_ev is None and getattr(panel, "adu_per_photon", None) is not None:
            adu_per_ev = panel.adu_per_photon / model.photon_energy_ev
        max_adu = panel.max_adu if math.isfinite(panel.max_adu) else DEFAULT_MAX_ADU
        return cls(
            q_vectors=np.asarray(model.q_vectors),
            polarisation=np.asarray(model.polarisation),
            solid_angle_sr=np.asarray(model.solid_angle_sr),
            panel_index=np.asarray(model.panel_index),
            valid=np.asarray(model.valid),
            photon_energy_ev=float(model.photon_energy_ev),
            adu_per_ev=float(adu_per_ev if adu_per_ev is not None else DEFAULT_ADU_PER_EV),
            max_adu=float(max_adu),
        )


@dataclass(frozen=True)
class FrameTruth:
    """What frame ``index`` really is.

    Attributes
    ----------
    index
        Global frame number.
    strength
        Diffuse strength = nominal diffuse-to-background ratio (0: no diffuse).
    diffuse_class
        Ordered class 0..3 (:func:`hpcdiff.simulate.presets.diffuse_class`).
    rotation
        (3, 3) crystal-to-lab rotation ``U``.
    reciprocal
        (3, 3) ``A = B @ U.T``, rows ``a*, b*, c*`` in nm^-1, lab frame.
    background
        The shot's background shape.
    debris
        Isotropic debris level, in diffuse-strength units
        (:func:`hpcdiff.simulate.presets.draw_debris`).
    lattice_scale
        Photons of a fully recorded reflection with ``|F|^2 = 1``.
    pulse_scale
        Shot-to-shot intensity factor multiplying every term.
    ratio
        Measured noise-free diffuse-to-background ratio of this frame in the ratio band.
    """

    index: int
    strength: float
    diffuse_class: int
    rotation: np.ndarray
    reciprocal: np.ndarray
    background: BackgroundParams
    debris: float
    lattice_scale: float
    pulse_scale: float
    ratio: float

    @property
    def diffuse(self) -> bool:
        """True for a frame with diffuse scattering."""
        return self.strength > 0


@dataclass(frozen=True)
class FrameComponents:
    """Expected photons of one frame, each (n_ss, n_fs) float32, pulse scale included.

    ``background`` (water, solvent, air), ``debris`` (isotropic, the diffuse term's radial
    shape), ``diffuse`` (the label: speckled, 0 for non-diffuse frames and twins), ``bragg``.
    """

    background: np.ndarray
    debris: np.ndarray
    diffuse: np.ndarray
    bragg: np.ndarray

    @property
    def total(self) -> np.ndarray:
        """Sum of the four terms."""
        out = self.background + self.debris
        out += self.diffuse
        out += self.bragg
        return out


class FrameSimulator:
    """Makes frame ``i`` of an experiment from ``(seed, i)``.

    Parameters
    ----------
    detector
        Per-pixel arrays of the detector at the experiment's distance and energy.
    seed
        Experiment seed.
    cell_nm, cell_angles_deg
        Unit cell (nm, degrees).
    preset
        Difficulty preset (name or :class:`~hpcdiff.simulate.presets.Preset`).
    diffuse_fraction
        Probability that a frame is diffuse.
    n_atoms
        Atoms in the random molecule.

    Attributes
    ----------
    q, q_abs
        (n, 3) and (n,) float32 q vectors and |q| (nm^-1) of the n on-panel pixels, in slab
        order (``q`` is a view of the row-contiguous ``q_t`` (3, n)).
    pol_omega_usr, pixel_q_area
        (n,) float32 polarisation x solid angle (usr), and that over lambda^2 (nm^-2).
    transform
        The molecule's :class:`~hpcdiff.simulate.physics.MolecularTransform`.
    response
        The detector's fixed :class:`~hpcdiff.simulate.detector_effects.DetectorResponse`.
    diffuse_scale_per_usr
        Preset name -> ``K`` (photons per usr per unit strength per unit ``w |F|^2``).
    """

    def __init__(
        self,
        detector: DetectorArrays,
        *,
        seed: int,
        cell_nm: tuple[float, ...],
        cell_angles_deg: tuple[float, ...],
        preset: str | Preset = "moderate",
        diffuse_fraction: float = 0.3,
        n_atoms: int = 150,
    ) -> None:
        self.detector = detector
        self.seed = int(seed)
        self.preset = preset if isinstance(preset, Preset) else get_preset(preset)
        self.diffuse_fraction = float(diffuse_fraction)
        self.cell_nm = tuple(float(v) for v in cell_nm)
        self.cell_angles_deg = tuple(float(v) for v in cell_angles_deg)
        self.basis = reciprocal_basis(self.cell_nm, self.cell_angles_deg)
        self.wavelength_nm = wavelength_nm(detector.photon_energy_ev)
        on = detector.panel_index.reshape(-1) >= 0
        q = detector.q_vectors.reshape(-1, 3)
        on &= np.all(np.isfinite(q), axis=1)
        self._on = np.flatnonzero(on)
        self._all_on = self._on.size == on.size
        # (3, n) rows contiguous: column-wise arithmetic is several times faster
        self.q_t = np.ascontiguousarray(q[self._on].T, dtype=np.float32)
        self.q = self.q_t.T
        self.q_abs = np.sqrt(np.einsum("ij,ij->j", self.q_t, self.q_t))
        pol = detector.polarisation.reshape(-1)[self._on].astype(np.float64)
        omega = detector.solid_angle_sr.reshape(-1)[self._on].astype(np.float64)
        self.pol_omega_usr = (pol * omega * 1e6).astype(np.float32)
        self.pixel_q_area = (pol * omega / self.wavelength_nm**2).astype(np.float32)
        lo, hi = RATIO_BAND_PER_NM
        band = (self.q_abs >= lo) & (self.q_abs < hi)
        band &= detector.valid.reshape(-1)[self._on]
        if not band.any():
            raise ValueError(
                f"no valid pixel has {lo} <= |q| < {hi} nm^-1 (detector covers "
                f"{self.q_abs.min():.2f}..{self.q_abs.max():.2f}); the diffuse-to-background "
                "ratio is undefined: move the detector or change the photon energy"
            )
        self._band = np.flatnonzero(band)
        self.transform = MolecularTransform.random(
            self.cell_nm,
            self.cell_angles_deg,
            rng=np.random.default_rng([self.seed, EXPERIMENT_KEY]),
            q_max_per_nm=float(self.q_abs.max()),
            n_atoms=n_atoms,
            normalise_band=RATIO_BAND_PER_NM,
        )
        self.response = DetectorResponse.build(
            detector.panel_index,
            rng=np.random.default_rng([self.seed, EXPERIMENT_KEY + 1]),
            adu_per_photon=detector.adu_per_ev * detector.photon_energy_ev,
            max_adu=detector.max_adu,
        )
        self._radial_edges = np.linspace(0.0, float(self.q_abs.max()) * 1.001 + 1e-6, 257)
        # |q| table for isotropic terms: 8192 steps, pixel = linear interpolation between two
        self._table_q = np.linspace(0.0, float(self.q_abs.max()) * 1.0001 + 1e-6, 8193).astype(
            np.float32
        )
        pos = self.q_abs / self._table_q[1]
        self._table_i = np.minimum(pos.astype(np.int32), 8191)
        self._table_f = (pos - self._table_i).astype(np.float32)
        # sum over band pixels of a tabulated isotropic term = dot(weights, table)
        bi, bf = self._table_i[self._band], self._table_f[self._band].astype(np.float64)
        bw = self.pol_omega_usr[self._band].astype(np.float64)
        self._band_table_weights = np.bincount(bi, bw * (1 - bf), minlength=8193)
        self._band_table_weights[1:] += np.bincount(bi, bw * bf, minlength=8193)[:-1]
        by_sigma: dict[float, float] = {}
        for p in PRESETS.values():
            if p.displacement_sigma_nm not in by_sigma:
                by_sigma[p.displacement_sigma_nm] = self._diffuse_scale(p.displacement_sigma_nm)
        self.diffuse_scale_per_usr = {
            name: by_sigma[p.displacement_sigma_nm] for name, p in PRESETS.items()
        }
        if self.preset.name not in self.diffuse_scale_per_usr:
            self.diffuse_scale_per_usr[self.preset.name] = self._diffuse_scale(
                self.preset.displacement_sigma_nm
            )
        # isotropic debris per usr per unit level: K <w |F|^2>_sphere(|q|), on the |q| table
        self._debris_table = (
            self.diffuse_scale_per_usr[self.preset.name]
            * self._shell_average(self._table_q, self.preset.displacement_sigma_nm)
        ).astype(np.float32)
        # K w(|q|) P Omega of the active preset: diffuse photons = strength * this * |F|^2
        weight = diffuse_weight(self.q_abs, sigma_nm=self.preset.displacement_sigma_nm)
        self._diffuse_factor = (
            np.float32(self.diffuse_scale_per_usr[self.preset.name]) * weight * self.pol_omega_usr
        )

    # ------------------------------------------------------------------ set-up

    def _diffuse_scale(self, sigma_nm: float) -> float:
        """``K`` such that a unit-strength frame of median shape has diffuse = background.

        Sum over band pixels of ``P Omega background_nominal(|q|)`` over the same sum of
        ``P Omega <w |F|^2>_sphere(|q|)`` (spherical average over orientations).
        """
        q = self.q_abs[self._band]
        w = self.pol_omega_usr[self._band].astype(np.float64)
        diffuse = self._shell_average(q, sigma_nm)
        background = background_per_usr(q, NOMINAL_BACKGROUND).astype(np.float64)
        return float(np.sum(w * background) / np.sum(w * diffuse))

    def _shell_average(self, q_abs: np.ndarray, sigma_nm: float) -> np.ndarray:
        """``<w |F|^2>_sphere`` at ``q_abs`` (float64), from 256 shells of the transform grid."""
        edges = self._radial_edges
        avg = self.transform.radial_average(edges, sigma_nm=sigma_nm)
        centres = 0.5 * (edges[1:] + edges[:-1])
        ok = np.isfinite(avg)
        return np.interp(q_abs, centres[ok], avg[ok])

    # ------------------------------------------------------------------ frames

    def truth(self, index: int) -> FrameTruth:
        """Frame ``index``'s truth without making the frame (the ratio from band pixels)."""
        truth, _drift = self.parameters(index)
        if truth.strength > 0:
            ratio = self._band_ratio(truth.reciprocal, truth.background, truth.strength)
            truth = dataclasses.replace(truth, ratio=ratio)
        return truth

    def parameters(self, index: int) -> tuple[FrameTruth, FrameDrift]:
        """Frame ``index``'s parameters and detector state, from ``default_rng([seed, index])``.

        Cheap (no pixel work); the truth's ``ratio`` is left 0 (see :meth:`truth`).
        """
        rng = np.random.default_rng([self.seed, int(index)])
        rotation = random_rotation(rng)
        strength = draw_diffuse_strength(rng, self.preset, diffuse_fraction=self.diffuse_fraction)
        background = draw_background(rng)
        debris = draw_debris(rng, self.preset)
        lattice_scale = LATTICE_PHOTONS * math.exp(0.5 * rng.standard_normal())
        pulse_scale = math.exp(0.2 * rng.standard_normal())
        drift = self.response.draw_drift(rng)
        reciprocal = self.basis @ rotation.T
        truth = FrameTruth(
            index=int(index),
            strength=strength,
            diffuse_class=int(diffuse_class(strength, self.preset)),
            rotation=rotation,
            reciprocal=reciprocal,
            background=background,
            debris=debris,
            lattice_scale=lattice_scale,
            pulse_scale=pulse_scale,
            ratio=0.0,
        )
        return truth, drift

    def _band_ratio(
        self,
        reciprocal: np.ndarray,
        background: BackgroundParams,
        strength: float,
        *,
        preset: Preset | None = None,
        step: int = 1,
    ) -> float:
        """Noise-free diffuse-to-background ratio over the band pixels (every ``step``-th)."""
        preset = preset or self.preset
        idx = self._band[::step]
        diffuse = self._diffuse_per_usr(idx, reciprocal, strength, preset)
        bg = background_per_usr(self.q_abs[idx], background)
        w = self.pol_omega_usr[idx]
        return float(np.dot(w, diffuse) / np.dot(w, bg))

    def _diffuse_per_usr(
        self,
        idx: np.ndarray | slice,
        reciprocal: np.ndarray,
        strength: float,
        preset: Preset,
        hkl: np.ndarray | None = None,
    ) -> np.ndarray:
        if hkl is None:
            hkl = self.q[idx] @ np.linalg.inv(reciprocal).astype(np.float32)
        k = np.float32(strength * self.diffuse_scale_per_usr[preset.name])
        weight = diffuse_weight(self.q_abs[idx], sigma_nm=preset.displacement_sigma_nm)
        return k * weight * self.transform.continuous(hkl)

    def components(self, index: int, *, twin: bool = False) -> tuple[FrameComponents, FrameTruth]:
        """Expected photons of each term of frame ``index``.

        Parameters
        ----------
        index
            Global frame number.
        twin
            Leave the diffuse term out (the frame's non-diffuse twin); all else identical.
        """
        truth, _drift = self.parameters(index)
        return self._components(truth, twin=twin)

    def _components(self, truth: FrameTruth, *, twin: bool) -> tuple[FrameComponents, FrameTruth]:
        bg_table, debris_table = self._isotropic_tables(truth)
        diffuse, truth = self._diffuse(truth, twin=twin)
        terms = (
            self._from_table(bg_table),
            self._from_table(debris_table),
            diffuse if diffuse is not None else np.zeros(self.q_abs.shape, dtype=np.float32),
            self._bragg(truth),
        )
        return FrameComponents(*(self._to_slab(a) for a in terms)), truth

    def _expected_total(self, truth: FrameTruth, *, twin: bool) -> tuple[np.ndarray, FrameTruth]:
        """Expected photons (n_ss, n_fs): the sum of the components, in fewer passes."""
        bg_table, debris_table = self._isotropic_tables(truth)
        total = self._from_table(bg_table + debris_table)
        total += self._bragg(truth)
        diffuse, truth = self._diffuse(truth, twin=twin)
        if diffuse is not None:
            total += diffuse
        return self._to_slab(total), truth

    def _isotropic_tables(self, truth: FrameTruth) -> tuple[np.ndarray, np.ndarray]:
        """Background and debris photons per usr on the |q| table, pulse scale included."""
        s = np.float32(truth.pulse_scale)
        bg_table = background_per_usr(self._table_q, truth.background) * s
        debris_table = self._debris_table * np.float32(truth.debris * truth.pulse_scale)
        return bg_table, debris_table

    def _from_table(self, table: np.ndarray) -> np.ndarray:
        """Per-pixel photons of an isotropic term given per usr on the |q| table."""
        out = np.take(table, self._table_i)
        out += np.take(np.diff(table), self._table_i) * self._table_f
        out *= self.pol_omega_usr
        return out

    def _bragg(self, truth: FrameTruth) -> np.ndarray:
        bragg = bragg_photons(
            self.q,
            truth.reciprocal,
            wavelength_nm=self.wavelength_nm,
            transform=self.transform,
            lattice_scale=truth.lattice_scale,
            pixel_q_area=self.pixel_q_area,
            spot_sigma_per_nm=SPOT_SIGMA_PER_NM,
            excitation_sigma_per_nm=EXCITATION_SIGMA_PER_NM,
            hkl=self._hkl(truth),
        )
        bragg *= np.float32(truth.pulse_scale)
        return bragg

    def _hkl(self, truth: FrameTruth) -> np.ndarray:
        """(n, 3) float32 fractional hkl of the pixels (a view of a (3, n) array)."""
        return (np.linalg.inv(truth.reciprocal).T.astype(np.float32) @ self.q_t).T

    def _diffuse(self, truth: FrameTruth, *, twin: bool) -> tuple[np.ndarray | None, FrameTruth]:
        """Diffuse photons per pixel (``None`` when there are none) and the truth with its ratio.

        The band's background sum comes from the |q| table and per-bin pixel weights, so
        the ratio costs no per-pixel background.
        """
        if truth.strength <= 0 or twin:
            return None, truth
        s = np.float32(truth.pulse_scale)
        diffuse = self.transform.continuous(self._hkl(truth))
        diffuse *= self._diffuse_factor
        diffuse *= np.float32(truth.strength) * s
        bg_table = background_per_usr(self._table_q, truth.background) * s
        background = float(np.dot(self._band_table_weights, bg_table.astype(np.float64)))
        ratio = float(np.sum(diffuse[self._band], dtype=np.float64)) / background
        return diffuse, dataclasses.replace(truth, ratio=ratio)

    def _to_slab(self, values: np.ndarray) -> np.ndarray:
        shape = self.detector.slab_shape
        if self._all_on:
            return values.reshape(shape)
        out = np.zeros(shape[0] * shape[1], dtype=np.float32)
        out[self._on] = values
        return out.reshape(shape)

    def frame(
        self, index: int, *, twin: bool = False, noise: bool = True
    ) -> tuple[np.ndarray, FrameTruth]:
        """Frame ``index`` as the detector writes it.

        Parameters
        ----------
        index
            Global frame number.
        twin
            Leave the diffuse term out (same orientation, background, Bragg, detector
            state; with ``noise`` also the same noise streams).
        noise
            Draw Poisson photon and read noise; ``False`` gives the expected frame.

        Returns
        -------
        frame : numpy.ndarray
            (n_ss, n_fs) float32 ADU.
        truth : FrameTruth
        """
        truth, drift = self.parameters(index)
        photons, truth = self._expected_total(truth, twin=twin)
        rng = np.random.default_rng([self.seed, int(index), 1]) if noise else None
        return self.response.to_adu(photons, drift, rng=rng), truth

    # ------------------------------------------------------------------ calibration

    def calibrate(self, preset: str | Preset, *, n_orientations: int = 8) -> dict[str, float]:
        """Measure a preset's diffuse-to-background ratio on this detector.

        ``n_orientations`` shots with random orientation and background shape (stream
        ``[seed, 2**32 + 2, k]``) at the preset's nominal strength; the noise-free ratio is
        measured on every 2nd band pixel.

        Returns
        -------
        dict
            ``nominal_ratio``, ``measured_ratio`` (median over shots), ``measured_min``,
            ``measured_max``, ``diffuse_scale_per_usr``.
        """
        p = preset if isinstance(preset, Preset) else get_preset(preset)
        if p.name not in self.diffuse_scale_per_usr:
            self.diffuse_scale_per_usr[p.name] = self._diffuse_scale(p.displacement_sigma_nm)
        ratios = []
        for k in range(n_orientations):
            rng = np.random.default_rng([self.seed, EXPERIMENT_KEY + 2, k])
            reciprocal = self.basis @ random_rotation(rng).T
            background = draw_background(rng)
            ratios.append(
                self._band_ratio(reciprocal, background, p.nominal_ratio, preset=p, step=2)
            )
        return {
            "nominal_ratio": p.nominal_ratio,
            "measured_ratio": float(np.median(ratios)),
            "measured_min": float(np.min(ratios)),
            "measured_max": float(np.max(ratios)),
            "diffuse_scale_per_usr": self.diffuse_scale_per_usr[p.name],
        }

    def true_diffuse_grid(self, *, size: int, max_hkl: float) -> dict[str, Any]:
        """The true diffuse intensity on a cubic fractional-hkl grid (unit strength).

        Voxel centres along each axis are ``-max_hkl + (i + 0.5) * 2 max_hkl / size`` (the
        convention of :class:`hpcdiff.merge.Grid` with ``extent="hkl"``).

        Returns
        -------
        dict
            ``intensity`` (size, size, size) float32 photons per usr for strength 1
            (``K * w(|q|) * |F(hkl)|^2``), ``axis`` (size,) float64, ``half_width``.
        """
        step = 2.0 * max_hkl / size
        axis = -max_hkl + (np.arange(size) + 0.5) * step
        out = np.empty((size, size, size), dtype=np.float32)
        kk, ll = np.meshgrid(axis, axis, indexing="ij")
        k_scale = np.float32(self.diffuse_scale_per_usr[self.preset.name])
        for i, h in enumerate(axis):
            hkl = np.stack([np.full_like(kk, h), kk, ll], axis=-1).astype(np.float32)
            q_abs = np.linalg.norm(hkl @ self.basis.astype(np.float32), axis=-1)
            w = diffuse_weight(q_abs, sigma_nm=self.preset.displacement_sigma_nm)
            out[i] = k_scale * w * self.transform.continuous(hkl)
        return {"intensity": out, "axis": axis, "half_width": float(max_hkl)}


__all__ = [
    "DEFAULT_ADU_PER_EV",
    "DEFAULT_MAX_ADU",
    "DetectorArrays",
    "FrameComponents",
    "FrameSimulator",
    "FrameTruth",
]

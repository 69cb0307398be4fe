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

from hpcdiff.simulate.detector_effects import DetectorResponse, FrameDrift, quantise
from hpcdiff.simulate.diffuse_models import DiffuseModel, LatticeFactor, model_grid
from hpcdiff.simulate.molecules import CellContent, random_molecule
from hpcdiff.simulate.physics import (
    BackgroundParams,
    MolecularTransform,
    background_per_usr,
    bragg_photons,
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
from hpcdiff.simulate.randomise import BackgroundFamily, ExperimentDraw

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


COARSE_MIN_STEPS = 3.0
"""The diffuse term is evaluated on every ``s``-th pixel (``s`` = 2, 3) when its grid step
spans at least ``COARSE_MIN_STEPS * s / 2`` pixels."""


def _coarse_axis(n: int, stride: int = 2) -> np.ndarray:
    """Every ``stride``-th index of ``range(n)`` and the last one."""
    idx = np.arange(0, n, stride)
    if idx[-1] != n - 1:
        idx = np.append(idx, n - 1)
    return idx


@dataclass(frozen=True)
class _Separable:
    """Bilinear fill of identical rectangular panels, one axis at a time."""

    boxes: tuple[tuple[int, int, int, int], ...]  # slab box of each panel
    shape: tuple[int, int, int]  # (panels, coarse rows, coarse columns)
    row_index: np.ndarray  # (height,) coarse row below each row
    col_index: np.ndarray  # (width,) coarse column left of each column
    row_weight: np.ndarray  # (height,) float32
    col_weight: np.ndarray  # (width,) float32


@dataclass(frozen=True)
class _CoarsePlan:
    """Coarse pixels of the smooth diffuse term and the bilinear fill of the others."""

    stride: int
    separable: _Separable | None  # coarse pixels every stride-th row and column of a panel
    q_t: np.ndarray  # (3, n_coarse) float32 q of the coarse pixels
    corners: tuple[np.ndarray, ...]  # 4 x (n,) int32: coarse (r, c), (r, c+1), (r+1, c), (r+1, c+1)
    w_row: np.ndarray  # (n,) float32 row weight of the (r+1) corners
    w_col: np.ndarray  # (n,) float32 column weight of the (c+1) corners


@dataclass(frozen=True)
class DetectorArrays:
    """The per-pixel arrays the simulator needs, all (n_ss, n_fs).

    Built from a :class:`hpcdiff.geometry.DetectorModel` by :meth:`from_model`, or directly
    (tests).  ``q_vectors`` nm^-1 (NaN off-panel), ``polarisation`` dimensionless,
    ``solid_angle_sr`` sr, ``panel_index`` int16 (-1 off-panel), ``valid`` bool,
    ``positions_m`` (n_ss, n_fs, 3) lab positions (m; needed for a beamstop shadow).
    """

    q_vectors: np.ndarray
    polarisation: np.ndarray
    solid_angle_sr: np.ndarray
    panel_index: np.ndarray
    valid: np.ndarray
    photon_energy_ev: float
    adu_per_ev: float = DEFAULT_ADU_PER_EV
    max_adu: float = DEFAULT_MAX_ADU
    positions_m: np.ndarray | None = None

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
            positions_m=np.asarray(model.positions_m),
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
        experiment: ExperimentDraw | None = None,
        content: CellContent | None = None,
    ) -> None:
        self.detector = detector
        self.seed = int(seed)
        self.preset = preset if isinstance(preset, Preset) else get_preset(preset)
        self.diffuse_fraction = float(diffuse_fraction)
        if experiment is None:
            experiment = ExperimentDraw(
                preset=self.preset.name,
                diffuse=DiffuseModel("displacement", sigma_nm=self.preset.displacement_sigma_nm),
                space_group="P1",
                cell_nm=(float(cell_nm[0]), float(cell_nm[1]), float(cell_nm[2])),
                angles_deg=(
                    float(cell_angles_deg[0]),
                    float(cell_angles_deg[1]),
                    float(cell_angles_deg[2]),
                ),
                molecule="random",
                molecule_shape="globular",
                n_atoms=int(n_atoms),
                detector_distance_m=float("nan"),
                photon_energy_ev=float(detector.photon_energy_ev),
                adu_per_photon=None,
                read_noise_photons=0.12,
            )
        self.experiment = experiment
        self.family: BackgroundFamily = experiment.background
        if content is not None:
            cell_nm, cell_angles_deg = content.cell_nm, content.angles_deg
        else:
            cell_nm, cell_angles_deg = experiment.cell_nm, experiment.angles_deg
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
        if content is None:
            content = random_molecule(
                np.random.default_rng([self.seed, EXPERIMENT_KEY]),
                cell_nm=self.cell_nm,
                angles_deg=self.cell_angles_deg,
                space_group=experiment.space_group,
                n_atoms=experiment.n_atoms,
                shape=experiment.molecule_shape,
            )
        self.content = content
        frac = content.frac
        if not (experiment.space_group == "P1" and content.shape == "globular"):
            frac = frac - frac.mean(axis=0)  # the transform's origin at the centroid
        q_cover = float(self.q_abs.max())
        q_limit = experiment.resolution_limit_per_nm
        if q_limit > 0:  # the falloff is below 3e-4 beyond q_limit + 1 nm^-1
            q_cover = min(q_cover, q_limit + 1.0)
        self.transform = MolecularTransform.from_atoms(
            frac,
            self.cell_nm,
            self.cell_angles_deg,
            weights=None if np.all(content.weights == 1) else content.weights,
            q_max_per_nm=q_cover,
            normalise_band=RATIO_BAND_PER_NM,
            keep_amplitude=experiment.diffuse.name == "rigid_body",
        )
        if q_limit > 0:
            self.transform = self.transform.with_resolution_limit(q_limit)
        self.diffuse_model = experiment.diffuse
        self.diffuse_grid = model_grid(self.transform, self.diffuse_model)
        if self.transform.amplitude is not None:  # only the rigid-body set-up needs it
            self.transform = dataclasses.replace(self.transform, amplitude=None)
        self.lattice_factor = (
            LatticeFactor.build(self.diffuse_model.correlation)
            if self.diffuse_model.name == "correlated"
            else None
        )
        self._coarse = self._coarse_plan()
        self.response = DetectorResponse.build(
            detector.panel_index,
            rng=np.random.default_rng([self.seed, EXPERIMENT_KEY + 1]),
            adu_per_photon=detector.adu_per_ev * detector.photon_energy_ev,
            max_adu=detector.max_adu,
            read_noise_photons=experiment.read_noise_photons,
            dead_panels=experiment.dead_panels,
        )
        self._streak_idx, self._streak_val = self._streak_shape()
        self._shadow_idx = self._beamstop_shadow()
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
        self._streak_band = (
            float(np.sum(self._streak_val[np.isin(self._streak_idx, self._band)], dtype=np.float64))
            if self._streak_idx.size
            else 0.0
        )
        # one K for the experiment's diffuse model; every preset scales it by its strength
        k_model = self._diffuse_scale()
        self.diffuse_scale_per_usr = {name: k_model for name in PRESETS}
        self.diffuse_scale_per_usr.setdefault(self.preset.name, k_model)
        # isotropic debris per usr per unit level: K <G>_sphere(|q|), on the |q| table
        self._debris_table = (k_model * self._shell_average(self._table_q)).astype(np.float32)
        # K P Omega: diffuse photons = strength * this * G(hkl) [* S(hkl)]
        self._diffuse_factor = np.float32(k_model) * self.pol_omega_usr

    # ------------------------------------------------------------------ set-up

    def _diffuse_scale(self) -> float:
        """``K`` such that a unit-strength frame of median shape has diffuse = background.

        Sum over band pixels of ``P Omega background_nominal`` (the family's median shot,
        jet streak included) over the same sum of ``P Omega <G>_sphere(|q|)`` (the diffuse
        model's spherical average; the correlated model's lattice factor averages to 1).
        """
        q = self.q_abs[self._band]
        w = self.pol_omega_usr[self._band].astype(np.float64)
        diffuse = self._shell_average(q)
        background = background_per_usr(q, self.family.nominal).astype(np.float64)
        total_bg = float(np.sum(w * background)) + self.family.streak_level * self._streak_band
        return total_bg / float(np.sum(w * diffuse))

    def _shell_average(self, q_abs: np.ndarray) -> np.ndarray:
        """``<G>_sphere`` at ``q_abs`` (float64), from 256 shells of the model's grid."""
        edges = self._radial_edges
        avg = self.diffuse_grid.radial_average(edges)
        centres = 0.5 * (edges[1:] + edges[:-1])
        ok = np.isfinite(avg)
        return np.interp(q_abs, centres[ok], avg[ok])

    def _coarse_plan(self) -> _CoarsePlan | None:
        """Where the smooth diffuse term may be evaluated on every 2nd pixel and upsampled.

        When the model grid's step in q is at least :data:`COARSE_MIN_STEPS` pixel steps
        and every panel is a slab rectangle, the diffuse term is interpolated at every 2nd
        (every 3rd when the step spans 1.5 times as many pixels) row and column of each
        panel (plus its last row and column) and filled in bilinearly within the panel: a
        quarter (a ninth) of the 3D interpolations, for a function that is itself piecewise
        linear on a coarser scale.  ``None``: every pixel.
        """
        from hpcdiff.simulate.detector_effects import panel_boxes

        grid_step = float(np.min(np.linalg.norm(self.basis, axis=1))) / self.transform.oversampling
        omega = self.detector.solid_angle_sr.reshape(-1)[self._on]
        pixel_step = math.sqrt(float(np.median(omega))) / self.wavelength_nm
        if grid_step < COARSE_MIN_STEPS * pixel_step:
            return None
        stride = 3 if grid_step >= 1.5 * COARSE_MIN_STEPS * pixel_step else 2
        boxes = panel_boxes(self.detector.panel_index)
        if boxes is None:
            return None
        n_slab = self.detector.panel_index.size
        n_fs = self.detector.slab_shape[1]
        to_on = np.full(n_slab, -1, dtype=np.int64)
        to_on[self._on] = np.arange(self._on.size)
        coarse_parts, fine_parts = [], []
        corners: list[list[np.ndarray]] = [[], [], [], []]
        wr_parts, wc_parts = [], []
        n_coarse = 0
        for ss0, ss1, fs0, fs1 in boxes:
            rows = _coarse_axis(ss1 - ss0, stride)
            cols = _coarse_axis(fs1 - fs0, stride)
            cr, ccol = np.meshgrid(rows + ss0, cols + fs0, indexing="ij")
            coarse_parts.append(to_on[(cr * n_fs + ccol).ravel()])
            fr, fc = np.arange(ss1 - ss0), np.arange(fs1 - fs0)
            jr = np.clip(np.searchsorted(rows, fr, side="right") - 1, 0, len(rows) - 2)
            jc = np.clip(np.searchsorted(cols, fc, side="right") - 1, 0, len(cols) - 2)
            wr = (fr - rows[jr]) / (rows[jr + 1] - rows[jr])
            wc = (fc - cols[jc]) / (cols[jc + 1] - cols[jc])
            JR, JC = np.meshgrid(jr, jc, indexing="ij")
            WR, WC = np.meshgrid(wr, wc, indexing="ij")
            nc = len(cols)
            base = n_coarse + JR * nc + JC
            for k, off in enumerate((0, 1, nc, nc + 1)):
                corners[k].append((base + off).ravel())
            wr_parts.append(WR.ravel())
            wc_parts.append(WC.ravel())
            FR, FC = np.meshgrid(fr + ss0, fc + fs0, indexing="ij")
            fine_parts.append(to_on[(FR * n_fs + FC).ravel()])
            n_coarse += len(rows) * len(cols)
        coarse = np.concatenate(coarse_parts)
        fine = np.concatenate(fine_parts)
        if np.any(coarse < 0) or np.any(fine < 0):
            return None
        order = np.argsort(fine)  # plan arrays in on-pixel order
        if not np.array_equal(fine[order], np.arange(self._on.size)):
            return None  # panels do not cover every on-panel pixel once
        shapes = {(b[1] - b[0], b[3] - b[2]) for b in boxes}
        separable = None
        if len(shapes) == 1 and self._all_on:  # identical panels: fill all at once
            ((height, width),) = shapes
            rows, cols = _coarse_axis(height, stride), _coarse_axis(width, stride)
            jr = np.clip(
                np.searchsorted(rows, np.arange(height), side="right") - 1, 0, len(rows) - 2
            )
            jc = np.clip(
                np.searchsorted(cols, np.arange(width), side="right") - 1, 0, len(cols) - 2
            )
            separable = _Separable(
                boxes=tuple(boxes),
                shape=(len(boxes), len(rows), len(cols)),
                row_index=jr.astype(np.intp),
                col_index=jc.astype(np.intp),
                row_weight=((np.arange(height) - rows[jr]) / (rows[jr + 1] - rows[jr])).astype(
                    np.float32
                ),
                col_weight=((np.arange(width) - cols[jc]) / (cols[jc + 1] - cols[jc])).astype(
                    np.float32
                ),
            )
        return _CoarsePlan(
            stride=stride,
            separable=separable,
            q_t=np.ascontiguousarray(self.q_t[:, coarse]),
            corners=tuple(np.concatenate(c)[order].astype(np.int32) for c in corners),
            w_row=np.concatenate(wr_parts)[order].astype(np.float32),
            w_col=np.concatenate(wc_parts)[order].astype(np.float32),
        )

    def _smooth_diffuse(self, reciprocal: np.ndarray, hkl: np.ndarray) -> np.ndarray:
        """The model grid ``G`` at every on-panel pixel (coarse plan when there is one)."""
        plan = self._coarse
        if plan is None:
            return self.diffuse_grid.continuous(hkl)
        inv_t = np.linalg.inv(reciprocal).T.astype(np.float32)
        values = self.diffuse_grid.continuous((inv_t @ plan.q_t).T)
        sep = plan.separable
        if sep is not None:
            block = values.reshape(sep.shape)
            left = np.take(block, sep.col_index, axis=2)
            right = np.take(block, sep.col_index + 1, axis=2)
            right -= left
            right *= sep.col_weight
            right += left  # (P, rows, width)
            top = np.take(right, sep.row_index, axis=1)
            bottom = np.take(right, sep.row_index + 1, axis=1)
            bottom -= top
            bottom *= sep.row_weight[:, None]
            bottom += top  # (P, height, width)
            out = np.empty(self.detector.slab_shape, dtype=np.float32)
            for p, (ss0, ss1, fs0, fs1) in enumerate(sep.boxes):
                out[ss0:ss1, fs0:fs1] = bottom[p]
            return out.reshape(-1)
        c00, c01, c10, c11 = (np.take(values, c) for c in plan.corners)
        c01 -= c00
        c01 *= plan.w_col
        c01 += c00
        c11 -= c10
        c11 *= plan.w_col
        c11 += c10
        c11 -= c01
        c11 *= plan.w_row
        c11 += c01
        return c11

    def _streak_shape(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixels of the jet streak and their photons per unit level (P Omega included).

        The streak runs through the beam along ``streak_angle_rad`` in the detector plane:
        ``exp(-q_across^2 / (2 w^2)) exp(-|q_along| / decay)``; kept where above 1e-4.
        """
        fam = self.family
        if fam.streak_level <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        c, s = math.cos(fam.streak_angle_rad), math.sin(fam.streak_angle_rad)
        along = np.abs(c * self.q_t[0] + s * self.q_t[1])
        across = -s * self.q_t[0] + c * self.q_t[1]
        shape = np.exp(
            -0.5 * (across / fam.streak_width_per_nm) ** 2 - along / fam.streak_decay_per_nm
        )
        idx = np.flatnonzero(shape > 1e-4)
        return idx, (shape[idx] * self.pol_omega_usr[idx]).astype(np.float32)

    def _beamstop_shadow(self) -> np.ndarray:
        """Pixels (indices into the on-panel pixels) in the beamstop's shadow."""
        exp = self.experiment
        pos = self.detector.positions_m
        if exp.beamstop_radius_m <= 0 or pos is None:
            return np.zeros(0, dtype=np.int64)
        xy = pos.reshape(-1, 3)[self._on, :2]
        x, y = xy[:, 0], xy[:, 1]
        r = exp.beamstop_radius_m
        inside = np.hypot(x, y) < r
        half = 0.3 * r
        if exp.beamstop_arm == "+x":
            inside |= (x > 0) & (np.abs(y) < half)
        elif exp.beamstop_arm == "-x":
            inside |= (x < 0) & (np.abs(y) < half)
        elif exp.beamstop_arm == "+y":
            inside |= (y > 0) & (np.abs(x) < half)
        elif exp.beamstop_arm == "-y":
            inside |= (y < 0) & (np.abs(x) < half)
        return np.flatnonzero(inside)

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
        background = self.family.draw(rng, np.random.default_rng([self.seed, int(index), 2]))
        debris = draw_debris(rng, self.preset)
        exp = self.experiment
        lattice_scale = exp.lattice_photons * math.exp(0.5 * rng.standard_normal())
        pulse_scale = math.exp(exp.pulse_sigma * rng.standard_normal())
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
        streak = background.streak_level * self._streak_band * idx.size / self._band.size
        return float(np.dot(w, diffuse) / (np.dot(w, bg) + streak))

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
        out = k * self.diffuse_grid.continuous(hkl)
        if self.lattice_factor is not None:
            out *= self.lattice_factor(np.ascontiguousarray(hkl.T))
        return out

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
        hkl = self._hkl(truth)
        diffuse, truth = self._diffuse(truth, twin=twin, hkl=hkl)
        background = self._from_table(bg_table)
        self._add_streak(background, truth)
        terms = [
            background,
            self._from_table(debris_table),
            diffuse if diffuse is not None else np.zeros(self.q_abs.shape, dtype=np.float32),
            self._bragg(truth, hkl=hkl),
        ]
        for term in terms:
            self._shade(term)
        return FrameComponents(*(self._to_slab(a) for a in terms)), truth

    def _expected_total(self, truth: FrameTruth, *, twin: bool) -> tuple[np.ndarray, FrameTruth]:
        """Expected photons (n_ss, n_fs): the sum of the components, in fewer passes."""
        bg_table, debris_table = self._isotropic_tables(truth)
        total = self._from_table(bg_table + debris_table)
        self._add_streak(total, truth)
        hkl = self._hkl(truth)
        total += self._bragg(truth, hkl=hkl)
        diffuse, truth = self._diffuse(truth, twin=twin, hkl=hkl)
        if diffuse is not None:
            total += diffuse
        self._shade(total)
        return self._to_slab(total), truth

    def _add_streak(self, values: np.ndarray, truth: FrameTruth) -> None:
        """Add the jet streak (photons, pulse included) in place."""
        level = truth.background.streak_level * truth.pulse_scale
        if level > 0 and self._streak_idx.size:
            values[self._streak_idx] += np.float32(level) * self._streak_val

    def _shade(self, values: np.ndarray) -> None:
        """Attenuate the pixels in the beamstop's shadow, in place."""
        if self._shadow_idx.size:
            values[self._shadow_idx] *= np.float32(self.experiment.beamstop_transmission)

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

    def _bragg(self, truth: FrameTruth, *, hkl: np.ndarray | None = None) -> np.ndarray:
        bragg = bragg_photons(
            self.q,
            truth.reciprocal,
            wavelength_nm=self.wavelength_nm,
            transform=self.transform,
            lattice_scale=truth.lattice_scale,
            pixel_q_area=self.pixel_q_area,
            spot_sigma_per_nm=SPOT_SIGMA_PER_NM,
            excitation_sigma_per_nm=EXCITATION_SIGMA_PER_NM,
            hkl=hkl if hkl is not None else self._hkl(truth),
        )
        bragg *= np.float32(truth.pulse_scale)
        return bragg

    def _hkl(self, truth: FrameTruth) -> np.ndarray:
        """(n, 3) float32 fractional hkl of the pixels (a view of a (3, n) array)."""
        return (np.linalg.inv(truth.reciprocal).T.astype(np.float32) @ self.q_t).T

    def _diffuse(
        self, truth: FrameTruth, *, twin: bool, hkl: np.ndarray | None = None
    ) -> tuple[np.ndarray | None, FrameTruth]:
        """Diffuse photons per pixel (``None`` when there are none) and the truth with its ratio.

        The band's background sum comes from the |q| table and per-bin pixel weights, so
        the ratio costs no per-pixel background.
        """
        if truth.strength <= 0 or twin:
            return None, truth
        s = np.float32(truth.pulse_scale)
        if hkl is None:
            hkl = self._hkl(truth)
        diffuse = self._smooth_diffuse(truth.reciprocal, hkl)
        if self.lattice_factor is not None:
            diffuse *= self.lattice_factor(hkl.T)
        diffuse *= self._diffuse_factor
        diffuse *= np.float32(truth.strength) * s
        bg_table = background_per_usr(self._table_q, truth.background) * s
        background = float(np.dot(self._band_table_weights, bg_table.astype(np.float64)))
        background += truth.background.streak_level * truth.pulse_scale * self._streak_band
        ratio = float(np.sum(diffuse[self._band], dtype=np.float64)) / background
        return diffuse, dataclasses.replace(truth, ratio=ratio)

    def shadow_mask(self) -> np.ndarray:
        """(n_ss, n_fs) bool: pixels in the beamstop's shadow."""
        out = np.zeros(self.q_abs.shape, dtype=bool)
        out[self._shadow_idx] = True
        if self._all_on:
            return out.reshape(self.detector.slab_shape)
        full = np.zeros(self.detector.slab_shape[0] * self.detector.slab_shape[1], dtype=bool)
        full[self._on] = out
        return full.reshape(self.detector.slab_shape)

    def _to_slab(self, values: np.ndarray) -> np.ndarray:
        shape = self.detector.slab_shape
        if self._all_on:
            return values.reshape(shape)
        out = np.zeros(shape[0] * shape[1], dtype=np.float32)
        out[self._on] = values
        return out.reshape(shape)

    def frame(
        self, index: int, *, twin: bool = False, noise: bool = True, dtype: str | None = None
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
        dtype
            ``None``: float32 ADU as computed; ``"int16"``, ``"int32"``: rounded to the
            detector's integers, saturating at ``min(max_adu, dtype max)``
            (:func:`~hpcdiff.simulate.detector_effects.quantise`); ``"float32"``: as None.

        Returns
        -------
        frame : numpy.ndarray
            (n_ss, n_fs) ADU, float32 or ``dtype``.
        truth : FrameTruth
        """
        truth, drift = self.parameters(index)
        photons, truth = self._expected_total(truth, twin=twin)
        rng = np.random.default_rng([self.seed, int(index), 1]) if noise else None
        adu = self.response.to_adu(photons, drift, rng=rng)
        if dtype is not None and dtype != "float32":
            adu = quantise(adu, dtype=dtype, max_adu=self.response.max_adu)
        return adu, truth

    # ------------------------------------------------------------------ calibration

    def calibrate(
        self,
        preset: str | Preset,
        *,
        n_orientations: int = 8,
        nominal_background: bool = False,
        statistic: str = "median",
    ) -> dict[str, float]:
        """Measure a preset's diffuse-to-background ratio on this detector.

        ``n_orientations`` shots with random orientation and background shape (stream
        ``[seed, 2**32 + 2, k]``; the family's median shot with ``nominal_background``) at
        the preset's nominal strength; the noise-free ratio is measured on every 2nd band
        pixel.

        Returns
        -------
        dict
            ``nominal_ratio``, ``measured_ratio`` (``statistic`` ``median`` or ``mean``
            over shots), ``measured_min``, ``measured_max``, ``diffuse_scale_per_usr``.
        """
        p = preset if isinstance(preset, Preset) else get_preset(preset)
        if p.name not in self.diffuse_scale_per_usr:
            self.diffuse_scale_per_usr[p.name] = self._diffuse_scale()
        ratios = []
        for k in range(n_orientations):
            rng = np.random.default_rng([self.seed, EXPERIMENT_KEY + 2, k])
            reciprocal = self.basis @ random_rotation(rng).T
            background = self.family.draw(
                rng, np.random.default_rng([self.seed, EXPERIMENT_KEY + 2, k, 2])
            )
            if nominal_background:
                background = self.family.nominal
            ratios.append(
                self._band_ratio(reciprocal, background, p.nominal_ratio, preset=p, step=2)
            )
        measure = np.mean if statistic == "mean" else np.median
        return {
            "nominal_ratio": p.nominal_ratio,
            "measured_ratio": float(measure(ratios)),
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
            (``K * G(hkl)``, times the lattice factor ``S(hkl)`` of the correlated model),
            ``axis`` (size,) float64, ``half_width``.
        """
        step = 2.0 * max_hkl / size
        axis = -max_hkl + (np.arange(size) + 0.5) * step
        out = np.empty((size, size, size), dtype=np.float32)
        kk, ll = np.meshgrid(axis, axis, indexing="ij")
        k_scale = np.float32(self.diffuse_scale_per_usr[self.preset.name])
        for i, h in enumerate(axis):
            hkl = np.stack([np.full_like(kk, h), kk, ll], axis=-1).astype(np.float32)
            values = self.diffuse_grid.continuous(hkl)
            if self.lattice_factor is not None:
                flat = np.ascontiguousarray(hkl.reshape(-1, 3).T)
                values *= self.lattice_factor(flat).reshape(values.shape)
            out[i] = k_scale * values
        return {"intensity": out, "axis": axis, "half_width": float(max_hkl)}


__all__ = [
    "DEFAULT_ADU_PER_EV",
    "DEFAULT_MAX_ADU",
    "DetectorArrays",
    "FrameComponents",
    "FrameSimulator",
    "FrameTruth",
]

"""What an experiment draws once: diffuse model, crystal, detector, background family, masks.

:func:`draw_experiment` resolves a :class:`~hpcdiff.config.SimulateConfig` into an
:class:`ExperimentDraw`, from the experiment stream ``default_rng([seed, 2**32 + 3])``.
With a fixed preset (``easy`` ... ``subtle``) every value is the configuration's (the
simulator's original behaviour, keys ``auto`` meaning displacement / P1 / globular); with
the ``randomised`` preset everything in :data:`RANDOMISED_RANGES` is drawn (keys the job
sets explicitly, other than ``auto``, are kept).  Per-frame draws (orientation, strength,
background shape and level, pulse) stay in :mod:`hpcdiff.simulate.frames`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hpcdiff.simulate.diffuse_models import DIFFUSE_MODELS, DiffuseModel, draw_diffuse_model
from hpcdiff.simulate.molecules import HERMANN_MAUGUIN, SHAPE_AXES, random_cell
from hpcdiff.simulate.physics import NOMINAL_BACKGROUND, BackgroundParams
from hpcdiff.simulate.presets import RATIO_BAND_PER_NM, get_preset

DRAW_KEY = 2**32 + 3
"""Experiment-level stream key of :func:`draw_experiment` (``[seed, DRAW_KEY]``)."""

RANDOMISED_RANGES: dict[str, Any] = {
    "detector_distance_m": (0.07, 0.16),
    "photon_energy_ev": (7000.0, 12500.0),
    "min_q_max_per_nm": 2.8,
    "adu_per_photon": (4.0, 50.0),
    "read_noise_photons": (0.05, 0.35),
    "dead_panels_max": 3,
    "beamstop_q_per_nm": (0.25, 0.9),
    "beamstop_arm_probability": 0.7,
    "water_q_per_nm": (2.8, 3.3),
    "water_width_per_nm": (0.25, 0.45),
    "water_amplitude": (1.5, 4.0),
    "air_level": (0.3, 3.0),
    "halo_probability": 0.6,
    "halo_level": (0.5, 5.0),
    "halo_width_per_nm": (0.3, 1.0),
    "streak_probability": 0.5,
    "streak_level": (0.2, 3.0),
    "streak_width_per_nm": (0.02, 0.1),
    "streak_decay_per_nm": (0.5, 2.0),
    "lattice_photons": (100.0, 1500.0),
    "resolution_limit_per_nm": (4.0, 6.0),
    "pulse_sigma": (0.1, 0.4),
    "n_atoms": (60, 500),
    "space_groups": tuple(HERMANN_MAUGUIN),
    "molecule_shapes": tuple(SHAPE_AXES),
    "diffuse_models": DIFFUSE_MODELS,
}
"""Ranges the ``randomised`` preset draws from (uniform, or log-uniform for scales)."""


@dataclass(frozen=True)
class BackgroundFamily:
    """An experiment's background family: medians and shot-to-shot spreads.

    Per frame, :meth:`draw` gives a :class:`~hpcdiff.simulate.physics.BackgroundParams`
    around these medians.  The default family is the simulator's original one (same
    draws).  The jet streak's shape (direction, width, decay) is fixed per experiment; its
    level changes per shot.

    Attributes
    ----------
    water_q_per_nm, water_width_per_nm, water_amplitude
        Median water-ring centre, RMS width (nm^-1) and peak (photons / usr).
    air_level
        Median air scatter at |q| = 0 (photons / usr).
    halo_level, halo_width_per_nm
        Median low-q halo (photons / usr; 0 = none) and its width (nm^-1).
    streak_level
        Median jet-streak peak (photons / usr; 0 = none).
    streak_angle_rad
        Direction of the streak in the detector plane (from lab +x towards +y).
    streak_width_per_nm, streak_decay_per_nm
        RMS width across the streak and decay length along it (nm^-1).
    """

    water_q_per_nm: float = NOMINAL_BACKGROUND.water_q_per_nm
    water_width_per_nm: float = NOMINAL_BACKGROUND.water_width_per_nm
    water_amplitude: float = NOMINAL_BACKGROUND.water_amplitude
    air_level: float = NOMINAL_BACKGROUND.air_level
    halo_level: float = 0.0
    halo_width_per_nm: float = 0.6
    streak_level: float = 0.0
    streak_angle_rad: float = 0.0
    streak_width_per_nm: float = 0.05
    streak_decay_per_nm: float = 1.0

    @property
    def is_default(self) -> bool:
        """True for the original family (frames draw exactly as before)."""
        return self == BackgroundFamily()

    @property
    def nominal(self) -> BackgroundParams:
        """The median shot (every random parameter at its median)."""
        return BackgroundParams(
            jet_scale=1.0,
            water_amplitude=self.water_amplitude,
            water_q_per_nm=self.water_q_per_nm,
            water_width_per_nm=self.water_width_per_nm,
            air_level=self.air_level,
            air_decay_per_nm=NOMINAL_BACKGROUND.air_decay_per_nm,
            halo_level=self.halo_level,
            halo_width_per_nm=self.halo_width_per_nm,
            streak_level=self.streak_level,
        )

    def draw(self, rng: np.random.Generator, extra: np.random.Generator) -> BackgroundParams:
        """One shot's background.

        From ``rng``: four normals and one uniform (as the original
        :func:`~hpcdiff.simulate.physics.draw_background`): jet thickness log-normal
        (sigma 0.35), ring centre +- 0.05 nm^-1 (clipped to +-0.1), width +- 0.03 nm^-1,
        air level log-normal (sigma 0.5), air decay uniform in [0.55, 1.05] nm^-1.
        From ``extra`` (the frame's stream ``[seed, i, 2]``): halo and streak levels,
        log-normal (sigma 0.5 and 0.6), and a +-15 % jitter of the halo width.
        """
        z = rng.normal(size=4)
        u = rng.random()
        e = extra.normal(size=3)
        q0 = self.water_q_per_nm
        return BackgroundParams(
            jet_scale=float(math.exp(0.35 * z[0])),
            water_amplitude=self.water_amplitude,
            water_q_per_nm=float(np.clip(q0 + 0.05 * z[1], q0 - 0.1, q0 + 0.1)),
            water_width_per_nm=float(max(self.water_width_per_nm + 0.03 * z[2], 0.2)),
            air_level=float(self.air_level * math.exp(0.5 * z[3])),
            air_decay_per_nm=float(0.55 + 0.5 * u),
            halo_level=float(self.halo_level * math.exp(0.5 * e[0])),
            halo_width_per_nm=(
                float(self.halo_width_per_nm * (1.0 + 0.15 * np.clip(e[1], -2, 2)))
                if self.halo_level > 0
                else self.halo_width_per_nm
            ),
            streak_level=float(self.streak_level * math.exp(0.6 * e[2])),
        )


@dataclass(frozen=True)
class ExperimentDraw:
    """Everything drawn once per experiment (recorded in ``manifest.json`` and ``truth.h5``).

    Attributes
    ----------
    preset
        Preset name.
    diffuse
        The diffuse model and its parameters.
    space_group, cell_nm, angles_deg
        Crystal symmetry (built-in name, or a structure file's) and cell (nm, degrees).
    molecule
        ``"random"`` or the structure file's path.
    molecule_shape, n_atoms
        Random molecule's envelope shape and atoms per molecule.
    detector_distance_m, photon_energy_ev
        Camera length (m) and photon energy (eV).
    adu_per_photon
        Detector gain (ADU per photon); ``None``: the geometry's (or the CSPAD default).
    read_noise_photons
        RMS read noise in photon units.
    dead_panels
        Panel indices that read 0 (dead ASICs).
    beamstop_radius_m
        Radius of the beamstop's shadow on the detector (m, 0 = none), centred on the beam.
    beamstop_arm
        Direction of the beamstop's holder arm: ``""`` (none), ``+x``, ``-x``, ``+y``, ``-y``.
    beamstop_transmission
        Fraction of photons reaching the shadowed pixels.
    background
        The background family.
    lattice_photons
        Median photons of a fully recorded reflection with ``|F|^2 = 1``.
    pulse_sigma
        Log-normal RMS of the shot-to-shot pulse scale.
    resolution_limit_per_nm
        |q| (nm^-1) where the crystal's Bragg and diffuse intensity fall to half
        (:meth:`~hpcdiff.simulate.physics.MolecularTransform.with_resolution_limit`);
        0 = none (the transform covers the whole detector).
    """

    preset: str
    diffuse: DiffuseModel
    space_group: str
    cell_nm: tuple[float, float, float]
    angles_deg: tuple[float, float, float]
    molecule: str
    molecule_shape: str
    n_atoms: int
    detector_distance_m: float
    photon_energy_ev: float
    adu_per_photon: float | None
    read_noise_photons: float
    dead_panels: tuple[int, ...] = ()
    beamstop_radius_m: float = 0.0
    beamstop_arm: str = ""
    beamstop_transmission: float = 0.02
    background: BackgroundFamily = field(default_factory=BackgroundFamily)
    lattice_photons: float = 400.0
    pulse_sigma: float = 0.2
    resolution_limit_per_nm: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        out = asdict(self)
        out["diffuse"] = self.diffuse.as_dict()
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


def _log_uniform(u: float, lo: float, hi: float) -> float:
    return float(math.exp(math.log(lo) + u * math.log(hi / lo)))


def q_max_estimate(r_max_m: float, clen_m: float, photon_energy_ev: float) -> float:
    """|q| (nm^-1) at transverse radius ``r_max_m`` on a flat detector at ``clen_m``."""
    two_theta = math.atan2(r_max_m, clen_m)
    return 2.0 * math.sin(two_theta / 2.0) * photon_energy_ev / 1239.8419843320026


def draw_experiment(
    cfg: Any, *, r_max_m: float | None = None, n_panels: int = 0, fixed_detector: bool = False
) -> ExperimentDraw:
    """Resolve a :class:`~hpcdiff.config.SimulateConfig` into the experiment's draws.

    Parameters
    ----------
    cfg
        The simulation parameters.
    r_max_m
        Largest transverse pixel radius of the detector (m), to keep drawn distances and
        energies covering the ratio band; ``None`` skips the check.
    n_panels
        Panels of the detector (dead panels are drawn among them).
    fixed_detector
        Keep the configuration's distance and energy (``like`` targets).
    """
    preset = get_preset(cfg.preset)
    rng = np.random.default_rng([cfg.seed, DRAW_KEY])
    randomised = getattr(preset, "randomise", False)
    u = rng.random(32)
    model_name = cfg.diffuse_model
    if model_name == "auto":
        model_name = "random" if randomised else "displacement"
    sigma = None if randomised else preset.displacement_sigma_nm
    diffuse = draw_diffuse_model(rng, model_name, sigma_nm=sigma)
    if not randomised:
        space_group = (
            cfg.space_group
            if cfg.space_group not in ("auto", "random")
            else ("P1" if cfg.space_group == "auto" else _pick(u[0], HERMANN_MAUGUIN))
        )
        shape = (
            cfg.molecule_shape
            if cfg.molecule_shape not in ("auto", "random")
            else ("globular" if cfg.molecule_shape == "auto" else _pick(u[1], SHAPE_AXES))
        )
        cell, angles = tuple(cfg.cell_nm), tuple(cfg.cell_angles_deg)
        if cfg.space_group == "random":
            cell, angles = random_cell(rng, space_group)
        return ExperimentDraw(
            preset=preset.name,
            diffuse=diffuse,
            space_group=space_group,
            cell_nm=(float(cell[0]), float(cell[1]), float(cell[2])),
            angles_deg=(float(angles[0]), float(angles[1]), float(angles[2])),
            molecule=str(cfg.molecule),
            molecule_shape=shape,
            n_atoms=int(cfg.n_atoms),
            detector_distance_m=float(cfg.detector_distance_m),
            photon_energy_ev=float(cfg.photon_energy_ev),
            adu_per_photon=None,
            read_noise_photons=0.12,
        )
    ranges = RANDOMISED_RANGES
    space_group = (
        cfg.space_group
        if cfg.space_group not in ("auto", "random")
        else _pick(u[0], HERMANN_MAUGUIN)
    )
    shape = (
        cfg.molecule_shape
        if cfg.molecule_shape not in ("auto", "random")
        else _pick(u[1], SHAPE_AXES)
    )
    cell, angles = random_cell(rng, space_group)
    lo_n, hi_n = ranges["n_atoms"]
    n_atoms = int(round(_log_uniform(float(u[2]), lo_n, hi_n)))
    # detector distance and energy: redraw until the band is covered
    clen, energy = float(cfg.detector_distance_m), float(cfg.photon_energy_ev)
    if not fixed_detector:
        tries = rng.random((100, 2))
        for a, b in tries:
            c_try = float(
                ranges["detector_distance_m"][0] + a * np.ptp(ranges["detector_distance_m"])
            )
            e_try = float(ranges["photon_energy_ev"][0] + b * np.ptp(ranges["photon_energy_ev"]))
            if (
                r_max_m is None
                or q_max_estimate(r_max_m, c_try, e_try) >= ranges["min_q_max_per_nm"]
            ):
                clen, energy = c_try, e_try
                break
    gain = _log_uniform(float(u[3]), *ranges["adu_per_photon"])
    read_noise = float(
        ranges["read_noise_photons"][0] + u[4] * np.ptp(ranges["read_noise_photons"])
    )
    n_dead = min(int(u[5] * (ranges["dead_panels_max"] + 1)), n_panels // 16)
    dead = (
        tuple(sorted(int(p) for p in rng.choice(n_panels, size=n_dead, replace=False)))
        if n_dead
        else ()
    )
    q_stop = float(ranges["beamstop_q_per_nm"][0] + u[6] * np.ptp(ranges["beamstop_q_per_nm"]))
    wavelength_m = 1239.8419843320026e-9 / energy
    two_theta = 2.0 * math.asin(min(1.0, q_stop * 1e9 * wavelength_m / 2.0))
    radius = clen * math.tan(two_theta)
    arm = (
        ("+x", "-x", "+y", "-y")[min(int(u[7] * 4), 3)]
        if u[8] < ranges["beamstop_arm_probability"]
        else ""
    )
    fam = BackgroundFamily(
        water_q_per_nm=float(ranges["water_q_per_nm"][0] + u[9] * np.ptp(ranges["water_q_per_nm"])),
        water_width_per_nm=float(
            ranges["water_width_per_nm"][0] + u[10] * np.ptp(ranges["water_width_per_nm"])
        ),
        water_amplitude=float(
            ranges["water_amplitude"][0] + u[11] * np.ptp(ranges["water_amplitude"])
        ),
        air_level=_log_uniform(float(u[12]), *ranges["air_level"]),
        halo_level=(
            _log_uniform(float(u[14]), *ranges["halo_level"])
            if u[13] < ranges["halo_probability"]
            else 0.0
        ),
        halo_width_per_nm=float(
            ranges["halo_width_per_nm"][0] + u[15] * np.ptp(ranges["halo_width_per_nm"])
        ),
        streak_level=(
            _log_uniform(float(u[17]), *ranges["streak_level"])
            if u[16] < ranges["streak_probability"]
            else 0.0
        ),
        streak_angle_rad=float(math.pi * u[18]),
        streak_width_per_nm=float(
            ranges["streak_width_per_nm"][0] + u[19] * np.ptp(ranges["streak_width_per_nm"])
        ),
        streak_decay_per_nm=_log_uniform(float(u[20]), *ranges["streak_decay_per_nm"]),
    )
    return ExperimentDraw(
        preset=preset.name,
        diffuse=diffuse,
        space_group=space_group,
        cell_nm=(float(cell[0]), float(cell[1]), float(cell[2])),
        angles_deg=(float(angles[0]), float(angles[1]), float(angles[2])),
        molecule=str(cfg.molecule),
        molecule_shape=shape,
        n_atoms=n_atoms,
        detector_distance_m=clen,
        photon_energy_ev=energy,
        adu_per_photon=gain,
        read_noise_photons=read_noise,
        dead_panels=dead,
        beamstop_radius_m=radius,
        beamstop_arm=arm,
        background=fam,
        lattice_photons=_log_uniform(float(u[21]), *ranges["lattice_photons"]),
        pulse_sigma=float(ranges["pulse_sigma"][0] + u[22] * np.ptp(ranges["pulse_sigma"])),
        resolution_limit_per_nm=float(
            ranges["resolution_limit_per_nm"][0] + u[23] * np.ptp(ranges["resolution_limit_per_nm"])
        ),
    )


def _pick(u: float, choices: Any) -> str:
    names = list(choices)
    return str(names[min(int(u * len(names)), len(names) - 1)])


__all__ = [
    "DRAW_KEY",
    "RANDOMISED_RANGES",
    "RATIO_BAND_PER_NM",
    "BackgroundFamily",
    "ExperimentDraw",
    "draw_experiment",
    "q_max_estimate",
]

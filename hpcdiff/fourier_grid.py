"""The Fourier job's merge grid: from the job file, the crystals' cell and the detector's q range.

``[fourier] max_hkl`` set: the cube of ``grid_size`` voxels per axis spanning ``+-max_hkl``
(the grid of earlier versions).  Unset (the default): a grid that fits the cell and the
resolution (:func:`hpcdiff.merge.fit_grid`): per-axis half-widths ``q_max * (|a|, |b|, |c|)``,
the largest ``|h|, |k|, |l|`` a pixel reaches, with ``grid_size`` voxels per axis, so every
axis has the same voxel extent in ``|q|``.  ``q_max`` is ``[fourier] max_q_per_nm`` when set
(a resolution limit), else the largest ``|q|`` of any pixel of the detector over the run's
frames (:func:`plan_q_max`).  On a ``q`` grid (``extent = "q"``) the half-width is ``q_max``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hpcdiff.merge import Grid, fit_grid

if TYPE_CHECKING:
    from hpcdiff.config import FourierConfig
    from hpcdiff.io.geom import DetectorGeometry
    from hpcdiff.pipelines.fourier import FramePlan


def detector_q_max(
    geom: DetectorGeometry, *, photon_energy_ev: float, clen_m: float | None = None
) -> float:
    """Largest ``|q|`` (nm^-1, no 2 pi) of any pixel on a panel of ``geom``.

    Parameters
    ----------
    geom
        The detector.
    photon_energy_ev
        Photon energy, eV (``q`` scales with it).
    clen_m
        Camera length, metres without ``coffset``; None for the geometry's own.
    """
    from hpcdiff.geometry import photon_energy_to_wavelength_m, pixel_positions_m

    pos = pixel_positions_m(geom, clen_m=clen_m)
    unit = pos / np.linalg.norm(pos, axis=-1, keepdims=True)
    unit[..., 2] -= 1.0
    two_sin = np.linalg.norm(unit, axis=-1)  # |k_out - k_in| for |k| = 1: 2 sin(theta)
    if not np.isfinite(two_sin).any():
        raise ValueError(f"{geom.source or 'geometry'}: no pixel on a panel")
    lam_nm = photon_energy_to_wavelength_m(float(photon_energy_ev)) * 1e9
    return float(np.nanmax(two_sin) / lam_nm)


def plan_q_max(plan: FramePlan) -> float:
    """Largest ``|q|`` (nm^-1) any pixel of the plan's frames reaches.

    The photon energy is the largest of the stream's (else the frame files', else the
    geometry's); the camera length the smallest of the frame files' (else the
    geometry's) over the oriented frames.
    """
    from hpcdiff.pipelines.fourier_frames import open_plan_source

    geom = plan.geometry
    energies = plan.photon_energy_ev[np.isfinite(plan.photon_energy_ev)]
    clens: np.ndarray = np.zeros(0)
    if not isinstance(geom.photon_energy, int | float) or any(
        not isinstance(p.clen, int | float) for p in geom.panels
    ):
        with open_plan_source(plan) as source:  # the plan's source: CXI, NXmx, EuXFEL ...
            values: dict[str, Any] = source.frame_values(0, plan.n_frames_total)
        if "clen_m" in values:
            clens = np.asarray(values["clen_m"], float)[plan.numbers]
        if energies.size < len(plan) and "photon_energy_ev" in values:
            from_files = np.asarray(values["photon_energy_ev"], float)[plan.numbers]
            energies = np.concatenate([energies, from_files])
    energies = energies[np.isfinite(energies) & (energies > 0)]
    if energies.size == 0 and isinstance(geom.photon_energy, int | float):
        energies = np.array([float(geom.photon_energy)])
    if energies.size == 0:
        raise ValueError(
            f"{geom.source or 'geometry'}: no photon energy for the grid's q range "
            "(stream, frame files and geometry give none); set [fourier] max_q_per_nm or max_hkl"
        )
    clens = clens[np.isfinite(clens) & (clens > 0)]
    clen = float(clens.min()) if clens.size else None
    try:
        return detector_q_max(geom, photon_energy_ev=float(energies.max()), clen_m=clen)
    except ValueError as exc:  # clen from the files, none readable
        raise ValueError(
            f"{exc}; set [fourier] max_q_per_nm or max_hkl to fix the grid's extent"
        ) from None


def grid_from_config(
    fourier: FourierConfig,
    *,
    size: int,
    plan: FramePlan | None = None,
    q_max_per_nm: float | None = None,
) -> Grid:
    """The merge grid (or, with another ``size``, the similarity grid) the job asks for.

    Parameters
    ----------
    fourier
        The ``[fourier]`` section.
    size
        Voxels per axis.
    plan
        The oriented frames (cell and q range); needed unless ``max_hkl`` (extent
        ``hkl``) or ``max_q_per_nm`` (extent ``q``) fixes the extent.
    q_max_per_nm
        The detector's largest ``|q|``, if already known (else from ``plan``).
    """
    if fourier.extent == "hkl" and fourier.max_hkl is not None:
        return Grid(size, float(fourier.max_hkl), "hkl")
    q_max = fourier.max_q_per_nm
    if fourier.extent == "q" and q_max is not None:
        return Grid(size, float(q_max), "q")
    if plan is None:
        raise ValueError("a grid fitted to the cell and the detector needs the frame plan")
    if q_max is None:
        q_max = q_max_per_nm if q_max_per_nm is not None else plan_q_max(plan)
    return fit_grid(plan.orientations, q_max_per_nm=float(q_max), size=size, extent=fourier.extent)


__all__ = ["detector_q_max", "grid_from_config", "plan_q_max"]

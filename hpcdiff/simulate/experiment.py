"""A whole simulated experiment on disk: frames, geometry, orientations, labels, truth, job.

:func:`simulate_experiment` writes into one output folder:

==========================  ==============================================================
``frames_NNN.cxi``          ``frames_per_file`` frames each, ``/entry_1/data_1/data``
                            ``(n, n_ss, n_fs)`` float32 ADU (Cheetah slab), per-frame
                            ``/LCLS/photon_energy_eV`` and ``/LCLS/detector_1/EncoderValue``
                            (camera length, mm)
``detector.geom``           CrystFEL geometry; panel-edge pixels are bad regions
``orientations.stream``     CrystFEL stream, one chunk and one crystal per frame
``labels.h5``               :mod:`hpcdiff.io.labels` file: binary label, strength, class 0..3
``truth.h5``                per-frame truth, the true diffuse intensity on a cubic hkl grid,
                            the molecule and the detector's defects
``manifest.json``           every parameter, the presets' nominal and measured ratios,
                            files with SHA-256, provenance
``job.toml``                a job file pointing at the files above
==========================  ==============================================================

Frame ``i`` depends only on ``(seed, i)``; ``processes`` worker processes each write whole
files, so the output is the same for any number of processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcdiff.config import SimulateConfig
from hpcdiff.config._schema import to_plain
from hpcdiff.errors import ConfigError, OutputExistsError
from hpcdiff.io.outputs import atomic_path, provenance, sha256_file, write_json
from hpcdiff.simulate.frames import (
    DEFAULT_ADU_PER_EV,
    DEFAULT_MAX_ADU,
    EXCITATION_SIGMA_PER_NM,
    LATTICE_PHOTONS,
    SPOT_SIGMA_PER_NM,
    DetectorArrays,
    FrameSimulator,
    FrameTruth,
)
from hpcdiff.simulate.molecules import LATTICE, CellContent, check_cell
from hpcdiff.simulate.physics import BackgroundParams
from hpcdiff.simulate.presets import (
    CLASS_NAMES,
    DEBRIS_SPAN,
    PRESETS,
    RATIO_BAND_PER_NM,
    get_preset,
)
from hpcdiff.simulate.randomise import RANDOMISED_RANGES, ExperimentDraw, draw_experiment

DATA_PATH = "/entry_1/data_1/data"
PHOTON_ENERGY_PATH = "/LCLS/photon_energy_eV"
ENCODER_PATH = "/LCLS/detector_1/EncoderValue"
BLOCK_FRAMES = 8
"""Frames simulated and appended to a file at a time (bounds memory: 8 x 9 MB for CSPAD)."""


@dataclass(frozen=True)
class SimulatedExperiment:
    """What :func:`simulate_experiment` wrote.

    Attributes
    ----------
    out_dir
        The output folder.
    frame_files
        The CXI files, in run order.
    geometry, stream, labels, truth, manifest, job
        Paths of the other outputs.
    n_frames
        Frames written.
    seconds
        Wall time of the whole simulation.
    """

    out_dir: Path
    frame_files: tuple[Path, ...]
    geometry: Path
    stream: Path
    labels: Path
    truth: Path
    manifest: Path
    job: Path
    n_frames: int
    seconds: float


# --------------------------------------------------------------------------- detector


def config_hash(cfg: SimulateConfig) -> str:
    """SHA-256 (16 hex digits) of the simulation parameters' canonical JSON."""
    text = json.dumps(to_plain(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Prepared:
    """A configuration resolved for simulation.

    Attributes
    ----------
    cfg
        The configuration (a ``like`` target applied).
    draw
        The experiment-level draws (:class:`~hpcdiff.simulate.randomise.ExperimentDraw`).
    geom
        The geometry the frames are written with.
    content
        The structure file's cell content, or ``None`` for a random molecule.
    """

    cfg: SimulateConfig
    draw: ExperimentDraw
    geom: Any
    content: CellContent | None


def _base_geometry(cfg: SimulateConfig) -> Any:
    from hpcdiff.geometry import cspad_like_geometry, small_geometry
    from hpcdiff.simulate.like import read_geometry

    if cfg.geometry is not None:
        return read_geometry(cfg.geometry)  # a .geom, or an NXmx file's (simulate --like)
    if cfg.detector == "cspad":
        return cspad_like_geometry(clen_m=cfg.detector_distance_m)
    return small_geometry(clen_m=cfg.detector_distance_m)


def _transverse_radius_m(geom: Any) -> float:
    """Largest distance (m) of a pixel centre from the beam axis."""
    from hpcdiff.geometry import pixel_positions_m

    pos = pixel_positions_m(geom, clen_m=0.1)
    return float(np.nanmax(np.hypot(pos[..., 0], pos[..., 1])))


def prepare(cfg: SimulateConfig) -> Prepared:
    """Resolve ``cfg``: the ``like`` target, the experiment's draws, structure and geometry.

    Raises
    ------
    ConfigError
        When the structure file, the target or the drawn detector cannot be used.
    """
    from hpcdiff.simulate.like import apply_like
    from hpcdiff.simulate.molecules import read_structure

    cfg = apply_like(cfg)
    base = _base_geometry(cfg)
    fixed = cfg.geometry_layout == "file"
    r_max = None
    if get_preset(cfg.preset).randomise and not fixed:
        r_max = _transverse_radius_m(base)
    draw = draw_experiment(cfg, r_max_m=r_max, n_panels=len(base.panels), fixed_detector=fixed)
    content = None
    if cfg.molecule != "random":
        content = read_structure(
            Path(cfg.molecule),
            default_cell_nm=draw.cell_nm,
            default_angles_deg=draw.angles_deg,
        )
        draw = dataclasses.replace(
            draw,
            cell_nm=content.cell_nm,
            angles_deg=content.angles_deg,
            space_group=content.space_group,
            molecule_shape="file",
            n_atoms=content.n_atoms,
        )
    elif draw.space_group != "P1":
        try:
            check_cell(draw.space_group, draw.cell_nm, draw.angles_deg)
        except ValueError as exc:
            raise ConfigError(f"[simulate] {exc}") from None
    return Prepared(cfg, draw, simulated_geometry(cfg, draw=draw, base=base), content)


def simulated_geometry(
    cfg: SimulateConfig, *, draw: ExperimentDraw | None = None, base: Any | None = None
) -> Any:
    """The geometry the experiment is written with.

    ``cfg.geometry`` (a CrystFEL file) or the built-in ``cspad`` / ``small`` detector.
    With ``geometry_layout = "slab"`` (default) the camera length is set to the drawn
    ``detector_distance_m`` (no ``coffset``), frames are read from ``cfg.data_path``
    ``(%, ss, fs)`` and the photon energy from ``/LCLS/photon_energy_eV``; with ``"file"``
    the geometry's own data path, dimensions, clen and photon energy are kept.  The gain is
    the drawn one (``adu_per_eV``), else the geometry's, else CSPAD-like; saturation is the
    geometry's (CSPAD-like default), at most the output integer type's maximum.  Each
    panel's outermost rows and columns and the beamstop's shadow (a box around the beam
    and one along its arm) are bad regions.
    """
    from hpcdiff.io.geom import BadRegion

    if draw is None:
        draw = draw_experiment(cfg, fixed_detector=cfg.geometry_layout == "file")
    geom = base if base is not None else _base_geometry(cfg)
    energy = draw.photon_energy_ev
    dtype_max = (
        float(np.iinfo(np.dtype(cfg.output_dtype)).max)
        if cfg.output_dtype != "float32"
        else math.inf
    )

    def gain(p: Any) -> float | None:
        if draw.adu_per_photon is not None and not (
            cfg.geometry_layout == "file" and (p.adu_per_ev is not None or p.adu_per_photon)
        ):
            return draw.adu_per_photon / energy
        if p.adu_per_ev is not None:
            return float(p.adu_per_ev)
        if p.adu_per_photon is not None:
            return float(p.adu_per_photon) / energy
        return DEFAULT_ADU_PER_EV

    def saturation(p: Any) -> float:
        return min(p.max_adu if math.isfinite(p.max_adu) else DEFAULT_MAX_ADU, dtype_max)

    # mask and saturation-map datasets of a target's geometry are not in simulated files
    unread = {"masks": (), "saturation_map": None}
    if cfg.geometry_layout == "file":
        panels = tuple(
            dataclasses.replace(
                p,
                adu_per_ev=gain(p),
                adu_per_photon=None,
                max_adu=saturation(p),
                data=cfg.data_path if p.data is None else p.data,  # the written file's
                **unread,
            )
            for p in geom.panels
        )
    else:
        panels = tuple(
            dataclasses.replace(
                p,
                clen=draw.detector_distance_m,
                coffset_m=0.0,
                data=cfg.data_path,
                dim_structure=("%", "ss", "fs"),
                slab_ss_offset=0,
                adu_per_ev=gain(p),
                adu_per_photon=None,
                max_adu=saturation(p),
                **unread,
            )
            for p in geom.panels
        )
    edges = []
    for p in panels:
        for tag, (fs0, fs1, ss0, ss1) in {
            "ss0": (p.min_fs, p.max_fs, p.min_ss, p.min_ss),
            "ss1": (p.min_fs, p.max_fs, p.max_ss, p.max_ss),
            "fs0": (p.min_fs, p.min_fs, p.min_ss, p.max_ss),
            "fs1": (p.max_fs, p.max_fs, p.min_ss, p.max_ss),
        }.items():
            edges.append(
                BadRegion(
                    name=f"bad_{p.name}_{tag}",
                    panel=p.name,
                    min_fs=fs0,
                    max_fs=fs1,
                    min_ss=ss0,
                    max_ss=ss1,
                )
            )
    if draw.beamstop_radius_m > 0:
        res = panels[0].res
        r = draw.beamstop_radius_m * res + 1.0  # lab pixels, one pixel of margin
        half = 0.3 * draw.beamstop_radius_m * res + 1.0
        far = 1e5
        edges.append(BadRegion(name="bad_beamstop", min_x=-r, max_x=r, min_y=-r, max_y=r))
        arm = {
            "+x": (0.0, far, -half, half),
            "-x": (-far, 0.0, -half, half),
            "+y": (-half, half, 0.0, far),
            "-y": (-half, half, -far, 0.0),
        }.get(draw.beamstop_arm)
        if arm is not None:
            edges.append(
                BadRegion(
                    name="bad_beamstop_arm", min_x=arm[0], max_x=arm[1], min_y=arm[2], max_y=arm[3]
                )
            )
    known = {r.name for r in geom.bad_regions}
    edges = [r for r in edges if r.name not in known]
    return dataclasses.replace(
        geom,
        panels=panels,
        bad_regions=tuple(geom.bad_regions) + tuple(edges),
        photon_energy=geom.photon_energy if cfg.geometry_layout == "file" else PHOTON_ENERGY_PATH,
        source=None,
    )


def build_simulator(
    cfg: SimulateConfig, geom: Any | None = None, *, prepared: Prepared | None = None
) -> FrameSimulator:
    """The :class:`FrameSimulator` of ``cfg`` (on :func:`simulated_geometry` by default)."""
    from hpcdiff.geometry import DetectorModel

    prepared = prepared if prepared is not None else prepare(cfg)
    draw = prepared.draw
    geom = geom if geom is not None else prepared.geom
    # detector_distance_m is clen + coffset (the distance); clen is what the geometry takes
    model = DetectorModel.build(
        geom,
        clen_m=draw.detector_distance_m - float(geom.panels[0].coffset_m),
        photon_energy_ev=draw.photon_energy_ev,
    )
    return FrameSimulator(
        DetectorArrays.from_model(model),
        seed=prepared.cfg.seed,
        cell_nm=draw.cell_nm,
        cell_angles_deg=draw.angles_deg,
        preset=prepared.cfg.preset,
        diffuse_fraction=prepared.cfg.diffuse_fraction,
        n_atoms=draw.n_atoms,
        experiment=draw,
        content=prepared.content,
    )


def per_frame_paths(cfg: SimulateConfig, geom: Any) -> dict[str, str]:
    """HDF5 path -> ``"photon_energy_ev"`` or ``"clen_mm"``: per-frame values to write."""
    if cfg.geometry_layout != "file":
        return {PHOTON_ENERGY_PATH: "photon_energy_ev", ENCODER_PATH: "clen_mm"}
    out = {}
    if isinstance(geom.photon_energy, str):
        out[geom.photon_energy] = "photon_energy_ev"
    clen = geom.panels[0].clen
    if isinstance(clen, str):
        out[clen] = "clen_mm"
    return out


# --------------------------------------------------------------------------- frame files


def frame_file_name(file_number: int, n_files: int) -> str:
    """``frames_NNN.cxi`` with at least 3 digits (more when there are > 1000 files)."""
    digits = max(3, len(str(max(n_files - 1, 0))))
    return f"frames_{file_number:0{digits}d}.cxi"


def file_ranges(n_frames: int, frames_per_file: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` global frame ranges of the files, in order."""
    return [
        (start, min(start + frames_per_file, n_frames))
        for start in range(0, n_frames, frames_per_file)
    ]


_WORKER: FrameSimulator | None = None


def _worker_init(cfg: SimulateConfig, geom: Any) -> None:
    global _WORKER
    if _WORKER is None:
        _WORKER = build_simulator(cfg, geom)


def _frame_data_path(cfg: SimulateConfig, geom: Any) -> str:
    if cfg.geometry_layout == "file" and geom.panels[0].data is not None:
        return str(geom.panels[0].data)
    return cfg.data_path


def _write_file(
    cfg: SimulateConfig,
    path: Path,
    start: int,
    stop: int,
    attrs: dict[str, Any],
    data_path: str = DATA_PATH,
    values: dict[str, str] | None = None,
    coffset_m: float = 0.0,
) -> list[FrameTruth]:
    from hpcdiff.io.cxi import CXIWriter

    sim = _WORKER
    assert sim is not None, "worker simulator not initialised"
    truths: list[FrameTruth] = []
    exp = sim.experiment
    frame_shape = tuple(cfg.frame_shape) if cfg.frame_shape else sim.detector.slab_shape
    dtype = np.dtype(cfg.output_dtype)
    per_value = {
        "photon_energy_ev": exp.photon_energy_ev,
        "clen_mm": (exp.detector_distance_m - coffset_m) * 1e3,
    }
    values = values if values is not None else {PHOTON_ENERGY_PATH: "photon_energy_ev"}
    data_attrs = {"units": "ADU", "adu_per_photon": sim.response.adu_per_photon}
    with CXIWriter(
        path,
        data_path=data_path,
        compression=cfg.compression,
        attrs=attrs,
        data_attrs=data_attrs,
        force=True,
    ) as writer:
        for b0 in range(start, stop, BLOCK_FRAMES):
            b1 = min(b0 + BLOCK_FRAMES, stop)
            block = np.empty((b1 - b0, *sim.detector.slab_shape), dtype=dtype)
            for j, i in enumerate(range(b0, b1)):
                block[j], truth = sim.frame(i, noise=cfg.noise, dtype=cfg.output_dtype)
                truths.append(truth)
            n = b1 - b0
            writer.append(
                block.reshape(n, *frame_shape),
                per_frame={key: np.full(n, per_value[kind]) for key, kind in values.items()},
            )
    return truths


def _write_frames(
    cfg: SimulateConfig,
    out_dir: Path,
    geom: Any,
    sim: FrameSimulator,
    attrs: dict[str, Any],
) -> tuple[list[Path], list[FrameTruth]]:
    global _WORKER
    ranges = file_ranges(cfg.n_frames, cfg.frames_per_file)
    paths = [out_dir / frame_file_name(k, len(ranges)) for k in range(len(ranges))]
    if cfg.frame_shape and int(np.prod(cfg.frame_shape)) != int(np.prod(sim.detector.slab_shape)):
        raise ConfigError(
            f"[simulate] frame_shape {list(cfg.frame_shape)} does not hold the geometry's slab "
            f"{list(sim.detector.slab_shape)}"
        )
    data_path = _frame_data_path(cfg, geom)
    values = per_frame_paths(cfg, geom)
    coffset = float(geom.panels[0].coffset_m)
    jobs = [
        (cfg, path, a, b, attrs, data_path, values, coffset)
        for path, (a, b) in zip(paths, ranges, strict=True)
    ]
    processes = min(cfg.processes, len(jobs))
    _WORKER = sim
    try:
        if processes <= 1:
            results = [_write_file(*job) for job in jobs]
        else:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            if ctx.get_start_method() != "fork":
                _WORKER = None  # spawned workers build their own (identical) simulator
            with ProcessPoolExecutor(
                processes, mp_context=ctx, initializer=_worker_init, initargs=(cfg, geom)
            ) as pool:
                results = list(pool.map(_write_file, *zip(*jobs, strict=True)))
    finally:
        _WORKER = None
    return paths, [t for chunk in results for t in chunk]


# --------------------------------------------------------------------------- other files


def _write_stream(
    path: Path,
    cfg: SimulateConfig,
    truths: Sequence[FrameTruth],
    files: Sequence[Path],
    geom_text: str,
    draw: ExperimentDraw,
    camera_length_m: float,
) -> None:
    from hpcdiff.io.stream import Chunk, Crystal, Stream, UnitCell, write_stream

    a, b, c = draw.cell_nm
    al, be, ga = draw.angles_deg
    if draw.space_group in LATTICE:
        lattice, centering, unique = LATTICE[draw.space_group]
    else:
        lattice, unique = _lattice_type(draw.cell_nm, draw.angles_deg)
        centering = draw.space_group[:1] if draw.space_group[:1] in "PABCIFR" else "P"
    cell = UnitCell(lattice, centering, unique, a, b, c, al, be, ga)
    ranges = file_ranges(cfg.n_frames, cfg.frames_per_file)
    chunks = []
    for (start, stop), file in zip(ranges, files, strict=True):
        for i in range(start, stop):
            A = truths[i].reciprocal
            chunks.append(
                Chunk(
                    image_filename=file.name,
                    event=f"//{i - start}",
                    image_serial=i + 1,
                    photon_energy_ev=draw.photon_energy_ev,
                    hit=True,
                    indexed_by="simulation",
                    crystals=(Crystal(cell, tuple(A[0]), tuple(A[1]), tuple(A[2])),),
                    camera_length_m=camera_length_m,
                )
            )
    write_stream(Stream(tuple(chunks), geometry_text=geom_text), path, force=True)


def _lattice_type(lengths: Sequence[float], angles: Sequence[float]) -> tuple[str, str | None]:
    """CrystFEL lattice type and unique axis of a primitive cell with these parameters."""
    right = all(math.isclose(x, 90.0, abs_tol=1e-6) for x in angles)
    a, b, c = lengths
    if right and math.isclose(a, b) and math.isclose(b, c):
        return "cubic", None
    if right and math.isclose(a, b):
        return "tetragonal", "c"
    if right:
        return "orthorhombic", None
    return "triclinic", None


def _write_labels(
    path: Path, cfg: SimulateConfig, truths: Sequence[FrameTruth], files: Sequence[Path]
) -> None:
    from hpcdiff.io.cxi import FrameId
    from hpcdiff.io.labels import Labels, write_labels

    ranges = file_ranges(cfg.n_frames, cfg.frames_per_file)
    ids = [
        FrameId(file.name, i - start)
        for (start, stop), file in zip(ranges, files, strict=True)
        for i in range(start, stop)
    ]
    labels = Labels.from_frame_ids(
        ids,
        diffuse=[int(t.diffuse) for t in truths],
        diffuse_strength=[t.strength for t in truths],
        diffuse_class=[t.diffuse_class for t in truths],
        class_names=CLASS_NAMES,
    )
    write_labels(path, labels, config_hash=config_hash(cfg), force=True)


def _write_truth(
    path: Path,
    cfg: SimulateConfig,
    sim: FrameSimulator,
    truths: Sequence[FrameTruth],
    files: Sequence[Path],
) -> None:
    ranges = file_ranges(cfg.n_frames, cfg.frames_per_file)
    names = [f.name for (a, b), f in zip(ranges, files, strict=True) for _ in range(a, b)]
    grid = sim.true_diffuse_grid(size=cfg.truth_grid_size, max_hkl=cfg.truth_max_hkl)
    with atomic_path(path, force=True) as tmp, h5py.File(tmp, "w") as h5:
        for key, value in provenance(config_hash(cfg), what="hpcdiff simulate truth").items():
            h5.attrs[key] = value
        h5.attrs["preset"] = sim.preset.name
        h5.attrs["ratio_band_per_nm"] = np.array(RATIO_BAND_PER_NM)
        fr = h5.create_group("frames")
        fr.create_dataset("file", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        fr.create_dataset("index", data=np.arange(len(truths), dtype=np.int64))
        fr.create_dataset(
            "index_in_file",
            data=np.array([i - a for a, b in ranges for i in range(a, b)], dtype=np.int64),
        )
        fr.create_dataset("diffuse_strength", data=[t.strength for t in truths], dtype="f8")
        fr.create_dataset("class", data=[t.diffuse_class for t in truths], dtype="i2")
        ratio = fr.create_dataset(
            "diffuse_to_background", data=[t.ratio for t in truths], dtype="f8"
        )
        ratio.attrs["meaning"] = "noise-free mean diffuse / mean background photons in the band"
        recip = fr.create_dataset(
            "reciprocal_basis", data=np.array([t.reciprocal for t in truths]), dtype="f8"
        )
        recip.attrs["units"] = "nm^-1; rows astar, bstar, cstar, lab frame; q = hkl @ A"
        fr.create_dataset("rotation", data=np.array([t.rotation for t in truths]), dtype="f8")
        bg = fr.create_dataset(
            "background", data=np.array([t.background.as_array() for t in truths]), dtype="f8"
        )
        bg.attrs["columns"] = json.dumps([f.name for f in dataclasses.fields(BackgroundParams)])
        debris = fr.create_dataset("debris", data=[t.debris for t in truths], dtype="f8")
        debris.attrs["meaning"] = "isotropic debris level, diffuse-strength units"
        fr.create_dataset("lattice_scale", data=[t.lattice_scale for t in truths], dtype="f8")
        fr.create_dataset("pulse_scale", data=[t.pulse_scale for t in truths], dtype="f8")

        dg = h5.create_group("diffuse")
        inten = dg.create_dataset(
            "intensity", data=grid["intensity"], compression="gzip", shuffle=True, chunks=True
        )
        inten.attrs["units"] = "photons per microsteradian for diffuse strength 1"
        inten.attrs["axes"] = "h, k, l (C order)"
        for axis in ("h", "k", "l"):
            dg.create_dataset(axis, data=grid["axis"])
        dg.attrs["half_width"] = grid["half_width"]
        dg.attrs["extent"] = "hkl"
        dg.attrs["voxel_centres"] = "-half_width + (i + 0.5) * 2 half_width / size"
        dg.attrs["diffuse_scale_per_usr"] = sim.diffuse_scale_per_usr[sim.preset.name]
        dg.attrs["displacement_sigma_nm"] = sim.diffuse_model.sigma_nm
        dg.attrs["molecular_transform_scale"] = sim.transform.scale
        dg.attrs["model"] = sim.diffuse_model.name
        dg.attrs["model_parameters"] = json.dumps(sim.diffuse_model.as_dict())

        mol = h5.create_group("molecule")
        mol.create_dataset("atoms_nm", data=sim.transform.atoms_nm)
        mol.attrs["transform_scale"] = sim.transform.scale
        mol.attrs["oversampling"] = sim.transform.oversampling
        mol.create_dataset("reciprocal_basis_crystal", data=sim.basis)
        mol.create_dataset("cell_fractional", data=sim.content.frac)
        mol.create_dataset("weights", data=sim.content.weights)
        mol.attrs["space_group"] = sim.content.space_group
        mol.attrs["n_molecules"] = sim.content.n_molecules
        mol.attrs["shape"] = sim.content.shape
        mol.attrs["cell_nm"] = np.array(sim.cell_nm)
        mol.attrs["cell_angles_deg"] = np.array(sim.cell_angles_deg)
        mol.attrs["source"] = sim.content.source or "random"

        ex = h5.create_group("experiment")
        ex.attrs["draw"] = json.dumps(sim.experiment.as_dict())
        ex.attrs["meaning"] = "every value drawn once per experiment (JSON)"

        det = h5.create_group("detector")
        det.create_dataset("dead", data=sim.response.dead, compression="gzip")
        det.create_dataset("edge", data=sim.response.edge, compression="gzip")
        det.create_dataset("panel_gain", data=sim.response.panel_gain)
        det.attrs["adu_per_photon"] = sim.response.adu_per_photon
        det.attrs["max_adu"] = sim.response.max_adu
        det.attrs["read_noise_adu"] = sim.response.read_noise_adu
        det.attrs["offset_sigma_adu"] = sim.response.offset_sigma_adu
        det.attrs["output_dtype"] = cfg.output_dtype
        det.attrs["dead_panels"] = np.array(sim.experiment.dead_panels, dtype=np.int64)
        det.create_dataset("shadow", data=sim.shadow_mask(), compression="gzip")
        det.attrs["beamstop_transmission"] = sim.experiment.beamstop_transmission


def job_toml_text(
    cfg: SimulateConfig, files_glob: str = "frames_*.cxi", *, data_path: str | None = None
) -> str:
    """Text of the job file that points at a simulated experiment's files."""
    data_path = data_path if data_path is not None else cfg.data_path
    n_train = max(2, cfg.n_frames // 2)
    n_test = max(0, cfg.n_frames - n_train)
    n_components = min(50, n_train - 1)
    return (
        f"# Job file written by hpcdiff simulate (preset {cfg.preset!r}, seed {cfg.seed}).\n"
        "# Paths are relative to this file.\n\n"
        "[experiment]\n"
        f'name = "simulated-{cfg.preset}-seed{cfg.seed}"\n'
        f'frames = ["{files_glob}"]\n'
        'geometry = "detector.geom"\n'
        'stream = "orientations.stream"\n'
        'labels = "labels.h5"\n'
        f'data_path = "{data_path}"\n\n'
        "[learn]\n"
        f"n_train = {n_train}\n"
        f"n_test = {n_test}\n"
        f"n_components = {n_components}\n\n"
        "[output]\n"
        'dir = "hpcdiff-out"\n'
    )


# --------------------------------------------------------------------------- driver


def simulate_experiment(
    cfg: SimulateConfig, out_dir: str | Path, *, force: bool = False
) -> SimulatedExperiment:
    """Simulate an experiment and write all its files into ``out_dir``.

    Parameters
    ----------
    cfg
        Simulation parameters.
    out_dir
        Output folder; created.
    force
        Write into an existing non-empty folder (its files of the same names are replaced).

    Raises
    ------
    OutputExistsError
        If ``out_dir`` exists, is not empty and ``force`` is false.
    ConfigError
        If the detector does not cover the ratio band.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise OutputExistsError(
            f"{out_dir} exists already and is not empty; pass --force to write into it, "
            "or choose another output folder"
        )
    from hpcdiff.io.geom import format_geom, write_geom

    like_target = cfg.like
    try:
        prepared = prepare(cfg)
        cfg = prepared.cfg
        geom = prepared.geom
        sim = build_simulator(cfg, geom, prepared=prepared)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"[simulate] {exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    chash = config_hash(cfg)
    stamp = provenance(chash, what="hpcdiff simulate frames", preset=cfg.preset, seed=cfg.seed)

    geom_path = write_geom(geom, out_dir / "detector.geom", force=True)
    files, truths = _write_frames(cfg, out_dir, geom, sim, stamp)
    stream_path = out_dir / "orientations.stream"
    camera_length = sim.experiment.detector_distance_m  # clen + coffset
    _write_stream(stream_path, cfg, truths, files, format_geom(geom), sim.experiment, camera_length)
    labels_path = out_dir / "labels.h5"
    _write_labels(labels_path, cfg, truths, files)
    truth_path = out_dir / "truth.h5"
    _write_truth(truth_path, cfg, sim, truths, files)
    job_path = out_dir / "job.toml"
    with atomic_path(job_path, force=True) as tmp:
        tmp.write_text(job_toml_text(cfg, data_path=_frame_data_path(cfg, geom)))

    manifest = _manifest(cfg, sim, truths, chash)
    manifest["files"] = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in [*files, geom_path, stream_path, labels_path, truth_path, job_path]
    }
    manifest["like"] = str(like_target) if like_target is not None else None
    manifest["seconds"] = time.perf_counter() - t0
    manifest_path = write_json(out_dir / "manifest.json", manifest, force=True)
    return SimulatedExperiment(
        out_dir=out_dir,
        frame_files=tuple(files),
        geometry=geom_path,
        stream=stream_path,
        labels=labels_path,
        truth=truth_path,
        manifest=manifest_path,
        job=job_path,
        n_frames=cfg.n_frames,
        seconds=time.perf_counter() - t0,
    )


def _manifest(
    cfg: SimulateConfig, sim: FrameSimulator, truths: Sequence[FrameTruth], chash: str
) -> dict[str, Any]:
    strengths = np.array([t.strength for t in truths])
    ratios = np.array([t.ratio for t in truths])
    diffuse = strengths > 0
    presets = {}
    for name, p in PRESETS.items():
        presets[name] = {
            "description": p.description,
            "ratio_range": list(p.ratio_range),
            "displacement_sigma_nm": p.displacement_sigma_nm,
            **sim.calibrate(p),
        }
    measured = {
        "n_diffuse_frames": int(diffuse.sum()),
        "median_strength": float(np.median(strengths[diffuse])) if diffuse.any() else None,
        "median_ratio": float(np.median(ratios[diffuse])) if diffuse.any() else None,
        "median_ratio_over_strength": (
            float(np.median(ratios[diffuse] / strengths[diffuse])) if diffuse.any() else None
        ),
    }
    classes = np.bincount([t.diffuse_class for t in truths], minlength=len(CLASS_NAMES))
    det = sim.detector
    return {
        "hpcdiff_simulate": 2,
        "parameters": to_plain(cfg),
        "experiment": sim.experiment.as_dict(),
        "randomised_ranges": (
            {k: list(v) if isinstance(v, tuple) else v for k, v in RANDOMISED_RANGES.items()}
            if sim.preset.randomise
            else None
        ),
        "preset": cfg.preset,
        "ratio_definition": (
            "mean expected diffuse photons / mean expected background photons per valid pixel "
            f"with {RATIO_BAND_PER_NM[0]} <= |q| < {RATIO_BAND_PER_NM[1]} nm^-1 (no 2 pi), "
            "noise-free, Bragg excluded"
        ),
        "ratio_band_per_nm": list(RATIO_BAND_PER_NM),
        "presets": presets,
        "this_experiment": measured,
        "labels": {
            "model": (
                "frame diffuse with probability diffuse_fraction; strength (= nominal "
                "diffuse-to-background ratio) log-uniform in the preset's ratio_range; "
                "class = thirds of the log range (0 none, 1 weak, 2 moderate, 3 strong); "
                "every frame also carries isotropic debris scattering of the diffuse term's "
                f"radial shape, level uniform in [0, {DEBRIS_SPAN} x the preset's high ratio]"
            ),
            "class_names": list(CLASS_NAMES),
            "class_counts": classes.tolist(),
        },
        "physics": {
            "spot_sigma_per_nm": SPOT_SIGMA_PER_NM,
            "excitation_sigma_per_nm": EXCITATION_SIGMA_PER_NM,
            "lattice_photons_median": LATTICE_PHOTONS,
            "molecular_transform_scale": sim.transform.scale,
            "molecular_transform_grid": list(sim.transform.intensity.shape),
            "diffuse_scale_per_usr": sim.diffuse_scale_per_usr,
            "wavelength_nm": sim.wavelength_nm,
            "diffuse_model": sim.diffuse_model.as_dict(),
            "space_group": sim.content.space_group,
            "cell_nm": list(sim.cell_nm),
            "cell_angles_deg": list(sim.cell_angles_deg),
            "n_atoms_in_cell": sim.content.n_atoms,
        },
        "detector": {
            "kind": "file" if cfg.geometry is not None else cfg.detector,
            "slab_shape": list(det.slab_shape),
            "n_pixels": int(np.sum(det.panel_index >= 0)),
            "q_range_per_nm": [float(sim.q_abs.min()), float(sim.q_abs.max())],
            "adu_per_photon": sim.response.adu_per_photon,
            "max_adu": sim.response.max_adu,
            "read_noise_adu": sim.response.read_noise_adu,
            "output_dtype": cfg.output_dtype,
            "detector_distance_m": sim.experiment.detector_distance_m,
            "photon_energy_ev": sim.experiment.photon_energy_ev,
            "dead_panels": list(sim.experiment.dead_panels),
            "n_shadowed_pixels": int(sim.shadow_mask().sum()),
            "n_dead_pixels": int(sim.response.dead.sum()),
            "n_edge_pixels": int(sim.response.edge.sum()),
        },
        "random_streams": {
            "frame i parameters": "default_rng([seed, i])",
            "frame i noise": "default_rng([seed, i, 1])",
            "molecule": "default_rng([seed, 2**32])",
            "detector defects": "default_rng([seed, 2**32 + 1])",
            "experiment draws": "default_rng([seed, 2**32 + 3])",
            "frame i halo and streak levels": "default_rng([seed, i, 2])",
            "preset calibration k": "default_rng([seed, 2**32 + 2, k])",
        },
        "provenance": provenance(chash, pid=os.getpid(), cpu_count=os.cpu_count()),
        "n_files": math.ceil(cfg.n_frames / cfg.frames_per_file),
    }


__all__ = [
    "SimulatedExperiment",
    "build_simulator",
    "config_hash",
    "file_ranges",
    "frame_file_name",
    "job_toml_text",
    "simulate_experiment",
    "simulated_geometry",
]

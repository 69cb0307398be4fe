"""The Fourier job: merge frames into a 3D reciprocal-space grid, compare frames, diffusion maps.

Stages (each a pure function; dask only in :func:`run_fourier`):

1. :func:`plan_frames`: the frames with an orientation (CrystFEL stream chunks matched to
   frame files by name and event), their photon energies, labels.
2. :func:`process_frames` (one dask task per ``frames_per_task`` frames, via
   :func:`process_chunk`): each frame's pixels are divided by polarisation times solid angle
   at the frame's own detector distance, the isotropic (radial) or local background is
   removed, the residual is mapped to ``hkl`` with the frame's orientation and binned on
   the merge grid (a dense :class:`~hpcdiff.merge.MergeAccumulator` per task) and on the
   similarity grid (sparse, per frame); the normalised residual is downsampled for the
   image-space similarity.
3. The per-task accumulators are reduced in a dask tree; per-frame sparse voxel sets become
   the sparse matrices of :mod:`hpcdiff.similarity`, whose row blocks run as dask tasks.
4. Diffusion maps of the common-arc and image-space similarities, ROC AUC of each
   coordinate against the labels, PNG plots.

Outputs (in ``out_dir``): ``merged.h5``, ``similarity.h5``, ``diffusion.h5``,
``diffusion_common_arc.png``, ``diffusion_image.png``, ``fourier_summary.json``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import h5py
import numpy as np

from hpcdiff.config import JobConfig
from hpcdiff.diffusion import (
    DiffusionMap,
    coordinate_aucs,
    diffusion_map,
    kernel_from_distances,
    kernel_from_similarity,
    plot_diffusion,
)
from hpcdiff.errors import ConfigError, FormatError
from hpcdiff.fourier_truth import (
    check_truth_grid,
    load_truth,
    read_truth,
    truth_correlation,
    truth_summary,
)
from hpcdiff.io.outputs import atomic_path, ensure_writable, provenance, write_json
from hpcdiff.merge import (
    FrameVoxels,
    Grid,
    MergeAccumulator,
    PixelDirections,
    bin_frame,
    reciprocal_metric,
)
from hpcdiff.pipelines.layout import FourierLayout
from hpcdiff.similarity import (
    assemble,
    blocks,
    common_arc_block,
    image_block,
    image_vectors,
    sparse_frames,
)

if TYPE_CHECKING:
    from hpcdiff.background.local import LocalFilter
    from hpcdiff.background.normalise import Compression
    from hpcdiff.background.radial import RadialStatistic

# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class FourierSettings:
    """Everything a worker needs to process frames (picklable, no file handles).

    Attributes
    ----------
    grid, similarity_grid
        Merge grid and common-arc similarity grid.
    bragg_radius_hkl
        Pixels this close to integer ``hkl`` are left out of both grids.
    background
        ``"radial"``, ``"local"`` or ``"none"``.
    radial_statistic, n_radial_bins, radial_clip_sigma
        Radial background parameters (:class:`~hpcdiff.config.BackgroundConfig`).
    local_filter, local_size_px, local_percentile, local_bin_px
        Local background parameters.
    compression, clip_sigma
        Normalisation of the image-space frames.
    image_downsample
        Mean-pooling factor of the image-space frames.
    polarisation_degree
        Horizontal polarisation fraction of the beam (1.0 for an XFEL).
    """

    grid: Grid
    similarity_grid: Grid
    bragg_radius_hkl: float = 0.0
    background: str = "radial"
    radial_statistic: RadialStatistic = "median"
    n_radial_bins: int = 400
    local_filter: LocalFilter = "median"
    local_size_px: int = 15
    local_percentile: float = 50.0
    local_bin_px: int = 5
    radial_clip_sigma: float = 3.0
    compression: Compression = "none"
    clip_sigma: float = 5.0
    image_downsample: int = 8
    polarisation_degree: float = 1.0

    @classmethod
    def from_job(cls, job: JobConfig, *, plan: FramePlan | None = None) -> FourierSettings:
        """Settings from the job's ``[fourier]`` and ``[background]`` sections.

        The grids come from :func:`hpcdiff.fourier_grid.grid_from_config`: a grid fitted
        to the cell and the detector's q range needs the frame ``plan`` (made here from
        the job when not given).
        """
        from hpcdiff.fourier_grid import grid_from_config, plan_q_max

        f, b = job.fourier, job.background
        if f.symmetrise == "laue" and f.extent == "q":
            raise ConfigError(
                f"{job.source}: [fourier.symmetrise] 'laue' needs extent = 'hkl' "
                "(mmm sign flips act on Miller indices)"
            )
        fixed = f.max_hkl if f.extent == "hkl" else f.max_q_per_nm
        q_max = None
        if fixed is None:
            plan = plan if plan is not None else plan_frames(job)
            if f.max_q_per_nm is None:
                try:
                    q_max = plan_q_max(plan)
                except ValueError as exc:
                    raise ConfigError(f"{job.source}: [fourier] grid: {exc}") from None
        sizes = (f.grid_size, f.similarity_grid_size or f.grid_size)
        grid, similarity_grid = (
            grid_from_config(f, size=s, plan=plan, q_max_per_nm=q_max) for s in sizes
        )
        return cls(
            grid=grid,
            similarity_grid=similarity_grid,
            bragg_radius_hkl=f.mask_bragg_radius_hkl,
            background=b.method,
            radial_statistic=b.radial_statistic,
            n_radial_bins=b.n_radial_bins,
            local_filter=b.local_filter,
            local_size_px=b.local_size_px,
            local_percentile=b.local_percentile,
            local_bin_px=b.local_bin_px,
            radial_clip_sigma=b.radial_clip_sigma,
            compression=b.compression,
            clip_sigma=b.clip_sigma,
            image_downsample=f.image_downsample,
        )


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class FramePlan:
    """The frames the job merges: those with an orientation.

    Attributes
    ----------
    files
        The run's frame files (global frame numbers run through them in order).
    data_path
        Frame dataset override (None: from the geometry).
    geometry
        :class:`~hpcdiff.io.geom.DetectorGeometry`.
    numbers
        ``(n,)`` int64 global frame numbers of the oriented frames, increasing.
    frame_ids
        Their :class:`~hpcdiff.io.cxi.FrameId`.
    orientations
        ``(n, 3, 3)`` float64 rows ``astar, bstar, cstar`` (nm^-1, lab frame).
    photon_energy_ev
        ``(n,)`` float64 from the stream; NaN where the stream has none (then from the
        frame file or the geometry).
    labels
        ``(n,)`` int8 diffuse 0/1, or None without a labels file.
    n_frames_total, n_multi_crystal
        Frames in the run; chunks with more than one crystal (the first is used).
    det_shift_m
        ``(n, 2)`` float64 the crystals' ``det_shift`` (x, y), metres (0 where none).
    """

    files: tuple[str, ...]
    data_path: str | None
    geometry: Any
    numbers: np.ndarray
    frame_ids: tuple[Any, ...]
    orientations: np.ndarray
    photon_energy_ev: np.ndarray
    labels: np.ndarray | None
    n_frames_total: int
    n_multi_crystal: int = 0
    det_shift_m: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.numbers.size)


def _chunk_key(filename: str, index: int | None) -> tuple[str, int]:
    return (Path(filename).name, 0 if index is None else int(index))


def plan_frames(job: JobConfig) -> FramePlan:
    """Match the stream's oriented chunks to the run's frames.

    A chunk matches the frame whose file has the same name (folders ignored: streams
    record the paths the indexer saw) and whose index is the chunk's event (``//N``;
    0 without an event).

    Raises
    ------
    ConfigError
        When the job names no frames, geometry or stream.
    FormatError
        When the stream orients no frame of the run.
    """
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.io.geom import read_geom
    from hpcdiff.io.stream import read_stream

    exp = job.experiment
    src = job.source or "<job>"
    if exp.stream is None:
        raise ConfigError(f"{src}: [experiment.stream] is needed by the Fourier job (orientations)")
    if exp.geometry is None:
        raise ConfigError(f"{src}: [experiment.geometry] is needed by the Fourier job")
    files = [str(f) for f in job.frame_files()]
    if not files:
        raise ConfigError(f"{src}: [experiment.frames] names no frame file")
    geom = read_geom(exp.geometry)
    with FrameSource(files, geometry=geom, data_path=exp.data_path) as source:
        frame_ids = list(source.frame_ids)
    index = {_chunk_key(fid.file, fid.index): i for i, fid in enumerate(frame_ids)}
    stream = read_stream(exp.stream)
    found: dict[int, tuple[np.ndarray, float]] = {}
    shifts: dict[int, tuple[float, float]] = {}
    n_multi = 0
    for chunk in stream.chunks:
        if not chunk.crystals:
            continue
        key = _chunk_key(chunk.image_filename, chunk.frame_index)
        if key not in index:
            continue
        n_multi += len(chunk.crystals) > 1
        energy = chunk.photon_energy_ev if chunk.photon_energy_ev is not None else np.nan
        found.setdefault(index[key], (chunk.crystals[0].reciprocal_matrix, float(energy)))
        shifts.setdefault(index[key], chunk.crystals[0].det_shift_mm or (0.0, 0.0))
    if not found:
        raise FormatError(
            exp.stream,
            f"no chunk with a crystal matches a frame of the run ({len(files)} file(s), e.g. "
            f"{Path(files[0]).name}); chunks name files {stream.chunks[0].image_filename!r}..."
            if stream.chunks
            else "the stream has no chunks",
        )
    numbers = np.array(sorted(found), dtype=np.int64)
    orientations = np.stack([found[i][0] for i in numbers])
    energies = np.array([found[i][1] for i in numbers], dtype=np.float64)
    ids = tuple(frame_ids[i] for i in numbers)
    labels = None
    if exp.labels is not None:
        from hpcdiff.io.labels import read_labels

        all_labels = read_labels(exp.labels, class_names=exp.class_names or None)
        try:
            labels = all_labels.lookup(list(ids)).diffuse.astype(np.int8)
        except KeyError as exc:  # labels of some frames only: no label colours or AUCs
            logging.getLogger("hpcdiff.fourier").warning(
                "labels cover only some merged frames (%s); diffusion maps without labels",
                exc.args[0] if exc.args else exc,
            )
    return FramePlan(
        files=tuple(files),
        data_path=exp.data_path,
        geometry=geom,
        numbers=numbers,
        frame_ids=ids,
        orientations=orientations,
        photon_energy_ev=energies,
        labels=labels,
        n_frames_total=len(frame_ids),
        n_multi_crystal=int(n_multi),
        det_shift_m=np.array([shifts[i] for i in numbers], dtype=np.float64) * 1e-3,
    )


# --------------------------------------------------------------------------- per-frame work


class DetectorCache:
    """Per-pixel geometry at each detector distance met, computed once per distance.

    Parameters
    ----------
    geom
        The detector geometry.
    polarisation_degree
        Horizontal polarisation fraction.
    max_entries
        Distances kept (least recently used dropped).
    """

    def __init__(
        self, geom: Any, *, polarisation_degree: float = 1.0, max_entries: int = 8
    ) -> None:
        self.geom = geom
        self.polarisation_degree = polarisation_degree
        self.max_entries = max_entries
        self._cache: OrderedDict[float, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._valid: np.ndarray | None = None
        self._panels: np.ndarray | None = None
        self._rings: dict[tuple[float, int], Any] = {}
        self._pixels: dict[float, PixelDirections] = {}

    @property
    def valid(self) -> np.ndarray:
        """``(n_ss, n_fs)`` bool pixels the geometry keeps (``geometry_valid``)."""
        if self._valid is None:
            from hpcdiff.geometry import geometry_valid, panel_index_map

            self._panels = panel_index_map(self.geom)
            self._valid = geometry_valid(self.geom)
        return self._valid

    @property
    def panel_index(self) -> np.ndarray:
        """``(n_ss, n_fs)`` int16 panel of each pixel, -1 off-panel."""
        _ = self.valid
        assert self._panels is not None
        return self._panels

    def at(self, clen_m: float) -> tuple[np.ndarray, np.ndarray]:
        """Unit scattering directions ``k_out - k_in`` (``|k| = 1``) ``(n_ss, n_fs, 3)`` and the
        correction factor ``polarisation * solid_angle_sr`` ``(n_ss, n_fs)`` at ``clen_m``.

        ``q = directions / lambda_nm``.
        """
        from hpcdiff.geometry import (
            fixed_shift_m,
            pixel_positions_m,
            polarisation_factor,
            solid_angle_sr,
        )

        key = round(float(clen_m), 7)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        pos = pixel_positions_m(self.geom, clen_m=clen_m, shift_m=fixed_shift_m(self.geom))
        unit = pos / np.linalg.norm(pos, axis=-1, keepdims=True)
        unit[..., 2] -= 1.0
        corr = polarisation_factor(pos, degree=self.polarisation_degree) * solid_angle_sr(
            self.geom, pos
        )
        self._cache[key] = (unit, corr)
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
            self._rings.clear()
        return unit, corr

    def pixels(self, clen_m: float) -> PixelDirections:
        """The valid pixels' directions at ``clen_m``, laid out for the merge (cached)."""
        key = round(float(clen_m), 7)
        if key not in self._pixels:
            unit, _ = self.at(clen_m)
            if len(self._pixels) >= self.max_entries:
                self._pixels.pop(next(iter(self._pixels)))
            self._pixels[key] = PixelDirections.build(unit, self.valid)
        return self._pixels[key]

    def rings(self, clen_m: float, n_bins: int) -> Any:
        """|q| rings of equal width over the valid pixels at ``clen_m``, as prepared
        :class:`~hpcdiff.background.Segments` (ring index -1 off the valid pixels).

        Rings depend on the scattering angle only (not the wavelength), so one set serves
        every frame at this distance.
        """
        from hpcdiff.segments import as_segments

        key = (round(float(clen_m), 7), int(n_bins))
        if key not in self._rings:
            unit, _ = self.at(clen_m)
            q_abs = np.linalg.norm(unit, axis=-1)
            valid = self.valid & np.isfinite(q_abs)
            lo, hi = float(np.min(q_abs[valid])), float(np.max(q_abs[valid]))
            edges = np.linspace(lo, hi, n_bins + 1)
            ring = np.searchsorted(edges, np.where(valid, q_abs, lo), side="right") - 1
            ring = np.clip(ring, 0, n_bins - 1).astype(np.int32)
            ring[~valid] = -1
            self._rings[key] = as_segments(ring, n_segments=n_bins)
        return self._rings[key]


@dataclass
class ChunkFrames:
    """What one task returns besides its accumulator.

    Attributes
    ----------
    numbers
        ``(k,)`` global frame numbers.
    similarity_frames
        ``k`` frames binned on the similarity grid.
    images
        ``(k, h, w)`` float32 normalised residuals, downsampled.
    seconds
        Wall time of the task.
    """

    numbers: np.ndarray
    similarity_frames: list[FrameVoxels]
    images: np.ndarray
    seconds: float = 0.0


def _background(
    corrected: np.ndarray,
    *,
    valid: np.ndarray,
    detector: DetectorCache,
    rings: Any,
    settings: FourierSettings,
) -> np.ndarray:
    if settings.background == "none":
        return np.zeros_like(corrected)
    if settings.background == "radial":
        from hpcdiff.background import radial_background

        return radial_background(
            corrected,
            rings,
            valid=valid,
            statistic=settings.radial_statistic,
            clip_sigma=settings.radial_clip_sigma,
        )
    from hpcdiff.background import local_background

    return local_background(
        corrected,
        detector.panel_index,
        valid=valid,
        size_px=settings.local_size_px,
        statistic=settings.local_filter,
        percentile=settings.local_percentile,
        bin_px=settings.local_bin_px,
    )


def process_frames(
    frames: np.ndarray,
    orientations: np.ndarray,
    *,
    photon_energy_ev: np.ndarray,
    clen_m: np.ndarray,
    detector: DetectorCache,
    settings: FourierSettings,
    numbers: np.ndarray | None = None,
    det_shift_m: np.ndarray | None = None,
) -> tuple[MergeAccumulator, ChunkFrames]:
    """Merge a batch of frames and bin them for the similarities (array in, arrays out).

    Parameters
    ----------
    frames
        ``(k, n_ss, n_fs)`` float slab frames (ADU or photons).
    orientations
        ``(k, 3, 3)`` rows ``astar, bstar, cstar``, nm^-1 lab frame.
    photon_energy_ev, clen_m
        ``(k,)`` per-frame photon energy (eV) and camera length (m, without coffset).
    detector
        Per-pixel geometry cache.
    settings
        Grids and background settings.
    numbers
        ``(k,)`` global frame numbers (default ``0..k-1``).
    det_shift_m
        ``(k, 2)`` detector shift (x, y) of each frame, metres, added to the geometry's
        fixed shift when mapping it: its crystal's ``det_shift`` (stream mm / 1000) plus a
        ``detector_shift_x/y`` read per frame; ``None`` for none.

    Returns
    -------
    (MergeAccumulator, ChunkFrames)
    """
    from hpcdiff.background import normalise
    from hpcdiff.geometry import fixed_shift_m, frame_directions, photon_energy_to_wavelength_m
    from hpcdiff.similarity import downsample

    t0 = time.perf_counter()
    frames = np.asarray(frames)
    k = frames.shape[0]
    if orientations.shape != (k, 3, 3):
        raise ValueError(f"orientations {orientations.shape} do not match {k} frames")
    valid = detector.valid
    if frames.shape[1:] != valid.shape:
        raise ValueError(f"frames {frames.shape[1:]} do not match the detector slab {valid.shape}")
    acc = MergeAccumulator.empty(settings.grid)
    sim_frames: list[FrameVoxels] = []
    residuals = np.empty(frames.shape, np.float32)
    for i in range(k):
        _, corr = detector.at(float(clen_m[i]))
        with np.errstate(invalid="ignore", divide="ignore"):
            corrected = (frames[i] / corr).astype(np.float32)
        ok = valid & np.isfinite(corrected)
        rings = None
        if settings.background == "radial":
            rings = detector.rings(float(clen_m[i]), settings.n_radial_bins)
        residual = corrected - _background(
            corrected, valid=ok, detector=detector, rings=rings, settings=settings
        )
        residual = np.where(ok, residual, np.nan).astype(np.float32)
        residuals[i] = residual
        lam_nm = photon_energy_to_wavelength_m(float(photon_energy_ev[i])) * 1e9
        pixels = detector.pixels(float(clen_m[i]))
        if det_shift_m is not None and np.any(det_shift_m[i] != 0):  # CrystFEL's det_shift
            shift = fixed_shift_m(detector.geom) + det_shift_m[i]
            unit = frame_directions(detector.geom, clen_m=float(clen_m[i]), shift_m=shift)
            pixels = PixelDirections.build(unit, valid)
        values = pixels.values(residual)  # NaN where not ok
        merge_voxels, sim_voxels = pixels.voxels(
            orientations[i],
            wavelength_nm=lam_nm,
            grids=(settings.grid, settings.similarity_grid),
            bragg_radius_hkl=settings.bragg_radius_hkl,
        )
        acc.add_voxels(merge_voxels, values)
        sim_frames.append(bin_frame(values, sim_voxels))
    normed = normalise(
        np.nan_to_num(residuals),
        valid=np.isfinite(residuals),
        compression=settings.compression,
        clip_sigma=settings.clip_sigma,
    )
    images = downsample(np.where(valid, normed, np.nan), settings.image_downsample)
    nums = np.arange(k) if numbers is None else np.asarray(numbers)
    return acc, ChunkFrames(nums, sim_frames, images, time.perf_counter() - t0)


_DETECTOR: list[DetectorCache] = []  # this process's cache for the geometry it last saw


def _detector(geom: Any, polarisation_degree: float) -> DetectorCache:
    if (
        not _DETECTOR
        or _DETECTOR[0].geom is not geom
        or (_DETECTOR[0].polarisation_degree != polarisation_degree)
    ):
        _DETECTOR[:] = [DetectorCache(geom, polarisation_degree=polarisation_degree)]
    return _DETECTOR[0]


def process_chunk(
    plan: FramePlan, rows: Sequence[int], settings: FourierSettings
) -> tuple[MergeAccumulator, ChunkFrames]:
    """Read and process the plan's frames ``rows`` (indices into ``plan.numbers``): one dask task.

    Reads the frames from their files (each worker opens them itself), takes each frame's
    photon energy from the stream (else the file, else the geometry) and camera length
    from the file (else the geometry), then :func:`process_frames`.
    """
    from hpcdiff.geometry import detector_shift_m, fixed_shift_m
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.pixel_masks import masks_for

    index = np.asarray(rows, dtype=np.int64)
    numbers = plan.numbers[index]
    detector = _detector(plan.geometry, settings.polarisation_degree)
    with FrameSource(plan.files, geometry=plan.geometry, data_path=plan.data_path) as source:
        frames = np.stack([source.read(int(n), int(n) + 1)[0] for n in numbers])
        values = [source.frame_values(int(n), int(n) + 1) for n in numbers]
    ids = [plan.frame_ids[j] for j in index]
    frames = masks_for(plan.geometry, plan.files[0]).apply(frames, frame_ids=ids)  # mask*, flag_*
    energies = plan.photon_energy_ev[index].copy()
    clens = np.empty(len(index))
    for j, v in enumerate(values):
        if not np.isfinite(energies[j]):
            energies[j] = _number(
                v, "photon_energy_ev", plan.geometry.photon_energy, "photon energy", plan
            )
        clens[j] = _number(v, "clen_m", plan.geometry.panels[0].clen, "camera length (clen)", plan)
    shift = None if plan.det_shift_m is None else plan.det_shift_m[index].copy()
    if plan.geometry.has_frame_shift:  # detector_shift_x/y read per frame
        shift = (np.zeros((len(index), 2)) if shift is None else shift) + np.stack(
            [detector_shift_m(plan.geometry, v) - fixed_shift_m(plan.geometry) for v in values]
        )
    return process_frames(
        frames,
        plan.orientations[index],
        photon_energy_ev=energies,
        clen_m=clens,
        detector=detector,
        settings=settings,
        numbers=numbers,
        det_shift_m=shift,
    )


def _number(
    values: dict[str, np.ndarray], key: str, fallback: Any, what: str, plan: FramePlan
) -> float:
    if key in values and np.isfinite(values[key][0]):
        return float(values[key][0])
    if isinstance(fallback, int | float):
        return float(fallback)
    raise FormatError(
        plan.geometry.source or "geometry",
        f"no {what} for the frames: neither the frame files nor the geometry give a number",
    )


def chunk_task(
    plan: FramePlan, start: int, stop: int, *, settings: FourierSettings
) -> tuple[MergeAccumulator, ChunkFrames]:
    """:func:`process_chunk` of the plan's frames ``start:stop`` (a block of
    :func:`~hpcdiff.parallel.dask_blocks.map_blocks`)."""
    return process_chunk(plan, range(start, stop), settings)


def merge_accumulators(*accs: MergeAccumulator) -> MergeAccumulator:
    """Sum of accumulators (a new one; inputs untouched): the tree-reduction step."""
    out = accs[0].copy()
    for a in accs[1:]:
        out.merge(a)
    return out


# --------------------------------------------------------------------------- the job


@dataclass
class FourierResult:
    """What :func:`run_fourier` produced (also written to ``out_dir``)."""

    merged: MergeAccumulator
    common_arc: np.ndarray
    overlap: np.ndarray
    image_distance: np.ndarray
    image_correlation: np.ndarray
    maps: dict[str, DiffusionMap]
    summary: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    frame_ids: tuple[Any, ...] = ()
    labels: np.ndarray | None = None


def run_fourier(
    job: JobConfig,
    client: Any,
    *,
    out_dir: str | Path | None = None,
    force: bool = False,
    log: IO[str] | None = None,
) -> FourierResult:
    """Run the Fourier job on a connected dask client and write its outputs.

    Parameters
    ----------
    job
        The validated job.
    client
        A :class:`distributed.Client` (see :func:`hpcdiff.parallel.dask_cluster.open_cluster`).
    out_dir
        Output folder (default ``job.output.dir``).
    force
        Overwrite existing outputs.
    log
        Progress messages (default stderr).

    Raises
    ------
    OutputExistsError
        Before any work, when an output exists and ``force`` is false.
    """
    from hpcdiff.parallel.dask_blocks import MappedBlocks, map_blocks, worker_count

    log = log if log is not None else sys.stderr
    out = Path(out_dir if out_dir is not None else job.output.dir)
    files = FourierLayout(out)
    for path in files.outputs:
        ensure_writable(path, force=force)
    fcfg = job.fourier
    t_start = time.perf_counter()
    plan = plan_frames(job)
    n = len(plan)
    if n < 2:
        raise FormatError(
            job.experiment.stream or "stream",
            f"only {n} oriented frame(s); the Fourier job needs at least 2",
        )
    settings = FourierSettings.from_job(job, plan=plan)
    truth = None
    if fcfg.truth is not None:  # read and checked against the grid before any work
        truth = load_truth(fcfg.truth)
        check_truth_grid(truth, settings.grid)
    print(
        f"fourier: {n} oriented frames of {plan.n_frames_total}; grid {_grid_text(settings.grid)}, "
        f"similarity grid {_grid_text(settings.similarity_grid)}",
        file=log,
        flush=True,
    )

    # 1. map: one task per chunk of frames; 2. tree reduction of the accumulators
    t0 = time.perf_counter()
    mapped = map_blocks(
        client,
        chunk_task,
        plan,
        blocks(n, fcfg.frames_per_task),
        reduce=merge_accumulators,
        label="merge",
        log=log,
        settings=settings,
    )
    parts: list[ChunkFrames] = mapped.parts
    assert mapped.reduced is not None  # reduced: one accumulator of every chunk
    merged: MergeAccumulator = mapped.reduced
    del mapped
    t_merge = time.perf_counter() - t0
    task_s = float(sum(p.seconds for p in parts))
    merged = merged.symmetrised(fcfg.symmetrise)

    # 3. similarities, row blocks as tasks
    sim_frames = [f for p in parts for f in p.similarity_frames]
    t0 = time.perf_counter()
    sblocks = blocks(n, fcfg.similarity_block)
    sim: MappedBlocks[Any] = map_blocks(
        client,
        common_arc_block,
        sparse_frames(sim_frames, n_voxels=settings.similarity_grid.n_voxels),
        sblocks,
        label="common-arc similarity",
        log=log,
        min_overlap=fcfg.min_overlap,
    )
    common_arc, overlap = assemble(n, sim.parts)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    vectors = image_vectors(np.concatenate([p.images for p in parts]))
    img_parts = map_blocks(
        client, image_block, vectors, sblocks, label="image similarity", log=log
    ).parts
    image_distance, _ = assemble(n, [p[0] for p in img_parts], diagonal=0.0)
    image_correlation, _ = assemble(n, [p[1] for p in img_parts], diagonal=1.0)
    t_img = time.perf_counter() - t0

    # 4. diffusion maps
    k = fcfg.n_diffusion_coords
    img_kernel, img_eps = kernel_from_distances(image_distance, k=fcfg.diffusion_knn)
    maps = {
        "common_arc": diffusion_map(
            kernel_from_similarity(common_arc, epsilon=fcfg.diffusion_epsilon), n_coords=k
        ),
        "image": diffusion_map(img_kernel, n_coords=k),
        "image_correlation": diffusion_map(
            kernel_from_similarity(image_correlation, epsilon=fcfg.diffusion_epsilon), n_coords=k
        ),
    }
    summary: dict[str, Any] = {
        "n_frames_oriented": n,
        "n_frames_total": plan.n_frames_total,
        "n_multi_crystal_chunks": plan.n_multi_crystal,
        "n_workers": worker_count(client),
        "grid": settings.grid.to_dict(),
        "similarity_grid": settings.similarity_grid.to_dict(),
        "voxels_measured": int(np.count_nonzero(merged.counts)),
        "pairs_with_similarity": int(
            (np.isfinite(common_arc).sum() - np.isfinite(np.diag(common_arc)).sum()) // 2
        ),
        "pairs_total": n * (n - 1) // 2,
        "median_overlap": float(np.median(overlap[np.triu_indices(n, 1)])),
        "image_kernel_epsilon": img_eps,
        "timing_s": {
            "merge_wall": t_merge,
            "merge_task_sum": task_s,
            "frames_per_s_per_worker": n / task_s if task_s > 0 else None,
            "common_arc": t_sim,
            "image_similarity": t_img,
        },
        "auc": {},
    }
    if plan.labels is not None:
        summary["auc_note"] = (
            "per coordinate: auc and auc_max = max(AUC, 1 - AUC) (a coordinate's sign is arbitrary)"
        )
        for name, dm in maps.items():
            summary["auc"][name] = coordinate_aucs(dm.coords, plan.labels)
    if truth is not None:
        summary["truth_correlation"] = truth_summary(
            merged,
            truth,
            metric=reciprocal_metric(plan.orientations),
            n_shells=fcfg.truth_shells,
            isotropic_shell_width_per_nm=fcfg.truth_isotropic_shell_width_per_nm,
        )

    # 5. outputs
    stamp = provenance(job.config_hash(), job=json.dumps(job.to_dict(), sort_keys=True))
    out.mkdir(parents=True, exist_ok=True)
    outputs = {
        "merged": write_merged(files.merged, merged, stamp=stamp, force=force),
        "similarity": write_similarity(
            files.similarity,
            plan,
            common_arc=common_arc,
            overlap=overlap,
            image_distance=image_distance,
            image_correlation=image_correlation,
            stamp=stamp,
            min_overlap=fcfg.min_overlap,
            force=force,
        ),
        "diffusion": write_diffusion(files.diffusion, plan, maps, stamp=stamp, force=force),
    }
    for name, title in (
        ("common_arc", "common-arc correlation"),
        ("image", "image-space distance"),
    ):
        path = files.plot(name)
        with atomic_path(path, force=force) as tmp:
            plot_diffusion(maps[name].coords, plan.labels, tmp, title=f"diffusion map: {title}")
        outputs[f"plot_{name}"] = path
    summary["timing_s"]["total"] = time.perf_counter() - t_start
    summary["provenance"] = {k2: v for k2, v in stamp.items() if k2 != "job"}
    outputs["summary"] = write_json(files.summary, summary, force=force)
    print(_summary_text(summary), file=log, flush=True)
    return FourierResult(
        merged,
        common_arc,
        overlap,
        image_distance,
        image_correlation,
        maps,
        summary,
        outputs,
        frame_ids=plan.frame_ids,
        labels=plan.labels,
    )


def _summary_text(summary: dict[str, Any]) -> str:
    t = summary["timing_s"]
    lines = [
        f"fourier: merged {summary['n_frames_oriented']} frames into {summary['voxels_measured']} voxels "
        f"in {t['merge_wall']:.1f} s ({t['frames_per_s_per_worker'] or 0:.2f} frames/s per worker)",
        f"fourier: common-arc pairs with similarity {summary['pairs_with_similarity']}/{summary['pairs_total']} "
        f"(median overlap {summary['median_overlap']:.0f} voxels), {t['common_arc']:.1f} s",
    ]
    if "truth_correlation" in summary:
        lines.extend(_truth_text(summary["truth_correlation"]))
    for name, rows in summary["auc"].items():
        aucs = ", ".join(f"{r['auc_max']:.3f}" for r in rows)
        lines.append(f"fourier: {name} diffusion coords ROC AUC max(AUC, 1-AUC): {aucs}")
    return "\n".join(lines)


def _cc_text(cc: float | None) -> str:
    return "undefined" if cc is None else f"{cc:.3f}"


def _truth_text(tc: dict[str, Any]) -> list[str]:
    iso = tc.get("isotropic_removed", {})
    lines = [
        f"fourier: CC(merged, truth) = {_cc_text(tc['cc'])} over {tc['voxels']} voxels; "
        f"isotropic removed {_cc_text(iso.get('cc'))}"
    ]
    shells = ", ".join(
        f"{s['q_min_nm_inv']:.2f}-{s['q_max_nm_inv']:.2f}: {_cc_text(s['cc'])}"
        for s in tc.get("shells", [])
    )
    if shells:
        lines.append(f"fourier: CC per shell (nm^-1): {shells}")
    return lines


def _grid_text(grid: Grid) -> str:
    shape = "x".join(str(s) for s in grid.shape)
    widths = ", ".join(f"+-{w:.3g}" for w in grid.half_widths)
    return f"{shape} ({grid.extent} {widths})"


# --------------------------------------------------------------------------- files


def write_merged(
    path: Path, merged: MergeAccumulator, *, stamp: dict[str, Any], force: bool = False
) -> Path:
    """Write the merged map: ``intensity`` (NaN where unmeasured), ``counts``, ``sums``, axes.

    Attributes ``grid_shape``, ``grid_half_widths``, ``grid_steps`` (per axis) and
    ``grid_extent`` describe the grid; the axes datasets hold the voxel centres.
    """
    grid = merged.grid
    names = ("h", "k", "l") if grid.extent == "hkl" else ("qx_per_nm", "qy_per_nm", "qz_per_nm")
    axes = grid.axes()
    with atomic_path(path, force=force) as tmp, h5py.File(tmp, "w") as h5:
        opts = {"compression": "gzip", "compression_opts": 4, "chunks": True}
        h5.create_dataset("intensity", data=merged.intensity().astype(np.float32), **opts)
        h5.create_dataset("counts", data=merged.counts.reshape(grid.shape), **opts)
        h5.create_dataset("sums", data=merged.sums.reshape(grid.shape), **opts)
        for name, axis in zip(names, axes, strict=True):
            h5.create_dataset(name, data=axis)
        h5["intensity"].attrs["axes"] = json.dumps(list(names))
        h5["intensity"].attrs["unit"] = "background-subtracted counts per (polarisation x sr)"
        h5.attrs.update({k: v for k, v in stamp.items()})
        h5.attrs["grid_shape"] = np.asarray(grid.shape, np.int64)
        h5.attrs["grid_extent"] = grid.extent
        h5.attrs["grid_half_widths"] = np.asarray(grid.half_widths, np.float64)
        h5.attrs["grid_steps"] = np.asarray(grid.steps, np.float64)
        h5.attrs["n_frames"] = merged.n_frames
    return path


def _ids(h5: h5py.File, plan: FramePlan) -> None:
    h5.create_dataset(
        "file",
        data=np.array([f.file for f in plan.frame_ids], dtype=object),
        dtype=h5py.string_dtype("utf-8"),
    )
    h5.create_dataset("index", data=np.array([f.index for f in plan.frame_ids], dtype=np.int64))
    h5.create_dataset("frame_number", data=plan.numbers)
    if plan.labels is not None:
        h5.create_dataset("diffuse", data=plan.labels)


def write_similarity(
    path: Path,
    plan: FramePlan,
    *,
    common_arc: np.ndarray,
    overlap: np.ndarray,
    image_distance: np.ndarray,
    image_correlation: np.ndarray,
    stamp: dict[str, Any],
    min_overlap: int,
    force: bool = False,
) -> Path:
    """Write the N x N similarity matrices with the frame ids alongside."""
    with atomic_path(path, force=force) as tmp, h5py.File(tmp, "w") as h5:
        _ids(h5, plan)
        h5.create_dataset("common_arc", data=common_arc)
        h5["common_arc"].attrs["description"] = (
            "Pearson CC over common voxels; NaN below min_overlap"
        )
        h5["common_arc"].attrs["min_overlap"] = min_overlap
        h5.create_dataset("overlap", data=overlap.astype(np.int32))
        h5.create_dataset("image_distance", data=image_distance)
        h5.create_dataset("image_correlation", data=image_correlation)
        h5.attrs.update(stamp)
    return path


def write_diffusion(
    path: Path,
    plan: FramePlan,
    maps: dict[str, DiffusionMap],
    *,
    stamp: dict[str, Any],
    force: bool = False,
) -> Path:
    """Write each model's diffusion coordinates and eigenvalues (group per model)."""
    with atomic_path(path, force=force) as tmp, h5py.File(tmp, "w") as h5:
        _ids(h5, plan)
        for name, dm in maps.items():
            g = h5.create_group(name)
            g.create_dataset("coords", data=dm.coords)
            g.create_dataset("eigenvalues", data=dm.eigenvalues)
            g.create_dataset("connected", data=dm.connected)
        h5.attrs.update(stamp)
    return path


__all__ = [
    "ChunkFrames",
    "DetectorCache",
    "FourierResult",
    "FourierSettings",
    "FramePlan",
    "merge_accumulators",
    "plan_frames",
    "process_chunk",
    "process_frames",
    "read_truth",
    "run_fourier",
    "truth_correlation",
    "write_diffusion",
    "write_merged",
    "write_similarity",
]

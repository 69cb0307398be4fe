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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import h5py
import numpy as np

from hpcdiff.config import JobConfig
from hpcdiff.diffusion import (
    BlockKnn,
    DiffusionMap,
    coordinate_aucs,
    diffusion_map_of_points,
    diffusion_map_sparse,
    knn_kernel,
    plot_diffusion,
    roc_auc,
)
from hpcdiff.errors import ConfigError, FormatError
from hpcdiff.io.hdf5 import open_hdf5
from hpcdiff.io.outputs import atomic_path, provenance, write_json
from hpcdiff.merge import (
    FrameVoxels,
    Grid,
    MergeAccumulator,
    map_correlation,
    map_frame_grids,
)
from hpcdiff.parallel.signals import Preempted
from hpcdiff.pipelines.fourier_work import ChunkData, FourierWork, SimilarityRows
from hpcdiff.pipelines.layout import FourierLayout
from hpcdiff.pipelines.requeue import refuse_finished, refuse_strays
from hpcdiff.similarity import (
    FrameScores,
    ProfileSketch,
    SimilarityBlock,
    blocks,
    common_arc_rows,
    image_pairs,
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
    def from_job(cls, job: JobConfig) -> FourierSettings:
        """Settings from the job's ``[fourier]`` and ``[background]`` sections."""
        f, b = job.fourier, job.background
        half = f.max_hkl if f.extent == "hkl" else f.max_q_per_nm
        if f.symmetrise == "laue" and f.extent == "q":
            raise ConfigError(
                f"{job.source}: [fourier.symmetrise] 'laue' needs extent = 'hkl' "
                "(mmm sign flips act on Miller indices)"
            )
        return cls(
            grid=Grid(f.grid_size, half, f.extent),
            similarity_grid=Grid(f.similarity_grid_size or f.grid_size, half, f.extent),
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

    @property
    def valid(self) -> np.ndarray:
        """``(n_ss, n_fs)`` bool: on a panel and not in a bad region."""
        if self._valid is None:
            from hpcdiff.geometry import bad_region_mask, panel_index_map

            self._panels = panel_index_map(self.geom)
            self._valid = (self._panels >= 0) & ~bad_region_mask(self.geom)
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
        from hpcdiff.geometry import pixel_positions_m, polarisation_factor, solid_angle_sr

        key = round(float(clen_m), 7)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        pos = pixel_positions_m(self.geom, clen_m=clen_m)
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

    Returns
    -------
    (MergeAccumulator, ChunkFrames)
    """
    from hpcdiff.background import normalise
    from hpcdiff.geometry import photon_energy_to_wavelength_m
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
        unit, corr = detector.at(float(clen_m[i]))
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
        merged, binned = map_frame_grids(
            residual,
            unit / lam_nm,
            orientations[i],
            grids=(settings.grid, settings.similarity_grid),
            valid=ok & np.isfinite(residual),
            bragg_radius_hkl=settings.bragg_radius_hkl,
        )
        acc.add_frame(merged)
        sim_frames.append(binned)
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
    from hpcdiff.io.cxi import FrameSource

    index = np.asarray(rows, dtype=np.int64)
    numbers = plan.numbers[index]
    detector = _detector(plan.geometry, settings.polarisation_degree)
    with FrameSource(plan.files, geometry=plan.geometry, data_path=plan.data_path) as source:
        frames = np.stack([source.read(int(n), int(n) + 1)[0] for n in numbers])
        values = [source.frame_values(int(n), int(n) + 1) for n in numbers]
    energies = plan.photon_energy_ev[index].copy()
    clens = np.empty(len(index))
    for j, v in enumerate(values):
        if not np.isfinite(energies[j]):
            energies[j] = _number(
                v, "photon_energy_ev", plan.geometry.photon_energy, "photon energy", plan
            )
        clens[j] = _number(v, "clen_m", plan.geometry.panels[0].clen, "camera length (clen)", plan)
    return process_frames(
        frames,
        plan.orientations[index],
        photon_energy_ev=energies,
        clen_m=clens,
        detector=detector,
        settings=settings,
        numbers=numbers,
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
    """What :func:`run_fourier` produced (also written to ``out_dir``).

    The N x N matrices are not kept in memory (at 10^4 frames they are GBs): they are in
    ``outputs["similarity"]``; :meth:`matrix` reads one back.
    """

    merged: MergeAccumulator
    maps: dict[str, DiffusionMap]
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    frame_ids: tuple[Any, ...] = ()
    labels: np.ndarray | None = None

    def matrix(self, name: str) -> np.ndarray:
        """``(n, n)`` dataset ``name`` of ``similarity.h5`` (``common_arc``, ``overlap``,
        ``image_distance``, ``image_correlation``)."""
        with h5py.File(self.outputs["similarity"], "r") as h5:
            return np.asarray(h5[name][()])


def chunk_to_work(
    plan: FramePlan, start: int, stop: int, *, settings: FourierSettings, work: FourierWork
) -> tuple[MergeAccumulator, dict[str, Any]]:
    """One merge task: :func:`chunk_task`, its per-frame data written to ``work``.

    Returns the accumulator (tree-reduced on the workers) and a small record: the task's
    rows, seconds, and which image pixels are finite in every frame of the task.
    """
    acc, part = chunk_task(plan, start, stop, settings=settings)
    work.write_chunk(start, stop, ChunkData(part.numbers, part.similarity_frames, part.images))
    finite = np.all(np.isfinite(part.images), axis=0)
    return acc, {"start": start, "stop": stop, "seconds": part.seconds, "finite": finite}


def similarity_task(
    work: FourierWork,
    start: int,
    stop: int,
    *,
    n: int,
    chunks: list[tuple[int, int]],
    n_voxels: int,
    min_overlap: int,
    column_block: int,
    keep: np.ndarray,
) -> SimilarityRows:
    """Rows ``start:stop`` of the common-arc and image-space matrices, columns ``start:``.

    Reads its rows, then the columns one block of ``column_block`` frames at a time, from
    the chunk files in ``work`` (a worker holds two blocks of frames, never all of them).
    """
    t0 = time.perf_counter()
    rows = work.read_rows(start, stop, chunks)
    row_vec = rows.images.reshape(len(rows.frames), -1)[:, keep].astype(np.float64)
    col_ranges = [(s, min(s + column_block, n)) for s in range(start, n, column_block)]
    dists, corrs = [], []

    def columns() -> Iterator[list[FrameVoxels]]:
        for s, e in col_ranges:
            cols = rows if (s, e) == (start, stop) else work.read_rows(s, e, chunks)
            col_vec = cols.images.reshape(len(cols.frames), -1)[:, keep].astype(np.float64)
            d, c = image_pairs(row_vec, col_vec)
            dists.append(d)
            corrs.append(c)
            yield cols.frames

    cc = common_arc_rows(
        rows.frames, columns(), start=start, n_voxels=n_voxels, min_overlap=min_overlap
    )
    pix = np.full(cc.similarity.shape, int(keep.sum()), np.int64)
    return SimilarityRows(
        cc,
        SimilarityBlock(start, stop, np.concatenate(dists, axis=1), pix),
        SimilarityBlock(start, stop, np.concatenate(corrs, axis=1), pix),
        time.perf_counter() - t0,
    )


def _work_hash(job: JobConfig) -> str:
    """The job's config hash without ``[fourier.cluster]``: a rerun on another cluster (a
    requeue with other workers) resumes the same checkpoints."""
    import dataclasses

    from hpcdiff.config import ClusterConfig

    plain = dataclasses.replace(
        job, fourier=dataclasses.replace(job.fourier, cluster=ClusterConfig())
    )
    return plain.config_hash()


def _check_stop(stop: object, where: str, work: FourierWork) -> None:
    if stop is not None and stop:
        raise Preempted(
            f"stopped by a signal {where}; the checkpoints in {work.root} are kept: run the "
            "same command again (no --force) to finish"
        )


def _prepare_outputs(
    files: FourierLayout, work: FourierWork, *, n_frames: int, force: bool
) -> bool:
    """Refuse a finished run or strays; create or reopen the working folder.

    Returns True when resuming (outputs of this job's unfinished run may be overwritten).
    """
    outputs = {p.name: p for p in files.outputs}
    if not force:
        refuse_finished("fourier", outputs, finished=[files.summary], out_dir=files.root)
        if not work.exists():
            refuse_strays("fourier", outputs, shard_dir=work.root)
    files.root.mkdir(parents=True, exist_ok=True)
    for stale in files.root.glob(".*.part"):  # left by a killed atomic write
        stale.unlink(missing_ok=True)
    return work.prepare(n_frames=n_frames, force=force)


def run_fourier(
    job: JobConfig,
    client: Any,
    *,
    out_dir: str | Path | None = None,
    force: bool = False,
    log: IO[str] | None = None,
    stop: object = None,
) -> FourierResult:
    """Run the Fourier job on a connected dask client and write its outputs.

    Stages: merge tasks in waves of ``[fourier] checkpoint_tasks`` (the accumulator saved
    after each), similarity row blocks (each saved when it arrives), then the outputs, the
    summary last, and the working folder removed.  A rerun of the same job resumes from
    the working folder (:mod:`hpcdiff.pipelines.fourier_work`) and gives the same outputs
    as an uninterrupted run.

    Parameters
    ----------
    job
        The validated job.
    client
        A :class:`distributed.Client` (see :func:`hpcdiff.parallel.dask_cluster.open_cluster`).
    out_dir
        Output folder (default ``job.output.dir``).
    force
        Run again although the run is finished, overwriting its outputs; discard another
        job's working folder.
    log
        Progress messages (default stderr).
    stop
        A :class:`~hpcdiff.parallel.signals.StopFlag` (or anything truthy when a stop is
        requested), looked at after each checkpoint.

    Raises
    ------
    OutputExistsError
        Before any work: the run is finished, or outputs are in the way and there is no
        working folder of this job, and ``force`` is false.
    Preempted
        After a checkpoint, when ``stop`` is set.
    """
    from hpcdiff.parallel.dask_blocks import for_each_block, map_blocks, worker_count

    log = log if log is not None else sys.stderr
    out = Path(out_dir if out_dir is not None else job.output.dir)
    files = FourierLayout(out)
    settings = FourierSettings.from_job(job)
    fcfg = job.fourier
    t_start = time.perf_counter()
    plan = plan_frames(job)
    n = len(plan)
    if n < 2:
        raise FormatError(
            job.experiment.stream or "stream",
            f"only {n} oriented frame(s); the Fourier job needs at least 2",
        )
    if fcfg.truth is not None:
        read_truth(fcfg.truth)  # a bad truth file fails before any work
    work = FourierWork(files.work, _work_hash(job))
    resumed = _prepare_outputs(files, work, n_frames=n, force=force)
    print(
        f"fourier: {n} oriented frames of {plan.n_frames_total}; grid {settings.grid.size}^3 "
        f"({settings.grid.extent} +-{settings.grid.half_width:g}), similarity grid "
        f"{settings.similarity_grid.size}^3" + (f"; resuming from {work.root}" if resumed else ""),
        file=log,
        flush=True,
    )

    # 1. merge: tasks in waves; after each wave the accumulator is saved
    t0 = time.perf_counter()
    chunks = blocks(n, fcfg.frames_per_task)
    saved = work.load_merge(settings.grid) if resumed else None
    on_disk = work.chunks_on_disk()
    merged, done = saved if saved is not None else (MergeAccumulator.empty(settings.grid), [])
    done = [c for c in done if c in on_disk]  # a chunk counts only with its frames on disk
    if saved is not None and len(done) != len(saved[1]):
        merged, done = MergeAccumulator.empty(settings.grid), []
    todo = [c for c in chunks if c not in set(done)]
    finite = work.load_finite() if done else None
    task_s = 0.0
    waves = [
        todo[i : i + fcfg.checkpoint_tasks] for i in range(0, len(todo), fcfg.checkpoint_tasks)
    ]
    for w, wave in enumerate(waves):
        mapped = map_blocks(
            client,
            chunk_to_work,
            plan,
            wave,
            reduce=merge_accumulators,
            label=f"merge (wave {w + 1}/{len(waves)})",
            log=log,
            settings=settings,
            work=work,
        )
        assert mapped.reduced is not None
        merged = merge_accumulators(merged, mapped.reduced)
        for rec in mapped.parts:
            task_s += float(rec["seconds"])
            finite = rec["finite"] if finite is None else finite & rec["finite"]
        done = done + list(wave)
        assert finite is not None
        work.save_finite(finite)
        work.save_merge(merged, done)
        del mapped
        if w < len(waves) - 1:
            _check_stop(stop, "during the merge", work)
    t_merge = time.perf_counter() - t0
    _check_stop(stop, "after the merge", work)
    if finite is None:
        finite = work.load_finite()
    merged_sym = merged.symmetrised(fcfg.symmetrise)

    # 2. similarity row blocks, each saved as it arrives
    t0 = time.perf_counter()
    sblocks = blocks(n, fcfg.similarity_block)
    have = work.blocks_done()
    missing = [b for b in sblocks if b not in have]
    keep = finite.reshape(-1)
    sim_task_s = 0.0
    if missing:

        def save(_i: int, rows: SimilarityRows) -> None:
            nonlocal sim_task_s
            work.save_block(rows)
            sim_task_s += rows.seconds

        for_each_block(
            client,
            similarity_task,
            work,
            missing,
            on_result=save,
            stop=stop,
            stopped=lambda: _check_stop(stop, "during the similarity", work),
            label="similarity",
            log=log,
            n=n,
            chunks=chunks,
            n_voxels=settings.similarity_grid.n_voxels,
            min_overlap=fcfg.min_overlap,
            column_block=fcfg.similarity_column_block,
            keep=keep,
        )
    t_sim = time.perf_counter() - t0
    _check_stop(stop, "after the similarity", work)

    # 3. one pass over the saved blocks, in order: similarity.h5, scores, sketch, kNN
    t0 = time.perf_counter()
    stamp = provenance(job.config_hash(), job=json.dumps(job.to_dict(), sort_keys=True))
    scores = FrameScores(n)
    sketch = ProfileSketch(n, dims=fcfg.profile_dims, seed=0, form=fcfg.profile_form)
    knn_dist = BlockKnn(n, fcfg.diffusion_knn)
    knn_corr = BlockKnn(n, fcfg.diffusion_knn, largest=True)
    overlaps: list[np.ndarray] = []
    pairs_with = 0
    outputs: dict[str, Path] = {}
    with atomic_path(files.similarity, force=True) as tmp, h5py.File(tmp, "w") as h5:
        _ids(h5, plan)
        opts: dict[str, Any] = {"chunks": (min(fcfg.similarity_block, n), min(n, 1024))}
        ds = {
            "common_arc": h5.create_dataset("common_arc", (n, n), np.float64, **opts),
            "overlap": h5.create_dataset("overlap", (n, n), np.int32, **opts),
            "image_distance": h5.create_dataset("image_distance", (n, n), np.float64, **opts),
            "image_correlation": h5.create_dataset("image_correlation", (n, n), np.float64, **opts),
        }
        h5["common_arc"].attrs["description"] = (
            "Pearson CC over common voxels; NaN below min_overlap"
        )
        h5["common_arc"].attrs["min_overlap"] = fcfg.min_overlap
        for rows in work.iter_blocks(sblocks):
            s, e = rows.start, rows.stop
            scores.add(rows.common_arc)
            sketch.add(rows.common_arc)
            knn_dist.add(s, rows.image_distance.similarity)
            knn_corr.add(s, rows.image_correlation.similarity)
            sim = rows.common_arc.similarity
            upper = np.arange(s, n)[None, :] > np.arange(s, e)[:, None]
            pairs_with += int(np.isfinite(sim[upper]).sum())
            overlaps.append(rows.common_arc.overlap[upper])
            _write_upper(ds["common_arc"], s, e, sim, diagonal=1.0)
            _write_upper(ds["overlap"], s, e, rows.common_arc.overlap, diagonal=None)
            _write_upper(ds["image_distance"], s, e, rows.image_distance.similarity, diagonal=0.0)
            _write_upper(
                ds["image_correlation"], s, e, rows.image_correlation.similarity, diagonal=1.0
            )
        _mirror(ds["common_arc"], fcfg.similarity_block)
        _mirror(ds["overlap"], fcfg.similarity_block)
        _mirror(ds["image_distance"], fcfg.similarity_block)
        _mirror(ds["image_correlation"], fcfg.similarity_block)
        h5.create_dataset("mean_z", data=scores.mean_z)
        h5.create_dataset("significance", data=scores.significance)
        h5.create_dataset("mean_cc", data=scores.mean_cc)
        h5["mean_z"].attrs["description"] = (
            "per frame: overlap-weighted (n - 3) mean Fisher z of its common-arc CCs"
        )
        h5["significance"].attrs["description"] = (
            "per frame: sum (n - 3) atanh(r) / sqrt(sum (n - 3)); N(0, 1) for noise only"
        )
        h5.attrs.update(stamp)
    outputs["similarity"] = files.similarity

    # 4. diffusion maps on sparse kNN kernels
    k = fcfg.n_diffusion_coords
    eps: dict[str, float] = {}
    maps: dict[str, DiffusionMap] = {}
    maps["common_arc"], eps["common_arc"] = diffusion_map_of_points(
        sketch.sketch,
        k=fcfg.diffusion_knn,
        n_coords=k,
        n_components=fcfg.profile_components,
        epsilon=fcfg.diffusion_epsilon,
    )
    idx, dvals = knn_dist.result()
    kern, eps["image"] = knn_kernel(
        idx, np.where(idx >= 0, dvals**2, np.inf), epsilon=fcfg.diffusion_epsilon
    )
    maps["image"] = diffusion_map_sparse(kern, n_coords=k)
    idx, cvals = knn_corr.result()
    cd2 = np.where(idx >= 0, 2.0 * (1.0 - cvals), np.inf)
    kern, eps["image_correlation"] = knn_kernel(idx, cd2, epsilon=fcfg.diffusion_epsilon)
    maps["image_correlation"] = diffusion_map_sparse(kern, n_coords=k)
    t_embed = time.perf_counter() - t0

    all_overlap = np.concatenate(overlaps) if overlaps else np.zeros(0)
    frame_score = {
        "mean_z": scores.mean_z,
        "significance": scores.significance,
        "mean_cc": scores.mean_cc,
    }
    summary: dict[str, Any] = {
        "n_frames_oriented": n,
        "n_frames_total": plan.n_frames_total,
        "n_multi_crystal_chunks": plan.n_multi_crystal,
        "n_workers": worker_count(client),
        "grid": {
            "size": settings.grid.size,
            "extent": settings.grid.extent,
            "half_width": settings.grid.half_width,
        },
        "similarity_grid_size": settings.similarity_grid.size,
        "voxels_measured": int(np.count_nonzero(merged_sym.counts)),
        "pairs_with_similarity": pairs_with,
        "pairs_total": n * (n - 1) // 2,
        "median_overlap": float(np.median(all_overlap)) if all_overlap.size else 0.0,
        "diffusion": {
            "kernel": "sparse Gaussian on each frame's diffusion_knn nearest neighbours",
            "knn": fcfg.diffusion_knn,
            "epsilon": eps,
            "epsilon_rule": "given" if fcfg.diffusion_epsilon is not None else "median heuristic",
            "common_arc_points": f"sketch of the common-arc profiles ({fcfg.profile_form}; "
            f"{fcfg.profile_dims} dims, {fcfg.profile_components} principal components)",
            "eigenvalues": {name: dm.eigenvalues.tolist() for name, dm in maps.items()},
        },
        "image_kernel_epsilon": eps["image"],
        "resumed": {
            "merge_tasks_reused": len(chunks) - len(todo),
            "similarity_blocks_reused": len(sblocks) - len(missing),
        },
        "timing_s": {
            "merge_wall": t_merge,
            "merge_task_sum": task_s,
            "frames_per_s_per_worker": sum(e - s for s, e in todo) / task_s if task_s > 0 else None,
            "common_arc": t_sim,
            "similarity_task_sum": sim_task_s,  # common arc and image space, one task per block
            "embedding": t_embed,
        },
        "auc": {},
    }
    if plan.labels is not None:
        summary["auc_note"] = (
            "per coordinate: auc and auc_max = max(AUC, 1 - AUC) (a coordinate's sign is arbitrary)"
        )
        for name, dm in maps.items():
            summary["auc"][name] = coordinate_aucs(dm.coords, plan.labels)
        summary["frame_score_auc"] = {
            name: roc_auc(v, plan.labels) for name, v in frame_score.items()
        }
    if fcfg.truth is not None:
        cc, nvox = truth_correlation(merged_sym, fcfg.truth)
        summary["truth_correlation"] = {"cc": cc, "voxels": nvox, "file": str(fcfg.truth)}

    # 5. outputs (this job's unfinished ones are overwritten), the summary last
    outputs["merged"] = write_merged(files.merged, merged_sym, stamp=stamp, force=True)
    outputs["diffusion"] = write_diffusion(
        files.diffusion, plan, maps, stamp=stamp, force=True, scores=frame_score
    )
    for name, title in (
        ("common_arc", "common-arc correlation"),
        ("image", "image-space distance"),
    ):
        path = files.plot(name)
        with atomic_path(path, force=True) as tmp:
            plot_diffusion(maps[name].coords, plan.labels, tmp, title=f"diffusion map: {title}")
        outputs[f"plot_{name}"] = path
    summary["timing_s"]["total"] = time.perf_counter() - t_start
    summary["provenance"] = {k2: v for k2, v in stamp.items() if k2 != "job"}
    outputs["summary"] = write_json(files.summary, summary, force=True)
    work.remove()
    print(_summary_text(summary), file=log, flush=True)
    return FourierResult(
        merged_sym,
        maps,
        frame_score,
        summary,
        outputs,
        frame_ids=plan.frame_ids,
        labels=plan.labels,
    )


def _write_upper(
    ds: h5py.Dataset, start: int, stop: int, values: np.ndarray, *, diagonal: float | None
) -> None:
    """Rows ``start:stop``, columns ``start:`` of an upper-triangle block into ``ds``."""
    v = np.array(values)
    if diagonal is not None:
        i = np.arange(stop - start)
        d = v[i, i]
        v[i, i] = np.where(np.isfinite(d), diagonal, np.nan) if v.dtype.kind == "f" else d
    ds[start:stop, start:] = v


def _mirror(ds: h5py.Dataset, block: int) -> None:
    """Copy the upper triangle onto the lower one, ``block`` rows at a time."""
    n = ds.shape[0]
    for s in range(0, n, block):
        e = min(s + block, n)
        # lower part of rows s:e = transpose of the upper part of columns s:e, rows 0:e
        col = ds[0:e, s:e]  # (e, e - s): rows 0..e-1, columns s..e-1
        rows = ds[s:e, 0:e]
        r = np.arange(s, e)[:, None]
        c = np.arange(0, e)[None, :]
        ds[s:e, 0:e] = np.where(c < r, col.T, rows)


def _summary_text(summary: dict[str, Any]) -> str:
    t = summary["timing_s"]
    lines = [
        f"fourier: merged {summary['n_frames_oriented']} frames into {summary['voxels_measured']} voxels "
        f"in {t['merge_wall']:.1f} s ({t['frames_per_s_per_worker'] or 0:.2f} frames/s per worker)",
        f"fourier: common-arc pairs with similarity {summary['pairs_with_similarity']}/{summary['pairs_total']} "
        f"(median overlap {summary['median_overlap']:.0f} voxels), {t['common_arc']:.1f} s",
    ]
    if "truth_correlation" in summary:
        tc = summary["truth_correlation"]
        lines.append(f"fourier: CC(merged, truth) = {tc['cc']:.3f} over {tc['voxels']} voxels")
    for name, rows in summary["auc"].items():
        aucs = ", ".join(f"{r['auc_max']:.3f}" for r in rows)
        lines.append(f"fourier: {name} diffusion coords ROC AUC max(AUC, 1-AUC): {aucs}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- files


def write_merged(
    path: Path, merged: MergeAccumulator, *, stamp: dict[str, Any], force: bool = False
) -> Path:
    """Write the merged map: ``intensity`` (NaN where unmeasured), ``counts``, ``sums``, axes."""
    grid = merged.grid
    names = ("h", "k", "l") if grid.extent == "hkl" else ("qx_per_nm", "qy_per_nm", "qz_per_nm")
    with atomic_path(path, force=force) as tmp, h5py.File(tmp, "w") as h5:
        opts = {"compression": "gzip", "compression_opts": 4, "chunks": True}
        h5.create_dataset("intensity", data=merged.intensity().astype(np.float32), **opts)
        h5.create_dataset("counts", data=merged.counts.reshape(grid.shape), **opts)
        h5.create_dataset("sums", data=merged.sums.reshape(grid.shape), **opts)
        for name in names:
            h5.create_dataset(name, data=grid.axis())
        h5["intensity"].attrs["axes"] = json.dumps(list(names))
        h5["intensity"].attrs["unit"] = "background-subtracted counts per (polarisation x sr)"
        h5.attrs.update({k: v for k, v in stamp.items()})
        h5.attrs["grid_size"] = grid.size
        h5.attrs["grid_extent"] = grid.extent
        h5.attrs["grid_half_width"] = grid.half_width
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
    scores: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write each model's diffusion coordinates and eigenvalues (group per model), and the
    per-frame scores (group ``frame_scores``: ``mean_z``, ``significance``, ``mean_cc``)."""
    with atomic_path(path, force=force) as tmp, h5py.File(tmp, "w") as h5:
        _ids(h5, plan)
        for name, dm in maps.items():
            g = h5.create_group(name)
            g.create_dataset("coords", data=dm.coords)
            g.create_dataset("eigenvalues", data=dm.eigenvalues)
            g.create_dataset("connected", data=dm.connected)
        if scores:
            g = h5.create_group("frame_scores")
            for name, v in scores.items():
                g.create_dataset(name, data=v)
        h5.attrs.update(stamp)
    return path


def read_truth(
    path: str | Path,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Read a 3D reference map and its axes from HDF5.

    The map is the 3D dataset named ``intensity`` (in any group, e.g. ``/diffuse/intensity``
    of :func:`hpcdiff.simulate.simulate_experiment`'s ``truth.h5``), else the first 3D
    dataset; its axes are the 1D datasets ``h``, ``k``, ``l`` beside it (or at the top
    level): uniformly spaced voxel centres in Miller-index units.

    Raises
    ------
    FormatError
        Naming the file and what is missing.
    """
    path = Path(path)
    with open_hdf5(path) as h5:
        cubes: list[str] = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and obj.ndim == 3:
                cubes.append(name)

        h5.visititems(visit)
        if not cubes:
            raise FormatError(path, "no 3D dataset (expected the map on an h, k, l grid)")
        named = [c for c in cubes if c.rsplit("/", 1)[-1] == "intensity"]
        name = named[0] if named else cubes[0]
        volume = np.asarray(h5[name][()], dtype=np.float64)
        group = name.rsplit("/", 1)[0] if "/" in name else ""
        axes = []
        for ax, n in zip(("h", "k", "l"), volume.shape, strict=True):
            cands = [k for k in (f"{group}/{ax}" if group else ax, ax) if k in h5]
            if not cands:
                raise FormatError(path, f"no axis dataset {ax!r} for the 3D map", dataset=name)
            a = np.asarray(h5[cands[0]][()], dtype=np.float64)
            if a.shape != (n,):
                raise FormatError(
                    path, f"axis {ax!r} has shape {a.shape}, expected ({n},)", dataset=cands[0]
                )
            axes.append(a)
    return volume, (axes[0], axes[1], axes[2])


def truth_correlation(merged: MergeAccumulator, truth_path: str | Path) -> tuple[float, int]:
    """Pearson CC between the merged map and a reference map, over measured voxels.

    The reference is sampled at the merged grid's voxel centres (nearest voxel).  Only
    grids in ``hkl`` are compared.
    """
    if merged.grid.extent != "hkl":
        raise ConfigError("truth comparison needs a merge grid in hkl (extent = 'hkl')")
    volume, axes = read_truth(truth_path)
    centres = merged.grid.axis()
    idx = []
    masks = []
    for a in axes:
        step = (a[-1] - a[0]) / max(len(a) - 1, 1)
        i = np.rint((centres - a[0]) / step).astype(np.int64)
        ok = (i >= 0) & (i < len(a))
        masks.append(ok)
        idx.append(np.clip(i, 0, len(a) - 1))
    sampled = volume[np.ix_(idx[0], idx[1], idx[2])]
    ok3 = masks[0][:, None, None] & masks[1][None, :, None] & masks[2][None, None, :]
    sampled = np.where(ok3, sampled, np.nan)
    return map_correlation(merged.intensity(), sampled)


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
    "chunk_to_work",
    "similarity_task",
    "run_fourier",
    "truth_correlation",
    "write_diffusion",
    "write_merged",
    "write_similarity",
]

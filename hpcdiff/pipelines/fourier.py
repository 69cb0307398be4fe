"""The Fourier job: merge frames into a 3D reciprocal-space grid, compare frames, diffusion maps.

Stages (each a pure function; dask only in :func:`run_fourier`):

1. :func:`~hpcdiff.pipelines.fourier_frames.plan_frames`: the frames with an orientation
   (CrystFEL stream chunks matched to frame files by name and event) chosen by ``[fourier]
   frames``, their photon energies, labels, the classify job's bad pixels.
2. :func:`~hpcdiff.pipelines.fourier_frames.process_frames` (one dask task per
   ``frames_per_task`` frames, via ``process_chunk``): each frame goes through the classify
   job's chain (:class:`~hpcdiff.pipelines.fourier_frames.FrameChain`: corrections,
   background, Bragg-peak mask, normalisation); its residual is divided by polarisation
   times solid angle at the frame's own detector distance and by the shot intensity, mapped
   to ``hkl`` with the frame's orientation and binned on the merge grid (a dense
   :class:`~hpcdiff.merge.MergeAccumulator` per task) and on the similarity grid (sparse, per
   frame); the normalised residual is downsampled for the image-space similarity.
3. The per-task accumulators are reduced in a dask tree, then ``scale_passes`` passes refine
   a scale per frame against the merged map and merge again
   (:func:`~hpcdiff.pipelines.fourier_frames.refine_scales`); per-frame sparse voxel sets
   become the sparse matrices of :mod:`hpcdiff.similarity`, whose row blocks run as dask tasks.
4. Diffusion maps of the common-arc and image-space similarities, ROC AUC of each
   coordinate against the labels, PNG plots.

Outputs (in ``out_dir``): ``merged.h5``, ``similarity.h5``, ``diffusion.h5``,
``diffusion_common_arc.png``, ``diffusion_image.png``, ``fourier_summary.json``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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
    Grid,
    MergeAccumulator,
    reciprocal_metric,
)
from hpcdiff.pipelines.fourier_frames import (
    ChainSettings,
    ChunkFrames,
    FramePlan,
    chunk_task,
    plan_frames,
    process_chunk,
    process_frames,
    refine_scales,
    scale_summary,
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
    image_downsample
        Mean-pooling factor of the image-space frames.
    chain
        The per-frame chain (the classify job's ``[corrections]``, ``[background]``,
        ``[experiment]``) and the merge's scale settings
        (:class:`~hpcdiff.pipelines.fourier_frames.ChainSettings`).
    """

    grid: Grid
    similarity_grid: Grid
    bragg_radius_hkl: float = 0.0
    image_downsample: int = 8
    chain: ChainSettings = field(default_factory=ChainSettings)

    @classmethod
    def from_job(cls, job: JobConfig, *, plan: FramePlan | None = None) -> FourierSettings:
        """Settings from the job's ``[fourier]`` section and the frame chain's sections.

        The grids come from :func:`hpcdiff.fourier_grid.grid_from_config`: a grid fitted
        to the cell and the detector's q range needs the frame ``plan`` (made here from
        the job when not given).
        """
        from hpcdiff.fourier_grid import grid_from_config, plan_q_max

        f = job.fourier
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
            image_downsample=f.image_downsample,
            chain=ChainSettings.from_job(job),
        )


# --------------------------------------------------------------------------- merging


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
    frame_scales = None
    for _ in range(settings.chain.scale_passes):  # per-frame scales against the merged map
        merged, frame_scales = refine_scales(
            client, plan, settings, merged, frames_per_task=fcfg.frames_per_task, log=log
        )
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
        "frames": {"choice": plan.frames, "n_oriented": plan.n_oriented, "n_chosen": n},
        "frame_scales": scale_summary(
            np.concatenate([p.shot for p in parts]), frame_scales, settings.chain.scale_min
        ),
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

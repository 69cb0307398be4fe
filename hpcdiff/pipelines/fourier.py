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
3. The per-task accumulators are folded in task order on the workers as the tasks finish,
   a few tasks in flight (:func:`~hpcdiff.parallel.dask_reduce.stream_reduce`: a worker
   holds a few 200^3 accumulators, not one per task, and spills nothing to dask's scratch
   folder), then ``scale_passes`` passes refine a scale per frame against the merged map
   and merge again (:func:`~hpcdiff.pipelines.fourier_frames.refine_scales`); per-frame
   sparse voxel sets become the sparse matrices of :mod:`hpcdiff.similarity`, whose row
   blocks run as dask tasks.
4. Diffusion maps of the common-arc and image-space similarities, ROC AUC of each
   coordinate against the labels, PNG plots.

Outputs (in ``out_dir``): ``merged.h5``, ``similarity.h5``, ``diffusion.h5``,
``diffusion_common_arc.png``, ``diffusion_image.png``, ``fourier_summary.json``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal

import h5py
import numpy as np

from hpcdiff.bragg_radius import bragg_radius_text
from hpcdiff.config import JobConfig
from hpcdiff.diffusion import (
    DiffusionMap,
    coordinate_aucs,
    diffusion_map_of_points,
    diffusion_map_sparse,
    knn_kernel,
    plot_diffusion,
    profile_points,
    roc_auc,
)
from hpcdiff.errors import ConfigError, FormatError
from hpcdiff.fourier_truth import (
    check_truth_grid,
    load_truth,
    read_truth,
    truth_correlation,
    truth_summary,
)
from hpcdiff.io.outputs import atomic_path, provenance, write_json
from hpcdiff.map_smooth import SmoothingChoice, smoothed_mean, smoothing_for
from hpcdiff.merge import (
    FrameVoxels,
    Grid,
    MergeAccumulator,
    reciprocal_metric,
)
from hpcdiff.merge_sparse import SparseAccumulator, add_into, compact
from hpcdiff.noise_model import noise_summary
from hpcdiff.parallel.signals import Preempted
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
from hpcdiff.pipelines.fourier_work import (
    BlockFolder,
    ChunkData,
    FourierWork,
    SimilarityRows,
)
from hpcdiff.pipelines.layout import FourierLayout
from hpcdiff.pipelines.requeue import refuse_finished, refuse_strays
from hpcdiff.similarity import (
    SimilarityBlock,
    blocks,
    common_arc_rows,
    image_pairs,
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
    bragg_radius_per_nm
        Pixels this close in ``|q|`` (nm^-1) to a reciprocal-lattice point are left out too.
    bragg_excitation_per_nm
        With ``bragg_radius_per_nm``: only points this close (nm^-1) to the frame's Ewald
        sphere are masked (None: all).
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
    bragg_radius_per_nm: float = 0.0
    bragg_excitation_per_nm: float | None = None
    chain: ChainSettings = field(default_factory=ChainSettings)
    bragg_profile: dict[str, Any] | None = None  # "auto" radius: what measured it

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
        settings = cls(
            grid=grid,
            similarity_grid=similarity_grid,
            bragg_radius_hkl=f.mask_bragg_radius_hkl,
            bragg_radius_per_nm=0.0
            if f.mask_bragg_radius_per_nm == "auto"
            else f.mask_bragg_radius_per_nm,
            bragg_excitation_per_nm=f.mask_bragg_excitation_per_nm,
            image_downsample=f.image_downsample,
            chain=ChainSettings.from_job(job),
        )
        if f.mask_bragg_radius_per_nm == "auto":  # measured on the job's frames
            from hpcdiff.bragg_radius import measure_bragg_radius

            prof = measure_bragg_radius(plan if plan is not None else plan_frames(job), settings)
            settings = replace(
                settings, bragg_radius_per_nm=prof.radius, bragg_profile=prof.to_dict()
            )
        return settings


# --------------------------------------------------------------------------- merging


def merge_into(
    first: MergeAccumulator | SparseAccumulator, *rest: MergeAccumulator | SparseAccumulator
) -> MergeAccumulator:
    """``first`` with ``rest`` added in place (a compact ``first`` made dense first): the
    step of the merge's streaming reduction
    (:func:`~hpcdiff.parallel.dask_reduce.stream_reduce`), where each accumulator is the
    input of one step only and is released after it.  The same sums, bit for bit, as
    ``a + b + ...`` (:meth:`MergeAccumulator.__add__`) of the dense accumulators, without
    its copies."""
    total = first.dense() if isinstance(first, SparseAccumulator) else first
    for a in rest:
        add_into(total, a)
    return total


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
        ``image_distance``, ``image_correlation``).

        Raises
        ------
        KeyError
            Above ``[fourier] dense_similarity_max_frames`` frames the file has no dense
            matrices (only per-frame scores, the kNN graph and the overlaps' summary).
        """
        with h5py.File(self.outputs["similarity"], "r") as h5:
            if name not in h5:
                raise KeyError(
                    f"{self.outputs['similarity']} has no dense {name!r} (more frames than "
                    f"[fourier] dense_similarity_max_frames = "
                    f"{h5.attrs.get('dense_similarity_max_frames')}); see its knn/ group"
                )
            return np.asarray(h5[name][()])


def chunk_to_work(
    plan: FramePlan, start: int, stop: int, *, settings: FourierSettings, work: FourierWork
) -> tuple[MergeAccumulator | SparseAccumulator, dict[str, Any]]:
    """One merge task: :func:`chunk_task`, its per-frame data written to ``work``.

    Returns the accumulator in the voxels the task touched
    (:func:`~hpcdiff.merge_sparse.compact`; folded on the workers) and a small record: the task's
    rows, seconds, which image pixels are finite in every frame of the task, and the
    frames' shot intensities.
    """
    acc, part = chunk_task(plan, start, stop, settings=settings)
    work.write_chunk(start, stop, ChunkData(part.numbers, part.similarity_frames, part.images))
    finite = np.all(np.isfinite(part.images), axis=0)
    return compact(acc), {
        "start": start,
        "stop": stop,
        "seconds": part.seconds,
        "finite": finite,
        "shot": np.asarray(part.shot, np.float64),
        "noise_ratio": np.asarray(part.noise_ratio, np.float64),
    }


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


FOLD_CHECKPOINT_S = 60.0
"""Least seconds between two saves of the folded similarity results (above
``dense_similarity_max_frames``); a stop signal and the end of the stage always save."""


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
    report: Callable[[FourierResult], Path | None] | None = None,
) -> FourierResult:
    """Run the Fourier job on a connected dask client and write its outputs.

    Stages: merge tasks in waves of ``[fourier] checkpoint_tasks`` (the accumulator saved
    after each), similarity row blocks (each saved when it arrives; above
    ``[fourier] dense_similarity_max_frames`` folded into per-frame partial results
    instead, :class:`~hpcdiff.pipelines.fourier_work.SimilarityFold`), then the outputs,
    the report (``report``), the summary last, and the working folder removed.  A rerun of the same job resumes from
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
    report
        Writes the run's report (e.g. the HTML report of
        :func:`hpcdiff.pipelines.reports.write_fourier_report`) from the finished result,
        after the other outputs and before the summary: a kill before the summary leaves
        the working folder, and the rerun writes the report and the summary.

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
    work = FourierWork(files.work, _work_hash(job))
    resumed = _prepare_outputs(files, work, n_frames=n, force=force)
    print(
        f"fourier: {n} oriented frames of {plan.n_frames_total}; grid {_grid_text(settings.grid)}, "
        f"similarity grid {_grid_text(settings.similarity_grid)}"
        + (f"; resuming from {work.root}" if resumed else ""),
        file=log,
        flush=True,
    )
    if settings.bragg_profile is not None:
        print(bragg_radius_text(settings.bragg_profile), file=log, flush=True)

    # 1. merge: tasks in waves; after each wave the accumulator is saved
    t0 = time.perf_counter()
    chunks = blocks(n, fcfg.frames_per_task)
    saved = work.load_merge(settings.grid) if resumed else None
    on_disk = work.chunks_on_disk()
    weighted = settings.chain.weighted
    empty = MergeAccumulator.empty(settings.grid, weighted=weighted, halves=True)
    merged, done = saved if saved is not None else (empty, [])
    done = [c for c in done if c in on_disk]  # a chunk counts only with its frames on disk
    if saved is not None and (
        len(done) != len(saved[1]) or saved[0].weighted != weighted or not saved[0].has_halves
    ):
        merged, done = empty, []
    todo = [c for c in chunks if c not in set(done)]
    finite = work.load_finite() if done else None
    shots = work.load_shots(n) if done else np.full(n, np.nan)
    noise_ratios = work.load_per_frame("noise_ratio", n) if done else np.full(n, np.nan)
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
            reduce=merge_into,
            label=f"merge (wave {w + 1}/{len(waves)})",
            log=log,
            settings=settings,
            work=work,
        )
        assert mapped.reduced is not None
        merged = add_into(merged, mapped.reduced)  # in place: the client's own copy
        for rec in mapped.parts:
            task_s += float(rec["seconds"])
            finite = rec["finite"] if finite is None else finite & rec["finite"]
            shots[int(rec["start"]) : int(rec["stop"])] = rec["shot"]
            noise_ratios[int(rec["start"]) : int(rec["stop"])] = rec["noise_ratio"]
        done = done + list(wave)
        assert finite is not None
        work.save_finite(finite)
        work.save_shots(shots)
        work.save_per_frame("noise_ratio", noise_ratios)
        work.save_merge(merged, done)
        del mapped
        if w < len(waves) - 1:
            _check_stop(stop, "during the merge", work)
    t_merge = time.perf_counter() - t0
    _check_stop(stop, "after the merge", work)
    noise = noise_summary(noise_ratios)
    if noise["warning"]:
        print(f"fourier: warning: {noise['warning']}", file=log, flush=True)
    if finite is None:
        finite = work.load_finite()
    merged_sym = merged.symmetrised(fcfg.symmetrise)
    frame_scales = None
    for _ in range(settings.chain.scale_passes):  # per-frame scales against the merged map
        refined, frame_scales = refine_scales(
            client,
            plan,
            settings,
            merged_sym,
            frames_per_task=fcfg.frames_per_task,
            wave_tasks=fcfg.checkpoint_tasks,
            log=log,
        )
        if refined is not None:  # None: every frame kept with scale 1
            merged_sym = refined.symmetrised(fcfg.symmetrise)

    # 2. similarity row blocks: saved as they arrive when the dense matrices are written,
    #    else folded as they arrive into per-frame partial results (SimilarityFold)
    t0 = time.perf_counter()
    sblocks = blocks(n, fcfg.similarity_block)
    dense = n <= fcfg.dense_similarity_max_frames
    fold = work.load_fold(n=n, k=fcfg.diffusion_knn, dims=fcfg.profile_dims, form=fcfg.profile_form)
    keep = finite.reshape(-1)
    folder: BlockFolder | None = None
    if dense:
        have = work.blocks_done()
        missing = [b for b in sblocks if b not in have]
    else:
        folder = BlockFolder(work, fold, sblocks, checkpoint_s=FOLD_CHECKPOINT_S)
        missing = folder.missing()
    n_reused = len(sblocks) - len(missing)
    if missing:

        def save(_i: int, rows: SimilarityRows) -> None:
            work.save_block(rows)

        def stopped() -> None:
            if folder is not None:
                folder.checkpoint()
            _check_stop(stop, "during the similarity", work)

        for_each_block(
            client,
            similarity_task,
            work,
            missing,
            on_result=save if folder is None else folder,
            stop=stop,
            stopped=stopped,
            label="similarity",
            log=log,
            n=n,
            chunks=chunks,
            n_voxels=settings.similarity_grid.n_voxels,
            min_overlap=fcfg.min_overlap,
            column_block=fcfg.similarity_column_block,
            keep=keep,
        )
        if folder is not None:
            folder.checkpoint()  # all folded: a kill from here on recomputes nothing
    t_sim = time.perf_counter() - t0
    _check_stop(stop, "after the similarity", work)

    # 3. similarity.h5 (the dense matrices in one pass over the saved blocks), scores,
    #    sketch, kNN
    t0 = time.perf_counter()
    stamp = provenance(job.config_hash(), job=json.dumps(job.to_dict(), sort_keys=True))
    outputs: dict[str, Path] = {}
    with atomic_path(files.similarity, force=True) as tmp, h5py.File(tmp, "w") as h5:
        _ids(h5, plan)
        ds: dict[str, h5py.Dataset] = {}
        if dense:
            opts: dict[str, Any] = {"chunks": (min(fcfg.similarity_block, n), min(n, 1024))}
            for name, dtype in (
                ("common_arc", np.float64),
                ("overlap", np.int32),
                ("image_distance", np.float64),
                ("image_correlation", np.float64),
            ):
                ds[name] = h5.create_dataset(name, (n, n), dtype, **opts)
            h5["common_arc"].attrs["description"] = (
                "Pearson CC over common voxels; NaN below min_overlap"
            )
            h5["common_arc"].attrs["min_overlap"] = fcfg.min_overlap
            for rows in work.iter_blocks(sblocks):
                s, e = rows.start, rows.stop
                fold.add(rows)
                _write_upper(ds["common_arc"], s, e, rows.common_arc.similarity, diagonal=1.0)
                _write_upper(ds["overlap"], s, e, rows.common_arc.overlap, diagonal=None)
                _write_upper(
                    ds["image_distance"], s, e, rows.image_distance.similarity, diagonal=0.0
                )
                _write_upper(
                    ds["image_correlation"], s, e, rows.image_correlation.similarity, diagonal=1.0
                )
        h5.attrs["dense_matrices"] = dense
        h5.attrs["dense_similarity_max_frames"] = fcfg.dense_similarity_max_frames
        for d in ds.values():
            _mirror(d, fcfg.similarity_block)
        scores, sketch = fold.scores(), fold.sketch()
        knn_arc, knn_dist, knn_corr = fold.knn_arc, fold.knn_dist, fold.knn_corr
        overlap_hist, overlap_sum, pairs_with = fold.overlap_hist, fold.overlap_sum, fold.pairs_with
        for name, knn in (
            ("common_arc", knn_arc),
            ("image_distance", knn_dist),
            ("image_correlation", knn_corr),
        ):
            kidx, kval = knn.result()
            g = h5.create_group(f"knn/{name}")
            g.create_dataset("indices", data=kidx)
            g.create_dataset("values", data=kval)
            g.attrs["description"] = (
                f"each frame's {knn.k} nearest frames by {name} "
                f"({'largest' if knn.largest else 'smallest'} first; -1 / NaN where missing)"
            )
        mean_overlap = overlap_sum / max(n - 1, 1)
        h5.create_dataset("mean_overlap", data=mean_overlap)
        h5["mean_overlap"].attrs["description"] = "per frame: mean common voxels to the others"
        h5.attrs["overlap_quantiles"] = _hist_quantiles(overlap_hist, (0.0, 0.25, 0.5, 0.75, 1.0))
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
    score_name = "mean_cc" if fcfg.profile_form == "cc" else "mean_z"
    points = profile_points(
        sketch,
        score=scores.mean_cc if score_name == "mean_cc" else scores.mean_z,
        n_components=fcfg.profile_components,
        score_weight=fcfg.profile_score_weight,
    )
    maps["common_arc"], eps["common_arc"] = diffusion_map_of_points(
        points, k=fcfg.diffusion_knn, n_coords=k, epsilon=fcfg.diffusion_epsilon
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

    frame_score = {
        "mean_z": scores.mean_z,
        "significance": scores.significance,
        "mean_cc": scores.mean_cc,
    }
    summary: dict[str, Any] = {
        "n_frames_oriented": n,
        "n_frames_total": plan.n_frames_total,
        "n_multi_crystal_chunks": plan.n_multi_crystal,
        "frames": {"choice": plan.frames, "n_oriented": plan.n_oriented, "n_chosen": n},
        "frame_scales": scale_summary(shots, frame_scales, settings.chain.scale_min),
        "bragg_radius": settings.bragg_profile
        or {"rule": "fixed", "radius_per_nm": settings.bragg_radius_per_nm},
        "noise_model": noise,
        "n_workers": worker_count(client),
        "grid": settings.grid.to_dict(),
        "similarity_grid": settings.similarity_grid.to_dict(),
        "voxels_measured": int(np.count_nonzero(merged_sym.counts)),
        "pairs_with_similarity": pairs_with,
        "pairs_total": n * (n - 1) // 2,
        "median_overlap": _hist_quantiles(overlap_hist, (0.5,))[0],
        "similarity_output": {
            "dense_matrices": dense,
            "dense_similarity_max_frames": fcfg.dense_similarity_max_frames,
            "knn": fcfg.diffusion_knn,
        },
        "diffusion": {
            "kernel": "sparse Gaussian on each frame's diffusion_knn nearest neighbours",
            "knn": fcfg.diffusion_knn,
            "epsilon": eps,
            "epsilon_rule": "given" if fcfg.diffusion_epsilon is not None else "median heuristic",
            "common_arc_points": f"sketch of the common-arc profiles ({fcfg.profile_form}; "
            f"{fcfg.profile_dims} dims, {fcfg.profile_components} principal components)",
            "common_arc_score": {
                "score": score_name,
                "weight": fcfg.profile_score_weight,
                "rule": "standardised per-frame score as one coordinate beside the principal "
                "components (first scaled to unit spread); weight 0: components only",
            },
            "eigenvalues": {name: dm.eigenvalues.tolist() for name, dm in maps.items()},
        },
        "image_kernel_epsilon": eps["image"],
        "resumed": {
            "merge_tasks_reused": len(chunks) - len(todo),
            "similarity_blocks_reused": n_reused,
        },
        "timing_s": {
            "merge_wall": t_merge,
            "merge_task_sum": task_s,
            "frames_per_s_per_worker": sum(e - s for s, e in todo) / task_s if task_s > 0 else None,
            "common_arc": t_sim,
            # common arc and image space, one task per block (reused blocks included)
            "similarity_task_sum": fold.task_seconds,
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
    smoothing, intensity = smoothed_map(
        merged_sym, fcfg.map_smooth_sigma_voxels, rule=fcfg.map_smooth_rule
    )
    summary["map_smoothing"] = smoothing.to_dict()
    if merged_sym.half_a is not None:
        summary["cc_half"] = half_map_summary(
            merged_sym,
            metric=reciprocal_metric(plan.orientations),
            n_shells=fcfg.truth_shells,
            sigma_voxels=smoothing.sigma_voxels,
        )
    if truth is not None:
        summary["truth_correlation"] = truth_summary(
            merged_sym,
            truth,
            metric=reciprocal_metric(plan.orientations),
            n_shells=fcfg.truth_shells,
            isotropic_shell_width_per_nm=fcfg.truth_isotropic_shell_width_per_nm,
            intensity=intensity,
        )
        if smoothing.sigma_voxels > 0:
            raw = truth_summary(
                merged_sym,
                truth,
                metric=reciprocal_metric(plan.orientations),
                n_shells=fcfg.truth_shells,
                isotropic_shell_width_per_nm=fcfg.truth_isotropic_shell_width_per_nm,
            )
            summary["truth_correlation"]["unsmoothed"] = {
                k: raw[k] for k in ("cc", "isotropic_removed", "shells") if k in raw
            }

    # 5. outputs (this job's unfinished ones are overwritten), the summary last
    outputs["merged"] = write_merged(
        files.merged, merged_sym, stamp=stamp, force=True, intensity=intensity, smoothing=smoothing
    )
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
    result = FourierResult(
        merged_sym,
        maps,
        frame_score,
        summary,
        outputs,
        frame_ids=plan.frame_ids,
        labels=plan.labels,
    )
    if report is not None:  # before the summary: the summary marks the set complete
        report(result)
    outputs["summary"] = write_json(files.summary, summary, force=True)
    work.remove()
    print(_summary_text(summary), file=log, flush=True)
    return result


def _hist_quantiles(hist: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """Quantiles of integer values given as counts per value (``hist[v]``; 0 if empty);
    the median of an even count is the mean of the two middle values, as ``np.median``."""
    total = int(hist.sum())
    if total == 0:
        return [0.0 for _ in qs]
    cum = np.cumsum(hist)
    out = []
    for q in qs:
        pos = q * (total - 1)  # numpy's linear interpolation between order statistics
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        vlo = int(np.searchsorted(cum, lo + 1))
        vhi = int(np.searchsorted(cum, hi + 1))
        out.append(float(vlo + (vhi - vlo) * (pos - lo)))
    return out


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
    br = summary.get("bragg_radius") or {}
    if br.get("rule") == "auto":
        lines.append(bragg_radius_text(br))
    sm = summary.get("map_smoothing", {})
    if sm:
        lines.append(f"fourier: map smoothing sigma {sm['sigma_voxels']:g} voxels ({sm['method']})")
    if "cc_half" in summary:
        half = summary["cc_half"]
        lines.append(
            f"fourier: CC1/2 (half-maps) = {_cc_text(half['cc'])}, "
            f"CC* = {_cc_text(half.get('cc_star'))}"
        )
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
    raw = tc.get("unsmoothed")
    if raw:
        lines.append(f"fourier: unsmoothed voxel means CC = {_cc_text(raw.get('cc'))}")
    return lines


def _grid_text(grid: Grid) -> str:
    shape = "x".join(str(s) for s in grid.shape)
    widths = ", ".join(f"+-{w:.3g}" for w in grid.half_widths)
    return f"{shape} ({grid.extent} {widths})"


# --------------------------------------------------------------------------- files


#: Fewest frames in each half for the half-map rule (else leave-one-out).
HALF_MAP_MIN_FRAMES = 2


def smoothed_map(
    merged: MergeAccumulator,
    sigma_voxels: float | None,
    *,
    rule: Literal["half-maps", "leave-one-out"] = "leave-one-out",
) -> tuple[SmoothingChoice, np.ndarray]:
    """The merged map smoothed as ``[fourier] map_smooth_sigma_voxels`` says (None: the width
    chosen by ``rule``, ``[fourier] map_smooth_rule``, :mod:`hpcdiff.map_smooth`): across the
    half-maps (``merged.half_a`` and :meth:`~hpcdiff.merge.MergeAccumulator.half_b`, each of at
    least :data:`HALF_MAP_MIN_FRAMES` frames), else by leave-one-voxel-out.

    Returns
    -------
    (SmoothingChoice, np.ndarray)
        The width used and the ``grid.shape`` float64 map, NaN where nothing was merged.
    """
    shape = merged.grid.shape
    sums, counts = merged.sums.reshape(shape), merged.denominator().reshape(shape)
    halves = None
    if rule == "half-maps" and merged.half_a is not None and sigma_voxels is None:
        a, b = merged.half_a, merged.half_b()
        if min(a.n_frames, b.n_frames) >= HALF_MAP_MIN_FRAMES:
            halves = (
                a.sums.reshape(shape),
                a.denominator().reshape(shape),
                b.sums.reshape(shape),
                b.denominator().reshape(shape),
            )
    choice = smoothing_for(
        sums, counts, sigma_voxels="auto" if sigma_voxels is None else sigma_voxels, halves=halves
    )
    return choice, smoothed_mean(sums, counts, sigma_voxels=choice.sigma_voxels)


def half_map_summary(
    merged: MergeAccumulator, *, metric: np.ndarray, n_shells: int, sigma_voxels: float = 0.0
) -> dict[str, Any]:
    """The ``cc_half`` entry of ``fourier_summary.json``: the correlation of the two
    half-maps' unsmoothed voxel means (``CC1/2``; frames split by
    :func:`~hpcdiff.merge.frame_half`), overall and
    per resolution shell (shells of equal volume up to the largest compared ``|q|``, as in
    ``truth_correlation``), with the full map's estimate ``2 CC / (1 + CC)`` and
    ``cc_star`` (:func:`hpcdiff.map_smooth.cc_star`: the correlation with the signal the data
    allow, to set beside ``truth_correlation``); with ``sigma_voxels > 0`` the same for the
    half-maps smoothed alike (``smoothed``: the bound for the smoothed map the job writes).

    Parameters
    ----------
    merged
        A merge with its half-maps (``merged.half_a``).
    metric
        ``(3, 3)`` reciprocal metric of the crystals, nm^-2 (unused for a grid in ``q``).
    n_shells
        Resolution shells.
    sigma_voxels
        Width (voxels) of the job's map smoothing; > 0 adds ``smoothed``.
    """
    from hpcdiff.fourier_truth import compare_maps, isotropic_width, voxel_q_abs
    from hpcdiff.map_smooth import cc_star

    if merged.half_a is None:
        raise ValueError("the merge keeps no half-maps")
    a, b = merged.half_a, merged.half_b()
    q_abs = voxel_q_abs(merged.grid, metric)
    width = isotropic_width(merged.grid, metric)

    def compared(map_a: np.ndarray, map_b: np.ndarray) -> dict[str, Any]:
        out = compare_maps(
            map_a, map_b, q_abs, n_shells=n_shells, isotropic_shell_width_per_nm=width
        )
        return {
            "cc": out["cc"],
            "cc_star": cc_star(out["cc"]),
            "voxels": out["voxels"],
            "shells": [
                {
                    **{k: row[k] for k in ("q_min_nm_inv", "q_max_nm_inv", "cc", "voxels")},
                    "cc_star": cc_star(row["cc"]),
                }
                for row in out["shells"]
            ],
        }

    raw = compared(a.intensity(), b.intensity())
    cc = raw["cc"]
    summary: dict[str, Any] = {
        "cc": cc,
        "voxels": raw["voxels"],
        "cc_full_estimate": None if cc is None or cc <= -1 else 2 * cc / (1 + cc),
        "cc_star": raw["cc_star"],
        "frames": [a.n_frames, b.n_frames],
        "split": "by a hash of the global frame number (hpcdiff.merge.frame_half); "
        "unsmoothed voxel means",
        "shells": raw["shells"],
    }
    if sigma_voxels > 0:
        shape = merged.grid.shape
        maps = [
            smoothed_mean(
                h.sums.reshape(shape), h.denominator().reshape(shape), sigma_voxels=sigma_voxels
            )
            for h in (a, b)
        ]
        summary["smoothed"] = {"sigma_voxels": float(sigma_voxels), **compared(*maps)}
    return summary


def write_merged(
    path: Path,
    merged: MergeAccumulator,
    *,
    stamp: dict[str, Any],
    force: bool = False,
    intensity: np.ndarray | None = None,
    smoothing: SmoothingChoice | None = None,
) -> Path:
    """Write the merged map: ``intensity`` (NaN where unmeasured), ``counts``, ``sums``, axes.

    ``intensity`` is the given map (the smoothed map of :func:`smoothed_map`, its width in
    the dataset's ``smooth_sigma_voxels`` attribute) or the voxel means; ``intensity_raw``
    always holds the voxel means ``sums / counts``, or for a weighted merge the weighted
    means ``sums / weights`` (``weights`` written too).  Attributes ``grid_shape``,
    ``grid_half_widths``, ``grid_steps`` (per axis) and ``grid_extent`` describe the grid;
    the axes datasets hold the voxel centres.
    """
    grid = merged.grid
    names = ("h", "k", "l") if grid.extent == "hkl" else ("qx_per_nm", "qy_per_nm", "qz_per_nm")
    axes = grid.axes()
    with atomic_path(path, force=force) as tmp, h5py.File(tmp, "w") as h5:
        opts = {"compression": "gzip", "compression_opts": 4, "chunks": True}
        raw = merged.intensity().astype(np.float32)
        shown = raw if intensity is None else np.asarray(intensity).astype(np.float32)
        if shown.shape != grid.shape:
            raise ValueError(f"intensity {shown.shape} is not the grid's {grid.shape}")
        h5.create_dataset("intensity", data=shown, **opts)
        h5["intensity"].attrs["smooth_sigma_voxels"] = (
            0.0 if smoothing is None else smoothing.sigma_voxels
        )
        h5.create_dataset("intensity_raw", data=raw, **opts)
        h5.create_dataset("counts", data=merged.counts.reshape(grid.shape), **opts)
        h5.create_dataset("sums", data=merged.sums.reshape(grid.shape), **opts)
        if merged.weights is not None:  # sums are weighted: intensity_raw = sums / weights
            h5.create_dataset("weights", data=merged.weights.reshape(grid.shape), **opts)
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


__all__ = [
    "ChunkFrames",
    "FourierResult",
    "FourierSettings",
    "FramePlan",
    "merge_into",
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
    "half_map_summary",
    "HALF_MAP_MIN_FRAMES",
    "write_similarity",
]

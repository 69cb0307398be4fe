"""The classify job under MPI: features, training and prediction, frames split across ranks.

Every command runs the same distributed frame stage (:func:`_frame_stage`): the root
checks the inputs and the output folder once and tells the other ranks
(:func:`~hpcdiff.parallel.mpi.root_decides`); each rank binds its GPU by node-local rank
(:func:`~hpcdiff.parallel.placement.setup_rank`), reads its contiguous block of frames with a prefetching reader thread, removes the
background, computes VGG16 features and writes checkpoint shards
(:func:`~hpcdiff.parallel.frame_loop.distributed_map`).  Then:

``features`` (:func:`run_features`)
    the root streams the shards into one features file ordered by frame.
``train`` (:func:`run_train`)
    the root writes the features file as ``features`` does; the collect hook
    (:func:`~hpcdiff.parallel.collect.collect_rows`) brings the training rows to the root,
    gathered (``learn.pca_from = "gather"``: ``Gatherv`` of float32 rows and frame numbers)
    or as PCA statistics (``"statistics"``: count, sum and Gram matrix reduced with
    ``Reduce``; every rank projects its own rows on the broadcast axes and only the
    projections are gathered).  The root fits with :func:`hpcdiff.learn.fit_model` (the
    serial ``learn.train``'s fit), prints the precision/recall table, writes the model and
    its report, and broadcasts the model.
``predict`` (:func:`run_predict`)
    the model is broadcast, each rank predicts its own frames into its shards, and the
    root writes one predictions file ordered by frame.

Outputs in ``output.dir`` (``KIND`` is ``features``, ``train`` or ``predict``):
``KIND.shards/`` (checkpoints, removed after success), ``KIND-rejects.jsonl`` (one JSON
object per unusable frame or file: ``file``, ``index`` (``null`` for a whole file),
``reason``), ``KIND-run.json`` (the run report), and the results: ``features.h5``;
``model.npz`` (or ``output.model``), ``train-report.json`` and ``features.h5``;
``predictions.h5`` with ``predictions.csv`` and ``diffuse.lst`` beside it
(:mod:`hpcdiff.io.prediction_lists`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcdiff.backend_check import preprocess_gpu
from hpcdiff.config import JobConfig
from hpcdiff.corrections import read_pedestal_and_gain
from hpcdiff.errors import ConfigError, FormatError, HpcdiffError
from hpcdiff.io.outputs import atomic_path, provenance, write_json
from hpcdiff.parallel.collect import (
    Collected,
    collect_rows,
    gather_to_root,
    local_range,
    on_root,
    root_decides,
)
from hpcdiff.parallel.device_feed import DeviceUpload
from hpcdiff.parallel.frame_loop import FrameBatch, LoopOutcome, distributed_map
from hpcdiff.parallel.mpi import Comm
from hpcdiff.parallel.placement import RankInfo, setup_rank
from hpcdiff.parallel.reader_pool import rank_raw_frames
from hpcdiff.parallel.shards import ShardStore
from hpcdiff.parallel.stream_handoff import stream_ready
from hpcdiff.pipelines.layout import ClassifyLayout
from hpcdiff.progress import Timings, timings_table

log = logging.getLogger("hpcdiff.classify")


class TooManyRejects(HpcdiffError):
    """More frames were rejected than ``parallel.max_reject_fraction`` allows.

    Raised on every rank at the end of the job, after every output was written.
    """

    collective = True


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class RunFiles:
    """The run's readable frame files and the files that could not be opened."""

    files: tuple[str, ...]
    frames_per_file: tuple[int, ...]
    file_rejects: tuple[dict[str, Any], ...] = ()

    @property
    def n_frames(self) -> int:
        return int(sum(self.frames_per_file))


def _geometry(job: JobConfig) -> Any:
    if job.experiment.geometry is None:
        return None
    from hpcdiff.io.geom import read_geom

    return read_geom(job.experiment.geometry)


def probe_files(job: JobConfig) -> RunFiles:
    """Open each frame file once: keep the readable ones, record the others as rejects.

    Raises
    ------
    ConfigError
        If the job names no frame files, or none of them can be read.
    """
    from hpcdiff.io.sources import open_job_source

    files = [str(f) for f in job.frame_files()]
    if not files:
        raise ConfigError(f"{job.source}: [experiment.frames] names no frame files")
    geom = _geometry(job)
    good: list[str] = []
    counts: list[int] = []
    rejects: list[dict[str, Any]] = []
    for f in files:
        try:
            with open_job_source(job, [f], geometry=geom) as src:
                counts.append(src.n_frames)
            good.append(f)
        except (OSError, FormatError, ValueError, KeyError, ImportError) as exc:
            rejects.append({"file": f, "index": None, "reason": f"cannot read file: {exc}"})
            log.warning("rejecting %s: %s", f, exc)
    if not good:
        raise ConfigError(
            f"{job.source}: none of the {len(files)} frame files can be read; first: "
            f"{rejects[0]['reason']}"
        )
    return RunFiles(tuple(good), tuple(counts), tuple(rejects))


class FrameReader:
    """``read(start, stop) -> FrameBatch`` for the prefetch thread, with rejects.

    A range that fails to read is retried frame by frame; frames that still fail, or that
    hold NaN/inf pixels, become rejects (global frame, reason) instead of results.
    ``masks`` (:class:`hpcdiff.pixel_masks.PixelMasks`): pixels its per-frame mask
    datasets mark bad become NaN (after the NaN check), i.e. invalid.
    """

    def __init__(
        self,
        source: Any,
        *,
        timings: Timings | None = None,
        masks: Any = None,
        raw: Callable[[int, int], np.ndarray] | None = None,
    ) -> None:
        self.source = source
        self.timings = timings if timings is not None else Timings()
        self.masks = masks if masks is not None and masks.frame_masks else None
        # raw: read_raw of hpcdiff.parallel.reader_pool.RawFrames (reader processes)
        self.raw = raw

    def _read(self, start: int, stop: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with self.timings.section("read", stop - start):
            # frames in their stored dtype (int16 ADU stays int16): preprocessing widens once
            read = self.raw or getattr(self.source, "read_raw", self.source.read)
            return read(start, stop), self.source.frame_values(start, stop)

    def __call__(self, start: int, stop: int) -> FrameBatch:
        rejects: list[tuple[int, str]] = []
        try:
            frames, values = self._read(start, stop)
            numbers = np.arange(start, stop, dtype=np.int64)
        except (OSError, FormatError, ValueError, KeyError):
            parts, vals, nums = [], [], []
            for i in range(start, stop):
                try:
                    f, v = self._read(i, i + 1)
                except (OSError, FormatError, ValueError, KeyError) as exc:
                    rejects.append((i, f"cannot read frame: {exc}"))
                    continue
                parts.append(f)
                vals.append(v)
                nums.append(i)
            shape = (0, *self.source.slab_shape)
            frames = np.concatenate(parts) if parts else np.empty(shape, np.float32)
            numbers = np.asarray(nums, dtype=np.int64)
            values = {k: np.concatenate([v[k] for v in vals]) for k in (vals[0] if vals else {})}
        if np.issubdtype(frames.dtype, np.integer):  # integers are always finite
            finite = np.ones(len(frames), dtype=bool)
        else:
            finite = np.isfinite(frames.reshape(len(frames), -1)).all(axis=1)
        if not finite.all():
            for k in np.flatnonzero(~finite):
                rejects.append((int(numbers[k]), "frame holds NaN or inf pixel values"))
            frames, numbers = frames[finite], numbers[finite]
            values = {k: v[finite] for k, v in values.items()}
        if self.masks is not None and len(numbers):
            frames, numbers, values = self._mask(frames, numbers, values, rejects)
        return FrameBatch(start, stop, frames, numbers, values, sorted(rejects))

    def _mask(
        self,
        frames: np.ndarray,
        numbers: np.ndarray,
        values: dict[str, np.ndarray],
        rejects: list[tuple[int, str]],
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """NaN where the per-frame masks say bad; a frame whose mask cannot be read is a reject."""
        ids, masks = self.source.frame_ids, self.masks
        assert masks is not None
        if not np.issubdtype(frames.dtype, np.floating):  # int16 ADU: NaN needs a float
            frames = frames.astype(np.float32)
        keep = np.ones(len(numbers), dtype=bool)
        for k, n in enumerate(numbers.tolist()):
            try:
                bad = masks.read_frame_bad([ids[n]])
            except (OSError, FormatError) as exc:
                rejects.append((int(n), f"cannot read mask: {exc}"))
                keep[k] = False
                continue
            frames[k][bad[0]] = np.nan
        if keep.all():
            return frames, numbers, values
        return frames[keep], numbers[keep], {k: v[keep] for k, v in values.items()}


class Featurizer:
    """Frames -> CNN images -> VGG16 features, timing each stage.

    Parameters
    ----------
    job
        Background, corrections and features settings.
    model
        The detector (:class:`hpcdiff.geometry.DetectorModel`).
    device
        Torch device of this rank.
    timings
        Where ``preprocess`` and ``features`` times go.
    bad_pixel_mask, pedestal, gain
        ``(n_ss, n_fs)`` maps for :class:`hpcdiff.preprocess.Preprocessor`, or ``None``.
    threads
        CPU threads of the preprocessor for numpy frames (the rank's ``threads``).
    """

    def __init__(
        self,
        job: JobConfig,
        *,
        model: Any,
        device: str,
        timings: Timings,
        bad_pixel_mask: np.ndarray | None = None,
        pedestal: np.ndarray | None = None,
        gain: np.ndarray | None = None,
        threads: int = 1,
    ) -> None:
        from hpcdiff.features import FeatureExtractor
        from hpcdiff.preprocess import Preprocessor

        self.default_energy_ev = model.photon_energy_ev
        self.preprocess = Preprocessor(
            model,
            job.background,
            job.corrections,
            bad_pixel_mask=bad_pixel_mask,
            pedestal=pedestal,
            gain=gain,
            threads=threads,
        )
        # GPU ranks remove the background with cupy on their own device; no cupy there is
        # a ConfigError unless background.preprocess_device = "cpu" (hpcdiff.backend_check)
        self.preprocess_gpu = preprocess_gpu(
            device, preprocess_device=job.background.preprocess_device
        )
        # raw frames reach the device through pinned slots on an upload stream
        self._upload = None if self.preprocess_gpu is None else DeviceUpload(device, kind="cupy")
        if self.preprocess_gpu is None:
            self.preprocess.prepare()  # detector maps and resampling matrix, before any frame
        fc = job.features
        self.extractor = FeatureExtractor(
            fc.weights,
            layer=fc.layer,
            device=device,
            bf16=fc.bf16,
            bf16_cpu=fc.bf16_cpu,
            channels_last=fc.channels_last,
            compile=fc.compile,
            batch_size=fc.batch_size,
        )
        self.timings = timings
        # the first batch is preprocessed while the CNN waits for it: on a CPU rank with
        # the CNN's threads too (then the rank's own; hpcdiff.preprocess threads=)
        self._fill_threads = 0
        if device == "cpu":
            import torch

            self._fill_threads = torch.get_num_threads()

    def describe(self) -> dict[str, Any]:
        """Where and how this rank preprocesses and extracts features (for run reports)."""
        pre = (
            f"cupy on cuda:{self.preprocess_gpu}"
            if self.preprocess_gpu is not None
            else f"numpy on {self.preprocess.threads} thread(s)"
        )
        return {"preprocess": pre, "features": self.extractor.run_info()}

    def images(self, batch: FrameBatch) -> Any:
        """``(n, 3, H, W)`` float32 CNN images of the batch's frames: numpy, or a cupy array
        on :attr:`preprocess_gpu` wrapped as :class:`~hpcdiff.parallel.stream_handoff.StreamReady`
        (read by the feature extractor through DLPack, without a host copy or wait)."""
        n = len(batch.numbers)
        energy = batch.values.get("photon_energy_ev")
        if energy is None:
            energy = np.full(n, self.default_energy_ev)
        with self.timings.section("preprocess", n):
            if self.preprocess_gpu is None:
                fill, self._fill_threads = self._fill_threads, 0
                threads = max(self.preprocess.threads, fill) if fill else None
                return self.preprocess(batch.frames, photon_energy_ev=energy, threads=threads)
            import cupy

            # the current cupy device is per thread: this may run in the reader thread
            with cupy.cuda.Device(self.preprocess_gpu):
                assert self._upload is not None
                images = self.preprocess(self._upload(batch.frames), photon_energy_ev=energy)
                # no host wait: an event on this stream that the CNN's stream waits on when
                # it reads the images through DLPack (the timing covers the launches only)
                return stream_ready(images)

    def prepare(self, batch: FrameBatch) -> FrameBatch:
        """Add the CNN images to ``batch`` (run in the reader thread, overlapping the CNN)."""
        if len(batch.numbers):
            batch.prepared = self.images(batch)
        return batch

    def features(self, batch: FrameBatch) -> np.ndarray:
        """``(n, d)`` float32 features of the batch's frames."""
        images = batch.prepared if batch.prepared is not None else self.images(batch)
        with self.timings.section("features", len(images)):
            return self.extractor.extract(images)

    def __call__(self, batch: FrameBatch) -> dict[str, np.ndarray]:
        return {"features": self.features(batch)}


def detector_model(
    geometry: Any,
    values: dict[str, np.ndarray],
    *,
    frame_file: str | None = None,
    polarisation_degree: float = 1.0,
) -> Any:
    """:class:`hpcdiff.geometry.DetectorModel` at the camera length, energy and detector
    shift in ``values``; the geometry's masks "in the frame file" are read from
    ``frame_file``; ``polarisation_degree``: ``[corrections] polarisation_degree``."""
    from hpcdiff.geometry import DetectorModel, detector_shift_m

    clen = values.get("clen_m")
    energy = values.get("photon_energy_ev")
    return DetectorModel.build(
        geometry,
        clen_m=None if clen is None else float(clen[0]),
        photon_energy_ev=None if energy is None else float(energy[0]),
        shift_m=detector_shift_m(geometry, values),
        frame_file=frame_file,
        polarisation_degree=polarisation_degree,
    )


_MIN_BAD_PIXEL_FRAMES = 10


def _bad_pixels(
    job: JobConfig,
    source: Any,
    model: Any,
    pedestal: np.ndarray | None,
    gain: np.ndarray | None,
) -> np.ndarray | None:
    """Root: bad pixels judged over the run's first ``bad_pixel_frames`` finite frames,
    with the frames' own mask where the source has one (NXmx ``pixel_mask``)."""
    from hpcdiff.io.sources.base import source_pixel_mask
    from hpcdiff.preprocess import Preprocessor

    own = source_pixel_mask(source)
    n = min(job.corrections.bad_pixel_frames, source.n_frames)
    if n < _MIN_BAD_PIXEL_FRAMES:
        return own
    frames = source.read(0, n)
    finite = np.isfinite(frames.reshape(n, -1)).all(axis=1)
    if finite.sum() < _MIN_BAD_PIXEL_FRAMES:
        return own
    energy = source.frame_values(0, n).get("photon_energy_ev")
    energy = model.photon_energy_ev if energy is None else energy[finite]
    pre = Preprocessor(model, job.background, job.corrections, pedestal=pedestal, gain=gain)
    found = pre.find_bad_pixels(frames[finite], photon_energy_ev=energy)
    log.info("bad pixels from %d frames: %d", int(finite.sum()), int(found.mask.sum()))
    return pre.bad_pixel_mask if own is None else np.asarray(pre.bad_pixel_mask) | own


def _reader(
    reader: FrameReader, featurizer: Featurizer, overlap: bool
) -> Callable[[int, int], FrameBatch]:
    if not overlap:
        return reader
    return lambda start, stop: featurizer.prepare(reader(start, stop))


# --------------------------------------------------------------------------- the frame stage


@dataclass
class StageResult:
    """What :func:`_frame_stage` leaves for the command that called it (every rank)."""

    kind: str
    run: RunFiles
    store: ShardStore
    outcome: LoopOutcome
    rank_info: RankInfo
    weights_info: dict[str, Any]
    frame_ids: list[Any]
    outputs: dict[str, Path] = field(default_factory=dict)
    processing: dict[str, Any] = field(default_factory=dict)  # Featurizer.describe()
    overwrite: bool = False  # --force, or resuming this job: outputs may be replaced


def _outputs(job: JobConfig, kind: str, results: dict[str, Path]) -> dict[str, Path]:
    files = ClassifyLayout.from_job(job).stage(kind)
    return {**results, "rejects": files.rejects, "run_report": files.run_report}


def _frame_stage(
    job: JobConfig,
    kind: str,
    *,
    comm: Comm,
    results: dict[str, Path],
    make_process: Callable[[Featurizer], Callable[[FrameBatch], dict[str, np.ndarray]]],
    force: bool,
    stop: Any,
    state_extra: dict[str, Any] | None = None,
    finished: list[Path] | None = None,
) -> StageResult:
    """The distributed frame stage every command shares.

    The root refuses finished outputs (unless ``force``), opens the frame files and
    prepares the shard folder (resuming the same job); then each rank binds its device,
    builds the detector model, preprocessor and feature extractor and runs
    :func:`~hpcdiff.parallel.frame_loop.distributed_map` with ``make_process(featurizer)``.
    ``state_extra`` joins the checkpoint state (e.g. the model hash of a prediction run).
    ``finished``: the outputs that mark the run finished (default: all of them); the
    others are intermediate and rewritten when the same job resumes from its shards
    (:mod:`hpcdiff.pipelines.requeue`).
    """
    from hpcdiff.io.sources import open_job_source
    from hpcdiff.pipelines.requeue import refuse_finished, refuse_strays

    outputs = _outputs(job, kind, results)
    config_hash = job.config_hash()
    shard_dir = ClassifyLayout.from_job(job).stage(kind).shards

    def preflight() -> tuple[RunFiles, bool]:
        if not force:
            refuse_finished(kind, outputs, finished=finished, out_dir=job.output.dir)
        run = probe_files(job)
        _, resumed = ShardStore.prepare(
            shard_dir,
            config_hash=config_hash,
            n_frames=run.n_frames,
            files=list(run.files),
            extra=state_extra,
            force=force,
        )
        if not (force or resumed):
            refuse_strays(kind, outputs, shard_dir=shard_dir)
        return run, force or resumed

    run, overwrite = root_decides(comm, preflight)
    info = setup_rank(comm, job)
    log.debug(
        "rank %d on %s: device %s, %d threads", info.rank, info.host, info.device, info.threads
    )

    geometry = _geometry(job)
    timings = Timings()
    with open_job_source(job, run.files, geometry=geometry) as source:
        # every rank builds the same detector model from frame 0's camera length and energy
        # (the source's geometry: the job's, or an NXmx file's own)
        model = detector_model(
            source.geometry,
            source.frame_values(0, 1),
            frame_file=source.files[0],
            polarisation_degree=job.corrections.polarisation_degree,
        )
        pedestal, gain = read_pedestal_and_gain(job.experiment, shape=source.slab_shape)
        mask = root_decides(comm, lambda: _bad_pixels(job, source, model, pedestal, gain))
        featurizer = Featurizer(
            job,
            model=model,
            device=info.device,
            timings=timings,
            bad_pixel_mask=mask,
            pedestal=pedestal,
            gain=gain,
            threads=info.threads,
        )
        store = ShardStore(shard_dir)
        raw = rank_raw_frames(
            source,
            configured=job.parallel.reader_processes,
            # where frames are preprocessed: a rank preprocessing on the CPU needs its cores
            device=info.device if featurizer.preprocess_gpu is not None else "cpu",
            threads=info.threads,
            batch_size=job.features.batch_size,
            keep=job.parallel.prefetch_batches + 2,  # see distributed_map(plan=)
            timings=timings,
        )
        outcome = distributed_map(
            comm,
            n_frames=run.n_frames,
            plan=raw.plan,
            read=_reader(
                FrameReader(source, timings=timings, masks=model.pixel_masks, raw=raw.read_raw),
                featurizer,
                job.parallel.overlap_preprocess,
            ),
            process=make_process(featurizer),
            store=store,
            config_hash=config_hash,
            batch_size=job.features.batch_size,
            checkpoint_every=job.parallel.checkpoint_every,
            prefetch_batches=job.parallel.prefetch_batches,
            stop=stop,
            progress_interval_s=job.parallel.progress_interval_s,
            timings=timings,
        )
        frame_ids = source.frame_ids
    return StageResult(
        kind,
        run,
        store,
        outcome,
        info,
        featurizer.extractor.weights_info,
        frame_ids,
        outputs,
        {**featurizer.describe(), "reader": raw.describe()},
        overwrite,
    )


def _finish(
    comm: Comm,
    job: JobConfig,
    stage: StageResult,
    *,
    force: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Rejects file, timing table and run report on the root; the reject check on all ranks.

    Returns the run report (on every rank).
    """
    per_rank = gather_to_root(
        comm,
        {
            "rank": {**stage.rank_info.as_dict(), **stage.processing},
            "timings": stage.outcome.timings.as_dict(),
        },
    )

    def write() -> dict[str, Any]:
        assert per_rank is not None  # the root has every rank's entry
        return _write_run_report(job, stage, per_rank, force=force or stage.overwrite, extra=extra)

    report = root_decides(comm, write)
    n_rejects = int(report["frames"]["rejected"])
    total = stage.run.n_frames + len(stage.run.file_rejects)
    if total and n_rejects / total > job.parallel.max_reject_fraction:
        raise TooManyRejects(
            f"{n_rejects} of {total} frames/files rejected (more than parallel."
            f"max_reject_fraction = {job.parallel.max_reject_fraction}); see "
            f"{stage.outputs['rejects']}"
        )
    return report


def _write_run_report(
    job: JobConfig,
    stage: StageResult,
    per_rank: list[dict[str, Any]],
    *,
    force: bool,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """Root: the rejects file and the run report; prints the timing table; removes the shards."""
    rejects = [
        {"file": stage.frame_ids[f].file, "index": stage.frame_ids[f].index, "reason": r}
        for f, r in stage.store.rejects()
    ]
    rejects = [*stage.run.file_rejects, *rejects]
    n_rejects = len(rejects)
    with atomic_path(stage.outputs["rejects"], force=force) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rejects))
    total = stage.run.n_frames + len(stage.run.file_rejects)
    out = stage.outcome
    report = {
        "kind": stage.kind,
        "frames": {
            "total": stage.run.n_frames,
            "done_before": out.done_before,
            "processed": out.processed,
            "rejected": n_rejects,
            "files_rejected": len(stage.run.file_rejects),
        },
        "reject_fraction": n_rejects / total if total else 0.0,
        "elapsed_s": round(out.elapsed_s, 3),
        "frames_per_s": round(out.processed / out.elapsed_s, 3) if out.elapsed_s > 0 else None,
        "ranks": stage.rank_info.size,
        "devices": [r["rank"] for r in per_rank],
        "timings": [r["timings"] for r in per_rank],
        "weights": stage.weights_info,
        "weights_sha256": stage.weights_info.get("sha256"),
        "features": stage.processing.get("features", {}),
        "outputs": {k: str(v) for k, v in stage.outputs.items()},
        **(extra or {}),
        **provenance(job.config_hash()),
    }
    write_json(stage.outputs["run_report"], report, force=force)
    print(f"per-stage time and throughput ({stage.kind}, {stage.rank_info.size} rank(s)):")
    print(timings_table(report["timings"]))
    stage.store.remove()
    return report


def _read_local(comm: Comm, stage: StageResult, names: list[str]) -> tuple[np.ndarray, dict]:
    """This rank's block of results from the shards (whoever wrote them)."""
    start, stop = local_range(comm, stage.run.n_frames)
    return stage.store.read(names, start=start, stop=stop)


# --------------------------------------------------------------------------- commands


def run_features(job: JobConfig, *, comm: Comm, force: bool = False, stop: Any = None) -> Path:
    """``hpcdiff features``: the distributed feature stage alone; returns the features file."""
    path = ClassifyLayout.from_job(job).features
    stage = _frame_stage(
        job,
        "features",
        comm=comm,
        results={"features": path},
        make_process=lambda fz: fz,
        force=force,
        stop=stop,
        finished=[path, ClassifyLayout.from_job(job).stage("features").run_report],
    )
    on_root(comm, lambda: _write_features_file(job, stage, path, force=stage.overwrite))
    _finish(comm, job, stage, force=force)
    return path


def _write_features_file(job: JobConfig, stage: StageResult, path: Path, *, force: bool) -> None:
    from hpcdiff.io.featurefile import FeatureWriter

    meta = feature_meta(job, stage.weights_info, processing=stage.processing)
    step = 4096
    with FeatureWriter(path, meta=meta, force=force) as writer:
        for lo in range(0, stage.run.n_frames, step):
            frames, arrays = stage.store.read(["features"], start=lo, stop=lo + step)
            if len(frames):
                writer.append([stage.frame_ids[f] for f in frames], arrays["features"])


def feature_meta(
    job: JobConfig, weights_info: dict[str, Any], *, processing: dict[str, Any] | None = None
) -> Any:
    """:class:`~hpcdiff.io.featurefile.FeatureMeta` of the features this job computes;
    ``processing`` (:meth:`Featurizer.describe` of the root rank: device, bf16 or fp32)
    is recorded in its ``extra``, not compared."""
    from hpcdiff.features import LAYER_SIZES
    from hpcdiff.features.layers import layer_note, resolve_layer
    from hpcdiff.io.featurefile import FeatureMeta

    layer = resolve_layer(job.features.layer, weights_info.get("layers", ()))
    extra: dict[str, Any] = {} if processing is None else {"processing": processing}
    note = layer_note(job.features.layer, weights_info.get("layers", ()))
    if note is not None:
        extra["layer_note"] = note
    return FeatureMeta(
        layer=layer,
        n_features=int(LAYER_SIZES[layer]),
        weights=weights_info,
        background=job.to_dict()["background"],
        config_hash=job.config_hash(),
        extra=extra,
    )


def default_model_path(job: JobConfig) -> Path:
    """``[output] model``, or the layout's default (:attr:`ClassifyLayout.model`)."""
    return ClassifyLayout.from_job(job).model


@dataclass(frozen=True)
class _Split:
    train: np.ndarray  # (n_train,) int64 global frame numbers, sorted
    test: np.ndarray  # (n_test,) int64
    y_train: np.ndarray  # (n_train,) int64 labels
    y_test: np.ndarray
    class_names: tuple[str, ...]


def _choose_split(job: JobConfig, stage: StageResult) -> _Split:
    """Root: the labelled frames with features, split into train and test
    (:func:`hpcdiff.learn.labelled.labelled_split`; unlabelled frames are not used)."""
    from hpcdiff.io.labels import describe_spec, read_labels
    from hpcdiff.learn.labelled import labelled_split

    if job.experiment.labels is None:
        raise ConfigError(f"{job.source}: training needs [experiment] labels = 'labels.csv'")
    done = stage.store.done_frames()
    rejected = np.array([f for f, _ in stage.store.rejects()], dtype=np.int64)
    names = job.experiment.class_names or None
    s = labelled_split(
        read_labels(job.experiment.labels, class_names=names),
        stage.frame_ids,
        np.setdiff1d(done, rejected),
        job.learn,
        source=describe_spec(job.experiment.labels),
        job_source=job.source,
        skip_files=[r["file"] for r in stage.run.file_rejects],
    )
    return _Split(s.train, s.test, s.y_train, s.y_test, s.class_names)


def run_train(job: JobConfig, *, comm: Comm, force: bool = False, stop: Any = None) -> Any:
    """``hpcdiff classify train``: distributed features, root fits PCA + logistic regression.

    The frame stage leaves each rank its block of features; :func:`collect_rows` brings
    the training rows to the root (gathered, or ``learn.pca_from = "statistics"``: PCA
    statistics reduced and only projections gathered), where one
    :func:`hpcdiff.learn.fit_model` fits the model every rank then receives.  Each rank
    scores its own held-out frames; only the probabilities are collected.

    Returns
    -------
    DiffuseClassifier
        The fitted model, on every rank (broadcast from the root).
    """
    from hpcdiff.learn import PCAReduction, fit_model
    from hpcdiff.pipelines.requeue import stop_if_requested

    layout = ClassifyLayout.from_job(job)
    model_path, report_path, features_path = layout.model, layout.train_report, layout.features
    stage = _frame_stage(
        job,
        "train",
        comm=comm,
        results={"model": model_path, "report": report_path, "features": features_path},
        make_process=lambda fz: fz,
        force=force,
        stop=stop,
        finished=[model_path, report_path],  # features.h5 is intermediate, rewritten on resume
    )
    lc = job.learn
    # every frame's features, for retraining without recomputing them
    on_root(comm, lambda: _write_features_file(job, stage, features_path, force=stage.overwrite))
    split = root_decides(comm, lambda: _choose_split(job, stage))
    frames, arrays = _read_local(comm, stage, ["features"])
    x_local = arrays["features"].astype(np.float32, copy=False)
    if x_local.ndim != 2:  # this rank has no frames with features
        x_local = np.empty((0, _n_features(job, stage.weights_info)), np.float32)
    meta = feature_meta(job, stage.weights_info, processing=stage.processing)
    timings = stage.outcome.timings
    t0 = time.perf_counter()
    reduction = (
        PCAReduction(_n_features(job, stage.weights_info), lc.n_components)
        if lc.pca_from == "statistics"
        else None
    )
    train = collect_rows(
        comm, frames, x_local, wanted=split.train, reduce=reduction, timings=timings
    )

    def fit() -> Any:
        assert train.rows is not None  # the root holds the collected rows
        return fit_model(
            train.rows,
            split.y_train,
            class_names=split.class_names,
            cfg=lc,
            feature_meta=meta,
            pca=train.basis,
            projected=train.basis is not None,
            n_test=len(split.test),
            config_hash=job.config_hash(),
            extra={"ranks": stage.rank_info.size},
        )

    model = root_decides(comm, fit)
    # every rank scores its own test frames; only (n, K) probabilities reach the root
    in_test = np.isin(frames, split.test)
    proba_local = (
        model.predict_proba(x_local[in_test])
        if in_test.any()
        else np.empty((0, len(model.class_names_)))
    )
    test: Collected[Any] = collect_rows(
        comm, frames[in_test], proba_local, wanted=split.test, timings=timings
    )
    timings.add("learn", time.perf_counter() - t0, len(split.train))
    # a SIGTERM/SIGUSR1 during the fit: stop (exit 75) before the model is written
    stop_if_requested(comm, stop, where="during the learn stage", shard_dir=stage.store.directory)
    on_root(
        comm,
        lambda: _write_training(
            job, stage, split, model, test.rows, model_path, report_path, force=stage.overwrite
        ),
    )
    _finish(comm, job, stage, force=force, extra={"model": str(model_path)})
    _write_report(comm, job, "train")
    return model


def _published() -> dict[str, Any]:
    from hpcdiff.learn.published import PUBLISHED

    return PUBLISHED.as_dict()


def _write_training(
    job: JobConfig,
    stage: StageResult,
    split: _Split,
    model: Any,
    proba: np.ndarray | None,
    model_path: Path,
    report_path: Path,
    *,
    force: bool,
) -> None:
    """Root: the held-out report (printed), the model file and the training report."""
    from hpcdiff.learn import classification_report, format_report

    lc = job.learn
    report = (
        classification_report(
            split.y_test, np.argmax(proba, axis=1), proba, class_names=model.class_names_
        )
        if len(split.test) and proba is not None
        else None
    )
    model.save(model_path, force=force)
    title = (
        f"held-out test frames ({len(split.test)}; trained on {len(split.train)}, "
        f"PCA from {lc.pca_from})"
    )
    if report is not None:
        print(format_report(report, title=title))
    write_json(
        report_path,
        {
            "report": report,
            "n_train": len(split.train),
            "n_test": len(split.test),
            "pca_from": lc.pca_from,
            "split": lc.split,
            "published": _published(),
            "model": str(model_path),
            **provenance(job.config_hash(), weights_sha256=stage.weights_info.get("sha256")),
        },
        force=force,
    )


def _n_features(job: JobConfig, weights_info: dict[str, Any]) -> int:
    return int(feature_meta(job, weights_info).n_features)


def run_predict(
    job: JobConfig,
    *,
    comm: Comm,
    force: bool = False,
    stop: Any = None,
    model: Path | None = None,
) -> Path:
    """``hpcdiff classify predict``: every rank predicts its own frames; one file per run.

    Writes ``output.dir/predictions.h5`` ordered by frame, in the layout of
    :mod:`hpcdiff.io.predictions` (frame file and index, class, class probability,
    probability of every class, diffuse score; attrs: class names, model and its SHA-256,
    weights SHA-256, provenance).

    Returns
    -------
    Path
        The predictions file.
    """
    from hpcdiff.io.outputs import sha256_file
    from hpcdiff.learn import DiffuseClassifier

    model_path = Path(model) if model is not None else default_model_path(job)

    def load() -> tuple[Any, str]:
        return DiffuseClassifier.load(model_path), sha256_file(model_path)

    clf, model_sha = root_decides(comm, load)
    path = ClassifyLayout.from_job(job).predictions
    from hpcdiff.learn.transfer import needs_experiment

    adapt = needs_experiment(clf)

    def make_process(fz: Featurizer) -> Callable[[FrameBatch], dict[str, np.ndarray]]:
        try:
            clf.check_compatible(feature_meta(job, fz.extractor.weights_info), source=job.source)
        except HpcdiffError as exc:  # the same on every rank: no abort needed
            exc.collective = True  # type: ignore[attr-defined]
            raise

        def process(batch: FrameBatch) -> dict[str, np.ndarray]:
            x = fz.features(batch)
            with fz.timings.section("predict", len(x)):
                proba = clf.predict_proba(x)
            if adapt:  # the root adapts to the whole run from every frame's PCA scores
                return {"proba": proba.astype(np.float32), "pca_scores": clf.pca_.transform(x)}
            return {"proba": proba.astype(np.float32)}

        return process

    from hpcdiff.io.prediction_lists import prediction_outputs

    lists = prediction_outputs(path, clf.class_names_)  # predictions.csv, diffuse.lst, ...
    stage = _frame_stage(
        job,
        "predict",
        comm=comm,
        results={"predictions": path, **lists},
        make_process=make_process,
        force=force,
        stop=stop,
        state_extra={"model_sha256": model_sha},
    )
    on_root(
        comm, lambda: _write_predictions(job, stage, path, clf, model_path, model_sha, force=force)
    )
    _finish(
        comm, job, stage, force=force, extra={"model": str(model_path), "model_sha256": model_sha}
    )
    _write_report(comm, job, "predict")
    return path


def _write_report(comm: Comm, job: JobConfig, kind: str) -> None:
    """Root: the job's HTML report (``output.dir/report/``), after every result is written.

    A failure here is logged, never raised: the results the report shows are safe already.
    """
    on_root(comm, lambda: _write_html_report(job, kind))


def _write_html_report(job: JobConfig, kind: str) -> None:
    from hpcdiff.pipelines.reports import write_classify_report

    try:
        page = write_classify_report(job, kind)
    except Exception:  # noqa: BLE001 - the report must not fail a finished job
        log.exception("could not write the %s report; the results are complete", kind)
        return
    if page is not None:
        log.info("report: %s", page)


def _write_predictions(
    job: JobConfig,
    stage: StageResult,
    path: Path,
    clf: Any,
    model_path: Path,
    model_sha: str,
    *,
    force: bool,
) -> None:
    """Combine the ranks' shards into one predictions file ordered by frame, and write
    ``predictions.csv`` and the CrystFEL lists beside it.

    The layout is :mod:`hpcdiff.io.predictions`' (read it with ``read_predictions``);
    the CSV and lists are :mod:`hpcdiff.io.prediction_lists`'.
    """
    from hpcdiff.io.prediction_lists import write_prediction_outputs_from_file
    from hpcdiff.io.predictions import PredictionWriter
    from hpcdiff.learn.transfer import needs_experiment, proba_from_stored_scores

    adapt = needs_experiment(clf)
    frames, arrays = stage.store.read(["proba", "pca_scores"] if adapt else ["proba"])
    proba = arrays["proba"] if len(frames) else np.empty((0, len(clf.class_names_)), np.float32)
    if adapt and len(frames):  # one experiment: adapted with all its frames' scores
        proba = proba_from_stored_scores(clf, arrays["pca_scores"]).astype(np.float32)
    ids = [stage.frame_ids[f] for f in frames]
    attrs = {
        "model": str(model_path),
        "model_sha256": model_sha,
        "target": clf.metadata_.get("target", "binary"),
        "weights_sha256": stage.weights_info.get("sha256") or "",
        "feature_layer": clf.feature_meta_.layer,
        "feature_layer_note": clf.feature_meta_.extra.get("layer_note") or "",
    }
    with PredictionWriter(
        path,
        class_names=tuple(clf.class_names_),
        attrs=attrs,
        config_hash=job.config_hash(),
        force=force,
    ) as writer:
        writer.append(
            np.array([i.file for i in ids], dtype=object),
            np.array([i.index for i in ids], dtype=np.int64),
            proba,
        )
    write_prediction_outputs_from_file(path, force=force)

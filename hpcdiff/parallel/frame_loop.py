"""The per-frame half of a distributed job: every rank maps its frames, with checkpoints.

:func:`distributed_map` ``(read, process, store)`` is the OM-style frame loop: ``read`` runs
in a reader thread, ``process`` on the main thread, results go to checkpoint shards.  The
collect half after it lives in :mod:`hpcdiff.parallel.collect`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcdiff.parallel.mpi import Comm, allreduce_sum
from hpcdiff.progress import Timings, log_progress

if TYPE_CHECKING:
    from hpcdiff.parallel.shards import ShardStore

log = logging.getLogger("hpcdiff.parallel")


@dataclass
class FrameBatch:
    """Frames of one batch as the reader thread hands them to the main thread.

    Attributes
    ----------
    start, stop
        The global frame range that was read.
    frames
        ``(n, n_ss, n_fs)`` float32, only the frames that passed the checks.
    numbers
        ``(n,)`` int64 global frame numbers of ``frames``.
    values
        Per-frame values, each ``(n,)`` (e.g. ``photon_energy_ev``).
    rejects
        ``(global frame, reason)`` of frames in ``[start, stop)`` that were not usable.
    prepared
        What the reader thread's preparation step made of ``frames`` (the classify job:
        its ``(n, 3, H, W)`` CNN images), else ``None``; the loop never looks at it.
    """

    start: int
    stop: int
    frames: np.ndarray
    numbers: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)
    rejects: list[tuple[int, str]] = field(default_factory=list)
    prepared: Any = None


@dataclass
class LoopOutcome:
    """What :func:`distributed_map` did, identical on every rank except ``timings``."""

    frames_total: int
    done_before: int
    processed: int
    rejected: int
    elapsed_s: float
    timings: Timings


def distributed_map(
    comm: Comm,
    *,
    n_frames: int,
    read: Callable[[int, int], FrameBatch],
    process: Callable[[FrameBatch], dict[str, np.ndarray]],
    store: ShardStore,
    config_hash: str,
    batch_size: int,
    checkpoint_every: int,
    prefetch_batches: int = 2,
    stop: object = None,
    progress_interval_s: float = 10.0,
    timings: Timings | None = None,
    plan: Callable[[list[tuple[int, int]]], AbstractContextManager[object]] | None = None,
) -> LoopOutcome:
    """Process every frame not yet done, each rank its own block, with checkpoints.

    Each rank takes :func:`~hpcdiff.parallel.partition.partition` ``(n_frames, rank, size)``,
    drops the frames already in ``store`` (a resumed job), reads the rest in batches of
    ``batch_size`` through a :class:`~hpcdiff.parallel.prefetch.Prefetcher` and calls
    ``process`` on each.  Results go to a shard every ``checkpoint_every`` frames.  After
    every batch the ranks sum four small numbers (frames done, rejects, stop requested,
    ranks still busy): the root logs progress from them every ``progress_interval_s``,
    a stop signal on any rank stops all of them, and the loop ends when no rank is busy.

    Parameters
    ----------
    read
        ``read(start, stop) -> FrameBatch``, run in the reader thread.
    process
        ``process(batch) -> {name: (n, ...) array}`` with one row per ``batch.numbers``.
        Rows holding NaN or inf in a floating-point result are rejected.
    store
        A :class:`~hpcdiff.parallel.shards.ShardStore` opened by every rank on the same folder.
    stop
        A :class:`~hpcdiff.parallel.signals.StopFlag` (or any object with truth value).
    plan
        ``plan(ranges)``: a context manager entered with this rank's ``(start, stop)``
        ranges, in the order ``read`` will be called, around the loop (e.g.
        :meth:`hpcdiff.parallel.reader_pool.RawFrames.plan`, reader processes reading
        them ahead).  When ``read`` is called, the ``prefetch_batches + 1`` batches it
        returned last may still be in use (queued, or being processed): a reader that
        reuses buffers needs ``prefetch_batches + 2`` of them (``keep`` of
        :class:`~hpcdiff.parallel.reader_pool.RawFrames`; one fewer corrupts batches,
        as tests/test_reader_pool.py shows).

    Returns
    -------
    LoopOutcome

    Raises
    ------
    Preempted
        On every rank, after every rank wrote its shard, when a stop was requested.
    """
    from hpcdiff.parallel.partition import batches, partition, runs
    from hpcdiff.parallel.prefetch import Prefetcher
    from hpcdiff.parallel.shards import ShardBuffer
    from hpcdiff.parallel.signals import Preempted

    timings = timings if timings is not None else Timings()
    rank, size = comm.Get_rank(), comm.Get_size()
    t_start = time.perf_counter()
    with timings.section("collective"):
        done = comm.bcast(store.done_frames() if rank == 0 else None, root=0)
    start, stop_frame = partition(n_frames, rank, size)
    mine = np.arange(start, stop_frame, dtype=np.int64)
    todo = np.setdiff1d(mine, done, assume_unique=True).tolist()
    ranges = [b for a, c in runs(todo) for b in batches(a, c, batch_size)]
    n_done_before = int(done.size)
    if rank == 0 and n_done_before:
        log.info("resuming: %d of %d frames already done", n_done_before, n_frames)
    buffer = ShardBuffer()
    processed = rejected = mine_processed = 0
    done_total = n_done_before
    stopped = False
    last_logged = -1
    last_report = time.perf_counter()
    planned = plan(ranges) if plan is not None else contextlib.nullcontext()
    with planned, Prefetcher(read, ranges, depth=prefetch_batches) as pf:
        batches_iter = iter(pf)
        while True:
            wait0 = pf.wait_s
            batch = next(batches_iter, None)
            timings.add("wait_input", pf.wait_s - wait0)
            step = np.zeros(4, dtype=np.int64)
            if batch is not None:
                n_good = len(batch.numbers)
                with timings.section("compute", n_good):
                    results = process(batch) if n_good else {}
                keep, bad = _finite_rows(results, batch.numbers)
                rejects = [*batch.rejects, *bad]
                buffer.add(batch.numbers[keep], {k: v[keep] for k, v in results.items()}, rejects)
                step[0] = batch.stop - batch.start
                mine_processed += int(step[0])
                step[1] = len(rejects)
                if len(buffer) >= checkpoint_every:
                    with timings.section("checkpoint", len(buffer)):
                        store.write(buffer, config_hash=config_hash, rank=rank)
            step[2] = 1 if (stop is not None and stop) else 0
            step[3] = 1 if batch is not None else 0
            batch = None  # let its buffers go (reader processes refill them)
            with timings.section("collective"):
                total = allreduce_sum(comm, step)
            processed += int(total[0])
            rejected += int(total[1])
            done_total += int(total[0])
            now = time.perf_counter()
            final = total[3] == 0 and done_total != last_logged
            if rank == 0 and (now - last_report >= progress_interval_s or final):
                log_progress(done_total, n_frames, processed, now - t_start)
                last_report, last_logged = now, done_total
            if total[3] == 0:
                break
            if total[2] > 0:
                stopped = True
                break
        timings.add("reader", pf.read_s, pf.batches)
    with timings.section("checkpoint", len(buffer)):
        store.write(buffer, config_hash=config_hash, rank=rank)
    with timings.section("collective"):
        comm.Barrier()
    elapsed = time.perf_counter() - t_start
    timings.add("total", elapsed, mine_processed)
    if stopped:
        raise Preempted(
            f"stopped by a signal after {done_total} of {n_frames} frames; every rank saved "
            "its results; run the same job again to resume",
            frames_done=done_total,
            frames_total=n_frames,
        )
    return LoopOutcome(n_frames, n_done_before, processed, rejected, elapsed, timings)


def _finite_rows(
    results: dict[str, np.ndarray], numbers: np.ndarray
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    keep = np.ones(len(numbers), dtype=bool)
    bad: list[tuple[int, str]] = []
    for name, arr in results.items():
        if len(arr) != len(numbers):
            raise ValueError(f"result {name!r} has {len(arr)} rows for {len(numbers)} frames")
        arr = np.asarray(arr)
        if np.issubdtype(arr.dtype, np.floating):
            ok = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
            for i in np.flatnonzero(~ok & keep):
                bad.append((int(numbers[i]), f"non-finite values in {name}"))
            keep &= ok
    return keep, bad


__all__ = ["FrameBatch", "LoopOutcome", "distributed_map"]

"""Map row blocks over a dask cluster and reduce: the one place the Fourier job submits work.

:func:`map_blocks` ships one shared object to every worker once, runs
``fn(shared, start, stop, **kwargs)`` for each block as a task, and either gathers the
results in block order or, given ``reduce``, folds the first item of every result (a
mergeable accumulator) in block order on the workers as the tasks finish, with few
tasks in flight (:func:`~hpcdiff.parallel.dask_reduce.stream_reduce`), while gathering
the second.  :func:`for_each_block` hands each result to a callback as it arrives (to
save it) and stops early on request.  Pipelines hand them pure functions and never call
the client.

What is shared should be small (a plan, a folder's path): per-frame data goes to disk and
each task reads what it needs, so nothing large is copied to every worker.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Generic, TypeVar

from hpcdiff.parallel.dask_cluster import track
from hpcdiff.parallel.dask_reduce import stream_reduce, threads_of

IN_FLIGHT_PER_THREAD = 2
"""Blocks submitted and not yet folded, per worker thread, when :func:`map_blocks`
reduces: one running, one to start when it ends or finished and waiting for the fold."""

R = TypeVar("R")


@dataclass(frozen=True)
class MappedBlocks(Generic[R]):
    """What :func:`map_blocks` returns.

    Attributes
    ----------
    reduced
        The first items folded in block order (``reduce`` given), else ``None``.
    parts
        Per block, in block order: the whole result, or its second item when reduced.
    """

    reduced: R | None
    parts: list[Any]


def map_blocks(
    client: Any,
    fn: Callable[..., Any],
    shared: Any,
    blocks: Sequence[tuple[int, int]],
    *,
    reduce: Callable[..., R] | None = None,
    in_flight: int | None = None,
    label: str = "tasks",
    log: IO[str] | None = None,
    **kwargs: Any,
) -> MappedBlocks[R]:
    """Run ``fn(shared, start, stop, **kwargs)`` for every block on the cluster.

    Parameters
    ----------
    client
        A ``distributed.Client``.
    fn
        A picklable function of ``(shared, start, stop, **kwargs)``.
    shared
        Sent to every worker once (``scatter(broadcast=True)``).
    blocks
        ``(start, stop)`` ranges, one task each.
    reduce
        ``None``: gather every result.  Else ``fn`` returns ``(accumulator, rest)``; the
        accumulators are folded in block order with ``reduce(total, accumulator)`` on the
        workers as they finish (:func:`~hpcdiff.parallel.dask_reduce.stream_reduce`: the
        result does not depend on the order the tasks finish in) and the ``rest`` parts
        gathered.
    in_flight
        With ``reduce``: most blocks submitted and not yet folded (default
        :data:`IN_FLIGHT_PER_THREAD` per worker thread), so the workers hold a few
        accumulators, not one per block.
    label, log
        Progress lines ``label: done/total tasks`` (default stderr).

    Raises
    ------
    Exception
        The first task error, with its remote traceback, as soon as it arrives.
    """
    # hash=False: a fresh key per call, so a second map of the same object never waits on
    # the first call's copy being released
    shared_f = client.scatter(shared, broadcast=True, hash=False)
    if reduce is None:
        tasks = [client.submit(fn, shared_f, s, e, pure=False, **kwargs) for s, e in blocks]
        track(tasks, label, log=log)
        return MappedBlocks(None, list(client.gather(tasks)))
    streamed = stream_reduce(
        client,
        fn,
        shared_f,
        blocks,
        reduce=reduce,
        in_flight=in_flight if in_flight is not None else IN_FLIGHT_PER_THREAD * threads_of(client),
        label=label,
        log=log,
        **kwargs,
    )
    return MappedBlocks(streamed.reduced, streamed.parts)


def for_each_block(
    client: Any,
    fn: Callable[..., R],
    shared: Any,
    blocks: Sequence[tuple[int, int]],
    *,
    on_result: Callable[[int, R], None],
    stop: object = None,
    stopped: Callable[[], None] | None = None,
    label: str = "tasks",
    log: IO[str] | None = None,
    every_s: float = 5.0,
    **kwargs: Any,
) -> None:
    """Run ``fn(shared, start, stop, **kwargs)`` per block; ``on_result(i, result)`` as each ends.

    Results are handed over in completion order and released at once (the client holds
    one at a time).  After each result, if ``stop`` is truthy the remaining tasks are
    cancelled and ``stopped()`` is called (it raises, e.g.
    :class:`~hpcdiff.parallel.signals.Preempted`); the results handed over so far are
    the caller's to keep.

    Raises
    ------
    Exception
        The first task error, with its remote traceback.
    """
    import time

    from distributed import as_completed

    log = log if log is not None else sys.stderr
    shared_f = client.scatter(shared, broadcast=True, hash=False)
    futures = [client.submit(fn, shared_f, s, e, pure=False, **kwargs) for s, e in blocks]
    index = {f.key: i for i, f in enumerate(futures)}
    total, done = len(futures), 0
    t0 = last = time.monotonic()
    try:
        for fut in as_completed(futures):
            result = fut.result()  # re-raises a task's error
            on_result(index[fut.key], result)
            fut.release()
            done += 1
            now = time.monotonic()
            if now - last >= every_s or done == total:
                print(f"{label}: {done}/{total} tasks ({now - t0:.1f} s)", file=log, flush=True)
                last = now
            if stop is not None and stop and done < total:
                client.cancel(futures)
                if stopped is not None:
                    stopped()
                return
    finally:
        del futures


def worker_count(client: Any) -> int:
    """Number of workers the cluster's scheduler knows now."""
    return len(client.scheduler_info(n_workers=-1).get("workers", {}))


__all__ = ["IN_FLIGHT_PER_THREAD", "MappedBlocks", "for_each_block", "map_blocks", "worker_count"]

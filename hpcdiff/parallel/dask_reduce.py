"""Map blocks and fold their accumulators in block order as they finish, few at a time.

The Fourier job's merge tasks each return a large dense accumulator (a 200^3 grid with
weights and half-maps is 384 MB).  Submitted all at once with a reduction tree behind
them, the tasks all ran before any reduction (the scheduler prefers the tasks submitted
first), every accumulator of a wave was held at once, and the workers spilled gigabytes
to dask's ``temporary-directory``.  Even a tree whose steps are submitted as their inputs
finish holds one waiting node per level (about ``log2(blocks)`` accumulators) beside the
running tasks, enough to reach the workers' spill threshold.

:func:`stream_reduce` folds instead: ``total = reduce(total, block_i)`` for ``i`` in block
order, each step submitted as soon as block ``i`` and every block before it have
finished, with at most ``in_flight`` blocks submitted and not yet folded.  The workers
hold the running total, the blocks not yet folded (at most ``in_flight``) and the running
tasks' own memory, whatever the number of blocks; the accumulators stay on the workers
(only the final total comes to the client).  The order of the sums is fixed by the block
order alone, so the result does not depend on the order the tasks finish in, bit for bit.

Pure dask plumbing: ``distributed`` is imported inside the function.
"""

from __future__ import annotations

import operator
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any


@dataclass(frozen=True)
class StreamedBlocks:
    """What :func:`stream_reduce` returns.

    Attributes
    ----------
    reduced
        ``reduce`` folded over the blocks' accumulators (the first item of each result),
        in block order.
    parts
        The second item of each block's result, in block order.
    most_unfolded
        The most blocks submitted and not yet folded at once (running, finished and
        waiting for an earlier block, or in a fold step): at most ``in_flight``.
    """

    reduced: Any
    parts: list[Any]
    most_unfolded: int


def stream_reduce(
    client: Any,
    fn: Callable[..., Any],
    shared: Any,
    blocks: Sequence[tuple[int, int]],
    *,
    reduce: Callable[[Any, Any], Any],
    in_flight: int,
    label: str = "tasks",
    log: IO[str] | None = None,
    every_s: float = 5.0,
    **kwargs: Any,
) -> StreamedBlocks:
    """Run ``fn(shared, start, stop, **kwargs) -> (accumulator, rest)`` per block and fold
    the accumulators in block order with ``reduce(total, accumulator)`` as they finish.

    Blocks are submitted in order, at most ``in_flight`` of them not yet folded (a block
    counts until the fold step that takes it has finished).  When block ``i`` and every
    block before it have finished, the step ``reduce(total, block_i)`` is submitted (it
    outranks the blocks submitted after it) and the client drops its references to both
    inputs, so the workers release them once it has run.

    Parameters
    ----------
    client
        A ``distributed.Client``.
    fn
        A picklable function of ``(shared, start, stop, **kwargs)`` returning
        ``(accumulator, rest)``.
    shared
        A future (e.g. of ``client.scatter(..., broadcast=True)``) or a small object given
        to every task.
    blocks
        ``(start, stop)`` ranges, one task each (at least one).
    reduce
        ``reduce(total, accumulator)``: their sum, new or ``total`` added to in place
        (each input belongs to this step alone: an in-place step only saves a copy; dask
        runs a step again only after losing a worker, and then recomputes its inputs).
    in_flight
        Most blocks submitted and not yet folded (>= 1).
    label, log, every_s
        Progress lines ``label: done/total tasks`` at most every ``every_s`` (default
        stderr).

    Raises
    ------
    ValueError
        No blocks, or ``in_flight < 1``.
    Exception
        The first task error, with its remote traceback; the other tasks are cancelled.
    """
    from distributed import as_completed

    if not blocks:
        raise ValueError("nothing to reduce")
    if in_flight < 1:
        raise ValueError(f"in_flight must be >= 1, got {in_flight}")
    log = log if log is not None else sys.stderr
    n = len(blocks)
    heads: dict[int, Any] = {}  # finished blocks not yet in a fold step
    block_of: dict[str, int] = {}  # key of a running block task -> its block
    step_of: dict[str, int] = {}  # key of a running fold step -> the block it folds in
    tails: list[Any] = [None] * n
    live: set[Any] = set()  # futures to cancel on an error
    pending = as_completed()
    submitted = folding = folded = done = most_unfolded = 0
    total: Any = None  # future of the fold of blocks 0 .. folding-1
    t0 = last = time.monotonic()

    def submit_blocks() -> None:
        nonlocal submitted, most_unfolded
        while submitted < n and submitted - folded < in_flight:
            s, e = blocks[submitted]
            fut = client.submit(fn, shared, s, e, pure=False, **kwargs)
            block_of[fut.key] = submitted
            submitted += 1
            live.add(fut)
            pending.add(fut)
        most_unfolded = max(most_unfolded, submitted - folded)

    def fold_ready() -> None:
        nonlocal total, folding, folded
        while folding in heads:
            head = heads.pop(folding)
            if total is None:  # block 0 starts the fold
                total, folded = head, 1
            else:
                step = client.submit(reduce, total, head, pure=False)
                step_of[step.key] = folding
                live.difference_update((total, head))  # the step holds them until it has run
                live.add(step)
                pending.add(step)
                total = step
            folding += 1

    try:
        submit_blocks()
        for fut in pending:
            if fut.status == "error":
                fut.result()  # re-raises the task's exception
            if fut.key in step_of:  # a fold step has run
                folded = max(folded, step_of.pop(fut.key) + 1)
            else:  # a block: split off its accumulator and its rest
                i = block_of.pop(fut.key)
                live.discard(fut)
                heads[i] = client.submit(operator.itemgetter(0), fut, pure=False)
                tails[i] = client.submit(operator.itemgetter(1), fut, pure=False)
                live.update((heads[i], tails[i]))
                done += 1
                now = time.monotonic()
                if now - last >= every_s or done == n:
                    print(f"{label}: {done}/{n} tasks ({now - t0:.1f} s)", file=log, flush=True)
                    last = now
            del fut  # the workers release what no future references
            fold_ready()  # steps first: they outrank the blocks submitted after them
            submit_blocks()
        assert total is not None and folding == n
        parts = list(client.gather(tails))
        reduced = total.result()
    except BaseException:
        client.cancel(list(live))
        raise
    return StreamedBlocks(reduced, parts, most_unfolded)


def threads_of(client: Any) -> int:
    """Threads of the workers the scheduler knows now (at least 1)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))


__all__ = ["StreamedBlocks", "stream_reduce", "threads_of"]

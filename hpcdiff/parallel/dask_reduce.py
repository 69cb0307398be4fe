"""Map blocks and reduce their accumulators as they finish, with few tasks in flight.

The Fourier job's merge tasks each return a large dense accumulator (a 200^3 grid with
weights and half-maps is about 370 MB).  Submitted all at once with the reduction tree
behind them, the tasks all run before any reduction (the scheduler prefers the tasks
submitted first), every accumulator of a wave is held at once, and the workers spill
gigabytes to dask's ``temporary-directory``.  :func:`stream_reduce` instead keeps at most
``in_flight`` block tasks submitted, and submits each step of the reduction tree as soon
as its inputs have finished, releasing them when it has combined them; a worker holds a
few accumulators whatever the number of blocks.

The tree is :func:`reduction_tree`, the same as
:func:`~hpcdiff.parallel.dask_cluster.tree_reduce`'s (level by level, consecutive
groups of ``fan_in``, an odd one out carried up), fixed by the number of blocks alone:
the order in which the tasks finish changes when each step runs, never which
accumulators it adds or in what order, so float sums come out bit for bit the same.

Pure dask plumbing: ``distributed`` is imported inside the function.
"""

from __future__ import annotations

import operator
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any


def reduction_tree(n: int, *, fan_in: int = 2) -> list[tuple[int, ...]]:
    """The reduction tree of ``n`` leaves, as its inner nodes.

    Nodes ``0 .. n-1`` are the leaves; inner node ``n + k`` combines the nodes
    ``tree[k]`` (in that order).  Level by level, each level's nodes are combined in
    consecutive groups of ``fan_in`` (a last group of one is carried up unchanged), as
    :func:`~hpcdiff.parallel.dask_cluster.tree_reduce` does.  The root is the last node
    (``n + len(tree) - 1``), or leaf 0 when ``n == 1``.

    Raises
    ------
    ValueError
        ``n < 1`` or ``fan_in < 2``.
    """
    if n < 1:
        raise ValueError("nothing to reduce")
    if fan_in < 2:
        raise ValueError(f"fan_in must be >= 2, got {fan_in}")
    tree: list[tuple[int, ...]] = []
    level = list(range(n))
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level), fan_in):
            group = tuple(level[i : i + fan_in])
            if len(group) == 1:
                nxt.append(group[0])
            else:
                tree.append(group)
                nxt.append(n + len(tree) - 1)
        level = nxt
    return tree


@dataclass(frozen=True)
class StreamedBlocks:
    """What :func:`stream_reduce` returns.

    Attributes
    ----------
    reduced
        The reduction of the blocks' accumulators (the first item of each result).
    parts
        The second item of each block's result, in block order.
    most_in_flight
        The most block tasks submitted and unfinished at once.
    most_held
        The most finished, not yet combined accumulators (and combining steps) at once:
        what the workers held beside the running block tasks.
    """

    reduced: Any
    parts: list[Any]
    most_in_flight: int
    most_held: int


def stream_reduce(
    client: Any,
    fn: Callable[..., Any],
    shared: Any,
    blocks: Sequence[tuple[int, int]],
    *,
    reduce: Callable[..., Any],
    in_flight: int,
    fan_in: int = 2,
    label: str = "tasks",
    log: IO[str] | None = None,
    every_s: float = 5.0,
    **kwargs: Any,
) -> StreamedBlocks:
    """Run ``fn(shared, start, stop, **kwargs) -> (accumulator, rest)`` per block and reduce
    the accumulators with ``reduce(*accumulators)`` as they finish.

    At most ``in_flight`` block tasks are submitted at a time, in block order; each
    inner node of :func:`reduction_tree` is submitted once its inputs have finished, and
    the client then drops its references to them (the workers release them as soon as
    the step has run).  Accumulators stay on the workers; only the ``rest`` parts and the
    final reduction come to the client.

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
        Combines accumulators into a new one, or adds the others into the first in place
        and returns it: each accumulator is the input of exactly one step and nothing
        else holds it, so an in-place step only saves a copy (dask runs a step again only
        after losing a worker, and then recomputes the inputs it held too).
    in_flight
        Most block tasks submitted and unfinished at once (>= 1).
    fan_in
        Accumulators per reduction step.
    label, log, every_s
        Progress lines ``label: done/total tasks`` at most every ``every_s`` (default
        stderr).

    Raises
    ------
    Exception
        The first task error, with its remote traceback; the other tasks are cancelled.
    """
    from distributed import as_completed

    if in_flight < 1:
        raise ValueError(f"in_flight must be >= 1, got {in_flight}")
    log = log if log is not None else sys.stderr
    n = len(blocks)
    tree = reduction_tree(n, fan_in=fan_in)
    root = n + len(tree) - 1
    parent: dict[int, int] = {c: n + k for k, group in enumerate(tree) for c in group}
    finished: dict[int, Any] = {}  # node -> future of its accumulator, not yet combined
    node_of: dict[str, int] = {}  # key of a running block task or step -> node
    tails: list[Any] = [None] * n
    live: set[Any] = set()  # block tasks, accumulators and steps the client references
    pending = as_completed()
    next_block, running, done = 0, 0, 0
    most_in_flight = most_held = 0
    total: Any = None
    t0 = last = time.monotonic()

    def submit_block() -> None:
        nonlocal next_block, running, most_in_flight
        s, e = blocks[next_block]
        fut = client.submit(fn, shared, s, e, pure=False, **kwargs)
        node_of[fut.key], next_block, running = next_block, next_block + 1, running + 1
        most_in_flight = max(most_in_flight, running)
        live.add(fut)
        pending.add(fut)

    def node_done(node: int, acc: Any) -> None:
        """``acc`` (a future in ``live``) holds node ``node``'s accumulator: submit the
        step it completes, if any, and drop the step's inputs."""
        nonlocal total
        if node == root:
            total = acc
            return
        finished[node] = acc
        group = tree[parent[node] - n]
        if all(c in finished for c in group):
            inputs = [finished.pop(c) for c in group]
            step = client.submit(reduce, *inputs, pure=False)
            node_of[step.key] = parent[node]
            live.add(step)
            pending.add(step)
            live.difference_update(inputs)  # the step holds them until it has run

    try:
        while next_block < min(in_flight, n):
            submit_block()
        for fut in pending:
            if fut.status == "error":
                fut.result()  # re-raises the task's exception
            node = node_of.pop(fut.key)
            if node < n:  # a block task: split off its accumulator and its rest
                live.discard(fut)
                running -= 1
                head = client.submit(operator.itemgetter(0), fut, pure=False)
                tails[node] = client.submit(operator.itemgetter(1), fut, pure=False)
                live.add(head)
                node_done(node, head)  # a step submitted now outranks the next block
                if next_block < n:
                    submit_block()
                done += 1
                now = time.monotonic()
                if now - last >= every_s or done == n:
                    print(f"{label}: {done}/{n} tasks ({now - t0:.1f} s)", file=log, flush=True)
                    last = now
            else:
                node_done(node, fut)
            most_held = max(most_held, len(live) - running)
            del fut  # the workers release what no future references
        assert total is not None
        parts = list(client.gather(tails))
        reduced = total.result()
    except BaseException:
        client.cancel([*live, *(t for t in tails if t is not None)])
        raise
    return StreamedBlocks(reduced, parts, most_in_flight, most_held)


def threads_of(client: Any) -> int:
    """Threads of the workers the scheduler knows now (at least 1)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))


__all__ = ["StreamedBlocks", "reduction_tree", "stream_reduce", "threads_of"]

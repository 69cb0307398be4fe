"""The collect half of a distributed MPI job: what reaches the root after the frame loop.

The per-frame half is :func:`hpcdiff.parallel.frame_loop.distributed_map`; after it each
rank holds the results of its own block of frames (:func:`local_range`).  The collect hook
brings what the root needs there, in one of two ways (OM keeps collection apart from
processing the same way):

* **gather**: the rows of the wanted frames, concatenated on the root in frame order
  (``Gatherv``; :func:`collect_rows` with ``reduce=None``);
* **reduce, then gather projections**: every rank summarises its wanted rows into a
  mergeable accumulator (a flat buffer, e.g. PCA count, sum and Gram matrix), the buffers
  are summed on the root (``Reduce``), the root turns the sum into a basis that every rank
  receives, and only the rows projected on it are gathered (:class:`Reduction`).

Plus the root-only steps of a job: :func:`on_root` (run on the root, nothing elsewhere),
:func:`root_decides` (run on the root, every rank gets the result) and
:func:`gather_to_root`.  Pipelines call these and never the communicator itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np

from hpcdiff.parallel.mpi import Comm, gather_rows, reduce_sum, root_decides
from hpcdiff.parallel.partition import partition
from hpcdiff.progress import Timings

T = TypeVar("T")
B = TypeVar("B")
B_co = TypeVar("B_co", covariant=True)


class Reduction(Protocol[B]):
    """How a reduce-then-project collect summarises, combines and projects rows.

    ``summarise(rows (m, d)) -> (k,) float64`` buffer (a mergeable accumulator: buffers of
    several ranks are summed element-wise); ``basis(total (k,)) -> B`` on the root;
    ``project(basis, rows (m, d)) -> (m, p)`` on every rank.
    """

    def summarise(self, rows: np.ndarray) -> np.ndarray: ...

    def basis(self, total: np.ndarray) -> B: ...

    def project(self, basis: B, rows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Collected(Generic[B_co]):
    """What :func:`collect_rows` brought to the root.

    Attributes
    ----------
    rows
        On the root: ``(n_wanted, p)`` rows of the wanted frames in the order of
        ``wanted`` (projected on :attr:`basis` when reduced); ``None`` on other ranks.
    basis
        The reduction's basis on every rank, or ``None`` for a plain gather.
    """

    rows: np.ndarray | None
    basis: B_co | None = None


def rank_and_size(comm: Comm) -> tuple[int, int]:
    """``(rank, size)`` of this process in ``comm``."""
    return comm.Get_rank(), comm.Get_size()


def local_range(comm: Comm, n: int) -> tuple[int, int]:
    """This rank's contiguous block ``[start, stop)`` of ``n`` items (see :func:`partition`)."""
    rank, size = rank_and_size(comm)
    return partition(n, rank, size)


def on_root(comm: Comm, fn: Callable[[], T], *, root: int = 0) -> T | None:
    """``fn()`` on ``root`` (outputs only the root writes); ``None`` on the other ranks.

    An error on the root is the root's alone: wrap the job in
    :func:`~hpcdiff.parallel.mpi.abort_on_error` so that the other ranks do not wait.
    """
    return fn() if comm.Get_rank() == root else None


def gather_to_root(comm: Comm, obj: T, *, root: int = 0) -> list[T] | None:
    """Every rank's small picklable ``obj``, in rank order, on ``root``; ``None`` elsewhere."""
    out: list[T] | None = comm.gather(obj, root=root)
    return out if comm.Get_rank() == root else None


def _check_order(got: np.ndarray | None, expected: np.ndarray) -> None:
    if got is not None and not np.array_equal(got, expected):
        raise RuntimeError("gathered frames are not the frames chosen for training/testing")


def collect_rows(
    comm: Comm,
    frames: np.ndarray,
    rows: np.ndarray,
    *,
    wanted: np.ndarray,
    reduce: Reduction[B] | None = None,
    timings: Timings | None = None,
) -> Collected[B]:
    """Bring the rows of the ``wanted`` frames to the root: gathered, or reduced and projected.

    Parameters
    ----------
    frames
        ``(m,)`` int64 global frame numbers of this rank's ``rows``, increasing; ranks hold
        consecutive blocks, so the gathered rows come in frame order.
    rows
        ``(m, d)`` this rank's rows (features); ``d`` equal on every rank.
    wanted
        ``(n_wanted,)`` sorted global frame numbers whose rows the root needs.
    reduce
        ``None``: gather the rows (``Gatherv``).  A :class:`Reduction`: ``Reduce`` the
        ranks' summaries of their wanted rows, let the root compute the basis, broadcast
        it and gather only the projected rows.
    timings
        MPI time is added to its ``collective`` stage.

    Raises
    ------
    RuntimeError
        On the root, if the gathered frames are not ``wanted`` (ranks out of step).
    """
    timings = timings if timings is not None else Timings()
    keep = np.isin(frames, wanted)
    basis: B | None = None
    local = rows
    if reduce is not None:
        summary = reduce.summarise(rows[keep])
        with timings.section("collective"):
            total = reduce_sum(comm, summary)
        red = reduce

        def make_basis() -> B:
            assert total is not None  # the root holds the sum
            return red.basis(total)

        with timings.section("collective"):
            basis = root_decides(comm, make_basis)
        local = reduce.project(basis, rows)
    with timings.section("collective"):
        got = gather_rows(comm, np.ascontiguousarray(local[keep]))
        got_frames = gather_rows(comm, frames[keep])
    _check_order(got_frames, wanted)
    return Collected(got, basis)


__all__ = [
    "Collected",
    "Reduction",
    "collect_rows",
    "gather_to_root",
    "local_range",
    "on_root",
    "rank_and_size",
    "root_decides",
]

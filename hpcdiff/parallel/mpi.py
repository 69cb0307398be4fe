"""MPI for the batch job: the communicator, its collectives, and aborts.

Everything that touches ``mpi4py`` lives here and imports it lazily, inside functions,
so importing hpcdiff never initialises MPI.  Library code never calls ``MPI.Finalize``
(mpi4py finalises at exit) and never exits the process, except through ``comm.Abort``
in :func:`abort_on_error`, which is the clean way down when one rank fails.

The communicator is passed in everywhere.  :func:`get_comm` gives ``MPI.COMM_WORLD``
when the process was started by a launcher with more than one task (``mpiexec -n N``,
``srun``) and a :class:`SelfComm` otherwise: a real one-process communicator with the
same small API the job uses (the :class:`Comm` protocol), so a laptop run needs no MPI
at all.

The other jobs of the parallel layer live beside this module: rank placement (device and
thread binding) in :mod:`hpcdiff.parallel.placement`, the per-frame loop in
:mod:`hpcdiff.parallel.frame_loop`, the collect step after it in
:mod:`hpcdiff.parallel.collect`, timings and rank-prefixed logging in :mod:`hpcdiff.progress`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, cast

import numpy as np

from hpcdiff.errors import HpcdiffError

log = logging.getLogger("hpcdiff.parallel")

T = TypeVar("T")

EXIT_RANK_FAILED = 1
"""Status passed to ``comm.Abort`` when a rank fails on its own."""

_ABORT_GRACE_S = 0.5

_SIZE_VARIABLES = (
    "PMI_SIZE",  # MPICH / Hydra, srun --mpi=pmi2
    "OMPI_COMM_WORLD_SIZE",  # Open MPI
    "MV2_COMM_WORLD_SIZE",  # MVAPICH
    "PMIX_SIZE",
    "SLURM_STEP_NUM_TASKS",  # srun --mpi=pmix sets PMIX_RANK but no size
)


class CollectiveError(HpcdiffError):
    """An error raised on every rank at once (root found it and told the others).

    The CLI reports it once (on rank 0) and exits with status 1 on every rank: no abort.
    """

    collective = True


# --------------------------------------------------------------------------- communicators


class Comm(Protocol):
    """What hpcdiff uses of an ``mpi4py.MPI.Intracomm``; :class:`SelfComm` implements it.

    Buffer arguments (``sendbuf``, ``recvbuf``) are numpy arrays or mpi4py buffer
    specifications (``[array, counts]``); ``op`` is an ``mpi4py.MPI.Op`` (ignored by
    :class:`SelfComm`).
    """

    def Get_rank(self) -> int: ...  # noqa: N802 - mpi4py names

    def Get_size(self) -> int: ...  # noqa: N802

    def bcast(self, obj: Any, root: int = 0) -> Any: ...

    def gather(self, obj: Any, root: int = 0) -> Any: ...

    def allgather(self, obj: Any) -> Any: ...

    def Barrier(self) -> None: ...  # noqa: N802

    def Reduce(self, sendbuf: Any, recvbuf: Any, op: Any = ..., root: int = 0) -> None: ...  # noqa: N802

    def Allreduce(self, sendbuf: Any, recvbuf: Any, op: Any = ...) -> None: ...  # noqa: N802

    def Gatherv(self, sendbuf: Any, recvbuf: Any, root: int = 0) -> None: ...  # noqa: N802

    def Split_type(self, split_type: int, key: int = 0) -> Comm: ...  # noqa: N802

    def Free(self) -> None: ...  # noqa: N802

    def Abort(self, errorcode: int = 1) -> Any: ...  # noqa: N802


class SelfComm:
    """A real communicator of one process (rank 0 of size 1), for runs without MPI.

    Implements the subset of ``mpi4py.MPI.Comm`` hpcdiff uses, with MPI semantics for a
    single rank: ``bcast``/``reduce``/``allreduce`` return the value, ``gather`` a list of
    one, the buffer collectives copy ``sendbuf`` into ``recvbuf``.
    """

    rank = 0
    size = 1

    def Get_rank(self) -> int:  # noqa: N802 - mpi4py names
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1

    def bcast(self, obj: T, root: int = 0) -> T:
        return obj

    def gather(self, obj: T, root: int = 0) -> list[T]:
        return [obj]

    def allgather(self, obj: T) -> list[T]:
        return [obj]

    def reduce(self, obj: T, op: Any = None, root: int = 0) -> T:
        return obj

    def allreduce(self, obj: T, op: Any = None) -> T:
        return obj

    def Barrier(self) -> None:  # noqa: N802
        return None

    def Reduce(
        self, sendbuf: np.ndarray, recvbuf: np.ndarray, op: Any = None, root: int = 0
    ) -> None:  # noqa: N802
        np.copyto(_buffer(recvbuf), sendbuf)

    def Allreduce(self, sendbuf: np.ndarray, recvbuf: np.ndarray, op: Any = None) -> None:  # noqa: N802
        np.copyto(_buffer(recvbuf), sendbuf)

    def Gatherv(self, sendbuf: np.ndarray, recvbuf: Any, root: int = 0) -> None:  # noqa: N802
        out = _buffer(recvbuf)
        out.reshape(-1)[: np.size(sendbuf)] = np.ravel(sendbuf)

    def Split_type(self, split_type: int = 0, key: int = 0) -> SelfComm:  # noqa: N802
        return self

    def Free(self) -> None:  # noqa: N802
        return None

    def Abort(self, errorcode: int = 1) -> None:  # noqa: N802
        """Terminate the process at once, as ``MPI_Abort`` does."""
        logging.shutdown()
        sys.stderr.flush()
        os._exit(errorcode)


def _buffer(spec: Any) -> np.ndarray:
    return spec[0] if isinstance(spec, list | tuple) else spec


def launched_size(environ: dict[str, str] | None = None) -> int | None:
    """Number of tasks the launcher started, from its environment, or ``None`` if unknown."""
    env = os.environ if environ is None else environ
    for name in _SIZE_VARIABLES:
        value = env.get(name)
        if value and value.isdigit():
            return int(value)
    return None


def get_comm(mode: str | None = None) -> Comm:
    """The job's communicator: ``MPI.COMM_WORLD`` when launched with >1 task, else :class:`SelfComm`.

    Parameters
    ----------
    mode
        ``"auto"`` (default; the ``HPCDIFF_MPI`` environment variable may set it):
        MPI when the launcher's environment says more than one task, or when it names
        no size but ``PMIX_RANK``/``PMI_RANK`` is set.  ``"mpi"`` always initialises MPI;
        ``"none"`` never does.

    Raises
    ------
    RuntimeError
        When launched with more than one task but mpi4py cannot initialise: running the
        whole job once per task would write the same outputs N times.
    """
    mode = mode or os.environ.get("HPCDIFF_MPI", "auto")
    if mode not in ("auto", "mpi", "none"):
        raise ValueError(f"MPI mode must be 'auto', 'mpi' or 'none', got {mode!r}")
    if mode == "none":
        return SelfComm()
    size = launched_size()
    rank_var = any(v in os.environ for v in ("PMIX_RANK", "PMI_RANK"))
    wanted = mode == "mpi" or (size is not None and size > 1) or (size is None and rank_var)
    if not wanted:
        return SelfComm()
    try:
        from mpi4py import MPI
    except Exception as exc:  # ImportError, or RuntimeError from a broken libmpi
        if size is not None and size > 1:
            raise RuntimeError(
                f"started as one of {size} MPI tasks but mpi4py cannot initialise ({exc}); "
                "refusing to run the whole job once per task"
            ) from exc
        log.warning("mpi4py cannot initialise (%s); running as a single process", exc)
        return SelfComm()
    return cast(Comm, MPI.COMM_WORLD)


def is_mpi(comm: Comm) -> bool:
    """Whether ``comm`` is a real MPI communicator (not :class:`SelfComm`)."""
    return not isinstance(comm, SelfComm)


def _mpi_op(comm: Comm, name: str) -> Any:
    if not is_mpi(comm):
        return None
    from mpi4py import MPI

    return getattr(MPI, name)


# --------------------------------------------------------------------------- collectives


def allreduce_sum(comm: Comm, values: np.ndarray) -> np.ndarray:
    """Element-wise sum of a small array over all ranks, on every rank (a new array)."""
    send = np.ascontiguousarray(values)
    out = np.empty_like(send)
    comm.Allreduce(send, out, op=_mpi_op(comm, "SUM"))
    return out


def reduce_sum(comm: Comm, values: np.ndarray, *, root: int = 0) -> np.ndarray | None:
    """Element-wise sum over ranks with ``Reduce``; the result on ``root``, ``None`` elsewhere."""
    send = np.ascontiguousarray(values)
    out = np.empty_like(send) if comm.Get_rank() == root else None
    comm.Reduce(send, out, op=_mpi_op(comm, "SUM"), root=root)
    return out


_MAX_ELEMENTS = 2**30  # per rank per Gatherv round; MPI counts are C ints


def gather_rows(
    comm: Comm, local: np.ndarray, *, root: int = 0, max_elements: int = _MAX_ELEMENTS
) -> np.ndarray | None:
    """Concatenate every rank's rows on ``root`` in rank order (``Gatherv``).

    Parameters
    ----------
    local
        ``(n_rank, *tail)`` array; ``tail`` and dtype equal on every rank, ``n_rank`` may
        differ (and be 0).
    max_elements
        Largest number of elements a rank sends in one ``Gatherv``; bigger blocks go in
        several rounds so MPI's int counts never overflow.

    Returns
    -------
    ``(sum n_rank, *tail)`` on ``root`` (same dtype), ``None`` on other ranks.
    """
    local = np.ascontiguousarray(local)
    rank, size = comm.Get_rank(), comm.Get_size()
    info = comm.allgather((local.shape, local.dtype.str))
    tails = {(shape[1:], dtype) for shape, dtype in info}
    if len(tails) != 1:
        raise ValueError(f"gather_rows: ranks disagree on row shape/dtype: {sorted(tails)}")
    if size == 1:
        return local.copy()
    tail = local.shape[1:]
    row = int(np.prod(tail, dtype=np.int64))
    rows_per_round = max(1, max_elements // max(row, 1))
    counts = [shape[0] for shape, _ in info]
    rounds = max(-(-c // rows_per_round) for c in counts) if any(counts) else 0
    pieces: list[list[np.ndarray]] = [[] for _ in range(size)]
    for k in range(rounds):
        lo = k * rows_per_round
        part = local[lo : lo + rows_per_round]
        sizes = [max(0, min(c - lo, rows_per_round)) for c in counts]
        if rank == root:
            recv = np.empty((sum(sizes), *tail), dtype=local.dtype)
            comm.Gatherv(part, [recv, [s * row for s in sizes]], root=root)
            offsets = np.cumsum([0, *sizes])
            for r in range(size):
                pieces[r].append(recv[offsets[r] : offsets[r + 1]])
        else:
            comm.Gatherv(part, None, root=root)
    if rank != root:
        return None
    flat = [p for r in range(size) for p in pieces[r]]
    return np.concatenate(flat) if flat else np.empty((0, *tail), dtype=local.dtype)


def root_decides(comm: Comm, fn: Callable[[], T], *, root: int = 0) -> T:
    """Run ``fn`` on ``root`` only and broadcast its result, or its error, to every rank.

    For checks that must give one answer (output exists? same config?): on failure every
    rank raises, root the original error and the others a :class:`CollectiveError` with
    its message, so the job stops cleanly without an abort.
    """
    outcome: tuple[bool, Any] | None = None
    error: BaseException | None = None
    if comm.Get_rank() == root:
        try:
            outcome = (True, fn())
        except HpcdiffError as exc:
            error = exc
            outcome = (False, str(exc))
    ok, value = comm.bcast(outcome, root=root)
    if ok:
        return value
    if error is not None:
        error.collective = True  # type: ignore[attr-defined]
        raise error
    raise CollectiveError(value)


@contextlib.contextmanager
def abort_on_error(comm: Comm) -> Iterator[None]:
    """Turn an error on one rank into a clean ``comm.Abort`` instead of a hang.

    Errors that every rank raises together (attribute ``collective = True``, e.g. from
    :func:`root_decides`) and every error of a one-process run propagate normally.  Any
    other exception on a rank of a multi-rank job is logged with the rank, its type,
    message and traceback, then ``comm.Abort(1)`` stops all ranks: the other ranks would
    otherwise wait forever in the next collective.
    """
    try:
        yield
    except BaseException as exc:
        if getattr(exc, "collective", False) or comm.Get_size() == 1:
            raise
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            reason = type(exc).__name__
        else:
            reason = f"{type(exc).__name__}: {exc}"
        # a foreseen error (HpcdiffError: says where and what to do) needs no traceback
        foreseen = isinstance(exc, HpcdiffError)
        log.critical(
            "rank %d failed, aborting all %d ranks: %s%s",
            comm.Get_rank(),
            comm.Get_size(),
            str(exc) if foreseen else reason,
            "" if foreseen else "\n" + "".join(traceback.format_exception(exc)).rstrip(),
        )
        for handler in logging.getLogger("hpcdiff").handlers:
            handler.flush()
        sys.stderr.flush()
        time.sleep(_ABORT_GRACE_S)  # let the launcher forward the message before the teardown
        comm.Abort(EXIT_RANK_FAILED)
        raise  # pragma: no cover - Abort does not return


__all__ = [
    "EXIT_RANK_FAILED",
    "CollectiveError",
    "Comm",
    "SelfComm",
    "abort_on_error",
    "allreduce_sum",
    "gather_rows",
    "get_comm",
    "is_mpi",
    "launched_size",
    "reduce_sum",
    "root_decides",
]

"""MPI for the batch job: the communicator, collectives, device binding, logging, aborts.

Everything that touches ``mpi4py`` lives here and imports it lazily, inside functions,
so importing hpcdiff never initialises MPI.  Library code never calls ``MPI.Finalize``
(mpi4py finalises at exit) and never exits the process, except through ``comm.Abort``
in :func:`abort_on_error`, which is the clean way down when one rank fails.

The communicator is passed in everywhere.  :func:`get_comm` gives ``MPI.COMM_WORLD``
when the process was started by a launcher with more than one task (``mpiexec -n N``,
``srun``) and a :class:`SelfComm` otherwise: a real one-process communicator with the
same small API the job uses, so a laptop run needs no MPI at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

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

    def Split_type(self, split_type: Any = None, key: int = 0) -> SelfComm:  # noqa: N802
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


def get_comm(mode: str | None = None) -> Any:
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
    return MPI.COMM_WORLD


def is_mpi(comm: Any) -> bool:
    """Whether ``comm`` is a real MPI communicator (not :class:`SelfComm`)."""
    return not isinstance(comm, SelfComm)


def _mpi_op(comm: Any, name: str) -> Any:
    if not is_mpi(comm):
        return None
    from mpi4py import MPI

    return getattr(MPI, name)


# --------------------------------------------------------------------------- collectives


def allreduce_sum(comm: Any, values: np.ndarray) -> np.ndarray:
    """Element-wise sum of a small array over all ranks, on every rank (a new array)."""
    send = np.ascontiguousarray(values)
    out = np.empty_like(send)
    comm.Allreduce(send, out, op=_mpi_op(comm, "SUM"))
    return out


def reduce_sum(comm: Any, values: np.ndarray, *, root: int = 0) -> np.ndarray | None:
    """Element-wise sum over ranks with ``Reduce``; the result on ``root``, ``None`` elsewhere."""
    send = np.ascontiguousarray(values)
    out = np.empty_like(send) if comm.Get_rank() == root else None
    comm.Reduce(send, out, op=_mpi_op(comm, "SUM"), root=root)
    return out


_MAX_ELEMENTS = 2**30  # per rank per Gatherv round; MPI counts are C ints


def gather_rows(
    comm: Any, local: np.ndarray, *, root: int = 0, max_elements: int = _MAX_ELEMENTS
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


def root_decides(comm: Any, fn: Callable[[], T], *, root: int = 0) -> T:
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
def abort_on_error(comm: Any) -> Iterator[None]:
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
        log.critical(
            "rank %d failed, aborting all %d ranks: %s\n%s",
            comm.Get_rank(),
            comm.Get_size(),
            reason,
            "".join(traceback.format_exception(exc)).rstrip(),
        )
        for handler in logging.getLogger("hpcdiff").handlers:
            handler.flush()
        sys.stderr.flush()
        time.sleep(_ABORT_GRACE_S)  # let the launcher forward the message before the teardown
        comm.Abort(EXIT_RANK_FAILED)
        raise  # pragma: no cover - Abort does not return


# --------------------------------------------------------------------------- placement


def node_local_rank(comm: Any) -> tuple[int, int]:
    """This rank's index among the ranks on its node, and their number.

    Uses ``comm.Split_type(MPI.COMM_TYPE_SHARED)``; ``(0, 1)`` for :class:`SelfComm`.
    """
    if not is_mpi(comm):
        return 0, 1
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        return local.Get_rank(), local.Get_size()
    finally:
        local.Free()


def slurm_cpus_per_task(environ: dict[str, str] | None = None) -> int | None:
    """SLURM's CPUs per task, from :class:`~hpcdiff.slurm.env.SlurmEnvironment`.

    ``None`` when unset or 0, and (with a warning naming the variable) when the SLURM
    environment holds something SLURM does not write: a thread count is only a hint.
    """
    from hpcdiff.slurm.env import SlurmEnvironment, SlurmEnvironmentError

    try:
        slurm = SlurmEnvironment.from_environ(os.environ if environ is None else environ)
    except SlurmEnvironmentError as exc:
        log.warning("%s; ignoring the SLURM CPU count", exc)
        return None
    return slurm.cpus_per_task or None


def threads_per_rank(
    configured: int | None, *, local_size: int, environ: dict[str, str] | None = None
) -> int:
    """CPU threads for one rank: the job file's value, else SLURM's, else the node's share.

    Parameters
    ----------
    configured
        ``parallel.threads_per_rank`` from the job file, or ``None``.
    local_size
        Number of ranks on this node (they share its cores).
    """
    if configured is not None:
        return configured
    slurm = slurm_cpus_per_task(environ)
    if slurm is not None:
        return slurm
    return max(1, (os.cpu_count() or 1) // max(local_size, 1))


def select_device(
    gpu: str, *, requested: str, local_rank: int, local_size: int, cuda_count: int | None = None
) -> str:
    """The torch device string for this rank: ``"cuda:K"`` or ``"cpu"``.

    Parameters
    ----------
    gpu
        ``parallel.gpu``: ``"auto"`` (one device per node-local rank when the node has
        CUDA devices, the only visible one when SLURM binds one per task), ``"local_rank"``
        (always ``cuda:(local_rank mod n_devices)``), ``"none"`` (CPU).
    requested
        ``features.device``: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    local_rank, local_size
        From :func:`node_local_rank`.
    cuda_count
        Visible CUDA devices; asked from torch when ``None``.

    Raises
    ------
    RuntimeError
        If CUDA is required (``features.device = "cuda"`` or ``parallel.gpu =
        "local_rank"``) but this node has no CUDA device.
    """
    if gpu == "none" or requested == "cpu":
        return "cpu"
    if cuda_count is None:
        import torch

        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda_count == 0:
        if requested == "cuda" or gpu == "local_rank":
            raise RuntimeError(
                "features.device = 'cuda' / parallel.gpu = 'local_rank' but this node has no "
                "CUDA device; use device = 'auto' to fall back to the CPU"
            )
        return "cpu"
    if local_size > cuda_count:
        log.warning(
            "%d ranks on this node share %d GPU(s); consider one rank per GPU",
            local_size,
            cuda_count,
        )
    return f"cuda:{local_rank % cuda_count}"


# --------------------------------------------------------------------------- logging and timing


class _RankFilter(logging.Filter):
    def __init__(self, rank: int, size: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}/{size}]"

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank_prefix = self.prefix
        return True


def setup_logging(rank: int, size: int, *, level: int = logging.INFO) -> logging.Logger:
    """Send the ``hpcdiff`` logger to stderr with every line prefixed by ``[rank r/size]``.

    Calling it again replaces the handler it installed before (idempotent).
    """
    logger = logging.getLogger("hpcdiff")
    for handler in list(logger.handlers):
        if getattr(handler, "_hpcdiff_rank", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._hpcdiff_rank = True  # type: ignore[attr-defined]
    handler.addFilter(_RankFilter(rank, size))
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(rank_prefix)s %(levelname)s %(message)s", "%H:%M:%S")
    )
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


@dataclass
class Timings:
    """Seconds spent per stage on one rank, and frames each stage handled.

    Stages used by the job: ``read`` (HDF5 reads), ``reader`` (all the reader thread's
    work: reads, checks and any preprocessing it does), ``wait_input`` (main thread
    blocked on the prefetch queue), ``compute`` (main thread processing batches), ``preprocess``, ``features``, ``predict``,
    ``checkpoint`` (writing shards), ``collective`` (MPI calls), ``total``.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, stage: str, seconds: float, frames: int = 0) -> None:
        """Add ``seconds`` (and ``frames``) to ``stage`` (from any thread)."""
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            self.frames[stage] = self.frames.get(stage, 0) + frames

    @contextlib.contextmanager
    def section(self, stage: str, frames: int = 0) -> Iterator[None]:
        """Time the ``with`` block as ``stage``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0, frames)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{stage: {"seconds": s, "frames": n, "frames_per_s": n / s}}``."""
        out = {}
        for stage, sec in sorted(self.seconds.items()):
            n = self.frames.get(stage, 0)
            out[stage] = {
                "seconds": round(sec, 6),
                "frames": n,
                "frames_per_s": round(n / sec, 3) if sec > 0 and n else None,
            }
        return out


def timings_table(per_rank: list[dict[str, dict[str, float]]]) -> str:
    """A plain-text table of seconds and frames/s per stage (rows) and rank (columns)."""
    stages = sorted({s for t in per_rank for s in t})
    head = f"{'stage':<12}" + "".join(f"{'rank ' + str(r):>22}" for r in range(len(per_rank)))
    lines = [head, f"{'':<12}" + f"{'s':>10}{'frames/s':>12}" * len(per_rank)]
    for stage in stages:
        row = f"{stage:<12}"
        for t in per_rank:
            entry = t.get(stage)
            if entry is None:
                row += f"{'-':>10}{'-':>12}"
                continue
            rate = entry.get("frames_per_s")
            row += f"{entry['seconds']:>10.2f}" + (f"{rate:>12.1f}" if rate else f"{'-':>12}")
        lines.append(row)
    return "\n".join(lines)


# --------------------------------------------------------------------------- the rank loop


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
    images
        ``(n, 3, H, W)`` float32 CNN images of ``frames`` when the reader thread also
        preprocessed them, else ``None``.
    """

    start: int
    stop: int
    frames: np.ndarray
    numbers: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)
    rejects: list[tuple[int, str]] = field(default_factory=list)
    images: np.ndarray | None = None


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
    comm: Any,
    *,
    n_frames: int,
    read: Callable[[int, int], FrameBatch],
    process: Callable[[FrameBatch], dict[str, np.ndarray]],
    store: Any,
    config_hash: str,
    batch_size: int,
    checkpoint_every: int,
    prefetch_batches: int = 2,
    stop: Any = None,
    progress_interval_s: float = 10.0,
    timings: Timings | None = None,
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
    with Prefetcher(read, ranges, depth=prefetch_batches) as pf:
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
            with timings.section("collective"):
                total = allreduce_sum(comm, step)
            processed += int(total[0])
            rejected += int(total[1])
            done_total += int(total[0])
            now = time.perf_counter()
            final = total[3] == 0 and done_total != last_logged
            if rank == 0 and (now - last_report >= progress_interval_s or final):
                _log_progress(done_total, n_frames, processed, now - t_start)
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


def _log_progress(done: int, total: int, this_run: int, elapsed_s: float) -> None:
    rate = this_run / elapsed_s if elapsed_s > 0 else 0.0
    left = total - done
    eta = f"{left / rate:.0f} s" if rate > 0 else "?"
    pct = 100.0 * done / total if total else 100.0
    log.info("frames %d/%d (%.1f%%), %.1f frames/s, ETA %s", done, total, pct, rate, eta)


__all__ = [
    "EXIT_RANK_FAILED",
    "FrameBatch",
    "LoopOutcome",
    "distributed_map",
    "CollectiveError",
    "SelfComm",
    "Timings",
    "abort_on_error",
    "allreduce_sum",
    "gather_rows",
    "get_comm",
    "is_mpi",
    "launched_size",
    "node_local_rank",
    "reduce_sum",
    "root_decides",
    "select_device",
    "setup_logging",
    "slurm_cpus_per_task",
    "threads_per_rank",
    "timings_table",
]

"""A rank's raw frames read ahead by reader processes, for the ranges its frame loop plans.

``[parallel] reader_processes`` chooses how a rank reads its frames: ``0`` is the one
reader thread of :class:`~hpcdiff.parallel.prefetch.Prefetcher` (it reads, decompresses
and preprocesses in turn); ``N > 0`` puts ``N`` reader processes in front of it
(:class:`~hpcdiff.parallel.process_reader.ProcessReader`), which decompress in parallel
into shared-memory buffers of the file's dtype (int16 ADU stays int16), so the thread only
takes finished batches.  h5py holds one lock for every HDF5 call, so reader *threads*
cannot decompress in parallel; processes can.

:class:`RawFrames` is what the classify job's
:class:`~hpcdiff.pipelines.classify.FrameReader` reads through: ``read_raw(start, stop)``
of the next planned range comes from the processes, in plan order; any other range (the
frame-by-frame retry of a range that failed) is read in the calling thread, as without
processes, so frames, order, rejects and their reasons are the same either way.  The
processes live inside :meth:`RawFrames.plan` (entered by
:func:`~hpcdiff.parallel.frame_loop.distributed_map` around its loop): every way out of
it (the end, an error, KeyboardInterrupt, a stop signal) stops them and unlinks the
shared memory.

:func:`choose_reader_processes` gives the default (``reader_processes`` unset).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from hpcdiff.parallel.process_reader import Outcome, ProcessReader

if TYPE_CHECKING:
    from hpcdiff.progress import Timings

log = logging.getLogger("hpcdiff.parallel")

#: Most reader processes the default gives a GPU rank.
MAX_DEFAULT_PROCESSES = 8


class RawSource(Protocol):
    """What :class:`RawFrames` reads: a picklable frame source (reopened in each worker)."""

    slab_shape: tuple[int, int]

    def read(self, start: int, stop: int) -> np.ndarray: ...


def choose_reader_processes(configured: int | None, *, device: str, threads: int) -> int:
    """Reader processes of one rank: the job file's value, else the default.

    The default is 0 where frames are preprocessed on the CPU: preprocessing takes tens
    of milliseconds of CPU per CSPAD frame, ten or more times what one reader thread
    needs to read and decompress it (3.5 to 5 ms for lz4, 1.2 to 2.5 ms uncompressed, on
    the 2-core development box: ``benchmarks/bench_feed.py --part job``), so the thread
    keeps up and extra processes would only take cores from preprocessing.  A rank that
    preprocesses on its GPU must be fed 2,000 frames/s, 7 to 10 busy cores of that box's
    lz4 decompression (fewer on faster cores), so it gets one process per CPU thread of
    the rank but one (kept for the main thread, which takes 0.1 ms per frame from the
    processes and uploads), at least 1 and at most :data:`MAX_DEFAULT_PROCESSES`.

    Parameters
    ----------
    configured
        ``parallel.reader_processes`` (``None``: not set).
    device
        Where the rank preprocesses frames (``"cpu"``, ``"cuda:K"``).
    threads
        The rank's CPU threads (``parallel.threads_per_rank`` or its default).
    """
    if configured is not None:
        return int(configured)
    if not device.startswith("cuda"):
        return 0
    return max(1, min(MAX_DEFAULT_PROCESSES, threads - 1))


def shared_slots(processes: int, keep: int) -> int:
    """Shared-memory batches of a rank with ``processes`` reader processes: ``keep`` held
    by the consumer and one being read by each process."""
    return processes + keep


class _SourceReader:
    """A worker's ``read(start, stop)`` (and ``read_into``) of one frame source."""

    def __init__(self, source: RawSource) -> None:
        self.source = source
        self._raw = getattr(source, "read_raw", None)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        if self._raw is not None:
            return np.asarray(self._raw(start, stop))
        return np.asarray(self.source.read(start, stop))

    def read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        if self._raw is not None:
            self._raw(start, stop, out=out)
        else:
            out[...] = self.source.read(start, stop)


class SourceFrames:
    """Picklable ``open_reader`` of a frame source: a copy of the source in each worker.

    The source pickles without its open files (each worker opens its own); its
    ``read_raw(start, stop, out=...)`` fills the shared-memory slot directly where it has
    one (CXI :class:`~hpcdiff.io.cxi.FrameSource`), else its float32 ``read`` is copied in.
    """

    def __init__(self, source: RawSource) -> None:
        self.payload = pickle.dumps(source)

    def __call__(self) -> _SourceReader:
        return _SourceReader(pickle.loads(self.payload))


def raw_dtype(source: RawSource) -> np.dtype:
    """The dtype :class:`RawFrames` hands out: the file's (``read_raw``), else float32."""
    if getattr(source, "read_raw", None) is None:
        return np.dtype(np.float32)
    return np.dtype(getattr(source, "dtype", np.float32))


class RawFrames:
    """``read_raw(start, stop)`` of ``source``, planned ranges read ahead by processes.

    Parameters
    ----------
    source
        The rank's frame source; pickled once to the workers.
    processes
        Reader processes (``0``: none, every read in the calling thread).
    batch_size
        Most frames in a planned range.
    keep
        Batches the consumer holds at once (the frame loop: its prefetch depth and two,
        see :func:`~hpcdiff.parallel.frame_loop.distributed_map`); a batch's buffer is
        refilled only after ``keep`` more batches were read.
    start_method
        ``multiprocessing`` start method (``"spawn"``: safe beside MPI, CUDA, threads).
    timings
        Where each plan adds ``reader_cpu``: the CPU seconds the processes spent
        in reads, and the frames they read (:class:`hpcdiff.progress.Timings`).

    Notes
    -----
    The arrays from planned ranges are views of shared memory valid for ``keep`` more
    planned reads and until :meth:`plan` exits: copy them to keep them longer.  The
    processes share :func:`shared_slots` ``(processes, keep)`` batches of shared memory
    (``/dev/shm``): with 16 CSPAD int16 frames a batch (74 MiB), 7 processes and
    ``keep = 4``, 0.8 GiB per rank.
    """

    def __init__(
        self,
        source: RawSource,
        *,
        processes: int,
        batch_size: int,
        keep: int = 4,
        start_method: str = "spawn",
        timings: Timings | None = None,
    ) -> None:
        if processes < 0:
            raise ValueError(f"processes must be >= 0, got {processes}")
        self.source = source
        self.processes = processes
        self.batch_size = batch_size
        self.keep = keep
        self.start_method = start_method
        self.timings = timings
        self._dtype: np.dtype | None = None
        self._reader: ProcessReader | None = None
        self._outcomes: Iterator[Outcome] | None = None
        self._next: tuple[int, int] | None = None
        self._ranges: Iterator[tuple[int, int]] = iter(())
        self._lock = threading.Lock()
        self.from_processes = 0  # planned ranges served by the processes
        self.process_cpu_s = 0.0  # CPU the processes spent reading them (no start-up)

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the frames :meth:`read_raw` gives (:func:`raw_dtype`)."""
        if self._dtype is None:
            self._dtype = raw_dtype(self.source)
        return self._dtype

    def describe(self) -> str:
        """How this rank reads (for run reports)."""
        if self.processes == 0:
            return "1 reader thread"
        return f"{self.processes} reader process(es) into shared {self.dtype} buffers"

    def _read_here(self, start: int, stop: int) -> np.ndarray:
        read_raw = getattr(self.source, "read_raw", None)
        if read_raw is not None:
            return np.asarray(read_raw(start, stop))
        return np.asarray(self.source.read(start, stop))

    @contextlib.contextmanager
    def plan(self, ranges: Sequence[tuple[int, int]]) -> Iterator[RawFrames]:
        """Read ``ranges`` ahead in the processes while the context is open.

        With ``processes == 0`` (or no ranges) nothing starts.  On the way out the
        processes stop and the shared memory is freed, whatever ended the context.
        """
        ranges = [(int(a), int(b)) for a, b in ranges]
        if self.processes == 0 or not ranges:
            yield self
            return
        try:
            dtype = self.dtype  # opens every file of the run
        except (OSError, ValueError, KeyError) as exc:  # FormatError is a ValueError
            # the reads fail the same way in this thread: rejects, as without processes
            log.warning("no reader processes: %s", exc)
            yield self
            return
        reader = ProcessReader(
            SourceFrames(self.source),
            ranges,
            frame_shape=tuple(self.source.slab_shape),
            dtype=dtype,
            batch_size=max(self.batch_size, max(b - a for a, b in ranges)),
            workers=self.processes,
            slots=shared_slots(self.processes, self.keep),
            keep=self.keep,
            start_method=self.start_method,
        )
        log.debug(
            "%d reader process(es), %d shared-memory slots of %.0f MiB",
            self.processes,
            reader.n_slots,
            reader.slot_bytes / 2**20,
        )
        with self._lock:
            self._reader = reader
            self._outcomes = reader.outcomes()
            self._next = ranges[0]
            self._ranges = iter(ranges[1:])
        try:
            yield self
        finally:
            with self._lock:
                outcomes, self._outcomes, self._reader = self._outcomes, None, None
                self._next = None
            if outcomes is not None:
                outcomes.close()  # type: ignore[attr-defined]
            reader.close()
            self.process_cpu_s += reader.read_cpu_s
            if self.timings is not None:
                self.timings.add("reader_cpu", reader.read_cpu_s, reader.read_frames)

    def read_raw(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` in the source's raw dtype, ``(n, n_ss, n_fs)``.

        The next planned range comes from the processes (its error, e.g. a
        :class:`~hpcdiff.errors.FormatError` naming the file and dataset, is raised here
        as the source raises it); any other range is read in this thread.

        Raises
        ------
        RuntimeError
            If a reader process died.
        """
        with self._lock:
            if self._outcomes is None or (start, stop) != self._next:
                planned = None
            else:
                planned = self._outcomes
                self._next = next(self._ranges, None)
        if planned is None:
            return self._read_here(start, stop)
        got = next(planned, None)
        if got is None:  # the processes stopped after an error raised before
            raise RuntimeError(f"reader processes ended before frames [{start}, {stop})")
        if (got.start, got.stop) != (start, stop):  # cannot happen: one consumer, in order
            raise RuntimeError(
                f"reader processes gave [{got.start}, {got.stop}) for [{start}, {stop})"
            )
        self.from_processes += 1
        if got.error is not None:
            raise got.error
        assert got.frames is not None
        return got.frames


def rank_raw_frames(
    source: RawSource,
    *,
    configured: int | None,
    device: str,
    threads: int,
    batch_size: int,
    keep: int,
    timings: Timings | None = None,
) -> RawFrames:
    """The :class:`RawFrames` of one rank of a frame job (the classify job's reader).

    ``configured`` is ``parallel.reader_processes`` (``None``: :func:`choose_reader_processes`).
    A source that cannot be pickled to the workers (psana2's ``DataSource``), or a
    ``/dev/shm`` too small for the slots, is a :class:`~hpcdiff.errors.ConfigError` when
    the job file asks for processes, and with the default a warning and the reader thread.
    """
    from hpcdiff.errors import ConfigError
    from hpcdiff.parallel.process_reader import shared_memory_free

    n = choose_reader_processes(configured, device=device, threads=threads)
    why = None
    if n > 0:
        try:
            pickle.dumps(source)
        except Exception as exc:  # noqa: BLE001 - any pickling failure means the same
            why = f"the frame source cannot be sent to reader processes ({exc})"
        else:
            try:
                itemsize = raw_dtype(source).itemsize
            except (OSError, ValueError, KeyError):  # a file gone: its frames become rejects
                itemsize = 4
            frame_bytes = int(np.prod(source.slab_shape)) * itemsize
            need = shared_slots(n, keep) * max(batch_size, 1) * frame_bytes
            free = shared_memory_free()
            if free is not None and free < need:
                why = (
                    f"/dev/shm has {free / 2**20:.0f} MiB free; {n} reader processes need "
                    f"{need / 2**20:.0f} MiB"
                )
    if why is not None:
        if configured is not None:
            raise ConfigError(
                f"parallel.reader_processes = {configured}: {why}; set it to 0 (one reader "
                "thread) or lower"
            )
        log.warning("%s; reading with one reader thread", why)
        n = 0
    return RawFrames(source, processes=n, batch_size=batch_size, keep=keep, timings=timings)


__all__ = [
    "MAX_DEFAULT_PROCESSES",
    "rank_raw_frames",
    "RawFrames",
    "SourceFrames",
    "choose_reader_processes",
    "raw_dtype",
    "shared_slots",
]

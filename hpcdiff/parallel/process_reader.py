"""Several reader processes per rank, handing frames over in shared memory, in order.

h5py serialises every HDF5 call behind one lock, so reader *threads* do not decompress in
parallel; separate processes do.  :class:`ProcessReader` starts ``workers`` processes, each
opening its own reader once (``open_reader()``, a picklable factory such as
``functools.partial(open_frames, path)``), and keeps ``slots`` batches in flight.  Each
worker reads ``(start, stop)`` straight into a shared-memory slot of ``(batch_size,
*frame_shape)`` frames of the file's dtype; the parent yields the slots' numpy views in the
order of the ranges.  A view is valid until the next batch is asked for (then its slot is
refilled): :class:`~hpcdiff.parallel.device_feed.DeviceFeed` copies it into a pinned slot at
once, so ``DeviceFeed(ProcessReader(...), ...)`` feeds a GPU from several decompressing
processes.

An exception in a worker is raised again in the parent at that batch's place; a worker that
dies is a RuntimeError.  No MPI is called in the workers.  :meth:`ProcessReader.outcomes`
hands each range's frames or error over without ending the stream (a caller may retry a
failed range itself and go on); ``keep`` yielded batches stay valid at once (for a consumer
that queues batches, e.g. behind a :class:`~hpcdiff.parallel.prefetch.Prefetcher`).

Shutdown: the workers ignore SIGINT and SIGTERM (the parent decides: it stops them after
its current batch, e.g. on a :class:`~hpcdiff.parallel.signals.StopFlag`), and leave on
their own within a second when the parent is gone (killed, MPI abort).  The parent unlinks
the shared-memory slots in :meth:`ProcessReader.close`, which every way out of the
iteration calls; after a parent killed outright, multiprocessing's resource tracker does.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import pickle
import queue
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import shared_memory
from typing import NamedTuple, Protocol

import numpy as np

_POLL_S = 0.2
_PARENT_POLL_S = 1.0
_SHM_DIR = "/dev/shm"


class ReadRange(Protocol):
    """``read(start, stop) -> (stop - start, *frame_shape)`` frames, in a worker process."""

    def __call__(self, start: int, stop: int) -> np.ndarray: ...


def _payload(exc: BaseException) -> bytes:
    """``exc`` pickled for the parent; a RuntimeError with its traceback where it cannot be."""
    try:
        payload = pickle.dumps(exc)
        pickle.loads(payload)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        payload = pickle.dumps(RuntimeError(traceback.format_exc()))
    return payload


def _worker(
    open_reader: Callable[[], ReadRange],
    names: list[str],
    shape: tuple[int, ...],
    dtype: str,
    tasks: mp.Queue,
    results: mp.Queue,
) -> None:
    # the parent decides when to stop (a StopFlag, KeyboardInterrupt): not a signal that
    # SLURM or a terminal sends to the whole process group
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = mp.parent_process()
    blocks = [shared_memory.SharedMemory(name=n) for n in names]
    views = [np.ndarray(shape, dtype=dtype, buffer=b.buf) for b in blocks]
    for v in views:  # map every page now (reading only: other workers may be filling it)
        int(v.reshape(-1).view(np.uint8)[:: mmap.PAGESIZE].sum())
    read: ReadRange | None = None
    open_error: bytes | None = None
    try:
        read = open_reader()
    except Exception as exc:  # e.g. the file is missing: every range reports it
        open_error = _payload(exc)
    try:
        while True:
            try:
                task = tasks.get(timeout=_PARENT_POLL_S)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return  # the parent was killed: nobody will read or stop us
                continue
            if task is None:
                return
            index, start, stop, slot = task
            cpu0 = time.process_time()
            if read is None:
                results.put((index, slot, 0, open_error, 0.0))
                continue
            try:
                n = stop - start
                read_into = getattr(read, "read_into", None)
                if read_into is not None:  # straight into shared memory, no temporary
                    read_into(start, stop, views[slot][:n])
                else:
                    frames = np.asarray(read(start, stop))
                    if frames.shape != (n, *shape[1:]) or frames.dtype != np.dtype(dtype):
                        raise ValueError(
                            f"reader gave frames {frames.shape} {frames.dtype} for range "
                            f"[{start}, {stop}); expected {(n, *shape[1:])} {dtype}"
                        )
                    views[slot][:n] = frames
                results.put((index, slot, n, None, time.process_time() - cpu0))
            except Exception as exc:  # handed to the parent in order
                results.put((index, slot, 0, _payload(exc), time.process_time() - cpu0))
    finally:
        del views
        for b in blocks:
            b.close()


class Outcome(NamedTuple):
    """One range as :meth:`ProcessReader.outcomes` hands it over: its frames or its error."""

    start: int
    stop: int
    frames: np.ndarray | None
    """``(stop - start, *frame_shape)`` view of a shared-memory slot, or ``None``."""
    error: BaseException | None


def shared_memory_free(path: str = _SHM_DIR) -> int | None:
    """Bytes free for POSIX shared memory (``/dev/shm``), or ``None`` where unknown."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return int(st.f_bavail) * int(st.f_frsize)


class ProcessReader:
    """Iterate over ``read(start, stop)`` of each range, read by ``workers`` processes.

    Parameters
    ----------
    open_reader
        Picklable callable run once in each worker, returning ``read(start, stop)``.
    ranges
        ``(start, stop)`` ranges of at most ``batch_size`` frames, yielded in this order.
    frame_shape, dtype
        Of one frame as read (``int16`` stays ``int16``).
    batch_size
        Most frames in a range.
    workers
        Reader processes.
    slots
        Shared-memory batches (default ``2 * workers + keep - 1``: ``keep`` held by the
        consumer, the rest being read or ready).
    keep
        Yielded batches that stay valid at once: a batch's slot is refilled only after
        ``keep`` more batches have been asked for (1: valid until the next one).
    start_method
        ``multiprocessing`` start method; ``"spawn"`` is safe beside threads, CUDA and MPI.

    Raises
    ------
    OSError
        At the start of the iteration, when ``/dev/shm`` has no room for the slots.
    """

    def __init__(
        self,
        open_reader: Callable[[], ReadRange],
        ranges: Iterable[tuple[int, int]],
        *,
        frame_shape: tuple[int, ...],
        dtype: np.dtype | type,
        batch_size: int,
        workers: int = 2,
        slots: int | None = None,
        keep: int = 1,
        start_method: str = "spawn",
    ) -> None:
        if workers < 1 or batch_size < 1 or keep < 1:
            raise ValueError(
                f"workers, batch_size and keep must be >= 1; got {workers}, {batch_size}, {keep}"
            )
        self.ranges = [(int(a), int(b)) for a, b in ranges]
        for a, b in self.ranges:
            if not 0 < b - a <= batch_size:
                raise ValueError(
                    f"range [{a}, {b}) is empty or longer than batch_size {batch_size}"
                )
        self.shape = (batch_size, *(int(s) for s in frame_shape))
        self.dtype = np.dtype(dtype)
        self.workers = workers
        self.keep = keep
        self.n_slots = slots if slots is not None else 2 * workers + keep - 1
        if self.n_slots < keep + 1:
            raise ValueError(f"slots ({self.n_slots}) must exceed keep ({keep})")
        self._open_reader = open_reader
        self._ctx = mp.get_context(start_method)
        self._blocks: list[shared_memory.SharedMemory] = []
        self._procs: list[mp.process.BaseProcess] = []
        self._tasks: mp.Queue | None = None
        self.read_cpu_s = 0.0  # CPU seconds the workers spent reading the ranges handed over
        self.read_frames = 0  # frames in those ranges

    @property
    def slot_bytes(self) -> int:
        """Bytes of one shared-memory slot (``batch_size`` frames)."""
        return max(int(np.prod(self.shape)) * self.dtype.itemsize, 1)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Each range's frames in order; a range's error is raised at its place (the end)."""
        for got in self.outcomes():
            if got.error is not None:
                raise got.error
            assert got.frames is not None
            yield got.frames

    def outcomes(self) -> Iterator[Outcome]:
        """Each range's :class:`Outcome` in order, errors included, then the shutdown.

        A worker that died is a RuntimeError raised here (the stream ends).
        """
        free_shm = shared_memory_free()
        need = self.slot_bytes * self.n_slots
        if free_shm is not None and free_shm < need:
            raise OSError(
                f"{_SHM_DIR} has {free_shm / 2**20:.0f} MiB free; {self.workers} reader "
                f"process(es) need {need / 2**20:.0f} MiB of shared memory ({self.n_slots} "
                f"slots of {self.shape[0]} frames); use fewer reader processes or a smaller "
                "batch"
            )
        self._blocks = [
            shared_memory.SharedMemory(create=True, size=self.slot_bytes)
            for _ in range(self.n_slots)
        ]
        views = [np.ndarray(self.shape, dtype=self.dtype, buffer=b.buf) for b in self._blocks]
        for v in views:  # allocate the pages now, not in the first reads
            v.fill(0)
        tasks: mp.Queue = self._ctx.Queue()
        results: mp.Queue = self._ctx.Queue()
        self._tasks = tasks
        names = [b.name for b in self._blocks]
        self._procs = [
            self._ctx.Process(  # type: ignore[attr-defined]
                target=_worker,
                args=(self._open_reader, names, self.shape, self.dtype.str, tasks, results),
                daemon=True,
                name=f"hpcdiff-reader-{k}",
            )
            for k in range(self.workers)
        ]
        free = list(range(self.n_slots))
        held: list[int] = []  # slots of yielded batches still valid, oldest first
        sent = 0
        done: dict[int, tuple[int, int, bytes | None, float]] = {}
        try:
            for p in self._procs:
                p.start()
            for index in range(len(self.ranges)):
                while len(held) >= self.keep:  # the consumer has let go of the oldest
                    free.append(held.pop(0))
                while free and sent < len(self.ranges):
                    start, stop = self.ranges[sent]
                    tasks.put((sent, start, stop, free.pop(0)))
                    sent += 1
                while index not in done:
                    got = self._result(results)
                    done[got[0]] = got[1:]
                slot, n, error, cpu_s = done.pop(index)
                self.read_cpu_s += cpu_s
                self.read_frames += n
                start, stop = self.ranges[index]
                held.append(slot)
                if error is not None:
                    yield Outcome(start, stop, None, pickle.loads(error))
                else:
                    yield Outcome(start, stop, views[slot][:n], None)
        finally:
            del views
            self.close()

    def _result(self, results: mp.Queue) -> tuple[int, int, int, bytes | None, float]:
        while True:
            try:
                return results.get(timeout=_POLL_S)
            except queue.Empty:
                dead = [p for p in self._procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(
                        f"reader process {dead[0].name} died (exit code {dead[0].exitcode})"
                    ) from None

    def close(self) -> None:
        """Stop the workers (after their current range) and free the shared memory.

        Idempotent; every way out of :meth:`outcomes` calls it.  Views handed out before
        must not be used afterwards.
        """
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            try:  # drop ranges not started yet (after an error or an early stop)
                while True:
                    tasks.get_nowait()
            except (queue.Empty, OSError, ValueError):
                pass
            for _ in self._procs:
                tasks.put(None)
        for p in self._procs:
            if p.pid is None:  # never started
                continue
            p.join(timeout=5.0)
            if p.is_alive():
                p.terminate()
                p.join()
        for b in self._blocks:
            b.unlink()  # the name goes now; the memory when the last mapping closes
        _close_blocks([*_UNCLOSED, *self._blocks])
        self._blocks = []
        if tasks is not None:
            tasks.close()
            tasks.join_thread()


_UNCLOSED: list[shared_memory.SharedMemory] = []


def _close_blocks(blocks: list[shared_memory.SharedMemory]) -> None:
    """Close ``blocks``; one whose memory a consumer still holds a view of (a batch not yet
    dropped) waits in ``_UNCLOSED`` and is closed by a later call (it is unlinked already,
    so nothing outlives the process)."""
    for b in blocks:
        try:
            b.close()
        except BufferError:
            if b not in _UNCLOSED:
                _UNCLOSED.append(b)
            continue
        if b in _UNCLOSED:
            _UNCLOSED.remove(b)


class H5Frames:
    """Picklable factory (``open_reader``) of readers of ``dataset[start:stop]`` of one HDF5 file.

    Called in a worker, it opens the file once and returns an :class:`H5Reader`.
    """

    def __init__(self, path: str, dataset: str) -> None:
        self.path = str(path)
        self.dataset = dataset

    def __call__(self) -> H5Reader:
        return H5Reader(self.path, self.dataset)


class H5Reader:
    """Frames ``dataset[start:stop]`` of an open HDF5 file, in the dataset's own dtype."""

    def __init__(self, path: str, dataset: str) -> None:
        import h5py
        import hdf5plugin  # noqa: F401  (a spawned worker registers the lz4/bitshuffle filters)

        self.path = path
        self.dataset = dataset
        self._dset = h5py.File(path, "r")[dataset]

    def _check(self, start: int, stop: int) -> None:
        from hpcdiff.errors import FormatError

        n_frames = int(self._dset.shape[0])
        if not 0 <= start < stop <= n_frames:
            raise FormatError(
                self.path,
                f"frames [{start}, {stop}) asked for; it holds {n_frames}",
                dataset=self.dataset,
            )

    def __call__(self, start: int, stop: int) -> np.ndarray:
        self._check(start, stop)
        return np.asarray(self._dset[start:stop])

    def read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        """Frames ``[start, stop)`` decompressed straight into ``out`` (``read_direct``)."""
        self._check(start, stop)
        self._dset.read_direct(out, np.s_[start:stop])


__all__ = [
    "H5Frames",
    "H5Reader",
    "Outcome",
    "ProcessReader",
    "ReadRange",
    "shared_memory_free",
]

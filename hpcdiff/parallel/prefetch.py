"""Read the next batch while the current one is processed (one reader thread per rank).

The reader thread calls ``read(start, stop)`` for each range in turn and puts the result
in a bounded queue of ``depth`` batches, so at most ``depth + 2`` batches are in memory
(queued, being read, being processed) whatever the size of the rank's block.  HDF5
reads and decompression overlap the GPU/CPU work of the main thread, which is the only
thread that ever calls MPI.

Time is recorded on both sides: ``read_s`` (the reader thread inside ``read``) and
``wait_s`` (the main thread blocked waiting for input).  ``wait_s`` near zero means
input is hidden behind compute.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher(Generic[T]):
    """Iterate over ``read(start, stop)`` for each range, reading ahead in a thread.

    Parameters
    ----------
    read
        Called in the reader thread as ``read(start, stop)``; must not call MPI.
    ranges
        The ``(start, stop)`` ranges, consumed lazily in order.
    depth
        Maximum number of finished batches waiting in the queue (>= 1).

    Notes
    -----
    An exception raised by ``read`` is re-raised in the consuming thread at that batch's
    position; the reader stops there.  Use as a context manager (or call :meth:`close`)
    so that an early exit stops the thread and frees queued batches.

    Examples
    --------
    >>> with Prefetcher(lambda a, b: list(range(a, b)), [(0, 2), (2, 3)], depth=1) as pf:
    ...     [x for x in pf]
    [[0, 1], [2]]
    """

    def __init__(
        self,
        read: Callable[[int, int], T],
        ranges: Iterable[tuple[int, int]],
        *,
        depth: int = 2,
    ) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._read = read
        self._ranges = iter(ranges)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.read_s = 0.0
        self.wait_s = 0.0
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name="hpcdiff-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for start, stop in self._ranges:
                if self._stop.is_set():
                    return
                t0 = time.perf_counter()
                try:
                    item: object = self._read(start, stop)
                except BaseException as exc:  # handed to the consumer, which decides
                    self.read_s += time.perf_counter() - t0
                    self._put(_Failure(exc))
                    return
                self.read_s += time.perf_counter() - t0
                if not self._put(item):
                    return
        finally:
            self._put(_END)

    def __iter__(self) -> Iterator[T]:
        while True:
            t0 = time.perf_counter()
            item = self._queue.get()
            self.wait_s += time.perf_counter() - t0
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            self.batches += 1
            yield item  # type: ignore[misc]

    def close(self) -> None:
        """Stop the reader thread and drop any batches still queued."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Prefetcher"]

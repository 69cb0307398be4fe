"""Hand a device array to another stream (another thread, another library) without a host wait.

The classify job preprocesses a batch with cupy in its reader thread, on that thread's
current cupy stream, and the CNN thread reads the images with torch on torch's current
stream.  Instead of ``stream.synchronize()`` (the host waits for the whole batch)
:func:`stream_ready` records an event on the producer's stream once the batch's kernels are
queued and wraps the array in :class:`StreamReady`; whoever reads it through DLPack
(``torch.from_dlpack`` passes its current stream to ``__dlpack__(stream=...)``, as the
array API standard says) has its stream wait on that event first.  Both steps are
asynchronous: the host never blocks inside the batch loop.

The stream calls go through a :class:`StreamOps` (cupy's by default, imported on first
use), so CPU tests exercise the logic with a recording stand-in; ``tests/test_stream_handoff.py``
has a gpu-marked test of the real thing.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Protocol

#: DLPack ``stream`` values for CUDA (array API standard): ``None`` and 1 are the legacy
#: default stream, 2 the per-thread default stream, -1 "do not synchronise".
LEGACY_STREAM = 1
NO_SYNC = -1
_CPU_DEVICE_TYPES = frozenset({1, 3})  # kDLCPU, kDLCUDAHost (pinned host memory)


class StreamOps(Protocol):
    """The two stream operations the hand-off needs."""

    def record(self) -> object:
        """An event recorded now on the calling thread's current (producer) stream."""
        ...

    def wait(self, stream: int, event: object) -> None:
        """Make the stream with DLPack handle ``stream`` wait for ``event`` (asynchronous)."""
        ...


class CupyStreamOps:
    """:class:`StreamOps` with cupy: events on cupy's current stream, waits through
    ``cupy.cuda.ExternalStream`` (the legacy and per-thread default streams, handles 1 and
    2, are valid stream handles in the CUDA API)."""

    def __init__(self) -> None:
        self._cupy: Any = importlib.import_module("cupy")

    def record(self) -> object:
        return self._cupy.cuda.get_current_stream().record()

    def wait(self, stream: int, event: object) -> None:
        self._cupy.cuda.ExternalStream(int(stream)).wait_event(event)


class DLPackArray(Protocol):
    """A device array exchanged through DLPack (a cupy array, say)."""

    shape: tuple[int, ...]

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any: ...

    def __dlpack_device__(self) -> tuple[int, int]: ...


class StreamReady:
    """A device array whose producer work ends at :attr:`event`; DLPack readers wait for it.

    Parameters
    ----------
    array
        The array (any shape and dtype), written by work queued on the producer's stream.
    event
        Recorded on that stream after the work (:meth:`StreamOps.record`).
    ops
        Makes a consumer's stream wait on ``event``.

    Notes
    -----
    ``__dlpack__(stream=s)`` makes stream ``s`` wait on :attr:`event` (once per stream, also
    when a consumer retries the call with fewer keywords), then returns ``array``'s own
    capsule for ``s``.  ``stream=-1`` asks for no synchronisation; host (CPU) arrays need
    none.  A consumer that uses the array with the producer's library calls
    :meth:`wait_on` (or reads :attr:`array` on the producer's stream).
    """

    def __init__(self, array: DLPackArray, event: object, ops: StreamOps) -> None:
        self.array = array
        self.event = event
        self._ops = ops
        self._waited: set[int] = set()
        self._lock = threading.Lock()

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return tuple(self.array.shape)

    def __len__(self) -> int:
        return int(self.shape[0])

    def wait_on(self, stream: int | None) -> None:
        """Make the stream with DLPack handle ``stream`` (``None``: the legacy default
        stream) wait for the producer's work; asynchronous, once per stream."""
        handle = LEGACY_STREAM if stream is None else int(stream)
        if handle == NO_SYNC:
            return
        with self._lock:
            if handle in self._waited:
                return
            self._ops.wait(handle, self.event)
            self._waited.add(handle)

    def __dlpack__(self, *, stream: int | None = None, **kwargs: Any) -> Any:
        if self.__dlpack_device__()[0] not in _CPU_DEVICE_TYPES:
            self.wait_on(stream)
            return self.array.__dlpack__(stream=stream, **kwargs)
        return self.array.__dlpack__(**kwargs)  # host memory: no stream

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.array.__dlpack_device__()


def stream_ready(array: DLPackArray, *, ops: StreamOps | None = None) -> StreamReady:
    """``array`` with an event recorded now on the current stream (no host wait).

    Call it in the producer's thread after the last kernel writing ``array`` is queued.

    Parameters
    ----------
    array
        Device array (a cupy array on the current device).
    ops
        Stream operations; default :class:`CupyStreamOps`.
    """
    ops = ops if ops is not None else CupyStreamOps()
    return StreamReady(array, ops.record(), ops)


__all__ = ["CupyStreamOps", "StreamOps", "StreamReady", "stream_ready"]

"""Raw frames to the device: native dtype, pinned slots, a dedicated upload stream, two slots.

The host reads frames in their file's dtype (Cheetah int16 ADU: half the bytes of float32)
and the device widens them.  :class:`SlotUploader` owns ``slots`` (default 2) buffer sets,
each a host buffer ``(batch_size, *frame_shape)`` of the frames' dtype (page-locked on
CUDA, so the copy is a true DMA and can be asynchronous), a device buffer of that dtype and
a device float32 buffer.  :meth:`SlotUploader.upload` copies a filled host slot to the
device on its own CUDA stream, converts it to float32 there, records an event and makes the
consumer's stream wait on it; nothing synchronises the host with the device inside a batch.

:class:`DeviceFeed` puts a reader thread in front: the reader fills one slot while the device
consumes the other (double buffering), so reading, upload and compute overlap.  Batches come
out in order as float32 torch tensors on the device, views of the slot buffers (no
allocation per batch); :func:`handoff` passes them on to cupy or numpy through DLPack
without a copy.  A tensor is valid until the next batch is asked for: copy it to keep it.

On a CPU device the same code runs without streams or pinning (host buffer and device
buffer are one), so CPU tests exercise the slot logic, order, reuse and errors.

torch is imported inside functions; cupy only by :func:`handoff` ``kind="cupy"``.
"""

from __future__ import annotations

import importlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

_END = object()
_POLL_S = 0.1


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    import torch

    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


class SlotUploader:
    """Reused host/device buffer slots and the asynchronous upload between them.

    Parameters
    ----------
    batch_size
        Most frames in one batch.
    frame_shape
        Shape of one raw frame, e.g. ``(n_ss, n_fs)`` pixels.
    dtype
        The frames' dtype as read (``int16``, ``uint16``, ``int32``, ``float32``, ...);
        kept on the host and through the upload, widened to float32 on the device.
    device
        Torch device string: ``"cuda:K"`` (pinned host buffers, an upload stream, events)
        or ``"cpu"`` (plain buffers, no streams).
    slots
        Number of buffer sets (2: fill one while the device consumes the other).
    """

    def __init__(
        self,
        *,
        batch_size: int,
        frame_shape: tuple[int, ...],
        dtype: np.dtype | type,
        device: str = "cpu",
        slots: int = 2,
    ) -> None:
        import torch

        if batch_size < 1 or slots < 1:
            raise ValueError(f"batch_size and slots must be >= 1; got {batch_size}, {slots}")
        self.batch_size = batch_size
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.dtype = np.dtype(dtype)
        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        if self.on_cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        shape = (batch_size, *self.frame_shape)
        raw = _torch_dtype(self.dtype)
        self.host = [torch.empty(shape, dtype=raw, pin_memory=self.on_cuda) for _ in range(slots)]
        if self.on_cuda:
            self.raw = [torch.empty(shape, dtype=raw, device=self.device) for _ in range(slots)]
            self.stream: torch.cuda.Stream | None = torch.cuda.Stream(self.device)
            self._uploaded = [torch.cuda.Event() for _ in range(slots)]  # host slot free
            self._ready = [torch.cuda.Event() for _ in range(slots)]  # float32 slot ready
            self._consumed: list[torch.cuda.Event | None] = [None] * slots
        else:
            self.raw = self.host  # the host buffer is the device buffer
            self.stream = None
        self.out = [
            torch.empty(shape, dtype=torch.float32, device=self.device) for _ in range(slots)
        ]
        self._next = 0

    @property
    def slots(self) -> int:
        """Number of buffer sets."""
        return len(self.host)

    def fill(self, slot: int, frames: np.ndarray) -> int:
        """Copy a host batch ``(n, *frame_shape)`` of :attr:`dtype` into host slot ``slot``.

        Waits first (CUDA only) until the slot's previous upload has left the host buffer.

        Returns
        -------
        int
            ``n``, the frames in the batch.

        Raises
        ------
        ValueError
            Wrong frame shape, more than ``batch_size`` frames, or another dtype (frames are
            never converted on the host).
        """
        frames = np.asarray(frames)
        if frames.shape[1:] != self.frame_shape or len(frames) > self.batch_size:
            raise ValueError(
                f"batch of shape {frames.shape}; expected (n <= {self.batch_size}, "
                f"*{self.frame_shape})"
            )
        if frames.dtype != self.dtype:
            raise ValueError(
                f"frames of dtype {frames.dtype}; this feed carries {self.dtype} (the device "
                "converts; read frames in their file's dtype)"
            )
        if self.on_cuda:
            self._uploaded[slot].synchronize()  # releases the GIL while it waits
        n = len(frames)
        np.copyto(self.host[slot][:n].numpy(), frames, casting="no")
        return n

    def upload(
        self, slot: int, n: int, *, consumer: torch.cuda.Stream | None = None
    ) -> torch.Tensor:
        """Start the upload and float32 conversion of host slot ``slot``'s first ``n`` frames.

        On CUDA both run on :attr:`stream`, after the consumer has finished with the slot's
        previous contents (:meth:`consumed`); ``consumer`` (default: the current stream)
        waits for the result through an event.  On the CPU the conversion runs at once.

        Returns
        -------
        torch.Tensor
            ``(n, *frame_shape)`` float32 on the device, a view of the slot's buffer.
        """
        import torch

        out = self.out[slot][:n]
        if self.stream is None:
            out.copy_(self.raw[slot][:n])
            return out
        done = self._consumed[slot]
        if done is not None:
            self.stream.wait_event(done)
        with torch.cuda.stream(self.stream):
            self.raw[slot][:n].copy_(self.host[slot][:n], non_blocking=True)
            self._uploaded[slot].record(self.stream)
            out.copy_(self.raw[slot][:n])  # int16 -> float32 on the device
            self._ready[slot].record(self.stream)
        target = consumer if consumer is not None else torch.cuda.current_stream(self.device)
        target.wait_event(self._ready[slot])
        return out

    def consumed(self, slot: int, *, consumer: torch.cuda.Stream | None = None) -> None:
        """Mark that work queued so far on ``consumer`` is the last to read slot ``slot``."""
        import torch

        if self.stream is None:
            return
        event = torch.cuda.Event()
        event.record(consumer if consumer is not None else torch.cuda.current_stream(self.device))
        self._consumed[slot] = event

    def to_device(
        self, frames: np.ndarray, *, consumer: torch.cuda.Stream | None = None
    ) -> torch.Tensor:
        """Fill the next slot in turn and upload it (for a caller without a reader thread).

        The result is valid until ``slots`` more batches have been uploaded.
        """
        slot = self._next
        self._next = (slot + 1) % self.slots
        self.consumed((slot - 1) % self.slots, consumer=consumer)
        return self.upload(slot, self.fill(slot, frames), consumer=consumer)


class DeviceFeed:
    """Iterate over host batches as float32 device tensors, reading ahead in a thread.

    Parameters
    ----------
    batches
        Host batches ``(n, *frame_shape)`` of one dtype, ``n <= batch_size`` (the last one
        may be shorter); consumed lazily in the reader thread.
    batch_size, frame_shape, dtype, device, slots
        As for :class:`SlotUploader`.

    Notes
    -----
    Each yielded tensor is a view of a slot buffer and is valid until the next one is
    asked for.  An exception raised while reading is raised again in the consumer, after
    the batches read before it.  Leaving the loop early (``break``, an error) stops the
    reader thread; :meth:`close` does the same explicitly.
    """

    def __init__(
        self,
        batches: Iterable[np.ndarray],
        *,
        batch_size: int,
        frame_shape: tuple[int, ...],
        dtype: np.dtype | type,
        device: str = "cpu",
        slots: int = 2,
    ) -> None:
        self.uploader = SlotUploader(
            batch_size=batch_size, frame_shape=frame_shape, dtype=dtype, device=device, slots=slots
        )
        self._batches = batches
        self._free: queue.Queue[int] = queue.Queue()
        for slot in range(slots):
            self._free.put(slot)
        self._ready: queue.Queue[object] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="hpcdiff-device-feed", daemon=True)
        self._started = False

    def _read(self) -> None:
        try:
            for frames in self._batches:
                slot = self._take_free()
                if slot is None:
                    return
                self._ready.put((slot, self.uploader.fill(slot, frames)))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._ready.put(_Failure(exc))
            return
        self._ready.put(_END)

    def _take_free(self) -> int | None:
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return None

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self._started:
            raise RuntimeError("a DeviceFeed can be iterated once")
        self._started = True
        self._thread.start()
        try:
            while True:
                item = self._ready.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                assert isinstance(item, tuple)
                slot, n = item
                out = self.uploader.upload(slot, n)
                # the host buffer may be refilled once its copy has left (fill waits for it)
                self._free.put(slot)
                yield out
                self.uploader.consumed(slot)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the reader thread (it finishes the batch it is copying) and wait for it."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> DeviceFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def handoff(tensor: torch.Tensor, kind: Literal["torch", "cupy", "numpy"] = "torch") -> object:
    """The same memory as ``tensor`` for the next stage, through DLPack (no copy).

    Parameters
    ----------
    tensor
        A device tensor from :class:`DeviceFeed` or :meth:`SlotUploader.upload`.
    kind
        ``"torch"`` (the tensor itself), ``"cupy"`` (``cupy.from_dlpack``, CUDA tensors) or
        ``"numpy"`` (``numpy.from_dlpack``, CPU tensors).
    """
    if kind == "torch":
        return tensor
    if kind == "cupy":
        cupy = importlib.import_module("cupy")
        return cupy.from_dlpack(tensor)
    if kind == "numpy":
        return np.from_dlpack(tensor)
    raise ValueError(f"unknown kind {kind!r}; valid choices: 'torch', 'cupy', 'numpy'")


class DeviceUpload:
    """``frames -> float32 frames on the device`` through reused pinned slots, one call a batch.

    For a caller that reads in its own thread (the classify job's reader thread): the slots
    are (re)built for the first batch and whenever the frame shape or dtype changes or a
    batch is larger than any before.  The result is valid until ``slots`` more calls.

    Parameters
    ----------
    device
        Torch device string (``"cuda:K"``; ``"cpu"`` runs the same logic without streams).
    kind
        What to return: ``"cupy"`` (the consumer stream is cupy's current one), ``"torch"``
        or ``"numpy"`` (CPU only), all sharing the slot's memory through DLPack.
    slots
        Buffer sets in rotation.
    """

    def __init__(
        self, device: str, *, kind: Literal["torch", "cupy", "numpy"] = "cupy", slots: int = 2
    ) -> None:
        self.device = device
        self.kind = kind
        self.slots = slots
        self.uploader: SlotUploader | None = None
        self._lock = threading.Lock()  # one batch at a time, whichever thread calls

    def _consumer(self) -> torch.cuda.Stream | None:
        import torch

        if self.kind != "cupy":
            return None
        cupy = importlib.import_module("cupy")
        ptr = int(cupy.cuda.get_current_stream().ptr)
        dev = torch.device(self.device)
        if ptr == 0:  # cupy's null stream is CUDA's legacy default stream, torch's default
            return torch.cuda.default_stream(dev)
        return torch.cuda.ExternalStream(ptr, device=dev)

    def __call__(self, frames: np.ndarray) -> object:
        """Upload ``(n, *frame_shape)`` host frames; ``(n, *frame_shape)`` float32 back."""
        with self._lock:
            return self._call(np.asarray(frames))

    def _call(self, frames: np.ndarray) -> object:
        up = self.uploader
        if (
            up is None
            or up.frame_shape != frames.shape[1:]
            or up.dtype != frames.dtype
            or up.batch_size < len(frames)
        ):
            up = self.uploader = SlotUploader(
                batch_size=max(len(frames), 1),
                frame_shape=frames.shape[1:],
                dtype=frames.dtype,
                device=self.device,
                slots=self.slots,
            )
        return handoff(up.to_device(frames, consumer=self._consumer()), self.kind)


__all__ = ["DeviceFeed", "DeviceUpload", "SlotUploader", "handoff"]

"""Batched VGG16 feature extraction: images in [0, 1] -> feature vectors."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np

from hpcdiff.features.layers import LAYER_SIZES, layer_note, resolve_layer
from hpcdiff.features.vgg16 import VGG16
from hpcdiff.features.weights import WeightsInfo, check_layer, load_weights

log = logging.getLogger("hpcdiff.features")

if TYPE_CHECKING:  # pragma: no cover - torch is imported lazily, never at import time
    import torch


class SupportsDLPack(Protocol):
    """An array that can be shared without a copy through DLPack (a cupy array, say)."""

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any: ...

    def __dlpack_device__(self) -> tuple[int, int]: ...


ImageInput: TypeAlias = "np.ndarray | torch.Tensor | SupportsDLPack"
"""What :meth:`FeatureExtractor.extract` accepts: numpy, torch (any device) or DLPack arrays."""


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; other names unchanged."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA device")
    return device


def cpu_forward_batch(threads: int) -> int:
    """Images per VGG16 forward pass on the CPU with ``threads`` torch threads: 2 per
    thread, at least 4.

    Measured on 2 cores with AMX bf16 (``benchmarks/bench_throughput.py``-style, pool5,
    images per second, interleaved): batch 1: 40.5, 2: 44.3, 4: 46.6, 8: 37.3, 16: 32.7 --
    beyond a few images the activations leave the cache.
    """
    return max(4, 2 * int(threads))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16
    autocast makes VGG16 several times faster than fp32 (3x measured by
    ``benchmarks/bench_pipeline.py`` on a 2-core Sapphire Rapids); emulated bf16 is slower."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: stay with fp32
        return False


class FeatureExtractor:
    """VGG16 features of CNN images, as the method uses them.

    Parameters
    ----------
    weights
        ``"hub"``, ``"random:SEED"`` or a checkpoint path (:func:`~hpcdiff.features.weights.load_weights`).
    layer
        ``"fc6+fc7"`` (8192 values, default), ``"fc7"`` (4096), ``"pool5"`` (25088), ``"gap"``
        (512), or ``"auto"``: fc6+fc7 where the weights hold the fc layers, else
        :data:`~hpcdiff.features.layers.BEST_CONV_LAYER` (:attr:`layer` is the resolved
        name; :meth:`run_info` says why).
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    bf16
        bfloat16 autocast on CUDA devices.
    bf16_cpu
        bfloat16 autocast on the CPU too: ``True``, ``False`` or ``"auto"`` (on where
        :func:`cpu_has_native_bf16`; emulated bf16 is slower than fp32).  Features then
        differ from fp32 at the 1e-2 relative level; :meth:`run_info` says which was used.
    channels_last
        Run convolutions in NHWC memory layout (faster with cuDNN and oneDNN).
    fuse_cpu
        On the CPU with bf16 weights (``bf16_cpu``) and ``channels_last``: run each conv +
        ReLU as one oneDNN call on weights packed once at construction
        (:func:`~hpcdiff.features.cpu_fused.fuse_conv_relu`; same layer outputs, about 0.1
        CPU second once).  Ignored elsewhere, with ``compile``, or where torch lacks the
        oneDNN kernel; :meth:`run_info` ``["cpu_fused"]`` says whether it is used.
    compile
        Wrap the network in ``torch.compile`` (first batch slow; pays off on long runs).
    batch_size
        Images per forward pass (on the CPU at most :func:`cpu_forward_batch` of them:
        VGG16's activations of a few images stay in cache).

    Notes
    -----
    The extractor applies the input normalisation the weights declare
    (:attr:`weights_info` ``["preprocessing"]``): torchvision RGB mean/std on [0, 1], or Caffe
    BGR 0-255 minus channel means.  Callers always pass RGB images in [0, 1].
    """

    def __init__(
        self,
        weights: str = "hub",
        *,
        layer: str = "fc6+fc7",
        device: str = "auto",
        bf16: bool = True,
        bf16_cpu: bool | str = "auto",
        channels_last: bool = True,
        fuse_cpu: bool = True,
        compile: bool = False,
        batch_size: int = 16,
    ) -> None:
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        loaded = load_weights(weights)
        self.layer_requested = layer
        self.layer_note = layer_note(layer, loaded.info.layers)
        layer = resolve_layer(layer, loaded.info.layers)
        check_layer(loaded.info, layer)
        self.layer = layer
        if self.layer_note is not None:
            log.warning("%s", self.layer_note)
        self.batch_size = int(batch_size)
        self.device = torch.device(resolve_device(device))
        self.channels_last = bool(channels_last)
        on_gpu = self.device.type == "cuda"
        if bf16_cpu == "auto":
            bf16_cpu = cpu_has_native_bf16()
        elif not isinstance(bf16_cpu, bool):
            raise ValueError(f"bf16_cpu must be true, false or 'auto', got {bf16_cpu!r}")
        self.autocast_dtype = torch.bfloat16 if (bf16 if on_gpu else bf16_cpu) else None
        self._info = loaded.info
        with torch.device("meta"):
            model = VGG16()
        if not set(LAYER_SIZES) <= set(loaded.info.layers):
            # conv-only checkpoint: conv layers never touch the classifier
            model.classifier = torch.nn.Sequential()
        # strict unless a key the feature layers never use (fc8) is absent; the weights
        # module has checked every key present and every key the layers need
        strict = set(loaded.state_dict) == set(model.state_dict())
        model = model.to_empty(device="cpu")
        model.load_state_dict(dict(loaded.state_dict), strict=strict)
        model.eval().requires_grad_(False)
        if self.channels_last:
            # Module.to(memory_format=...) is documented torch API its stubs omit
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # on the CPU, bf16 weights cast once (no autocast: it re-casts every weight at every
        # call, 1.38x slower at batch 4); activations then stay bf16 from the first layer
        self._cast_dtype = (
            torch.bfloat16
            if self.autocast_dtype is not None and self.device.type == "cpu"
            else None
        )
        if self._cast_dtype is not None:
            model = model.to(self._cast_dtype)
        self._model = model.to(self.device)
        from hpcdiff.features.cpu_fused import fuse_conv_relu, fused_conv_available

        self.cpu_fused = bool(
            fuse_cpu
            and not compile
            and self.channels_last
            and self._cast_dtype == torch.bfloat16
            and fused_conv_available()
        )
        if self.cpu_fused:
            # same module indices (pool4 stays features[:POOL4_END]), so same layer outputs
            step = min(self.batch_size, cpu_forward_batch(torch.get_num_threads()))
            try:
                self._model.features = fuse_conv_relu(self._model.features, batch=step)
            except (RuntimeError, TypeError) as exc:  # private oneDNN ops changed: stay eager
                log.warning("oneDNN fused convolution unavailable (%s); eager VGG16", exc)
                self.cpu_fused = False
        forward: Callable[[torch.Tensor], torch.Tensor] = self._forward
        self._run = torch.compile(forward) if compile else forward
        pre = loaded.info.preprocessing
        order = [2, 1, 0] if str(pre["channel_order"]).upper() == "BGR" else [0, 1, 2]
        scale = float(pre["scale"])
        mean = torch.tensor(pre["mean"], dtype=torch.float32)
        std = torch.tensor(pre["std"], dtype=torch.float32)
        # x_in (RGB, [0, 1]) -> (x_in[:, order] * scale - mean) / std == x_in[:, order] * a + b
        self._order = order
        self._a = (scale / std).view(1, 3, 1, 1).to(self.device)
        self._b = (-mean / std).view(1, 3, 1, 1).to(self.device)
        # CUDA only: pinned host staging buffer (flat float32) and the event marking the end
        # of its last host-to-device copy; created on first use, reused across calls
        self._pinned: torch.Tensor | None = None
        self._h2d_done: torch.cuda.Event | None = None
        self._lock = threading.Lock()

    @property
    def weights_info(self) -> dict[str, Any]:
        """Name, path, sha256, pretrained, layers available and preprocessing of the weights."""
        return self._info.to_dict()

    @property
    def info(self) -> WeightsInfo:
        """The same as :attr:`weights_info`, as a frozen dataclass."""
        return self._info

    @property
    def n_features(self) -> int:
        """Length of one feature vector for :attr:`layer`."""
        return LAYER_SIZES[self.layer]

    def run_info(self) -> dict[str, Any]:
        """How features are computed (layer, device, dtype, layout), for outputs and logs."""
        return {
            "layer": self.layer,
            "layer_requested": self.layer_requested,
            "layer_note": self.layer_note,
            "n_features": self.n_features,
            "device": str(self.device),
            "autocast": None if self.autocast_dtype is None else str(self.autocast_dtype),
            "weights_dtype": str(next(self._model.parameters()).dtype),
            "channels_last": self.channels_last,
            "cpu_fused": self.cpu_fused,
            "batch_size": self.batch_size,
        }

    def normalise(self, images: Any) -> Any:
        """Apply the weights' preprocessing to an RGB [0, 1] tensor ``(n, 3, H, W)``."""
        return images[:, self._order] * self._a + self._b

    def _forward(self, x: Any) -> Any:
        import torch

        x = self.normalise(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._cast_dtype is not None:
            return self._model.forward_features(x.to(self._cast_dtype), self.layer)
        if self.autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                return self._model.forward_features(x, self.layer)
        return self._model.forward_features(x, self.layer)

    def extract(self, images: ImageInput) -> np.ndarray:
        """Feature vectors of a stack of CNN images.

        Parameters
        ----------
        images
            ``(n, 3, H, W)`` RGB images, values in [0, 1], any floating dtype (computed in
            float32); ``H, W >= 32`` px (``H = W = 224`` for the method).  A numpy array (or
            anything :func:`numpy.asarray` reads), a torch tensor on any device, or any array
            exposing ``__dlpack__`` (a cupy array, say), read with :func:`torch.from_dlpack`
            without a copy.  Data already on :attr:`device` never visits the host; data on
            another device is moved there with ``.to``.  On a CUDA device, host data (numpy
            arrays, unpinned CPU tensors) is staged through one pinned host buffer of
            :attr:`batch_size` x 3 x H x W float32 values, reused across batches and calls.

        Returns
        -------
        numpy.ndarray
            ``(n, d)`` float32 host array, ``d = n_features``, whatever the input's device.

        Raises
        ------
        ValueError
            If ``images`` is not ``(n, 3, H, W)``, smaller than 32 x 32 pixels or not floating
            point.
        TypeError
            If an array exposing ``__dlpack__`` cannot be read by torch.

        Notes
        -----
        Calls on one extractor are serialised by a lock: they share the model and the pinned
        buffer.
        """
        import torch

        x = _as_array_or_tensor(images)
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(f"images must have shape (n, 3, H, W); got {shape}")
        if min(shape[2:]) < 32:
            raise ValueError(f"images must be at least 32 x 32 pixels for VGG16; got {shape}")
        floating = (
            x.dtype.is_floating_point
            if isinstance(x, torch.Tensor)
            else np.issubdtype(x.dtype, np.floating)
        )
        if not floating:
            dtype = str(x.dtype).removeprefix("torch.")
            raise ValueError(f"images must be floating point in [0, 1]; got dtype {dtype}")
        n = shape[0]
        out = np.empty((n, self.n_features), dtype=np.float32)
        target = self._a.device  # concrete device of the model ("cuda:0" for "cuda")
        on_host = not isinstance(x, torch.Tensor) or x.device.type == "cpu"
        staged = target.type == "cuda" and on_host and not _is_pinned(x)
        with self._lock, torch.inference_mode():
            pending: tuple[int, int, torch.Tensor] | None = None
            step = self.batch_size
            if target.type == "cpu":
                step = min(step, cpu_forward_batch(torch.get_num_threads()))
            for start in range(0, n, step):
                stop = min(start + step, n)
                if staged:
                    batch = self._stage(x[start:stop], target)
                elif isinstance(x, torch.Tensor):
                    batch = x[start:stop].to(target, non_blocking=True)
                else:  # numpy on a non-CUDA device
                    batch = torch.from_numpy(np.ascontiguousarray(x[start:stop], dtype=np.float32))
                batch = batch.to(dtype=torch.float32, memory_format=torch.contiguous_format)
                # copy the previous batch's features out only now: filling the pinned buffer
                # for this batch overlapped with the previous forward pass
                if pending is not None:
                    out[pending[0] : pending[1]] = pending[2].float().cpu().numpy()
                pending = (start, stop, self._run(batch))
            if pending is not None:
                out[pending[0] : pending[1]] = pending[2].float().cpu().numpy()
        return out

    def _stage(self, batch: np.ndarray | torch.Tensor, target: torch.device) -> torch.Tensor:
        """Copy a host batch ``(k, 3, H, W)`` into the pinned buffer and start its H2D copy.

        Returns the float32 device tensor ``(k, 3, H, W)``; the copy runs asynchronously on the
        current CUDA stream, ordered before any kernel later launched on it.
        """
        import torch

        k, _, h, w = batch.shape
        size = self.batch_size * 3 * h * w
        # the buffer is reused: its previous H2D copy must be done before it is overwritten
        if self._h2d_done is not None:
            self._h2d_done.synchronize()
        if self._pinned is None or self._pinned.numel() < size:
            self._pinned = None  # free the old buffer before pinning a bigger one
            self._pinned = torch.empty(size, dtype=torch.float32, pin_memory=True)
        host = self._pinned[: k * 3 * h * w].view(k, 3, h, w)
        if isinstance(batch, torch.Tensor):
            host.copy_(batch)
        else:
            np.copyto(host.numpy(), batch, casting="same_kind")
        device_batch = host.to(target, non_blocking=True)  # on the target's current stream
        if self._h2d_done is None:
            self._h2d_done = torch.cuda.Event()
        self._h2d_done.record(torch.cuda.current_stream(target))
        return device_batch


def _as_array_or_tensor(images: ImageInput) -> np.ndarray | torch.Tensor:
    """A numpy array or torch tensor viewing ``images``, without copying device data.

    Numpy arrays and torch tensors come back as they are, other objects exposing
    ``__dlpack__`` through :func:`torch.from_dlpack` (zero copy, same device), anything else
    through :func:`numpy.asarray`.
    """
    import torch

    if isinstance(images, np.ndarray | torch.Tensor):
        return images
    if hasattr(images, "__dlpack__"):
        try:
            return torch.from_dlpack(images)
        except (BufferError, RuntimeError, TypeError, ValueError) as exc:
            raise TypeError(
                f"images of type {type(images).__name__} could not be read through DLPack: {exc}"
            ) from exc
    return np.asarray(images)


def _is_pinned(x: np.ndarray | torch.Tensor) -> bool:
    """True for a CPU torch tensor in page-locked memory (call only where CUDA is in use)."""
    import torch

    return isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.is_pinned()

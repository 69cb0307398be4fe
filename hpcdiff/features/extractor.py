"""Batched VGG16 feature extraction: images in [0, 1] -> feature vectors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hpcdiff.features.layers import LAYER_SIZES
from hpcdiff.features.vgg16 import VGG16
from hpcdiff.features.weights import WeightsInfo, check_layer, load_weights


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; other names unchanged."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA device")
    return device


class FeatureExtractor:
    """VGG16 features of CNN images, as the method uses them.

    Parameters
    ----------
    weights
        ``"hub"``, ``"random:SEED"`` or a checkpoint path (:func:`~hpcdiff.features.weights.load_weights`).
    layer
        ``"fc6+fc7"`` (8192 values, default), ``"fc7"`` (4096), ``"pool5"`` (25088) or ``"gap"`` (512).
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    bf16
        bfloat16 autocast on CUDA devices.
    bf16_cpu
        bfloat16 autocast on the CPU too (fast only on CPUs with bf16 instructions; features then
        differ from fp32 at the 1e-2 relative level).
    channels_last
        Run convolutions in NHWC memory layout (faster with cuDNN and oneDNN).
    compile
        Wrap the network in ``torch.compile`` (first batch slow; pays off on long runs).
    batch_size
        Images per forward pass.

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
        bf16_cpu: bool = False,
        channels_last: bool = True,
        compile: bool = False,
        batch_size: int = 16,
    ) -> None:
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        loaded = load_weights(weights)
        check_layer(loaded.info, layer)
        self.layer = layer
        self.batch_size = int(batch_size)
        self.device = torch.device(resolve_device(device))
        self.channels_last = bool(channels_last)
        on_gpu = self.device.type == "cuda"
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
            model = model.to(memory_format=torch.channels_last)
        self._model = model.to(self.device)
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
            "n_features": self.n_features,
            "device": str(self.device),
            "autocast": None if self.autocast_dtype is None else str(self.autocast_dtype),
            "channels_last": self.channels_last,
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
        if self.autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                return self._model.forward_features(x, self.layer)
        return self._model.forward_features(x, self.layer)

    def extract(self, images: np.ndarray) -> np.ndarray:
        """Feature vectors of a stack of CNN images.

        Parameters
        ----------
        images
            ``(n, 3, H, W)`` float32, RGB, values in [0, 1] (``H = W = 224`` for the method).

        Returns
        -------
        numpy.ndarray
            ``(n, d)`` float32, ``d = n_features``.
        """
        import torch

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (n, 3, H, W); got {images.shape}")
        if min(images.shape[2:]) < 32:
            raise ValueError(
                f"images must be at least 32 x 32 pixels for VGG16; got {images.shape}"
            )
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"images must be floating point in [0, 1]; got dtype {images.dtype}")
        out = np.empty((images.shape[0], self.n_features), dtype=np.float32)
        on_gpu = self.device.type == "cuda"
        with torch.inference_mode():
            for start in range(0, images.shape[0], self.batch_size):
                stop = min(start + self.batch_size, images.shape[0])
                batch = torch.from_numpy(np.ascontiguousarray(images[start:stop], dtype=np.float32))
                if on_gpu:
                    batch = batch.pin_memory().to(self.device, non_blocking=True)
                feats = self._run(batch)
                out[start:stop] = feats.float().cpu().numpy()
        return out

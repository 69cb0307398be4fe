"""VGG16's convolutions on the CPU as oneDNN conv+ReLU with weights packed once.

Eager ``Conv2d`` then ``ReLU`` on the CPU costs, per layer and call, a reorder of the
weights into oneDNN's blocked layout and a second pass over the activations for the ReLU.
:func:`fuse_conv_relu` swaps each ``Conv2d`` of ``VGG16.features`` for a
:class:`FusedConvReLU` (``torch.ops.mkldnn._convolution_pointwise`` with the ``"relu"``
post-op, the kernel ``torch.compile`` uses after freezing, on a weight reordered once by
``torch._C._nn.mkldnn_reorder_conv2d_weight``) and the ``ReLU`` after it for an
``Identity``.  Module indices are kept, so ``features[:POOL4_END]`` still ends at pool4 and
every feature layer means what it meant (same layer outputs); the results are bitwise those
of the eager bf16 path on this machine (``tests/test_cpu_fused.py`` checks them within bf16
tolerance).

Measured by ``benchmarks/bench_throughput.py --only vgg vgg-variants`` (2 AMX cores shared
with other jobs, load 9-15; medians, interleaved, one run each): 1.80x the eager bf16
channels_last path in wall time and 1.77x in CPU time at 4 images a pass (pool5, ImageNet
weights), features bitwise equal; 1.52x in the variants rows, where ``torch.jit`` trace +
freeze gave 0.95x and ``torch.utils.mkldnn`` 1.20x.  Packing costs 0.1-0.3 CPU second once
per extractor; the first 1-image call 0.2 CPU second (eager: 0.4).

Imports torch (as :mod:`hpcdiff.features.vgg16` does); nothing runs at import time.
"""

from __future__ import annotations

import torch
from torch import nn


def fused_conv_available() -> bool:
    """Whether this torch has oneDNN and its fused pointwise convolution."""
    return bool(
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
    )


class FusedConvReLU(nn.Module):
    """``relu(conv(x))`` in one oneDNN call, the weight packed once.

    Parameters
    ----------
    conv
        A 2-D convolution (bf16 or float32 weights), kept as :attr:`conv` for its
        parameters; the packed copy (an opaque mkldnn tensor) is not a parameter.
    input_hint
        ``[n, C, H, W]`` of a typical input (oneDNN picks the weight layout for it; other
        shapes give the same result).
    """

    def __init__(self, conv: nn.Conv2d, input_hint: list[int]) -> None:
        super().__init__()
        self.conv = conv
        w = conv.weight.detach()
        self.dtype = w.dtype
        self.stride = list(conv.stride)
        self.padding = [int(p) for p in conv.padding]
        self.dilation = list(conv.dilation)
        self.groups = int(conv.groups)
        self.packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            w.contiguous().to_mkldnn(),
            self.padding,
            self.stride,
            self.dilation,
            self.groups,
            input_hint,
        )  # type: ignore[call-arg]  # the stub omits the conv parameters
        self.bias = None if conv.bias is None else conv.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C_in, H, W)`` -> ``(n, C_out, H, W)`` channels_last in the weights' dtype."""
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            self.packed,
            self.bias,
            self.padding,
            self.stride,
            self.dilation,
            self.groups,
            "relu",
            [],
            "",
        )


def fuse_conv_relu(features: nn.Sequential, *, batch: int, size: int = 224) -> nn.Sequential:
    """A copy of ``features`` with each ``Conv2d`` + ``ReLU`` pair as one fused module.

    Parameters
    ----------
    features
        ``VGG16.features`` (inference: no gradients), weights in their final dtype and on
        the CPU.
    batch
        Images per forward pass (a hint for the packed weight layout).
    size
        Input height and width in px (a hint; 224 for the method).

    Returns
    -------
    torch.nn.Sequential
        Same length and module indices as ``features``: ``FusedConvReLU`` where a
        ``Conv2d`` was, ``Identity`` where its ``ReLU`` was, pools unchanged.  Input
        ``(n, C, H, W)`` in any memory format; output channels_last, in the weights' dtype.

    Raises
    ------
    RuntimeError
        If oneDNN's fused convolution is not available (:func:`fused_conv_available`).
    """
    if not fused_conv_available():
        raise RuntimeError("this torch has no oneDNN fused convolution")
    mods = list(features)
    out: list[nn.Module] = []
    hw = size
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            follows_relu = i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU)
            if not follows_relu:
                raise ValueError(f"features[{i}] is a Conv2d not followed by a ReLU")
            out.append(FusedConvReLU(m, [batch, m.in_channels, hw, hw]))
        elif isinstance(m, nn.ReLU) and out and isinstance(out[-1], FusedConvReLU):
            out.append(nn.Identity())
        else:
            if isinstance(m, nn.MaxPool2d):
                hw = max(hw // 2, 1)
            out.append(m)
    return nn.Sequential(*out)


__all__ = ["FusedConvReLU", "fuse_conv_relu", "fused_conv_available"]

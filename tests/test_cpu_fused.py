"""oneDNN fused conv+ReLU with packed weights: same layer outputs as the eager modules."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hpcdiff.features.cpu_fused import (  # noqa: E402
    FusedConvReLU,
    fuse_conv_relu,
    fused_conv_available,
)
from hpcdiff.features.extractor import FeatureExtractor, cpu_has_native_bf16  # noqa: E402
from hpcdiff.features.vgg16 import POOL4_END, _make_features  # noqa: E402

needs_onednn = pytest.mark.skipif(not fused_conv_available(), reason="torch without oneDNN")


def _stack(dtype: torch.dtype) -> torch.nn.Sequential:
    """A small VGG-like stack (conv, relu, conv, relu, pool, conv, relu, pool), seeded."""
    torch.manual_seed(0)
    nn = torch.nn
    mods = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2),
    )
    return mods.eval().requires_grad_(False).to(dtype).to(memory_format=torch.channels_last)


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 3, 4])  # the packing hint is 4: other batches too
def test_fused_stack_equals_eager(dtype, n):
    eager = _stack(dtype)
    fused = fuse_conv_relu(eager, batch=4, size=32)
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
    with torch.inference_mode():
        ref = eager(x.to(dtype).contiguous(memory_format=torch.channels_last)).float()
        got = fused(x).float()
    assert got.shape == ref.shape == (n, 16, 8, 8)
    assert got.dtype == torch.float32 and (got >= 0).all()  # the ReLU is applied
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got, ref, rtol=tol, atol=tol * float(ref.abs().max()))


@needs_onednn
def test_fused_features_keep_module_indices():
    """pool4 stays features[:POOL4_END], so every layer name keeps its meaning."""
    plain = _make_features()
    fused = fuse_conv_relu(plain.eval().requires_grad_(False), batch=2, size=64)
    assert len(fused) == len(plain)
    for a, b in zip(plain, fused, strict=True):
        if isinstance(a, torch.nn.Conv2d):
            assert isinstance(b, FusedConvReLU) and b.conv is a
        elif isinstance(a, torch.nn.ReLU):
            assert isinstance(b, torch.nn.Identity)
        else:
            assert b is a
    assert isinstance(fused[POOL4_END - 1], torch.nn.MaxPool2d)


def test_conv_without_relu_is_refused():
    if not fused_conv_available():
        pytest.skip("torch without oneDNN")
    with pytest.raises(ValueError, match="not followed by a ReLU"):
        fuse_conv_relu(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), batch=1)


@pytest.mark.skipif(
    not (cpu_has_native_bf16() and fused_conv_available()), reason="no native bf16 CPU"
)
def test_extractor_features_fused_equal_eager():
    """The extractor's fused bf16 path gives the eager bf16 path's features (bf16 tolerance),
    at a batch that is not a multiple of the pass size."""
    images = np.random.default_rng(1).random((5, 3, 32, 32), dtype=np.float32)
    kw = {"layer": "pool4+pool5", "device": "cpu", "batch_size": 4}
    fused = FeatureExtractor("random:0", **kw)
    eager = FeatureExtractor("random:0", fuse_cpu=False, **kw)
    assert fused.run_info()["cpu_fused"] and not eager.run_info()["cpu_fused"]
    assert fused.run_info()["weights_dtype"] == "torch.bfloat16"
    a, b = fused.extract(images), eager.extract(images)
    assert a.shape == b.shape and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2 * float(np.abs(b).max()))

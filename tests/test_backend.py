"""hpcdiff.backend: one place that picks numpy or cupy, nothing on a GPU at import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hpcdiff import backend


def test_numpy_arrays_dispatch_to_numpy():
    x = np.zeros(3, np.float32)
    assert backend.array_module(x) is np
    assert backend.array_module(x, None, 1.0) is np
    assert backend.array_module() is np


def test_ndimage_module_for_numpy_is_scipy():
    import scipy.ndimage

    assert backend.ndimage_module(np) is scipy.ndimage


def test_to_numpy_and_cpu_device_keep_values():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert backend.to_numpy(x) is x
    y = backend.to_device(x, "cpu")
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(backend.to_numpy([1, 2]), [1, 2])


def test_resolve_device_names():
    assert backend.resolve_device("cpu") == "cpu"
    assert backend.resolve_device("CPU") == "cpu"
    assert backend.resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ValueError, match="valid choices"):
        backend.resolve_device("tpu")


def test_cuda_asked_without_gpu_is_a_clear_error():
    if backend.gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="cupy or a CUDA device"):
        backend.resolve_device("cuda")


def test_import_touches_no_gpu():
    code = (
        "import sys, hpcdiff.backend, hpcdiff.background, hpcdiff.corrections, hpcdiff.preprocess;"
        "bad = [m for m in ('cupy', 'torch') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.gpu
def test_cupy_round_trip():
    cupy = pytest.importorskip("cupy")
    if not backend.gpu_available():
        pytest.skip("no CUDA device")
    x = np.arange(5, dtype=np.float32)
    d = backend.to_device(x, "cuda")
    assert isinstance(d, cupy.ndarray)
    assert backend.array_module(d) is cupy
    assert backend.ndimage_module(cupy).__name__ == "cupyx.scipy.ndimage"
    np.testing.assert_array_equal(backend.to_numpy(d), x)
    with pytest.raises(TypeError, match="mixed"):
        backend.array_module(x, d)

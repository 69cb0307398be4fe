"""The array backend, chosen in one place: numpy on the CPU, cupy on a CUDA device.

Array functions in hpcdiff dispatch on the type of the array they are given: numpy in,
numpy out; cupy in, cupy out.  They obtain the module with :func:`array_module` and the
matching ``ndimage`` with :func:`ndimage_module`, and use only the numpy-compatible API
both modules share.  Tests force the CPU path by passing numpy arrays.

Nothing here touches a GPU at import time: cupy is imported only when an array is
already a cupy array (so cupy is loaded anyway) or when a GPU is asked for explicitly
through :func:`to_device` or :func:`resolve_device`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Literal

import numpy as np

Device = Literal["cpu", "cuda"]


def _is_cupy_array(x: Any) -> bool:
    return type(x).__module__.split(".", 1)[0] == "cupy"


def array_module(*arrays: Any) -> ModuleType:
    """The array module (``numpy`` or ``cupy``) of the given arrays.

    Parameters
    ----------
    *arrays
        Arrays or scalars; ``None`` and Python scalars are ignored.

    Returns
    -------
    module
        ``cupy`` if any argument is a cupy array, else ``numpy``.

    Raises
    ------
    TypeError
        If cupy and numpy arrays are mixed; move them with :func:`to_device` first.
    """
    kinds = {_is_cupy_array(a) for a in arrays if isinstance(a, np.ndarray) or _is_cupy_array(a)}
    if kinds == {True, False}:
        raise TypeError(
            "numpy and cupy arrays mixed in one call; move them to one device with "
            "hpcdiff.backend.to_device first"
        )
    if True in kinds:
        return importlib.import_module("cupy")
    return np


def ndimage_module(xp: ModuleType) -> ModuleType:
    """``scipy.ndimage`` for numpy, ``cupyx.scipy.ndimage`` for cupy."""
    if xp is np:
        return importlib.import_module("scipy.ndimage")
    return importlib.import_module("cupyx.scipy.ndimage")


def gpu_available() -> bool:
    """True if cupy imports and sees at least one CUDA device (imports cupy if installed)."""
    try:
        cupy = importlib.import_module("cupy")
        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # ImportError, CUDARuntimeError without driver, ...
        return False


def resolve_device(device: str) -> Device:
    """Turn ``"auto" | "cpu" | "cuda"`` (``"gpu"`` is an alias of ``"cuda"``) into a device.

    ``"auto"`` means ``"cuda"`` where cupy and a device are present, else ``"cpu"``.

    Raises
    ------
    ValueError
        For an unknown name, or ``"cuda"`` asked for where no device can be used.
    """
    name = device.lower()
    if name == "auto":
        return "cuda" if gpu_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name in ("cuda", "gpu"):
        if not gpu_available():
            raise ValueError("device 'cuda' asked for, but cupy or a CUDA device is not available")
        return "cuda"
    raise ValueError(f"unknown device {device!r}; valid choices: 'auto', 'cpu', 'cuda'")


def cuda_index(device: str) -> int | None:
    """The CUDA device number of a torch device string (``"cuda"`` -> 0, ``"cuda:1"`` -> 1);
    ``None`` for any other device (``"cpu"``)."""
    kind, _, number = str(device).partition(":")
    if kind != "cuda":
        return None
    return int(number) if number else 0


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy or cupy array (copies from the device if needed)."""
    if _is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def to_device(x: Any, device: str) -> Any:
    """Move an array to ``device`` (``"cpu"``, ``"cuda"`` or ``"auto"``).

    Parameters
    ----------
    x
        numpy or cupy array (or anything ``numpy.asarray`` accepts).
    device
        Where the result should live.

    Returns
    -------
    array
        A numpy array for ``"cpu"``, a cupy array for ``"cuda"``; ``x`` itself when it is
        already there.
    """
    target = resolve_device(device)
    if target == "cpu":
        return to_numpy(x)
    cupy = importlib.import_module("cupy")
    return x if _is_cupy_array(x) else cupy.asarray(x)


__all__ = [
    "Device",
    "array_module",
    "cuda_index",
    "gpu_available",
    "ndimage_module",
    "resolve_device",
    "to_device",
    "to_numpy",
]

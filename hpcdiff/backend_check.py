"""Which array backend a rank preprocesses with, decided once and loudly.

A rank whose torch device is CUDA removes the background with cupy on that device
(:mod:`hpcdiff.background` dispatches on the array type).  Where cupy is missing or
cannot run (no wheel for this CUDA, driver mismatch), preprocessing on the host would be
10-20x slower than the GPU path and look like success; so that case is a
:class:`~hpcdiff.errors.ConfigError` naming the install line, unless the job asks for
host preprocessing explicitly (``background.preprocess_device = "cpu"``).

Nothing here imports cupy or torch at import time.
"""

from __future__ import annotations

import importlib
from typing import Literal

from hpcdiff.backend import cuda_index
from hpcdiff.errors import ConfigError

PreprocessDevice = Literal["auto", "cpu"]

INSTALL_HINT = "pip install 'hpcdiff[gpu]'"


def cupy_problem(device_index: int = 0) -> str | None:
    """Why cupy cannot run on CUDA device ``device_index``, or ``None`` when it can.

    Imports cupy and runs one tiny kernel on the device (an import alone succeeds with a
    wheel built for another CUDA version, and fails only at the first kernel).

    Returns
    -------
    str or None
        ``"cannot import cupy: ..."``, ``"cupy cannot run on cuda:K: ..."`` or ``None``.
    """
    try:
        cupy = importlib.import_module("cupy")
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"cannot import cupy: {type(exc).__name__}: {exc}"
    try:
        with cupy.cuda.Device(device_index):
            total = int(cupy.arange(4, dtype=cupy.int32).sum())
        if total != 6:
            return f"cupy on cuda:{device_index} computed 0+1+2+3 = {total}"
    except Exception as exc:  # CUDARuntimeError, CompileException, driver too old, ...
        return f"cupy cannot run on cuda:{device_index}: {type(exc).__name__}: {exc}"
    return None


def preprocess_gpu(
    torch_device: str, *, preprocess_device: PreprocessDevice = "auto"
) -> int | None:
    """The CUDA device number on which a rank preprocesses with cupy, or ``None`` (numpy).

    Parameters
    ----------
    torch_device
        The rank's torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``), from
        :func:`hpcdiff.parallel.placement.select_device`.
    preprocess_device
        ``background.preprocess_device``: ``"auto"`` (cupy wherever the torch device is
        CUDA) or ``"cpu"`` (numpy on the host, chosen on purpose).

    Returns
    -------
    int or None
        ``K`` for ``"cuda:K"`` when cupy runs there; ``None`` on CPU ranks and for
        ``preprocess_device = "cpu"``.

    Raises
    ------
    ConfigError
        The torch device is CUDA, ``preprocess_device`` is ``"auto"`` and cupy cannot be
        imported or cannot run: the message names the cause and the install line.
    """
    if preprocess_device not in ("auto", "cpu"):
        raise ConfigError(
            f"background.preprocess_device = {preprocess_device!r}; valid choices: 'auto', 'cpu'"
        )
    index = cuda_index(torch_device)
    if index is None or preprocess_device == "cpu":
        return None
    problem = cupy_problem(index)
    if problem is not None:
        raise ConfigError(
            f"this rank runs on {torch_device} but preprocessing needs cupy there: {problem}. "
            f"Install it with `{INSTALL_HINT}` (cupy-cuda12x; use cupy-cuda11x for CUDA 11), "
            'or set background.preprocess_device = "cpu" in the job file to preprocess '
            "on the host on purpose (much slower than the GPU)"
        )
    return index


__all__ = ["INSTALL_HINT", "PreprocessDevice", "cupy_problem", "preprocess_gpu"]

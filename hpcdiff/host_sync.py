"""Find host synchronisations of a device (cupy) chain on a CPU: an emulated device.

A cupy chain stalls the GPU pipeline whenever the host needs a device value: ``float``,
``int``, ``bool`` or ``.item()`` of a device array, ``.get()``/``asnumpy``, iterating over
one, or an operation whose output shape depends on the data (boolean-mask indexing,
``nonzero``, ``unique``, ...), which cupy answers by copying a count to the host.  Uploads
from pageable host memory (``cupy.asarray`` of a numpy array) also wait for the stream.

:func:`emulate_device` stands in for cupy on a machine without one: inside it, the
module ``cupy`` (and ``cupyx.scipy.sparse`` / ``cupyx.scipy.ndimage``) is a thin layer
over numpy whose arrays (:class:`EmulatedDeviceArray`, a numpy subclass whose type says
``cupy``) take the cupy branches of :func:`hpcdiff.backend.array_module` dispatch, and
record every host synchronisation (with the line that caused it) in a :class:`SyncLog`,
or raise :class:`HostSyncError` at once (``strict=True``).  Values are numpy's, so the
device chain's results can be compared with the CPU path's.

Limits: only arrays that came from the emulated module (or from operations on its arrays)
are watched; ``numpy.asarray`` of a device array is not seen (cupy raises a TypeError
there anyway).  The real check of a GPU chain remains a profile on a GPU.

Nothing here runs at import time; the real cupy modules (if any) are put back on exit.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
import types
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SHAPE_FROM_DATA = frozenset(
    {"nonzero", "flatnonzero", "argwhere", "unique", "extract", "compress", "asnumpy", "bincount"}
)
"""Array functions whose output shape (or whole output, ``asnumpy``) needs the host
(cupy's ``bincount`` reads ``max(x)`` and checks ``(x < 0).any()`` on the host)."""

_MODULES = ("cupy", "cupyx", "cupyx.scipy", "cupyx.scipy.sparse", "cupyx.scipy.ndimage")


class HostSyncError(RuntimeError):
    """A host synchronisation inside a chain run under ``emulate_device(strict=True)``."""


@dataclass(frozen=True)
class SyncEvent:
    """One host synchronisation: what (``kind``) and where (``site``, ``file:line``)."""

    kind: str
    site: str


@dataclass
class SyncLog:
    """Host synchronisations and uploads recorded inside :func:`emulate_device`.

    Attributes
    ----------
    syncs
        Each synchronisation (device value read by the host, data-dependent shape).
    uploads
        Each host -> device copy of a numpy array or Python value (``cupy.asarray``);
        listed apart: a pinned, asynchronous upload does not stall, a pageable one does.
    """

    syncs: list[SyncEvent] = field(default_factory=list)
    uploads: list[SyncEvent] = field(default_factory=list)
    strict: bool = False

    def summary(self) -> dict[str, int]:
        """``{"kind @ site": count}`` of the synchronisations."""
        return dict(Counter(f"{e.kind} @ {e.site}" for e in self.syncs))

    def upload_summary(self) -> dict[str, int]:
        """``{"kind @ site": count}`` of the uploads."""
        return dict(Counter(f"{e.kind} @ {e.site}" for e in self.uploads))


_ACTIVE: list[SyncLog] = []


def _site() -> str:
    """``file:line`` of the innermost caller outside this module and numpy/scipy."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = frame.filename
        if name == __file__ or "/numpy/" in name or "/scipy/" in name:
            continue
        return f"{name.rsplit('/hpcdiff/', 1)[-1]}:{frame.lineno}"
    return "?"


def _sync(kind: str) -> None:
    if not _ACTIVE:
        return
    log = _ACTIVE[-1]
    event = SyncEvent(kind, _site())
    if log.strict:
        raise HostSyncError(f"host synchronisation in a device chain: {kind} at {event.site}")
    log.syncs.append(event)


def _upload(kind: str) -> None:
    if _ACTIVE:
        _ACTIVE[-1].uploads.append(SyncEvent(kind, _site()))


def _unwrap(x: Any) -> Any:
    if isinstance(x, EmulatedDeviceArray):
        return x.view(np.ndarray)
    if isinstance(x, tuple | list):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    if isinstance(x, _EmulatedCSR):
        return x.matrix
    return x


def _wrap(x: Any) -> Any:
    if isinstance(x, EmulatedDeviceArray):
        return x
    if isinstance(x, np.ndarray):
        return x.view(EmulatedDeviceArray)
    if isinstance(x, np.generic):  # cupy returns 0-d device arrays, never host scalars
        return np.asarray(x).view(EmulatedDeviceArray)
    if isinstance(x, tuple | list):
        return type(x)(_wrap(v) for v in x)
    return x


def _is_bool_mask(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(
        isinstance(k, np.ndarray | list) and np.asarray(k).dtype == bool and np.ndim(k) > 0
        for k in keys
    )


class EmulatedDeviceArray(np.ndarray):
    """numpy data dressed as a cupy array: whatever makes the host read it is recorded."""

    __module__ = "cupy._hpcdiff_emulated"  # array_module() sees "cupy"

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        return _wrap(out)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        if func.__name__ in SHAPE_FROM_DATA:
            _sync(f"numpy.{func.__name__}")
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getitem__(self, key: Any) -> Any:
        if _is_bool_mask(_unwrap(key)):
            _sync("boolean-mask indexing")
        return _wrap(np.ndarray.__getitem__(self.view(np.ndarray), _unwrap(key)))

    def __setitem__(self, key: Any, value: Any) -> None:
        if _is_bool_mask(_unwrap(key)) and np.ndim(value) > 0:
            _sync("boolean-mask assignment of an array")
        np.ndarray.__setitem__(self.view(np.ndarray), _unwrap(key), _unwrap(value))

    def __float__(self) -> float:
        _sync("float()")
        return float(self.view(np.ndarray))

    def __int__(self) -> int:
        _sync("int()")
        return int(self.view(np.ndarray))

    def __index__(self) -> int:
        _sync("index (int) of a device value")
        return self.view(np.ndarray).__index__()

    def __complex__(self) -> complex:
        _sync("complex()")
        return complex(self.view(np.ndarray))

    def __bool__(self) -> bool:
        _sync("bool() / if / while")
        return bool(self.view(np.ndarray))

    def __iter__(self) -> Iterator[Any]:
        _sync("iteration")
        return iter(_wrap(list(self.view(np.ndarray))))

    def item(self, *args: Any) -> Any:
        _sync(".item()")
        return self.view(np.ndarray).item(*args)

    def tolist(self) -> Any:
        _sync(".tolist()")
        return self.view(np.ndarray).tolist()

    def get(self) -> np.ndarray:
        """cupy's device -> host copy (a synchronisation)."""
        _sync(".get()")
        return np.array(self.view(np.ndarray))


class _EmulatedCSR:
    """``cupyx.scipy.sparse.csr_matrix`` over a scipy CSR matrix."""

    def __init__(self, matrix: Any) -> None:
        self.matrix = matrix.tocsr() if hasattr(matrix, "tocsr") else matrix
        self.shape = self.matrix.shape

    def __matmul__(self, other: Any) -> Any:
        return _wrap(np.asarray(self.matrix @ _unwrap(other)))

    def multiply(self, other: Any) -> _EmulatedCSR:
        return _EmulatedCSR(self.matrix.multiply(_unwrap(other)))

    def tocsr(self) -> _EmulatedCSR:
        return self


class _Module(types.ModuleType):
    """A module whose attributes are another module's, with arrays kept on the 'device'."""

    def __init__(self, name: str, base: types.ModuleType | None, extra: dict[str, Any]) -> None:
        super().__init__(name)
        self._base = base
        self.__dict__.update(extra)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or self._base is None:
            raise AttributeError(name)
        value = getattr(self._base, name)
        if isinstance(value, type) or not callable(value) or isinstance(value, np.ufunc):
            return value
        return _wrap_function(value, name)


def _wrap_function(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if name in SHAPE_FROM_DATA:
            _sync(f"cupy.{name}")
        if name in ("asnumpy",):
            return np.array(_unwrap(args[0]))
        if name in ("asarray", "array", "ascontiguousarray") and args:
            if not isinstance(args[0], EmulatedDeviceArray):
                _upload(f"cupy.{name} of host data")
        return _wrap(fn(*_unwrap(args), **_unwrap(kwargs)))

    call.__name__ = name
    return call


def _asnumpy(x: Any) -> np.ndarray:
    _sync("cupy.asnumpy")
    return np.array(_unwrap(x))


def _build() -> dict[str, types.ModuleType]:
    import scipy.ndimage
    import scipy.sparse

    sparse = _Module(
        "cupyx.scipy.sparse",
        None,
        {"csr_matrix": _EmulatedCSR, "issparse": lambda m: isinstance(m, _EmulatedCSR)},
    )
    sparse.__dict__["_scipy"] = scipy.sparse
    ndimage = _Module("cupyx.scipy.ndimage", scipy.ndimage, {})
    cx_scipy = _Module("cupyx.scipy", None, {"sparse": sparse, "ndimage": ndimage})
    cupyx = _Module("cupyx", None, {"scipy": cx_scipy})
    cupy = _Module("cupy", np, {"ndarray": EmulatedDeviceArray, "asnumpy": _asnumpy})
    return dict(zip(_MODULES, (cupy, cupyx, cx_scipy, sparse, ndimage), strict=True))


_FAKE: dict[str, types.ModuleType] = {}


def emulated_cupy() -> types.ModuleType:
    """The emulated ``cupy`` module (one instance per process, so caches keyed by module
    identity stay valid)."""
    if not _FAKE:
        _FAKE.update(_build())
    return _FAKE["cupy"]


@contextlib.contextmanager
def emulate_device(*, strict: bool = False) -> Iterator[SyncLog]:
    """Run a cupy chain on numpy data, recording (or, ``strict``, refusing) host syncs.

    Inside, ``import cupy`` gives the emulation; :func:`to_device` moves numpy arrays onto
    the emulated device.  Not thread-safe (it swaps ``sys.modules`` entries).

    Yields
    ------
    SyncLog
        Filled while the block runs.
    """
    emulated_cupy()
    saved = {name: sys.modules.get(name) for name in _MODULES}
    log = SyncLog(strict=strict)
    sys.modules.update(_FAKE)
    _ACTIVE.append(log)
    try:
        yield log
    finally:
        _ACTIVE.remove(log)
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


def to_device(x: Any) -> EmulatedDeviceArray:
    """A copy of numpy array ``x`` on the emulated device (not counted as an upload)."""
    return np.array(x).view(EmulatedDeviceArray)


def from_device(x: Any) -> np.ndarray:
    """A numpy copy of an emulated device array (not counted as a synchronisation)."""
    return np.array(_unwrap(x))


__all__ = [
    "EmulatedDeviceArray",
    "HostSyncError",
    "SHAPE_FROM_DATA",
    "SyncEvent",
    "SyncLog",
    "emulate_device",
    "emulated_cupy",
    "from_device",
    "to_device",
]

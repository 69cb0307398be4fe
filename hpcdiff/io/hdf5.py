"""Opening HDF5 files for reading, with errors that name the file."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcdiff.errors import FormatError


def open_hdf5(path: str | Path, *, what: str = "file") -> h5py.File:
    """Open ``path`` read-only; ``what`` names the file in errors (``"labels file"``).

    Raises
    ------
    FormatError
        Naming the file, when it does not exist or is not a readable HDF5 file.
    """
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise FormatError(path, f"{what} not found: it does not exist") from None
    except OSError as exc:
        raise FormatError(path, f"cannot open as HDF5 (not a readable HDF5 file: {exc})") from None


_CHECKSUM_ERRORS = ("fletcher32", "checksum", "data error detected")
_FILTER_ERRORS = ("filter returned failure", "inflate() failed", "decompress")


def describe_read_error(exc: OSError, dset: h5py.Dataset) -> str | None:
    """What a failed chunk read of ``dset`` means, or ``None`` if not a damaged chunk.

    HDF5 runs a dataset's filters in reverse on read, the fletcher32 checksum first (it is
    added last on write), so a filter failure on a dataset with a checksum is a checksum
    mismatch; on one without (files hpcdiff did not write), a compression filter could
    not decode the chunk.
    """
    text = str(exc).lower()
    if any(m in text for m in _CHECKSUM_ERRORS) or (
        dset.fletcher32 and any(m in text for m in _FILTER_ERRORS)
    ):
        return (
            "data failed its checksum (fletcher32): the file was damaged after it was "
            "written (disk, copy or transfer)"
        )
    if any(m in text for m in _FILTER_ERRORS):
        return f"a chunk could not be decoded by its filter (damaged compressed data?): {exc}"
    return None


def read_checked(
    dset: h5py.Dataset,
    selection: Any = (),
    *,
    path: str | Path,
    advice: str = "restore the file or write it again",
) -> np.ndarray:
    """``dset[selection]``, with a damaged chunk as a :class:`FormatError`.

    HDF5 verifies the fletcher32 checksum of every chunk it reads (hpcdiff's own outputs
    carry one, :class:`~hpcdiff.io.appendable.AppendableH5`); a mismatch means the bytes
    changed after they were written.

    ``advice`` (what to do) ends the message.

    Raises
    ------
    FormatError
        Naming ``path`` and the dataset, when a chunk fails its checksum or its filter.
    """
    try:
        return np.asarray(dset[selection])
    except OSError as exc:
        why = describe_read_error(exc, dset)
        if why is None:
            raise
        raise FormatError(path, f"{why}; {advice}", dataset=dset.name) from None


class OpenFiles:
    """Read-only HDF5 files kept open, the ``max_open`` most recently used (the oldest is
    closed when another opens).  Pickles empty: each process opens its own handles.

    Parameters
    ----------
    max_open
        Files kept open (at least 1).
    what
        Names the files in errors (see :func:`open_hdf5`).
    """

    def __init__(self, max_open: int, *, what: str = "file") -> None:
        self.max_open = max(1, int(max_open))
        self.what = what
        self._open: collections.OrderedDict[str, h5py.File] = collections.OrderedDict()

    def get(self, path: str | Path) -> h5py.File:
        """The open file ``path``, opened now if it is not (:func:`open_hdf5`)."""
        key = str(path)
        h5 = self._open.get(key)
        if h5 is not None:
            self._open.move_to_end(key)
            return h5
        h5 = open_hdf5(key, what=self.what)
        self._open[key] = h5
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return h5

    def __len__(self) -> int:
        return len(self._open)

    def close(self) -> None:
        """Close every open file (they reopen on the next :meth:`get`)."""
        while self._open:
            _, h5 = self._open.popitem()
            h5.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_open": self.max_open, "what": self.what, "_open": collections.OrderedDict()}

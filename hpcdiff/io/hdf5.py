"""Opening HDF5 files for reading, with errors that name the file."""

from __future__ import annotations

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

"""Opening HDF5 files for reading, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import h5py

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

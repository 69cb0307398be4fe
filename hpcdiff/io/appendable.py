"""One appendable, atomic HDF5 writer: the file under every frames, features and predictions file.

An :class:`AppendableH5` writes an HDF5 file under a temporary name beside its final path
(:func:`hpcdiff.io.outputs.atomic_path`) and renames it into place only when closed cleanly,
so a crash or a signal leaves no half-written file under the final name and any earlier
file untouched.  Its datasets (*columns*) are resizable along axis 0 and grow together:
one :meth:`~AppendableH5.append` adds the same number of rows to every column.
Every fixed-size column carries HDF5's fletcher32 checksum per chunk, which HDF5 verifies
on every read (:func:`hpcdiff.io.hdf5.read_checked` turns a mismatch into a
:class:`~hpcdiff.errors.FormatError` naming the file and dataset).

The format modules own their layouts and validation and use this class for the file:
:class:`hpcdiff.io.cxi.CXIWriter` (frames), :class:`hpcdiff.io.featurefile.FeatureWriter`
(features), :class:`hpcdiff.io.predictions.PredictionWriter` (predictions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
from numpy.typing import ArrayLike, DTypeLike


class AppendableH5:
    """An HDF5 file of columns grown along axis 0, renamed into place on a clean close.

    Parameters
    ----------
    path
        Final path of the file.
    force
        Replace an existing ``path``; without it an existing file raises
        :class:`~hpcdiff.errors.OutputExistsError` (here, before anything is written).
    attrs
        Attributes of the root group, stored as given (the format module converts values
        HDF5 cannot store, such as dicts, to text first).

    Attributes
    ----------
    path : Path
    h5 : h5py.File
        The open temporary file (for layouts that need more than columns).
    n_rows : int
        Rows appended so far (the length of every column).

    Examples
    --------
    >>> with AppendableH5("out.h5") as f:                        # doctest: +SKIP
    ...     f.column("x", dtype=np.float32, row_shape=(3,))
    ...     f.append({"x": np.zeros((10, 3), np.float32)})
    """

    def __init__(
        self, path: str | Path, *, force: bool = False, attrs: Mapping[str, Any] | None = None
    ) -> None:
        from hpcdiff.io.outputs import atomic_path

        self.path = Path(path)
        stack = contextlib.ExitStack()
        try:
            tmp = stack.enter_context(atomic_path(self.path, force=force))
            self.h5: h5py.File = stack.enter_context(h5py.File(tmp, "w"))
            for key, value in (attrs or {}).items():
                self.h5.attrs[key] = value
        except BaseException:
            stack.close()
            raise
        self._stack: contextlib.ExitStack | None = stack
        self._columns: dict[str, h5py.Dataset] = {}
        self.n_rows = 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._stack is None

    @property
    def columns(self) -> tuple[str, ...]:
        """Names of the columns, in creation order."""
        return tuple(self._columns)

    def column(
        self,
        name: str,
        *,
        dtype: DTypeLike,
        row_shape: tuple[int, ...] = (),
        chunk_rows: int = 1024,
        compression: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> h5py.Dataset:
        """Create an empty column ``name`` of rows of shape ``row_shape``.

        Parameters
        ----------
        name
            HDF5 path of the dataset (groups are created).
        dtype
            Its dtype (``h5py.string_dtype("utf-8")`` for text).
        row_shape
            Shape of one row; the dataset is ``(n_rows, *row_shape)``.
        chunk_rows
            HDF5 chunk length along rows (the chunk is ``(chunk_rows, *row_shape)``).
        compression
            Keyword arguments of ``create_dataset`` for the filter (see
            :func:`hpcdiff.io.cxi.compression_options`).
        attrs
            Attributes of the dataset, stored as given.
        """
        if self.n_rows:
            raise RuntimeError(f"column {name!r} created after {self.n_rows} rows were appended")
        if name in self._columns:
            raise ValueError(f"column {name!r} exists")
        dt = np.dtype(dtype)
        dset = self.h5.create_dataset(
            name,
            shape=(0, *row_shape),
            maxshape=(None, *row_shape),
            dtype=dt,
            chunks=(max(1, int(chunk_rows)), *row_shape),
            # HDF5's checksum of every chunk, verified by HDF5 on every read (variable-length
            # types, i.e. text, cannot carry filters)
            fletcher32=not _variable_length(dt),
            **dict(compression or {}),
        )
        for key, value in (attrs or {}).items():
            dset.attrs[key] = value
        self._columns[name] = dset
        return dset

    def append(self, rows: Mapping[str, ArrayLike]) -> int:
        """Append the same number of rows to every column.

        Parameters
        ----------
        rows
            Column name -> ``(n, *row_shape)`` values (cast to the column's dtype by h5py);
            every column, no other name.

        Returns
        -------
        int
            ``n``, the rows appended.
        """
        if self._stack is None:
            raise RuntimeError(f"{self.path}: append after close")
        if set(rows) != set(self._columns):
            raise ValueError(f"append needs columns {sorted(self._columns)}, got {sorted(rows)}")
        arrays = {k: np.asarray(v) for k, v in rows.items()}
        lengths = {k: (a.shape[0] if a.ndim else -1) for k, a in arrays.items()}
        n = next(iter(lengths.values()), 0)
        if any(m != n for m in lengths.values()) or n < 0:
            raise ValueError(f"columns of unequal length appended: {lengths}")
        for key, values in arrays.items():
            want = self._columns[key].shape[1:]
            if values.shape[1:] != want:
                raise ValueError(f"column {key!r} has rows of shape {want}, got {values.shape[1:]}")
        start, stop = self.n_rows, self.n_rows + n
        for key, values in arrays.items():
            dset = self._columns[key]
            dset.resize(stop, axis=0)
            dset[start:stop] = values
        self.n_rows = stop
        return n

    def close(self, *, ok: bool = True) -> None:
        """Close the file: rename it into place if ``ok``, else delete it (idempotent)."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        if ok:
            stack.close()
        else:
            err = RuntimeError(f"{self.path}: writing aborted")
            stack.__exit__(type(err), err, None)

    def __enter__(self) -> AppendableH5:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(ok=exc_type is None)


def _variable_length(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is an HDF5 variable-length type (strings, ragged arrays)."""
    if dtype.fields:
        return any(_variable_length(f[0]) for f in dtype.fields.values())
    return dtype.kind == "O" or h5py.check_vlen_dtype(dtype) is not None


__all__ = ["AppendableH5"]

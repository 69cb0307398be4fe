"""CXI/HDF5 frame files: where each frame's pixels are in a file, read lazily and written safely.

One run is a list of files; a frame is known by its :class:`FrameId` ``(file, index)`` and by
its global frame number, its position in the run's concatenated frame list.
:class:`FrameSource` reads contiguous ranges of global frame numbers as hyperslabs (never a
whole file), reshapes file layouts to the geometry's slab, and reads the per-frame values a
geometry names by HDF5 path (camera length, photon energy).  Layouts handled:

* Cheetah slab, ``(N, n_ss, n_fs)`` (``1480 x 1552`` for the CSPAD);
* psana, ``(N, 32, 185, 388)``, reshaped to the geometry's ``5920 x 388`` slab;
* assembled images, ``(N, H, W)``, a single panel;
* one frame per file, ``(n_ss, n_fs)`` (CrystFEL geometries without a ``%`` dimension).

:func:`write_cxi` and :class:`CXIWriter` write frames chunked one frame each, optionally
compressed (gzip, lz4, bitshuffle-lz4 via :mod:`hdf5plugin`), to a temporary file that is
renamed onto the final name only when complete.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import h5py
import hdf5plugin  # noqa: F401  (registers the lz4/bitshuffle/... filters with HDF5)
import numpy as np

from hpcdiff.errors import FormatError
from hpcdiff.io.appendable import AppendableH5
from hpcdiff.io.geom import length_spec
from hpcdiff.io.hdf5 import OpenFiles, describe_read_error, open_hdf5

if TYPE_CHECKING:
    from hpcdiff.io.geom import DetectorGeometry

DEFAULT_DATA_PATH = "/entry_1/data_1/data"
#: Where frames are looked for when neither a geometry nor ``data_path`` says (CXI, Cheetah).
CANDIDATE_DATA_PATHS = (
    "/entry_1/data_1/data",
    "/entry_1/instrument_1/detector_1/data",
    "/data/data",
)
COMPRESSIONS = ("none", "gzip", "lz4", "bitshuffle")
_GZIP_LEVEL = 4
_MAX_LISTED = 25


@dataclass(frozen=True, order=True)
class FrameId:
    """Identity of one frame: the file it is in and its index along the file's frame axis.

    Parameters
    ----------
    file
        The file's path as the run lists it.
    index
        0-based position of the frame in that file.
    """

    file: str
    index: int

    def __str__(self) -> str:
        return f"{self.file}//{self.index}"


# --------------------------------------------------------------------------- writing


def compression_options(compression: str | None, *, level: int | None = None) -> dict[str, Any]:
    """Keyword arguments for :meth:`h5py.Group.create_dataset` that select a filter.

    Parameters
    ----------
    compression
        ``"none"`` (or ``None``), ``"gzip"`` (deflate with byte shuffle), ``"lz4"``, or
        ``"bitshuffle"`` (bitshuffle + lz4); the last two are HDF5 plugin filters from
        :mod:`hdf5plugin`, which readers need too.
    level
        gzip level 0-9 (default 4); ignored by the other filters.
    """
    if compression is None or compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": level or _GZIP_LEVEL, "shuffle": True}
    if compression == "lz4":
        return dict(hdf5plugin.LZ4())
    if compression == "bitshuffle":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    raise ValueError(
        f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}"
    )


class CXIWriter:
    """Write frames to one CXI/HDF5 file in blocks, atomically.

    Frames go to a resizable dataset ``data_path`` of shape ``(N, *frame_shape)`` chunked one
    frame each; per-frame values (photon energy, encoder values, ...) go to resizable ``(N,)``
    datasets named by their HDF5 paths.  The file is written under a temporary name beside
    ``path`` and renamed onto ``path`` when the context exits cleanly, so a crash leaves no
    half-written file under the final name.

    Parameters
    ----------
    path
        Output file.
    data_path
        HDF5 path of the frame dataset.
    compression
        See :func:`compression_options`.
    attrs
        Attributes of the file's root group (provenance); values that HDF5 cannot store
        directly (dicts, lists of str) are stored as JSON text.
    data_attrs
        Attributes of the frame dataset (units, ...).
    force
        Replace an existing ``path``; without it an existing file raises
        :class:`~hpcdiff.errors.OutputExistsError`.

    Examples
    --------
    >>> with CXIWriter("run.cxi") as w:                                   # doctest: +SKIP
    ...     for block, energy in blocks:
    ...         w.append(block, per_frame={"/LCLS/photon_energy_eV": energy})
    """

    def __init__(
        self,
        path: str | Path,
        *,
        data_path: str = DEFAULT_DATA_PATH,
        compression: str | None = "gzip",
        attrs: Mapping[str, Any] | None = None,
        data_attrs: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> None:
        self.path = Path(path)
        self.data_path = _absolute(data_path)
        self._filter = compression_options(compression)
        self._attrs = dict(attrs or {})
        self._data_attrs = dict(data_attrs or {})
        self._force = force
        self._file: AppendableH5 | None = None
        self._keys: tuple[str, ...] | None = None
        self.n_frames = 0

    def __enter__(self) -> CXIWriter:
        attrs = {key: _attr_value(value) for key, value in self._attrs.items()}
        self._file = AppendableH5(self.path, force=self._force, attrs=attrs)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close(ok=exc_type is None)

    def append(
        self,
        frames: np.ndarray,
        *,
        per_frame: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    ) -> None:
        """Append a block of frames and their per-frame values.

        Parameters
        ----------
        frames
            ``(n, *frame_shape)`` array, any numeric dtype (kept as given; float32 stays
            float32).  Every block must have the frame shape and dtype of the first.
        per_frame
            HDF5 path -> ``(n,)`` values.  Every block must name the same paths.
        """
        if self._file is None:
            raise RuntimeError("CXIWriter.append outside its 'with' block")
        frames = np.asarray(frames)
        if frames.ndim < 2:
            raise ValueError(f"frames must be (n, *frame_shape), got shape {frames.shape}")
        columns = {_absolute(k): np.asarray(v) for k, v in (per_frame or {}).items()}
        n = frames.shape[0]
        if self._keys is None:
            self._create(self._file, frames, columns)
        elif tuple(sorted(columns)) != self._keys:
            raise ValueError(
                f"per-frame values {sorted(columns)} differ from the first block's "
                f"{list(self._keys)}"
            )
        for key, values in columns.items():
            if values.shape != (n,):
                raise ValueError(
                    f"per-frame values {key} have shape {values.shape}, expected ({n},)"
                )
        shape = self._file.h5[self.data_path].shape[1:]
        if frames.shape[1:] != shape:
            raise ValueError(f"frames of shape {frames.shape[1:]} appended to {shape} frames")
        self._file.append({self.data_path: frames, **columns})
        self.n_frames = self._file.n_rows

    def _create(
        self, file: AppendableH5, frames: np.ndarray, per_frame: Mapping[str, np.ndarray]
    ) -> None:
        file.column(
            self.data_path,
            dtype=frames.dtype,
            row_shape=frames.shape[1:],
            chunk_rows=1,
            compression=self._filter,
            attrs={key: _attr_value(value) for key, value in self._data_attrs.items()},
        )
        for key, values in per_frame.items():
            file.column(key, dtype=values.dtype, chunk_rows=1024)
        self._keys = tuple(sorted(per_frame))


def write_cxi(
    path: str | Path,
    frames: np.ndarray,
    *,
    data_path: str = DEFAULT_DATA_PATH,
    compression: str | None = "gzip",
    per_frame: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write ``frames`` ``(n, *frame_shape)`` to a new CXI/HDF5 file in one go.

    See :class:`CXIWriter` for the parameters; returns ``path``.
    """
    with CXIWriter(
        path, data_path=data_path, compression=compression, attrs=attrs, force=force
    ) as w:
        w.append(frames, per_frame=per_frame)
    return Path(path)


def _absolute(h5path: str) -> str:
    return h5path if h5path.startswith("/") else "/" + h5path


def _attr_value(value: Any) -> Any:
    if isinstance(value, Mapping) or (
        isinstance(value, list | tuple) and any(isinstance(v, str) for v in value)
    ):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Layout:
    """Where frames are in one file and how they become slabs."""

    data_path: str
    selection: tuple[str, ...]  # per dataset axis: "%" (frame), "panel", "ss" or "fs"
    n_frames: int
    frame_shape: tuple[int, ...]  # shape of one frame as read, before reshaping to the slab
    n_blocks: int  # panel blocks read along the "panel" axis (1 when there is none)


class FrameSource:
    """Lazy reader of one run: several CXI/HDF5 files read as one list of frames.

    Parameters
    ----------
    files
        The run's files, in order; global frame numbers run through them in this order.
    geometry
        CrystFEL geometry: gives the data path, the dimension structure (``dim0 = %`` ...),
        the slab shape frames are reshaped to, and the HDF5 paths of per-frame values.
    data_path
        Frame dataset, for files read without a geometry or with a geometry that has no
        ``data`` line (a different one from the geometry's is a ``ValueError``).  With
        neither, the first of :data:`CANDIDATE_DATA_PATHS` present in the file is used.
    max_open
        Most files held open at once (least recently used closed first).

    Attributes
    ----------
    n_frames : int
        Frames in the run.
    frame_ids : list of FrameId
        Identity of every frame, in global order.
    slab_shape : tuple of int
        ``(n_ss, n_fs)`` of the frames :meth:`read` returns.

    Notes
    -----
    File handles are opened lazily and kept (up to ``max_open``); the object pickles
    without them (dask workers reopen files).  Use it as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self,
        files: Iterable[str | Path],
        *,
        geometry: DetectorGeometry | None = None,
        data_path: str | None = None,
        max_open: int = 32,
    ) -> None:
        self.files: tuple[str, ...] = tuple(str(f) for f in files)
        if not self.files:
            raise ValueError("FrameSource needs at least one file")
        twice = sorted({f for f in self.files if self.files.count(f) > 1})
        if twice:
            raise ValueError(f"files listed more than once in the run: {', '.join(twice)}")
        self.geometry = geometry
        self.max_open = max(1, max_open)
        self._handles = OpenFiles(self.max_open)
        self._data_path, self._dims, self._n_blocks = _data_template(geometry, data_path)
        self._slab: tuple[int, int] | None = None
        if geometry is not None:
            self._slab = (int(geometry.slab_shape[0]), int(geometry.slab_shape[1]))
        self._layouts = [self._layout(f) for f in self.files]
        if self._slab is None:
            first = self._layouts[0].frame_shape
            self._slab = (math.prod(first[:-1]), first[-1])
        self.slab_shape: tuple[int, int] = self._slab
        for file, layout in zip(self.files, self._layouts, strict=True):
            _check_slab(file, layout, self.slab_shape, from_geometry=geometry is not None)
        counts = np.array([lay.n_frames for lay in self._layouts], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self.n_frames = int(self._offsets[-1])
        self._ids: tuple[FrameId, ...] | None = None
        self._dtype: np.dtype | None = None

    # ------------------------------------------------------------------ run structure

    @property
    def frame_ids(self) -> list[FrameId]:
        """Identity of every frame, ordered by (file order in the run, index)."""
        if self._ids is None:
            self._ids = tuple(
                FrameId(file, i)
                for file, lay in zip(self.files, self._layouts, strict=True)
                for i in range(lay.n_frames)
            )
        return list(self._ids)

    def frames_per_file(self) -> list[int]:
        """Number of frames in each file, in run order."""
        return [lay.n_frames for lay in self._layouts]

    def data_path(self, file_number: int = 0) -> str:
        """HDF5 path of the frame dataset in the ``file_number``-th file."""
        return self._layouts[file_number].data_path

    def __len__(self) -> int:
        return self.n_frames

    def _segments(self, start: int, stop: int) -> Iterator[tuple[int, int, int, int]]:
        """(file number, first index, end index, output offset) of each file's part of a range."""
        if not 0 <= start <= stop <= self.n_frames:
            raise IndexError(
                f"frame range [{start}, {stop}) outside the run's {self.n_frames} frames"
            )
        f = int(np.searchsorted(self._offsets, start, side="right")) - 1
        pos = start
        while pos < stop:
            file_end = int(self._offsets[f + 1])
            end = min(stop, file_end)
            if end > pos:
                base = int(self._offsets[f])
                yield f, pos - base, end - base, pos - start
            pos = end
            f += 1

    # ------------------------------------------------------------------ reading

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` (global frame numbers) as float32 slabs.

        Returns
        -------
        numpy.ndarray
            ``(stop - start, n_ss, n_fs)`` float32, in the file's units (ADU).  Each file's
            part is read as one contiguous hyperslab.
        """
        out = np.empty((stop - start, *self.slab_shape), dtype=np.float32)
        for f, i0, i1, o in self._segments(start, stop):
            layout = self._layouts[f]
            dset = self._dataset(self.files[f], layout.data_path)
            try:
                block = _read_block(dset, layout, i0, i1)
            except OSError as exc:  # a corrupt chunk, a missing filter plugin, a vanished file
                why = describe_read_error(exc, dset) or str(exc)
                raise FormatError(
                    self.files[f], f"cannot read frames {i0}..{i1 - 1} ({why})", dataset=dset.name
                ) from None
            out[o : o + (i1 - i0)] = block.reshape(i1 - i0, *self.slab_shape)
        return out

    @property
    def dtype(self) -> np.dtype:
        """The run's frame dtype as stored (one type all its files' frames fit in)."""
        if self._dtype is None:
            types = [
                self._dataset(f, lay.data_path).dtype
                for f, lay in zip(self.files, self._layouts, strict=True)
            ]
            self._dtype = np.result_type(*types)
        return self._dtype

    def read_raw(self, start: int, stop: int, *, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``start:stop`` in their stored dtype (int16 ADU stays int16).

        The widening to float32 is left to preprocessing, which does it once, in its first
        arithmetic pass.  Frames stored as ``(frame, ss, fs)`` are read by HDF5 straight
        into the output (``read_direct``: no intermediate array); other layouts (psana
        panel stacks, transposed axes) through one hyperslab read and a copy.

        Parameters
        ----------
        out
            Optional buffer to reuse, C-contiguous, ``(m, n_ss, n_fs)`` with
            ``m >= stop - start`` and dtype :attr:`dtype`.

        Returns
        -------
        numpy.ndarray
            ``(stop - start, n_ss, n_fs)`` of dtype :attr:`dtype`; a view of ``out`` when
            given.

        Raises
        ------
        ValueError
            If ``out`` has the wrong dtype, shape or memory layout.
        FormatError
            If the file cannot be read.
        """
        n = stop - start
        shape = (n, *self.slab_shape)
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        else:
            if (
                out.dtype != self.dtype
                or out.ndim != 3
                or tuple(out.shape[1:]) != self.slab_shape
                or out.shape[0] < n
                or not out.flags.c_contiguous
            ):
                raise ValueError(
                    f"out must be a C-contiguous (>= {n}, {self.slab_shape[0]}, "
                    f"{self.slab_shape[1]}) {self.dtype} array, got {out.shape} {out.dtype}"
                )
            out = out[:n]
        for f, i0, i1, o in self._segments(start, stop):
            layout = self._layouts[f]
            dset = self._dataset(self.files[f], layout.data_path)
            dest = out[o : o + (i1 - i0)]
            try:
                if layout.selection == ("%", "ss", "fs") and dset.dtype == out.dtype:
                    dset.read_direct(dest, source_sel=np.s_[i0:i1])
                else:
                    dest[...] = _read_block(dset, layout, i0, i1).reshape(dest.shape)
            except OSError as exc:  # a corrupt chunk, a missing filter plugin, a vanished file
                why = describe_read_error(exc, dset) or str(exc)
                raise FormatError(
                    self.files[f], f"cannot read frames {i0}..{i1 - 1} ({why})", dataset=dset.name
                ) from None
        return out

    def global_numbers(self, ids: Sequence[FrameId]) -> np.ndarray:
        """Global frame numbers ``(n,)`` int64 of frames named by identity.

        Raises
        ------
        KeyError
            Naming the frames (up to 10) that are not in this run.
        """
        position = {file: k for k, file in enumerate(self.files)}
        out = np.empty(len(ids), dtype=np.int64)
        missing = []
        for k, fid in enumerate(ids):
            f = position.get(fid.file)
            if f is None or not 0 <= fid.index < self._layouts[f].n_frames:
                missing.append(str(fid))
            else:
                out[k] = self._offsets[f] + fid.index
        if missing:
            raise KeyError(f"{len(missing)} frame(s) not in this run: {', '.join(missing[:10])}")
        return out

    def read_ids(self, ids: Sequence[FrameId]) -> np.ndarray:
        """Frames named by identity, in the order given, as ``(n, n_ss, n_fs)`` float32."""
        numbers = self.global_numbers(ids)
        out = np.empty((len(ids), *self.slab_shape), dtype=np.float32)
        for k, g in enumerate(numbers.tolist()):
            out[k] = self.read(g, g + 1)[0]
        return out

    def frame_values(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Per-frame values the geometry gives, for frames ``start:stop``.

        Returns
        -------
        dict of str to numpy.ndarray
            ``(n,)`` float64 arrays, where known:

            ``"photon_energy_ev"``
                Photon energy, eV (read per frame when the geometry names an HDF5 path).
            ``"clen_m"``
                ``clen`` in metres, without ``coffset`` (what
                :meth:`hpcdiff.geometry.DetectorModel.build` takes).  An HDF5 ``clen`` is
                read in millimetres, as CrystFEL does.
            ``"detector_distance_m"``
                ``clen + coffset``, metres: the camera length CrystFEL reports.
            ``"detector_shift_x_m"``, ``"detector_shift_y_m"``
                The geometry's top-level ``detector_shift_x/y``, metres (read per frame
                when it names an HDF5 path; metres unless the path is followed by ``mm``).
        """
        geom = self.geometry
        if geom is None or not geom.panels:
            return {}
        n = stop - start
        out: dict[str, np.ndarray] = {}
        if geom.photon_energy is not None:
            out["photon_energy_ev"] = self._value(geom.photon_energy, start, stop, scale=1.0)
        panel = geom.panels[0]
        if panel.clen is not None:
            clen = self._value(panel.clen, start, stop, scale=1e-3)
            out["clen_m"] = clen
            out["detector_distance_m"] = clen + float(panel.coffset_m)
        shifts = getattr(geom, "detector_shift", None) or ()
        for key, spec in zip(("shift_x", "shift_y"), shifts, strict=False):
            _, path, scale = length_spec(spec)
            out[f"detector_{key}_m"] = self._value(path or spec, start, stop, scale=scale)
        for key, values in out.items():
            assert values.shape == (n,), key
        return out

    def _value(self, spec: float | str, start: int, stop: int, *, scale: float) -> np.ndarray:
        n = stop - start
        if not isinstance(spec, str):
            return np.full(n, float(spec), dtype=np.float64)
        out = np.empty(n, dtype=np.float64)
        for f, i0, i1, o in self._segments(start, stop):
            file = self.files[f]
            dset = self._dataset(file, _absolute(spec), what="per-frame value")
            n_file = self._layouts[f].n_frames
            if dset.size == 1:
                values = np.full(i1 - i0, float(dset[()].reshape(-1)[0]))
            elif dset.ndim == 1 and dset.shape[0] == n_file:
                values = dset[i0:i1]
            else:
                raise FormatError(
                    file,
                    f"per-frame values have shape {dset.shape}; expected ({n_file},) "
                    "(one per frame) or a single value",
                    dataset=dset.name,
                )
            try:
                out[o : o + (i1 - i0)] = np.asarray(values, dtype=np.float64) * scale
            except (TypeError, ValueError) as exc:
                raise FormatError(
                    file, f"per-frame values are not numbers ({exc})", dataset=dset.name
                ) from None
        return out

    # ------------------------------------------------------------------ files

    def _file(self, file: str) -> h5py.File:
        return self._handles.get(file)

    def _dataset(self, file: str, path: str, *, what: str = "frame data") -> h5py.Dataset:
        h5 = self._file(file)
        obj = h5.get(path)
        if not isinstance(obj, h5py.Dataset):
            raise FormatError(
                file,
                f"{what} dataset missing; the file holds: {_describe_datasets(h5)}",
                dataset=path,
            )
        return obj

    def _layout(self, file: str) -> _Layout:
        h5 = self._file(file)
        path = self._data_path or _find_frames(file, h5)
        dset = self._dataset(file, path)
        dims = self._dims
        if not dims:
            dims = ("%", "ss", "fs") if dset.ndim >= 3 else ("ss", "fs")
        elif "%" not in dims and dset.ndim > len(dims) and self._slab is not None:
            # No frame axis named (CrystFEL's default dims are ss, fs: one frame per file),
            # but frames are stacked along a leading axis: read them as frames when the
            # rest is the slab, otherwise fold the extra axes into ss (stacked panels).
            rest = dset.shape[1:]
            if rest[-1] == self._slab[1] and math.prod(rest[:-1]) == self._slab[0]:
                dims = ("%", *dims)
        selection = _selection(file, dset, dims, n_blocks=self._n_blocks)
        n_frames = dset.shape[selection.index("%")] if "%" in selection else 1
        frame_shape = tuple(
            self._n_blocks if d == "panel" else dset.shape[k]
            for k, d in enumerate(selection)
            if d != "%"
        )
        return _Layout(path, selection, n_frames, frame_shape, self._n_blocks)

    def close(self) -> None:
        """Close every open file (reopened on the next read)."""
        self._handles.close()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return (
            f"FrameSource({len(self.files)} file(s), {self.n_frames} frames, "
            f"slab {self.slab_shape[0]}x{self.slab_shape[1]})"
        )


def _data_template(
    geometry: DetectorGeometry | None, data_path: str | None
) -> tuple[str | None, tuple[str, ...], int]:
    """Data path, dimension structure and panel blocks from ``data_path`` or the geometry.

    A fixed panel index (psana-style ``dim1 = 0`` ... ``dim1 = 31``) becomes a ``"panel"``
    axis read over blocks ``0 .. max index``: the geometry folds that index into slab rows
    (``slab_ss = index * block_n_ss + file_ss``), so stacking the blocks gives the slab.
    """
    dims: tuple[str, ...] = ()
    path = None
    n_blocks = 1
    if geometry is not None and geometry.panels:
        templates = {
            (p.data, tuple("panel" if isinstance(d, int) else str(d) for d in p.dim_structure))
            for p in geometry.panels
        }
        if len(templates) > 1:
            found = "; ".join(sorted(f"{t[0]} dims {list(t[1])}" for t in templates))
            raise FormatError(
                geometry.source or "<geometry>",
                f"panels read from different datasets or dimension structures ({found}); "
                "hpcdiff reads one frame dataset per file",
            )
        ((path, dims),) = templates
        fixed = [int(d) for p in geometry.panels for d in p.dim_structure if isinstance(d, int)]
        n_blocks = max(fixed) + 1 if fixed else 1
    if data_path is not None:
        if path is not None and _absolute(path) != _absolute(data_path):
            raise ValueError(
                f"data_path {data_path!r} differs from the geometry's 'data = {path}' "
                f"({geometry.source if geometry is not None else ''}); give one of them"
            )
        path = data_path
    if path is not None and "%" in path:
        raise FormatError(
            geometry.source if geometry is not None and geometry.source else "<geometry>",
            f"data path {path!r} has a '%' placeholder (one group per event); hpcdiff needs "
            "frames stacked in one dataset",
        )
    return (_absolute(path) if path else None), dims, n_blocks


def _find_frames(file: str, h5: h5py.File) -> str:
    for path in CANDIDATE_DATA_PATHS:
        obj = h5.get(path)
        if isinstance(obj, h5py.Dataset) and obj.ndim >= 2:
            return path
    raise FormatError(
        file,
        f"no frame dataset at {', '.join(CANDIDATE_DATA_PATHS)}; pass data_path (or a geometry "
        f"with 'data = ...'); the file holds: {_describe_datasets(h5)}",
    )


def _selection(
    file: str, dset: h5py.Dataset, dims: tuple[str, ...], *, n_blocks: int
) -> tuple[str, ...]:
    """Validate a dimension structure against a dataset: one entry per dataset axis."""
    if dset.ndim < len(dims):
        raise FormatError(
            file,
            f"dataset has {dset.ndim} dimension(s) {dset.shape}; the geometry's dimension "
            f"structure {list(dims)} needs {len(dims)}",
            dataset=dset.name,
        )
    if dset.ndim > len(dims) and "ss" in dims:
        # psana layout without a panel index: dim0 = %, dim1 = ss, dim2 = fs over
        # (N, 32, 185, 388); the extra leading frame axes are folded into ss.
        k = dims.index("ss")
        dims = dims[:k] + ("ss",) * (dset.ndim - len(dims)) + dims[k:]
    if (
        len(dims) != dset.ndim
        or dims.count("%") > 1
        or dims.count("panel") > 1
        or dims.count("fs") != 1
        or "ss" not in dims
    ):
        raise FormatError(
            file,
            f"dimension structure {list(dims)} does not fit dataset shape {dset.shape}; "
            "expected one 'fs', at least one 'ss', at most one '%' and one panel index",
            dataset=dset.name,
        )
    if "panel" in dims and dset.shape[dims.index("panel")] < n_blocks:
        axis = dims.index("panel")
        raise FormatError(
            file,
            f"the geometry uses panel index {n_blocks - 1} of dimension {axis}, but the "
            f"dataset has {dset.shape[axis]} along it (shape {dset.shape})",
            dataset=dset.name,
        )
    return dims


def _check_slab(file: str, layout: _Layout, slab: tuple[int, int], *, from_geometry: bool) -> None:
    shape = layout.frame_shape
    ok = shape[-1] == slab[1] and math.prod(shape[:-1]) == slab[0]
    if not ok:
        source = "the geometry's slab" if from_geometry else "the first file's slab"
        raise FormatError(
            file,
            f"frame shape {shape} does not match {source} {tuple(slab)} (n_ss, n_fs); expected "
            f"frames of shape {tuple(slab)}, or stacked panels (k, {slab[0]}/k, {slab[1]}) "
            "as psana writes them",
            dataset=layout.data_path,
        )


def _read_block(dset: h5py.Dataset, layout: _Layout, i0: int, i1: int) -> np.ndarray:
    """Read frames ``i0:i1`` of one file as ``(n, *frame_shape)``, axes (frame, panel, ss, fs).

    One hyperslab read per call; axes are transposed afterwards only where the file's order
    differs.
    """
    spans = {"%": slice(i0, i1), "panel": slice(0, layout.n_blocks)}
    index = tuple(spans.get(d, slice(None)) for d in layout.selection)
    block = np.asarray(dset[index])
    kept = list(layout.selection)
    if "%" not in kept:  # one frame per file
        block = block[np.newaxis]
        kept.insert(0, "%")
    order = [kept.index("%")]
    order += [k for k, d in enumerate(kept) if d == "panel"]
    order += [k for k, d in enumerate(kept) if d == "ss"]
    order += [kept.index("fs")]
    if order != list(range(len(order))):
        block = np.transpose(block, order)
    return block


# --------------------------------------------------------------------------- summary


def _filters(dset: h5py.Dataset) -> list[str]:
    plist = dset.id.get_create_plist()
    names = []
    for k in range(plist.get_nfilters()):
        code, _flags, _values, name = plist.get_filter(k)
        label = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        names.append(_FILTER_NAMES.get(code, label or f"filter {code}"))
    return names


_FILTER_NAMES = {1: "gzip", 2: "shuffle", 3: "fletcher32", 4: "szip", 32000: "lzf", 32004: "lz4",
                 32008: "bitshuffle", 32001: "blosc", 32015: "zstd"}  # fmt: skip


def _datasets(h5: h5py.File) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []

    def visit(_name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(obj)

    h5.visititems(visit)
    return found


def _describe_datasets(h5: h5py.File) -> str:
    found = _datasets(h5)
    if not found:
        return "no datasets"
    text = ", ".join(f"{d.name} {d.shape}" for d in found[:_MAX_LISTED])
    if len(found) > _MAX_LISTED:
        text += f", ... ({len(found) - _MAX_LISTED} more)"
    return text


def summarise_cxi(path: str | Path, *, data_path: str | None = None) -> dict[str, Any]:
    """What a CXI/HDF5 file holds, without reading any frame.

    Parameters
    ----------
    path
        The file.
    data_path
        Frame dataset; found among :data:`CANDIDATE_DATA_PATHS` when not given.

    Returns
    -------
    dict
        ``path``, ``size_bytes``, ``attrs`` (root attributes as text), ``datasets`` (a list of
        dicts with ``path``, ``shape``, ``dtype``, ``chunks``, ``compression`` (filter names),
        ``checksum`` (``"fletcher32"`` or ``None``) and ``stored_bytes``), ``frame_dataset``, ``n_frames`` and ``frame_shape`` (``None``
        where no frame dataset is found).
    """
    path = Path(path)
    with open_hdf5(path) as h5:
        datasets = [
            {
                "path": d.name,
                "shape": list(d.shape),
                "dtype": str(d.dtype),
                "chunks": list(d.chunks) if d.chunks else None,
                "compression": [f for f in _filters(d) if f != "fletcher32"],
                "checksum": "fletcher32" if d.fletcher32 else None,
                "stored_bytes": int(d.id.get_storage_size()),
            }
            for d in _datasets(h5)
        ]
        if data_path is not None:
            if not isinstance(h5.get(data_path), h5py.Dataset):
                raise FormatError(
                    path,
                    f"dataset missing; the file holds: {_describe_datasets(h5)}",
                    dataset=data_path,
                )
            frames_path: str | None = _absolute(data_path)
        else:
            frames_path = next(
                (p for p in CANDIDATE_DATA_PATHS if isinstance(h5.get(p), h5py.Dataset)), None
            )
        n_frames = frame_shape = None
        if frames_path is not None:
            shape = h5[frames_path].shape
            n_frames, frame_shape = (
                (shape[0], list(shape[1:])) if len(shape) >= 3 else (1, list(shape))
            )
        attrs = {k: _attr_text(v) for k, v in h5.attrs.items()}
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "attrs": attrs,
        "datasets": datasets,
        "frame_dataset": frames_path,
        "n_frames": n_frames,
        "frame_shape": frame_shape,
    }


def _attr_text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 16 else f"array {value.shape} {value.dtype}"
    if isinstance(value, np.generic):
        return value.item()
    return value

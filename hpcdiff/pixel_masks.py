"""Bad pixels a CrystFEL geometry asks for beyond its shape: mask files, raw-value flags and
per-pixel saturation (CrystFEL 0.10+, ``man crystfel_geometry``).

* ``mask0_data .. mask7_data`` (``mask``, ``mask_file``, ``mask_good``, ``mask_bad`` are
  mask 0), with ``maskN_file`` (default: the frame file) and ``maskN_goodbits`` /
  ``maskN_badbits``: a pixel is bad unless every goodbit is set in its mask value, and bad
  when any badbit is set (CrystFEL's ``image_hdf5_read_mask``).  Static masks: the dataset
  is laid out as the panel's data without the frame axis (``dim0 = %`` dropped).
* ``flag_lessthan``, ``flag_morethan``, ``flag_equal``: a pixel is bad in a frame when its
  *raw* value is strictly below / strictly above the value, or rounds (to nearest) to it;
  several values of each kind may be given (CrystFEL's ``mark_flagged_pixels``).
* ``saturation_map`` (+ ``saturation_map_file``): a pixel is bad in a frame when its raw
  value is strictly above its saturation value (CrystFEL rejects such reflections).
* ``mask_edge_pixels`` and bad regions need no file and no frame:
  :func:`hpcdiff.geometry.geometry_valid` has them.

None of this touches a panel with ``no_index`` (it is invalid whole).  :class:`PixelMasks`
is built once per run (reading the files) and applied per frame in the corrections step,
before pedestal, gain and everything else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcdiff.backend import array_module
from hpcdiff.errors import FormatError
from hpcdiff.geometry import panel_index_map
from hpcdiff.io.geom import DetectorGeometry, Panel, PanelMask, PixelFlag

__all__ = [
    "PixelMasks",
    "flag_bad",
    "masks_for",
    "no_masks",
    "read_panel_map",
    "read_static_masks",
]


def flag_bad(raw: Any, flags: tuple[PixelFlag, ...]) -> Any:
    """Pixels that CrystFEL's ``flag_*`` values mark bad.

    Parameters
    ----------
    raw
        Raw pixel values, any shape (numpy or cupy), as read from the file.
    flags
        The panel's flags.

    Returns
    -------
    bool array, shape of ``raw``
        ``raw < v`` (lessthan), ``raw > v`` (morethan), ``rint(raw) == v`` (equal); the
        raw values are compared as float32, as CrystFEL's.
    """
    xp = array_module(raw)
    x = raw if raw.dtype == np.float32 else raw.astype(xp.float32)
    bad = None
    for f in flags:
        v = np.float32(f.value)
        if f.kind == "lessthan":
            hit = x < v
        elif f.kind == "morethan":
            hit = x > v
        else:
            hit = xp.rint(x) == v
        bad = hit if bad is None else xp.logical_or(bad, hit, out=bad)
    return xp.zeros(x.shape, dtype=bool) if bad is None else bad


def _where(geom: DetectorGeometry, line: int | None, key: str) -> str:
    """The key as the error names it (FormatError adds the geometry file and line)."""
    return key


def read_panel_map(
    geom: DetectorGeometry,
    panel: Panel,
    *,
    data: str,
    file: str | None,
    frame_file: str | Path | None,
    line: int | None,
    key: str,
    frame_index: int | None = None,
    handles: dict[str, Any] | None = None,
) -> np.ndarray:
    """One panel's block of a per-pixel map (mask or saturation map).

    The dataset is laid out as the panel's frame data without the frame axis: the
    panel's ``dim`` structure with ``%`` dropped (a 2D ``(ss, fs)`` map for the usual
    ``dim0 = %``), its rows at the panel's file ``min_ss .. max_ss``.

    Parameters
    ----------
    geom, panel
        The geometry and the panel.
    data
        HDF5 dataset path.
    file
        HDF5 file (absolute or relative to the working directory), or ``None``: the frame
        file ``frame_file``.
    frame_file
        The run's (first) frame file, or (per-frame maps) the frame's file.
    line, key
        Geometry line and key, for error messages.
    frame_index
        Read a per-frame map (the dataset has the panel data's frame axis ``%``) at this
        index; ``None``: the map must be static.
    handles
        Open HDF5 files by path, reused and added to (the caller closes them); ``None``:
        the file is opened and closed here.

    Returns
    -------
    numpy.ndarray
        ``(panel.n_ss, panel.n_fs)`` values as stored.

    Raises
    ------
    FormatError
        Naming the geometry file and line, the map file and dataset: no such file or
        dataset, a frame axis (a per-frame map), or a shape that does not hold the panel.
    """
    import h5py

    from hpcdiff.io.hdf5 import open_hdf5

    src = geom.source or "<geometry>"
    where = _where(geom, line, key)
    if file is None and frame_file is None:
        raise FormatError(
            src,
            f"{where}: the map {data} is in the frame file, and no frame file was given "
            f"(give {key.replace('_data', '_file')} or read it with the run's files)",
            line=line,
            dataset=data,
        )
    path = Path(file if file is not None else str(frame_file))
    h5 = None if handles is None else handles.get(str(path))
    if h5 is None:
        if not path.is_file():
            raise FormatError(src, f"{where}: map file {path} not found", line=line, dataset=data)
        try:
            h5 = open_hdf5(path)
        except FormatError as exc:
            raise FormatError(
                src,
                f"{where}: cannot open map file {path} ({exc.message})",
                line=line,
                dataset=data,
            ) from None
        if handles is not None:
            handles[str(path)] = h5
    with contextlib.nullcontext(h5) if handles is not None else h5:
        obj = h5.get(data)
        if not isinstance(obj, h5py.Dataset):
            raise FormatError(
                src,
                f"{where}: map file {path} has no dataset {data}",
                line=line,
                dataset=data,
            )
        dims: list[str | int] = [d for d in panel.dim_structure if d != "%"]
        if frame_index is not None:
            dims = list(panel.dim_structure)
        if obj.ndim != len(dims):
            per_frame = obj.ndim == len(panel.dim_structure) and "%" in panel.dim_structure
            if per_frame:
                raise _PerFrameMap(
                    src,
                    f"{where}: dataset {data} in {path} has the frame axis (a per-frame map, "
                    "read for each frame)",
                    line=line,
                    dataset=data,
                )
            what = (
                f"has {obj.ndim} dimensions {obj.shape}; expected "
                f"{len(panel.dim_structure) - ('%' in panel.dim_structure)} (the panel's dims "
                f"{list(panel.dim_structure)} without '%') or {len(panel.dim_structure)} "
                "(with the frame axis: a per-frame map)"
            )
            raise FormatError(
                src, f"{where}: dataset {data} in {path} {what}", line=line, dataset=data
            )
        ss0 = panel.min_ss - panel.slab_ss_offset
        index: list[int | slice] = []
        for axis, d in enumerate(dims):
            if d == "%":
                assert frame_index is not None
                index.append(int(frame_index))
                need = int(frame_index) + 1
            elif d == "ss":
                index.append(slice(ss0, ss0 + panel.n_ss))
                need = ss0 + panel.n_ss
            elif d == "fs":
                index.append(slice(panel.min_fs, panel.max_fs + 1))
                need = panel.max_fs + 1
            else:
                index.append(int(d))
                need = int(d) + 1
            if obj.shape[axis] < need:
                raise FormatError(
                    src,
                    f"{where}: dataset {data} in {path} has shape {obj.shape}, too small for "
                    f"panel {panel.name} (needs {need} along axis {axis}, dims "
                    f"{list(dims)})",
                    line=line,
                    dataset=data,
                )
        if obj.dtype.kind not in "biuf":
            raise FormatError(
                src,
                f"{where}: dataset {data} in {path} holds {obj.dtype}, not numbers",
                line=line,
                dataset=data,
            )
        return np.asarray(obj[tuple(index)])


class _PerFrameMap(FormatError):
    """A map dataset with the frame axis (read per frame, not once)."""


def _mask_bad(values: np.ndarray, m: PanelMask) -> np.ndarray:
    """CrystFEL's rule: bad unless all goodbits are set; bad if any badbit is set."""
    v = values.astype(np.int64)
    return ((v & m.goodbits) != m.goodbits) | ((v & m.badbits) != 0)


def _mask_key(m: PanelMask) -> str:
    return "mask" if m.number == 0 else f"mask{m.number}_data"


def read_static_masks(
    geom: DetectorGeometry,
    *,
    frame_file: str | Path | None = None,
    per_frame: list[tuple[Panel, PanelMask]] | None = None,
) -> np.ndarray:
    """Pixels the geometry's static mask datasets mark bad, ``(n_ss, n_fs)`` bool.

    Panels with ``no_index`` are skipped (invalid whole anyway), as CrystFEL does.

    Parameters
    ----------
    geom
        The geometry.
    frame_file
        Where masks without ``maskN_file`` are read (CrystFEL: the image's own file; a
        static mask there is taken from this one file for the whole run).
    per_frame
        When given, masks whose dataset has the frame axis are appended here (to read per
        frame, :meth:`PixelMasks.read_frame_bad`) instead of raising.

    Raises
    ------
    FormatError
        See :func:`read_panel_map`.
    """
    bad = np.zeros(geom.slab_shape, dtype=bool)
    handles: dict[str, Any] = {}
    try:
        for p in geom.panels:
            if p.no_index:
                continue
            view = bad[p.min_ss : p.max_ss + 1, p.min_fs : p.max_fs + 1]
            for m in p.masks:
                try:
                    values = read_panel_map(
                        geom, p, data=m.data, file=m.file, frame_file=frame_file, line=m.line,
                        key=_mask_key(m), handles=handles,
                    )  # fmt: skip
                except _PerFrameMap:
                    if per_frame is None:
                        raise
                    per_frame.append((p, m))
                    continue
                view |= _mask_bad(values, m)
    finally:
        for h5 in handles.values():
            h5.close()
    return bad


def _read_saturation(geom: DetectorGeometry, frame_file: str | Path | None) -> np.ndarray | None:
    if not any(p.saturation_map is not None for p in geom.panels):
        return None
    sat = np.full(geom.slab_shape, np.inf, dtype=np.float32)
    for p in geom.panels:
        s = p.saturation_map
        if s is None or p.no_index:
            continue
        try:
            values = read_panel_map(
                geom, p, data=s.data, file=s.file, frame_file=frame_file, line=s.line,
                key="saturation_map",
            )  # fmt: skip
        except _PerFrameMap as exc:
            raise FormatError(
                exc.path,
                f"{exc.message}: hpcdiff reads static saturation maps only (the panel data's "
                "dims without '%')",
                line=s.line,
                dataset=s.data,
            ) from None
        sat[p.min_ss : p.max_ss + 1, p.min_fs : p.max_fs + 1] = values.astype(np.float32)
    return sat


@dataclass(frozen=True, eq=False)
class PixelMasks:
    """A run's file masks, flags and saturation map (build with :meth:`from_geometry`).

    Attributes
    ----------
    static_bad
        ``(n_ss, n_fs)`` bool, pixels the mask datasets mark bad.
    flag_groups
        ``(where, flags)``: the ``(n_ss, n_fs)`` bool pixels of the panels that share one
        set of ``flag_*`` values (``None``: every panel, the usual top-level flags), and
        the values.
    saturation
        ``(n_ss, n_fs)`` float32 saturation values, ADU (``inf`` where none), or ``None``.
    frame_masks
        ``(panel, mask)`` of masks whose dataset has the frame axis (Cheetah's per-event
        ``/entry_1/data_1/mask``): read for each frame (:meth:`read_frame_bad`).
    geometry
        The geometry (for :meth:`read_frame_bad`'s error messages).
    """

    static_bad: np.ndarray
    flag_groups: tuple[tuple[np.ndarray | None, tuple[PixelFlag, ...]], ...] = ()
    saturation: np.ndarray | None = None
    frame_masks: tuple[tuple[Panel, PanelMask], ...] = ()
    geometry: DetectorGeometry | None = None

    @classmethod
    def from_geometry(
        cls, geom: DetectorGeometry, *, frame_file: str | Path | None = None
    ) -> PixelMasks:
        """Read the geometry's masks and saturation maps (files named in the geometry,
        or ``frame_file`` for those in the frame file)."""
        groups: dict[tuple[PixelFlag, ...], np.ndarray] = {}
        for p in geom.panels:
            if p.flags and not p.no_index:
                where = groups.setdefault(p.flags, np.zeros(geom.slab_shape, dtype=bool))
                where[p.min_ss : p.max_ss + 1, p.min_fs : p.max_fs + 1] = True
        on_panel = panel_index_map(geom) >= 0
        # one group over every panel (top-level flags): no need to restrict it to them
        flag_groups = tuple(
            (None if len(groups) == 1 and where[on_panel].all() else where, flags)
            for flags, where in groups.items()
        )
        per_frame: list[tuple[Panel, PanelMask]] = []
        static = read_static_masks(geom, frame_file=frame_file, per_frame=per_frame)
        static.setflags(write=False)
        return cls(static, flag_groups, _read_saturation(geom, frame_file), tuple(per_frame), geom)

    def read_frame_bad(self, frame_ids: Sequence[Any]) -> np.ndarray | None:
        """Pixels the per-frame mask datasets mark bad in these frames.

        Parameters
        ----------
        frame_ids
            :class:`~hpcdiff.io.cxi.FrameId` (``file``, ``index``) of each frame; a mask
            without ``maskN_file`` is read from the frame's own file, as CrystFEL does.

        Returns
        -------
        numpy.ndarray or None
            ``(n, n_ss, n_fs)`` bool, or ``None`` when no mask is per frame.

        Raises
        ------
        FormatError
            Naming the geometry line, the mask file and dataset (see :func:`read_panel_map`).
        """
        if not self.frame_masks:
            return None
        geom = self.geometry
        assert geom is not None
        bad = np.zeros((len(frame_ids), *self.static_bad.shape), dtype=bool)
        handles: dict[str, Any] = {}
        try:
            for k, fid in enumerate(frame_ids):
                for p, m in self.frame_masks:
                    values = read_panel_map(
                        geom, p, data=m.data, file=m.file, frame_file=fid.file, line=m.line,
                        key=_mask_key(m), frame_index=int(fid.index), handles=handles,
                    )  # fmt: skip
                    bad[k, p.min_ss : p.max_ss + 1, p.min_fs : p.max_fs + 1] |= _mask_bad(values, m)
        finally:
            for h5 in handles.values():
                h5.close()
        return bad

    @property
    def per_frame(self) -> bool:
        """True when some pixels are judged per frame (flags or a saturation map)."""
        return bool(self.flag_groups) or self.saturation is not None

    def frame_bad(
        self, raw: Any, *, saturation: Any | None = None, where: Sequence[Any] | None = None
    ) -> Any | None:
        """Pixels bad in each frame by their raw value, or ``None`` when nothing is per frame.

        Parameters
        ----------
        raw
            ``(n, n_ss, n_fs)`` raw frames, ADU (numpy or cupy), before any correction.
        saturation
            :attr:`saturation` already on ``raw``'s device (optional).
        where
            The ``where`` maps of :attr:`flag_groups` already on ``raw``'s device, in order
            (optional; saves uploading them for every batch).

        Returns
        -------
        bool array ``(n, n_ss, n_fs)`` on ``raw``'s device, or ``None``.
        """
        if not self.per_frame:
            return None
        xp = array_module(raw)
        bad = None
        for i, (group, flags) in enumerate(self.flag_groups):  # frames, then group's panels
            hit = flag_bad(raw, flags)
            if group is not None:
                hit &= (xp.asarray(group) if where is None else where[i])[None]
            bad = hit if bad is None else xp.logical_or(bad, hit, out=bad)
        if bad is None:
            bad = xp.zeros(raw.shape, dtype=bool)
        if self.saturation is not None:
            sat = xp.asarray(self.saturation) if saturation is None else saturation
            bad |= raw > sat[None]
        return bad

    def apply(self, raw: np.ndarray, *, frame_ids: Sequence[Any] | None = None) -> np.ndarray:
        """Raw frames with every bad pixel (mask files, flags, saturation) set to NaN.

        Parameters
        ----------
        raw
            ``(n, n_ss, n_fs)`` raw frames, ADU (numpy).
        frame_ids
            The frames' :class:`~hpcdiff.io.cxi.FrameId`, needed when a mask is per frame.

        Returns
        -------
        numpy.ndarray
            float32 copy (float64 stays float64), NaN where bad.
        """
        out = np.array(raw, dtype=np.float64 if raw.dtype == np.float64 else np.float32)
        bad = self.frame_bad(raw)
        if bad is not None:
            out[bad] = np.nan
        out[:, self.static_bad] = np.nan
        if self.frame_masks:
            if frame_ids is None:
                raise ValueError("the geometry has per-frame masks: pass frame_ids=")
            frame_bad = self.read_frame_bad(frame_ids)
            assert frame_bad is not None
            out[frame_bad] = np.nan
        return out

    def describe(self) -> dict[str, Any]:
        """Counts for run reports: static bad pixels, flag kinds, saturation map present."""
        kinds = sorted({f"{f.kind} {f.value:g}" for _, fl in self.flag_groups for f in fl})
        sat = self.saturation
        return {
            "mask_file_bad_pixels": int(self.static_bad.sum()),
            "per_frame_masks": sorted({m.data for _, m in self.frame_masks}),
            "flags": kinds,
            "saturation_map": sat is not None,
            "saturation_finite_pixels": 0 if sat is None else int(np.isfinite(sat).sum()),
        }


_CACHE: list[tuple[DetectorGeometry, str | None, PixelMasks]] = []


def masks_for(geom: DetectorGeometry, frame_file: str | Path | None) -> PixelMasks:
    """:meth:`PixelMasks.from_geometry`, kept for the geometry object last asked about (a
    worker process reads the mask files once, not once per task)."""
    key = None if frame_file is None else str(frame_file)
    if not _CACHE or _CACHE[0][0] is not geom or _CACHE[0][1] != key:
        _CACHE[:] = [(geom, key, PixelMasks.from_geometry(geom, frame_file=frame_file))]
    return _CACHE[0][2]


def no_masks(slab_shape: tuple[int, int]) -> PixelMasks:
    """Masks of a geometry that asks for none (nothing bad, nothing per frame)."""
    static = np.zeros(slab_shape, dtype=bool)
    static.setflags(write=False)
    return PixelMasks(static)

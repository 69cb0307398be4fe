"""LCLS-II XTC2 runs through psana2's ``DataSource`` (optional: ``pip install hpcdiff[psana]``).

Each input is an ``.xtc2`` file, read with ``DataSource(files=path)``; the area detector
(``[experiment] detector``, or the run's only detector with a ``raw`` interface) gives
calibrated frames ``det.raw.calib(evt)`` (``det.raw.raw(evt)`` for a detector interface
without ``calib``; :meth:`PsanaSource.describe` says which), ``(n_segments, n_ss, n_fs)``,
read as the slab
``(n_segments * n_ss, n_fs)`` -- psana's segment stacking, which hpcdiff's psana geometry
reader (:mod:`hpcdiff.io.psana_geometry`) and psana-layout CrystFEL geometries use.
An event without detector data reads as NaN (the pipelines reject it).  Where the detector
interface has ``photon_energy(evt)``, it is the per-frame photon energy (eV); otherwise the
geometry's.

Frame identity: ``FrameId(file, event index)`` (0-based, in the file's event order);
:attr:`PsanaSource.timestamps` holds each frame's psana timestamp.

XTC2 files are read sequentially: a read that starts before the last one re-opens the
file, so the pipelines' forward reading order costs one pass over the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcdiff.errors import FormatError
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.sources.base import IndexedSource

if TYPE_CHECKING:
    from hpcdiff.io.geom import DetectorGeometry

NOT_INSTALLED = "psana2 not installed: pip install hpcdiff[psana]"


def require_psana() -> Any:
    """The ``psana`` module, or an ImportError saying how to install it."""
    try:
        import psana
    except ImportError as exc:
        raise ImportError(f"{NOT_INSTALLED} ({exc})") from None
    return psana


class _Cursor:
    """An open file's event iterator and the index of the next event it yields."""

    def __init__(self, events: Iterator[Any], det: Any) -> None:
        self.events = events
        self.det = det
        self.next = 0


class PsanaSource(IndexedSource):
    """Frames of XTC2 files, read through psana2.

    Parameters
    ----------
    files
        ``.xtc2`` files, in run order.
    detector
        psana detector name (``jungfrau``, ``epix10k2M``); the run's only area detector
        when not given.
    geometry
        CrystFEL geometry of the slab (psana segment stacking).
    """

    kind = "psana2"

    def __init__(
        self,
        files: Iterable[str | Path],
        *,
        detector: str | None = None,
        geometry: DetectorGeometry | None = None,
    ) -> None:
        require_psana()
        self.files = tuple(str(f) for f in files)
        if not self.files:
            raise ValueError("PsanaSource needs at least one file")
        self.geometry = geometry
        self.detector = detector
        self._cursors: dict[int, _Cursor] = {}
        ids: list[FrameId] = []
        self.timestamps: list[int] = []
        energies: list[float] = []
        self.method = ""
        shape: tuple[int, ...] | None = None
        for f, file in enumerate(self.files):
            cursor = self._open(f)
            has_energy = hasattr(cursor.det.raw, "photon_energy")
            for k, evt in enumerate(cursor.events):
                ids.append(FrameId(file, k))
                self.timestamps.append(int(evt.timestamp))
                if has_energy:
                    value = cursor.det.raw.photon_energy(evt)
                    energies.append(math.nan if value is None else float(value))
                if shape is None:
                    frame = self._frame(cursor.det, evt)
                    if frame is not None:
                        shape = tuple(np.shape(frame))
            self._cursors.pop(f, None)
        self._energy = np.asarray(energies) if len(energies) == len(ids) else None
        if shape is None or len(shape) < 2:
            raise FormatError(
                self.files[0], f"detector {self.detector!r} gives no frames (shape {shape})"
            )
        self.slab_shape = (int(np.prod(shape[:-1])), int(shape[-1]))
        if geometry is not None and tuple(geometry.slab_shape) != self.slab_shape:
            raise FormatError(
                geometry.source or "<geometry>",
                f"slab {tuple(geometry.slab_shape)}; detector {self.detector} frames are "
                f"{shape}, read as the slab {self.slab_shape}",
            )
        self._offsets = np.cumsum([0, *self.frames_per_file_from(ids)])
        self._set_frames(ids)

    def _frame(self, det: Any, evt: Any) -> Any:
        """``det.raw.calib(evt)``, or ``det.raw.raw(evt)`` where the interface has no calib."""
        if not self.method:
            self.method = "calib" if hasattr(det.raw, "calib") else "raw"
        return getattr(det.raw, self.method)(evt)

    def frame_values(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Per-frame photon energy from the detector interface where it has one."""
        self._check_range(start, stop)
        out = super().frame_values(start, stop) if self.geometry is not None else {}
        if self._energy is not None and np.isfinite(self._energy[start:stop]).all():
            out["photon_energy_ev"] = self._energy[start:stop].copy()
        return out

    def frames_per_file_from(self, ids: list[FrameId]) -> list[int]:
        counts = dict.fromkeys(self.files, 0)
        for fid in ids:
            counts[fid.file] += 1
        return [counts[f] for f in self.files]

    def _open(self, f: int) -> _Cursor:
        psana = require_psana()
        file = self.files[f]
        if not Path(file).is_file():
            raise FormatError(file, "XTC2 file not found")
        try:
            ds = psana.DataSource(files=file)
            run = next(ds.runs())
        except StopIteration:
            raise FormatError(file, "holds no run") from None
        except Exception as exc:  # psana raises plain exceptions for unreadable files
            raise FormatError(file, f"psana cannot read it ({exc})") from None
        names = sorted(getattr(run, "detnames", []) or [])
        name = self.detector
        if name is None:
            area = [n for n in names if hasattr(run.Detector(n), "raw")]
            if len(area) != 1:
                raise FormatError(
                    file,
                    f"detectors {names}: set [experiment] detector to the area detector",
                )
            name = area[0]
            self.detector = name
        elif names and name not in names:
            raise FormatError(file, f"no detector {name!r}; the run has {names}")
        cursor = _Cursor(iter(run.events()), run.Detector(name))
        self._cursors[f] = cursor
        return cursor

    def _read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        for g in range(start, stop):
            fid = self._ids[g]
            f = self.files.index(fid.file)
            cursor = self._cursors.get(f)
            if cursor is None or cursor.next > fid.index:
                cursor = self._open(f)
            evt = None
            while cursor.next <= fid.index:
                evt = next(cursor.events)
                cursor.next += 1
            frame = self._frame(cursor.det, evt)
            if frame is None:
                out[g - start] = np.nan
            else:
                out[g - start] = np.asarray(frame, dtype=np.float32).reshape(self.slab_shape)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            {
                "detector": self.detector,
                "read_with": f"det.raw.{self.method}",
                "timestamps": [self.timestamps[0], self.timestamps[-1]] if self.timestamps else [],
                "photon_energy_ev": (
                    None if self._energy is None else round(float(np.nanmedian(self._energy)), 3)
                ),
            }
        )
        return out

    def close(self) -> None:
        self._cursors.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cursors"] = {}
        return state

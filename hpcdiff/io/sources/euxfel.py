"""European XFEL run directories (AGIPD, JUNGFRAU) read through :mod:`extra_data`.

A run directory holds one HDF5 file per detector module and sequence
(``CORR-R0142-AGIPD07-S00000.h5``); :mod:`extra_data` finds the detector's modules and
each module's frames per train (``INDEX/<source>/<group>/first, count``).  Frames are
then read with h5py as contiguous hyperslabs of each module's dataset.

Frame layout (the slab hpcdiff uses, and the one EXtra-geom's CrystFEL geometry files
describe with ``dim1 = <module>``): modules stacked along slow scan, module ``m`` at slab
rows ``m * n_ss .. (m + 1) * n_ss - 1``:

* AGIPD 1M: 16 modules of ``512 x 128`` -> slab ``8192 x 128``; AGIPD 500K: 8 modules;
* JUNGFRAU: modules ``JNGFR01 ..`` of ``512 x 1024`` -> slab ``(n_modules * 512) x 1024``
  (module ``JNGFRnn`` at position ``nn - 1``).

Data: corrected (``CORR``, float32) or raw (``RAW``: the first of AGIPD's two image
channels, uncorrected ADU) ``image.data`` for AGIPD, ``data.adc`` for JUNGFRAU.

Frame identity: a frame is (run directory, train id, pulse), with ``pulse`` AGIPD's
``image.pulseId`` or, for JUNGFRAU, the frame's position in the train's memory-cell
block.  It maps onto :class:`~hpcdiff.io.cxi.FrameId` as
``FrameId(run_dir, train_id * PULSE_BASE + pulse)`` -- decimal, so the CrystFEL-style list
line ``r0142 //100000120042`` reads as train 10000012, pulse 42 (see :func:`frame_id`,
:func:`train_pulse`).  Frames are ordered by train id, then pulse.

A frame in which some present module has no data for its train is NaN on that module's
rows (the pipelines reject frames holding NaN); a module absent from the whole run reads
as zeros (its pixels are dead, and the bad-pixel step masks them) and is reported by
:meth:`EuXFELSource.describe`.

Needs the optional extra: ``pip install hpcdiff[euxfel]``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from hpcdiff.errors import FormatError
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.hdf5 import OpenFiles, describe_read_error
from hpcdiff.io.sources.base import IndexedSource

if TYPE_CHECKING:
    from hpcdiff.io.geom import DetectorGeometry

log = logging.getLogger(__name__)

#: ``FrameId.index = train_id * PULSE_BASE + pulse``: pulse ids are below 10000 (at most
#: 2700 pulses per train at European XFEL), so the decimal index shows both.
PULSE_BASE = 10_000
#: Detector families and the extra_data component that reads each.
DETECTOR_TYPES = ("AGIPD1M", "AGIPD500K", "JUNGFRAU")
_MODULE_SHAPE = {"AGIPD1M": (512, 128), "AGIPD500K": (512, 128), "JUNGFRAU": (512, 1024)}
_DATA_KEY = {"AGIPD1M": "image.data", "AGIPD500K": "image.data", "JUNGFRAU": "data.adc"}


def frame_id(run_dir: str, train_id: int, pulse: int) -> FrameId:
    """The :class:`FrameId` of pulse ``pulse`` of train ``train_id`` in ``run_dir``."""
    if not 0 <= pulse < PULSE_BASE:
        raise ValueError(f"pulse {pulse} outside 0..{PULSE_BASE - 1}")
    return FrameId(run_dir, int(train_id) * PULSE_BASE + int(pulse))


def train_pulse(fid: FrameId) -> tuple[int, int]:
    """``(train_id, pulse)`` of a European XFEL frame id (inverse of :func:`frame_id`)."""
    return divmod(int(fid.index), PULSE_BASE)


def _require_extra_data() -> Any:
    try:
        import extra_data
    except ImportError:
        raise ImportError(
            "European XFEL run directories need extra-data: pip install hpcdiff[euxfel]"
        ) from None
    return extra_data


def is_run_directory(path: str | Path) -> bool:
    """True for a folder holding European XFEL files (``RAW-R*-*.h5`` / ``CORR-R*-*.h5``)."""
    p = Path(path)
    return p.is_dir() and (any(p.glob("RAW-R*-S*.h5")) or any(p.glob("CORR-R*-S*.h5")))


class _Module:
    """Where one module's frames are: per global frame, a file, a row and a sub-index."""

    def __init__(self, n_frames: int) -> None:
        self.file = np.full(n_frames, -1, dtype=np.int32)  # index into the run's file list
        self.row = np.zeros(n_frames, dtype=np.int64)
        self.sub = np.zeros(n_frames, dtype=np.int64)  # JUNGFRAU memory-cell position


class EuXFELSource(IndexedSource):
    """Frames of European XFEL run directories, modules assembled into the slab.

    Parameters
    ----------
    run_dirs
        One or more run directories (``.../raw/r0142`` or ``.../proc/r0142``).
    detector
        Detector name (``SPB_DET_AGIPD1M-1``, ``SPB_IRDA_JF4M``), needed only when a run
        holds more than one detector of a family.
    detector_type
        ``"AGIPD1M"``, ``"AGIPD500K"`` or ``"JUNGFRAU"``; found from the sources when not
        given (an error when several fit).
    geometry
        Geometry of the assembled slab (an EXtra-geom ``.geom`` with ``dim1 = <module>``
        reads exactly); its slab shape must be the detector's.
    max_open
        Most module files held open at once.
    """

    kind = "euxfel"

    def __init__(
        self,
        run_dirs: Iterable[str | Path],
        *,
        detector: str | None = None,
        detector_type: str | None = None,
        geometry: DetectorGeometry | None = None,
        max_open: int = 64,
    ) -> None:
        self.files = tuple(str(d) for d in run_dirs)
        if not self.files:
            raise ValueError("EuXFELSource needs at least one run directory")
        self.geometry = geometry
        self.max_open = max(1, max_open)
        self._handles = OpenFiles(self.max_open)
        self._paths: list[str] = []
        self._dsets: list[str] = []
        self._run_of_file: list[str] = []
        self._dets: list[tuple[str, str, Any]] = []
        found = [self._open_run(d, detector, detector_type) for d in self.files]
        types = {t for t, _, _ in found}
        if len(types) > 1:
            raise FormatError(
                self.files[0], f"the run directories hold different detectors: {sorted(types)}"
            )
        self.detector_type = found[0][0]
        self.detector_name = found[0][2]
        n_mod = max(n for _, n, _ in found)
        n_ss, n_fs = _MODULE_SHAPE[self.detector_type]
        self.module_shape = (n_ss, n_fs)
        if geometry is not None:
            if int(geometry.slab_shape[1]) != n_fs or int(geometry.slab_shape[0]) % n_ss:
                raise FormatError(
                    geometry.source or "<geometry>",
                    f"slab {tuple(geometry.slab_shape)} does not fit {self.detector_type} "
                    f"modules of {n_ss} x {n_fs} stacked along slow scan; use a geometry "
                    "written for this detector (EXtra-geom: write_crystfel_geom with "
                    "dims=('frame', 'modno', 'ss', 'fs'))",
                )
            n_mod = max(n_mod, int(geometry.slab_shape[0]) // n_ss)
        self.n_modules = n_mod
        self.slab_shape = (n_mod * n_ss, n_fs)
        self._build_index()

    # ------------------------------------------------------------------ discovery

    def _open_run(
        self, run_dir: str, detector: str | None, detector_type: str | None
    ) -> tuple[str, int, str]:
        extra_data = _require_extra_data()
        from extra_data import components

        if not Path(run_dir).is_dir():
            found = "a file" if Path(run_dir).exists() else "no such folder"
            raise FormatError(
                run_dir,
                f"not a European XFEL run directory ({found}); source = 'euxfel' reads "
                "folders of RAW-R*/CORR-R* files, e.g. .../proc/r0142",
            )
        if not is_run_directory(run_dir):
            raise FormatError(
                run_dir,
                "not a European XFEL run directory: it holds no RAW-R*-S*.h5 or "
                "CORR-R*-S*.h5 files",
            )
        try:
            # serially: no worker processes inside an MPI rank
            run = extra_data.RunDirectory(run_dir, parallelize=False)
        except Exception as exc:  # extra_data raises plain Exceptions for empty folders
            raise FormatError(
                run_dir, f"not a readable European XFEL run directory ({exc})"
            ) from None
        candidates = [detector_type] if detector_type else list(DETECTOR_TYPES)
        unknown = [c for c in candidates if c not in DETECTOR_TYPES]
        if unknown:
            raise ValueError(
                f"detector type {unknown[0]!r}: choose one of {', '.join(DETECTOR_TYPES)}"
            )
        hits = []
        errors = []
        for kind in candidates:
            try:
                det = getattr(components, kind)(run, detector_name=detector)
            except Exception as exc:  # extra_data: ValueError / SourceNameError / KeyError
                errors.append(f"{kind}: {exc}")
                continue
            if kind == "AGIPD1M" and "AGIPD500K" in str(det.detector_name).upper():
                continue
            hits.append((kind, det))
        if not hits:
            sources = sorted(run.instrument_sources)[:12]
            raise FormatError(
                run_dir,
                f"no {' or '.join(candidates)} detector found (instrument sources: "
                f"{', '.join(sources) or 'none'}); "
                "set [experiment] detector to the detector name",
            )
        if len(hits) > 1:
            raise FormatError(
                run_dir,
                "several detectors fit: "
                + ", ".join(f"{k} {d.detector_name}" for k, d in hits)
                + "; set [experiment] detector",
            )
        kind, det = hits[0]
        self._dets.append((run_dir, kind, det))
        return kind, int(det.n_modules), str(det.detector_name)

    def _build_index(self) -> None:
        key = _DATA_KEY[self.detector_type]
        per_module: list[list[tuple[np.ndarray, int, np.ndarray, np.ndarray]]] = [
            [] for _ in range(self.n_modules)
        ]
        frames: list[np.ndarray] = []
        run_of_key: list[np.ndarray] = []
        self.present_modules: list[int] = []
        for r, (run_dir, _kind, det) in enumerate(self._dets):
            for modno, source in sorted(det.modno_to_source.items()):
                slot = modno - 1 if self.detector_type == "JUNGFRAU" else modno
                if not 0 <= slot < self.n_modules:
                    raise FormatError(
                        run_dir, f"module {modno} ({source}) outside the slab's {self.n_modules}"
                    )
                if slot not in self.present_modules:
                    self.present_modules.append(slot)
                kd = det.data[source, key]
                for keys, f, rows, subs in self._module_frames(run_dir, det, source, kd):
                    per_module[slot].append((keys, f, rows, subs))
                    frames.append(keys)
                    run_of_key.append(np.full(keys.size, r, dtype=np.int64))
        if not frames:
            raise FormatError(
                self.files[0], f"{self.detector_type} {self.detector_name}: no frames"
            )
        allkeys = np.concatenate(frames)
        allruns = np.concatenate(run_of_key)
        combined = np.unique(np.stack([allruns, allkeys], axis=1), axis=0)
        order_runs, order_keys = combined[:, 0], combined[:, 1]
        self._set_frames(
            [
                FrameId(self.files[int(r)], int(k))
                for r, k in zip(order_runs, order_keys, strict=True)
            ]
        )
        code = order_runs * (1 << 50) + order_keys  # train ids < 2**36, PULSE_BASE < 2**14
        self._modules: list[_Module | None] = [None] * self.n_modules
        for slot, parts in enumerate(per_module):
            if not parts:
                continue
            mod = _Module(self.n_frames)
            for keys, f, rows, subs in parts:
                r = self.files.index(self._run_of_file[f])
                pos = np.searchsorted(code, r * (1 << 50) + keys)
                mod.file[pos] = f
                mod.row[pos] = rows
                mod.sub[pos] = subs
            self._modules[slot] = mod
        missing = [m for m in range(self.n_modules) if self._modules[m] is None]
        if missing:
            log.warning(
                "%s: modules %s absent from the run; their pixels read as 0",
                self.files[0],
                missing,
            )
        self.missing_modules = missing

    def _module_frames(
        self, run_dir: str, det: Any, source: str, kd: Any
    ) -> Iterable[tuple[np.ndarray, int, np.ndarray, np.ndarray]]:
        """Per data chunk: frame keys (train * PULSE_BASE + pulse), file number, rows, subs."""
        chunks = getattr(kd, "_data_chunks", None)
        if chunks is None:
            raise ImportError(
                "this extra-data version does not expose data chunks; "
                "pip install 'extra_data>=1.13,<2'"
            )
        if self.detector_type == "JUNGFRAU":
            n_cells = int(kd.entry_shape[0]) if len(kd.entry_shape) == 3 else 1
            pulses_all = None
        else:
            n_cells = 1
            pulses_all = np.asarray(det.data[source, "image.pulseId"].ndarray()).reshape(-1)
        done = 0
        for chunk in chunks:
            counts = np.asarray(chunk.counts, dtype=np.int64)
            total = int(counts.sum())
            if total == 0:
                continue
            path, dset = str(chunk.file.filename), str(chunk.dataset_path)
            pairs = list(zip(self._paths, self._dsets, strict=True))
            if (path, dset) not in pairs:
                self._paths.append(path)
                self._dsets.append(dset)
                self._run_of_file.append(run_dir)
                pairs.append((path, dset))
            f = pairs.index((path, dset))
            trains = np.repeat(np.asarray(chunk.train_ids, dtype=np.int64), counts)
            rows = int(chunk.first) + np.arange(total, dtype=np.int64)
            if self.detector_type == "JUNGFRAU":
                subs = np.tile(np.arange(n_cells, dtype=np.int64), total)
                rows = np.repeat(rows, n_cells)
                trains = np.repeat(trains, n_cells)
                pulses = subs
            else:
                assert pulses_all is not None
                pulses = pulses_all[done : done + total].astype(np.int64)
                subs = np.zeros(total, dtype=np.int64)
            done += total
            if pulses.size and (pulses.min() < 0 or pulses.max() >= PULSE_BASE):
                raise FormatError(
                    path, f"pulse ids outside 0..{PULSE_BASE - 1}", dataset=chunk.dataset_path
                )
            yield trains * PULSE_BASE + pulses, f, rows, subs

    # ------------------------------------------------------------------ reading

    def _file(self, f: int) -> h5py.File:
        return self._handles.get(self._paths[f])

    def frame_dtype(self) -> np.dtype:
        """dtype of the modules' frame datasets (``CORR``: float32; ``RAW``: uint16)."""
        dset = self._file(0).get(self._dsets[0])
        if not isinstance(dset, h5py.Dataset):
            raise FormatError(self._paths[0], "frame dataset missing", dataset=self._dsets[0])
        return np.dtype(dset.dtype)

    def _read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        n_ss = self.module_shape[0]
        for slot, mod in enumerate(self._modules):
            rows_out = out[:, slot * n_ss : (slot + 1) * n_ss]
            if mod is None:
                rows_out[...] = 0.0
                continue
            files = mod.file[start:stop]
            rows_out[files < 0] = np.nan
            for f in np.unique(files[files >= 0]).tolist():
                which = np.flatnonzero(files == f)
                rows = mod.row[start:stop][which]
                subs = mod.sub[start:stop][which]
                self._read_rows(f, rows, subs, rows_out, which)

    def _read_rows(
        self, f: int, rows: np.ndarray, subs: np.ndarray, out: np.ndarray, where: np.ndarray
    ) -> None:
        """Read rows of file ``f`` (one hyperslab per run of nearby rows) into ``out[where]``."""
        dset = self._file(f).get(self._dsets[f])
        if not isinstance(dset, h5py.Dataset):
            raise FormatError(self._paths[f], "frame dataset missing", dataset=self._dsets[f])
        breaks = np.flatnonzero(np.diff(rows) > 1) + 1
        for part in np.split(np.arange(rows.size), breaks):
            r0, r1 = int(rows[part].min()), int(rows[part].max()) + 1
            try:
                block = np.asarray(dset[r0:r1])
            except OSError as exc:
                why = describe_read_error(exc, dset) or str(exc)
                raise FormatError(
                    self._paths[f], f"cannot read rows {r0}..{r1 - 1} ({why})", dataset=dset.name
                ) from None
            if self.detector_type == "JUNGFRAU":
                picked = (
                    block[rows[part] - r0, subs[part]]
                    if block.ndim == 4
                    else block[rows[part] - r0]
                )
            else:
                picked = block[rows[part] - r0]
                if picked.ndim == 4:  # raw AGIPD: (n, 2, 512, 128), data then gain
                    picked = picked[:, 0]
            out[where[part]] = picked

    def describe(self) -> dict[str, Any]:
        """Frames, trains, pulses per train, detector, modules and slab of the run."""
        out = super().describe()
        tp = np.array([train_pulse(f) for f in self._ids], dtype=np.int64).reshape(-1, 2)
        dtype = None
        if self._paths:
            dset = self._file(0).get(self._dsets[0])
            dtype = str(dset.dtype) if isinstance(dset, h5py.Dataset) else None
        trains, per_train = np.unique(tp[:, 0], return_counts=True)
        out.update(
            {
                "detector": f"{self.detector_type} {self.detector_name}",
                "modules": f"{self.n_modules} of {self.module_shape[0]} x {self.module_shape[1]}",
                "missing_modules": self.missing_modules,
                "dtype": dtype,
                "trains": int(trains.size),
                "train_ids": [int(trains[0]), int(trains[-1])] if trains.size else [],
                "frames_per_train": sorted({int(c) for c in per_train}),
                "frame_id": f"run_dir//train_id * {PULSE_BASE} + pulse",
            }
        )
        return out

    def close(self) -> None:
        self._handles.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_dets"] = []  # extra_data objects are only needed to build the index
        return state

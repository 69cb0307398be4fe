"""NeXus/NXmx files: frames from ``/entry/data``, geometry from NXtransformations.

Geometry (NXmx, NeXus' McStas lab frame: z along the beam, y up, x completing a
right-handed frame -- the frame CrystFEL uses):

* every ``NXdetector_module`` of the ``NXdetector`` becomes a panel: ``data_origin`` and
  ``data_size`` (slow, fast) place it in the frame image; ``fast_pixel_direction`` and
  ``slow_pixel_direction`` are translations whose ``vector`` is the pixel step direction
  and whose value is the pixel size; both depend on ``module_offset``, which depends on
  the detector's transformations (``depends_on`` chains ending at ``"."``);
* a chain is applied from the object outwards: ``p_lab = T_n(... T_2(T_1(p)))`` where
  ``T_1`` is what the object depends on, ``T_1``'s ``depends_on`` is ``T_2`` ...; each
  ``T(p) = offset + R p`` (rotation by ``value`` about ``vector``) or
  ``T(p) = offset + p + value * vector`` (translation); ``@units`` / ``@offset_units``
  are converted (m, mm, um, nm, angstrom; deg, rad);
* the module origin (the chain applied to ``(0, 0, 0)``) is taken as the first pixel's
  corner, like CrystFEL's ``corner_x/corner_y`` (the definition does not say corner or
  centre in so many words; a file meaning the centre reads half a pixel off);
* ``clen`` is the z of the first module's origin, each panel's ``coffset`` its own z minus
  that; ``res`` is 1 / fast pixel size;
* photon energy from ``/entry/instrument/beam/incident_wavelength`` (one value, or one per
  frame); ``saturation_value`` becomes ``max_adu``; frames in counts (no ``@units``, or
  ``counts``/``photons``, as photon-counting detectors write them) get
  ``adu_per_photon = 1``, other units no gain (set ``[corrections]`` accordingly);
  the detector's ``pixel_mask`` (non-zero = bad) joins the classify job's bad pixels.

Frames: the ``NXdata`` group of the entry (``/entry/data``): its ``@signal`` dataset, or
``data``, or the ``data_000001``, ``data_000002``, ... datasets (external links to the
data files, as Eiger master files hold them), read as one list.  Frame identity is
``FrameId(file, index)``, the index counting through that list, as for CXI files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcdiff.errors import FormatError
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.geom import HC_EV_M, DetectorGeometry, Panel
from hpcdiff.io.hdf5 import OpenFiles, describe_read_error, open_hdf5
from hpcdiff.io.sources.base import IndexedSource

_LENGTH_M = {"m": 1.0, "metre": 1.0, "meter": 1.0, "cm": 1e-2, "mm": 1e-3, "um": 1e-6,
             "µm": 1e-6, "μm": 1e-6, "micron": 1e-6, "microns": 1e-6, "nm": 1e-9,
             "angstrom": 1e-10, "a": 1e-10, "å": 1e-10}  # fmt: skip
_ANGLE_RAD = {"rad": 1.0, "radian": 1.0, "radians": 1.0, "deg": math.pi / 180,
              "degree": math.pi / 180, "degrees": math.pi / 180}  # fmt: skip
_DATA_NAME = re.compile(r"^data_\d{6}$")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _text(value.reshape(-1)[0])
    return str(value)


def _nx_class(obj: h5py.HLObject) -> str:
    return _text(obj.attrs.get("NX_class", ""))


def is_nxmx(path: str | Path) -> bool:
    """True for an HDF5 file with an ``NXentry`` whose ``definition`` is ``NXmx``."""
    try:
        with h5py.File(path, "r") as h5:
            return _nxmx_entry(h5) is not None
    except (OSError, ValueError):
        return False


def _nxmx_entry(h5: h5py.File) -> h5py.Group | None:
    for obj in h5.values():
        if isinstance(obj, h5py.Group) and _nx_class(obj) == "NXentry":
            definition = obj.get("definition")
            if isinstance(definition, h5py.Dataset) and _text(definition[()]) == "NXmx":
                return obj
    return None


def _find(group: h5py.Group, nx_class: str) -> list[h5py.Group]:
    return [
        obj for obj in group.values() if isinstance(obj, h5py.Group) and _nx_class(obj) == nx_class
    ]


# --------------------------------------------------------------------------- transformations


@dataclass(frozen=True)
class Affine:
    """``p -> rotation @ p + shift`` in metres."""

    rotation: np.ndarray
    shift: np.ndarray

    @staticmethod
    def identity() -> Affine:
        return Affine(np.eye(3), np.zeros(3))

    def __matmul__(self, other: Affine) -> Affine:
        return Affine(self.rotation @ other.rotation, self.rotation @ other.shift + self.shift)

    def apply(self, p: np.ndarray) -> np.ndarray:
        return self.rotation @ p + self.shift


def _rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    x, y, z = axis / np.linalg.norm(axis)
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    t = 1 - c
    return np.array(
        [
            [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
            [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
            [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
        ]
    )


class _Chains:
    """Resolves ``depends_on`` chains in one file, with errors naming the dataset."""

    def __init__(self, path: str, h5: h5py.File) -> None:
        self.path = path
        self.h5 = h5

    def error(self, message: str, dataset: str | None) -> FormatError:
        return FormatError(self.path, message, dataset=dataset)

    def resolve(self, ref: str, base: h5py.Group, *, where: str) -> h5py.Dataset:
        target = ref if ref.startswith("/") else f"{base.name.rstrip('/')}/{ref}"
        obj = self.h5.get(target)
        if not isinstance(obj, h5py.Dataset):
            raise self.error(f"depends_on = {ref!r} names no transformation dataset", dataset=where)
        return obj

    def transform(self, dset: h5py.Dataset) -> Affine:
        """One transformation's affine map (metres)."""
        kind = _text(dset.attrs.get("transformation_type", "")).lower()
        vector = np.asarray(dset.attrs.get("vector", (0.0, 0.0, 0.0)), dtype=np.float64)
        if vector.shape != (3,) or not np.linalg.norm(vector) > 0:
            raise self.error("@vector must be three numbers, not all zero", dataset=dset.name)
        vector = vector / np.linalg.norm(vector)
        values = np.asarray(dset[()], dtype=np.float64).reshape(-1)
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise self.error("transformation value missing or not finite", dataset=dset.name)
        if values.size > 1 and np.ptp(values) > 1e-9 * max(1.0, float(np.abs(values).max())):
            raise self.error(
                f"the value changes over {values.size} frames; hpcdiff needs a detector that "
                "does not move during the run",
                dataset=dset.name,
            )
        value = float(values[0])
        offset = np.zeros(3)
        if "offset" in dset.attrs:
            offset = np.asarray(dset.attrs["offset"], dtype=np.float64).reshape(3)
            offset = offset * self.length_scale(dset, "offset_units", default="m")
        if kind == "translation":
            shift = offset + value * self.length_scale(dset, "units") * vector
            return Affine(np.eye(3), shift)
        if kind == "rotation":
            units = _text(dset.attrs.get("units", "")).strip().lower()
            if units not in _ANGLE_RAD:
                raise self.error(
                    f"rotation @units {units!r}; expected one of deg, rad", dataset=dset.name
                )
            return Affine(_rotation(vector, value * _ANGLE_RAD[units]), offset)
        raise self.error(
            f"@transformation_type {kind!r}; expected 'translation' or 'rotation'",
            dataset=dset.name,
        )

    def length_scale(self, dset: h5py.Dataset, attr: str, *, default: str | None = None) -> float:
        units = _text(dset.attrs.get(attr, default or "")).strip().lower()
        if units not in _LENGTH_M:
            raise self.error(
                f"@{attr} {units!r}; expected a length unit (m, mm, um, nm, angstrom)",
                dataset=dset.name,
            )
        return _LENGTH_M[units]

    def chain(self, start: h5py.Dataset | None, *, where: str) -> Affine:
        """The composed map of ``start`` and everything it depends on (``None``: identity)."""
        total = Affine.identity()
        seen: set[str] = set()
        dset = start
        while dset is not None:
            if dset.name in seen:
                raise self.error("depends_on chain loops back on itself", dataset=dset.name)
            seen.add(dset.name)
            total = self.transform(dset) @ total
            ref = _text(dset.attrs.get("depends_on", "."))
            dset = None if ref in (".", "") else self.resolve(ref, dset.parent, where=dset.name)
        return total

    def depends_on(self, group: h5py.Group) -> h5py.Dataset | None:
        """What ``group/depends_on`` (a dataset holding a path) names, or ``None`` for ``.``."""
        ref_obj = group.get("depends_on")
        if ref_obj is None:
            return None
        ref = _text(ref_obj[()]) if isinstance(ref_obj, h5py.Dataset) else _text(ref_obj)
        if ref in (".", ""):
            return None
        return self.resolve(ref, group, where=f"{group.name}/depends_on")


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class NXmxInfo:
    """What an NXmx file says about its detector, beside the geometry."""

    geometry: DetectorGeometry
    data_paths: tuple[str, ...]
    beam_centre_px: tuple[float, float] | None  # (fast, slow) on the first module, computed
    beam_centre_given_px: tuple[float, float] | None  # (beam_center_x, beam_center_y)
    distance_m: float | None  # the detector's "distance" field
    pixel_size_m: tuple[float, float]  # (fast, slow) of the first module
    wavelength_m: np.ndarray | None
    detector: str


def _scalar_m(path: str, chains: _Chains, group: h5py.Group, name: str) -> float | None:
    dset = group.get(name)
    if not isinstance(dset, h5py.Dataset):
        return None
    value = float(np.asarray(dset[()], dtype=np.float64).reshape(-1)[0])
    return value * chains.length_scale(dset, "units", default="m")


def read_nxmx(path: str | Path) -> NXmxInfo:
    """Geometry and frame datasets of an NXmx file.

    Raises
    ------
    FormatError
        Naming the file and dataset when the file is not NXmx, has no detector module, or
        a transformation is unusable.
    """
    path = str(path)
    with open_hdf5(path, what="NXmx file") as h5:
        entry = _nxmx_entry(h5)
        if entry is None:
            raise FormatError(path, "not an NXmx file: no NXentry group with definition = 'NXmx'")
        chains = _Chains(path, h5)
        instruments = _find(entry, "NXinstrument")
        detectors = [d for ins in instruments for d in _find(ins, "NXdetector")]
        if len(detectors) != 1:
            raise FormatError(
                path,
                f"expected one NXdetector in {entry.name}'s NXinstrument, found {len(detectors)}",
            )
        det = detectors[0]
        modules = sorted(_find(det, "NXdetector_module"), key=lambda g: g.name)
        if not modules:
            raise FormatError(path, f"{det.name} has no NXdetector_module (NXmx requires one)")
        data_paths = _frame_datasets(path, entry)
        first = h5[data_paths[0]]
        frame_dims = first.ndim - 1
        panels, origins = [], []
        for k, mod in enumerate(modules):
            panel, origin = _panel(path, chains, mod, index=k, frame_shape=first.shape[1:])
            panels.append(panel)
            origins.append(origin)
        clen = float(origins[0][2])
        panels = [
            _replace(p, clen=clen, coffset_m=float(o[2]) - clen)
            for p, o in zip(panels, origins, strict=True)
        ]
        wavelength = _wavelength(path, chains, instruments)
        energy = None
        if wavelength is not None and wavelength.size == 1:
            energy = HC_EV_M / float(wavelength[0])
        units = _text(first.attrs.get("units", "counts")).strip().lower()
        if units in ("counts", "count", "photons", "photon", "ct", "cts"):
            # photon-counting detectors (Eiger, Pilatus): one count per photon
            panels = [_replace(p, adu_per_photon=1.0) for p in panels]
        saturation = det.get("saturation_value")
        if isinstance(saturation, h5py.Dataset):
            max_adu = float(np.asarray(saturation[()]).reshape(-1)[0])
            panels = [_replace(p, max_adu=max_adu) for p in panels]
        n_ss = math.prod(first.shape[1:-1]) if frame_dims >= 2 else 1
        geometry = DetectorGeometry(
            panels=tuple(panels),
            photon_energy=energy,
            slab_shape=(n_ss, int(first.shape[-1])),
            source=path,
        )
        p0 = panels[0]
        given = None
        bx, by = det.get("beam_center_x"), det.get("beam_center_y")
        if isinstance(bx, h5py.Dataset) and isinstance(by, h5py.Dataset):
            given = (
                float(np.asarray(bx[()]).reshape(-1)[0]),
                float(np.asarray(by[()]).reshape(-1)[0]),
            )
        return NXmxInfo(
            geometry=geometry,
            data_paths=tuple(data_paths),
            beam_centre_px=_beam_centre(p0),
            beam_centre_given_px=given,
            distance_m=_scalar_m(path, chains, det, "distance"),
            pixel_size_m=(1.0 / p0.res, float(np.linalg.norm(p0.ss)) / p0.res),
            wavelength_m=wavelength,
            detector=det.name,
        )


def _replace(panel: Panel, **changes: Any) -> Panel:
    import dataclasses

    return dataclasses.replace(panel, **changes)


def _frame_datasets(path: str, entry: h5py.Group) -> list[str]:
    groups = [g for g in _find(entry, "NXdata")]
    data = entry.get("data")
    if isinstance(data, h5py.Group) and data not in groups:
        groups.insert(0, data)
    for group in groups:
        signal = _text(group.attrs.get("signal", "")) or "data"
        names = [signal] if isinstance(group.get(signal), h5py.Dataset) else []
        if not names:
            # keys(): broken external links are listed too, and reported below
            names = sorted(n for n in group.keys() if _DATA_NAME.match(n))
        dsets = []
        for name in names:
            try:
                obj = group.get(name)
            except (KeyError, OSError):
                obj = None
            if not isinstance(obj, h5py.Dataset):
                raise FormatError(
                    path,
                    "frame dataset missing (an external link to a data file that is not "
                    "beside the master file?)",
                    dataset=f"{group.name}/{name}",
                )
            dsets.append(obj)
        if dsets:
            shape = dsets[0].shape
            for d in dsets:
                if d.ndim < 3 or d.shape[1:] != shape[1:]:
                    raise FormatError(
                        path,
                        f"frames of shape {d.shape}; expected (n_frames, slow, fast) like {shape}",
                        dataset=d.name,
                    )
            # the link paths in this file (an external dataset's .name is its path there)
            return [f"{group.name}/{name}" for name in names]
    raise FormatError(
        path, f"no frames: {entry.name} has no NXdata group with a 'data' or 'data_NNNNNN' dataset"
    )


def _panel(
    path: str, chains: _Chains, mod: h5py.Group, *, index: int, frame_shape: tuple[int, ...]
) -> tuple[Panel, np.ndarray]:
    def ints(name: str) -> tuple[int, ...]:
        dset = mod.get(name)
        if not isinstance(dset, h5py.Dataset):
            raise FormatError(
                path, f"{name} missing (NXmx requires it)", dataset=f"{mod.name}/{name}"
            )
        return tuple(int(v) for v in np.asarray(dset[()]).reshape(-1))

    origin_idx, size = ints("data_origin"), ints("data_size")
    dims = len(frame_shape)
    if len(origin_idx) != dims or len(size) != dims:
        raise FormatError(
            path,
            f"data_origin {origin_idx} / data_size {size} need {dims} values for frames of "
            f"shape {frame_shape}",
            dataset=mod.name,
        )
    # (slow..., fast): leading axes fold into slow scan, as the frame is read as a slab
    strides = [math.prod(frame_shape[k + 1 : -1]) for k in range(dims - 1)]
    min_ss = sum(o * s for o, s in zip(origin_idx[:-1], strides, strict=True))
    n_ss = size[-2] if dims >= 2 else 1
    if any(v != 1 for v in size[:-2]):
        raise FormatError(
            path, f"data_size {size}: a module must be one 2D block", dataset=mod.name
        )
    steps = {}
    bases = {}
    for name in ("fast_pixel_direction", "slow_pixel_direction"):
        dset = mod.get(name)
        if not isinstance(dset, h5py.Dataset):
            raise FormatError(path, f"{name} missing", dataset=f"{mod.name}/{name}")
        t = chains.transform(dset)
        if _text(dset.attrs.get("transformation_type", "")).lower() != "translation":
            raise FormatError(path, "must be a translation", dataset=dset.name)
        ref = _text(dset.attrs.get("depends_on", "."))
        dep = None if ref in (".", "") else chains.resolve(ref, dset.parent, where=dset.name)
        base = chains.chain(dep, where=dset.name)
        bases[name] = base
        offset = np.zeros(3)
        if "offset" in dset.attrs:
            offset = np.asarray(dset.attrs["offset"], dtype=np.float64).reshape(3)
            offset = offset * chains.length_scale(dset, "offset_units", default="m")
        steps[name] = (base.rotation @ (t.shift - offset), base.apply(offset))
    fast_b, slow_b = bases["fast_pixel_direction"], bases["slow_pixel_direction"]
    if not (
        np.allclose(fast_b.rotation, slow_b.rotation) and np.allclose(fast_b.shift, slow_b.shift)
    ):
        raise FormatError(
            path,
            "fast_pixel_direction and slow_pixel_direction depend on different frames; "
            "hpcdiff needs both to depend on the same module_offset",
            dataset=mod.name,
        )
    fast_step, origin = steps["fast_pixel_direction"]
    slow_step, slow_origin = steps["slow_pixel_direction"]
    origin = origin + (slow_origin - fast_b.shift)
    pixel = float(np.linalg.norm(fast_step))
    if not pixel > 0 or not np.linalg.norm(slow_step) > 0:
        raise FormatError(path, "pixel size is zero", dataset=mod.name)
    res = 1.0 / pixel
    name = re.sub(r"[^A-Za-z0-9_]", "_", Path(mod.name).name) or f"module{index}"
    panel = Panel(
        name=name,
        min_fs=origin_idx[-1],
        max_fs=origin_idx[-1] + size[-1] - 1,
        min_ss=min_ss,
        max_ss=min_ss + n_ss - 1,
        fs=tuple(float(v) for v in fast_step * res),  # type: ignore[arg-type]
        ss=tuple(float(v) for v in slow_step * res),  # type: ignore[arg-type]
        corner_x=float(origin[0] * res),
        corner_y=float(origin[1] * res),
        res=res,
        clen=float(origin[2]),
        data=None,
        dim_structure=("%", "ss", "fs"),
    )
    return panel, origin


def _beam_centre(p: Panel) -> tuple[float, float] | None:
    """``(fast, slow)`` pixel coordinates (from the first pixel's corner) where z meets the panel."""
    a = np.array([[p.fs[0], p.ss[0]], [p.fs[1], p.ss[1]]])
    if abs(np.linalg.det(a)) < 1e-12:
        return None
    f, s = np.linalg.solve(a, [-p.corner_x, -p.corner_y])
    return float(f), float(s)


def _wavelength(path: str, chains: _Chains, instruments: list[h5py.Group]) -> np.ndarray | None:
    for ins in instruments:
        for beam in _find(ins, "NXbeam"):
            dset = beam.get("incident_wavelength")
            if isinstance(dset, h5py.Dataset):
                units = _text(dset.attrs.get("units", "angstrom")).strip().lower()
                scale = _LENGTH_M.get(units)
                if scale is None:
                    raise FormatError(
                        path, f"@units {units!r}; expected a length", dataset=dset.name
                    )
                values = np.asarray(dset[()], dtype=np.float64).reshape(-1) * scale
                if values.size == 0 or not np.all(values > 0):
                    raise FormatError(path, "wavelength must be positive", dataset=dset.name)
                return values
    return None


# --------------------------------------------------------------------------- frames


class NXmxSource(IndexedSource):
    """Frames of NXmx files; the geometry comes from the first file unless given.

    Parameters
    ----------
    files
        NXmx files (master files), in run order.
    geometry
        A CrystFEL geometry to use instead of the files' NXtransformations.
    max_open
        Most files held open at once.
    """

    kind = "nxmx"

    def __init__(
        self,
        files: Iterable[str | Path],
        *,
        geometry: DetectorGeometry | None = None,
        max_open: int = 32,
    ) -> None:
        self.files = tuple(str(f) for f in files)
        if not self.files:
            raise ValueError("NXmxSource needs at least one file")
        self.max_open = max(1, max_open)
        self._handles = OpenFiles(self.max_open, what="NXmx file")
        self.info = [read_nxmx(f) for f in self.files]
        self.geometry = geometry if geometry is not None else self.info[0].geometry
        self.slab_shape = (int(self.geometry.slab_shape[0]), int(self.geometry.slab_shape[1]))
        self._parts: list[tuple[int, str, int, int]] = []  # file, dataset, first global, n
        ids: list[FrameId] = []
        for f, (file, info) in enumerate(zip(self.files, self.info, strict=True)):
            index = 0
            for dpath in info.data_paths:
                dset = self._dataset(f, dpath)
                shape = dset.shape[1:]
                if math.prod(shape[:-1]) != self.slab_shape[0] or shape[-1] != self.slab_shape[1]:
                    raise FormatError(
                        file,
                        f"frames of shape {shape}; the geometry's slab is {self.slab_shape}",
                        dataset=dpath,
                    )
                self._parts.append((f, dpath, len(ids), dset.shape[0]))
                ids.extend(FrameId(file, index + i) for i in range(dset.shape[0]))
                index += dset.shape[0]
        self._set_frames(ids)
        self._starts = np.array([p[2] for p in self._parts] + [len(ids)], dtype=np.int64)

    def _dataset(self, f: int, dpath: str) -> h5py.Dataset:
        file = self.files[f]
        h5 = self._handles.get(file)
        try:
            obj = h5.get(dpath)
        except (KeyError, OSError):
            obj = None
        if not isinstance(obj, h5py.Dataset):
            raise FormatError(file, "frame dataset missing", dataset=dpath)
        return obj

    def frame_dtype(self) -> np.dtype:
        """dtype of the first file's frame dataset (Eiger: ``uint16`` / ``uint32``)."""
        return np.dtype(self._dataset(0, self.info[0].data_paths[0]).dtype)

    def _read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            f, dpath, first, n = self._parts[k]
            end = min(stop, first + n)
            if end > pos:
                dset = self._dataset(f, dpath)
                try:
                    block = np.asarray(dset[pos - first : end - first])
                except OSError as exc:
                    why = describe_read_error(exc, dset) or str(exc)
                    raise FormatError(
                        self.files[f],
                        f"cannot read frames {pos - first}..{end - first - 1} ({why})",
                        dataset=dpath,
                    ) from None
                out[pos - start : end - start] = block.reshape(end - pos, *self.slab_shape)
            pos = end
            k += 1

    def frame_values(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Photon energy per frame from the beam's wavelength; ``clen_m`` from the geometry."""
        self._check_range(start, stop)
        n = stop - start
        out: dict[str, np.ndarray] = {}
        panel = self.geometry.panels[0] if self.geometry is not None else None
        if panel is not None and isinstance(panel.clen, int | float):
            out["clen_m"] = np.full(n, float(panel.clen))
            out["detector_distance_m"] = out["clen_m"] + float(panel.coffset_m)
        energy = np.empty(n)
        have = True
        for g in range(start, stop):
            fid = self._ids[g]
            info = self.info[self.files.index(fid.file)]
            wl = info.wavelength_m
            if wl is None:
                have = False
                break
            energy[g - start] = HC_EV_M / float(wl[fid.index] if wl.size > 1 else wl[0])
        if have:
            out["photon_energy_ev"] = energy
        elif self.geometry is not None and isinstance(self.geometry.photon_energy, int | float):
            out["photon_energy_ev"] = np.full(n, float(self.geometry.photon_energy))
        return out

    def pixel_mask(self) -> np.ndarray | None:
        """``(n_ss, n_fs)`` bool from the first file's ``pixel_mask`` (non-zero = bad:
        gaps, dead, noisy ... pixels, NXmx's bits), or ``None`` when it has none."""
        det = self.info[0].detector
        self._dataset(0, self.info[0].data_paths[0])  # checks the frames are there
        h5 = self._handles.get(self.files[0])  # (a linked dataset's .file is its data file)
        dset = h5.get(f"{det}/pixel_mask")
        if not isinstance(dset, h5py.Dataset):
            return None
        mask = np.asarray(dset[()])
        if mask.ndim == 3:  # some writers keep a leading axis of one
            mask = mask[0]
        if mask.size != self.slab_shape[0] * self.slab_shape[1]:
            raise FormatError(
                self.files[0],
                f"pixel_mask of shape {mask.shape}; frames are {self.slab_shape}",
                dataset=dset.name,
            )
        return mask.reshape(self.slab_shape) != 0

    def describe(self) -> dict[str, Any]:
        """Frames, shape, dtype, geometry (distance, beam centre, pixel size, modules)."""
        out = super().describe()
        info = self.info[0]
        dset = self._dataset(0, info.data_paths[0])
        wl = info.wavelength_m
        out.update(
            {
                "dtype": str(dset.dtype),
                "frame_datasets": list(info.data_paths),
                "detector": info.detector,
                "modules": len(info.geometry.panels),
                "distance_m": info.distance_m,
                "clen_m": info.geometry.panels[0].clen,
                "pixel_size_m": list(info.pixel_size_m),
                "beam_centre_px": list(info.beam_centre_px) if info.beam_centre_px else None,
                "beam_centre_given_px": (
                    list(info.beam_centre_given_px) if info.beam_centre_given_px else None
                ),
                "photon_energy_ev": (
                    None if wl is None else round(HC_EV_M / float(np.median(wl)), 3)
                ),
            }
        )
        return out

    def close(self) -> None:
        self._handles.close()

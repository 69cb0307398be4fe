"""``hpcdiff simulate --like TARGET.toml``: simulate an experiment shaped like a target one.

The target is a job file with an ``[experiment]`` section (frames and geometry).  From its
files, without reading any frame's pixels, :func:`like_changes` takes:

- the geometry (the target's ``.geom``, kept as it is: panels, data path, dimensions,
  per-frame value paths, gain and saturation when given);
- the data layout: frame dataset path, dtype (integers stay integers), frames per file,
  and the shape each frame has in the file (psana ``32 x 185 x 388`` or the slab);
- detector distance (``clen + coffset``, CrystFEL's camera length) and photon energy of its
  first frame.

The target's frames may be any source :mod:`hpcdiff.io.sources` reads.  For NXmx files
without a ``.geom`` the geometry is the first file's NXtransformations (``geometry`` is then
that NXmx file, which :func:`read_geometry` reads), the data path the file's frame
dataset and the energy its wavelength; for European XFEL runs (with an EXtra-geom
``.geom``) and psana2 runs the frame shape follows the geometry's dimensions (one
``modno`` block per module) and the dtype the files' (float32 for psana2).  The simulated
experiment is written as CXI files, in the target's layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpcdiff.errors import ConfigError

DEFAULT_DATA_PATH = "/entry_1/data_1/data"


def like_changes(target_job: str | Path) -> dict[str, Any]:
    """The :class:`~hpcdiff.config.SimulateConfig` values that mimic ``target_job``.

    Returns
    -------
    dict
        ``geometry``, ``geometry_layout = "file"``, ``data_path``, ``output_dtype``,
        ``frames_per_file``, ``frame_shape``, ``detector_distance_m``,
        ``photon_energy_ev`` and ``like = None``.

    Raises
    ------
    ConfigError
        When the target has no frames or no geometry, or its first frame lacks the
        distance or energy and the geometry gives no number.
    """
    from hpcdiff.config import load_job
    from hpcdiff.io.geom import read_geom
    from hpcdiff.io.sources import open_job_source

    target = Path(target_job)
    job = load_job(target)
    files = job.frame_files()
    if not files:
        raise ConfigError(f"{target}: [experiment] frames lists no file to copy the layout of")
    exp = job.experiment
    geom = None if exp.geometry is None else read_geom(exp.geometry)
    with open_job_source(job, files[:1], geometry=geom) as source:
        kind = getattr(source, "kind", "cxi")
        if source.geometry is None:
            raise ConfigError(
                f"{target}: [experiment] geometry is needed to simulate like it (its "
                f"{kind} frames carry no geometry of their own)"
            )
        geometry_path = Path(exp.geometry) if exp.geometry is not None else Path(files[0])
        data_path, dtype, frame_shape = _layout(source, kind)
        frames_per_file = source.frames_per_file()[0]
        values = source.frame_values(0, 1)
    if "clen_m" not in values or "photon_energy_ev" not in values:
        raise ConfigError(
            f"{target}: the geometry {geometry_path} gives no clen or photon_energy "
            "(number or per-frame path) to take the distance and energy from"
        )
    distance = float(values["detector_distance_m"][0])
    energy = float(values["photon_energy_ev"][0])
    if not (distance > 0 and energy > 0):
        raise ConfigError(
            f"{target}: its first frame gives detector distance {distance} m (clen + coffset) "
            f"and photon energy {energy} eV; both must be > 0"
        )
    if dtype.kind == "f":
        out_dtype = "float32"
    elif dtype.itemsize <= 2:
        out_dtype = "int16"
    else:
        out_dtype = "int32"
    return {
        "geometry": geometry_path,
        "geometry_layout": "file",
        "data_path": data_path,
        "output_dtype": out_dtype,
        "frames_per_file": int(frames_per_file),
        "frame_shape": frame_shape,
        "detector_distance_m": distance,
        "photon_energy_ev": energy,
        "like": None,
    }


def _layout(source: Any, kind: str) -> tuple[str, np.dtype, tuple[int, ...]]:
    """Frame dataset path, dtype and per-frame shape in the file of the target's frames."""
    import h5py

    geom = source.geometry
    if kind == "cxi":
        data_path = source.data_path(0)
        with h5py.File(source.files[0], "r") as h5:
            dset = h5[data_path]
            return data_path, np.dtype(dset.dtype), tuple(int(n) for n in dset.shape[1:])
    data_path = geom.panels[0].data
    if data_path is None and kind == "nxmx":
        data_path = source.info[0].data_paths[0]
    return str(data_path or DEFAULT_DATA_PATH), source.frame_dtype(), file_frame_shape(geom)


def file_frame_shape(geom: Any) -> tuple[int, ...]:
    """Shape of one frame in a file the geometry describes: ``(n_index, n_ss / n_index,
    n_fs)`` where panels have a fixed index dimension (EXtra-geom's ``dim1 = <module>``),
    else the slab ``(n_ss, n_fs)``."""
    n_ss, n_fs = (int(n) for n in geom.slab_shape)
    fixed = [p.fixed_index for p in geom.panels if p.fixed_index is not None]
    if not fixed:
        return (n_ss, n_fs)
    n_index = max(fixed) + 1
    return (n_index, n_ss // n_index, n_fs)


def read_geometry(path: str | Path) -> Any:
    """A CrystFEL ``.geom``, or the geometry of an NXmx file's NXtransformations."""
    from hpcdiff.io.geom import read_geom
    from hpcdiff.io.sources.nxmx import is_nxmx, read_nxmx

    if is_nxmx(path):
        return read_nxmx(path).geometry
    return read_geom(path)


def apply_like(cfg: Any) -> Any:
    """``cfg`` with the target's values when ``cfg.like`` is set (else ``cfg`` itself)."""
    import dataclasses

    if cfg.like is None:
        return cfg
    try:
        return dataclasses.replace(cfg, **like_changes(cfg.like))
    except ValueError as exc:
        raise ConfigError(f"[simulate] like = {cfg.like}: {exc}") from None


__all__ = ["apply_like", "file_frame_shape", "like_changes", "read_geometry"]

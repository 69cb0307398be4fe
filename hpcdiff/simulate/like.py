"""``hpcdiff simulate --like TARGET.toml``: simulate an experiment shaped like a target one.

The target is a job file with an ``[experiment]`` section (frames and geometry).  From its
files, without reading any frame's pixels, :func:`like_changes` takes:

- the geometry (the target's ``.geom``, kept as it is: panels, data path, dimensions,
  per-frame value paths, gain and saturation when given);
- the data layout: frame dataset path, dtype (integers stay integers), frames per file,
  and the shape each frame has in the file (psana ``32 x 185 x 388`` or the slab);
- detector distance (``clen + coffset``, CrystFEL's camera length) and photon energy of its
  first frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcdiff.errors import ConfigError


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
    import h5py
    import numpy as np

    from hpcdiff.config import load_job
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.io.geom import read_geom

    target = Path(target_job)
    job = load_job(target)
    files = job.frame_files()
    if not files:
        raise ConfigError(f"{target}: [experiment] frames lists no file to copy the layout of")
    if job.experiment.geometry is None:
        raise ConfigError(f"{target}: [experiment] geometry is needed to simulate like it")
    geom = read_geom(job.experiment.geometry)
    with FrameSource(files[:1], geometry=geom, data_path=job.experiment.data_path) as source:
        data_path = source.data_path(0)
        frames_per_file = source.frames_per_file()[0]
        values = source.frame_values(0, 1)
    with h5py.File(files[0], "r") as h5:
        dset = h5[data_path]
        dtype = np.dtype(dset.dtype)
        frame_shape = tuple(int(n) for n in dset.shape[1:])
    if "clen_m" not in values or "photon_energy_ev" not in values:
        raise ConfigError(
            f"{target}: the geometry {job.experiment.geometry} gives no clen or photon_energy "
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
        "geometry": Path(job.experiment.geometry),
        "geometry_layout": "file",
        "data_path": data_path,
        "output_dtype": out_dtype,
        "frames_per_file": int(frames_per_file),
        "frame_shape": frame_shape,
        "detector_distance_m": distance,
        "photon_energy_ev": energy,
        "like": None,
    }


def apply_like(cfg: Any) -> Any:
    """``cfg`` with the target's values when ``cfg.like`` is set (else ``cfg`` itself)."""
    import dataclasses

    if cfg.like is None:
        return cfg
    try:
        return dataclasses.replace(cfg, **like_changes(cfg.like))
    except ValueError as exc:
        raise ConfigError(f"[simulate] like = {cfg.like}: {exc}") from None


__all__ = ["apply_like", "like_changes"]

"""Where pixels are in space: lab positions, scattering vectors, corrections, assembly.

Everything here is computed once per detector (per camera length and photon energy) and
reused for every frame; all per-pixel arrays have the slab shape ``(n_ss, n_fs)`` of
:class:`~hpcdiff.io.geom.DetectorGeometry`, NaN (or -1 for indices) where no panel is.

Conventions (CrystFEL's, see ``docs/ARCHITECTURE.md``): beam along +z, metres; pixel
``(fs, ss)`` of a panel has its centre at
``corner + (fs - min_fs + 0.5) * fs_vec + (ss - min_ss + 0.5) * ss_vec`` (pixels), divided
by ``res``, with ``z += clen + coffset``.  ``q = k_out - k_in`` with ``|k| = 1/lambda``, in
nm^-1 without 2 pi (so ``|q| = 1/d``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from hpcdiff.io.geom import HC_EV_M, BadRegion, DetectorGeometry, Panel, length_spec

if TYPE_CHECKING:
    from hpcdiff.pixel_masks import PixelMasks

__all__ = [
    "DetectorModel",
    "PixelMap",
    "bad_region_mask",
    "cspad_like_geometry",
    "detector_shift_m",
    "edge_mask",
    "fixed_shift_m",
    "frame_directions",
    "geometry_valid",
    "scattering_directions",
    "shift_positions",
    "panel_index_map",
    "photon_energy_to_wavelength_m",
    "pixel_map",
    "pixel_positions_m",
    "polarisation_factor",
    "scattering_vectors",
    "small_geometry",
    "solid_angle_sr",
]


def photon_energy_to_wavelength_m(ev: float) -> float:
    """Wavelength in metres of a photon of ``ev`` electron-volts."""
    if not (math.isfinite(ev) and ev > 0):
        raise ValueError(f"photon energy must be positive eV, got {ev!r}")
    return HC_EV_M / ev


def _panel_grid(p: Panel, *, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Panel-relative fs and ss coordinates ``(n_ss, n_fs)`` of pixel corners + ``offset``."""
    fs = np.arange(p.n_fs, dtype=np.float64) + offset
    ss = np.arange(p.n_ss, dtype=np.float64) + offset
    return np.broadcast_to(fs[None, :], (p.n_ss, p.n_fs)), np.broadcast_to(
        ss[:, None], (p.n_ss, p.n_fs)
    )


def _panel_xyz_px(p: Panel, *, offset: float) -> np.ndarray:
    """Lab position in pixels (z without clen/coffset), ``(n_ss, n_fs, 3)`` float64."""
    fs, ss = _panel_grid(p, offset=offset)
    corner = np.array([p.corner_x, p.corner_y, 0.0])
    return corner + fs[..., None] * np.asarray(p.fs) + ss[..., None] * np.asarray(p.ss)


def _panel_clen_m(p: Panel, clen_m: float | None) -> float:
    if clen_m is not None:
        return float(clen_m)
    if isinstance(p.clen, int | float):
        return float(p.clen)
    where = f"the HDF5 path {p.clen!r}" if isinstance(p.clen, str) else "nowhere"
    raise ValueError(
        f"panel {p.name}: camera length comes from {where}; pass clen_m= (metres, without "
        "coffset) for the frame(s) at hand"
    )


def fixed_shift_m(geom: DetectorGeometry) -> np.ndarray:
    """``(2,)`` float64 top-level ``detector_shift_x/y`` in metres that the geometry gives as
    numbers; a component read per frame from the files counts 0 here (add that frame's
    value, :func:`detector_shift_m`)."""
    out = np.zeros(2)
    for k, spec in enumerate(geom.detector_shift or ()):
        number, _, _ = length_spec(spec)
        out[k] = 0.0 if number is None else number
    return out


def detector_shift_m(
    geom: DetectorGeometry, values: dict[str, np.ndarray] | None = None, *, frame: int = 0
) -> np.ndarray:
    """``(2,)`` float64 top-level detector shift ``(x, y)`` of one frame, metres.

    Parameters
    ----------
    geom
        The detector; its ``detector_shift`` numbers, or HDF5 paths read per frame.
    values
        Per-frame values (:meth:`hpcdiff.io.cxi.FrameSource.frame_values`):
        ``detector_shift_x_m``/``detector_shift_y_m`` give a path-valued shift.  A NaN
        value counts 0, as CrystFEL.
    frame
        Row of ``values`` to use.

    Raises
    ------
    ValueError
        When the geometry reads the shift from the files and ``values`` lacks it.
    """
    out = fixed_shift_m(geom)
    if not geom.has_frame_shift:
        return out
    for k, (key, spec) in enumerate(
        zip(("detector_shift_x_m", "detector_shift_y_m"), geom.detector_shift or (), strict=True)
    ):
        if not isinstance(spec, str):
            continue
        if values is None or key not in values:
            raise ValueError(
                f"{geom.source or 'geometry'}: detector_shift comes from the HDF5 path "
                f"{spec!r}; pass the frame's value (shift_m=, or values with {key!r})"
            )
        v = float(values[key][frame])
        out[k] = v if math.isfinite(v) else 0.0
    return out


def pixel_positions_m(
    geom: DetectorGeometry,
    *,
    clen_m: float | None = None,
    shift_m: tuple[float, float] | np.ndarray | None = None,
) -> np.ndarray:
    """Lab position of every pixel centre, as CrystFEL computes it.

    Each panel's corner moves by the top-level detector shift plus the panel's own
    (``detector_shift_m``), in metres, as CrystFEL's ``cnx += shift_x / pixel_pitch``.

    Parameters
    ----------
    geom
        The detector.
    clen_m
        Camera length in metres (without ``coffset``), overriding the geometry's; needed
        when the geometry reads ``clen`` from the frame files.
    shift_m
        Top-level detector shift ``(x, y)``, metres, overriding the geometry's
        ``detector_shift_x/y``; needed when the geometry reads it from the frame files
        (:func:`detector_shift_m`).

    Returns
    -------
    np.ndarray
        ``(n_ss, n_fs, 3)`` float64, metres (x, y, z); NaN where no panel is.
    """
    shift = detector_shift_m(geom) if shift_m is None else np.asarray(shift_m, np.float64)
    if shift.shape != (2,) or not np.isfinite(shift).all():
        raise ValueError(f"shift_m must be two finite metres (x, y), got {shift_m!r}")
    out = np.full((*geom.slab_shape, 3), np.nan)
    for p in geom.panels:
        xyz = _panel_xyz_px(p, offset=0.5) / p.res
        xyz[..., 0] += shift[0] + p.detector_shift_m[0]
        xyz[..., 1] += shift[1] + p.detector_shift_m[1]
        xyz[..., 2] += _panel_clen_m(p, clen_m) + p.coffset_m
        out[p.min_ss : p.max_ss + 1, p.min_fs : p.max_fs + 1] = xyz
    return out


def shift_positions(
    positions_m: np.ndarray, *, shift_m: tuple[float, float] | np.ndarray
) -> np.ndarray:
    """Pixel positions moved by a detector shift in the lab x-y plane.

    Parameters
    ----------
    positions_m
        ``(..., 3)`` lab positions, metres.
    shift_m
        ``(x, y)`` metres, e.g. a stream crystal's ``det_shift`` (stream millimetres
        / 1000): CrystFEL moves every panel corner by it when predicting that crystal.

    Returns
    -------
    np.ndarray
        ``(..., 3)`` float64 positions (a new array).
    """
    shift = np.asarray(shift_m, np.float64)
    if shift.shape != (2,) or not np.isfinite(shift).all():
        raise ValueError(f"shift_m must be two finite metres (x, y), got {shift_m!r}")
    out = np.array(positions_m, dtype=np.float64, copy=True)
    out[..., 0] += shift[0]
    out[..., 1] += shift[1]
    return out


def scattering_directions(positions_m: np.ndarray) -> np.ndarray:
    """``k_out - k_in`` with ``|k| = 1`` for pixels at ``positions_m`` (``q = this / lambda``).

    Returns
    -------
    np.ndarray
        ``(..., 3)`` float64, dimensionless; NaN where a position is NaN.
    """
    r = np.asarray(positions_m, dtype=np.float64)
    unit = r / np.linalg.norm(r, axis=-1, keepdims=True)
    unit[..., 2] -= 1.0
    return unit


def frame_directions(
    geom: DetectorGeometry, *, clen_m: float, shift_m: tuple[float, float] | np.ndarray
) -> np.ndarray:
    """:func:`scattering_directions` of one frame whose detector is shifted by ``shift_m``.

    Parameters
    ----------
    geom
        The detector.
    clen_m
        That frame's camera length, metres (without ``coffset``).
    shift_m
        ``(x, y)`` metres: the frame's whole top-level detector shift (the geometry's
        :func:`fixed_shift_m`, plus the frame's path-valued part and its crystal's
        ``det_shift``).

    Returns
    -------
    np.ndarray
        ``(n_ss, n_fs, 3)`` float64; ``q = directions / lambda_nm`` in nm^-1.
    """
    return scattering_directions(pixel_positions_m(geom, clen_m=clen_m, shift_m=shift_m))


def scattering_vectors(positions_m: np.ndarray, *, wavelength_m: float) -> np.ndarray:
    """Scattering vectors ``q = k_out - k_in`` for pixels at ``positions_m``.

    Parameters
    ----------
    positions_m
        ``(..., 3)`` lab positions, metres (sample at the origin, beam along +z).
    wavelength_m
        Wavelength, metres.

    Returns
    -------
    np.ndarray
        ``(..., 3)`` float64, nm^-1 without 2 pi (``|q| = 2 sin(theta) / lambda``).
    """
    if not (math.isfinite(wavelength_m) and wavelength_m > 0):
        raise ValueError(f"wavelength must be positive metres, got {wavelength_m!r}")
    return scattering_directions(positions_m) / (wavelength_m * 1e9)


def polarisation_factor(positions_m: np.ndarray, *, degree: float = 1.0) -> np.ndarray:
    """Polarisation factor of pixels at ``positions_m`` (divide intensities by it).

    Parameters
    ----------
    positions_m
        ``(..., 3)`` lab positions, metres.
    degree
        Fraction of the beam polarised horizontally (along x); 1.0 for an XFEL, 0.5 for an
        unpolarised beam.

    Returns
    -------
    np.ndarray
        ``(...)`` float64 in [0, 1]:
        ``degree * (1 - (x/r)^2) + (1 - degree) * (1 - (y/r)^2)``.
    """
    if not 0.0 <= degree <= 1.0:
        raise ValueError(f"polarisation degree must lie in [0, 1], got {degree!r}")
    r = np.asarray(positions_m, dtype=np.float64)
    norm2 = np.sum(r * r, axis=-1)
    return degree * (1.0 - r[..., 0] ** 2 / norm2) + (1.0 - degree) * (1.0 - r[..., 1] ** 2 / norm2)


def solid_angle_sr(geom: DetectorGeometry, positions_m: np.ndarray) -> np.ndarray:
    """Solid angle subtended by each pixel, steradians.

    ``area * |n . r| / |r|^3`` with ``area = |fs x ss| / res^2`` and ``n`` the panel
    normal, so tilted panels (fs/ss with z components) are handled.

    Returns
    -------
    np.ndarray
        ``(n_ss, n_fs)`` float64; NaN where no panel is.
    """
    out = np.full(geom.slab_shape, np.nan)
    for p in geom.panels:
        cross = np.cross(p.fs, p.ss)
        area_m2 = np.linalg.norm(cross) / p.res**2
        normal = cross / np.linalg.norm(cross)
        r = positions_m[p.min_ss : p.max_ss + 1, p.min_fs : p.max_fs + 1]
        dist = np.linalg.norm(r, axis=-1)
        out[p.min_ss : p.max_ss + 1, p.min_fs : p.max_fs + 1] = (
            area_m2 * np.abs(r @ normal) / dist**3
        )
    return out


def panel_index_map(geom: DetectorGeometry) -> np.ndarray:
    """Index into ``geom.panels`` of every slab pixel, ``(n_ss, n_fs)`` int16, -1 off-panel."""
    out = np.full(geom.slab_shape, -1, dtype=np.int16)
    for i, p in enumerate(geom.panels):
        out[p.min_ss : p.max_ss + 1, p.min_fs : p.max_fs + 1] = i
    return out


def bad_region_mask(geom: DetectorGeometry) -> np.ndarray:
    """Pixels inside any bad region, ``(n_ss, n_fs)`` bool.

    Slab-coordinate regions are inclusive; lab-frame regions mark a pixel when its first
    corner (``corner + fs * fs_vec + ss * ss_vec``, panel-relative fs/ss) lies strictly
    inside the box, as CrystFEL (>= 0.10) does.
    """
    bad = np.zeros(geom.slab_shape, dtype=bool)
    for region in geom.bad_regions:
        for p in geom.panels:
            if region.panel is not None and region.panel != p.name:
                continue
            view = bad[p.min_ss : p.max_ss + 1, p.min_fs : p.max_fs + 1]
            view |= _region_on_panel(region, p)
    return bad


def edge_mask(geom: DetectorGeometry) -> np.ndarray:
    """Pixels within ``mask_edge_pixels`` of their panel's edge, ``(n_ss, n_fs)`` bool.

    As CrystFEL: the ``N`` outermost rows and columns of each panel (a panel narrower than
    ``2 N`` is masked whole).
    """
    bad = np.zeros(geom.slab_shape, dtype=bool)
    for p in geom.panels:
        n = p.mask_edge_pixels
        if n <= 0:
            continue
        view = bad[p.min_ss : p.max_ss + 1, p.min_fs : p.max_fs + 1]
        view[:n, :] = True
        view[-n:, :] = True
        view[:, :n] = True
        view[:, -n:] = True
    return bad


def geometry_valid(geom: DetectorGeometry) -> np.ndarray:
    """``(n_ss, n_fs)`` bool pixels the geometry alone keeps: on a panel, the panel not
    ``no_index``, outside every bad region and the ``mask_edge_pixels`` border.

    Masks read from files (``maskN_data``) and per-frame flags are applied by
    :mod:`hpcdiff.pixel_masks`.
    """
    index = panel_index_map(geom)
    ok = index >= 0
    for i, p in enumerate(geom.panels):
        if p.no_index:
            ok &= index != i
    return ok & ~bad_region_mask(geom) & ~edge_mask(geom)


def _region_on_panel(region: BadRegion, p: Panel) -> np.ndarray:
    if region.is_fsss:
        min_fs, max_fs, min_ss, max_ss = region.fs_ss_box
        fs = np.arange(p.min_fs, p.max_fs + 1)
        ss = np.arange(p.min_ss, p.max_ss + 1)
        in_fs = (fs >= min_fs) & (fs <= max_fs)
        in_ss = (ss >= min_ss) & (ss <= max_ss)
        return in_ss[:, None] & in_fs[None, :]
    min_x, max_x, min_y, max_y = region.xy_box
    xyz = _panel_xyz_px(p, offset=0.0)
    x, y = xyz[..., 0], xyz[..., 1]
    return (x > min_x) & (x < max_x) & (y > min_y) & (y < max_y)


# --------------------------------------------------------------------------- pixel map


@dataclass(frozen=True, eq=False)
class PixelMap:
    """Where each slab pixel goes in the assembled 2D image (what the CNN sees).

    ``rows``/``cols`` are ``(n_ss, n_fs)`` int32 indices into an ``(H, W)`` image, -1 where
    no panel is; every panel pixel has its own cell (no two share one).  The image is the
    bounding box of the pixels; +x runs along columns, +y up (towards row 0), CrystFEL's
    "into the beam" view.  ``beam_rc`` is the fractional (row, col) of the beam
    (x = y = 0), cell corners at integers.
    """

    rows: np.ndarray
    cols: np.ndarray
    shape: tuple[int, int]
    beam_rc: tuple[float, float] = (math.nan, math.nan)

    @cached_property
    def _flat(self) -> tuple[np.ndarray | None, np.ndarray]:
        """(slab indices of panel pixels, or None when every slab pixel is on a panel;
        their flat image indices)."""
        on = self.rows.ravel() >= 0
        img_idx = self.rows.ravel()[on].astype(np.intp) * self.shape[1] + self.cols.ravel()[on]
        return (None if on.all() else np.flatnonzero(on)), img_idx

    def assemble(self, values: np.ndarray, *, fill: float = np.nan) -> np.ndarray:
        """Place slab values into the image.

        Parameters
        ----------
        values
            ``(..., n_ss, n_fs)`` array (any leading batch axes).
        fill
            Value of image cells no pixel lands in.

        Returns
        -------
        np.ndarray
            ``(..., H, W)``; dtype of ``values`` (float32 stays float32), promoted only when
            ``fill`` does not fit it (NaN into integers gives float64).
        """
        values = np.asarray(values)
        if values.shape[-2:] != self.rows.shape:
            raise ValueError(
                f"values have slab shape {values.shape[-2:]}, the pixel map {self.rows.shape}"
            )
        dtype = values.dtype
        if not np.issubdtype(dtype, np.floating) and not _fits(fill, dtype):
            dtype = np.dtype(np.float64)
        lead = values.shape[:-2]
        out = np.full((*lead, self.shape[0] * self.shape[1]), fill, dtype=dtype)
        slab_idx, img_idx = self._flat
        flat = values.reshape(*lead, -1)
        out[..., img_idx] = flat if slab_idx is None else flat[..., slab_idx]
        return out.reshape(*lead, *self.shape)


def _fits(value: float, dtype: np.dtype) -> bool:
    """Whether ``value`` is exactly representable in integer/bool ``dtype``."""
    if not math.isfinite(value) or not float(value).is_integer():
        return False
    if dtype == np.bool_:
        return value in (0, 1)
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def pixel_map(geom: DetectorGeometry, *, positions_m: np.ndarray | None = None) -> PixelMap:
    """Nearest-cell assembly map, each pixel placed exactly once.

    Lab positions are converted to pixels of the detector's (median) pixel size; a pixel
    goes to the cell its centre lies in.  When several pixels land in one cell (slightly
    rotated panels), the one nearest the cell centre keeps it and the others move to a free
    neighbouring cell or, in fully packed regions, push a short chain of pixels one cell
    each towards the nearest free cell (see :func:`_place_once`): a deterministic,
    one-to-one map in which no pixel moves more than about one cell.  For the real OM CSPAD
    geometry 0.02 % of the pixels move, none by more than 1.6 pixels.

    Parameters
    ----------
    geom
        The detector.
    positions_m
        Precomputed :func:`pixel_positions_m` (any camera length: only x and y are used).
    """
    if positions_m is None:
        positions_m = pixel_positions_m(geom, clen_m=0.0, shift_m=fixed_shift_m(geom))
    res = float(np.median([p.res for p in geom.panels]))
    on = np.isfinite(positions_m[..., 0])
    x = positions_m[..., 0][on] * res
    y = positions_m[..., 1][on] * res
    margin = 2  # room for pixels displaced by collisions; cropped below
    x0 = np.min(x) - 0.5 - margin
    y0 = np.max(y) + 0.5 + margin
    fc = x - x0
    fr = y0 - y
    big = (math.floor(np.max(fr)) + margin + 1, math.floor(np.max(fc)) + margin + 1)
    rows, cols = _place_once(fr, fc, big)
    r_lo, c_lo = int(rows.min()), int(cols.min())
    rows, cols = rows - r_lo, cols - c_lo
    shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    out_r = np.full(geom.slab_shape, -1, dtype=np.int32)
    out_c = np.full(geom.slab_shape, -1, dtype=np.int32)
    out_r[on] = rows
    out_c[on] = cols
    beam = (float(y0 - r_lo), float(-x0 - c_lo))
    return PixelMap(rows=out_r, cols=out_c, shape=shape, beam_rc=beam)


#: Edge neighbours first, then corners (nearest first).
_NEIGHBOURS = ((-1, 0), (0, -1), (0, 1), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))


def _place_once(
    fr: np.ndarray, fc: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Give each point (fractional row, col) its own cell, as near its position as possible.

    1. Every point goes to the cell it lies in; where several share a cell, the one nearest
       the cell centre keeps it (ties: lower index).
    2. Each point left over moves to a free neighbouring cell (edge neighbours first), in
       index order.
    3. Points still left over (collisions in fully packed regions) push a chain of pixels
       one cell each towards the nearest free cell (breadth-first search that never moves a
       pixel twice), so no pixel ends up more than about one cell from its position.
    """
    rows = np.floor(fr).astype(np.int64)
    cols = np.floor(fc).astype(np.int64)
    owner = np.full(shape, -1, dtype=np.int64)
    cell = rows * shape[1] + cols
    alone = np.bincount(cell, minlength=owner.size)[cell] == 1
    owner.ravel()[cell[alone]] = np.flatnonzero(alone)
    shared = np.flatnonzero(~alone)  # only these need sorting
    dist = (fr[shared] - rows[shared] - 0.5) ** 2 + (fc[shared] - cols[shared] - 0.5) ** 2
    order = shared[np.lexsort((shared, dist, cell[shared]))]
    first = np.ones(order.size, dtype=bool)
    first[1:] = cell[order][1:] != cell[order][:-1]
    owner.ravel()[cell[order[first]]] = order[first]
    todo = np.sort(order[~first])
    for dr, dc in _NEIGHBOURS:
        if not todo.size:
            break
        r, c = rows[todo] + dr, cols[todo] + dc
        inside = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
        free = np.zeros(todo.size, dtype=bool)
        free[inside] = owner[r[inside], c[inside]] < 0
        cand = np.flatnonzero(free)
        target = r[cand] * shape[1] + c[cand]
        _, first_idx = np.unique(target, return_index=True)  # lowest index wins a cell
        win = cand[first_idx]
        owner[r[win], c[win]] = todo[win]
        rows[todo[win]], cols[todo[win]] = r[win], c[win]
        keep = np.ones(todo.size, dtype=bool)
        keep[win] = False
        todo = todo[keep]
    moved = np.zeros(shape, dtype=bool)
    for i in todo:
        _push_chain(int(i), owner, rows, cols, moved, fr, fc)
    return rows.astype(np.int32), cols.astype(np.int32)


def _push_chain(
    i: int,
    owner: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    moved: np.ndarray,
    fr: np.ndarray,
    fc: np.ndarray,
) -> None:
    """Place homeless point ``i`` next to its cell by shifting pixels towards a free cell."""
    h, w = owner.shape
    start = (int(rows[i]), int(cols[i]))
    steps = ((-1, 0), (1, 0), (0, -1), (0, 1))
    first_steps = sorted(
        steps,
        key=lambda s: (fr[i] - start[0] - s[0] - 0.5) ** 2 + (fc[i] - start[1] - s[1] - 0.5) ** 2,
    )
    prev: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
    queue = deque([start])
    while queue:
        here = queue.popleft()
        for dr, dc in first_steps if here == start else steps:
            nxt = (here[0] + dr, here[1] + dc)
            if nxt in prev or not (0 <= nxt[0] < h and 0 <= nxt[1] < w) or moved[nxt]:
                continue
            prev[nxt] = here
            if owner[nxt] < 0:
                path = [nxt]
                while (back := prev[path[-1]]) is not None and back != start:
                    path.append(back)
                # path = [free, ..., c1]; shift each pixel one cell along, then i into c1
                for dst, src in zip(path[:-1], path[1:], strict=True):
                    j = owner[src]
                    owner[dst], rows[j], cols[j] = j, dst[0], dst[1]
                    moved[dst] = True
                owner[path[-1]], rows[i], cols[i] = i, path[-1][0], path[-1][1]
                moved[path[-1]] = True
                return
            queue.append(nxt)
    raise RuntimeError("no free cell left in the assembled image")


# --------------------------------------------------------------------------- model


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class DetectorModel:
    """One detector at one camera length and photon energy; per-pixel arrays, cached.

    Build it with :meth:`build`; every array is computed on first use, then shared
    (read-only) by every frame.  Shapes are the slab's ``(n_ss, n_fs)``.

    Attributes
    ----------
    geom
        The detector geometry.
    clen_m
        Camera length, metres, without ``coffset``.
    photon_energy_ev
        Photon energy, eV.
    polarisation_degree
        Fraction of horizontal (x) polarisation used by :attr:`polarisation`.
    shift_m
        Top-level detector shift ``(x, y)``, metres (the geometry's
        ``detector_shift_x/y``, read per frame where it names an HDF5 path).
    frame_file
        A frame file of the run: where masks and saturation maps the geometry puts "in
        the frame file" are read (:attr:`pixel_masks`); ``None`` when there is none.
    """

    geom: DetectorGeometry
    clen_m: float
    photon_energy_ev: float
    polarisation_degree: float = 1.0
    shift_m: tuple[float, float] = (0.0, 0.0)
    frame_file: str | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        geom: DetectorGeometry,
        *,
        clen_m: float | None = None,
        photon_energy_ev: float | None = None,
        polarisation_degree: float = 1.0,
        shift_m: tuple[float, float] | np.ndarray | None = None,
        frame_file: str | None = None,
    ) -> DetectorModel:
        """A model with numbers taken from ``geom`` where they are not given.

        ``shift_m`` is the top-level detector shift ``(x, y)`` in metres (default: the
        geometry's, :func:`detector_shift_m`).

        Raises
        ------
        ValueError
            When the geometry reads clen, photon energy or the detector shift from the
            frame files and no value was passed, or panels have different numeric clen and
            none was passed.
        """
        shift = detector_shift_m(geom) if shift_m is None else np.asarray(shift_m, np.float64)
        if shift.shape != (2,) or not np.isfinite(shift).all():
            raise ValueError(f"shift_m must be two finite metres (x, y), got {shift_m!r}")
        if clen_m is None:
            clens = {p.clen for p in geom.panels}
            only = next(iter(clens))
            if len(clens) != 1 or not isinstance(only, int | float):
                raise ValueError(
                    f"{geom.source or 'geometry'}: clen is {sorted(map(str, clens))}, not one "
                    "number; pass clen_m= (metres, without coffset)"
                )
            clen_m = float(only)
        if photon_energy_ev is None:
            if not isinstance(geom.photon_energy, int | float):
                raise ValueError(
                    f"{geom.source or 'geometry'}: photon_energy is {geom.photon_energy!r}, not a "
                    "number; pass photon_energy_ev="
                )
            photon_energy_ev = float(geom.photon_energy)
        photon_energy_to_wavelength_m(photon_energy_ev)  # validates
        if not 0.0 <= polarisation_degree <= 1.0:
            raise ValueError(f"polarisation degree must lie in [0, 1], got {polarisation_degree}")
        return cls(
            geom,
            float(clen_m),
            float(photon_energy_ev),
            float(polarisation_degree),
            (float(shift[0]), float(shift[1])),
            None if frame_file is None else str(frame_file),
        )

    def __getstate__(self) -> dict:
        # Send the recipe, not the cached arrays, to other processes (dask, MPI).
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def _cached(self, name: str, compute) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = _readonly(compute())
        return self._cache[name]

    @property
    def slab_shape(self) -> tuple[int, int]:
        """``(n_ss, n_fs)``."""
        return self.geom.slab_shape

    @property
    def wavelength_m(self) -> float:
        """Wavelength, metres."""
        return photon_energy_to_wavelength_m(self.photon_energy_ev)

    @property
    def positions_m(self) -> np.ndarray:
        """``(n_ss, n_fs, 3)`` float64 pixel-centre lab positions, metres; NaN off-panel."""
        return self._cached(
            "positions",
            lambda: pixel_positions_m(self.geom, clen_m=self.clen_m, shift_m=self.shift_m),
        )

    @property
    def q_vectors(self) -> np.ndarray:
        """``(n_ss, n_fs, 3)`` float64 scattering vectors, nm^-1 (no 2 pi), lab frame."""
        return self._cached(
            "q", lambda: scattering_vectors(self.positions_m, wavelength_m=self.wavelength_m)
        )

    def q_vectors_at(self, photon_energy_ev: float) -> np.ndarray:
        """Scattering vectors at another photon energy (``q`` scales with 1/lambda)."""
        scale = photon_energy_ev / self.photon_energy_ev
        photon_energy_to_wavelength_m(photon_energy_ev)
        return self.q_vectors * scale

    @property
    def q_abs(self) -> np.ndarray:
        """``(n_ss, n_fs)`` float64 ``|q|``, nm^-1 (``1/d``); NaN off-panel."""
        return self._cached("q_abs", lambda: np.linalg.norm(self.q_vectors, axis=-1))

    @property
    def two_theta(self) -> np.ndarray:
        """``(n_ss, n_fs)`` float64 scattering angle, radians."""

        def compute() -> np.ndarray:
            r = self.positions_m
            return np.arccos(np.clip(r[..., 2] / np.linalg.norm(r, axis=-1), -1.0, 1.0))

        return self._cached("two_theta", compute)

    @property
    def polarisation(self) -> np.ndarray:
        """``(n_ss, n_fs)`` float64 polarisation factor (see :func:`polarisation_factor`)."""
        return self._cached(
            "polarisation",
            lambda: polarisation_factor(self.positions_m, degree=self.polarisation_degree),
        )

    @property
    def solid_angle_sr(self) -> np.ndarray:
        """``(n_ss, n_fs)`` float64 solid angle per pixel, steradians."""
        return self._cached("solid_angle", lambda: solid_angle_sr(self.geom, self.positions_m))

    @property
    def panel_index(self) -> np.ndarray:
        """``(n_ss, n_fs)`` int16 index into ``geom.panels``, -1 where no panel is."""
        return self._cached("panel_index", lambda: panel_index_map(self.geom))

    @property
    def valid(self) -> np.ndarray:
        """``(n_ss, n_fs)`` bool: on a panel, not ``no_index``, not in a bad region or the
        ``mask_edge_pixels`` border (:func:`geometry_valid`)."""
        return self._cached("valid", lambda: geometry_valid(self.geom))

    @property
    def pixel_masks(self) -> PixelMasks:
        """The geometry's mask files, ``flag_*`` values and saturation map
        (:class:`hpcdiff.pixel_masks.PixelMasks`), read on first use.

        Raises
        ------
        FormatError
            Naming the geometry line, the mask file and dataset, when a map is missing or
            has the wrong shape.
        """
        from hpcdiff.pixel_masks import PixelMasks

        if "pixel_masks" not in self._cache:
            self._cache["pixel_masks"] = PixelMasks.from_geometry(
                self.geom, frame_file=self.frame_file
            )
        return self._cache["pixel_masks"]

    def radial_bins(
        self, n_bins: int, *, q_max: float | None = None, q_min: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rings of equal ``|q|`` width over the valid pixels.

        Parameters
        ----------
        n_bins
            Number of rings.
        q_max, q_min
            Range in nm^-1; by default the largest and smallest ``|q|`` of valid pixels.

        Returns
        -------
        ring_index : np.ndarray
            ``(n_ss, n_fs)`` int32 ring of each pixel, -1 for invalid pixels and those
            outside ``[q_min, q_max]``.
        edges : np.ndarray
            ``(n_bins + 1,)`` float64 ring edges, nm^-1 (the last ring includes its top edge).
        """
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        key = ("radial_bins", int(n_bins), q_max, q_min)
        if key not in self._cache:
            self._cache[key] = tuple(
                _readonly(a) for a in self._radial_bins(int(n_bins), q_max=q_max, q_min=q_min)
            )
        return self._cache[key]

    def _radial_bins(
        self, n_bins: int, *, q_max: float | None, q_min: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = self.q_abs
        valid = self.valid
        lo = float(np.min(q[valid])) if q_min is None else float(q_min)
        hi = float(np.max(q[valid])) if q_max is None else float(q_max)
        if not hi > lo:
            raise ValueError(f"need q_max > q_min, got [{lo}, {hi}] nm^-1")
        edges = np.linspace(lo, hi, n_bins + 1)
        ring = np.full(q.shape, -1, dtype=np.int32)
        inside = valid & (q >= lo) & (q <= hi)
        idx = np.floor((q[inside] - lo) / (hi - lo) * n_bins).astype(np.int32)
        ring[inside] = np.minimum(idx, n_bins - 1)
        return ring, edges

    def pixel_map(self) -> PixelMap:
        """The assembled-image map (:func:`pixel_map`), cached."""
        if "pixel_map" not in self._cache:
            pm = pixel_map(self.geom, positions_m=self.positions_m)
            _readonly(pm.rows)
            _readonly(pm.cols)
            self._cache["pixel_map"] = pm
        return self._cache["pixel_map"]


# --------------------------------------------------------------------------- built-in detectors

#: psana's CSPAD 2x1 design layout in a quadrant frame: sensor centre (um) and rotation (deg).
_CSPAD_2X1 = (
    (21736.0, 33098.0, 0.0),
    (21736.0, 10434.0, 0.0),
    (33667.0, 68207.0, 270.0),
    (10923.0, 68207.0, 270.0),
    (68380.0, 56571.0, 180.0),
    (68380.0, 79235.0, 180.0),
    (77600.0, 21742.0, 270.0),
    (54768.0, 21742.0, 270.0),
)
_ASIC_FS, _ASIC_SS, _ASIC_GAP = 194, 185, 3
_CSPAD_RES = 9090.91  # pixels per metre (110 um), as the real CSPAD geometry files
#: Quadrant-origin offset from the beam, pixels (x, y), before rotating the quadrant.
_CSPAD_QUAD_OFFSET = (50.0, 48.5)
#: Small lab-frame shift of each quadrant, pixels (x, y): real quadrants sit unevenly.
_CSPAD_QUAD_SHIFT = ((0.0, 0.0), (0.0, -1.5), (0.0, 0.0), (0.0, 1.5))


def _rot(deg: float) -> np.ndarray:
    t = math.radians(deg)
    c, s = round(math.cos(t), 12), round(math.sin(t), 12)
    return np.array([[c, -s], [s, c]])


def cspad_like_geometry(
    *,
    clen_m: float | None = 0.1,
    clen_path: str | None = None,
    coffset_m: float = 0.0,
    photon_energy: float | str = "/LCLS/photon_energy_eV",
    data: str = "/entry_1/data_1/data",
) -> DetectorGeometry:
    """A CSPAD-like detector: 64 ASICs of 194 x 185 pixels (fs x ss), 110 um pixels.

    Pairs of ASICs form 2x1 sensors (3-pixel gap between the two ASICs), eight 2x1s form a
    quadrant in psana's design pinwheel, and four quadrants (rotated by 90 degrees) surround
    the beam.  The slab is Cheetah's ``1480 x 1552`` (quadrant ``q`` in fs columns
    ``388 q .. 388 q + 387``, 2x1 ``k`` in ss rows ``185 k .. 185 k + 184``), as the real
    CXI CSPAD geometries; the assembled image is 1731 x 1734 (H x W).

    Parameters
    ----------
    clen_m
        Camera length, metres (used when ``clen_path`` is ``None``).
    clen_path
        HDF5 path of a per-frame camera length in mm instead (then ``coffset_m`` is added).
    coffset_m
        Panel offset along z, metres.
    photon_energy
        eV, or the HDF5 path of a per-frame value.
    data
        HDF5 dataset of the frames ``(N, 1480, 1552)``.
    """
    clen = clen_path if clen_path is not None else clen_m
    res = _CSPAD_RES
    panels = []
    for q in range(4):
        quad_rot = _rot(90.0 * q)
        for k, (cx_um, cy_um, deg) in enumerate(_CSPAD_2X1):
            local = _rot(deg)
            fs2 = quad_rot @ local @ np.array([1.0, 0.0])
            ss2 = quad_rot @ local @ np.array([0.0, 1.0])
            centre = quad_rot @ (
                np.array([cx_um, cy_um]) * 1e-6 * _CSPAD_RES + np.array(_CSPAD_QUAD_OFFSET)
            ) + np.array(_CSPAD_QUAD_SHIFT[q])
            long_side = 2 * _ASIC_FS + _ASIC_GAP
            corner0 = centre - 0.5 * long_side * fs2 - 0.5 * _ASIC_SS * ss2
            for a in range(2):
                corner = corner0 + a * (_ASIC_FS + _ASIC_GAP) * fs2
                min_fs = 388 * q + _ASIC_FS * a
                min_ss = _ASIC_SS * k
                panels.append(
                    Panel(
                        name=f"q{q}a{2 * k + a}",
                        min_fs=min_fs,
                        max_fs=min_fs + _ASIC_FS - 1,
                        min_ss=min_ss,
                        max_ss=min_ss + _ASIC_SS - 1,
                        fs=(float(fs2[0]), float(fs2[1]), 0.0),
                        ss=(float(ss2[0]), float(ss2[1]), 0.0),
                        corner_x=round(float(corner[0]), 4),
                        corner_y=round(float(corner[1]), 4),
                        res=res,
                        coffset_m=coffset_m,
                        clen=clen,
                        adu_per_ev=0.00338,
                        data=data,
                        dim_structure=("%", "ss", "fs"),
                    )
                )
    groups = tuple((f"rigid_group_q{q}", tuple(f"q{q}a{a}" for a in range(16))) for q in range(4))
    return DetectorGeometry(panels=tuple(panels), photon_energy=photon_energy, rigid_groups=groups)


def small_geometry(
    *,
    clen_m: float | None = 0.1,
    clen_path: str | None = None,
    photon_energy: float | str = "/LCLS/photon_energy_eV",
    panel_shape: tuple[int, int] = (48, 64),
    pixel_size_m: float = 500e-6,
    gap_px: int = 6,
    data: str = "/entry_1/data_1/data",
) -> DetectorGeometry:
    """Four small panels around the beam, for fast tests.

    Panel ``p{i}`` is ``panel_shape`` = (n_ss, n_fs) pixels, stacked along ss in the slab
    ``(4 n_ss, n_fs)``; in the lab they form a pinwheel (each panel rotated 90 degrees from
    the last) with ``gap_px`` between panels around a square hole of side ``2 gap_px`` at
    the beam, so fs/ss directions, gaps and assembly are all exercised.  Big (0.5 mm) pixels give a useful |q| range.
    """
    n_ss, n_fs = panel_shape
    if n_ss < 1 or n_fs < 1 or gap_px < 0:
        raise ValueError(f"need positive panel_shape and gap_px >= 0, got {panel_shape}, {gap_px}")
    clen = clen_path if clen_path is not None else clen_m
    panels = []
    for i in range(4):
        rot = _rot(90.0 * i)
        fs2, ss2 = rot @ np.array([1.0, 0.0]), rot @ np.array([0.0, 1.0])
        # Panel 0: x in [-h, n_fs - h], y in [h + gap, h + gap + n_ss], h = gap: the four
        # rotated copies leave a (2 h)^2 hole at the beam and gap_px between panels.
        corner = rot @ np.array([-float(gap_px), 2.0 * gap_px])
        panels.append(
            Panel(
                name=f"p{i}",
                min_fs=0,
                max_fs=n_fs - 1,
                min_ss=i * n_ss,
                max_ss=(i + 1) * n_ss - 1,
                fs=(float(fs2[0]), float(fs2[1]), 0.0),
                ss=(float(ss2[0]), float(ss2[1]), 0.0),
                corner_x=float(corner[0]),
                corner_y=float(corner[1]),
                res=1.0 / pixel_size_m,
                clen=clen,
                adu_per_ev=0.001,
                data=data,
                dim_structure=("%", "ss", "fs"),
            )
        )
    return DetectorGeometry(panels=tuple(panels), photon_energy=photon_energy)

"""Reciprocal-space mapping and accumulation (Yefanov et al. 2014 style merge).

Every pixel of a frame is a scattering vector ``q`` (nm^-1, no 2 pi, lab frame).  With the
frame's orientation matrix ``A`` (rows ``astar, bstar, cstar`` in nm^-1, lab frame) it has
fractional Miller indices ``hkl = solve(A.T, q)``.  Those (or crystal-frame Cartesian
coordinates, for a grid in ``q``) fall into a voxel of a :class:`Grid`, a box with its own
size and half-width per axis (a cube, or the box :func:`fit_grid` fits to the cell and the
resolution).  :class:`PixelDirections` holds a detector's valid pixels once, so that a
frame's voxels are one float32 matrix product and a truncation; its values are summed per
voxel into a :class:`MergeAccumulator` (:meth:`~MergeAccumulator.add_voxels`), a pair of
flat ``sums`` (float64) and ``counts`` (int64) arrays, or binned sparsely per frame
(:func:`bin_frame`, for the similarities).  Accumulators are mergeable (``a + b`` adds sums
and counts), so a merge split over processes, dask tasks or MPI ranks gives the same map
whatever the split; :meth:`~MergeAccumulator.save` and :meth:`~MergeAccumulator.load` are
its checkpoint files.

Everything here works on plain numpy arrays; geometry and clusters are the pipeline's
business (:mod:`hpcdiff.pipelines.fourier`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

Extent = Literal["hkl", "q"]
Symmetry = Literal["none", "friedel", "laue"]


@dataclass(frozen=True)
class Grid:
    """A voxel grid centred on the reciprocal-space origin, with its own extent per axis.

    Along axis ``d`` (``h, k, l`` or ``qx, qy, qz``) voxel ``i`` covers
    ``[-half_widths[d] + i * steps[d], -half_widths[d] + (i + 1) * steps[d])`` with
    ``steps[d] = 2 * half_widths[d] / shape[d]``; its centre is
    ``-half_widths[d] + (i + 0.5) * steps[d]``.  Index ``i`` and ``shape[d] - 1 - i`` are
    mirror images through the origin, for any size.  Flat voxel indices are C-ordered over
    the axes.

    ``Grid(200, 10.0)`` is the cube of 200^3 voxels spanning +-10 on every axis;
    ``Grid((120, 120, 60), (24.0, 24.0, 12.0))`` has its own size and half-width per axis
    (:func:`fit_grid` makes one that fits a cell and a resolution).  A sequence whose
    entries are all equal is stored as the number, so both spellings of a cube are equal.

    Parameters
    ----------
    size
        Voxels per axis: one number for all three axes, or ``(n_h, n_k, n_l)``.
    half_width
        Half the edge along each axis (one number, or three): Miller-index units for
        ``extent="hkl"``, nm^-1 (no 2 pi) for ``extent="q"``.
    extent
        ``"hkl"``: axes are fractional Miller indices.  ``"q"``: axes are crystal-frame
        Cartesian scattering vectors (see :func:`crystal_cartesian`).
    """

    size: int | tuple[int, int, int]
    half_width: float | tuple[float, float, float]
    extent: Extent = "hkl"

    def __post_init__(self) -> None:
        sizes = _three(self.size, "size", int)
        widths = _three(self.half_width, "half_width", float)
        if min(sizes) < 1:
            raise ValueError(f"grid size must be >= 1 on every axis, got {self.size}")
        if not all(np.isfinite(w) and w > 0 for w in widths):
            raise ValueError(f"grid half_width must be finite and > 0, got {self.half_width}")
        if self.extent not in ("hkl", "q"):
            raise ValueError(f"grid extent must be 'hkl' or 'q', got {self.extent!r}")
        if sizes[0] * sizes[1] * sizes[2] >= 2**31:
            raise ValueError(f"grid of {sizes} voxels has more than 2**31 voxels")
        object.__setattr__(self, "size", sizes[0] if len(set(sizes)) == 1 else sizes)
        object.__setattr__(self, "half_width", widths[0] if len(set(widths)) == 1 else widths)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_h, n_k, n_l)`` voxels per axis."""
        return _three(self.size, "size", int)

    @property
    def half_widths(self) -> tuple[float, float, float]:
        """Half-width of each axis, in the grid's units."""
        return _three(self.half_width, "half_width", float)

    @property
    def steps(self) -> tuple[float, float, float]:
        """Voxel edge along each axis, in the grid's units."""
        return _three(
            tuple(2.0 * w / n for w, n in zip(self.half_widths, self.shape, strict=True)),
            "steps",
            float,
        )

    @property
    def is_cube(self) -> bool:
        """True when every axis has the same size and half-width."""
        return isinstance(self.size, int) and isinstance(self.half_width, float)

    @property
    def n_voxels(self) -> int:
        """``n_h * n_k * n_l``."""
        a, b, c = self.shape
        return a * b * c

    @property
    def step(self) -> float:
        """Voxel edge of a grid whose axes share one step (see :attr:`steps`).

        Raises
        ------
        ValueError
            When the axes have different steps.
        """
        steps = self.steps
        if len(set(steps)) != 1:
            raise ValueError(f"grid axes have different steps {steps}; use Grid.steps")
        return steps[0]

    def axis(self, dim: int | None = None) -> np.ndarray:
        """Voxel centres along axis ``dim`` (0, 1, 2), ``(shape[dim],)`` float64.

        ``dim`` may be left out when all axes are the same (a cube).
        """
        if dim is None:
            if not self.is_cube:
                raise ValueError(f"grid axes differ ({self.shape}, {self.half_widths}): pass dim")
            dim = 0
        n, w = self.shape[dim], self.half_widths[dim]
        return -w + (np.arange(n) + 0.5) * (2.0 * w / n)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel centres along each axis (three 1D float64 arrays)."""
        return (self.axis(0), self.axis(1), self.axis(2))

    def to_dict(self) -> dict[str, object]:
        """Plain form (JSON, HDF5 attributes): ``shape``, ``half_widths``, ``steps``, ``extent``."""
        return {
            "shape": list(self.shape),
            "half_widths": list(self.half_widths),
            "steps": list(self.steps),
            "extent": self.extent,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Grid:
        """The grid of :meth:`to_dict`'s form."""
        shape = tuple(int(v) for v in np.asarray(d["shape"]).ravel())
        widths = tuple(float(v) for v in np.asarray(d["half_widths"]).ravel())
        extent = str(d["extent"])
        if extent not in ("hkl", "q") or len(shape) != 3 or len(widths) != 3:
            raise ValueError(f"not a grid description: {dict(d)}")
        return cls(shape, widths, extent)  # type: ignore[arg-type]

    def voxel_index(self, coords: np.ndarray) -> np.ndarray:
        """Flat voxel index of each point.

        Parameters
        ----------
        coords
            ``(n, 3)`` float, in the grid's units.

        Returns
        -------
        np.ndarray
            ``(n,)`` int64; -1 where the point is outside the grid or not finite.
        """
        coords = np.asarray(coords, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise ValueError(f"coords must have shape (n, 3), got {coords.shape}")
        scaled = coords + np.asarray(self.half_widths)
        scaled *= 1.0 / np.asarray(self.steps)
        with np.errstate(invalid="ignore"):
            # NaN compares False: outside.  For scaled >= 0, truncation is floor.
            inside = np.all(scaled >= 0, axis=1) & np.all(scaled < np.asarray(self.shape), axis=1)
            idx = scaled.astype(np.int64)
        _, n_k, n_l = self.shape
        flat = idx[:, 0] * n_k
        flat += idx[:, 1]
        flat *= n_l
        flat += idx[:, 2]
        flat[~inside] = -1
        return flat


def _three(value: object, name: str, kind: type) -> tuple:
    if isinstance(value, int | float | np.integer | np.floating):
        v = kind(value)
        return (v, v, v)
    seq = tuple(kind(v) for v in np.asarray(value).ravel())
    if len(seq) != 3:
        raise ValueError(f"grid {name} must be one number or three, got {value!r}")
    return seq


def fractional_hkl(q: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Fractional Miller indices of scattering vectors.

    Parameters
    ----------
    q
        ``(..., 3)`` scattering vectors, nm^-1 (no 2 pi), lab frame.
    orientation
        ``(3, 3)`` matrix ``A`` whose rows are ``astar, bstar, cstar`` in nm^-1, lab frame,
        so that ``q = h a* + k b* + l c* = A.T @ hkl``.

    Returns
    -------
    np.ndarray
        ``(..., 3)`` float64 ``hkl = solve(A.T, q)``.
    """
    a = _orientation(orientation)
    q = np.asarray(q, dtype=np.float64)
    # row form of hkl = A^-T q is hkl_row = q_row @ A^-1: one small inverse, one matmul
    return q @ np.linalg.inv(a)


def crystal_cartesian(hkl: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Crystal-frame Cartesian scattering vectors, independent of the crystal's rotation.

    The reciprocal basis is put in a standard frame by the Cholesky factor ``L`` of the
    reciprocal metric ``G* = A A^T`` (``L L^T = G*``): ``q_crystal = hkl @ L``, so
    ``|q_crystal| = |q|`` and ``a*`` lies along x.

    Parameters
    ----------
    hkl
        ``(..., 3)`` fractional Miller indices.
    orientation
        ``(3, 3)`` rows ``astar, bstar, cstar`` (nm^-1).

    Returns
    -------
    np.ndarray
        ``(..., 3)`` float64 in nm^-1 (no 2 pi).
    """
    a = _orientation(orientation)
    lower = np.linalg.cholesky(a @ a.T)
    return np.asarray(hkl, dtype=np.float64) @ lower


def grid_coordinates(q: np.ndarray, orientation: np.ndarray, *, extent: Extent) -> np.ndarray:
    """Coordinates of scattering vectors in a grid's units (see :class:`Grid`).

    Parameters
    ----------
    q
        ``(n, 3)`` nm^-1 lab frame.
    orientation
        ``(3, 3)`` rows ``astar, bstar, cstar``.
    extent
        ``"hkl"`` or ``"q"``.

    Returns
    -------
    np.ndarray
        ``(n, 3)`` float64.
    """
    hkl = fractional_hkl(q, orientation)
    return hkl if extent == "hkl" else crystal_cartesian(hkl, orientation)


def reciprocal_metric(orientations: np.ndarray) -> np.ndarray:
    """Mean reciprocal metric ``G* = A A^T`` of crystals (rotation-free), nm^-2.

    Parameters
    ----------
    orientations
        ``(3, 3)`` or ``(n, 3, 3)`` rows ``astar, bstar, cstar`` (nm^-1, lab frame).

    Returns
    -------
    np.ndarray
        ``(3, 3)`` float64; ``|q|^2 = hkl @ G* @ hkl``.
    """
    a = np.asarray(orientations, dtype=np.float64)
    a = a[None] if a.ndim == 2 else a
    if a.ndim != 3 or a.shape[1:] != (3, 3) or a.shape[0] == 0:
        raise ValueError(f"orientations must be (n, 3, 3), got {np.shape(orientations)}")
    return np.einsum("nij,nkj->ik", a, a) / a.shape[0]


def fit_grid(
    orientations: np.ndarray,
    *,
    q_max_per_nm: float,
    size: int | tuple[int, int, int] = 200,
    extent: Extent = "hkl",
) -> Grid:
    """The grid that just holds every scattering vector with ``|q| <= q_max_per_nm``.

    On an ``hkl`` grid, ``h = q . a`` (``a`` the real-space cell vector, nm), so the largest
    ``|h|`` a pixel of ``|q| <= q_max`` reaches, in any orientation, is ``q_max |a|``; the
    half-widths are ``q_max (|a|, |b|, |c|)`` (the longest of each over the crystals whose
    edges are all within 10% of the median cell).  With
    one ``size`` for every axis the voxels then have the same extent in ``|q|`` along each
    axis (``2 q_max / size`` nm^-1), whatever the cell: a long axis gets fine Miller-index
    steps, a short one coarse steps, and no part of the grid is out of reach along an axis.
    On a ``q`` grid the half-width is ``q_max`` on every axis.

    Parameters
    ----------
    orientations
        ``(n, 3, 3)`` (or ``(3, 3)``) rows ``astar, bstar, cstar`` (nm^-1).
    q_max_per_nm
        Largest ``|q|`` to hold, nm^-1 (no 2 pi): the detector's largest (:func:`~hpcdiff.
        fourier_grid.detector_q_max`) or a resolution limit.
    size
        Voxels per axis (one number or three).
    extent
        ``"hkl"`` or ``"q"``.

    Returns
    -------
    Grid
    """
    if not (np.isfinite(q_max_per_nm) and q_max_per_nm > 0):
        raise ValueError(f"q_max_per_nm must be finite and > 0, got {q_max_per_nm}")
    if extent == "q":
        return Grid(size, float(q_max_per_nm), "q")
    a = np.asarray(orientations, dtype=np.float64)
    a = a[None] if a.ndim == 2 else a
    for m in a:
        _orientation(m)
    # rows of inv(A)^T are the real-space vectors a, b, c (nm): A @ inv(A) = I
    lengths = np.linalg.norm(np.linalg.inv(a), axis=-2)  # columns of inv(A), (n, 3)
    # the longest cell edges, ignoring crystals more than 10% off the median cell (a
    # crystal indexed with a wrong cell would otherwise stretch the grid)
    median = np.median(lengths, axis=0)
    usual = np.all(np.abs(lengths - median) <= 0.1 * median, axis=1)
    widths = q_max_per_nm * lengths[usual].max(axis=0)
    return Grid(size, (float(widths[0]), float(widths[1]), float(widths[2])), extent)


@dataclass(frozen=True)
class PixelDirections:
    """A detector's valid pixels as scattering directions, laid out for the merge.

    Built once per detector distance; per frame the merge is then one ``(3, 4) @ (4, n)``
    float32 matrix product (orientation, wavelength and grid folded into the ``(3, 4)``
    matrix), a truncation to integers and a flat index (:meth:`voxels`), and a
    :func:`numpy.bincount` (:meth:`MergeAccumulator.add_voxels`).  Pixels off the valid
    mask are never touched again.

    Attributes
    ----------
    slab_shape
        ``(n_ss, n_fs)`` of the frames.
    pixels
        ``(n,)`` int64 flat slab index of each valid pixel, increasing.
    directions
        ``(4, n)`` float32: rows 0-2 the lab-frame direction ``k_out - k_in`` with
        ``|k| = 1`` (so ``q = direction / lambda_nm``, nm^-1 without 2 pi), row 3 ones.
    """

    slab_shape: tuple[int, ...]
    pixels: np.ndarray = field(repr=False)
    directions: np.ndarray = field(repr=False)

    @classmethod
    def build(cls, directions: np.ndarray, valid: np.ndarray | None = None) -> PixelDirections:
        """From per-pixel directions.

        Parameters
        ----------
        directions
            ``(..., 3)`` ``k_out - k_in`` for ``|k| = 1`` (or ``q`` itself, then pass
            ``wavelength_nm=1`` to :meth:`voxels`); non-finite entries are left out.
        valid
            ``(...)`` bool pixels to use; None for all.
        """
        d = np.asarray(directions)
        if d.ndim < 2 or d.shape[-1] != 3:
            raise ValueError(f"directions must have shape (..., 3), got {d.shape}")
        keep = np.all(np.isfinite(d), axis=-1)
        if valid is not None:
            v = np.asarray(valid, dtype=bool)
            if v.shape != d.shape[:-1]:
                raise ValueError(f"valid {v.shape} does not match directions {d.shape[:-1]}")
            keep &= v
        pixels = np.flatnonzero(keep.ravel())
        out = np.ones((4, pixels.size), np.float32)
        out[:3] = d.reshape(-1, 3)[pixels].T
        return cls(tuple(d.shape[:-1]), pixels, out)

    def __len__(self) -> int:
        return int(self.pixels.size)

    def values(
        self,
        frame: np.ndarray,
        *,
        valid: np.ndarray | None = None,
        correction: np.ndarray | None = None,
    ) -> np.ndarray:
        """A frame's values at the pixels, ``(n,)`` float32 (float64 stays float64).

        Parameters
        ----------
        frame
            ``slab_shape`` pixel values.
        valid
            ``slab_shape`` bool: pixels of this frame to use (others become NaN).
        correction
            ``slab_shape`` factor the values are divided by; None for none.
        """
        frame = np.asarray(frame)
        if frame.shape != self.slab_shape:
            raise ValueError(f"frame {frame.shape} does not match the detector {self.slab_shape}")
        dtype = np.float64 if frame.dtype == np.float64 else np.float32
        vals = frame.reshape(-1)[self.pixels].astype(dtype, copy=False)
        if correction is not None:
            corr = np.asarray(correction)
            if corr.shape != self.slab_shape:
                raise ValueError(f"correction {corr.shape} does not match {self.slab_shape}")
            with np.errstate(divide="ignore", invalid="ignore"):
                vals = (vals / corr.reshape(-1)[self.pixels]).astype(dtype, copy=False)
        if valid is not None:
            ok = np.asarray(valid, dtype=bool)
            if ok.shape != self.slab_shape:
                raise ValueError(f"valid {ok.shape} does not match {self.slab_shape}")
            vals = np.where(ok.reshape(-1)[self.pixels], vals, np.nan).astype(dtype, copy=False)
        return vals

    def hkl(self, orientation: np.ndarray, *, wavelength_nm: float) -> np.ndarray:
        """``(3, n)`` float32 fractional Miller indices of the pixels."""
        t = np.zeros((3, 4), np.float32)
        t[:, :3] = (np.linalg.inv(_orientation(orientation)) / wavelength_nm).T
        return t @ self.directions

    def voxels(
        self,
        orientation: np.ndarray,
        *,
        wavelength_nm: float,
        grids: Sequence[Grid],
        bragg_radius_hkl: float = 0.0,
        bragg_radius_per_nm: float = 0.0,
        bragg_excitation_per_nm: float | None = None,
    ) -> list[np.ndarray]:
        """Flat voxel index of every pixel on each grid.

        Parameters
        ----------
        orientation
            ``(3, 3)`` rows ``astar, bstar, cstar`` (nm^-1, lab frame).
        wavelength_nm
            The frame's wavelength, nm.
        grids
            The grids.
        bragg_radius_hkl
            Pixels within this distance of an integer ``hkl`` get -1 on every grid.
        bragg_radius_per_nm
            Pixels within this ``|q|`` distance (nm^-1, no 2 pi) of the nearest
            reciprocal-lattice point ``q_hkl`` get -1 on every grid as well (a Bragg spot
            and its tails have a width in ``q``, set by mosaicity, divergence and bandwidth,
            not in Miller indices: the same ``bragg_radius_hkl`` covers less of a spot
            along a long cell axis).
        bragg_excitation_per_nm
            With ``bragg_radius_per_nm``: only lattice points within this distance
            (nm^-1) of the frame's Ewald sphere (the excitation error ``|e|``, ``e =
            |q_hkl + k_in| - 1/lambda``, ``k_in`` along +z) are masked: a point off the
            sphere puts no Bragg peak on the detector, and the diffuse scattering around
            it (a halo of correlated disorder) is kept.  Needs the directions as
            ``k_out - k_in`` with ``|k| = 1`` (as the Fourier job builds them).  None: every
            point.

        Returns
        -------
        list of np.ndarray
            One ``(n,)`` int64 per grid: the flat voxel index, -1 outside the grid.
        """
        a = _orientation(orientation)
        to_hkl = np.linalg.inv(a) / float(wavelength_nm)  # q_row @ to_hkl = hkl_row
        to_cart = to_hkl @ np.linalg.cholesky(a @ a.T)
        transforms = [_voxel_transform(to_hkl if g.extent == "hkl" else to_cart, g) for g in grids]
        n = len(self)
        outs = [np.empty(n, np.int64) for _ in grids]
        bragg_t = None
        if bragg_radius_hkl > 0 or bragg_radius_per_nm > 0:
            bragg_t = np.zeros((3, 4), np.float32)
            bragg_t[:, :3] = to_hkl.T
        r2 = np.float32(bragg_radius_hkl * bragg_radius_hkl)
        # |q - q_hkl|^2 = d^T G* d, d = hkl - rint(hkl), G* = A A^T (nm^-2)
        metric = (a @ a.T).astype(np.float32) if bragg_radius_per_nm > 0 else None
        rq2 = np.float32(bragg_radius_per_nm * bragg_radius_per_nm)
        # lattice point in direction units (|k| = 1): d_hkl = lambda * hkl @ A
        to_dir = None
        if metric is not None and bragg_excitation_per_nm is not None:
            to_dir = (float(wavelength_nm) * a.T).astype(np.float32)
            exc = np.float32(bragg_excitation_per_nm * float(wavelength_nm))
        scratch = _Scratch(min(n, _CHUNK))
        # chunks of pixels small enough that every step after the matmul runs in cache
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            d = self.directions[:, start:stop]
            near = None
            if bragg_t is not None:
                hkl = scratch.coords[:, : stop - start]
                np.matmul(bragg_t, d, out=hkl)
                node = np.rint(hkl)
                hkl -= node  # offset from the nearest lattice point
                if metric is not None:
                    gh = metric @ hkl
                    gh *= hkl
                    near = gh.sum(axis=0) <= rq2
                    if to_dir is not None:
                        dn = to_dir @ node
                        dn[2] += 1.0  # d_hkl + k_in, |k_in| = 1
                        dn *= dn
                        near &= np.abs(np.sqrt(dn.sum(axis=0)) - 1.0) <= exc
                    if bragg_radius_hkl > 0:
                        hkl *= hkl
                        near |= hkl.sum(axis=0) <= r2
                else:
                    hkl *= hkl
                    near = hkl.sum(axis=0) <= r2
            for t, grid, out in zip(transforms, grids, outs, strict=True):
                _flat_chunk(d, t, grid.shape, out[start:stop], scratch)
                if near is not None:
                    out[start:stop][near] = -1
        return outs


class _Scratch:
    """Work arrays of one chunk of pixels, reused across chunks."""

    def __init__(self, size: int) -> None:
        self.coords = np.empty((3, size), np.float32)
        self.idx = np.empty((3, size), np.int32)
        self.inside = np.empty(size, bool)
        self.tmp = np.empty(size, bool)
        self.part = np.empty(size, np.int64)


_CHUNK = 1 << 15
"""Pixels per chunk of :meth:`PixelDirections.voxels` and :meth:`MergeAccumulator.add_voxels`."""


def _voxel_transform(to_coords: np.ndarray, grid: Grid) -> np.ndarray:
    """``(3, 4)`` float32 ``T`` with ``T @ [d; 1]`` = voxel coordinates + 1 of direction ``d``.

    The +1 maps every voxel inside to ``[1, n + 1)``, so truncation is floor there and
    anything below the grid truncates to <= 0: one unsigned compare tests both ends.
    """
    steps = np.asarray(grid.steps)
    t = np.empty((3, 4), np.float32)
    t[:, :3] = (to_coords / steps[None, :]).T
    t[:, 3] = np.asarray(grid.half_widths) / steps + 1.0
    return t


def _flat_chunk(
    directions: np.ndarray,
    transform: np.ndarray,
    shape: tuple[int, int, int],
    out: np.ndarray,
    scratch: _Scratch,
) -> None:
    """Flat voxel index (-1 outside) of ``(4, m)`` directions into ``out`` ``(m,)`` int64."""
    m = directions.shape[1]
    coords = scratch.coords[:, :m]
    np.matmul(transform, directions, out=coords)
    idx = scratch.idx[:, :m]
    with np.errstate(invalid="ignore"):
        idx[...] = coords  # truncation; NaN and huge values become INT_MIN: outside
    u = idx.view(np.uint32)
    u -= 1
    n_h, n_k, n_l = shape
    inside, tmp = scratch.inside[:m], scratch.tmp[:m]
    np.less(u[0], n_h, out=inside)
    np.less(u[1], n_k, out=tmp)
    inside &= tmp
    np.less(u[2], n_l, out=tmp)
    inside &= tmp
    part = scratch.part[:m]
    np.multiply(idx[0], n_k * n_l, out=out)
    np.multiply(idx[1], n_l, out=part)
    out += part
    out += idx[2]
    np.logical_not(inside, out=tmp)
    out[tmp] = -1


def _flat_voxels(directions: np.ndarray, to_coords: np.ndarray, grid: Grid) -> np.ndarray:
    """``(n,)`` int64 flat voxel of each ``(4, n)`` direction column, -1 outside the grid."""
    t = _voxel_transform(to_coords, grid)
    n = directions.shape[1]
    out = np.empty(n, np.int64)
    scratch = _Scratch(min(n, _CHUNK))
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        _flat_chunk(directions[:, start:stop], t, grid.shape, out[start:stop], scratch)
    return out


def bragg_keep(hkl: np.ndarray, radius_hkl: float) -> np.ndarray:
    """Pixels farther than ``radius_hkl`` from every integer ``hkl`` (Bragg peak positions).

    Parameters
    ----------
    hkl
        ``(n, 3)`` fractional Miller indices.
    radius_hkl
        Exclusion radius in Miller-index units; 0 keeps everything.

    Returns
    -------
    np.ndarray
        ``(n,)`` bool, True where the pixel is kept.
    """
    hkl = np.asarray(hkl, dtype=np.float64)
    if radius_hkl <= 0:
        return np.ones(hkl.shape[0], dtype=bool)
    dist2 = np.sum((hkl - np.rint(hkl)) ** 2, axis=1)
    return ~(dist2 <= radius_hkl * radius_hkl)


@dataclass(frozen=True)
class FrameVoxels:
    """One frame binned into a grid: the voxels it touches and its values there.

    Attributes
    ----------
    voxels
        ``(m,)`` int64 flat voxel indices, sorted, unique.
    sums
        ``(m,)`` float64 sum of the pixel values in each voxel.
    counts
        ``(m,)`` int64 number of pixels in each voxel (>= 1).
    """

    voxels: np.ndarray
    sums: np.ndarray
    counts: np.ndarray

    @property
    def means(self) -> np.ndarray:
        """``(m,)`` float64 mean pixel value per voxel."""
        return self.sums / self.counts

    def __len__(self) -> int:
        return int(self.voxels.size)


def bin_frame(values: np.ndarray, voxels: np.ndarray) -> FrameVoxels:
    """Sum a frame's pixel values per voxel.

    Parameters
    ----------
    values
        ``(n,)`` pixel values (any float dtype; summed in float64).
    voxels
        ``(n,)`` int flat voxel index per pixel; pixels with -1 or non-finite values are
        dropped.

    Returns
    -------
    FrameVoxels
    """
    values = np.asarray(values).ravel()
    voxels = np.asarray(voxels).ravel()
    if values.shape != voxels.shape:
        raise ValueError(f"values {values.shape} and voxels {voxels.shape} differ in shape")
    keep = (voxels >= 0) & np.isfinite(values)
    vox = voxels[keep]
    vals = values[keep].astype(np.float64)
    if vox.size == 0:
        return FrameVoxels(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
    span = int(vox.max()) + 1
    if span <= 32 * vox.size:
        # dense bincount over the touched range: O(n + span), no sort
        counts_all = np.bincount(vox, minlength=span)
        uniq = np.flatnonzero(counts_all)
        sums = np.bincount(vox, weights=vals, minlength=span)[uniq]
        counts = counts_all[uniq].astype(np.int64)
    else:
        uniq, inverse = np.unique(vox, return_inverse=True)
        sums = np.bincount(inverse, weights=vals, minlength=uniq.size)
        counts = np.bincount(inverse, minlength=uniq.size).astype(np.int64)
    return FrameVoxels(uniq.astype(np.int64), sums, counts)


def map_frame(
    values: np.ndarray,
    q: np.ndarray,
    orientation: np.ndarray,
    *,
    grid: Grid,
    correction: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    bragg_radius_hkl: float = 0.0,
) -> FrameVoxels:
    """Map one frame into the grid.

    Parameters
    ----------
    values
        ``(...)`` pixel values (background removed), any shape matching ``q[..., 0]``.
    q
        ``(..., 3)`` scattering vectors of the pixels for this frame's wavelength and
        detector distance, nm^-1 (no 2 pi), lab frame.
    orientation
        ``(3, 3)`` rows ``astar, bstar, cstar`` of the frame's crystal (nm^-1, lab frame).
    grid
        The voxel grid.
    correction
        ``(...)`` per-pixel factor the values are divided by (polarisation times solid
        angle, sr); None for none.
    valid
        ``(...)`` bool, pixels to use; None for all.
    bragg_radius_hkl
        Drop pixels within this distance of an integer ``hkl`` (Bragg peaks), so the map
        holds the diffuse signal; 0 keeps all.

    Returns
    -------
    FrameVoxels
    """
    (out,) = map_frame_grids(
        values,
        q,
        orientation,
        grids=(grid,),
        correction=correction,
        valid=valid,
        bragg_radius_hkl=bragg_radius_hkl,
    )
    return out


def map_frame_grids(
    values: np.ndarray,
    q: np.ndarray,
    orientation: np.ndarray,
    *,
    grids: Sequence[Grid],
    correction: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    bragg_radius_hkl: float = 0.0,
) -> list[FrameVoxels]:
    """Map one frame into several grids at once (Miller indices computed once).

    Parameters are those of :func:`map_frame`, with ``grids`` a sequence of grids.

    Returns
    -------
    list of FrameVoxels
        One per grid, in order.
    """
    values = np.asarray(values)
    q = np.asarray(q)
    if q.shape[:-1] != values.shape or q.shape[-1] != 3:
        raise ValueError(f"q {q.shape} does not match values {values.shape} (expected (..., 3))")
    if valid is not None and np.shape(valid) != values.shape:
        raise ValueError(f"valid {np.shape(valid)} does not match values {values.shape}")
    if correction is not None and np.shape(correction) != values.shape:
        raise ValueError(f"correction {np.shape(correction)} does not match values {values.shape}")
    pixels = PixelDirections.build(q, valid)
    vals = pixels.values(values, correction=correction)
    voxels = pixels.voxels(
        orientation, wavelength_nm=1.0, grids=grids, bragg_radius_hkl=bragg_radius_hkl
    )
    return [bin_frame(vals, v) for v in voxels]


def frame_half(numbers: np.ndarray) -> np.ndarray:
    """Which half-map (0: A, 1: B) each frame goes to, from its global frame number.

    The low bit of a 64-bit integer hash (splitmix64) of the number: a fixed, random-looking
    split, about half and half, that no alternating pattern of the frames (pump-probe on/off,
    a simulator's alternating classes, interleaved detectors) lines up with, as plain
    even/odd numbers would.

    Parameters
    ----------
    numbers
        ``(k,)`` int global frame numbers (>= 0).

    Returns
    -------
    np.ndarray
        ``(k,)`` int64 0 or 1.
    """
    z = np.asarray(numbers, np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z & np.uint64(1)).astype(np.int64)


@dataclass
class MergeAccumulator:
    """Mergeable sums and counts over a grid (flat, C order), optionally with float weights.

    Unweighted, each voxel's mean is ``sums / counts``.  Weighted (``weights`` not None),
    each pixel carries a weight ``w`` (e.g. its inverse noise variance), ``sums`` holds
    ``sum(w v)`` and ``weights`` ``sum(w)``, and each voxel's mean is the weighted mean
    ``sums / weights``; ``counts`` still counts pixels.

    Attributes
    ----------
    grid
        The grid.
    sums
        ``(grid.n_voxels,)`` float64 summed (weighted) values.
    counts
        ``(grid.n_voxels,)`` int64 number of pixels summed.
    n_frames
        Frames added.
    weights
        ``(grid.n_voxels,)`` float64 summed pixel weights, or None (unweighted).
    half_a
        The accumulator of the frames of half A alone (:func:`frame_half` 0; same grid
        and weighting, no half of its own), or None (no half-maps kept); half B is
        :meth:`half_b` (this one minus ``half_a``).  Half-maps choose the map's smoothing
        and give its ``cc_half`` (:mod:`hpcdiff.map_smooth`).
    """

    grid: Grid
    sums: np.ndarray = field(repr=False)
    counts: np.ndarray = field(repr=False)
    n_frames: int = 0
    weights: np.ndarray | None = field(default=None, repr=False)
    half_a: MergeAccumulator | None = field(default=None, repr=False)

    @property
    def weighted(self) -> bool:
        """Whether pixels carry weights (``weights`` is not None)."""
        return self.weights is not None

    @classmethod
    def empty(cls, grid: Grid, *, weighted: bool = False, halves: bool = False) -> MergeAccumulator:
        """An accumulator with nothing in it (arrays of ``grid.n_voxels``); ``halves``: with
        an empty ``half_a``."""
        return cls(
            grid,
            np.zeros(grid.n_voxels, np.float64),
            np.zeros(grid.n_voxels, np.int64),
            0,
            np.zeros(grid.n_voxels, np.float64) if weighted else None,
            cls.empty(grid, weighted=weighted) if halves else None,
        )

    @property
    def has_halves(self) -> bool:
        """Whether half-maps are kept (``half_a`` is not None)."""
        return self.half_a is not None

    def half_b(self) -> MergeAccumulator:
        """The frames of half B: this accumulator minus ``half_a`` (no halves)."""
        if self.half_a is None:
            raise ValueError("this accumulator keeps no half-maps")
        e = self.half_a
        return MergeAccumulator(
            self.grid,
            self.sums - e.sums,
            self.counts - e.counts,
            self.n_frames - e.n_frames,
            None if self.weights is None or e.weights is None else self.weights - e.weights,
        )

    def with_half_a(self, half: MergeAccumulator) -> MergeAccumulator:
        """Set ``half_a`` (half A of this accumulator's frames) in place; returns ``self``."""
        if half.grid != self.grid or half.weighted != self.weighted or half.half_a is not None:
            raise ValueError("half A must be a plain accumulator of the same grid")
        self.half_a = half
        return self

    def add_frame(
        self, frame: FrameVoxels, *, weights: np.ndarray | None = None
    ) -> MergeAccumulator:
        """Add one binned frame in place; returns ``self``.

        A weighted accumulator needs ``weights``, the ``(m,)`` summed pixel weights per
        voxel of ``frame``, with ``frame.sums`` the weighted sums; an unweighted one
        takes none.
        """
        if frame.voxels.size and (frame.voxels[0] < 0 or frame.voxels[-1] >= self.grid.n_voxels):
            raise ValueError("frame voxel indices outside the grid")
        if (weights is None) != (self.weights is None):
            raise ValueError("a weighted accumulator needs weights, an unweighted one none")
        self.sums[frame.voxels] += frame.sums  # voxels are unique: fancy += is exact
        self.counts[frame.voxels] += frame.counts
        if self.weights is not None and weights is not None:
            w = np.asarray(weights, np.float64).reshape(-1)
            if w.shape != frame.voxels.shape:
                raise ValueError(f"weights {w.shape} do not match the frame's voxels")
            self.weights[frame.voxels] += w
        self.n_frames += 1
        return self

    def add_voxels(
        self, voxels: np.ndarray, values: np.ndarray, *, weights: np.ndarray | None = None
    ) -> MergeAccumulator:
        """Add one frame's pixels in place (see :meth:`PixelDirections.voxels`); returns ``self``.

        Pixels with voxel -1, a non-finite value, or (weighted) a weight that is not finite
        and > 0 are left out (not counted).  The sums and
        counts are those of :func:`bin_frame` then :meth:`add_frame`, without the sparse
        step: one :func:`numpy.bincount` over the grid when the frame fills a good part of
        it, else :func:`numpy.add.at` of the pixels inside.

        Parameters
        ----------
        voxels
            ``(n,)`` int flat voxel index per pixel, -1 outside the grid.
        values
            ``(n,)`` float pixel values (summed in float64).
        weights
            ``(n,)`` float pixel weights (>= 0), required by a weighted accumulator (which
            adds ``w v`` to ``sums`` and ``w`` to ``weights``), refused by an unweighted one.
        """
        voxels = np.asarray(voxels).reshape(-1)
        values = np.asarray(values).reshape(-1)
        if voxels.shape != values.shape:
            raise ValueError(f"voxels {voxels.shape} and values {values.shape} differ in shape")
        if (weights is None) != (self.weights is None):
            raise ValueError("a weighted accumulator needs weights, an unweighted one none")
        if weights is not None:
            w = np.asarray(weights, np.float64).reshape(-1)
            if w.shape != values.shape:
                raise ValueError(f"weights {w.shape} and values {values.shape} differ in shape")
            if (w < 0).any():
                raise ValueError("pixel weights must be >= 0")
            return self._add_weighted(voxels, values, w)
        n = self.grid.n_voxels
        if voxels.size >= n:
            # at least as many pixels as voxels: one pass over the pixels, one over the
            # grid; pixels outside go to the extra bin n, which is dropped
            ok = voxels >= 0
            ok &= np.isfinite(values)
            idx = np.where(ok, voxels, n)
            sums = np.bincount(idx, weights=values, minlength=n + 1)
            if sums.size > n + 1:
                raise ValueError("frame voxel indices outside the grid")
            self.sums += sums[:n]
            self.counts += np.bincount(idx, minlength=n + 1)[:n]
        else:
            # in place, a chunk at a time (no grid-sized temporary, each chunk in cache);
            # add.at's fast path wants the accumulator's own dtypes
            if voxels.size and int(voxels.max()) >= n:
                raise ValueError("frame voxel indices outside the grid")
            one = np.int64(1)
            for start in range(0, voxels.size, _CHUNK):
                vox = voxels[start : start + _CHUNK]
                val = values[start : start + _CHUNK]
                ok = vox >= 0
                ok &= np.isfinite(val)
                idx = vox[ok]
                np.add.at(self.sums, idx, val[ok].astype(np.float64))
                np.add.at(self.counts, idx, one)
        self.n_frames += 1
        return self

    def _add_weighted(
        self, voxels: np.ndarray, values: np.ndarray, weights: np.ndarray
    ) -> MergeAccumulator:
        assert self.weights is not None
        n = self.grid.n_voxels
        ok = (voxels >= 0) & np.isfinite(values) & np.isfinite(weights) & (weights > 0)
        if ok.any() and int(voxels[ok].max()) >= n:
            raise ValueError("frame voxel indices outside the grid")
        idx = voxels[ok]
        w = weights[ok]
        self.sums += np.bincount(idx, weights=w * values[ok].astype(np.float64), minlength=n)
        self.weights += np.bincount(idx, weights=w, minlength=n)
        self.counts += np.bincount(idx, minlength=n)
        self.n_frames += 1
        return self

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the accumulator to HDF5 atomically (a checkpoint), with a checksum.

        The file holds ``sums`` (float64), ``counts`` (int64) and, when weighted,
        ``weights`` (float64) as flat ``(n_voxels,)`` datasets and attributes ``grid``
        (JSON of :meth:`Grid.to_dict`), ``n_frames`` and ``sha256`` (of the grid JSON,
        ``n_frames``, sums, counts and weights); it is written to a
        temporary file beside ``path`` and renamed, so a kill part-way leaves the previous
        file.  :meth:`load` reads it back and checks the checksum.

        Parameters
        ----------
        path
            Output file.
        force
            Replace an existing file (checkpoints pass True).

        Raises
        ------
        OutputExistsError
            When ``path`` exists and ``force`` is false.
        """
        import h5py

        from hpcdiff.io.outputs import atomic_path

        meta = json.dumps(self.grid.to_dict(), sort_keys=True)
        digest = _checksum(meta, self.n_frames, self.sums, self.counts, self.weights)
        with atomic_path(path, force=force) as tmp, h5py.File(tmp, "w") as h5:
            h5.create_dataset("sums", data=np.ascontiguousarray(self.sums, np.float64))
            h5.create_dataset("counts", data=np.ascontiguousarray(self.counts, np.int64))
            if self.weights is not None:
                h5.create_dataset("weights", data=np.ascontiguousarray(self.weights, np.float64))
            h5.attrs["format"] = _ACC_FORMAT
            h5.attrs["grid"] = meta
            h5.attrs["n_frames"] = int(self.n_frames)
            h5.attrs["sha256"] = digest
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, *, grid: Grid | None = None) -> MergeAccumulator:
        """Read an accumulator written by :meth:`save`.

        Parameters
        ----------
        path
            The file.
        grid
            When given, the file's grid must be this one.

        Raises
        ------
        FormatError
            When the file is not an accumulator, is damaged (checksum), or holds another grid.
        """
        import h5py

        from hpcdiff.errors import FormatError
        from hpcdiff.io.hdf5 import open_hdf5

        path = Path(path)
        with open_hdf5(path) as h5:
            if h5.attrs.get("format") != _ACC_FORMAT:
                raise FormatError(path, f"not a merge accumulator (no format = {_ACC_FORMAT!r})")
            meta = str(h5.attrs["grid"])
            try:
                saved = Grid.from_dict(json.loads(meta))
            except (ValueError, KeyError, TypeError) as exc:
                raise FormatError(path, f"bad grid attribute: {exc}") from None
            arrays: dict[str, np.ndarray] = {}
            names = [("sums", np.float64), ("counts", np.int64)]
            if "weights" in h5:
                names.append(("weights", np.float64))
            for name, dtype in names:
                ds = h5.get(name)
                if not isinstance(ds, h5py.Dataset) or ds.shape != (saved.n_voxels,):
                    raise FormatError(
                        path, f"expected a ({saved.n_voxels},) dataset for {saved}", dataset=name
                    )
                arrays[name] = np.asarray(ds[()], dtype=dtype)
            n_frames = int(h5.attrs["n_frames"])
            digest = str(h5.attrs.get("sha256", ""))
        weights = arrays.get("weights")
        if digest != _checksum(meta, n_frames, arrays["sums"], arrays["counts"], weights):
            raise FormatError(path, "checksum mismatch: the file is damaged or incomplete")
        if grid is not None and saved != grid:
            raise FormatError(path, f"holds a merge on {saved}, expected {grid}")
        return cls(saved, arrays["sums"], arrays["counts"], n_frames, weights)

    def merge(self, other: MergeAccumulator) -> MergeAccumulator:
        """Add another accumulator in place; returns ``self``."""
        if other.grid != self.grid:
            raise ValueError(
                f"cannot merge accumulators on different grids: {self.grid} vs {other.grid}"
            )
        if other.weighted != self.weighted:
            raise ValueError("cannot merge a weighted accumulator with an unweighted one")
        if (self.half_a is None) != (other.half_a is None):
            raise ValueError("cannot merge an accumulator with half-maps with one without")
        if self.half_a is not None and other.half_a is not None:
            self.half_a.merge(other.half_a)
        self.sums += other.sums
        self.counts += other.counts
        if self.weights is not None and other.weights is not None:
            self.weights += other.weights
        self.n_frames += other.n_frames
        return self

    def __add__(self, other: MergeAccumulator) -> MergeAccumulator:
        return self.copy().merge(other)

    def copy(self) -> MergeAccumulator:
        """A deep copy."""
        return MergeAccumulator(
            self.grid,
            self.sums.copy(),
            self.counts.copy(),
            self.n_frames,
            None if self.weights is None else self.weights.copy(),
            None if self.half_a is None else self.half_a.copy(),
        )

    def symmetrised(self, symmetry: Symmetry) -> MergeAccumulator:
        """Sums and counts symmetrised by adding symmetry-equivalent voxels.

        ``"friedel"`` adds the inversion image (``I(-h) = I(h)``); ``"laue"`` adds all
        eight sign changes of the axes (Laue class mmm, which contains inversion), valid
        for grids in ``hkl`` and for orthogonal axes in ``q``.  ``"none"`` returns a copy.
        """
        if symmetry == "none":
            return self.copy()
        sums = self.sums.reshape(self.grid.shape)  # (half A, if kept, likewise)
        counts = self.counts.reshape(self.grid.shape)
        if symmetry == "friedel":
            folds: list[tuple[int, ...]] = [(0, 1, 2)]
        elif symmetry == "laue":
            # folding one axis at a time adds all eight sign changes and keeps every
            # intermediate exactly symmetric, so the result is bit-for-bit symmetric
            folds = [(0,), (1,), (2,)]
        else:
            raise ValueError(f"symmetry must be 'none', 'friedel' or 'laue', got {symmetry!r}")
        new_sums, new_counts = sums, counts
        new_w = None if self.weights is None else self.weights.reshape(self.grid.shape)
        for axes in folds:
            new_sums = new_sums + np.flip(new_sums, axis=axes)
            new_counts = new_counts + np.flip(new_counts, axis=axes)
            if new_w is not None:
                new_w = new_w + np.flip(new_w, axis=axes)
        return MergeAccumulator(
            self.grid,
            new_sums.ravel(),
            new_counts.ravel(),
            self.n_frames,
            None if new_w is None else new_w.ravel(),
            None if self.half_a is None else self.half_a.symmetrised(symmetry),
        )

    def denominator(self) -> np.ndarray:
        """``(grid.n_voxels,)`` float64 what each voxel's sum is divided by: the summed
        weights (weighted) or the pixel counts."""
        return self.weights if self.weights is not None else self.counts.astype(np.float64)

    def intensity(self) -> np.ndarray:
        """Mean intensity per voxel, ``grid.shape`` float64, NaN where nothing was merged
        (weighted: the weighted mean ``sums / weights``)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.weights is not None:
                ok = (self.counts > 0) & (self.weights > 0)
                mean = np.where(ok, self.sums / np.where(ok, self.weights, 1.0), np.nan)
            else:
                mean = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)
        return mean.reshape(self.grid.shape)


def map_correlation(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Pearson correlation of two maps over the voxels finite in both.

    Returns
    -------
    (float, int)
        The correlation (NaN when fewer than 2 common voxels or no variance) and the number
        of common voxels.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps differ in size: {a.shape} vs {b.shape}")
    both = np.isfinite(a) & np.isfinite(b)
    n = int(both.sum())
    if n < 2:
        return float("nan"), n
    x = a[both] - a[both].mean()
    y = b[both] - b[both].mean()
    denom = np.sqrt(np.dot(x, x) * np.dot(y, y))
    return (float(np.dot(x, y) / denom) if denom > 0 else float("nan")), n


_ACC_FORMAT = "hpcdiff.merge.MergeAccumulator/1"


def _checksum(
    meta: str,
    n_frames: int,
    sums: np.ndarray,
    counts: np.ndarray,
    weights: np.ndarray | None = None,
) -> str:
    h = hashlib.sha256()
    h.update(meta.encode())
    h.update(str(int(n_frames)).encode())
    h.update(np.ascontiguousarray(sums, np.float64).data)
    h.update(np.ascontiguousarray(counts, np.int64).data)
    if weights is not None:
        h.update(np.ascontiguousarray(weights, np.float64).data)
    return h.hexdigest()


def _orientation(orientation: np.ndarray) -> np.ndarray:
    a = np.asarray(orientation, dtype=np.float64)
    if a.shape != (3, 3):
        raise ValueError(
            f"orientation must be a (3, 3) matrix of astar, bstar, cstar rows, got {a.shape}"
        )
    if not np.all(np.isfinite(a)) or abs(np.linalg.det(a)) < 1e-300:
        raise ValueError("orientation matrix is singular or not finite")
    return a


__all__ = [
    "Extent",
    "FrameVoxels",
    "Grid",
    "frame_half",
    "MergeAccumulator",
    "PixelDirections",
    "Symmetry",
    "bin_frame",
    "bragg_keep",
    "crystal_cartesian",
    "fit_grid",
    "fractional_hkl",
    "grid_coordinates",
    "map_correlation",
    "map_frame",
    "map_frame_grids",
    "reciprocal_metric",
]

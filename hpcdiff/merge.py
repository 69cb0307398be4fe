"""Reciprocal-space mapping and accumulation (Yefanov et al. 2014 style merge).

Every pixel of a frame is a scattering vector ``q`` (nm^-1, no 2 pi, lab frame).  With the
frame's orientation matrix ``A`` (rows ``astar, bstar, cstar`` in nm^-1, lab frame) it has
fractional Miller indices ``hkl = solve(A.T, q)``.  Those (or crystal-frame Cartesian
coordinates, for a grid in ``q``) fall into a voxel of a cubic grid of ``size**3`` voxels.
A frame's pixel values are summed per voxel with :func:`numpy.bincount` and added to a
:class:`MergeAccumulator`, a pair of flat ``sums`` (float64) and ``counts`` (int64)
arrays.  Accumulators are mergeable (``a + b`` adds sums and counts), so a merge split
over processes, dask tasks or MPI ranks gives the same map whatever the split.

Everything here works on plain numpy arrays; files, geometry and clusters are the
pipeline's business (:mod:`hpcdiff.pipelines.fourier`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Extent = Literal["hkl", "q"]
Symmetry = Literal["none", "friedel", "laue"]


@dataclass(frozen=True)
class Grid:
    """A cubic voxel grid centred on the reciprocal-space origin.

    Voxel ``i`` along an axis covers ``[-half_width + i * step, -half_width + (i + 1) * step)``
    with ``step = 2 * half_width / size``; its centre is ``-half_width + (i + 0.5) * step``.
    Index ``i`` and ``size - 1 - i`` are mirror images through the origin, for any ``size``.
    Flat voxel indices are C-ordered over the axes ``(h, k, l)`` (or ``(qx, qy, qz)``).

    Parameters
    ----------
    size
        Voxels per axis (200 for the production grid).
    half_width
        Half the edge of the cube: Miller-index units for ``extent="hkl"``, nm^-1 (no 2 pi)
        for ``extent="q"``.
    extent
        ``"hkl"``: axes are fractional Miller indices.  ``"q"``: axes are crystal-frame
        Cartesian scattering vectors (see :func:`crystal_cartesian`).
    """

    size: int
    half_width: float
    extent: Extent = "hkl"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"grid size must be >= 1, got {self.size}")
        if not self.half_width > 0:
            raise ValueError(f"grid half_width must be > 0, got {self.half_width}")
        if self.extent not in ("hkl", "q"):
            raise ValueError(f"grid extent must be 'hkl' or 'q', got {self.extent!r}")
        if self.size**3 >= 2**31:
            raise ValueError(f"grid size {self.size} gives more than 2**31 voxels")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(size, size, size)``."""
        return (self.size, self.size, self.size)

    @property
    def n_voxels(self) -> int:
        """``size**3``."""
        return self.size**3

    @property
    def step(self) -> float:
        """Voxel edge, in the grid's units."""
        return 2.0 * self.half_width / self.size

    def axis(self) -> np.ndarray:
        """Voxel centres along one axis, ``(size,)`` float64, in the grid's units."""
        return -self.half_width + (np.arange(self.size) + 0.5) * self.step

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
        scaled = coords + self.half_width
        scaled *= 1.0 / self.step
        with np.errstate(invalid="ignore"):
            # NaN compares False: outside.  For scaled >= 0, truncation is floor.
            inside = np.all(scaled >= 0, axis=1) & np.all(scaled < self.size, axis=1)
            idx = scaled.astype(np.int64)
        flat = idx[:, 0] * self.size
        flat += idx[:, 1]
        flat *= self.size
        flat += idx[:, 2]
        flat[~inside] = -1
        return flat


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
    keep = np.ones(values.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if keep.shape != values.shape:
        raise ValueError(f"valid {keep.shape} does not match values {values.shape}")
    keep = keep & np.isfinite(values)
    vals = values[keep].astype(np.float64)
    if correction is not None:
        corr = np.asarray(correction)
        if corr.shape != values.shape:
            raise ValueError(f"correction {corr.shape} does not match values {values.shape}")
        vals = vals / corr[keep]
    hkl = fractional_hkl(q[keep], orientation)
    bragg = bragg_keep(hkl, bragg_radius_hkl) if bragg_radius_hkl > 0 else None
    cart = None
    out = []
    for grid in grids:
        if grid.extent == "hkl":
            coords = hkl
        else:
            cart = crystal_cartesian(hkl, orientation) if cart is None else cart
            coords = cart
        voxels = grid.voxel_index(coords)
        if bragg is not None:
            voxels[~bragg] = -1
        out.append(bin_frame(vals, voxels))
    return out


@dataclass
class MergeAccumulator:
    """Mergeable sums and counts over a grid (flat, C order).

    Attributes
    ----------
    grid
        The grid.
    sums
        ``(grid.n_voxels,)`` float64 summed values.
    counts
        ``(grid.n_voxels,)`` int64 number of pixels summed.
    n_frames
        Frames added.
    """

    grid: Grid
    sums: np.ndarray = field(repr=False)
    counts: np.ndarray = field(repr=False)
    n_frames: int = 0

    @classmethod
    def empty(cls, grid: Grid) -> MergeAccumulator:
        """An accumulator with nothing in it (two arrays of ``grid.n_voxels``)."""
        return cls(grid, np.zeros(grid.n_voxels, np.float64), np.zeros(grid.n_voxels, np.int64), 0)

    def add_frame(self, frame: FrameVoxels) -> MergeAccumulator:
        """Add one binned frame in place; returns ``self``."""
        if frame.voxels.size and (frame.voxels[0] < 0 or frame.voxels[-1] >= self.grid.n_voxels):
            raise ValueError("frame voxel indices outside the grid")
        self.sums[frame.voxels] += frame.sums  # voxels are unique: fancy += is exact
        self.counts[frame.voxels] += frame.counts
        self.n_frames += 1
        return self

    def merge(self, other: MergeAccumulator) -> MergeAccumulator:
        """Add another accumulator in place; returns ``self``."""
        if other.grid != self.grid:
            raise ValueError(
                f"cannot merge accumulators on different grids: {self.grid} vs {other.grid}"
            )
        self.sums += other.sums
        self.counts += other.counts
        self.n_frames += other.n_frames
        return self

    def __add__(self, other: MergeAccumulator) -> MergeAccumulator:
        return self.copy().merge(other)

    def copy(self) -> MergeAccumulator:
        """A deep copy."""
        return MergeAccumulator(self.grid, self.sums.copy(), self.counts.copy(), self.n_frames)

    def symmetrised(self, symmetry: Symmetry) -> MergeAccumulator:
        """Sums and counts symmetrised by adding symmetry-equivalent voxels.

        ``"friedel"`` adds the inversion image (``I(-h) = I(h)``); ``"laue"`` adds all
        eight sign changes of the axes (Laue class mmm, which contains inversion), valid
        for grids in ``hkl`` and for orthogonal axes in ``q``.  ``"none"`` returns a copy.
        """
        if symmetry == "none":
            return self.copy()
        sums = self.sums.reshape(self.grid.shape)
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
        for axes in folds:
            new_sums = new_sums + np.flip(new_sums, axis=axes)
            new_counts = new_counts + np.flip(new_counts, axis=axes)
        return MergeAccumulator(self.grid, new_sums.ravel(), new_counts.ravel(), self.n_frames)

    def intensity(self) -> np.ndarray:
        """Mean intensity per voxel, ``grid.shape`` float64, NaN where nothing was merged."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)
        return mean.reshape(self.grid.shape)


def tree_merge(accumulators: list[MergeAccumulator]) -> MergeAccumulator:
    """Merge a list of accumulators pairwise (the serial form of the dask tree reduction)."""
    if not accumulators:
        raise ValueError("nothing to merge")
    level = list(accumulators)
    while len(level) > 1:
        nxt = [level[i] + level[i + 1] for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


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
    "MergeAccumulator",
    "Symmetry",
    "bin_frame",
    "bragg_keep",
    "crystal_cartesian",
    "fractional_hkl",
    "grid_coordinates",
    "map_correlation",
    "map_frame",
    "map_frame_grids",
    "tree_merge",
]

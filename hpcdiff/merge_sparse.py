"""A merge task's accumulator in the voxels it touched: what a dask merge task returns.

A block of frames fills a small part of the merge grid (16 CSPAD frames: 5% of the
200^3 grid fitted to the cell; 16 frames of the small test detector: 2%), but a dense
:class:`~hpcdiff.merge.MergeAccumulator` with weights and half-maps is 384 MB whatever
it holds.  :func:`compact` keeps only the touched voxels (``counts > 0``): a task's
result is then tens of MB, cheap to hold and to send to the worker that folds it into
the running total (:func:`add_into`).

Adding a compact accumulator into a dense one gives the dense sums bit for bit: the
voxels left out hold exact zeros in every array, and ``x + 0.0 == x``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hpcdiff.merge import Grid, MergeAccumulator


@dataclass(frozen=True)
class SparseAccumulator:
    """A :class:`~hpcdiff.merge.MergeAccumulator` restricted to its touched voxels.

    Attributes
    ----------
    grid
        The grid.
    voxels
        ``(m,)`` int64 flat voxel indices (C order), increasing, where ``counts > 0``.
    sums, counts, weights
        ``(m,)`` float64 / int64 / float64 (or None, unweighted) values there.
    n_frames
        Frames added.
    half_sums, half_counts, half_weights, half_n_frames
        Half-map A on the same voxels (zeros where half A has nothing; None without
        half-maps): half A's voxels are a subset of the whole's.
    """

    grid: Grid
    voxels: np.ndarray = field(repr=False)
    sums: np.ndarray = field(repr=False)
    counts: np.ndarray = field(repr=False)
    n_frames: int = 0
    weights: np.ndarray | None = field(default=None, repr=False)
    half_sums: np.ndarray | None = field(default=None, repr=False)
    half_counts: np.ndarray | None = field(default=None, repr=False)
    half_weights: np.ndarray | None = field(default=None, repr=False)
    half_n_frames: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays."""
        arrays = (self.voxels, self.sums, self.counts, self.weights, self.half_sums,
                  self.half_counts, self.half_weights)  # fmt: skip
        return sum(a.nbytes for a in arrays if a is not None)

    def dense(self) -> MergeAccumulator:
        """The dense accumulator (a new one)."""
        out = MergeAccumulator.empty(
            self.grid, weighted=self.weights is not None, halves=self.half_sums is not None
        )
        return add_into(out, self)


def _nbytes(acc: MergeAccumulator) -> int:
    arrays = [acc.sums, acc.counts, acc.weights]
    if acc.half_a is not None:
        arrays += [acc.half_a.sums, acc.half_a.counts, acc.half_a.weights]
    return sum(a.nbytes for a in arrays if a is not None)


def compact(acc: MergeAccumulator) -> MergeAccumulator | SparseAccumulator:
    """``acc`` restricted to its touched voxels, or ``acc`` itself when that is no smaller.

    Raises
    ------
    ValueError
        Half-map A touches a voxel the whole does not (not a half of this accumulator).
    """
    voxels = np.flatnonzero(acc.counts)
    per_voxel = 8 * (1 + 3 * (1 + (acc.half_a is not None)))  # index + the values kept
    if voxels.size * per_voxel >= _nbytes(acc):
        return acc
    half = acc.half_a
    if half is not None and np.count_nonzero(half.counts) != np.count_nonzero(half.counts[voxels]):
        raise ValueError("half-map A has pixels outside the accumulator's voxels")
    return SparseAccumulator(
        acc.grid,
        voxels,
        acc.sums[voxels],
        acc.counts[voxels],
        acc.n_frames,
        None if acc.weights is None else acc.weights[voxels],
        None if half is None else half.sums[voxels],
        None if half is None else half.counts[voxels],
        None if half is None or half.weights is None else half.weights[voxels],
        0 if half is None else half.n_frames,
    )


def add_into(
    total: MergeAccumulator, part: MergeAccumulator | SparseAccumulator
) -> MergeAccumulator:
    """Add ``part`` (dense or compact) into ``total`` in place; returns ``total``.

    Raises
    ------
    ValueError
        Another grid, weighting, or half-map choice (as :meth:`MergeAccumulator.merge`).
    """
    if isinstance(part, MergeAccumulator):
        return total.merge(part)
    if part.grid != total.grid:
        raise ValueError(
            f"cannot merge accumulators on different grids: {total.grid} vs {part.grid}"
        )
    if (part.weights is None) != (total.weights is None):
        raise ValueError("cannot merge a weighted accumulator with an unweighted one")
    if (part.half_sums is None) != (total.half_a is None):
        raise ValueError("cannot merge an accumulator with half-maps with one without")
    v = part.voxels  # unique: fancy += adds each once
    total.sums[v] += part.sums
    total.counts[v] += part.counts
    if total.weights is not None and part.weights is not None:
        total.weights[v] += part.weights
    total.n_frames += part.n_frames
    half = total.half_a
    if half is not None and part.half_sums is not None and part.half_counts is not None:
        half.sums[v] += part.half_sums
        half.counts[v] += part.half_counts
        if half.weights is not None and part.half_weights is not None:
            half.weights[v] += part.half_weights
        half.n_frames += part.half_n_frames
    return total


__all__ = ["SparseAccumulator", "add_into", "compact"]

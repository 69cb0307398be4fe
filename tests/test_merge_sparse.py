"""A merge task's accumulator kept in its touched voxels: smaller, and added into a dense
total it gives the dense sums bit for bit."""

from __future__ import annotations

import functools
import operator

import numpy as np
import pytest

from hpcdiff.merge import Grid, MergeAccumulator
from hpcdiff.merge_sparse import SparseAccumulator, add_into, compact
from hpcdiff.pipelines.fourier import merge_into

GRID = Grid(16, 4.0)


def _task(seed: int, *, weighted: bool, frames: int = 3, pixels: int = 200) -> MergeAccumulator:
    """An accumulator of a few random frames with half-map A (the even frames)."""
    rng = np.random.default_rng(seed)
    acc = MergeAccumulator.empty(GRID, weighted=weighted)
    half = MergeAccumulator.empty(GRID, weighted=weighted)
    for f in range(frames):
        vox = rng.integers(-1, GRID.n_voxels, size=pixels)
        vals = rng.normal(size=pixels) * 10.0 ** rng.integers(-6, 7, size=pixels)
        vals[rng.random(pixels) < 0.05] = np.nan  # left out
        w = rng.uniform(0.1, 3.0, size=pixels) if weighted else None
        for target in (acc, half) if f % 2 == 0 else (acc,):
            target.add_voxels(vox, vals, weights=w)
    return acc.with_half_a(half)


def _assert_same(a: MergeAccumulator, b: MergeAccumulator) -> None:
    assert a.n_frames == b.n_frames
    for x, y in ((a.sums, b.sums), (a.counts, b.counts), (a.weights, b.weights)):
        if x is None or y is None:
            assert x is None and y is None
        else:
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
    if a.half_a is not None or b.half_a is not None:
        assert a.half_a is not None and b.half_a is not None
        _assert_same(a.half_a, b.half_a)


@pytest.mark.parametrize("weighted", [False, True])
def test_compact_keeps_the_touched_voxels_and_round_trips(weighted: bool) -> None:
    acc = _task(1, weighted=weighted)
    small = compact(acc)
    assert isinstance(small, SparseAccumulator)
    np.testing.assert_array_equal(small.voxels, np.flatnonzero(acc.counts))
    assert small.nbytes < acc.sums.nbytes  # far fewer bytes than one dense array
    _assert_same(small.dense(), acc)


@pytest.mark.parametrize("weighted", [False, True])
def test_folding_compact_parts_gives_the_dense_fold_bit_for_bit(weighted: bool) -> None:
    parts = [_task(s, weighted=weighted) for s in range(5)]
    dense = functools.reduce(operator.add, parts)  # copies, then adds every voxel
    total = merge_into(compact(parts[0].copy()))
    for p in parts[1:]:
        total = merge_into(total, compact(p.copy()))
    _assert_same(total, dense)
    # dense and compact parts mix
    mixed = add_into(add_into(parts[0].copy(), compact(parts[1].copy())), parts[2])
    _assert_same(mixed, functools.reduce(operator.add, parts[:3]))


def test_a_full_accumulator_stays_dense() -> None:
    acc = MergeAccumulator.empty(GRID, weighted=True, halves=True)
    everywhere = np.arange(GRID.n_voxels)
    acc.add_voxels(everywhere, np.ones(GRID.n_voxels), weights=np.ones(GRID.n_voxels))
    assert compact(acc) is acc


def test_mismatches_are_refused() -> None:
    part = compact(_task(2, weighted=True))
    with pytest.raises(ValueError, match="weighted"):
        add_into(MergeAccumulator.empty(GRID, halves=True), part)
    with pytest.raises(ValueError, match="half-maps"):
        add_into(MergeAccumulator.empty(GRID, weighted=True), part)
    with pytest.raises(ValueError, match="grids"):
        add_into(MergeAccumulator.empty(Grid(8, 4.0), weighted=True, halves=True), part)
    bad = _task(3, weighted=False)
    assert bad.half_a is not None
    bad.half_a.counts[np.flatnonzero(bad.counts == 0)[0]] = 1  # not a half of it
    with pytest.raises(ValueError, match="outside"):
        compact(bad)

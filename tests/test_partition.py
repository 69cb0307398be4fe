"""The one partition function: contiguous blocks, exact cover, balanced, no idle rank."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcdiff.parallel.partition import batches, partition, runs


@given(n=st.integers(0, 10_000), size=st.integers(1, 300))
def test_blocks_cover_exactly_once_in_rank_order(n: int, size: int) -> None:
    blocks = [partition(n, r, size) for r in range(size)]
    assert blocks[0][0] == 0
    assert blocks[-1][1] == n
    for (_, stop), (start, _) in zip(blocks, blocks[1:], strict=False):
        assert stop == start  # contiguous, no gap, no overlap
    sizes = [b - a for a, b in blocks]
    assert all(s >= 0 for s in sizes)
    assert sum(sizes) == n
    assert max(sizes) - min(sizes) <= 1
    # remainder to the first ranks: sizes never increase with rank
    assert sizes == sorted(sizes, reverse=True)
    # no idle rank while frames remain; rank 0 always works when there is work
    assert all(s > 0 for s in sizes[: min(n, size)])


def test_fewer_frames_than_ranks_keeps_first_ranks_busy() -> None:
    assert [partition(2, r, 4) for r in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]


@pytest.mark.parametrize(("n", "rank", "size"), [(-1, 0, 1), (5, 0, 0), (5, 3, 3), (5, -1, 2)])
def test_bad_arguments_are_refused(n: int, rank: int, size: int) -> None:
    with pytest.raises(ValueError):
        partition(n, rank, size)


@given(start=st.integers(0, 1000), length=st.integers(0, 1000), bs=st.integers(1, 64))
def test_batches_tile_the_range(start: int, length: int, bs: int) -> None:
    out = batches(start, start + length, bs)
    flat = [f for a, b in out for f in range(a, b)]
    assert flat == list(range(start, start + length))
    assert all(0 < b - a <= bs for a, b in out)


@given(st.sets(st.integers(0, 500)))
def test_runs_group_sorted_frames(frames: set[int]) -> None:
    ordered = sorted(frames)
    groups = runs(ordered)
    assert [f for a, b in groups for f in range(a, b)] == ordered
    assert all(b < c for (_, b), (c, _) in zip(groups, groups[1:], strict=False))


def test_runs_refuses_unsorted() -> None:
    with pytest.raises(ValueError, match="sorted"):
        runs([3, 1])

"""Split a run's frames into contiguous blocks, one per rank.

This is the one place where work is divided among MPI ranks.  Blocks are contiguous in
the run's global frame numbering (frames of all files concatenated in run order), so a
rank reads neighbouring frames of one or two files; the remainder of ``n / size`` goes
one extra frame each to the first ranks, so block sizes differ by at most one, no rank
idles while frames remain (``size <= n``) and rank 0 works like every other rank.
"""

from __future__ import annotations


def partition(n: int, rank: int, size: int) -> tuple[int, int]:
    """The block of frames ``[start, stop)`` that ``rank`` of ``size`` processes.

    Parameters
    ----------
    n
        Number of frames in the run (global frame numbers ``0 .. n - 1``), ``n >= 0``.
    rank
        This rank, ``0 <= rank < size``.
    size
        Number of ranks, ``size >= 1``.

    Returns
    -------
    (start, stop)
        Half-open range of global frame numbers.  Over all ranks the blocks cover
        ``[0, n)`` exactly once, in rank order; the first ``n % size`` ranks get
        ``n // size + 1`` frames, the others ``n // size`` (empty when ``n < size``).

    Raises
    ------
    ValueError
        If ``n < 0``, ``size < 1`` or ``rank`` is outside ``[0, size)``.

    Examples
    --------
    >>> [partition(10, r, 3) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    """
    if n < 0:
        raise ValueError(f"number of frames must be >= 0, got {n}")
    if size < 1:
        raise ValueError(f"number of ranks must be >= 1, got {size}")
    if not 0 <= rank < size:
        raise ValueError(f"rank must lie in [0, {size}), got {rank}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return start, stop


def batches(start: int, stop: int, batch_size: int) -> list[tuple[int, int]]:
    """Cut ``[start, stop)`` into consecutive ``[a, b)`` pieces of at most ``batch_size``.

    Raises
    ------
    ValueError
        If ``batch_size < 1`` or ``stop < start``.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if stop < start:
        raise ValueError(f"empty range has stop {stop} < start {start}")
    return [(a, min(a + batch_size, stop)) for a in range(start, stop, batch_size)]


def runs(frames: list[int] | tuple[int, ...]) -> list[tuple[int, int]]:
    """Group sorted, distinct frame numbers into maximal contiguous ``[a, b)`` ranges.

    Used on resume, where a rank's block minus the frames already done may have holes.

    Examples
    --------
    >>> runs([0, 1, 2, 5, 6, 9])
    [(0, 3), (5, 7), (9, 10)]
    """
    out: list[tuple[int, int]] = []
    for f in frames:
        if out and out[-1][1] == f:
            out[-1] = (out[-1][0], f + 1)
        elif out and f < out[-1][1]:
            raise ValueError(
                f"frame numbers must be sorted and distinct; {f} follows {out[-1][1] - 1}"
            )
        else:
            out.append((f, f + 1))
    return out


__all__ = ["batches", "partition", "runs"]

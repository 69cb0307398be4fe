"""Check the collective helpers under ``mpiexec -n N``; exits 0 when every check holds.

Rank r holds r + 1 rows (rank 1 none when ``--empty-rank 1``); rows are gathered in
small rounds (``max_elements`` forces several ``Gatherv`` calls), sums are reduced, and
the node-local rank is checked against the world rank (one node).
"""

from __future__ import annotations

import sys

import numpy as np

from hpcdiff.parallel.mpi import (
    allreduce_sum,
    gather_rows,
    get_comm,
    reduce_sum,
    root_decides,
)
from hpcdiff.parallel.placement import node_local_rank


def rows(rank: int) -> np.ndarray:
    n = 0 if rank == 1 else rank + 1
    return (np.arange(n * 3, dtype=np.float32).reshape(n, 3) + 100 * rank).astype(np.float32)


def main() -> int:
    comm = get_comm()
    rank, size = comm.Get_rank(), comm.Get_size()
    assert size > 1, "run under mpiexec -n N with N > 1"
    for max_elements in (3, 7, 2**30):
        got = gather_rows(comm, rows(rank), max_elements=max_elements)
        if rank == 0:
            want = np.concatenate([rows(r) for r in range(size)])
            assert got is not None and got.dtype == np.float32, got
            assert np.array_equal(got, want), (max_elements, got, want)
        else:
            assert got is None
    total = reduce_sum(comm, np.full(4, rank, dtype=np.float64))
    if rank == 0:
        assert np.array_equal(total, np.full(4, sum(range(size))))
    assert np.array_equal(allreduce_sum(comm, np.array([1, rank])), [size, sum(range(size))])
    assert node_local_rank(comm) == (rank, size)
    assert root_decides(comm, lambda: {"answer": 42}) == {"answer": 42}
    comm.Barrier()
    if rank == 0:
        print(f"collectives ok on {size} ranks")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The collect half of a distributed job (gather, or reduce then project) and dask block maps.

Under one process (:class:`SelfComm`) the collect must equal the serial computation; the
multi-rank paths run under ``mpiexec`` in ``test_mpi_job.py`` (classify train, both
``pca_from`` settings).
"""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff.learn import PCAReduction, pca_from_statistics
from hpcdiff.learn.pca_stats import PCAStatistics
from hpcdiff.parallel.collect import collect_rows, gather_to_root, local_range, on_root
from hpcdiff.parallel.mpi import SelfComm
from hpcdiff.progress import Timings


def _rows(n: int = 30, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    frames = np.arange(100, 100 + n, dtype=np.int64)
    return frames, rng.normal(size=(n, d)).astype(np.float32)


def test_gather_returns_the_wanted_rows_in_frame_order() -> None:
    frames, x = _rows()
    wanted = frames[[1, 4, 5, 20]]
    timings = Timings()
    got = collect_rows(SelfComm(), frames, x, wanted=wanted, timings=timings)
    assert got.basis is None
    assert got.rows is not None
    np.testing.assert_array_equal(got.rows, x[[1, 4, 5, 20]])
    assert "collective" in timings.seconds


def test_reduce_then_project_equals_the_serial_pca() -> None:
    frames, x = _rows()
    wanted = frames[::2]
    got = collect_rows(
        SelfComm(), frames, x, wanted=wanted, reduce=PCAReduction(n_features=6, n_components=3)
    )
    basis = pca_from_statistics(PCAStatistics.from_array(x[::2]), 3)
    assert got.basis is not None and got.rows is not None
    np.testing.assert_allclose(got.basis.components_, basis.components_, rtol=1e-12)
    np.testing.assert_allclose(got.rows, basis.transform(x[::2]), rtol=1e-12)
    assert got.rows.shape == (15, 3)


def test_a_rank_without_wanted_rows_and_frames_out_of_step() -> None:
    frames, x = _rows()
    red = PCAReduction(n_features=6, n_components=2)
    empty = red.summarise(x[:0])
    assert empty.shape == PCAStatistics.empty(6).to_buffer().shape and empty[0] == 0
    with pytest.raises(RuntimeError, match="not the frames chosen"):
        collect_rows(SelfComm(), frames, x, wanted=np.array([5, 101], dtype=np.int64))


def test_root_helpers_on_one_process() -> None:
    comm = SelfComm()
    assert on_root(comm, lambda: 7) == 7
    assert gather_to_root(comm, {"a": 1}) == [{"a": 1}]
    assert local_range(comm, 10) == (0, 10)


def test_map_blocks_reduces_and_gathers_like_a_loop() -> None:
    from distributed import Client

    from hpcdiff.parallel.dask_blocks import map_blocks, worker_count

    data = np.arange(20.0)
    blocks = [(0, 7), (7, 14), (14, 20)]

    def task(shared: np.ndarray, start: int, stop: int, *, scale: float) -> tuple[float, int]:
        return float(shared[start:stop].sum() * scale), stop - start

    def add(*parts: float) -> float:
        return float(sum(parts))

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        assert worker_count(c) == 1
        reduced = map_blocks(c, task, data, blocks, reduce=add, label="t", log=None, scale=2.0)
        plain = map_blocks(c, task, data, blocks, label="t", scale=1.0)
    assert reduced.reduced == pytest.approx(2.0 * data.sum())
    assert reduced.parts == [7, 7, 6]
    assert plain.reduced is None
    assert [p[1] for p in plain.parts] == [7, 7, 6]
    assert sum(p[0] for p in plain.parts) == pytest.approx(data.sum())

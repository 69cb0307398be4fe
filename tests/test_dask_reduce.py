"""Streaming reduction of block accumulators: folded in block order (bit-for-bit the same
result in any completion order), few blocks unfolded at a time; the local cluster's
private scratch folder."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hpcdiff.parallel.dask_reduce import stream_reduce


def _fold(values: list[np.ndarray]) -> np.ndarray:
    out = values[0].copy()
    for v in values[1:]:
        out += v
    return out


def _block(shared: dict, start: int, stop: int, *, delays: np.ndarray):
    time.sleep(float(delays[start]))
    return shared["values"][start].copy(), (start, stop)


def _add(*parts: np.ndarray) -> np.ndarray:
    out = parts[0].copy()
    for p in parts[1:]:
        out += p
    return out


def _add_in_place(first: np.ndarray, *rest: np.ndarray) -> np.ndarray:
    for p in rest:
        first += p
    return first


@pytest.mark.parametrize("n, in_flight", [(1, 2), (23, 1), (23, 3)])
def test_stream_reduce_folds_in_block_order_whatever_finishes_first(n, in_flight) -> None:
    from distributed import Client

    rng = np.random.default_rng(3)
    # magnitudes far apart: float addition is not associative on these
    values = [rng.normal(size=64) * 10.0 ** rng.integers(-8, 9, size=64) for _ in range(n)]
    expected = _fold(values)
    blocks = [(i, i + 1) for i in range(n)]
    with Client(processes=False, n_workers=2, threads_per_worker=2, dashboard_address=None) as c:
        shared = c.scatter({"values": values}, broadcast=True, hash=False)
        for seed, add in ((0, _add), (1, _add_in_place)):  # two completion orders
            delays = np.random.default_rng(seed).uniform(0, 0.05, size=n)
            got = stream_reduce(
                c, _block, shared, blocks, reduce=add, in_flight=in_flight, log=None,
                delays=delays,
            )  # fmt: skip
            np.testing.assert_array_equal(got.reduced, expected)
            assert got.parts == blocks  # the rest parts in block order
            # never more than in_flight blocks unfolded (their accumulators on the workers)
            assert 1 <= got.most_unfolded <= in_flight


def test_stream_reduce_raises_the_first_task_error() -> None:
    from distributed import Client

    def bad(shared: dict, start: int, stop: int):
        if start == 4:
            raise RuntimeError("block 4 is broken")
        return np.ones(3), start

    blocks = [(i, i + 1) for i in range(8)]
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        with pytest.raises(RuntimeError, match="block 4 is broken"):
            stream_reduce(c, bad, {}, blocks, reduce=_add, in_flight=2, log=None)
        with pytest.raises(ValueError, match="in_flight"):
            stream_reduce(c, bad, {}, blocks, reduce=_add, in_flight=0, log=None)
        with pytest.raises(ValueError, match="nothing"):
            stream_reduce(c, bad, {}, [], reduce=_add, in_flight=2, log=None)


def test_local_cluster_scratch_is_private_announced_and_removed(tmp_path) -> None:
    """The local cluster's workers spill into a private folder under the configured
    directory; it is announced with its free space and removed when the cluster closes,
    and a folder left by a dead job of this host is removed too."""
    import io
    import socket
    import subprocess
    import sys

    import dask

    from hpcdiff.config import ClusterConfig
    from hpcdiff.parallel.dask_cluster import SCRATCH_PREFIX, open_cluster

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f"{SCRATCH_PREFIX}-{socket.gethostname()}-{int(dead.stdout)}-abcd"
    (stale / "dask-scratch-space").mkdir(parents=True)
    other = tmp_path / "someone-elses"  # not ours: left alone
    other.mkdir()
    cfg = ClusterConfig(
        n_workers=1, threads_per_worker=1, memory_per_worker="1GiB", dashboard_address=None
    )  # fmt: skip
    log = io.StringIO()
    # no local_directory: dask's temporary-directory (here the user's config) holds it
    with (
        dask.config.set({"temporary-directory": str(tmp_path)}),
        open_cluster(cfg, log=log) as session,
    ):
        dirs = session.client.run(lambda dask_worker: dask_worker.local_directory)
        ours = [p for p in tmp_path.iterdir() if p.name.startswith(SCRATCH_PREFIX)]
        assert len(ours) == 1 and ours[0] != stale
        assert all(str(d).startswith(str(ours[0])) for d in dirs.values())
    assert f"dask scratch (workers' spill): {ours[0]}" in log.getvalue()
    assert " free" in log.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["someone-elses"]  # scheduler's too

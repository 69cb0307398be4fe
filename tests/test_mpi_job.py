"""The MPI batch job: communicator, prefetch, checkpoints, signals, and real mpiexec runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcdiff.errors import FormatError, OutputExistsError
from hpcdiff.io.cxi import FrameSource, write_cxi
from hpcdiff.parallel.frame_loop import distributed_map
from hpcdiff.parallel.mpi import (
    CollectiveError,
    SelfComm,
    abort_on_error,
    allreduce_sum,
    gather_rows,
    get_comm,
    launched_size,
    reduce_sum,
    root_decides,
)
from hpcdiff.parallel.placement import select_device, slurm_cpus_per_task, threads_per_rank
from hpcdiff.parallel.prefetch import Prefetcher
from hpcdiff.parallel.shards import ShardBuffer, ShardStore
from hpcdiff.parallel.signals import EXIT_PREEMPTED, Preempted, StopFlag, stop_on_signals
from hpcdiff.pipelines.classify import FrameReader
from hpcdiff.progress import Timings, timings_table

REPO = Path(__file__).resolve().parents[1]
LOOP_JOB = REPO / "tests" / "mpi" / "loop_job.py"
MPIEXEC = shutil.which("mpiexec")
needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found on PATH")
LAUNCH_VARS = ("PMI_SIZE", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")


# --------------------------------------------------------------------------- communicator


def test_self_comm_has_single_rank_semantics() -> None:
    comm = SelfComm()
    assert (comm.Get_rank(), comm.Get_size()) == (0, 1)
    assert comm.bcast({"a": 1}) == {"a": 1}
    assert comm.gather(3) == [3]
    assert comm.allreduce(4) == 4
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    got = gather_rows(comm, x)
    assert got is not None and np.array_equal(got, x) and got is not x
    assert np.array_equal(reduce_sum(comm, np.array([1.0, 2.0])), [1.0, 2.0])
    assert np.array_equal(allreduce_sum(comm, np.array([5, 6])), [5, 6])


def test_get_comm_without_launcher_is_a_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HPCDIFF_MPI", raising=False)
    assert isinstance(get_comm(), SelfComm)
    monkeypatch.setenv("PMI_SIZE", "1")
    assert isinstance(get_comm(), SelfComm)
    monkeypatch.setenv("PMI_SIZE", "4")
    assert isinstance(get_comm("none"), SelfComm)
    with pytest.raises(ValueError, match="MPI mode"):
        get_comm("sometimes")


def test_get_comm_refuses_to_run_n_copies_without_mpi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails as with a broken libmpi
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(RuntimeError, match="refusing to run the whole job once per task"):
        get_comm()
    monkeypatch.delenv("PMI_SIZE")
    monkeypatch.setenv("PMIX_RANK", "0")  # a launcher, size unknown: one process is fine
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "PMIX_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert isinstance(get_comm(), SelfComm)


def test_launched_size_reads_each_launcher() -> None:
    assert launched_size({}) is None
    assert launched_size({"PMI_SIZE": "3"}) == 3
    assert launched_size({"OMPI_COMM_WORLD_SIZE": "8"}) == 8
    assert launched_size({"SLURM_STEP_NUM_TASKS": "2"}) == 2


def test_root_decides_raises_the_roots_error_everywhere() -> None:
    comm = SelfComm()
    assert root_decides(comm, lambda: 7) == 7

    def refuse() -> None:
        raise OutputExistsError("out exists")

    with pytest.raises(OutputExistsError) as info:
        root_decides(comm, refuse)
    assert info.value.collective is True
    assert issubclass(CollectiveError, Exception)


def test_abort_on_error_reraises_in_a_single_process() -> None:
    with pytest.raises(RuntimeError, match="boom"), abort_on_error(SelfComm()):
        raise RuntimeError("boom")


# --------------------------------------------------------------------------- placement


def test_select_device() -> None:
    kw = {"local_rank": 5, "local_size": 8}
    assert select_device("none", requested="auto", cuda_count=4, **kw) == "cpu"
    assert select_device("auto", requested="cpu", cuda_count=4, **kw) == "cpu"
    assert select_device("auto", requested="auto", cuda_count=0, **kw) == "cpu"
    assert select_device("auto", requested="auto", cuda_count=4, **kw) == "cuda:1"
    assert select_device("local_rank", requested="auto", cuda_count=1, **kw) == "cuda:0"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        select_device("auto", requested="cuda", cuda_count=0, **kw)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        select_device("local_rank", requested="auto", cuda_count=0, **kw)


def test_threads_per_rank_order_of_precedence() -> None:
    assert slurm_cpus_per_task({"SLURM_CPUS_PER_TASK": "6"}) == 6
    assert slurm_cpus_per_task({"SLURM_CPUS_PER_TASK": "x"}) is None
    assert threads_per_rank(3, local_size=2, environ={"SLURM_CPUS_PER_TASK": "6"}) == 3
    assert threads_per_rank(None, local_size=2, environ={"SLURM_CPUS_PER_TASK": "6"}) == 6
    share = threads_per_rank(None, local_size=10_000, environ={})
    assert share == 1


# --------------------------------------------------------------------------- prefetch


def test_prefetcher_keeps_order_and_bounds_read_ahead() -> None:
    consumed = 0
    max_ahead = 0
    lock = threading.Lock()

    def read(a: int, b: int) -> list[int]:
        nonlocal max_ahead
        with lock:
            max_ahead = max(max_ahead, a - consumed)
        return list(range(a, b))

    ranges = [(i, i + 1) for i in range(50)]
    out = []
    with Prefetcher(read, ranges, depth=2) as pf:
        for item in pf:
            time.sleep(0.001)
            out.extend(item)
            with lock:
                consumed = item[0] + 1
    assert out == list(range(50))
    # queued (depth) + one being read: never more than depth + 1 batches ahead
    assert max_ahead <= 3
    assert pf.batches == 50 and pf.wait_s >= 0 and pf.read_s >= 0


def test_prefetcher_raises_read_errors_at_their_position() -> None:
    def read(a: int, b: int) -> int:
        if a == 2:
            raise OSError("disk gone")
        return a

    got = []
    with (
        pytest.raises(OSError, match="disk gone"),
        Prefetcher(read, [(i, i + 1) for i in range(5)]) as pf,
    ):
        for item in pf:
            got.append(item)
    assert got == [0, 1]


def test_prefetcher_close_stops_early() -> None:
    calls = []
    pf = Prefetcher(lambda a, b: calls.append(a) or a, ((i, i + 1) for i in range(10**6)), depth=1)
    it = iter(pf)
    assert next(it) == 0
    pf.close()
    assert len(calls) < 10


# --------------------------------------------------------------------------- signals


def test_stop_signals_set_the_flag_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with stop_on_signals() as flag:
        assert not flag
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(100):
            if flag:
                break
            time.sleep(0.01)
        assert flag and flag.signum == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before
    assert EXIT_PREEMPTED == 75


# --------------------------------------------------------------------------- shards


def test_shards_round_trip_and_rejects(tmp_path: Path) -> None:
    store, resumed = ShardStore.prepare(tmp_path / "s", config_hash="h1", n_frames=10, files=["a"])
    assert not resumed
    buf = ShardBuffer()
    buf.add(np.array([3, 4]), {"x": np.array([[3.0], [4.0]], np.float32)}, [(5, "bad")])
    buf.add(np.array([], np.int64), {}, [(6, "worse")])
    store.write(buf, config_hash="h1", rank=1)
    assert len(buf) == 0
    buf.add(np.array([0, 1]), {"x": np.array([[0.0], [1.0]], np.float32)})
    store.write(buf, config_hash="h1", rank=0)
    assert not list((tmp_path / "s").glob(".*"))  # no temporary files left
    assert store.done_frames().tolist() == [0, 1, 3, 4, 5, 6]
    frames, arrays = store.read(["x"], start=1, stop=4)
    assert frames.tolist() == [1, 3] and arrays["x"][:, 0].tolist() == [1.0, 3.0]
    assert store.rejects() == [(5, "bad"), (6, "worse")]
    with h5py.File(store.paths()[0]) as h5:
        assert h5.attrs["config_hash"] == "h1"


def test_shard_folder_resumes_same_job_and_refuses_another(tmp_path: Path) -> None:
    d = tmp_path / "s"
    store, _ = ShardStore.prepare(d, config_hash="h1", n_frames=4, files=["a"])
    buf = ShardBuffer()
    buf.add(np.array([0]), {"x": np.zeros((1, 2))})
    store.write(buf, config_hash="h1", rank=0)
    assert ShardStore.prepare(d, config_hash="h1", n_frames=4, files=["a"])[1] is True
    with pytest.raises(OutputExistsError, match="config hash h1 there, h2 here"):
        ShardStore.prepare(d, config_hash="h2", n_frames=4, files=["a"])
    store2, resumed = ShardStore.prepare(d, config_hash="h2", n_frames=4, files=["a"], force=True)
    assert not resumed and store2.paths() == []


def test_shards_claiming_one_frame_twice_are_an_error(tmp_path: Path) -> None:
    store, _ = ShardStore.prepare(tmp_path / "s", config_hash="h", n_frames=4, files=[])
    for rank in (0, 1):
        buf = ShardBuffer()
        buf.add(np.array([1 + 2 * rank, 2]), {"x": np.zeros((2, 1))})
        store.write(buf, config_hash="h", rank=rank)
    with pytest.raises(FormatError, match="frame 2 is in more than one shard"):
        store.done_frames()


# --------------------------------------------------------------------------- the loop, one process


@pytest.fixture()
def small_run(tmp_path: Path) -> tuple[list[str], np.ndarray]:
    """Two CXI files, 13 + 7 frames of 8 x 6 pixels; frame 5 holds a NaN."""
    rng = np.random.default_rng(0)
    frames = rng.random((20, 8, 6), dtype=np.float32)
    frames[5, 2, 3] = np.nan
    files = [str(tmp_path / "a.cxi"), str(tmp_path / "b.cxi")]
    write_cxi(files[0], frames[:13])
    write_cxi(files[1], frames[13:])
    return files, frames


def _sums(batch) -> dict[str, np.ndarray]:
    return {"sum": batch.frames.astype(np.float64).sum(axis=(1, 2))}


def _run_loop(files: list[str], store_dir: Path, *, stop=None, process=_sums, batch=3):
    source = FrameSource(files)
    store, _ = ShardStore.prepare(store_dir, config_hash="t", n_frames=source.n_frames, files=files)
    timings = Timings()
    out = distributed_map(
        SelfComm(),
        n_frames=source.n_frames,
        read=FrameReader(source),
        process=process,
        store=store,
        config_hash="t",
        batch_size=batch,
        checkpoint_every=4,
        stop=stop,
        progress_interval_s=60,
        timings=timings,
    )
    return out, store


def test_loop_processes_every_frame_and_rejects_nan(small_run, tmp_path: Path) -> None:
    files, frames = small_run
    out, store = _run_loop(files, tmp_path / "s")
    got, arrays = store.read(["sum"])
    good = np.array([i for i in range(20) if i != 5])
    assert got.tolist() == good.tolist()
    np.testing.assert_allclose(arrays["sum"], frames[good].astype(np.float64).sum(axis=(1, 2)))
    assert store.rejects() == [(5, "frame holds NaN or inf pixel values")]
    assert (out.processed, out.rejected, out.done_before) == (20, 1, 0)
    t = out.timings.as_dict()
    assert {"wait_input", "compute", "collective", "checkpoint", "reader", "total"} <= set(t)
    assert "rank 0" in timings_table([t])


def test_reader_retries_frame_by_frame_and_rejects_unreadable_frames() -> None:
    class Source:
        slab_shape = (2, 3)

        def read(self, a: int, b: int) -> np.ndarray:
            if a <= 4 < b:
                raise OSError("can't read data (inflate() failed)")
            return np.arange(a, b, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)

        def frame_values(self, a: int, b: int) -> dict[str, np.ndarray]:
            return {"photon_energy_ev": np.full(b - a, 9500.0)}

    batch = FrameReader(Source())(2, 7)
    assert batch.numbers.tolist() == [2, 3, 5, 6]
    assert batch.frames[:, 0, 0].tolist() == [2.0, 3.0, 5.0, 6.0]
    assert batch.values["photon_energy_ev"].shape == (4,)
    assert len(batch.rejects) == 1 and batch.rejects[0][0] == 4
    assert "inflate() failed" in batch.rejects[0][1]


def test_loop_rejects_non_finite_results(small_run, tmp_path: Path) -> None:
    files, _ = small_run

    def process(batch):
        out = _sums(batch)
        out["sum"][batch.numbers == 7] = np.inf
        return out

    _, store = _run_loop(files, tmp_path / "s", process=process)
    assert (7, "non-finite values in sum") in store.rejects()
    assert 7 not in store.read(["sum"])[0].tolist()


def test_loop_stopped_then_resumed_equals_uninterrupted(small_run, tmp_path: Path) -> None:
    files, _ = small_run
    _, ref = _run_loop(files, tmp_path / "ref")
    flag = StopFlag()
    calls = []

    def process(batch):
        calls.append(batch.start)
        if len(calls) == 2:
            flag.set(signal.SIGUSR1)  # as the handler would, mid-run
        return _sums(batch)

    with pytest.raises(Preempted) as info:
        _run_loop(files, tmp_path / "s", stop=flag, process=process)
    assert 0 < info.value.frames_done < 20
    partial = ShardStore(tmp_path / "s").done_frames()
    assert len(partial) == info.value.frames_done
    out, store = _run_loop(files, tmp_path / "s")
    assert out.done_before == len(partial) and out.processed == 20 - len(partial)
    got, arrays = store.read(["sum"])
    want, want_arrays = ref.read(["sum"])
    assert np.array_equal(got, want)
    assert np.array_equal(arrays["sum"], want_arrays["sum"])
    assert store.rejects() == ref.rejects()


# --------------------------------------------------------------------------- under mpiexec


def _mpiexec(n: int, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in LAUNCH_VARS:
        env.pop(var, None)
    cmd = [MPIEXEC, "-n", str(n), sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


@pytest.mark.mpi
@needs_mpiexec
def test_collectives_under_mpiexec() -> None:
    proc = _mpiexec(3, str(REPO / "tests" / "mpi" / "collectives.py"))
    assert proc.returncode == 0, proc.stderr
    assert "collectives ok on 3 ranks" in proc.stdout


@pytest.mark.mpi
@needs_mpiexec
def test_loop_gives_the_same_results_on_1_2_3_ranks(small_run, tmp_path: Path) -> None:
    files, frames = small_run
    results = {}
    for n in (1, 2, 3):
        out = tmp_path / f"n{n}"
        out.mkdir()
        proc = _mpiexec(n, str(LOOP_JOB), str(out), *files)
        assert proc.returncode == 0, proc.stderr
        results[n] = np.load(out / "result.npz")
        assert f"[rank 0/{n}]" in proc.stderr
    good = [i for i in range(20) if i != 5]
    for n in (1, 2, 3):
        assert results[n]["frames"].tolist() == good
        assert results[n]["reject_frames"].tolist() == [5]
        np.testing.assert_array_equal(results[n]["sum"], results[1]["sum"])
        np.testing.assert_array_equal(results[n]["corner"], frames[good, 0, :4])


@pytest.mark.mpi
@needs_mpiexec
def test_sigusr1_stops_all_ranks_and_a_rerun_resumes(small_run, tmp_path: Path) -> None:
    files, _ = small_run
    ref = tmp_path / "ref"
    ref.mkdir()
    assert _mpiexec(2, str(LOOP_JOB), str(ref), *files).returncode == 0
    out, pids = tmp_path / "run", tmp_path / "pids"
    out.mkdir()
    pids.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    cmd = [
        MPIEXEC,
        "-n",
        "2",
        sys.executable,
        str(LOOP_JOB),
        str(out),
        *files,
        "--batch",
        "1",
        "--checkpoint",
        "2",
        "--delay-s",
        "0.1",
        "--pid-dir",
        str(pids),
    ]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not list((out / "loop.shards").glob("shard-*.h5")) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(int((pids / "rank1.pid").read_text()), signal.SIGUSR1)  # one rank only
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "received SIGUSR1" in err
    partial = ShardStore(out / "loop.shards").done_frames()
    assert 0 < len(partial) < 20
    rerun = _mpiexec(3, str(LOOP_JOB), str(out), *files)
    assert rerun.returncode == 0, rerun.stderr
    got, want = np.load(out / "result.npz"), np.load(ref / "result.npz")
    assert int(got["done_before"]) == len(partial)
    assert int(got["processed"]) == 20 - len(partial)
    for key in ("frames", "sum", "corner", "reject_frames"):
        np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.mpi
@needs_mpiexec
def test_an_error_on_one_rank_aborts_the_job_without_hanging(small_run, tmp_path: Path) -> None:
    files, _ = small_run
    t0 = time.monotonic()
    proc = _mpiexec(2, str(LOOP_JOB), str(tmp_path), *files, "--fail-rank", "1", timeout=60)
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 30
    assert "rank 1 failed, aborting all 2 ranks" in proc.stderr
    assert "injected failure on rank 1" in proc.stderr
    assert not (tmp_path / "result.npz").exists()


# --------------------------------------------------------------------------- the classify job


sys.path.insert(0, str(REPO / "tests" / "mpi"))
from tiny_experiment import make_experiment  # noqa: E402


def _job_variant(
    job: Path, name: str, *, out: str | None = None, **sections: dict[str, object]
) -> Path:
    """``job_NAME.toml``: a copy of ``job`` writing to ``out_OUT`` (default NAME), keys changed."""
    text = job.read_text().replace('dir = "out"', f'dir = "out_{out or name}"')
    for section, values in sections.items():
        for key, value in values.items():
            line = f"{key} = {value!r}".replace("'", '"')
            head = f"[{section}]\n"
            lines = text.split(head, 1)
            body = [ln for ln in lines[1].split("\n") if not ln.startswith(f"{key} =")]
            text = lines[0] + head + line + "\n" + "\n".join(body)
    path = job.parent / f"job_{name}.toml"
    path.write_text(text)
    return path


def _hpcdiff(n: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``hpcdiff ARGS`` as one plain process (n = 1, no MPI at all) or under mpiexec -n N."""
    if n == 1:
        env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "hpcdiff", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    return _mpiexec(n, "-m", "hpcdiff", *args, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny experiment, with a model trained on one plain process (gathered PCA)."""
    job = make_experiment(tmp_path_factory.mktemp("tiny"))
    proc = _ok(_hpcdiff(1, "classify", "train", str(job)))
    assert "precision" in proc.stdout and "recall" in proc.stdout
    return job


def _predictions(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as h5:
        return {k: h5[k][()] for k in h5} | {"class_names": h5.attrs["class_names"]}


@pytest.mark.mpi
@pytest.mark.slow
@needs_mpiexec
def test_predictions_are_the_same_on_1_2_3_ranks(experiment: Path) -> None:
    model = str(experiment.parent / "out" / "model.npz")
    preds = {}
    for n in (1, 2, 3):
        job = _job_variant(experiment, f"pred{n}")
        proc = _ok(_hpcdiff(n, "classify", "predict", str(job), "--model", model))
        preds[n] = _predictions(experiment.parent / f"out_pred{n}" / "predictions.h5")
        report = json.loads((experiment.parent / f"out_pred{n}" / "predict-run.json").read_text())
        assert report["ranks"] == n and len(report["timings"]) == n
        assert report["frames"]["processed"] == 36 and report["config_hash"]
        assert report["weights_sha256"] and len(report["devices"]) == n
        for device in report["devices"]:  # how each rank computed: device, threads, dtype
            assert device["preprocess"] == f"numpy on {device['threads']} thread(s)"
            assert device["features"]["device"] == "cpu"
            assert device["features"]["autocast"] in (None, "torch.bfloat16")
        assert f"rank {n - 1}" in proc.stdout  # per-rank timing table
    for n in (2, 3):
        assert np.array_equal(preds[n]["frame_file"], preds[1]["frame_file"])
        assert np.array_equal(preds[n]["frame_index"], preds[1]["frame_index"])
        assert np.array_equal(preds[n]["class"], preds[1]["class"])
        np.testing.assert_allclose(preds[n]["probability"], preds[1]["probability"], atol=1e-5)
        np.testing.assert_allclose(preds[n]["diffuse_score"], preds[1]["diffuse_score"], atol=1e-5)
    assert len(preds[1]["frame_index"]) == 36
    assert set(preds[1]["class"].tolist()) <= {0, 1}
    p_class = preds[1]["class_probability"]
    assert np.all((p_class >= 0.5) & (p_class <= 1))
    np.testing.assert_allclose(preds[1]["probability"].sum(axis=1), 1, atol=1e-5)


@pytest.mark.mpi
@pytest.mark.slow
@needs_mpiexec
def test_statistics_pca_equals_gathered_pca(experiment: Path) -> None:
    job = _job_variant(experiment, "stats", learn={"pca_from": "statistics"})
    proc = _ok(_hpcdiff(2, "classify", "train", str(job)))
    assert "PCA from statistics" in proc.stdout
    gathered = np.load(experiment.parent / "out" / "model.npz")
    stats = np.load(experiment.parent / "out_stats" / "model.npz")
    # the same training rows reached the root (the mean is a plain sum either way) ...
    np.testing.assert_allclose(stats["pca_mean"], gathered["pca_mean"], rtol=1e-6, atol=1e-7)
    # ... and give the same axes: the leading one to 1e-6, the subspace to within the
    # accuracy of scikit-learn's randomised solver on near-degenerate trailing axes
    a, b = gathered["pca_components"], stats["pca_components"]
    assert abs(float(a[0] @ b[0])) > 1 - 1e-6
    cosines = np.linalg.svd(a @ b.T, compute_uv=False)
    assert cosines.min() > 0.995, cosines
    np.testing.assert_allclose(
        stats["pca_explained_variance"], gathered["pca_explained_variance"], rtol=1e-2
    )
    assert stats["pca_explained_variance"][0] > 10 * stats["pca_explained_variance"][1]


@pytest.mark.mpi
@pytest.mark.slow
@needs_mpiexec
def test_features_killed_with_sigusr1_then_resumed_equal_an_uninterrupted_run(
    experiment: Path,
) -> None:
    from hpcdiff.io.featurefile import read_features

    job = _job_variant(
        experiment, "kill", features={"batch_size": 1}, parallel={"checkpoint_every": 1}
    )
    shards = experiment.parent / "out_kill" / "features.shards"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {"OMP_NUM_THREADS": "1"}
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "hpcdiff", "features", str(job)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not list(shards.glob("shard-*.h5")) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGUSR1)  # mpiexec forwards it to every rank
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "received SIGUSR1" in err
    partial = ShardStore(shards).done_frames()
    assert 0 < len(partial) < 36
    assert not (experiment.parent / "out_kill" / "features.h5").exists()
    # another job may not take over this output folder ...
    other = _job_variant(experiment, "other", out="kill", learn={"C": 2.0})
    refused = _hpcdiff(1, "features", str(other))
    assert refused.returncode == 1 and "different job" in refused.stderr
    # ... the same job resumes, here as one plain process
    resumed = _ok(_hpcdiff(1, "features", str(job)))
    assert f"resuming: {len(partial)} of 36 frames already done" in resumed.stderr
    report = json.loads((experiment.parent / "out_kill" / "features-run.json").read_text())
    assert report["frames"]["done_before"] == len(partial)
    assert report["frames"]["processed"] == 36 - len(partial)
    got = read_features(experiment.parent / "out_kill" / "features.h5")
    want = read_features(experiment.parent / "out" / "features.h5")  # uninterrupted (train)
    assert got.keys == want.keys
    processing = got.meta.extra["processing"]
    assert processing["preprocess"].startswith("numpy on") and processing["features"]["layer"]
    np.testing.assert_allclose(got.features, want.features, rtol=1e-4, atol=1e-5)
    assert not shards.exists()  # checkpoints are removed once the result is written
    # a finished run is not overwritten without --force
    again = _hpcdiff(1, "features", str(job))
    assert again.returncode == 1 and "exists already" in again.stderr and "--force" in again.stderr


@pytest.mark.mpi
@pytest.mark.slow
@needs_mpiexec
def test_bad_frames_and_files_are_recorded_and_counted(experiment: Path) -> None:
    folder = experiment.parent / "bad"
    folder.mkdir()
    for f in sorted(experiment.parent.glob("frames_*.cxi")):
        shutil.copy(f, folder / f.name)
    with h5py.File(folder / "frames_001.cxi", "r+") as h5:
        # an inf needs a float dataset: the simulator writes int16 ADU, so rewrite as float32
        stored = h5["/entry_1/data_1/data"]
        values, attrs = stored[()].astype(np.float32), dict(stored.attrs)
        del h5["/entry_1/data_1/data"]
        data = h5.create_dataset("/entry_1/data_1/data", data=values, chunks=stored.chunks)
        data.attrs.update(attrs)
        frame = data[3]
        frame[0, 0] = np.inf
        data[3] = frame
    (folder / "frames_999.cxi").write_bytes(b"not an HDF5 file")
    for name in ("detector.geom", "labels.h5"):
        shutil.copy(experiment.parent / name, folder / name)
    shutil.copy(experiment, folder / "job.toml")
    job = _job_variant(folder / "job.toml", "strict", parallel={"max_reject_fraction": 0.01})
    proc = _hpcdiff(2, "features", str(job))
    # 2 of 37 rejected > 1 %: the job finishes every output, then fails with EX_DATAERR
    assert proc.returncode == 65, proc.stderr
    assert "rejected" in proc.stderr
    assert (folder / "out_strict" / "features.h5").exists()
    lines = (folder / "out_strict" / "features-rejects.jsonl").read_text().splitlines()
    rejects = [json.loads(line) for line in lines]
    assert {(Path(r["file"]).name, r["index"]) for r in rejects} == {
        ("frames_001.cxi", 3),
        ("frames_999.cxi", None),
    }
    assert all(r["reason"] for r in rejects)
    report = json.loads((folder / "out_strict" / "features-run.json").read_text())
    assert report["frames"]["rejected"] == 2 and report["frames"]["total"] == 36
    with h5py.File(folder / "out_strict" / "features.h5") as h5:
        assert h5["features"].shape[0] == 35


@pytest.mark.mpi
@pytest.mark.slow
@needs_mpiexec
def test_adapted_predictions_use_every_rank_frames(experiment: Path) -> None:
    """A model trained with transfer settings: the root adapts with all ranks' PCA scores,
    so 1 and 2 ranks agree, and both equal adapting the run's features file as a whole."""
    from hpcdiff.io.featurefile import read_features
    from hpcdiff.learn import DiffuseClassifier
    from hpcdiff.learn.transfer import predict_adapted

    learn = {"standardise": "scores", "recalibrate": "mixture"}
    train = _job_variant(experiment, "adapt", learn=learn)
    _ok(_hpcdiff(2, "classify", "train", str(train)))
    model_path = experiment.parent / "out_adapt" / "model.npz"
    model = DiffuseClassifier.load(model_path)
    assert model.metadata_["transfer"]["recalibrate"] == "mixture"
    preds = {}
    for n in (1, 2):
        job = _job_variant(experiment, f"adapt_pred{n}", learn=learn)
        _ok(_hpcdiff(n, "classify", "predict", str(job), "--model", str(model_path)))
        preds[n] = _predictions(experiment.parent / f"out_adapt_pred{n}" / "predictions.h5")
    np.testing.assert_allclose(preds[2]["probability"], preds[1]["probability"], atol=1e-5)
    feats = read_features(experiment.parent / "out_adapt" / "features.h5")
    want = predict_adapted(model, feats.features)  # the whole run, as one experiment
    row = {
        (str(f), int(i)): r for r, (f, i) in enumerate(zip(feats.files, feats.indices, strict=True))
    }
    files = [f.decode() if isinstance(f, bytes) else str(f) for f in preds[1]["frame_file"]]
    rows = [row[(f, int(i))] for f, i in zip(files, preds[1]["frame_index"], strict=True)]
    np.testing.assert_allclose(preds[1]["probability"], want[rows], atol=1e-4)

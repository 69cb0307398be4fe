"""Reader processes wired into the frame loop: the same frames, order, rejects and errors as
the reader thread, on compressed and uncompressed CXI runs; nothing left behind on the way
out (error, KeyboardInterrupt, SIGTERM with exit 75, a killed parent)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcdiff.config import ParallelConfig
from hpcdiff.errors import ConfigError, FormatError
from hpcdiff.io.cxi import FrameSource, write_cxi
from hpcdiff.parallel.frame_loop import distributed_map
from hpcdiff.parallel.mpi import SelfComm
from hpcdiff.parallel.reader_pool import RawFrames, choose_reader_processes, rank_raw_frames
from hpcdiff.parallel.shards import ShardStore
from hpcdiff.pipelines.classify import FrameReader

REPO = Path(__file__).resolve().parents[1]
LOOP_JOB = REPO / "tests" / "mpi" / "loop_job.py"
SHAPE = (16, 12)
KEEP = 2 + 2  # prefetch_batches + 2, as the classify job
DATA = "/entry_1/data_1/data"


def _shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("psm_*")} if Path("/dev/shm").is_dir() else set()


def _run(tmp_path: Path, compression: str) -> list[str]:
    """Two int16 CXI files of 11 + 6 frames, written with ``compression``."""
    rng = np.random.default_rng(3)
    frames = rng.integers(-200, 3000, (17, *SHAPE)).astype(np.int16)
    files = [str(tmp_path / f"{compression}-a.cxi"), str(tmp_path / f"{compression}-b.cxi")]
    write_cxi(files[0], frames[:11], compression=compression)
    write_cxi(files[1], frames[11:], compression=compression)
    return files


def _process(batch) -> dict[str, np.ndarray]:
    f = batch.frames
    return {"sum": f.astype(np.float64).sum(axis=(1, 2)), "corner": f[:, 0, :4].astype(np.int32)}


def _loop(files, store_dir: Path, *, processes: int, batch: int = 3, process=_process):
    source = FrameSource(files)
    store, _ = ShardStore.prepare(store_dir, config_hash="t", n_frames=source.n_frames, files=files)
    raw = RawFrames(source, processes=processes, batch_size=batch, keep=KEEP)
    out = distributed_map(
        SelfComm(),
        n_frames=source.n_frames,
        read=FrameReader(source, raw=raw.read_raw),
        process=process,
        store=store,
        config_hash="t",
        batch_size=batch,
        checkpoint_every=4,
        prefetch_batches=2,
        progress_interval_s=60,
        plan=raw.plan,
    )
    return out, store, raw


@pytest.mark.parametrize("compression", ["lz4", "gzip", "none"])
def test_processes_give_the_same_frames_order_and_results_as_the_thread(tmp_path, compression):
    files = _run(tmp_path, compression)
    before = _shm_segments()
    _, ref, thread = _loop(files, tmp_path / "thread", processes=0)
    _, got, procs = _loop(files, tmp_path / "procs", processes=2)
    assert thread.from_processes == 0 and procs.from_processes == 6  # ceil(17 / 3) ranges
    want_frames, want = ref.read(["sum", "corner"])
    got_frames, arrays = got.read(["sum", "corner"])
    assert got_frames.tolist() == want_frames.tolist() == list(range(17))
    for key in ("sum", "corner"):
        np.testing.assert_array_equal(arrays[key], want[key])
    truth = np.concatenate(
        [FrameSource([f]).read_raw(0, n) for f, n in zip(files, (11, 6), strict=True)]
    )
    np.testing.assert_array_equal(arrays["corner"], truth[:, 0, :4])
    assert got.rejects() == ref.rejects() == []
    assert not mp.active_children()
    assert _shm_segments() <= before


def test_batches_held_by_a_slow_consumer_are_not_overwritten(tmp_path):
    files = _run(tmp_path, "lz4")
    held = []

    def process(batch):  # keeps every batch's frames (views of shared memory) to the end
        held.append(batch.frames)
        time.sleep(0.01)
        return _process(batch)

    _, store, _ = _loop(files, tmp_path / "s", processes=2, batch=2, process=process)
    truth = np.concatenate(
        [FrameSource([f]).read_raw(0, n) for f, n in zip(files, (11, 6), strict=True)]
    )
    _, arrays = store.read(["sum"])
    np.testing.assert_array_equal(arrays["sum"], truth.astype(np.float64).sum(axis=(1, 2)))


def _damage_chunk(path: str, index: int) -> None:
    with h5py.File(path) as h5:
        info = h5[DATA].id.get_chunk_info(index)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 8)
        fh.write(b"\xff" * 64)


def test_a_damaged_chunk_gives_the_same_rejects_and_reasons(tmp_path):
    files = _run(tmp_path, "gzip")
    _damage_chunk(files[0], 4)
    _, ref, _ = _loop(files, tmp_path / "thread", processes=0)
    _, got, _ = _loop(files, tmp_path / "procs", processes=2)
    assert [f for f, _ in got.rejects()] == [4]
    assert got.rejects() == ref.rejects()
    reason = got.rejects()[0][1]
    assert "gzip-a.cxi" in reason and f"dataset {DATA}" in reason
    assert got.read(["sum"])[0].tolist() == ref.read(["sum"])[0].tolist()


def test_a_vanished_file_is_the_same_format_error_naming_file_and_dataset(tmp_path):
    files = _run(tmp_path, "lz4")
    source = FrameSource(files)
    raw = RawFrames(source, processes=2, batch_size=4)
    assert raw.dtype == np.int16
    source.close()
    os.remove(files[1])  # gone after the run was opened
    with pytest.raises(FormatError) as here:
        source.read_raw(8, 12)
    with raw.plan([(0, 4), (4, 8), (8, 12)]):
        np.testing.assert_array_equal(raw.read_raw(0, 4), source.read_raw(0, 4))
        raw.read_raw(4, 8)
        with pytest.raises(FormatError) as there:
            raw.read_raw(8, 12)
    assert str(there.value) == str(here.value)  # the error the thread gives
    assert there.value.path == files[1] and "not found" in str(there.value)
    assert not mp.active_children()


def test_an_error_or_keyboard_interrupt_in_the_loop_leaves_nothing_behind(tmp_path):
    files = _run(tmp_path, "lz4")
    before = _shm_segments()
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):

        def process(batch, exc=exc):
            if batch.start >= 3:
                raise exc
            return _process(batch)

        with pytest.raises(type(exc)):
            _loop(files, tmp_path / f"s-{type(exc).__name__}", processes=2, process=process)
        assert not mp.active_children()
        assert _shm_segments() <= before


def test_default_processes_zero_on_cpu_ranks_a_few_on_gpu_ranks():
    assert ParallelConfig().reader_processes is None
    assert choose_reader_processes(None, device="cpu", threads=16) == 0
    assert choose_reader_processes(None, device="cuda:0", threads=8) == 7
    assert choose_reader_processes(None, device="cuda:1", threads=1) == 1
    assert choose_reader_processes(None, device="cuda:0", threads=64) == 8
    assert choose_reader_processes(3, device="cpu", threads=2) == 3
    assert choose_reader_processes(0, device="cuda:0", threads=8) == 0


class _Unpicklable:
    slab_shape = SHAPE

    def __reduce__(self):
        raise TypeError("holds a live DataSource")

    def read(self, start, stop):
        return np.zeros((stop - start, *SHAPE), np.float32)


def test_a_source_that_cannot_reach_processes_is_an_error_only_when_asked_for():
    with pytest.raises(ConfigError, match=r"reader_processes = 2: .*cannot be sent"):
        rank_raw_frames(_Unpicklable(), configured=2, device="cpu", threads=4, batch_size=4, keep=4)
    raw = rank_raw_frames(
        _Unpicklable(), configured=None, device="cuda:0", threads=4, batch_size=4, keep=4
    )
    assert raw.processes == 0 and raw.read_raw(0, 2).shape == (2, *SHAPE)


def test_workers_leave_when_their_parent_is_killed(tmp_path):
    files = _run(tmp_path, "lz4")
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from hpcdiff.io.cxi import FrameSource\n"
        "from hpcdiff.parallel.reader_pool import RawFrames\n"
        "import multiprocessing as mp\n"
        "if __name__ == '__main__':\n"
        f"    raw = RawFrames(FrameSource({files!r}), processes=2, batch_size=1)\n"
        "    with raw.plan([(i, i + 1) for i in range(17)]):\n"
        "        raw.read_raw(0, 1)\n"
        "        print(' '.join(str(p.pid) for p in mp.active_children()), flush=True)\n"
        "        time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids)
    finally:
        proc.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (not yet reaped by init) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_stops_with_exit_75_and_leaves_nothing_behind(tmp_path):
    from hpcdiff.parallel.signals import EXIT_PREEMPTED

    files = _run(tmp_path, "lz4")
    before = _shm_segments()
    out = tmp_path / "run"
    out.mkdir()
    cmd = [sys.executable, str(LOOP_JOB), str(out), *files, "--batch", "1", "--delay-s", "0.1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [*cmd, "--reader-processes", "2"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not list((out / "loop.shards").glob("shard-*.h5")) and time.monotonic() < deadline:
            time.sleep(0.05)
        children = _children(proc.pid)
        assert len(children) >= 2  # the reader processes (and the resource tracker)
        # as SLURM does: the signal to every process of the job
        for pid in [proc.pid, *children]:
            os.kill(pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "Traceback" not in err
    time.sleep(0.5)
    assert not any(_alive(p) for p in children)
    assert _shm_segments() <= before
    partial = ShardStore(out / "loop.shards").done_frames()
    assert 0 < len(partial) < 17


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(")")[-1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


# --------------------------------------------------------------------------- the classify job

needs_mpiexec = pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec")


def _features_job(job: Path, name: str, processes: int) -> Path:
    text = job.read_text().replace('dir = "out"', f'dir = "out_{name}"')
    text = text.replace("[parallel]\n", f"[parallel]\nreader_processes = {processes}\n")
    path = job.parent / f"job_{name}.toml"
    path.write_text(text)
    return path


def _features(out: Path) -> dict[str, np.ndarray]:
    with h5py.File(out / "features.h5") as h5:
        return {k: h5[k][()] for k in ("features", "frame_file", "frame_index")}


@pytest.mark.mpi
@pytest.mark.slow
@needs_mpiexec
def test_features_job_with_reader_processes_equals_the_thread_on_1_and_2_ranks(tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "mpi"))
    from tiny_experiment import make_experiment

    job = make_experiment(tmp_path, 16, per_file=8)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "SLURM_"))}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    before = _shm_segments()
    runs = {"thread": (1, 0), "procs": (1, 2), "mpi2": (2, 2)}
    for name, (ranks, processes) in runs.items():
        cmd = [
            sys.executable,
            "-m",
            "hpcdiff",
            "features",
            str(_features_job(job, name, processes)),
        ]
        if ranks > 1:
            cmd = [shutil.which("mpiexec"), "-n", str(ranks), *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
        assert proc.returncode == 0, proc.stderr
        report = (tmp_path / f"out_{name}" / "features-run.json").read_text()
        want = f"{processes} reader process(es)" if processes else "1 reader thread"
        assert want in report
        # each rank's CPU in the reader processes, and the frames they read
        cpu = [t.get("reader_cpu") for t in json.loads(report)["timings"]]
        assert all(c is None for c in cpu) if not processes else sum(c["frames"] for c in cpu) == 16
    ref = _features(tmp_path / "out_thread")
    assert len(ref["frame_index"]) == 16
    for name in ("procs", "mpi2"):
        got = _features(tmp_path / f"out_{name}")
        np.testing.assert_array_equal(got["frame_file"], ref["frame_file"])
        np.testing.assert_array_equal(got["frame_index"], ref["frame_index"])
        if name == "procs":  # the same batches: the same bits
            np.testing.assert_array_equal(got["features"], ref["features"])
        else:  # other batches on two ranks, as test_mpi_job compares them
            np.testing.assert_allclose(got["features"], ref["features"], atol=1e-5)
    assert _shm_segments() <= before


def test_too_little_shared_memory_is_an_error_only_when_asked_for(tmp_path, monkeypatch, caplog):
    import hpcdiff.parallel.process_reader as pr

    files = _run(tmp_path, "none")
    source = FrameSource(files)
    # 3 processes + keep 4 = 7 batches of 4 frames of 16 x 12 int16: 10,752 bytes
    monkeypatch.setattr(pr, "shared_memory_free", lambda: 10_000)
    kw = {"device": "cuda:0", "threads": 4, "batch_size": 4, "keep": 4}
    with pytest.raises(ConfigError, match=r"reader_processes = 3: /dev/shm has 0 MiB free"):
        rank_raw_frames(source, configured=3, **kw)
    with caplog.at_level("WARNING", logger="hpcdiff.parallel"):
        assert rank_raw_frames(source, configured=None, **kw).processes == 0
    assert "one reader thread" in caplog.text
    monkeypatch.setattr(pr, "shared_memory_free", lambda: 10_752)
    assert rank_raw_frames(source, configured=None, **kw).processes == 3


def test_a_source_without_read_raw_reads_float32_through_processes(tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    from test_sources_nxmx import N_FS, N_SS, write_nxmx

    from hpcdiff.io.sources import open_source

    frames = np.random.default_rng(1).integers(0, 500, (7, 2 * N_SS, N_FS)).astype(np.int32)
    source = open_source([write_nxmx(tmp_path / "run.nxs", frames)], kind="nxmx")
    raw = RawFrames(source, processes=2, batch_size=3)
    assert raw.dtype == np.float32
    ranges = [(0, 3), (3, 6), (6, 7)]
    with raw.plan(ranges):
        got = np.concatenate([raw.read_raw(a, b).copy() for a, b in ranges])
    assert raw.from_processes == 3
    np.testing.assert_array_equal(got, source.read(0, 7))


def test_a_reader_process_that_dies_is_an_error_naming_it_and_nothing_is_left(tmp_path):
    files = _run(tmp_path, "lz4")
    before = _shm_segments()
    raw = RawFrames(FrameSource(files), processes=1, batch_size=1, keep=1)
    ranges = [(i, i + 1) for i in range(17)]
    with pytest.raises(RuntimeError, match=r"reader process hpcdiff-reader-0 died"):  # noqa: PT012
        with raw.plan(ranges):
            raw.read_raw(0, 1)
            (worker,) = mp.active_children()
            os.kill(worker.pid, signal.SIGKILL)
            for a, b in ranges[1:]:
                raw.read_raw(a, b)
    assert not mp.active_children()
    assert _shm_segments() <= before

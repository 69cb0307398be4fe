"""The Fourier job stops on a signal with its place saved, and a rerun resumes to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_fourier_job import write_experiment

from hpcdiff.config import load_job
from hpcdiff.parallel.signals import EXIT_PREEMPTED, Preempted, StopFlag

N = 24


def _job_text(root: Path, **fourier: object) -> Path:
    """The experiment's job with small tasks and a checkpoint after every merge task."""
    text = (root / "job.toml").read_text()
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in fourier.items())
    text = text.replace("frames_per_task = 3\n", "frames_per_task = 2\n" + extra)
    text = text.replace("similarity_block = 5\n", "similarity_block = 2\n")
    job = root / "job_resume.toml"
    job.write_text(text)
    return job


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "exp"
    write_experiment(root, n=N)
    return _job_text(root, checkpoint_tasks=1)


def _outputs(out: Path) -> dict[str, np.ndarray]:
    got = {}
    with h5py.File(out / "merged.h5") as h5:
        for k in ("sums", "counts", "intensity"):
            got[f"merged/{k}"] = h5[k][()]
    with h5py.File(out / "similarity.h5") as h5:
        for k in ("common_arc", "overlap", "image_distance", "image_correlation", "mean_z"):
            got[f"similarity/{k}"] = h5[k][()]
    with h5py.File(out / "diffusion.h5") as h5:
        for g in ("common_arc", "image", "image_correlation"):
            got[f"diffusion/{g}"] = h5[g]["coords"][()]
        got["diffusion/mean_z"] = h5["frame_scores"]["mean_z"][()]
    return got


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


class _Trigger:
    """A log stream that sets a stop flag when a line containing ``text`` is written."""

    def __init__(self, flag: StopFlag, text: str) -> None:
        self.flag, self.text = flag, text

    def write(self, s: str) -> int:
        if self.text in s:
            self.flag.set(signal.SIGTERM)
        return len(s)

    def flush(self) -> None:
        pass


def _run(job_path: Path, out: Path, *, stop=None, log=None, force=False, report=None):
    from distributed import Client

    from hpcdiff.pipelines.fourier import run_fourier

    job = load_job(job_path)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c:
        with open(os.devnull, "w") as null:
            return run_fourier(
                job, c, out_dir=out, stop=stop, log=log or null, force=force, report=report
            )


@pytest.fixture(scope="module")
def reference(experiment, tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("reference")
    _run(experiment, out)
    assert not (out / "fourier.work").exists()
    return _outputs(out)


def test_stop_during_merge_resumes_to_the_same_result(experiment, reference, tmp_path):
    flag = StopFlag()
    with pytest.raises(Preempted, match="during the merge"):
        _run(experiment, tmp_path, stop=flag, log=_Trigger(flag, "merge (wave 3/"))
    work = tmp_path / "fourier.work"
    with np.load(work / "merge.npz") as z:
        assert 3 <= len(z["done"]) < N // 2  # some, not all, merge tasks saved
    assert not (tmp_path / "fourier_summary.json").exists()
    assert not list(tmp_path.rglob(".*.part"))
    result = _run(experiment, tmp_path)
    assert result.summary["resumed"]["merge_tasks_reused"] >= 3
    _assert_same(_outputs(tmp_path), reference)
    assert not work.exists()


def test_kill_between_writes_is_finished_by_a_rerun(experiment, reference, tmp_path, monkeypatch):
    """Outputs written but no summary (killed between writes): the rerun completes the set."""
    import hpcdiff.pipelines.fourier as fourier

    def killed(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fourier, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(experiment, tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "merged.h5").exists() and not (tmp_path / "fourier_summary.json").exists()
    result = _run(experiment, tmp_path)
    assert result.summary["resumed"]["similarity_blocks_reused"] == N // 2
    _assert_same(_outputs(tmp_path), reference)
    # finished now: a third run is refused without --force
    from hpcdiff.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match="finished"):
        _run(experiment, tmp_path)


def test_kill_before_the_report_is_finished_by_a_rerun(experiment, reference, tmp_path):
    """The report comes before the summary: a run killed while writing its report has no
    summary (it does not look finished), and the rerun writes the report, then the summary."""
    from hpcdiff.pipelines.reports import write_fourier_report

    def killed(_result):
        (tmp_path / "report").mkdir()  # a report half written
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(experiment, tmp_path, report=killed)
    assert (tmp_path / "diffusion.h5").exists() and (tmp_path / "merged.h5").exists()
    assert not (tmp_path / "fourier_summary.json").exists()
    assert (tmp_path / "fourier.work").is_dir()
    summary_there = []

    def report(result):
        summary_there.append((tmp_path / "fourier_summary.json").exists())
        return write_fourier_report(load_job(experiment), result, tmp_path)

    result = _run(experiment, tmp_path, report=report)
    assert summary_there == [False]
    assert (tmp_path / "report" / "index.html").is_file()
    assert json.loads((tmp_path / "fourier_summary.json").read_text()) == json.loads(
        json.dumps(result.summary)
    )
    _assert_same(_outputs(tmp_path), reference)
    assert not (tmp_path / "fourier.work").exists()


def test_strays_without_checkpoints_are_refused(experiment, tmp_path):
    from hpcdiff.errors import OutputExistsError

    (tmp_path / "similarity.h5").write_bytes(b"not ours")
    with pytest.raises(OutputExistsError, match="no checkpoints"):
        _run(experiment, tmp_path)
    assert (tmp_path / "similarity.h5").read_bytes() == b"not ours"


def test_sigterm_exits_75_and_rerun_resumes(experiment, reference, tmp_path):
    """A real process sent SIGTERM after its first checkpoint: exit 75, then a resumed rerun."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hpcdiff", "fourier", str(experiment), "--out", str(out)]
    proc = subprocess.Popen([*cmd, "--n-workers", "1"], env=env, stderr=subprocess.PIPE, text=True)
    ckpt = out / "fourier.work" / "merge.npz"
    t0 = time.monotonic()
    while not ckpt.exists() and proc.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert "exit status 75" in err
    assert (out / "fourier.work").is_dir() and not (out / "fourier_summary.json").exists()
    assert not list(out.rglob(".*.part"))
    # the requeued job runs with other workers: the same checkpoints are resumed
    rerun = subprocess.run(
        [*cmd, "--n-workers", "2"], env=env, stderr=subprocess.PIPE, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming" in rerun.stderr
    _assert_same(_outputs(out), reference)
    assert (out / "report" / "index.html").is_file()
    assert not (out / "fourier.work").exists()


def test_work_folder_of_another_job_is_refused_and_an_empty_one_reused(tmp_path):
    from hpcdiff.errors import OutputExistsError
    from hpcdiff.pipelines.fourier_work import FourierWork

    root = tmp_path / "fourier.work"
    (root / "frames").mkdir(parents=True)  # killed before its state.json: reused
    assert FourierWork(root, "aaaa").prepare(n_frames=4, force=False) is False
    (root / "frames" / ".chunk.part").write_bytes(b"")
    assert FourierWork(root, "aaaa").prepare(n_frames=4, force=False) is True
    assert not (root / "frames" / ".chunk.part").exists()  # stale temporary files swept
    with pytest.raises(OutputExistsError, match="another Fourier job"):
        FourierWork(root, "bbbb").prepare(n_frames=4, force=False)
    assert FourierWork(root, "bbbb").prepare(n_frames=4, force=True) is False


def _folded_job(experiment: Path) -> Path:
    """The resume job with ``dense_similarity_max_frames`` below N: blocks are folded."""
    job = experiment.with_name("job_folded.toml")
    text = experiment.read_text()
    assert "checkpoint_tasks = 1\n" in text
    job.write_text(text.replace("checkpoint_tasks = 1\n", "checkpoint_tasks = 1\n"
                                "dense_similarity_max_frames = 4\n"))  # fmt: skip
    return job


def _folded_outputs(out: Path) -> dict[str, np.ndarray]:
    got = {}
    with h5py.File(out / "similarity.h5") as h5:
        assert not h5.attrs["dense_matrices"] and "common_arc" not in h5
        for k in ("mean_z", "mean_cc", "significance", "mean_overlap"):
            got[f"similarity/{k}"] = h5[k][()]
        for g in ("common_arc", "image_distance", "image_correlation"):
            for d in ("indices", "values"):
                got[f"similarity/knn/{g}/{d}"] = h5[f"knn/{g}/{d}"][()]
    with h5py.File(out / "diffusion.h5") as h5:
        for g in ("common_arc", "image", "image_correlation"):
            got[f"diffusion/{g}"] = h5[g]["coords"][()]
    return got


def test_stop_during_folded_similarity_resumes_to_the_same_result(
    experiment, reference, tmp_path, monkeypatch
):
    """Above dense_similarity_max_frames no N x N block is kept: each is folded into the
    per-frame partial results as it arrives and never written.  A stop part-way through
    the similarity saves the fold; the rerun computes only the blocks not folded and gives
    the uninterrupted run's result bit for bit, which is the dense run's (scores,
    embedding)."""
    from hpcdiff.pipelines.fourier_work import FourierWork, SimilarityFold

    job = _folded_job(experiment)
    folded: list[tuple[int, int]] = []
    spilled: list[tuple[int, int]] = []
    real_add, real_save = SimilarityFold.add, FourierWork.save_block

    def add(self, rows):
        real_add(self, rows)
        folded.append((rows.start, rows.stop))

    def save_block(self, rows):
        spilled.append((rows.start, rows.stop))
        real_save(self, rows)

    monkeypatch.setattr(SimilarityFold, "add", add)
    monkeypatch.setattr(FourierWork, "save_block", save_block)
    whole = tmp_path / "whole"
    _run(job, whole)
    assert sorted(set(folded)) == sorted(folded) and len(folded) == N // 2  # each once
    assert not spilled  # no row block is written
    expected = _folded_outputs(whole)
    for key in ("diffusion/common_arc", "diffusion/image", "diffusion/image_correlation"):
        np.testing.assert_array_equal(expected[key], reference[key], err_msg=key)
    np.testing.assert_array_equal(expected["similarity/mean_z"], reference["similarity/mean_z"])

    class AfterThreeBlocks:
        def __bool__(self) -> bool:
            return len(folded) >= 3

    folded.clear()
    out = tmp_path / "stopped"
    with pytest.raises(Preempted, match="during the similarity"):
        _run(job, out, stop=AfterThreeBlocks())
    work = out / "fourier.work"
    with np.load(work / "similarity_fold.npz") as z:
        n_folded = len(z["done"])
        assert 3 <= n_folded < N // 2
    assert not list((work / "similarity").glob("block_*.npz"))
    assert not (out / "fourier_summary.json").exists()
    folded.clear()
    result = _run(job, out)
    assert not spilled
    assert result.summary["resumed"]["similarity_blocks_reused"] == n_folded
    assert len(folded) == N // 2 - n_folded  # only the blocks not folded are computed
    _assert_same(_folded_outputs(out), expected)
    assert not work.exists()

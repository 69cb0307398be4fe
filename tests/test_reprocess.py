"""Overnight reprocessing without a cluster: runs, per-run jobs, submissions, tasks, summary.

SLURM is replaced by a recording ``sbatch`` callable and the MPI predict job by a small
script that writes what ``hpcdiff classify predict`` writes (predictions.h5 with a
``class`` dataset, predict-run.json); the real thing runs in tests/test_slurm_cluster.py.
"""

from __future__ import annotations

import json
import sys
import textwrap
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcdiff.cli import main
from hpcdiff.config import SlurmConfig, load_job
from hpcdiff.errors import ConfigError, OutputExistsError
from hpcdiff.parallel.signals import EXIT_PREEMPTED
from hpcdiff.pipelines import reprocess as rp
from hpcdiff.slurm.env import SlurmEnvironment

FAKE_PREDICT = textwrap.dedent(
    """
    import json, sys, tomllib
    from pathlib import Path
    import h5py, numpy as np

    job = tomllib.loads(Path(sys.argv[1]).read_text())
    out = Path(job["output"]["dir"])
    out.mkdir(parents=True, exist_ok=True)
    n = len(job["experiment"]["frames"]) * 4
    stop = Path(job["experiment"]["frames"][0]).with_name("PREEMPT")
    if stop.exists():
        stop.unlink()
        shards = out / "predict.shards"
        shards.mkdir(exist_ok=True)
        (shards / "shard-0000000000-000002.h5").write_bytes(b"")
        sys.exit(75)
    classes = (np.arange(n) % 4 == 0).astype(np.int16)
    with h5py.File(out / "predictions.h5", "w") as f:
        f["class"] = classes
    report = {"frames": {"total": n, "done_before": 0, "processed": n, "rejected": 1}}
    (out / "predict-run.json").write_text(json.dumps(report))
    """
)


@pytest.fixture()
def experiment(tmp_path: Path) -> Path:
    """Three run folders (r01 with 2 files, r02 and r03 with 1), a model, the job file."""
    for name, n_files in (("r01", 2), ("r02", 1), ("r03", 1)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        for i in range(n_files):
            (run / f"frames_{i:03d}.cxi").write_bytes(b"")
        (run / "notes.txt").write_text("not a frame file")
    (tmp_path / "model.h5").write_bytes(b"")
    (tmp_path / "predict.py").write_text(FAKE_PREDICT)
    job = tmp_path / "experiment.toml"
    job.write_text(
        textwrap.dedent(
            """
            [experiment]
            name = "exp1"
            [reprocess]
            runs = ["runs/r*/"]
            [output]
            dir = "out"
            model = "model.h5"
            [slurm]
            tasks_per_node = 2
            gpus_per_task = 0
            array_throttle = 2
            """
        )
    )
    return job


class RecordingSbatch:
    """Stands in for sbatch: keeps each script, returns increasing job ids."""

    def __init__(self) -> None:
        self.scripts: list[str] = []

    def __call__(self, script: str) -> str:
        self.scripts.append(script)
        return str(100 + len(self.scripts))


def _task(job_path: Path, record: dict, index: int) -> int:
    job = load_job(job_path)
    env = SlurmEnvironment(
        job_id=200 + index, array_job_id=int(record["array_job_id"]), array_task_id=index
    )
    return rp.run_task(
        job,
        Path(record["submission_dir"]),
        index,
        launcher=[],
        environment=env,
        command=[sys.executable, str(job_path.parent / "predict.py")],
    )


def test_runs_are_found_sorted_and_checked(experiment: Path, tmp_path: Path) -> None:
    runs = rp.discover_runs(load_job(experiment))
    assert [r.name for r in runs] == ["r01", "r02", "r03"]
    assert [r.index for r in runs] == [0, 1, 2]
    assert [Path(f).name for f in runs[0].experiment["frames"]] == [
        "frames_000.cxi",
        "frames_001.cxi",
    ]
    (tmp_path / "runs" / "r04").mkdir()
    with pytest.raises(ConfigError, match=r"r04 holds no frame files matching"):
        rp.discover_runs(load_job(experiment))
    experiment.write_text(experiment.read_text().replace("runs/r*/", "nowhere/*"))
    with pytest.raises(ConfigError, match=r"\[reprocess.runs\[0\]\] 'nowhere/\*' matches no run"):
        rp.discover_runs(load_job(experiment))


def test_model_and_runs_are_required(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text("[reprocess]\nruns = ['x']\n")
    with pytest.raises(ConfigError, match=r"\[output\] model is missing"):
        rp.load_experiment(job)
    job.write_text("[output]\nmodel = 'm.h5'\n")
    with pytest.raises(ConfigError, match=r"\[reprocess\] runs is missing"):
        rp.load_experiment(job)


def test_dry_run_writes_nothing(experiment: Path) -> None:
    record = rp.submit_experiment(load_job(experiment), SlurmConfig(array_throttle=2))
    assert record["runs"] == ["r01", "r02", "r03"] and record["array_job_id"] is None
    assert "#SBATCH --array=0-2%2" in record["array_script"]
    assert not (experiment.parent / "out").exists()


def test_overnight_cycle_resumes_and_summarises(experiment: Path) -> None:
    job = load_job(experiment)
    settings = job.slurm
    sbatch = RecordingSbatch()
    first = rp.submit_experiment(job, settings, sbatch=sbatch)
    array, summary = sbatch.scripts
    assert first["array_job_id"] == "101" and first["summary_job_id"] == "102"
    assert "#SBATCH --array=0-2%2" in array and "--task --submission" in array
    assert "#SBATCH --dependency=afterany:101" in summary and "--summarise" in summary
    assert "--gpus-per-task" not in summary and "#SBATCH --ntasks-per-node=1" in summary

    # per-run job files: the run's frames, its own output folder, the experiment's model
    run_job = load_job(first["run_jobs"][0])
    assert [f.name for f in run_job.frame_files()] == ["frames_000.cxi", "frames_001.cxi"]
    assert run_job.output.dir == experiment.parent / "out" / "runs" / "r01"
    assert run_job.output.model == experiment.parent / "model.h5"
    assert run_job.reprocess is None

    # task 0 finishes; task 1 is preempted after a checkpoint; task 2 never ran
    (experiment.parent / "runs" / "r02" / "PREEMPT").write_text("")
    assert _task(experiment, first, 0) == 0
    assert _task(experiment, first, 1) == EXIT_PREEMPTED
    states = {s.run.name: s for s in rp.experiment_status(job)}
    assert states["r01"].state == "done"
    assert states["r02"].state == "left" and "preempted" in states["r02"].detail
    assert states["r02"].frames_checkpointed == 2
    assert states["r03"].state == "left" and states["r03"].detail == "not started"

    # a second submission leaves out the finished run and the one SLURM still holds
    queue = {"run:r02": "PENDING", "101_1": "PENDING"}
    second = rp.submit_experiment(job, settings, sbatch=sbatch, queue=queue)
    assert second["runs"] == ["r03"]
    assert second["skipped"] == {"r01": "done", "r02": "pending in SLURM"}
    assert "#SBATCH --array=0-0%1" in sbatch.scripts[2]
    assert Path(second["submission_dir"]).name == "002"
    assert rp.latest_submission(rp.Layout(job.output.dir))["array_job_id"] == "103"

    assert _task(experiment, first, 1) == 0  # the requeued task resumes and finishes
    report = rp.summarise(job)
    assert report["failed"] == [] and report["incomplete"] == ["r03"]
    assert report["totals"] == {"runs": 3, "done": 2, "frames": 12, "rejects": 2}
    r01 = report["runs"][0]
    assert r01["diffuse_fraction"] == pytest.approx(0.25) and r01["frames"] == 8
    png = (experiment.parent / "out" / "diffuse-fraction.png").read_bytes()
    assert png.startswith(b"\x89PNG")

    assert _task(experiment, second, 0) == 0
    assert [s.state for s in rp.experiment_status(job)] == ["done"] * 3
    third = rp.submit_experiment(job, settings, sbatch=sbatch)
    assert third["runs"] == [] and third["array_job_id"] is None
    assert "--dependency" not in sbatch.scripts[-1]


def test_failed_and_lost_tasks(experiment: Path) -> None:
    job = load_job(experiment)
    record = rp.submit_experiment(job, job.slurm, sbatch=RecordingSbatch())
    (experiment.parent / "predict.py").write_text("import sys\nsys.exit(3)\n")
    assert _task(experiment, record, 2) == 3
    status = {s.run.name: s for s in rp.experiment_status(job)}["r03"]
    assert status.state == "failed" and "exited with status 3" in status.detail
    # a task recorded as running that squeue no longer knows is failed, not running
    state = experiment.parent / "out" / "state" / "r01.json"
    state.write_text(json.dumps({"state": "running", "task": "101_0", "host": "n1"}))
    assert {s.run.name: s.state for s in rp.experiment_status(job)}["r01"] == "running"
    lost = {s.run.name: s for s in rp.experiment_status(job, queue={})}["r01"]
    assert lost.state == "failed" and "no longer in SLURM" in lost.detail
    report = rp.summarise(job, queue={})
    assert report["failed"] == ["r01", "r03"]


def test_changed_experiment_job_is_not_silently_rewritten(experiment: Path) -> None:
    job = load_job(experiment)
    rp.submit_experiment(job, job.slurm, sbatch=RecordingSbatch())
    experiment.write_text(experiment.read_text() + "\n[background]\nmethod = 'local'\n")
    changed = load_job(experiment)
    with pytest.raises(OutputExistsError, match=r"r01\.toml exists with other settings"):
        rp.submit_experiment(changed, changed.slurm, sbatch=RecordingSbatch())
    rp.submit_experiment(changed, changed.slurm, sbatch=RecordingSbatch(), force=True)
    text = (experiment.parent / "out" / "jobs" / "r01.toml").read_text()
    assert tomllib.loads(text)["background"]["method"] == "local"


def test_per_run_job_files_as_runs(experiment: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.cxi").write_bytes(b"")
    (other / "job.toml").write_text("[experiment]\nname = 'x'\nframes = ['a.cxi']\n")
    experiment.write_text(
        experiment.read_text().replace(
            'runs = ["runs/r*/"]', 'runs = ["runs/r0[12]/", "other/job.toml"]'
        )
    )
    runs = rp.discover_runs(load_job(experiment))
    assert [r.name for r in runs] == ["other", "r01", "r02"]
    assert runs[0].experiment["frames"] == [str((other / "a.cxi").resolve())]


def test_cli_status_and_summary(experiment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = load_job(experiment)
    record = rp.submit_experiment(job, job.slurm, sbatch=RecordingSbatch())
    assert _task(experiment, record, 0) == 0
    assert main(["status", str(experiment), "--no-squeue"]) == 0
    out = capsys.readouterr().out
    assert "r01  done" in out and "1 done, 0 running, 0 failed, 2 left" in out
    assert main(["status", str(experiment), "--no-squeue", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["left"] == 2
    assert main(["reprocess", str(experiment), "--summarise"]) == 0
    assert "1 of 3 runs done, 8 frames" in capsys.readouterr().out
    with h5py.File(experiment.parent / "out" / "runs" / "r01" / "predictions.h5") as f:
        assert np.asarray(f["class"]).sum() == 2
    assert main(["reprocess", str(experiment), "--dry-run"]) == 0
    assert "would submit an array of 2 run(s): r02, r03" in capsys.readouterr().out

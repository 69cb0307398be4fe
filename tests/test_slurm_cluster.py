"""Against a real single-node SLURM cluster started by the test session (tests/slurm_cluster.py).

* an MPI classify job submitted with ``hpcdiff slurm submit`` runs 2 ranks (srun --mpi=pmi2)
  and writes its model;
* an overnight reprocessing of three small simulated runs as a throttled array, one task
  sent USR1 part-way (it checkpoints, exits 75 and is requeued), ends with a complete
  experiment report and no frame computed twice; ``hpcdiff status`` agrees with squeue
  on the way and with the output folder at the end; resubmitting submits no run.

Skipped, with the reason, where SLURM cannot be installed (no root, no apt-get).
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, running_cluster

from hpcdiff.cli import main
from hpcdiff.config import SimulateConfig

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

COMMON = """
[background]
image_size_px = 64
[features]
weights = "random:0"
layer = "gap"
batch_size = 2
[parallel]
checkpoint_every = 2
[learn]
n_components = 4
n_train = 12
n_test = 4
[slurm]
job_name = "hpcdiff-test"
tasks_per_node = 2
gpus_per_task = 0
cpus_per_task = 1
time_limit_min = 10
signal_ahead_s = 60
array_throttle = 2
log_dir = "logs"
# One node: shared memory only.  The pip MPICH's UCX sometimes fails MPI_Init on a loaded
# machine while estimating TCP bandwidth ("invalid bandwidth 0.00", pmodels/mpich#7417).
setup = ["export UCX_TLS=self,sm"]
"""
RUN_FRAMES = {"r01": 32, "r02": 8, "r03": 8}
"""Frames per run; r01 is long enough to be signalled part-way."""


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    yield from running_cluster(tmp_path_factory)


def _wait(
    condition: Callable[[], object],
    *,
    timeout_s: float,
    what: str,
    cluster: SlurmCluster,
    poll_s: float = 0.2,
) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    queue = cluster.run(["squeue"], check=False).stdout
    raise AssertionError(
        f"timed out after {timeout_s} s waiting for {what}\n{queue}\n"
        f"jobcomp: {cluster.job_states()}"
    )


def _step_ranks(run_job: str, exclude: set[int]) -> list[int]:
    """PIDs of the ranks running ``hpcdiff classify predict RUN_JOB`` (not srun, not the runner)."""
    ranks = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in exclude:
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in argv if w]
        if run_job in words and "predict" in words and Path(words[0]).name != "srun":
            ranks.append(int(proc.name))
    return sorted(ranks)


def _signal_pending(pid: int, signum: int) -> bool:
    """Whether ``signum`` waits, undelivered, on a (stopped) process."""
    bit = 1 << (signum - 1)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("SigPnd", "ShdPnd") and int(value.strip(), 16) & bit:
            return True
    return False


def _finished(cluster: SlurmCluster, job_id: str) -> str | None:
    """End state of a job from jobcomp once squeue no longer lists it as active."""
    state = cluster.job_states().get(job_id)
    if state is None or state in ("PENDING", "REQUEUED"):
        return None
    return state


def _submit_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training set and three runs, simulated with the small detector."""
    from hpcdiff.simulate import simulate_experiment

    root = tmp_path_factory.mktemp("experiment")
    simulate_experiment(
        SimulateConfig(
            n_frames=16, detector="small", seed=1, frames_per_file=8, compression="none"
        ),
        root / "train",
    )
    for seed, (name, n) in enumerate(RUN_FRAMES.items(), start=10):
        simulate_experiment(
            SimulateConfig(
                n_frames=n, detector="small", seed=seed, frames_per_file=8, compression="none"
            ),
            root / "runs" / name,
        )
    (root / "train.toml").write_text(
        textwrap.dedent("""
        [experiment]
        name = "train"
        frames = ["train/frames_*.cxi"]
        geometry = "train/detector.geom"
        labels = "train/labels.h5"
        data_path = "/entry_1/data_1/data"
        [output]
        dir = "train-out"
        """)
        + COMMON
    )
    (root / "experiment.toml").write_text(
        textwrap.dedent("""
        [experiment]
        name = "overnight"
        [reprocess]
        runs = ["runs/*/job.toml"]
        [output]
        dir = "reprocess-out"
        model = "train-out/model.npz"
        """)
        + COMMON
    )
    return root


def test_classify_train_job_runs_two_ranks(
    slurm_cluster: SlurmCluster, experiment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = _submit_cli(
        ["slurm", "submit", str(experiment / "train.toml"), "--mode", "train"], capsys
    ).strip()
    assert job_id.isdigit()
    state = _wait(
        lambda: _finished(slurm_cluster, job_id),
        timeout_s=120,
        what=f"training job {job_id}",
        cluster=slurm_cluster,
    )
    log = next((experiment / "logs").glob(f"*-{job_id}.out")).read_text()
    assert state == "COMPLETED", log
    report = json.loads((experiment / "train-out" / "train-run.json").read_text())
    assert report["ranks"] == 2
    assert sorted(d["rank"] for d in report["devices"]) == [0, 1]
    assert (experiment / "train-out" / "model.npz").is_file()


def _status(experiment: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(
        _submit_cli(["status", str(experiment / "experiment.toml"), "--json"], capsys)
    )


def _queue(cluster: SlurmCluster, array_id: str) -> dict[str, str]:
    out = cluster.run(
        ["squeue", "--noheader", "--array", "--jobs", array_id, "--format=%i %T"], check=False
    ).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def test_overnight_reprocessing_with_preemption(
    slurm_cluster: SlurmCluster, experiment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not (experiment / "train-out" / "model.npz").is_file():
        pytest.skip("needs the model of test_classify_train_job_runs_two_ranks")
    exp = experiment / "experiment.toml"
    out = experiment / "reprocess-out"
    printed = _submit_cli(["reprocess", str(exp)], capsys)
    record = json.loads((out / "submissions" / "001" / "submission.json").read_text())
    array_id, summary_id = record["array_job_id"], record["summary_job_id"]
    assert f"array job {array_id}: 3 run(s)" in printed
    assert record["runs"] == ["r01", "r02", "r03"]
    assert "#SBATCH --array=0-2%2" in (out / "submissions" / "001" / "array.sbatch").read_text()

    # Signal r01's task once it has written its first checkpoint shard.  Its ranks are
    # stopped (SIGSTOP) the moment the shard appears and continued only once the USR1 waits
    # on both of them: on a quiet machine the 28 frames left take about a second, and a
    # signal that arrives after the last batch rightly lets the run finish as "done".
    shards = out / "runs" / "r01" / "predict.shards"
    state_file = out / "state" / "r01.json"
    _wait(
        lambda: any(shards.glob("shard-*.h5")),
        timeout_s=90,
        what="r01's first shard",
        cluster=slurm_cluster,
        poll_s=0.01,
    )
    runner_pid = json.loads(state_file.read_text())["pid"]
    ranks = _step_ranks(record["run_jobs"][0], exclude={runner_pid, os.getpid()})
    for pid in ranks:
        os.kill(pid, signal.SIGSTOP)
    assert len(ranks) == 2, f"expected r01's 2 ranks, found {ranks}"
    try:
        # Signal the task's batch shell, as SLURM's --signal=B:USR1@N does ahead of the time
        # limit.  (scancel --signal=USR1 --batch on an array task makes this slurmctld answer
        # "Job can not be altered now" while scancel retries and signals again and again.)
        batch_pid = int(Path(f"/proc/{runner_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert b"slurm_script" in Path(f"/proc/{batch_pid}/cmdline").read_bytes()
        os.kill(batch_pid, signal.SIGUSR1)
        # The wait only orders events; the run ending "preempted" below is the check.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            _signal_pending(pid, signal.SIGUSR1) for pid in ranks
        ):
            time.sleep(0.05)
    finally:
        for pid in ranks:
            os.kill(pid, signal.SIGCONT)
    _wait(
        lambda: json.loads(state_file.read_text())["state"] == "preempted",
        timeout_s=60,
        what="r01 to checkpoint and stop",
        cluster=slurm_cluster,
    )
    _wait(
        lambda: _queue(slurm_cluster, array_id).get(f"{array_id}_0") == "PENDING",
        timeout_s=30,
        what="r01's task to be requeued",
        cluster=slurm_cluster,
    )

    # while requeued: the folder and squeue agree on what runs and what is left
    status = _status(experiment, capsys)
    queue = _queue(slurm_cluster, array_id)
    by_run = {r["run"]: r for r in status["runs"]}
    assert by_run["r01"]["state"] == "left" and by_run["r01"]["frames_checkpointed"] > 0
    running = {
        f"{array_id}_{i}"
        for i, name in enumerate(record["runs"])
        if by_run[name]["state"] == "running"
    }
    assert running <= {label for label, s in queue.items() if s == "RUNNING"}

    # start the requeued task now instead of after SLURM's requeue delay
    slurm_cluster.run(["scontrol", "update", f"jobid={array_id}_0", "starttime=now"])
    summary_state = _wait(
        lambda: _finished(slurm_cluster, summary_id),
        timeout_s=180,
        what=f"summary job {summary_id}",
        cluster=slurm_cluster,
    )
    assert summary_state == "COMPLETED"

    report = json.loads((out / "experiment-report.json").read_text())
    assert report["failed"] == [] and report["incomplete"] == []
    assert report["totals"]["done"] == 3
    assert report["totals"]["frames"] == sum(RUN_FRAMES.values())
    assert (out / "diffuse-fraction.png").read_bytes().startswith(b"\x89PNG")
    for run in report["runs"]:
        assert 0.0 <= run["diffuse_fraction"] <= 1.0
        # nothing computed twice: frames resumed from shards plus frames processed
        # in the last attempt add up to the run, with no overlap
        assert run["frames_done_before"] + run["frames_processed"] == run["frames"]
    r01 = next(r for r in report["runs"] if r["run"] == "r01")
    assert 0 < r01["frames_done_before"] < RUN_FRAMES["r01"]
    assert json.loads(state_file.read_text())["restart_count"] == 1

    # at the end the folder says all done, and SLURM has nothing left of the array
    status = _status(experiment, capsys)
    assert status["counts"] == {"done": 3, "running": 0, "failed": 0, "left": 0}
    assert _queue(slurm_cluster, array_id) == {}

    # resubmitting the finished experiment submits no run, only a new summary
    printed = _submit_cli(["reprocess", str(exp)], capsys)
    assert "no run left to submit" in printed
    assert json.loads((out / "submissions" / "002" / "submission.json").read_text())["runs"] == []

"""The dask Fourier job on a real single-node SLURM cluster (tests/slurm_cluster.py).

* ``[fourier.cluster] kind = "slurm"``: ``hpcdiff fourier`` starts a dask-jobqueue
  SLURMCluster whose two workers are SLURM jobs of the test cluster;
* ``kind = "mpi"``: the sbatch script of ``hpcdiff slurm render JOB --kind fourier`` runs
  ``srun --mpi=pmi2`` with 3 tasks (dask-mpi: scheduler, client, worker).

Both write the same outputs, within float rounding, as a LocalCluster run of the same
tiny job (16 frames of the small detector, a 24^3 grid).  The test cluster declares 4 CPUs
on this 2-core machine so that the 3 tasks fit.  Skipped, with the reason, where SLURM
cannot be installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from slurm_cluster import SlurmCluster, running_cluster
from test_fourier_job import N_FRAMES, write_experiment

from hpcdiff.cli import main

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER_CPUS = 4
"""CPUs the test node declares: 3 dask-mpi tasks of 1 CPU fit on the 2-core machine."""

LOCAL_CLUSTER = """[fourier.cluster]
kind = "local"
"""
# One node: shared memory only.  The pip MPICH's UCX sometimes fails MPI_Init on a loaded
# machine while estimating TCP bandwidth ("invalid bandwidth 0.00", pmodels/mpich#7417).
SLURM_SECTION = """
[slurm]
job_name = "hpcdiff-fourier-test"
tasks_per_node = 3
cpus_per_task = 1
gpus_per_task = 0
time_limit_min = 10
signal_ahead_s = 30
log_dir = "logs"
setup = ["export UCX_TLS=self,sm", "export OMP_NUM_THREADS=1"]
"""


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    yield from running_cluster(tmp_path_factory, cpus=CLUSTER_CPUS)


def _variant(
    job: Path, name: str, cluster: str, *, extra: str = "", out_dir: str | None = None
) -> Path:
    """A copy of ``job`` (same folder, same files) with another ``[fourier.cluster]``."""
    text = job.read_text()
    assert LOCAL_CLUSTER in text and 'dir = "out"' in text
    text = text.replace(LOCAL_CLUSTER, cluster)
    if out_dir is not None:
        text = text.replace('dir = "out"', f'dir = "{out_dir}"')
    path = job.with_name(name)
    path.write_text(text + extra)
    return path


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Fourier experiment of test_fourier_job.py; returns its (local) job file."""
    return write_experiment(tmp_path_factory.mktemp("fourier-slurm") / "exp")


@pytest.fixture(scope="module")
def local_out(experiment: Path) -> Path:
    """Outputs of the job on a LocalCluster of 2 processes: what SLURM runs must equal."""
    out = experiment.parent / "out_local"
    assert main(["fourier", str(experiment), "--out", str(out)]) == 0
    return out


def _assert_same_outputs(out: Path, reference: Path) -> None:
    with h5py.File(out / "merged.h5") as h5, h5py.File(reference / "merged.h5") as ref:
        # frames merged: N_FRAMES less those the scale pass leaves out (the same choice)
        assert 0 < h5.attrs["n_frames"] == ref.attrs["n_frames"] <= N_FRAMES
        np.testing.assert_array_equal(h5["counts"][()], ref["counts"][()])
        np.testing.assert_allclose(h5["sums"][()], ref["sums"][()], rtol=1e-10)
        np.testing.assert_allclose(
            h5["intensity"][()], ref["intensity"][()], rtol=1e-6, equal_nan=True
        )
    with h5py.File(out / "similarity.h5") as h5, h5py.File(reference / "similarity.h5") as ref:
        np.testing.assert_array_equal(h5["frame_number"][()], ref["frame_number"][()])
        np.testing.assert_array_equal(h5["overlap"][()], ref["overlap"][()])
        for name in ("common_arc", "image_distance", "image_correlation"):
            np.testing.assert_allclose(
                h5[name][()], ref[name][()], rtol=1e-9, atol=1e-10, equal_nan=True, err_msg=name
            )
    with h5py.File(out / "diffusion.h5") as h5, h5py.File(reference / "diffusion.h5") as ref:
        for group in ("common_arc", "image"):
            np.testing.assert_allclose(
                h5[group]["eigenvalues"][()], ref[group]["eigenvalues"][()], atol=1e-8
            )
    summary = json.loads((out / "fourier_summary.json").read_text())
    expected = json.loads((reference / "fourier_summary.json").read_text())
    assert summary["n_frames_oriented"] == expected["n_frames_oriented"] == N_FRAMES


def test_fourier_job_on_slurm_cluster_workers(
    slurm_cluster: SlurmCluster, experiment: Path, local_out: Path
) -> None:
    """kind "slurm": dask-jobqueue submits two worker jobs; same outputs as LocalCluster."""
    pytest.importorskip("dask_jobqueue")
    logs = experiment.parent / "dask-logs"
    logs.mkdir()
    cluster = f"""[fourier.cluster]
kind = "slurm"
walltime_min = 10
job_extra_directives = ["--output={logs}/worker-%j.out"]
connect_timeout_s = 60
"""
    job = _variant(experiment, "job_slurm.toml", cluster)
    out = experiment.parent / "out_slurm"
    # A child process with a time limit: a worker job that never connects would leave the
    # client waiting forever.  Its cwd is where SLURM writes anything by default.
    command = [sys.executable, "-m", "hpcdiff", "fourier", str(job), "--out", str(out)]
    proc = subprocess.run(
        [*command, "--n-workers", "2"],
        cwd=experiment.parent,
        env=slurm_cluster.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "dask cluster (slurm)" in proc.stderr

    # the workers were SLURM jobs of the test cluster, named as the job script says
    worker_logs = sorted(logs.glob("worker-*.out"))
    assert 1 <= len(worker_logs) <= 2, worker_logs
    job_ids = [p.stem.removeprefix("worker-") for p in worker_logs]
    for job_id in job_ids:
        state = slurm_cluster.wait_job(job_id, timeout_s=60)
        # closing the SLURMCluster scancels its worker jobs
        assert state in ("CANCELLED", "COMPLETED"), (job_id, state)
    assert any("Registered to" in p.read_text() for p in worker_logs), "\n".join(
        p.read_text()[-2000:] for p in worker_logs
    )
    _assert_same_outputs(out, local_out)


def test_fourier_job_under_srun_dask_mpi(
    slurm_cluster: SlurmCluster,
    experiment: Path,
    local_out: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """kind "mpi": the rendered sbatch script runs 3 tasks; same outputs as LocalCluster."""
    from hpcdiff.slurm.submit import submit

    job = _variant(
        experiment,
        "job_mpi.toml",
        '[fourier.cluster]\nkind = "mpi"\nconnect_timeout_s = 90\n',
        extra=SLURM_SECTION,
        out_dir="out_mpi",
    )
    assert main(["slurm", "render", str(job), "--kind", "fourier"]) == 0
    script = capsys.readouterr().out
    assert re.search(r"^#SBATCH --ntasks-per-node=\"?3\"?$", script, re.M), script
    srun = next(line for line in script.splitlines() if "srun" in line and "fourier" in line)
    assert "--mpi=pmi2" in srun and str(job.resolve()) in srun, srun

    (experiment.parent / "logs").mkdir(exist_ok=True)
    job_id = submit(script).job_id
    state = slurm_cluster.wait_job(job_id, timeout_s=150)
    logs = sorted((experiment.parent / "logs").glob(f"*-{job_id}.out"))
    log = logs[0].read_text() if logs else f"(no log of job {job_id})"
    assert state == "COMPLETED", log[-4000:]
    assert "dask cluster (mpi)" in log, log[-4000:]
    # dask-mpi: rank 0 scheduler, rank 1 client, rank 2 the one worker
    assert re.findall(r"Worker name:\s+(\S+)", log) == ["2"], log[-4000:]
    _assert_same_outputs(experiment.parent / "out_mpi", local_out)

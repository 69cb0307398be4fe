"""The sbatch scripts hpcdiff submits, each one call of :func:`render_sbatch`.

* ``classify``: the MPI job, ``srun --mpi=pmi2 hpcdiff classify train|predict JOB``.
* ``fourier``: the dask job inside one allocation (dask-mpi: rank 0 scheduler, rank 1
  client, the other ranks workers), ``srun --mpi=pmi2 hpcdiff fourier JOB`` with
  ``[fourier.cluster] kind = "mpi"``.

With ``job=None`` a script is generic: the job file is its first argument
(``sbatch slurm/classify.sbatch JOB.toml train``); this is how the committed scripts in
``slurm/`` are rendered.
"""

from __future__ import annotations

from typing import Literal

from hpcdiff.config import JobConfig, SlurmConfig
from hpcdiff.errors import ConfigError
from hpcdiff.slurm.sbatch import ScriptArgument, Shell, render_sbatch

Kind = Literal["classify", "fourier"]
KINDS: tuple[Kind, ...] = ("classify", "fourier")
DASK_MPI_MIN_TASKS = 3
"""dask-mpi needs a scheduler rank, a client rank and at least one worker rank."""


def classify_script(
    settings: SlurmConfig, *, job: str | None, mode: str = "predict", output: str | None = None
) -> str:
    """sbatch text of the MPI classify job (``mode`` is ``train`` or ``predict``)."""
    if mode not in ("train", "predict"):
        raise ValueError(f"classify mode must be 'train' or 'predict', got {mode!r}")
    if job is None:
        return render_sbatch(
            settings,
            ["hpcdiff", "classify", Shell('"$MODE"'), Shell('"$JOB"')],
            kind="classify",
            script_name="classify.sbatch",
            arguments=(
                ScriptArgument("JOB", "JOB.toml"),
                ScriptArgument("MODE", "train|predict", default=mode),
            ),
            output=output,
        )
    return render_sbatch(
        settings, ["hpcdiff", "classify", mode, job], kind="classify", output=output
    )


def fourier_script(settings: SlurmConfig, *, job: str | None, output: str | None = None) -> str:
    """sbatch text of the Fourier (dask-mpi) job.

    Raises
    ------
    ConfigError
        If the allocation has fewer than three tasks (dask-mpi needs a scheduler, a
        client and a worker).
    """
    n_tasks = settings.nodes * settings.tasks_per_node
    if n_tasks < DASK_MPI_MIN_TASKS:
        raise ConfigError(
            f"[slurm] nodes x tasks_per_node is {n_tasks}; the Fourier job under dask-mpi "
            f"needs at least {DASK_MPI_MIN_TASKS} tasks (scheduler, client, workers)"
        )
    if job is None:
        return render_sbatch(
            settings,
            ["hpcdiff", "fourier", Shell('"$JOB"')],
            kind="fourier",
            script_name="fourier.sbatch",
            arguments=(ScriptArgument("JOB", "JOB.toml"),),
            output=output,
        )
    return render_sbatch(settings, ["hpcdiff", "fourier", job], kind="fourier", output=output)


def job_script(
    job: JobConfig,
    settings: SlurmConfig,
    *,
    kind: Kind,
    job_path: str | None,
    mode: str = "predict",
    output: str | None = None,
) -> str:
    """The script of ``kind`` for ``job`` (checked against the job's own sections).

    Raises
    ------
    ConfigError
        For a Fourier script of a job whose ``[fourier.cluster] kind`` is not ``"mpi"``.
    """
    if kind == "classify":
        return classify_script(settings, job=job_path, mode=mode, output=output)
    if kind == "fourier":
        cluster = job.fourier.cluster.kind
        if job_path is not None and cluster != "mpi":
            raise ConfigError(
                f"{job.source or '<job>'}: [fourier.cluster] kind is {cluster!r}; a Fourier "
                'job inside one SLURM allocation needs kind = "mpi" (dask-mpi)'
            )
        return fourier_script(settings, job=job_path, output=output)
    raise ValueError(f"unknown script kind {kind!r}; expected one of {', '.join(KINDS)}")


__all__ = ["DASK_MPI_MIN_TASKS", "KINDS", "classify_script", "fourier_script", "job_script"]

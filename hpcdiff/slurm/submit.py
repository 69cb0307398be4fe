"""Talking to SLURM: ``sbatch --parsable`` to submit, ``squeue`` to see what runs.

Commands are run as argument lists (never through a shell).  ``runner`` parameters take
a :func:`subprocess.run`-like callable so that tests can record calls without SLURM.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hpcdiff.errors import HpcdiffError

Runner = Callable[..., subprocess.CompletedProcess]


class SlurmCommandError(HpcdiffError, RuntimeError):
    """A SLURM command is missing or failed; the message holds its command line and stderr."""


@dataclass(frozen=True)
class Submission:
    """One submitted batch job.

    Attributes
    ----------
    job_id
        The id sbatch printed (for an array, the array's job id).
    cluster
        The cluster name when sbatch printed one (``id;cluster``), else ``None``.
    command
        The sbatch command line that was run.
    """

    job_id: str
    cluster: str | None
    command: tuple[str, ...]


def sbatch_command(*, sbatch: str = "sbatch") -> list[str]:
    """The ``sbatch --parsable`` command line; the script goes to its standard input."""
    return [sbatch, "--parsable"]


def parse_parsable(stdout: str) -> tuple[str, str | None]:
    """Split ``sbatch --parsable`` output (``JOBID`` or ``JOBID;CLUSTER``).

    Raises
    ------
    SlurmCommandError
        If the output is not a job id.
    """
    text = stdout.strip().splitlines()[-1].strip() if stdout.strip() else ""
    job_id, _, cluster = text.partition(";")
    if not job_id.isdigit():
        raise SlurmCommandError(f"sbatch --parsable printed {stdout!r}; expected a job id")
    return job_id, (cluster or None)


def submit(script: str, *, sbatch: str = "sbatch", runner: Runner = subprocess.run) -> Submission:
    """Submit the script text ``script`` with ``sbatch --parsable`` and return its job id.

    The script is passed on standard input, so nothing is written to disk; SLURM keeps
    its own copy with the job.

    Raises
    ------
    SlurmCommandError
        If sbatch is missing, fails (its stderr is in the message) or prints no id.
    """
    command = sbatch_command(sbatch=sbatch)
    try:
        result = runner(command, input=script, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SlurmCommandError(
            f"{sbatch!r} not found: submit from a SLURM login node (or use --dry-run)"
        ) from None
    if result.returncode != 0:
        raise SlurmCommandError(
            f"{' '.join(command)} failed with status {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()}"
        )
    job_id, cluster = parse_parsable(result.stdout)
    return Submission(job_id=job_id, cluster=cluster, command=tuple(command))


def squeue_available() -> bool:
    """True where an ``squeue`` command is on the PATH."""
    return shutil.which("squeue") is not None


def queued_jobs(job_ids: Sequence[str], *, runner: Runner = subprocess.run) -> dict[str, str]:
    """SLURM states of the queued or running jobs (and array tasks) among ``job_ids``.

    Returns
    -------
    dict
        ``{"123_4": "RUNNING", "125": "PENDING", ...}``: array tasks keyed
        ``ARRAYID_TASK``, one entry per task (``--array`` expands pending ranges).
        Jobs no longer known to ``squeue`` are absent.

    Raises
    ------
    SlurmCommandError
        If squeue is missing or fails for another reason than forgotten job ids (the
        controller cannot be reached, say): then nothing is known about the queue.
    """
    if not job_ids:
        return {}
    command = ["squeue", "--noheader", "--array", "--jobs", ",".join(job_ids), "--format=%i %T"]
    try:
        result = runner(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SlurmCommandError("'squeue' not found") from None
    if result.returncode != 0:
        if "invalid job id" not in (result.stderr or "").lower():
            raise SlurmCommandError(
                f"{' '.join(command)} failed with status {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}"
            )
        # squeue refuses job ids it has forgotten; ask one by one to keep the others.
        states: dict[str, str] = {}
        if len(job_ids) > 1:
            for job_id in job_ids:
                states.update(queued_jobs([job_id], runner=runner))
        return states
    states = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


__all__ = [
    "SlurmCommandError",
    "Submission",
    "parse_parsable",
    "queued_jobs",
    "sbatch_command",
    "squeue_available",
    "submit",
]

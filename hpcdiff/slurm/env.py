"""The SLURM environment of a task, read in one place.

Every other module that wants to know "which rank, which node-local slot, which array
task, which attempt" asks :class:`SlurmEnvironment`; nothing else reads ``SLURM_*``
variables.  Outside SLURM every field is ``None`` (``restart_count`` is 0).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from hpcdiff.errors import HpcdiffError


class SlurmEnvironmentError(HpcdiffError, ValueError):
    """A ``SLURM_*`` variable holds something other than what SLURM writes there."""


_VARIABLES: dict[str, str] = {
    "proc_id": "SLURM_PROCID",
    "local_id": "SLURM_LOCALID",
    "node_id": "SLURM_NODEID",
    "n_tasks": "SLURM_NTASKS",
    "cpus_per_task": "SLURM_CPUS_PER_TASK",
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "restart_count": "SLURM_RESTART_COUNT",
}


@dataclass(frozen=True)
class SlurmEnvironment:
    """Where this process sits in a SLURM job.

    Attributes
    ----------
    proc_id
        Global task rank in the job step (``SLURM_PROCID``).
    local_id
        Node-local task rank (``SLURM_LOCALID``); selects the GPU of this task.
    node_id
        Index of this node in the allocation (``SLURM_NODEID``).
    n_tasks
        Number of tasks in the step (``SLURM_NTASKS``).
    cpus_per_task
        CPUs allotted to each task (``SLURM_CPUS_PER_TASK``); sets thread counts.
    job_id
        This job's id (``SLURM_JOB_ID``); for an array task, the task's own job id.
    array_job_id, array_task_id
        The array's job id and this task's index (``SLURM_ARRAY_JOB_ID``,
        ``SLURM_ARRAY_TASK_ID``), ``None`` outside arrays.
    restart_count
        How many times the job was requeued (``SLURM_RESTART_COUNT``, 0 when unset).
    """

    proc_id: int | None = None
    local_id: int | None = None
    node_id: int | None = None
    n_tasks: int | None = None
    cpus_per_task: int | None = None
    job_id: int | None = None
    array_job_id: int | None = None
    array_task_id: int | None = None
    restart_count: int = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> SlurmEnvironment:
        """Read the ``SLURM_*`` variables of ``environ``.

        Raises
        ------
        SlurmEnvironmentError
            Naming the variable when one is set to something that is not a
            non-negative integer.
        """
        values: dict[str, int] = {}
        for name, variable in _VARIABLES.items():
            text = environ.get(variable, "").strip()
            if not text:
                continue
            if not text.isdigit():
                raise SlurmEnvironmentError(
                    f"environment variable {variable}={text!r}: expected a non-negative integer"
                )
            values[name] = int(text)
        return cls(**values)

    @property
    def in_job(self) -> bool:
        """True inside a SLURM job (``SLURM_JOB_ID`` set)."""
        return self.job_id is not None

    @property
    def task_label(self) -> str | None:
        """``ARRAYJOB_TASK`` for array tasks, the job id otherwise, ``None`` outside SLURM."""
        if self.array_job_id is not None and self.array_task_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        return None if self.job_id is None else str(self.job_id)

    def device_index(self, n_devices: int) -> int | None:
        """The GPU this task should use among ``n_devices`` visible ones.

        Tasks on a node take devices by node-local rank, round robin.  ``None`` when there
        is no device or no node-local rank (not under ``srun``).
        """
        if n_devices <= 0 or self.local_id is None:
            return None
        return self.local_id % n_devices

    def log_prefix(self) -> str:
        """A short tag for log lines: ``job 12_3 try 1 rank 0/2 node 0``; empty outside SLURM."""
        parts: list[str] = []
        if self.task_label is not None:
            parts.append(f"job {self.task_label}")
        if self.restart_count:
            parts.append(f"try {self.restart_count}")
        if self.proc_id is not None:
            total = "" if self.n_tasks is None else f"/{self.n_tasks}"
            parts.append(f"rank {self.proc_id}{total}")
        if self.node_id is not None:
            parts.append(f"node {self.node_id}")
        return " ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """Plain mapping of the fields, for run reports."""
        return asdict(self)


def slurm_variables() -> tuple[str, ...]:
    """The environment variables :class:`SlurmEnvironment` reads, in field order."""
    return tuple(_VARIABLES[f.name] for f in fields(SlurmEnvironment))


__all__ = ["SlurmEnvironment", "SlurmEnvironmentError", "slurm_variables"]

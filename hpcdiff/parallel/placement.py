"""Rank placement: which device and how many CPU threads each rank of a job gets.

A rank finds its place on its node (:func:`node_local_rank`, MPI ``Split_type``), binds a
GPU by node-local rank (:func:`select_device`) and takes its share of the node's cores
(:func:`threads_per_rank`); :func:`setup_rank` does all three for a classify job and
returns a :class:`RankInfo` for the run report.  torch is imported inside functions.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpcdiff.parallel.mpi import Comm, is_mpi

if TYPE_CHECKING:
    from hpcdiff.config import JobConfig

log = logging.getLogger("hpcdiff.parallel")


def node_local_rank(comm: Comm) -> tuple[int, int]:
    """This rank's index among the ranks on its node, and their number.

    Uses ``comm.Split_type(MPI.COMM_TYPE_SHARED)``; ``(0, 1)`` for :class:`SelfComm`.
    """
    if not is_mpi(comm):
        return 0, 1
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        return local.Get_rank(), local.Get_size()
    finally:
        local.Free()


def slurm_cpus_per_task(environ: dict[str, str] | None = None) -> int | None:
    """SLURM's CPUs per task, from :class:`~hpcdiff.slurm.env.SlurmEnvironment`.

    ``None`` when unset or 0, and (with a warning naming the variable) when the SLURM
    environment holds something SLURM does not write: a thread count is only a hint.
    """
    from hpcdiff.slurm.env import SlurmEnvironment, SlurmEnvironmentError

    try:
        slurm = SlurmEnvironment.from_environ(os.environ if environ is None else environ)
    except SlurmEnvironmentError as exc:
        log.warning("%s; ignoring the SLURM CPU count", exc)
        return None
    return slurm.cpus_per_task or None


def threads_per_rank(
    configured: int | None, *, local_size: int, environ: dict[str, str] | None = None
) -> int:
    """CPU threads for one rank: the job file's value, else SLURM's, else the node's share.

    Parameters
    ----------
    configured
        ``parallel.threads_per_rank`` from the job file, or ``None``.
    local_size
        Number of ranks on this node (they share its cores).
    """
    if configured is not None:
        return configured
    slurm = slurm_cpus_per_task(environ)
    if slurm is not None:
        return slurm
    return max(1, (os.cpu_count() or 1) // max(local_size, 1))


def select_device(
    gpu: str, *, requested: str, local_rank: int, local_size: int, cuda_count: int | None = None
) -> str:
    """The torch device string for this rank: ``"cuda:K"`` or ``"cpu"``.

    Parameters
    ----------
    gpu
        ``parallel.gpu``: ``"auto"`` (one device per node-local rank when the node has
        CUDA devices, the only visible one when SLURM binds one per task), ``"local_rank"``
        (always ``cuda:(local_rank mod n_devices)``), ``"none"`` (CPU).
    requested
        ``features.device``: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    local_rank, local_size
        From :func:`node_local_rank`.
    cuda_count
        Visible CUDA devices; asked from torch when ``None``.

    Raises
    ------
    RuntimeError
        If CUDA is required (``features.device = "cuda"`` or ``parallel.gpu =
        "local_rank"``) but this node has no CUDA device.
    """
    if gpu == "none" or requested == "cpu":
        return "cpu"
    if cuda_count is None:
        import torch

        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda_count == 0:
        if requested == "cuda" or gpu == "local_rank":
            raise RuntimeError(
                "features.device = 'cuda' / parallel.gpu = 'local_rank' but this node has no "
                "CUDA device; use device = 'auto' to fall back to the CPU"
            )
        return "cpu"
    if local_size > cuda_count:
        log.warning(
            "%d ranks on this node share %d GPU(s); consider one rank per GPU",
            local_size,
            cuda_count,
        )
    return f"cuda:{local_rank % cuda_count}"


@dataclass(frozen=True)
class RankInfo:
    """Where one rank runs: its place in the job and on its node, its device and threads."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    device: str
    threads: int
    host: str

    def as_dict(self) -> dict[str, Any]:
        """Plain form for the run report."""
        return dict(self.__dict__)


def setup_rank(comm: Comm, job: JobConfig) -> RankInfo:
    """Bind this rank to a device (GPU by node-local rank, or CPU) and set its CPU threads."""
    import torch

    local_rank, local_size = node_local_rank(comm)
    device = select_device(
        job.parallel.gpu,
        requested=job.features.device,
        local_rank=local_rank,
        local_size=local_size,
    )
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    threads = threads_per_rank(job.parallel.threads_per_rank, local_size=local_size)
    torch.set_num_threads(threads)
    return RankInfo(
        comm.Get_rank(), comm.Get_size(), local_rank, local_size, device, threads, platform.node()
    )


__all__ = [
    "RankInfo",
    "node_local_rank",
    "select_device",
    "setup_rank",
    "slurm_cpus_per_task",
    "threads_per_rank",
]

"""The dask cluster of the Fourier job: start or join it, track progress, reduce in a tree.

One function, :func:`open_cluster`, turns a :class:`~hpcdiff.config.ClusterConfig` into a
connected :class:`distributed.Client`:

``local``
    a :class:`distributed.LocalCluster` of ``n_workers`` processes (laptop, CI, one node),
    its workers' scratch in a private folder (:func:`job_scratch`) that is announced and
    removed when the cluster closes;
``slurm``
    a :class:`dask_jobqueue.SLURMCluster`, one worker per SLURM job, scaled to
    ``n_workers`` (the job script comes from :func:`slurm_cluster`; nothing is submitted
    until the cluster is scaled);
``mpi``
    dask-mpi inside an existing allocation (``srun``/``mpiexec hpcdiff fourier ...``):
    rank 0 runs the scheduler, rank 1 the client, the other ranks workers.  Only rank 1
    gets a client; the others return once the client is done
    (:attr:`ClusterSession.is_client` is False there);
``address``
    join a running scheduler.

dask, distributed, dask-jobqueue and dask-mpi are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from hpcdiff.config import ClusterConfig
from hpcdiff.errors import ConfigError
from hpcdiff.parallel.mpi import Comm


@dataclass
class ClusterSession:
    """A started or joined cluster.

    Attributes
    ----------
    kind
        The cluster kind of the job.
    client
        Connected client; None on MPI ranks that served as scheduler or worker.
    cluster
        The cluster object when this process started one (LocalCluster, SLURMCluster).
    dashboard
        Dashboard address, when the scheduler serves one.
    """

    kind: str
    client: Any | None
    cluster: Any | None = None
    dashboard: str | None = None

    @property
    def is_client(self) -> bool:
        """True where this process should run the job's client code."""
        return self.client is not None

    @property
    def n_workers(self) -> int:
        """Workers connected now (0 without a client)."""
        if self.client is None:
            return 0
        return len(self.client.scheduler_info(n_workers=-1).get("workers", {}))


def slurm_cluster_kwargs(cfg: ClusterConfig) -> dict[str, Any]:
    """Keyword arguments of :class:`dask_jobqueue.SLURMCluster` for the job's settings.

    One worker process per SLURM job with ``threads_per_worker`` cores and
    ``memory_per_worker`` memory.  Pure: builds no cluster.
    """
    kwargs: dict[str, Any] = {
        "cores": cfg.threads_per_worker,
        "processes": 1,
        "memory": cfg.memory_per_worker,
        "walltime": f"{cfg.walltime_min // 60:02d}:{cfg.walltime_min % 60:02d}:00",
        "job_name": "hpcdiff-dask",
        "job_extra_directives": list(cfg.job_extra_directives),
        "job_script_prologue": list(cfg.job_script_prologue),
        "scheduler_options": {"dashboard_address": cfg.dashboard_address},
    }
    if cfg.queue is not None:
        kwargs["queue"] = cfg.queue
    if cfg.account is not None:
        kwargs["account"] = cfg.account
    if cfg.interface is not None:
        kwargs["interface"] = cfg.interface
    if cfg.local_directory is not None:
        kwargs["local_directory"] = cfg.local_directory
    return kwargs


def slurm_cluster(cfg: ClusterConfig) -> Any:
    """A :class:`dask_jobqueue.SLURMCluster` built from the job (not scaled: no job submitted).

    ``cluster.job_script()`` shows the script each worker job will run.
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:  # pragma: no cover - dask-jobqueue is in the slurm extra
        raise ConfigError(
            "cluster kind 'slurm' needs dask-jobqueue (pip install 'hpcdiff[slurm]')"
        ) from exc
    return SLURMCluster(**slurm_cluster_kwargs(cfg))


@contextlib.contextmanager
def open_cluster(
    cfg: ClusterConfig, *, comm: Comm | None = None, log: IO[str] | None = None
) -> Iterator[ClusterSession]:
    """Start or join the cluster the job names; close what was started on exit.

    Parameters
    ----------
    cfg
        The ``[fourier.cluster]`` section.
    comm
        MPI communicator for ``kind = "mpi"`` (default ``MPI.COMM_WORLD``).
    log
        Where to print the dashboard address (default stderr).

    Yields
    ------
    ClusterSession
    """
    log = log if log is not None else sys.stderr
    from distributed import Client

    if cfg.kind == "local":
        from distributed import LocalCluster

        with job_scratch(cfg, log=log) as scratch:
            cluster = LocalCluster(
                n_workers=cfg.n_workers,
                threads_per_worker=cfg.threads_per_worker,
                memory_limit=cfg.memory_per_worker,
                dashboard_address=cfg.dashboard_address,
                processes=True,
                local_directory=str(scratch),
                scheduler_kwargs={"local_directory": str(scratch)},  # nothing left outside
            )
            with cluster, Client(cluster) as client:
                yield _announce(ClusterSession("local", client, cluster, _dashboard(client)), log)
    elif cfg.kind == "slurm":
        cluster = slurm_cluster(cfg)
        with cluster:
            cluster.scale(cfg.n_workers)
            with Client(cluster) as client:
                yield _announce(ClusterSession("slurm", client, cluster, _dashboard(client)), log)
    elif cfg.kind == "address":
        with Client(cfg.address, timeout=cfg.connect_timeout_s) as client:
            yield _announce(ClusterSession("address", client, None, _dashboard(client)), log)
    elif cfg.kind == "mpi":
        with _mpi_session(cfg, comm, log) as session:
            yield session
    else:  # pragma: no cover - the config schema allows only the kinds above
        raise ConfigError(f"unknown cluster kind {cfg.kind!r}")


@contextlib.contextmanager
def _mpi_session(cfg: ClusterConfig, comm: Comm | None, log: IO[str]) -> Iterator[ClusterSession]:
    try:
        import dask_mpi
    except ImportError as exc:  # pragma: no cover - dask-mpi is in the slurm extra
        raise ConfigError(
            "cluster kind 'mpi' needs dask-mpi (pip install 'hpcdiff[slurm]')"
        ) from exc
    if comm is None:
        from mpi4py import MPI

        comm = cast(Comm, MPI.COMM_WORLD)
    if comm.Get_size() < 3:
        raise ConfigError(
            f"cluster kind 'mpi' needs at least 3 MPI ranks (scheduler, client, worker); "
            f"this job has {comm.Get_size()}"
        )
    is_client = dask_mpi.initialize(
        comm=comm,
        nthreads=cfg.threads_per_worker,
        memory_limit=cfg.memory_per_worker,
        interface=cfg.interface,
        local_directory=cfg.local_directory,
        dashboard_address=cfg.dashboard_address,
        exit=False,
    )
    if not is_client:  # scheduler or worker rank: its event loop has finished
        yield ClusterSession("mpi", None)
        return
    from distributed import Client

    client = Client(timeout=cfg.connect_timeout_s)
    try:
        client.wait_for_workers(1, timeout=cfg.connect_timeout_s)
        yield _announce(ClusterSession("mpi", client, None, _dashboard(client)), log)
    finally:
        client.close()
        dask_mpi.send_close_signal()


SCRATCH_PREFIX = "hpcdiff-dask"
"""Name prefix of a local cluster's private scratch folder (``PREFIX-HOST-PID-XXXX``)."""


def scratch_base(cfg: ClusterConfig) -> Path:
    """Where a local cluster's workers keep their scratch (spilled data): ``[fourier.cluster]
    local_directory``, else dask's ``temporary-directory`` (the user's or the site's dask
    config, ``DASK_TEMPORARY_DIRECTORY``), else the system's temporary folder (``$TMPDIR``,
    which many SLURM sites point at node-local scratch)."""
    import tempfile

    import dask

    configured = cfg.local_directory or dask.config.get("temporary-directory", None)
    return Path(configured or tempfile.gettempdir()).expanduser()


@contextlib.contextmanager
def job_scratch(cfg: ClusterConfig, *, log: IO[str]) -> Iterator[Path]:
    """A private scratch folder for a local cluster's workers, inside :func:`scratch_base`;
    announced with its free space and removed on exit (with the folders of this host's
    earlier runs whose process is gone: a killed job's spill does not stay behind).

    Prints a warning when the folder's file system has less free space than the workers'
    memory limits together (a rough scale only: dask sets no limit on what a worker
    spills).
    """
    import shutil
    import socket
    import tempfile

    from dask.utils import format_bytes, parse_bytes

    base = scratch_base(cfg)
    base.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    _purge_stale_scratch(base, host)
    path = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}-{host}-{os.getpid()}-", dir=base))
    try:
        free = shutil.disk_usage(path).free
        memory = cfg.n_workers * parse_bytes(cfg.memory_per_worker)
        print(
            f"dask scratch (workers' spill): {path} ({format_bytes(free)} free; "
            "[fourier.cluster] local_directory or dask's temporary-directory to move it)",
            file=log,
            flush=True,
        )
        if free < memory:
            print(
                f"dask scratch: warning: {format_bytes(free)} free is less than the workers' "
                f"memory ({cfg.n_workers} x {cfg.memory_per_worker}); a worker that spills "
                "may fill this file system",
                file=log,
                flush=True,
            )
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _purge_stale_scratch(base: Path, host: str) -> None:
    """Remove ``base``'s scratch folders of this host's jobs whose process has ended."""
    import shutil

    for old in base.glob(f"{SCRATCH_PREFIX}-{host}-*-*"):
        try:
            pid = int(old.name[len(f"{SCRATCH_PREFIX}-{host}-") :].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _dashboard(client: Any) -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard served
        return None


def _announce(session: ClusterSession, log: IO[str]) -> ClusterSession:
    where = session.client.scheduler.address if session.client is not None else "?"
    print(
        f"dask cluster ({session.kind}): scheduler {where}, "
        f"dashboard {session.dashboard or 'none'}",
        file=log,
        flush=True,
    )
    return session


def track(
    futures: Sequence[Any], label: str, *, log: IO[str] | None = None, every_s: float = 5.0
) -> None:
    """Wait for ``futures``, printing ``label: done/total`` lines at most every ``every_s``.

    Raises the first task error (with its remote traceback) as soon as it arrives.
    """
    from distributed import as_completed

    log = log if log is not None else sys.stderr
    total = len(futures)
    done = 0
    last = time.monotonic()
    t0 = last
    for fut in as_completed(futures):
        if fut.status == "error":
            fut.result()  # re-raises the task's exception
        done += 1
        now = time.monotonic()
        if now - last >= every_s or done == total:
            print(f"{label}: {done}/{total} tasks ({now - t0:.1f} s)", file=log, flush=True)
            last = now


__all__ = [
    "ClusterSession",
    "job_scratch",
    "open_cluster",
    "scratch_base",
    "slurm_cluster",
    "slurm_cluster_kwargs",
    "track",
]

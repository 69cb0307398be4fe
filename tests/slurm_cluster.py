"""A real single-node SLURM cluster for tests, started and stopped in a temporary folder.

Nothing is written under ``/etc``: munged runs with a generated key and its socket in the
folder, ``slurm.conf`` lives there too and ``SLURM_CONF`` points at it.  Daemons are
stopped by the PIDs in their PID files.  Needs root (slurmd runs jobs as their users) and
Debian's ``slurmctld slurmd slurm-client munge`` packages, installed here with apt-get
when missing.

Usage::

    reason = ensure_slurm_packages()      # None, or why the cluster cannot run here
    cluster = SlurmCluster.start(tmp_dir)
    cluster.run(["sinfo"])
    cluster.stop()

or, in a test module (one cluster per module, so two modules never run two at once)::

    @pytest.fixture(scope="module")
    def slurm_cluster(tmp_path_factory):
        yield from running_cluster(tmp_path_factory)
"""

from __future__ import annotations

import os
import platform
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged", "mungekey")


def ensure_slurm_packages() -> str | None:
    """Install the SLURM packages if missing; return why they are unavailable, or ``None``."""
    if all(shutil.which(b) for b in BINARIES):
        return None if os.geteuid() == 0 else "the test SLURM cluster needs root (slurmd)"
    if os.geteuid() != 0:
        return "SLURM is not installed and installing it needs root"
    if shutil.which("apt-get") is None:
        return "SLURM is not installed and there is no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not all(shutil.which(b) for b in BINARIES):
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
        return f"cannot install {' '.join(PACKAGES)} with apt-get: {tail[0]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line(host: str, *, cpus: int | None = None) -> str:
    """The node's ``NodeName=`` line from ``slurmd -C``; ``cpus`` declares that many CPUs.

    A declared count above the real one needs ``SlurmdParameters=config_overrides`` (the
    node is taken to be as slurm.conf says instead of being drained); it is declared as
    one socket of ``cpus`` single-thread cores so that ``CR_Core`` can hand out each.
    """
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("NodeName="))
    words = [w for w in line.split() if not w.startswith("NodeName=")]
    if cpus is not None:
        layout = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
        words = [w for w in words if w.split("=", 1)[0] not in layout]
        words = [
            f"CPUs={cpus}",
            "Boards=1",
            "SocketsPerBoard=1",
            f"CoresPerSocket={cpus}",
            "ThreadsPerCore=1",
            *words,
        ]
    return f"NodeName={host} NodeAddr=127.0.0.1 {' '.join(words)} State=UNKNOWN"


@dataclass
class SlurmCluster:
    """A running single-node cluster; ``env`` holds ``SLURM_CONF`` for its clients."""

    root: Path
    host: str
    env: dict[str, str] = field(default_factory=dict)
    cpus: int | None = None
    """CPUs the node declares (``None``: as ``slurmd -C`` finds them)."""

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def jobcomp(self) -> Path:
        """jobcomp/filetxt log: one line per finished job with its ``JobState``."""
        return self.root / "jobcomp.txt"

    @classmethod
    def start(cls, root: Path, *, cpus: int | None = None, timeout_s: float = 30.0) -> SlurmCluster:
        """Start munged, slurmctld and slurmd under ``root``; wait for the node to be idle.

        ``cpus`` declares more (or fewer) CPUs than the machine has, e.g. 4 on a 2-core
        box so that a 3-task job fits; ``None`` keeps the real count.
        """
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        host = platform.node().split(".")[0]
        cluster = cls(
            root=root,
            host=host,
            env={**os.environ, "SLURM_CONF": str(root / "slurm.conf")},
            cpus=cpus,
        )
        for sub in ("state", "spool", "munge"):
            (root / sub).mkdir(exist_ok=True)
        key = root / "munge" / "munge.key"
        if not key.exists():
            subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
        key.chmod(0o400)
        sock = root / "munge" / "munge.socket"
        subprocess.run(
            [
                "munged",
                "--force",
                f"--key-file={key}",
                f"--socket={sock}",
                f"--pid-file={root / 'munged.pid'}",
                f"--log-file={root / 'munged.log'}",
                f"--seed-file={root / 'munge' / 'seed'}",
            ],
            check=True,
        )
        cluster.conf.write_text(cluster._config(sock))
        subprocess.run(["slurmctld", "-i"], env=cluster.env, check=True)
        subprocess.run(["slurmd", "-N", host], env=cluster.env, check=True)
        cluster.wait_idle(timeout_s=timeout_s)
        return cluster

    def _config(self, munge_socket: Path) -> str:
        r = self.root
        return "\n".join(
            [
                "ClusterName=hpcdifftest",
                # Fresh job ids for every cluster: MPICH names its shared-memory segments after
                # the PMI job step, and a segment left by a killed step of an earlier cluster
                # with the same id breaks MPI_Init of the new one.
                f"FirstJobId={random.randint(1_000_000, 60_000_000)}",
                f"SlurmctldHost={self.host}(127.0.0.1)",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={munge_socket}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"StateSaveLocation={r / 'state'}",
                f"SlurmdSpoolDir={r / 'spool'}",
                f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                f"SlurmdPidFile={r / 'slurmd.pid'}",
                f"SlurmctldLogFile={r / 'slurmctld.log'}",
                f"SlurmdLogFile={r / 'slurmd.log'}",
                "ProctrackType=proctrack/pgid",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "MpiDefault=none",
                "MailProg=/bin/true",
                "JobCompType=jobcomp/filetxt",
                f"JobCompLoc={self.jobcomp}",
                "ReturnToService=2",
                "KillWait=5",
                "MinJobAge=600",
                "SchedulerParameters=sched_interval=1",
                "SlurmctldTimeout=30",
                "SlurmdTimeout=30",
                *(["SlurmdParameters=config_overrides"] if self.cpus is not None else []),
                _node_line(self.host, cpus=self.cpus),
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def run(self, command: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check)

    def wait_idle(self, *, timeout_s: float) -> None:
        """Wait until the node reports idle (no jobs left); raise with the logs otherwise."""
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            result = self.run(["sinfo", "--noheader", "--format=%T"], check=False)
            state = result.stdout.strip()
            if result.returncode == 0 and state == "idle":
                return
            time.sleep(0.3)
        log = (
            (self.root / "slurmctld.log").read_text()[-2000:]
            if (self.root / "slurmctld.log").exists()
            else ""
        )
        raise RuntimeError(f"SLURM node not idle after {timeout_s} s (state {state!r})\n{log}")

    def job_states(self) -> dict[str, str]:
        """Finished jobs' end states from the jobcomp file: ``{"12": "COMPLETED", ...}``.

        A requeued job has one line per attempt; the last one wins.
        """
        states: dict[str, str] = {}
        if not self.jobcomp.exists():
            return states
        for line in self.jobcomp.read_text().splitlines():
            fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
            if "JobId" in fields:
                states[fields["JobId"]] = fields.get("JobState", "")
        return states

    def wait_job(self, job_id: str, *, timeout_s: float) -> str:
        """Wait until job ``job_id`` has ended (for good, not requeued); return its state.

        Raises
        ------
        AssertionError
            After ``timeout_s``, with the queue and the finished jobs' states.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.job_states().get(job_id)
            if state is not None and state not in ("PENDING", "REQUEUED"):
                return state
            time.sleep(0.3)
        queue = self.run(["squeue"], check=False).stdout
        raise AssertionError(
            f"job {job_id} not finished after {timeout_s} s\n{queue}\njobcomp: {self.job_states()}"
        )

    def cancel_all(self, *, timeout_s: float = 30.0) -> None:
        """Cancel every job of this cluster and wait until the queue is empty."""
        user = pwd.getpwuid(os.geteuid()).pw_name
        self.run(["scancel", f"--user={user}"], check=False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = self.run(["squeue", "--noheader"], check=False)
            if result.returncode != 0 or not result.stdout.strip():
                return
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel the jobs, then stop slurmd, slurmctld and munged by their PID files."""
        self.cancel_all()
        for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            pid_file = self.root / name
            if not pid_file.exists():
                continue
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
            except (ValueError, IndexError, ProcessLookupError):
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)


def running_cluster(
    tmp_path_factory: pytest.TempPathFactory, *, cpus: int | None = None
) -> Iterator[SlurmCluster]:
    """Body of a test module's cluster fixture: start, point ``SLURM_CONF`` at it, stop.

    Skips the tests, with the reason, where SLURM cannot run.  ``SLURM_CONF`` is set in
    ``os.environ`` while the cluster runs (the CLI's sbatch and dask-jobqueue read it)
    and restored afterwards.
    """
    reason = ensure_slurm_packages()
    if reason is not None:
        pytest.skip(f"no test SLURM cluster: {reason}")
    cluster = SlurmCluster.start(tmp_path_factory.mktemp("slurm"), cpus=cpus)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


__all__ = ["SlurmCluster", "ensure_slurm_packages", "running_cluster"]

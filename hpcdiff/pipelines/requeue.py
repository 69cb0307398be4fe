"""When a run is finished, what a rerun may overwrite, and stops between stages.

A run is *finished* when the outputs that mark it finished exist (for ``train``: the model
and the training report).  Everything else a run writes on the way (``features.h5``, the
rejects file, the run report, the shard folder) is intermediate: a rerun of the same job
(same config hash, the shards of ``<kind>.shards/`` accepted by
:meth:`~hpcdiff.parallel.shards.ShardStore.prepare`) resumes from the shards and rewrites
them, so a requeued job always finishes without ``--force``.

``--force`` means: run again even though the run is finished, overwriting its outputs, and
discard checkpoints written by a *different* job; checkpoints of the same job are reused
either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from hpcdiff.errors import OutputExistsError
from hpcdiff.parallel.signals import Preempted

if TYPE_CHECKING:  # numpy and MPI load on use: ``hpcdiff --help`` imports this module
    from hpcdiff.parallel.mpi import Comm

FORCE_HELP = (
    "run again although the run is finished, overwriting its outputs, and discard "
    "checkpoints of a different job in output.dir (checkpoints of the same job are "
    "always reused)"
)
"""What ``--force`` does, for the CLI help and the messages."""


def refuse_finished(
    kind: str,
    outputs: Mapping[str, Path],
    *,
    finished: Iterable[Path] | None,
    out_dir: Path,
) -> None:
    """Raise if the ``kind`` run is finished (called without ``--force``).

    ``finished`` lists the files that mark the run finished (all must exist); ``None``
    means every output does (any existing output then counts as finished).

    Raises
    ------
    OutputExistsError
        Naming the file, and what ``--force`` would do.
    """
    if finished is None:
        done = [p for p in outputs.values() if p.exists()]
        if not done:
            return
    else:
        marks = list(finished)
        if not marks or not all(p.exists() for p in marks):
            return
        done = marks
    raise OutputExistsError(
        f"{done[0]} exists already: the '{kind}' run in {out_dir} is finished; pass --force "
        f"to run it again and overwrite its outputs, or choose another output.dir"
    )


def refuse_strays(kind: str, outputs: Mapping[str, Path], *, shard_dir: Path) -> None:
    """Raise if intermediate outputs exist but there are no shards of this job to resume.

    Called without ``--force`` after :meth:`ShardStore.prepare` found no shards: files in
    the way were then not written by an unfinished run of this job, and are kept.
    """
    existing = [p for p in outputs.values() if p.exists()]
    if existing:
        raise OutputExistsError(
            f"{existing[0]} exists already, but {shard_dir} holds no checkpoints of this job "
            f"to resume the '{kind}' run from; pass --force to overwrite it, or choose "
            "another output.dir"
        )


def stop_if_requested(comm: Comm, stop: object, *, where: str, shard_dir: Path) -> None:
    """Collectively raise :class:`Preempted` if a stop signal reached any rank.

    Call between stages, before anything is written: every rank takes part (one small
    reduction), so all ranks stop together and nothing is half-written.
    """
    import numpy as np

    from hpcdiff.parallel.mpi import allreduce_sum

    flag = np.array([1 if (stop is not None and stop) else 0], dtype=np.int64)
    if int(allreduce_sum(comm, flag)[0]):
        raise Preempted(
            f"stopped by a signal {where}, before any output was written; the checkpoints "
            f"in {shard_dir} are kept: run the same command again (no --force) to finish"
        )


__all__ = ["FORCE_HELP", "refuse_finished", "refuse_strays", "stop_if_requested"]

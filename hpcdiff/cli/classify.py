"""``hpcdiff classify train|predict JOB.toml``: the MPI classify job.

Run it as one process, or under ``mpiexec -n N`` / ``srun``: ranks split the frames.
Exit status: 0 done; 1 error (on one rank: every rank is aborted); 2 usage;
65 (``EX_DATAERR``) finished but more frames were rejected than
``parallel.max_reject_fraction`` allows; 75 (``EX_TEMPFAIL``) stopped by SIGTERM/SIGUSR1
after saving checkpoints (during the frame loop or the learn stage, before the
model is written): run the same command again, without ``--force``, to resume.  A run is
finished when its results exist (``train``: the model and ``train-report.json``);
``features.h5`` and the checkpoints of an unfinished run are reused by a rerun.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from hpcdiff.pipelines.layout import MODEL_NAME
from hpcdiff.pipelines.requeue import FORCE_HELP

EXIT_TOO_MANY_REJECTS = 65
"""Exit status when rejects exceed ``parallel.max_reject_fraction`` (``EX_DATAERR``)."""


def add_common(p: argparse.ArgumentParser) -> None:
    """Arguments every MPI job command takes."""
    p.add_argument("job", help="TOML job file")
    p.add_argument(
        "--force",
        action="store_true",
        help=FORCE_HELP,
    )
    p.add_argument("--verbose", "-v", action="store_true", help="log debug messages")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify",
        help="train or apply the diffuse-scattering classifier (MPI: mpiexec -n N / srun)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser(
        "train", help="features on all ranks, PCA + logistic regression on the root"
    )
    add_common(train)
    train.set_defaults(func=run)
    predict = actions.add_parser("predict", help="apply a trained model to every frame")
    add_common(predict)
    predict.add_argument(
        "--model",
        help=f"model file (default: [output] model, or output.dir/{MODEL_NAME})",
    )
    predict.set_defaults(func=run)


def run_mpi_job(args: argparse.Namespace, body: Callable[[Any, Any, Any], object]) -> int:
    """Run ``body(job, comm, stop)`` on every rank; map the outcome to an exit status.

    The job file is loaded on every rank (a bad file fails everywhere alike).  Errors
    every rank shares are reported once, by rank 0; an error on a single rank aborts
    the whole job (:func:`~hpcdiff.parallel.mpi.abort_on_error`), never a hang.
    """
    from hpcdiff.config import load_job
    from hpcdiff.errors import HpcdiffError
    from hpcdiff.parallel.mpi import abort_on_error, get_comm
    from hpcdiff.parallel.signals import EXIT_PREEMPTED, Preempted, stop_on_signals
    from hpcdiff.pipelines.classify import TooManyRejects
    from hpcdiff.progress import setup_logging

    comm = get_comm()
    rank = comm.Get_rank()
    setup_logging(rank, comm.Get_size(), level=logging.DEBUG if args.verbose else logging.INFO)
    log = logging.getLogger("hpcdiff.classify")
    try:
        job = load_job(args.job)
        with abort_on_error(comm), stop_on_signals() as stop:
            body(job, comm, stop)
    except Preempted as exc:
        if rank == 0:
            log.warning("%s (exit status %d)", exc, EXIT_PREEMPTED)
        return EXIT_PREEMPTED
    except TooManyRejects as exc:
        if rank == 0:
            log.error("%s", exc)
        return EXIT_TOO_MANY_REJECTS
    except HpcdiffError:
        if rank == 0:
            raise
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpcdiff.pipelines.classify import run_predict, run_train

    if args.action == "train":
        return run_mpi_job(
            args, lambda job, comm, stop: run_train(job, comm=comm, force=args.force, stop=stop)
        )
    model = Path(args.model) if args.model else None
    return run_mpi_job(
        args,
        lambda job, comm, stop: run_predict(
            job, comm=comm, force=args.force, stop=stop, model=model
        ),
    )

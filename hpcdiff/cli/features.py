"""``hpcdiff features JOB.toml``: the distributed feature stage alone (MPI-aware).

Writes ``output.dir/features.h5`` (one VGG16 feature vector per frame, ordered by frame),
``features-rejects.jsonl`` and ``features-run.json``.  Exit statuses as for
``hpcdiff classify`` (75: stopped by a signal, resumable).
"""

from __future__ import annotations

import argparse

from hpcdiff.cli.classify import add_common, run_mpi_job


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features",
        help="compute VGG16 features of every frame (MPI: mpiexec -n N / srun)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hpcdiff.pipelines.classify import run_features

    return run_mpi_job(
        args, lambda job, comm, stop: run_features(job, comm=comm, force=args.force, stop=stop)
    )

"""``hpcdiff fourier JOB.toml``: the dask Fourier job (3D merge, common-arc similarity, diffusion maps).

Starts or joins the cluster of ``[fourier.cluster]`` (LocalCluster by default; ``slurm``:
dask-jobqueue; ``mpi``: run under ``srun``/``mpiexec``, rank 0 scheduler, rank 1 client,
the rest workers; ``address``: a running scheduler), prints the dashboard address and
progress, and writes its outputs to ``[output] dir`` (or ``--out``).

SIGTERM or SIGUSR1 stop the job at its next checkpoint with exit status 75; rerunning the
same command resumes from ``<out>/fourier.work`` (see :func:`hpcdiff.pipelines.fourier.run_fourier`).

A job with a ``[simulate]`` section and no ``[experiment] frames`` first simulates the
experiment into ``<out>/simulated`` and merges that, validating against its true map.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from hpcdiff.config import JobConfig, load_job
from hpcdiff.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fourier",
        help="merge frames into a 3D reciprocal-space grid; common-arc similarity; diffusion maps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", help="TOML job file")
    p.add_argument("--out", type=Path, help="output folder (default: the job's [output] dir)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument(
        "--cluster",
        choices=["local", "slurm", "mpi", "address"],
        help="override [fourier.cluster] kind",
    )
    p.add_argument("--address", help="scheduler address (implies --cluster address)")
    p.add_argument("--n-workers", type=int, help="override [fourier.cluster] n_workers")
    p.add_argument(
        "--print-job-script",
        action="store_true",
        help="with kind 'slurm': print the worker job script and exit (nothing submitted)",
    )
    p.set_defaults(func=run)


def _with_cluster_overrides(job: JobConfig, args: argparse.Namespace) -> JobConfig:
    changes: dict[str, Any] = {}
    if args.address:
        changes.update(kind="address", address=args.address)
    elif args.cluster:
        changes["kind"] = args.cluster
    if args.n_workers is not None:
        if args.n_workers < 1:
            raise ConfigError(f"--n-workers must be >= 1, got {args.n_workers}")
        changes["n_workers"] = args.n_workers
    if not changes:
        return job
    try:
        cluster = dataclasses.replace(job.fourier.cluster, **changes)
    except ValueError as exc:
        raise ConfigError(f"{args.job}: [fourier.cluster] {exc}") from None
    return _replace(job, fourier=dataclasses.replace(job.fourier, cluster=cluster))


def _replace(job: JobConfig, **changes: Any) -> JobConfig:
    return dataclasses.replace(job, **changes)


def _simulated(job: JobConfig, out: Path, *, force: bool) -> JobConfig:
    """Simulate the job's experiment and return the job pointed at it (truth included)."""
    from hpcdiff.simulate import simulate_experiment

    assert job.simulate is not None
    sim_dir = out / "simulated"
    if (sim_dir / "job.toml").is_file() and (out / "fourier.work").is_dir() and not force:
        # a stopped run of this job: its frames are there already
        print(f"fourier: reusing the simulated frames in {sim_dir}", file=sys.stderr)
        sim_job = load_job(sim_dir / "job.toml")
    else:
        print(f"fourier: simulating {job.simulate.n_frames} frames into {sim_dir}", file=sys.stderr)
        sim = simulate_experiment(job.simulate, sim_dir, force=force)
        sim_job = load_job(getattr(sim, "job", sim_dir / "job.toml"))
    truth = sim_dir / "truth.h5"
    fourier = job.fourier
    if fourier.truth is None and truth.is_file():
        fourier = dataclasses.replace(fourier, truth=truth)
    # frame patterns are relative to the simulated job file: make them absolute
    frames = tuple(str(p) for p in sim_job.frame_files())
    experiment = dataclasses.replace(sim_job.experiment, frames=frames)
    return _replace(job, experiment=experiment, fourier=fourier)


def run(args: argparse.Namespace) -> int:
    from hpcdiff.parallel.dask_cluster import open_cluster, slurm_cluster
    from hpcdiff.parallel.signals import EXIT_PREEMPTED, Preempted, stop_on_signals
    from hpcdiff.pipelines.fourier import run_fourier

    job = load_job(args.job)
    job = _with_cluster_overrides(job, args)
    cfg = job.fourier.cluster
    if args.print_job_script:
        if cfg.kind != "slurm":
            raise ConfigError("--print-job-script needs cluster kind 'slurm'")
        cluster = slurm_cluster(cfg)
        try:
            print(cluster.job_script())
        finally:
            cluster.close()
        return 0
    out = args.out if args.out is not None else job.output.dir
    try:
        with stop_on_signals() as stop, open_cluster(cfg) as session:
            if not session.is_client:  # an MPI rank that served as scheduler or worker
                return 0
            if job.simulate is not None and not job.experiment.frames:
                job = _simulated(job, out, force=args.force)
            result = run_fourier(
                job,
                session.client,
                out_dir=out,
                force=args.force,
                stop=stop,
                report=lambda r: _report(job, r, out),
            )
    except Preempted as exc:
        print(f"fourier: {exc} (exit status {EXIT_PREEMPTED})", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    print(f"fourier: outputs in {out}: " + ", ".join(p.name for p in result.outputs.values()))
    return 0


def _report(job: JobConfig, result: Any, out: Path) -> Path | None:
    """The HTML report, written before the summary (the summary is the last output)."""
    from hpcdiff.pipelines.reports import write_fourier_report

    page = write_fourier_report(job, result, out)
    if page is not None:
        print(f"fourier: report {page}", flush=True)
    return page

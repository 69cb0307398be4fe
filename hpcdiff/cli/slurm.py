"""``hpcdiff slurm render|submit JOB.toml``: the job's sbatch script, printed or submitted."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from hpcdiff.config import JobConfig, SlurmConfig, load_job
from hpcdiff.slurm.scripts import KINDS, job_script
from hpcdiff.slurm.settings import resolve_settings
from hpcdiff.slurm.submit import sbatch_command, submit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slurm", help="render or submit the sbatch script of a job")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text in (
        ("render", "print the sbatch script of a job"),
        ("submit", "submit the job with sbatch --parsable and print its job id"),
    ):
        a = actions.add_parser(name, help=help_text)
        a.add_argument("job", help="TOML job file")
        a.add_argument(
            "--kind",
            choices=KINDS,
            default="classify",
            help="which job: the MPI classify job or the dask Fourier job",
        )
        a.add_argument(
            "--mode",
            choices=("train", "predict"),
            default="predict",
            help="classify mode (default: predict)",
        )
        if name == "render":
            a.add_argument(
                "--generic",
                action="store_true",
                help="leave the job file out: the script takes it as its first "
                "argument (how slurm/*.sbatch are made)",
            )
            a.set_defaults(func=run_render)
        else:
            a.add_argument(
                "--dry-run",
                action="store_true",
                help="print the sbatch command and script instead of submitting",
            )
            a.set_defaults(func=run_submit)


def _log_pattern(settings: SlurmConfig) -> str | None:
    return None if settings.log_dir is None else str(settings.log_dir / "%x-%j.out")


def _script(args: argparse.Namespace, job: JobConfig, *, generic: bool) -> tuple[str, SlurmConfig]:
    settings = resolve_settings(job)
    job_path = None if generic else str(Path(args.job).resolve())
    text = job_script(
        job,
        settings,
        kind=args.kind,
        job_path=job_path,
        mode=args.mode,
        output=_log_pattern(settings),
    )
    return text, settings


def run_render(args: argparse.Namespace) -> int:
    job = load_job(args.job, check_files=not args.generic)
    text, _ = _script(args, job, generic=args.generic)
    print(text, end="")
    return 0


def run_submit(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    text, settings = _script(args, job, generic=False)
    if args.dry_run:
        print(f"# would run: {shlex.join(sbatch_command())} < script")
        print(text, end="")
        return 0
    if settings.log_dir is not None:
        settings.log_dir.mkdir(parents=True, exist_ok=True)
    submission = submit(text)
    print(submission.job_id)
    return 0

"""``hpcdiff reprocess EXPERIMENT.toml``: reprocess a whole experiment as a SLURM array.

Without options: write per-run job files and submit the array (one MPI predict job per
run, ``[slurm] array_throttle`` at a time) and a summary job after it.  Submitting again
resumes: finished runs are skipped, queued or running ones left alone.
``--summarise`` writes the experiment report (what the summary job runs);
``--task`` runs one array task (what the array's script runs).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from hpcdiff.config import JobConfig, SlurmConfig
from hpcdiff.errors import HpcdiffError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reprocess",
        help="reprocess a whole experiment overnight (SLURM array + summary job)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", help="experiment job file (TOML with a [reprocess] section)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--summarise",
        "--summarize",
        action="store_true",
        help="write the experiment report and plot from the output folder",
    )
    mode.add_argument(
        "--task", action="store_true", help="run one array task (SLURM_ARRAY_TASK_ID, or --index)"
    )
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be submitted; write and submit nothing",
    )
    p.add_argument("--submission", type=Path, help="with --task: the submission folder")
    p.add_argument(
        "--index", type=int, help="with --task: the task index (default: SLURM_ARRAY_TASK_ID)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="rewrite per-run job files that differ from the experiment job",
    )
    p.set_defaults(func=run)


def queue_or_none(job: JobConfig) -> dict[str, str] | None:
    """SLURM's view of the experiment's jobs, or ``None`` where squeue is absent or fails.

    Without it the output folder alone is used (a warning says why when squeue failed).
    """
    from hpcdiff.pipelines.reprocess import Layout, queue_labels
    from hpcdiff.slurm.submit import SlurmCommandError, queued_jobs, squeue_available

    if not squeue_available():
        return None
    try:
        return queue_labels(Layout(job.output.dir), squeue=queued_jobs)
    except SlurmCommandError as exc:
        print(f"hpcdiff: warning: {exc}; using the output folder alone", file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    from hpcdiff.pipelines import reprocess
    from hpcdiff.slurm.env import SlurmEnvironment
    from hpcdiff.slurm.settings import resolve_settings

    job = reprocess.load_experiment(args.job)
    if args.task:
        env = SlurmEnvironment.from_environ(os.environ)
        index = args.index if args.index is not None else env.array_task_id
        if args.submission is None or index is None:
            raise HpcdiffError(
                "--task needs --submission and an index (--index or SLURM_ARRAY_TASK_ID)"
            )
        logging.basicConfig(
            level=logging.INFO,
            format=f"%(asctime)s [{env.log_prefix() or 'local'}] %(message)s",
            datefmt="%H:%M:%S",
        )
        launcher = reprocess.task_launcher(resolve_settings(job), env)
        return reprocess.run_task(job, args.submission, index, launcher=launcher, environment=env)
    if args.summarise:
        report = reprocess.summarise(job, queue=queue_or_none(job))
        totals = report["totals"]
        print(
            f"{totals['done']} of {totals['runs']} runs done, {totals['frames']} frames, "
            f"{totals['rejects']} rejects; report {reprocess.Layout(job.output.dir).report}"
        )
        for key in ("failed", "incomplete"):
            if report[key]:
                print(f"  {key}: {', '.join(report[key])}")
        return 0
    return _submit(job, args, resolve_settings(job))


def _submit(job: JobConfig, args: argparse.Namespace, settings: SlurmConfig) -> int:
    from hpcdiff.pipelines import reprocess
    from hpcdiff.slurm.submit import submit

    record = reprocess.submit_experiment(
        job,
        settings,
        force=args.force,
        queue=queue_or_none(job),
        sbatch=None if args.dry_run else (lambda text: submit(text).job_id),
    )
    for name, why in record["skipped"].items():
        print(f"skip {name}: {why}")
    runs = record["runs"]
    if args.dry_run:
        print(f"# would submit an array of {len(runs)} run(s): {', '.join(runs) or 'none'}")
        if record["array_script"]:
            print(record["array_script"], end="")
        print("# then the summary job:")
        print(record["summary_script"], end="")
        return 0
    if runs:
        print(f"array job {record['array_job_id']}: {len(runs)} run(s) ({', '.join(runs)})")
    else:
        print("no run left to submit")
    print(f"summary job {record['summary_job_id']}")
    return 0

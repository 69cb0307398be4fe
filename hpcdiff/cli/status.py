"""``hpcdiff status EXPERIMENT.toml``: what is done, running, failed and left.

Read from the output folder alone; where ``squeue`` exists its view is merged in (a task
the folder says is running but SLURM no longer knows is reported failed).
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status", help="progress of a reprocessing experiment, per run", description=__doc__
    )
    p.add_argument("job", help="experiment job file (TOML with a [reprocess] section)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument(
        "--no-squeue",
        action="store_true",
        help="use the output folder only, even where squeue exists",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hpcdiff.cli.reprocess import queue_or_none
    from hpcdiff.pipelines.reprocess import experiment_status, load_experiment

    job = load_experiment(args.job)
    queue = None if args.no_squeue else queue_or_none(job)
    statuses = experiment_status(job, queue=queue)
    counts = {
        s: sum(st.state == s for st in statuses) for s in ("done", "running", "failed", "left")
    }
    if args.json:
        print(
            json.dumps(
                {
                    "counts": counts,
                    "squeue": queue is not None,
                    "runs": [
                        {
                            "run": s.run.name,
                            "state": s.state,
                            "detail": s.detail,
                            "task": s.task,
                            "frames_checkpointed": s.frames_checkpointed,
                        }
                        for s in statuses
                    ],
                },
                indent=2,
            )
        )
        return 0
    width = max((len(s.run.name) for s in statuses), default=3)
    for s in statuses:
        print(f"{s.run.name:<{width}}  {s.state:<7}  {s.detail}")
    source = "output folder + squeue" if queue is not None else "output folder"
    print(", ".join(f"{n} {k}" for k, n in counts.items()) + f"  ({source})")
    return 0

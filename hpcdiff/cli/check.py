"""``hpcdiff check JOB.toml``: every problem a run of the job would hit, before it is queued.

Opens the first frame of every frame file, reads the labels, the weights, the model (for
``predict``), the stream and the truth map, and lists all problems at once, each with the
file or key and what to do (exit status 1), or says the job is ready (0).
"""

from __future__ import annotations

import argparse
import json

from hpcdiff.config import load_job


def register(sub: argparse._SubParsersAction) -> None:
    from hpcdiff.pipelines.preflight import MODES

    p = sub.add_parser(
        "check",
        help="find every problem a run of a job would hit, before anything runs",
        description=__doc__,
    )
    p.add_argument("job", help="TOML job file")
    p.add_argument(
        "--for",
        dest="mode",
        choices=MODES,
        default="auto",
        help="the run to check for (auto: predict when the model exists, else train when "
        "the job names labels, else predict)",
    )
    p.add_argument("--json", action="store_true", help="print the findings (and job) as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hpcdiff.pipelines.preflight import check_job

    job = load_job(args.job, check_files=False)
    result = check_job(job, mode=args.mode)
    if args.json:
        print(json.dumps({**result.to_dict(), "config": job.to_dict()}, indent=2, sort_keys=True))
        return 0 if result.ok else 1
    labelled = "" if result.n_labelled is None else f", {result.n_labelled} labelled"
    layer = "" if result.layer is None else f", layer {result.layer}"
    print(
        f"{args.job}: checked for {result.mode} (config hash {job.config_hash()}): "
        f"experiment {job.experiment.name!r}, {result.n_files} frame file(s), "
        f"{result.n_frames} frames{labelled}{layer}"
    )
    if job.simulate is not None:
        print(f"  simulated: {job.simulate.n_frames} frames, preset {job.simulate.preset!r}")
    for note in result.notes:
        print(f"  note: {note}")
    if result.ok:
        print("  valid: no problems found")
        return 0
    print(f"{len(result.problems)} problem(s):")
    for i, problem in enumerate(result.problems, 1):
        print(f"  {i}. {problem.where}: {problem.what}.")
        print(f"     -> {problem.fix}")
    return 1

"""``hpcdiff check JOB.toml``: validate a job file without running it."""

from __future__ import annotations

import argparse
import json

from hpcdiff.config import load_job


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate a job file without running it")
    p.add_argument("job", help="TOML job file")
    p.add_argument("--json", action="store_true", help="print the validated job as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    if args.json:
        print(json.dumps(job.to_dict(), indent=2, sort_keys=True))
    else:
        files = job.frame_files()
        print(f"{args.job}: valid (config hash {job.config_hash()})")
        print(f"  experiment {job.experiment.name!r}: {len(files)} frame file(s)")
        if job.simulate is not None:
            print(f"  simulated: {job.simulate.n_frames} frames, preset {job.simulate.preset!r}")
    return 0

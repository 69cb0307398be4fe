"""``hpcdiff labels``: summarise labels, check them against a run, convert between forms.

Labels come in three forms, told apart by content: hpcdiff's HDF5 labels file, a CSV
with a ``file,index,label`` header, and CrystFEL list files (``path //index``), one per
class, the class taken from the file name (``diffuse.lst``, ``non-diffuse.lst``) or given
as ``CLASS=PATH``.  Examples::

    hpcdiff labels labels.csv                          # counts per class
    hpcdiff labels diffuse.lst non-diffuse.lst --job job.toml   # ... and against the run
    hpcdiff labels labels.h5 --to csv --out labels.csv
    hpcdiff labels labels.csv --to lists --out lists/  # lists/diffuse.lst, ...
    hpcdiff labels hits=a.lst non-diffuse=b.lst --to h5 --out labels.h5

With ``--job``, the labels default to the job's ``[experiment] labels``; the summary
names the frames the labels give that the run lacks (file and line) and counts the run's
unlabelled frames; converted files name frames by the run's absolute paths, so that
CrystFEL can read the lists.  Nothing is overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hpcdiff.cli.train import add_class_names_argument, class_names_arg, labels_spec
from hpcdiff.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "labels",
        help="summarise labels, check them against a run, convert CSV / CrystFEL lists / HDF5",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "labels",
        nargs="*",
        metavar="LABELS",
        help="labels file(s): HDF5, CSV, or CrystFEL lists (CLASS=PATH to name a list's class)",
    )
    p.add_argument("--job", metavar="JOB.toml", help="check against this job's run")
    add_class_names_argument(p)
    p.add_argument("--to", choices=["csv", "lists", "h5"], help="convert to this form")
    p.add_argument("--out", help="output file (csv, h5) or folder (lists) for --to")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def summarise(labels: Any) -> dict[str, Any]:
    """Counts per class of a :class:`~hpcdiff.io.labels.Labels`."""
    import numpy as np

    counts = np.bincount(labels.diffuse_class, minlength=len(labels.class_names))
    files = sorted(set(labels.file.tolist()))
    return {
        "frames": len(labels),
        "files": len(files),
        "class_names": list(labels.class_names),
        "per_class": {n: int(c) for n, c in zip(labels.class_names, counts, strict=True)},
        "diffuse": int(labels.diffuse.sum()),
        "with_strength": int(np.isfinite(labels.diffuse_strength).sum()),
    }


def run_frames(job: Any) -> tuple[list[Any], list[dict[str, Any]]]:
    """The run's frames (as ``classify`` sees them) and the files that cannot be read."""
    from hpcdiff.io.sources import open_job_source
    from hpcdiff.pipelines.classify import _geometry, probe_files

    run = probe_files(job)
    with open_job_source(job, run.files, geometry=_geometry(job)) as src:
        ids = list(src.frame_ids)
    return ids, list(run.file_rejects)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from hpcdiff.config import load_job
    from hpcdiff.io.labels import Labels, describe_spec, read_labels, write_labels
    from hpcdiff.io.labels_text import sniff, write_label_lists, write_labels_csv
    from hpcdiff.io.outputs import ensure_writable

    job = load_job(args.job, check_files=False) if args.job else None
    spec = labels_spec(args.labels, job, flag="LABELS")
    if args.to and not args.out:
        raise ConfigError(f"--to {args.to} needs --out")
    if args.out and not args.to:
        raise ConfigError("--out needs --to csv, lists or h5")
    if args.to in ("csv", "h5"):
        ensure_writable(args.out, force=args.force)
    labels = read_labels(spec, class_names=class_names_arg(args, job))
    name = describe_spec(spec)
    entries = [spec] if isinstance(spec, str | Path) else None
    summary: dict[str, Any] = {
        "labels": name,
        "form": sniff(entries[0]) if entries else "list",
        **summarise(labels),
    }
    if job is not None:
        frame_ids, rejects = run_frames(job)
        pos = labels.match_run(frame_ids)
        missing = np.flatnonzero(pos < 0)
        summary["run"] = {
            "job": str(job.source),
            "frames": len(frame_ids),
            "labelled": int((pos >= 0).sum()),
            "unlabelled": int(len(frame_ids) - (pos >= 0).sum()),
            "files_unreadable": [r["file"] for r in rejects],
            "labels_not_in_run": int(missing.size),
            "not_in_run": [
                f"{labels.where(int(r))}: {labels.file[r]} //{labels.index[r]}"
                for r in missing[:20]
            ],
        }
        if args.to:
            if missing.size:
                labels.for_run(frame_ids)  # raises, naming the file and line
            labels = Labels(
                file=np.array([frame_ids[p].file for p in pos.tolist()], dtype=np.str_),
                index=labels.index,
                diffuse=labels.diffuse,
                diffuse_strength=labels.diffuse_strength,
                diffuse_class=labels.diffuse_class,
                class_names=labels.class_names,
            )
    written: list[Path] = []
    if args.to == "csv":
        written = [write_labels_csv(args.out, labels, force=args.force)]
    elif args.to == "h5":
        config_hash = job.config_hash() if job is not None else None
        written = [write_labels(args.out, labels, config_hash=config_hash, force=args.force)]
    elif args.to == "lists":
        written = write_label_lists(args.out, labels, force=args.force)
    summary["written"] = [str(p) for p in written]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{name}: {summary['form']}, {summary['frames']} labelled frames in "
          f"{summary['files']} file(s)")  # fmt: skip
    for cls, n in summary["per_class"].items():
        print(f"  {cls:<16} {n:>8}")
    if summary["with_strength"]:
        print(f"  diffuse_strength given for {summary['with_strength']} frames")
    if job is not None:
        r = summary["run"]
        print(
            f"run of {r['job']}: {r['frames']} frames; {r['labelled']} labelled, "
            f"{r['unlabelled']} without a label (training uses the labelled ones)"
        )
        if r["files_unreadable"]:
            print(f"  {len(r['files_unreadable'])} frame file(s) cannot be read")
        if r["labels_not_in_run"]:
            print(f"  {r['labels_not_in_run']} labelled frame(s) are not in the run:")
            for line in r["not_in_run"]:
                print(f"    {line}")
    for p in written:
        print(f"wrote {p}")
    if args.to == "lists" and tuple(labels.class_names) != ("non-diffuse", "diffuse"):
        print(
            "  these lists name classes other than non-diffuse/diffuse: read them back with "
            f"--class-names {','.join(labels.class_names)} (or [experiment] class_names)"
        )
    if job is not None and summary["run"]["labels_not_in_run"]:
        return 1
    return 0

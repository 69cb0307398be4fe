"""``hpcdiff weights [--job JOB.toml]``, ``weights verify PATH``, ``weights download``.

* (no action, or ``list``): every place hpcdiff looks for VGG16 weights (torch hub cache,
  ``$HPCDIFF_WEIGHTS``, ``/tmp/hpcdiff-weights/``, the jobs given with ``--job``), whether a
  file is there, what it is (full torchvision / conv-only), pretrained or not;
* ``verify PATH``: SHA-256, keys and shapes against torchvision's ``vgg16()``, the feature
  layers it can give, pretrained or not, its sidecar; exit status 1 if it cannot be used;
* ``download``: on a machine with internet access, torchvision's ``vgg16-397923af.pth`` from
  its official address into the torch hub cache (streamed to a temporary file, SHA-256
  prefix checked, renamed into place).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights",
        help="list, verify or download VGG16 checkpoints",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=run_list, job=[], json=False)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    ls = actions.add_parser("list", help="where weights are looked for and what is there")
    for parser in (p, ls):
        parser.add_argument(
            "--job",
            action="append",
            default=[],
            metavar="JOB.toml",
            help="also list the [features] weights of this job file (repeatable)",
        )
        parser.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=run_list)
    v = actions.add_parser("verify", help="check one checkpoint file")
    v.add_argument("path", help="checkpoint (.pth)")
    v.add_argument("--json", action="store_true", help="print JSON")
    v.set_defaults(func=run_verify)
    d = actions.add_parser(
        "download", help="download torchvision's vgg16-397923af.pth into the torch hub cache"
    )
    d.add_argument("--url", default=None, help="address (default: torchvision's official one)")
    d.add_argument(
        "--dest", default=None, help="file to write (default: the torch hub cache checkpoint)"
    )
    d.add_argument(
        "--sha256-prefix",
        default=None,
        help="hex digits the SHA-256 must start with (default: the prefix in the file name)",
    )
    d.add_argument("--timeout-s", type=float, default=60.0, help="network timeout, seconds")
    d.add_argument("--force", action="store_true", help="replace an existing file")
    d.set_defaults(func=run_download)


def _describe(path: Any) -> dict[str, Any]:
    from hpcdiff.errors import FormatError
    from hpcdiff.features.catalog import verify_checkpoint

    try:
        r = verify_checkpoint(path)
    except FormatError as exc:
        return {"ok": False, "problems": [str(exc)]}
    return r.to_dict()


def run_list(args: argparse.Namespace) -> int:
    from hpcdiff.config import load_job
    from hpcdiff.features.catalog import find_weights

    jobs = [(j, load_job(j, check_files=False).features.weights) for j in args.job]
    rows: list[dict[str, Any]] = []
    for c in find_weights(jobs):
        row: dict[str, Any] = {
            "where": c.where,
            "weights": c.spec,
            "path": None if c.path is None else str(c.path),
            "found": c.exists,
        }
        if c.path is None:
            row.update(kind="random", pretrained=False, layers=["fc6+fc7", "fc7", "pool5", "gap"])
        elif c.exists:
            row.update(_describe(c.path))
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['where']}: weights = {row['weights']!r}")
        if row["path"] is None:
            print("    untrained random weights (NOT pretrained): tests and throughput only")
            continue
        if not row["found"]:
            print(f"    {row['path']}: not there")
            continue
        print(f"    {row['path']}")
        print("    " + _summary_line(row))
        for problem in row.get("problems", []):
            print(f"    PROBLEM: {problem}")
    if not any(r["found"] and r.get("ok") and r.get("pretrained") for r in rows if r["path"]):
        print(
            "\nno pretrained checkpoint found: `hpcdiff weights download` on a machine with "
            "internet access, or see README, section Weights"
        )
    return 0


def _summary_line(row: dict[str, Any]) -> str:
    if "sha256" not in row:
        return "unreadable"
    pre = {True: "pretrained", False: "NOT pretrained", None: "pretrained: unknown"}
    layers = ", ".join(row["layers"]) or "none"
    return (
        f"{row['kind']}, {pre[row['pretrained']]}, layers {layers}, "
        f"sha256 {row['sha256'][:16]}..., {row['size_bytes'] / 1e6:.1f} MB"
    )


def run_verify(args: argparse.Namespace) -> int:
    from hpcdiff.features.catalog import verify_checkpoint

    r = verify_checkpoint(args.path)
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0 if r.ok else 1
    pre = {True: "yes", False: "NO", None: "unknown"}[r.pretrained]
    rows = [
        ("path", str(r.path)),
        ("size", f"{r.size_bytes:,} bytes"),
        ("sha256", r.sha256),
        (
            "published prefix",
            "none in the name"
            if r.published_prefix is None
            else f"{r.published_prefix} "
            + ("(matches)" if r.sha256.startswith(r.published_prefix) else "(DOES NOT MATCH)"),
        ),
        ("tensors", f"{r.n_tensors} ({r.n_params:,} parameters)"),
        ("kind", r.kind),
        ("layers", ", ".join(r.layers) or "none"),
        ("pretrained", f"{pre}{': ' + r.pretrained_reason if r.pretrained_reason else ''}"),
        ("sidecar", str(r.sidecar) if r.sidecar else "none"),
        ("preprocessing", r.preprocessing),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for note in r.notes:
        print(f"note: {note}")
    for problem in r.problems:
        print(f"PROBLEM: {problem}")
    print("usable" if r.ok else f"NOT usable ({len(r.problems)} problem(s))")
    return 0 if r.ok else 1


def run_download(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpcdiff.features.download import download_checkpoint
    from hpcdiff.features.weights import TORCHVISION_URL, hub_checkpoint_path

    url = args.url or TORCHVISION_URL
    dest = Path(args.dest).expanduser() if args.dest else hub_checkpoint_path()
    print(f"downloading {url}\n         to {dest}", flush=True)
    last = [-1]

    def progress(done: int, total: int | None) -> None:
        step = done * 20 // total if total else done >> 26
        if step != last[0] and sys.stderr.isatty():
            last[0] = step
            size = f"{done / 1e6:.0f}" + (f" / {total / 1e6:.0f}" if total else "")
            print(f"\r  {size} MB", end="", file=sys.stderr, flush=True)

    sha = download_checkpoint(
        url,
        dest,
        sha256_prefix=args.sha256_prefix,
        force=args.force,
        timeout_s=args.timeout_s,
        progress=progress,
    )
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"sha256 {sha} (published prefix checked)")
    print(
        f'installed {dest}; use it with [features] weights = "hub"'
        if not args.dest
        else f"installed {dest}"
    )
    return 0

"""Run the benchmark suite and write a JSON record plus a Markdown table.

Usage::

    python benchmarks/run.py [--quick] [--only NAME ...] [--out DIR]

Each ``benchmarks/bench_*.py`` module exposes ``run(quick: bool) -> dict`` returning
``{"title": str, "rows": [{"metric": str, "value": float, "unit": str, "note": str}], ...}``
(extra keys are kept in the JSON).  Figures are medians of repeated runs, printed, never
asserted.  The record names the machine, library versions, devices and git commit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine_info() -> dict:
    """Machine, versions, devices and commit, for the record."""
    info: dict = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        info["commit"] = None
    for name in ("numpy", "scipy", "h5py", "torch", "sklearn", "dask", "mpi4py", "hpcdiff"):
        try:
            module = __import__(name)
            info[f"{name}_version"] = getattr(module, "__version__", "?")
        except ImportError:
            info[f"{name}_version"] = None
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        info["devices"] = (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if info["cuda"]
            else ["cpu"]
        )
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["devices"] = ["cpu"]
    return info


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def markdown(record: dict) -> str:
    """The record as a Markdown document: machine block, then one table per benchmark."""
    m = record["machine"]
    lines = [
        "# hpcdiff benchmarks",
        "",
        f"- commit `{m.get('commit')}`, {m['created_utc']}, host {m['host']}",
        f"- {m['platform']}, {m['cpu_count']} CPUs, devices: {', '.join(m.get('devices', []))}",
        f"- python {m['python']}, torch {m.get('torch_version')}, numpy {m.get('numpy_version')}",
        "",
    ]
    for name, result in record["benchmarks"].items():
        lines.append(f"## {result.get('title', name)}")
        lines.append("")
        if "error" in result:
            lines += ["```", result["error"].strip()[-2000:], "```", ""]
            continue
        lines += ["| metric | value | unit | note |", "|---|---:|---|---|"]
        for row in result.get("rows", []):
            value = row.get("value")
            text = f"{value:.4g}" if isinstance(value, int | float) else str(value)
            lines.append(
                f"| {row['metric']} | {text} | {row.get('unit', '')} | {row.get('note', '')} |"
            )
        lines += ["", f"({result.get('seconds', 0):.0f} s)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer repeats")
    parser.add_argument("--only", nargs="*", help="benchmark names (bench_NAME.py)")
    parser.add_argument("--out", default="benchmark-results", help="output folder")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine_info(), "quick": args.quick, "benchmarks": {}}
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            result = _load(path).run(quick=args.quick)
        except Exception:  # a broken benchmark is recorded, the suite goes on
            result = {"title": name, "error": traceback.format_exc()}
            print(result["error"], file=sys.stderr)
        result["seconds"] = time.perf_counter() - start
        record["benchmarks"][name] = result
        for row in result.get("rows", []):
            print(f"  {row['metric']:<50} {row['value']!s:>12} {row.get('unit', '')}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = out / f"benchmarks-{stamp}.json"
    md_path = out / f"benchmarks-{stamp}.md"
    json_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    md_path.write_text(markdown(record) + "\n")
    print(f"wrote {json_path} and {md_path}")
    return 1 if any("error" in r for r in record["benchmarks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())

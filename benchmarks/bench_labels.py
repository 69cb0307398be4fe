"""Labels I/O: reading each labels form and matching the rows to a run, rows per second.

Usage::

    python benchmarks/bench_labels.py [--rows 100000] [--repeats 3]

Builds a run of ``rows`` frames (1000 per file), labels naming every frame by base name,
writes them as CSV, CrystFEL lists and HDF5, and prints the median wall and CPU time
(``time.process_time``) of :func:`hpcdiff.io.labels.read_labels` for each form and of
:meth:`~hpcdiff.io.labels.Labels.match_run` (base-name matching, the slowest path).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hpcdiff.io.cxi import FrameId
from hpcdiff.io.labels import Labels, read_labels, write_labels
from hpcdiff.io.labels_text import write_label_lists, write_labels_csv


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), result


def measure(rows: int, repeats: int) -> list[dict[str, Any]]:
    """One row per measurement: ``metric``, ``value`` (rows/s of wall time), ``unit``, ``note``."""
    run = [FrameId(f"/data/exp/r0001/frames_{k // 1000:04d}.cxi", k % 1000) for k in range(rows)]
    cls = np.arange(rows) % 2
    labels = Labels.from_frame_ids(
        [FrameId(os.path.basename(f.file), f.index) for f in run],
        diffuse=cls,
        diffuse_strength=np.zeros(rows),
        diffuse_class=cls,
        class_names=("non-diffuse", "diffuse"),
    )
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_labels_") as tmp:
        d = Path(tmp)
        specs: dict[str, Any] = {
            "csv": write_labels_csv(d / "labels.csv", labels),
            "lists": write_label_lists(d / "lists", labels),
            "hdf5": write_labels(d / "labels.h5", labels),
        }
        for form, spec in specs.items():
            wall, cpu, read = _timed(lambda spec=spec: read_labels(spec), repeats)
            assert len(read) == rows
            out.append(
                {"metric": f"read_labels {form}", "value": rows / wall, "unit": "rows/s",
                 "note": f"{rows} rows: {wall:.3f} s wall, {cpu:.3f} s CPU (median)"}
            )  # fmt: skip
        wall, cpu, pos = _timed(lambda: labels.match_run(run), repeats)
        assert (pos >= 0).all()
        out.append(
            {"metric": "match_run by base name", "value": rows / wall, "unit": "rows/s",
             "note": f"{rows} rows on {rows} run frames: {wall:.3f} s wall, {cpu:.3f} s CPU"}
        )  # fmt: skip
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Suite entry (``benchmarks/run.py``)."""
    rows = measure(20_000 if quick else 100_000, 1 if quick else 3)
    return {"title": "Labels I/O (read each form, match to a run)", "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    for row in measure(args.rows, args.repeats):
        print(f"{row['metric']:<24} {row['value']:>12,.0f} {row['unit']}   {row['note']}")


if __name__ == "__main__":
    main()

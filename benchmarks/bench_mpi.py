"""Throughput and scaling of the MPI feature job (``hpcdiff features``) on 1..N ranks.

Simulates a small experiment, then measures:

* each stage alone, in this process on one thread: HDF5 read, preprocessing (background
  removal + CNN image), VGG16 features; frames/s, median of ``--repeats``;
* the whole job on each rank count (one plain process for 1 rank, ``mpiexec -n N``
  otherwise): frames/s of the frame loop (from ``features-run.json``; process start and
  model construction excluded), wall time, parallel efficiency
  ``rate(N) / (N * rate(1))``, and the share of each rank's loop time spent waiting for
  input and in collectives (worst rank);
* the overlap ratio: end-to-end frames/s on one rank / the slowest stage's stand-alone
  rate (target >= 0.9: reading and preprocessing hidden behind the CNN), with the reader
  thread preprocessing (``parallel.overlap_preprocess = true``, the default) and without.

Usage::

    python benchmarks/bench_mpi.py [--detector small|cspad] [--frames 64] [--ranks 1 2]
        [--layer gap] [--image-size 224] [--repeats 3] [--json report.json]
    python benchmarks/run.py --only mpi [--quick]      # CSPAD-like frames

Ranks share the machine: on a 2-core box 2 ranks of 1 thread each use every core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAUNCH_VARS = ("PMI_SIZE", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")

JOB = """\
[experiment]
frames = ["frames_*.cxi"]
geometry = "detector.geom"
data_path = "/entry_1/data_1/data"

[corrections]
bad_pixel_frames = 0

[background]
image_size_px = {image_size}

[features]
weights = "{weights}"
layer = "{layer}"
batch_size = {batch}
device = "cpu"
bf16 = false

[parallel]
checkpoint_every = 64
threads_per_rank = 1
progress_interval_s = 60
overlap_preprocess = {overlap}

[output]
dir = "{out}"
"""


def write_job(folder: Path, name: str, args: argparse.Namespace, *, overlap: bool) -> Path:
    text = JOB.format(
        image_size=args.image_size,
        weights=args.weights,
        layer=args.layer,
        batch=args.batch,
        overlap=str(overlap).lower(),
        out=f"out_{name}",
    )
    path = folder / f"job_{name}.toml"
    path.write_text(text)
    return path


def stage_rates(job_path: Path, repeats: int) -> dict[str, float]:
    """Frames/s of read, preprocess and features alone (one thread, data in memory)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as one rank of threads_per_rank = 1
    try:
        return _stage_rates(job_path, repeats)
    finally:
        torch.set_num_threads(previous)  # the rest of a suite run keeps its threads


def _stage_rates(job_path: Path, repeats: int) -> dict[str, float]:
    """:func:`stage_rates` on whatever threads torch has."""
    import numpy as np

    from hpcdiff.config import load_job
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.parallel.frame_loop import FrameBatch
    from hpcdiff.pipelines.classify import Featurizer, _geometry, detector_model
    from hpcdiff.progress import Timings

    job = load_job(job_path)
    geom = _geometry(job)
    files = [str(f) for f in job.frame_files()]
    times: dict[str, list[float]] = {"read": [], "preprocess": [], "features": []}
    with FrameSource(files, geometry=geom, data_path=job.experiment.data_path) as src:
        n = src.n_frames
        fz = Featurizer(
            job, model=detector_model(geom, src.frame_values(0, 1)), device="cpu", timings=Timings()
        )
        bs = job.features.batch_size
        spans = [(a, min(a + bs, n)) for a in range(0, n, bs)]
        for _ in range(repeats):
            src.close()  # cold handles each time; the OS page cache stays warm
            t0 = time.perf_counter()
            frames = [src.read(a, b) for a, b in spans]
            values = [src.frame_values(a, b) for a, b in spans]
            times["read"].append(time.perf_counter() - t0)
            batches = [
                FrameBatch(a, b, f, np.arange(a, b), v)
                for (a, b), f, v in zip(spans, frames, values, strict=True)
            ]
            t0 = time.perf_counter()
            images = [fz.images(b) for b in batches]
            times["preprocess"].append(time.perf_counter() - t0)
            fz.extractor.extract(images[0])  # warm-up
            t0 = time.perf_counter()
            for im in images:
                fz.extractor.extract(im)
            times["features"].append(time.perf_counter() - t0)
    return {k: n / statistics.median(v) for k, v in times.items()}


def run_job(job_path: Path, ranks: int) -> dict:
    # one OpenMP thread per rank, as threads_per_rank = 1 asks; set for the job's processes
    # only, so that the other benchmarks of a suite run keep their own thread counts
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "hpcdiff", "features", str(job_path), "--force"]
    if ranks > 1:
        mpiexec = shutil.which("mpiexec")
        if mpiexec is None:
            raise SystemExit("mpiexec not found: cannot run more than one rank")
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = job_path.parent / f"out_{job_path.stem.removeprefix('job_')}"
    report = json.loads((out / "features-run.json").read_text())
    shares = {"wait_input": 0.0, "collective": 0.0}
    for t in report["timings"]:
        total = t["total"]["seconds"]
        for key in shares:
            if key in t and total > 0:
                shares[key] = max(shares[key], t[key]["seconds"] / total)
    return {
        "ranks": ranks,
        "frames": report["frames"]["processed"],
        "frames_per_s": report["frames_per_s"],
        "loop_s": report["elapsed_s"],
        "wall_s": wall,
        "wait_input_share": shares["wait_input"],
        "collective_share": shares["collective"],
    }


def _median(runs: list[dict]) -> dict:
    keys = ("frames_per_s", "loop_s", "wall_s", "wait_input_share", "collective_share")
    return {"ranks": runs[0]["ranks"], "frames": runs[0]["frames"], "repeats": len(runs)} | {
        k: statistics.median(r[k] for r in runs) for k in keys
    }


def measure(args: argparse.Namespace) -> dict:
    """Run every measurement described in the module docstring; print and return them."""
    from hpcdiff.config import SimulateConfig
    from hpcdiff.simulate.experiment import simulate_experiment

    with tempfile.TemporaryDirectory(prefix="bench_mpi_") as tmp:
        folder = Path(tmp) / "exp"
        cfg = SimulateConfig(
            detector=args.detector,
            n_frames=args.frames,
            frames_per_file=32,
            truth_grid_size=16,
            processes=min(2, os.cpu_count() or 1),
        )
        simulate_experiment(cfg, folder)
        job = write_job(folder, "overlap", args, overlap=True)
        serial = write_job(folder, "serial", args, overlap=False)
        load0 = os.getloadavg()[0]
        # interleaved, so that a change in the machine's load hits every measurement alike
        stage_runs: list[dict[str, float]] = []
        job_runs: dict[int, list[dict]] = {n: [] for n in args.ranks}
        serial_runs: list[dict] = []
        for _ in range(args.repeats):
            stage_runs.append(stage_rates(job, 1))
            for n in args.ranks:
                job_runs[n].append(run_job(job, n))
            serial_runs.append(run_job(serial, 1))
        load1 = os.getloadavg()[0]
        rates = {k: statistics.median(r[k] for r in stage_runs) for k in stage_runs[0]}
        results = [_median(job_runs[n]) for n in args.ranks]
        one_serial = _median(serial_runs)

    base = next((r for r in results if r["ranks"] == 1), None)
    for r in results:
        r["efficiency"] = r["frames_per_s"] / (r["ranks"] * base["frames_per_s"]) if base else None
    slowest = min(rates, key=rates.get)
    compute_rate = 1.0 / (1.0 / rates["preprocess"] + 1.0 / rates["features"])
    print(f"machine: {os.cpu_count()} cores, load average {load0:.1f} at start, {load1:.1f} at end")
    print(
        f"stage rates alone ({args.detector} detector, 1 thread, {args.frames} frames, "
        f"median of {args.repeats}):"
    )
    for k, v in rates.items():
        print(f"  {k:<11} {v:10.1f} frames/s")
    print(f"  slowest: {slowest}; preprocess+features in series: {compute_rate:.1f} frames/s")
    print()
    print(
        f"{'ranks':>5} {'frames/s':>9} {'efficiency':>10} {'wait input':>10} "
        f"{'collective':>10} {'loop s':>7} {'wall s':>7}"
    )
    for r in results:
        eff = f"{r['efficiency']:.2f}" if r["efficiency"] is not None else "-"
        print(
            f"{r['ranks']:>5} {r['frames_per_s']:>9.1f} {eff:>10} "
            f"{100 * r['wait_input_share']:>9.1f}% {100 * r['collective_share']:>9.1f}% "
            f"{r['loop_s']:>7.2f} {r['wall_s']:>7.1f}"
        )
    overlap = {}
    if base:
        overlap = {
            "overlapped": base["frames_per_s"] / rates[slowest],
            "serial_preprocess": one_serial["frames_per_s"] / rates[slowest],
        }
        print()
        print(f"overlap ratio, 1 rank, end-to-end / slowest stage ({slowest}) alone:")
        print(f"  preprocess in the reader thread: {overlap['overlapped']:.2f} (target >= 0.90)")
        print(f"  preprocess on the main thread:   {overlap['serial_preprocess']:.2f}")
    record = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "stage_rates": rates,
        "slowest_stage": slowest,
        "runs": results,
        "serial_one_rank": one_serial,
        "overlap_ratio": overlap,
        "load_average": [load0, load1],
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    return record


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--detector", choices=["small", "cspad"], default="small")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--layer", default="gap")
    p.add_argument("--weights", default="random:0")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def run(quick: bool = False) -> dict:
    """Suite entry (``benchmarks/run.py``): full-size CSPAD frames on 1 and 2 ranks."""
    # enough batches that filling the pipeline (the first batch is never overlapped) is small
    argv = ["--detector", "cspad", "--frames", "48" if quick else "192"]
    argv += ["--repeats", "1" if quick else "3"]
    record = measure(_parser().parse_args(argv))
    rows = [
        {"metric": f"{stage} alone (1 thread)", "value": rate, "unit": "frames/s",
         "note": "CSPAD-like 1480x1552 slab"}
        for stage, rate in record["stage_rates"].items()
    ]  # fmt: skip
    for r in record["runs"]:
        rows.append({"metric": f"features job, {r['ranks']} rank(s)", "value": r["frames_per_s"],
                     "unit": "frames/s", "note": f"efficiency {r['efficiency']:.2f}, wait input "
                     f"{100 * r['wait_input_share']:.0f}%, collectives "
                     f"{100 * r['collective_share']:.0f}%"})  # fmt: skip
    if record["overlap_ratio"]:
        rows.append({"metric": "overlap ratio (1 rank / slowest stage alone)",
                     "value": record["overlap_ratio"]["overlapped"], "unit": "",
                     "note": f"target >= 0.90; slowest stage {record['slowest_stage']}"})  # fmt: skip
    return {"title": "MPI features job: stages, 1 and 2 ranks, overlap", "rows": rows, **record}


def main() -> None:
    measure(_parser().parse_args())


if __name__ == "__main__":
    main()

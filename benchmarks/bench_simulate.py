"""Throughput of the simulator on one core: full-size (CSPAD-like) frames per second.

Usage::

    python benchmarks/bench_simulate.py [--detector cspad|small] [--frames 12] [--repeats 3]
                                        [--preset moderate] [--write] [--json OUT.json]

Prints the set-up time (per-detector arrays, molecular transform), the median time of a
non-diffuse and of a diffuse frame (noise on, as written), the frames/s per core of the
configured diffuse fraction, a per-stage breakdown, and with ``--write`` the end-to-end rate
of :func:`hpcdiff.simulate.simulate_experiment` including CXI writing.  Threads are pinned
to 1 so the number is per core.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from hpcdiff.config import SimulateConfig  # noqa: E402
from hpcdiff.simulate import build_simulator, simulate_experiment  # noqa: E402


def _median_time(fn, repeats: int, *, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def run(quick: bool = False) -> dict:
    """Suite entry (``benchmarks/run.py``): the command line's measurements as rows."""
    with tempfile.TemporaryDirectory(prefix="bench_simulate_") as tmp:
        out = Path(tmp) / "simulate.json"
        argv = ["--json", str(out), "--frames", "4" if quick else "12"]
        main([*argv, *(["--repeats", "1"] if quick else ["--write"])])
        result = json.loads(out.read_text())
    rows = [
        {"metric": key, "value": value, "unit": "", "note": "CSPAD-like detector"}
        for key, value in result.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    return {"title": "Simulator: full-size frames per second per core", "rows": rows, **result}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", choices=("cspad", "small"), default="cspad")
    parser.add_argument("--frames", type=int, default=12, help="frames per timing")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; the median is kept")
    parser.add_argument("--preset", default="moderate")
    parser.add_argument("--write", action="store_true", help="also time simulate_experiment")
    parser.add_argument("--json", type=Path, help="write the numbers here too")
    args = parser.parse_args(argv)

    cfg = SimulateConfig(detector=args.detector, preset=args.preset, seed=0)
    t0 = time.perf_counter()
    sim = build_simulator(cfg)
    setup_s = time.perf_counter() - t0
    n_pix = int(np.sum(sim.detector.panel_index >= 0))

    diffuse = [i for i in range(10_000) if sim.parameters(i)[0].strength > 0][: args.frames]
    plain = [i for i in range(10_000) if sim.parameters(i)[0].strength == 0][: args.frames]
    sim.frame(plain[0])  # warm caches

    def run(indices: list[int]) -> None:
        for i in indices:
            sim.frame(i)

    t_plain = _median_time(lambda: run(plain), args.repeats) / len(plain)
    t_diffuse = _median_time(lambda: run(diffuse), args.repeats) / len(diffuse)
    f = cfg.diffuse_fraction
    t_mix = f * t_diffuse + (1 - f) * t_plain
    # CPU time of this process: the per-core cost even when the machine is shared
    cpu_plain = _median_time(lambda: run(plain), args.repeats, clock=time.process_time)
    cpu_diffuse = _median_time(lambda: run(diffuse), args.repeats, clock=time.process_time)
    cpu_mix = (f * cpu_diffuse / len(diffuse)) + (1 - f) * cpu_plain / len(plain)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    # per-stage breakdown of one diffuse frame
    index = diffuse[0]
    _truth, drift = sim.parameters(index)
    stages = {
        "components (background+bragg+diffuse)": _median_time(
            lambda: sim.components(index), args.repeats
        ),
        "components without diffuse": _median_time(
            lambda: sim.components(index, twin=True), args.repeats
        ),
    }
    photons = sim.components(index)[0].total
    stages["detector (poisson, gain, noise, ADU)"] = _median_time(
        lambda: sim.response.to_adu(photons, drift, rng=np.random.default_rng(0)), args.repeats
    )

    result = {
        "detector": args.detector,
        "pixels": n_pix,
        "preset": args.preset,
        "diffuse_fraction": f,
        "setup_s": setup_s,
        "frame_s_non_diffuse": t_plain,
        "frame_s_diffuse": t_diffuse,
        "frames_per_s_per_core": 1.0 / t_mix,
        "frames_per_s_per_core_cpu_time": 1.0 / cpu_mix,
        "load_average_1min": load,
        "stages_s": stages,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "numpy": np.__version__,
    }
    print(f"detector {args.detector}: {n_pix} pixels; set-up {setup_s:.2f} s")
    print(f"  non-diffuse frame: {1e3 * t_plain:7.1f} ms (median of {args.repeats})")
    print(f"  diffuse frame:     {1e3 * t_diffuse:7.1f} ms")
    print(
        f"  frames/s per core at diffuse_fraction {f}: {1.0 / t_mix:.2f} wall-clock, "
        f"{1.0 / cpu_mix:.2f} by process CPU time (load average {load:.1f}); "
        f"diffuse/non-diffuse time ratio {t_diffuse / t_plain:.2f}"
    )
    for name, seconds in stages.items():
        print(f"    {name:40s} {1e3 * seconds:7.1f} ms")

    if args.write:
        for compression in ("none", "gzip"):
            wcfg = dataclasses.replace(
                cfg, n_frames=args.frames, frames_per_file=args.frames, compression=compression
            )
            with tempfile.TemporaryDirectory() as tmp:
                exp = simulate_experiment(wcfg, Path(tmp) / "run")
                manifest = json.loads(exp.manifest.read_text())
                frame_bytes = sum(
                    v["bytes"] for k, v in manifest["files"].items() if k.endswith(".cxi")
                )
            rate = args.frames / exp.seconds
            result[f"end_to_end_frames_per_s_{compression}"] = rate
            print(
                f"  simulate_experiment, {args.frames} frames, compression {compression}: "
                f"{exp.seconds:.1f} s incl. set-up, truth grid and files ({rate:.2f} frames/s; "
                f"{frame_bytes / args.frames / 1e6:.1f} MB/frame)"
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

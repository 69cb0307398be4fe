"""Throughput of the simulator on one core: full-size (CSPAD-like) frames per second.

Usage::

    python benchmarks/bench_simulate.py [--detector cspad|small] [--frames 12] [--repeats 3]
                                        [--preset moderate] [--randomised-experiments 3]
                                        [--dtype int16] [--no-features] [--write]
                                        [--json OUT.json]

Prints the set-up time (per-detector arrays, molecular transform, diffuse model), the
median time of a non-diffuse and of a diffuse frame (noise on, written as ``--dtype``), the
frames/s per core of the configured diffuse fraction (wall-clock and by process CPU time), a
per-stage breakdown, the same rate for several experiments of the ``randomised`` preset
(each draws its own diffuse model, crystal and detector), and beside them the rate of the
features stage on the same frames (preprocessing + VGG16 at the default conv layer
``pool4+pool5``, ``--layer``; one thread) and the ratio of the two rates, then with
``--write`` the end-to-end rate of :func:`hpcdiff.simulate.simulate_experiment` including
CXI writing.  Threads are pinned to 1 so the numbers are per core; the rates by process
CPU time (:func:`time.process_time`) hold on a loaded machine, where wall-clock ones do not.
The issue's target (>= 5 full CSPAD frames per second per core) is printed beside the
CPU-time rate.
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
        quick_args = ["--repeats", "1", "--randomised-experiments", "1", "--no-features"]
        main([*argv, *(quick_args if quick else ["--write"])])
        result = json.loads(out.read_text())
    rows = [
        {"metric": key, "value": value, "unit": "", "note": "CSPAD-like detector"}
        for key, value in result.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    return {"title": "Simulator: full-size frames per second per core", "rows": rows, **result}


def _frame_rates(sim, n_frames: int, repeats: int, dtype: str, diffuse_fraction: float) -> dict:
    """Median wall and CPU seconds of diffuse and non-diffuse frames of one simulator."""
    diffuse = [i for i in range(10_000) if sim.parameters(i)[0].strength > 0][:n_frames]
    plain = [i for i in range(10_000) if sim.parameters(i)[0].strength == 0][:n_frames]
    sim.frame(plain[0], dtype=dtype)  # warm caches

    def run_frames(indices: list[int]) -> None:
        for i in indices:
            sim.frame(i, dtype=dtype)

    t_plain = _median_time(lambda: run_frames(plain), repeats) / len(plain)
    t_diffuse = _median_time(lambda: run_frames(diffuse), repeats) / len(diffuse)
    cpu_plain = _median_time(lambda: run_frames(plain), repeats, clock=time.process_time)
    cpu_diffuse = _median_time(lambda: run_frames(diffuse), repeats, clock=time.process_time)
    f = diffuse_fraction
    return {
        "frame_s_non_diffuse": t_plain,
        "frame_s_diffuse": t_diffuse,
        "frames_per_s_per_core": 1.0 / (f * t_diffuse + (1 - f) * t_plain),
        "frames_per_s_per_core_cpu_time": 1.0
        / (f * cpu_diffuse / len(diffuse) + (1 - f) * cpu_plain / len(plain)),
    }


#: The simulator's speed target (full CSPAD frames per second per core, issue 13).
TARGET_FRAMES_PER_S_PER_CORE = 5.0


def _features_rates(
    sim,
    cfg: SimulateConfig,
    n_frames: int,
    repeats: int,
    dtype: str,
    weights: str,
    layer: str = "pool4+pool5",
) -> dict:
    """Frames/s per core of the features stage (preprocessing + VGG16 ``layer``) on these frames."""
    import torch

    from hpcdiff.config import BackgroundConfig, CorrectionsConfig
    from hpcdiff.features import FeatureExtractor
    from hpcdiff.geometry import DetectorModel
    from hpcdiff.preprocess import Preprocessor
    from hpcdiff.simulate.experiment import prepare

    torch.set_num_threads(1)
    prepared = prepare(cfg)
    model = DetectorModel.build(
        prepared.geom,
        clen_m=sim.experiment.detector_distance_m,
        photon_energy_ev=sim.experiment.photon_energy_ev,
    )
    frames = np.stack([sim.frame(i, dtype=dtype)[0] for i in range(n_frames)]).astype(np.float32)
    energy = np.full(n_frames, sim.experiment.photon_energy_ev)
    pre = Preprocessor(model, BackgroundConfig(), CorrectionsConfig())
    pre(frames[:1], photon_energy_ev=energy[:1])  # warm-up
    t_pre = _median_time(lambda: pre(frames, photon_energy_ev=energy), repeats) / n_frames
    cpu_pre = (
        _median_time(lambda: pre(frames, photon_energy_ev=energy), repeats, clock=time.process_time)
        / n_frames
    )
    images = pre(frames, photon_energy_ev=energy)
    fx = FeatureExtractor(weights, layer=layer, device="cpu", batch_size=n_frames)
    fx.extract(images[:1])
    t_vgg = _median_time(lambda: fx.extract(images), repeats) / n_frames
    cpu_vgg = _median_time(lambda: fx.extract(images), repeats, clock=time.process_time) / n_frames
    return {
        "preprocess_frames_per_s_per_core": 1.0 / t_pre,
        "preprocess_frames_per_s_per_core_cpu_time": 1.0 / cpu_pre,
        "vgg16_frames_per_s_per_core": 1.0 / t_vgg,
        "vgg16_frames_per_s_per_core_cpu_time": 1.0 / cpu_vgg,
        "features_stage_frames_per_s_per_core": 1.0 / (t_pre + t_vgg),
        "features_stage_frames_per_s_per_core_cpu_time": 1.0 / (cpu_pre + cpu_vgg),
        "vgg16_weights": weights,
        "vgg16_layer": layer,
        "vgg16_autocast": str(getattr(fx, "autocast_dtype", None)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", choices=("cspad", "small"), default="cspad")
    parser.add_argument("--frames", type=int, default=12, help="frames per timing")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; the median is kept")
    parser.add_argument("--preset", default="moderate")
    parser.add_argument(
        "--randomised-experiments",
        type=int,
        default=3,
        help="also time this many experiments of the randomised preset (seeds 0..n-1)",
    )
    parser.add_argument("--dtype", default="int16", choices=("int16", "int32", "float32"))
    parser.add_argument("--write", action="store_true", help="also time simulate_experiment")
    parser.add_argument(
        "--no-features", action="store_true", help="skip the features stage (preprocess + VGG16)"
    )
    parser.add_argument("--weights", default="random:0", help="VGG16 weights of the features stage")
    parser.add_argument(
        "--layer", default="pool4+pool5", help="VGG16 layer of the features stage (default: auto's)"
    )
    parser.add_argument("--json", type=Path, help="write the numbers here too")
    args = parser.parse_args(argv)

    cfg = SimulateConfig(detector=args.detector, preset=args.preset, seed=0)
    t0 = time.perf_counter()
    sim = build_simulator(cfg)
    setup_s = time.perf_counter() - t0
    n_pix = int(np.sum(sim.detector.panel_index >= 0))
    f = cfg.diffuse_fraction
    rates = _frame_rates(sim, args.frames, args.repeats, args.dtype, f)
    t_plain, t_diffuse = rates["frame_s_non_diffuse"], rates["frame_s_diffuse"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    # per-stage breakdown of one diffuse frame
    diffuse = [i for i in range(10_000) if sim.parameters(i)[0].strength > 0]
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
        "dtype": args.dtype,
        "diffuse_fraction": f,
        "setup_s": setup_s,
        **rates,
        "load_average_1min": load,
        "stages_s": stages,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "numpy": np.__version__,
    }
    print(f"detector {args.detector}: {n_pix} pixels; set-up {setup_s:.2f} s; {args.dtype} output")
    print(f"  non-diffuse frame: {1e3 * t_plain:7.1f} ms (median of {args.repeats})")
    print(f"  diffuse frame:     {1e3 * t_diffuse:7.1f} ms")
    print(
        f"  simulate, preset {args.preset}: frames/s per core at diffuse_fraction {f}: "
        f"{rates['frames_per_s_per_core']:.2f} wall-clock, "
        f"{rates['frames_per_s_per_core_cpu_time']:.2f} by process CPU time "
        f"(load average {load:.1f}); diffuse/non-diffuse time ratio {t_diffuse / t_plain:.2f}"
    )
    for name, seconds in stages.items():
        print(f"    {name:40s} {1e3 * seconds:7.1f} ms")
    cpu_rate = rates["frames_per_s_per_core_cpu_time"]
    result["target_frames_per_s_per_core"] = TARGET_FRAMES_PER_S_PER_CORE
    result["target_met_cpu_time"] = bool(cpu_rate >= TARGET_FRAMES_PER_S_PER_CORE)
    print(
        f"  target >= {TARGET_FRAMES_PER_S_PER_CORE:.0f} {args.detector} frames/s per core: "
        f"{cpu_rate:.2f} by CPU time -> {'met' if cpu_rate >= 5 else 'NOT met'}"
    )

    randomised = []
    for seed in range(args.randomised_experiments):
        rcfg = SimulateConfig(detector=args.detector, preset="randomised", seed=seed)
        t0 = time.perf_counter()
        c0 = time.process_time()
        rsim = build_simulator(rcfg)
        rsetup, rsetup_cpu = time.perf_counter() - t0, time.process_time() - c0
        r = _frame_rates(rsim, max(2, args.frames // 2), args.repeats, args.dtype, f)
        exp = rsim.experiment
        row = {
            "seed": seed,
            "diffuse_model": exp.diffuse.name,
            "space_group": exp.space_group,
            "cell_nm": [round(x, 2) for x in exp.cell_nm],
            "setup_s": rsetup,
            "setup_cpu_s": rsetup_cpu,
            **r,
        }
        randomised.append(row)
        print(
            f"  simulate, preset randomised seed {seed} ({exp.diffuse.name}, {exp.space_group}, "
            f"cell {row['cell_nm']} nm): set-up {rsetup:.1f} s ({rsetup_cpu:.1f} s CPU); "
            f"{r['frames_per_s_per_core']:.2f} frames/s per core wall-clock, "
            f"{r['frames_per_s_per_core_cpu_time']:.2f} by CPU time"
        )
    if randomised:
        result["randomised"] = randomised
        result["randomised_median_frames_per_s_per_core_cpu_time"] = statistics.median(
            r["frames_per_s_per_core_cpu_time"] for r in randomised
        )
        result["randomised_median_frames_per_s_per_core"] = statistics.median(
            r["frames_per_s_per_core"] for r in randomised
        )

    if not args.no_features:
        feats = _features_rates(
            sim, cfg, min(args.frames, 8), args.repeats, args.dtype, args.weights, args.layer
        )
        result.update(feats)
        print(
            f"  features stage on the same frames (1 thread): preprocess "
            f"{feats['preprocess_frames_per_s_per_core']:.2f} frames/s "
            f"({feats['preprocess_frames_per_s_per_core_cpu_time']:.2f} by CPU time), VGG16 "
            f"{args.layer} "
            f"{feats['vgg16_frames_per_s_per_core']:.2f} frames/s "
            f"({feats['vgg16_frames_per_s_per_core_cpu_time']:.2f}); together "
            f"{feats['features_stage_frames_per_s_per_core']:.2f} frames/s per core "
            f"({feats['features_stage_frames_per_s_per_core_cpu_time']:.2f} by CPU time)"
        )
        ratio = cpu_rate / feats["features_stage_frames_per_s_per_core_cpu_time"]
        result["simulate_over_features_rate_cpu_time"] = ratio
        print(
            f"  simulate / features-stage rate (CPU time): {ratio:.2f} "
            f"(the simulator makes {ratio:.1f} frames while one core featurises one)"
        )

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

"""Benchmark rows of the device (cupy) preprocessing chain, for bench_gpu_limits.py.

* :func:`sync_rows` (any machine, CPU): the host synchronisations and uploads of one
  steady-state batch of the slab chain, per recipe, counted with
  :func:`hpcdiff.host_sync.emulate_device` (cupy emulated on numpy); the target is 0
  syncs.  Also the working set of the ring median: the padded rows the old path built
  against the real pixels the packed-key sort reads (CSPAD |q| rings), and both paths'
  CPU time on numpy side by side (indicative only: the GPU rows are the measure).
* :func:`gpu_rows` (CUDA + cupy): device preprocessing per batch of CSPAD int16 frames,
  per recipe and stage (corrections, background + Bragg + noise units, images), the ring
  median packed vs padded on the device, and the chain under
  ``cupyx.allow_synchronize(False)`` (raises on a device synchronisation).

Run alone: ``python benchmarks/device_prep_rows.py [--quick]`` prints the CPU rows (and
the GPU rows where a CUDA device and cupy are present).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from collections.abc import Callable

import numpy as np

ENERGY_EV = 9500.0
RECIPES = ("standard", "seed ring median", "seed clipped mean")


def _row(metric: str, value: object, unit: str, note: str = "") -> dict:
    return {"metric": metric, "value": value, "unit": unit, "note": note}


def _config(recipe: str):
    from hpcdiff.config import BackgroundConfig

    if recipe == "standard":
        return BackgroundConfig()
    if recipe == "seed ring median":
        return BackgroundConfig(preprocessing="seed")
    return BackgroundConfig(preprocessing="seed", radial_statistic="clipped_mean")


def _model(quick: bool):
    from hpcdiff.geometry import DetectorModel, cspad_like_geometry, small_geometry

    geom = small_geometry() if quick else cspad_like_geometry()
    return DetectorModel.build(geom, photon_energy_ev=ENERGY_EV)


def _frames(model, n: int, *, seed: int = 0) -> np.ndarray:
    """``(n, n_ss, n_fs)`` int16 ADU: Poisson photons (0.3 per pixel) and a few peaks."""
    rng = np.random.default_rng(seed)
    adu = float(model.geom.panels[0].adu_per_ev) * ENERGY_EV
    ph = rng.poisson(0.3, (n, *model.slab_shape)).astype(np.float32)
    ph.ravel()[rng.integers(0, ph.size, 50 * n)] += 100
    return np.clip(np.rint(ph * adu), -32768, 32767).astype(np.int16)


def sync_rows(*, quick: bool = False) -> list[dict]:
    """Host syncs and uploads per steady-state batch (emulated device, CPU)."""
    from hpcdiff.config import CorrectionsConfig
    from hpcdiff.host_sync import emulate_device, to_device
    from hpcdiff.preprocess import Preprocessor

    # static shapes: the count does not depend on the detector, so the small one serves
    model = _model(True)
    frames = _frames(model, 2)
    rows = []
    for recipe in RECIPES:
        pre = Preprocessor(model, _config(recipe), CorrectionsConfig())
        with emulate_device():  # first batch: detector tables go to the device
            pre(to_device(frames), photon_energy_ev=ENERGY_EV)
        with emulate_device() as log:
            pre(to_device(frames), photon_energy_ev=ENERGY_EV)
        where = "; ".join(f"{n}x {k}" for k, n in sorted(log.summary().items())) or "none"
        rows.append(
            _row(
                f"device chain host syncs per batch ({recipe})",
                len(log.syncs),
                "syncs",
                f"emulated cupy on CPU, small test detector, batch 2, target 0; {where}",
            )
        )
        rows.append(
            _row(
                f"device chain uploads per batch ({recipe})",
                len(log.uploads),
                "copies",
                "host -> device copies inside the batch (equal photon energies)",
            )
        )
    det = "small test detector" if quick else "CSPAD-like 1480x1552"
    rows += _ring_median_rows(_model(quick), det, quick=quick)
    return rows


def _ring_median_rows(model, det: str, *, quick: bool) -> list[dict]:
    from hpcdiff.config import BackgroundConfig
    from hpcdiff.segments import Segments, _gather, _percentile_packed, _percentile_padded

    cfg = BackgroundConfig()
    ring_index, _ = model.radial_bins(cfg.n_radial_bins)
    segs = Segments(ring_index, n_segments=cfg.n_radial_bins)
    real = segs.n_pixels
    padded = segs.n_segments * int(segs.sizes.max())
    rows = [
        _row(
            "ring median working set, padded rows / real pixels",
            padded / real,
            "x",
            f"{det}, {cfg.n_radial_bins} |q| rings: the padded path's (n, rings, largest "
            "ring) rows; the packed-key sort reads the real pixels only (1x)",
        )
    ]
    n = 2
    x = _frames(model, n).astype(np.float32)
    g, gok, _ = _gather(x, segs, None, np)
    timed = {}
    for name, fn in (("packed", _percentile_packed), ("padded", _percentile_padded)):
        fn(g, gok, segs, 50.0, np)
        cpu, wall = [], []
        for _ in range(2 if quick else 3):
            c0, w0 = time.process_time(), time.perf_counter()
            out = fn(g, gok, segs, 50.0, np)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        timed[name] = (statistics.median(cpu), statistics.median(wall), out)
    same = np.array_equal(timed["packed"][2], timed["padded"][2], equal_nan=True)
    for name in ("packed", "padded"):
        cpu, wall, _ = timed[name]
        rows.append(
            _row(
                f"ring median on numpy, {name} (CPU, indicative)",
                wall * 1e3 / n,
                "ms/frame",
                f"{cpu * 1e3 / n:.1f} ms CPU per frame; {det}; results equal: {same}",
            )
        )
    return rows


def median_time(fn: Callable[[], object], *, repeats: int, sync: Callable[[], None]) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls, ``sync()`` before and after each."""
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gpu_rows(*, batch: int = 32, repeats: int = 10, quick: bool = False) -> list[dict]:
    """Device preprocessing per batch (CUDA + cupy); [] without them."""
    from hpcdiff.backend import gpu_available

    if not gpu_available():
        return []
    import cupy
    import cupyx

    from hpcdiff.config import CorrectionsConfig
    from hpcdiff.preprocess import Preprocessor
    from hpcdiff.segments import Segments, _gather, _percentile_packed, _percentile_padded

    rows: list[dict] = []
    sync = cupy.cuda.Device().synchronize
    model = _model(False)
    frames = cupy.asarray(_frames(model, batch))
    for recipe in RECIPES:
        try:
            pre = Preprocessor(model, _config(recipe), CorrectionsConfig())
            pre(frames, photon_energy_ev=ENERGY_EV)  # warm-up: tables, kernels
            t = median_time(
                lambda p=pre: p(frames, photon_energy_ev=ENERGY_EV), repeats=repeats, sync=sync
            )
            rows.append(
                _row(
                    f"device preprocess per batch ({recipe})",
                    t * 1e3,
                    "ms",
                    f"{batch / t:.0f} frames/s, batch {batch} CSPAD int16",
                )
            )
            corrected = pre.correct(frames, photon_energy_ev=ENERGY_EV)
            result = pre.residual(frames, photon_energy_ev=ENERGY_EV)
            stages = (
                ("corrections", lambda p=pre: p.correct(frames, photon_energy_ev=ENERGY_EV)),
                (
                    "corrections + background + normalise",
                    lambda p=pre: p.residual(frames, photon_energy_ev=ENERGY_EV),
                ),
                ("images", lambda p=pre, r=result: p.images(r)),
            )
            del corrected
            for stage, fn in stages:
                t = median_time(fn, repeats=repeats, sync=sync)
                rows.append(_row(f"  stage {stage} ({recipe})", t * 1e3, "ms", f"batch {batch}"))
            sync()
            try:
                with cupyx.allow_synchronize(False):
                    pre(frames, photon_energy_ev=ENERGY_EV)
                verdict, note = "none", "cupyx.allow_synchronize(False) raised nothing"
            except Exception as exc:  # DeviceSynchronized names the call
                verdict, note = "found", f"{type(exc).__name__}: {exc}"[:300]
            rows.append(_row(f"device chain synchronisation ({recipe})", verdict, "", note))
        except Exception:
            rows.append(
                _row(f"device preprocess ({recipe})", "error", "", traceback.format_exc()[-600:])
            )

    from hpcdiff.config import BackgroundConfig

    cfg = BackgroundConfig()
    ring_index, _ = model.radial_bins(cfg.n_radial_bins)
    segs = Segments(ring_index, n_segments=cfg.n_radial_bins)
    x = frames.astype(cupy.float32)
    g, gok, _ = _gather(x, segs, None, cupy)
    for name, fn in (("packed-key sort", _percentile_packed), ("padded rows", _percentile_padded)):
        try:
            fn(g, gok, segs, 50.0, cupy)
            t = median_time(lambda f=fn: f(g, gok, segs, 50.0, cupy), repeats=repeats, sync=sync)
            rows.append(_row(f"ring median on the device, {name}", t * 1e3, "ms", f"batch {batch}"))
        except Exception:
            rows.append(_row(f"ring median, {name}", "error", "", traceback.format_exc()[-600:]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small detector, fewer repeats")
    args = parser.parse_args(argv)
    rows = sync_rows(quick=args.quick)
    rows += gpu_rows(batch=16 if args.quick else 32, repeats=3 if args.quick else 10)
    for row in rows:
        value = row["value"]
        text = f"{value:.4g}" if isinstance(value, int | float) else str(value)
        print(f"{row['metric']:<58} {text:>10} {row['unit']:<9} {row['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

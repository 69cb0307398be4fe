"""Cost of the geometry's per-frame flags (``flag_lessthan`` / ``flag_morethan``) in the
corrections step.

Usage::

    python benchmarks/bench_geometry_flags.py [--frames 4] [--repeats 9]

:meth:`hpcdiff.preprocess.Preprocessor.correct` on the CSPAD-like slab (1480 x 1552, 64
panels) with and without two flags on every panel, timed alternately in one process; prints
the median wall and CPU (``time.process_time``) time per frame and their ratios, and the CPU
time of the flag step alone (:meth:`hpcdiff.pixel_masks.PixelMasks.frame_bad`), which is
steadier than the difference of two noisy totals on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from hpcdiff.config import BackgroundConfig, CorrectionsConfig
from hpcdiff.geometry import DetectorModel, cspad_like_geometry
from hpcdiff.io.geom import PixelFlag
from hpcdiff.preprocess import Preprocessor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    plain = cspad_like_geometry(photon_energy=9500.0)
    flags = (PixelFlag("lessthan", -50.0), PixelFlag("morethan", 16000.0))
    flagged = dataclasses.replace(
        plain, panels=tuple(dataclasses.replace(p, flags=flags) for p in plain.panels)
    )
    n = args.frames
    frames = np.random.default_rng(0).normal(30, 5, (n, *plain.slab_shape)).astype(np.float32)
    pres = {
        name: Preprocessor(DetectorModel.build(g), BackgroundConfig(), CorrectionsConfig())
        for name, g in (("plain", plain), ("flags", flagged))
    }
    for pre in pres.values():
        pre.correct(frames[:1], photon_energy_ev=9500.0)
    wall: dict[str, list[float]] = {k: [] for k in pres}
    cpu: dict[str, list[float]] = {k: [] for k in pres}
    for _ in range(args.repeats):
        for name, pre in pres.items():
            t0, c0 = time.perf_counter(), time.process_time()
            pre.correct(frames, photon_energy_ev=9500.0)
            wall[name].append((time.perf_counter() - t0) / n)
            cpu[name].append((time.process_time() - c0) / n)
    for name in pres:
        print(
            f"{name:5s}: correct() per frame: median wall {np.median(wall[name]) * 1e3:.1f} ms, "
            f"CPU {np.median(cpu[name]) * 1e3:.1f} ms"
        )
    ratio_w = np.median(wall["flags"]) / np.median(wall["plain"])
    ratio_c = np.median(cpu["flags"]) / np.median(cpu["plain"])
    print(f"flags / plain: wall {ratio_w:.2f}, CPU {ratio_c:.2f}")
    masks = pres["flags"].pixel_masks
    assert masks is not None
    step = []
    for _ in range(3 * args.repeats):
        c0 = time.process_time()
        masks.frame_bad(frames)
        step.append((time.process_time() - c0) / n)
    print(f"flag step alone (frame_bad): median CPU {np.median(step) * 1e3:.2f} ms per frame")


if __name__ == "__main__":
    main()

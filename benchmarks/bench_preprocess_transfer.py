"""Seed vs standard preprocessing across detectors, distances and energies (and their speed).

Usage::

    python benchmarks/bench_preprocess_transfer.py [--quick] [--n-train 200] [--n-test 160]
        [--preset moderate] [--threads 1] [--speed-frames 8] [--no-accuracy]
    python benchmarks/run.py --only preprocess_transfer [--quick]

Accuracy: a model (VGG16 ImageNet conv weights -> ``gap`` / ``pool5`` -> PCA(50) ->
logistic regression; and the radial-profile reference on rings fixed in |q|) is trained on
all frames of one simulated experiment (the CSPAD-like detector at 0.10 m, 9.5 keV) and
tested, without any label of theirs, on experiments seen by another detector at another
distance and energy (the real OM CSPAD geometry in Cheetah layout at 0.13 m, 8 keV; the
CSPAD-like detector at 0.15 m, 7 keV), once with the seed recipe (assembled detector image,
per-frame robust scale) and once with the standard recipe of
:mod:`hpcdiff.background.standard` (noise units on a fixed q grid).  Accuracy at the 0.5
threshold and ROC AUC per test experiment; ``in-domain`` is a 50/50 split of the training
experiment.  Frames come from :func:`bench_accuracy.measure_preset` (same simulation and
correction chain as ``bench_accuracy.py``).

Speed: frames per CPU-second (``time.process_time``) and per wall second of the whole
numpy preprocessing (:class:`hpcdiff.preprocess.Preprocessor`, one thread), seed and
standard side by side on the same CSPAD frames, median of repeats.

Measured (2-core shared CPU box, torch 1 thread, ImageNet conv weights; moderate preset;
train 100 frames, tests 60 frames each; the standard recipe with its default
``q_cell = "significance"``; no label of the test experiments used)::

    speed (8 CSPAD frames x 3): seed 8.69, standard 9.17 frames/CPU-s (ratio 1.056)
    test                         model             seed acc / AUC   standard acc / AUC
    in-domain 50/50              gap               0.96 / 0.998     1.00 / 1.000
    in-domain 50/50              pool5             0.98 / 1.000     1.00 / 1.000
    OM CSPAD geom, 0.13 m, 8 keV gap               0.63 / 0.916     0.45 / 0.844
    OM CSPAD geom, 0.13 m, 8 keV pool5             0.52 / 0.982     0.43 / 0.994
    CSPAD-like, 0.15 m, 7 keV    gap               0.62 / 0.770     1.00 / 1.000
    CSPAD-like, 0.15 m, 7 keV    pool5             0.52 / 0.984     0.57 / 1.000
    radial profile (fixed rings) in-domain 0.68 / 0.758

Ranking transfers (AUC), the 0.5 threshold mostly does not (mean P(diffuse) 0.04-0.19 on
the foreign experiments, except standard / gap on the CSPAD-like one): calibration is the
transfer work's job.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_accuracy as acc  # noqa: E402

REAL_GEOM = Path("/work/shared/fixtures/real/om_cxi06216_v4-predrefine.geom")
RADIAL_Q = (0.5, 3.4)  # nm^-1: rings every experiment here covers, water band included


def speed_rows(n_frames: int = 8, repeats: int = 3, log: Any = print) -> list[dict[str, Any]]:
    """Frames per CPU-second and per wall second, seed and standard, CSPAD frames."""
    from hpcdiff.config import BackgroundConfig, CorrectionsConfig, SimulateConfig
    from hpcdiff.geometry import DetectorModel
    from hpcdiff.preprocess import Preprocessor
    from hpcdiff.simulate import build_simulator
    from hpcdiff.simulate.experiment import simulated_geometry

    cfg = SimulateConfig(n_frames=n_frames, detector="cspad", preset="moderate")
    geom = simulated_geometry(cfg)
    sim = build_simulator(cfg, geom)
    model = DetectorModel.build(
        geom, clen_m=cfg.detector_distance_m, photon_energy_ev=cfg.photon_energy_ev
    )
    frames = np.stack([sim.frame(i)[0] for i in range(n_frames)])
    energy = cfg.photon_energy_ev
    pres = {
        name: Preprocessor(model, BackgroundConfig(preprocessing=name), CorrectionsConfig())
        for name in ("seed", "standard")
    }
    setup = {}
    for name, pre in pres.items():
        t = time.perf_counter()
        pre(frames[:1], photon_energy_ev=energy)  # detector maps, resampling matrix
        setup[name] = time.perf_counter() - t
    cpu: dict[str, list[float]] = {k: [] for k in pres}
    wall: dict[str, list[float]] = {k: [] for k in pres}
    for _ in range(repeats):  # interleaved, so both see the same machine load
        for name, pre in pres.items():
            c, w = time.process_time(), time.perf_counter()
            pre(frames, photon_energy_ev=energy)
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - w)
    rows = []
    for name in pres:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        rows.append(
            {
                "metric": f"preprocessing {name}: CSPAD frames per CPU-second (1 thread)",
                "value": round(n_frames / c, 2),
                "unit": "frames/CPU-s",
                "note": f"{n_frames / w:.2f} frames/s wall; median of {repeats} x {n_frames} "
                f"frames; first call (detector maps) {setup[name]:.2f} s",
            }
        )
    ratio = statistics.median(cpu["seed"]) / statistics.median(cpu["standard"])
    rows.append(
        {
            "metric": "preprocessing standard / seed speed (CPU time)",
            "value": round(ratio, 3),
            "unit": "ratio",
            "note": ">= 1: standard at least as fast as seed",
        }
    )
    for r in rows:
        log(f"  {r['metric']:<62} {r['value']!s:>8} {r['unit']:<13} {r['note']}")
    return rows


BACKGROUNDS = ("radial", "standard")  # seed recipe (radial background), standard recipe


def _settings(base: acc.Settings, n: int, **changes: Any) -> acc.Settings:
    return dataclasses.replace(
        base,
        n_frames=n,
        backgrounds=BACKGROUNDS,
        radial_q_range=RADIAL_Q,
        n_radial_bins=40,
        **changes,
    )


def accuracy_rows(
    *, quick: bool, preset: str, n_train: int, n_test: int, log: Any = print
) -> list[dict[str, Any]]:
    """Train on one experiment, test on others (seed vs standard); see the module notes."""
    from hpcdiff.io.featurefile import FeatureMeta
    from hpcdiff.learn import BINARY_CLASS_NAMES, DiffuseClassifier, classification_report
    from hpcdiff.reference import RadialProfileClassifier

    if not acc.PRETRAINED_CONV.is_file():
        raise SystemExit(f"needs the ImageNet conv weights at {acc.PRETRAINED_CONV}")
    base = acc.Settings("cspad", 0.10, (preset,), n_train, ("gap", "pool5"), seed=0)
    train_s = _settings(base, n_train)
    tests = {
        "OM CSPAD geometry, 0.13 m, 8.0 keV": _settings(
            base, n_test, geometry=str(REAL_GEOM), detector_distance_m=0.13,
            photon_energy_ev=8000.0, seed=1,
        ),
        "CSPAD-like, 0.15 m, 7.0 keV": _settings(
            base, n_test, detector_distance_m=0.15, photon_energy_ev=7000.0, seed=2
        ),
    }  # fmt: skip
    if quick:
        train_s = dataclasses.replace(
            train_s, detector="small", detector_distance_m=0.06, radial_q_range=None
        )
        tests = {
            "small, 0.06 m, 11.0 keV": dataclasses.replace(
                train_s, n_frames=n_test, photon_energy_ev=11000.0, seed=1
            )
        }
    ex = {"imagenet-conv": acc.Extractor(str(acc.PRETRAINED_CONV), device="cpu",
                                         bf16_cpu=True, batch_size=8)}  # fmt: skip
    log(f"train: {train_s.detector} {train_s.detector_distance_m} m, {n_train} frames")
    train = acc.measure_preset(preset, train_s, ex, log=log)
    measured = {}
    for name, s in tests.items():
        log(f"test: {name}, {n_test} frames")
        measured[name] = acc.measure_preset(preset, s, ex, log=log)
    y_tr = (train.strength > 0).astype(np.int64)
    rows: list[dict[str, Any]] = []

    def record(test: str, model: str, y: np.ndarray, proba: np.ndarray) -> None:
        pred = np.argmax(proba, axis=1)
        rep = classification_report(y, pred, proba, class_names=BINARY_CLASS_NAMES)
        auc = rep["roc_auc"]
        rows.append(
            {
                "metric": f"{preset}: {test}: {model} accuracy",
                "value": round(rep["accuracy"], 3),
                "unit": "fraction",
                "note": f"AUC {'n/a' if auc is None else f'{auc:.3f}'}; "
                f"mean P(diffuse) {proba[:, 1].mean():.2f}; diffuse fraction {y.mean():.2f}; "
                f"{len(y)} test frames",
            }
        )

    half = np.arange(len(y_tr)) % 2 == 0  # in-domain: even frames train, odd test
    k = min(50, int(half.sum()) - 1)
    splits = {"in-domain (50/50 split)": (train, half, ~half)}
    for name, m in measured.items():
        splits[name] = (m, np.ones(len(y_tr), bool), np.ones(m.strength.size, bool))
    for test, (m, tr, te) in splits.items():
        y_te = (m.strength[te] > 0).astype(np.int64)
        kk = k if test.startswith("in-domain") else min(50, len(y_tr) - 1)
        if m.radial.shape[1] == train.radial.shape[1]:  # else some ring is empty there
            ref = RadialProfileClassifier().fit(train.radial[tr], y_tr[tr])
            record(test, "radial profile (fixed q rings)", y_te, ref.predict_proba(m.radial[te]))
        for (bg, label), pool5 in train.cnn.items():
            for layer in ("gap", "pool5"):
                xtr = ex[label].layer(pool5, layer)[tr]
                xte = ex[label].layer(m.cnn[bg, label], layer)[te]
                meta = FeatureMeta(layer, xtr.shape[1], ex[label].fx.weights_info, {"method": bg})
                clf = DiffuseClassifier(n_components=kk).fit(
                    xtr, y_tr[tr], class_names=BINARY_CLASS_NAMES, feature_meta=meta
                )
                recipe = "standard" if bg == "standard" else "seed"
                record(test, f"CNN {recipe} / {layer}", y_te, clf.predict_proba(xte))
    for r in rows:
        log(f"  {r['metric']:<78} {r['value']!s:>6} {r['note']}")
    return rows


def run(
    quick: bool = False,
    *,
    preset: str = "moderate",
    n_train: int | None = None,
    n_test: int | None = None,
    speed_frames: int | None = None,
    accuracy: bool = True,
    threads: int | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Benchmark entry point for ``benchmarks/run.py``."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    rows = speed_rows(speed_frames or (2 if quick else 8), repeats=2 if quick else 3, log=log)
    if accuracy:
        rows += accuracy_rows(
            quick=quick,
            preset=preset,
            n_train=n_train or (40 if quick else 200),
            n_test=n_test or (24 if quick else 160),
            log=log,
        )
    return {"title": "Seed vs standard preprocessing: speed and cross-detector transfer",
            "rows": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--preset", default="moderate")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--speed-frames", type=int, default=None)
    p.add_argument("--no-accuracy", action="store_true", help="speed rows only")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--backgrounds", nargs="*", help="radial (seed recipe), standard")
    args = p.parse_args(argv)
    if args.backgrounds:
        global BACKGROUNDS
        BACKGROUNDS = tuple(args.backgrounds)
    run(
        args.quick, preset=args.preset, n_train=args.n_train, n_test=args.n_test,
        speed_frames=args.speed_frames, accuracy=not args.no_accuracy, threads=args.threads,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How many labels active ordering needs for the accuracy that 500 random labels give.

Usage::

    python benchmarks/bench_active_learning.py [--quick] [--presets moderate hard]
        [--n-frames 1500] [--seeds 5] [--weights PATH|random:0] [--layer gap]
    python benchmarks/run.py --only active_learning [--quick]

For each preset a simulated experiment is made in memory (frame ``i`` from ``(seed, i)``,
30 % of frames diffuse, the small detector at 6 cm; the CSPAD-like one with
``--detector cspad``), detector-corrected and background-removed as the classify job does
(bad pixels from the first 50 frames, ``radial`` background), and turned into VGG16
features (``gap`` of the conv-only ImageNet weights
``/tmp/hpcdiff-weights/vgg16_features_imagenet_caffe.pth`` where present, else
``random:0``; the result says which).  Features are cached in
``/tmp/hpcdiff-bench-active-learning/`` (never in the repository).

The frames are split (stratified, per seed) into a pool of ``n - 500`` frames a user could
label and 500 held-out test frames.  For each seed, two orderings label the pool one frame
at a time, as the labelling page offers them:

* random: frames in a random order;
* active: :class:`hpcdiff.label.active.ActiveLearner` (random until 3 labels of each class,
  then the most uncertain frame farthest from the labelled ones in PCA space), refitted
  every ``refit_every`` labels (1 up to 100 labels, then 5 in full mode).

After each checkpoint the model (PCA(50) of all frames' features, unsupervised, then
logistic regression on the labelled ones: what the page fits) is scored on the test
frames.  The target is the median over seeds of the test accuracy of 500 random labels;
reported: the labels each ordering needs to reach it (median over seeds), the accuracy
curves (medians), and how the page's running cross-validated estimate compares with the
test accuracy.

Measured (ImageNet conv-only weights, ``gap``, small detector, 5 seeds; labels needed on the
median curve, random / active): moderate (1,500 frames; 500 random labels give 1.000)
375 / 55; hard (1,500 frames; 0.966) 400 / 110; subtle (1,200 frames, ``--presets subtle
--n-frames 1200``, a preset nothing here was tuned on; 0.752) 475 / 325.  The page's CV
estimate was low by 3, 19 and 3 points; the model's expected accuracy low by 2, 2 and high
by 20 points.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

PRETRAINED_CONV = Path("/tmp/hpcdiff-weights/vgg16_features_imagenet_caffe.pth")
CACHE = Path("/tmp/hpcdiff-bench-active-learning")
N_TEST = 500
TARGET_LABELS = 500


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run."""

    detector: str
    detector_distance_m: float
    presets: tuple[str, ...]
    n_frames: int
    seeds: int
    layer: str = "gap"
    diffuse_fraction: float = 0.3
    batch_size: int = 16
    sim_seed: int = 0
    n_components: int = 50


QUICK = Settings("small", 0.06, ("moderate",), 1500, 2)  # reuses the full run's cache
FULL = Settings("small", 0.06, ("moderate", "hard"), 1500, 5)


def weights_spec() -> tuple[str, str]:
    """``(label, spec)``: the conv-only ImageNet weights where present, else random."""
    if PRETRAINED_CONV.is_file():
        return "imagenet-conv", str(PRETRAINED_CONV)
    return "random", "random:0"


# --------------------------------------------------------------------------- features


def _cache_path(preset: str, s: Settings, spec: str) -> Path:
    key = json.dumps(
        [preset, s.detector, s.detector_distance_m, s.n_frames, s.layer, s.diffuse_fraction,
         s.sim_seed, spec], sort_keys=True,
    )  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return CACHE / f"{preset}-{s.detector}-{s.n_frames}-{s.layer}-{digest}.npz"


def features(preset: str, s: Settings, spec: str, *, log: Any = print) -> dict[str, np.ndarray]:
    """``{"x": (n, d) float32, "y": (n,) int64 diffuse, "strength": (n,)}``, cached in /tmp."""
    path = _cache_path(preset, s, spec)
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    from hpcdiff.config import BackgroundConfig, CorrectionsConfig, SimulateConfig
    from hpcdiff.features import FeatureExtractor
    from hpcdiff.geometry import DetectorModel
    from hpcdiff.preprocess import Preprocessor
    from hpcdiff.simulate import build_simulator
    from hpcdiff.simulate.experiment import simulated_geometry

    cfg = SimulateConfig(
        n_frames=s.n_frames, seed=s.sim_seed, detector=s.detector, preset=preset,
        diffuse_fraction=s.diffuse_fraction, detector_distance_m=s.detector_distance_m,
    )  # fmt: skip
    geom = simulated_geometry(cfg)
    sim = build_simulator(cfg, geom)
    energy = cfg.photon_energy_ev
    model = DetectorModel.build(geom, clen_m=cfg.detector_distance_m, photon_energy_ev=energy)
    corrections = CorrectionsConfig()
    pre = Preprocessor(model, BackgroundConfig(preprocessing="seed", method="radial"), corrections)
    first = np.stack([sim.frame(i)[0] for i in range(min(50, s.n_frames))])
    found = pre.find_bad_pixels(first, photon_energy_ev=energy)
    pre = Preprocessor(
        model,
        BackgroundConfig(preprocessing="seed", method="radial"),
        corrections,
        bad_pixel_mask=found.mask,
    )
    fx = FeatureExtractor(spec, layer=s.layer, device="cpu", batch_size=s.batch_size)
    n = s.n_frames
    x = np.empty((n, fx.n_features), np.float32)
    y = np.empty(n, np.int64)
    strength = np.empty(n)
    t0 = time.perf_counter()
    for start in range(0, n, s.batch_size):
        stop = min(start + s.batch_size, n)
        made = [sim.frame(i) for i in range(start, stop)]
        frames = np.stack([f for f, _ in made])
        y[start:stop] = [int(t.strength > 0) for _, t in made]
        strength[start:stop] = [t.strength for _, t in made]
        x[start:stop] = fx.extract(pre(frames, photon_energy_ev=energy))
        if stop % (10 * s.batch_size) == 0 or stop == n:
            log(f"  {preset}: features {stop}/{n} ({time.perf_counter() - t0:.0f} s)")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=x, y=y, strength=strength)
    tmp.replace(path)
    return {"x": x, "y": y, "strength": strength}


# --------------------------------------------------------------------------- learning curves


def _schedule(n_max: int, quick: bool) -> list[int]:
    """Label counts at which each ordering is scored."""
    pts = list(range(10, 100, 5)) + list(range(100, 200, 10)) + list(range(200, n_max + 1, 25))
    if quick:
        pts = list(range(10, 100, 10)) + list(range(100, n_max + 1, 50))
    return sorted({p for p in pts if p <= n_max} | {n_max})


def _curve(
    x: np.ndarray,
    y: np.ndarray,
    pool: np.ndarray,
    test: np.ndarray,
    *,
    active: bool,
    seed: int,
    points: Sequence[int],
    s: Settings,
    quick: bool,
) -> tuple[list[float], list[float | None], list[float]]:
    """Test accuracy, the page's CV estimate and the model's expected accuracy (active
    ordering) at each count of ``points`` labels.

    Both orderings start from the same random order; the active one leaves it once the
    learner is ready (3 labels of each class) and then takes the learner's choices,
    refitted every label up to 100 labels and every 5 (quick: 10) after that.
    """
    from hpcdiff.label.active import ActiveLearner

    learner = ActiveLearner(x[pool], n_classes=2, n_components=s.n_components, random_state=seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool)).tolist()
    yp = y[pool]
    labelled: list[int] = []
    taken: set[int] = set()
    acc: list[float] = []
    est: list[float | None] = []
    expected: list[float] = []
    cursor = 0
    for target in points:
        while len(labelled) < target:
            step = 1 if len(labelled) < 100 else (10 if quick else 5)
            step = min(step, target - len(labelled))
            rows = np.array(labelled, dtype=np.int64)
            picked: list[int] = []
            if active and learner.fit(rows, yp[rows]):
                picked = learner.select(rows, n=step, random_state=rng)
            while len(picked) < step:
                r = order[cursor]
                cursor += 1
                if r not in taken:
                    picked.append(r)
            labelled += picked
            taken.update(picked)
        rows = np.array(labelled, dtype=np.int64)
        learner.fit(rows, yp[rows], force=True)
        proba = learner.predict_proba_rows_of(x[test])
        acc.append(float(np.mean(np.argmax(proba, axis=1) == y[test])))
        e = learner.accuracy_estimate(rows, yp[rows]) if active else None
        est.append(None if e is None else e.accuracy)
        if active:
            expected.append(learner.expected_accuracy())
    return acc, est, expected


def _needed(points: Sequence[int], curve: Sequence[float], target: float) -> int | None:
    """Fewest labels from which the curve stays at or above ``target`` (None: never)."""
    ok = np.asarray(curve) >= target - 1e-12
    for k in range(len(points)):
        if ok[k:].all():
            return int(points[k])
    return None


def measure(
    data: dict[str, np.ndarray], s: Settings, *, quick: bool, log: Any = print
) -> dict[str, Any]:
    """Learning curves of both orderings over seeds, and labels needed for the target."""
    from hpcdiff.learn import stratified_split

    x, y = data["x"], data["y"]
    n_pool_max = len(y) - N_TEST
    n_max = min(TARGET_LABELS, n_pool_max)
    points = _schedule(n_max, quick)
    curves: dict[str, list[list[float]]] = {"random": [], "active": []}
    estimates: list[list[float | None]] = []
    expectations: list[list[float]] = []
    for seed in range(s.seeds):
        pool, test = stratified_split(y, n_train=n_pool_max, n_test=N_TEST, random_state=seed)
        for kind in ("random", "active"):
            t = time.perf_counter()
            acc, est, expected = _curve(
                x, y, pool, test, active=kind == "active", seed=seed, points=points, s=s,
                quick=quick,
            )  # fmt: skip
            curves[kind].append(acc)
            if kind == "active":
                estimates.append(est)
                expectations.append(expected)
            log(f"    seed {seed} {kind}: acc@{points[-1]} {acc[-1]:.3f} "
                f"({time.perf_counter() - t:.0f} s)")  # fmt: skip
    target = float(np.median([c[-1] for c in curves["random"]]))
    med = {k: np.median(np.array(v), axis=0).tolist() for k, v in curves.items()}
    needed = {k: [_needed(points, c, target) for c in v] for k, v in curves.items()}
    needed_median_curve = {k: _needed(points, med[k], target) for k in med}
    gaps = [
        [e - a for e, a in zip(es, accs, strict=True) if e is not None]
        for es, accs in zip(estimates, curves["active"], strict=True)
    ]
    exp_gaps = [
        e - a for es, accs in zip(expectations, curves["active"], strict=True)
        for e, a in zip(es, accs, strict=True)
    ]  # fmt: skip
    return {
        "expected_minus_test_median": float(np.median(exp_gaps)),
        "points": points,
        "target_accuracy": target,
        "n_random_for_target": n_max,
        "median_curve": med,
        "needed_per_seed": needed,
        "needed_on_median_curve": needed_median_curve,
        "estimate_minus_test_median": float(np.median(np.concatenate(gaps))) if any(gaps) else None,
        "chance": float(max(np.mean(y), 1 - np.mean(y))),
    }


def _median_needed(values: list[int | None], cap: int) -> float:
    """Median of labels needed, a seed that never reached the target counted as ``cap + 1``."""
    return float(np.median([cap + 1 if v is None else v for v in values]))


# --------------------------------------------------------------------------- entry points


def run(
    quick: bool = False,
    *,
    presets: Sequence[str] | None = None,
    n_frames: int | None = None,
    seeds: int | None = None,
    weights: str | None = None,
    layer: str | None = None,
    detector: str | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Benchmark entry point for ``benchmarks/run.py``."""
    import dataclasses

    s = QUICK if quick else FULL
    changes: dict[str, Any] = {}
    if presets:
        changes["presets"] = tuple(presets)
    if n_frames:
        changes["n_frames"] = int(n_frames)
    if seeds:
        changes["seeds"] = int(seeds)
    if layer:
        changes["layer"] = layer
    if detector:
        changes["detector"] = detector
        changes["detector_distance_m"] = 0.1 if detector == "cspad" else 0.06
    s = dataclasses.replace(s, **changes)
    w_label, spec = ("custom", weights) if weights else weights_spec()
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    for preset in s.presets:
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        data = features(preset, s, spec, log=log)
        feat_s = time.perf_counter() - t_wall
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        res = measure(data, s, quick=quick, log=log)
        res["seconds"] = {"features_wall": feat_s, "curves_wall": time.perf_counter() - t_wall,
                          "curves_cpu": time.process_time() - t_cpu}  # fmt: skip
        results[preset] = res
        cap = res["n_random_for_target"]
        na = _median_needed(res["needed_per_seed"]["active"], cap)
        nr = _median_needed(res["needed_per_seed"]["random"], cap)
        note = f"{w_label} {s.layer}, {s.detector}, {s.n_frames} frames, {s.seeds} seeds"
        rows += [
            {"metric": f"{preset}: test accuracy of {cap} random labels (median)",
             "value": round(res["target_accuracy"], 4), "unit": "", "note": note},
            {"metric": f"{preset}: labels active ordering needs for it (median)",
             "value": na, "unit": "labels",
             "note": f"per seed {res['needed_per_seed']['active']} (None: not within {cap}); "
                     f"on the median curve {res['needed_on_median_curve']['active']}"},
            {"metric": f"{preset}: labels random ordering needs for it (median)",
             "value": nr, "unit": "labels",
             "note": f"per seed {res['needed_per_seed']['random']}; "
                     f"on the median curve {res['needed_on_median_curve']['random']}"},
            {"metric": f"{preset}: label saving of active ordering", "value":
             round(nr / na, 2) if na else None, "unit": "x", "note": "random / active"},
            {"metric": f"{preset}: page's CV estimate minus test accuracy (median)",
             "value": None if res["estimate_minus_test_median"] is None
             else round(res["estimate_minus_test_median"], 4), "unit": "",
             "note": "active ordering; negative = the page under-states accuracy"},
            {"metric": f"{preset}: model's expected accuracy minus test accuracy (median)",
             "value": round(res["expected_minus_test_median"], 4), "unit": "",
             "note": "active ordering; mean max probability over the pool"},
        ]  # fmt: skip
    return {
        "title": "Active learning: labels needed for the accuracy of 500 random labels",
        "rows": rows,
        "settings": asdict(s),
        "weights": {"label": w_label, "spec": spec},
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer frames and seeds")
    p.add_argument("--presets", nargs="*", help="simulation presets (default per mode)")
    p.add_argument("--n-frames", type=int, default=None, help="frames per preset")
    p.add_argument("--seeds", type=int, default=None, help="seeds (splits and orderings)")
    p.add_argument("--weights", default=None, help="weights spec (default: ImageNet conv)")
    p.add_argument("--layer", default=None, help="VGG16 layer (default gap)")
    p.add_argument("--detector", choices=("small", "cspad"), default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = p.parse_args(argv)
    result = run(
        args.quick, presets=args.presets, n_frames=args.n_frames, seeds=args.seeds,
        weights=args.weights, layer=args.layer, detector=args.detector,
    )  # fmt: skip
    print(result["title"], f"(weights {result['weights']['label']}: {result['weights']['spec']})")
    for row in result["rows"]:
        value = "-" if row["value"] is None else row["value"]
        print(f"  {row['metric']:<62} {value!s:>8} {row['unit']:<7} {row['note']}")
    for preset, res in result["results"].items():
        print(f"  {preset} median test accuracy by labels (random | active):")
        for k, n in enumerate(res["points"]):
            print(f"    {n:>4}  {res['median_curve']['random'][k]:.3f} | "
                  f"{res['median_curve']['active'][k]:.3f}")  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

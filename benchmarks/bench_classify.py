"""Classification stages throughput: VGG16 features (per-image fp32 eager vs batched
channels_last, bf16, torch.compile) and PCA + logistic regression, in frames/s.

Usage::

    python benchmarks/bench_classify.py [--quick] [--n-images 8] [--threads 1] [--compile]
    python benchmarks/run.py --only classify [--quick]

Images are random 3x224x224 frames in [0, 1]; weights ``random:0`` (throughput does not depend
on the values).  Each configuration is timed ``repeats`` times after a warm-up pass; the
figures are medians.  On a GPU node the same configurations run on CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np


def _median_rate(fn: Any, n: int, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times), times


def bench_features(
    *, n_images: int, repeats: int, layer: str, device: str, compile: bool
) -> list[dict[str, Any]]:
    from hpcdiff.features import FeatureExtractor

    images = np.random.default_rng(0).random((n_images, 3, 224, 224), dtype=np.float32)
    configs = [
        (
            "fp32 eager, per image",
            {"batch_size": 1, "channels_last": False, "bf16": False, "bf16_cpu": False},
        ),
        (
            "fp32 batched, channels_last",
            {"batch_size": n_images, "channels_last": True, "bf16": False, "bf16_cpu": False},
        ),
        (
            "bf16 batched, channels_last",
            {"batch_size": n_images, "channels_last": True, "bf16": True, "bf16_cpu": True},
        ),
    ]
    if compile:
        configs.append(
            (
                "bf16 batched, channels_last, compiled",
                {"batch_size": n_images, "channels_last": True, "bf16": True, "bf16_cpu": True,
                 "compile": True},
            )
        )  # fmt: skip
    # build and warm every configuration, then time them round-robin so that load from
    # other processes falls on all of them alike; report median and best per configuration
    runs = []
    for name, kwargs in configs:
        fx = FeatureExtractor("random:0", layer=layer, device=device, **kwargs)
        runs.append((name, fx, fx.extract(images)))  # warm-up (and compilation)
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _ in range(repeats):
        for name, fx, _ in runs:
            t0 = time.perf_counter()
            fx.extract(images)
            times[name].append(time.perf_counter() - t0)
    reference = runs[0][2]
    base = n_images / statistics.median(times[runs[0][0]])
    rows = []
    for name, _, first in runs:
        rate = n_images / statistics.median(times[name])
        best = n_images / min(times[name])
        err = float(np.max(np.abs(first - reference)) / (np.max(np.abs(reference)) or 1.0))
        rows.append(
            {
                "metric": f"VGG16 {layer} {name} ({device})",
                "value": round(rate, 3),
                "unit": "frames/s",
                "note": f"x{rate / base:.2f} vs per-image fp32 (median); best {best:.3g} "
                f"frames/s; max rel. diff {err:.1e}; times "
                f"{', '.join(f'{t:.2f}' for t in times[name])} s",
            }
        )
    return rows


def bench_learn(*, n: int, d: int, repeats: int) -> list[dict[str, Any]]:
    from hpcdiff.config import LearnConfig
    from hpcdiff.io.featurefile import FeatureMeta, FeatureSet
    from hpcdiff.learn import BINARY_CLASS_NAMES, PCAStatistics, train

    rng = np.random.default_rng(0)
    y = (np.arange(n) % 2).astype(np.int64)
    x = (rng.random((n, d), dtype=np.float32) + y[:, None] * 0.05).astype(np.float32)
    meta = FeatureMeta("fc6+fc7", d, {"name": "random:0", "sha256": "0"}, {"method": "radial"})
    fs = FeatureSet(np.array(["f"] * n, dtype=object), np.arange(n), x, meta)
    cfg = LearnConfig(n_components=50, n_train=n // 2, n_test=n // 2)
    holder: dict[str, Any] = {}

    def fit() -> None:
        holder["res"] = train(fs, y, class_names=BINARY_CLASS_NAMES, cfg=cfg)

    fit_rate, _ = _median_rate(fit, n // 2, repeats)
    model = holder["res"].model
    pred_rate, _ = _median_rate(lambda: model.predict_proba(x), n, repeats)
    stats_rate, _ = _median_rate(lambda: PCAStatistics.from_array(x), n, repeats)
    return [
        {"metric": f"PCA(50) + LR fit, {n // 2} x {d} (gather)", "value": round(fit_rate, 1),
         "unit": "frames/s", "note": "train rows per second of fit time, incl. test report"},
        {"metric": f"PCA + LR predict, {n} x {d}", "value": round(pred_rate, 1), "unit": "frames/s",
         "note": ""},
        {"metric": f"PCAStatistics.from_array, {n} x {d}", "value": round(stats_rate, 1),
         "unit": "frames/s", "note": "Gram matrix accumulation (float64)"},
    ]  # fmt: skip


def run(quick: bool = False, *, n_images: int | None = None, threads: int | None = None,
        compile: bool = False, device: str = "auto", layer: str = "fc6+fc7") -> dict[str, Any]:  # fmt: skip
    """Benchmark entry point for ``benchmarks/run.py``."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from hpcdiff.features.extractor import resolve_device

    device = resolve_device(device)
    n_images = n_images or (4 if quick else 16)
    repeats = 2 if quick else 3
    rows = bench_features(
        n_images=n_images, repeats=repeats, layer=layer, device=device, compile=compile
    )
    rows += bench_learn(n=400 if quick else 1000, d=2048 if quick else 8192, repeats=repeats)
    return {
        "title": "Classification stages (VGG16 features, PCA + logistic regression)",
        "rows": rows,
        "n_images": n_images,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n-images", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--device", default="auto")
    p.add_argument("--layer", default="fc6+fc7")
    p.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = p.parse_args(argv)
    result = run(
        args.quick, n_images=args.n_images, threads=args.threads, compile=args.compile,
        device=args.device, layer=args.layer,
    )  # fmt: skip
    print(f"{result['title']} (device {result['device']}, {result['torch_threads']} threads)")
    for row in result["rows"]:
        print(f"  {row['metric']:<62} {row['value']:>10} {row['unit']}  {row['note']}")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

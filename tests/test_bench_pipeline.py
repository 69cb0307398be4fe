"""The end-to-end pipeline benchmark runs, measures what it says, and renders in the suite."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_batches_cover_every_frame_once():
    bench = _load("bench_pipeline")
    for n, batch in [(0, 4), (1, 4), (7, 3), (16, 16), (17, 16)]:
        spans = bench.batches(n, batch)
        covered = [i for a, b in spans for i in range(a, b)]
        assert covered == list(range(n))
        assert all(0 < b - a <= batch for a, b in spans)


def test_rate_and_ratio_rows():
    bench = _load("bench_pipeline")
    row = bench.rate_row("x", 10, 2.0, [2.5, 2.0, 1.5], "note")
    assert row["value"] == pytest.approx(5.0)
    assert row["unit"] == "frames/s" and "median of 3" in row["note"]
    assert bench.ratio_row("r", 6.0, 2.0)["value"] == pytest.approx(3.0)


@pytest.mark.slow
def test_smallest_configuration_runs_and_is_consistent():
    torch = pytest.importorskip("torch")
    bench = _load("bench_pipeline")
    result = bench.run(
        quick=True, n_frames=1, batch=1, repeats=1, threads=1, detector="small", bf16_cpu=False
    )
    rows = {row["metric"]: row for row in result["rows"]}
    assert len(rows) == len(result["rows"]), "metric names must be unique"
    for row in result["rows"]:
        assert set(row) >= {"metric", "value", "unit", "note"}
        if row["unit"] in ("frames/s", "x"):
            assert math.isfinite(row["value"]) and row["value"] > 0, row
    assert result["n_frames"] == 1 and result["slab_shape"] == [192, 64]
    assert result["threads"]["torch_threads"] == 1

    # every stage of ours and of the baseline has a rate, and the speed-ups are their ratios
    e2e = result["end_to_end_frames_per_s"]
    assert rows["ours: end to end (read lz4 -> prediction)"]["value"] == pytest.approx(
        e2e["ours"], rel=1e-3
    )
    speedup = rows["speed-up end to end (ours / baseline)"]
    assert speedup["value"] == pytest.approx(e2e["ours"] / e2e["baseline"], rel=1e-2)
    assert ("NOT met" in speedup["note"]) == (speedup["value"] < bench.TARGET_SPEEDUP)
    # the baseline with batched VGG16 (fp32, NCHW) is reported beside it
    batched = rows["speed-up end to end (ours / baseline with batched VGG16)"]["value"]
    assert batched == pytest.approx(e2e["ours"] / e2e["baseline_batched_vgg16"], rel=1e-2)
    ours_rad = rows["ours, slab order (the cupy path): background radial (median, 400 rings)"]
    base_rad = rows["baseline: background radial (per-ring np.median loop)"]["value"]
    assert rows["speed-up background radial (ours / baseline)"]["value"] == pytest.approx(
        ours_rad["value"] / base_rad, rel=1e-2
    )
    # the ring-order CPU chain is compared with the baseline's three stages in series
    ring = rows["ours: radial + Bragg + normalise + images, ring order (CPU path)"]["value"]
    base_stages = [
        rows[f"baseline: {name}"]["value"]
        for name in (
            "background radial (per-ring np.median loop)",
            "Bragg mask + normalise (per-ring loop)",
            "assemble + scipy.ndimage.zoom to 224x224",
        )
    ]
    ratio = rows["speed-up radial + Bragg + normalise + images (ours / baseline)"]["value"]
    assert ratio == pytest.approx(ring * sum(1 / r for r in base_stages), rel=1e-2)
    assert "one thread" in " ".join(rows)
    best = result["vgg16_rates"]["best"]
    assert result["vgg16_rates"][best] == max(
        v for k, v in result["vgg16_rates"].items() if k != "best"
    )

    # the baseline does the same job: its CNN images look like ours
    corr = np.asarray(result["image_correlation"])
    assert corr.shape == (1,) and (corr > 0.8).all(), corr

    # no invented GPU numbers
    if not torch.cuda.is_available():
        assert rows["cuda device"]["value"] == "none"
        assert not any(k.startswith("GPU:") for k in rows)

    # the suite runner renders it
    runner = _load("run")
    text = runner.markdown(
        {
            "machine": runner.machine_info(),
            "benchmarks": {"pipeline": {**result, "seconds": 1.0}},
        }
    )
    assert "speed-up end to end" in text

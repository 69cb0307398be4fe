"""Helpers of the in-domain and diffuse-visibility benchmarks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_subsample_keeps_class_proportions_without_repeats():
    bench = _load("bench_indomain")
    y = np.r_[np.zeros(700, dtype=np.int64), np.ones(300, dtype=np.int64)]
    for n in (10, 100, 500):
        rows = bench._subsample(y, n, seed=3)
        assert np.unique(rows).size == rows.size == n
        assert np.mean(y[rows]) == pytest.approx(0.3, abs=0.05)
    assert np.array_equal(bench._subsample(y, 5000, seed=0), np.arange(y.size))
    assert bench._sizes(2000) == [150, 500] and bench._sizes(120) == [60]


def test_isotropic_ceiling_is_between_chance_and_perfect():
    vis = _load("bench_diffuse_visibility")
    acc, auc = vis.isotropic_ceiling("hard", n=20_000)
    # debris spans twice the strongest diffuse term: the amplitude overlaps, never separates
    assert 0.55 < acc < 0.8 and 0.6 < auc < 0.9

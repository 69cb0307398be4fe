"""The accuracy benchmark measures the default layer: ``pool4+pool5`` derived from one pass
equals what the feature extractor computes for that layer."""

from __future__ import annotations

import importlib.util
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


def test_derived_pool4_pool5_is_the_extractors_layer():
    pytest.importorskip("torch")
    from hpcdiff.features import FeatureExtractor
    from hpcdiff.features.layers import BEST_CONV_LAYER

    bench = _load("bench_accuracy")
    assert bench.default_layer() == BEST_CONV_LAYER
    assert BEST_CONV_LAYER in bench.QUICK.layers and BEST_CONV_LAYER in bench.FULL.layers
    rng = np.random.default_rng(0)
    images = rng.random((2, 3, 224, 224), dtype=np.float32)
    ex = bench.Extractor("random:0", device="cpu", bf16_cpu=False, batch_size=1)
    pool5 = ex.pool5(images)  # two batches: the hook's pieces are joined in order
    assert ex.last_gap4 is not None and ex.last_gap4.shape == (2, 512)
    derived = ex.layer(pool5, "pool4+pool5", gap4=ex.last_gap4)
    direct = FeatureExtractor(
        "random:0", layer="pool4+pool5", device="cpu", bf16_cpu=False, batch_size=1
    ).extract(images)
    assert derived.shape == direct.shape == (2, 1024)
    assert np.allclose(derived, direct, rtol=1e-4, atol=1e-5 * float(np.abs(direct).max()))
    # the pool5 half is gap; without the pool4 means the layer is refused
    assert np.allclose(derived[:, 512:], ex.layer(pool5, "gap"))
    with pytest.raises(ValueError, match="pool4"):
        ex.layer(pool5, "pool4+pool5")

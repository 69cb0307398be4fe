"""Per-frame scales of the Fourier merge: the cross-half fit, its jackknife error, the decision."""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff.merge import Grid, MergeAccumulator
from hpcdiff.merge_scale import (
    MIN_SCALE_PIXELS,
    decide_scales,
    fit_scale,
    half_reference,
)


def test_fit_scale_is_the_weighted_least_squares_scale():
    rng = np.random.default_rng(0)
    x = rng.normal(size=500) + 1.0
    w = rng.uniform(0.5, 2.0, 500)
    g, err = fit_scale(0.37 * x, reference=x, weights=w)
    assert g == pytest.approx(0.37, rel=1e-12) and err == pytest.approx(0.0, abs=1e-12)
    v = 0.37 * x + rng.normal(size=500) / np.sqrt(w)
    g, err = fit_scale(v, reference=x, weights=w)
    assert g == pytest.approx(np.sum(w * x * v) / np.sum(w * x * x), rel=1e-12) and err > 0
    # NaN values or references are left out; too few pixels: no scale
    few = np.where(np.arange(500) < MIN_SCALE_PIXELS - 1, v, np.nan)
    assert np.isnan(fit_scale(few, reference=x, weights=w)[0])
    assert np.isnan(fit_scale(v, reference=np.zeros(500), weights=w)[0])
    with pytest.raises(ValueError, match="one"):
        fit_scale(v[:10], reference=x, weights=w)


def test_jackknife_error_covers_correlated_residuals():
    """Residuals correlated over blocks of pixels (a background misfit per panel) scatter the
    scale far beyond the pixel-noise error; the jackknife error follows the real scatter."""
    rng = np.random.default_rng(1)
    n, g = 4000, 0.5
    x = rng.normal(size=n) + 0.5
    z = []
    for _ in range(300):
        offsets = np.repeat(rng.normal(scale=0.5, size=16), n // 16)  # one per "panel"
        v = g * x + offsets * x + rng.normal(scale=0.3, size=n)
        fit, err = fit_scale(v, reference=x, weights=np.ones(n))
        z.append((fit - g) / err)
    assert 0.7 < np.std(z) < 1.4, np.std(z)


def test_decide_scales_leaves_out_only_confidently_small_frames():
    rng = np.random.default_rng(2)
    n = 40
    carries = np.arange(n) % 2 == 0
    e = np.full(n, 0.08)
    g = np.where(carries, 1.0, 0.0) + rng.normal(scale=0.08, size=n)
    g[1], e[1] = 0.1, 2.0  # no map, but measured so poorly that it cannot be told: kept
    d = decide_scales(g, e, scale_min=0.5)
    assert d.measurable and d.typical == pytest.approx(1.0, abs=0.1)
    assert d.kept[carries].all() and d.kept[1]
    assert not d.kept[~carries & (np.arange(n) != 1)].any()
    assert set(np.unique(d.scale)) == {0.0, 1.0} and not d.changes_nothing
    summary = d.summary()
    assert summary["n_left_out"] == n // 2 - 1 and summary["measurable"]
    # unfitted frames (NaN) are kept
    g2 = g.copy()
    g2[3] = np.nan
    assert decide_scales(g2, e).kept[3]


def test_decide_scales_changes_nothing_when_scales_are_noise():
    """When (almost) no frame's scale stands out of its error the pass keeps every frame."""
    rng = np.random.default_rng(3)
    g = 0.1 + rng.normal(size=60)
    e = np.ones(60)
    d = decide_scales(g, e)
    assert not d.measurable and d.changes_nothing and d.kept.all()
    assert np.isnan(d.typical)


def test_shrunk_scales_pull_uncertain_frames_to_the_typical_scale():
    rng = np.random.default_rng(4)
    n = 60
    true = rng.uniform(0.5, 1.5, n)
    e = np.where(np.arange(n) < 50, 0.02, 5.0)  # ten frames measure nothing
    g = true + rng.normal(size=n) * np.minimum(e, 0.3)
    d = decide_scales(g, e, scale_min=0.3, model="shrunk")
    assert d.measurable and d.kept.all()
    good = e < 1
    rel = d.scale * d.typical
    np.testing.assert_allclose(rel[good], g[good], atol=0.01)  # well measured: their own
    np.testing.assert_allclose(d.scale[~good], 1.0, atol=0.05)  # uncertain: typical
    assert (d.scale >= 0.3).all() and 0.1 < d.prior_sd < 0.5
    with pytest.raises(ValueError, match="model"):
        decide_scales(g, e, model="other")  # type: ignore[arg-type]


def test_half_reference_fits_each_half_against_the_other():
    grid = Grid(8, 3.0)
    rng = np.random.default_rng(5)
    vox = np.arange(grid.n_voxels)
    smooth = np.cos(np.arange(grid.n_voxels) / 40.0)
    a = MergeAccumulator.empty(grid).add_voxels(vox, 2.0 * smooth)
    b = MergeAccumulator.empty(grid).add_voxels(vox, -1.0 * smooth)
    merged = (a + b).with_half_a(a)
    ref = half_reference(merged, sigma_voxels=0.0)
    np.testing.assert_allclose(ref.at(vox, half=0), -smooth, rtol=1e-6, atol=1e-6)  # half B's
    np.testing.assert_allclose(ref.at(vox, half=1), 2 * smooth, rtol=1e-6, atol=1e-6)
    assert np.isnan(ref.at(np.array([-1]), half=0)).all()
    auto = half_reference(merged)  # width chosen per half
    assert all(s >= 0 for s in auto.sigma_voxels)
    with pytest.raises(ValueError, match="half"):
        half_reference(a + b)
    del rng


def test_typical_scale_is_not_that_of_the_strong_frames_alone():
    """Scales spread over a factor 24 (randomised strengths) with an error that only the
    strong frames clear twice: the typical scale settles on the frames kept, well below
    the median of the significant ones, so moderately weak frames are not left out."""
    rng = np.random.default_rng(6)
    true = np.exp(rng.uniform(np.log(0.05), np.log(1.2), 200))
    e = np.full(200, 0.12)
    g = true + rng.normal(size=200) * e
    d = decide_scales(g, e, scale_min=0.5)
    strong = np.median(g[g > 2 * e])
    assert d.measurable and d.typical < 0.8 * strong
    first = g + e < 0.5 * strong  # what the significant frames' median alone would leave out
    assert (~d.kept).sum() < first.sum()
    assert d.kept[true > 0.5 * np.median(true) + 0.3].all()

"""Smoothing of the merged map (hpcdiff.map_smooth): normalised convolution and the
leave-one-voxel-out choice of its width."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from hpcdiff.map_smooth import (
    TRUNCATE,
    choose_sigma,
    loo_error,
    smoothed_mean,
    smoothing_for,
)


def _grid(shape=(16, 16, 16)):
    return np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")


def test_sigma_zero_is_the_voxel_mean():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 3, (6, 7, 8))
    sums = rng.normal(size=counts.shape) * counts
    out = smoothed_mean(sums, counts, sigma_voxels=0)
    measured = counts > 0
    np.testing.assert_array_equal(out[measured], sums[measured] / counts[measured])
    assert np.isnan(out[~measured]).all()


def test_constant_map_stays_constant_whatever_the_counts():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 5, (12, 12, 12)).astype(np.int64)
    sums = 3.25 * counts
    for sigma in (0.5, 1.0, 2.5):
        out = smoothed_mean(sums, counts, sigma_voxels=sigma)
        np.testing.assert_allclose(out[counts > 0], 3.25, rtol=1e-12)
        assert np.isnan(out[counts == 0]).all()
        filled = smoothed_mean(sums, counts, sigma_voxels=sigma, support="kernel")
        assert np.isfinite(filled).sum() >= (counts > 0).sum()
        np.testing.assert_allclose(filled[np.isfinite(filled)], 3.25, rtol=1e-12)


def test_linear_map_is_kept_inside_the_grid():
    """A symmetric kernel over uniform counts reproduces a linear map away from the edges."""
    h, k, ell = _grid()
    field = 2.0 * h - 0.5 * k + 0.25 * ell + 1.0
    counts = np.ones(field.shape)
    sigma = 1.0
    r = int(TRUNCATE * sigma + 0.5)
    out = smoothed_mean(field * counts, counts, sigma_voxels=sigma)
    inner = (slice(r, -r),) * 3
    np.testing.assert_allclose(out[inner], field[inner], atol=1e-10)


def test_each_pixel_weighs_the_same_a_voxel_of_three_pixels_three_times():
    """The smoothed value is the kernel-weighted mean over pixels (brute force at one voxel)."""
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 4, (9, 9, 9)).astype(np.float64)
    means = rng.normal(size=counts.shape)
    sums = means * counts
    sigma = 0.8
    out = smoothed_mean(sums, counts, sigma_voxels=sigma)
    # scipy's truncated, normalised 1-D kernel
    r = int(TRUNCATE * sigma + 0.5)
    x = np.arange(-r, r + 1)
    w1 = np.exp(-0.5 * (x / sigma) ** 2)
    w1 /= w1.sum()
    centre = (4, 4, 4)
    counts[centre] = max(counts[centre], 1)
    sums[centre] = means[centre] * counts[centre]
    out = smoothed_mean(sums, counts, sigma_voxels=sigma)
    num = den = 0.0
    for i, a in zip(x, w1, strict=True):
        for j, b in zip(x, w1, strict=True):
            for m, c in zip(x, w1, strict=True):
                v = (4 + i, 4 + j, 4 + m)
                num += a * b * c * sums[v]
                den += a * b * c * counts[v]
    assert out[centre] == pytest.approx(num / den, rel=1e-12)


def test_loo_error_never_uses_the_voxels_own_value():
    """Changing one voxel's value changes the error only through its own residual and its
    neighbours' predictions: on a grid of isolated measured voxels (no neighbour within the
    kernel) nothing can be predicted."""
    counts = np.zeros((20, 20, 20))
    counts[2, 2, 2] = counts[15, 15, 15] = 1
    sums = counts * 5.0
    assert np.isnan(loo_error(sums, counts, sigma_voxels=0.5))
    # two neighbours: each is predicted by the other exactly
    counts = np.zeros((10, 10, 10))
    counts[4, 4, 4] = counts[4, 4, 5] = 1
    sums = counts * 7.0
    assert loo_error(sums, counts, sigma_voxels=1.0) == pytest.approx(0.0, abs=1e-20)
    sums[4, 4, 5] = 9.0
    assert loo_error(sums, counts, sigma_voxels=1.0) == pytest.approx(4.0, rel=1e-12)


def test_sparse_noisy_smooth_map_chooses_to_smooth_and_gets_closer_to_the_truth():
    rng = np.random.default_rng(3)
    truth = gaussian_filter(rng.normal(size=(40, 40, 40)), 3.0, mode="wrap")
    truth /= truth.std()
    counts = (rng.random(truth.shape) < 0.3).astype(np.int64)  # ~one pixel per measured voxel
    sums = (truth + rng.normal(scale=1.5, size=truth.shape)) * counts
    choice = choose_sigma(sums, counts)
    assert choice.method == "loo"
    assert choice.sigma_voxels > 0.5
    assert set(choice.loo_errors) >= {0.5, 3.0}
    m = counts > 0
    raw = np.corrcoef(sums[m] / counts[m], truth[m])[0, 1]
    smooth = smoothed_mean(sums, counts, sigma_voxels=choice.sigma_voxels)
    cc = np.corrcoef(smooth[m], truth[m])[0, 1]
    assert cc > raw + 0.2
    # the chosen width is within one candidate of the width that is best against the truth
    ccs = {
        s: np.corrcoef(smoothed_mean(sums, counts, sigma_voxels=s)[m], truth[m])[0, 1]
        for s in choice.loo_errors
    }
    order = sorted(ccs)
    best = max(ccs, key=lambda s: ccs[s])
    assert abs(order.index(best) - order.index(choice.sigma_voxels)) <= 1


def test_noise_free_structure_chooses_the_narrowest_kernel():
    """Without noise every kernel only blurs: the narrowest predicts best."""
    h, k, ell = _grid((20, 20, 20))
    truth = np.sin(2 * np.pi * h / 6) * np.cos(2 * np.pi * k / 8) + 0.1 * ell
    counts = np.ones(truth.shape)
    choice = choose_sigma(truth * counts, counts, candidates=(0.5, 1.0, 2.0))
    assert choice.sigma_voxels == 0.5


def test_fixed_width_and_bad_input():
    counts = np.ones((4, 4, 4))
    assert smoothing_for(counts, counts, sigma_voxels=1.25).sigma_voxels == 1.25
    assert smoothing_for(counts, counts, sigma_voxels=1.25).method == "fixed"
    with pytest.raises(ValueError, match="shape"):
        smoothed_mean(np.ones((4, 4)), np.ones((4, 4)), sigma_voxels=1.0)
    with pytest.raises(ValueError, match="sigma"):
        smoothed_mean(counts, counts, sigma_voxels=-1.0)
    with pytest.raises(ValueError, match="candidates"):
        choose_sigma(counts, counts, candidates=(0.0, 1.0))
    empty = np.zeros((5, 5, 5))
    assert choose_sigma(empty, empty).sigma_voxels == 0.0

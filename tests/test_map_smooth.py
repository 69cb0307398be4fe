"""Smoothing of the merged map (hpcdiff.map_smooth): normalised convolution, the
leave-one-voxel-out and half-map choices of its width, and the half-maps' CC."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from hpcdiff.map_smooth import (
    TRUNCATE,
    cc_star,
    choose_sigma,
    choose_sigma_halves,
    half_map_cc,
    half_map_error,
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


def _halves(truth, rng, *, fraction, noise):
    """Two independent sparse noisy samplings (one pixel per measured voxel) of ``truth``."""
    out = []
    for _ in range(2):
        counts = (rng.random(truth.shape) < fraction).astype(np.int64)
        sums = (truth + rng.normal(scale=noise, size=truth.shape) * (noise > 0)) * counts
        out += [sums, counts]
    return tuple(out)


def test_half_maps_choose_to_smooth_a_sparse_noisy_smooth_field():
    rng = np.random.default_rng(11)
    truth = gaussian_filter(rng.normal(size=(40, 40, 40)), 3.0, mode="wrap")
    truth /= truth.std()
    sa, ca, sb, cb = _halves(truth, rng, fraction=0.3, noise=1.5)
    choice = choose_sigma_halves(sa, ca, sb, cb)
    assert choice.method == "half-maps" and 0.0 in choice.loo_errors
    assert choice.sigma_voxels >= 1.0
    ccs = choice.half_map_ccs
    assert ccs[choice.sigma_voxels] == max(ccs.values()) > ccs[0.0] + 0.1
    assert choice.loo_errors[choice.sigma_voxels] < choice.loo_errors[0.0]
    # the full map smoothed at the chosen width is closer to the truth than unsmoothed
    s, c = sa + sb, ca + cb
    m = c > 0
    raw = np.corrcoef(s[m] / c[m], truth[m])[0, 1]
    cc = np.corrcoef(smoothed_mean(s, c, sigma_voxels=choice.sigma_voxels)[m], truth[m])[0, 1]
    assert cc > raw + 0.2
    assert choice.to_dict()["rule"] == "half-maps" and "half_map_errors" in choice.to_dict()
    assert smoothing_for(s, c, sigma_voxels="auto", halves=(sa, ca, sb, cb)) == choice


def test_half_maps_choose_no_smoothing_for_noise_free_fine_structure():
    """Speckle one voxel wide, measured without noise: any smoothing only blurs it."""
    rng = np.random.default_rng(12)
    truth = rng.normal(size=(24, 24, 24))
    sa, ca, sb, cb = _halves(truth, rng, fraction=0.5, noise=0.0)
    choice = choose_sigma_halves(sa, ca, sb, cb)
    assert choice.sigma_voxels == 0.0
    assert choice.loo_errors[0.0] < 1e-20 < min(v for k, v in choice.loo_errors.items() if k > 0)
    assert choice.half_map_ccs[0.0] == pytest.approx(1.0, abs=1e-12)
    assert max(v for k, v in choice.half_map_ccs.items() if k > 0) < 0.99
    # leave-one-out cannot choose 0: it picks its narrowest kernel
    assert choose_sigma(sa + sb, ca + cb).sigma_voxels > 0


def test_half_map_error_uses_only_the_other_half_unsmoothed():
    rng = np.random.default_rng(13)
    sa, ca, sb, cb = _halves(rng.normal(size=(10, 10, 10)), rng, fraction=0.6, noise=1.0)
    num, den = half_map_error(sa, ca, sb, cb, sigma_voxels=0.0)
    both = (ca > 0) & (cb > 0)
    expect = ((sb[both] / cb[both] - sa[both] / ca[both]) ** 2 * cb[both]).sum()
    assert den == cb[both].sum() and np.isclose(num, expect, rtol=1e-12)
    with pytest.raises(ValueError, match="candidates"):
        choose_sigma_halves(sa, ca, sb, cb, candidates=(-1.0,))
    empty = np.zeros((5, 5, 5))
    assert choose_sigma_halves(empty, empty, empty, empty).sigma_voxels == 0.0


def test_cc_half_of_noise_is_zero_and_of_a_noise_free_map_one():
    rng = np.random.default_rng(14)
    a, b = rng.normal(size=(2, 30, 30, 30))
    cc, n = half_map_cc(a, b)
    assert n == a.size and abs(cc) < 4 / np.sqrt(n)
    truth = gaussian_filter(rng.normal(size=(30, 30, 30)), 2.0)
    a, b = truth.copy(), truth.copy()
    a[rng.random(a.shape) < 0.5] = np.nan
    cc, n = half_map_cc(a, b)
    assert n == np.isfinite(a).sum() and cc == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(half_map_cc(np.full(3, np.nan), b.ravel()[:3])[0])


def test_the_job_smooths_by_the_half_maps_of_its_merge():
    """``smoothed_map`` with the half-map rule uses the merge's halves (A and full - A)."""
    from hpcdiff.merge import Grid, MergeAccumulator
    from hpcdiff.pipelines.fourier import smoothed_map

    grid = Grid(20, 5.0)
    rng = np.random.default_rng(15)
    truth = gaussian_filter(rng.normal(size=grid.shape), 3.0, mode="wrap").ravel()
    truth /= truth.std()
    full = MergeAccumulator.empty(grid, halves=True)
    halves = []
    for number in range(6):  # frames 0, 2, 4 in half A
        vox = np.flatnonzero(rng.random(grid.n_voxels) < 0.2)
        acc = MergeAccumulator.empty(grid).add_voxels(
            vox, truth[vox] + rng.normal(0, 1.5, vox.size)
        )
        full.merge(
            acc.copy().with_half_a(acc.copy() if number % 2 == 0 else MergeAccumulator.empty(grid))
        )
        halves.append(acc)
    choice, _ = smoothed_map(full, None, rule="half-maps")
    a = halves[0] + halves[2] + halves[4]
    b = halves[1] + halves[3] + halves[5]
    shape = grid.shape
    expect = choose_sigma_halves(
        a.sums.reshape(shape), a.denominator().reshape(shape),
        b.sums.reshape(shape), b.denominator().reshape(shape),
    )  # fmt: skip
    assert choice.method == "half-maps" and choice.sigma_voxels == expect.sigma_voxels > 0
    assert smoothed_map(full, None)[0].method == "loo"
    assert smoothed_map(full, 1.0, rule="half-maps")[0].method == "fixed"
    few = MergeAccumulator.empty(grid, halves=True).merge(full.copy())
    few.n_frames, few.half_a.n_frames = 3, 1  # one frame in half A: leave-one-out
    assert smoothed_map(few, None, rule="half-maps")[0].method == "loo"


def test_cc_star_predicts_the_full_maps_correlation_with_the_signal():
    """Two halves = signal + independent noise: CC* of their CC1/2 is the correlation of
    their mean with the signal (Karplus & Diederichs), at every noise level."""
    rng = np.random.default_rng(21)
    signal = rng.normal(size=200_000)
    for noise in (0.3, 1.0, 3.0):
        a = signal + rng.normal(0, noise, signal.size)
        b = signal + rng.normal(0, noise, signal.size)
        full = np.corrcoef(0.5 * (a + b), signal)[0, 1]
        star = cc_star(half_map_cc(a, b)[0])
        assert star is not None and star == pytest.approx(full, abs=0.01)
    assert cc_star(1.0) == 1.0 and cc_star(0.0) == 0.0 and cc_star(-0.2) == 0.0
    assert cc_star(None) is None and cc_star(float("nan")) is None
    values = [cc_star(c) for c in np.linspace(0.01, 1.0, 20)]
    assert all(v is not None for v in values) and bool(np.all(np.diff(np.array(values, float)) > 0))


def test_half_map_summary_gives_cc_star_per_shell_and_for_the_smoothed_halves():
    """A smooth field plus noise: the smoothed half-maps agree better than the raw ones, and
    every shell carries ``cc_star`` = :func:`cc_star` of its ``cc``."""
    from hpcdiff.merge import Grid, MergeAccumulator
    from hpcdiff.pipelines.fourier import half_map_summary

    grid = Grid(20, 5.0)
    rng = np.random.default_rng(22)
    truth = gaussian_filter(rng.normal(size=grid.shape), 3.0, mode="wrap").ravel()
    truth /= truth.std()
    full = MergeAccumulator.empty(grid, halves=True)
    for number in range(8):
        vox = np.flatnonzero(rng.random(grid.n_voxels) < 0.3)
        acc = MergeAccumulator.empty(grid).add_voxels(
            vox, truth[vox] + rng.normal(0, 2.0, vox.size)
        )
        full.merge(
            acc.copy().with_half_a(acc.copy() if number % 2 == 0 else MergeAccumulator.empty(grid))
        )
    metric = np.eye(3) * 0.04  # a 5 nm cubic cell
    raw = half_map_summary(full, metric=metric, n_shells=4)
    assert "smoothed" not in raw and len(raw["shells"]) == 4
    assert raw["cc_star"] == pytest.approx(cc_star(raw["cc"]))
    for row in raw["shells"]:
        assert row["cc_star"] == pytest.approx(cc_star(row["cc"]))
    out = half_map_summary(full, metric=metric, n_shells=4, sigma_voxels=1.5)
    sm = out["smoothed"]
    assert sm["sigma_voxels"] == 1.5 and sm["voxels"] == raw["voxels"]
    assert sm["cc"] > raw["cc"] + 0.1 and sm["cc_star"] > raw["cc_star"]
    assert all(r["cc_star"] == pytest.approx(cc_star(r["cc"])) for r in sm["shells"])

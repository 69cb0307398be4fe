"""Weighted merge: inverse-variance weighted voxel means, their weights through merge,
symmetrising, save/load and the Fourier job's checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff.errors import FormatError
from hpcdiff.merge import Grid, MergeAccumulator, bin_frame
from hpcdiff.pipelines.fourier_frames import VAR_FLOOR_FRACTION, pixel_weights

GRID = Grid(6, 3.0)


def _pixels(rng, n=4000):
    vox = rng.integers(-1, GRID.n_voxels, n)
    vals = rng.normal(2.0, 1.0, n)
    vals[rng.random(n) < 0.05] = np.nan
    var = rng.uniform(0.5, 3.0, n)
    return vox, vals, var


def test_weighted_mean_is_the_exact_inverse_variance_mean():
    rng = np.random.default_rng(0)
    vox, vals, var = _pixels(rng)
    w = 1.0 / var
    acc = MergeAccumulator.empty(GRID, weighted=True).add_voxels(vox, vals, weights=w)
    got = acc.intensity().ravel()
    ok = (vox >= 0) & np.isfinite(vals)
    for v in np.unique(vox[ok])[:200]:
        sel = ok & (vox == v)
        assert got[v] == pytest.approx(np.sum(w[sel] * vals[sel]) / np.sum(w[sel]), rel=1e-12)
        assert acc.counts[v] == sel.sum()
    untouched = np.setdiff1d(np.arange(GRID.n_voxels), vox[ok])
    assert np.isnan(got[untouched]).all()
    # equal weights give the plain mean
    plain = MergeAccumulator.empty(GRID).add_voxels(vox, vals)
    equal = MergeAccumulator.empty(GRID, weighted=True).add_voxels(
        vox, vals, weights=np.full(vals.shape, 3.0)
    )
    np.testing.assert_allclose(equal.intensity(), plain.intensity(), rtol=1e-12)
    np.testing.assert_array_equal(equal.counts, plain.counts)


def test_binned_frame_adds_as_its_pixels():
    rng = np.random.default_rng(1)
    vox, vals, var = _pixels(rng, 500)
    w = np.where(np.isfinite(vals), 1.0 / var, np.nan)
    a = MergeAccumulator.empty(GRID, weighted=True).add_voxels(vox, vals, weights=1.0 / var)
    b = MergeAccumulator.empty(GRID, weighted=True)
    b.add_frame(bin_frame(vals * w, vox), weights=bin_frame(w, vox).sums)
    np.testing.assert_allclose(a.sums, b.sums, rtol=1e-12)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-12)
    np.testing.assert_array_equal(a.counts, b.counts)


def test_twice_the_noise_gets_a_quarter_of_the_weight():
    rng = np.random.default_rng(2)
    var = rng.uniform(1.0, 2.0, 1000)
    np.testing.assert_allclose(pixel_weights(4.0 * var), pixel_weights(var) / 4.0, rtol=1e-12)
    # two frames on the same voxels, the second with twice the noise sd
    vox = np.arange(GRID.n_voxels)
    v1, v2 = rng.normal(size=vox.size), rng.normal(size=vox.size)
    var1 = np.full(vox.size, 0.3)
    acc = MergeAccumulator.empty(GRID, weighted=True)
    acc.add_voxels(vox, v1, weights=pixel_weights(var1))
    acc.add_voxels(vox, v2, weights=pixel_weights(4.0 * var1))
    np.testing.assert_allclose(acc.intensity().ravel(), (v1 + v2 / 4.0) / 1.25, rtol=1e-12)
    assert acc.n_frames == 2


def test_pixel_weights_floor_and_missing():
    var = np.array([1.0, 1.0, 1.0, 0.0, np.nan])
    w = pixel_weights(var)
    assert w[4] == 0.0 and w[0] == 1.0
    assert w[3] == pytest.approx(1.0 / VAR_FLOOR_FRACTION)  # floored, not infinite


def test_weights_survive_merge_symmetrise_save_and_load(tmp_path):
    rng = np.random.default_rng(3)
    parts = []
    for _ in range(3):
        vox, vals, var = _pixels(rng, 800)
        parts.append(
            MergeAccumulator.empty(GRID, weighted=True).add_voxels(vox, vals, weights=1 / var)
        )
    total = parts[0] + parts[1] + parts[2]
    np.testing.assert_allclose(total.weights, sum(p.weights for p in parts), rtol=1e-12)
    sym = total.symmetrised("friedel")
    np.testing.assert_allclose(sym.weights, total.weights + total.weights[::-1], rtol=1e-12)
    path = total.save(tmp_path / "acc.h5")
    back = MergeAccumulator.load(path, grid=GRID)
    assert back.weighted and back.n_frames == 3
    np.testing.assert_array_equal(back.weights, total.weights)
    np.testing.assert_array_equal(back.intensity(), total.intensity())
    import h5py

    with h5py.File(path, "r+") as h5:
        h5["weights"][0] += 1.0
    with pytest.raises(FormatError, match="checksum"):
        MergeAccumulator.load(path)
    # an unweighted accumulator's file is as before (no weights dataset)
    plain = MergeAccumulator.empty(GRID).add_voxels(np.arange(5), np.ones(5))
    back = MergeAccumulator.load(plain.save(tmp_path / "plain.h5"))
    assert not back.weighted
    with pytest.raises(ValueError, match="weighted"):
        back.merge(total)
    with pytest.raises(ValueError, match="weights"):
        total.copy().add_voxels(np.arange(5), np.ones(5))


def test_checkpoint_keeps_the_weights(tmp_path):
    from hpcdiff.pipelines.fourier_work import FourierWork

    rng = np.random.default_rng(4)
    vox, vals, var = _pixels(rng)
    acc = MergeAccumulator.empty(GRID, weighted=True).add_voxels(vox, vals, weights=1 / var)
    work = FourierWork(tmp_path / "fourier.work", "abcd")
    work.prepare(n_frames=4, force=False)
    work.save_merge(acc, [(0, 2)])
    back, done = work.load_merge(GRID)
    assert done == [(0, 2)] and back.weighted
    np.testing.assert_array_equal(back.weights, acc.weights)
    np.testing.assert_array_equal(back.sums, acc.sums)
    plain = MergeAccumulator.empty(GRID).add_voxels(vox, vals)
    work.save_merge(plain, [(0, 2)])
    assert not work.load_merge(GRID)[0].weighted


def test_half_maps_survive_merge_symmetrise_and_checkpoint(tmp_path):
    from hpcdiff.pipelines.fourier_work import FourierWork

    rng = np.random.default_rng(7)
    parts = []
    for number in range(4):  # one frame each; frames 0 and 2 in half A
        vox, vals, var = _pixels(rng, 500)
        half = MergeAccumulator.empty(GRID, weighted=True).add_voxels(vox, vals, weights=1 / var)
        acc = half.copy().with_half_a(
            half.copy() if number % 2 == 0 else MergeAccumulator.empty(GRID, weighted=True)
        )
        parts.append((half, acc))
    total = MergeAccumulator.empty(GRID, weighted=True, halves=True).merge(parts[0][1])
    for _, acc in parts[1:]:
        total.merge(acc)
    assert total.n_frames == 4 and total.half_a is not None and total.half_a.n_frames == 2
    half_a = parts[0][0] + parts[2][0]
    half_b = parts[1][0] + parts[3][0]
    np.testing.assert_array_equal(total.half_a.sums, half_a.sums)
    np.testing.assert_array_equal(total.half_b().counts, half_b.counts)
    np.testing.assert_allclose(total.half_b().sums, half_b.sums, atol=1e-9)
    np.testing.assert_allclose(total.half_b().weights, half_b.weights, atol=1e-9)
    sym = total.symmetrised("laue")
    np.testing.assert_array_equal(sym.half_a.sums, total.half_a.symmetrised("laue").sums)
    np.testing.assert_array_equal(sym.half_a.weights, total.half_a.symmetrised("laue").weights)
    with pytest.raises(ValueError, match="half-maps"):
        total.copy().merge(parts[0][0])
    with pytest.raises(ValueError, match="half-maps"):
        parts[0][0].half_b()
    work = FourierWork(tmp_path / "fourier.work", "abcd")
    work.prepare(n_frames=4, force=False)
    work.save_merge(total, [(0, 4)])
    back, _ = work.load_merge(GRID)
    assert back.half_a is not None and back.half_a.n_frames == 2
    for name in ("sums", "counts", "weights"):
        np.testing.assert_array_equal(getattr(back.half_a, name), getattr(total.half_a, name))
        np.testing.assert_array_equal(getattr(back, name), getattr(total, name))


def test_frame_half_is_a_fixed_balanced_split_unlike_parity():
    from hpcdiff.merge import frame_half

    n = np.arange(20000)
    h = frame_half(n)
    assert set(np.unique(h)) == {0, 1} and abs(h.mean() - 0.5) < 0.02
    np.testing.assert_array_equal(frame_half(n[::-1]), h[::-1])  # per number, not position
    for start in (0, 1):  # alternating frames (pump-probe, alternating classes) fill both
        assert abs(h[start::2].mean() - 0.5) < 0.03

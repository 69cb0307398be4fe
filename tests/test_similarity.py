"""Common-arc and image-space similarities against brute-force dense computations."""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff.merge import FrameVoxels, Grid, map_frame
from hpcdiff.similarity import (
    assemble,
    blocks,
    common_arc_block,
    common_arc_similarity,
    common_arc_similarity_dense,
    downsample,
    image_similarity,
    pearson_from_sums,
    sparse_frames,
)


def random_frames(n: int, n_voxels: int, *, seed: int = 0, size=(20, 120)) -> list[FrameVoxels]:
    rng = np.random.default_rng(seed)
    field = rng.normal(size=n_voxels)  # a shared signal so correlations are not all ~0
    out = []
    for _ in range(n):
        m = int(rng.integers(*size))
        vox = np.sort(rng.choice(n_voxels, size=m, replace=False))
        vals = 5 + 2 * field[vox] + rng.normal(scale=rng.uniform(0.2, 3), size=m)
        counts = rng.integers(1, 4, size=m)
        out.append(FrameVoxels(vox.astype(np.int64), vals * counts, counts.astype(np.int64)))
    return out


@pytest.mark.parametrize(("block", "column_block"), [(1, 4096), (3, 4), (5, 3), (64, 64)])
def test_common_arc_equals_dense_brute_force(block, column_block):
    frames = random_frames(17, 400)
    sim, ovl = common_arc_similarity(
        frames, n_voxels=400, min_overlap=5, block=block, column_block=column_block
    )
    ref_sim, ref_ovl = common_arc_similarity_dense(frames, n_voxels=400, min_overlap=5)
    np.testing.assert_array_equal(ovl, ref_ovl)
    np.testing.assert_array_equal(np.isnan(sim), np.isnan(ref_sim))
    np.testing.assert_allclose(sim, ref_sim, atol=1e-9, equal_nan=True)
    assert np.isfinite(sim).sum() > 17  # off-diagonal pairs were compared


def test_common_arc_symmetric_diagonal_one_nan_below_min_overlap():
    frames = random_frames(12, 300, seed=1, size=(10, 60))
    sim, ovl = common_arc_similarity(frames, n_voxels=300, min_overlap=8, block=5)
    np.testing.assert_array_equal(sim, sim.T)  # exactly symmetric, NaN in the same places
    np.testing.assert_array_equal(ovl, ovl.T)
    np.testing.assert_array_equal(np.diag(sim), 1.0)
    np.testing.assert_array_equal(np.diag(ovl), [len(f) for f in frames])
    low = ovl < 8
    assert low.any() and (~low).any()
    assert np.all(np.isnan(sim[low]))
    assert np.all(np.isfinite(sim[~low]))


def test_pearson_invariant_to_offset_and_scale_per_frame():
    frames = random_frames(6, 200, seed=2)
    shifted = [FrameVoxels(f.voxels, (3.0 * f.means - 7.0) * f.counts, f.counts) for f in frames]
    a, _ = common_arc_similarity(frames, n_voxels=200, min_overlap=3)
    b, _ = common_arc_similarity(shifted, n_voxels=200, min_overlap=3)
    np.testing.assert_allclose(a, b, atol=1e-10, equal_nan=True)


def test_constant_frame_has_no_similarity():
    vox = np.arange(30, dtype=np.int64)
    flat = FrameVoxels(vox, np.full(30, 4.0), np.ones(30, np.int64))
    ramp = FrameVoxels(vox, np.arange(30.0), np.ones(30, np.int64))
    sim, ovl = common_arc_similarity([flat, ramp], n_voxels=50, min_overlap=2)
    assert ovl[0, 1] == 30
    assert np.isnan(sim[0, 1]) and np.isnan(sim[0, 0]) and sim[1, 1] == 1.0


def test_pearson_from_sums_matches_numpy():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=40), rng.normal(size=40) + 0.5
    args = [np.array(v, float) for v in (40, x.sum(), y.sum(), x @ x, y @ y, x @ y)]
    r = pearson_from_sums(*args, min_overlap=2)
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert np.isnan(pearson_from_sums(*args, min_overlap=41))


def test_assemble_checks_coverage():
    mats = sparse_frames(random_frames(4, 50, size=(10, 40)), n_voxels=50)
    parts = [common_arc_block(mats, s, e, min_overlap=2) for s, e in blocks(4, 2)]
    with pytest.raises(ValueError, match="not covered"):
        assemble(4, parts[:1])
    with pytest.raises(ValueError, match="covered twice"):
        assemble(4, parts + parts[:1])


def test_common_arc_on_ewald_spheres_same_orientation_correlates():
    """Two frames of one orientation sampling one 3D field correlate ~1; others less."""
    from test_merge import flat_detector_q, orientation

    grid = Grid(24, 8.0)
    q = flat_detector_q(64)
    rng = np.random.default_rng(4)
    vol = rng.normal(size=grid.shape)

    def frame(seed, noise):
        a = orientation(seed)
        hkl = np.linalg.solve(a.T, q.reshape(-1, 3).T).T
        idx = np.clip(((hkl + grid.half_width) / grid.step).astype(int), 0, grid.size - 1)
        vals = vol[idx[:, 0], idx[:, 1], idx[:, 2]] + rng.normal(scale=noise, size=len(idx))
        return map_frame(vals.reshape(q.shape[:2]), q, a, grid=grid)

    frames = [frame(0, 0.01), frame(0, 0.01), frame(1, 0.01), frame(2, 0.01)]
    sim, ovl = common_arc_similarity(frames, n_voxels=grid.n_voxels, min_overlap=10)
    assert sim[0, 1] > 0.99
    assert ovl[0, 2] >= 10 and sim[0, 2] > 0.9  # the common arc samples the same field


def test_downsample_mean_pooling_nan_aware():
    img = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    img[0, 0, 0] = np.nan
    out = downsample(img, 2)
    assert out.shape == (1, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], [[(1 + 4 + 5) / 3, 4.5], [10.5, 12.5]])
    with pytest.raises(ValueError, match="smaller"):
        downsample(img, 5)


def test_image_similarity_matches_direct():
    rng = np.random.default_rng(5)
    imgs = rng.normal(size=(7, 8, 8)).astype(np.float32)
    imgs[:, 0, 0] = np.nan  # a masked pixel shared by all frames is dropped
    dist, corr = image_similarity(imgs, downsample_factor=1, block=3)
    flat = imgs.reshape(7, -1)[:, 1:].astype(np.float64)
    ref_d = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
    np.testing.assert_allclose(dist, ref_d, atol=1e-9)
    np.testing.assert_allclose(corr, np.corrcoef(flat), atol=1e-12)
    np.testing.assert_array_equal(np.diag(dist), 0.0)
    np.testing.assert_array_equal(corr, corr.T)

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


# --------------------------------------------------------------------------- noise and scores


def test_fisher_z_significance_is_standard_normal_for_noise():
    """Correlations of independent noise over n elements: atanh(r) sqrt(n - 3) ~ N(0, 1)."""
    from hpcdiff.similarity import fisher_z

    rng = np.random.default_rng(0)
    for n in (10, 40, 400):
        x, y = rng.normal(size=(2, 4000, n))
        r = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(x, y, strict=True)])
        z = fisher_z(r, np.full(r.shape, n))
        assert abs(z.mean()) < 0.08 and abs(z.std() - 1.0) < 0.06, (n, z.mean(), z.std())
    z = fisher_z(np.array([0.5, np.nan, 0.5, 1.0]), np.array([3, 50, 50, 50]))
    assert np.isnan(z[0]) and np.isnan(z[1]) and np.isfinite(z[3])
    np.testing.assert_allclose(z[2], np.arctanh(0.5) * np.sqrt(47))


def _planted(n: int = 60, n_voxels: int = 4000, seed: int = 0):
    """Frames on random voxel subsets: half see one shared map plus noise, half noise only."""
    from hpcdiff.merge import FrameVoxels

    rng = np.random.default_rng(seed)
    shared = rng.normal(size=n_voxels)
    labels = rng.permutation(np.repeat([0, 1], n // 2))
    frames = []
    for lab in labels:
        vox = np.sort(rng.choice(n_voxels, size=rng.integers(300, 700), replace=False))
        vals = rng.normal(size=vox.size) + (0.5 * shared[vox] if lab else 0.0)
        frames.append(FrameVoxels(vox, vals, np.ones(vox.size, np.int64)))
    return frames, labels, n_voxels


def test_frame_scores_from_blocks_match_full_matrix_and_separate_planted_frames():
    from hpcdiff.diffusion import roc_auc
    from hpcdiff.similarity import FrameScores, common_arc_block, fisher_z, frame_scores

    frames, labels, n_voxels = _planted()
    sim, ovl = common_arc_similarity(frames, n_voxels=n_voxels, min_overlap=10)
    full = frame_scores(sim, ovl)
    mats = sparse_frames(frames, n_voxels=n_voxels)
    blockwise = FrameScores(len(frames))
    for s, e in blocks(len(frames), 7):
        blockwise.add(common_arc_block(mats, s, e, min_overlap=10))
    np.testing.assert_allclose(blockwise.mean_z, full.mean_z, rtol=1e-12)
    np.testing.assert_allclose(blockwise.significance, full.significance, rtol=1e-12)
    # by hand for frame 0
    z = fisher_z(sim[0, 1:], ovl[0, 1:], significance=False)
    w = np.where(np.isfinite(z), ovl[0, 1:] - 3.0, 0.0)
    np.testing.assert_allclose(full.mean_z[0], np.nansum(w * z) / w.sum())
    assert roc_auc(full.mean_z, labels) > 0.95
    assert roc_auc(full.significance, labels) > 0.95


@pytest.mark.parametrize("form", ["cc", "fisher", "significance"])
def test_profile_sketch_blockwise_equals_z_times_projection(form):
    from hpcdiff.similarity import ProfileSketch, common_arc_block, fisher_z

    frames, _labels, n_voxels = _planted(30)
    sim, ovl = common_arc_similarity(frames, n_voxels=n_voxels, min_overlap=10)
    z = sim.copy() if form == "cc" else fisher_z(sim, ovl, significance=form == "significance")
    np.fill_diagonal(z, 0.0)
    z = np.where(np.isfinite(z), z, 0.0)
    mats = sparse_frames(frames, n_voxels=n_voxels)
    for size in (1, 4, 30):
        sk = ProfileSketch(len(frames), dims=16, seed=5, form=form)
        for s, e in blocks(len(frames), size):
            sk.add(common_arc_block(mats, s, e, min_overlap=10))
        np.testing.assert_allclose(sk.sketch, z @ sk.projection, rtol=1e-10, atol=1e-10)


def test_common_arc_rows_streamed_columns_equal_whole_matrix():
    from hpcdiff.similarity import common_arc_rows

    frames, _labels, n_voxels = _planted(26)
    n = len(frames)
    sim, ovl = common_arc_similarity(frames, n_voxels=n_voxels, min_overlap=10)
    for start, stop in ((0, 6), (10, n), (n - 1, n)):
        cols = [frames[s : s + 4] for s in range(start, n, 4)]
        b = common_arc_rows(
            frames[start:stop], cols, start=start, n_voxels=n_voxels, min_overlap=10
        )
        got = b.similarity.copy()
        i = np.arange(stop - start)
        got[i, i] = 1.0
        np.testing.assert_allclose(got, sim[start:stop, start:], atol=1e-10, equal_nan=True)
        np.testing.assert_array_equal(b.overlap, ovl[start:stop, start:])


def test_planted_structure_embeds_on_the_first_diffusion_coordinate():
    """The profile sketch's kNN diffusion map separates the planted frames."""
    from hpcdiff.diffusion import diffusion_map_of_points, roc_auc
    from hpcdiff.similarity import ProfileSketch, common_arc_block

    frames, labels, n_voxels = _planted(80, seed=4)
    mats = sparse_frames(frames, n_voxels=n_voxels)
    sk = ProfileSketch(len(frames), dims=64)
    for s, e in blocks(len(frames), 16):
        sk.add(common_arc_block(mats, s, e, min_overlap=10))
    dm, _eps = diffusion_map_of_points(sk.sketch, k=10, n_coords=2, n_components=8)
    auc = roc_auc(dm.coords[:, 0], labels)
    assert max(auc, 1 - auc) > 0.9

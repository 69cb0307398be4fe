"""Diffusion maps: kernels, normalisation, cluster separation, AUC, plot."""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff.diffusion import (
    coordinate_aucs,
    diffusion_map,
    kernel_from_distances,
    kernel_from_similarity,
    knn_bandwidth,
    plot_diffusion,
    roc_auc,
)


def two_clusters(n: int = 30, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    points = rng.normal(scale=0.3, size=(n, 5)) + 4.0 * labels[:, None]
    perm = rng.permutation(n)
    return points[perm], labels[perm]


def distances(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None] - points[None], axis=-1)


def test_two_clusters_separate_on_first_coordinate_from_distances():
    points, labels = two_clusters()
    kern, eps = kernel_from_distances(distances(points))
    assert eps > 0 and np.all((kern >= 0) & (kern <= 1))
    dm = diffusion_map(kern, n_coords=3)
    c1 = dm.coords[:, 0]
    assert np.all(np.isfinite(c1))
    assert (
        c1[labels == 0].max() < c1[labels == 1].min()
        or c1[labels == 1].max() < c1[labels == 0].min()
    )
    assert coordinate_aucs(dm.coords, labels)[0]["auc_max"] == 1.0
    assert dm.eigenvalues[0] == pytest.approx(1.0)
    assert np.all(np.diff(dm.eigenvalues) <= 1e-12)


def test_two_clusters_separate_from_correlation_similarity():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(2, 200))
    labels = np.repeat([0, 1], 12)
    signals = base[labels] + rng.normal(scale=0.8, size=(24, 200))
    sim = np.corrcoef(signals)
    sim[0, 5] = sim[5, 0] = np.nan  # a missing pair: kernel 0
    kern = kernel_from_similarity(sim, epsilon=0.2)
    assert kern[0, 5] == 0.0 and kern[1, 1] == 1.0
    dm = diffusion_map(kern, n_coords=2)
    assert roc_auc(dm.coords[:, 0], labels) in (0.0, 1.0)


def test_markov_normalisation_first_psi_constant():
    points, _ = two_clusters(20, seed=2)
    kern, _ = kernel_from_distances(distances(points), epsilon=50.0)
    dm = diffusion_map(kern, n_coords=2, t=0)  # t = 0: coords are psi_1, psi_2
    # right eigenvectors of P = D^-1 K_a satisfy P psi = lambda psi
    q = kern.sum(1)
    ka = kern / np.outer(q, q)
    p = ka / ka.sum(1, keepdims=True)
    for j in range(2):
        np.testing.assert_allclose(
            p @ dm.coords[:, j], dm.eigenvalues[j + 1] * dm.coords[:, j], atol=1e-10
        )


def test_isolated_frames_get_nan_coordinates():
    points, _ = two_clusters(10)
    sim = np.corrcoef(points)
    sim[3, :] = sim[:, 3] = np.nan
    dm = diffusion_map(kernel_from_similarity(sim), n_coords=2)
    assert not dm.connected[3] and dm.connected.sum() == 9
    assert np.all(np.isnan(dm.coords[3])) and np.all(np.isfinite(np.delete(dm.coords, 3, 0)))


def test_kernel_validation():
    with pytest.raises(ValueError, match="square"):
        diffusion_map(np.ones((2, 3)))
    with pytest.raises(ValueError, match="not symmetric"):
        diffusion_map(np.array([[1.0, 0.2], [0.5, 1.0]]))
    with pytest.raises(ValueError, match="negative"):
        diffusion_map(np.array([[1.0, -0.2], [-0.2, 1.0]]))


def test_knn_bandwidth_heuristic():
    d = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]], float)
    # 1st neighbour distances 1, 1, 2 -> median 1 -> eps 1; 2nd: 2, 3, 3 -> 9
    assert knn_bandwidth(d, k=1) == 1.0 and knn_bandwidth(d, k=2) == 9.0


def test_roc_auc_against_pairs():
    rng = np.random.default_rng(3)
    s, y = rng.normal(size=50), rng.integers(0, 2, 50)
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y == 1] for b in s[y == 0]]
    assert roc_auc(s, y) == pytest.approx(np.mean(pairs))
    assert np.isnan(roc_auc(s, np.zeros(50)))


def test_plot_writes_png(tmp_path):
    points, labels = two_clusters()
    dm = diffusion_map(kernel_from_distances(distances(points))[0], n_coords=2)
    path = plot_diffusion(dm.coords, labels, tmp_path / "dm.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- sparse kNN


def test_sparse_diffusion_map_equals_dense_with_every_pair():
    """Keeping every pair, the sparse kNN kernel and eigsh give the dense map."""
    import scipy.sparse as sp

    from hpcdiff.diffusion import diffusion_map_sparse, knn_kernel, knn_points

    rng = np.random.default_rng(3)
    points = rng.normal(size=(90, 4)) + np.repeat([[0.0], [1.5], [3.0]], 30, axis=0)
    idx, d2 = knn_points(points, k=89)
    kern, eps = knn_kernel(idx, d2)
    dense = np.exp(-(distances(points) ** 2) / eps)
    np.fill_diagonal(dense, 0.0)
    np.testing.assert_allclose(kern.toarray(), dense, rtol=1e-10, atol=1e-12)
    a = diffusion_map_sparse(kern, n_coords=3, dense_below=0)  # eigsh path
    b = diffusion_map(dense, n_coords=3)
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-8)
    np.testing.assert_allclose(a.coords, b.coords, rtol=1e-6, atol=1e-8)
    assert sp.issparse(kern)


def test_sparse_knn_map_separates_clusters_and_isolates_nan():
    from hpcdiff.diffusion import diffusion_map_of_points, knn_points

    points, labels = two_clusters(60)
    points = points.copy()
    points[0] = np.nan  # a frame without coordinates: no neighbours, NaN coordinates
    idx, d2 = knn_points(points, k=5)
    assert np.all(idx[0] == -1) and not np.any(idx == 0)
    dm, eps = diffusion_map_of_points(points, k=8, n_coords=2)
    assert eps > 0 and np.all(np.isnan(dm.coords[0]))
    assert roc_auc(dm.coords[1:, 0], labels[1:]) in (0.0, 1.0)


def test_knn_points_match_brute_force():
    from hpcdiff.diffusion import knn_points

    rng = np.random.default_rng(1)
    points = rng.normal(size=(50, 3))
    idx, d2 = knn_points(points, k=4, block=7)
    d = distances(points) ** 2
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(idx, np.argsort(d, axis=1)[:, :4])
    np.testing.assert_allclose(d2, np.sort(d, axis=1)[:, :4], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("block", [1, 6, 40])
@pytest.mark.parametrize("largest", [False, True])
def test_block_knn_matches_full_matrix(block, largest):
    from hpcdiff.diffusion import BlockKnn

    rng = np.random.default_rng(2)
    n, k = 40, 5
    m = rng.normal(size=(n, n))
    m = m + m.T
    m[3, 7] = m[7, 3] = np.nan
    acc = BlockKnn(n, k, largest=largest)
    for s in range(0, n, block):
        acc.add(s, m[s : min(s + block, n), s:])
    idx, vals = acc.result()
    key = np.where(np.isfinite(m), -m if largest else m, np.inf)
    np.fill_diagonal(key, np.inf)
    np.testing.assert_array_equal(idx, np.argsort(key, axis=1, kind="stable")[:, :k])
    np.testing.assert_allclose(vals, np.take_along_axis(m, idx, 1))


def test_profile_points_let_the_score_lead_where_profiles_are_noise():
    """Noise-only profiles: the PCs alone do not separate; with the score the first
    diffusion coordinate does, and weight 0 is the PCs-only map exactly."""
    from hpcdiff.diffusion import diffusion_map_of_points, profile_points

    rng = np.random.default_rng(3)
    n = 160
    labels = np.arange(n) % 2 == 0
    sketch = rng.normal(size=(n, 32))  # profiles that carry nothing but noise
    score = labels * 1.0 + rng.normal(scale=0.25, size=n)
    score[5] = np.nan  # a frame without pairs
    pts = profile_points(sketch, score=score, n_components=6, score_weight=1.0)
    assert pts.shape == (n, 7) and np.all(np.isnan(pts[5]))
    keep = np.arange(n) != 5
    np.testing.assert_allclose(np.nanmean(pts[:, 0]), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.nanstd(pts[:, 0]), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.nanstd(pts[:, 1]), 1.0, rtol=1e-12)
    dm, _ = diffusion_map_of_points(pts, k=15, n_coords=2)
    assert np.all(np.isnan(dm.coords[5]))
    auc = roc_auc(dm.coords[keep, 0], labels[keep])
    assert max(auc, 1 - auc) > 0.95
    base, _ = diffusion_map_of_points(sketch, k=15, n_coords=2, n_components=6)
    best = max(max(a, 1 - a) for a in (roc_auc(c, labels) for c in base.coords.T))
    assert best < 0.75
    # weight 0: principal components only, the map of diffusion_map_of_points' own PCA
    p0 = profile_points(sketch, score=score, n_components=6, score_weight=0.0)
    assert p0.shape == (n, 6)
    m0, _ = diffusion_map_of_points(p0, k=15, n_coords=2)
    np.testing.assert_allclose(m0.eigenvalues, base.eigenvalues, rtol=1e-8)
    np.testing.assert_allclose(np.abs(m0.coords), np.abs(base.coords), rtol=1e-6, atol=1e-8)


def test_profile_points_reject_bad_input():
    from hpcdiff.diffusion import profile_points

    with pytest.raises(ValueError, match="score must have shape"):
        profile_points(np.zeros((5, 3)), score=np.zeros(4))
    with pytest.raises(ValueError, match="score_weight"):
        profile_points(np.zeros((5, 3)), score=np.zeros(5), score_weight=-1.0)

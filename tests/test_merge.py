"""Reciprocal-space merge: hkl of pixels, binning, mergeable accumulators, symmetrisation."""

from __future__ import annotations

import functools
import operator

import numpy as np
import pytest

from hpcdiff.merge import (
    FrameVoxels,
    Grid,
    MergeAccumulator,
    bin_frame,
    bragg_keep,
    crystal_cartesian,
    fractional_hkl,
    map_correlation,
    map_frame,
)


def flat_detector_q(
    n: int = 48, *, pixel_m: float = 4e-4, distance_m: float = 0.1, wavelength_nm: float = 0.13
) -> np.ndarray:
    """``(n, n, 3)`` q (nm^-1, no 2 pi) of a square flat detector centred on the beam."""
    c = (np.arange(n) - n / 2 + 0.5) * pixel_m
    x, y = np.meshgrid(c, c, indexing="xy")
    r = np.stack([x, y, np.full_like(x, distance_m)], axis=-1)
    k_out = r / np.linalg.norm(r, axis=-1, keepdims=True)
    return (k_out - np.array([0.0, 0.0, 1.0])) / wavelength_nm


def rotation(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def orientation(seed: int, cell_nm=(7.9, 7.9, 3.8)) -> np.ndarray:
    """Rows astar, bstar, cstar (nm^-1, lab) of an orthorhombic cell rotated at random."""
    return np.diag(1.0 / np.asarray(cell_nm)) @ rotation(seed).T


def test_fractional_hkl_of_known_orientation():
    a = np.diag([1 / 7.9, 1 / 7.9, 1 / 3.8])
    q = np.array([[1 / 7.9, 0, 0], [0, 2 / 7.9, -1 / 3.8], [0.5 / 7.9, 0, 3 / 3.8]])
    np.testing.assert_allclose(
        fractional_hkl(q, a), [[1, 0, 0], [0, 2, -1], [0.5, 0, 3]], atol=1e-12
    )
    rot = orientation(3)
    hkl = np.random.default_rng(0).uniform(-5, 5, size=(100, 3))
    q = hkl @ rot  # q = h a* + k b* + l c*
    np.testing.assert_allclose(fractional_hkl(q, rot), hkl, atol=1e-10)


def test_crystal_cartesian_is_rotation_invariant():
    hkl = np.random.default_rng(1).uniform(-3, 3, size=(50, 3))
    a1, a2 = orientation(1), orientation(2)
    c1, c2 = crystal_cartesian(hkl, a1), crystal_cartesian(hkl, a2)
    np.testing.assert_allclose(c1, c2, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(c1, axis=1), np.linalg.norm(hkl @ a1, axis=1))


def test_grid_voxel_index_edges_and_mirror():
    grid = Grid(4, 2.0)
    coords = np.array([[-2.0, -2.0, -2.0], [1.999, 1.999, 1.999], [2.0, 0, 0], [np.nan, 0, 0]])
    np.testing.assert_array_equal(grid.voxel_index(coords), [0, 63, -1, -1])
    np.testing.assert_allclose(grid.axis(), [-1.5, -0.5, 0.5, 1.5])
    np.testing.assert_allclose(grid.axis()[::-1], -grid.axis())


def test_bin_frame_sums_and_counts():
    fv = bin_frame(np.array([1.0, 2.0, 3.0, np.nan, 5.0]), np.array([7, 2, 7, 2, -1]))
    np.testing.assert_array_equal(fv.voxels, [2, 7])
    np.testing.assert_allclose(fv.sums, [2.0, 4.0])
    np.testing.assert_array_equal(fv.counts, [1, 2])
    np.testing.assert_allclose(fv.means, [2.0, 2.0])


def _frames(n: int, grid: Grid, **kw) -> list[FrameVoxels]:
    q = flat_detector_q()
    rng = np.random.default_rng(5)
    return [
        map_frame(rng.normal(10, 1, q.shape[:2]), q, orientation(i), grid=grid, **kw)
        for i in range(n)
    ]


def test_one_frame_twice_doubles_sums_and_counts():
    grid = Grid(16, 6.0)
    (frame,) = _frames(1, grid)
    once = MergeAccumulator.empty(grid).add_frame(frame)
    twice = MergeAccumulator.empty(grid).add_frame(frame).add_frame(frame)
    np.testing.assert_array_equal(twice.sums, 2 * once.sums)
    np.testing.assert_array_equal(twice.counts, 2 * once.counts)
    np.testing.assert_array_equal(twice.intensity(), once.intensity())
    assert once.counts.sum() > 0 and twice.n_frames == 2


def test_chunking_invariance():
    grid = Grid(16, 6.0)
    frames = _frames(9, grid)
    whole = MergeAccumulator.empty(grid)
    for f in frames:
        whole.add_frame(f)
    for chunk in (1, 2, 4, 9):
        parts = []
        for s in range(0, len(frames), chunk):
            acc = MergeAccumulator.empty(grid)
            for f in frames[s : s + chunk]:
                acc.add_frame(f)
            parts.append(acc)
        merged = functools.reduce(operator.add, parts)
        np.testing.assert_array_equal(merged.counts, whole.counts)
        np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-12)
        assert merged.n_frames == 9


def test_merge_rejects_other_grid():
    with pytest.raises(ValueError, match="different grids"):
        MergeAccumulator.empty(Grid(4, 1.0)).merge(MergeAccumulator.empty(Grid(4, 2.0)))


def test_friedel_and_laue_symmetrisation():
    grid = Grid(9, 6.0)
    acc = MergeAccumulator.empty(grid)
    for f in _frames(3, grid):
        acc.add_frame(f)
    fr = acc.symmetrised("friedel").intensity()
    np.testing.assert_array_equal(fr, fr[::-1, ::-1, ::-1])
    assert acc.symmetrised("friedel").counts.sum() == 2 * acc.counts.sum()
    la = acc.symmetrised("laue")
    vol = la.intensity()
    for axes in ((0,), (1,), (2,), (0, 1, 2)):
        np.testing.assert_array_equal(vol, np.flip(vol, axis=axes))
    assert la.counts.sum() == 8 * acc.counts.sum()


def test_correction_and_valid_mask():
    grid = Grid(16, 6.0)
    q = flat_detector_q()
    values = np.full(q.shape[:2], 6.0)
    corr = np.full(q.shape[:2], 2.0)
    valid = np.ones(q.shape[:2], bool)
    valid[:10] = False
    fv = map_frame(values, q, orientation(0), grid=grid, correction=corr, valid=valid)
    np.testing.assert_allclose(fv.means, 3.0)
    full = map_frame(values, q, orientation(0), grid=grid)
    assert fv.counts.sum() < full.counts.sum()


def test_bragg_mask_removes_pixels_near_integer_hkl():
    hkl = np.array([[1.0, 2.0, 3.02], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(bragg_keep(hkl, 0.05), [False, True, False])
    grid = Grid(16, 6.0)
    (masked,) = _frames(1, grid, bragg_radius_hkl=0.3)
    (plain,) = _frames(1, grid)
    assert 0 < masked.counts.sum() < plain.counts.sum()


def test_map_correlation_nan_aware():
    a = np.array([1.0, 2.0, 3.0, np.nan])
    assert map_correlation(a, 2 * a + 1) == (pytest.approx(1.0), 3)
    assert np.isnan(map_correlation(a, np.full(4, np.nan))[0])


def test_bad_orientation_and_shapes():
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        fractional_hkl(np.zeros((2, 3)), np.eye(2))
    with pytest.raises(ValueError, match="singular"):
        fractional_hkl(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="does not match"):
        map_frame(np.zeros((4, 4)), np.zeros((4, 5, 3)), np.eye(3), grid=Grid(4, 1.0))


def test_real_stream_orientations_map_through_cspad_geometry(real_fixtures):
    """The 32 indexed crystals of a real CrystFEL stream map through the CSPAD geometry."""
    stream_mod = pytest.importorskip("hpcdiff.io.stream")
    geometry = pytest.importorskip("hpcdiff.geometry")
    geom_mod = pytest.importorskip("hpcdiff.io.geom")
    stream = stream_mod.read_stream(real_fixtures / "crystfel_tests_test.stream")
    geom = geom_mod.read_geom(real_fixtures / "crystfel_cspad-cxiformat.geom")
    model = geometry.DetectorModel.build(geom, clen_m=0.1, photon_energy_ev=9500.0)
    grid = Grid(32, 40.0)
    acc = MergeAccumulator.empty(grid)
    n = 0
    sub = (slice(None, None, 3), slice(None, None, 3))  # every 9th pixel keeps the test fast
    valid = model.valid[sub]
    for chunk, crystal in stream.crystals:
        energy = chunk.photon_energy_ev or 9500.0
        q = model.q_vectors[sub] * (energy / model.photon_energy_ev)
        values = np.ones(valid.shape, np.float32)  # synthetic flat frame
        fv = map_frame(values, q, crystal.reciprocal_matrix, grid=grid, valid=valid)
        assert len(fv) > 0 and np.all(fv.means == 1.0)
        acc.add_frame(fv)
        n += 1
    assert n == 32
    assert np.nanmax(acc.intensity()) == 1.0

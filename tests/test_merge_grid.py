"""Per-axis merge grids, the float32 pixel mapping, bincount/add.at merges, accumulator files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hpcdiff.errors import FormatError, OutputExistsError
from hpcdiff.merge import (
    Grid,
    MergeAccumulator,
    PixelDirections,
    bin_frame,
    fit_grid,
    fractional_hkl,
    map_frame,
    reciprocal_metric,
)

WAVELENGTH_NM = 0.13


def flat_detector_directions(n: int = 64, *, pixel_m: float = 1e-3, distance_m: float = 0.05):
    """``(n, n, 3)`` ``k_out - k_in`` (|k| = 1) of a square flat detector centred on the beam."""
    c = (np.arange(n) - n / 2 + 0.5) * pixel_m
    x, y = np.meshgrid(c, c, indexing="xy")
    r = np.stack([x, y, np.full_like(x, distance_m)], axis=-1)
    return r / np.linalg.norm(r, axis=-1, keepdims=True) - np.array([0.0, 0.0, 1.0])


def rotation(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def orientation(seed: int, cell_nm=(7.9, 7.9, 3.8)) -> np.ndarray:
    return np.diag(1.0 / np.asarray(cell_nm)) @ rotation(seed).T


def centres(grid: Grid, flat: np.ndarray) -> np.ndarray:
    """``(m, 3)`` voxel-centre coordinates of flat indices."""
    ijk = np.stack(np.unravel_index(flat, grid.shape), axis=1)
    return np.stack([grid.axis(d)[ijk[:, d]] for d in range(3)], axis=1)


def test_grid_forms_and_properties():
    assert Grid((4, 4, 4), (2, 2, 2)) == Grid(4, 2.0)
    assert Grid(4, 2.0).is_cube and Grid(4, 2.0).step == 1.0
    g = Grid((4, 8, 2), (2.0, 2.0, 4.0))
    assert not g.is_cube and g.shape == (4, 8, 2) and g.n_voxels == 64
    assert g.steps == (1.0, 0.5, 4.0)
    with pytest.raises(ValueError, match="different steps"):
        _ = g.step
    with pytest.raises(ValueError, match="pass dim"):
        g.axis()
    for d in range(3):
        np.testing.assert_allclose(g.axis(d)[::-1], -g.axis(d))
    assert Grid.from_dict(g.to_dict()) == g
    np.testing.assert_array_equal(
        g.voxel_index(np.array([[-2.0, -2.0, -4.0], [1.99, 1.99, 3.99], [0, 2.0, 0]])), [0, 63, -1]
    )
    with pytest.raises(ValueError, match="one number or three"):
        Grid((4, 4), 1.0)


def test_per_axis_grid_lands_pixels_at_the_same_hkl_as_the_cube():
    """Same steps, axes cut to fit: every pixel inside both grids is in a voxel with the
    same centre; and the centre is within half a step of the pixel's float64 hkl."""
    directions = flat_detector_directions(pixel_m=3e-4)
    pixels = PixelDirections.build(directions)
    cube = Grid(40, 10.0)
    narrow = Grid((40, 20, 60), (10.0, 5.0, 15.0))  # steps 0.5 on every axis, aligned
    a = orientation(1)
    v_cube, v_narrow = pixels.voxels(a, wavelength_nm=WAVELENGTH_NM, grids=(cube, narrow))
    both = (v_cube >= 0) & (v_narrow >= 0)
    assert both.sum() > 500
    np.testing.assert_array_equal(centres(cube, v_cube[both]), centres(narrow, v_narrow[both]))
    # the narrow grid holds exactly the pixels of the cube that are within its extent
    hkl = fractional_hkl(directions.reshape(-1, 3) / WAVELENGTH_NM, a)
    in_narrow = np.all(np.abs(hkl) < np.array([10.0, 5.0, 15.0]) - 1e-4, axis=1)
    assert np.all(v_narrow[in_narrow & (v_cube >= 0)] >= 0)
    # a grid with other steps: still the voxel that contains the pixel's hkl
    other = Grid((30, 17, 44), (9.0, 4.0, 12.0))
    (v_other,) = pixels.voxels(a, wavelength_nm=WAVELENGTH_NM, grids=(other,))
    inside = v_other >= 0
    err = np.abs(centres(other, v_other[inside]) - hkl[inside])
    assert np.all(err <= np.asarray(other.steps) / 2 + 1e-4)
    exact = other.voxel_index(hkl)
    assert np.mean(exact == v_other) > 0.999  # float32 vs float64 at voxel edges only


def test_fit_grid_reaches_every_pixel_and_an_elongated_cell_fills_more_of_it():
    directions = flat_detector_directions()
    pixels = PixelDirections.build(directions)
    q_max = float(np.linalg.norm(directions, axis=-1).max() / WAVELENGTH_NM)
    cell = (3.8, 3.8, 25.0)  # elongated along c
    orients = np.stack([orientation(i, cell) for i in range(12)])
    fitted = fit_grid(orients, q_max_per_nm=q_max, size=24)
    np.testing.assert_allclose(fitted.half_widths, q_max * np.array(cell), rtol=1e-9)
    cube = Grid(24, max(fitted.half_widths))  # the cube that holds the same reach
    acc_fit, acc_cube = MergeAccumulator.empty(fitted), MergeAccumulator.empty(cube)
    values = np.ones(len(pixels), np.float32)
    for a in orients:
        v_fit, v_cube = pixels.voxels(a, wavelength_nm=WAVELENGTH_NM, grids=(fitted, cube))
        assert np.all(v_fit >= 0)  # nothing out of reach
        acc_fit.add_voxels(v_fit, values)
        acc_cube.add_voxels(v_cube, values)
    fill_fit = np.count_nonzero(acc_fit.counts) / fitted.n_voxels
    fill_cube = np.count_nonzero(acc_cube.counts) / cube.n_voxels
    assert fill_fit > 2 * fill_cube, (fill_fit, fill_cube)
    # on the fitted grid the voxel edges are equal in |q| along every axis
    g = reciprocal_metric(orients)
    q_steps = np.asarray(fitted.steps) * np.sqrt(np.diag(g))
    np.testing.assert_allclose(q_steps, q_steps[0], rtol=1e-6)


def test_fit_grid_ignores_an_odd_cell_and_q_grid():
    orients = np.stack([orientation(i) for i in range(9)] + [orientation(9, (20.0, 7.9, 3.8))])
    g = fit_grid(orients, q_max_per_nm=2.0, size=10)
    np.testing.assert_allclose(g.half_widths, [15.8, 15.8, 7.6], rtol=1e-9)
    assert fit_grid(orients, q_max_per_nm=2.0, size=10, extent="q") == Grid(10, 2.0, "q")


@pytest.mark.parametrize("size", [6, 40])  # bincount (pixels >= voxels) and add.at paths
def test_add_voxels_equals_add_at_and_bin_frame(size):
    pixels = PixelDirections.build(flat_detector_directions())
    grid = Grid(size, 8.0)
    rng = np.random.default_rng(2)
    acc = MergeAccumulator.empty(grid)
    ref_sums, ref_counts = np.zeros(grid.n_voxels), np.zeros(grid.n_voxels, np.int64)
    old = MergeAccumulator.empty(grid)
    for i in range(3):
        values = rng.normal(size=len(pixels)).astype(np.float32)
        values[::17] = np.nan  # dropped
        (vox,) = pixels.voxels(orientation(i), wavelength_nm=WAVELENGTH_NM, grids=(grid,))
        assert (vox < 0).any() and (vox >= 0).any()
        acc.add_voxels(vox, values)
        ok = (vox >= 0) & np.isfinite(values)
        np.add.at(ref_sums, vox[ok], values[ok].astype(np.float64))
        np.add.at(ref_counts, vox[ok], 1)
        old.add_frame(bin_frame(values, vox))
    np.testing.assert_array_equal(acc.counts, ref_counts)
    np.testing.assert_allclose(acc.sums, ref_sums, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(acc.counts, old.counts)
    np.testing.assert_allclose(acc.sums, old.sums, rtol=1e-12, atol=1e-12)
    assert acc.n_frames == 3
    with pytest.raises(ValueError, match="outside the grid"):
        acc.add_voxels(np.array([grid.n_voxels]), np.ones(1))


def test_bragg_mask_and_values_on_the_fast_path():
    directions = flat_detector_directions()
    pixels = PixelDirections.build(directions)
    grid = Grid(16, 8.0)
    a = orientation(4)
    plain, masked = (
        pixels.voxels(a, wavelength_nm=WAVELENGTH_NM, grids=(grid,), bragg_radius_hkl=r)[0]
        for r in (0.0, 0.2)
    )
    hkl = fractional_hkl(directions.reshape(-1, 3) / WAVELENGTH_NM, a)
    near = np.sum((hkl - np.rint(hkl)) ** 2, axis=1) <= 0.2**2
    assert near.any()
    np.testing.assert_array_equal(masked[near], -1)
    np.testing.assert_array_equal(masked[~near], plain[~near])
    # values: per-frame mask and correction; same as map_frame
    frame = np.full(directions.shape[:2], 6.0, np.float32)
    valid = np.ones(frame.shape, bool)
    valid[:5] = False
    corr = np.full(frame.shape, 2.0)
    vals = pixels.values(frame, valid=valid, correction=corr)
    assert vals.dtype == np.float32 and np.isnan(vals).sum() == 5 * frame.shape[1]
    acc = MergeAccumulator.empty(grid).add_voxels(plain, vals)
    ref = map_frame(frame, directions / WAVELENGTH_NM, a, grid=grid, valid=valid, correction=corr)
    np.testing.assert_array_equal(acc.counts[ref.voxels], ref.counts)
    assert acc.counts.sum() == ref.counts.sum()
    np.testing.assert_allclose(ref.means, 3.0)


def _filled(grid: Grid) -> MergeAccumulator:
    pixels = PixelDirections.build(flat_detector_directions(24))
    acc = MergeAccumulator.empty(grid)
    for i in range(2):
        (vox,) = pixels.voxels(orientation(i), wavelength_nm=WAVELENGTH_NM, grids=(grid,))
        acc.add_voxels(vox, np.arange(len(pixels), dtype=np.float32))
    return acc


def test_accumulator_save_load_round_trip_and_damage(tmp_path):
    grid = Grid((10, 12, 6), (6.0, 6.0, 3.0))
    acc = _filled(grid)
    path = acc.save(tmp_path / "acc.h5")
    back = MergeAccumulator.load(path, grid=grid)
    assert back.grid == grid and back.n_frames == 2
    np.testing.assert_array_equal(back.sums, acc.sums)
    np.testing.assert_array_equal(back.counts, acc.counts)
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(OutputExistsError):
        acc.save(path)
    acc.add_voxels(np.array([0]), np.array([1.0]))
    acc.save(path, force=True)
    assert MergeAccumulator.load(path).n_frames == 3
    with pytest.raises(FormatError, match="expected"):
        MergeAccumulator.load(path, grid=Grid(10, 6.0))
    with h5py.File(path, "r+") as h5:  # a damaged file
        h5["counts"][0] += 1
    with pytest.raises(FormatError, match="checksum"):
        MergeAccumulator.load(path)
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["sums"] = np.zeros(3)
    with pytest.raises(FormatError, match="not a merge accumulator"):
        MergeAccumulator.load(tmp_path / "other.h5")


def test_write_merged_per_axis_grid(tmp_path):
    from hpcdiff.pipelines.fourier import write_merged

    grid = Grid((10, 12, 6), (6.0, 6.0, 3.0))
    acc = _filled(grid)
    path = write_merged(tmp_path / "merged.h5", acc, stamp={"config_hash": "x"})
    with h5py.File(path) as h5:
        assert h5["intensity"].shape == (10, 12, 6)
        for name, d in zip("hkl", range(3), strict=True):
            np.testing.assert_allclose(h5[name][()], grid.axis(d))
        np.testing.assert_array_equal(h5.attrs["grid_shape"], [10, 12, 6])
        np.testing.assert_allclose(h5.attrs["grid_steps"], grid.steps)
        back = Grid(tuple(h5.attrs["grid_shape"]), tuple(h5.attrs["grid_half_widths"]))
        assert back == grid
        np.testing.assert_array_equal(h5["counts"][()].ravel(), acc.counts)

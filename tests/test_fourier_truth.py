"""Truth comparison of a merged map: axes checks, resampling, resolution shells, isotropic part."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hpcdiff.errors import ConfigError, FormatError
from hpcdiff.fourier_truth import (
    check_truth_grid,
    compare_maps,
    load_truth,
    resample_truth,
    shell_edges,
    truth_summary,
    voxel_q_abs,
)
from hpcdiff.merge import Grid, MergeAccumulator

CELL_NM = (7.9, 7.9, 3.8)
METRIC = np.diag(1.0 / np.asarray(CELL_NM) ** 2)


def write_truth(path, volume, axes, *, group="diffuse"):
    with h5py.File(path, "w") as h5:
        g = h5.create_group(group)
        g["intensity"] = volume
        for name, a in zip("hkl", axes, strict=True):
            g[name] = a
    return path


def anisotropic(h, k, l):  # noqa: E741
    return np.cos(2 * np.pi * h / 6) * np.cos(2 * np.pi * k / 6) + 0.7 * np.sin(2 * np.pi * l / 5)


def grid_map(grid: Grid, fn) -> np.ndarray:
    h, k, l = np.meshgrid(*grid.axes(), indexing="ij")  # noqa: E741
    return fn(h, k, l)


def accumulator_of(grid: Grid, values: np.ndarray, *, measured: np.ndarray) -> MergeAccumulator:
    acc = MergeAccumulator.empty(grid)
    acc.sums[:] = np.where(measured, values, 0.0).ravel()
    acc.counts[:] = measured.ravel().astype(np.int64)
    acc.n_frames = 1
    return acc


def test_resample_truth_same_grid_is_identity_and_block_means(tmp_path):
    grid = Grid((8, 6, 4), (4.0, 3.0, 2.0))
    vol = grid_map(grid, anisotropic)
    truth = load_truth(write_truth(tmp_path / "t.h5", vol, grid.axes()))
    np.testing.assert_allclose(resample_truth(truth, grid), vol, rtol=1e-12)
    # a grid of voxels twice as large: the mean of the 8 truth voxels in each
    coarse = Grid((4, 3, 2), (4.0, 3.0, 2.0))
    expect = vol.reshape(4, 2, 3, 2, 2, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(resample_truth(truth, coarse), expect, rtol=1e-12)
    # a finer grid: nearest truth voxel; beyond the truth's extent NaN
    wide = Grid((16, 12, 8), (8.0, 3.0, 2.0))
    out = resample_truth(truth, wide)
    assert np.isnan(out[:4]).all() and np.isnan(out[-4:]).all()
    assert np.isfinite(out[4:12]).all()


def test_truth_axes_checked_against_the_grid(tmp_path):
    grid = Grid(8, 4.0)
    axis = grid.axis()
    path = write_truth(tmp_path / "t.h5", np.zeros((8, 8, 8)), (axis, axis, axis + 100.0))
    truth = load_truth(path)
    with pytest.raises(FormatError, match=r"t\.h5.*diffuse/l.*axis 'l' spans") as info:
        check_truth_grid(truth, grid)
    assert "do not overlap" in str(info.value)
    with pytest.raises(ConfigError, match="extent"):
        check_truth_grid(
            load_truth(write_truth(tmp_path / "u.h5", np.zeros((8,) * 3), (axis,) * 3)),
            Grid(8, 4.0, "q"),
        )
    bent = axis.copy()
    bent[3] += 0.2
    with pytest.raises(FormatError, match=r"diffuse/k.*not uniformly spaced"):
        load_truth(write_truth(tmp_path / "v.h5", np.zeros((8,) * 3), (axis, bent, axis)))
    with pytest.raises(FormatError, match=r"diffuse/h.*not strictly increasing"):
        load_truth(write_truth(tmp_path / "w.h5", np.zeros((8,) * 3), (axis[::-1], axis, axis)))
    with pytest.raises(FormatError, match=r"axis 'h' has shape"):
        load_truth(write_truth(tmp_path / "x.h5", np.zeros((8,) * 3), (axis[:5], axis, axis)))


def test_shells_partition_the_voxels_and_perfect_map_correlates_one():
    grid = Grid((20, 20, 10), (8.0, 8.0, 4.0))
    truth = grid_map(grid, anisotropic)
    rng = np.random.default_rng(0)
    measured = rng.random(grid.shape) < 0.6
    merged = np.where(measured, 3.0 * truth + 1.0, np.nan)
    q = voxel_q_abs(grid, METRIC)
    out = compare_maps(merged, truth, q, n_shells=6, isotropic_shell_width_per_nm=0.05)
    assert out["voxels"] == measured.sum()
    shells = out["shells"]
    assert len(shells) == 6 and sum(s["voxels"] for s in shells) == out["voxels"]
    for lo, hi in zip(shells, shells[1:], strict=False):
        assert lo["q_max_nm_inv"] == hi["q_min_nm_inv"]
    assert shells[0]["q_min_nm_inv"] == 0.0
    assert shells[-1]["q_max_nm_inv"] == pytest.approx(q[measured].max())
    # equal volume: edges go as the cube root
    np.testing.assert_allclose(shell_edges(1.0, 8) ** 3, np.arange(9) / 8)
    assert out["cc"] == pytest.approx(1.0)
    assert all(s["cc"] == pytest.approx(1.0) for s in shells if s["voxels"] > 2)
    assert out["isotropic_removed"]["cc"] == pytest.approx(1.0)
    # noise lowers every number, and the merge of an unrelated map is near 0
    noisy = merged + rng.normal(scale=2.0, size=merged.shape)
    out2 = compare_maps(noisy, truth, q, n_shells=6, isotropic_shell_width_per_nm=0.05)
    assert 0.2 < out2["cc"] < 0.99


def test_isotropic_truth_has_no_isotropic_removed_cc():
    grid = Grid((16, 16, 8), (6.0, 6.0, 3.0))
    q = voxel_q_abs(grid, METRIC)
    width = 0.05
    iso = np.exp(-np.floor(q / width) * width)  # constant in each thin shell
    merged = iso + 0.1 * grid_map(grid, anisotropic)
    out = compare_maps(merged, iso, q, n_shells=4, isotropic_shell_width_per_nm=width)
    assert out["cc"] is not None and out["cc"] > 0.5  # the radial trend correlates
    removed = out["isotropic_removed"]
    assert removed["cc"] is None and "isotropic" in removed["note"]
    assert all(s["cc_isotropic_removed"] is None for s in out["shells"])
    # nothing compared: every correlation undefined, nothing raised
    empty = compare_maps(
        np.full(grid.shape, np.nan), iso, q, n_shells=3, isotropic_shell_width_per_nm=width
    )
    assert empty["cc"] is None and empty["voxels"] == 0
    assert [s["voxels"] for s in empty["shells"]] == [0, 0, 0]


def test_isotropic_removed_cc_sees_the_anisotropic_part_only():
    """A merge with the right 3D signal on a wrong radial profile: the whole-map CC is
    low, the isotropic-removed CC is high."""
    grid = Grid((24, 24, 12), (8.0, 8.0, 4.0))
    q = voxel_q_abs(grid, METRIC)
    aniso = grid_map(grid, anisotropic)
    truth = 20.0 * np.exp(-q) + aniso
    merged = -40.0 * np.exp(-q) + aniso  # wrong sign and scale of the isotropic part
    out = compare_maps(merged, truth, q, n_shells=5, isotropic_shell_width_per_nm=0.02)
    assert out["cc"] < 0.3
    assert out["isotropic_removed"]["cc"] > 0.9


def test_truth_summary_end_to_end(tmp_path):
    grid = Grid((20, 20, 10), (8.0, 8.0, 4.0))
    fine = Grid((40, 40, 20), (8.0, 8.0, 4.0))
    path = write_truth(tmp_path / "truth.h5", grid_map(fine, anisotropic), fine.axes())
    measured = np.ones(grid.shape, bool)
    acc = accumulator_of(grid, grid_map(grid, anisotropic), measured=measured)
    summary = truth_summary(acc, load_truth(path), metric=METRIC, n_shells=4)
    assert summary["cc"] > 0.95 and summary["voxels"] == grid.n_voxels
    assert summary["file"] == str(path) and summary["dataset"] == "diffuse/intensity"
    assert len(summary["shells"]) == 4
    assert summary["isotropic_removed"]["shell_width_per_nm"] == pytest.approx(
        max(s / c for s, c in zip(grid.steps, CELL_NM, strict=True))
    )

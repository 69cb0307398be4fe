"""The Bragg mask by |q| distance to the nearest reciprocal-lattice point (``bragg_radius_per_nm``)."""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff.config import ConfigError, FourierConfig, parse_job
from hpcdiff.merge import Grid, PixelDirections, fractional_hkl


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _orientation(seed: int, cell_nm=(12.0, 8.0, 4.0)) -> np.ndarray:
    """Rows a*, b*, c* (nm^-1, lab frame) of an orthorhombic cell, rotated."""
    return np.diag(1.0 / np.asarray(cell_nm)) @ _rotation(seed).T


def test_q_radius_masks_by_distance_in_q_not_in_hkl():
    a = _orientation(3)
    node = np.array([2.0, -1.0, 1.0]) @ a  # q of reflection (2, -1, 1), nm^-1
    # offsets from the node along a* (12 nm axis) and c* (4 nm axis), in nm^-1
    ua, uc = a[0] / np.linalg.norm(a[0]), a[2] / np.linalg.norm(a[2])
    offsets = [0.02 * ua, 0.02 * uc, 0.045 * ua, 0.045 * uc, 0.0 * ua]
    q = np.stack([node + o for o in offsets])
    pixels = PixelDirections.build(q)  # q itself: wavelength 1
    grid = Grid(40, 5.0)
    (plain,) = pixels.voxels(a, wavelength_nm=1.0, grids=(grid,))
    (by_hkl,) = pixels.voxels(a, wavelength_nm=1.0, grids=(grid,), bragg_radius_hkl=0.1)
    (by_q,) = pixels.voxels(a, wavelength_nm=1.0, grids=(grid,), bragg_radius_per_nm=0.03)
    (both,) = pixels.voxels(
        a, wavelength_nm=1.0, grids=(grid,), bragg_radius_hkl=0.1, bragg_radius_per_nm=0.03
    )
    assert (plain >= 0).all()
    hkl = fractional_hkl(q, a)
    # 0.02 nm^-1 along a* is 0.24 in h: outside 0.1 hkl, inside 0.03 nm^-1; along c* 0.08 in l
    np.testing.assert_allclose(np.abs(hkl - np.rint(hkl)).max(axis=1)[:2], [0.24, 0.08], atol=1e-4)
    np.testing.assert_array_equal(by_hkl < 0, [False, True, False, False, True])
    np.testing.assert_array_equal(by_q < 0, [True, True, False, False, True])
    np.testing.assert_array_equal(both < 0, (by_hkl < 0) | (by_q < 0))
    kept = by_q >= 0
    np.testing.assert_array_equal(by_q[kept], plain[kept])


def test_q_radius_mask_is_the_same_for_a_rotated_crystal_and_detector():
    rng = np.random.default_rng(0)
    q = rng.uniform(-1.0, 1.0, size=(4000, 3))
    a = _orientation(1)
    r = _rotation(7)
    grid = Grid(30, 30.0)
    masked = [
        PixelDirections.build(qq).voxels(aa, wavelength_nm=1.0, grids=(grid,),
                                          bragg_radius_per_nm=0.04)[0] < 0
        for qq, aa in ((q, a), (q @ r.T, a @ r.T))
    ]  # fmt: skip
    # |q - q_hkl| from first principles
    hkl = fractional_hkl(q, a)
    dq = np.linalg.norm((hkl - np.rint(hkl)) @ a, axis=1)
    clear = np.abs(dq - 0.04) > 1e-4  # away from float32 rounding at the edge
    assert 0 < masked[0].sum() < len(q)
    np.testing.assert_array_equal(masked[0][clear], (dq <= 0.04)[clear])
    np.testing.assert_array_equal(masked[0][clear], masked[1][clear])


def test_fourier_config_q_radius_is_validated():
    f = FourierConfig()
    # the radius is measured from the frames by default (tests/test_bragg_radius.py)
    assert f.mask_bragg_radius_per_nm == "auto" and f.mask_bragg_excitation_per_nm is not None
    assert 0 < f.mask_bragg_excitation_per_nm
    assert FourierConfig(mask_bragg_radius_per_nm=0.03).mask_bragg_radius_per_nm == 0.03
    job = parse_job({"fourier": {"mask_bragg_radius_per_nm": 0.025}})
    assert job.fourier.mask_bragg_radius_per_nm == 0.025
    with pytest.raises(ConfigError, match="mask_bragg_radius_per_nm"):
        parse_job({"fourier": {"mask_bragg_radius_per_nm": -0.01}})
    with pytest.raises(ConfigError, match="mask_bragg_excitation_per_nm"):
        parse_job({"fourier": {"mask_bragg_excitation_per_nm": -0.01}})


def test_excitation_cut_masks_only_around_points_on_the_ewald_sphere():
    """Pixels near a lattice point on the Ewald sphere are masked, pixels as near a point
    off the sphere are kept; the cut agrees with |e| = ||q_hkl + k_in| - 1/lambda|."""
    wavelength = 0.13  # nm
    k = 1.0 / wavelength
    rng = np.random.default_rng(5)
    # unit directions k_out - k_in (|k| = 1) of a random patch of the sphere
    two_theta = rng.uniform(0.05, 0.4, 20000)
    phi = rng.uniform(0, 2 * np.pi, two_theta.size)
    out = np.stack(
        [np.sin(two_theta) * np.cos(phi), np.sin(two_theta) * np.sin(phi), np.cos(two_theta)], 1
    )
    d = out - np.array([0.0, 0.0, 1.0])
    a = _orientation(11)
    grid = Grid(20, 40.0)
    pixels = PixelDirections.build(d)

    def masked(**kw):
        return pixels.voxels(a, wavelength_nm=wavelength, grids=(grid,), **kw)[0] < 0

    everywhere = masked(bragg_radius_per_nm=0.05)
    on_sphere = masked(bragg_radius_per_nm=0.05, bragg_excitation_per_nm=0.01)
    assert not masked().any()
    q = d / wavelength
    hkl = fractional_hkl(q, a)
    qn = np.rint(hkl) @ a
    e = np.abs(np.linalg.norm(qn + np.array([0.0, 0.0, k]), axis=1) - k)
    dq = np.linalg.norm(q - qn, axis=1)
    clear = (np.abs(e - 0.01) > 1e-4) & (np.abs(dq - 0.05) > 1e-4)
    np.testing.assert_array_equal(on_sphere[clear], ((dq <= 0.05) & (e <= 0.01))[clear])
    # a subset of the plain q mask, and a strict one: points off the sphere are spared
    assert not (on_sphere & ~everywhere).any()
    assert 0 < on_sphere.sum() < everywhere.sum()

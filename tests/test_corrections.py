"""hpcdiff.corrections: common mode, photons, bad pixels, pedestal/gain maps."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hpcdiff.backend import gpu_available
from hpcdiff.corrections import (
    adu_to_photons,
    apply_pedestal_gain,
    asic_index,
    common_mode_offsets,
    find_bad_pixels,
    read_calibration,
    subtract_common_mode,
)
from hpcdiff.errors import FormatError

ASIC = (20, 30)  # rows, columns of one ASIC
GRID = (2, 4)  # ASICs along ss, fs


def asic_labels() -> np.ndarray:
    """(40, 120) slab of 8 ASICs numbered row-major."""
    h, w = ASIC
    lab = np.zeros((GRID[0] * h, GRID[1] * w), np.int32)
    for i in range(GRID[0]):
        for j in range(GRID[1]):
            lab[i * h : (i + 1) * h, j * w : (j + 1) * w] = i * GRID[1] + j
    return lab


def photon_frames(n: int, *, seed: int = 0, occupancy: float = 0.2, noise: float = 0.08):
    """Photon-unit frames: Poisson photons plus Gaussian read noise, no offsets."""
    rng = np.random.default_rng(seed)
    shape = (n, GRID[0] * ASIC[0], GRID[1] * ASIC[1])
    photons = rng.poisson(occupancy, shape).astype(np.float32)
    return photons + rng.normal(0, noise, shape).astype(np.float32)


@pytest.mark.parametrize("method", ["median", "histogram"])
@pytest.mark.parametrize("occupancy", [0.2, 2.0])
def test_common_mode_recovers_injected_offsets(method, occupancy):
    lab = asic_labels()
    clean = photon_frames(3, occupancy=occupancy)
    rng = np.random.default_rng(1)
    offsets = rng.normal(0, 0.3, (3, lab.max() + 1)).astype(np.float32)
    offsets[0, 0] = 0.6  # beyond the threshold: the iteration re-centres on the zero peak
    frames = clean + offsets[:, lab]
    found = common_mode_offsets(frames, lab, threshold=0.5, method=method)
    assert found.shape == offsets.shape
    tol = 0.03 if occupancy < 1 else 0.06  # fewer zero-photon pixels at high occupancy
    np.testing.assert_allclose(found, offsets, atol=tol)
    corrected = subtract_common_mode(frames, lab, threshold=0.5, method=method)
    assert corrected.dtype == np.float32
    np.testing.assert_allclose(corrected, clean, atol=tol)


def test_common_mode_ignores_masked_pixels_and_many_photons():
    lab = asic_labels()
    clean = photon_frames(2, occupancy=0.4)
    frames = clean + 0.3
    valid = np.ones(lab.shape, bool)
    frames[:, :5, :5] = -5000.0  # broken corner, masked
    valid[:5, :5] = False
    off = common_mode_offsets(frames, lab, threshold=0.5, valid=valid)
    np.testing.assert_allclose(off, 0.3, atol=0.03)
    hist = common_mode_offsets(frames, lab, threshold=0.5, valid=valid, method="histogram")
    np.testing.assert_allclose(hist, 0.3, atol=0.03)


def test_common_mode_of_asic_without_valid_pixel_is_nan_and_left_alone():
    lab = asic_labels()
    frames = photon_frames(1) + 0.2
    valid = lab != 3
    off = common_mode_offsets(frames, lab, threshold=0.5, valid=valid)
    assert np.isnan(off[0, 3]) and np.isfinite(np.delete(off[0], 3)).all()
    out = subtract_common_mode(frames, lab, threshold=0.5, valid=valid)
    np.testing.assert_array_equal(out[:, lab == 3], frames[:, lab == 3])


def test_common_mode_rejects_bad_arguments():
    lab = asic_labels()
    frames = photon_frames(1)
    with pytest.raises(ValueError, match="threshold"):
        common_mode_offsets(frames, lab, threshold=0.0)
    with pytest.raises(ValueError, match="valid: 'median', 'histogram'"):
        common_mode_offsets(frames, lab, threshold=0.5, method="mean")


def test_asic_index_splits_panels_into_asics():
    panels = np.full((40, 130), -1, np.int16)
    panels[:, :60] = 0
    panels[:, 70:130] = 1
    asics = asic_index(panels, asic_shape=(20, 30))
    assert asics.dtype == np.int32
    assert sorted(np.unique(asics)) == [-1, *range(8)]
    assert (asics[:, 60:70] == -1).all()
    assert (np.bincount(asics[asics >= 0]) == 600).all()
    np.testing.assert_array_equal(asic_index(panels), np.where(panels >= 0, panels, -1))
    with pytest.raises(ValueError, match="whole number"):
        asic_index(panels, asic_shape=(7, 30))


def test_adu_to_photons_per_frame_energy_and_dtype():
    photons = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    energy = np.array([9500.0, 7000.0])
    adu_per_ev = 0.00338
    adu = photons * (adu_per_ev * energy)[:, None, None].astype(np.float32)
    out = adu_to_photons(adu, adu_per_ev=adu_per_ev, photon_energy_ev=energy)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, photons, rtol=1e-5, atol=1e-5)
    gain_map = np.full((3, 4), adu_per_ev)
    gain_map[:, 2:] *= 2
    out = adu_to_photons(adu, adu_per_ev=gain_map, photon_energy_ev=energy)
    np.testing.assert_allclose(out[..., 2:], photons[..., 2:] / 2, rtol=1e-5, atol=1e-5)
    out64 = adu_to_photons(adu.astype(np.float64), adu_per_ev=adu_per_ev, photon_energy_ev=9500.0)
    assert out64.dtype == np.float64
    with pytest.raises(ValueError, match="photon energies"):
        adu_to_photons(adu, adu_per_ev=adu_per_ev, photon_energy_ev=[9500.0, -1.0])
    with pytest.raises(ValueError, match="3 photon energies for 2 frames"):
        adu_to_photons(adu, adu_per_ev=adu_per_ev, photon_energy_ev=[1.0, 2.0, 3.0])


def test_find_bad_pixels_finds_injected_dead_stuck_hot_only():
    lab = asic_labels()
    frames = photon_frames(30, seed=3, occupancy=1.5) + 0.1
    dead, stuck, hot = (3, 4), (10, 50), (30, 100)
    frames[:, dead[0], dead[1]] = 0.0
    frames[:, stuck[0], stuck[1]] = 7.25
    frames[:, hot[0], hot[1]] += 40.0
    frames[5] = 0.0  # one frame of zeros (a dropped read-out) flags nothing
    bad = find_bad_pixels(frames, groups=lab)
    assert bad.n_frames == 30
    assert set(zip(*np.nonzero(bad.mask), strict=True)) == {dead, stuck, hot}
    assert bad.dead[dead] and bad.stuck[stuck] and bad.hot[hot]
    assert not bad.hot[dead] and not bad.dead[hot]


def test_find_bad_pixels_needs_many_frames_and_respects_valid():
    frames = photon_frames(12, occupancy=1.0) + 0.1
    frames[:, 0, 0] = 0
    with pytest.raises(ValueError, match="many frames"):
        find_bad_pixels(frames[:1])
    valid = np.ones(frames.shape[1:], bool)
    valid[0, 0] = False
    assert not find_bad_pixels(frames, valid=valid).mask.any()
    assert find_bad_pixels(frames).dead[0, 0]


def test_pedestal_and_gain_maps(tmp_path):
    shape = (4, 6)
    rng = np.random.default_rng(0)
    ped = rng.normal(100, 5, shape).astype(np.float32)
    gain = rng.uniform(0.9, 1.1, shape).astype(np.float32)
    path = tmp_path / "calib.h5"
    with h5py.File(path, "w") as fh:
        fh["pedestal"] = ped
        fh["gain"] = gain
        fh["wrong"] = np.zeros((6, 4), np.float32)
        fh["text"] = "abc"
    got = read_calibration(path, shape=shape, dataset="/pedestal")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ped)
    raw = rng.normal(150, 10, (2, *shape)).astype(np.float32)
    out = apply_pedestal_gain(raw, pedestal=ped, gain=gain)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (raw - ped) * gain, rtol=1e-6)
    with pytest.raises(FormatError, match=r"calib\.h5, dataset /wrong: expected shape \(4, 6\)"):
        read_calibration(path, shape=shape, dataset="/wrong")
    with pytest.raises(FormatError, match="dataset /nope: no such dataset"):
        read_calibration(path, shape=shape, dataset="/nope")
    with pytest.raises(FormatError, match="numeric"):
        read_calibration(path, shape=shape, dataset="/text")
    with pytest.raises(FormatError, match="cannot tell which dataset"):
        read_calibration(path, shape=shape)
    single = tmp_path / "single.h5"
    with h5py.File(single, "w") as fh:
        fh["entry/ped"] = ped
    np.testing.assert_array_equal(read_calibration(single, shape=shape), ped)
    not_h5 = tmp_path / "x.h5"
    not_h5.write_text("no")
    with pytest.raises(FormatError, match="cannot open as HDF5"):
        read_calibration(not_h5, shape=shape)


def test_calibration_map_with_nan_is_rejected(tmp_path):
    path = tmp_path / "nan.h5"
    with h5py.File(path, "w") as fh:
        fh["data"] = np.full((2, 2), np.nan, np.float32)
    with pytest.raises(FormatError, match="non-finite"):
        read_calibration(path, shape=(2, 2))


@pytest.mark.gpu
def test_common_mode_cupy_matches_numpy():
    cupy = pytest.importorskip("cupy")
    if not gpu_available():
        pytest.skip("no CUDA device")
    lab = asic_labels()
    frames = photon_frames(2) + 0.25
    for method in ("median", "histogram"):
        cpu = common_mode_offsets(frames, lab, threshold=0.5, method=method)
        gpu = common_mode_offsets(cupy.asarray(frames), lab, threshold=0.5, method=method)
        assert isinstance(gpu, cupy.ndarray)
        np.testing.assert_allclose(gpu.get(), cpu, rtol=1e-5, atol=1e-5)

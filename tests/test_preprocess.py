"""hpcdiff.preprocess.Preprocessor: raw ADU frames of a detector -> CNN images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hpcdiff.backend import gpu_available
from hpcdiff.config import BackgroundConfig, CorrectionsConfig
from hpcdiff.geometry import DetectorModel, small_geometry
from hpcdiff.preprocess import Preprocessor

ENERGY_EV = 9500.0


@pytest.fixture(scope="module")
def model() -> DetectorModel:
    return DetectorModel.build(small_geometry(), photon_energy_ev=ENERGY_EV)


def photons(model, n, *, seed=0, level=0.3, noise=0.1):
    """Isotropic Poisson photons (falling with |q|) plus read noise, (n, n_ss, n_fs) float32."""
    rng = np.random.default_rng(seed)
    expected = level * (1 + 2 * np.exp(-model.q_abs / 1.0))
    counts = rng.poisson(expected, (n, *model.slab_shape)).astype(np.float32)
    return counts + rng.normal(0, noise, counts.shape).astype(np.float32)


def to_adu(model, ph, energy=ENERGY_EV, *, offsets=None):
    adu_per_photon = model.geom.panels[0].adu_per_ev * energy
    out = ph * np.float32(adu_per_photon)
    if offsets is not None:
        idx = model.panel_index
        out = out + (offsets[:, idx] * adu_per_photon).astype(np.float32)
    return out


@pytest.mark.parametrize("method", ["radial", "local", "none"])
def test_images_shape_dtype_range(model, method):
    pre = Preprocessor(model, BackgroundConfig(method=method), CorrectionsConfig())
    frames = to_adu(model, photons(model, 3))
    images = pre(frames, photon_energy_ev=ENERGY_EV)
    assert images.shape == (3, 3, 224, 224) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0
    np.testing.assert_array_equal(images[:, 0], images[:, 1])
    res = pre.residual(frames, photon_energy_ev=ENERGY_EV)
    for a in (res.corrected, res.background, res.residual, res.normalised):
        assert a.dtype == np.float32 and a.shape == frames.shape
    assert (res.normalised[~res.valid] == 0).all() and np.isnan(res.residual[~res.valid]).all()
    assert np.abs(res.normalised).max() <= pre.limit + 1e-6


def test_image_size_and_compression_follow_config(model):
    cfg = BackgroundConfig(image_size_px=64, compression="log", clip_sigma=3.0)
    pre = Preprocessor(model, cfg, CorrectionsConfig())
    images = pre(to_adu(model, photons(model, 1)), photon_energy_ev=ENERGY_EV)
    assert images.shape == (1, 3, 64, 64)
    assert pre.limit == pytest.approx(np.log1p(3.0))


def test_common_mode_offsets_are_removed(model):
    ph = photons(model, 2, seed=1)
    offsets = np.random.default_rng(2).normal(0, 0.3, (2, len(model.geom.panels)))
    pre = Preprocessor(model, BackgroundConfig(), CorrectionsConfig())
    clean = pre.residual(to_adu(model, ph), photon_energy_ev=ENERGY_EV)
    shifted = pre.residual(to_adu(model, ph, offsets=offsets), photon_energy_ev=ENERGY_EV)
    assert np.abs(shifted.corrected - clean.corrected).max() < 0.05
    off = Preprocessor(model, BackgroundConfig(), CorrectionsConfig(common_mode=False))
    raw = off.residual(to_adu(model, ph, offsets=offsets), photon_energy_ev=ENERGY_EV)
    assert np.abs(raw.corrected - clean.corrected).max() > 0.2


def test_photon_energy_is_used_per_frame(model):
    ph = photons(model, 2, seed=3)
    energies = np.array([9500.0, 6000.0])
    frames = np.stack([to_adu(model, ph[i : i + 1], e)[0] for i, e in enumerate(energies)])
    pre = Preprocessor(model, BackgroundConfig(), CorrectionsConfig(common_mode=False))
    res = pre.residual(frames, photon_energy_ev=energies)
    np.testing.assert_allclose(res.corrected, ph, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"scalar or \(2,\)"):
        pre(frames, photon_energy_ev=[9500.0])


def test_flat_frame_gives_neutral_image(model):
    pre = Preprocessor(model, BackgroundConfig(preprocessing="seed"), CorrectionsConfig())
    levels = np.linspace(0.1, 0.4, pre.cfg.n_radial_bins).astype(np.float32)
    flat = levels[np.maximum(pre.ring_index, 0)][None]
    res = pre.residual(to_adu(model, flat), photon_energy_ev=ENERGY_EV)
    assert np.nanmax(np.abs(res.residual)) < 1e-4
    images = pre(to_adu(model, flat), photon_energy_ev=ENERGY_EV)
    np.testing.assert_allclose(images, 0.5, atol=1e-6)


def test_bragg_peaks_are_masked(model):
    ph = photons(model, 1, seed=4)
    peaks = [(10, 20), (70, 40), (150, 12)]
    for r, c in peaks:
        ph[0, r, c] += 200.0
    pre = Preprocessor(model, BackgroundConfig(bragg_grow_px=0), CorrectionsConfig())
    res = pre.residual(to_adu(model, ph), photon_energy_ev=ENERGY_EV)
    for r, c in peaks:
        assert res.bragg[0, r, c] and not res.valid[0, r, c]
    # photon counts have heavier tails than a Gaussian: a few noise pixels go too
    assert res.bragg.sum() < 0.01 * res.bragg.size
    off = Preprocessor(model, BackgroundConfig(mask_bragg=False), CorrectionsConfig())
    assert not off.residual(to_adu(model, ph), photon_energy_ev=ENERGY_EV).bragg.any()


def test_bad_pixels_from_many_frames_and_given_mask(model):
    ph = photons(model, 12, seed=5, level=1.0)
    frames = to_adu(model, ph)
    frames[:, 5, 7] = 0.0  # dead
    frames[3] = 0.0  # one frame of zeros flags nothing
    pre = Preprocessor(model, BackgroundConfig(), CorrectionsConfig())
    found = pre.find_bad_pixels(frames, photon_energy_ev=ENERGY_EV)
    assert found.dead[5, 7] and found.mask.sum() == 1
    assert pre.bad_pixel_mask[5, 7]
    res = pre.residual(frames[:1], photon_energy_ev=ENERGY_EV)
    assert not res.valid[0, 5, 7]
    given = np.zeros(model.slab_shape, bool)
    given[:, :3] = True
    pre2 = Preprocessor(model, BackgroundConfig(), CorrectionsConfig(), bad_pixel_mask=given)
    assert not pre2.residual(frames[:1], photon_energy_ev=ENERGY_EV).valid[0][given].any()
    with pytest.raises(ValueError, match="bad_pixel_mask has shape"):
        Preprocessor(model, bad_pixel_mask=np.zeros((3, 3), bool))


def test_pedestal_and_gain_maps_are_applied(model):
    ph = photons(model, 1, seed=6)
    frames = to_adu(model, ph)
    rng = np.random.default_rng(7)
    pedestal = rng.normal(1000, 30, model.slab_shape).astype(np.float32)
    gain = rng.uniform(0.8, 1.2, model.slab_shape).astype(np.float32)
    raw = frames / gain + pedestal
    plain = Preprocessor(model).residual(frames, photon_energy_ev=ENERGY_EV)
    calib = Preprocessor(model, pedestal=pedestal, gain=gain).residual(
        raw, photon_energy_ev=ENERGY_EV
    )
    np.testing.assert_allclose(calib.corrected, plain.corrected, atol=2e-3)


def test_from_job_reads_calibration_maps(model, tmp_path):
    import h5py

    from hpcdiff.config import parse_job
    from hpcdiff.errors import FormatError

    pedestal = np.full(model.slab_shape, 50.0, np.float32)
    with h5py.File(tmp_path / "ped.h5", "w") as fh:
        fh["data"] = pedestal
    with h5py.File(tmp_path / "bad.h5", "w") as fh:
        fh["data"] = np.zeros((3, 3), np.float32)
    job = parse_job(
        {"experiment": {"pedestal": "ped.h5"}, "background": {"method": "local"}},
        base_dir=tmp_path,
    )
    pre = Preprocessor.from_job(job, model)
    assert pre.cfg.method == "local" and pre.gain is None
    np.testing.assert_array_equal(pre.pedestal, pedestal)
    wrong = parse_job({"experiment": {"gain": "bad.h5"}}, base_dir=tmp_path)
    with pytest.raises(FormatError, match=r"bad\.h5, dataset /data: expected shape \(192, 64\)"):
        Preprocessor.from_job(wrong, model)


def test_input_checks(model):
    pre = Preprocessor(model)
    with pytest.raises(ValueError, match=r"frames must be \(n, 192, 64\)"):
        pre(np.zeros((1, 10, 10), np.float32), photon_energy_ev=ENERGY_EV)
    images = pre(to_adu(model, photons(model, 1)).astype(np.float64), photon_energy_ev=ENERGY_EV)
    assert images.dtype == np.float32
    geom = model.geom
    no_gain = dataclasses.replace(
        geom, panels=tuple(dataclasses.replace(p, adu_per_ev=None) for p in geom.panels)
    )
    bare = DetectorModel.build(no_gain, photon_energy_ev=ENERGY_EV)
    with pytest.raises(ValueError, match="adu_per_eV"):
        Preprocessor(bare)
    ok = Preprocessor(bare, adu_per_ev=0.001)
    assert ok(to_adu(model, photons(model, 1)), photon_energy_ev=ENERGY_EV).shape[0] == 1
    raw_cfg = CorrectionsConfig(convert_to_photons=False, common_mode=False)
    assert Preprocessor(bare, BackgroundConfig(), raw_cfg).adu_per_ev is None


@pytest.mark.parametrize("method", ["radial", "local", "none"])
def test_threads_give_the_same_images_as_one_thread(model, method):
    cfg = BackgroundConfig(method=method)
    frames = to_adu(model, photons(model, 5, seed=4))
    frames[2, 10:14, 3] = np.nan
    one = Preprocessor(model, cfg, CorrectionsConfig())(frames, photon_energy_ev=ENERGY_EV)
    pre = Preprocessor(model, cfg, CorrectionsConfig(), threads=3)
    assert pre.threads == 3
    np.testing.assert_array_equal(pre(frames, photon_energy_ev=ENERGY_EV), one)
    # the numpy frame-at-a-time path equals the whole-batch array functions (the cupy path)
    batch = pre._slab_images(frames, ENERGY_EV)
    np.testing.assert_allclose(one, batch, rtol=0, atol=2e-6)
    assert one.std() > 0.01


@pytest.mark.parametrize("convert_to_photons", [True, False])
def test_each_image_depends_on_its_frame_alone(model, convert_to_photons):
    """Batch composition never changes an image: the Bragg threshold is one photon *of that
    frame* (in ADU when photon conversion is off), not of the batch's mean energy."""
    corr = CorrectionsConfig(convert_to_photons=convert_to_photons)
    bg = BackgroundConfig(preprocessing="seed", bragg_min_photons=5.0)
    pre = Preprocessor(model, bg, corr, threads=2)
    energy = np.array([6000.0, 9500.0, 12000.0])
    ph = photons(model, 3, seed=5, level=0.02)  # ~no pixel holds 2 photons by chance
    rng = np.random.default_rng(5)
    on = np.argwhere(model.panel_index >= 0)
    # 6-photon peaks in frame 0 (6 keV), 4-photon peaks in the others: only frame 0 has
    # Bragg peaks.  In ADU, a threshold from the batch's mean energy (9.2 keV) would spare
    # frame 0's peaks (36,000 g < 45,800 g ADU) and mask frame 2's (48,000 g > 45,800 g).
    for i, peak in enumerate((6.0, 4.0, 4.0)):
        for r, c in on[rng.choice(len(on), 40, replace=False)]:
            ph[i, r, c] += peak
    frames = np.stack([to_adu(model, ph[i], energy[i]) for i in range(3)])
    together = pre(frames, photon_energy_ev=energy)
    for i in range(3):
        alone = pre(frames[i : i + 1], photon_energy_ev=energy[i : i + 1])
        np.testing.assert_array_equal(alone[0], together[i])
    excess = pre.bragg_min_excess(energy, 3)
    gain = float(np.median(pre.adu_per_ev[np.asarray(model.valid, bool)]))
    np.testing.assert_allclose(excess, 5.0 * (1.0 if convert_to_photons else gain * energy))
    for i in range(3):
        res = pre.residual(frames[i : i + 1], photon_energy_ev=energy[i])
        assert (res.bragg.sum() > 0) == (i == 0)


def test_threads_checked_and_errors_reach_the_caller(model):
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        Preprocessor(model, threads=0)
    pre = Preprocessor(model, threads=2)
    frames = to_adu(model, photons(model, 4))
    with pytest.raises(ValueError, match="photon energies must be finite and > 0"):
        pre(frames, photon_energy_ev=[ENERGY_EV, ENERGY_EV, -1.0, ENERGY_EV])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["radial", "local"])
def test_cspad_size_batch(method):
    from hpcdiff.geometry import cspad_like_geometry

    cspad = DetectorModel.build(cspad_like_geometry(), photon_energy_ev=ENERGY_EV)
    pre = Preprocessor(cspad, BackgroundConfig(method=method), CorrectionsConfig())
    frames = to_adu(cspad, photons(cspad, 2, seed=8))
    images = pre(frames, photon_energy_ev=ENERGY_EV)
    assert images.shape == (2, 3, 224, 224) and np.isfinite(images).all()


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["radial", "local"])
def test_cupy_matches_numpy(model, method):
    cupy = pytest.importorskip("cupy")
    if not gpu_available():
        pytest.skip("no CUDA device")
    pre = Preprocessor(model, BackgroundConfig(method=method), CorrectionsConfig())
    offsets = np.random.default_rng(9).normal(0, 0.3, (2, len(model.geom.panels)))
    frames = to_adu(model, photons(model, 2, seed=9), offsets=offsets)
    cpu = pre(frames, photon_energy_ev=ENERGY_EV)
    gpu = pre(cupy.asarray(frames), photon_energy_ev=ENERGY_EV)
    assert isinstance(gpu, cupy.ndarray)
    np.testing.assert_allclose(gpu.get(), cpu, atol=1e-4)

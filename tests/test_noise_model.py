"""The measured noise model: per-frame ratio of the observed to the photon-model variance."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_fourier_frames import _with_fourier, experiment  # noqa: F401  (fixture)
from test_fourier_job import ENERGY_EV

from hpcdiff.config import load_job
from hpcdiff.noise_model import MIN_PAIRS, PHOTON_BAND, noise_ratio, noise_summary
from hpcdiff.pipelines.fourier import FourierSettings
from hpcdiff.pipelines.fourier_frames import FrameChain, plan_frames, process_frames


def _poisson_frame(rng, gain=1.0, shape=(96, 64)):
    """Counts on a smooth background with a strong smooth 'diffuse' term and a few hot
    pixels; returns (residual, photon-model variance of the expected counts, valid) in the
    frame's unit (the residual keeps the smooth signal)."""
    ss, fs = np.mgrid[: shape[0], : shape[1]]
    bg = 5.0 + 20.0 * (ss / shape[0])  # photons
    signal = 4.0 * np.sin(ss / 9.0) * np.cos(fs / 7.0) + 4.0  # smooth, >= 0
    counts = rng.poisson(bg + signal).astype(np.float64)
    counts[rng.random(shape) < 0.002] += 500.0  # missed peaks / hot pixels
    x = gain * counts
    b = gain * bg  # the background estimate, in the frame's unit
    return x - b, gain * (bg + signal) + 0.01, np.ones(shape, bool)


@pytest.mark.parametrize("gain", [1.0, 7.0])
def test_noise_ratio_is_the_gain_whatever_smooth_signal_the_frame_carries(gain):
    rng = np.random.default_rng(0)
    r, var, valid = _poisson_frame(rng, gain)
    panels = np.repeat(np.arange(2), 48)[:, None] * np.ones((1, 64), int)
    k = noise_ratio(r, model_var=var, valid=valid, panel_index=panels)
    assert k == pytest.approx(gain, rel=0.08)
    # the frame's plain spread counts the smooth signal as noise
    z = r / np.sqrt(var)
    assert np.std(z[np.abs(z) < 20]) ** 2 > 1.15 * gain
    rings = np.repeat(np.arange(96), 64).reshape(96, 64)
    banded = noise_ratio(r, model_var=var, valid=valid, rings=rings)
    assert banded == pytest.approx(gain, rel=0.1)


def test_noise_ratio_needs_pairs_and_one_shape():
    rng = np.random.default_rng(1)
    r, var, valid = _poisson_frame(rng)
    few = np.zeros_like(valid)
    few[0, : MIN_PAIRS // 2] = True
    assert np.isnan(noise_ratio(r, model_var=var, valid=few))
    with pytest.raises(ValueError, match="shape"):
        noise_ratio(r, model_var=var[:10], valid=valid)


def test_noise_summary_warns_when_frames_are_not_photons():
    ok = noise_summary(np.array([0.95, 1.0, 1.05, np.nan]))
    assert ok["photons"] and ok["warning"] is None and ok["n_measured"] == 3
    adu = noise_summary(np.full(10, 8.0))
    assert adu["photons"] is False and "not photons" in adu["warning"]
    assert adu["median"] == pytest.approx(8.0) and adu["photon_band"] == list(PHOTON_BAND)
    assert noise_summary(np.full(3, np.nan))["warning"] is None


def test_frames_in_adu_of_unknown_gain_merge_like_photon_frames(experiment):  # noqa: F811
    """Frames whose values are ``g`` x photons while the chain takes them for photons (a
    wrong gain): their noise ratio is ``g``, every pixel weight is the photon frame's over
    ``g^2`` (one common factor), the merged map is ``g`` x the photon map, and the summary
    says the frames are not photons.  (Bragg-peak masking off: its threshold is in photons.)"""
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.io.geom import read_geom

    job = load_job(experiment)
    job = dataclasses.replace(
        _with_fourier(job, scale_passes=0),
        background=dataclasses.replace(job.background, mask_bragg=False),
    )
    plan = plan_frames(job)
    settings = FourierSettings.from_job(job)
    chain = FrameChain.for_plan(plan, settings.chain)
    with FrameSource(job.frame_files(), geometry=read_geom(job.experiment.geometry)) as source:
        raw = source.read(0, 6).astype(np.float32)
    kw = dict(
        photon_energy_ev=np.full(6, ENERGY_EV), clen_m=np.full(6, 0.1), chain=chain,
        settings=settings,
    )  # fmt: skip
    g = 8.0
    photons, fp = process_frames(raw, plan.orientations[:6], **kw)
    adu, fa = process_frames(raw * np.float32(g), plan.orientations[:6], **kw)
    np.testing.assert_allclose(fa.noise_ratio, g * fp.noise_ratio, rtol=0.1)
    assert noise_summary(fp.noise_ratio)["warning"] is None
    assert "not photons" in noise_summary(fa.noise_ratio)["warning"]
    np.testing.assert_array_equal(adu.counts, photons.counts)
    measured = photons.counts > 0
    ratio = adu.weights[measured] / photons.weights[measured]
    assert np.median(ratio) == pytest.approx(1 / g**2, rel=0.1)
    assert np.percentile(ratio, 95) / np.percentile(ratio, 5) < 1.3  # one common factor
    m_p, m_a = (
        photons.intensity()[measured.reshape(photons.grid.shape)],
        adu.intensity()[measured.reshape(adu.grid.shape)],
    )
    assert np.corrcoef(m_p, m_a)[0, 1] > 0.999
    assert np.median(m_a / np.where(m_p != 0, m_p, np.nan)) == pytest.approx(g, rel=0.02)


def test_noise_ratios_survive_the_checkpoint(tmp_path):
    from hpcdiff.errors import FormatError
    from hpcdiff.pipelines.fourier_work import FourierWork

    work = FourierWork(tmp_path / "w", "aaaa")
    work.prepare(n_frames=4, force=False)
    assert np.isnan(work.load_per_frame("noise_ratio", 4)).all()  # nothing saved yet
    ratios = np.array([1.0, np.nan, 0.9, 8.0])
    work.save_per_frame("noise_ratio", ratios)
    np.testing.assert_array_equal(work.load_per_frame("noise_ratio", 4), ratios)
    with pytest.raises(FormatError, match="expected"):
        work.load_per_frame("noise_ratio", 5)

"""The CPU fast paths of preprocessing equal the vectorised (cupy-style) reference paths.

numpy arrays take segment-ordered loops (partition per ring, reduceat per clipping pass,
a median per ASIC); cupy arrays take the vectorised padded-row / bincount path.  Both
are run here on numpy data with masked pixels, NaNs and empty segments.
"""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff import corrections as C
from hpcdiff import segments as S


def _labels(rng: np.random.Generator, shape=(40, 50), n_seg=33) -> np.ndarray:
    lab = rng.integers(-1, n_seg - 3, size=shape)
    lab[lab == 7] = -1  # an empty segment in the middle; the last three are empty too
    return lab


def _reference_percentile(x, segs, q, valid):
    """The padded-row path (what cupy arrays run)."""
    g, gok, _ = S._gather(x, segs, valid, np)
    n, k, w = g.shape[0], segs.n_segments, int(segs.sizes.max())
    rows = np.zeros((n, k, w), dtype=g.dtype)
    rows_ok = np.zeros((n, k, w), dtype=bool)
    rows[:, segs.sorted_labels, segs.positions] = g
    rows_ok[:, segs.sorted_labels, segs.positions] = gok
    return S.percentile_rows(rows, rows_ok, q)


def _reference_clipped(x, segs, valid, sigma, max_iter):
    """The bincount path of segment_clipped_stats."""
    g, ok, labels = S._gather(x, segs, valid, np)
    keep = ok
    _, mean, std = S._moments(g, keep, labels, segs.n_segments, np)
    for _ in range(max_iter):
        m = np.take(mean, labels, axis=1)
        s = np.take(std, labels, axis=1)
        new = ok & (np.abs(g - m) <= sigma * s)
        if (new == keep).all():
            break
        keep = new
        _, mean, std = S._moments(g, keep, labels, segs.n_segments, np)
    return mean, std


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("q", [0.0, 10.0, 50.0, 73.3, 100.0])
def test_percentile_fast_path_equals_padded_rows(dtype, q):
    rng = np.random.default_rng(int(q * 10))
    segs = S.Segments(_labels(rng), n_segments=33)
    x = (rng.normal(size=(3, 40, 50)) * 10).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        x[0, 0, :5] = np.nan
    valid = rng.random((3, 40, 50)) > 0.3
    valid[1][segs.labels.reshape(40, 50) == 2] = False  # a ring with no valid pixel
    got = S.segment_percentile(x, segs, q, valid=valid)
    want = _reference_percentile(x, segs, q, valid)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[:, 7]).all() and np.isnan(got[:, 30:]).all() and np.isnan(got[1, 2])
    # and numpy's own percentile on one ring
    ring = segs.labels.reshape(40, 50) == 4
    v = x[2][ring & valid[2]].astype(np.float64)
    assert got[2, 4] == pytest.approx(np.percentile(v, q), rel=1e-6)


def test_percentile_fast_path_uniform_segments():
    rng = np.random.default_rng(3)
    lab = np.repeat(np.arange(4), 60).reshape(12, 20)  # four equal segments
    segs = S.Segments(lab)
    assert segs.uniform
    x = rng.normal(size=(2, 12, 20)).astype(np.float32)
    ref_valid = rng.random((12, 20)) > 0.2
    got = S.segment_median(x, segs, valid=ref_valid)
    g, gok, _ = S._gather(x, segs, ref_valid, np)
    want = S.percentile_rows(g.reshape(2, 4, 60), gok.reshape(2, 4, 60), 50.0)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("max_iter", [0, 1, 5])
def test_clipped_stats_fast_path_equals_bincount(max_iter):
    rng = np.random.default_rng(max_iter)
    segs = S.Segments(_labels(rng), n_segments=33)
    x = rng.normal(size=(3, 40, 50)).astype(np.float32)
    x[:, ::7, ::5] += 20.0  # outliers to clip
    x[2, 3, :] = np.inf
    valid = rng.random((40, 50)) > 0.1
    mean, std = S.segment_clipped_stats(x, segs, valid=valid, sigma=2.5, max_iter=max_iter)
    ref_mean, ref_std = _reference_clipped(x, segs, valid, 2.5, max_iter)
    assert mean.dtype == np.float64 and mean.shape == (3, 33)
    np.testing.assert_array_equal(np.isnan(mean), np.isnan(ref_mean))
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(std, ref_std, rtol=1e-7, atol=1e-10)
    count, m1, s1 = S.segment_moments(x, segs, valid=valid)
    g, ok, labels = S._gather(x, segs, valid, np)
    c2, m2, s2 = S._moments(g, ok, labels, 33, np)
    np.testing.assert_array_equal(count, c2)
    np.testing.assert_allclose(m1, m2, rtol=1e-10)
    np.testing.assert_allclose(s1, s2, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("stride", [1, 4])
@pytest.mark.parametrize("uniform", [True, False])
def test_common_mode_loop_equals_vectorised(uniform, stride):
    rng = np.random.default_rng(int(uniform))
    lab = np.full((40, 600), -1)
    lab[:20, :300], lab[:20, 300:], lab[20:, :300] = 0, 1, 2
    lab[20:, 300:] = 3 if uniform else -1
    if not uniform:
        lab[20:, 300:580] = 3  # smaller ASIC, below and above the subsample cut-off
        lab[20:30, 590:] = 4
    segs = S.Segments(lab, n_segments=6)
    x = rng.poisson(0.3, (3, 40, 600)) + rng.normal(0.2, 0.1, (3, 40, 600))
    x = x.astype(np.float32)
    x[1, :20, :300] += 5.0  # every pixel above the threshold: NaN level
    x[0, 5, 5] = np.nan
    valid = rng.random((40, 600)) > 0.1
    rows = x.reshape(3, -1)
    allowed = np.isfinite(rows) & valid.ravel()[None]
    got = C._zero_photon_level_numpy(rows, allowed, segs, 0.5, 2, stride)
    want = C._zero_photon_level(x, rows, allowed, segs, 0.5, 2, np, stride)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[1, 0]) and np.isnan(got[:, 5]).all()
    assert np.nanmax(np.abs(got[:, 1:4] - 0.2)) < 0.05
    for method in ("median", "histogram"):
        off = C.common_mode_offsets(
            x, segs, threshold=0.5, valid=valid, method=method, stride=stride
        )
        assert off.shape == (3, 6) and np.isnan(off[:, 5]).all()


def test_common_mode_stride_estimate_is_close_to_every_pixel():
    """Every 4th pixel of a CSPAD-sized ASIC: the level moves by a few % of the noise."""
    rng = np.random.default_rng(7)
    lab = np.zeros((185, 194), dtype=np.int64)
    segs = S.Segments(lab)
    noise = 0.15
    x = rng.poisson(0.2, (20, 185, 194)) + rng.normal(0.3, noise, (20, 185, 194))
    x = x.astype(np.float32)
    full = C.common_mode_offsets(x, segs, threshold=0.5, stride=1)[:, 0]
    fourth = C.common_mode_offsets(x, segs, threshold=0.5, stride=4)[:, 0]
    assert np.abs(full - 0.3).max() < 0.02
    assert np.abs(fourth - full).max() < 0.05 * noise
    assert not np.array_equal(fourth, full)  # a subsample, not every pixel
    with pytest.raises(ValueError, match="stride"):
        C.common_mode_offsets(x, segs, threshold=0.5, stride=0)


def test_preprocessor_photons_equal_adu_to_photons():
    from hpcdiff.config import BackgroundConfig, CorrectionsConfig, SimulateConfig
    from hpcdiff.geometry import DetectorModel
    from hpcdiff.preprocess import Preprocessor
    from hpcdiff.simulate.experiment import simulated_geometry

    model = DetectorModel.build(
        simulated_geometry(SimulateConfig(detector="small")), photon_energy_ev=9500.0
    )
    pre = Preprocessor(model, BackgroundConfig(), CorrectionsConfig(common_mode=False))
    rng = np.random.default_rng(0)
    raw = rng.normal(100.0, 20.0, (2, *pre.slab_shape)).astype(np.float32)
    energy = np.array([9000.0, 9600.0])
    got = pre.correct(raw, photon_energy_ev=energy)
    gain = np.where(pre.valid, pre.adu_per_ev, 1.0)
    want = C.adu_to_photons(raw, adu_per_ev=gain, photon_energy_ev=energy)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=3e-7)
    with pytest.raises(ValueError, match="photon energies"):
        pre.correct(raw, photon_energy_ev=[9000.0, -1.0])


def test_random_weights_drawn_as_torchvision_init():
    torch = pytest.importorskip("torch")
    from hpcdiff.features.vgg16 import VGG16
    from hpcdiff.features.weights import _random_state_dict

    got = _random_state_dict(11)
    want = VGG16(generator=torch.Generator().manual_seed(11)).state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key].dtype == torch.float32
        assert torch.equal(got[key], value), key
    conv = got["features.0.weight"]  # 64 x 3 x 3 x 3: std sqrt(2 / (64 * 9))
    assert abs(float(conv.std()) - (2 / (64 * 9)) ** 0.5) < 0.01
    assert not bool(got["classifier.0.bias"].any())
    assert not torch.equal(
        got["classifier.3.weight"], _random_state_dict(12)["classifier.3.weight"]
    )

"""The device (cupy) preprocessing chain runs a batch without host synchronisation.

On a CPU, :func:`hpcdiff.host_sync.emulate_device` makes ``cupy`` a numpy-backed module
whose arrays record every host read (``float``/``int``/``bool``/``.item()`` of a device
array, boolean-mask indexing, ``nonzero``, ``bincount`` ...): the cupy branches of the chain
run here, their syncs are counted and their results compared with the numpy path.  The
gpu-marked test runs the same chain on real cupy under ``cupyx.allow_synchronize(False)``.
"""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff.backend import gpu_available
from hpcdiff.config import BackgroundConfig, CorrectionsConfig
from hpcdiff.geometry import DetectorModel, small_geometry
from hpcdiff.host_sync import HostSyncError, emulate_device, from_device, to_device
from hpcdiff.preprocess import Preprocessor
from hpcdiff.segments import (
    Segments,
    from_orderable_bits,
    orderable_bits,
    percentile_rows,
    segment_clipped_stats,
    segment_moments,
    segment_percentile,
)

ENERGY_EV = 9500.0


@pytest.fixture(scope="module")
def model() -> DetectorModel:
    return DetectorModel.build(small_geometry(panel_shape=(24, 32)), photon_energy_ev=ENERGY_EV)


def adu_frames(model: DetectorModel, n: int, *, seed: int = 0) -> np.ndarray:
    """Poisson photons falling with |q|, a few bright peaks and read noise, in ADU."""
    rng = np.random.default_rng(seed)
    expected = 0.5 * (1 + 2 * np.exp(-model.q_abs / 1.0))
    ph = rng.poisson(expected, (n, *model.slab_shape)).astype(np.float32)
    ph += rng.normal(0, 0.1, ph.shape).astype(np.float32)
    peaks = rng.integers(0, ph.size, 6 * n)
    ph.ravel()[peaks] += 200
    return ph * np.float32(model.geom.panels[0].adu_per_ev * ENERGY_EV)


# ------------------------------------------------------------------ the guard itself


def test_the_guard_catches_each_kind_of_sync():
    with emulate_device(strict=True):
        import cupy

        x = cupy.asarray(np.arange(6, dtype=np.float32)).reshape(2, 3)
        mask = x > 2
        for read in (
            lambda: float(x.sum()),
            lambda: int(x.max()),
            lambda: bool((x > 0).all()),
            lambda: x.sum().item(),
            lambda: x.tolist(),
            lambda: x[mask],
            lambda: cupy.nonzero(mask),
            lambda: cupy.unique(x),
            lambda: cupy.bincount(x.ravel().astype(np.int64)),
            lambda: x.get(),
            lambda: [v for v in x],
        ):
            with pytest.raises(HostSyncError):
                read()
        # device-side work is fine, and results stay on the device
        y = cupy.where(mask, x, 0).sum(axis=1)
        assert type(y).__module__.startswith("cupy")
        np.testing.assert_array_equal(from_device(y), [0, 12])


def test_counting_mode_names_the_line(tmp_path):
    with emulate_device() as log:
        import cupy

        x = cupy.asarray(np.ones(4, np.float32))
        if x.any():  # a Python if on a device value
            pass
    assert len(log.syncs) == 1 and "test_device_sync.py" in log.syncs[0].site
    assert len(log.uploads) == 1


# ------------------------------------------------------------------ segment statistics


def ragged_segments(seed: int = 0) -> tuple[Segments, np.ndarray, np.ndarray]:
    """Uneven segments (one empty, one of a single pixel, unlabelled pixels), float32
    values with NaN, inf, negative zero and ties, a per-frame valid mask."""
    rng = np.random.default_rng(seed)
    shape = (20, 30)
    labels = rng.choice(
        np.r_[np.arange(7), -1], size=shape, p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.0, 0.05, 0.05]
    )
    labels[0, 0] = 5  # a one-pixel segment; segment 7 stays empty
    segs = Segments(labels, n_segments=8)
    x = rng.poisson(2.0, (3, *shape)).astype(np.float32) - np.float32(1.5)
    x[0, 1, :5] = np.nan
    x[1, 2, :3] = np.inf
    x[2, 3, :4] = -0.0
    valid = rng.random((3, *shape)) > 0.2
    valid[2, labels == 1] = False  # a segment with no valid pixel in frame 2
    return segs, x, valid


def reference_percentile(x, valid, segs, q):
    out = np.full((x.shape[0], segs.n_segments), np.nan, np.float32)
    for i in range(x.shape[0]):
        for s in range(segs.n_segments):
            v = x[i][(segs.labels.reshape(segs.shape) == s) & valid[i] & np.isfinite(x[i])]
            if v.size:
                out[i, s] = np.percentile(v.astype(np.float64), q)
    return out


@pytest.mark.parametrize("q", [0.0, 10.0, 50.0, 73.0, 100.0])
def test_ring_percentile_device_path_equals_numpy(q):
    segs, x, valid = ragged_segments()
    host = segment_percentile(x, segs, q, valid=valid)
    with emulate_device(strict=True):
        dev = from_device(segment_percentile(to_device(x), segs, q, valid=to_device(valid)))
    assert dev.dtype == np.float32
    # the same order statistics and the same float32 interpolation: equal bit for bit
    np.testing.assert_array_equal(dev, host)
    np.testing.assert_allclose(dev, reference_percentile(x, valid, segs, q), rtol=1e-6)
    assert np.isnan(dev[:, 7]).all() and np.isnan(dev[2, 1])


@pytest.mark.parametrize("q", [0.0, 25.0, 50.0, 99.0, 100.0])
def test_percentile_rows_static_columns(q):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 17)).astype(np.float32)
    ok = rng.random((40, 17)) < rng.random((40, 1))  # 0 to 17 valid entries per row
    ok[0] = False
    ok[1] = True
    ok[2, :] = False
    ok[2, 5] = True
    with emulate_device(strict=True):
        got = from_device(percentile_rows(to_device(x), to_device(ok), q))
    for row, (v, m) in enumerate(zip(x, ok, strict=True)):
        if m.any():
            want = np.percentile(v[m].astype(np.float64), q)
            assert got[row] == pytest.approx(want, rel=1e-6, abs=1e-6)  # float32 rule
        else:
            assert np.isnan(got[row])


def test_clipped_stats_and_moments_device_path_equal_numpy():
    segs, x, valid = ragged_segments(2)
    mean_h, std_h = segment_clipped_stats(x, segs, valid=valid, sigma=2.0, max_iter=4)
    cnt_h, m_h, s_h = segment_moments(x, segs, valid=valid)
    with emulate_device(strict=True):
        mean_d, std_d = segment_clipped_stats(
            to_device(x), segs, valid=to_device(valid), sigma=2.0, max_iter=4
        )
        cnt_d, m_d, s_d = segment_moments(to_device(x), segs, valid=to_device(valid))
    np.testing.assert_array_equal(from_device(cnt_d), cnt_h)
    # running sums differenced vs contiguous sums: float64 summation order only
    for d, h in ((mean_d, mean_h), (std_d, std_h), (m_d, m_h), (s_d, s_h)):
        np.testing.assert_allclose(from_device(d), h, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_orderable_bits_sort_like_floats():
    v = np.array([np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-40, 3.5, -3.5, 1e30, -1e30], np.float32)
    k = orderable_bits(v)
    assert k.dtype == np.uint32
    np.testing.assert_array_equal(from_orderable_bits(k).view(np.uint32), v.view(np.uint32))
    order = np.argsort(k, kind="stable")
    assert (np.diff(v[order].astype(np.float64)) >= 0).all()


# ------------------------------------------------------------------ the whole batch chain

CHAINS = {
    "standard": (BackgroundConfig(), CorrectionsConfig()),
    "standard, histogram common mode": (
        BackgroundConfig(),
        CorrectionsConfig(common_mode_method="histogram"),
    ),
    "standard, ADU": (BackgroundConfig(), CorrectionsConfig(convert_to_photons=False)),
    "seed, ring median": (BackgroundConfig(preprocessing="seed"), CorrectionsConfig()),
    "seed, clipped mean": (
        BackgroundConfig(preprocessing="seed", radial_statistic="clipped_mean"),
        CorrectionsConfig(),
    ),
    "seed, local exact": (
        BackgroundConfig(preprocessing="seed", method="local", local_bin_px=1, local_size_px=5),
        CorrectionsConfig(),
    ),
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_batch_chain_has_no_host_sync_and_equals_numpy(model, name):
    cfg, corrections = CHAINS[name]
    pre = Preprocessor(model, cfg, corrections)
    frames = adu_frames(model, 3)
    energies = np.array([ENERGY_EV, ENERGY_EV * 1.02, ENERGY_EV * 0.97])
    frames *= (energies / ENERGY_EV).astype(np.float32)[:, None, None]
    host = pre._slab_images(frames, energies)
    with emulate_device() as first:  # first batch: detector tables go to the device once
        pre(to_device(frames), photon_energy_ev=energies)
    assert first.syncs == [], first.summary()
    with emulate_device(strict=True) as log:  # any sync raises, naming its line
        dev = pre(to_device(frames), photon_energy_ev=energies)
    with emulate_device(strict=True):
        res = pre.residual(to_device(frames), photon_energy_ev=energies)
    # per batch only (n,) per-frame factors travel, as the energies differ here: 1 / E
    # (and, in ADU, E and the photon unit); nothing comes back
    assert len(log.uploads) <= (1 if corrections.convert_to_photons else 3), log.upload_summary()
    out = from_device(dev)
    assert out.dtype == np.float32 and out.shape == host.shape
    np.testing.assert_allclose(out, host, rtol=0, atol=1e-6)
    host_res = pre.residual(frames, photon_energy_ev=energies)
    np.testing.assert_array_equal(from_device(res.valid), host_res.valid)
    np.testing.assert_allclose(from_device(res.normalised), host_res.normalised, rtol=0, atol=1e-5)


def test_equal_energies_upload_nothing(model):
    pre = Preprocessor(model, BackgroundConfig(), CorrectionsConfig())
    frames = adu_frames(model, 2, seed=4)
    with emulate_device():
        pre(to_device(frames), photon_energy_ev=ENERGY_EV)
    with emulate_device(strict=True) as log:
        pre(to_device(frames), photon_energy_ev=ENERGY_EV)
    assert log.syncs == [] and log.uploads == [], log.upload_summary()


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs cupy and a CUDA device")
@pytest.mark.parametrize("name", ["standard", "seed, ring median", "seed, clipped mean"])
def test_cupy_chain_runs_without_synchronisation(model, name):
    import cupy
    import cupyx

    cfg, corrections = CHAINS[name]
    pre = Preprocessor(model, cfg, corrections)
    frames = adu_frames(model, 4, seed=5)
    host = pre._slab_images(frames, np.full(4, ENERGY_EV))
    dev_frames = cupy.asarray(frames)
    pre(dev_frames, photon_energy_ev=ENERGY_EV)  # tables uploaded, kernels compiled
    cupy.cuda.Device().synchronize()
    with cupyx.allow_synchronize(False):
        out = pre(dev_frames, photon_energy_ev=ENERGY_EV)
    np.testing.assert_allclose(cupy.asnumpy(out), host, rtol=0, atol=1e-5)


def test_flags_and_saturation_on_the_device_without_sync(model):
    from hpcdiff.io.geom import PixelFlag
    from hpcdiff.pixel_masks import PixelMasks

    frames = adu_frames(model, 3, seed=6)
    frames[0, 3, 4] = -5000.0  # below the top-level flag
    panel0 = model.panel_index == 0
    frames[1][panel0] = np.where(frames[1][panel0] > 0, 40000.0, frames[1][panel0])
    masks = PixelMasks(
        static_bad=np.zeros(model.slab_shape, bool),
        flag_groups=(
            (None, (PixelFlag("lessthan", -1000.0),)),
            (panel0, (PixelFlag("morethan", 30000.0),)),
        ),
        saturation=np.full(model.slab_shape, 35000.0, np.float32),
    )
    pre = Preprocessor(model, BackgroundConfig(), CorrectionsConfig())
    pre.pixel_masks = masks
    host = pre.residual(frames, photon_energy_ev=ENERGY_EV)
    assert not host.valid[0, 3, 4] and not host.valid[1][panel0 & (frames[1] > 30000)].any()
    with emulate_device():
        pre(to_device(frames), photon_energy_ev=ENERGY_EV)
    with emulate_device(strict=True) as log:
        res = pre.residual(to_device(frames), photon_energy_ev=ENERGY_EV)
    assert log.uploads == [], log.upload_summary()
    np.testing.assert_array_equal(from_device(res.valid), host.valid)
    np.testing.assert_allclose(from_device(res.normalised), host.normalised, rtol=0, atol=1e-5)

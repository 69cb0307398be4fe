"""The CPU fast path of preprocessing equals the reference array functions."""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff.background.standard import clipped_ring_stats, column_sums
from hpcdiff.config import BackgroundConfig, CorrectionsConfig
from hpcdiff.corrections import asic_index, common_mode_offsets
from hpcdiff.cpu_corrections import CommonModePlan
from hpcdiff.geometry import DetectorModel, small_geometry
from hpcdiff.preprocess import Preprocessor
from hpcdiff.segments import Segments, _clipped_sorted

ENERGY_EV = 9500.0


@pytest.fixture(scope="module")
def model() -> DetectorModel:
    return DetectorModel.build(small_geometry(), photon_energy_ev=ENERGY_EV)


def int16_frames(model: DetectorModel, n: int, *, seed: int = 0) -> np.ndarray:
    """Cheetah-style int16 ADU frames: Poisson photons, read noise, per-ASIC offsets, a
    Bragg peak and a saturated block."""
    rng = np.random.default_rng(seed)
    adu = float(model.geom.panels[0].adu_per_ev) * ENERGY_EV
    ph = rng.poisson(2.0, (n, *model.slab_shape)).astype(np.float64)
    ph += rng.normal(0, 0.1, ph.shape) + rng.normal(0, 0.2, (n, 1, 1))
    ph[:, 10:13, 20:23] += 400
    frames = np.round(ph * adu)
    frames[-1, 30:34, 5:9] = 32767
    return np.clip(frames, -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("recipe", ["standard", "seed"])
@pytest.mark.parametrize("asic_shape", [(), (8, 8)])
@pytest.mark.parametrize("maps", [False, True])
def test_int16_frames_give_the_reference_images(model, recipe, asic_shape, maps):
    frames = int16_frames(model, 3)
    rng = np.random.default_rng(1)
    extra = {}
    if maps:
        extra = {
            "pedestal": rng.normal(3, 1, model.slab_shape).astype(np.float32),
            "gain": rng.uniform(0.9, 1.1, model.slab_shape).astype(np.float32),
        }
    pre = Preprocessor(
        model,
        BackgroundConfig(preprocessing=recipe, method="radial"),
        CorrectionsConfig(asic_shape=asic_shape),
        threads=2,
        **extra,
    )
    fast = pre.frame_corrections
    assert fast is not None
    energy = np.array([ENERGY_EV, 9000.0, 11000.0])
    for i in range(3):
        x = fast(frames[i], photon_energy_ev=float(energy[i]))
        ref = pre.correct(frames[i : i + 1], photon_energy_ev=energy[i : i + 1])[0]
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, ref)
    images = pre(frames, photon_energy_ev=energy)
    reference = pre.images(pre.residual(frames, photon_energy_ev=energy))
    np.testing.assert_allclose(images, reference, atol=2e-5)
    assert np.abs(images - 0.5).max() > 0.05  # not all neutral: the comparison means something


def test_common_mode_plan_of_any_asic_shape_matches_the_array_function(model):
    rng = np.random.default_rng(2)
    shape = model.slab_shape
    labels = asic_index(model.panel_index)
    # interleaved, non-rectangular "ASICs": every other column of each panel
    labels = np.where(labels >= 0, 2 * labels + (np.arange(shape[1]) % 2)[None, :], -1)
    segs = Segments(labels)
    valid = rng.random(shape) > 0.05
    plan = CommonModePlan.build(segs, valid=valid, stride=2)
    assert plan.rects is None
    frame = (rng.poisson(0.3, shape) + rng.normal(0.1, 0.1, shape)).astype(np.float32)
    frame[3, :] = np.nan
    ref = common_mode_offsets(frame[None], segs, threshold=0.5, valid=valid, stride=2)[0]
    np.testing.assert_array_equal(plan.levels(frame, threshold=0.5), ref)
    out = frame.copy()
    plan.subtract(out, ref)
    shift = np.where(labels >= 0, np.nan_to_num(ref)[np.maximum(labels, 0)], 0)
    np.testing.assert_array_equal(out, frame - shift.astype(np.float32))


def test_clipped_ring_stats_match_the_reference():
    rng = np.random.default_rng(3)
    labels = rng.integers(-1, 30, (40, 50))
    labels[labels == 7] = -1  # an empty segment
    segs = Segments(labels, n_segments=30)
    v = rng.poisson(3.0, segs.n_pixels).astype(np.float32)
    v[rng.random(v.size) < 0.02] += 200  # outliers to clip
    ok = rng.random(v.size) > 0.1
    nz = np.flatnonzero(segs.sizes > 0)
    mean, std = clipped_ring_stats(
        v,
        ok,
        starts=segs.starts[nz],
        nonempty=nz,
        labels=segs.sorted_labels,
        n_segments=30,
        sigma=3.0,
        max_iter=3,
    )
    ref_mean, ref_std = _clipped_sorted(v[None], ok[None], segs, 3.0, 3)
    np.testing.assert_allclose(mean, ref_mean[0], rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(std, ref_std[0], rtol=1e-9, equal_nan=True)
    assert np.isnan(mean[7]) and np.isfinite(mean[nz]).all()


def test_column_sums_match_a_dense_sum():
    import scipy.sparse

    rng = np.random.default_rng(4)
    m = scipy.sparse.random(20, 50, density=0.2, random_state=5, format="csc", dtype=np.float32)
    cols = rng.choice(50, 12, replace=False)
    np.testing.assert_allclose(
        column_sums(m, cols, 20), m.toarray()[:, cols].sum(axis=1), rtol=1e-6
    )
    assert not column_sums(m, np.array([], np.int64), 20).any()


@pytest.mark.parametrize("offset_photons", [0.0, 0.3, -0.2])
def test_counting_medians_of_integer_frames_equal_the_selections(model, offset_photons):
    pre = Preprocessor(model, BackgroundConfig(), CorrectionsConfig(asic_shape=(8, 8)))
    fast = pre.frame_corrections
    assert fast is not None and fast.plan is not None and fast.asic_scale is not None
    rng = np.random.default_rng(6)
    for energy in (ENERGY_EV, 7311.0):
        adu = float(model.geom.panels[0].adu_per_ev) * energy
        ph = rng.poisson(0.4, model.slab_shape) + rng.normal(offset_photons, 0.15, model.slab_shape)
        raw = np.round(ph * adu).astype(np.int16)
        inv = np.float32(1.0 / energy)
        counted = fast.plan.counting_levels(
            raw, scale=fast.asic_scale, inv_energy=inv, threshold=0.5
        )
        x = np.multiply(raw, fast.ev_per_adu, dtype=np.float32)
        x *= inv
        selected = fast.plan.levels(x, threshold=0.5)
        assert counted is not None
        np.testing.assert_array_equal(counted, selected)
        assert np.nanmean(counted) == pytest.approx(offset_photons, abs=0.1)


def test_prepare_builds_the_detector_maps_before_any_frame(model):
    pre = Preprocessor(model, BackgroundConfig())
    assert pre._ring_order is None and pre._frame_corrections is None
    pre.prepare()
    chain, fast = pre._ring_order, pre._frame_corrections
    assert chain is not None and fast is not None
    frames = int16_frames(model, 1)
    pre(frames, photon_energy_ev=ENERGY_EV)
    assert pre._ring_order is chain and pre._frame_corrections is fast  # nothing rebuilt


@pytest.mark.parametrize("steps", [1, 2])
def test_grow_within_panels_is_the_reference_growth(model, steps):
    from hpcdiff.background.standard import grow_within_panels

    pre = Preprocessor(model, BackgroundConfig())
    chain = pre.ring_order
    rng = np.random.default_rng(7)
    n_pix = chain.shape[0] * chain.shape[1]
    pixel = rng.choice(n_pix, 40, replace=False)
    _, ref = chain._grow(np.zeros(40, np.int64), pixel, steps)
    got = grow_within_panels(pixel, panel=chain.panel_flat, shape=chain.shape, steps=steps)
    np.testing.assert_array_equal(np.unique(got), ref)


@pytest.mark.parametrize("read_noise", [0.3, 0.0])
@pytest.mark.parametrize("mask_bragg", [True, False])
def test_finite_ring_order_frames_give_the_checked_images(model, read_noise, mask_bragg):
    """Frames known finite (integer ADU) skip the finiteness checks and build the ring
    means and cell weights from the dropped pixels: the same images as the checked path."""
    cfg = BackgroundConfig(read_noise_photons=read_noise, mask_bragg=mask_bragg)
    pre = Preprocessor(model, cfg)
    chain, fast = pre.ring_order, pre.frame_corrections
    assert fast is not None
    frames = int16_frames(model, 3)
    assert fast.finite_for(frames) and not fast.finite_for(frames.astype(np.float32))
    floor = np.full(1, cfg.bragg_min_photons)
    for frame in frames:
        x = fast(frame, photon_energy_ev=ENERGY_EV)
        checked = chain(x[None], min_excess=floor)
        g = np.take(x.reshape(-1), chain.rings.order)[None]
        known = chain.ordered_images(g, min_excess=floor, finite=True)
        np.testing.assert_allclose(known, checked, atol=1e-6)
        assert np.abs(known - 0.5).max() > 0.05


def test_flat_noise_scale_matches_the_masked_one():
    from hpcdiff.background.standard import noise_scale, noise_scale_flat

    rng = np.random.default_rng(3)
    z = rng.normal(0, 1.7, 5000).astype(np.float32)
    z[:40] = 30.0  # outliers the clipping removes
    z[40:45] = np.nan
    ok = rng.random(5000) > 0.1
    expected = noise_scale(z[None], ok[None])
    got = noise_scale_flat(z, ok)
    assert got.shape == (1,)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert 1.5 < got[0] < 1.9
    assert np.isnan(noise_scale_flat(z, np.zeros(5000, bool))[0])


def test_column_sums_of_squares_match_the_squared_matrix():
    import scipy.sparse

    m = scipy.sparse.random(30, 200, density=0.1, random_state=5, dtype=np.float32).tocsc()
    squared = m.multiply(m).tocsc()
    cols = np.array([3, 3, 17, 199, 0, 42])
    sums, sums2 = column_sums(m, cols, 30, squares=m.data * m.data)
    np.testing.assert_array_equal(sums, column_sums(m, cols, 30))
    np.testing.assert_allclose(sums2, column_sums(squared, cols, 30), rtol=1e-12)
    dense = m.toarray().astype(np.float64)
    np.testing.assert_allclose(sums2, (dense[:, cols] ** 2).sum(axis=1), rtol=1e-6)
    assert sums2.sum() > 0
    empty = column_sums(m, np.array([], dtype=np.int64), 30, squares=m.data * m.data)
    assert all(np.array_equal(e, np.zeros(30)) for e in empty)

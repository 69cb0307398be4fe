"""The ring-order CPU path of the radial preprocessing equals the slab-order reference.

``Preprocessor.__call__`` on numpy frames with ``method = "radial"`` runs
:class:`hpcdiff.background.RingOrderImages`; the reference is ``Preprocessor.residual``
followed by ``cnn_images`` (the path cupy arrays take).  They must give the same images
up to float32 summation order, with Bragg peaks at panel edges, NaN pixels, bad pixels,
a frame without valid pixels and every statistic / compression / growth setting.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hpcdiff.background.ring_order import _float32_floor
from hpcdiff.config import BackgroundConfig, CorrectionsConfig
from hpcdiff.geometry import DetectorModel, small_geometry
from hpcdiff.preprocess import Preprocessor

ENERGY_EV = 9500.0


@pytest.fixture(scope="module")
def model() -> DetectorModel:
    return DetectorModel.build(small_geometry(), photon_energy_ev=ENERGY_EV)


def _frames(model: DetectorModel, n: int = 3, seed: int = 0) -> np.ndarray:
    """ADU frames: Poisson photons falling with |q|, read noise, Bragg peaks, NaNs."""
    rng = np.random.default_rng(seed)
    expected = 0.4 * (1 + 2 * np.exp(-model.q_abs / 1.0))
    ph = rng.poisson(expected, (n, *model.slab_shape)).astype(np.float32)
    ph += rng.normal(0, 0.1, ph.shape).astype(np.float32)
    panel = model.panel_index
    for i in range(n):
        on = np.argwhere(panel >= 0)
        for r, c in on[rng.choice(len(on), 12, replace=False)]:
            ph[i, r, c] += rng.uniform(30, 300)
        # a peak on a panel's first row: growth must stay inside the panel
        first = np.argwhere(panel == i % int(panel.max() + 1))[0]
        ph[i, first[0], first[1] + 3] += 400.0
    ph[0, 5, 5:9] = np.nan
    return ph * np.float32(model.geom.panels[0].adu_per_ev * ENERGY_EV)


def _reference(pre: Preprocessor, frames: np.ndarray, energy) -> np.ndarray:
    """``Preprocessor.residual`` then ``cnn_images`` on the whole batch, in slab order."""
    return pre._slab_images(frames, energy)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"radial_statistic": "clipped_mean"},
        {"compression": "sqrt", "bragg_grow_px": 2},
        {"compression": "log", "bragg_grow_px": 0, "clip_sigma": 3.0},
        {"mask_bragg": False, "image_size_px": 64},
        {"bragg_sigma": 2.0, "bragg_min_photons": 0.0},  # many peaks
    ],
)
def test_ring_order_images_equal_reference(model, settings):
    cfg = dataclasses.replace(BackgroundConfig(), **settings)
    bad = np.zeros(model.slab_shape, bool)
    bad[20:23, 30:34] = True
    pre = Preprocessor(model, cfg, CorrectionsConfig(), bad_pixel_mask=bad)
    frames = _frames(model)
    energy = np.array([ENERGY_EV, 9000.0, 9800.0])
    got = pre(frames, photon_energy_ev=energy)
    want = _reference(pre, frames, energy)
    assert got.shape == want.shape == (3, 3, cfg.image_size_px, cfg.image_size_px)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    assert got.std() > 0.01  # not two equally blank images


def test_frame_without_valid_pixels_is_neutral(model):
    pre = Preprocessor(model, BackgroundConfig(), CorrectionsConfig())
    frames = _frames(model, 2)
    frames[1] = np.nan
    got = pre(frames, photon_energy_ev=ENERGY_EV)
    np.testing.assert_array_equal(got[1], 0.5)
    np.testing.assert_allclose(got, _reference(pre, frames, ENERGY_EV), atol=2e-6)


def test_bad_pixels_found_later_reach_the_ring_order_path(model):
    pre = Preprocessor(model, BackgroundConfig(), CorrectionsConfig())
    frames = _frames(model, 12, seed=3)
    frames[:, 40, 40] = 0.0  # dead in every frame
    pre(frames[:1], photon_energy_ev=ENERGY_EV)  # builds the ring-order tables
    found = pre.find_bad_pixels(frames, photon_energy_ev=ENERGY_EV)
    assert found.mask[40, 40]
    got = pre(frames[:2], photon_energy_ev=ENERGY_EV)
    np.testing.assert_allclose(got, _reference(pre, frames[:2], ENERGY_EV), atol=2e-6)


def test_needs_radial_method(model):
    seed_local = BackgroundConfig(preprocessing="seed", method="local")
    pre = Preprocessor(model, seed_local, CorrectionsConfig())
    with pytest.raises(ValueError, match="radial"):
        pre.ring_order  # noqa: B018 - the property builds the chain


def test_float32_floor_keeps_comparisons_exact():
    rng = np.random.default_rng(1)
    t = np.concatenate([rng.normal(0, 10, 2000), [np.nan, 0.0, 1.0, -1e-30, 3.4e38]])
    r = np.concatenate([t.astype(np.float32), rng.normal(0, 10, 500).astype(np.float32)])
    floor = _float32_floor(t)
    assert floor.dtype == np.float32
    finite = np.isfinite(t)
    assert (floor[finite].astype(np.float64) <= t[finite]).all()
    for k in range(t.size):
        np.testing.assert_array_equal(r > t[k], r > floor[k])

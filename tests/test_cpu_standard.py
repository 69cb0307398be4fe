"""The fused CPU kernel of the standard recipe against the slab-order reference chain."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hpcdiff.background import cpu_standard
from hpcdiff.config import BackgroundConfig, CorrectionsConfig
from hpcdiff.geometry import DetectorModel, small_geometry
from hpcdiff.preprocess import Preprocessor

pytestmark = pytest.mark.skipif(not cpu_standard.HAVE_NUMBA, reason="numba is not installed")

ENERGY_EV = 9500.0
STANDARD = BackgroundConfig(preprocessing="standard", read_noise_photons=0.12)


@pytest.fixture(scope="module")
def model() -> DetectorModel:
    return DetectorModel.build(small_geometry(), photon_energy_ev=ENERGY_EV)


def adu_per_photon(model: DetectorModel) -> float:
    return float(model.geom.panels[0].adu_per_ev) * ENERGY_EV


def adu_frames(model, n, *, seed=0, level=3.0, offsets=True, peaks=True, crystal=True):
    """Float32 ADU frames: Poisson photons falling with |q|, read noise, per-panel
    common-mode offsets, a few Bragg peaks and, on frame 1, ring-like diffuse contrast."""
    rng = np.random.default_rng(seed)
    q = np.nan_to_num(model.q_abs)
    expected = level * (0.4 + np.exp(-q / 0.8)) * np.nan_to_num(model.polarisation, nan=1.0)
    ph = rng.poisson(expected, (n, *model.slab_shape)).astype(np.float32)
    ph += rng.normal(0, 0.12, ph.shape).astype(np.float32)
    if crystal and n > 1:
        ph[1] *= np.float32(1) + np.float32(0.3) * np.cos(q * 9.0).astype(np.float32)
    if peaks:
        for i in range(n):
            for _ in range(4):
                r = rng.integers(2, model.slab_shape[0] - 3)
                c = rng.integers(2, model.slab_shape[1] - 3)
                ph[i, r : r + 2, c : c + 2] += np.float32(300.0)
    if offsets:
        panel = np.asarray(model.panel_index)
        off = rng.normal(0, 0.6, (n, panel.max() + 2)).astype(np.float32)
        ph += off[:, panel]
    return ph * np.float32(adu_per_photon(model))


def preprocessors(model, cfg=STANDARD, corr=None, **kw) -> tuple[Preprocessor, Preprocessor]:
    """The same preprocessor twice: with the kernel, and with the numpy ring-order chain."""
    corr = corr or CorrectionsConfig()
    fused = Preprocessor(model, cfg, corr, **kw)
    numpy_chain = Preprocessor(model, cfg, corr, **kw)
    numpy_chain.cpu_kernel = False
    return fused, numpy_chain


def check(model, frames, cfg=STANDARD, corr=None, *, atol=2e-5, **kw) -> np.ndarray:
    fused, numpy_chain = preprocessors(model, cfg, corr, **kw)
    assert fused.standard_kernel is not None and numpy_chain.standard_kernel is None
    got = fused(frames, photon_energy_ev=ENERGY_EV)
    size = cfg.image_size_px
    assert got.shape == (len(frames), 3, size, size) and got.dtype == np.float32
    reference = fused.images(fused.residual(frames, photon_energy_ev=ENERGY_EV))
    np.testing.assert_allclose(got, reference, atol=atol)
    np.testing.assert_allclose(got, numpy_chain(frames, photon_energy_ev=ENERGY_EV), atol=atol)
    assert 0 <= got.min() and got.max() <= 1
    return got


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_kernel_equals_reference_with_common_mode_and_peaks(model, dtype):
    frames = adu_frames(model, 3, seed=1)
    if dtype == np.int16:
        frames = np.round(frames).astype(np.int16)  # Cheetah layout: integer ADU
    got = check(model, frames)
    assert np.ptp(got) > 0.2  # not a neutral image


@pytest.mark.parametrize(
    "changes",
    [
        {"mask_bragg": False},
        {"q_cell": "mean", "q_smooth_per_nm": 0.08, "image_size_px": 96},
        {"bragg_grow_px": 2, "q_max_per_nm": 2.5, "clip_sigma": 3.0},
        {"bragg_grow_px": 0, "read_noise_photons": 0.0},
        {"standard_guard": 1.05},  # the guard rescales every frame
    ],
)
def test_kernel_equals_reference_for_settings(model, changes):
    frames = np.round(adu_frames(model, 2, seed=2)).astype(np.int16)
    check(model, frames, dataclasses.replace(STANDARD, **changes))


def test_bad_pixels_non_finite_values_pedestal_and_gain(model):
    frames = adu_frames(model, 2, seed=3)
    frames[0, 4:6, 30:40] = np.nan  # e.g. a geometry without flags: NaN read as is
    frames[1, 50, 7] = np.inf
    bad = np.zeros(model.slab_shape, bool)
    bad[:, 11] = True
    bad[20:25, 60:70] = True
    rng = np.random.default_rng(4)
    pedestal = rng.normal(100, 5, model.slab_shape).astype(np.float32)
    gain = rng.uniform(0.9, 1.1, model.slab_shape).astype(np.float32)
    raw = (frames / gain + pedestal).astype(np.float32)
    check(model, raw, bad_pixel_mask=bad, pedestal=pedestal, gain=gain)
    check(model, frames, bad_pixel_mask=bad)


def test_without_common_mode_or_photon_unit_and_on_threads(model):
    frames = np.round(adu_frames(model, 4, seed=5, offsets=False)).astype(np.int16)
    check(model, frames, corr=CorrectionsConfig(common_mode=False), threads=2)


def test_frame_without_valid_pixels_is_neutral(model):
    frames = np.zeros((1, *model.slab_shape), np.int16)
    bad = np.ones(model.slab_shape, bool)
    fused, _ = preprocessors(model, bad_pixel_mask=bad)
    assert (fused(frames, photon_energy_ev=ENERGY_EV) == 0.5).all()


def test_settings_outside_the_kernel_run_the_numpy_chain(model):
    cfg = dataclasses.replace(STANDARD, compression="sqrt")
    fused, _ = preprocessors(model, cfg)
    assert fused.standard_kernel is None
    seed = Preprocessor(model, BackgroundConfig(preprocessing="seed"))
    assert seed.standard_kernel is None


@pytest.mark.parametrize("integer", [True, False])
def test_common_mode_levels_equal_the_plan_bit_for_bit(model, integer):
    """The histogram (integer ADU) and selection paths give the levels of
    :meth:`CommonModePlan.levels` exactly."""
    fused, _ = preprocessors(model)
    kernel = fused.standard_kernel
    fast = fused.frame_corrections
    assert kernel is not None and fast is not None and fast.plan is not None
    frame = adu_frames(model, 1, seed=6)[0]
    raw = np.round(frame).astype(np.int16) if integer else frame
    inv_e = np.float32(1 / ENERGY_EV)
    want = fast.plan.levels(fast._photons(raw, inv_e), threshold=fast.threshold)
    got = np.full(kernel.n_asics, np.nan, np.float32)
    s = kernel._take()
    cpu_standard._levels(
        raw.reshape(-1), kernel.voters, kernel.vstarts, kernel.early, kernel.estarts,
        kernel.asics, kernel.scale, integer and kernel.hist_ok, kernel.ev, kernel.ped,
        kernel.gain, inv_e, kernel.threshold, 2, got, s.fbuf, s.ibuf, s.hist,
    )  # fmt: skip
    np.testing.assert_array_equal(got, want)
    assert kernel.hist_ok and np.isfinite(got).sum() >= 2  # (an empty window gives NaN)


@pytest.mark.slow
def test_cspad_int16_frames_equal_the_reference():
    from hpcdiff.geometry import cspad_like_geometry

    cspad = DetectorModel.build(cspad_like_geometry(), photon_energy_ev=ENERGY_EV)
    frames = np.round(adu_frames(cspad, 2, seed=7, level=1.0)).astype(np.int16)
    bad = np.zeros(cspad.slab_shape, bool)
    bad[100:103, :] = True
    check(cspad, frames, bad_pixel_mask=bad)


def _clipped_thresholds_reference(noise, starts, sigma, max_iter, bragg_sigma, min_excess):
    """Every clipping pass, in float64 numpy (no early end)."""
    out = np.empty(starts.size - 1, np.float64)
    for r in range(starts.size - 1):
        v = noise[starts[r] : starts[r + 1]].astype(np.float64)
        v = v[v < cpu_standard.UNUSED / 2]
        lo, hi, mean, std = -np.inf, np.inf, np.nan, np.nan
        for _ in range(max_iter + 1):
            sel = v[(v >= lo) & (v <= hi)]
            if sel.size == 0:
                mean = std = np.nan
                break
            mean = sel.mean()
            std = np.sqrt(max((sel * sel).mean() - mean * mean, 0.0))
            lo, hi = mean - sigma * std, mean + sigma * std
        out[r] = mean + max(bragg_sigma * std, min_excess)
    return out


def test_bragg_thresholds_early_end_equals_every_pass():
    """The clipped statistics stop once a pass repeats the last moments; the thresholds
    are those of all ``max_iter + 1`` passes (rings that converge at once, late, or have
    outliers, an empty ring, one of UNUSED values only)."""
    cpu_standard._compile()
    rng = np.random.default_rng(3)
    rings = [
        rng.normal(2.0, 0.5, 400),
        np.concatenate([rng.normal(1.0, 0.3, 300), [40.0, 55.0, 80.0]]),
        np.concatenate([rng.normal(0.0, 1.0, 200), rng.normal(4.0, 1.0, 60)]),
        np.array([], np.float64),
        np.full(5, cpu_standard.UNUSED),
        np.concatenate([rng.poisson(0.2, 500).astype(float), [cpu_standard.UNUSED] * 3]),
    ]
    noise = np.concatenate(rings).astype(np.float32)
    starts = np.cumsum([0] + [len(r) for r in rings]).astype(np.int64)
    got = np.full(len(rings), np.inf, np.float32)
    cpu_standard._bragg_thresholds(noise, starts, 3.0, 3, 5.0, 0.5, got)
    want = _clipped_thresholds_reference(noise, starts, 3.0, 3, 5.0, 0.5)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-6)


def test_pass1_skips_the_finiteness_test_only_where_bounded(model):
    """Integer ADU times finite maps are finite unless an intermediate could pass the
    float32 range (a tiny photon unit, a huge level)."""
    kernel = Preprocessor(model, STANDARD).standard_kernel
    assert kernel is not None and kernel.evtab.size
    offset = np.zeros(kernel.n_asics + 1, np.float32)
    inv_e = np.float32(1 / ENERGY_EV)
    one = np.float32(1)
    assert kernel._always_finite(np.dtype(np.int16), offset, inv_e, one)
    assert kernel._always_finite(np.dtype(np.int32), offset, inv_e, one)
    assert not kernel._always_finite(np.dtype(np.int16), offset, inv_e, np.float32(1e-38))
    offset[0] = np.float32(3e38)
    assert not kernel._always_finite(np.dtype(np.int16), offset, inv_e, one)
    offset[0] = np.inf
    assert not kernel._always_finite(np.dtype(np.int16), offset, inv_e, one)


@pytest.mark.parametrize("size, one_cell", [(64, True), (224, False)])
def test_cell_sums_one_entry_per_pixel_and_general(model, size, one_cell):
    """Grids coarse enough that every pixel lies in one cell take the in-order scatter
    (:func:`_cells_one`), the others the CSR product: both equal the numpy chain."""
    cfg = dataclasses.replace(STANDARD, image_size_px=size)
    kernel = Preprocessor(model, cfg).standard_kernel
    assert kernel is not None and kernel.one_cell is one_cell
    frames = np.round(adu_frames(model, 2, seed=5)).astype(np.int16)
    check(model, frames, cfg)


def test_scratch_buffers_are_reused_across_threads(model):
    """Preprocessor threads are new for every batch: their frame-sized scratch buffers
    are pooled, not made again per thread (one set per call under way)."""
    import threading

    fused, _ = preprocessors(model)
    kernel = fused.standard_kernel
    assert kernel is not None
    frames = np.round(adu_frames(model, 4, seed=7)).astype(np.int16)
    want = fused(frames, photon_energy_ev=ENERGY_EV)
    assert len(kernel._pool) == 1

    def one(i: int) -> None:
        got = kernel.image(frames[i], photon_energy_ev=ENERGY_EV, min_excess=5.0)
        np.testing.assert_allclose(got, want[i], atol=2e-6)

    for i in range(2):  # one thread after another: the same set
        t = threading.Thread(target=one, args=(i,))
        t.start()
        t.join()
    assert len(kernel._pool) == 1
    two = fused.__class__(model, STANDARD, threads=2)
    two._kernel, two._kernel_built = kernel, True  # the same kernel, two threads at once
    np.testing.assert_allclose(two(frames, photon_energy_ev=ENERGY_EV), want, atol=2e-6)
    assert 1 <= len(kernel._pool) <= 2

"""hpcdiff.background: ring statistics, local filter, Bragg mask, normalisation, CNN images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage

from hpcdiff.backend import gpu_available
from hpcdiff.background import (
    Segments,
    bragg_mask,
    cnn_images,
    grow_mask,
    local_background,
    normalise,
    normalised_limit,
    panel_rectangles,
    radial_background,
    radial_profile,
    robust_scale,
)
from hpcdiff.segments import (
    expand,
    segment_clipped_stats,
    segment_moments,
    segment_percentile,
)

# --------------------------------------------------------------------------- helpers

PIXEL_M = 100e-6
DIST_M = 0.1
WAVELENGTH_M = 1.0e-10


def flat_panel(shape=(120, 130), centre=(55.3, 70.7)):
    """|q| (nm^-1, no 2 pi) of a flat detector normal to the beam; centre in pixels (ss, fs)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    x = (cols + 0.5 - centre[1]) * PIXEL_M
    y = (rows + 0.5 - centre[0]) * PIXEL_M
    two_theta = np.arctan2(np.hypot(x, y), DIST_M)
    return 2 * np.sin(two_theta / 2) / WAVELENGTH_M * 1e-9


def ring_index(q, n_rings, q_min=None, q_max=None):
    lo = q.min() if q_min is None else q_min
    hi = q.max() if q_max is None else q_max
    ring = np.floor((q - lo) / (hi - lo) * n_rings).astype(np.int32)
    ring = np.minimum(ring, n_rings - 1)
    ring[(q < lo) | (q > hi)] = -1
    return ring, np.linspace(lo, hi, n_rings + 1)


def two_panels(shape=(40, 50)):
    """Slab of two panels side by side along fs, with a 4-column gap between them."""
    idx = np.full((shape[0], 2 * shape[1] + 4), -1, np.int16)
    idx[:, : shape[1]] = 0
    idx[:, shape[1] + 4 :] = 1
    return idx


@dataclass(frozen=True)
class Map:
    rows: np.ndarray
    cols: np.ndarray
    shape: tuple[int, int]


def identity_map(shape):
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return Map(rows.astype(np.int32), cols.astype(np.int32), shape)


# --------------------------------------------------------------------------- segments


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("q", [0.0, 25.0, 50.0, 90.0, 100.0])
def test_segment_percentile_matches_numpy(dtype, q):
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 7, (30, 40))
    values = rng.normal(size=(3, 30, 40)).astype(dtype)
    values[0, 0, :3] = [np.nan, np.inf, -np.inf]
    valid = rng.random((3, 30, 40)) > 0.3
    got = segment_percentile(values, Segments(labels, n_segments=9), q, valid=valid)
    assert got.dtype == dtype and got.shape == (3, 9)
    for i in range(3):
        for s in range(9):
            pick = (labels == s) & valid[i] & np.isfinite(values[i])
            want = np.percentile(values[i][pick], q) if pick.any() else np.nan
            np.testing.assert_allclose(got[i, s], want, rtol=1e-6, equal_nan=True)


def test_uniform_segments_take_the_row_path_and_agree():
    labels = np.repeat(np.arange(6), 50).reshape(30, 10)  # six segments of 50 pixels
    segs = Segments(labels)
    assert segs.uniform
    rng = np.random.default_rng(1)
    values = rng.normal(size=(2, 30, 10)).astype(np.float32)
    valid = rng.random((30, 10)) > 0.2
    got = segment_percentile(values, segs, 50.0, valid=valid)
    want = [[np.median(values[i][(labels == s) & valid]) for s in range(6)] for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_segment_moments_and_expand():
    labels = np.array([[0, 0, 1], [1, 1, -1]])
    values = np.array([[[1.0, 3.0, 2.0], [4.0, 6.0, 100.0]]], np.float32)
    segs = Segments(labels)
    count, mean, std = segment_moments(values, segs)
    np.testing.assert_array_equal(count, [[2, 3]])
    np.testing.assert_allclose(mean, [[2.0, 4.0]])
    np.testing.assert_allclose(std, [[1.0, np.std([2.0, 4.0, 6.0])]])
    spread = expand(mean, segs)
    assert spread.shape == (1, 2, 3) and np.isnan(spread[0, 1, 2])
    np.testing.assert_allclose(spread[0, 0], [2.0, 2.0, 4.0])


def test_clipped_stats_ignore_outliers():
    rng = np.random.default_rng(2)
    labels = np.zeros((50, 50), int)
    values = rng.normal(10.0, 1.0, (1, 50, 50)).astype(np.float32)
    values[0, :3, :3] = 1e4
    mean, std = segment_clipped_stats(values, Segments(labels))
    assert abs(mean[0, 0] - 10.0) < 0.1 and abs(std[0, 0] - 1.0) < 0.1


def test_segments_reject_bad_labels():
    with pytest.raises(ValueError, match="2-D slab"):
        Segments(np.zeros(5, int))
    with pytest.raises(TypeError, match="integers"):
        Segments(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="n_segments is 2"):
        Segments(np.full((2, 2), 3), n_segments=2)


# --------------------------------------------------------------------------- radial


@pytest.mark.parametrize("statistic", ["median", "clipped_mean", "mean"])
def test_flat_frame_leaves_zero_residual(statistic):
    q = flat_panel()
    ring, _ = ring_index(q, 40)
    levels = np.linspace(5.0, 50.0, 40).astype(np.float32)
    frames = np.stack([levels[ring], 2 * levels[ring]])
    bg = radial_background(frames, ring, statistic=statistic)
    assert bg.dtype == np.float32 and bg.shape == frames.shape
    np.testing.assert_allclose(frames - bg, 0.0, atol=1e-4)


def test_isotropic_frame_has_no_radial_residual():
    q = flat_panel()
    ring, _ = ring_index(q, 60)
    rng = np.random.default_rng(3)
    smooth = 200 * np.exp(-q / 3.0) + 30
    frames = rng.poisson(smooth, (2, *q.shape)).astype(np.float32)
    segs = Segments(ring)
    residual = frames - radial_background(frames, segs)
    # per ring, the residual's median is 0 and the noise is the Poisson noise
    prof = radial_profile(residual, segs)
    assert np.nanmax(np.abs(prof)) <= 0.5
    resid_clip = frames - radial_background(frames, segs, statistic="clipped_mean")
    assert abs(float(np.mean(resid_clip))) < 0.2
    assert np.std(residual) < 1.2 * np.sqrt(smooth.mean())


def test_radial_background_ignores_masked_pixels():
    q = flat_panel((60, 60), (30.0, 30.0))
    ring, _ = ring_index(q, 20)
    frame = (10 + q).astype(np.float32)
    valid = np.ones(q.shape, bool)
    valid[::7, ::5] = False
    dirty = frame.copy()
    dirty[~valid] = 1e6
    clean_bg = radial_background(frame[None], ring, valid=valid)
    dirty_bg = radial_background(dirty[None], ring, valid=valid)
    np.testing.assert_allclose(dirty_bg, clean_bg)
    assert np.isnan(radial_background(frame, np.full(q.shape, -1))).all()  # no ring: unknown


def test_radial_rejects_unknown_statistic():
    with pytest.raises(ValueError, match="valid: 'median'"):
        radial_profile(np.zeros((1, 2, 2), np.float32), np.zeros((2, 2), int), statistic="mode")


def test_radial_ring_means_agree_with_pyfai():
    pytest.importorskip("pyFAI")
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    shape, centre = (300, 320), (140.3, 170.7)
    q = flat_panel(shape, centre)
    rng = np.random.default_rng(4)
    image = rng.poisson(300 * np.exp(-q / 2.0) + 50).astype(np.float32)
    n_bins, q_lo, q_hi = 80, 0.05, 2.0
    ring, edges = ring_index(q, n_bins, q_lo, q_hi)
    ours = radial_profile(image, ring, statistic="mean")

    detector = Detector(pixel1=PIXEL_M, pixel2=PIXEL_M, max_shape=shape)
    ai = AzimuthalIntegrator(
        dist=DIST_M,
        poni1=centre[0] * PIXEL_M,
        poni2=centre[1] * PIXEL_M,
        detector=detector,
        wavelength=WAVELENGTH_M,
    )
    two_pi = 2 * np.pi  # pyFAI's q is 4 pi sin(theta) / lambda; ours has no 2 pi
    res = ai.integrate1d(
        image,
        n_bins,
        unit="q_nm^-1",
        radial_range=(q_lo * two_pi, q_hi * two_pi),
        method=("no", "histogram", "cython"),
        correctSolidAngle=False,
        polarization_factor=None,
    )
    np.testing.assert_allclose(res.radial / two_pi, (edges[:-1] + edges[1:]) / 2, rtol=1e-5)
    # rings whose whole circle lies on the detector (away from its edge)
    r_edge_px = min(centre[0], centre[1], shape[0] - centre[0], shape[1] - centre[1]) - 1
    q_edge = float(flat_panel((1, 1), (0.0, -r_edge_px + 0.5))[0, 0])
    inside = (edges[1:] < q_edge) & (np.bincount(ring[ring >= 0], minlength=n_bins) >= 20)
    assert inside.sum() >= 20
    np.testing.assert_allclose(ours[inside], res.intensity[inside], rtol=0.01)


# --------------------------------------------------------------------------- local


@pytest.mark.parametrize("bin_px", [1, 3])
def test_local_filter_never_mixes_panels(bin_px):
    idx = two_panels()
    frame = np.where(idx == 0, 5.0, np.where(idx == 1, 105.0, np.nan)).astype(np.float32)
    bg = local_background(frame[None], idx, size_px=9, bin_px=bin_px)
    assert bg.dtype == np.float32
    np.testing.assert_array_equal(bg[0][idx == 0], 5.0)
    np.testing.assert_array_equal(bg[0][idx == 1], 105.0)
    assert np.isnan(bg[0][idx < 0]).all()


def test_local_exact_path_is_a_median_filter_per_panel():
    idx = two_panels((30, 35))
    rng = np.random.default_rng(5)
    frame = rng.normal(size=idx.shape).astype(np.float32)
    bg = local_background(frame, idx, size_px=7, bin_px=1)
    for r in panel_rectangles(idx):
        part = frame[r.ss0 : r.ss1, r.fs0 : r.fs1]
        want = ndimage.median_filter(part, size=7, mode="nearest")
        np.testing.assert_allclose(bg[r.ss0 : r.ss1, r.fs0 : r.fs1], want)


@pytest.mark.parametrize("bin_px", [1, 3])
def test_local_background_follows_smooth_slopes_and_ignores_masked(bin_px):
    idx = two_panels((45, 60))
    rows, cols = np.mgrid[0 : idx.shape[0], 0 : idx.shape[1]]
    smooth = (20 + 0.3 * rows + 0.2 * cols).astype(np.float32)
    rng = np.random.default_rng(6)
    frames = np.stack([smooth, 3 * smooth]) + rng.normal(0, 0.5, (2, *idx.shape)).astype(np.float32)
    valid = idx >= 0
    valid[10:14, 10:14] = False
    frames[:, 10:14, 10:14] = 1e5  # masked junk does not vote
    bg = local_background(frames, idx, valid=valid, size_px=9, bin_px=bin_px)
    inner = valid.copy()
    inner[:, :6] = inner[:, -6:] = False
    inner[:6] = inner[-6:] = False
    err = (bg - np.stack([smooth, 3 * smooth]))[:, inner]
    assert np.abs(err).max() < 1.5 and abs(float(err.mean())) < 0.2


def test_local_percentile_and_arguments():
    idx = two_panels((20, 20))
    frame = np.where(idx >= 0, 1.0, 0.0).astype(np.float32)
    frame[::2, :] += 10.0
    hi = local_background(frame, idx, size_px=5, statistic="percentile", percentile=90, bin_px=1)
    lo = local_background(frame, idx, size_px=5, statistic="percentile", percentile=10, bin_px=1)
    assert np.nanmin(hi[idx >= 0]) == 11.0 and np.nanmax(lo[idx >= 0]) == 1.0
    with pytest.raises(ValueError, match="percentile"):
        local_background(frame, idx, statistic="percentile", percentile=120)
    with pytest.raises(ValueError, match="valid: 'median', 'percentile'"):
        local_background(frame, idx, statistic="mean")


def test_panel_rectangles():
    idx = two_panels((3, 4))
    rects = panel_rectangles(idx)
    assert [(r.panel, r.ss0, r.ss1, r.fs0, r.fs1) for r in rects] == [
        (0, 0, 3, 0, 4),
        (1, 0, 3, 8, 12),
    ]
    idx[0, 0] = 1
    with pytest.raises(ValueError, match="rectangle"):
        panel_rectangles(idx)


# --------------------------------------------------------------------------- Bragg peaks


def test_bragg_mask_finds_injected_peaks_only():
    q = flat_panel()
    ring, _ = ring_index(q, 40)
    rng = np.random.default_rng(7)
    smooth = 100 * np.exp(-q / 2.0) + 20
    frame = rng.poisson(smooth).astype(np.float32)
    peaks = [(20, 30), (60, 90), (100, 20)]
    for r, c in peaks:
        frame[r, c] += 400
    residual = frame - radial_background(frame, ring)
    found = bragg_mask(residual, ring, k_sigma=6.0, grow_px=0)
    assert {tuple(p) for p in np.argwhere(found)} == set(peaks)
    grown = bragg_mask(residual, ring, k_sigma=6.0, grow_px=1)
    assert grown.sum() == 27


def test_bragg_min_excess_spares_weak_speckles():
    labels = np.zeros((40, 40), int)
    frame = np.zeros((1, 40, 40), np.float32)
    frame[0, ::4, ::4] = 1.0  # sparse photons: the noise level is small
    frame[0, 10, 10] = 3.0  # a weak speckle
    frame[0, 30, 30] = 50.0  # a Bragg peak
    weak = bragg_mask(frame, labels, k_sigma=5.0, grow_px=0)[0]
    assert weak[10, 10] and weak[30, 30]
    strict = bragg_mask(frame, labels, k_sigma=5.0, grow_px=0, min_excess=5.0)[0]
    assert not strict[10, 10] and strict[30, 30] and strict.sum() == 1


def test_segments_subsample_keeps_small_segments_whole():
    labels = np.zeros((40, 50), int)
    labels[:2, :5] = 1  # a 10-pixel segment
    segs = Segments(labels)
    sub = segs.subsample(4, keep_below=64)
    assert sub.sizes[1] == 10 and sub.sizes[0] == -(-segs.sizes[0] // 4)
    assert segs.subsample(4, keep_below=64) is sub and segs.subsample(1) is segs


def test_grow_mask_stays_inside_panels():
    idx = np.zeros((6, 8), np.int16)
    idx[:, 4:] = 1
    mask = np.zeros((1, 6, 8), bool)
    mask[0, 2, 3] = True  # on panel 0, next to panel 1
    grown = grow_mask(mask, panel_index=idx, grow_px=1)[0]
    assert grown[1:4, 2:4].all() and not grown[:, 4:].any()
    assert grow_mask(mask, grow_px=1)[0, 1:4, 4].all()


# --------------------------------------------------------------------------- normalise


def test_normalise_is_scale_and_shift_invariant():
    rng = np.random.default_rng(8)
    r = rng.standard_t(3, (2, 40, 50)).astype(np.float32)
    valid = rng.random((40, 50)) > 0.1
    for compression in ("none", "sqrt", "log"):
        z = normalise(r, valid=valid, compression=compression)
        z2 = normalise(7.5 * r + 3.0, valid=valid, compression=compression)
        assert z.dtype == np.float32
        np.testing.assert_allclose(z, z2, atol=1e-5)
        limit = normalised_limit(compression=compression, clip_sigma=5.0)
        assert np.abs(z).max() <= limit + 1e-6
        assert (z[:, ~valid] == 0).all()


def test_normalise_centre_and_scale():
    rng = np.random.default_rng(9)
    r = rng.normal(4.0, 2.0, (1, 200, 200)).astype(np.float32)
    centre, scale = robust_scale(r)
    assert abs(centre[0] - 4.0) < 0.05 and abs(scale[0] - 2.0) < 0.05
    z = normalise(r, clip_sigma=3.0)
    assert abs(float(np.median(z))) < 0.01 and np.abs(z).max() == pytest.approx(3.0)
    sparse = np.zeros((1, 50, 50), np.float32)
    sparse[0, ::10, ::10] = 1.0  # photon counting: MAD is 0, the spread is not
    assert robust_scale(sparse)[1][0] > 0
    const = np.full((1, 4, 4), 3.0, np.float32)
    np.testing.assert_array_equal(normalise(const), 0.0)
    with pytest.raises(ValueError, match="compression"):
        normalise(r, compression="cube")


# --------------------------------------------------------------------------- CNN images


def test_cnn_images_block_mean_and_range():
    shape = (448, 448)
    rng = np.random.default_rng(10)
    values = rng.uniform(-5, 5, (2, *shape)).astype(np.float32)
    images = cnn_images(values, pixmap=identity_map(shape), limit=5.0)
    assert images.shape == (2, 3, 224, 224) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(images[:, 0], images[:, 2])
    block = values.reshape(2, 224, 2, 224, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(images[:, 0], (block / 5 + 1) / 2, atol=1e-5)


def test_cnn_images_mask_gaps_and_aspect():
    shape = (300, 150)  # tall: centred in a square canvas, sides neutral
    values = np.full((1, *shape), 2.0, np.float32)
    pm = identity_map(shape)
    valid = np.ones(shape, bool)
    valid[:100] = False
    values[0, :100] = -1e6  # masked values never leak
    img = cnn_images(values, pixmap=pm, valid=valid, size=100, limit=4.0)[0, 0]
    assert img.shape == (100, 100)
    np.testing.assert_allclose(img[50:, 40:60], 0.75, atol=1e-6)  # (2 / 4 + 1) / 2
    np.testing.assert_array_equal(img[:, :20], 0.5)  # outside the detector: neutral
    np.testing.assert_array_equal(img[:30, 40:60], 0.5)  # masked: neutral
    # unmapped slab pixels (rows == -1) are ignored
    rows = pm.rows.copy()
    rows[:, :10] = -1
    other = cnn_images(values, pixmap=Map(rows, pm.cols, shape), valid=valid, size=100, limit=4.0)
    assert other.shape == (1, 3, 100, 100)
    with pytest.raises(ValueError, match="pixel map is for slab"):
        cnn_images(values[:, :10], pixmap=pm)


def test_cnn_images_with_real_geometry_pixel_map():
    from hpcdiff.geometry import DetectorModel, small_geometry

    model = DetectorModel.build(small_geometry(), photon_energy_ev=9500.0)
    pm = model.pixel_map()
    values = np.zeros((1, *model.slab_shape), np.float32)
    values[0, model.panel_index == 0] = 3.0
    img = cnn_images(values, pixmap=pm, limit=3.0, size=64)
    assert img.shape == (1, 3, 64, 64)
    assert img.max() == pytest.approx(1.0) and img.min() == pytest.approx(0.5)
    # the image covers the panel's share of the assembled area
    assembled = pm.assemble(values)[0]
    frac_image = (img[0, 0] > 0.75).mean()
    frac_assembled = (assembled == 3.0).sum() / max(assembled.shape) ** 2
    assert abs(frac_image - frac_assembled) < 0.05


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_cupy_matches_numpy():
    cupy = pytest.importorskip("cupy")
    if not gpu_available():
        pytest.skip("no CUDA device")
    q = flat_panel()
    ring, _ = ring_index(q, 40)
    idx = np.zeros(q.shape, np.int16)
    idx[:, 65:] = 1
    rng = np.random.default_rng(11)
    frames = rng.poisson(100 * np.exp(-q / 2) + 20, (2, *q.shape)).astype(np.float32)
    d = cupy.asarray(frames)
    segs = Segments(ring)
    for stat in ("median", "clipped_mean"):
        cpu = radial_background(frames, segs, statistic=stat)
        gpu = radial_background(d, segs, statistic=stat)
        np.testing.assert_allclose(gpu.get(), cpu, rtol=1e-5, equal_nan=True)
    for bin_px in (1, 3):
        cpu = local_background(frames, idx, size_px=7, bin_px=bin_px)
        gpu = local_background(d, idx, size_px=7, bin_px=bin_px)
        np.testing.assert_allclose(gpu.get(), cpu, rtol=1e-4, atol=1e-3)
    resid = frames - radial_background(frames, segs)
    np.testing.assert_array_equal(
        bragg_mask(cupy.asarray(resid), segs, panel_index=cupy.asarray(idx)).get(),
        bragg_mask(resid, segs, panel_index=idx),
    )
    z = normalise(resid)
    np.testing.assert_allclose(normalise(cupy.asarray(resid)).get(), z, atol=1e-5)
    img = cnn_images(z, pixmap=identity_map(q.shape), limit=5.0)
    np.testing.assert_allclose(
        cnn_images(cupy.asarray(z), pixmap=identity_map(q.shape), limit=5.0).get(), img, atol=1e-5
    )

"""The standard preprocessing: noise units that hold whatever the detector, and q-space images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hpcdiff.background.standard import (
    gaussian_matrix,
    guard_divisor,
    noise_residual,
    noise_scale,
    qspace_matrix,
)
from hpcdiff.config import BackgroundConfig, CorrectionsConfig, parse_job
from hpcdiff.errors import ConfigError
from hpcdiff.geometry import DetectorModel, small_geometry
from hpcdiff.preprocess import Preprocessor

ENERGY_EV = 9500.0
READ_NOISE = 0.12
NO_CM = CorrectionsConfig(common_mode=False)
STANDARD = BackgroundConfig(preprocessing="standard", read_noise_photons=READ_NOISE)


@pytest.fixture(scope="module")
def model() -> DetectorModel:
    return DetectorModel.build(small_geometry(), photon_energy_ev=ENERGY_EV)


def _adu_per_photon(model: DetectorModel, energy: float = ENERGY_EV) -> float:
    return float(model.geom.panels[0].adu_per_ev) * energy


def background_shape(model: DetectorModel, kind: str) -> np.ndarray:
    """Expected photons per pixel (mean ~1) of a few background families, polarised."""
    q = np.nan_to_num(model.q_abs)
    pol = np.nan_to_num(model.polarisation, nan=1.0)
    if kind == "flat":
        shape = np.ones_like(q)
    elif kind == "falling":
        shape = 0.3 + 2.0 * np.exp(-q / 0.6)
    elif kind == "water ring":
        shape = 0.4 + np.exp(-0.5 * ((q - 1.5) / 0.25) ** 2)
    else:
        raise ValueError(kind)
    return shape * pol


def noise_frames(model, *, n, level, kind, gain=1.0, seed=0, energy=ENERGY_EV):
    """ADU frames: Poisson(level x shape) photons + Gaussian read noise, times the gain."""
    rng = np.random.default_rng(seed)
    expected = level * background_shape(model, kind)
    ph = rng.poisson(expected, (n, *model.slab_shape)).astype(np.float32)
    ph += rng.normal(0, READ_NOISE, ph.shape).astype(np.float32)
    return ph * np.float32(_adu_per_photon(model, energy) * gain)


def standard(model, cfg=STANDARD, corrections=NO_CM, *, gain=1.0, **kw) -> Preprocessor:
    adu_per_ev = float(model.geom.panels[0].adu_per_ev) * gain
    return Preprocessor(model, cfg, corrections, adu_per_ev=adu_per_ev, **kw)


# --------------------------------------------------------------------------- noise units


@pytest.mark.parametrize(
    ("level", "kind", "gain"),
    [
        (0.2, "flat", 1.0),  # a few photons per ten pixels: read noise matters
        (3.0, "falling", 2.0),
        (40.0, "water ring", 0.5),
        (400.0, "falling", 7.0),
    ],
)
def test_pure_noise_residual_has_zero_mean_unit_variance(model, level, kind, gain):
    frames = noise_frames(model, n=4, level=level, kind=kind, gain=gain, seed=int(level))
    res = standard(model, gain=gain).residual(frames, photon_energy_ev=ENERGY_EV)
    z = res.normalised[res.valid]
    assert res.valid.mean() > 0.9  # Bragg masking of pure noise takes almost nothing
    assert abs(float(z.mean())) < 0.03
    assert float(z.var()) == pytest.approx(1.0, abs=0.05)
    # the background is the expected level, in photons, whatever the gain
    expected = level * background_shape(model, kind)
    ratio = np.nanmedian(
        res.background[res.valid] / np.broadcast_to(expected, frames.shape)[res.valid]
    )
    assert ratio == pytest.approx(1.0, abs=0.05)


def test_residual_is_noise_units_and_guard_is_idle_on_pure_noise(model):
    frames = noise_frames(model, n=2, level=5.0, kind="falling")
    res = standard(model).residual(frames, photon_energy_ev=ENERGY_EV)
    direct = noise_residual(res.corrected, background=res.background, read_noise_photons=READ_NOISE)
    ok = res.valid
    np.testing.assert_allclose(res.normalised[ok], np.clip(direct[ok], -5, 5), rtol=1e-5, atol=1e-5)


def test_guard_rescales_only_outside_its_band(model):
    # the gain told to the preprocessor is 6x too small: photons come out 6x too many,
    # so the noise scale is ~sqrt(6) = 2.45 > guard 2: divided back to the band edge
    frames = noise_frames(model, n=2, level=20.0, kind="flat")
    wrong = standard(model, gain=1 / 6).residual(frames, photon_energy_ev=ENERGY_EV)
    s = float(wrong.normalised[wrong.valid].std())
    assert s == pytest.approx(2.0, abs=0.1)
    unguarded = standard(model, dataclasses.replace(STANDARD, standard_guard=100.0), gain=1 / 6)
    z = unguarded.residual(frames, photon_energy_ev=ENERGY_EV)
    assert float(z.normalised[z.valid].std()) == pytest.approx(np.sqrt(6), rel=0.06)
    np.testing.assert_allclose(guard_divisor(np.array([0.1, 0.7, 1.0, 1.9, 6.0]), guard=2.0),
                               [0.2, 1.0, 1.0, 1.0, 3.0])  # fmt: skip


def test_noise_scale_is_a_moment_estimate_at_low_counts():
    rng = np.random.default_rng(0)
    b = 0.1
    counts = rng.poisson(b, (2, 200_000)).astype(np.float32)
    z = noise_residual(counts, background=np.full_like(counts, b), read_noise_photons=0.0)
    ok = np.ones(z.shape, bool)
    # the MAD is 0 here (most pixels read 0); the clipped moments say ~1 (a little less:
    # the Poisson tail beyond 4 sigma is clipped), well inside the guard band [0.5, 2]
    assert np.median(np.abs(z - np.median(z, axis=1, keepdims=True)), axis=1).max() < 0.35
    assert noise_scale(z, ok) == pytest.approx([1.0, 1.0], abs=0.15)


def test_gain_and_intensity_leave_the_image_unchanged(model):
    rng = np.random.default_rng(5)
    expected = 4.0 * background_shape(model, "falling")
    ph = rng.poisson(expected, (2, *model.slab_shape)).astype(np.float32)
    ph += rng.normal(0, READ_NOISE, ph.shape).astype(np.float32)
    unit = np.float32(_adu_per_photon(model))
    once = standard(model)(ph * unit, photon_energy_ev=ENERGY_EV)
    twice = standard(model, gain=2.0)(ph * unit * 2, photon_energy_ev=ENERGY_EV)
    np.testing.assert_allclose(once, twice, atol=2e-5)
    # shot intensity x3 (another noise draw, another background family): same statistics
    a = standard(model)(
        noise_frames(model, n=2, level=4.0, kind="falling"), photon_energy_ev=ENERGY_EV
    )
    b = standard(model)(noise_frames(model, n=2, level=12.0, kind="water ring", seed=9),
                        photon_energy_ev=ENERGY_EV)  # fmt: skip
    cov = standard(model).qmatrix @ np.asarray(model.valid, np.float32).ravel() > 0
    va, vb = a[:, 0].reshape(2, -1)[:, cov], b[:, 0].reshape(2, -1)[:, cov]
    assert abs(va.mean() - 0.5) < 0.005 and abs(vb.mean() - 0.5) < 0.005
    assert va.std() == pytest.approx(vb.std(), rel=0.1)


# --------------------------------------------------------------------------- q space


def crystal_photons(model: DetectorModel, *, level=20.0, contrast=0.3) -> np.ndarray:
    """Noise-free photons of one 'crystal': background x (1 + contrast f(q)), f a smooth
    random field of the scattering vector (speckles ~0.3 nm^-1, varying slowly along q_z)."""
    rng = np.random.default_rng(42)
    k = rng.normal(0, 2.5, (24, 3)) * np.array([1.0, 1.0, 0.3])
    phase = rng.uniform(0, 2 * np.pi, 24)
    q = np.nan_to_num(model.q_vectors)
    f = np.cos(q @ k.T * 2 * np.pi / 2.5 + phase).sum(axis=-1) / np.sqrt(12)
    bg = level * background_shape(model, "falling")
    return (bg * (1 + contrast * f))[None].astype(np.float32)


@pytest.mark.parametrize(("clen2", "energy2"), [(0.13, ENERGY_EV), (0.1, 12000.0), (0.12, 8000.0)])
def test_same_crystal_at_two_distances_and_energies_agrees_in_q(clen2, energy2):
    cfg = dataclasses.replace(STANDARD, image_size_px=64, q_max_per_nm=2.0)
    images, covered = [], []
    for clen, energy in ((0.1, ENERGY_EV), (clen2, energy2)):
        m = DetectorModel.build(small_geometry(clen_m=clen), photon_energy_ev=energy)
        ph = crystal_photons(m)
        pre = standard(m, cfg)
        images.append(
            pre(ph * np.float32(_adu_per_photon(m, energy)), photon_energy_ev=energy)[0, 0]
        )
        covered.append(
            (pre.qmatrix @ np.asarray(m.valid, np.float32).ravel()).reshape(64, 64) > 0.5
        )
    both = covered[0] & covered[1]
    assert both.sum() > 300
    a, b = images[0][both] - 0.5, images[1][both] - 0.5
    assert np.corrcoef(a, b)[0, 1] > 0.9
    # the seed's detector images do not agree pixel by pixel: that is what standard fixes
    if clen2 != 0.1:
        seed = []
        for clen, energy in ((0.1, ENERGY_EV), (clen2, energy2)):
            m = DetectorModel.build(small_geometry(clen_m=clen), photon_energy_ev=energy)
            ph = crystal_photons(m) * np.float32(_adu_per_photon(m, energy))
            pre = Preprocessor(m, BackgroundConfig(preprocessing="seed", image_size_px=64), NO_CM)
            seed.append(pre(ph, photon_energy_ev=energy)[0, 0])
        assert np.corrcoef(seed[0][both] - 0.5, seed[1][both] - 0.5)[0, 1] < 0.6


@pytest.mark.parametrize("smooth", [0.0, 0.2])
def test_pure_noise_images_are_alike_on_any_detector(smooth):
    """Cells of unit noise whatever the pixels per cell (distance, pixel size); the mean
    cell of the alternative statistic is noisier where cells hold fewer pixels.  (Cells
    wider than pixels here: where pixels are split over several cells, neighbouring cells
    share noise and the smoothed significance is no longer of unit variance.)"""
    stats: dict[str, list[float]] = {"significance": [], "mean": []}
    for clen, pixel_m in ((0.08, 500e-6), (0.16, 250e-6)):
        geom = small_geometry(clen_m=clen, pixel_size_m=pixel_m, panel_shape=(48, 64))
        m = DetectorModel.build(geom, photon_energy_ev=ENERGY_EV)
        frames = noise_frames(m, n=3, level=2.0, kind="falling")
        for cell in stats:
            cfg = dataclasses.replace(
                STANDARD, image_size_px=24, q_max_per_nm=1.5, q_cell=cell, q_smooth_per_nm=smooth
            )
            pre = standard(m, cfg)
            images = pre(frames, photon_energy_ev=ENERGY_EV)[:, 0]
            cov = (pre.qmatrix @ np.asarray(m.valid, np.float32).ravel()).reshape(24, 24) > 0.5
            stats[cell].append(float(images[:, cov].std()))
    sig, mean = stats["significance"], stats["mean"]
    # smoothed cells are few independent samples: a looser bound
    assert sig[0] == pytest.approx(sig[1], rel=0.1 if smooth == 0 else 0.2)
    if smooth == 0:
        assert sig[0] == pytest.approx(1 / (2 * 5.0), rel=0.1)  # unit noise, limit 5
        assert mean[1] < 0.6 * mean[0]  # 4x the pixels per cell: half the noise


def test_qspace_matrix_places_pixels_by_their_q(model):
    size, q_max = 32, 2.0
    m = qspace_matrix(model, size=size, q_max_per_nm=q_max)
    assert m.shape == (size * size, model.slab_shape[0] * model.slab_shape[1])
    assert m is qspace_matrix(model, size=size, q_max_per_nm=q_max)  # built once
    weight = np.asarray(m.sum(axis=0)).ravel().reshape(model.slab_shape)
    q = model.q_vectors
    inside = model.valid & (np.abs(q[..., 0]) < q_max * 0.95) & (np.abs(q[..., 1]) < q_max * 0.95)
    np.testing.assert_allclose(weight[inside], 1.0, atol=1e-5)  # each pixel's area once
    assert (weight[model.panel_index < 0] == 0).all()
    # the cell a pixel lands in holds its q: x to the right, y up
    j = int(np.flatnonzero(inside.ravel())[100])
    cell = int(m[:, j].toarray().ravel().argmax())
    row, col = divmod(cell, size)
    h = 2 * q_max / size
    qx, qy = q.reshape(-1, 3)[j, :2]
    assert -q_max + col * h - h <= qx <= -q_max + (col + 1) * h + h
    assert q_max - (row + 1) * h - h <= qy <= q_max - row * h + h


def test_gaussian_matrix_rows_are_normalised():
    g = gaussian_matrix(16, 1.5)
    np.testing.assert_allclose(g.sum(axis=1), 1.0, rtol=1e-6)
    assert g.dtype == np.float32 and g[8, 8] == g[8].max() and g[8, 0] < 1e-3


# --------------------------------------------------------------------------- both paths


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"compression": "sqrt", "q_smooth_per_nm": 0.08, "image_size_px": 96},
        {"mask_bragg": False, "q_max_per_nm": 2.5},
    ],
)
@pytest.mark.parametrize("convert_to_photons", [True, False])
@pytest.mark.parametrize("cell", ["significance", "mean"])
def test_ring_order_chain_equals_slab_path(model, changes, convert_to_photons, cell):
    cfg = dataclasses.replace(STANDARD, q_cell=cell, **changes)
    corr = CorrectionsConfig(convert_to_photons=convert_to_photons)
    frames = noise_frames(model, n=3, level=3.0, kind="water ring")
    frames[1] += crystal_photons(model)[0] * np.float32(_adu_per_photon(model))
    frames[2, 10:13, 20:23] += np.float32(500 * _adu_per_photon(model))  # a Bragg peak
    pre = standard(model, cfg, corr, threads=2)
    fast = pre(frames, photon_energy_ev=ENERGY_EV)
    slow = pre.images(pre.residual(frames, photon_energy_ev=ENERGY_EV))
    size = cfg.image_size_px
    assert fast.shape == (3, 3, size, size) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, slow, atol=2e-5)
    assert fast.min() >= 0 and fast.max() <= 1


def test_bragg_peaks_are_masked_and_empty_cells_neutral(model):
    frames = noise_frames(model, n=1, level=3.0, kind="flat")
    frames[0, 10:13, 20:23] += np.float32(500 * _adu_per_photon(model))
    pre = standard(model)
    res = pre.residual(frames, photon_energy_ev=ENERGY_EV)
    assert res.bragg[0, 10:13, 20:23].all() and not res.valid[0, 10:13, 20:23].any()
    image = pre(frames, photon_energy_ev=ENERGY_EV)[0, 0]
    empty = (pre.qmatrix @ np.asarray(model.valid, np.float32).ravel()).reshape(224, 224) == 0
    assert empty.any() and (image[empty] == 0.5).all()


def test_standard_is_the_default_and_seed_unchanged_by_the_new_keys(model):
    assert BackgroundConfig().preprocessing == "standard"
    frames = noise_frames(model, n=2, level=3.0, kind="falling")
    seed = BackgroundConfig(preprocessing="seed")
    a = Preprocessor(model, seed, NO_CM)(frames, photon_energy_ev=ENERGY_EV)
    other = BackgroundConfig(
        preprocessing="seed", q_max_per_nm=1.0, read_noise_photons=3.0, q_smooth_per_nm=0.5
    )
    b = Preprocessor(model, other, NO_CM)(frames, photon_energy_ev=ENERGY_EV)
    np.testing.assert_array_equal(a, b)


def test_config_keys_are_validated():
    job = parse_job({"background": {"preprocessing": "standard", "q_max_per_nm": 3.0}})
    assert job.background.preprocessing == "standard" and job.background.q_max_per_nm == 3.0
    with pytest.raises(ConfigError, match="preprocessing"):
        parse_job({"background": {"preprocessing": "fancy"}})
    with pytest.raises(ConfigError, match="standard_guard must be >= 1"):
        parse_job({"background": {"standard_guard": 0.5}})
    with pytest.raises(ConfigError, match="q_max_per_nm"):
        parse_job({"background": {"q_max_per_nm": 0.0}})


def test_feature_files_without_the_key_are_seed_features():
    from hpcdiff.io.featurefile import FeatureMeta

    old = FeatureMeta("gap", 512, {"sha256": "x"}, {"method": "radial"})  # before the key
    seed = FeatureMeta("gap", 512, {"sha256": "x"}, {"method": "radial", "preprocessing": "seed"})
    new = FeatureMeta("gap", 512, {"sha256": "x"},
                      {"method": "radial", "preprocessing": "standard"})  # fmt: skip
    assert old.differences(seed) == [] and seed.differences(old) == []
    assert old.differences(new) == ["background.preprocessing 'seed' != 'standard'"]


@pytest.mark.gpu
def test_cupy_matches_numpy(model):
    cupy = pytest.importorskip("cupy")
    from hpcdiff.backend import gpu_available

    if not gpu_available():
        pytest.skip("no CUDA device")
    cfg = dataclasses.replace(STANDARD, q_smooth_per_nm=0.08, compression="sqrt")
    pre = standard(model, cfg, CorrectionsConfig())
    frames = noise_frames(model, n=2, level=3.0, kind="water ring")
    frames[1] += crystal_photons(model)[0] * np.float32(_adu_per_photon(model))
    cpu = pre(frames, photon_energy_ev=ENERGY_EV)
    gpu = pre(cupy.asarray(frames), photon_energy_ev=ENERGY_EV)
    assert isinstance(gpu, cupy.ndarray)
    np.testing.assert_allclose(gpu.get(), cpu, atol=1e-4)

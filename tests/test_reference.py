"""Reference classifiers: radial-profile features, radial and combined models, strength curves."""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff.geometry import DetectorModel, small_geometry
from hpcdiff.learn import stratified_split
from hpcdiff.reference import (
    CombinedClassifier,
    RadialProfileClassifier,
    RadialProfiler,
    strength_curve,
    water_ring_normalise,
)


@pytest.fixture(scope="module")
def model() -> DetectorModel:
    # 0.06 m: valid pixels cover |q| = 0.8 .. 4.6 nm^-1, the water ring (3.1 nm^-1) included
    return DetectorModel.build(small_geometry(clen_m=0.06), photon_energy_ev=9500.0)


@pytest.fixture(scope="module")
def profiler(model: DetectorModel) -> RadialProfiler:
    return RadialProfiler.from_model(model, n_bins=32)


def _frames(
    model: DetectorModel, n: int, *, diffuse: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Poisson frames (photons): water ring + air of random strength, + diffuse rising with |q|."""
    q = np.nan_to_num(model.q_abs)
    ring = np.exp(-0.5 * ((q - 3.1) / 0.33) ** 2) + 0.15
    air = np.exp(-q / 0.8)
    weight = 1.0 - np.exp(-((2 * np.pi * q * 0.05) ** 2))
    jet = np.exp(0.35 * rng.standard_normal(n))[:, None, None]
    air_level = np.exp(0.5 * rng.standard_normal(n))[:, None, None]
    expected = 40.0 * (jet * (ring + 0.15 * diffuse[:, None, None] * weight) + air_level * air)
    return rng.poisson(expected).astype(np.float32)


# --------------------------------------------------------------------------- features


def test_features_shapes_and_rings(model: DetectorModel, profiler: RadialProfiler) -> None:
    assert 0 < profiler.n_rings <= 32
    assert np.all(np.diff(profiler.q_centres) > 0)
    assert profiler.ring_index.shape == model.slab_shape
    assert profiler.ring_index.min() == -1 or np.all(model.valid)
    assert profiler.ring_index.max() == profiler.n_rings - 1
    frames = _frames(model, 3, diffuse=np.zeros(3), rng=np.random.default_rng(0))
    feats = profiler(frames)
    assert feats.shape == (3, profiler.n_rings) and feats.dtype == np.float64
    one = profiler(frames[1])
    assert one.shape == (profiler.n_rings,)
    np.testing.assert_allclose(one, feats[1])
    lo, hi = profiler.water_band_per_nm
    band = (profiler.q_centres >= lo) & (profiler.q_centres < hi)
    np.testing.assert_allclose(feats[:, band].mean(axis=1), 1.0, rtol=1e-12)


def test_scaled_frame_has_the_same_features(model: DetectorModel, profiler: RadialProfiler) -> None:
    frames = _frames(model, 4, diffuse=np.ones(4), rng=np.random.default_rng(1))
    scale = np.array([1.0, 3.7, 0.21, 250.0], dtype=np.float32)[:, None, None]
    a = profiler(frames)
    b = profiler(frames * scale)
    np.testing.assert_allclose(b, a, rtol=1e-5)
    raw_a, raw_b = profiler.profiles(frames), profiler.profiles(frames * scale)
    assert not np.allclose(raw_a[1:], raw_b[1:])  # the raw profiles do scale


def test_masked_pixels_are_excluded(model: DetectorModel, profiler: RadialProfiler) -> None:
    frames = _frames(model, 2, diffuse=np.zeros(2), rng=np.random.default_rng(2))
    hot = np.zeros(model.slab_shape, bool)
    hot[::7, ::5] = True
    spoiled = frames.copy()
    spoiled[:, hot] = 1e6
    valid = ~hot
    np.testing.assert_allclose(profiler(spoiled, valid=valid), profiler(frames, valid=valid))
    assert not np.allclose(profiler(spoiled), profiler(frames))
    masked = RadialProfiler.from_model(model, n_bins=32, bad_pixel_mask=hot)
    assert np.all(masked.ring_index[hot] == -1)
    np.testing.assert_allclose(masked(spoiled), profiler(frames, valid=valid))


def test_water_ring_normalise_edge_cases() -> None:
    q = np.linspace(1.0, 4.0, 7)
    prof = np.array([np.arange(1.0, 8.0), np.zeros(7)])
    out = water_ring_normalise(prof, q, band_per_nm=(2.8, 3.4))
    band = (q >= 2.8) & (q < 3.4)
    assert out[0, band].mean() == pytest.approx(1.0)
    assert np.all(np.isnan(out[1]))  # blank shot: no level to normalise by
    with pytest.raises(ValueError, match=r"water-ring band \[6.0, 7.0\).*1..4"):
        water_ring_normalise(prof, q, band_per_nm=(6.0, 7.0))
    with pytest.raises(ValueError, match="q_centres.size"):
        water_ring_normalise(prof, q[:-1])


def test_profiler_errors(model: DetectorModel, profiler: RadialProfiler) -> None:
    with pytest.raises(ValueError, match="water-ring band"):
        RadialProfiler.from_model(model, n_bins=16, water_band_per_nm=(6.0, 7.0))
    with pytest.raises(ValueError, match="ring statistic"):
        RadialProfiler.from_model(model, statistic="mode")
    with pytest.raises(ValueError, match="bad_pixel_mask"):
        RadialProfiler.from_model(model, bad_pixel_mask=np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match=r"slabs of this detector"):
        profiler(np.zeros((2, 10, 10), np.float32))


# --------------------------------------------------------------------------- classifiers


def test_ring_dependent_signal_is_separable(model: DetectorModel, profiler: RadialProfiler) -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(240) < 0.5).astype(np.int64)
    feats = profiler(_frames(model, y.size, diffuse=y.astype(float), rng=rng))
    train, test = stratified_split(y, n_train=120, n_test=120, random_state=0)
    clf = RadialProfileClassifier().fit(feats[train], y[train])
    proba = clf.predict_proba(feats[test])
    assert proba.shape == (test.size, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.mean(clf.predict(feats[test]) == y[test]) > 0.9
    # control: the same frames with labels unrelated to the signal are not separable
    shuffled = rng.permutation(y)
    ctrl = RadialProfileClassifier().fit(feats[train], shuffled[train])
    assert np.mean(ctrl.predict(feats[test]) == shuffled[test]) < 0.75


def test_radial_classifier_imputes_missing_rings() -> None:
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], 50)
    x = rng.normal(size=(100, 6)) + y[:, None] * 2.0
    x[::3, 2] = np.nan
    clf = RadialProfileClassifier().fit(x, y)
    assert np.all(np.isfinite(clf.fill_))
    test = rng.normal(size=(10, 6))
    test[:, 2] = np.nan
    assert np.all(np.isfinite(clf.predict_proba(test)))
    with pytest.raises(ValueError, match="at least two classes"):
        RadialProfileClassifier().fit(x, np.zeros(100, int))
    with pytest.raises(ValueError, match=r"shape \(100,\)"):
        RadialProfileClassifier().fit(x, y[:10])
    with pytest.raises(RuntimeError, match="not fitted"):
        RadialProfileClassifier().predict(x)
    with pytest.raises(ValueError, match=r"\(n, 6\)"):
        clf.predict(x[:, :4])


def _two_block_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Labels that need both blocks: y = [a + b > 0], a in a radial ring, b along a CNN axis."""
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    y = (a + b > 0).astype(np.int64)
    radial = rng.normal(1.0, 0.05, size=(n, 12))
    radial[:, 7] += 0.2 * a
    direction = rng.standard_normal(300)
    direction /= np.linalg.norm(direction)
    cnn = rng.normal(0.0, 0.3, size=(n, 300)) + 3.0 * b[:, None] * direction
    return radial, cnn.astype(np.float32), y


def test_combined_model_uses_both_blocks() -> None:
    from hpcdiff.io.featurefile import FeatureMeta
    from hpcdiff.learn import BINARY_CLASS_NAMES, DiffuseClassifier

    rng = np.random.default_rng(5)
    radial, cnn, y = _two_block_data(600, rng)
    train, test = stratified_split(y, n_train=300, n_test=300, random_state=0)
    comb = CombinedClassifier(n_components=20).fit(radial[train], cnn[train], y[train])
    acc_comb = np.mean(comb.predict(radial[test], cnn[test]) == y[test])
    radial_only = RadialProfileClassifier().fit(radial[train], y[train])
    acc_radial = np.mean(radial_only.predict(radial[test]) == y[test])
    meta = FeatureMeta("gap", cnn.shape[1], {"name": "test"}, {"method": "radial"})
    method = DiffuseClassifier(n_components=20).fit(
        cnn[train], y[train], class_names=BINARY_CLASS_NAMES, feature_meta=meta
    )
    acc_cnn = np.mean(method.predict(cnn[test]) == y[test])
    assert 0.6 < acc_radial < 0.85 and 0.6 < acc_cnn < 0.85  # each block alone: half the story
    assert acc_comb > max(acc_radial, acc_cnn) + 0.1
    w = comb.block_weights()
    assert w["radial"] > 0.25 * w["cnn"] and w["cnn"] > 0.25 * w["radial"]
    assert comb.coef_.shape == (1, 12 + 20)
    assert comb.pca_.components_.shape == (20, 300)


def test_combined_model_checks_its_inputs() -> None:
    rng = np.random.default_rng(6)
    radial, cnn, y = _two_block_data(30, rng)
    comb = CombinedClassifier(n_components=50).fit(radial[:20], cnn[:20], y[:20])
    assert comb.n_components_ == 19  # capped at n_train - 1
    proba = comb.predict_proba(radial[20:], cnn[20:])
    assert proba.shape == (10, 2)
    with pytest.raises(ValueError, match=r"cnn must be a \(20, d\)"):
        CombinedClassifier().fit(radial[:20], cnn[:19], y[:20])
    bad = cnn[:20].copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        CombinedClassifier().fit(radial[:20], bad, y[:20])
    with pytest.raises(RuntimeError, match="not fitted"):
        CombinedClassifier().predict(radial, cnn)
    with pytest.raises(ValueError, match="n_components"):
        CombinedClassifier(n_components=0)


# --------------------------------------------------------------------------- scores


def test_strength_curve_counts_per_bin() -> None:
    strength = np.array([0.0, 0.0, 0.0, 0.0, 0.03, 0.04, 0.05, 0.2, 0.3, 0.6, 0.9])
    y_pred = np.array([0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1])
    curve = strength_curve(y_pred, strength, edges=[0.025, 0.06, 0.25, 0.6])
    np.testing.assert_array_equal(curve.count, [3, 1, 2])  # 0.6 closes the last bin; 0.9 is out
    np.testing.assert_allclose(curve.recall, [2 / 3, 1.0, 1.0])
    assert curve.specificity == pytest.approx(0.75) and curve.n_negative == 4
    np.testing.assert_allclose(curve.centres, np.sqrt([0.025 * 0.06, 0.06 * 0.25, 0.25 * 0.6]))
    assert curve.to_dict()["count"] == [3, 1, 2]
    empty = strength_curve(np.zeros(2, int), np.array([0.0, 0.03]), edges=[0.1, 0.2])
    assert np.isnan(empty.recall[0]) and empty.to_dict()["recall"] == [None]
    with pytest.raises(ValueError, match="increasing positive"):
        strength_curve(y_pred, strength, edges=[0.2, 0.1])

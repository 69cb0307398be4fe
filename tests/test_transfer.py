"""Calibration measures, recalibration and calibrated transfer (hpcdiff.learn.calibration,
hpcdiff.learn.transfer) on small synthetic feature sets."""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff.io.featurefile import FeatureMeta
from hpcdiff.learn import BINARY_CLASS_NAMES, classification_report, format_report
from hpcdiff.learn.calibration import (
    GaussianMixture1D,
    PlattScaling,
    brier_score,
    em_prior_shift,
    expected_calibration_error,
    mixture_recalibrate,
    reliability_curve,
    sigmoid,
)
from hpcdiff.learn.model import DiffuseClassifier
from hpcdiff.learn.transfer import (
    ExperimentStats,
    TransferSettings,
    evaluate_transfer,
    experiment_stats,
    fit_transfer,
    predict_adapted,
)

D = 40


def _experiment(n: int, *, seed: int, gain: float = 1.0, offset: float = 0.0,
                fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Features of one experiment: a class direction in a few columns plus noise, then an
    experiment-wide gain and offset (the domain shift)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < fraction).astype(np.int64)
    x = rng.normal(size=(n, D))
    x[:, :5] += 1.5 * y[:, None]
    x = x * gain
    x[:, :5] += offset  # along the class direction: the score scale moves
    return x.astype(np.float32), y


def _meta() -> FeatureMeta:
    return FeatureMeta("gap", D, {"name": "synthetic"}, {"method": "radial"})


def _fit(x: np.ndarray, y: np.ndarray, **settings: str) -> DiffuseClassifier:
    return fit_transfer(x, y, class_names=BINARY_CLASS_NAMES, feature_meta=_meta(),
                        settings=TransferSettings(**settings), n_components=10)  # type: ignore[arg-type]  # fmt: skip


# --------------------------------------------------------------------------- measures


def test_brier_and_ece_of_perfect_and_constant_scores():
    y = np.array([0, 1, 1, 0, 1])
    assert brier_score(y, y.astype(float)) == 0.0
    assert expected_calibration_error(y, y.astype(float)) == 0.0
    assert brier_score(y, np.full(5, 0.5)) == pytest.approx(0.25)
    # constant 0.5 on 60 % positives: one bin, |0.6 - 0.5|
    assert expected_calibration_error(y, np.full(5, 0.5)) == pytest.approx(0.1)


def test_reliability_curve_of_calibrated_scores_follows_the_diagonal():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(p.size) < p).astype(int)
    curve = reliability_curve(y, p, n_bins=10)
    assert sum(curve["count"]) == p.size
    for m, f in zip(curve["mean_predicted"], curve["fraction_positive"], strict=True):
        assert abs(m - f) < 0.03
    assert expected_calibration_error(y, p) < 0.02
    # p = 1.0 falls in the last bin
    assert reliability_curve(np.array([1]), np.array([1.0]), n_bins=4)["count"] == [0, 0, 0, 1]


def test_binary_report_carries_calibration_and_prints_it():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    rep = classification_report(y, proba.argmax(1), proba, class_names=BINARY_CLASS_NAMES)
    assert rep["calibration"]["brier"] == pytest.approx(np.mean((proba[:, 1] - y) ** 2))
    assert sum(rep["calibration"]["reliability"]["count"]) == 4
    text = format_report(rep)
    assert "Brier score" in text and "ECE" in text and "reliability" in text


# --------------------------------------------------------------------------- recalibration


def test_em_prior_shift_recovers_the_new_class_balance():
    rng = np.random.default_rng(1)
    n, prior = 4000, 0.2
    y = rng.random(n) < prior
    t = rng.normal(np.where(y, 1.0, -1.0), 1.0)
    # exact posteriors under a 50 % training prior: logit = 2 t
    p_train = sigmoid(2 * t)
    p_new, est = em_prior_shift(p_train, train_prior=0.5)
    assert est == pytest.approx(prior, abs=0.03)
    assert brier_score(y.astype(int), p_new) < brier_score(y.astype(int), p_train)


def test_mixture_recalibrates_a_shifted_score_scale_and_keeps_the_ranking():
    rng = np.random.default_rng(2)
    y = rng.random(600) < 0.4
    t = rng.normal(np.where(y, 3.0, -3.0), 1.0) * 0.5 - 6.0  # every score far below 0.5
    assert (sigmoid(t) < 0.5).all()
    p = mixture_recalibrate(t)
    assert np.mean((p > 0.5) == y) > 0.95
    order = np.argsort(t)
    assert np.all(np.diff(p[order]) >= 0)  # monotone: same ROC AUC as t
    gm = GaussianMixture1D.fit(t)
    assert gm.mean[0] < gm.mean[1] and gm.weight[1] == pytest.approx(0.4, abs=0.07)
    # a narrow upper class beside a wide lower one: still monotone (no wide-tail flip)
    t2 = np.concatenate([rng.normal(-2, 3.0, 300), rng.normal(4, 0.3, 100)])
    p2 = mixture_recalibrate(t2)
    o2 = np.argsort(t2)
    assert np.all(np.diff(p2[o2]) >= 0) and p2[o2][0] < 0.01 and p2[o2][-1] > 0.99


def test_platt_scaling_recovers_a_map_and_stays_finite_with_one_class():
    rng = np.random.default_rng(3)
    t = rng.normal(size=5000) * 3
    y = (rng.random(t.size) < sigmoid(0.5 * t - 1.0)).astype(int)
    fit = PlattScaling.fit(t, y, prior_strength=1e-3)
    assert fit.a == pytest.approx(0.5, abs=0.05) and fit.b == pytest.approx(-1.0, abs=0.1)
    one = PlattScaling.fit(t[:20], np.ones(20, int))
    assert np.isfinite([one.a, one.b]).all() and one.b > 0


# --------------------------------------------------------------------------- transfer


def test_experiment_stats_merge_like_mpi_reduce():
    x = np.random.default_rng(4).normal(size=(30, 6))
    whole = ExperimentStats.from_array(x)
    parts = ExperimentStats.from_array(x[:11]) + ExperimentStats.from_array(x[11:])
    buf = ExperimentStats.from_buffer(parts.to_buffer(), 6)
    np.testing.assert_allclose(buf.mean, whole.mean)
    np.testing.assert_allclose(buf.std, x.std(axis=0))
    assert buf.count == 30
    with pytest.raises(ValueError, match="shape"):
        ExperimentStats.from_buffer(np.zeros(5), 6)


@pytest.mark.parametrize("standardise", ["features", "scores"])
def test_standardisation_transfers_the_score_scale(standardise):
    x, y = _experiment(400, seed=5)
    xt, yt = _experiment(400, seed=6, gain=3.0, offset=-8.0)  # same task, shifted experiment
    plain = _fit(x, y)
    adapted = _fit(x, y, standardise=standardise)
    acc_plain = np.mean(plain.predict(xt) == yt)
    acc = np.mean(predict_adapted(adapted, xt).argmax(1) == yt)
    assert acc_plain < 0.75 < 0.85 < acc
    # stats from parts of the experiment (ranks) give the same predictions as the whole
    half = experiment_stats(adapted, xt[:150]) + experiment_stats(adapted, xt[150:])
    from hpcdiff.learn.transfer import adapted_scores

    np.testing.assert_allclose(
        adapted_scores(adapted, xt[:150], stats=half), adapted_scores(adapted, xt)[:150],
        rtol=1e-6, atol=1e-6,
    )  # fmt: skip


def test_transfer_settings_survive_save_and_load(tmp_path):
    x, y = _experiment(200, seed=7)
    model = _fit(x, y, standardise="scores", recalibrate="mixture")
    path = model.save(tmp_path / "m.npz")
    back = DiffuseClassifier.load(path)
    xt, _ = _experiment(120, seed=8, gain=2.0)
    np.testing.assert_allclose(predict_adapted(back, xt), predict_adapted(model, xt))
    with pytest.raises(ValueError, match="standardise must be"):
        TransferSettings(standardise="zscore")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "settings", [{"standardise": "features", "recalibrate": "mixture"},
                 {"standardise": "scores", "recalibrate": "em"},
                 {"standardise": "none", "recalibrate": "mixture_wide"}, {}]
)  # fmt: skip
def test_transfer_calibration_does_not_use_the_test_labels(settings):
    x, y = _experiment(300, seed=9)
    xt, yt = _experiment(200, seed=10, gain=0.5, offset=1.0, fraction=0.3)
    model = _fit(x, y, **settings)
    rep, proba = evaluate_transfer(model, xt, yt)
    shuffled = np.random.default_rng(0).permutation(yt)
    rep2, proba2 = evaluate_transfer(model, xt, shuffled)
    np.testing.assert_array_equal(proba, proba2)
    assert rep["accuracy"] != rep2["accuracy"]  # the labels did change; only scoring used them
    # with target labels only the labelled rows' labels matter
    rows = np.arange(20)
    _, p_lab = evaluate_transfer(model, xt, yt, labelled_rows=rows)
    other = yt.copy()
    other[20:] = np.random.default_rng(1).permutation(other[20:])
    _, p_lab2 = evaluate_transfer(model, xt, other, labelled_rows=rows)
    np.testing.assert_array_equal(p_lab, p_lab2)
    assert not np.array_equal(p_lab, proba)


def test_pooled_training_standardises_each_experiment_alone():
    xa, ya = _experiment(200, seed=11)
    xb, yb = _experiment(200, seed=12, gain=4.0, offset=3.0)
    x = np.concatenate([xa, xb])
    y = np.concatenate([ya, yb])
    groups = np.repeat([0, 1], 200)
    model = fit_transfer(x, y, class_names=BINARY_CLASS_NAMES, feature_meta=_meta(),
                         settings=TransferSettings(standardise="features"), groups=groups,
                         n_components=10)  # fmt: skip
    xt, yt = _experiment(300, seed=13, gain=0.3, offset=-5.0)
    assert np.mean(predict_adapted(model, xt).argmax(1) == yt) > 0.85


# --------------------------------------------------------------------------- commands


def _files(tmp_path, name: str, x: np.ndarray, y: np.ndarray):  # type: ignore[no-untyped-def]
    from hpcdiff.io.cxi import FrameId
    from hpcdiff.io.featurefile import write_features
    from hpcdiff.io.labels import Labels, write_labels

    ids = [FrameId(f"{name}/frames_000.cxi", i) for i in range(len(y))]
    feats = write_features(tmp_path / f"{name}_features.h5", ids, x, meta=_meta())
    labels = Labels.from_frame_ids(ids, diffuse=y, diffuse_strength=y.astype(float),
                                   diffuse_class=y, class_names=("none", "diffuse"))  # fmt: skip
    return feats, write_labels(tmp_path / f"{name}_labels.h5", labels)


def test_train_and_predict_commands_adapt_to_a_new_experiment(tmp_path):
    from hpcdiff.cli import main
    from hpcdiff.io.labels import Labels, write_labels
    from hpcdiff.io.predictions import read_predictions

    x, y = _experiment(300, seed=20)
    xt, yt = _experiment(250, seed=21, gain=3.0, offset=-8.0, fraction=0.4)
    feats, labels = _files(tmp_path, "a", x, y)
    feats_t, _ = _files(tmp_path, "b", xt, yt)
    common = ["--n-components", "8", "--n-train", "200", "--n-test", "100", "--quiet"]
    plain, adapted = tmp_path / "plain.npz", tmp_path / "adapted.npz"
    default = tmp_path / "default.npz"
    assert main(["train", "--features", str(feats), "--labels", str(labels), "--model",
                 str(plain), *common, "--recalibrate", "none"]) == 0  # fmt: skip
    # the default ([learn] recalibrate = "auto"): mixture_wide for a binary model
    assert main(["train", "--features", str(feats), "--labels", str(labels), "--model",
                 str(default), *common]) == 0  # fmt: skip
    assert DiffuseClassifier.load(default).metadata_["transfer"]["recalibrate"] == "mixture_wide"
    assert main(["train", "--features", str(feats), "--labels", str(labels), "--model",
                 str(adapted), *common, "--standardise", "scores",
                 "--recalibrate", "mixture"]) == 0  # fmt: skip
    assert DiffuseClassifier.load(adapted).metadata_["transfer"]["standardise"] == "scores"
    acc = {}
    for name, model in (("plain", plain), ("adapted", adapted), ("default", default)):
        out = tmp_path / f"{name}.h5"
        assert main(["predict", "--features", str(feats_t), "--model", str(model), "--out",
                     str(out), "--quiet", "--batch-rows", "64"]) == 0  # fmt: skip
        acc[name] = float(np.mean(read_predictions(out).labels == yt))
    assert acc["plain"] < 0.75 and acc["adapted"] > 0.9 and acc["default"] > 0.9
    # 20 labelled frames of the new experiment fix the plain model's scale
    few = Labels.from_frame_ids(
        [read_predictions(tmp_path / "plain.h5").frame_ids[i] for i in range(20)],
        diffuse=yt[:20], diffuse_strength=yt[:20].astype(float), diffuse_class=yt[:20],
        class_names=("none", "diffuse"),
    )  # fmt: skip
    few_path = write_labels(tmp_path / "few.h5", few)
    out = tmp_path / "labelled.h5"
    assert main(["predict", "--features", str(feats_t), "--model", str(plain), "--out",
                 str(out), "--quiet", "--target-labels", str(few_path)]) == 0  # fmt: skip
    assert float(np.mean(read_predictions(out).labels == yt)) > acc["plain"] + 0.1


def test_predict_job_path_from_stored_scores_equals_the_whole_experiment_path():
    """The classify predict job stores each frame's raw PCA scores (ranks in any split) and
    the root adapts them: the same probabilities as adapting the features directly."""
    from hpcdiff.learn.transfer import predict_batches, proba_from_stored_scores

    x, y = _experiment(200, seed=30)
    xt, _ = _experiment(150, seed=31, gain=2.0, offset=-4.0)
    model = _fit(x, y, standardise="scores", recalibrate="mixture")
    z_parts = [model.pca_.transform(xt[:70]), model.pca_.transform(xt[70:])]  # two ranks
    stored = proba_from_stored_scores(model, np.concatenate(z_parts))
    np.testing.assert_allclose(stored, predict_adapted(model, xt), rtol=1e-9, atol=1e-12)
    batched = predict_batches(model, lambda: iter((xt[:64], xt[64:128], xt[128:])))
    np.testing.assert_allclose(batched, stored, rtol=1e-9, atol=1e-12)
    feats = _fit(x, y, standardise="features")
    with pytest.raises(ValueError, match="needs the features"):
        proba_from_stored_scores(feats, model.pca_.transform(xt))
    np.testing.assert_allclose(
        predict_batches(feats, lambda: iter((xt[:64], xt[64:]))), predict_adapted(feats, xt),
        rtol=1e-6, atol=1e-9,
    )  # fmt: skip


def test_mixture_keeps_the_model_scale_on_one_mode_and_finds_a_small_second_mode():
    from hpcdiff.learn.calibration import bimodal, mixture_recalibrate, sigmoid

    rng = np.random.default_rng(3)
    one_mode = rng.normal(-3.0, 1.0, 400)  # a run without diffuse frames
    assert bimodal(one_mode) is None
    np.testing.assert_allclose(mixture_recalibrate(one_mode), sigmoid(one_mode))
    t = np.r_[rng.normal(-4.0, 1.0, 360), rng.normal(0.0, 1.0, 40)]  # 10 % diffuse, shifted
    y = np.r_[np.zeros(360), np.ones(40)]
    assert bimodal(t) is not None
    assert np.mean((mixture_recalibrate(t) > 0.5) == y) > 0.95
    assert np.mean(sigmoid(t) > 0.5) < 0.1  # the model's own scale misses most of them


def test_wide_mixture_finds_weak_diffuse_frames_that_a_shared_width_misses():
    """Transfer scores: a compact non-diffuse peak and diffuse scores spread as widely as
    their log-uniform strengths, the whole scale shifted far below 0.5."""
    from hpcdiff.learn.calibration import WideMixture1D, wide_mixture_recalibrate

    rng = np.random.default_rng(5)
    n0, n1 = 420, 180
    log_strength = rng.uniform(0.0, 1.0, n1)  # log10 of a strength over one decade
    t = np.r_[rng.normal(-15.5, 0.3, n0), -14.6 + 6.0 * log_strength + rng.normal(0, 0.2, n1)]
    y = np.r_[np.zeros(n0), np.ones(n1)]
    assert (sigmoid(t) < 0.5).all()
    p_wide = wide_mixture_recalibrate(t)
    p_shared = mixture_recalibrate(t)
    acc_wide = np.mean((p_wide > 0.5) == y)
    assert acc_wide > 0.95
    assert acc_wide > np.mean((p_shared > 0.5) == y) + 0.03
    order = np.argsort(t)
    assert np.all(np.diff(p_wide[order]) >= 0)  # monotone: the ranking (ROC AUC) is kept
    mix = WideMixture1D.fit(t)
    assert mix.std[1] > 2 * mix.std[0]
    assert mix.weight[1] == pytest.approx(n1 / (n0 + n1), abs=0.05)
    # the raw posterior of a wider upper component rises again in the far lower tail; the
    # calibrated one does not
    far = np.array([mix.mean[0] - 20 * mix.std[0]])
    assert mix._raw(far)[0] > mix.posterior(far)[0]


def test_wide_mixture_keeps_the_model_scale_on_one_mode_and_is_monotone_both_ways():
    from hpcdiff.learn.calibration import WideMixture1D, wide_mixture_recalibrate

    rng = np.random.default_rng(6)
    one_mode = rng.normal(-3.0, 1.0, 400)
    np.testing.assert_allclose(wide_mixture_recalibrate(one_mode), sigmoid(one_mode))
    # a narrow upper class beside a wide lower one
    t = np.r_[rng.normal(-2.0, 3.0, 300), rng.normal(5.0, 0.3, 100)]
    mix = WideMixture1D.fit(t)
    assert mix.std[1] < mix.std[0]
    p = wide_mixture_recalibrate(t)
    o = np.argsort(t)
    assert np.all(np.diff(p[o]) >= 0) and p[o][0] < 0.01 and p[o][-1] > 0.99


def test_learnable_experiments_drops_an_experiment_whose_labels_the_features_cannot_show():
    from hpcdiff.learn.transfer import learnable_experiments

    x1, y1 = _experiment(120, seed=21)  # class signal in five columns
    x2, _ = _experiment(120, seed=22)
    y2 = np.random.default_rng(23).permutation(np.r_[np.zeros(60), np.ones(60)]).astype(int)
    x2 = np.random.default_rng(24).normal(size=x2.shape).astype(np.float32)  # no signal
    x = np.concatenate([x1, x2])
    y = np.concatenate([y1, y2])
    groups = np.r_[np.zeros(120, int), np.ones(120, int)]
    keep, auc = learnable_experiments(x, y, groups, n_components=10)
    assert auc[0] > 0.9 and auc[1] < 0.75
    np.testing.assert_array_equal(keep, groups == 0)
    # an experiment with too few frames of a class is kept (nothing to judge it by)
    y3 = np.r_[np.ones(3), np.zeros(117)].astype(int)
    keep3, auc3 = learnable_experiments(x1, y3, np.zeros(120, int))
    assert keep3.all() and np.isnan(auc3[0])


def test_recalibrate_auto_is_mixture_wide_for_binary_and_none_for_classes():
    from hpcdiff.config import LearnConfig
    from hpcdiff.learn.transfer import transfer_info
    from hpcdiff.learn.workflow import fit_model

    assert LearnConfig().recalibrate == "auto"
    LearnConfig(target="classes")  # the default is valid for an ordered-classes target
    with pytest.raises(ValueError, match="needs target = 'binary'"):
        LearnConfig(target="classes", recalibrate="mixture_wide")
    x, y = _experiment(120, seed=30)
    cfg = LearnConfig(n_components=8, n_train=100)
    model = fit_model(x, y, class_names=BINARY_CLASS_NAMES, cfg=cfg, feature_meta=_meta())
    assert transfer_info(model)["recalibrate"] == "mixture_wide"

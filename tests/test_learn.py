"""PCA statistics, logistic-regression models, reports, and the train/predict/evaluate CLI."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.cli import main
from hpcdiff.config import LearnConfig
from hpcdiff.errors import FormatError
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.featurefile import FeatureMeta, FeatureSet, read_features, write_features
from hpcdiff.io.labels import Labels, write_labels
from hpcdiff.io.predictions import read_predictions
from hpcdiff.learn import (
    BINARY_CLASS_NAMES,
    DiffuseClassifier,
    ModelMismatchError,
    PCAStatistics,
    classification_report,
    cross_experiment,
    format_report,
    format_side_by_side,
    pca_from_statistics,
    split_sizes,
    stratified_split,
    train,
)
from hpcdiff.progress import Progress, format_duration, format_summary, track

META = FeatureMeta(
    layer="gap",
    n_features=12,
    weights={
        "name": "random:0 (untrained, not pretrained)",
        "sha256": "ab" * 32,
        "pretrained": False,
    },
    background={"method": "radial", "compression": "none", "clip_sigma": 5.0},
)


def _data(n: int, *, k: int = 2, d: int = 12, seed: int = 0, shift: float = 1.5):
    """Gaussian classes, class c shifted by c * shift along a random direction (+ noise dims)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    rng.shuffle(y)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    scales = np.linspace(2.0, 0.2, d)
    x = rng.normal(size=(n, d)) * scales + np.outer(y * shift, direction) * 3
    return x.astype(np.float32), y.astype(np.int64)


def _feature_set(
    x: np.ndarray, file: str = "frames_000.cxi", meta: FeatureMeta = META
) -> FeatureSet:
    n = x.shape[0]
    return FeatureSet(np.asarray([file] * n, dtype=object), np.arange(n, dtype=np.int64), x, meta)


# ----------------------------------------------------------------------------- PCA statistics
def test_statistics_merge_equals_concatenation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 6)), rng.normal(size=(17, 6)) + 2
    merged = PCAStatistics.from_array(a) + PCAStatistics.from_array(b)
    whole = PCAStatistics.from_array(np.concatenate([a, b]))
    assert merged.count == 47
    assert merged.allclose(whole)
    assert (PCAStatistics.empty(6) + merged).allclose(merged)
    assert PCAStatistics.empty(6).update(a).allclose(PCAStatistics.from_array(a))
    buf = merged.to_buffer()
    assert buf.shape == (1 + 6 + 36,)
    assert PCAStatistics.from_buffer(buf, 6).allclose(merged)
    np.testing.assert_allclose(merged.covariance(), np.cov(np.concatenate([a, b]).T))
    with pytest.raises(ValueError, match="6 and 5 features"):
        merged + PCAStatistics.empty(5)


def test_pca_from_statistics_equals_sklearn():
    from sklearn.decomposition import PCA

    x, _ = _data(200, d=12)
    stats = PCAStatistics.from_array(x[:90]) + PCAStatistics.from_array(x[90:])
    basis = pca_from_statistics(stats, 5)
    ref = PCA(n_components=5, svd_solver="full").fit(x.astype(np.float64))
    np.testing.assert_allclose(basis.mean_, ref.mean_, atol=1e-10)
    signs = np.sign(np.sum(basis.components_ * ref.components_, axis=1))
    assert np.all(np.abs(signs) == 1)
    np.testing.assert_allclose(basis.components_, ref.components_ * signs[:, None], atol=1e-8)
    np.testing.assert_allclose(basis.explained_variance_, ref.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(
        basis.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-8
    )
    np.testing.assert_allclose(np.abs(basis.transform(x)), np.abs(ref.transform(x)), atol=1e-6)
    with pytest.raises(ValueError, match="n_components"):
        pca_from_statistics(stats, 13)


# ----------------------------------------------------------------------------- split
def test_split_sizes_method_and_proportional():
    assert split_sizes(5000) == (500, 500)
    assert split_sizes(200) == (100, 100)
    assert split_sizes(90, n_train=600, n_test=300) == (60, 30)
    assert split_sizes(40, n_test=0) == (40, 0)


def test_stratified_split_is_stratified_disjoint_and_seeded():
    y = np.array([0] * 70 + [1] * 30)
    tr, te = stratified_split(y, n_train=50, n_test=50, random_state=3)
    assert tr.size == 50 and te.size == 50 and not set(tr) & set(te)
    assert np.sum(y[tr] == 1) == 15 and np.sum(y[te] == 1) == 15
    tr2, te2 = stratified_split(y, n_train=50, n_test=50, random_state=3)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    with pytest.raises(ValueError, match="fewer than 2 frames"):
        stratified_split(np.array([0, 0, 0, 0, 1]), n_train=2, n_test=2)


# ----------------------------------------------------------------------------- model
def test_model_is_invariant_to_the_feature_scale():
    """Whitened PCA scores: features 1e-4 times smaller give the same classifier."""
    x, y = _data(120)
    big = DiffuseClassifier(n_components=4).fit(
        x, y, class_names=BINARY_CLASS_NAMES, feature_meta=META
    )
    small = DiffuseClassifier(n_components=4).fit(
        x * 1e-4, y, class_names=BINARY_CLASS_NAMES, feature_meta=META
    )
    np.testing.assert_allclose(big.predict_proba(x), small.predict_proba(x * 1e-4), atol=1e-6)
    assert np.mean(small.predict(x * 1e-4) == y) > 0.9


def test_model_matches_sklearn_pipeline():
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    x, y = _data(120)
    model = DiffuseClassifier(n_components=4).fit(
        x, y, class_names=BINARY_CLASS_NAMES, feature_meta=META
    )
    z = PCA(n_components=4, whiten=True).fit(x.astype(np.float64))
    lr = LogisticRegression(max_iter=2000).fit(z.transform(x), y)
    np.testing.assert_allclose(
        model.predict_proba(x), lr.predict_proba(z.transform(x)), rtol=1e-4, atol=1e-6
    )
    assert model.predict(x).dtype == np.int64
    assert np.mean(model.predict(x) == y) > 0.9


def test_model_round_trip_without_pickle(tmp_path):
    x, y = _data(100, k=3)
    names = ("none", "weak", "strong")
    model = DiffuseClassifier(n_components=5).fit(
        x, y, class_names=names, feature_meta=META, target="classes", config_hash="feedbeef"
    )
    path = model.save(tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as npz:  # every array loads without pickle
        arrays = {k: npz[k] for k in npz.files}
    assert all(a.dtype != object for a in arrays.values())
    meta = json.loads(str(arrays["metadata"]))
    assert meta["class_names"] == list(names)
    assert meta["feature"]["layer"] == "gap"
    assert meta["feature"]["weights_sha256"] == "ab" * 32
    assert meta["feature"]["background_method"] == "radial"
    assert meta["config_hash"] == "feedbeef" and "hpcdiff_version" in meta
    back = DiffuseClassifier.load(path)
    np.testing.assert_array_equal(back.predict_proba(x), model.predict_proba(x))
    assert back.class_names_ == names
    with pytest.raises(FileExistsError):
        model.save(path)


def test_model_file_with_pickled_array_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, **{"metadata": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(FormatError, match="lacks arrays"):
        DiffuseClassifier.load(path)
    arrays = {k: np.zeros(2) for k in ("pca_mean", "pca_explained_variance", "intercept")}
    arrays |= {
        "pca_components": np.zeros((1, 2)),
        "pca_explained_variance_ratio": np.zeros(1),
        "coef": np.zeros((1, 1)),
        "classes": np.arange(2),
        "metadata": np.array([{"format": "hpcdiff-model"}], dtype=object),
    }
    np.savez(path, **arrays)
    with pytest.raises(FormatError, match="pickle"):
        DiffuseClassifier.load(path)
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(FormatError, match="junk.npz"):
        DiffuseClassifier.load(tmp_path / "junk.npz")
    assert zipfile.is_zipfile(path)


def test_mismatched_features_refused():
    x, y = _data(60)
    model = DiffuseClassifier(n_components=3).fit(
        x, y, class_names=BINARY_CLASS_NAMES, feature_meta=META
    )
    model.check_compatible(replace(META, config_hash="another-job"))  # same features: fine
    other = replace(
        META,
        weights={"name": "vgg16-397923af.pth", "sha256": "cd" * 32, "pretrained": True},
        background={**META.background, "method": "local"},
    )
    with pytest.raises(ModelMismatchError) as err:
        model.check_compatible(other, source="run7/features.h5")
    text = str(err.value)
    assert "run7/features.h5" in text
    assert "vgg16-397923af.pth" in text and "background.method 'radial' != 'local'" in text
    with pytest.raises(ModelMismatchError, match="layer 'gap' != 'fc7'"):
        model.check_compatible(replace(META, layer="fc7"))


# ----------------------------------------------------------------------------- reports
def test_report_equals_sklearn_metrics():
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 80)
    p1 = np.clip(y * 0.5 + rng.random(80) * 0.6, 0, 1)
    proba = np.stack([1 - p1, p1], axis=1)
    pred = (p1 > 0.5).astype(int)
    rep = classification_report(y, pred, proba, class_names=BINARY_CLASS_NAMES)
    for label, name in enumerate(BINARY_CLASS_NAMES):
        c = rep["classes"][name]
        assert c["precision"] == pytest.approx(precision_score(y, pred, pos_label=label))
        assert c["recall"] == pytest.approx(recall_score(y, pred, pos_label=label))
        assert c["f1"] == pytest.approx(f1_score(y, pred, pos_label=label))
        assert c["support"] == int(np.sum(y == label))
    assert rep["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert rep["roc_auc"] == pytest.approx(roc_auc_score(y, p1))
    assert rep["confusion_matrix"]["matrix"] == confusion_matrix(y, pred).tolist()
    json.dumps(rep)  # JSON-ready
    table = format_report(rep)
    assert "diffuse" in table and "non-diffuse" in table and "precision" in table
    assert f"{rep['accuracy']:.3f}" in table
    # published figures beside this run's: diffuse P/R 0.95/0.90, non-diffuse 0.89/0.95
    rows: dict[str, list[str]] = {}
    for ln in table.splitlines():
        if ln.strip():
            rows.setdefault(ln.split()[0], ln.split())
    assert rows["diffuse"][-2:] == ["0.95", "0.90"] and rows["non-diffuse"][-2:] == ["0.89", "0.95"]
    assert rows["accuracy"][-1] == "0.92" and "cxiclp9515" in table
    assert "paper" not in format_report(rep, published=False)


def test_report_undefined_auc_when_class_missing():
    rep = classification_report(
        np.zeros(4, int), np.zeros(4, int), np.tile([0.9, 0.1], (4, 1)), class_names=("a", "b")
    )
    assert rep["roc_auc"] is None and "no true examples of ['b']" in rep["roc_auc_note"]


def test_multiclass_training_and_report():
    x, y = _data(300, k=3, shift=1.2)
    fs = _feature_set(x)
    cfg = LearnConfig(n_components=4, n_train=150, n_test=150, target="classes")
    res = train(fs, y, class_names=("none", "weak", "strong"), cfg=cfg)
    rep = res.report
    assert rep["n"] == 150 and rep["class_names"] == ["none", "weak", "strong"]
    assert np.array(rep["confusion_matrix"]["matrix"]).shape == (3, 3)
    assert rep["accuracy"] > 0.6 and rep["roc_auc"] > 0.8
    assert res.model.coef_.shape == (3, 4)  # multinomial
    proba = res.model.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_pca_from_statistics_training_matches_gather():
    x, y = _data(200)
    fs = _feature_set(x)
    cfg = LearnConfig(n_components=4, n_train=100, n_test=100)
    a = train(fs, y, class_names=BINARY_CLASS_NAMES, cfg=cfg)
    b = train(fs, y, class_names=BINARY_CLASS_NAMES, cfg=replace(cfg, pca_from="statistics"))
    np.testing.assert_allclose(
        a.model.predict_proba(x), b.model.predict_proba(x), rtol=1e-4, atol=1e-6
    )
    assert a.report == b.report or a.report["accuracy"] == pytest.approx(b.report["accuracy"])


def test_cross_experiment_side_by_side():
    xa, ya = _data(200, seed=1)
    xb, yb = _data(200, seed=1, shift=1.0)
    xb = xb + 0.5  # another experiment: shifted features
    cfg = LearnConfig(n_components=4, n_train=100, n_test=100)
    reports, res_a = cross_experiment(
        _feature_set(xa), ya, _feature_set(xb, "b.cxi"), yb, class_names=BINARY_CLASS_NAMES, cfg=cfg
    )
    assert list(reports) == ["A->A", "B->B", "A->B", "A->B all"]
    assert reports["A->B"]["n"] == reports["B->B"]["n"] == 100
    assert reports["A->B all"]["n"] == 200
    table = format_side_by_side(reports)
    assert table.splitlines()[0].split() == ["A->A", "B->B", "A->B", "A->B", "all", "paper"]
    assert "diffuse f1" in table
    # the published figures stand beside this run's (accuracy 0.92, diffuse P 0.95 / R 0.90)
    lines = {ln[:24].strip(): ln.split() for ln in table.splitlines()}
    assert lines["accuracy"][-1] == "0.920" and lines["diffuse precision"][-1] == "0.950"
    assert lines["diffuse recall"][-1] == "0.900" and lines["non-diffuse recall"][-1] == "0.950"
    assert "cxiclp9515" in table and "500 train / 500 test" in table


# ----------------------------------------------------------------------------- progress
def test_progress_prints_rate_and_summary(capsys):
    import io

    buf = io.StringIO()
    with Progress(10, label="predict", unit="frames", stream=buf, log_interval_s=0) as bar:
        for _ in range(5):
            bar.update(2)
    lines = buf.getvalue().splitlines()
    assert lines[-1].startswith("predict: 10/10 frames [100%]") and "frames/s" in lines[-1]
    quiet = io.StringIO()
    assert list(track(range(3), stream=quiet, enabled=False)) == [0, 1, 2]
    assert quiet.getvalue() == ""
    assert format_duration(75) == "1 min 15 s" and format_duration(7300) == "2 h 01 min"
    assert format_summary("t", {"a": 1.23456, "bb": "x"}) == "t\n  a   1.235\n  bb  x"


# ----------------------------------------------------------------------------- CLI
def _experiment(tmp_path: Path, name: str, *, n: int, k: int = 2, seed: int = 0, meta=META):
    x, y = _data(n, k=k, seed=seed)
    ids = [FrameId(f"{name}/frames_000.cxi", i) for i in range(n)]
    feats = write_features(tmp_path / f"{name}_features.h5", ids, x, meta=meta)
    class_names = ("none", "weak", "strong")[:k] if k > 2 else ("none", "diffuse")
    labels = Labels.from_frame_ids(
        ids[::-1],  # the labels file lists frames in another order
        diffuse=(y[::-1] > 0).astype(int),
        diffuse_strength=y[::-1].astype(float),
        diffuse_class=y[::-1],
        class_names=class_names,
    )
    return feats, write_labels(tmp_path / f"{name}_labels.h5", labels), y


def test_cli_train_predict_evaluate(tmp_path, capsys):
    feats, labels, y = _experiment(tmp_path, "exp", n=120)
    model = tmp_path / "model.npz"
    common = ["--n-components", "4", "--n-train", "60", "--n-test", "60", "--quiet"]
    assert (
        main(
            [
                "train",
                "--features",
                str(feats),
                "--labels",
                str(labels),
                "--model",
                str(model),
                *common,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "non-diffuse" in out and "hpcdiff train: done" in out
    report = json.loads((tmp_path / "model.report.json").read_text())
    assert report["test"]["n"] == 60 and report["n_train"] == 60
    assert report["feature"]["weights_sha256"] == "ab" * 32

    preds_path = tmp_path / "preds.h5"
    assert (
        main(
            [
                "predict",
                "--features",
                str(feats),
                "--model",
                str(model),
                "--out",
                str(preds_path),
                "--quiet",
                "--batch-rows",
                "50",
            ]
        )
        == 0
    )
    preds = read_predictions(preds_path)
    fs = read_features(feats)
    np.testing.assert_array_equal(preds.indices, fs.indices)
    np.testing.assert_allclose(
        preds.proba, DiffuseClassifier.load(model).predict_proba(fs.features), rtol=1e-6
    )
    assert preds.class_names == BINARY_CLASS_NAMES

    rep_path = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                "--predictions",
                str(preds_path),
                "--labels",
                str(labels),
                "--report",
                str(rep_path),
            ]
        )
        == 0
    )
    rep = json.loads(rep_path.read_text())["report"]
    assert rep["n"] == 120
    assert rep["accuracy"] == pytest.approx(np.mean(preds.labels == y))
    rep2 = tmp_path / "eval2.json"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model),
                "--features",
                str(feats),
                "--labels",
                str(labels),
                "--report",
                str(rep2),
            ]
        )
        == 0
    )
    assert json.loads(rep2.read_text())["report"]["accuracy"] == pytest.approx(rep["accuracy"])
    # refuses to overwrite; refuses features made another way
    assert (
        main(
            [
                "train",
                "--features",
                str(feats),
                "--labels",
                str(labels),
                "--model",
                str(model),
                *common,
            ]
        )
        == 1
    )
    assert "--force" in capsys.readouterr().err
    other_meta = replace(META, layer="pool5")
    other = write_features(
        tmp_path / "other.h5", [FrameId("x", 0)], np.zeros((1, 12)), meta=other_meta
    )
    assert (
        main(
            [
                "predict",
                "--features",
                str(other),
                "--model",
                str(model),
                "--out",
                str(tmp_path / "p2.h5"),
            ]
        )
        == 1
    )
    assert "layer 'gap' != 'pool5'" in capsys.readouterr().err
    assert not (tmp_path / "p2.h5").exists()


def test_cli_cross_experiment_and_classes(tmp_path, capsys):
    fa, la, _ = _experiment(tmp_path, "A", n=90, k=3, seed=1)
    fb, lb, _ = _experiment(tmp_path, "B", n=90, k=3, seed=2)
    rep = tmp_path / "cross.json"
    args = [
        "evaluate",
        "--train-features",
        str(fa),
        "--train-labels",
        str(la),
        "--test-features",
        str(fb),
        "--test-labels",
        str(lb),
    ]
    args += [
        "--target",
        "classes",
        "--n-components",
        "3",
        "--n-train",
        "45",
        "--n-test",
        "45",
        "--names",
        "lab1",
        "lab2",
        "--report",
        str(rep),
        "--quiet",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "lab1->lab2" in out and "strong f1" in out
    data = json.loads(rep.read_text())
    assert set(data["reports"]) == {"lab1->lab1", "lab2->lab2", "lab1->lab2", "lab1->lab2 all"}
    assert data["reports"]["lab1->lab1"]["class_names"] == ["none", "weak", "strong"]
    assert main(["evaluate", "--train-features", str(fa)]) == 1
    assert "needs all of" in capsys.readouterr().err


def test_cli_job_file_defaults(tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    feats, labels, _ = _experiment(tmp_path, "exp", n=60)
    feats.rename(out_dir / "features.h5")
    job = tmp_path / "job.toml"
    job.write_text(
        f'[experiment]\nlabels = "{labels.name}"\n\n[output]\ndir = "out"\n\n'
        "[learn]\nn_components = 3\nn_train = 30\nn_test = 30\n"
    )
    assert main(["train", "--job", str(job), "--quiet"]) == 0
    meta = DiffuseClassifier.load(out_dir / "model.npz").metadata_
    assert meta["n_components"] == 3 and meta["n_train"] == 30
    assert len(meta["config_hash"]) == 16
    assert (out_dir / "model.report.json").is_file()
    assert main(["predict", "--job", str(job), "--quiet"]) == 0
    assert (out_dir / "features.predictions.h5").is_file()
    capsys.readouterr()
    # a PCA larger than the training set is a clear error, not a traceback
    assert main(["train", "--job", str(job), "--n-components", "40", "--force", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "cannot train on" in err and "n_components" in err
    assert main(["train", "--quiet"]) == 1
    assert "give --features" in capsys.readouterr().err

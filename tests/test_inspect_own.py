"""``hpcdiff inspect`` on hpcdiff's own files (labels, features, predictions, models) and on
psana geometry-def files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.cli import main
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.featurefile import FeatureMeta, write_features
from hpcdiff.io.labels import Labels, write_labels

WEIGHTS = {"name": "conv.pth", "sha256": "ab" * 32, "pretrained": True, "layers": ["gap"]}
NOTE = "layer auto: the weights hold no fc6/fc7 (conv-only checkpoint), so features are gap"


def _inspect(capsys, path: Path) -> tuple[dict, str]:
    assert main(["inspect", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert main(["inspect", str(path)]) == 0
    return summary, capsys.readouterr().out


def _ids(n: int) -> list[FrameId]:
    return [FrameId(f"/data/r1/frames_{i // 5:03d}.cxi", i % 5) for i in range(n)]


def test_labels_file(tmp_path, capsys):
    cls = np.array([0, 0, 1, 2, 3, 0, 1, 0], dtype=np.int16)
    labels = Labels.from_frame_ids(
        _ids(8),
        diffuse=(cls > 0).astype(int),
        diffuse_strength=cls * 0.1,
        diffuse_class=cls,
        class_names=("none", "weak", "moderate", "strong"),
    )
    path = write_labels(tmp_path / "labels.h5", labels)
    summary, text = _inspect(capsys, path)
    assert summary["kind"] == "labels" and summary["frames"] == 8 and summary["files"] == 2
    assert summary["classes"] == {"none": 4, "weak": 2, "moderate": 1, "strong": 1}
    assert (summary["diffuse"], summary["non_diffuse"]) == (4, 4)
    assert "hpcdiff labels file" in text and '"weak": 2' in text


def test_features_file_says_which_layer_and_why(tmp_path, capsys):
    meta = FeatureMeta(
        layer="gap",
        n_features=512,
        weights=WEIGHTS,
        background={"method": "radial"},
        config_hash="0123456789abcdef",
        extra={"layer_note": NOTE, "processing": {"features": {"device": "cpu"}}},
    )
    path = write_features(
        tmp_path / "features.h5", _ids(6), np.ones((6, 512), np.float32), meta=meta
    )
    summary, text = _inspect(capsys, path)
    assert summary["kind"] == "features" and summary["frames"] == 6
    assert summary["layer"] == "gap" and summary["layer_note"] == NOTE
    assert summary["weights"]["pretrained"] is True and summary["device"] == "cpu"
    assert "hpcdiff features file" in text and "conv-only" in text


def test_predictions_file(tmp_path, capsys):
    from hpcdiff.io.predictions import PredictionWriter

    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]], np.float32)
    ids = _ids(4)
    path = tmp_path / "predictions.h5"
    with PredictionWriter(
        path,
        class_names=("non-diffuse", "diffuse"),
        attrs={"model": "/m/model.npz", "model_sha256": "cd" * 32, "weights_sha256": "ab" * 32},
    ) as w:
        w.append(np.array([i.file for i in ids], object), np.array([i.index for i in ids]), proba)
    summary, text = _inspect(capsys, path)
    assert summary["kind"] == "predictions" and summary["frames"] == 4
    assert summary["predicted"] == {"non-diffuse": 2, "diffuse": 2}
    assert summary["diffuse_score"]["q50"] == pytest.approx(0.45, abs=1e-6)
    assert summary["model"] == "/m/model.npz"
    assert "hpcdiff predictions file" in text


def test_model_file(tmp_path, capsys):
    from hpcdiff.learn import DiffuseClassifier

    meta = FeatureMeta(layer="gap", n_features=16, weights=WEIGHTS, background={"method": "local"})
    rng = np.random.default_rng(1)
    clf = DiffuseClassifier(n_components=3).fit(
        rng.random((10, 16)), np.arange(10) % 2, class_names=("non-diffuse", "diffuse"),
        feature_meta=meta,
    )  # fmt: skip
    path = clf.save(tmp_path / "model.npz")
    summary, text = _inspect(capsys, path)
    assert summary["kind"] == "model" and summary["n_components"] == 3
    assert summary["n_train"] == 10 and summary["train_class_counts"] == {
        "non-diffuse": 5,
        "diffuse": 5,
    }
    assert summary["layer"] == "gap" and summary["background_method"] == "local"
    assert summary["weights"]["sha256"] == "ab" * 32
    assert "hpcdiff model" in text


def test_psana_geometry(real_fixtures, capsys):
    from hpcdiff.io.psana_geometry import read_psana_geometry

    path = real_fixtures / "geometry-def-cspad.data"
    summary, text = _inspect(capsys, path)
    assert summary["kind"] == "psana-geometry"
    assert summary["sensors"] == 32 and summary["pixels"] == 32 * 185 * 388
    assert summary["slab_shape"] == [1480, 1552]
    assert summary["objects"] == len(read_psana_geometry(path).objects)
    # a CSPAD is about 17-18 cm across, and its sensors lie in one plane
    for axis in ("x_mm", "y_mm"):
        lo, hi = summary[axis]
        assert 150 < hi - lo < 230
    assert summary["z_mm"][1] - summary["z_mm"][0] < 5
    assert "psana geometry" in text and "1480, 1552" in text


def test_unknown_text_file_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "notes.data"
    path.write_text("hello\n")
    assert main(["inspect", str(path)]) == 1
    assert "psana geometry-def file (.data)" in capsys.readouterr().err

"""Outputs CrystFEL and spreadsheets read (predictions.csv, diffuse.lst, one list per class),
splits of partly labelled runs, and the published figures beside a run's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.config import LearnConfig
from hpcdiff.errors import ConfigError, OutputExistsError
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.featurefile import FeatureMeta, FeatureSet
from hpcdiff.io.labels import Labels, read_labels
from hpcdiff.io.prediction_lists import prediction_outputs, write_prediction_outputs
from hpcdiff.learn import BINARY_CLASS_NAMES, order_split, split_rows, too_few_labelled, train
from hpcdiff.learn.labelled import labelled_split
from hpcdiff.learn.published import PUBLISHED


def _proba(labels: list[int], k: int) -> np.ndarray:
    p = np.full((len(labels), k), 0.1 / (k - 1), dtype=np.float32)
    p[np.arange(len(labels)), labels] = 0.9
    return p


def test_three_classes_write_a_list_per_class(tmp_path: Path) -> None:
    names = ("none", "weak", "strong")
    cls = [0, 2, 1, 0, 1, 2]
    files = ["run/a.cxi"] * 3 + [str(tmp_path / "b.cxi")] * 3
    paths = write_prediction_outputs(
        tmp_path / "predictions.h5", files=files, indices=np.arange(6) % 3,
        proba=_proba(cls, 3), class_names=names,
    )  # fmt: skip
    assert {p.name for p in paths.values()} == {
        "predictions.csv", "diffuse.lst", "none.lst", "weak.lst", "strong.lst",
    }  # fmt: skip
    a = os.path.abspath("run/a.cxi")
    b = str(tmp_path / "b.cxi")
    assert (tmp_path / "diffuse.lst").read_text().splitlines() == [
        f"{a} //1", f"{a} //2", f"{b} //1", f"{b} //2",
    ]  # fmt: skip
    assert (tmp_path / "weak.lst").read_text().splitlines() == [f"{a} //2", f"{b} //1"]
    assert (tmp_path / "none.lst").read_text().splitlines() == [f"{a} //0", f"{b} //0"]
    text = (tmp_path / "predictions.csv").read_text().splitlines()
    assert text[:2] == [
        "# class_names = none,weak,strong",
        "file,index,class,probability,diffuse_score",
    ]
    assert text[3] == f"{a},1,strong,0.900000,0.950000"
    back = read_labels(tmp_path / "predictions.csv")
    assert back.class_names == names and back.diffuse_class.tolist() == cls
    # nothing is overwritten, and nothing written, when one output exists
    (tmp_path / "weak.lst").unlink()
    with pytest.raises(OutputExistsError, match="predictions.csv exists already"):
        write_prediction_outputs(
            tmp_path / "predictions.h5", files=files, indices=np.arange(6) % 3,
            proba=_proba(cls, 3), class_names=names,
        )  # fmt: skip
    assert not (tmp_path / "weak.lst").exists()


def test_binary_outputs_and_prefixed_names(tmp_path: Path) -> None:
    assert set(prediction_outputs(tmp_path / "run7.h5", BINARY_CLASS_NAMES).values()) == {
        tmp_path / "run7.csv",
        tmp_path / "run7.diffuse.lst",
    }
    paths = write_prediction_outputs(
        tmp_path / "run7.h5", files=["/d/f.cxi"] * 3, indices=np.array([4, 5, 6]),
        proba=_proba([1, 0, 1], 2), class_names=BINARY_CLASS_NAMES,
    )  # fmt: skip
    assert paths["diffuse_list"].read_text() == "/d/f.cxi //4\n/d/f.cxi //6\n"
    assert paths["predictions_csv"].read_text().startswith("file,index,class,")  # no comment
    assert read_labels(paths["predictions_csv"]).diffuse.tolist() == [1, 0, 1]
    empty = write_prediction_outputs(
        tmp_path / "none.h5", files=[], indices=np.empty(0, np.int64),
        proba=np.empty((0, 2), np.float32), class_names=BINARY_CLASS_NAMES,
    )  # fmt: skip
    assert empty["diffuse_list"].read_text() == ""


def test_order_split_and_too_few_labelled() -> None:
    tr, te = order_split(20, n_train=8, n_test=5)
    assert tr.tolist() == list(range(8)) and te.tolist() == list(range(15, 20))
    tr, te = order_split(10, n_train=500, n_test=500)  # proportional: 5 / 5
    assert tr.tolist() == [0, 1, 2, 3, 4] and te.tolist() == [5, 6, 7, 8, 9]
    y = np.array([0, 1] * 10)
    assert split_rows(y, n_train=8, n_test=5, method="order")[0].tolist() == list(range(8))
    tr, te = split_rows(y, n_train=8, n_test=5, random_state=1)
    assert np.bincount(y[tr]).tolist() == [4, 4] and not set(tr) & set(te)
    with pytest.raises(ValueError, match="'stratified' or 'order'"):
        split_rows(y, method="random")
    assert too_few_labelled(100, n_components=50, n_train=500, n_test=500) is not None
    assert "of which 50 train" in too_few_labelled(100, n_components=50, n_train=500, n_test=500)
    assert too_few_labelled(102, n_components=50, n_train=500, n_test=500) is None
    assert too_few_labelled(0, n_components=2, n_train=5, n_test=5) == "no run frame has a label"


def _features(n: int, seed: int = 0) -> tuple[FeatureSet, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 0] += 3 * y
    meta = FeatureMeta(
        layer="gap", n_features=6, weights={"name": "random:0", "pretrained": False},
        background={}, config_hash="x",
    )  # fmt: skip
    files = np.array(["/r/f.cxi"] * n, dtype=object)
    return FeatureSet(files, np.arange(n, dtype=np.int64), x, meta), y


def test_train_uses_only_the_labelled_rows() -> None:
    fs, y = _features(40)
    rows = np.arange(0, 40, 2)  # every other frame labelled
    rows = np.sort(np.concatenate([rows, [1, 3, 5, 7]]))
    cfg = LearnConfig(n_components=2, n_train=12, n_test=8, split="order")
    res = train(fs, y[rows], class_names=BINARY_CLASS_NAMES, cfg=cfg, rows=rows)
    assert res.train_rows.tolist() == rows[:12].tolist()
    assert res.test_rows.tolist() == rows[-8:].tolist()
    assert res.report is not None and res.report["n"] == 8
    with pytest.raises(ValueError, match=r"only 3 labelled frame\(s\)"):
        train(fs, y[:3], class_names=BINARY_CLASS_NAMES, cfg=cfg, rows=np.arange(3))


def test_labelled_split_of_a_run() -> None:
    run = [FrameId(f"/r/f{f}.cxi", i) for f in range(2) for i in range(10)]
    labelled = list(range(0, 20, 2)) + [1, 3]  # 12 of 20 frames
    labels = Labels.from_frame_ids(
        [FrameId(os.path.basename(run[k].file), run[k].index) for k in labelled],
        diffuse=[k % 4 == 0 for k in labelled], diffuse_strength=[0.0] * 12,
        diffuse_class=[k % 4 == 0 for k in labelled],
    )  # fmt: skip
    valid = np.setdiff1d(np.arange(20), [4])  # frame 4 was rejected
    cfg = LearnConfig(n_components=2, n_train=6, n_test=5, split="order")
    s = labelled_split(labels, run, valid, cfg, source="l.csv")
    assert (s.n_labelled, s.n_unlabelled) == (11, 8)
    assert s.train.tolist() == [0, 1, 2, 3, 6, 8] and s.test.tolist() == [10, 12, 14, 16, 18]
    assert s.y_train.tolist() == [1, 0, 0, 0, 0, 1]
    with pytest.raises(
        ConfigError, match=r"job\.toml: cannot train: only 11 labelled frame\(s\), of which 8 train"
    ):
        labelled_split(
            labels, run, valid, LearnConfig(n_components=8, n_train=9, n_test=4),
            source="l.csv", job_source="job.toml",
        )  # fmt: skip
    # labels of a file the run could not read are left out, others the run lacks are errors
    extra = Labels.from_frame_ids(
        [*labels.frame_ids, FrameId("f9.cxi", 0)], diffuse=[*labels.diffuse, 1],
        diffuse_strength=[0.0] * 13, diffuse_class=[*labels.diffuse_class, 1],
    )  # fmt: skip
    assert (
        labelled_split(extra, run, valid, cfg, source="l", skip_files=["/x/f9.cxi"]).n_labelled
        == 11
    )
    with pytest.raises(Exception, match=r"f9\.cxi //0 is not in the run"):
        labelled_split(extra, run, valid, cfg, source="l")


def test_published_figures() -> None:
    assert PUBLISHED.accuracy == 0.92
    assert PUBLISHED.precision_recall("diffuse") == (0.95, 0.90)
    assert PUBLISHED.precision_recall("non-diffuse") == (0.89, 0.95)
    assert (PUBLISHED.n_train, PUBLISHED.n_test) == (500, 500)
    assert "cxiclp9515" in PUBLISHED.note() and "CSPAD" in PUBLISHED.note()
    assert PUBLISHED.as_dict()["classes"]["diffuse"] == {"precision": 0.95, "recall": 0.9}

"""The labelling page's state: labels file (atomic, resumable, shared), offers, undo, skip."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.errors import FormatError
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.labels import read_labels
from hpcdiff.label.features import FeatureTable
from hpcdiff.label.state import LabellingSession
from hpcdiff.label.store import LabelScheme, LabelStore

BINARY = LabelScheme.for_target("binary")
REPO = Path(__file__).resolve().parents[1]


def frames(n: int = 20) -> list[FrameId]:
    return [FrameId(f"/data/run{k // 10}.cxi", k % 10) for k in range(n)]


@pytest.fixture(params=["labels.csv", "labels.h5"])
def path(request, tmp_path: Path) -> Path:
    return tmp_path / request.param


def test_scheme_keys_and_names():
    assert BINARY.class_names == ("non-diffuse", "diffuse") and BINARY.keys == ("n", "d")
    sc = LabelScheme.for_target("classes", ["none", "weak", "strong"])
    assert sc.keys == ("0", "1", "2")
    assert sc.parse("Weak") == 1 and sc.parse("2") == 2 and sc.parse("7") is None
    assert BINARY.parse("none") == 0 and BINARY.parse("diffuse") == 1
    with pytest.raises(ValueError, match="class names"):
        LabelScheme.for_target("classes", ["only"])


def test_store_round_trip_and_replaces_an_answer(path: Path):
    store = LabelStore(path, scheme=BINARY)
    assert store.read().label == {}
    fr = frames()
    store.set(fr[0], 1)
    store.set(fr[3], 0)
    store.set(fr[0], 0)  # the user changed their mind
    rows = LabelStore(path, scheme=BINARY).read()
    assert rows.label == {("/data/run0.cxi", 0): 0, ("/data/run0.cxi", 3): 0}
    if path.suffix == ".h5":
        lab = read_labels(path)
        assert lab.diffuse.tolist() == [0, 0] and lab.class_names == ("none", "diffuse")
        assert np.isnan(lab.diffuse_strength).all()
    else:
        assert path.read_text().splitlines() == [
            "file,index,label",
            "/data/run0.cxi,0,non-diffuse",
            "/data/run0.cxi,3,non-diffuse",
        ]
    store.remove(fr[3])
    assert list(store.read().label) == [("/data/run0.cxi", 0)]


def test_csv_keeps_extra_columns_and_matches_frames_by_base_name(tmp_path: Path):
    p = tmp_path / "mine.csv"
    p.write_text("file,index,label,diffuse_strength,comment\n"
                 "elsewhere/run0.cxi,1,diffuse,0.3,nice\n"
                 "elsewhere/run0.cxi,2,0,,\n")  # fmt: skip
    store = LabelStore(p, scheme=BINARY)
    store.set(FrameId("/data/run0.cxi", 1), 0)  # same frame by base name: replaced
    store.set(FrameId("/data/run0.cxi", 5), 1)
    lines = p.read_text().splitlines()
    assert lines[0] == "file,index,label,diffuse_strength,comment"
    assert "/data/run0.cxi,1,non-diffuse,0.3,nice" in lines
    assert "elsewhere/run0.cxi,2,non-diffuse,," in lines
    assert "/data/run0.cxi,5,diffuse,," in lines
    assert not any(line.startswith("elsewhere/run0.cxi,1,") for line in lines)


@pytest.mark.parametrize(
    ("text", "match", "line"),
    [
        ("file,label\na,1\n", "file,index,label", 1),
        ("file,index,label\na,x,1\n", "not an integer", 2),
        ("file,index,label\na,1,maybe\n", "not a class", 2),
        ("file,index,label\na,1,1\na,1,0\n", "twice", 3),
    ],
)
def test_bad_csv_is_refused_with_its_line(tmp_path: Path, text: str, match: str, line: int):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(FormatError, match=match) as err:
        LabelStore(p, scheme=BINARY).read()
    assert str(p) in str(err.value) and f"line {line}" in str(err.value)


def test_save_is_atomic_a_failed_write_leaves_the_last_file(path: Path, monkeypatch):
    store = LabelStore(path, scheme=BINARY)
    fr = frames()
    store.set(fr[0], 1)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("hpcdiff.io.outputs.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.set(fr[1], 0)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, path.name + ".lock"]
    )  # no temporary file left behind


_WRITER = textwrap.dedent(
    """
    import sys
    from hpcdiff.io.cxi import FrameId
    from hpcdiff.label.store import LabelScheme, LabelStore
    path, start = sys.argv[1], int(sys.argv[2])
    store = LabelStore(path, scheme=LabelScheme.for_target("binary"))
    for k in range(start, start + 25):
        store.set(FrameId("/data/run.cxi", k), k % 2)
    """
)


def test_two_processes_writing_the_same_file_lose_no_answer(path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(start)], env=env)
        for start in (0, 1000)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    rows = LabelStore(path, scheme=BINARY).read()
    expected = {("/data/run.cxi", k): k % 2 for s in (0, 1000) for k in range(s, s + 25)}
    assert rows.label == expected


def test_session_resumes_from_the_file(path: Path):
    fr = frames()
    s = LabellingSession(fr, LabelStore(path, scheme=BINARY), seed=1)
    done = []
    for _ in range(5):
        offer = s.next("a")
        done.append(offer.row)
        s.answer("a", offer.row, 1)
    # a new server on the same file knows the 5 answers and never offers them again
    s2 = LabellingSession(fr, LabelStore(path, scheme=BINARY), seed=1)
    assert set(s2.labels) == set(done) and s2.counts() == [0, 5]
    offered = []
    for _ in range(len(fr) - 5):
        offer = s2.next("b")
        offered.append(offer.row)
        s2.answer("b", offer.row, 0)
    assert not set(offered) & set(done) and len(set(offered)) == len(fr) - 5
    assert s2.next("b").row is None
    # the first server sees the second one's answers
    assert s.summary("a")["n_labelled"] == len(fr)


def test_offer_stays_until_answered_and_two_pages_get_different_frames(path: Path):
    s = LabellingSession(frames(), LabelStore(path, scheme=BINARY))
    a = s.next("a")
    assert s.next("a").row == a.row  # a reload shows the same frame
    b = s.next("b")
    assert b.row != a.row


def test_undo_removes_the_last_answer_and_offers_the_frame_again(path: Path):
    s = LabellingSession(frames(), LabelStore(path, scheme=BINARY))
    first = s.next("a").row
    second = s.answer("a", first, 1).row
    s.answer("a", second, 0)
    offer = s.undo("a")
    assert offer.row == second and offer.reason == "undo"
    key = (s.frame_ids[first].file, s.frame_ids[first].index)
    assert LabelStore(path, scheme=BINARY).read().label == {key: 1}
    assert s.next("a").row == second
    assert s.undo("a").row == first
    assert LabelStore(path, scheme=BINARY).read().label == {}
    assert not s.summary("a")["can_undo"]
    # undo on another page's later change keeps that change
    s.answer("a", first, 1)
    s.answer("b", first, 0)
    s.undo("a")
    assert LabelStore(path, scheme=BINARY).read().label[key] == 0


def test_skip_moves_on_and_never_offers_the_frame_again_to_that_page(path: Path):
    s = LabellingSession(frames(6), LabelStore(path, scheme=BINARY), reserve_s=0)
    first = s.next("a").row
    seen = {first}
    offer = s.skip("a", first)
    while offer.row is not None:
        assert offer.row != first
        seen.add(offer.row)
        offer = s.answer("a", offer.row, 0)
    assert first not in s.labels and len(s.labels) == 5
    assert s.next("b").row == first  # another page may still label it
    assert s.summary("a")["skipped"] == 1


def test_session_turns_active_with_features_and_estimates_accuracy(path: Path):
    rng = np.random.default_rng(0)
    n = 120
    truth = (rng.random(n) < 0.4).astype(int)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[:, 0] += 5 * truth
    table = FeatureTable(n)
    table.add(np.arange(n), x)
    s = LabellingSession(frames(n), LabelStore(path, scheme=BINARY), features=table, n_components=5)
    reasons, rows = [], []
    offer = s.next("a")
    for _ in range(30):
        reasons.append(offer.reason)
        rows.append(offer.row)
        offer = s.answer("a", offer.row, int(truth[offer.row]))
    first_active = reasons.index("uncertain")
    assert first_active >= 6 and set(reasons[first_active:]) == {"uncertain"}
    # random order until both classes had 3 labels, then the learner
    answered = truth[rows[:first_active]].tolist()
    assert min(answered.count(0), answered.count(1)) >= 3
    assert offer.proba is not None and len(offer.proba) == 2
    summary = s.summary("a")
    assert summary["model"] == "fitted"
    acc = summary["accuracy"]
    assert acc["n"] == 30 and acc["low"] <= acc["accuracy"] <= acc["high"]
    assert acc["accuracy"] >= 0.8
    assert 0.8 <= summary["expected_accuracy"] <= 1.0 and summary["n_with_features"] == n


def test_wrong_labels_file_is_refused(tmp_path: Path):
    p = tmp_path / "x.h5"
    p.write_bytes(b"not hdf5")
    with pytest.raises(FormatError):
        LabelStore(p, scheme=BINARY).read()


def test_features_file_fills_the_table_by_file_or_base_name(tmp_path: Path):
    from hpcdiff.io.featurefile import FeatureMeta, write_features
    from hpcdiff.label.features import load_features_file

    fr = frames(20)
    meta = FeatureMeta(layer="gap", n_features=4, weights={"name": "random:0"},
                       background={"method": "radial"})  # fmt: skip
    # the features file names the files by another folder, and lacks frames 0..4
    ids = [FrameId("/elsewhere/" + Path(f.file).name, f.index) for f in fr[5:]]
    x = np.arange(15 * 4, dtype=np.float32).reshape(15, 4)
    path = write_features(tmp_path / "features.h5", ids, x, meta=meta)
    table = FeatureTable(20)
    assert load_features_file(path, fr, layer="gap", table=table) == 15
    rows, got, _ = table.snapshot()
    assert rows.tolist() == list(range(5, 20))
    np.testing.assert_array_equal(got, x)
    other = FeatureTable(20)
    assert load_features_file(path, fr, layer="pool5", table=other) == 0
    assert other.progress()["done"] == 0


def test_class_targets_write_their_class_names_and_diffuse_flag(tmp_path: Path):
    scheme = LabelScheme.for_target("classes", ["none", "weak", "moderate", "strong"])
    store = LabelStore(tmp_path / "labels.h5", scheme=scheme)
    fr = frames(3)
    store.set(fr[0], 2)
    store.set(fr[1], 0)
    lab = read_labels(tmp_path / "labels.h5")
    assert lab.class_names == ("none", "weak", "moderate", "strong")
    assert lab.diffuse_class.tolist() == [2, 0] and lab.diffuse.tolist() == [1, 0]
    other = LabelStore(tmp_path / "labels.h5", scheme=LabelScheme.for_target("classes", ["a", "b"]))
    with pytest.raises(FormatError, match="class_names"):
        other.read()

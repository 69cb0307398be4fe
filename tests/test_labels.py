"""Labels files: write/read round trip, lookup order and missing frames, validation."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcdiff.errors import FormatError, OutputExistsError
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.labels import Labels, read_labels, write_labels


def _labels(n: int = 6) -> Labels:
    ids = [FrameId(f"run/frames_{k // 3:03d}.cxi", k % 3) for k in range(n)]
    cls = np.arange(n) % 3
    return Labels.from_frame_ids(
        ids,
        diffuse=(cls > 0).astype(int),
        diffuse_strength=cls * 0.5,
        diffuse_class=cls,
        class_names=("none", "weak", "strong"),
    )


def test_round_trip(tmp_path: Path) -> None:
    labels = _labels()
    path = write_labels(tmp_path / "labels.h5", labels, config_hash="abc123")
    again = read_labels(path)
    assert again.equals(labels) and len(again) == 6
    assert again.class_names == ("none", "weak", "strong")
    assert again.attrs["config_hash"] == "abc123" and "hpcdiff_version" in again.attrs
    assert again.diffuse.dtype == np.int8 and again.diffuse_class.dtype == np.int16
    assert again.diffuse_strength.dtype == np.float32 and again.index.dtype == np.int64
    with h5py.File(path) as h5:
        assert set(h5) == {"file", "index", "diffuse", "diffuse_strength", "class"}
        assert h5["file"].asstr()[0] == "run/frames_000.cxi"
    with pytest.raises(OutputExistsError):
        write_labels(path, labels)
    write_labels(path, labels.take([0, 1]), force=True)
    assert len(read_labels(path)) == 2


def test_lookup_in_given_order_and_missing_frames() -> None:
    labels = _labels()
    wanted = [FrameId("run/frames_001.cxi", 2), FrameId("run/frames_000.cxi", 0)]
    got = labels.lookup(wanted)
    assert got.frame_ids == wanted
    np.testing.assert_array_equal(got.diffuse_class, [2, 0])
    # the run may name the same files from another folder: matched by base name
    moved = [FrameId("/scratch/exp/frames_001.cxi", 1)]
    assert labels.lookup(moved).diffuse_class.tolist() == [1]
    missing = [FrameId("run/frames_000.cxi", 1), FrameId("run/frames_009.cxi", 4)]
    with pytest.raises(
        KeyError, match=r"1 frame\(s\) have no label in labels\.h5: run/frames_009\.cxi//4"
    ):
        labels.lookup(missing, source="labels.h5")


def test_same_base_name_in_two_folders_needs_exact_paths() -> None:
    labels = Labels.from_frame_ids(
        [FrameId("a/f.cxi", 0), FrameId("b/f.cxi", 0)],
        diffuse=[0, 1],
        diffuse_strength=[0.0, 1.0],
        diffuse_class=[0, 1],
    )
    assert labels.lookup([FrameId("b/f.cxi", 0)]).diffuse.tolist() == [1]
    with pytest.raises(KeyError, match="c/f.cxi//0"):
        labels.lookup([FrameId("c/f.cxi", 0)])


def test_validation() -> None:
    with pytest.raises(ValueError, match="more than once"):
        Labels.from_frame_ids(
            [FrameId("f", 0), FrameId("f", 0)],
            diffuse=[0, 0],
            diffuse_strength=[0, 0],
            diffuse_class=[0, 0],
        )
    with pytest.raises(ValueError, match=r"diffuse_class spans 0\.\.2; expected 0\.\.1"):
        Labels.from_frame_ids(
            [FrameId("f", 0), FrameId("f", 1)],
            diffuse=[0, 1],
            diffuse_strength=[0, 1],
            diffuse_class=[0, 2],
        )
    with pytest.raises(ValueError, match="every array must be"):
        Labels(file=["f"], index=[0, 1], diffuse=[0], diffuse_strength=[0.0], diffuse_class=[0])
    with pytest.raises(ValueError, match="0 or 1"):
        Labels(file=["f"], index=[0], diffuse=[2], diffuse_strength=[0.0], diffuse_class=[0])


def test_bad_files(tmp_path: Path) -> None:
    path = write_labels(tmp_path / "l.h5", _labels())
    with h5py.File(path, "a") as h5:
        del h5["class"]
    with pytest.raises(
        FormatError, match=r"l\.h5, dataset /class: labels need a 1-D dataset 'class'"
    ):
        read_labels(path)
    with h5py.File(path, "a") as h5:
        h5["class"] = np.zeros(4, dtype=np.int16)
    with pytest.raises(FormatError, match="differ in length"):
        read_labels(path)
    with pytest.raises(FormatError, match="labels file not found"):
        read_labels(tmp_path / "absent.h5")

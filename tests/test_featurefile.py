"""Features files: round trip, batched writes, shard merging, errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hpcdiff.errors import FormatError, OutputExistsError
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.featurefile import (
    FeatureMeta,
    FeatureWriter,
    iter_feature_batches,
    merge_feature_shards,
    read_feature_meta,
    read_features,
    write_features,
)


def _meta(**changes) -> FeatureMeta:
    base = {
        "layer": "gap",
        "n_features": 4,
        "weights": {"name": "random:0", "sha256": "ab" * 32, "pretrained": False},
        "background": {"method": "radial", "compression": "none", "clip_sigma": 5.0},
        "config_hash": "0123456789abcdef",
    }
    base.update(changes)
    return FeatureMeta(**base)


def _ids(file: str, indices) -> list[FrameId]:
    return [FrameId(file, int(i)) for i in indices]


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((5, 4), dtype=np.float32)
    ids = _ids("run/frames_000.cxi", range(5))
    path = write_features(tmp_path / "f.h5", ids, x, meta=_meta())
    fs = read_features(path)
    np.testing.assert_array_equal(fs.features, x)
    assert fs.features.dtype == np.float32
    assert fs.frame_ids == ids
    assert fs.meta == _meta()
    assert read_feature_meta(path) == _meta()
    with h5py.File(path) as h5:
        assert h5.attrs["layer"] == "gap"
        assert h5.attrs["weights_sha256"] == "ab" * 32
        assert not h5.attrs["weights_pretrained"]
        assert h5.attrs["background_method"] == "radial"
        assert h5.attrs["config_hash"] == "0123456789abcdef"
        assert "hpcdiff_version" in h5.attrs


def test_writer_appends_batches_and_tuples(tmp_path):
    x = np.arange(28, dtype=np.float32).reshape(7, 4)
    with FeatureWriter(tmp_path / "f.h5", meta=_meta(), chunk_rows=2) as w:
        w.append(_ids("a.cxi", range(3)), x[:3])
        w.append([("a.cxi", 3), ("b.cxi", 0)], x[3:5])
        w.append(_ids("b.cxi", [1, 2]), x[5:])
        assert not (tmp_path / "f.h5").exists()  # appears only when complete
    fs = read_features(tmp_path / "f.h5")
    np.testing.assert_array_equal(fs.features, x)
    assert fs.keys[3:5] == [("a.cxi", 3), ("b.cxi", 0)]
    batches = list(iter_feature_batches(tmp_path / "f.h5", batch_rows=3))
    assert [b[2].shape[0] for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b[2] for b in batches]), x)


def test_writer_checks_shapes_and_discards_on_error(tmp_path):
    path = tmp_path / "f.h5"
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        with FeatureWriter(path, meta=_meta()) as w:
            w.append(_ids("a", range(2)), np.zeros((2, 5), np.float32))
    assert not path.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="2 frame ids for 3"):
        write_features(path, _ids("a", range(2)), np.zeros((3, 4)), meta=_meta())


def test_no_overwrite_without_force(tmp_path):
    path = write_features(tmp_path / "f.h5", _ids("a", [0]), np.ones((1, 4)), meta=_meta())
    with pytest.raises(OutputExistsError, match="--force"):
        write_features(path, _ids("a", [0]), np.zeros((1, 4)), meta=_meta())
    write_features(path, _ids("a", [0]), np.zeros((1, 4)), meta=_meta(), force=True)
    assert read_features(path).features.sum() == 0


def test_merge_shards_orders_by_frame_id(tmp_path):
    rng = np.random.default_rng(1)
    order = ["r/frames_001.cxi", "r/frames_000.cxi"]  # run order differs from name order
    all_ids = _ids(order[0], range(4)) + _ids(order[1], range(3))
    x = rng.random((7, 4), dtype=np.float32)
    perm = rng.permutation(7)
    parts = np.array_split(perm, 3)
    shards = []
    for k, rows in enumerate(parts):
        shards.append(
            write_features(
                tmp_path / f"shard{k}.h5", [all_ids[r] for r in rows], x[rows], meta=_meta()
            )
        )
    out = merge_feature_shards(shards, tmp_path / "merged.h5", file_order=order, block_rows=3)
    fs = read_features(out)
    assert fs.frame_ids == all_ids
    np.testing.assert_array_equal(fs.features, x)
    assert fs.meta.differences(_meta()) == []
    by_name = read_features(merge_feature_shards(shards, tmp_path / "m2.h5", remove_shards=True))
    assert by_name.frame_ids == sorted(all_ids)
    assert not any(s.exists() for s in shards)


def test_merge_refuses_mismatch_and_duplicates(tmp_path):
    a = write_features(tmp_path / "a.h5", _ids("f", [0]), np.ones((1, 4)), meta=_meta())
    b = write_features(
        tmp_path / "b.h5",
        _ids("f", [1]),
        np.ones((1, 4)),
        meta=_meta(background={"method": "local", "compression": "none", "clip_sigma": 5.0}),
    )
    with pytest.raises(FormatError, match=r"b.h5.*background.method 'radial' != 'local'"):
        merge_feature_shards([a, b], tmp_path / "m.h5")
    c = write_features(tmp_path / "c.h5", _ids("f", [0]), np.ones((1, 4)), meta=_meta())
    with pytest.raises(FormatError, match=r"frame \(f, 0\) appears in more than one shard"):
        merge_feature_shards([a, c], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def test_meta_differences_name_what_differs():
    other = _meta(
        layer="fc7",
        n_features=4096,
        weights={"name": "vgg16-397923af.pth", "sha256": "cd" * 32, "pretrained": True},
    )
    diffs = " ".join(_meta().differences(other))
    assert "layer 'gap' != 'fc7'" in diffs
    assert "n_features 4 != 4096" in diffs
    assert "weights random:0" in diffs and "vgg16-397923af.pth" in diffs
    assert _meta().differences(_meta(config_hash="other")) == []  # the hash is not a difference


def test_bad_files_name_file_and_dataset(tmp_path):
    with pytest.raises(FormatError, match="does not exist"):
        read_features(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(FormatError, match="not a readable HDF5"):
        read_features(tmp_path / "text.h5")
    with h5py.File(tmp_path / "partial.h5", "w") as h5:
        h5["features"] = np.zeros((2, 4), np.float32)
    with pytest.raises(FormatError, match="dataset /frame_file"):
        read_features(tmp_path / "partial.h5")
    path = write_features(tmp_path / "ok.h5", _ids("a", [0, 1]), np.zeros((2, 4)), meta=_meta())
    with h5py.File(path, "a") as h5:
        h5.attrs["weights"] = "{not json"
    with pytest.raises(FormatError, match="attribute 'weights' is not valid JSON"):
        read_features(path)

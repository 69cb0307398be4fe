"""hpcdiff's own HDF5 outputs carry fletcher32 checksums, verified on read: a flipped byte
is a FormatError naming the file and dataset (features, predictions' source, shards), and a
damaged frame of a frames file is a reject with its reason."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcdiff.errors import FormatError
from hpcdiff.io.appendable import AppendableH5
from hpcdiff.io.cxi import FrameId, FrameSource, summarise_cxi, write_cxi
from hpcdiff.io.featurefile import FeatureMeta, iter_feature_batches, read_features, write_features
from hpcdiff.parallel.shards import ShardBuffer, ShardStore
from hpcdiff.pipelines.classify import FrameReader

META = FeatureMeta(
    layer="gap",
    n_features=16,
    weights={"name": "random:0 (untrained, not pretrained)", "sha256": "ab" * 32},
    background={"method": "radial"},
)


def _flip_byte(path: Path, dataset: str, chunk: int = 0) -> None:
    """Change one byte in the middle of chunk ``chunk`` of ``dataset``, as a bad disk would."""
    with h5py.File(path, "r") as h5:
        info = h5[dataset].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x5A]))


def test_appendable_columns_carry_checksums(tmp_path: Path) -> None:
    path = tmp_path / "cols.h5"
    with AppendableH5(path) as f:
        f.column("x", dtype=np.float32, row_shape=(3,), chunk_rows=4)
        f.column("name", dtype=h5py.string_dtype("utf-8"))
        f.append({"x": np.arange(30, dtype=np.float32).reshape(10, 3), "name": ["a"] * 10})
    with h5py.File(path) as h5:
        assert h5["x"].fletcher32 and not h5["name"].fletcher32  # text cannot carry filters
        assert np.array_equal(h5["x"][()], np.arange(30, dtype=np.float32).reshape(10, 3))


def _features_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    ids = [FrameId("run.cxi", i) for i in range(40)]
    return write_features(tmp_path / "features.h5", ids, x, meta=META), x


def test_damaged_features_file_is_a_format_error(tmp_path: Path) -> None:
    path, x = _features_file(tmp_path)
    assert np.array_equal(read_features(path).features, x)
    _flip_byte(path, "features")
    for read in (read_features, lambda p: list(iter_feature_batches(p, batch_rows=8))):
        with pytest.raises(FormatError, match="checksum") as info:
            read(path)
        assert info.value.path == str(path) and info.value.dataset == "/features"


def test_damaged_shard_is_a_format_error(tmp_path: Path) -> None:
    store, _ = ShardStore.prepare(tmp_path / "s", config_hash="h", n_frames=8, files=["a"])
    buf = ShardBuffer()
    buf.add(np.arange(8), {"features": np.ones((8, 16), np.float32)}, [])
    shard = store.write(buf, config_hash="h", rank=0)
    assert shard is not None
    frames, arrays = store.read(["features"])
    assert frames.tolist() == list(range(8)) and arrays["features"].shape == (8, 16)
    _flip_byte(shard, "features")
    with pytest.raises(FormatError, match="checksum") as info:
        store.read(["features"])
    assert info.value.path == str(shard) and info.value.dataset == "/features"
    assert "delete this shard" in info.value.message
    shard.unlink()  # as the message says: the frames are then not done and are redone
    assert len(store.done_frames()) == 0


def test_damaged_frame_is_a_reject_with_its_reason(tmp_path: Path) -> None:
    """Frames files written by hpcdiff (uncompressed: the garbage would read as numbers)."""
    frames = np.arange(6 * 8 * 10, dtype=np.float32).reshape(6, 8, 10)
    path = write_cxi(tmp_path / "run.cxi", frames, compression="none")
    with h5py.File(path) as h5:
        dset = h5["/entry_1/data_1/data"]
        assert dset.fletcher32 and dset.chunks is not None
        per_chunk = dset.chunks[0]
    (data,) = [d for d in summarise_cxi(path)["datasets"] if d["path"] == "/entry_1/data_1/data"]
    assert data["checksum"] == "fletcher32" and data["compression"] == []
    bad_chunk = 1  # frames per_chunk .. 2 * per_chunk - 1
    _flip_byte(path, "/entry_1/data_1/data", chunk=bad_chunk)
    with FrameSource([str(path)]) as source:
        batch = FrameReader(source)(0, 6)
    bad = set(range(bad_chunk * per_chunk, min(6, (bad_chunk + 1) * per_chunk)))
    assert bad and {f for f, _ in batch.rejects} == bad
    assert all("fletcher32" in reason.lower() for _, reason in batch.rejects)
    good = [i for i in range(6) if i not in bad]
    assert batch.numbers.tolist() == good
    assert np.array_equal(batch.frames, frames[good])

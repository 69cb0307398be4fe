"""Several reader processes per rank: frames of an HDF5 file in their dtype, in range order,
through shared memory; errors at their batch's place; and into the device feed."""

from __future__ import annotations

import h5py
import hdf5plugin
import numpy as np
import pytest

from hpcdiff.errors import FormatError
from hpcdiff.parallel.device_feed import DeviceFeed
from hpcdiff.parallel.process_reader import H5Frames, ProcessReader

SHAPE = (12, 9)
DATASET = "/entry_1/data_1/data"


@pytest.fixture(scope="module")
def frames_file(tmp_path_factory):
    rng = np.random.default_rng(4)
    frames = rng.integers(-32768, 32767, (23, *SHAPE), endpoint=True).astype(np.int16)
    path = tmp_path_factory.mktemp("reader") / "frames.cxi"
    with h5py.File(path, "w") as f:
        # one frame per chunk, compressed: what the workers decompress in parallel
        f.create_dataset(DATASET, data=frames, chunks=(1, *SHAPE), **hdf5plugin.LZ4())
    return path, frames


def _ranges(n: int, batch: int) -> list[tuple[int, int]]:
    return [(a, min(a + batch, n)) for a in range(0, n, batch)]


def test_three_workers_give_every_batch_in_order_in_the_file_dtype(frames_file):
    path, frames = frames_file
    reader = ProcessReader(
        H5Frames(str(path), DATASET),
        _ranges(len(frames), 4),
        frame_shape=SHAPE,
        dtype=np.int16,
        batch_size=4,
        workers=3,
    )
    got = [b.copy() for b in reader]
    assert [len(b) for b in got] == [4, 4, 4, 4, 4, 3]  # the last range is partial
    assert all(b.dtype == np.int16 for b in got)
    np.testing.assert_array_equal(np.concatenate(got), frames)


def test_a_bad_range_raises_its_error_in_the_parent_after_the_good_ones(frames_file):
    path, frames = frames_file
    ranges = [(0, 4), (4, 8), (20, 25)]  # the file holds 23 frames
    reader = ProcessReader(
        H5Frames(str(path), DATASET),
        ranges,
        frame_shape=SHAPE,
        dtype=np.int16,
        batch_size=5,
        workers=2,
    )
    got = []
    with pytest.raises(FormatError, match=r"frames \[20, 25\) asked for; it holds 23"):
        for b in reader:
            got.append(b.copy())
    np.testing.assert_array_equal(np.concatenate(got), frames[:8])
    assert not any(p.is_alive() for p in reader._procs)


def test_ranges_longer_than_the_batch_are_refused():
    with pytest.raises(ValueError, match="longer than batch_size"):
        ProcessReader(
            H5Frames("x.h5", DATASET), [(0, 9)], frame_shape=SHAPE, dtype=np.int16, batch_size=4
        )


def test_reader_processes_feed_the_device_feed_in_order(frames_file):
    path, frames = frames_file
    reader = ProcessReader(
        H5Frames(str(path), DATASET),
        _ranges(len(frames), 5),
        frame_shape=SHAPE,
        dtype=np.int16,
        batch_size=5,
        workers=2,
    )
    feed = DeviceFeed(reader, batch_size=5, frame_shape=SHAPE, dtype=np.int16)
    got = np.concatenate([out.numpy().copy() for out in feed])
    np.testing.assert_array_equal(got, frames.astype(np.float32))


def test_a_file_that_cannot_be_opened_is_its_own_error_in_the_parent(tmp_path):
    reader = ProcessReader(
        H5Frames(str(tmp_path / "missing.cxi"), DATASET),
        [(0, 2), (2, 4)],
        frame_shape=SHAPE,
        dtype=np.int16,
        batch_size=2,
        workers=2,
    )
    with pytest.raises(OSError, match="missing.cxi"):
        list(reader)

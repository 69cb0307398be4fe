"""Frames of sources beside CXI that cannot be trusted are rejects with their reason, as for
CXI files: an NXmx frame that decodes to NaN, and one whose chunk fails HDF5's fletcher32
checksum, go through the classify job's :class:`~hpcdiff.pipelines.classify.FrameReader`."""

from __future__ import annotations

import h5py
import numpy as np
from test_sources_nxmx import N_FS, N_SS, write_nxmx

from hpcdiff.io.sources import open_source
from hpcdiff.pipelines.classify import FrameReader

N = 6


def _frames() -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.uniform(0, 100, (N, 2 * N_SS, N_FS)).astype(np.float32)


def test_an_nxmx_frame_holding_nan_is_a_reject(tmp_path):
    frames = _frames()
    frames[2, 5, 7] = np.nan
    frames[4, 0, 0] = np.inf
    path = write_nxmx(tmp_path / "nan_master.h5", frames)
    with open_source([path]) as src:
        batch = FrameReader(src)(0, N)
    assert batch.rejects == [(2, "frame holds NaN or inf pixel values"), (4, batch.rejects[1][1])]
    assert "NaN or inf" in batch.rejects[1][1]
    np.testing.assert_array_equal(batch.numbers, [0, 1, 3, 5])
    np.testing.assert_array_equal(batch.frames, frames[[0, 1, 3, 5]])


def test_an_nxmx_frame_failing_its_checksum_is_a_reject(tmp_path):
    frames = _frames()
    path = write_nxmx(tmp_path / "sum_master.h5", frames[:1])
    with h5py.File(path, "r+") as h5:  # frames again, one chunk per frame, with checksums
        del h5["entry/data/data"]
        h5["entry/data"].create_dataset(
            "data", data=frames, chunks=(1, *frames.shape[1:]), fletcher32=True
        )
        offset = h5["entry/data/data"].id.get_chunk_info(3).byte_offset
    with open(path, "r+b") as fh:  # flip bytes inside frame 3's chunk
        fh.seek(offset + 100)
        fh.write(b"\xff\x00\xff\x00")
    with open_source([path]) as src:
        batch = FrameReader(src)(0, N)
    assert [n for n, _ in batch.rejects] == [3]
    reason = batch.rejects[0][1]
    assert reason.startswith("cannot read frame:") and "checksum" in reason.lower()
    assert "sum_master.h5" in reason
    np.testing.assert_array_equal(batch.numbers, [0, 1, 2, 4, 5])
    np.testing.assert_array_equal(batch.frames, frames[[0, 1, 2, 4, 5]])


def test_a_european_xfel_frame_missing_a_module_is_a_reject(tmp_path):
    """A train for which one present module recorded nothing reads NaN on that module:
    its frames are rejects; the other trains' frames pass."""
    import pytest

    pytest.importorskip(
        "extra_data", reason="extra-data not installed: pip install hpcdiff[euxfel]"
    )
    from test_sources_euxfel import FIRST_TRAIN, make_agipd_run

    from hpcdiff.io.sources.euxfel import train_pulse

    run = make_agipd_run(
        tmp_path / "r0009",
        ntrains=2,
        per_train=2,
        modules=range(3),
        gaps={1: np.array([2, 0], dtype=np.uint64)},
    )
    with open_source([run]) as src:
        batch = FrameReader(src)(0, src.n_frames)
        ids = src.frame_ids
    second = [k for k, f in enumerate(ids) if train_pulse(f)[0] == FIRST_TRAIN + 1]
    assert len(second) == 2
    assert batch.rejects == [(k, "frame holds NaN or inf pixel values") for k in second]
    assert sorted(batch.numbers.tolist()) == [k for k in range(len(ids)) if k not in second]

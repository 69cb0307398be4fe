"""FrameSource.read_raw: frames in their stored dtype, read into reused buffers."""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff.io.cxi import FrameSource, write_cxi


def _frames(n: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-50, 3000, (n, 12, 10)).astype(dtype)


@pytest.mark.parametrize("compression", ["lz4", "none", "gzip"])
@pytest.mark.parametrize("dtype", ["int16", "float32", "int32"])
def test_read_raw_keeps_the_stored_dtype_and_fills_the_given_buffer(tmp_path, compression, dtype):
    a, b = _frames(5, dtype, 1), _frames(4, dtype, 2)
    files = [
        write_cxi(tmp_path / "a.cxi", a, compression=compression),
        write_cxi(tmp_path / "b.cxi", b, compression=compression),
    ]
    both = np.concatenate([a, b])
    with FrameSource(files) as src:
        assert src.dtype == np.dtype(dtype)
        raw = src.read_raw(3, 8)  # spans both files
        assert raw.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(raw, both[3:8])
        buf = np.zeros((6, 12, 10), dtype=dtype)
        first = src.read_raw(0, 6, out=buf)
        assert np.shares_memory(first, buf)
        np.testing.assert_array_equal(buf, both[0:6])
        again = src.read_raw(6, 9, out=buf)  # the same buffer, reused for the next batch
        assert np.shares_memory(again, buf) and again.shape == (3, 12, 10)
        np.testing.assert_array_equal(buf[:3], both[6:9])
        # read() still widens to float32, with the same values
        np.testing.assert_array_equal(src.read(0, 9), both.astype(np.float32))


def test_read_raw_refuses_a_buffer_that_does_not_fit(tmp_path):
    f = write_cxi(tmp_path / "a.cxi", _frames(3, "int16"), compression="none")
    with FrameSource([f]) as src:
        for bad in (
            np.zeros((3, 12, 10), np.float32),  # wrong dtype
            np.zeros((2, 12, 10), np.int16),  # too few frames
            np.zeros((3, 10, 12), np.int16),  # wrong slab
            np.zeros((3, 12, 20), np.int16)[:, :, ::2],  # not contiguous
        ):
            with pytest.raises(ValueError, match="out must be"):
                src.read_raw(0, 3, out=bad)


def test_mixed_dtypes_read_as_one_type(tmp_path):
    a = write_cxi(tmp_path / "a.cxi", _frames(2, "int16"), compression="none")
    b = write_cxi(tmp_path / "b.cxi", _frames(2, "int32", 3), compression="none")
    with FrameSource([a, b]) as src:
        assert src.dtype == np.dtype("int32")
        raw = src.read_raw(0, 4)
        np.testing.assert_array_equal(raw[:2], _frames(2, "int16"))
        np.testing.assert_array_equal(raw[2:], _frames(2, "int32", 3))


def test_classify_reader_hands_over_stored_int16_frames(tmp_path):
    from hpcdiff.pipelines.classify import FrameReader

    frames = _frames(4, "int16")
    f = write_cxi(tmp_path / "a.cxi", frames, compression="lz4")
    with FrameSource([f]) as src:
        batch = FrameReader(src)(1, 4)
    assert batch.frames.dtype == np.int16  # widened once, later, by preprocessing
    np.testing.assert_array_equal(batch.frames, frames[1:4])
    assert list(batch.numbers) == [1, 2, 3] and not batch.rejects

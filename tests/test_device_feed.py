"""The device feed: raw frames in their dtype through reused slots, in order, double-buffered,
with reader errors surfacing in the consumer.  CPU tensors stand in for the device; the
CUDA-only parts (pinned buffers, upload stream, cupy handoff) are in the gpu-marked tests."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from hpcdiff.parallel.device_feed import DeviceFeed, DeviceUpload, SlotUploader, handoff

SHAPE = (6, 10)


def _batches(sizes: list[int], dtype=np.int16, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    lo, hi = (info.min, info.max) if info else (-1000, 1000)
    return [rng.integers(lo, hi, (n, *SHAPE), endpoint=True).astype(dtype) for n in sizes]


def test_batches_come_out_in_order_as_float32_with_the_last_one_partial():
    batches = _batches([4, 4, 4, 3])
    feed = DeviceFeed(iter(batches), batch_size=4, frame_shape=SHAPE, dtype=np.int16)
    got = [out.clone() for out in feed]
    assert [len(g) for g in got] == [4, 4, 4, 3]
    for want, g in zip(batches, got, strict=True):
        assert g.dtype == torch.float32
        # int16 extremes survive: the widening happens after the copy, exactly
        np.testing.assert_array_equal(g.numpy(), want.astype(np.float32))


def test_slot_buffers_are_reused_not_allocated_per_batch():
    feed = DeviceFeed(iter(_batches([3] * 7)), batch_size=3, frame_shape=SHAPE, dtype=np.int16)
    up = feed.uploader
    host_ptrs = [h.data_ptr() for h in up.host]
    slot_ptrs = {o.data_ptr() for o in up.out}
    seen = [out.data_ptr() for out in feed]
    assert len(seen) == 7 and set(seen) == slot_ptrs and len(slot_ptrs) == 2
    # consecutive batches alternate between the two slots (double buffering)
    assert all(a != b for a, b in zip(seen, seen[1:], strict=False))
    assert [h.data_ptr() for h in up.host] == host_ptrs


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.float32])
def test_frames_keep_their_dtype_until_the_device(dtype):
    batches = _batches([2, 2], dtype=dtype, seed=3)
    feed = DeviceFeed(iter(batches), batch_size=2, frame_shape=SHAPE, dtype=dtype)
    want = torch.from_numpy(np.empty(0, dtype)).dtype
    assert all(h.dtype == want for h in feed.uploader.host)
    assert all(r.dtype == want for r in feed.uploader.raw)
    got = [out.clone() for out in feed]
    for b, g in zip(batches, got, strict=True):
        np.testing.assert_array_equal(g.numpy(), b.astype(np.float32))


def test_frames_of_another_dtype_are_refused_not_converted_on_the_host():
    batches = [np.zeros((2, *SHAPE), np.int16), np.zeros((2, *SHAPE), np.float32)]
    feed = DeviceFeed(iter(batches), batch_size=2, frame_shape=SHAPE, dtype=np.int16)
    it = iter(feed)
    next(it)
    with pytest.raises(ValueError, match="dtype float32; this feed carries int16"):
        next(it)


def test_a_reader_exception_surfaces_in_the_consumer_after_the_batches_before_it():
    good = _batches([2, 2])

    def source():
        yield from good
        raise OSError("frames.cxi: lz4 filter failed on frame 4")

    feed = DeviceFeed(source(), batch_size=2, frame_shape=SHAPE, dtype=np.int16)
    got = []
    with pytest.raises(OSError, match="lz4 filter failed"):
        for out in feed:
            got.append(out.clone())
    assert len(got) == 2
    np.testing.assert_array_equal(got[1].numpy(), good[1].astype(np.float32))
    assert not feed._thread.is_alive()


def test_the_reader_fills_the_next_slot_while_the_consumer_holds_the_current_one():
    filled = threading.Event()
    batches = _batches([2, 2, 2])

    def source():
        yield batches[0]
        yield batches[1]
        filled.set()  # batch 1 has been handed to the reader; it fills the free slot
        yield batches[2]

    feed = DeviceFeed(source(), batch_size=2, frame_shape=SHAPE, dtype=np.int16)
    it = iter(feed)
    first = next(it)
    assert filled.wait(5.0)
    deadline = time.monotonic() + 5.0
    while feed._ready.qsize() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert feed._ready.qsize() >= 1  # batch 1 ready while batch 0 is still being consumed
    np.testing.assert_array_equal(first.numpy(), batches[0].astype(np.float32))
    assert len(list(it)) == 2


def test_leaving_the_loop_early_stops_the_reader():
    def endless():
        while True:
            yield np.ones((2, *SHAPE), np.int16)

    feed = DeviceFeed(endless(), batch_size=2, frame_shape=SHAPE, dtype=np.int16)
    for k, _ in enumerate(feed):
        if k == 3:
            break
    feed.close()
    assert not feed._thread.is_alive()


def test_bad_batch_shapes_are_clear_errors():
    up = SlotUploader(batch_size=2, frame_shape=SHAPE, dtype=np.int16)
    with pytest.raises(ValueError, match="expected"):
        up.fill(0, np.zeros((3, *SHAPE), np.int16))
    with pytest.raises(ValueError, match="expected"):
        up.fill(0, np.zeros((2, 5, 10), np.int16))


def test_numpy_handoff_shares_the_slot_memory():
    up = SlotUploader(batch_size=2, frame_shape=SHAPE, dtype=np.int16)
    out = up.to_device(np.full((2, *SHAPE), 7, np.int16))
    arr = handoff(out, "numpy")
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
    assert arr.__array_interface__["data"][0] == out.data_ptr()
    assert handoff(out, "torch") is out
    with pytest.raises(ValueError, match="unknown kind"):
        handoff(out, "jax")  # type: ignore[arg-type]


def test_device_upload_rotates_slots_and_rebuilds_for_new_shapes():
    upload = DeviceUpload("cpu", kind="numpy")
    a, b, c = _batches([3, 3, 2], seed=5)
    ra = upload(a)
    pa = ra.__array_interface__["data"][0]
    rb = upload(b)
    np.testing.assert_array_equal(ra, a.astype(np.float32))  # still valid: another slot
    np.testing.assert_array_equal(rb, b.astype(np.float32))
    rc = upload(c)  # smaller batch: same slots, slot 0 again
    assert rc.__array_interface__["data"][0] == pa and rc.shape == (2, *SHAPE)
    np.testing.assert_array_equal(rc, c.astype(np.float32))
    bigger = np.zeros((5, *SHAPE), np.uint16)
    assert upload(bigger).shape == (5, *SHAPE)
    assert upload.uploader is not None and upload.uploader.dtype == np.uint16


def _cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.mark.gpu
def test_cuda_feed_pins_host_slots_and_matches_the_host_conversion():
    _cuda()
    batches = _batches([4, 4, 4, 1], seed=7)
    feed = DeviceFeed(iter(batches), batch_size=4, frame_shape=SHAPE, dtype=np.int16, device="cuda")
    assert all(h.is_pinned() and h.dtype == torch.int16 for h in feed.uploader.host)
    assert all(r.is_cuda and r.dtype == torch.int16 for r in feed.uploader.raw)
    got = []
    for out in feed:
        assert out.is_cuda and out.dtype == torch.float32
        got.append((out * 1).cpu())  # work on the consumer stream, after the upload event
    for b, g in zip(batches, got, strict=True):
        np.testing.assert_array_equal(g.numpy(), b.astype(np.float32))


@pytest.mark.gpu
def test_cuda_upload_hands_cupy_the_slot_without_a_copy():
    _cuda()
    cupy = pytest.importorskip("cupy")
    upload = DeviceUpload("cuda:0", kind="cupy")
    (a,) = _batches([3], seed=9)
    with cupy.cuda.Device(0):
        got = upload(a)
        assert isinstance(got, cupy.ndarray) and got.dtype == cupy.float32
        assert upload.uploader is not None
        assert got.data.ptr == upload.uploader.out[0].data_ptr()
        np.testing.assert_array_equal(cupy.asnumpy(got * 1), a.astype(np.float32))

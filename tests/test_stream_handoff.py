"""Device hand-off by event: the consumer's stream waits, the host never does.

CPU tests drive :class:`StreamReady` with recording stand-ins for the stream operations and
the device array; the gpu-marked test runs cupy -> torch on a real device."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hpcdiff.parallel.stream_handoff import StreamReady, stream_ready

CUDA = (2, 0)  # DLPack (kDLCUDA, device 0)


class RecordingOps:
    """Stream operations that log what they are asked; no host wait exists here."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log
        self.events = 0

    def record(self) -> object:
        self.events += 1
        event = f"event{self.events}"
        self.log.append(("record", event))
        return event

    def wait(self, stream: int, event: object) -> None:
        self.log.append(("wait", stream, event))


class FakeDeviceArray:
    """A device array as DLPack sees it: logs each ``__dlpack__`` call and its keywords."""

    def __init__(self, log: list[tuple[Any, ...]], shape: tuple[int, ...] = (5, 3, 8, 8)):
        self.log = log
        self.shape = shape

    def __dlpack__(self, **kwargs: Any) -> str:
        self.log.append(("dlpack", kwargs))
        if "max_version" in kwargs:  # an older producer: the consumer retries without it
            raise TypeError("unexpected keyword max_version")
        return "capsule"

    def __dlpack_device__(self) -> tuple[int, int]:
        return CUDA

    def synchronize(self) -> None:  # pragma: no cover - must never be called
        raise AssertionError("host synchronisation")


def test_event_recorded_once_at_hand_off_and_waited_by_the_consumer_stream():
    log: list[tuple[Any, ...]] = []
    ready = stream_ready(FakeDeviceArray(log), ops=RecordingOps(log))
    assert log == [("record", "event1")]  # recorded now; nobody waits yet
    assert len(ready) == 5 and ready.shape == (5, 3, 8, 8)
    assert ready.__dlpack_device__() == CUDA
    # torch.from_dlpack's way: with max_version first, then retried without it
    with pytest.raises(TypeError):
        ready.__dlpack__(stream=7, max_version=(1, 0))
    assert ready.__dlpack__(stream=7) == "capsule"
    assert log[1] == ("wait", 7, "event1")  # the wait comes before any capsule
    assert [e for e in log if e[0] == "wait"] == [("wait", 7, "event1")]  # once per stream
    assert log[-1] == ("dlpack", {"stream": 7})  # the producer sees the consumer's stream


@pytest.mark.parametrize(("stream", "waits"), [(None, [1]), (1, [1]), (2, [2]), (-1, [])])
def test_dlpack_stream_values_of_the_array_api(stream, waits):
    """None and 1: the legacy default stream; 2: per-thread default; -1: no synchronisation."""
    log: list[tuple[Any, ...]] = []
    ready = stream_ready(FakeDeviceArray(log), ops=RecordingOps(log))
    ready.__dlpack__(stream=stream)
    assert [e[1] for e in log if e[0] == "wait"] == waits


def test_two_consumer_streams_each_wait():
    log: list[tuple[Any, ...]] = []
    ready = StreamReady(FakeDeviceArray(log), "ev", RecordingOps(log))
    ready.wait_on(11)
    ready.__dlpack__(stream=12)
    ready.wait_on(11)
    assert [e for e in log if e[0] == "wait"] == [("wait", 11, "ev"), ("wait", 12, "ev")]


def test_host_arrays_pass_through_dlpack_without_a_stream():
    """A host (numpy) array needs no wait; torch reads it through DLPack unchanged."""
    torch = pytest.importorskip("torch")
    log: list[tuple[Any, ...]] = []
    images = np.random.default_rng(0).random((3, 3, 8, 8), dtype=np.float32)
    ready = stream_ready(images, ops=RecordingOps(log))
    t = torch.from_dlpack(ready)
    assert [e[0] for e in log] == ["record"]
    assert t.shape == (3, 3, 8, 8) and np.shares_memory(t.numpy(), images)


def test_feature_extractor_reads_a_stream_ready_batch(tmp_path):
    """The CNN side takes the hand-off object as it takes the array (through DLPack)."""
    torch = pytest.importorskip("torch")
    from hpcdiff.features import FeatureExtractor
    from hpcdiff.features.vgg16 import VGG16

    path = tmp_path / "conv.pth"
    model = VGG16(generator=torch.Generator().manual_seed(1))
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith("features.")}, path)
    ex = FeatureExtractor(str(path), layer="gap", device="cpu", batch_size=4)
    images = np.random.default_rng(2).random((5, 3, 32, 32), dtype=np.float32)
    log: list[tuple[Any, ...]] = []
    got = ex.extract(stream_ready(images, ops=RecordingOps(log)))
    np.testing.assert_array_equal(got, ex.extract(images))


@pytest.mark.gpu
def test_cupy_to_torch_on_other_streams_without_a_host_wait():
    """cupy fills an array on a non-blocking stream; torch reads it on its own stream after
    the event, with cupy's host synchronisations forbidden."""
    torch = pytest.importorskip("torch")
    cupy = pytest.importorskip("cupy")
    cupyx = pytest.importorskip("cupyx")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    producer = cupy.cuda.Stream(non_blocking=True)
    consumer = torch.cuda.Stream()
    with cupy.cuda.Device(0), producer:
        x = cupy.ones((64, 3, 224, 224), dtype=cupy.float32)
        for _ in range(50):  # long enough that an unordered read would see partial work
            x = x * 1.01 + 0.5
        with cupyx.allow_synchronize(False):
            ready = stream_ready(x)
    with torch.cuda.stream(consumer), cupyx.allow_synchronize(False):
        t = torch.from_dlpack(ready)
        total = t.double().sum()
    consumer.synchronize()
    producer.synchronize()
    assert float(total) == pytest.approx(float(x.astype(cupy.float64).sum()), rel=1e-6)

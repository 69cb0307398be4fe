"""The demo says how much disk it needs before it writes, and refuses when it does not fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcdiff.config import SimulateConfig
from hpcdiff.errors import OutputError
from hpcdiff.pipelines import demo_disk
from hpcdiff.pipelines.demo import DemoSettings, run_demo
from hpcdiff.pipelines.demo_disk import estimate_demo_bytes, frame_bytes


def test_frame_bytes_follow_count_shape_dtype_and_compression():
    one = frame_bytes(1, (1480, 1552), dtype="int16", compression="none")
    assert one == 1480 * 1552 * 2
    assert frame_bytes(10, (1480, 1552), dtype="float32", compression="none") == 20 * one
    assert frame_bytes(1, (1480, 1552), dtype="int16", compression="lz4") <= one


def test_cspad_demo_estimate_is_the_size_it_wrote():
    # today's demo: 160 + 48 CSPAD frames; the float32 run that filled 1.9 GB on disk
    runs = [
        SimulateConfig(n_frames=160, detector="cspad", output_dtype="float32"),
        SimulateConfig(n_frames=48, detector="cspad", output_dtype="float32"),
    ]
    est = estimate_demo_bytes(runs, slab_shape=(1480, 1552), fourier_grid=200)
    assert 1.9e9 <= est.total_bytes <= 2.4e9
    assert "208 frames" in est.describe()
    int16 = [SimulateConfig(n_frames=r.n_frames, detector="cspad") for r in runs]
    half = estimate_demo_bytes(int16, slab_shape=(1480, 1552), fourier_grid=200)
    assert half.total_bytes < 0.6 * est.total_bytes  # int16 frames: half the frame bytes


def test_demo_refuses_before_writing_when_the_disk_is_too_small(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(demo_disk, "free_bytes", lambda path: 10 << 20)
    lines: list[str] = []

    class Say:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    out = tmp_path / "demo"
    with pytest.raises(OutputError, match=r"needs about .* GB .* only 0\.01 GB is free"):
        run_demo(
            DemoSettings(out_dir=out, n_train_frames=4, n_new_frames=2, detector="small"),
            stream=Say(),  # type: ignore[arg-type]
        )
    assert any("disk: writes about" in line for line in lines)
    assert not any(p.is_file() for p in out.rglob("*"))  # nothing written


def test_free_bytes_of_a_folder_not_made_yet(tmp_path: Path):
    assert demo_disk.free_bytes(tmp_path / "a" / "b") > 0

"""How fast the host feeds frames: reader processes on lz4 CSPAD int16 frames, and the device feed.

Rows (frames/s, medians of repeats, one run): a plain h5py ``read_direct`` of each batch into
one reused int16 buffer (one thread, the baseline), :class:`ProcessReader` with 1, 2, 4, ...
reader processes (up to the machine's cores), and :class:`DeviceFeed` on top of the
largest reader count (copy into the slots and widening to float32: on ``cpu`` here, on the
GPU where ``torch.cuda`` is available).  The file is written once to a temporary folder
(lz4, one frame per chunk, as Cheetah/OM write) and read from the page cache.

Run alone: ``python benchmarks/bench_feed.py [--quick]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _write(path: Path, n: int) -> tuple[tuple[int, int], str]:
    import h5py
    import hdf5plugin
    import numpy as np

    from hpcdiff.geometry import DetectorModel, cspad_like_geometry

    model = DetectorModel.build(cspad_like_geometry(), photon_energy_ev=9500.0)
    adu = float(model.geom.panels[0].adu_per_ev) * 9500.0
    rng = np.random.default_rng(0)
    shape = model.slab_shape
    dataset = "/entry_1/data_1/data"
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            dataset, shape=(n, *shape), dtype=np.int16, chunks=(1, *shape), **hdf5plugin.LZ4()
        )
        for i in range(n):
            photons = rng.poisson(0.3, shape)
            d[i] = np.clip(np.rint(photons * adu), -32768, 32767).astype(np.int16)
    return shape, dataset


def _timed(fn, repeats: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def run(quick: bool = False) -> dict:
    import h5py
    import hdf5plugin  # noqa: F401
    import numpy as np
    import torch

    from hpcdiff.parallel.device_feed import DeviceFeed
    from hpcdiff.parallel.process_reader import H5Frames, ProcessReader

    n, batch = (48, 8) if quick else (128, 16)
    repeats = 3
    cores = os.cpu_count() or 1
    counts = [k for k in (1, 2, 4, 8, 16) if k <= max(cores, 2)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frames.cxi"
        shape, dataset = _write(path, n)
        ranges = [(a, min(a + batch, n)) for a in range(0, n, batch)]
        buf = np.empty((batch, *shape), np.int16)

        def plain() -> None:
            with h5py.File(path, "r") as f:
                d = f[dataset]
                for a, b in ranges:
                    d.read_direct(buf[: b - a], np.s_[a:b])

        plain()  # page cache
        wall, cpu = _timed(plain, repeats)
        base = n / wall
        rows.append(
            {
                "metric": "plain h5py read_direct (1 thread)",
                "value": base,
                "unit": "frames/s",
                "note": f"{n} lz4 int16 CSPAD frames, batch {batch}; {cpu / wall:.2f} CPU/wall",
            }
        )

        first: list[float] = []  # seconds to the first batch (process start, spawn imports)
        steady_s: list[float] = []  # first batch to last batch (no start, no shutdown)

        def readers(k: int, feed: bool) -> None:
            reader = ProcessReader(
                H5Frames(str(path), dataset),
                ranges,
                frame_shape=shape,
                dtype=np.int16,
                batch_size=batch,
                workers=k,
            )
            if feed:
                it = iter(
                    DeviceFeed(
                        reader, batch_size=batch, frame_shape=shape, dtype=np.int16, device=device
                    )
                )
                t0 = time.perf_counter()
                next(it)
                t1 = time.perf_counter()
                first.append(t1 - t0)
                for _ in it:
                    t2 = time.perf_counter()
                steady_s.append(t2 - t1)
                if device == "cuda":
                    torch.cuda.synchronize()
            else:
                it2 = iter(reader)
                t0 = time.perf_counter()
                next(it2)
                t1 = time.perf_counter()
                first.append(t1 - t0)
                for _ in it2:
                    t2 = time.perf_counter()
                steady_s.append(t2 - t1)

        def steady(wall: float) -> tuple[float, float]:
            # batches 2..last, from the first batch's arrival to the last's: the rate a long
            # run sees (process start and shutdown are reported apart)
            start = statistics.median(first[-repeats:])
            return (n - batch) / max(statistics.median(steady_s[-repeats:]), 1e-9), start

        for k in counts:
            wall, cpu = _timed(lambda k=k: readers(k, False), repeats)
            rate, start = steady(wall)
            rows.append(
                {
                    "metric": f"ProcessReader, {k} process(es), after start",
                    "value": rate,
                    "unit": "frames/s",
                    "note": f"{rate / base:.2f}x plain; first batch after {start:.2f} s "
                    f"(spawn); parent CPU/wall {cpu / wall:.2f}",
                }
            )
        k = counts[-1]
        wall, cpu = _timed(lambda: readers(k, True), repeats)
        rate, start = steady(wall)
        rows.append(
            {
                "metric": f"DeviceFeed({device}) on ProcessReader({k}), after start",
                "value": rate,
                "unit": "frames/s",
                "note": f"{rate / base:.2f}x plain; int16 slots, float32 on {device}; "
                f"first batch after {start:.2f} s",
            }
        )
    return {"title": "Host feed: reader processes and the device feed", "rows": rows}


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv)["rows"]:
        print(f"{row['metric']:<45} {row['value']:>10.1f} {row['unit']}  {row['note']}")

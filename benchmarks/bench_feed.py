"""How fast the host feeds frames: reader processes on lz4 CSPAD int16 frames, and the device feed.

Rows (frames/s, medians of repeats, one run): a plain h5py ``read_direct`` of each batch into
one reused int16 buffer (one thread, the baseline), :class:`ProcessReader` with 1, 2, 4, ...
reader processes (up to the machine's cores), and :class:`DeviceFeed` on top of the
largest reader count (copy into the slots and widening to float32: on ``cpu`` here, on the
GPU where ``torch.cuda`` is available).  The file is written once to a temporary folder
(lz4, one frame per chunk, as Cheetah/OM write) and read from the page cache.

Then the classify job's own input path (``[parallel] reader_processes``): frames delivered
to the consumer of the job's :class:`~hpcdiff.parallel.prefetch.Prefetcher` through
:class:`~hpcdiff.pipelines.classify.FrameReader` (per-frame values and checks included),
by the reader thread (``reader_processes = 0``) and by 1, 2, 4 reader processes
(:class:`~hpcdiff.parallel.reader_pool.RawFrames`), on lz4 and on uncompressed CSPAD int16
frames (photons plus Gaussian read noise, so that lz4 has real work); wall time beside CPU
time (this process and its reader processes, ``RUSAGE_CHILDREN``), and the CPU one reader
process spends per frame, from which the processes a GPU needs for the 2,000 frames/s host
feed follow (each process needs its own core).

Run alone: ``python benchmarks/bench_feed.py [--quick] [--part reader|job|all]`` (default
``reader``; ``benchmarks/run.py`` runs ``all``).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _write(
    path: Path, n: int, *, compression: str = "lz4", read_noise: float = 0.0
) -> tuple[tuple[int, int], str]:
    import h5py
    import hdf5plugin
    import numpy as np

    from hpcdiff.geometry import DetectorModel, cspad_like_geometry

    model = DetectorModel.build(cspad_like_geometry(), photon_energy_ev=9500.0)
    adu = float(model.geom.panels[0].adu_per_ev) * 9500.0
    rng = np.random.default_rng(0)
    shape = model.slab_shape
    dataset = "/entry_1/data_1/data"
    filters = dict(hdf5plugin.LZ4()) if compression == "lz4" else {}
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            dataset, shape=(n, *shape), dtype=np.int16, chunks=(1, *shape), **filters
        )
        for i in range(n):
            photons = rng.poisson(0.3, shape).astype(np.float32)
            if read_noise:
                photons += rng.normal(0.0, read_noise, shape).astype(np.float32)
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


def run(quick: bool = False, part: str = "all") -> dict:
    """Rows of ``part``: ``"reader"`` (ProcessReader, DeviceFeed), ``"job"`` (the classify
    job's input path, :func:`job_rows`) or ``"all"``."""
    rows = reader_rows(quick) if part in ("reader", "all") else []
    if part in ("job", "all"):
        rows += job_rows(quick)
    return {"title": "Host feed: reader processes and the device feed", "rows": rows}


def reader_rows(quick: bool = False) -> list[dict]:
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
    return rows


def _cpu_s() -> tuple[float, float]:
    """CPU seconds so far of this process, and of its finished (joined) child processes."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), kids.ru_utime + kids.ru_stime


#: Frames/s one GPU must be fed (issue 15's host-feed target).
TARGET_FPS = 2000.0


def _job_feed(path: Path, ranges: list[tuple[int, int]], k: int, batch: int, skip: int) -> dict:
    """One pass of the job's input path with ``k`` reader processes (0: the thread).

    ``steady``: frames/s of the batches after the first ``skip`` (the ones read while the
    processes filled their slots at start), as the consumer receives them; ``main_ms``: CPU
    of this process per frame over those batches; ``children_s``: CPU of the reader
    processes over the whole pass (start included); ``read_ms``: their CPU per frame
    inside the reads (measured in each process); ``first_s``: to the first batch.
    """
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.parallel.prefetch import Prefetcher
    from hpcdiff.parallel.reader_pool import RawFrames
    from hpcdiff.pipelines.classify import FrameReader

    source = FrameSource([path])
    raw = RawFrames(source, processes=k, batch_size=batch, keep=4)
    reader = FrameReader(source, raw=raw.read_raw)
    (_, c0), w0 = _cpu_s(), time.perf_counter()
    stamps: list[tuple[float, float, int]] = []  # (wall, own CPU, frames so far)
    frames = 0
    with raw.plan(ranges), Prefetcher(reader, ranges, depth=2) as pf:
        for got in pf:
            frames += len(got.numbers)
            int(got.frames[-1, 0, 0])  # the consumer touches the batch
            stamps.append((time.perf_counter(), time.process_time(), frames))
    (_, c1), w1 = _cpu_s(), time.perf_counter()
    source.close()
    (ta, pa, fa), (tb, pb, fb) = stamps[skip], stamps[-1]
    return {
        "steady": (fb - fa) / (tb - ta),
        "main_ms": 1e3 * (pb - pa) / (fb - fa),
        "children_s": c1 - c0,
        "first_s": stamps[0][0] - w0,
        "whole": frames / (w1 - w0),
        "read_ms": 1e3 * raw.process_cpu_s / frames,
    }


def job_rows(quick: bool = False) -> list[dict]:
    """The classify job's input path: reader thread vs 1, 2, 4 reader processes."""
    import numpy as np

    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.parallel.reader_pool import shared_slots

    counts = (0, 1, 2, 4)
    batch = 4
    skip = shared_slots(max(counts), 4)  # batches read ahead at start by the most processes
    n = batch * (skip + (8 if quick else 20))
    repeats = 2 if quick else 3
    cores = os.cpu_count() or 1
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for compression in ("lz4", "none"):
            path = Path(tmp) / f"frames-{compression}.cxi"
            shape, _ = _write(path, n, compression=compression, read_noise=0.15)
            mib = path.stat().st_size / 2**20
            raw_mib = n * int(np.prod(shape)) * 2 / 2**20
            ranges = [(a, min(a + batch, n)) for a in range(0, n, batch)]

            # one process decompressing into a reused buffer: what a reader process pays
            src = FrameSource([path])
            buf = np.empty((batch, *shape), dtype=src.dtype)
            for a, b in ranges:  # page cache, open file
                src.read_raw(a, b, out=buf)
            per_frame = []
            for _ in range(repeats):
                c0 = time.process_time()
                for a, b in ranges:
                    src.read_raw(a, b, out=buf)
                per_frame.append((time.process_time() - c0) / n)
            src.close()
            cpu_frame = statistics.median(per_frame)

            # the CPU of starting k processes, from a plan of one frame
            def spawn_s(k: int, path: Path = path) -> float:
                return _job_feed(path, [(0, 1), (1, 2)], k, batch, 0)["children_s"] / k

            start_cpu = statistics.median(spawn_s(1) for _ in range(repeats))
            _job_feed(path, ranges, 0, batch, skip)  # page cache, imports
            results: dict[int, list[dict]] = {k: [] for k in counts}
            for _ in range(repeats):  # interleaved: the machine's load hits each alike
                for k in counts:
                    results[k].append(_job_feed(path, ranges, k, batch, skip))
            med = {
                k: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                for k, rs in results.items()
            }
            base = med[0]["steady"]
            label = "lz4" if compression == "lz4" else "uncompressed"
            for k, m in med.items():
                who = "reader thread" if k == 0 else f"{k} reader process(es)"
                kids = (
                    ""
                    if k == 0
                    else f", reader processes {m['read_ms']:.2f} in reads, "
                    f"{1e3 * (m['children_s'] - k * start_cpu) / n:.2f} in all"
                )
                rows.append(
                    {
                        "metric": f"job feed, {label}: {who}",
                        "value": m["steady"],
                        "unit": "frames/s",
                        "note": (
                            f"{m['steady'] / base:.2f}x thread; CPU ms/frame: main process "
                            f"{m['main_ms']:.2f}{kids}; first batch after "
                            f"{m['first_s']:.2f} s; whole pass {m['whole']:.0f} frames/s"
                        ),
                    }
                )
            need = TARGET_FPS * cpu_frame
            rows.append(
                {
                    "metric": f"job feed, {label}: read CPU per frame (one process)",
                    "value": 1e3 * cpu_frame,
                    "unit": "ms",
                    "note": (
                        f"{1 / cpu_frame:.0f} frames/s per busy core; {TARGET_FPS:.0f} "
                        f"frames/s per GPU needs {need:.1f} busy cores: reader_processes >= "
                        f"{int(np.ceil(need))} per GPU rank, plus a core for the main "
                        f"thread; each process costs {start_cpu:.2f} CPU s to start; this "
                        f"box: {cores} cores, shared; {n} frames, file {mib:.0f} MiB for "
                        f"{raw_mib:.0f} MiB of int16"
                    ),
                }
            )
    return rows


if __name__ == "__main__":
    # alone, the reader rows by default (benchmarks/gpu.sh gives this step 100 s)
    part = sys.argv[sys.argv.index("--part") + 1] if "--part" in sys.argv else "reader"
    for row in run(quick="--quick" in sys.argv, part=part)["rows"]:
        print(f"{row['metric']:<52} {row['value']:>10.1f} {row['unit']}  {row['note']}")

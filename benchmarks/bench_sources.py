"""Read throughput of the frame sources beside CXI, beside CXI itself on the same frames.

Writes, in a temporary folder, the same AGIPD-1M-sized float32 frames (16 x 512 x 128) as
a European XFEL corrected run (extra-data's mock-data layout, one file per module), as an
NXmx file and as a CXI file (both ``(N, 8192, 128)``, uncompressed), then reads each in
batches as the classify job does (``read(start, stop)``) and prints the median frames/s,
wall and CPU, per source and the ratio to CXI.

Usage: python benchmarks/bench_sources.py [--trains 4] [--pulses 16] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _time_reads(src, batch: int, repeats: int) -> tuple[float, float]:
    walls, cpus = [], []
    src.read(0, src.n_frames)  # warm the page cache: every source reads from memory
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, src.n_frames, batch):
            src.read(start, min(src.n_frames, start + batch))
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return src.n_frames / statistics.median(walls), src.n_frames / statistics.median(cpus)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trains", type=int, default=4)
    p.add_argument("--pulses", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from test_sources_euxfel import make_agipd_run
    from test_sources_nxmx import write_nxmx

    from hpcdiff.io.cxi import FrameSource, write_cxi
    from hpcdiff.io.sources.euxfel import EuXFELSource
    from hpcdiff.io.sources.nxmx import NXmxSource

    with tempfile.TemporaryDirectory() as tmp:
        run = make_agipd_run(Path(tmp) / "r0001", ntrains=args.trains, per_train=args.pulses)
        with EuXFELSource([run]) as src:
            frames = src.read(0, src.n_frames)
        n = len(frames)
        cxi = write_cxi(Path(tmp) / "run.cxi", frames, compression="none")
        nxmx = Path(tmp) / "run.nxs"
        write_nxmx(nxmx, frames[:1, :48, :32])  # the NXmx skeleton, then the frames
        with h5py.File(nxmx, "r+") as h5:
            del h5["entry/data/data"]
            h5.create_dataset("entry/data/data", data=frames, chunks=(1, 8192, 128))
            for m in (0, 1):
                h5[f"entry/instrument/detector/module{m}/data_size"][...] = [4096, 128]
                h5[f"entry/instrument/detector/module{m}/data_origin"][...] = [4096 * m, 0]
        results = {}
        for name, make in (
            ("cxi", lambda: FrameSource([cxi])),
            ("euxfel", lambda: EuXFELSource([run])),
            ("nxmx", lambda: NXmxSource([nxmx])),
        ):
            with make() as src:
                assert src.n_frames == n
                results[name] = _time_reads(src, args.batch, args.repeats)
    print(f"{n} frames of 8192 x 128 float32, batches of {args.batch}, median of {args.repeats}")
    base = results["cxi"][0]
    for name, (wall, cpu) in results.items():
        print(
            f"  {name:7s} {wall:8.1f} frames/s wall  {cpu:8.1f} frames/s CPU  {wall / base:5.2f} x cxi"
        )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

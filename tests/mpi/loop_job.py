"""Run the distributed frame loop alone on CXI files (for tests under ``mpiexec -n N``).

Per frame it computes the pixel sum (float64) and the first row's first four pixels, so
results can be checked against numpy.  Exit statuses as ``hpcdiff classify``: 0 done,
75 stopped by SIGTERM/SIGUSR1 (resumable), 1 error.

Usage: python loop_job.py OUT_DIR FILE.cxi [FILE.cxi ...] [--batch N] [--checkpoint K]
       [--delay-s S] [--fail-rank R] [--pid-dir DIR] [--reader-processes P]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from hpcdiff.io.cxi import FrameSource
from hpcdiff.parallel.frame_loop import FrameBatch, distributed_map
from hpcdiff.parallel.mpi import abort_on_error, get_comm
from hpcdiff.parallel.reader_pool import RawFrames
from hpcdiff.parallel.shards import ShardStore
from hpcdiff.parallel.signals import EXIT_PREEMPTED, Preempted, stop_on_signals
from hpcdiff.pipelines.classify import FrameReader
from hpcdiff.progress import setup_logging


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("files", nargs="+")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--checkpoint", type=int, default=8)
    p.add_argument("--delay-s", type=float, default=0.0)
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--pid-dir", type=Path)
    p.add_argument("--reader-processes", type=int, default=0)
    args = p.parse_args()
    comm = get_comm()
    rank = comm.Get_rank()
    setup_logging(rank, comm.Get_size())
    if args.pid_dir is not None:
        (args.pid_dir / f"rank{rank}.pid").write_text(str(os.getpid()))

    def process(batch: FrameBatch) -> dict[str, np.ndarray]:
        if rank == args.fail_rank:
            raise RuntimeError(f"injected failure on rank {rank}")
        time.sleep(args.delay_s)
        return {
            "sum": batch.frames.astype(np.float64).sum(axis=(1, 2)),
            "corner": batch.frames[:, 0, :4].copy(),
        }

    try:
        with abort_on_error(comm), stop_on_signals() as stop:
            source = FrameSource(args.files)
            store_dir = args.out / "loop.shards"
            if rank == 0:
                ShardStore.prepare(
                    store_dir, config_hash="test", n_frames=source.n_frames, files=args.files
                )
            comm.Barrier()
            store = ShardStore(store_dir)
            raw = RawFrames(source, processes=args.reader_processes, batch_size=args.batch)
            out = distributed_map(
                comm,
                n_frames=source.n_frames,
                plan=raw.plan,
                read=FrameReader(source, raw=raw.read_raw),
                process=process,
                store=store,
                config_hash="test",
                batch_size=args.batch,
                checkpoint_every=args.checkpoint,
                stop=stop,
                progress_interval_s=0.2,
            )
            if rank == 0:
                frames, arrays = store.read(["sum", "corner"])
                rejects = store.rejects()
                np.savez(
                    args.out / "result.npz",
                    frames=frames,
                    reject_frames=np.array([f for f, _ in rejects], dtype=np.int64),
                    reject_reasons=np.array([r for _, r in rejects]),
                    done_before=out.done_before,
                    processed=out.processed,
                    **arrays,
                )
    except Preempted:
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())

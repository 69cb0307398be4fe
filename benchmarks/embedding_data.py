"""Per-frame common-arc data of simulated experiments for the embedding benchmark, cached.

A configuration (:class:`hpcdiff.config.SimulateConfig` keywords, as in
``bench_transfer.CONFIGS``) is simulated with :func:`hpcdiff.simulate.simulate_experiment`
and run through the Fourier job's per-frame chain (:func:`hpcdiff.pipelines.fourier.process_chunk`,
serially); each frame's voxels on the similarity grid, their sums and counts, and the labels
are cached as one ``.npz`` under ``/tmp/hpcdiff-embed-cache`` (never in the repository),
keyed by a hash of the configuration, the frame count and the grid.

Usage::

    python benchmarks/embedding_data.py A H-triclinic --frames 240
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

CACHE = Path("/tmp/hpcdiff-embed-cache")


def _key(name: str, spec: dict[str, Any], n_frames: int, grid: tuple[int, float]) -> str:
    text = json.dumps({"spec": spec, "n": n_frames, "grid": grid}, sort_keys=True, default=str)
    return f"{name}-{n_frames}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def load(
    name: str,
    spec: dict[str, Any],
    n_frames: int,
    *,
    grid_size: int = 100,
    max_hkl: float = 10.0,
    log: Any = print,
) -> dict[str, Any]:
    """Frames of one configuration: ``frames`` (list of FrameVoxels), ``labels``, ``n_voxels``."""
    import transfer_data as td

    from hpcdiff.config import load_job
    from hpcdiff.merge import FrameVoxels
    from hpcdiff.pipelines.fourier import FourierSettings, plan_frames, process_chunk
    from hpcdiff.simulate import simulate_experiment

    CACHE.mkdir(parents=True, exist_ok=True)
    key = _key(name, spec, n_frames, (grid_size, max_hkl))
    path = CACHE / f"{key}.npz"
    if not path.is_file():
        cfg, dropped = td.make_sim_config({**spec, "n_frames": n_frames, "frames_per_file": 60})
        t0 = time.perf_counter()
        work = CACHE / f"{key}.sim"
        sim = simulate_experiment(cfg, work, force=True)
        t_sim = time.perf_counter() - t0
        job = load_job(sim.job)
        job = dataclasses.replace(
            job,
            fourier=dataclasses.replace(
                job.fourier, grid_size=grid_size, max_hkl=max_hkl, similarity_grid_size=grid_size
            ),
        )
        plan = plan_frames(job)
        settings = FourierSettings.from_job(job)
        voxels, sums, counts, lengths = [], [], [], []
        t0 = time.perf_counter()
        for s in range(0, len(plan), 16):
            _acc, part = process_chunk(plan, range(s, min(s + 16, len(plan))), settings)
            for f in part.similarity_frames:
                voxels.append(f.voxels)
                sums.append(f.sums)
                counts.append(f.counts)
                lengths.append(len(f))
        t_proc = time.perf_counter() - t0
        labels = plan.labels if plan.labels is not None else np.full(len(plan), -1, np.int8)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            voxels=np.concatenate(voxels),
            sums=np.concatenate(sums),
            counts=np.concatenate(counts),
            lengths=np.asarray(lengths),
            labels=labels,
            n_voxels=settings.similarity_grid.n_voxels,
            dropped=np.array(dropped, dtype=str),
        )
        tmp.replace(path)
        log(
            f"embedding data {name}: simulated {n_frames} frames in {t_sim:.0f} s, "
            f"processed in {t_proc:.0f} s (dropped simulator keys: {dropped})"
        )
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    with np.load(path) as z:
        ends = np.cumsum(z["lengths"])
        starts = ends - z["lengths"]
        frames = [
            FrameVoxels(z["voxels"][a:b], z["sums"][a:b], z["counts"][a:b])
            for a, b in zip(starts, ends, strict=True)
        ]
        return {"frames": frames, "labels": z["labels"], "n_voxels": int(z["n_voxels"])}


def specs() -> dict[str, dict[str, Any]]:
    """The configurations: ``bench_transfer``'s, and the default simulation at three seeds."""
    import bench_transfer as bt

    out = {**bt.CONFIGS, **bt.HARD}
    out["default-s7"] = dict(detector="cspad", seed=7, diffuse_fraction=0.5, preset="moderate")
    out["small-s3"] = dict(detector="small", seed=3, diffuse_fraction=0.5, preset="moderate")
    # held out from every embedding choice (added with the data-driven embedding, #14)
    out["small-s5"] = dict(detector="small", seed=5, diffuse_fraction=0.5, preset="moderate")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("names", nargs="+")
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--grid-size", type=int, default=100)
    args = p.parse_args(argv)
    all_specs = specs()
    for name in args.names:
        data = load(name, all_specs[name], args.frames, grid_size=args.grid_size)
        print(name, len(data["frames"]), "frames", int(np.sum(data["labels"] == 1)), "diffuse")
    return 0


if __name__ == "__main__":
    sys.exit(main())

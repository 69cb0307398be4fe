"""Benchmark of the Fourier job's kernels: merge throughput, CC vs frames, similarity scaling.

Prints numbers, medians and ratios (not a test).  Sections:

1. merge: (a) the merge step alone (residual values -> accumulator) per CSPAD frame, median
   CPU time (``time.process_time``) and wall, for the merge of earlier versions ("legacy"),
   a plain ``np.add.at`` merge of the same values and the current one
   (``PixelDirections`` + ``MergeAccumulator.add_voxels``), with the ratios, on the cube
   +-10 hkl grid of earlier defaults and on the grid fitted to the cell and the detector's
   q range, each alone and with the similarity grid beside it; (b) frames/s per worker
   (one process, one thread) of ``process_frames`` on CSPAD frames (2.3 M pixels; the
   classify job's frame chain, polarisation and solid-angle correction, 200^3 grid).
2. cc: a simulated CSPAD experiment (``hpcdiff.simulate``, preset ``easy``, all frames
   diffuse) merged into the 200^3 hkl grid; Pearson CC of the merged map with the true
   diffuse intensity (truth.h5) after n frames.
3. similarity: common-arc similarity of N = 500, 1000, 2000 frames (pairs/s, total time,
   fitted growth exponent of time vs N), and for small N the speed ratio against the
   straightforward method (each frame a dense 200^3 volume, pairwise correlation over
   voxels finite in both) with the largest difference of the results.  Frames are made
   cheaply: real Ewald-sphere geometry of the CSPAD detector at reduced pixel sampling
   (every ``stride``-th pixel along fs and ss), random orientations, values sampled from a
   smooth random 3D map plus noise, binned into the 200^3 grid.
4. embedding: simulated experiments with half the frames diffuse (``embedding_data.py``):
   per-frame scores (mean CC, mean Fisher z, significance) and the diffusion map of the
   profile sketch on a sparse kNN kernel, ROC AUC per coordinate (target: best >= 0.8),
   beside the dense ``exp(CC - 1)`` map of before; tuned and held-out configurations
   printed separately.
5. scaling: the on-disk similarity stage (chunk files, row-block tasks reading columns
   from disk) on synthetic arcs, N = 500 ... 5000: CPU time per frame, peak memory of the
   widest task, a fit of cost against N, and the plan for 10^4 and 10^5 frames (CPU,
   memory, and the similarity's disk in fourier.work before and after the fold).
6. endtoend: ``hpcdiff simulate`` (small detector, half the frames diffuse) then
   ``hpcdiff fourier`` with the default [fourier] and [fourier.cluster] (2 local workers)
   on N frames, as subprocesses: wall, CPU (``os.wait4`` of the command and the workers it
   waited for), peak resident memory of each process (``VmHWM`` polled), peak disk of
   ``fourier.work``, the peak size of dask's scratch folder (``DASK_TEMPORARY_DIRECTORY``
   set to ``<dir>/n<N>/dask-scratch``, polled every 2 s: what the workers spill) and what
   is left there, output sizes, and whether the outputs are complete; with two N or
   more, a fit ``CPU = c + a N + b pairs`` extrapolated to 10^4 and 10^5.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_fourier.py            # everything (~10 min)
    python benchmarks/bench_fourier.py --sections merge --merge-frames 6   # merge rows only
    python benchmarks/bench_fourier.py --quick                       # reduced sizes
    python benchmarks/bench_fourier.py --sections similarity --sizes 500 1000 2000
    python -u benchmarks/bench_fourier.py --sections endtoend --endtoend-frames 1000 2000 \
        --endtoend-dir /tmp/e2e                                      # end to end (minutes+)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def _rotations(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, 3))
    for i in range(n):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        out[i] = q if np.linalg.det(q) > 0 else -q
    return out


def _orientations(n: int, seed: int, cell_nm=(7.9, 7.9, 3.8)) -> np.ndarray:
    inv = np.diag(1.0 / np.asarray(cell_nm))
    return np.stack([inv @ r.T for r in _rotations(n, seed)])


def _chain(geom):
    """The Fourier job's frame chain of ``geom`` (default sections), 0.1 m, 9.5 keV."""
    from hpcdiff.geometry import DetectorModel
    from hpcdiff.pipelines.fourier_frames import ChainSettings, FrameChain

    model = DetectorModel.build(geom, clen_m=0.1, photon_energy_ev=9500.0)
    return FrameChain(model, ChainSettings())


def _unit_directions(chain, clen_m: float) -> np.ndarray:
    """``(n_ss, n_fs, 3)`` ``k_out - k_in`` (``|k| = 1``) of every pixel at ``clen_m``."""
    pos = chain.detector(clen_m)[0].positions_m
    unit = pos / np.linalg.norm(pos, axis=-1, keepdims=True)
    unit[..., 2] -= 1.0
    return unit


def bench_merge(n_frames: int, grid_size: int) -> dict:
    """Frames/s of process_frames on CSPAD-sized synthetic frames, one process."""
    from hpcdiff.geometry import DetectorModel, cspad_like_geometry
    from hpcdiff.merge import Grid
    from hpcdiff.pipelines.fourier import FourierSettings, process_frames
    from hpcdiff.pipelines.fourier_frames import FrameChain

    geom = cspad_like_geometry(clen_m=0.1)
    rng = np.random.default_rng(0)
    frames = rng.gamma(2.0, 50.0, size=(n_frames, *geom.slab_shape)).astype(np.float32)
    orient = _orientations(n_frames, 1)
    settings = FourierSettings(Grid(grid_size, 10.0), Grid(grid_size // 2, 10.0))
    model = DetectorModel.build(geom, clen_m=0.1, photon_energy_ev=9500.0)
    detector = FrameChain(model, settings.chain)  # the classify job's chain, default sections
    kw = dict(chain=detector, settings=settings)
    process_frames(
        frames[:1], orient[:1], photon_energy_ev=np.full(1, 9500.0), clen_m=np.full(1, 0.1), **kw
    )  # warm caches
    times = []
    for _repeat in range(3):  # one task of n_frames frames, as a dask worker runs it
        t0 = time.perf_counter()
        process_frames(
            frames,
            orient,
            photon_energy_ev=np.full(n_frames, 9500.0),
            clen_m=np.full(n_frames, 0.1),
            **kw,
        )
        times.append(time.perf_counter() - t0)
    med = statistics.median(times) / n_frames
    print(
        f"merge: CSPAD {geom.slab_shape[0]}x{geom.slab_shape[1]} slab "
        f"({int(detector.valid.sum())} valid pixels), grid {grid_size}^3 + similarity grid "
        f"{grid_size // 2}^3, the classify chain (corrections, standard background, Bragg mask), "
        f"polarisation/solid angle: tasks of "
        f"{n_frames} frames, median of 3: {med * 1e3:.0f} ms/frame = {1 / med:.2f} frames/s per worker"
    )
    return {"seconds_per_frame_median": med, "frames_per_s_per_worker": 1 / med, "n": n_frames}


def _legacy_map_frame_grids(values, q, orientation, *, grids, valid):
    """The merge as it was before the per-axis grid (float64, q gathered per frame, sparse
    bin then scatter): kept here as the reference of the speed ratio."""
    from hpcdiff.merge import bin_frame, fractional_hkl

    keep = np.asarray(valid, dtype=bool) & np.isfinite(values)
    vals = values[keep].astype(np.float64)
    hkl = fractional_hkl(q[keep], orientation)
    return [bin_frame(vals, grid.voxel_index(hkl)) for grid in grids]


def _legacy_add_frame(acc, frame) -> None:
    acc.sums[frame.voxels] += frame.sums
    acc.counts[frame.voxels] += frame.counts
    acc.n_frames += 1


def bench_merge_kernel(n_frames: int, grid_size: int) -> dict:
    """CPU time and wall per CSPAD frame of the merge step alone (residual -> accumulator).

    Three ways on the same residual values and orientations, one process, one thread:
    ``legacy`` (the merge of earlier versions, float64), ``add.at`` (the plain way:
    float64 ``hkl = q @ inv(A)`` of the valid pixels, floor to a flat index,
    :func:`numpy.add.at` into sums and counts) and ``new`` (:class:`hpcdiff.merge.
    PixelDirections` built once per detector: one float32 matmul per frame, truncation to a
    flat index, :meth:`~hpcdiff.merge.MergeAccumulator.add_voxels`).  On two grids: the cube
    +-10 hkl of earlier defaults (few CSPAD pixels land inside for this cell) and the grid
    fitted to the cell and the detector's q range (every pixel inside), each alone and
    with the similarity grid of half the size beside it (as :func:`process_frames` does).
    """
    from hpcdiff.fourier_grid import detector_q_max
    from hpcdiff.geometry import cspad_like_geometry, photon_energy_to_wavelength_m
    from hpcdiff.merge import Grid, MergeAccumulator, bin_frame, fit_grid

    energy = 9500.0
    geom = cspad_like_geometry(clen_m=0.1)
    detector = _chain(geom)
    unit = _unit_directions(detector, 0.1)
    valid = detector.valid
    lam_nm = photon_energy_to_wavelength_m(energy) * 1e9
    rng = np.random.default_rng(0)
    residuals = rng.normal(size=(n_frames, *geom.slab_shape)).astype(np.float32)
    residuals[:, ~valid] = np.nan
    orient = _orientations(n_frames, 1)
    q_max = detector_q_max(geom, photon_energy_ev=energy, clen_m=0.1)
    t0 = time.process_time()
    pixels = detector.pixels(0.1)
    t_build = time.process_time() - t0
    grids = {
        "cube +-10 hkl": Grid(grid_size, 10.0),
        "fitted": fit_grid(orient, q_max_per_nm=q_max, size=grid_size),
    }
    rows = {}
    print(
        f"merge kernel: CSPAD {geom.slab_shape[0]}x{geom.slab_shape[1]} ({len(pixels)} valid "
        f"pixels), cell 7.9 x 7.9 x 3.8 nm, q_max {q_max:.2f} nm^-1, {n_frames} frames, "
        f"median per frame; PixelDirections built once in {t_build * 1e3:.0f} ms CPU"
    )
    for gname, grid in grids.items():
        sim = Grid(tuple(max(1, s // 2) for s in grid.shape), grid.half_widths, grid.extent)
        inside = []
        for with_sim in (False, True):
            sets = (grid, sim) if with_sim else (grid,)
            label = f"{gname} {'x'.join(map(str, grid.shape))}" + (
                " + similarity grid" if with_sim else ""
            )
            accs = {k: MergeAccumulator.empty(grid) for k in ("legacy", "add.at", "new")}
            times: dict[str, list[tuple[float, float]]] = {k: [] for k in accs}
            for i in range(n_frames):
                res, a = residuals[i], orient[i]
                # legacy
                c0, w0 = time.process_time(), time.perf_counter()
                out = _legacy_map_frame_grids(res, unit / lam_nm, a, grids=sets, valid=valid)
                _legacy_add_frame(accs["legacy"], out[0])
                times["legacy"].append((time.process_time() - c0, time.perf_counter() - w0))
                # plain np.add.at of the same values
                c0, w0 = time.process_time(), time.perf_counter()
                keep = valid & np.isfinite(res)
                vals = res[keep].astype(np.float64)
                hkl = (unit[keep] / lam_nm) @ np.linalg.inv(a)
                for j, g in enumerate(sets):
                    flat = g.voxel_index(hkl)
                    ok = flat >= 0
                    if j == 0:
                        np.add.at(accs["add.at"].sums, flat[ok], vals[ok])
                        np.add.at(accs["add.at"].counts, flat[ok], 1)
                    else:
                        bin_frame(vals, flat)
                times["add.at"].append((time.process_time() - c0, time.perf_counter() - w0))
                # new
                c0, w0 = time.process_time(), time.perf_counter()
                v = pixels.values(res)
                vox = pixels.voxels(a, wavelength_nm=lam_nm, grids=sets)
                accs["new"].add_voxels(vox[0], v)
                for extra in vox[1:]:
                    bin_frame(v, extra)
                times["new"].append((time.process_time() - c0, time.perf_counter() - w0))
                if not with_sim:
                    inside.append(float(np.mean(vox[0] >= 0)))
            med = {
                k: (statistics.median(c for c, _ in t), statistics.median(w for _, w in t))
                for k, t in times.items()
            }
            same_counts = bool(np.array_equal(accs["new"].counts, accs["add.at"].counts))
            moved = int(np.abs(accs["new"].counts - accs["add.at"].counts).sum() // 2)
            sums_diff = float(np.max(np.abs(accs["legacy"].sums - accs["new"].sums)))
            row = {
                "cpu_s_per_frame": {k: m[0] for k, m in med.items()},
                "wall_s_per_frame": {k: m[1] for k, m in med.items()},
                "speedup_cpu_vs_legacy": med["legacy"][0] / med["new"][0],
                "speedup_cpu_vs_add_at": med["add.at"][0] / med["new"][0],
                "add_at_speedup_cpu_vs_legacy": med["legacy"][0] / med["add.at"][0],
                "pixels_moved_vs_add_at": moved,
                "fraction_pixels_inside": float(np.mean(inside)) if inside else None,
            }
            rows[label] = row
            print(
                f"merge kernel: {label}: CPU ms/frame legacy {med['legacy'][0] * 1e3:.0f}, "
                f"add.at {med['add.at'][0] * 1e3:.0f}, new {med['new'][0] * 1e3:.0f} "
                f"(wall {med['legacy'][1] * 1e3:.0f} / {med['add.at'][1] * 1e3:.0f} / "
                f"{med['new'][1] * 1e3:.0f}); new is x{row['speedup_cpu_vs_legacy']:.1f} "
                f"legacy, x{row['speedup_cpu_vs_add_at']:.1f} add.at (CPU); add.at is "
                f"x{row['add_at_speedup_cpu_vs_legacy']:.2f} legacy"
                + (
                    f"; {row['fraction_pixels_inside']:.0%} of pixels inside"
                    if inside and not with_sim
                    else ""
                )
                + f"; counts equal to add.at: {same_counts} ({moved} pixel(s) in a neighbouring "
                f"voxel, float32 rounding), max |sums - legacy| {sums_diff:.1e}"
            )
    return rows


def bench_grid_fill(n_frames: int, grid_size: int, stride: int = 4) -> dict:
    """How much of each grid CSPAD frames reach: the old default cube +-10 hkl, the cube that
    holds the detector's reach on the longest axis, and the per-axis grid fitted to the cell.

    Frames: CSPAD at 0.1 m, 9.5 keV, one pixel in ``stride`` along fs and ss, random
    orientations; cells of other shapes than the one the merge was developed on.
    """
    from hpcdiff.fourier_grid import detector_q_max
    from hpcdiff.geometry import cspad_like_geometry, photon_energy_to_wavelength_m
    from hpcdiff.merge import Grid, MergeAccumulator, PixelDirections, fit_grid

    geom = cspad_like_geometry(clen_m=0.1)
    detector = _chain(geom)
    unit = _unit_directions(detector, 0.1)
    sub = (slice(None, None, stride), slice(None, None, stride))
    pixels = PixelDirections.build(unit[sub], detector.valid[sub])
    lam_nm = photon_energy_to_wavelength_m(9500.0) * 1e9
    q_max = detector_q_max(geom, photon_energy_ev=9500.0, clen_m=0.1)
    cells = {
        "7.9 x 7.9 x 3.8 nm": (7.9, 7.9, 3.8),
        "elongated 3.8 x 3.8 x 25 nm": (3.8, 3.8, 25.0),
        "5 x 10 x 20 nm": (5.0, 10.0, 20.0),
    }
    out = {}
    values = np.ones(len(pixels), np.float32)
    for name, cell in cells.items():
        orient = _orientations(n_frames, 3, cell_nm=cell)
        fitted = fit_grid(orient, q_max_per_nm=q_max, size=grid_size)
        grids = {
            "cube +-10": Grid(grid_size, 10.0),
            "cube +-max": Grid(grid_size, max(fitted.half_widths)),
            "fitted": fitted,
        }
        accs = {k: MergeAccumulator.empty(g) for k, g in grids.items()}
        inside = {k: 0 for k in grids}
        for a in orient:
            vox = pixels.voxels(a, wavelength_nm=lam_nm, grids=tuple(grids.values()))
            for k, v in zip(grids, vox, strict=True):
                accs[k].add_voxels(v, values)
                inside[k] += int(np.count_nonzero(v >= 0))
        row = {}
        for k, g in grids.items():
            row[k] = {
                "half_widths": list(g.half_widths),
                "fraction_voxels_filled": float(np.count_nonzero(accs[k].counts) / g.n_voxels),
                "fraction_pixels_inside": inside[k] / (n_frames * len(pixels)),
            }
        out[name] = row
        print(
            f"grid fill: cell {name}, {n_frames} CSPAD frames (1 pixel in {stride}^2): "
            + "; ".join(
                f"{k} (+-{', '.join(f'{w:.1f}' for w in grids[k].half_widths)}): "
                f"{r['fraction_voxels_filled']:.1%} of voxels filled, "
                f"{r['fraction_pixels_inside']:.0%} of pixels inside"
                for k, r in row.items()
            )
        )
    return out


def bench_cc(n_frames: int, grid_size: int, steps: list[int], workdir: Path) -> dict:
    """CC of the merged map with the truth after n frames of a simulated CSPAD experiment."""
    from hpcdiff.config import SimulateConfig, load_job
    from hpcdiff.merge import MergeAccumulator, map_correlation
    from hpcdiff.pipelines.fourier import FourierSettings, plan_frames, process_chunk, read_truth
    from hpcdiff.simulate import simulate_experiment

    cfg = SimulateConfig(
        n_frames=n_frames,
        detector="cspad",
        preset="easy",
        diffuse_fraction=1.0,
        compression="none",
        frames_per_file=n_frames,
        truth_grid_size=grid_size,
        truth_max_hkl=10.0,
        seed=7,
    )
    t0 = time.perf_counter()
    sim = simulate_experiment(cfg, workdir / "sim", force=True)
    t_sim = time.perf_counter() - t0
    job = load_job(sim.job)
    import dataclasses

    job = dataclasses.replace(
        job,
        fourier=dataclasses.replace(
            job.fourier,
            grid_size=grid_size,
            max_hkl=10.0,
            similarity_grid_size=32,
            mask_bragg_radius_hkl=0.15,
        ),
    )
    plan = plan_frames(job)
    settings = FourierSettings.from_job(job)
    truth, _axes = read_truth(sim.truth)
    acc = MergeAccumulator.empty(settings.grid)
    rows_done = 0
    out = []
    t0 = time.perf_counter()
    for n in steps:
        if n > len(plan):
            break
        part, _ = process_chunk(plan, range(rows_done, n), settings)
        acc.merge(part)
        rows_done = n
        cc, nvox = map_correlation(acc.intensity(), truth)
        per_voxel = float(acc.counts.sum() / max(np.count_nonzero(acc.counts), 1))
        out.append({"frames": n, "cc": cc, "voxels": nvox, "pixels_per_voxel": per_voxel})
        print(
            f"cc: {n:4d} frames merged -> CC(merged, truth) = {cc:.3f} over {nvox} voxels "
            f"({per_voxel:.1f} pixels per measured voxel)"
        )
    t_merge = time.perf_counter() - t0
    from hpcdiff.fourier_truth import load_truth, truth_summary
    from hpcdiff.merge import reciprocal_metric

    tc = truth_summary(acc, load_truth(sim.truth), metric=reciprocal_metric(plan.orientations))
    shells = ", ".join(
        f"{s['q_min_nm_inv']:.2f}-{s['q_max_nm_inv']:.2f}: "
        + ("-" if s["cc"] is None else f"{s['cc']:.3f}")
        for s in tc["shells"]
    )
    iso = tc["isotropic_removed"]["cc"]
    print(f"cc: {rows_done} frames, per shell (nm^-1): {shells}")
    print(f"cc: isotropic removed: {'-' if iso is None else f'{iso:.3f}'}")
    # the same frames on the grid fitted to the cell and the detector's q range
    fit_job = dataclasses.replace(job, fourier=dataclasses.replace(job.fourier, max_hkl=None))
    fit_settings = FourierSettings.from_job(fit_job, plan=plan)
    fit_acc, _ = process_chunk(plan, range(rows_done), fit_settings)
    tf = truth_summary(fit_acc, load_truth(sim.truth), metric=reciprocal_metric(plan.orientations))
    fit_shells = ", ".join(
        f"{s['q_min_nm_inv']:.2f}-{s['q_max_nm_inv']:.2f}: "
        + ("-" if s["cc"] is None else f"{s['cc']:.3f}")
        for s in tf["shells"]
    )
    fiso = tf["isotropic_removed"]["cc"]
    g = fit_settings.grid
    print(
        f"cc: fitted grid {'x'.join(map(str, g.shape))} (+-"
        f"{', '.join(f'{w:.1f}' for w in g.half_widths)} hkl), truth averaged over its voxels "
        f"where it reaches: CC {tf['cc']:.3f} over {tf['voxels']} voxels, isotropic removed "
        f"{'-' if fiso is None else f'{fiso:.3f}'}; per shell: {fit_shells}"
    )
    print(
        f"cc: simulated {n_frames} CSPAD frames in {t_sim:.0f} s (preset easy, all diffuse, Bragg "
        f"pixels within 0.15 hkl masked); merged into {grid_size}^3 in {t_merge:.0f} s"
    )
    return {
        "steps": out,
        "simulate_s": t_sim,
        "merge_s": t_merge,
        "shells": [{k: v for k, v in r.items() if v is not None} for r in tc["shells"]],
        "isotropic_removed_cc": iso,
        "fitted_grid": {"cc": tf["cc"], "voxels": tf["voxels"], "isotropic_removed_cc": fiso},
    }


def synthetic_frames(n: int, *, grid_size: int, stride: int, seed: int = 0):
    """Per-frame sparse voxel sets from CSPAD Ewald-sphere geometry at reduced pixel sampling."""
    from hpcdiff.geometry import DetectorModel, cspad_like_geometry
    from hpcdiff.merge import Grid, bin_frame, fractional_hkl

    geom = cspad_like_geometry(clen_m=0.1)
    model = DetectorModel.build(geom, clen_m=0.1, photon_energy_ev=9500.0)
    valid = model.valid[::stride, ::stride]
    q = model.q_vectors[::stride, ::stride][valid]
    grid = Grid(grid_size, 10.0)
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(12, 12, 12))  # a smooth random 3D map (nearest of 12^3 cells)
    orient = _orientations(n, seed + 1)
    frames = []
    for i in range(n):
        hkl = fractional_hkl(q, orient[i])
        cell = np.clip(((hkl + 10.0) / (20.0 / 12)).astype(np.int64), 0, 11)
        vals = coarse[cell[:, 0], cell[:, 1], cell[:, 2]] + rng.normal(scale=0.5, size=len(hkl))
        frames.append(bin_frame(vals, grid.voxel_index(hkl)))
    return frames, grid, int(valid.sum())


def bench_similarity(
    sizes: list[int], small_n: int, grid_size: int, stride: int, block: int, min_overlap: int
) -> dict:
    from hpcdiff.similarity import common_arc_similarity, common_arc_similarity_dense

    n_max = max([*sizes, small_n])
    t0 = time.perf_counter()
    frames, grid, n_pix = synthetic_frames(n_max, grid_size=grid_size, stride=stride)
    t_make = time.perf_counter() - t0
    nvox = [len(f) for f in frames]
    print(
        f"similarity: frames = CSPAD Ewald-sphere geometry (clen 0.1 m, 9.5 keV), 1 pixel in {stride} "
        f"along fs and ss ({n_pix} pixels), random orientations, values from a smooth random "
        f"3D map + noise, binned into {grid_size}^3 (hkl +-10): median {int(np.median(nvox))} voxels "
        f"per frame; made {n_max} frames in {t_make:.0f} s"
    )
    res: dict = {
        "frames": {"stride": stride, "pixels": n_pix, "median_voxels": float(np.median(nvox))}
    }
    # speed ratio against the dense method, small N
    sub = frames[:small_n]
    t0 = time.perf_counter()
    s_sparse, o_sparse = common_arc_similarity(
        sub, n_voxels=grid.n_voxels, min_overlap=min_overlap, block=block
    )
    t_sparse = time.perf_counter() - t0
    t0 = time.perf_counter()
    s_dense, o_dense = common_arc_similarity_dense(
        sub, n_voxels=grid.n_voxels, min_overlap=min_overlap
    )
    t_dense = time.perf_counter() - t0
    same_nan = bool(np.array_equal(np.isnan(s_sparse), np.isnan(s_dense)))
    diff = float(np.nanmax(np.abs(s_sparse - s_dense)))
    print(
        f"similarity: N={small_n}: sparse {t_sparse:.2f} s, dense 200^3 volumes {t_dense:.1f} s, "
        f"speed-up x{t_dense / t_sparse:.0f}; max |diff| {diff:.1e}, overlaps equal "
        f"{bool(np.array_equal(o_sparse, o_dense))}, NaN pattern equal {same_nan}"
    )
    res["vs_dense"] = {
        "n": small_n,
        "sparse_s": t_sparse,
        "dense_s": t_dense,
        "ratio": t_dense / t_sparse,
        "max_abs_diff": diff,
    }
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        sim, ovl = common_arc_similarity(
            frames[:n], n_voxels=grid.n_voxels, min_overlap=min_overlap, block=block
        )
        dt = time.perf_counter() - t0
        pairs = n * (n - 1) // 2
        finite = int((np.isfinite(sim).sum() - n) // 2)
        rows.append(
            {"n": n, "seconds": dt, "pairs_per_s": pairs / dt, "pairs_with_similarity": finite}
        )
        print(
            f"similarity: N={n:5d}: {dt:7.1f} s, {pairs / dt:,.0f} pairs/s, "
            f"{finite}/{pairs} pairs with >= {min_overlap} common voxels "
            f"(median overlap {np.median(ovl[np.triu_indices(n, 1)]):.0f})"
        )
    if len(rows) >= 2:
        slope = float(
            np.polyfit(np.log([r["n"] for r in rows]), np.log([r["seconds"] for r in rows]), 1)[0]
        )
        print(f"similarity: time ~ N^{slope:.2f} (least-squares fit of log time vs log N)")
        res["growth_exponent"] = slope
    res["sizes"] = rows
    return res


def bench_embedding(configs: dict[str, tuple[str, int]], n_frames: int) -> dict:
    """Per-frame scores and diffusion maps of simulated experiments, half the frames diffuse.

    ``configs``: name -> (role, similarity grid size); role ``tuned`` (the recipe was chosen
    on it) or ``held-out``.  Frames come from :mod:`embedding_data` (simulated with
    :func:`hpcdiff.simulate.simulate_experiment`, run through the job's per-frame chain).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import embedding_data as ed

    from hpcdiff.config import FourierConfig
    from hpcdiff.diffusion import (
        coordinate_aucs,
        diffusion_map,
        diffusion_map_of_points,
        kernel_from_similarity,
        profile_points,
        roc_auc,
    )
    from hpcdiff.similarity import (
        FrameScores,
        ProfileSketch,
        blocks,
        common_arc_block,
        sparse_frames,
    )

    f = FourierConfig()
    out: dict = {}
    specs = ed.specs()
    for name, (role, grid_size) in configs.items():
        d = ed.load(name, specs[name], n_frames, grid_size=grid_size)
        y = d["labels"].astype(bool)
        n = len(y)
        t0, c0 = time.perf_counter(), time.process_time()
        mats = sparse_frames(d["frames"], n_voxels=d["n_voxels"])
        scores = FrameScores(n)
        sketch = ProfileSketch(n, dims=f.profile_dims, form=f.profile_form)
        parts = []
        for s, e in blocks(n, 64):
            b = common_arc_block(mats, s, e, min_overlap=f.min_overlap)
            scores.add(b)
            sketch.add(b)
            parts.append(b)
        score = scores.mean_cc if f.profile_form == "cc" else scores.mean_z
        dm, eps = diffusion_map_of_points(
            profile_points(
                sketch.sketch,
                score=score,
                n_components=f.profile_components,
                score_weight=f.profile_score_weight,
            ),
            k=f.diffusion_knn,
            n_coords=f.n_diffusion_coords,
        )
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        pcs_only, _ = diffusion_map_of_points(  # the embedding before profile_score_weight
            sketch.sketch,
            k=f.diffusion_knn,
            n_coords=f.n_diffusion_coords,
            n_components=f.profile_components,
        )
        from hpcdiff.similarity import assemble

        sim, ovl = assemble(n, parts)
        old = diffusion_map(kernel_from_similarity(sim, epsilon=1.0), n_coords=4)  # before #14

        def sep(v: np.ndarray, y: np.ndarray = y) -> float:
            a = roc_auc(v, y)
            return float(max(a, 1.0 - a))

        iu = np.triu_indices(n, 1)
        dd = np.outer(y, y)[iu]
        nn = np.outer(~y, ~y)[iu]
        row = {
            "role": role,
            "frames": n,
            "diffuse": int(y.sum()),
            "similarity_grid": grid_size,
            "median_overlap": float(np.median(ovl[iu])),
            "mean_cc_diffuse_pairs": float(np.nanmean(sim[iu][dd])),
            "mean_cc_other_pairs": float(np.nanmean(sim[iu][~dd & ~nn])),
            "mean_cc_clean_pairs": float(np.nanmean(sim[iu][nn])),
            "auc_frame_mean_cc": sep(scores.mean_cc),
            "auc_frame_mean_z": sep(scores.mean_z),
            "auc_frame_significance": sep(scores.significance),
            "auc_diffusion_coords": [r["auc_max"] for r in coordinate_aucs(dm.coords, y)],
            "eigenvalues": dm.eigenvalues.tolist(),
            "epsilon_median_heuristic": eps,
            "score_weight": f.profile_score_weight,
            "auc_pcs_only_coords": [r["auc_max"] for r in coordinate_aucs(pcs_only.coords, y)],
            "auc_old_dense_exp_cc": [r["auc_max"] for r in coordinate_aucs(old.coords, y)],
            "old_eigenvalues": old.eigenvalues.tolist(),
            "wall_s": wall,
            "cpu_s": cpu,
        }
        out[name] = row
        print(
            f"embedding [{role}] {name}: {n} frames ({int(y.sum())} diffuse), similarity grid "
            f"{grid_size}^3, median overlap {row['median_overlap']:.0f} voxels; mean CC "
            f"diffuse-diffuse {row['mean_cc_diffuse_pairs']:.3f}, mixed "
            f"{row['mean_cc_other_pairs']:.3f}, clean-clean {row['mean_cc_clean_pairs']:.3f}"
        )
        print(
            f"embedding [{role}] {name}: per-frame score AUC: mean CC {row['auc_frame_mean_cc']:.3f}, "
            f"mean Fisher z {row['auc_frame_mean_z']:.3f}, significance "
            f"{row['auc_frame_significance']:.3f}"
        )
        best = max(row["auc_diffusion_coords"])
        print(
            f"embedding [{role}] {name}: diffusion map ({f.profile_form} profiles + score "
            f"weight {f.profile_score_weight}, kNN "
            f"{f.diffusion_knn}, eps {eps:.3g} by median heuristic) coordinate AUCs "
            + ", ".join(f"{a:.3f}" for a in row["auc_diffusion_coords"])
            + f" (best {best:.3f}, target >= 0.8); eigenvalues "
            + ", ".join(f"{v:.3f}" for v in dm.eigenvalues[1:])
        )
        print(
            f"embedding [{role}] {name}: principal components only (score weight 0): best AUC "
            f"{max(row['auc_pcs_only_coords']):.3f}"
        )
        print(
            f"embedding [{role}] {name}: before (dense exp(CC - 1), eps 1): best AUC "
            f"{max(row['auc_old_dense_exp_cc']):.3f}, eigenvalues "
            + ", ".join(f"{v:.3f}" for v in old.eigenvalues[1:])
            + f"; {wall:.1f} s wall, {cpu:.1f} s CPU"
        )
    return out


def _similarity_disk_plan(n: int, *, block: int, f) -> dict:
    """Bytes the similarity stage keeps in ``fourier.work`` at ``n`` frames: every row block
    (the dense path: 16 bytes per upper-triangle pair, float32/int32), or the fold
    checkpoint alone (measured by saving a :class:`SimilarityFold` of ``n`` frames; its
    size does not depend on what it holds)."""
    from hpcdiff.pipelines.fourier_work import FourierWork, SimilarityFold

    with tempfile.TemporaryDirectory(prefix="bench_fold_") as tmp:
        work = FourierWork(Path(tmp), "plan")
        fold = SimilarityFold(n, f.diffusion_knn, f.profile_dims, f.profile_form)
        work.save_fold(fold)
        fold_bytes = work.fold_file.stat().st_size
    return {"blocks_bytes": n * (n - 1) // 2 * 16, "fold_bytes": fold_bytes, "block_rows": block}


def bench_scaling(
    sizes: list[int], *, grid_size: int, stride: int, block: int, n_distinct: int = 300
) -> dict:
    """Cost per frame and memory per worker of the on-disk similarity stage against N.

    Synthetic per-frame arc data (``synthetic_frames``: CSPAD Ewald geometry at reduced
    pixel sampling, not the full per-frame chain) written as the job's chunk files; each
    row block runs :func:`hpcdiff.pipelines.fourier.similarity_task` here, serially (one
    worker), CPU time per task and the peak traced allocation of the widest task (row
    block 0, every column) as the memory a worker needs.
    """
    import tracemalloc

    from hpcdiff.config import FourierConfig
    from hpcdiff.diffusion import diffusion_map_of_points, profile_points
    from hpcdiff.pipelines.fourier import similarity_task
    from hpcdiff.pipelines.fourier_work import ChunkData, FourierWork
    from hpcdiff.similarity import FrameScores, ProfileSketch, blocks

    f = FourierConfig()
    n_max = max(sizes)
    t0 = time.perf_counter()
    distinct, grid, n_pix = synthetic_frames(
        min(n_max, n_distinct), grid_size=grid_size, stride=stride
    )
    frames = [distinct[i % len(distinct)] for i in range(n_max)]
    print(
        f"scaling: synthetic arcs ({n_pix} pixels per frame, 1 in {stride} along fs and ss, "
        f"grid {grid_size}^3, median {int(np.median([len(x) for x in distinct]))} voxels per "
        f"frame; {len(distinct)} distinct orientations, repeated to N) made in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
            work = FourierWork(Path(tmp) / "fourier.work", "bench")
            work.prepare(n_frames=n, force=False)
            chunks = blocks(n, f.frames_per_task)
            img = np.zeros((1, 4, 4), np.float32)
            for s, e in chunks:
                work.write_chunk(
                    s, e, ChunkData(np.arange(s, e), frames[s:e], np.repeat(img, e - s, 0))
                )
            disk = sum(p.stat().st_size for p in work.frames_dir.iterdir())
            keep = np.ones(16, bool)
            kw = dict(
                n=n,
                chunks=chunks,
                n_voxels=grid.n_voxels,
                min_overlap=f.min_overlap,
                column_block=f.similarity_column_block,
                keep=keep,
            )
            cpu = []
            scores, sketch = FrameScores(n), ProfileSketch(n, dims=f.profile_dims)
            peak = 0
            for i, (s, e) in enumerate(blocks(n, block)):
                if i == 0:
                    tracemalloc.start()
                c0 = time.process_time()
                res = similarity_task(work, s, e, **kw)
                cpu.append(time.process_time() - c0)
                if i == 0:
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                scores.add(res.common_arc)
                sketch.add(res.common_arc)
            c0 = time.process_time()
            diffusion_map_of_points(
                profile_points(
                    sketch.sketch,
                    score=scores.mean_cc,
                    n_components=f.profile_components,
                    score_weight=f.profile_score_weight,
                ),
                k=f.diffusion_knn,
            )
            emb = time.process_time() - c0
        total = float(sum(cpu))
        rows.append(
            {
                "n": n,
                "similarity_cpu_s": total,
                "cpu_s_per_frame": total / n,
                "embedding_cpu_s": emb,
                "peak_task_bytes": peak,
                "frames_on_disk_bytes": disk,
                "tasks": len(cpu),
            }
        )
        print(
            f"scaling: N={n:5d}: similarity {total:7.1f} CPU-s in {len(cpu)} tasks of {block} rows "
            f"({total / n * 1e3:.1f} CPU-ms per frame), embedding {emb:.1f} CPU-s; widest task "
            f"peak {peak / 2**20:.0f} MiB; frames on disk {disk / 2**20:.0f} MiB"
        )
    res: dict = {"rows": rows}
    if len(rows) >= 2:
        ns = np.array([r["n"] for r in rows], float)
        ts = np.array([r["similarity_cpu_s"] for r in rows])
        slope = float(np.polyfit(np.log(ns), np.log(ts), 1)[0])
        a = float(np.sum(ts * ns**2) / np.sum(ns**4))  # t = a N^2 (pairs)
        res.update(growth_exponent=slope, cpu_s_per_pair=2 * a)
        print(
            f"scaling: similarity CPU time ~ N^{slope:.2f} (log-log fit); as pairs: "
            f"{2 * a * 1e6:.2f} CPU-us per pair (t = a N^2 fit)"
        )
        per_frame_disk = rows[-1]["frames_on_disk_bytes"] / rows[-1]["n"]
        big = [r for r in rows if r["n"] >= f.similarity_column_block] or rows[-1:]
        mem_ns = np.array([r["n"] for r in big], float)
        mem_b = np.array([r["peak_task_bytes"] for r in big], float)
        m1, m0 = np.polyfit(mem_ns, mem_b, 1) if len(big) >= 2 else (0.0, mem_b[0])
        res.update(memory_fit_bytes={"per_frame": float(m1), "constant": float(m0)})
        print(
            f"scaling: widest-task memory ~ {m0 / 2**20:.0f} MiB + {m1 / 2**10:.1f} KiB x N "
            f"(linear fit over N >= {f.similarity_column_block})"
        )
        plans = []
        for target, workers in ((10_000, 2), (100_000, 64)):
            cpu_total = a * target**2
            mem = m0 + m1 * target
            disk = _similarity_disk_plan(target, block=block, f=f)
            plans.append({"n": target, "workers": workers, **disk})
            print(
                f"scaling: plan N={target:,}: similarity {cpu_total / 3600:,.1f} CPU-h "
                f"({cpu_total / 3600 / workers:,.1f} h on {workers} one-thread workers), "
                f"{-(-target // block)} row-block tasks; frames on disk "
                f"{per_frame_disk * target / 2**30:.1f} GiB; per worker ~{mem / 2**30:.2f} GiB; "
                f"client: sketch {target * f.profile_dims * 8 / 2**20:.0f} MiB, kNN "
                f"{target * f.diffusion_knn * 16 / 2**20:.0f} MiB; "
                + (
                    f"similarity.h5 dense {target**2 * 28 / 2**30:,.1f} GiB"
                    if target <= f.dense_similarity_max_frames
                    else f"similarity.h5 kNN-only {target * (3 * f.diffusion_knn * 16 + 40) / 2**20:,.0f}"
                    f" MiB (N > dense_similarity_max_frames = {f.dense_similarity_max_frames})"
                )
            )
            print(
                f"scaling: plan N={target:,}: similarity disk in fourier.work: before (every "
                f"row block saved, float32/int32) {disk['blocks_bytes'] / 2**30:,.2f} GiB; after "
                + (
                    "(dense output wanted, N <= dense_similarity_max_frames = "
                    f"{f.dense_similarity_max_frames}: the same blocks; with dense output off) "
                    if target <= f.dense_similarity_max_frames
                    else ""
                )
                + f"{disk['fold_bytes'] / 2**30:.3f} GiB: the fold checkpoint alone "
                f"(similarity_fold.npz of a SimilarityFold of N={target:,}, measured; no row "
                "block is written)"
            )
        res["plans"] = plans
        res["per_frame_disk_bytes"] = per_frame_disk
        workers = 64
        print(
            'scaling: plan for 10^5 on a SLURMCluster: [fourier.cluster] kind = "slurm", '
            f"n_workers = {workers}, threads_per_worker = 1, memory_per_worker = "
            f'"{max(4, int(np.ceil((m0 + m1 * 100_000) * 1.5 / 2**30)))}GiB", frames_per_task = '
            f"{f.frames_per_task}, similarity_block = {block}; output.dir on the shared file "
            "system (workers read the chunk files there); walltime from the CPU-h above plus "
            "the merge (~1.5 CPU-s per CSPAD frame, issue #14); SIGUSR1 before the limit and "
            "a requeue resume from fourier.work. N x N storage: up to [fourier] "
            "dense_similarity_max_frames every row block is saved (float32 CCs/distances + "
            "int32 overlaps, 16 bytes per upper-triangle pair, removed when the job ends); "
            "above it each block is folded, as it finishes, into per-frame partial results "
            "(similarity_fold.npz: score sums, profile sketch, kNN lists, overlaps) and "
            "dropped, and similarity.h5 holds only per-frame scores, the kNN graph and the "
            "overlaps' summary."
        )
    return res


def _tree_du(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (0 if absent)."""
    if path.is_file():
        return path.stat().st_blocks * 512
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # removed while walking
                pass
    return total


def _vm_hwm_bytes(pid: int) -> int:
    """Peak resident set (``VmHWM`` of /proc/PID/status) of a live process, bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _watched(
    cmd: list[str],
    *,
    log: Path,
    work: Path | None,
    poll_s: float = 1.0,
    scratch: Path | None = None,
    scratch_poll_s: float = 2.0,
) -> dict:
    """Run ``cmd``; wall, CPU (its own and its waited-for descendants', ``os.wait4``), the
    peak resident set of every process in its tree (``VmHWM`` polled), the peak disk
    used by ``work`` (polled) and, given ``scratch``, the peak size of that folder (dask's
    ``temporary-directory``, set for the command through ``DASK_TEMPORARY_DIRECTORY``:
    what the workers spill, polled every ``scratch_poll_s``) and what is left in it at the
    end."""
    import psutil

    env = dict(os.environ)
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
        env["DASK_TEMPORARY_DIRECTORY"] = str(scratch)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        peaks: dict[int, dict] = {}
        disk_peak, last_du = 0, 0.0
        spill_peak, last_spill = 0, 0.0
        while True:
            done, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if done:
                break
            try:
                tree = [
                    psutil.Process(proc.pid),
                    *psutil.Process(proc.pid).children(recursive=True),
                ]
            except psutil.NoSuchProcess:
                tree = []
            for p in tree:
                hwm = _vm_hwm_bytes(p.pid)
                if p.pid not in peaks:
                    try:
                        cmdline = " ".join(p.cmdline())
                    except psutil.Error:
                        cmdline = "?"
                    spawned = "spawn_main" in cmdline or "forkserver" in cmdline
                    worker = spawned and "resource_tracker" not in cmdline
                    role = "main" if p.pid == proc.pid else "dask worker" if worker else "child"
                    peaks[p.pid] = {"role": role, "cmdline": cmdline[:120], "peak_rss_bytes": 0}
                peaks[p.pid]["peak_rss_bytes"] = max(peaks[p.pid]["peak_rss_bytes"], hwm)
            if work is not None and time.perf_counter() - last_du > 10 * poll_s:
                disk_peak = max(disk_peak, _tree_du(work))
                last_du = time.perf_counter()
            if scratch is not None and time.perf_counter() - last_spill >= scratch_poll_s:
                spill_peak = max(spill_peak, _tree_du(scratch))
                last_spill = time.perf_counter()
            time.sleep(poll_s)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "cpu_user_s": usage.ru_utime,
        "cpu_sys_s": usage.ru_stime,
        "max_rss_of_waited_children_bytes": usage.ru_maxrss * 1024,
        "processes": sorted(peaks.values(), key=lambda r: -r["peak_rss_bytes"]),
        "work_disk_peak_bytes": disk_peak,
        "scratch_peak_bytes": spill_peak if scratch is not None else None,
        "scratch_left_bytes": _tree_du(scratch) if scratch is not None else None,
    }


def bench_endtoend(n_frames: int, root: Path, *, seed: int = 7, processes: int = 2) -> dict:
    """``hpcdiff simulate`` (small detector) then ``hpcdiff fourier`` with the default
    workers and sections on ``n_frames`` frames: wall, CPU, peak memory per process, disk
    used by the work folder and the outputs, and whether the outputs are complete."""
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    sim_dir, out = root / "simulated", root / "out"
    py = [sys.executable, "-m", "hpcdiff"]
    if not (sim_dir / "job.toml").is_file():
        sim = _watched(
            [*py, "simulate", "--frames", str(n_frames), "--detector", "small", "--seed",
             str(seed), "--diffuse-fraction", "0.5", "--frames-per-file", "500",
             "--processes", str(processes), "--out", str(sim_dir)],
            log=root / "simulate.log", work=None,
        )  # fmt: skip
        print(
            f"endtoend: simulated {n_frames} frames (small detector, {processes} processes) in "
            f"{sim['wall_s']:.0f} s wall, {sim['cpu_s']:.0f} CPU-s (rc {sim['rc']})"
        )
    else:
        sim = {"reused": True}
    job = root / "fourier.toml"
    job.write_text(
        (sim_dir / "job.toml").read_text().replace('frames = ["frames_*.cxi"]', "frames = "
        + json.dumps([str(sim_dir / "frames_*.cxi")])).replace('"detector.geom"', json.dumps(
        str(sim_dir / "detector.geom"))).replace('"orientations.stream"', json.dumps(str(
        sim_dir / "orientations.stream"))).replace('"labels.h5"', json.dumps(str(sim_dir /
        "labels.h5"))).replace('dir = "hpcdiff-out"', f"dir = {json.dumps(str(out))}")
        + f"\n[fourier]\ntruth = {json.dumps(str(sim_dir / 'truth.h5'))}\n"
    )  # fmt: skip
    run = _watched(
        [*py, "fourier", str(job)],
        log=root / "fourier.log",
        work=out / "fourier.work",
        scratch=root / "dask-scratch",
    )
    summary_path = out / "fourier_summary.json"
    complete: dict[str, object] = {
        name: (out / name).exists()
        for name in ("merged.h5", "similarity.h5", "diffusion.h5", "fourier_summary.json",
                     "report/index.html")
    }  # fmt: skip
    complete["work_folder_removed"] = not (out / "fourier.work").exists()
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if complete["diffusion.h5"]:
        with h5py.File(out / "diffusion.h5") as h5:
            coords = h5["common_arc"]["coords"][()]
            complete["diffusion_rows"] = int(coords.shape[0])
            complete["diffusion_coords_finite"] = bool(np.isfinite(coords).all())
    complete["frames_merged"] = summary.get("n_frames_oriented")
    outputs = {p.name: _tree_du(p) for p in out.iterdir() if p.name != "simulated"}
    workers = [p for p in run["processes"] if p["role"] == "dask worker"]
    row = {
        "frames": n_frames,
        "simulate": sim,
        "fourier": run,
        "peak_rss_per_worker_bytes": [p["peak_rss_bytes"] for p in workers],
        "scratch_peak_bytes": run["scratch_peak_bytes"],
        "scratch_left_bytes": run["scratch_left_bytes"],
        "output_bytes": outputs,
        "frames_on_disk_bytes": _tree_du(sim_dir),
        "complete": complete,
        "timing_s": summary.get("timing_s"),
        "truth_cc": (summary.get("truth_correlation") or {}).get("cc"),
        "best_common_arc_auc": max(
            (r.get("auc_max", 0.0) for r in (summary.get("auc") or {}).get("common_arc", [])),
            default=None,
        ),
        "n_workers": summary.get("n_workers"),
    }
    gib = 2**30
    print(
        f"endtoend: N={n_frames}: hpcdiff fourier (default [fourier] and [fourier.cluster]: "
        f"{row['n_workers']} workers) rc {run['rc']}, {run['wall_s']:.0f} s wall, "
        f"{run['cpu_s']:.0f} CPU-s ({run['cpu_user_s']:.0f} user + {run['cpu_sys_s']:.0f} sys), "
        f"{run['cpu_s'] / n_frames * 1e3:.0f} CPU-ms per frame"
    )
    print(
        "endtoend: peak resident memory per dask worker (VmHWM): "
        + ", ".join(f"{b / gib:.2f} GiB" for b in row["peak_rss_per_worker_bytes"])
        + "; client process "
        + ", ".join(f"{p['peak_rss_bytes'] / gib:.2f} GiB" for p in run["processes"] if p["role"] == "main")
        if run["processes"] else "endtoend: no process sampled"
    )  # fmt: skip
    print(
        f"endtoend: disk: work folder peak {run['work_disk_peak_bytes'] / gib:.2f} GiB; outputs "
        + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sorted(outputs.items()))
        + f"; simulated frames {row['frames_on_disk_bytes'] / gib:.2f} GiB"
    )
    print(
        f"endtoend: dask scratch ({root / 'dask-scratch'}): peak {run['scratch_peak_bytes'] / gib:.2f} GiB "
        f"(polled every 2 s), left after the run {run['scratch_left_bytes'] / 2**20:.1f} MiB"
    )
    print(f"endtoend: stage times (s): {row['timing_s']}")
    print(f"endtoend: outputs complete: {complete}")
    print(
        f"endtoend: truth CC {row['truth_cc']}, best common-arc coordinate AUC {row['best_common_arc_auc']}"
    )
    return row


def endtoend_fit(rows: list[dict], targets: tuple[int, ...] = (10_000, 100_000)) -> dict:
    """Extrapolate the end-to-end CPU time: pairs cost ``b`` per pair (the similarity
    tasks' summed seconds over the pairs, the least over the rows: task wall time, an
    upper bound of their CPU time that other load on the node inflates), the rest ``c + a N`` (least squares over the rows: start-up, merge, scale pass,
    outputs).  Needs two rows or more."""
    ok = [r for r in rows if r["fourier"]["rc"] == 0 and r.get("timing_s")]
    if len(ok) < 2:
        return {}
    ns = np.array([r["frames"] for r in ok], float)
    pairs = ns * (ns - 1) / 2
    cpu = np.array([r["fourier"]["cpu_s"] for r in ok])
    b = float(np.min([r["timing_s"]["similarity_task_sum"] for r in ok] / pairs))
    (c, a), *_ = np.linalg.lstsq(np.stack([np.ones_like(ns), ns], axis=1), cpu - b * pairs)
    slope = float(np.polyfit(np.log(ns), np.log(cpu), 1)[0])
    out = {"cpu_s_fixed": float(c), "cpu_s_per_frame": float(a), "s_per_pair": b}
    out["exponent_measured"] = slope
    print(
        f"endtoend: fit over N = {', '.join(str(int(n)) for n in ns)}: CPU-s = {c:.0f} + "
        f"{a:.3f} N + {b * 1e6:.1f} us x N(N-1)/2 pairs (measured growth N^{slope:.2f})"
    )
    for n in targets:
        pred = c + a * n + b * n * (n - 1) / 2
        out[f"predicted_cpu_s_{n}"] = float(pred)
        print(
            f"endtoend: predicted N={n:,}: {pred / 3600:,.2f} CPU-h (frames "
            f"{(c + a * n) / 3600:,.2f}, pairs {b * n * (n - 1) / 2 / 3600:,.2f}); on 2 idle "
            f"cores (2 workers) about {pred / 2 / 3600:,.2f} h wall"
        )
    return out


def _flat_rows(prefix: str, value: object, rows: list[dict]) -> None:
    """Numbers of a nested report as suite rows (``metric`` = dotted path)."""
    if isinstance(value, dict):
        for key, sub in value.items():
            _flat_rows(f"{prefix}.{key}" if prefix else str(key), sub, rows)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        rows.append({"metric": prefix, "value": value, "unit": "", "note": ""})


def run(quick: bool = False) -> dict:
    """Suite entry (``benchmarks/run.py``): the same measurements as the command line."""
    with tempfile.TemporaryDirectory(prefix="bench_fourier_") as tmp:
        out = Path(tmp) / "fourier.json"
        main(["--json", str(out), *(["--quick"] if quick else [])])
        report = json.loads(out.read_text())
    rows: list[dict] = []
    _flat_rows("", report, rows)
    return {"title": "Fourier job: merge, CC with truth, common-arc similarity", "rows": rows,
            **report}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sections",
        nargs="+",
        default=["merge", "cc", "similarity", "embedding", "scaling"],
        choices=["merge", "cc", "similarity", "embedding", "scaling", "endtoend"],
    )
    p.add_argument("--quick", action="store_true", help="small sizes (a minute or two)")
    p.add_argument("--grid-size", type=int, default=200)
    p.add_argument("--merge-frames", type=int, default=8)
    p.add_argument("--cc-frames", type=int, default=48)
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000])
    p.add_argument("--dense-n", type=int, default=24, help="N of the dense comparison")
    p.add_argument("--stride", type=int, default=3, help="pixel sampling of the similarity frames")
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--min-overlap", type=int, default=20)
    p.add_argument("--scaling-sizes", type=int, nargs="+", default=[500, 1000, 2000, 5000])
    p.add_argument("--embedding-frames", type=int, default=240)
    p.add_argument(
        "--embedding-configs", nargs="+", help="a subset of the embedding configurations"
    )
    p.add_argument(
        "--scaling-stride", type=int, default=2, help="pixel sampling of the scaling rows"
    )
    p.add_argument(
        "--endtoend-frames", type=int, nargs="+", default=[1000], help="N of the endtoend rows"
    )
    p.add_argument(
        "--endtoend-dir",
        type=Path,
        help="keep the endtoend runs here (default: a temporary folder); a simulated "
        "experiment already there is reused",
    )
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    if args.quick:
        args.merge_frames, args.cc_frames, args.sizes, args.dense_n = 3, 16, [100, 200, 400], 12
        args.scaling_sizes, args.embedding_frames = [200, 400], 120
    print(
        f"bench_fourier: {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, numpy {np.__version__}"
    )
    report: dict = {}
    if "merge" in args.sections:
        report["merge_kernel"] = bench_merge_kernel(args.merge_frames, args.grid_size)
        report["grid_fill"] = bench_grid_fill(4 * args.merge_frames, args.grid_size)
        report["merge"] = bench_merge(args.merge_frames, args.grid_size)
    if "cc" in args.sections:
        steps = sorted(
            {s for s in (2, 4, 8, 16, 32, 64, 128, args.cc_frames) if s <= args.cc_frames}
        )
        with tempfile.TemporaryDirectory(prefix="bench_fourier_") as tmp:
            report["cc"] = bench_cc(args.cc_frames, args.grid_size, steps, Path(tmp))
    if "similarity" in args.sections:
        report["similarity"] = bench_similarity(
            args.sizes, args.dense_n, args.grid_size, args.stride, args.block, args.min_overlap
        )
    if "embedding" in args.sections:
        configs = {
            "A": ("tuned", 40),
            "B": ("tuned", 40),
            "small-s3": ("held-out", 40),
            "H-triclinic": ("held-out", 40),
            "default-s7": ("held-out", 100),
            "small-s5": ("held-out", 40),
        }
        if args.quick:
            configs = {"A": ("tuned", 40)}
        if args.embedding_configs:
            configs = {k: v for k, v in configs.items() if k in args.embedding_configs}
        report["embedding"] = bench_embedding(configs, args.embedding_frames)
    if "scaling" in args.sections:
        report["scaling"] = bench_scaling(
            args.scaling_sizes,
            grid_size=args.grid_size,
            stride=args.scaling_stride,
            block=args.block,
        )
    if "endtoend" in args.sections:
        with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
            base = args.endtoend_dir or Path(tmp)
            rows = [bench_endtoend(n, base / f"n{n}") for n in args.endtoend_frames]
            report["endtoend"] = {"rows": rows, "fit": endtoend_fit(rows)}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

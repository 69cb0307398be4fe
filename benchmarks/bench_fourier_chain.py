"""Benchmark of the Fourier job's merge inputs: CC of the merged map with the truth, per shell.

Simulated experiments (the configurations of ``bench_transfer.py``: other molecules, cells,
space groups, diffuse models, detectors; half or a third of the frames diffuse, true
orientations in the stream, ``truth.h5`` the diffuse intensity on fractional hkl) are merged
serially (``plan_frames`` + ``process_chunk``, the same functions the dask job runs) into a
``--grid``^3 hkl grid of half-width ``--max-hkl``; the merged map is compared with the
truth (``--truth-sampling``: the mean of the truth voxels in each grid voxel, as the job's
summary, or the nearest) overall and per |q| shell (nm^-1, no 2 pi), and with the truth
minus its isotropic part (mean in thin |q| shells); per shell also CC* =
sqrt(2 CC1/2 / (1 + CC1/2)) of the two half-maps smoothed alike (Karplus & Diederichs), the
CC the data allow: a truth CC well below it is a systematic error of the map.

Rows: ``all`` / ``diffuse`` (all oriented frames, or the labelled-diffuse ones), and with
this checkout's chain ``scale0`` / ``scale1`` (no / one scale-refinement pass,
:func:`hpcdiff.pipelines.fourier_frames.scale_pass`; its decision printed).  Run the
same script with ``PYTHONPATH=/work/main`` for the rows of main (no chain, no scales).
Each row is scored per ``--smooth`` map: ``raw`` voxel means, ``auto`` (a normalised Gaussian
smoothing whose width minimises the leave-one-voxel-out error, :mod:`hpcdiff.map_smooth`),
``halves`` (`[fourier] map_smooth_rule = "half-maps"`: the largest cross-half correlation,
0 included) or a fixed sigma in voxels; each row also prints the half-maps' CC1/2.  ``--fourier merge_weights='"none"'``
gives the unweighted merge (inverse-variance weights are the default).

``--subsets N ...`` merges the frames among the first N of ONE simulated experiment of
``max(N)`` frames (nested subsets, so the curve is not confounded by different
experiments) and ends with a table per row: frames merged, whole CC, the strongest shell's
CC, CC1/2 and CC*, the smoothing width, the CC of the noise-free map (the truth merged
with the same voxel weights and smoothing: the ceiling the coverage, grid and smoothing
leave; CC ~ CC* x noise-free when noise and smoothing are all that limit the map); and a
fit of the shell that is strongest at the largest N to the noise-limited form
CC(n) = c_inf sqrt(n / (n + n_half)) (n frames merged), with the n where it reaches 0.8
when c_inf > 0.8.

Usage::

    python benchmarks/bench_fourier_chain.py --configs A H-triclinic --frames 160
    python benchmarks/bench_fourier_chain.py --configs RM0 --rows diffuse --passes 1 \
        --smooth halves --subsets 30 60 120 240 480
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

CACHE = Path("/tmp/hpcdiff-fourier-chain-cache")
SHELLS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)


def configs() -> dict[str, dict]:
    import bench_transfer as bt

    return {**bt.CONFIGS, **bt.HARD, **bt.RANDOMISED}


def simulate(name: str, spec: dict, n_frames: int) -> Path:
    """The simulated experiment's job file (cached under /tmp)."""
    import transfer_data as td

    from hpcdiff.simulate import simulate_experiment

    out = CACHE / f"{name}-{n_frames}"
    job = out / "sim" / "job.toml"
    if (out / "done").is_file():
        return Path((out / "done").read_text().strip())
    cfg, dropped = td.make_sim_config({**spec, "n_frames": n_frames, "frames_per_file": 100})
    cfg = dataclasses.replace(cfg, compression="none")
    t0 = time.perf_counter()
    sim = simulate_experiment(cfg, out / "sim", force=True)
    print(f"{name}: simulated {n_frames} frames in {time.perf_counter() - t0:.0f} s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "done").write_text(str(sim.job))
    return Path(sim.job) if sim.job else job


def sampled_truth(grid, truth_path: Path, *, how: str = "mean") -> np.ndarray:
    """The truth on the grid's voxels: ``"mean"`` of the truth voxels in each grid voxel
    (:func:`hpcdiff.fourier_truth.resample_truth`, what the job's summary uses and what a
    voxel mean of pixels estimates), or ``"nearest"`` truth voxel to each grid centre
    (rounding half to even: with a truth twice as fine, always the lower neighbour)."""
    from hpcdiff.fourier_truth import load_truth, resample_truth

    truth = load_truth(truth_path)
    if how == "mean":
        return resample_truth(truth, grid)
    volume, axes = truth.volume, truth.axes
    centres = grid.axis()
    idx, masks = [], []
    for a in axes:
        step = (a[-1] - a[0]) / max(len(a) - 1, 1)
        i = np.rint((centres - a[0]) / step).astype(np.int64)
        masks.append((i >= 0) & (i < len(a)))
        idx.append(np.clip(i, 0, len(a) - 1))
    out = volume[np.ix_(idx[0], idx[1], idx[2])]
    ok = masks[0][:, None, None] & masks[1][None, :, None] & masks[2][None, None, :]
    return np.where(ok, out, np.nan)


def q_of_voxels(grid, orientation: np.ndarray) -> np.ndarray:
    axis = grid.axis()
    hkl = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    return np.linalg.norm(hkl @ orientation, axis=-1)  # q = h a* + k b* + l c*


def isotropic_removed(truth: np.ndarray, q: np.ndarray, width: float = 0.05) -> np.ndarray:
    ok = np.isfinite(truth)
    b = np.floor(q / width).astype(np.int64)
    n = np.bincount(b[ok], minlength=b.max() + 1)
    s = np.bincount(b[ok], weights=truth[ok], minlength=b.max() + 1)
    mean = s / np.maximum(n, 1)
    return truth - mean[b]


def cc(a: np.ndarray, b: np.ndarray, sel: np.ndarray | None = None) -> tuple[float, int]:
    ok = np.isfinite(a) & np.isfinite(b)
    if sel is not None:
        ok &= sel
    n = int(ok.sum())
    if n < 10:
        return float("nan"), n
    x, y = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    d = np.sqrt(x @ x * (y @ y))
    return (float(x @ y / d) if d > 0 else float("nan")), n


def smoothed(acc, smooth: str) -> tuple[np.ndarray, float]:
    """The map of ``acc``: ``raw`` voxel means, ``auto`` (leave-one-voxel-out width) or a
    fixed Gaussian sigma in voxels (:mod:`hpcdiff.map_smooth`; main has no smoothing)."""
    if smooth == "raw":
        return acc.intensity(), 0.0
    from hpcdiff.map_smooth import smoothed_mean, smoothing_for

    shape = acc.grid.shape
    den = acc.denominator() if hasattr(acc, "denominator") else acc.counts
    s, c = acc.sums.reshape(shape), den.reshape(shape)
    halves = None
    if smooth == "halves":
        a, b = acc.half_a, acc.half_b()
        halves = tuple(x.reshape(shape) for x in (a.sums, a.denominator(), b.sums, b.denominator()))
    auto = smooth in ("auto", "halves")
    choice = smoothing_for(s, c, sigma_voxels="auto" if auto else float(smooth), halves=halves)
    return smoothed_mean(s, c, sigma_voxels=choice.sigma_voxels), choice.sigma_voxels


def star(cc_half: float) -> float:
    """``CC*`` of a half-map correlation (:func:`hpcdiff.map_smooth.cc_star`; NaN if none)."""
    from hpcdiff.map_smooth import cc_star

    v = cc_star(cc_half)
    return float("nan") if v is None else v


def half_maps(acc, sigma: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The two half-maps smoothed with ``sigma`` voxels (None without half-maps)."""
    if getattr(acc, "half_a", None) is None:
        return None, None
    from hpcdiff.map_smooth import smoothed_mean

    shape = acc.grid.shape
    return tuple(  # type: ignore[return-value]
        smoothed_mean(h.sums.reshape(shape), h.denominator().reshape(shape), sigma_voxels=sigma)
        for h in (acc.half_a, acc.half_b())
    )


def noise_free(acc, truth: np.ndarray, sigma: float) -> np.ndarray:
    """The map the merge would give without noise: the truth averaged with the merge's
    voxel weights and smoothed with ``sigma`` voxels (its CC with the truth is the ceiling
    that the coverage, the grid and the smoothing leave)."""
    from hpcdiff.map_smooth import smoothed_mean

    shape = acc.grid.shape
    den = (acc.denominator() if hasattr(acc, "denominator") else acc.counts).reshape(shape)
    den = np.where(np.isfinite(truth), den, 0.0)
    return smoothed_mean(np.nan_to_num(truth) * den, den, sigma_voxels=sigma)


def measure(
    job_path: Path,
    *,
    grid_size: int,
    max_hkl: float,
    passes: list[int],
    overrides: dict | None = None,
    which: tuple[str, ...] = ("all", "diffuse"),
    smooths: tuple[str, ...] = ("raw", "auto"),
    truth_sampling: str = "mean",
    subsets: tuple[int, ...] = (),
) -> list[dict]:
    from hpcdiff.config import load_job
    from hpcdiff.pipelines import fourier as fj

    new_chain = "reference" in inspect.signature(fj.process_chunk).parameters
    job = load_job(job_path)
    job = dataclasses.replace(
        job,
        fourier=dataclasses.replace(
            job.fourier,
            grid_size=grid_size,
            max_hkl=max_hkl,
            similarity_grid_size=8,
            **(overrides or {}),
        ),
    )
    plan = fj.plan_frames(job)
    settings = fj.FourierSettings.from_job(job)
    if getattr(settings, "bragg_profile", None):
        from hpcdiff.bragg_radius import bragg_radius_text

        print("  " + bragg_radius_text(settings.bragg_profile), flush=True)
    truth = sampled_truth(
        settings.grid, job.fourier.truth or job_path.parent / "truth.h5", how=truth_sampling
    )
    q = q_of_voxels(settings.grid, plan.orientations[0])
    iso = isotropic_removed(truth, q)
    assert plan.labels is not None
    rows_of = {
        "all": np.arange(len(plan)),
        "diffuse": np.flatnonzero(plan.labels == 1),
    }
    todo = [
        (name, n, rows if n is None else rows[plan.numbers[rows] < n])
        for name, rows in rows_of.items()
        if name in which
        for n in (subsets or (None,))
    ]
    out = []
    for name, subset, rows in todo:
        t0, c0 = time.perf_counter(), time.process_time()
        acc, _ = fj.process_chunk(plan, rows, settings)
        for p in passes if new_chain else [0]:
            cur = acc
            for _ in range(p):
                from hpcdiff.pipelines.fourier_frames import scale_pass

                cur, decision = scale_pass(plan, rows, settings, cur)
                d = decision.summary()
                print(f"  scale pass ({name}): measurable {d['measurable']}, typical "
                      f"{d['typical']}, left out {d['n_left_out']} of {len(rows)}, "
                      f"fitted {d['fitted']}, error {d['error']}", flush=True)  # fmt: skip
            for smooth in smooths:
                m, sigma = smoothed(cur, smooth)
                ha, hb = half_maps(cur, sigma)
                ceiling = noise_free(cur, truth, sigma)
                row = {
                    "frames": name,
                    "subset_first_frames": subset,
                    "n_frames": len(rows),
                    "n_merged": cur.n_frames,
                    "chain": "new" if new_chain else "main",
                    "scale_passes": p,
                    "bragg_radius_hkl": settings.bragg_radius_hkl,
                    "bragg_radius_per_nm": getattr(settings, "bragg_radius_per_nm", 0.0),
                    "smooth": smooth,
                    "sigma_voxels": sigma,
                    "cc": cc(m, truth)[0],
                    "cc_half": cc(cur.half_a.intensity(), cur.half_b().intensity())[0]
                    if getattr(cur, "half_a", None) is not None
                    else float("nan"),
                    "cc_iso_removed": cc(m, iso)[0],
                    "shells": [],
                    "wall_s": time.perf_counter() - t0,
                    "cpu_s": time.process_time() - c0,
                }
                for lo, hi in zip(SHELLS[:-1], SHELLS[1:], strict=True):
                    sel = (q >= lo) & (q < hi)
                    c, n = cc(m, truth, sel)
                    ci, _ = cc(m, iso, sel)
                    ch = cc(ha, hb, sel)[0] if ha is not None else float("nan")
                    if n >= 10:
                        row["shells"].append(
                            {"q_min_nm_inv": lo, "q_max_nm_inv": hi, "cc": c, "cc_iso": ci,
                             "voxels": n, "cc_half": ch, "cc_star": star(ch),
                             "cc_noise_free": cc(ceiling, truth, sel & np.isfinite(m))[0]}
                        )  # fmt: skip
                out.append(row)
                shells = "  ".join(
                    f"[{s['q_min_nm_inv']:.1f},{s['q_max_nm_inv']:.1f}) "
                    f"{s['cc']:.3f}/{s['cc_iso']:.3f}/{s['cc_star']:.2f} ({s['voxels']})"
                    for s in row["shells"]
                )
                best = max((s["cc"] for s in row["shells"]), default=float("nan"))
                print(
                    f"  {row['chain']:4s} {name:7s} n={len(rows):3d} merged={cur.n_frames:3d} "
                    f"scale_passes={p} bragg={settings.bragg_radius_hkl:g} "
                    f"bragg_q={getattr(settings, 'bragg_radius_per_nm', 0.0):g} "
                    f"smooth={smooth}(sigma {sigma:g} vox): CC {row['cc']:.3f}, "
                    f"iso-removed {row['cc_iso_removed']:.3f}, strongest shell {best:.3f}, "
                    f"CC1/2 {row['cc_half']:.3f}; "
                    f"per shell CC/CC-iso/CC* (voxels): {shells}",
                    flush=True,
                )
    return out


def noise_limited_fit(n: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    """``(c_inf, n_half)`` of CC(n) = c_inf sqrt(n / (n + n_half)), least squares."""
    from scipy.optimize import curve_fit

    def f(x: np.ndarray, c_inf: float, n_half: float) -> np.ndarray:
        return c_inf * np.sqrt(x / (x + n_half))

    ok = np.isfinite(c)
    p, _ = curve_fit(f, n[ok], c[ok], p0=(min(1.0, c[ok].max() * 1.2), n[ok].mean()),
                     bounds=([0.0, 0.0], [1.0, np.inf]))  # fmt: skip
    return float(p[0]), float(p[1])


def subset_table(name: str, rows: list[dict]) -> None:
    """Print the CC-against-frames table and the noise-limited fit of one configuration."""
    for (frames, passes, smooth), group in _groups(rows).items():
        last = max(group, key=lambda r: r["n_merged"])
        if not last["shells"]:
            continue
        fixed = max(range(len(last["shells"])), key=lambda i: last["shells"][i]["cc"])
        sh = last["shells"][fixed]
        print(f"{name} {frames} scale_passes={passes} smooth={smooth}: CC against frames "
              f"(strongest shell per n; fit on [{sh['q_min_nm_inv']:g},"
              f"{sh['q_max_nm_inv']:g}) nm^-1, the strongest at the largest n)")  # fmt: skip
        print("  first_n merged whole_CC shell       shell_CC CC1/2  CC*   CC/CC* sigma "
              "noise_free fixed_shell_CC fixed_CC*")  # fmt: skip
        for r in group:
            best = max(r["shells"], key=lambda s: s["cc"])
            f = next((s for s in r["shells"] if s["q_min_nm_inv"] == sh["q_min_nm_inv"]), None)
            print(f"  {r['subset_first_frames']:7d} {r['n_merged']:6d} {r['cc']:8.3f} "
                  f"[{best['q_min_nm_inv']:.1f},{best['q_max_nm_inv']:.1f}) "
                  f"{best['cc']:8.3f} {best['cc_half']:5.3f} {best['cc_star']:5.3f} "
                  f"{best['cc'] / best['cc_star'] if best['cc_star'] > 0 else np.nan:6.2f} "
                  f"{r['sigma_voxels']:5.2f} "
                  f"{best['cc_noise_free']:10.3f} "
                  f"{f['cc'] if f else np.nan:14.3f} {f['cc_star'] if f else np.nan:9.3f}")  # fmt: skip
        n = np.array([r["n_merged"] for r in group], dtype=float)
        c = np.array(
            [
                next((s["cc"] for s in r["shells"] if s["q_min_nm_inv"] == sh["q_min_nm_inv"]),
                     np.nan)
                for r in group
            ]
        )  # fmt: skip
        if np.isfinite(c).sum() < 3:
            continue
        c_inf, n_half = noise_limited_fit(n, c)
        reach = n_half * (0.8 / c_inf) ** 2 / (1 - (0.8 / c_inf) ** 2) if c_inf > 0.8 else None
        print(f"  fit CC = c_inf sqrt(n/(n+n_half)): c_inf {c_inf:.3f}, n_half {n_half:.0f} "
              f"merged frames; CC 0.8 at "
              + (f"{reach:.0f} merged frames" if reach else "no n (c_inf <= 0.8)"),
              flush=True)  # fmt: skip


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r["frames"], r["scale_passes"], r["smooth"]), []).append(r)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["A", "H-triclinic"])
    ap.add_argument("--frames", type=int, default=160)
    ap.add_argument("--grid", type=int, default=100)
    ap.add_argument("--max-hkl", type=float, default=10.0)
    ap.add_argument("--passes", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--subsets",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help="merge the frames among the first N of one experiment of max(N) frames "
        "(overrides --frames) and print CC against frames with a noise-limited fit",
    )
    ap.add_argument(
        "--smooth",
        nargs="+",
        default=["raw", "auto"],
        help="maps to score: raw voxel means, auto (leave-one-voxel-out width), halves "
        "(half-map width), or sigmas",
    )
    ap.add_argument(
        "--truth-sampling",
        choices=["mean", "nearest"],
        default="mean",
        help="truth on the grid: mean of the truth voxels in each grid voxel, or nearest",
    )
    ap.add_argument("--rows", nargs="+", default=["all", "diffuse"], choices=["all", "diffuse"])
    ap.add_argument(
        "--fourier",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="[fourier] keys for an ablation, e.g. mask_bragg_radius_hkl=0 scale_shot=false",
    )
    args = ap.parse_args(argv)
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.fourier)}
    specs = configs()
    report = {}
    subsets = tuple(sorted(args.subsets))
    for name in args.configs:
        job = simulate(name, specs[name], subsets[-1] if subsets else args.frames)
        print(f"{name}: {specs[name].get('detector')} {specs[name].get('diffuse_model')} "
              f"{specs[name].get('space_group')} cell {specs[name].get('cell_nm')}", flush=True)  # fmt: skip
        report[name] = measure(
            job,
            grid_size=args.grid,
            max_hkl=args.max_hkl,
            passes=args.passes,
            overrides=overrides,
            which=tuple(args.rows),
            smooths=tuple(args.smooth),
            truth_sampling=args.truth_sampling,
            subsets=subsets,
        )
        if subsets:
            subset_table(name, report[name])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

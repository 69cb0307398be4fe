"""CPU throughput of the classify path against its own limits and today's code, in one run.

Usage::

    python benchmarks/bench_throughput.py [--frames 16] [--batch 8] [--repeats 3]
                                          [--baseline REV] [--skip-vgg]
                                          [--only startup read preprocess prep-stages vgg
                                                  vgg-variants]
                                          [--detector cspad|small] [--distance-m 0.1]
                                          [--bare-process]

Every row is the median of ``repeats`` timed passes, CPU time (``time.process_time``,
all threads of the process) beside wall time; every ratio is of two rows measured in this
run, interleaved.  Frames are CSPAD-like slabs (1480 x 1552) simulated once and stored as
int16 ADU (the Cheetah layout), cached under ``/tmp/hpcdiff-throughput-cache``.

1. read: :meth:`FrameSource.read_raw` into one reused buffer against a plain h5py read
   (``dset[a:b]``) of the same frames, lz4 and uncompressed (target >= 0.9x);
2. preprocess: frames per CPU-second of the default (``"standard"``) and the seed recipe,
   this checkout against ``--baseline`` (a git revision, default ``main``, exported to a
   temporary folder and run in a subprocess, alternating with this checkout's subprocess);
   the images of both are compared (target >= 3x for the default, seed no slower); for the
   standard recipe also this checkout's numpy chain (``Preprocessor.cpu_kernel = False``)
   beside its fused numba kernel;
2b. prep-stages: CPU ms per frame of the read and of each stage of the fused kernel
   (:data:`hpcdiff.background.cpu_standard.STAGES`), what the reader thread costs;
3. VGG16: images per second at ``batch`` against the bf16 (native bf16 CPUs) or fp32
   matmul bound measured here, interleaved (same process, same threads): the fraction of
   the bound's FLOP rate (target >= 70%); the fused path (default) beside the eager one,
   with construction and first-call costs; ``--only vgg-variants`` (only when named) times
   other ways side by side (chunk sizes, conv1_1 in fp32, ``torch.jit`` trace + freeze,
   ``torch.utils.mkldnn``);
4. end to end: read + preprocess (prefetch thread) + VGG16 on ``frames`` frames against
   VGG16 alone on as many images, same layer, batch and threads (target >= 0.8x);
5. start-up: CPU seconds of ``hpcdiff --help`` against ``python -c pass``.

This process gets the command line's set-up first (:mod:`hpcdiff.parallel.omp_env`,
:mod:`hpcdiff.parallel.malloc_env`) unless ``--bare-process``; ``--only e2e`` runs its
subprocesses with either wait policy, each revision with its own malloc set-up.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CACHE = Path("/tmp/hpcdiff-throughput-cache")
ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = Path("/tmp/hpcdiff-weights/vgg16_features_imagenet_caffe.pth")
ENERGY_EV = 9500.0

#: Multiply-adds of VGG16's 13 conv layers on one 224 x 224 image (to pool5).
VGG16_CONV_MACS = 15.35e9

Row = dict[str, Any]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median (CPU seconds, wall seconds) of ``repeats`` calls after one warm-up call."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def show(rows: list[Row], metric: str, value: float, unit: str, note: str = "") -> None:
    rows.append({"metric": metric, "value": value, "unit": unit, "note": note})
    print(f"{metric:58s} {value:10.3f} {unit:14s} {note}", flush=True)


# --------------------------------------------------------------------------- data


#: The simulated detector of this run (``--detector``, ``--distance-m``): frames, the
#: preprocessing subprocesses and the end-to-end rows all use it.
LAYOUT: dict[str, Any] = {"detector": "cspad", "distance_m": 0.1}


def simulate_config(n: int) -> Any:
    from hpcdiff.config import SimulateConfig

    return SimulateConfig(
        detector=LAYOUT["detector"],
        detector_distance_m=LAYOUT["distance_m"],
        n_frames=n,
        seed=0,
    )


def cspad_frames(n: int) -> tuple[np.ndarray, Any]:
    """``(n, n_ss, n_fs)`` int16 ADU frames of the built-in simulation of :data:`LAYOUT`
    (CSPAD, 1480 x 1552, at 0.1 m unless told otherwise), and the detector model."""
    from hpcdiff.geometry import DetectorModel
    from hpcdiff.simulate import build_simulator
    from hpcdiff.simulate.experiment import simulated_geometry

    cfg = simulate_config(n)
    geom = simulated_geometry(cfg)
    model = DetectorModel.build(
        geom, clen_m=cfg.detector_distance_m, photon_energy_ev=cfg.photon_energy_ev
    )
    name = (
        "cspad"
        if (cfg.detector, cfg.detector_distance_m) == ("cspad", 0.1)
        else (f"{cfg.detector}_{cfg.detector_distance_m:g}m")
    )
    path = CACHE / f"{name}_int16_{n}.npy"
    if path.is_file():
        return np.load(path), model
    sim = build_simulator(cfg, geom)
    frames = np.stack([sim.frame(i)[0] for i in range(n)])
    frames = np.clip(np.round(frames), -32768, 32767).astype(np.int16)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, frames)
    return frames, model


# --------------------------------------------------------------------------- 1. reader


def reader_rows(frames: np.ndarray, tmp: Path, batch: int, repeats: int) -> list[Row]:
    import h5py

    from hpcdiff.io.cxi import FrameSource, write_cxi

    rows: list[Row] = []
    n = len(frames)
    for compression in ("lz4", "none"):
        path = write_cxi(tmp / f"frames_{compression}.cxi", frames, compression=compression)
        with h5py.File(path, "r") as h5, FrameSource([path]) as src:
            dset = h5[src.data_path()]
            buf = np.empty((batch, *src.slab_shape), dtype=src.dtype)

            def plain(dset: Any = dset) -> None:
                for a in range(0, n, batch):
                    dset[a : min(a + batch, n)]

            def ours(src: Any = src, buf: np.ndarray = buf) -> None:
                for a in range(0, n, batch):
                    src.read_raw(a, min(a + batch, n), out=buf)

            def float32(src: Any = src) -> None:
                for a in range(0, n, batch):
                    src.read(a, min(a + batch, n))

            got: dict[str, tuple[float, float]] = {}
            for _ in range(2):  # interleaved: plain, ours, plain, ours
                for name, fn in (("plain", plain), ("read_raw", ours), ("read", float32)):
                    got[name] = timed(fn, repeats)
        for name, (cpu, wall) in got.items():
            show(
                rows,
                f"read {compression} {name}",
                n / cpu,
                "frames/CPU-s",
                f"wall {n / wall:.1f}/s",
            )
        ratio_cpu = got["plain"][0] / got["read_raw"][0]
        ratio_wall = got["plain"][1] / got["read_raw"][1]
        show(
            rows,
            f"read {compression}: read_raw / plain h5py",
            ratio_cpu,
            "x (CPU)",
            f"wall {ratio_wall:.2f}x; target >= 0.9",
        )
    return rows


# --------------------------------------------------------------------------- 2. preprocessing

_WORKER = r"""
import json, sys, time, statistics
import numpy as np
root, frames_path, recipe, repeats, out, detector, distance = sys.argv[1:8]
numpy_chain = sys.argv[8:9] == ["numpy"]
sys.path.insert(0, root)
from hpcdiff.config import BackgroundConfig, SimulateConfig
from hpcdiff.geometry import DetectorModel
from hpcdiff.preprocess import Preprocessor
from hpcdiff.simulate.experiment import simulated_geometry
cfg = SimulateConfig(detector=detector, detector_distance_m=float(distance), n_frames=1, seed=0)
geom = simulated_geometry(cfg)
model = DetectorModel.build(geom, clen_m=cfg.detector_distance_m, photon_energy_ev=cfg.photon_energy_ev)
frames = np.load(frames_path)
pre = Preprocessor(model, BackgroundConfig(preprocessing=recipe), threads=1)
if numpy_chain:
    pre.cpu_kernel = False  # the numpy ring-order chain instead of the fused kernel
t0 = time.process_time()
pre(frames[:1], photon_energy_ev=9500.0)
first = time.process_time() - t0
cpu, wall = [], []
for _ in range(int(repeats)):
    c0, w0 = time.process_time(), time.perf_counter()
    images = pre(frames, photon_energy_ev=9500.0)
    cpu.append(time.process_time() - c0); wall.append(time.perf_counter() - w0)
np.save(out, images)
print(json.dumps({"cpu": statistics.median(cpu), "wall": statistics.median(wall), "first": first,
                  "file": __import__("hpcdiff").__file__}))
"""


def export_revision(rev: str, dest: Path) -> Path:
    """``git archive`` of ``rev``'s ``hpcdiff`` package into ``dest``; returns ``dest``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "hpcdiff"], capture_output=True, check=True
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def preprocess_rows(frames: np.ndarray, tmp: Path, baseline: str, repeats: int) -> list[Row]:
    rows: list[Row] = []
    frames_path = tmp / "frames.npy"
    np.save(frames_path, frames)
    base_root = export_revision(baseline, tmp / "baseline")
    worker = tmp / "worker.py"
    worker.write_text(_WORKER)
    n = len(frames)
    for recipe in ("standard", "seed"):
        got: dict[str, list[dict[str, float]]] = {"baseline": [], "ours": []}
        runs = [("baseline", base_root), ("ours", ROOT)]
        if recipe == "standard":  # this checkout's numpy chain beside its fused kernel
            got["ours numpy chain"] = []
            runs.append(("ours numpy chain", ROOT))
        for _ in range(2):  # alternate the subprocesses
            for name, root in runs:
                out = tmp / f"images_{name.replace(' ', '_')}_{recipe}.npy"
                env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                res = subprocess.run(
                    [
                        sys.executable,
                        str(worker),
                        str(root),
                        str(frames_path),
                        recipe,
                        str(repeats),
                        str(out),
                        LAYOUT["detector"],
                        str(LAYOUT["distance_m"]),
                        *(["numpy"] if name.endswith("numpy chain") else []),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                )
                got[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
        med = {k: statistics.median(r["cpu"] for r in v) for k, v in got.items()}
        wall = {k: statistics.median(r["wall"] for r in v) for k, v in got.items()}
        for name in got:
            show(
                rows,
                f"preprocess {recipe} {name}",
                n / med[name],
                "frames/CPU-s",
                f"{1e3 * med[name] / n:.1f} ms CPU/frame; wall {n / wall[name]:.1f}/s; first call {got[name][-1]['first']:.2f} s CPU",
            )
        a = np.load(tmp / f"images_baseline_{recipe}.npy")
        b = np.load(tmp / f"images_ours_{recipe}.npy")
        target = "target >= 3" if recipe == "standard" else "target >= 1 (no slower)"
        show(
            rows,
            f"preprocess {recipe}: ours / baseline",
            med["baseline"] / med["ours"],
            "x (CPU)",
            f"wall {wall['baseline'] / wall['ours']:.2f}x; {target}; images max |diff| {np.abs(a - b).max():.1e}",
        )
        if "ours numpy chain" in got:
            c = np.load(tmp / f"images_ours_numpy_chain_{recipe}.npy")
            show(
                rows,
                f"preprocess {recipe}: fused kernel / numpy chain",
                med["ours numpy chain"] / med["ours"],
                "x (CPU)",
                f"wall {wall['ours numpy chain'] / wall['ours']:.2f}x; images max |diff| {np.abs(b - c).max():.1e}",
            )
    return rows


def prep_stage_rows(frames: np.ndarray, model: Any, tmp: Path, repeats: int) -> list[Row]:
    """Where the CPU time of read + preprocess goes, per frame, in this checkout.

    The read (:meth:`FrameSource.read_raw` into a reused buffer, lz4 and uncompressed,
    one frame at a time as the reader thread does per batch), then the stages of the
    fused kernel (:data:`~hpcdiff.background.cpu_standard.STAGES`: each kernel call timed
    by the thread's CPU clock, in the same pass over the same frames), then what
    :class:`~hpcdiff.preprocess.Preprocessor` adds around the kernel.  Medians over
    ``repeats`` passes over all frames; CPU ms per frame.
    """
    from hpcdiff.background.cpu_standard import STAGES
    from hpcdiff.config import BackgroundConfig
    from hpcdiff.io.cxi import FrameSource, write_cxi
    from hpcdiff.preprocess import Preprocessor

    rows: list[Row] = []
    n = len(frames)
    read_ms: dict[str, float] = {}
    for compression in ("lz4", "none"):
        path = write_cxi(tmp / f"stages_{compression}.cxi", frames, compression=compression)
        with FrameSource([path]) as src:
            buf = np.empty((1, *src.slab_shape), dtype=src.dtype)

            def read(src: Any = src, buf: np.ndarray = buf) -> None:
                for i in range(n):
                    src.read_raw(i, i + 1, out=buf)

            cpu, wall = timed(read, repeats)
        read_ms[compression] = 1e3 * cpu / n
        show(
            rows,
            f"stage: read {compression} (read_raw, {frames.dtype})",
            read_ms[compression],
            "CPU ms/frame",
            f"wall {1e3 * wall / n:.2f} ms/frame",
        )
    pre = Preprocessor(model, BackgroundConfig(), threads=1)
    pre.prepare()
    kernel = pre.standard_kernel
    if kernel is None:
        show(rows, "stage: no fused kernel (numba missing?)", float("nan"), "")
        return rows
    energy = np.full(n, ENERGY_EV)
    min_excess = pre.bragg_min_excess(energy, n)
    unit = pre._photon_unit(energy, n)

    def stages_pass() -> dict[str, float]:
        got: dict[str, float] = {}
        for i in range(n):
            kernel.image(
                frames[i],
                photon_energy_ev=ENERGY_EV,
                min_excess=float(min_excess[i]),
                unit=float(unit[i]),
                stages=got,
            )
        return got

    stages_pass()  # warm-up
    passes = [stages_pass() for _ in range(repeats)]
    calls = []
    for _ in range(repeats):
        c0 = time.thread_time()
        pre(frames, photon_energy_ev=ENERGY_EV)
        calls.append(time.thread_time() - c0)
    total = 0.0
    for name in STAGES:
        ms = 1e3 * statistics.median(p.get(name, 0.0) for p in passes) / n
        total += ms
        show(rows, f"stage: {name}", ms, "CPU ms/frame")
    call_ms = 1e3 * statistics.median(calls) / n
    show(rows, "stage: kernel stages, sum", total, "CPU ms/frame")
    show(
        rows,
        "stage: Preprocessor call (one thread)",
        call_ms,
        "CPU ms/frame",
        f"{call_ms - total:+.2f} around the kernel",
    )
    show(
        rows,
        "stage: read lz4 + preprocess",
        read_ms["lz4"] + call_ms,
        "CPU ms/frame",
        "what the reader thread costs per frame",
    )
    return rows


# --------------------------------------------------------------------------- 3-4. VGG16


def vgg_variant_rows(batch: int, repeats: int, n: int = 16) -> list[Row]:
    """Ways of running VGG16's conv stack on the CPU (pool5, bf16 weights), side by side.

    Interleaved medians of ``n`` random [0, 1] images per pass, each way against the bf16
    (or fp32) matmul bound measured between them, with its features' largest difference
    from the eager path and its one-off cost (CPU seconds to build it).
    """
    import copy

    import torch
    from torch.utils import mkldnn as torch_mkldnn

    from hpcdiff.features.cpu_fused import fuse_conv_relu
    from hpcdiff.features.extractor import FeatureExtractor, cpu_has_native_bf16

    rows: list[Row] = []
    weights = str(WEIGHTS) if WEIGHTS.is_file() else "random:0"
    ex = FeatureExtractor(weights, layer="pool5", device="cpu", batch_size=batch, fuse_cpu=False)
    model = ex._model
    dt = next(model.parameters()).dtype
    images = torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(0))

    def prep(x: torch.Tensor) -> torch.Tensor:
        return ex.normalise(x).contiguous(memory_format=torch.channels_last)

    def chunked(fn: Callable[[torch.Tensor], torch.Tensor], step: int) -> Callable[[], Any]:
        def run() -> torch.Tensor:
            with torch.inference_mode():
                outs = [fn(images[a : a + step]) for a in range(0, n, step)]
            return torch.cat([torch.flatten(o, 1).float() for o in outs])

        return run

    def eager(x: torch.Tensor) -> torch.Tensor:
        return model.features(prep(x).to(dt))

    built: dict[str, tuple[Callable[[], Any], float]] = {}
    for step in (2, 4, 8):
        built[f"eager, {step} images a pass"] = (chunked(eager, step), 0.0)
    for step in (2, 4, 8):
        c0 = time.process_time()
        fused = fuse_conv_relu(model.features, batch=step)
        built[f"fused conv+ReLU packed, {step} a pass"] = (
            chunked(lambda x, f=fused: f(prep(x)), step),
            time.process_time() - c0,
        )
    c0 = time.process_time()
    conv1 = copy.deepcopy(model.features[0]).float()
    fused = fuse_conv_relu(model.features, batch=4)
    fused[0] = fuse_conv_relu(torch.nn.Sequential(conv1, torch.nn.ReLU()), batch=4)[0]
    built["fused, conv1_1 in fp32, 4 a pass"] = (
        chunked(lambda x, f=fused: f(prep(x)), 4),
        time.process_time() - c0,
    )
    c0 = time.process_time()
    with torch.inference_mode():
        example = prep(images[:4]).to(dt)
        frozen = torch.jit.freeze(torch.jit.trace(model.features, example, check_trace=False))
        frozen(example)
    built["jit.trace + jit.freeze, 4 a pass"] = (
        chunked(lambda x: frozen(prep(x).to(dt)), 4),
        time.process_time() - c0,
    )
    c0 = time.process_time()
    mk = torch_mkldnn.to_mkldnn(copy.deepcopy(model.features).float(), dtype=dt)
    built["torch.utils.mkldnn (mkldnn layout, pools too), 4 a pass"] = (
        chunked(lambda x: mk(prep(x).contiguous().to(dt).to_mkldnn()).to_dense(), 4),
        time.process_time() - c0,
    )
    ref = built["eager, 4 images a pass"][0]()
    scale = float(ref.abs().max())
    diffs = {k: float((fn() - ref).abs().max()) / scale for k, (fn, _) in built.items()}
    a = torch.randn(2048, 2048).to(dt)
    b = torch.randn(2048, 2048).to(dt)
    bound_s: list[float] = []
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in built}
    for _ in range(repeats):
        for _ in range(2):
            w0 = time.perf_counter()
            torch.mm(a, b)
            bound_s.append(time.perf_counter() - w0)
        for k, (fn, _) in built.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            samples[k].append((time.process_time() - c0, time.perf_counter() - w0))
    bound = 2 * 2048**3 / statistics.median(bound_s)
    show(
        rows,
        f"variants: matmul bound ({'bf16' if cpu_has_native_bf16() else 'fp32'})",
        bound / 1e12,
        "TFLOP/s",
        f"median, interleaved; {torch.get_num_threads()} threads",
    )
    base = statistics.median(w for _, w in samples["eager, 4 images a pass"])
    for k, v in samples.items():
        c = statistics.median(c for c, _ in v)
        w = statistics.median(w for _, w in v)
        show(
            rows,
            f"variant {k}",
            n / w * 2 * VGG16_CONV_MACS / bound,
            "of bound",
            f"{n / w:.1f} img/s, {n / c:.1f} img/CPU-s, {base / w:.2f}x eager-4; "
            f"rel diff {diffs[k]:.1e}; build {built[k][1]:.2f} CPU-s",
        )
    return rows


def vgg_rows(frames: np.ndarray, model: Any, tmp: Path, batch: int, repeats: int) -> list[Row]:
    import torch

    from hpcdiff.config import BackgroundConfig
    from hpcdiff.features.cpu_fused import fuse_conv_relu
    from hpcdiff.features.extractor import FeatureExtractor, cpu_has_native_bf16
    from hpcdiff.io.cxi import FrameSource, write_cxi
    from hpcdiff.parallel.prefetch import Prefetcher
    from hpcdiff.preprocess import Preprocessor

    rows: list[Row] = []
    native = cpu_has_native_bf16()
    weights = str(WEIGHTS) if WEIGHTS.is_file() else "random:0"
    layer = "pool5"
    n = len(frames)
    pre = Preprocessor(model, BackgroundConfig(), threads=1)
    images = pre(frames, photon_energy_ev=ENERGY_EV)
    threads = torch.get_num_threads()
    note = f"batch {batch}, {threads} threads, layer {layer}, weights {Path(weights).name}"

    # eager first: it pays the cold read of the checkpoint
    c0, w0 = time.process_time(), time.perf_counter()
    eager = FeatureExtractor(weights, layer=layer, device="cpu", batch_size=batch, fuse_cpu=False)
    init_eager = (time.process_time() - c0, time.perf_counter() - w0)
    c0, w0 = time.process_time(), time.perf_counter()
    ours = FeatureExtractor(weights, layer=layer, device="cpu", batch_size=batch)
    init_ours = (time.process_time() - c0, time.perf_counter() - w0)
    c0 = time.process_time()
    fuse_conv_relu(eager._model.features, batch=4)  # the packing alone, once per extractor
    pack_s = time.process_time() - c0
    fp32 = FeatureExtractor(
        weights, layer=layer, device="cpu", batch_size=batch, bf16_cpu=False, channels_last=False
    )
    # first calls (one-off costs: oneDNN primitive creation, packing done at construction)
    first: dict[str, float] = {}
    for name, ex in (("ours", ours), ("eager", eager)):
        c0 = time.process_time()
        ex.extract(images[:1])
        first[name] = time.process_time() - c0
    diff = np.abs(ours.extract(images) - eager.extract(images)).max()
    scale = np.abs(eager.extract(images)).max()
    dt = torch.bfloat16 if native else torch.float32
    a = torch.randn(2048, 2048).to(dt)
    b = torch.randn(2048, 2048).to(dt)
    # interleaved in every repeat: the bound, then each way of running VGG16 (same process,
    # same threads); medians of each
    ways: dict[str, Callable[[], Any]] = {
        "bound": lambda: torch.mm(a, b),
        "ours": lambda: ours.extract(images),
        "eager": lambda: eager.extract(images),
        "fp32": lambda: fp32.extract(images),
    }
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in ways}
    for fn in ways.values():
        fn()
    for _ in range(repeats):
        for k, fn in ways.items():
            for _ in range(3 if k == "bound" else 1):
                c0, w0 = time.process_time(), time.perf_counter()
                fn()
                samples[k].append((time.process_time() - c0, time.perf_counter() - w0))
    med = {
        k: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v))
        for k, v in samples.items()
    }
    mm_flop = 2 * 2048**3
    bound, bound_cpu = mm_flop / med["bound"][1], mm_flop / med["bound"][0]
    best = mm_flop / min(w for _, w in samples["bound"])
    vgg_cpu, vgg_wall = med["ours"]
    eg_cpu, eg_wall = med["eager"]
    fp_cpu, fp_wall = med["fp32"]
    rate = n / vgg_wall
    dtype = ours.run_info()["weights_dtype"]
    fused = "fused conv+ReLU, packed weights" if ours.run_info()["cpu_fused"] else "eager"
    flops = 2 * VGG16_CONV_MACS
    show(
        rows,
        f"matmul bound ({'bf16' if native else 'fp32'})",
        bound / 1e12,
        "TFLOP/s",
        f"2048^3, median interleaved with the VGG16 passes; best {best / 1e12:.3f}; "
        f"{bound_cpu / 1e12:.3f} TFLOP/CPU-s",
    )
    show(
        rows,
        f"VGG16 ours ({dtype}, channels_last, {fused})",
        rate,
        "images/s",
        f"{note}; CPU {n / vgg_cpu:.2f}/CPU-s; construction {init_ours[0]:.2f} CPU-s "
        f"(packing {pack_s:.2f}), first 1-image call {first['ours']:.2f} CPU-s",
    )
    show(
        rows,
        f"VGG16 eager ({dtype}, channels_last): the path before fusion",
        n / eg_wall,
        "images/s",
        f"{note}; CPU {n / eg_cpu:.2f}/CPU-s; construction {init_eager[0]:.2f} CPU-s, "
        f"first 1-image call {first['eager']:.2f} CPU-s",
    )
    show(
        rows,
        "VGG16 ours / eager",
        eg_wall / vgg_wall,
        "x (wall)",
        f"CPU {eg_cpu / vgg_cpu:.2f}x; features max |diff| {diff:.2e} of max {scale:.2e}",
    )
    show(
        rows,
        "VGG16 fp32 NCHW batched",
        n / fp_wall,
        "images/s",
        f"{note}; CPU {n / fp_cpu:.2f}/CPU-s",
    )
    show(
        rows,
        "VGG16 ours / fp32 NCHW batched",
        fp_wall / vgg_wall,
        "x (wall)",
        f"CPU {fp_cpu / vgg_cpu:.2f}x",
    )
    show(
        rows,
        "VGG16 eager: fraction of the matmul bound",
        n / eg_wall * flops / bound,
        "(wall)",
        f"per CPU-second {n / eg_cpu * flops / bound_cpu:.2f}",
    )
    show(
        rows,
        "VGG16 ours: fraction of the matmul bound",
        rate * flops / bound,
        "(wall)",
        f"per CPU-second {n / vgg_cpu * flops / bound_cpu:.2f}; of the best bound "
        f"{rate * flops / best:.2f}; target >= 0.70",
    )

    path = write_cxi(tmp / "e2e.cxi", frames, compression="lz4")

    def end_to_end() -> None:
        with FrameSource([path]) as src:
            first = [True]

            def read(a: int, b: int) -> np.ndarray:
                # as the Featurizer: the first batch, which VGG16 waits for, on its threads too
                fill = torch.get_num_threads() if first[0] else None
                first[0] = False
                return pre(src.read_raw(a, b), photon_energy_ev=ENERGY_EV, threads=fill)

            ranges = [(a, min(a + batch, n)) for a in range(0, n, batch)]
            with Prefetcher(read, ranges, depth=2) as pf:
                for imgs in pf:
                    ours.extract(imgs)

    def serial() -> None:
        with FrameSource([path]) as src:
            for a in range(0, n, batch):
                b = min(a + batch, n)
                ours.extract(pre(src.read_raw(a, b), photon_energy_ev=ENERGY_EV))

    def fewer_threads(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            torch.set_num_threads(max(threads - 1, 1))
            try:
                fn()
            finally:
                torch.set_num_threads(threads)

        return run

    # interleaved: VGG16 alone, then each way of feeding it, repeated
    ways: dict[str, Callable[[], None]] = {
        "VGG16 alone": lambda: ours.extract(images),
        "prefetch thread": end_to_end,
        "serial (preprocess between batches)": serial,
        f"prefetch thread, torch threads {max(threads - 1, 1)}": fewer_threads(end_to_end),
        f"VGG16 alone, torch threads {max(threads - 1, 1)}": fewer_threads(
            lambda: ours.extract(images)
        ),
    }
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in ways}
    for fn in ways.values():
        fn()  # warm-up
    for _ in range(repeats):
        for k, fn in ways.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            got[k].append((time.process_time() - c0, time.perf_counter() - w0))
    med = {
        k: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v))
        for k, v in got.items()
    }
    v_wall = med["VGG16 alone"][1]
    for k, (c, w) in med.items():
        show(rows, f"end to end: {k}", n / w, "frames/s", f"{note}; CPU {c:.2f} s")
    for k, (_, w) in med.items():
        if not k.startswith("VGG16 alone"):
            show(rows, f"end to end / VGG16 alone: {k}", v_wall / w, "x (wall)", "target >= 0.8")
    return rows


_E2E_WORKER = r"""
import json, os, sys, time, statistics
import numpy as np
root, frames_path, cxi, batch, repeats, weights, detector, distance, ways = sys.argv[1:10]
sys.path.insert(0, root)
try:  # the process set-up of that revision's command line (not in older revisions)
    from hpcdiff.parallel.malloc_env import keep_batch_buffers
    keep_batch_buffers()
except ImportError:
    pass
import torch
from hpcdiff.config import BackgroundConfig, SimulateConfig
from hpcdiff.features.extractor import FeatureExtractor
from hpcdiff.geometry import DetectorModel
from hpcdiff.io.cxi import FrameSource
from hpcdiff.parallel.prefetch import Prefetcher
from hpcdiff.preprocess import Preprocessor
from hpcdiff.simulate.experiment import simulated_geometry
cfg = SimulateConfig(detector=detector, detector_distance_m=float(distance), n_frames=1, seed=0)
geom = simulated_geometry(cfg)
model = DetectorModel.build(geom, clen_m=cfg.detector_distance_m, photon_energy_ev=cfg.photon_energy_ev)
frames = np.load(frames_path)
n, batch = len(frames), int(batch)
pre = Preprocessor(model, BackgroundConfig(), threads=1)
if hasattr(pre, "prepare"):
    pre.prepare()
images = pre(frames, photon_energy_ev=9500.0)
ex = FeatureExtractor(weights, layer="pool5", device="cpu", batch_size=batch)
threads = torch.get_num_threads()
ranges = [(a, min(a + batch, n)) for a in range(0, n, batch)]

def alone():
    ex.extract(images)

import inspect
# as that revision's Featurizer: the first batch on the CNN's threads too, where it can
fill = "threads" in inspect.signature(pre.__call__).parameters

def prefetch(torch_threads=threads):
    torch.set_num_threads(torch_threads)
    first = [fill]
    try:
        with FrameSource([cxi]) as src:
            read = getattr(src, "read_raw", src.read)
            def job(a, b):
                kw = {"threads": max(1, torch_threads)} if first[0] else {}
                first[0] = False
                return pre(read(a, b), photon_energy_ev=9500.0, **kw)
            with Prefetcher(job, ranges, depth=2) as pf:
                for imgs in pf:
                    ex.extract(imgs)
    finally:
        torch.set_num_threads(threads)

all_ways = {"alone": alone, "prefetch": prefetch,
            "prefetch-torch1": lambda: prefetch(max(threads - 1, 1))}
chosen = {k: all_ways[k] for k in ways.split(",")}
for fn in chosen.values():
    fn()
got = {k: [] for k in chosen}
for _ in range(int(repeats)):
    for k, fn in chosen.items():
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        got[k].append((time.process_time() - c0, time.perf_counter() - w0))
print(json.dumps({k: v for k, v in got.items()}))
"""


def e2e_rows(
    frames: np.ndarray, tmp: Path, baseline: str, batch: int, repeats: int, rounds: int = 2
) -> list[Row]:
    """End to end against VGG16 alone, this checkout beside ``baseline`` and libgomp's
    default wait policy beside ``OMP_WAIT_POLICY=PASSIVE`` (what this checkout's command
    line sets; its malloc settings, :mod:`hpcdiff.parallel.malloc_env`, are applied
    where the revision has them), each in its own subprocess
    (the policy is read once, when torch loads libgomp), the subprocesses alternating
    ``rounds`` times; inside each, VGG16 alone and the pipeline interleaved ``repeats``
    times.  Ratios are of medians within one subprocess (same threads, same moment);
    beside the wall-clock ratio, the CPU-time ratio (what the ratio would be on cores
    nobody else uses, when neither side leaves a core idle)."""
    from hpcdiff.io.cxi import write_cxi

    rows: list[Row] = []
    frames_path = tmp / "e2e_frames.npy"
    np.save(frames_path, frames)
    cxi = write_cxi(tmp / "e2e_worker.cxi", frames, compression="lz4")
    worker = tmp / "e2e_worker.py"
    worker.write_text(_E2E_WORKER)
    base_root = export_revision(baseline, tmp / "e2e_baseline")
    weights = str(WEIGHTS) if WEIGHTS.is_file() else "random:0"
    configs = [
        ("baseline", base_root, None),
        ("ours", ROOT, None),
        ("baseline", base_root, "PASSIVE"),
        ("ours", ROOT, "PASSIVE"),
    ]
    got: dict[tuple[str, str | None], dict[str, list[list[float]]]] = {}
    for _ in range(rounds):
        for name, root, policy in configs:
            env = {
                k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OMP_WAIT_POLICY")
            }
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            res = subprocess.run(
                [
                    sys.executable,
                    str(worker),
                    str(root),
                    str(frames_path),
                    str(cxi),
                    str(batch),
                    str(repeats),
                    weights,
                    LAYOUT["detector"],
                    str(LAYOUT["distance_m"]),
                    "alone,prefetch,prefetch-torch1",
                ],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            out = json.loads(res.stdout.strip().splitlines()[-1])
            acc = got.setdefault((name, policy), {})
            for k, v in out.items():
                acc.setdefault(k, []).extend(v)
    n = len(frames)
    for (name, policy), ways in got.items():
        label = f"{name}, OMP wait {policy or 'default'}"
        a_cpu = statistics.median(c for c, _ in ways["alone"])
        a_wall = statistics.median(w for _, w in ways["alone"])
        show(
            rows,
            f"e2e {label}: VGG16 alone",
            n / a_wall,
            "images/s",
            f"{1e3 * a_cpu / n:.1f} CPU ms/image",
        )
        for way in ("prefetch", "prefetch-torch1"):
            c = statistics.median(c for c, _ in ways[way])
            w = statistics.median(w for _, w in ways[way])
            show(
                rows,
                f"e2e {label}: {way} / VGG16 alone",
                a_wall / w,
                "x (wall)",
                f"CPU {a_cpu / c:.2f}x; {1e3 * c / n:.1f} CPU ms/frame; {n / w:.1f} frames/s; "
                "target >= 0.8",
            )
    return rows


# --------------------------------------------------------------------------- 5. start-up


def startup_rows(repeats: int) -> list[Row]:
    import resource

    rows: list[Row] = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def child_cpu(cmd: list[str]) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    help_s, bare_s = [], []
    for _ in range(max(repeats, 5)):
        help_s.append(child_cpu([sys.executable, "-m", "hpcdiff", "--help"]))
        bare_s.append(child_cpu([sys.executable, "-c", "pass"]))
    show(rows, "hpcdiff --help", statistics.median(help_s), "CPU s", "target < 0.3")
    show(rows, "python -c pass", statistics.median(bare_s), "CPU s", "the interpreter alone")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--baseline", help="git revision of today's code (default: where this branch left main)"
    )
    p.add_argument("--skip-vgg", action="store_true")
    p.add_argument(
        "--only",
        nargs="+",
        choices=("startup", "read", "preprocess", "prep-stages", "vgg", "e2e", "vgg-variants"),
        help="run only these parts (vgg-variants: only when named)",
    )
    p.add_argument(
        "--detector",
        choices=("cspad", "small"),
        default="cspad",
        help="simulated detector (a layout to check the numbers on besides CSPAD)",
    )
    p.add_argument("--distance-m", type=float, default=0.1, help="simulated detector distance, m")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument(
        "--bare-process",
        action="store_true",
        help="skip the command line's process set-up (OMP wait policy, malloc thresholds) "
        "in this process",
    )
    args = p.parse_args(argv)
    setup = "bare process"
    if not args.bare_process:  # as hpcdiff.cli.main, before torch is imported
        from hpcdiff.parallel.malloc_env import keep_batch_buffers
        from hpcdiff.parallel.omp_env import passive_omp_waits

        passive_omp_waits()
        setup = f"malloc thresholds raised: {keep_batch_buffers()}"
    setup = f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}, {setup}"
    if args.baseline is None:
        args.baseline = subprocess.run(
            ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    LAYOUT.update(detector=args.detector, distance_m=args.distance_m)
    print(
        f"baseline {args.baseline}; this checkout {ROOT}; detector {args.detector} at "
        f"{args.distance_m:g} m; this process: {setup}",
        flush=True,
    )
    frames, model = cspad_frames(args.frames)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="hpcdiff-throughput-") as d:
        tmp = Path(d)
        parts = set(args.only or ("startup", "read", "preprocess", "prep-stages", "vgg"))
        if args.skip_vgg:
            parts.discard("vgg")
        if "startup" in parts:
            rows += startup_rows(args.repeats)
        if "read" in parts:
            rows += reader_rows(frames, tmp, args.batch, args.repeats)
        if "preprocess" in parts:
            rows += preprocess_rows(frames, tmp, args.baseline, args.repeats)
        if "prep-stages" in parts:
            rows += prep_stage_rows(frames, model, tmp, args.repeats)
        if "vgg" in parts:
            rows += vgg_rows(frames, model, tmp, args.batch, args.repeats)
        if "e2e" in parts:
            rows += e2e_rows(frames, tmp, args.baseline, args.batch, args.repeats)
        if "vgg-variants" in parts:
            rows += vgg_variant_rows(args.batch, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end classification throughput on full-size frames, stage by stage, against a
straightforward per-frame baseline, in frames/s.

Usage::

    python benchmarks/bench_pipeline.py [--quick] [--frames 32] [--batch 16] [--repeats 3]
                                        [--threads N] [--compile] [--detector cspad|small]
    python benchmarks/run.py --only pipeline [--quick]

Frames are simulated once (:func:`hpcdiff.simulate.build_simulator`, CSPAD-like slab 1480
x 1552, assembled 1731 x 1734) and written to a temporary folder as an lz4 and a gzip CXI
file. Each stage of ours then runs stand-alone over all frames (as the classify job runs
them): read (:class:`hpcdiff.io.cxi.FrameSource`), detector corrections and the radial
chain in ring order (:class:`hpcdiff.background.RingOrderImages`, the CPU path, one frame
at a time), the slab-order array functions of the same stages (the path cupy arrays take)
and the local background, the whole preprocessing on one thread and on the rank's threads
(torch's thread count: frames of a batch run concurrently), VGG16 ``fc6+fc7`` features
(batched, channels_last; bf16 autocast on the CPU when it measures faster,
``torch.compile`` with ``--compile`` when it measures faster), PCA + logistic-regression
predict; then the whole chain end to end, as the classify job runs it (a reader thread
reads and preprocesses the next batch while the main thread runs VGG16 on this one) and in
one thread. In the same run a baseline does the same job the straightforward way, one
frame at a time: numpy per-ASIC common mode, a per-ring ``np.median`` loop over
precomputed ring pixel lists, a per-ring sigma-clipping loop for Bragg peaks, assembly by
fancy indexing, a box blur and ``scipy.ndimage.zoom`` to 224 x 224, per-image fp32 eager
VGG16 (and ``scipy.ndimage.median_filter`` per panel for the local background). Every
figure is the median of ``repeats`` timed passes after a one-frame warm-up; the speed-ups
are ours / baseline. With CUDA the same chain runs on the GPU (cupy arrays when cupy
imports); without it one row says so and nothing is invented. VGG16 weights are
``random:0`` by default (throughput does not depend on their values). "Ours" is the seed
recipe (``[background] preprocessing = "seed"``), the one the baseline does the
straightforward way; the standard recipe's speed is ``bench_preprocess_transfer.py``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Row = dict[str, Any]

#: Target of the issue: end-to-end speed-up over the baseline on a CPU.
TARGET_SPEEDUP = 3.0


# --------------------------------------------------------------------------- data


@dataclass
class Experiment:
    """Simulated frames in memory and on disk.

    Attributes
    ----------
    frames
        ``(n, n_ss, n_fs)`` float32 raw frames, ADU.
    photon_energy_ev
        ``(n,)`` float64 photon energy of each frame, eV.
    geometry
        The detector geometry (:class:`hpcdiff.io.geom.DetectorGeometry`).
    model
        :class:`hpcdiff.geometry.DetectorModel` of the simulated distance and energy.
    files
        ``{"lz4": path, "gzip": path}``: the same frames in two CXI files.
    simulate_s
        Seconds spent simulating and writing.
    """

    frames: np.ndarray
    photon_energy_ev: np.ndarray
    geometry: Any
    model: Any
    files: dict[str, Path]
    simulate_s: float

    @property
    def n(self) -> int:
        """Number of frames."""
        return int(self.frames.shape[0])


def simulate_frames(
    out_dir: Path, *, n_frames: int, detector: str = "cspad", seed: int = 0
) -> Experiment:
    """Simulate ``n_frames`` frames and write them as lz4 and gzip CXI files in ``out_dir``."""
    from hpcdiff.config import SimulateConfig
    from hpcdiff.geometry import DetectorModel
    from hpcdiff.io.cxi import write_cxi
    from hpcdiff.simulate import build_simulator
    from hpcdiff.simulate.experiment import DATA_PATH, PHOTON_ENERGY_PATH, simulated_geometry

    t0 = time.perf_counter()
    cfg = SimulateConfig(detector=detector, n_frames=n_frames, seed=seed)
    geom = simulated_geometry(cfg)
    sim = build_simulator(cfg, geom)
    frames = np.stack([sim.frame(i)[0] for i in range(n_frames)])
    energy = np.full(n_frames, cfg.photon_energy_ev)
    files = {}
    for compression in ("lz4", "gzip"):
        files[compression] = write_cxi(
            out_dir / f"frames_{compression}.cxi",
            frames,
            data_path=DATA_PATH,
            compression=compression,
            per_frame={PHOTON_ENERGY_PATH: energy},
        )
    model = DetectorModel.build(
        geom, clen_m=cfg.detector_distance_m, photon_energy_ev=cfg.photon_energy_ev
    )
    return Experiment(frames, energy, geom, model, files, time.perf_counter() - t0)


# --------------------------------------------------------------------------- timing


def median_seconds(
    fn: Callable[[], Any], *, repeats: int, sync: Callable[[], Any] | None = None
) -> tuple[float, list[float]]:
    """Median wall time of ``repeats`` calls of ``fn`` (after ``sync`` where given)."""
    times = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def batches(n: int, batch: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in steps of ``batch``."""
    return [(a, min(a + batch, n)) for a in range(0, n, batch)]


def rate_row(metric: str, n: int, seconds: float, times: list[float], note: str = "") -> Row:
    """A frames/s row with the individual pass times in the note."""
    spread = ", ".join(f"{t:.2f}" for t in times)
    text = f"{note}; " if note else ""
    return {
        "metric": metric,
        "value": round(n / seconds, 4),
        "unit": "frames/s",
        "note": f"{text}{n} frames, median of {len(times)} passes ({spread} s)",
    }


def ratio_row(metric: str, ours: float, base: float, note: str = "") -> Row:
    """An ours / baseline speed-up row."""
    return {"metric": metric, "value": round(ours / base, 3), "unit": "x", "note": note}


# --------------------------------------------------------------------------- the baseline


class Baseline:
    """The classification preprocessing written the straightforward way, one frame at a time.

    Uses the same once-per-detector maps as ours (gain, valid pixels, ASIC rectangles,
    ring index, pixel map: computing them is not part of the per-frame cost) and numpy /
    scipy calls per frame: a loop over ASICs for common mode, a loop over |q| rings with
    ``np.median`` for the radial background, a loop over rings with sigma clipping for
    the Bragg-peak threshold, ``scipy.ndimage.binary_dilation`` to grow peaks, global
    median / MAD normalisation, assembly by fancy indexing, ``scipy.ndimage.zoom``.

    Parameters
    ----------
    pre
        Our :class:`hpcdiff.preprocess.Preprocessor` of the same detector and config,
        whose detector maps are reused.
    size
        Output image edge, pixels.
    """

    def __init__(self, pre: Any, *, size: int = 224) -> None:
        from hpcdiff.background import panel_rectangles

        self.cfg = pre.cfg
        self.corrections = pre.corrections
        self.size = int(size)
        self.shape = pre.slab_shape
        self.valid = np.asarray(pre.valid, bool)
        self.gain = np.where(self.valid, pre.adu_per_ev, 1.0)
        self.asics = panel_rectangles(pre.asics.labels.reshape(self.shape))
        self.panels = pre.panels
        ring = np.asarray(pre.ring_index).ravel()
        self.rings = [np.flatnonzero(ring == r) for r in range(int(ring.max()) + 1)]
        rows = np.asarray(pre.pixmap.rows).ravel()
        cols = np.asarray(pre.pixmap.cols).ravel()
        self.on = np.flatnonzero((rows >= 0) & (cols >= 0))
        self.image_rc = (rows[self.on], cols[self.on])
        self.image_shape = tuple(int(v) for v in pre.pixmap.shape)
        self.limit = float(pre.limit)

    def correct(self, frame: np.ndarray, photon_energy_ev: float) -> np.ndarray:
        """ADU -> photons, then each ASIC minus the median of its zero-photon pixels."""
        x = (frame / (self.gain * photon_energy_ev)).astype(np.float32)
        threshold = self.corrections.common_mode_threshold_photons
        if self.corrections.common_mode:
            for r in self.asics:
                block = x[r.ss0 : r.ss1, r.fs0 : r.fs1]
                low = block[self.valid[r.ss0 : r.ss1, r.fs0 : r.fs1] & (block < threshold)]
                if low.size:
                    block -= np.median(low)
        return x

    def radial(self, x: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Per-ring median background, ``(n_ss, n_fs)``, NaN outside the rings."""
        flat, okf = x.ravel(), ok.ravel()
        bg = np.full(flat.size, np.nan, dtype=np.float32)
        for idx in self.rings:
            values = flat[idx][okf[idx]]
            if values.size:
                bg[idx] = np.median(values)
        return bg.reshape(self.shape)

    def bragg(self, r: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Pixels ``bragg_sigma`` clipped sigmas above their ring, grown by dilation."""
        import scipy.ndimage

        flat, okf = r.ravel(), ok.ravel()
        peaks = np.zeros(flat.size, dtype=bool)
        for idx in self.rings:
            good = okf[idx]
            values = flat[idx][good]
            if values.size < 2:
                continue
            keep = values
            for _ in range(3):
                mean, std = keep.mean(), keep.std()
                keep = values[np.abs(values - mean) <= 3.0 * std]
            mean, std = keep.mean(), keep.std()
            peaks[idx] = good & (flat[idx] > mean + self.cfg.bragg_sigma * std)
        grown = scipy.ndimage.binary_dilation(
            peaks.reshape(self.shape), iterations=self.cfg.bragg_grow_px, structure=np.ones((3, 3))
        )
        return grown & ok

    def normalise(self, r: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Median / MAD standardisation, clipped; 0 on invalid pixels."""
        values = r[ok]
        centre = np.median(values)
        dev = np.abs(values - centre)
        scale = 1.4826 * np.median(dev) or 1.2533 * dev.mean() or 1.0
        z = np.clip((r - centre) / scale, -self.cfg.clip_sigma, self.cfg.clip_sigma)
        return np.where(ok, z, 0.0).astype(np.float32)

    def image(self, z: np.ndarray) -> np.ndarray:
        """Assemble, pad to a square, box-blur and ``scipy.ndimage.zoom``: ``(3, size, size)``.

        The box filter (``uniform_filter`` over one output pixel) stands in for the area
        averaging of ours; without it linear zoom samples single pixels (aliasing).
        """
        import scipy.ndimage

        h, w = self.image_shape
        canvas = max(h, w)
        img = np.zeros((canvas, canvas), dtype=np.float32)
        rr, cc = self.image_rc
        img[rr + (canvas - h) // 2, cc + (canvas - w) // 2] = z.ravel()[self.on]
        img = scipy.ndimage.uniform_filter(img, size=max(1, round(canvas / self.size)))
        small = scipy.ndimage.zoom(
            img, self.size / canvas, order=1, grid_mode=True, mode="grid-constant"
        )
        small = small[: self.size, : self.size]
        unit = np.clip((small / self.limit + 1) / 2, 0, 1).astype(np.float32)
        return np.repeat(unit[None], 3, axis=0)

    def local(self, x: np.ndarray) -> np.ndarray:
        """``scipy.ndimage.median_filter`` of every panel (masked pixels vote too)."""
        import scipy.ndimage

        bg = np.full(self.shape, np.nan, dtype=np.float32)
        size = self.cfg.local_size_px
        for r in self.panels:
            block = x[r.ss0 : r.ss1, r.fs0 : r.fs1]
            bg[r.ss0 : r.ss1, r.fs0 : r.fs1] = scipy.ndimage.median_filter(
                block, size=size, mode="nearest"
            )
        return bg

    def __call__(self, frame: np.ndarray, photon_energy_ev: float) -> np.ndarray:
        """One raw frame ``(n_ss, n_fs)`` ADU -> ``(3, size, size)`` float32 in [0, 1]."""
        x = self.correct(frame, photon_energy_ev)
        ok = self.valid & np.isfinite(x)
        r = x - self.radial(x, ok)
        ok &= np.isfinite(r)
        if self.cfg.mask_bragg:
            ok &= ~self.bragg(r, ok)
        return self.image(self.normalise(r, ok))


# --------------------------------------------------------------------------- models


def fitted_classifier(n_features: int, *, seed: int = 0) -> Any:
    """A PCA(50) + logistic regression fitted on random features (for predict timings)."""
    from hpcdiff.io.featurefile import FeatureMeta
    from hpcdiff.learn import BINARY_CLASS_NAMES, DiffuseClassifier

    rng = np.random.default_rng(seed)
    n = 64
    y = np.arange(n) % 2
    x = rng.random((n, n_features), dtype=np.float32) + 0.05 * y[:, None].astype(np.float32)
    meta = FeatureMeta("fc6+fc7", n_features, {"name": "random", "sha256": "0"}, {"method": "x"})
    return DiffuseClassifier(n_components=50).fit(
        x, y, class_names=BINARY_CLASS_NAMES, feature_meta=meta
    )


def materialise_weights(weights: str, out_dir: Path) -> str:
    """``weights`` itself, or for ``"random:SEED"`` a checkpoint file of those weights.

    Random weights are generated (138 M parameters, seconds of CPU) on every load; the
    benchmark builds several extractors, so it generates them once and saves them.
    """
    if not weights.startswith("random:"):
        return weights
    import torch

    from hpcdiff.features import load_weights

    path = out_dir / f"vgg16-{weights.replace(':', '-')}.pth"
    torch.save(dict(load_weights(weights).state_dict), path)
    return str(path)


def choose_extractor(
    images: np.ndarray,
    *,
    weights: str,
    device: str,
    batch: int,
    repeats: int,
    try_compile: bool,
    bf16: bool | None = None,
) -> tuple[Any, list[Row], dict[str, Any]]:
    """Time the fast-path variants of VGG16 on ``images``; return the fastest and its rows.

    ``bf16``: ``None`` times fp32 and bf16 autocast and keeps the faster, ``True`` /
    ``False`` times only that one.
    """
    from hpcdiff.features import FeatureExtractor

    variants: list[tuple[str, dict[str, Any]]] = []
    if bf16 is not True:
        variants.append(("fp32 batched channels_last", {"bf16": False, "bf16_cpu": False}))
    if bf16 is not False:
        variants.append(("bf16 autocast batched channels_last", {"bf16": True, "bf16_cpu": True}))
    if try_compile:
        variants += [(f"{name} compiled", {**kw, "compile": True}) for name, kw in variants]
    rows, rates, built = [], {}, {}
    n = images.shape[0]
    for name, kw in variants:
        fx = FeatureExtractor(weights, device=device, channels_last=True, batch_size=batch, **kw)
        t0 = time.perf_counter()
        fx.extract(images[: min(n, batch)])  # warm-up (oneDNN primitives, compilation)
        warm = time.perf_counter() - t0
        sec, times = median_seconds(lambda fx=fx: fx.extract(images), repeats=repeats)
        rates[name] = n / sec
        built[name] = fx
        rows.append(
            rate_row(f"VGG16 fc6+fc7: {name} ({device})", n, sec, times, f"warm-up {warm:.1f} s")
        )
    best = max(rates, key=rates.__getitem__)
    return built[best], rows, {"best": best, **rates}


# --------------------------------------------------------------------------- CPU run


def cpu_rows(
    exp: Experiment,
    *,
    batch: int,
    repeats: int,
    weights: str,
    try_compile: bool,
    baseline_local_frames: int,
    bf16: bool | None = None,
) -> tuple[list[Row], dict[str, Any]]:
    """Every stage of ours and of the baseline on the CPU, plus the speed-ups."""
    import h5py

    from hpcdiff.background import (
        bragg_mask,
        cnn_images,
        local_background,
        normalise,
        radial_background,
    )
    from hpcdiff.config import BackgroundConfig, CorrectionsConfig
    from hpcdiff.features import FeatureExtractor
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.parallel.prefetch import Prefetcher
    from hpcdiff.preprocess import Preprocessor
    from hpcdiff.simulate.experiment import DATA_PATH, PHOTON_ENERGY_PATH

    n, frames, energy = exp.n, exp.frames, exp.photon_energy_ev
    spans = batches(n, batch)
    rows: list[Row] = []
    extra: dict[str, Any] = {}
    t0 = time.perf_counter()
    import torch

    threads = torch.get_num_threads()  # as a rank: preprocessing and VGG16 share its threads
    pre = Preprocessor(
        exp.model, BackgroundConfig(preprocessing="seed"), CorrectionsConfig(), threads=threads
    )
    single = Preprocessor(exp.model, BackgroundConfig(preprocessing="seed"), CorrectionsConfig())
    bcfg = pre.cfg
    pre(frames[:1], photon_energy_ev=energy[:1])  # warm-up: resampling matrix
    single(frames[:1], photon_energy_ev=energy[:1])
    base = Baseline(pre, size=bcfg.image_size_px)
    extra["setup_s"] = {"detector maps (ours + baseline)": time.perf_counter() - t0}

    per_frame = [(i, i + 1) for i in range(n)]

    def timed_fn(metric: str, fn: Callable[[], Any], note: str = "") -> float:
        sec, times = median_seconds(fn, repeats=repeats)
        rows.append(rate_row(metric, n, sec, times, note))
        return n / sec

    def timed(
        metric: str,
        step: Callable[[int, int], Any],
        over: list[tuple[int, int]],
        note: str = "",
    ) -> float:
        """Time ``step(a, b)`` over every span of ``over``, after a one-frame warm-up."""
        a0 = over[0][0]
        step(a0, a0 + 1)
        sec, times = median_seconds(lambda: [step(a, b) for a, b in over], repeats=repeats)
        frames_n = over[-1][1] - a0
        rows.append(rate_row(metric, frames_n, sec, times, note))
        return frames_n / sec

    # ---- read
    for compression, path in exp.files.items():
        mb = path.stat().st_size / 2**20

        def read(path: Path = path) -> None:
            with FrameSource([str(path)], geometry=exp.geometry) as src:
                for a, b in spans:
                    src.read(a, b)
                    src.frame_values(a, b)

        timed_fn(f"read {compression} (FrameSource)", read, f"{mb:.0f} MiB file, page cache warm")

    # ---- ours, stage by stage (inputs of each stage computed once, outside the timing)
    corrected = np.concatenate(
        [pre.correct(frames[a:b], photon_energy_ev=energy[a:b]) for a, b in spans]
    )
    valid = np.broadcast_to(pre.valid, corrected.shape) & np.isfinite(corrected)
    ours_correct = timed(
        "ours: detector corrections",
        lambda i, _: pre.correct(frames[i : i + 1], photon_energy_ev=energy[i : i + 1]),
        per_frame,
        "ADU->photons, per-ASIC common mode; per frame, as the Preprocessor runs it",
    )
    min_excess = pre.bragg_min_excess(energy, n)
    ours_ring = timed(
        "ours: radial + Bragg + normalise + images, ring order (CPU path)",
        lambda i, _: pre.ring_order(corrected[i : i + 1], min_excess=min_excess[i : i + 1]),
        per_frame,
        "RingOrderImages, per frame, as the Preprocessor runs it",
    )
    ours_radial = timed(
        "ours, slab order (the cupy path): background radial (median, 400 rings)",
        lambda a, b: radial_background(corrected[a:b], pre.rings, valid=valid[a:b]),
        spans,
    )
    ours_local = timed(
        f"ours: background local ({bcfg.local_size_px} px median, bin {bcfg.local_bin_px})",
        lambda a, b: local_background(
            corrected[a:b],
            pre.panels,
            valid=valid[a:b],
            size_px=bcfg.local_size_px,
            bin_px=bcfg.local_bin_px,
        ),
        spans,
    )
    residual = corrected - np.concatenate(
        [radial_background(corrected[a:b], pre.rings, valid=valid[a:b]) for a, b in spans]
    )
    ok = valid & np.isfinite(residual)

    def bragg_normalise(a: int, b: int) -> np.ndarray:
        peaks = bragg_mask(
            residual[a:b],
            pre.rings,
            valid=ok[a:b],
            k_sigma=bcfg.bragg_sigma,
            grow_px=bcfg.bragg_grow_px,
            panel_index=pre.panel_index,
        )
        return normalise(residual[a:b], valid=ok[a:b] & ~peaks, clip_sigma=bcfg.clip_sigma)

    ours_bragg = timed(
        "ours, slab order (the cupy path): Bragg mask + normalise", bragg_normalise, spans
    )
    z = np.concatenate([bragg_normalise(a, b) for a, b in spans])
    ours_image = timed(
        "ours, slab order (the cupy path): assemble + resample to 224x224 (cnn_images)",
        lambda a, b: cnn_images(z[a:b], pixmap=pre.pixmap, valid=ok[a:b], limit=pre.limit),
        spans,
    )
    timed(
        "ours: whole preprocessing (Preprocessor, 1 thread)",
        lambda a, b: single(frames[a:b], photon_energy_ev=energy[a:b]),
        spans,
        "corrections + radial + Bragg + normalise + images",
    )
    ours_pre = timed(
        f"ours: whole preprocessing (Preprocessor, {threads} thread(s))",
        lambda a, b: pre(frames[a:b], photon_energy_ev=energy[a:b]),
        spans,
        "frames of a batch on the rank's threads, as the classify job runs it",
    )
    images = np.concatenate([pre(frames[a:b], photon_energy_ev=energy[a:b]) for a, b in spans])
    extractor, vgg_rows, vgg_rates = choose_extractor(
        images, weights=weights, device="cpu", batch=batch, repeats=repeats,
        try_compile=try_compile, bf16=bf16,
    )  # fmt: skip
    rows += vgg_rows
    extra["vgg16_rates"] = vgg_rates
    ours_vgg = vgg_rates[vgg_rates["best"]]
    features = extractor.extract(images)
    clf = fitted_classifier(features.shape[1])
    ours_predict = timed(
        "ours: PCA(50) + LR predict",
        lambda a, b: clf.predict_proba(features[a:b]),
        spans,
    )

    def ours_serial() -> None:
        with FrameSource([str(exp.files["lz4"])], geometry=exp.geometry) as src:
            for a, b in spans:
                raw = src.read(a, b)
                e = src.frame_values(a, b)["photon_energy_ev"]
                clf.predict_proba(extractor.extract(pre(raw, photon_energy_ev=e)))

    def ours_overlapped() -> None:
        with FrameSource([str(exp.files["lz4"])], geometry=exp.geometry) as src:

            def read_and_preprocess(a: int, b: int) -> np.ndarray:
                raw = src.read(a, b)
                e = src.frame_values(a, b)["photon_energy_ev"]
                return pre(raw, photon_energy_ev=e)

            with Prefetcher(read_and_preprocess, spans, depth=2) as pf:
                for images in pf:
                    clf.predict_proba(extractor.extract(images))

    timed_fn(
        "ours: end to end, one thread (read, preprocess, VGG16 in turn)",
        ours_serial,
        f"batches of {batch}, VGG16 {vgg_rates['best']}",
    )
    ours_e2e = timed_fn(
        "ours: end to end (read lz4 -> prediction)",
        ours_overlapped,
        f"as the classify job: a reader thread reads and preprocesses the next batch while "
        f"the main thread runs VGG16 {vgg_rates['best']} on this one; batches of {batch}",
    )

    # ---- baseline, one frame at a time
    x0 = [base.correct(frames[i], float(energy[i])) for i in range(n)]
    ok0 = [base.valid & np.isfinite(x) for x in x0]
    base_correct = timed(
        "baseline: corrections (per-ASIC loop)",
        lambda i, _: base.correct(frames[i], float(energy[i])),
        per_frame,
    )
    base_radial = timed(
        "baseline: background radial (per-ring np.median loop)",
        lambda i, _: base.radial(x0[i], ok0[i]),
        per_frame,
    )
    m = max(1, min(baseline_local_frames, n))
    base_local = timed(
        f"baseline: background local (median_filter {bcfg.local_size_px} px per panel)",
        lambda i, _: base.local(x0[i]),
        per_frame[:m],
        "exact full-resolution filter",
    )
    r0 = [x0[i] - base.radial(x0[i], ok0[i]) for i in range(n)]
    ok1 = [ok0[i] & np.isfinite(r0[i]) for i in range(n)]

    def base_bragg_normalise(i: int) -> np.ndarray:
        return base.normalise(r0[i], ok1[i] & ~base.bragg(r0[i], ok1[i]))

    base_bragg = timed(
        "baseline: Bragg mask + normalise (per-ring loop)",
        lambda i, _: base_bragg_normalise(i),
        per_frame,
    )
    z0 = [base_bragg_normalise(i) for i in range(n)]
    base_image = timed(
        "baseline: assemble + scipy.ndimage.zoom to 224x224",
        lambda i, _: base.image(z0[i]),
        per_frame,
    )
    base_pre = timed(
        "baseline: whole preprocessing (per frame)",
        lambda i, _: base(frames[i], float(energy[i])),
        per_frame,
    )
    base_images = np.stack([base(frames[i], float(energy[i])) for i in range(n)])
    per_image = FeatureExtractor(
        weights, device="cpu", batch_size=1, channels_last=False, bf16=False, bf16_cpu=False
    )
    per_image.extract(base_images[:1])
    base_vgg = timed(
        "baseline: VGG16 fc6+fc7 per image, fp32 eager (cpu)",
        lambda i, _: per_image.extract(base_images[i : i + 1]),
        per_frame,
    )
    base_predict = timed(
        "baseline: PCA + LR predict per frame",
        lambda i, _: clf.predict_proba(features[i : i + 1]),
        per_frame,
    )

    def base_chain() -> None:
        with h5py.File(exp.files["lz4"], "r") as h5:
            data, ev = h5[DATA_PATH], h5[PHOTON_ENERGY_PATH]
            for i in range(n):
                image = base(data[i].astype(np.float32), float(ev[i]))
                clf.predict_proba(per_image.extract(image[None]))

    base_e2e = timed_fn(
        "baseline: end to end (h5py per frame -> prediction)", base_chain, "one process"
    )
    # the same baseline with VGG16 batched (fp32, NCHW): what the pipeline adds beyond
    # the network's batch size
    batched = FeatureExtractor(
        weights, device="cpu", batch_size=batch, channels_last=False, bf16=False, bf16_cpu=False
    )
    batched.extract(base_images[:1])
    base_vgg_batched = timed(
        f"baseline: VGG16 fc6+fc7 batched ({batch}), fp32 NCHW eager (cpu)",
        lambda a, b: batched.extract(base_images[a:b]),
        spans,
    )

    def base_chain_batched() -> None:
        with h5py.File(exp.files["lz4"], "r") as h5:
            data, ev = h5[DATA_PATH], h5[PHOTON_ENERGY_PATH]
            for a, b in spans:
                imgs = np.stack(
                    [base(data[i].astype(np.float32), float(ev[i])) for i in range(a, b)]
                )
                clf.predict_proba(batched.extract(imgs))

    base_e2e_batched = timed_fn(
        "baseline: end to end, VGG16 batched (fp32, NCHW)", base_chain_batched, f"batch {batch}"
    )

    # ---- agreement and speed-ups
    corr = [
        float(np.corrcoef(images[i, 0].ravel(), base_images[i, 0].ravel())[0, 1]) for i in range(n)
    ]
    rows.append(
        {
            "metric": "image agreement ours vs baseline",
            "value": round(statistics.median(corr), 4),
            "unit": "Pearson r",
            "note": f"median over frames of 224x224 image correlation (min {min(corr):.3f})",
        }
    )
    base_ring = 1 / (1 / base_radial + 1 / base_bragg + 1 / base_image)
    pairs = [
        ("corrections", ours_correct, base_correct),
        ("radial + Bragg + normalise + images", ours_ring, base_ring),
        ("background radial", ours_radial, base_radial),
        ("background local", ours_local, base_local),
        ("Bragg mask + normalise", ours_bragg, base_bragg),
        ("assemble + resample", ours_image, base_image),
        ("whole preprocessing", ours_pre, base_pre),
        ("VGG16 features", ours_vgg, base_vgg),
        ("VGG16 features vs batched fp32 NCHW", ours_vgg, base_vgg_batched),
        ("PCA + LR predict", ours_predict, base_predict),
    ]
    for name, ours, base_rate in pairs:
        rows.append(ratio_row(f"speed-up {name} (ours / baseline)", ours, base_rate))
    speedup = ours_e2e / base_e2e
    rows.append(
        ratio_row(
            "speed-up end to end (ours / baseline with batched VGG16)",
            ours_e2e,
            base_e2e_batched,
            "what the pipeline adds beyond the network's batch size (fp32, NCHW both)",
        )
    )
    rows.append(
        ratio_row(
            "speed-up end to end (ours / baseline)",
            ours_e2e,
            base_e2e,
            f"target >= {TARGET_SPEEDUP:g}x on CPU: {'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}",
        )
    )
    stage_s = {
        "corrections": 1 / ours_correct,
        "radial + Bragg + normalise + images": 1 / ours_ring,
        "VGG16 features": 1 / ours_vgg,
        "PCA + LR predict": 1 / ours_predict,
    }
    bottleneck = max(stage_s, key=stage_s.__getitem__)
    total = sum(stage_s.values())
    rows.append(
        {
            "metric": "ours: slowest stage (CPU)",
            "value": bottleneck,
            "unit": "",
            "note": ", ".join(f"{k} {v / total:.0%}" for k, v in stage_s.items())
            + " of the summed stage time",
        }
    )
    extra.update(
        speedup_end_to_end=speedup,
        end_to_end_frames_per_s={
            "ours": ours_e2e,
            "baseline": base_e2e,
            "baseline_batched_vgg16": base_e2e_batched,
        },
        image_correlation=corr,
        stage_seconds_per_frame=stage_s,
    )
    return rows, extra


# --------------------------------------------------------------------------- GPU run


def gpu_rows(exp: Experiment, *, batch: int, repeats: int, weights: str) -> list[Row]:
    """The same chain on CUDA (cupy arrays when cupy imports); one row if there is no GPU."""
    import torch

    if not torch.cuda.is_available():
        return [
            {
                "metric": "cuda device",
                "value": "none",
                "unit": "",
                "note": "no CUDA device on this machine: GPU rows not measured",
            }
        ]
    from hpcdiff.backend import to_numpy
    from hpcdiff.config import BackgroundConfig, CorrectionsConfig
    from hpcdiff.features import FeatureExtractor
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.preprocess import Preprocessor

    try:
        import cupy

        def to_gpu(a: np.ndarray) -> Any:
            return cupy.asarray(a)

        def sync() -> None:
            cupy.cuda.Device().synchronize()
            torch.cuda.synchronize()

        arrays = "cupy"
    except ImportError:
        cupy = None

        def to_gpu(a: np.ndarray) -> Any:
            return a

        sync = torch.cuda.synchronize
        arrays = "numpy (cupy not importable: preprocessing stays on the CPU)"

    n, frames, energy = exp.n, exp.frames, exp.photon_energy_ev
    spans = batches(n, batch)
    pre = Preprocessor(exp.model, BackgroundConfig(preprocessing="seed"), CorrectionsConfig())
    fx = FeatureExtractor(weights, device="cuda", bf16=True, channels_last=True, batch_size=batch)
    rows: list[Row] = [
        {"metric": "cuda device", "value": torch.cuda.get_device_name(0), "unit": "",
         "note": f"preprocessing arrays: {arrays}"},
    ]  # fmt: skip

    def preprocess() -> list[Any]:
        return [to_numpy(pre(to_gpu(frames[a:b]), photon_energy_ev=energy[a:b])) for a, b in spans]

    preprocess()  # warm-up: kernels, device copies of the detector maps
    sec, times = median_seconds(preprocess, repeats=repeats, sync=sync)
    rows.append(rate_row("GPU: whole preprocessing (host frames in)", n, sec, times))
    images = np.concatenate(preprocess())
    fx.extract(images[:batch])
    sec, times = median_seconds(lambda: fx.extract(images), repeats=repeats, sync=sync)
    rows.append(rate_row("GPU: VGG16 fc6+fc7 bf16 batched channels_last", n, sec, times))
    clf = fitted_classifier(fx.n_features)

    def chain() -> None:
        with FrameSource([str(exp.files["lz4"])], geometry=exp.geometry) as src:
            for a, b in spans:
                raw = to_gpu(src.read(a, b))
                e = src.frame_values(a, b)["photon_energy_ev"]
                clf.predict_proba(fx.extract(to_numpy(pre(raw, photon_energy_ev=e))))

    sec, times = median_seconds(chain, repeats=repeats, sync=sync)
    rows.append(rate_row("GPU: end to end (read lz4 -> prediction)", n, sec, times))
    return rows


# --------------------------------------------------------------------------- entry points


def thread_info() -> dict[str, Any]:
    """Thread counts the timings ran with."""
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count()
    return {
        "cores_available": cores,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def run(
    quick: bool = False,
    *,
    n_frames: int | None = None,
    batch: int | None = None,
    repeats: int | None = None,
    threads: int | None = None,
    detector: str = "cspad",
    weights: str = "random:0",
    compile: bool = False,
    baseline_local_frames: int | None = None,
    bf16_cpu: bool | None = None,
    gpu: bool = True,
) -> dict[str, Any]:
    """Benchmark entry point for ``benchmarks/run.py``.

    Parameters
    ----------
    quick
        8 frames, 2 passes (default: 32 frames, 3 passes).
    n_frames, batch, repeats
        Override the frame count, the batch size of ours and the timed passes.
    threads
        ``torch.set_num_threads`` (default: torch's choice).
    detector
        ``"cspad"`` (full size) or ``"small"`` (tiny slab, for the test).
    weights
        VGG16 weights (:class:`hpcdiff.features.FeatureExtractor`).
    compile
        Also time ``torch.compile`` variants of VGG16 (use them if faster).
    baseline_local_frames
        Frames for the slow baseline ``median_filter`` row (default 1 quick, 2 full).
    bf16_cpu
        VGG16 on the CPU: ``None`` times fp32 and bf16 autocast and uses the faster;
        ``True`` / ``False`` times only bf16 / fp32.
    gpu
        Measure the CUDA rows when a device is present.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    n_frames = n_frames or (8 if quick else 32)
    batch = batch or (8 if quick else 16)
    repeats = repeats or (2 if quick else 3)
    local_frames = baseline_local_frames or (1 if quick else 2)
    with tempfile.TemporaryDirectory(prefix="hpcdiff-bench-") as tmp:
        exp = simulate_frames(Path(tmp), n_frames=n_frames, detector=detector)
        weights = materialise_weights(weights, Path(tmp))
        rows, extra = cpu_rows(
            exp, batch=batch, repeats=repeats, weights=weights, try_compile=compile,
            baseline_local_frames=local_frames, bf16=bf16_cpu,
        )  # fmt: skip
        if gpu:
            rows += gpu_rows(exp, batch=batch, repeats=repeats, weights=weights)
    threads_now = thread_info()
    rows.insert(
        0,
        {
            "metric": "threads",
            "value": threads_now["torch_threads"],
            "unit": "torch",
            "note": f"{threads_now['cores_available']} cores, OMP_NUM_THREADS="
            f"{threads_now['OMP_NUM_THREADS']}, load {threads_now['load_average_1min']}",
        },
    )
    return {
        "title": "Classification pipeline end to end: stages and baseline (full-size frames)",
        "rows": rows,
        "n_frames": n_frames,
        "batch": batch,
        "repeats": repeats,
        "detector": detector,
        "slab_shape": list(exp.frames.shape[1:]),
        "simulate_s": exp.simulate_s,
        "threads": threads_now,
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="8 frames, 2 passes")
    p.add_argument("--frames", type=int, default=None, help="frames to simulate (default 32)")
    p.add_argument("--batch", type=int, default=None, help="batch size of ours (default 16)")
    p.add_argument("--repeats", type=int, default=None, help="timed passes (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--detector", choices=("cspad", "small"), default="cspad")
    p.add_argument("--weights", default="random:0")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument(
        "--bf16-cpu", choices=("auto", "on", "off"), default="auto",
        help="VGG16 on the CPU: time both and keep the faster (auto), or only one",
    )  # fmt: skip
    p.add_argument("--no-gpu", action="store_true", help="skip the CUDA rows")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    result = run(
        args.quick, n_frames=args.frames, batch=args.batch, repeats=args.repeats,
        threads=args.threads, detector=args.detector, weights=args.weights,
        compile=args.compile, gpu=not args.no_gpu,
        bf16_cpu={"auto": None, "on": True, "off": False}[args.bf16_cpu],
    )  # fmt: skip
    print(f"{result['title']}  ({result['n_frames']} frames {result['slab_shape']})")
    for row in result["rows"]:
        value = row["value"]
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {row['metric']:<62} {text:>12} {row['unit']:<9} {row['note']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

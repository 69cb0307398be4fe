"""Frames and features of the cross-experiment benchmark (``bench_transfer.py``), cached.

Each *configuration* is a simulated experiment (:class:`hpcdiff.config.SimulateConfig`
keywords); each *variant* a preprocessing of its frames.  For every (configuration, variant)
the VGG16 features of the frames (ImageNet conv weights: ``pool5`` flattened, ``gap`` its
spatial mean, ``gap4`` the spatial mean of ``pool4``, all from one pass), the radial profile
(seed variant only) and the labels are stored as one ``.npz`` under ``/tmp`` (never in the
repository), keyed by a hash of everything that makes them.

Simulator options that this checkout's :class:`SimulateConfig` lacks (those another branch
adds: diffuse models, background families, presets) are dropped, and the configuration
records which were dropped; a preprocessing the checkout lacks is not in the grid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

CACHE = Path("/tmp/hpcdiff-transfer-cache")
WEIGHTS = Path("/tmp/hpcdiff-weights/vgg16_features_imagenet_caffe.pth")
CACHE_VERSION = 3
REAL_GEOM = Path("/work/shared/fixtures/real/om_cxi06216_v4-predrefine.geom")

#: Radial profile bins for the reference (fixed |q| range, nm^-1, so profiles of one
#: configuration line up; only compared within a configuration).
RADIAL_BINS = 48


def simulate_fields() -> set[str]:
    from hpcdiff.config import SimulateConfig

    return {f.name for f in dataclasses.fields(SimulateConfig)}


def background_fields() -> set[str]:
    from hpcdiff.config import BackgroundConfig

    return {f.name for f in dataclasses.fields(BackgroundConfig)}


def available_presets() -> set[str]:
    from hpcdiff.simulate.presets import PRESETS

    return set(PRESETS)


def make_sim_config(spec: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """``SimulateConfig`` of ``spec`` with the keys this checkout knows; and the dropped keys."""
    from hpcdiff.config import SimulateConfig

    known = simulate_fields()
    kept = {k: v for k, v in spec.items() if k in known}
    dropped = sorted(k for k in spec if k not in known)
    if "geometry" in kept and kept["geometry"] is not None:
        kept["geometry"] = Path(kept["geometry"])
    for key in ("cell_nm", "cell_angles_deg"):
        if key in kept:
            kept[key] = tuple(kept[key])
    return SimulateConfig(**kept), dropped


#: Preprocessing variants: name -> (BackgroundConfig keywords, Gaussian smoothing sigma of
#: the 224-px CNN image or 0).  ``None`` keywords: the variant needs a field this checkout
#: lacks.
def variants() -> dict[str, tuple[dict[str, Any], float]]:
    fields = background_fields()
    out: dict[str, tuple[dict[str, Any], float]] = {
        "seed": ({"method": "radial"}, 0.0),
        "seed+sqrt": ({"method": "radial", "compression": "sqrt"}, 0.0),
        "seed+smooth": ({"method": "radial"}, 1.5),
    }
    if "preprocessing" in fields:
        out = {
            "seed": ({"method": "radial", "preprocessing": "seed"}, 0.0),
            "seed+sqrt": (
                {"method": "radial", "preprocessing": "seed", "compression": "sqrt"},
                0.0,
            ),
            "seed+smooth": ({"method": "radial", "preprocessing": "seed"}, 1.5),
            "standard": ({"method": "radial", "preprocessing": "standard"}, 0.0),
        }
    return out


def cache_key(name: str, spec: Mapping[str, Any], variant: str, n_frames: int) -> str:
    """Cache file stem: the configuration as this checkout's simulator sees it (keys it lacks
    are left out, so a simulator that gains them makes new frames), variant, frame count."""
    known = simulate_fields()
    spec = {k: v for k, v in spec.items() if k in known}
    bg, sigma = variants()[variant]
    # "seed" is the preprocessing of checkouts without the option: same frames, same key
    bg = {k: v for k, v in bg.items() if (k, v) != ("preprocessing", "seed")}
    text = json.dumps(
        {"v": CACHE_VERSION, "spec": dict(spec), "bg": bg, "sigma": sigma, "n": n_frames,
         "weights": str(WEIGHTS)},
        sort_keys=True, default=str,
    )  # fmt: skip
    return f"{name}-{variant}-{n_frames}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


class VGGPass:
    """One VGG16 pass per image stack: ``pool5`` (n, 25088), ``gap`` (n, 512), ``gap4`` (n, 512)."""

    def __init__(self, *, batch_size: int = 16) -> None:
        from hpcdiff.features import FeatureExtractor

        self.fx = FeatureExtractor(str(WEIGHTS), layer="pool5", device="cpu",
                                   bf16_cpu="auto", batch_size=batch_size)  # fmt: skip
        self._pool4: list[np.ndarray] = []
        # pool4 is the 24th module of the conv stack (index 23); its spatial mean is kept
        self.fx._model.features[23].register_forward_hook(self._hook)

    def _hook(self, module: Any, inputs: Any, output: Any) -> None:
        self._pool4.append(output.float().mean(dim=(2, 3)).cpu().numpy())

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self._pool4.clear()
        pool5 = self.fx.extract(images)
        gap4 = np.concatenate(self._pool4, axis=0).astype(np.float32)
        gap5 = pool5.reshape(pool5.shape[0], 512, 49).mean(axis=2)
        return {"pool5": pool5, "gap": gap5.astype(np.float32), "gap4": gap4}


def _smooth(images: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    if sigma <= 0:
        return images
    out = gaussian_filter(images, sigma=(0, 0, sigma, sigma), mode="nearest")
    return out.astype(np.float32)


def measure(
    name: str,
    spec: Mapping[str, Any],
    variant_names: list[str],
    n_frames: int,
    *,
    vgg: Callable[[], VGGPass],
    log: Callable[[str], None] = print,
    keep_pool5: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """Features of every variant of one configuration (from the cache where present)."""
    from hpcdiff.background import cnn_images
    from hpcdiff.config import BackgroundConfig, CorrectionsConfig
    from hpcdiff.geometry import DetectorModel
    from hpcdiff.preprocess import Preprocessor
    from hpcdiff.reference import RadialProfiler
    from hpcdiff.simulate import build_simulator
    from hpcdiff.simulate.experiment import simulated_geometry

    CACHE.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, np.ndarray]] = {}
    todo = []
    for v in variant_names:
        path = CACHE / (cache_key(name, spec, v, n_frames) + ".npz")
        if path.is_file():
            with np.load(path) as z:
                out[v] = {k: z[k] for k in z.files}
        else:
            todo.append(v)
    if not todo:
        return out
    cfg, dropped = make_sim_config({**spec, "n_frames": n_frames})
    geom = simulated_geometry(cfg)
    sim = build_simulator(cfg, geom)
    energy = cfg.photon_energy_ev
    model = DetectorModel.build(geom, clen_m=cfg.detector_distance_m, photon_energy_ev=energy)
    frames0 = []
    corrections = CorrectionsConfig()
    n_bad = min(corrections.bad_pixel_frames, n_frames)
    for i in range(n_bad):
        frames0.append(sim.frame(i)[0])
    first = np.stack(frames0)
    probe = Preprocessor(model, BackgroundConfig(method="radial"), corrections)
    mask = probe.find_bad_pixels(first, photon_energy_ev=energy).mask if n_bad >= 10 else None
    # one preprocessing per distinct BackgroundConfig; smoothed variants reuse its images
    bg_of = {v: variants()[v][0] for v in todo}
    keys = {v: json.dumps(bg_of[v], sort_keys=True) for v in todo}
    pres = {}
    for v in todo:
        if keys[v] not in pres:
            pres[keys[v]] = Preprocessor(model, BackgroundConfig(**bg_of[v]), corrections,
                                         bad_pixel_mask=mask)  # fmt: skip
    seed_key = json.dumps(variants()["seed"][0], sort_keys=True)
    profiler = RadialProfiler.from_model(model, n_bins=RADIAL_BINS, bad_pixel_mask=mask)
    ex = vgg()
    feats: dict[str, dict[str, list[np.ndarray]]] = {v: {} for v in todo}
    strength = np.empty(n_frames)
    radial = np.empty((n_frames, profiler.n_rings))
    seconds: dict[str, float] = {"simulate": 0.0, "preprocess": 0.0, "vgg": 0.0}
    batch = 16
    for start in range(0, n_frames, batch):
        stop = min(start + batch, n_frames)
        t = time.perf_counter()
        made = [sim.frame(i) for i in range(start, stop)]
        seconds["simulate"] += time.perf_counter() - t
        frames = np.stack([f for f, _ in made])
        strength[start:stop] = [tr.strength for _, tr in made]
        images_of: dict[str, np.ndarray] = {}
        t = time.perf_counter()
        for key, pre in pres.items():
            if key == seed_key:  # the seed chain, with the radial profile of its residual
                res = pre.residual(frames, photon_energy_ev=energy)
                radial[start:stop] = profiler(res.corrected, valid=res.valid)
                images_of[key] = np.asarray(cnn_images(
                    res.normalised, pixmap=pre.pixmap, valid=res.valid,
                    size=pre.cfg.image_size_px, limit=pre.limit))  # fmt: skip
            else:
                images_of[key] = np.asarray(pre(frames, photon_energy_ev=energy))
        seconds["preprocess"] += time.perf_counter() - t
        for v in todo:
            images = _smooth(images_of[keys[v]], variants()[v][1])
            t = time.perf_counter()
            for k, a in ex(images).items():
                if k == "pool5" and not keep_pool5:
                    continue
                feats[v].setdefault(k, []).append(a)
            seconds["vgg"] += time.perf_counter() - t
        if stop % 64 < batch or stop == n_frames:
            log(f"    {name}: {stop}/{n_frames} frames "
                f"({', '.join(f'{k} {s:.0f} s' for k, s in seconds.items())})")  # fmt: skip
    y = (strength > 0).astype(np.int64)
    for v in todo:
        arrays = {k: np.concatenate(a) for k, a in feats[v].items()}
        arrays["y"] = y
        arrays["strength"] = strength
        if seed_key in pres:  # the radial profile was computed with this run
            arrays["radial"] = radial
        arrays["dropped"] = np.array(json.dumps(dropped))
        arrays["seconds"] = np.array(json.dumps(seconds))
        path = CACHE / (cache_key(name, spec, v, n_frames) + ".npz")
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        out[v] = arrays
    return out

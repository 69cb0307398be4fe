"""Features of the in-domain (hard-frame) benchmark ``bench_indomain.py``, cached under /tmp.

The VGG16 features come from :func:`transfer_data.measure` (one pass per variant: ``pool5``,
``gap`` = spatial mean of pool5, ``gap4`` = spatial mean of pool4; ``gap4`` + ``gap`` is the
``pool4+pool5`` layer), with this module's preprocessing variants of the *standard* recipe
and its own cache folder (so the simulator's models as this checkout has them make the
frames).  The radial-profile reference (ring means of the seed recipe's corrected frame
over its valid pixels, Bragg peaks left out, :data:`transfer_data.RADIAL_BINS` rings) is a
separate, cheap pass with no CNN.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import transfer_data as td

CACHE = Path("/tmp/hpcdiff-hardframes-cache")

#: the diffuse speckle scale of the standard CNN image: a molecule of diameter D (3-6 nm)
#: gives speckles of width ~1/D = 0.15-0.3 nm^-1 (no 2 pi); Gaussian sigma well below it
SPECKLE_SMOOTH_PER_NM = 0.06


def variants() -> dict[str, tuple[dict[str, Any], float]]:
    """name -> (BackgroundConfig keywords, Gaussian sigma of the CNN image in px or 0)."""
    std = {"method": "radial", "preprocessing": "standard"}
    return {
        "standard": (dict(std), 0.0),
        "standard+smooth": ({**std, "q_smooth_per_nm": SPECKLE_SMOOTH_PER_NM}, 0.0),
        "standard+sqrt": ({**std, "compression": "sqrt"}, 0.0),
        "standard+log": ({**std, "compression": "log"}, 0.0),
        "seed": ({"method": "radial", "preprocessing": "seed"}, 0.0),
    }


def features(
    name: str,
    spec: Mapping[str, Any],
    variant_names: list[str],
    n_frames: int,
    *,
    vgg: Callable[[], td.VGGPass],
    log: Callable[[str], None] = print,
    keep_pool5: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """CNN features of each variant (``transfer_data.measure`` with this module's variants)."""
    saved = td.variants, td.CACHE
    td.variants, td.CACHE = variants, CACHE  # type: ignore[assignment]
    try:
        return td.measure(name, spec, variant_names, n_frames, vgg=vgg, log=log,
                          keep_pool5=keep_pool5)  # fmt: skip
    finally:
        td.variants, td.CACHE = saved  # type: ignore[assignment]


def radial_path(name: str, spec: Mapping[str, Any], n_frames: int) -> Path:
    """Cache file of :func:`radial` (keyed by the configuration and the frame count)."""
    known = td.simulate_fields()
    text = json.dumps({"spec": {k: v for k, v in spec.items() if k in known}, "n": n_frames,
                       "bins": td.RADIAL_BINS}, sort_keys=True, default=str)  # fmt: skip
    return CACHE / f"{name}-radial-{n_frames}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.npz"


def radial(name: str, spec: Mapping[str, Any], n_frames: int) -> dict[str, np.ndarray]:
    """``radial`` (n, rings) profiles, ``y`` and ``strength`` of frames ``0 .. n-1``."""
    from hpcdiff.config import BackgroundConfig, CorrectionsConfig
    from hpcdiff.geometry import DetectorModel
    from hpcdiff.preprocess import Preprocessor
    from hpcdiff.reference import RadialProfiler
    from hpcdiff.simulate import build_simulator
    from hpcdiff.simulate.experiment import simulated_geometry

    path = radial_path(name, spec, n_frames)
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    CACHE.mkdir(parents=True, exist_ok=True)
    cfg, _ = td.make_sim_config({**spec, "n_frames": n_frames})
    geom = simulated_geometry(cfg)
    sim = build_simulator(cfg, geom)
    energy = cfg.photon_energy_ev
    model = DetectorModel.build(geom, clen_m=cfg.detector_distance_m, photon_energy_ev=energy)
    corrections = CorrectionsConfig()
    n_bad = min(corrections.bad_pixel_frames, n_frames)
    first = np.stack([sim.frame(i)[0] for i in range(n_bad)])
    probe = Preprocessor(model, BackgroundConfig(method="radial", preprocessing="seed"),
                         corrections)  # fmt: skip
    mask = probe.find_bad_pixels(first, photon_energy_ev=energy).mask if n_bad >= 10 else None
    pre = Preprocessor(model, BackgroundConfig(method="radial", preprocessing="seed"),
                       corrections, bad_pixel_mask=mask)  # fmt: skip
    profiler = RadialProfiler.from_model(model, n_bins=td.RADIAL_BINS, bad_pixel_mask=mask)
    out = np.empty((n_frames, profiler.n_rings))
    strength = np.empty(n_frames)
    t = time.process_time()
    for start in range(0, n_frames, 16):
        stop = min(start + 16, n_frames)
        made = [sim.frame(i) for i in range(start, stop)]
        frames = np.stack([f for f, _ in made])
        strength[start:stop] = [tr.strength for _, tr in made]
        res = pre.residual(frames, photon_energy_ev=energy)
        out[start:stop] = profiler(res.corrected, valid=res.valid)
    arrays = {"radial": out, "strength": strength, "y": (strength > 0).astype(np.int64),
              "cpu_s": np.array(time.process_time() - t)}  # fmt: skip
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return arrays

"""How visible is each diffuse model in a frame?  Speckle contrast and signal-to-noise.

Usage::

    python benchmarks/bench_diffuse_visibility.py [--frames 6]

Every preset gives every frame isotropic debris scattering with the diffuse model's own
radial shape (:func:`hpcdiff.simulate.presets.draw_debris`: level uniform in
``[0, 2 x high ratio]``), so only the diffuse term's *anisotropic* part (its deviation from
its ring mean) tells a diffuse frame from a non-diffuse one; the isotropic part can only
shift the ring means, which the debris blurs.  Printed, per diffuse model on the
configurations of ``bench_indomain.py`` (noise-free components of diffuse frames, valid
pixels in the ratio band 2-4 nm^-1 cut in 20 rings):

``contrast``
    std / mean of the diffuse term's deviation from its ring means.
``SNR aniso``
    ``sqrt(sum (D - <D>_ring)^2 / T)`` over the band (``T`` the frame's expected photons):
    the whole frame's signal-to-noise of an ideal matched filter that knows the anisotropic
    pattern.  A detector that does not know it needs far more (energy detection over N
    pixels: ``SNR^2 / sqrt(2 N)``).
``SNR iso``
    ``sum D / sqrt(sum T)``: how well the isotropic excess alone would be seen, were it not
    for the debris.

Then the 3D speckle contrast of the liquid-like model against its correlation length gamma
on one molecule's transform (gamma -> infinity is the displacement model), and the best
accuracy / AUC that the isotropic amplitude alone allows under the preset's debris (the
ceiling of a radial-profile classifier on liquid-like frames whose speckle is washed out).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import transfer_data as td  # noqa: E402
from bench_indomain import CONFIGS  # noqa: E402


def frame_visibility(spec: dict, n_frames: int) -> tuple[str, np.ndarray]:
    """Rows ``(strength, contrast, SNR aniso, SNR iso)`` of the first diffuse frames."""
    from hpcdiff.simulate import build_simulator
    from hpcdiff.simulate.presets import RATIO_BAND_PER_NM

    cfg, _ = td.make_sim_config({**spec, "n_frames": 10})
    sim = build_simulator(cfg)
    qa = np.linalg.norm(sim.detector.q_vectors, axis=-1)
    lo, hi = RATIO_BAND_PER_NM
    band = sim.detector.valid & (qa >= lo) & (qa < hi)
    rings = np.clip(((qa - lo) / (hi - lo) * 20).astype(int), 0, 19)
    rows = []
    for i in range(200):
        if sim.parameters(i)[0].strength <= 0:
            continue
        parts, truth = sim.components(i)
        d = parts.diffuse
        total = parts.background + parts.debris + parts.diffuse + parts.bragg
        aniso = np.zeros_like(d)
        for r in range(20):
            m = band & (rings == r)
            if m.any():
                aniso[m] = d[m] - d[m].mean()
        rows.append((truth.strength, aniso[band].std() / d[band].mean(),
                     math.sqrt(float(np.sum(aniso[band] ** 2 / total[band]))),
                     float(d[band].sum() / math.sqrt(float(total[band].sum())))))  # fmt: skip
        if len(rows) >= n_frames:
            break
    m = sim.diffuse_model
    label = m.name + (f" gamma {m.gamma_nm:.2f} nm" if m.name == "liquid_like" else "")
    return label, np.array(rows)


def gamma_sweep(spec: dict) -> list[tuple[float, float]]:
    """``(gamma, 3D shell contrast)`` of the liquid-like model on the configuration's molecule
    (gamma ``inf``: the displacement model)."""
    from hpcdiff.simulate import build_simulator
    from hpcdiff.simulate.diffuse_models import DiffuseModel, model_grid
    from hpcdiff.simulate.physics import _node_q_abs

    cfg, _ = td.make_sim_config({**spec, "n_frames": 2, "diffuse_model": "displacement"})
    t = build_simulator(cfg).transform
    q = _node_q_abs(np.array(t.intensity.shape), t.oversampling, t.basis)
    edges = np.linspace(2.0, min(4.0, 0.9 * float(q.max())), 11)

    def contrast(grid: np.ndarray) -> float:
        out = []
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            shell = grid[(q >= a) & (q < b)]
            out.append(shell.std() / shell.mean())
        return float(np.mean(out))

    rows = []
    for g in (0.3, 0.5, 0.8, 1.5, 3.0):
        model = DiffuseModel("liquid_like", sigma_nm=0.05, gamma_nm=g)
        rows.append((g, contrast(model_grid(t, model).intensity)))
    disp = DiffuseModel("displacement", sigma_nm=0.05)
    rows.append((math.inf, contrast(model_grid(t, disp).intensity)))
    return rows


def isotropic_ceiling(preset: str, n: int = 400_000) -> tuple[float, float]:
    """Accuracy and AUC of the best threshold on the isotropic amplitude alone (debris +
    strength, both known exactly; 50 % diffuse)."""
    from sklearn.metrics import roc_auc_score

    from hpcdiff.simulate.presets import DEBRIS_SPAN, get_preset

    low, high = get_preset(preset).ratio_range
    rng = np.random.default_rng(0)
    neg = rng.uniform(0, DEBRIS_SPAN * high, n)
    pos = rng.uniform(0, DEBRIS_SPAN * high, n) + np.exp(
        rng.uniform(math.log(low), math.log(high), n)
    )
    thresholds = np.linspace(0, (DEBRIS_SPAN + 1) * high, 400)
    acc = max(0.5 * (np.mean(pos > t) + np.mean(neg <= t)) for t in thresholds)
    auc = roc_auc_score(np.r_[np.zeros(n), np.ones(n)], np.r_[neg, pos])
    return float(acc), float(auc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=6, help="diffuse frames per model")
    args = p.parse_args(argv)
    print("== Per diffuse frame, band 2-4 nm^-1 (median over frames; strength range)")
    print(f"   {'configuration / model':<44} {'contrast':>9} {'SNR aniso':>10} {'SNR iso':>8}")
    for name in ("A", "B", "H-triclinic"):
        spec = CONFIGS[name][0]
        for model in dict.fromkeys([spec["diffuse_model"], "displacement", "liquid_like"]):
            label, rows = frame_visibility({**spec, "diffuse_model": model}, args.frames)
            med = np.median(rows, axis=0)
            print(f"   {name + ': ' + label:<44} {med[1]:9.3f} {med[2]:10.1f} {med[3]:8.1f}"
                  f"   (strength {rows[:, 0].min():.3f}-{rows[:, 0].max():.3f})")  # fmt: skip
    for name in ("B", "A"):
        print(f"\n== Liquid-like speckle contrast (3D, shells 2-4 nm^-1) on {name}'s molecule")
        for g, c in gamma_sweep(CONFIGS[name][0]):
            label = "displacement (gamma -> inf)" if math.isinf(g) else f"gamma {g:.1f} nm"
            print(f"   {label:<30} {c:.3f}")
    print("\n== Ceiling of the isotropic amplitude alone under the preset's debris")
    for preset in ("moderate", "hard"):
        acc, auc = isotropic_ceiling(preset)
        print(f"   {preset:<9} accuracy {acc:.3f}  AUC {auc:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measured, not assumed: accuracy of the method and its references against diffuse strength.

Usage::

    python benchmarks/bench_accuracy.py [--quick] [--presets easy hard] [--n-frames 40]
        [--threads 2] [--out DIR] [--force] [--backgrounds radial standard]
        [--weights imagenet-conv] [--layers gap pool5]
    python benchmarks/run.py --only accuracy [--quick]

For each preset a simulated experiment is made in memory (frame ``i`` from ``(seed, i)``,
half the frames diffuse; the small detector in quick mode, the CSPAD-like one otherwise),
detector-corrected and background-removed as the classify job does (bad pixels from the
first frames; the seed recipe with ``radial`` and ``local`` background, and the
``standard`` recipe of :mod:`hpcdiff.background.standard`: ``--backgrounds``), and scored on one stratified split
(:func:`hpcdiff.learn.stratified_split`, the method's proportional 500/500 rule):

* the method: VGG16 features of the CNN image -> PCA(50) -> logistic regression, for each
  background method, layer (``gap``, ``pool5``; ``fc6+fc7`` where the weights have it) and
  weights (``random:0``; the pretrained checkpoints that are present: the conv-only ImageNet
  weights of ``shared/tools/vgg16-imagenet-conv``, torchvision's from the torch hub cache);
* the radial-profile reference (ring means of the corrected frame over the valid pixels,
  those the radial preprocessing masks as Bragg peaks left out; also with them included)
  and the combined model (that radial profile + CNN features) of :mod:`hpcdiff.reference`.

Accuracy, ROC AUC, diffuse recall and specificity are reported per preset, and the recall
of diffuse frames within strength bins (each preset's log range in thirds: its weak,
moderate and strong classes) as curves, with a PNG figure when ``--out`` is given.  Chance
is the larger class fraction of the test rows.  ``gap`` is the spatial mean of ``pool5`` and
``fc6+fc7`` is computed from ``pool5`` with the checkpoint's classifier weights, and
``pool4+pool5`` (the default layer with conv-only weights, ``--layers auto``) joins the
spatial mean of pool4 (kept from the same pass by a forward hook) to ``gap``, so one VGG16
pass per image and weights serves every layer (exact at 224 x 224 input).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PRETRAINED_CONV = Path("/tmp/hpcdiff-weights/vgg16_features_imagenet_caffe.pth")
"""Conv-only ImageNet weights made by ``shared/tools/vgg16-imagenet-conv/make_vgg16_features.sh``."""

BACKGROUNDS: tuple[str, ...] = ("radial", "local")
"""Seed recipe with these ``method`` values; ``"standard"`` is the standard recipe."""


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run."""

    detector: str
    detector_distance_m: float
    presets: tuple[str, ...]
    n_frames: int
    layers: tuple[str, ...]
    n_radial_bins: int = 48
    batch_size: int = 8
    seed: int = 0
    diffuse_fraction: float = 0.5
    bf16_cpu: bool = True
    backgrounds: tuple[str, ...] = BACKGROUNDS
    photon_energy_ev: float = 9500.0
    geometry: str | None = None  # a CrystFEL .geom for the simulator instead of ``detector``
    radial_q_range: tuple[float, float] | None = None  # fixed rings, nm^-1 (transfer checks)


QUICK = Settings("small", 0.06, ("moderate", "hard"), 32, ("pool4+pool5", "gap", "pool5"))
FULL = Settings(
    "cspad", 0.1, ("moderate", "hard", "subtle"), 80, ("pool4+pool5", "gap", "pool5", "fc6+fc7")
)


@dataclass
class Experiment:
    """Everything measured on one preset's frames (rows in frame order)."""

    preset: str
    strength: np.ndarray
    radial: np.ndarray  # ring means over the valid pixels, Bragg-peak pixels left out
    radial_all: np.ndarray  # the same with the Bragg-peak pixels included
    cnn: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (bg, weights) -> pool5
    gap4: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # spatial mean of pool4
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))


# --------------------------------------------------------------------------- weights


def weight_specs(only: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(label, spec)`` of the weights to compare: random, then each pretrained one present
    (those labelled in ``only`` when given)."""
    from hpcdiff.features.weights import hub_checkpoint_path

    specs = [("random", "random:0")]
    if PRETRAINED_CONV.is_file():
        specs.append(("imagenet-conv", str(PRETRAINED_CONV)))
    if hub_checkpoint_path().is_file():
        specs.append(("imagenet-hub", "hub"))
    if only:
        specs = [s for s in specs if s[0] in only]
    return specs


class Extractor:
    """One VGG16 per weights: ``pool5`` per image (and the spatial mean of ``pool4``, from a
    forward hook on the same pass), other layers derived from them."""

    def __init__(self, spec: str, *, device: str, bf16_cpu: bool, batch_size: int) -> None:
        from hpcdiff.features import FeatureExtractor

        self.fx = FeatureExtractor(
            spec, layer="pool5", device=device, bf16_cpu=bf16_cpu, batch_size=batch_size
        )
        self.spec = spec
        self._fc: tuple[Any, ...] | None = None
        self._pool4: list[np.ndarray] = []
        self.last_gap4: np.ndarray | None = None  # (n, 512) of the last :meth:`pool5` call
        self._pool4_module().register_forward_hook(self._hook)

    def _pool4_module(self) -> Any:
        from hpcdiff.features.vgg16 import POOL4_END

        return self.fx._model.features[POOL4_END - 1]

    def _hook(self, module: Any, inputs: Any, output: Any) -> None:
        self._pool4.append(output.float().mean(dim=(2, 3)).cpu().numpy())

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.fx.info.layers)

    def pool5(self, images: np.ndarray) -> np.ndarray:
        """``(n, 25088)`` pool5 vectors; the pool4 means of the same pass in :attr:`last_gap4`."""
        self._pool4.clear()
        out = self.fx.extract(images)
        self.last_gap4 = np.concatenate(self._pool4, axis=0).astype(np.float32)
        return out

    def layer(self, pool5: np.ndarray, layer: str, *, gap4: np.ndarray | None = None) -> np.ndarray:
        """Features of ``layer`` from ``(n, 25088)`` pool5 vectors (and ``(n, 512)`` pool4
        means for ``pool4+pool5``, in the order of :mod:`hpcdiff.features.vgg16`: pool4 first)."""
        if layer == "pool5":
            return pool5
        if layer == "gap":  # pool5 at 224 x 224 is the 7 x 7 map itself, channel-major
            return pool5.reshape(pool5.shape[0], 512, 49).mean(axis=2)
        if layer == "pool4+pool5":
            if gap4 is None:
                raise ValueError("layer pool4+pool5 needs the pool4 means of the same pass")
            gap = pool5.reshape(pool5.shape[0], 512, 49).mean(axis=2)
            return np.concatenate([gap4, gap], axis=1)
        if layer == "fc6+fc7":
            return self._fc67(pool5)
        raise ValueError(f"layer {layer!r} is not derived here")

    def _fc67(self, pool5: np.ndarray) -> np.ndarray:
        import torch

        from hpcdiff.features.weights import load_weights

        if self._fc is None:
            sd = load_weights(self.spec).state_dict
            self._fc = tuple(
                sd[k].float() for k in ("classifier.0.weight", "classifier.0.bias",
                                        "classifier.3.weight", "classifier.3.bias")
            )  # fmt: skip
        w6, b6, w7, b7 = self._fc
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pool5, dtype=np.float32))
            fc6 = torch.relu(torch.nn.functional.linear(x, w6, b6))
            fc7 = torch.relu(torch.nn.functional.linear(fc6, w7, b7))
            return torch.cat([fc6, fc7], dim=1).numpy()


# --------------------------------------------------------------------------- frames


def default_layer() -> str:
    """The layer ``[features] layer = "auto"`` gives with conv-only weights."""
    from hpcdiff.features.layers import BEST_CONV_LAYER

    return BEST_CONV_LAYER


def _batches(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def measure_preset(
    preset: str, settings: Settings, extractors: dict[str, Extractor], *, log: Any = print
) -> Experiment:
    """Simulate one preset's frames and compute radial features and pool5 vectors."""
    from hpcdiff.config import BackgroundConfig, CorrectionsConfig, SimulateConfig
    from hpcdiff.geometry import DetectorModel
    from hpcdiff.preprocess import Preprocessor
    from hpcdiff.reference import RadialProfiler
    from hpcdiff.simulate import build_simulator
    from hpcdiff.simulate.experiment import simulated_geometry

    cfg = SimulateConfig(
        n_frames=settings.n_frames,
        photon_energy_ev=settings.photon_energy_ev,
        geometry=None if settings.geometry is None else Path(settings.geometry),
        seed=settings.seed,
        detector=settings.detector,
        preset=preset,
        diffuse_fraction=settings.diffuse_fraction,
        detector_distance_m=settings.detector_distance_m,
    )
    energy = cfg.photon_energy_ev
    t0 = time.perf_counter()
    geom = simulated_geometry(cfg)
    sim = build_simulator(cfg, geom)
    model = DetectorModel.build(geom, clen_m=cfg.detector_distance_m, photon_energy_ev=energy)
    n = settings.n_frames
    seconds: dict[str, float] = defaultdict(float)
    seconds["setup"] += time.perf_counter() - t0

    def simulate(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        t = time.perf_counter()
        made = [sim.frame(i) for i in range(start, stop)]
        seconds["simulate"] += time.perf_counter() - t
        return np.stack([f for f, _ in made]), np.array([tr.strength for _, tr in made])

    # bad pixels judged over the first frames, as the classify job does
    corrections = CorrectionsConfig()
    n_bad = min(corrections.bad_pixel_frames, n)
    first, first_strength = simulate(0, n_bad)
    t = time.perf_counter()
    seed_radial = BackgroundConfig(preprocessing="seed", method="radial")
    pre = {"radial": Preprocessor(model, seed_radial, corrections)}
    found = pre["radial"].find_bad_pixels(first, photon_energy_ev=energy) if n_bad >= 10 else None
    mask = None if found is None else found.mask
    for bg in settings.backgrounds:
        if bg != "radial":
            bcfg = (
                BackgroundConfig(preprocessing="standard")
                if bg == "standard"
                else BackgroundConfig(preprocessing="seed", method=bg)  # type: ignore[arg-type]
            )
            pre[bg] = Preprocessor(model, bcfg, corrections, bad_pixel_mask=mask)
    q_lo, q_hi = settings.radial_q_range or (None, None)
    profiler = RadialProfiler.from_model(
        model, n_bins=settings.n_radial_bins, bad_pixel_mask=mask, q_min=q_lo, q_max=q_hi
    )
    seconds["setup"] += time.perf_counter() - t

    strength = np.empty(n)
    radial = np.empty((n, profiler.n_rings))
    radial_all = np.empty_like(radial)
    backgrounds = settings.backgrounds
    pool5 = {(bg, w): np.empty((n, 25088), np.float32) for bg in backgrounds for w in extractors}
    gap4 = {key: np.empty((n, 512), np.float32) for key in pool5}
    for start, stop in _batches(n, settings.batch_size):
        if stop <= n_bad:
            frames, s = first[start:stop], first_strength[start:stop]
        else:
            frames, s = simulate(start, stop)
        strength[start:stop] = s
        for bg in ("radial", *(b for b in backgrounds if b != "radial")):
            t = time.perf_counter()
            res = pre[bg].residual(frames, photon_energy_ev=energy)
            if bg == "radial":  # bad pixels are in no ring of the profiler
                radial[start:stop] = profiler(res.corrected, valid=res.valid)
                radial_all[start:stop] = profiler(res.corrected)
                if bg not in backgrounds:
                    continue
            images = pre[bg].images(res)
            seconds[f"preprocess {bg}"] += time.perf_counter() - t
            for label, ex in extractors.items():
                t = time.perf_counter()
                pool5[bg, label][start:stop] = ex.pool5(images)
                gap4[bg, label][start:stop] = ex.last_gap4
                seconds[f"VGG16 {label}"] += time.perf_counter() - t
        log(f"  {preset}: {stop}/{n} frames ({sum(seconds.values()):.0f} s)")
    return Experiment(preset, strength, radial, radial_all, pool5, gap4, seconds)


# --------------------------------------------------------------------------- scoring


def strength_edges(preset: str) -> np.ndarray:
    """A preset's strength range split in thirds of its log range (its classes 1..3)."""
    from hpcdiff.simulate import get_preset

    low, high = get_preset(preset).ratio_range
    return np.exp(np.linspace(math.log(low), math.log(high), 4))


def score(
    exp: Experiment, extractors: dict[str, Extractor], settings: Settings
) -> list[dict[str, Any]]:
    """Fit every model on the preset's training rows; score the test rows."""
    from hpcdiff.io.featurefile import FeatureMeta
    from hpcdiff.learn import (
        BINARY_CLASS_NAMES,
        DiffuseClassifier,
        classification_report,
        stratified_split,
    )
    from hpcdiff.reference import CombinedClassifier, RadialProfileClassifier, strength_curve

    y = (exp.strength > 0).astype(np.int64)
    train, test = stratified_split(y, n_train=500, n_test=500, random_state=0)
    k = min(50, train.size - 1)
    edges = strength_edges(exp.preset)
    chance = float(max(np.mean(y[test]), 1.0 - np.mean(y[test])))
    results = []

    def record(name: str, kind: str, proba: np.ndarray, **info: Any) -> None:
        pred = np.argmax(proba, axis=1)
        rep = classification_report(y[test], pred, proba, class_names=BINARY_CLASS_NAMES)
        curve = strength_curve(pred, exp.strength[test], edges=edges)
        results.append(
            {
                "preset": exp.preset,
                "model": name,
                "kind": kind,
                "accuracy": rep["accuracy"],
                "roc_auc": rep["roc_auc"],
                "recall": rep["classes"]["diffuse"]["recall"],
                "specificity": curve.specificity,
                "chance": chance,
                "n_train": int(train.size),
                "n_test": int(test.size),
                "curve": curve.to_dict(),
                **info,
            }
        )

    for name, feats in (
        ("radial profile", exp.radial),
        ("radial profile, Bragg peaks included", exp.radial_all),
    ):
        ref = RadialProfileClassifier().fit(feats[train], y[train])
        record(name, "reference", ref.predict_proba(feats[test]))
    for (bg, label), pool5 in exp.cnn.items():
        ex = extractors[label]
        for layer in settings.layers:
            if layer not in ex.layers:
                continue
            x = ex.layer(pool5, layer, gap4=exp.gap4.get((bg, label)))
            meta = FeatureMeta(layer, x.shape[1], ex.fx.weights_info, {"method": bg})
            method = DiffuseClassifier(n_components=k).fit(
                x[train], y[train], class_names=BINARY_CLASS_NAMES, feature_meta=meta
            )
            tag = f"{bg} / {label} / {layer}"
            record(f"CNN {tag}", "method", method.predict_proba(x[test]), background=bg,
                   weights=label, layer=layer)  # fmt: skip
            comb = CombinedClassifier(n_components=k).fit(exp.radial[train], x[train], y[train])
            record(f"combined {tag}", "combined",
                   comb.predict_proba(exp.radial[test], x[test]), background=bg,
                   weights=label, layer=layer, block_weights=comb.block_weights())  # fmt: skip
    return results


def _rows(results: list[dict[str, Any]], experiments: list[Experiment]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        auc = "n/a" if r["roc_auc"] is None else f"{r['roc_auc']:.2f}"
        rows.append(
            {
                "metric": f"{r['preset']}: {r['model']} accuracy",
                "value": round(r["accuracy"], 3),
                "unit": "fraction",
                "note": f"AUC {auc}, diffuse recall {r['recall']:.2f}, specificity "
                f"{r['specificity']:.2f}; chance {r['chance']:.2f}; "
                f"{r['n_train']} train / {r['n_test']} test",
            }
        )
    for kind in ("reference", "method", "combined"):
        best = _best(results, kind)
        for r in (x for x in results if x["model"] == best):
            c = r["curve"]
            for lo, hi, rec, cnt in zip(
                c["edges"][:-1], c["edges"][1:], c["recall"], c["count"], strict=True
            ):
                rows.append(
                    {
                        "metric": f"{r['preset']}: {best} recall, strength {lo:.3g}-{hi:.3g}",
                        "value": None if rec is None else round(rec, 3),
                        "unit": "fraction",
                        "note": f"{cnt} diffuse test frames in the bin",
                    }
                )
    for exp in experiments:
        n = exp.strength.size
        for stage, s in exp.seconds.items():
            rows.append(
                {
                    "metric": f"{exp.preset}: {stage} time per frame",
                    "value": round(s / n, 4),
                    "unit": "s/frame",
                    "note": f"{n} frames, {s:.1f} s in all",
                }
            )
    return rows


def _best(results: list[dict[str, Any]], kind: str, **match: str) -> str:
    """The model of ``kind`` (and ``match`` fields) with the highest mean accuracy over presets."""
    acc: dict[str, list[float]] = defaultdict(list)
    for r in results:
        if r["kind"] == kind and all(r.get(k) == v for k, v in match.items()):
            acc[r["model"]].append(r["accuracy"])
    return max(acc, key=lambda m: float(np.mean(acc[m])))


def curves(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model, pooled over presets: ``centres`` and ``recall`` sorted by strength, and the
    ``specificity`` over all test frames without diffuse scattering."""
    pooled: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        c, p = r["curve"], pooled[r["model"]]
        p["centres"] += c["centres"]
        p["recall"] += [math.nan if v is None else v for v in c["recall"]]
        if c["n_negative"]:
            p["true_negative"].append(c["specificity"] * c["n_negative"])
            p["n_negative"].append(c["n_negative"])
    out = {}
    for name, p in pooled.items():
        order = np.argsort(p["centres"])
        n_neg = sum(p["n_negative"])
        out[name] = {
            "centres": np.asarray(p["centres"])[order],
            "recall": np.asarray(p["recall"])[order],
            "specificity": sum(p["true_negative"]) / n_neg if n_neg else math.nan,
        }
    return out


def figure_models(results: list[dict[str, Any]]) -> list[str]:
    """Radial reference, best combined model, best method model for each weights."""
    chosen = [_best(results, "reference"), _best(results, "combined")]
    for label in dict.fromkeys(r["weights"] for r in results if r["kind"] == "method"):
        chosen.append(_best(results, "method", weights=label))
    return list(dict.fromkeys(chosen))


def write_figure(results: list[dict[str, Any]], path: Path, *, force: bool) -> Path:
    """PNG of the recall curves of :func:`figure_models`, specificity in the legend."""
    from hpcdiff.io.outputs import atomic_path
    from hpcdiff.report.figures import accuracy_curve_figure

    pooled = curves(results)
    fig = accuracy_curve_figure(
        {
            f"{m} (specificity {pooled[m]['specificity']:.2f})": (
                pooled[m]["centres"],
                pooled[m]["recall"],
            )
            for m in figure_models(results)
        },
        xlabel="diffuse-to-background ratio (strength)",
        ylabel="recall of diffuse frames",
    )
    ax = fig.axes[0]
    ax.set_xscale("log")
    ax.set_title("Diffuse recall against strength (test rows, all presets)", fontsize=9)
    with atomic_path(path, force=force) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


# --------------------------------------------------------------------------- entry points


def run(
    quick: bool = False,
    *,
    presets: Sequence[str] | None = None,
    n_frames: int | None = None,
    threads: int | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    force: bool = False,
    log: Any = print,
    backgrounds: Sequence[str] | None = None,
    weights: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Benchmark entry point for ``benchmarks/run.py``."""
    import dataclasses

    import torch

    if threads:
        torch.set_num_threads(threads)
    settings = QUICK if quick else FULL
    changes: dict[str, Any] = {}
    if presets:
        changes["presets"] = tuple(presets)
    if n_frames:
        changes["n_frames"] = int(n_frames)
    if backgrounds:
        changes["backgrounds"] = tuple(backgrounds)
    if layers:
        changes["layers"] = tuple(dict.fromkeys(default_layer() if x == "auto" else x
                                                for x in layers))  # fmt: skip
    settings = dataclasses.replace(settings, **changes)
    t0 = time.perf_counter()
    extractors = {
        label: Extractor(spec, device=device, bf16_cpu=settings.bf16_cpu,
                         batch_size=settings.batch_size)
        for label, spec in weight_specs(weights)
    }  # fmt: skip
    load_s = time.perf_counter() - t0
    experiments, results = [], []
    for preset in settings.presets:
        exp = measure_preset(preset, settings, extractors, log=log)
        experiments.append(exp)
        t = time.perf_counter()
        results += score(exp, extractors, settings)
        exp.seconds["fit and score"] += time.perf_counter() - t
    result: dict[str, Any] = {
        "title": "Accuracy against diffuse strength: method vs radial-profile and combined "
        "references",
        "rows": _rows(results, experiments),
        "settings": dataclasses.asdict(settings),
        "weights": {label: ex.fx.weights_info for label, ex in extractors.items()},
        "device": str(next(iter(extractors.values())).fx.device),
        "torch_threads": torch.get_num_threads(),
        "weights_load_s": load_s,
        "results": results,
    }
    if out is not None:
        from hpcdiff.io.outputs import write_json

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        result["figure"] = str(write_figure(results, out / "accuracy-curves.png", force=force))
        write_json(out / "accuracy.json", result, force=force)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small detector, few frames")
    p.add_argument("--presets", nargs="*", help="simulation presets (default per mode)")
    p.add_argument("--n-frames", type=int, default=None, help="frames per preset")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="folder for accuracy.json and the PNG figure")
    p.add_argument("--force", action="store_true", help="overwrite outputs in --out")
    p.add_argument("--json", action="store_true", help="print the result as JSON too")
    p.add_argument("--backgrounds", nargs="*", help="radial, local (seed recipe), standard")
    p.add_argument("--weights", nargs="*", help="weights labels: random, imagenet-conv, ...")
    p.add_argument("--layers", nargs="*",
                   help="layers: pool4+pool5 (auto), gap, pool5, fc6+fc7")  # fmt: skip
    args = p.parse_args(argv)
    result = run(
        args.quick, presets=args.presets, n_frames=args.n_frames, threads=args.threads,
        device=args.device, out=args.out, force=args.force, backgrounds=args.backgrounds,
        weights=args.weights, layers=args.layers,
    )  # fmt: skip
    print(f"{result['title']} (device {result['device']}, {result['torch_threads']} threads)")
    for row in result["rows"]:
        value = "-" if row["value"] is None else row["value"]
        print(f"  {row['metric']:<70} {value!s:>8} {row['unit']:<9} {row['note']}")
    if "figure" in result:
        print(f"figure: {result['figure']}")
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

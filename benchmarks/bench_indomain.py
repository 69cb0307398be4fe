"""In-domain accuracy on moderate and hard frames: CNN vs radial profile vs combined model.

Usage::

    python benchmarks/bench_indomain.py [--prepare] [--configs A A-hard B H-triclinic]
        [--sections in-domain precision-recall learning-curve learners variants]
        [--splits 5] [--json OUT.json]

Labelled frames of one simulated configuration train and test the models (150/150 and
500/500 stratified splits, several random splits: mean and spread), as a facility would
label its own experiment:

* the radial-profile reference (:class:`hpcdiff.reference.RadialProfileClassifier` on ring
  means of the corrected frame, Bragg peaks left out);
* the method, PCA(50) + logistic regression (:class:`hpcdiff.learn.DiffuseClassifier`) on
  VGG16 features (ImageNet conv weights) of each preprocessing variant and layer: ``gap``
  (pool5 spatial mean), ``gap4`` (pool4 spatial mean), ``pool4+pool5`` (both, the default
  layer with conv-only weights) and ``pool5`` (flattened) where it was kept;
* the combined model (:class:`hpcdiff.reference.CombinedClassifier`: radial + PCA of CNN).

Then the seed's precision/recall table of the default model and the combined one, a
learning curve on the hard preset (fixed 500-frame test set, training sets up to the
frames there are, toward 2,000), the preprocessing variants (standard, seed; smoothing at
the diffuse speckle scale; sqrt compression) side by side on the same frames, and the
regularisation of the learner.  Targets (printed, not asserted): >= 0.95 moderate,
>= 0.80 hard, >= 5 points above the radial profile.

Frames and features are cached under ``/tmp`` (``indomain_data.py``; the cross-experiment
benchmark's cache ``/tmp/hpcdiff-transfer-cache`` is read where it holds the same
configuration and variant): a configuration whose features are in neither is skipped
unless ``--prepare`` computes them (VGG16 on the CPU: ~0.1-0.5 s per frame).
Configurations ``A``/``A-hard`` (displacement model) were used to choose the defaults;
``B``/``H-triclinic`` (liquid-like) are reported for the diffuse model's visibility;
``H-cspad-real``/``H-cspad-real-hard`` (real OM CSPAD geometry, int16 layout, correlated
disorder) and ``H-triclinic`` were never used to choose anything (:data:`HELD_OUT`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import indomain_data as idd  # noqa: E402
import transfer_data as td  # noqa: E402

_A = dict(
    detector="small",
    detector_distance_m=0.06,
    photon_energy_ev=9500.0,
    cell_nm=(7.9, 7.9, 3.8),
    cell_angles_deg=(90.0, 90.0, 90.0),
    n_atoms=150,
    seed=0,
    diffuse_fraction=0.5,
    preset="moderate",
    diffuse_model="displacement",
    space_group="P212121",
    molecule_shape="globular",
)
_B = dict(
    detector="small",
    detector_distance_m=0.08,
    photon_energy_ev=8000.0,
    cell_nm=(5.2, 6.4, 9.1),
    cell_angles_deg=(90.0, 104.0, 90.0),
    n_atoms=300,
    seed=11,
    diffuse_fraction=0.35,
    preset="moderate",
    diffuse_model="liquid_like",
    space_group="P21",
    molecule_shape="elongated",
)
_HT = dict(detector="small", detector_distance_m=0.07, photon_energy_ev=10500.0,
           cell_nm=(5.5, 7.0, 8.0), cell_angles_deg=(80.0, 95.0, 105.0),
           n_atoms=100, seed=41, diffuse_fraction=0.5, preset="moderate",
           diffuse_model="liquid_like", space_group="P1", molecule_shape="flat")  # fmt: skip

#: held out (never used to choose anything): the real OM CSPAD geometry in its int16 layout,
#: correlated disorder, another molecule and cell (``bench_transfer.py``'s ``H-cspad-real``)
_HC = dict(geometry=str(td.REAL_GEOM), detector="cspad", detector_distance_m=0.12,
           photon_energy_ev=9000.0, cell_nm=(8.5, 9.8, 12.2), cell_angles_deg=(90.0, 90.0, 90.0),
           n_atoms=400, seed=31, diffuse_fraction=0.3, preset="moderate",
           diffuse_model="correlated", space_group="P212121", molecule_shape="elongated",
           output_dtype="int16")  # fmt: skip

#: name -> (SimulateConfig keywords, frames to prepare, variants to prepare)
CONFIGS: dict[str, tuple[dict[str, Any], int, tuple[str, ...]]] = {
    "A": (_A, 1000, ("standard",)),
    "A-hard": ({**_A, "preset": "hard"}, 2000, ("standard",)),
    "B": (_B, 300, ("standard",)),
    "H-triclinic": (_HT, 300, ("standard",)),
    "H-cspad-real": (_HC, 300, ("standard",)),
    "H-cspad-real-hard": ({**_HC, "preset": "hard"}, 300, ("standard",)),
}
HELD_OUT = ("H-triclinic", "H-cspad-real", "H-cspad-real-hard")

DEFAULT_VARIANT = "standard"
DEFAULT_LAYER = "pool4+pool5"
LAYERS = ("pool4+pool5", "gap", "gap4", "pool5")
SIZES = (150, 500)
TARGETS = {"moderate": 0.95, "hard": 0.80}
SECTIONS = ("in-domain", "precision-recall", "learning-curve", "learners", "variants")


# --------------------------------------------------------------------------- data


def _cached(
    cache: Path, name: str, spec: dict[str, Any], variant: str, n: int,
    key: Callable[[str, dict[str, Any], str, int], str],
) -> tuple[Path, int] | None:  # fmt: skip
    """The smallest cached file of ``name``/``variant`` with at least ``n`` frames whose key
    matches this configuration (frame ``i`` is the same in every frame count)."""
    best: tuple[Path, int] | None = None
    for path in cache.glob(f"{name}-{variant}-*.npz"):
        parts = path.stem[len(name) + len(variant) + 2 :].split("-")
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        m = int(parts[0])
        if m >= n and key(name, spec, variant, m) == path.stem and (best is None or m < best[1]):
            best = (path, m)
    return best


def _td_key(name: str, spec: dict[str, Any], variant: str, n: int) -> str:
    return td.cache_key(name, spec, variant, n) if variant in td.variants() else ""


def _idd_key(name: str, spec: dict[str, Any], variant: str, n: int) -> str:
    saved = td.variants
    td.variants = idd.variants  # type: ignore[assignment]
    try:
        return td.cache_key(name, spec, variant, n)
    finally:
        td.variants = saved  # type: ignore[assignment]


def load_features(
    name: str, spec: dict[str, Any], variant: str, n: int
) -> dict[str, np.ndarray] | None:
    """Rows ``0 .. n-1``: every layer of ``variant``, ``y``, ``strength`` (None: not cached)."""
    for cache, key in ((idd.CACHE, _idd_key), (td.CACHE, _td_key)):
        found = _cached(cache, name, spec, variant, n, key)
        if found is None:
            continue
        with np.load(found[0]) as z:
            arrays = {k: z[k][:n] for k in ("gap", "gap4", "pool5", "y", "strength", "radial")
                      if k in z.files}  # fmt: skip
        arrays["pool4+pool5"] = np.concatenate([arrays["gap4"], arrays["gap"]], axis=1)
        return arrays
    return None


def load_radial(name: str, spec: dict[str, Any], n: int) -> np.ndarray | None:
    """``(n, rings)`` radial profiles: this benchmark's radial pass, or the seed variant's."""
    for path in sorted(idd.CACHE.glob(f"{name}-radial-*.npz"), key=lambda p: p.stat().st_size):
        m = path.stem.split("-")[-2]
        if m.isdigit() and int(m) >= n and idd.radial_path(name, spec, int(m)) == path:
            with np.load(path) as z:
                return np.asarray(z["radial"][:n])
    seed = load_features(name, spec, "seed", n)
    return None if seed is None or "radial" not in seed else seed["radial"]


def prepare(names: list[str], *, log: Callable[[str], None] = print) -> None:
    """Compute (and cache) the features and radial profiles of ``names``."""
    box: list[td.VGGPass] = []

    def vgg() -> td.VGGPass:
        if not box:
            box.append(td.VGGPass())
        return box[0]

    for name in names:
        spec, n, variants = CONFIGS[name]
        idd.radial(name, spec, n)
        todo = [v for v in variants if load_features(name, spec, v, n) is None]
        if todo:
            idd.features(name, spec, todo, n, vgg=vgg, log=log, keep_pool5=n <= 1000)


# --------------------------------------------------------------------------- scoring


def _fit_proba(kind: str, x: np.ndarray | None, r: np.ndarray | None, y: np.ndarray,
               train: np.ndarray, test: np.ndarray, *, C: float = 1.0) -> np.ndarray:  # fmt: skip
    """Diffuse probability of the test rows of one model fitted on the training rows."""
    from hpcdiff.io.featurefile import FeatureMeta
    from hpcdiff.learn import BINARY_CLASS_NAMES, DiffuseClassifier
    from hpcdiff.reference import CombinedClassifier, RadialProfileClassifier

    k = min(50, train.size - 1)
    if kind == "radial":
        assert r is not None
        return RadialProfileClassifier().fit(r[train], y[train]).predict_proba(r[test])[:, 1]
    assert x is not None
    if kind == "combined":
        assert r is not None
        comb = CombinedClassifier(n_components=k, C=C).fit(r[train], x[train], y[train])
        return comb.predict_proba(r[test], x[test])[:, 1]
    meta = FeatureMeta("bench", x.shape[1], {}, {})
    model = DiffuseClassifier(n_components=k, C=C).fit(
        x[train], y[train], class_names=BINARY_CLASS_NAMES, feature_meta=meta
    )
    return model.predict_proba(x[test])[:, 1]


def _scores(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    return float(np.mean((p >= 0.5) == (y == 1))), float(roc_auc_score(y, p))


def _splits(y: np.ndarray, n: int, repeats: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from hpcdiff.learn import stratified_split

    if y.size < 2 * n:
        return []
    return [stratified_split(y, n_train=n, n_test=n, random_state=s) for s in range(repeats)]


def evaluate(
    kind: str, x: np.ndarray | None, r: np.ndarray | None, y: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]], *, C: float = 1.0,
) -> dict[str, float]:  # fmt: skip
    """Mean and spread of accuracy and ROC AUC over ``splits``."""
    acc, auc = [], []
    for train, test in splits:
        a, b = _scores(y[test], _fit_proba(kind, x, r, y, train, test, C=C))
        acc.append(a)
        auc.append(b)
    return {"accuracy": float(np.mean(acc)), "accuracy_sd": float(np.std(acc)),
            "auc": float(np.mean(auc)), "auc_sd": float(np.std(auc)), "n_splits": len(acc)}  # fmt: skip


def _fmt(m: dict[str, float]) -> str:
    return (f"acc {m['accuracy']:.3f} +- {m['accuracy_sd']:.3f}  "
            f"AUC {m['auc']:.3f} +- {m['auc_sd']:.3f}  ({m['n_splits']} splits)")  # fmt: skip


def pr_table(y: np.ndarray, p: np.ndarray) -> str:
    """The seed's table: precision / recall / F1 / support per class, and accuracy."""
    from hpcdiff.learn import BINARY_CLASS_NAMES, classification_report

    pred = (p >= 0.5).astype(np.int64)
    rep = classification_report(y, pred, np.stack([1 - p, p], axis=1),
                                class_names=BINARY_CLASS_NAMES)  # fmt: skip
    lines = [f"      {'class':<12} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}"]
    for c in BINARY_CLASS_NAMES:
        v = rep["classes"][c]
        lines.append(f"      {c:<12} {v['precision']:9.3f} {v['recall']:7.3f} {v['f1']:6.3f} "
                     f"{v['support']:8d}")  # fmt: skip
    lines.append(f"      accuracy {rep['accuracy']:.3f}, ROC AUC {rep['roc_auc']:.3f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- sections


def _sizes(n_frames: int) -> list[int]:
    """The split sizes of :data:`SIZES` there are frames for, else the largest half."""
    sizes = [n for n in SIZES if 2 * n <= n_frames]
    return sizes or [n_frames // 2]


def in_domain(data: dict[str, Any], repeats: int, out: dict[str, Any]) -> None:
    print("\n== In-domain: labelled frames of the same configuration (mean +- sd over splits)")
    for name, d in data.items():
        y, r = d["y"], d["radial"]
        preset = CONFIGS[name][0]["preset"]
        for n in _sizes(y.size):
            splits = _splits(y, n, repeats if n < 500 else max(2, repeats // 2))
            if not splits:
                continue
            rows: dict[str, dict[str, float]] = {}
            tag = ", held out" if name in HELD_OUT else ""
            print(f"-- {name} ({CONFIGS[name][0]['diffuse_model']}, {preset}{tag}), {n}/{n}:")
            if r is not None:
                rows["radial profile"] = evaluate("radial", None, r, y, splits)
            for variant, feats in d["variants"].items():
                for layer in LAYERS:
                    if layer not in feats:
                        continue
                    rows[f"CNN {variant}/{layer}"] = evaluate("cnn", feats[layer], None, y, splits)
                    if r is not None and layer in (DEFAULT_LAYER, "gap"):
                        rows[f"combined {variant}/{layer}"] = evaluate(
                            "combined", feats[layer], r, y, splits
                        )
            for label, m in rows.items():
                print(f"   {label:<38} {_fmt(m)}")
            default = rows.get(f"CNN {DEFAULT_VARIANT}/{DEFAULT_LAYER}")
            radial = rows.get("radial profile")
            if default is not None and radial is not None:
                best = max((v["accuracy"], k) for k, v in rows.items())
                gain = 100 * (default["accuracy"] - radial["accuracy"])
                tgt = TARGETS.get(preset)
                print(f"   target: default CNN {default['accuracy']:.3f} vs {tgt} "
                      f"({'met' if tgt is not None and default['accuracy'] >= tgt else 'NOT met'}); "
                      f"{gain:+.1f} points over radial ({'met' if gain >= 5 else 'NOT met'}); "
                      f"best row {best[1]} {best[0]:.3f}")  # fmt: skip
            out.setdefault("in_domain", {})[f"{name} {n}/{n}"] = rows


def precision_recall(data: dict[str, Any], out: dict[str, Any]) -> None:
    print("\n== The seed's precision/recall table (largest split, seed 0)")
    for name, d in data.items():
        feats = d["variants"].get(DEFAULT_VARIANT)
        if feats is None:
            continue
        y = d["y"]
        n = max(_sizes(y.size))
        ((train, test),) = _splits(y, n, 1)
        x = feats[DEFAULT_LAYER]
        print(f"-- {name}, {n}/{n}, CNN {DEFAULT_VARIANT}/{DEFAULT_LAYER}:")
        print(pr_table(y[test], _fit_proba("cnn", x, None, y, train, test)))
        if d["radial"] is not None:
            print(f"-- {name}, {n}/{n}, combined {DEFAULT_VARIANT}/{DEFAULT_LAYER}:")
            print(pr_table(y[test], _fit_proba("combined", x, d["radial"], y, train, test)))
            print(f"-- {name}, {n}/{n}, radial profile:")
            print(pr_table(y[test], _fit_proba("radial", None, d["radial"], y, train, test)))


def _subsample(y: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """``n`` row indices of ``y`` drawn without replacement, class proportions kept."""
    if n >= y.size:
        return np.arange(y.size)
    rng = np.random.default_rng(seed)
    parts = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = max(1, int(round(n * rows.size / y.size)))
        parts.append(rng.choice(rows, size=min(k, rows.size), replace=False))
    return np.sort(np.concatenate(parts))


def learning_curve(name: str, d: dict[str, Any], repeats: int, out: dict[str, Any]) -> None:
    from hpcdiff.learn import stratified_split

    feats = d["variants"].get(DEFAULT_VARIANT)
    y, r = d["y"], d["radial"]
    if feats is None or y.size < 700:
        return
    n_test = 500
    rest, test = stratified_split(y, n_train=y.size - n_test, n_test=n_test, random_state=99)
    sizes = [s for s in (50, 100, 150, 300, 500, 1000, 1500, 2000) if s <= rest.size]
    print(f"\n== Learning curve on {name} (test: {n_test} fixed frames; train drawn from the "
          f"other {rest.size}; mean over {repeats} draws)")  # fmt: skip
    print(f"   {'labelled':>8} {'radial':>14} {'CNN default':>14} {'combined':>14} {'CNN gap':>14}")
    curve = []
    for s in sizes:
        res: dict[str, list[tuple[float, float]]] = {}
        for k in range(repeats if s < rest.size else 1):
            sub = _subsample(y[rest], s, seed=k)
            train = rest[sub]
            for label, kind, x in (("radial", "radial", None),
                                   ("CNN default", "cnn", feats[DEFAULT_LAYER]),
                                   ("combined", "combined", feats[DEFAULT_LAYER]),
                                   ("CNN gap", "cnn", feats["gap"])):  # fmt: skip
                if r is None and kind != "cnn":
                    continue
                res.setdefault(label, []).append(
                    _scores(y[test], _fit_proba(kind, x, r, y, train, test))
                )
        row = {k: (float(np.mean([a for a, _ in v])), float(np.mean([b for _, b in v])))
               for k, v in res.items()}  # fmt: skip
        curve.append({"n_train": s, **{k: list(v) for k, v in row.items()}})
        cells = [f"{row[k][0]:.3f}/{row[k][1]:.2f}" if k in row else "-" for k in
                 ("radial", "CNN default", "combined", "CNN gap")]  # fmt: skip
        print(f"   {s:>8} " + " ".join(f"{c:>14}" for c in cells))
    print("   (cells: accuracy/AUC)")
    out.setdefault("learning_curve", {})[name] = curve


def learners(name: str, d: dict[str, Any], repeats: int, out: dict[str, Any]) -> None:
    feats = d["variants"].get(DEFAULT_VARIANT)
    if feats is None:
        return
    y = d["y"]
    n = max(_sizes(y.size))
    splits = _splits(y, n, max(2, repeats // 2))
    print(f"\n== Learner on {name}, {n}/{n}: logistic regression C (PCA 50), {DEFAULT_LAYER}")
    rows = {}
    for c in (0.1, 1.0, 10.0):
        rows[f"C={c}"] = evaluate("cnn", feats[DEFAULT_LAYER], None, y, splits, C=c)
        print(f"   CNN C={c:<6} {_fmt(rows[f'C={c}'])}")
    out.setdefault("learners", {})[name] = rows


def variants_side_by_side(names: list[str], repeats: int, out: dict[str, Any]) -> None:
    """Every cached preprocessing variant of a configuration on the same first frames."""
    print("\n== Preprocessing variants on the same frames (n/2 train, n/2 test)")
    all_variants = list(dict.fromkeys([*idd.variants(), *td.variants()]))
    for name in names:
        spec = CONFIGS[name][0]
        for n_common in (300, 120):
            found = {}
            for v in all_variants:
                f = load_features(name, spec, v, n_common)
                if f is not None:
                    found[v] = f
            if len(found) < 2:
                continue
            y = next(iter(found.values()))["y"]
            splits = _splits(y, n_common // 2, repeats)
            rows = {}
            for v, f in found.items():
                for layer in ("pool4+pool5", "gap"):
                    m = evaluate("cnn", f[layer], None, y, splits)
                    rows[f"{v}/{layer}"] = m
                    print(f"   {name:<8} n={n_common:<4} {v + '/' + layer:<28} {_fmt(m)}")
            out.setdefault("variants", {})[f"{name} n={n_common}"] = rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepare", action="store_true", help="compute missing features (slow)")
    p.add_argument("--configs", nargs="*", default=list(CONFIGS))
    p.add_argument("--splits", type=int, default=5, help="random splits per row")
    p.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=SECTIONS,
                   help="parts to print (default: all)")  # fmt: skip
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    t0 = time.process_time()
    if args.prepare:
        prepare(args.configs)
    data: dict[str, Any] = {}
    for name in args.configs:
        spec, n, variants = CONFIGS[name]
        have = {}
        for v in (*variants, "seed"):
            for m in (n, 1000, 600, 300, 120):
                if m > n:
                    continue
                f = load_features(name, spec, v, m)
                if f is not None:
                    have[v] = f
                    break
        if DEFAULT_VARIANT not in have:
            print(f"{name}: no cached features (run with --prepare); skipped")
            continue
        n_rows = have[DEFAULT_VARIANT]["y"].shape[0]
        have = {v: f for v, f in have.items() if f["y"].shape[0] >= n_rows}
        for v, f in have.items():
            if not np.array_equal(f["y"][:n_rows], have[DEFAULT_VARIANT]["y"]):
                raise SystemExit(f"{name}: labels of {v} differ from {DEFAULT_VARIANT}'s")
        radial = load_radial(name, spec, n_rows)
        data[name] = {"y": have[DEFAULT_VARIANT]["y"], "radial": radial,
                      "variants": {v: {k: a[:n_rows] for k, a in f.items()} for v, f in have.items()}}  # fmt: skip
        print(f"{name}: {n_rows} frames ({int(data[name]['y'].sum())} diffuse), variants "
              f"{', '.join(have)}; radial {'yes' if radial is not None else 'no'}")  # fmt: skip
    out: dict[str, Any] = {}
    sections = set(args.sections)
    if "in-domain" in sections:
        in_domain(data, args.splits, out)
    if "precision-recall" in sections:
        precision_recall(data, out)
    for name in data:
        if CONFIGS[name][0]["preset"] == "hard":
            if "learning-curve" in sections:
                learning_curve(name, data[name], 3, out)
            if "learners" in sections:
                learners(name, data[name], args.splits, out)
    if "variants" in sections:
        variants_side_by_side(list(data), args.splits, out)
    print(f"\n(CPU time of this run {time.process_time() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

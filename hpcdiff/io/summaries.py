"""What hpcdiff's own files and psana geometry files hold, for ``hpcdiff inspect``.

:func:`own_file_kind` tells hpcdiff's files apart by content (labels, features, predictions
HDF5 files; ``.npz`` models); the ``summarise_*`` functions return plain JSON-ready dicts
with ``kind`` and ``path`` and the numbers a user checks first (frames, classes, layer,
weights and whether they are pretrained, provenance).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcdiff.errors import FormatError

#: Suffixes of labels files that :func:`hpcdiff.io.labels.read_labels` may read as text.
TEXT_LABEL_SUFFIXES = (".csv", ".lst")


def own_file_kind(path: str | Path) -> str | None:
    """``"labels"``, ``"features"``, ``"predictions"``, ``"model"`` or ``None``.

    HDF5 files are told apart by their datasets and attributes; ``.npz`` files are models
    when they hold hpcdiff's model metadata.
    """
    path = Path(path)
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return "model" if {"metadata", "coef", "pca_components"} <= set(npz.files) else None
        except (OSError, ValueError):
            return None
    if path.suffix.lower() in TEXT_LABEL_SUFFIXES:
        return "labels"
    try:
        with h5py.File(path, "r") as h5:
            names = set(h5.keys())
            if {"frame_file", "frame_index", "features"} <= names and "layer" in h5.attrs:
                return "features"
            if {"frame_file", "probability", "class_probability"} <= names:
                return "predictions"
            if {"file", "index", "diffuse", "class"} <= names:
                return "labels"
    except OSError:
        return None
    return None


def _weights(w: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": w.get("name"),
        "sha256": w.get("sha256"),
        "pretrained": w.get("pretrained"),
    }


def _counts(values: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
    return {name: int(np.sum(values == k)) for k, name in enumerate(names)}


def summarise_labels(path: str | Path) -> dict[str, Any]:
    """Frames, files and frames per class of a labels file (any form ``read_labels`` reads)."""
    from hpcdiff.io.labels import read_labels

    labels = read_labels(path)
    files = sorted(set(labels.file.tolist()))
    strength = labels.diffuse_strength
    return {
        "kind": "labels",
        "path": str(path),
        "frames": len(labels),
        "files": len(files),
        "first_files": files[:5],
        "diffuse": int(labels.diffuse.sum()),
        "non_diffuse": int(len(labels) - labels.diffuse.sum()),
        "classes": _counts(labels.diffuse_class, labels.class_names),
        "diffuse_strength": (
            {"min": float(strength.min()), "max": float(strength.max())} if len(labels) else None
        ),
        "created_utc": labels.attrs.get("created_utc"),
        "hpcdiff_version": labels.attrs.get("hpcdiff_version"),
    }


def summarise_features(path: str | Path) -> dict[str, Any]:
    """Frames, layer (and why, for ``layer = "auto"``), weights and background of a features file."""
    from hpcdiff.io.featurefile import read_feature_meta

    meta = read_feature_meta(path)
    with h5py.File(path, "r") as h5:
        n = int(h5["features"].shape[0])
        files = len(set(h5["frame_file"].asstr()[...].tolist())) if n else 0
        version = h5.attrs.get("hpcdiff_version")
    processing = meta.extra.get("processing", {}) if isinstance(meta.extra, dict) else {}
    features = processing.get("features", {}) if isinstance(processing, dict) else {}
    return {
        "kind": "features",
        "path": str(path),
        "frames": n,
        "files": files,
        "layer": meta.layer,
        "layer_note": meta.extra.get("layer_note"),
        "n_features": meta.n_features,
        "weights": _weights(meta.weights),
        "background_method": meta.background_method,
        "device": features.get("device"),
        "autocast": features.get("autocast"),
        "config_hash": meta.config_hash,
        "hpcdiff_version": None if version is None else str(version),
    }


def summarise_predictions(path: str | Path) -> dict[str, Any]:
    """Frames per predicted class, diffuse-score quantiles and the model of a predictions file."""
    from hpcdiff.io.predictions import read_predictions

    p = read_predictions(path)
    score = p.diffuse_score
    quantiles = (
        {f"q{q}": float(np.quantile(score, q / 100)) for q in (5, 50, 95)} if len(score) else None
    )
    return {
        "kind": "predictions",
        "path": str(path),
        "frames": int(len(p.indices)),
        "files": len(set(p.files.tolist())),
        "class_names": list(p.class_names),
        "predicted": _counts(p.labels, p.class_names),
        "diffuse_score": quantiles,
        "model": p.attrs.get("model"),
        "model_sha256": p.attrs.get("model_sha256"),
        "weights_sha256": p.attrs.get("weights_sha256"),
        "layer": p.attrs.get("feature_layer"),
        "layer_note": p.attrs.get("feature_layer_note") or None,
        "hpcdiff_version": p.attrs.get("hpcdiff_version"),
    }


def summarise_model(path: str | Path) -> dict[str, Any]:
    """Classes, PCA size, training frames and how its features were made, of a model file."""
    from hpcdiff.learn import DiffuseClassifier

    clf = DiffuseClassifier.load(path)
    meta = clf.metadata_
    fm = clf.feature_meta_
    return {
        "kind": "model",
        "path": str(path),
        "class_names": list(clf.class_names_),
        "target": meta.get("target"),
        "n_components": int(clf.pca_.components_.shape[0]),
        "n_train": meta.get("n_train"),
        "train_class_counts": meta.get("train_class_counts"),
        "layer": fm.layer,
        "layer_note": meta.get("feature", {}).get("layer_note"),
        "n_features": fm.n_features,
        "weights": _weights(fm.weights),
        "background_method": fm.background_method,
        "config_hash": meta.get("config_hash"),
        "created_utc": meta.get("created_utc"),
        "hpcdiff_version": meta.get("hpcdiff_version"),
    }


def is_psana_geometry(path: str | Path) -> bool:
    """Whether the first table row of a text file has psana geometry's 13 fields."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for raw in fh:
                line = raw.strip()
                if line and not line.startswith("#"):
                    fields = line.split()
                    return len(fields) == 13 and ":" in fields[0] and ":" in fields[2]
    except OSError:
        return False
    return False


def summarise_psana_geometry(path: str | Path) -> dict[str, Any]:
    """Objects, sensors, slab layout and pixel extent of a psana geometry-def file.

    Extents are of pixel centres in CrystFEL's lab frame (psana x flipped), millimetres;
    ``z_mm`` is the sensors' distance range from the root object (the interaction point when
    the file has an ``IP`` line, else the detector's own origin).
    """
    from hpcdiff.io.psana_geometry import read_psana_geometry

    geom = read_psana_geometry(path)
    segments = geom.segments()
    top = geom.top
    summary: dict[str, Any] = {
        "kind": "psana-geometry",
        "path": str(path),
        "objects": len(geom.objects),
        "root": f"{top[0]} {top[1]}",
        "object_types": sorted({o.name for o in geom.objects}),
        "sensors": len(segments),
        "sensor_shape": [185, 388],
        "pixels": len(segments) * 185 * 388,
    }
    xyz = geom.pixel_positions_um()
    xyz[..., 0] *= -1.0
    for axis, name in enumerate("xyz"):
        values = xyz[..., axis]
        summary[f"{name}_mm"] = [
            round(float(values.min()) / 1e3, 3),
            round(float(values.max()) / 1e3, 3),
        ]
    if len(segments) == 32:
        summary["slab_shape"] = [8 * 185, 4 * 388]  # Cheetah/CrystFEL layout (psana_to_slab)
    return summary


def summarise_own_file(path: str | Path, kind: str) -> dict[str, Any]:
    """Dispatch on :func:`own_file_kind`'s answer."""
    functions = {
        "labels": summarise_labels,
        "features": summarise_features,
        "predictions": summarise_predictions,
        "model": summarise_model,
        "psana-geometry": summarise_psana_geometry,
    }
    if kind not in functions:
        raise FormatError(path, f"not an hpcdiff file kind: {kind}")
    return functions[kind](path)


def format_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key, text)`` rows of a summary for a table (nested values as compact JSON)."""
    rows = []
    for key, value in summary.items():
        if key in ("kind", "path") or value is None:
            continue
        if isinstance(value, Mapping | list | tuple):
            text = json.dumps(value, default=str)
        else:
            text = str(value)
        rows.append((key.replace("_", " "), text))
    return rows

"""Predictions in the forms other tools read: a CSV and CrystFEL list files.

Beside a predictions file ``predictions.h5`` (:mod:`hpcdiff.io.predictions`):

``predictions.csv``
    One row per frame: ``file,index,class,probability,diffuse_score`` (``class`` the
    predicted class name, ``probability`` its probability, ``diffuse_score`` 1 - P(class
    0)).  Preceded by ``# class_names = ...`` unless the classes are
    ``non-diffuse,diffuse``.  It reads back as a labels file
    (:func:`hpcdiff.io.labels.read_labels`: ``class`` stands in for ``label``).
``diffuse.lst``
    A CrystFEL list of the frames predicted diffuse (any class but 0): ``path //index``,
    absolute paths, one frame a line, in run order; ``indexamajig -i diffuse.lst`` reads it.
``CLASS.lst``
    With more than two classes, one such list per class as well.

A predictions file with another name, ``run7.h5``, gets ``run7.csv``, ``run7.diffuse.lst``
and ``run7.CLASS.lst``, so that several runs can share a folder.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpcdiff.io.labels import BINARY_NAMES
from hpcdiff.io.labels_text import list_text
from hpcdiff.io.outputs import atomic_path, ensure_writable


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._") or "class"


def prediction_outputs(predictions: str | Path, class_names: Sequence[str]) -> dict[str, Path]:
    """The CSV and list files written beside ``predictions`` (module docstring).

    Returns
    -------
    dict
        ``{"predictions_csv": ..., "diffuse_list": ..., "list_CLASS": ...}`` (the last for
        each class when there are more than two).
    """
    predictions = Path(predictions)
    prefix = "" if predictions.name == "predictions.h5" else predictions.stem + "."
    folder = predictions.parent
    out = {
        "predictions_csv": predictions.with_suffix(".csv"),
        "diffuse_list": folder / f"{prefix}diffuse.lst",
    }
    if len(class_names) > 2:
        for name in class_names:
            stem = _safe(name)
            stem = f"class-{stem}" if stem == "diffuse" else stem
            out[f"list_{name}"] = folder / f"{prefix}{stem}.lst"
    return out


def write_prediction_outputs(
    predictions: str | Path,
    *,
    files: Sequence[str] | np.ndarray,
    indices: np.ndarray,
    proba: np.ndarray,
    class_names: Sequence[str],
    force: bool = False,
) -> dict[str, Path]:
    """Write the CSV and the CrystFEL lists beside ``predictions``.

    Parameters
    ----------
    predictions
        The predictions file these outputs go beside (not read).
    files, indices
        ``(n,)`` frame file (relative paths are made absolute against the working
        directory) and index of each frame, in run order.
    proba
        ``(n, K)`` class probabilities.
    class_names
        The ``K`` class names, class 0 = no diffuse scattering.
    force
        Overwrite existing outputs; without it, an existing output is an
        :class:`~hpcdiff.errors.OutputExistsError` and nothing is written.

    Returns
    -------
    dict
        As :func:`prediction_outputs`.
    """
    names = tuple(str(n) for n in class_names)
    proba = np.asarray(proba, dtype=np.float32)
    n = proba.shape[0]
    if proba.shape != (n, len(names)) or len(files) != n or len(indices) != n:
        raise ValueError(
            f"need (n,) files and indices and (n, {len(names)}) probabilities; got "
            f"{len(files)}, {len(indices)}, {proba.shape}"
        )
    paths = prediction_outputs(predictions, names)
    for p in paths.values():
        ensure_writable(p, force=force)
    absolute = [os.path.abspath(str(f)) for f in files]
    index = np.asarray(indices, dtype=np.int64)
    label = np.argmax(proba, axis=1) if n else np.empty(0, np.int64)
    p_label = proba[np.arange(n), label] if n else np.empty(0, np.float32)
    score = 1.0 - proba[:, 0] if n else np.empty(0, np.float32)

    buf = io.StringIO()
    if names != BINARY_NAMES:
        buf.write(f"# class_names = {','.join(names)}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "index", "class", "probability", "diffuse_score"])
    for f, i, c, p, s in zip(
        absolute, index.tolist(), label.tolist(), p_label.tolist(), score.tolist(), strict=True
    ):
        w.writerow([f, i, names[c], f"{p:.6f}", f"{s:.6f}"])
    _write(paths["predictions_csv"], buf.getvalue())

    diffuse = np.flatnonzero(label > 0)
    _write(paths["diffuse_list"], list_text([absolute[r] for r in diffuse], index[diffuse]))
    if len(names) > 2:
        for k, name in enumerate(names):
            rows = np.flatnonzero(label == k)
            _write(paths[f"list_{name}"], list_text([absolute[r] for r in rows], index[rows]))
    return paths


def write_prediction_outputs_from_file(
    predictions: str | Path, *, force: bool = False
) -> dict[str, Path]:
    """Read a predictions file and write its CSV and lists beside it."""
    from hpcdiff.io.predictions import read_predictions

    pred = read_predictions(predictions)
    return write_prediction_outputs(
        predictions,
        files=pred.files.tolist(),
        indices=pred.indices,
        proba=pred.proba,
        class_names=pred.class_names,
        force=force,
    )


def _write(path: Path, text: str) -> None:
    with atomic_path(path, force=True) as tmp:  # refusal was decided before any write
        tmp.write_text(text)

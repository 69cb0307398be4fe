"""Predictions files (HDF5): one row per frame, what the model said about it.

Layout::

    /frame_file         (n,)    utf-8 str   frame's file
    /frame_index        (n,)    int64       frame's index in that file
    /class              (n,)    int16       predicted label (index into class_names)
    /class_probability  (n,)    float32     probability of the predicted label
    /probability        (n, K)  float32     probability of every class
    /diffuse_score      (n,)    float32     1 - P(class 0): probability of any diffuse scattering
    attrs: class_names (JSON), target, model (path), model_sha256, model_metadata (JSON),
           features (path), provenance (JSON), hpcdiff_version
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcdiff import __version__
from hpcdiff.errors import FormatError
from hpcdiff.io.appendable import AppendableH5
from hpcdiff.io.hdf5 import open_hdf5, read_checked
from hpcdiff.io.outputs import provenance

_STR = h5py.string_dtype("utf-8")
_DATASETS = (
    "frame_file",
    "frame_index",
    "class",
    "class_probability",
    "probability",
    "diffuse_score",
)


@dataclass(frozen=True)
class Predictions:
    """A predictions file in memory (arrays as in the module docstring)."""

    files: np.ndarray
    indices: np.ndarray
    proba: np.ndarray
    class_names: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        """``(n,)`` int64 predicted labels."""
        return np.argmax(self.proba, axis=1).astype(np.int64)

    @property
    def diffuse_score(self) -> np.ndarray:
        """``(n,)`` float32 probability of any diffuse scattering."""
        return (1.0 - self.proba[:, 0]).astype(np.float32)

    @property
    def frame_ids(self) -> list[Any]:
        from hpcdiff.io.cxi import FrameId

        return [FrameId(str(f), int(i)) for f, i in zip(self.files, self.indices, strict=True)]


class PredictionWriter:
    """Write a predictions file batch by batch; atomic (the name appears on close)."""

    def __init__(
        self,
        path: str | Path,
        *,
        class_names: tuple[str, ...],
        attrs: Mapping[str, Any],
        config_hash: str | None = None,
        force: bool = False,
    ) -> None:
        self.path = Path(path)
        self.k = len(class_names)
        root: dict[str, Any] = {
            "class_names": json.dumps(list(class_names)),
            "hpcdiff_version": __version__,
            "provenance": json.dumps(provenance(config_hash), sort_keys=True),
        }
        for key, value in attrs.items():
            root[key] = (
                value
                if isinstance(value, str | int | float | bool)
                else json.dumps(value, sort_keys=True, default=str)
            )
        self._file = AppendableH5(self.path, force=force, attrs=root)
        for name, dtype in (
            ("frame_file", _STR),
            ("frame_index", np.int64),
            ("class", np.int16),
            ("class_probability", np.float32),
            ("diffuse_score", np.float32),
        ):
            self._file.column(name, dtype=dtype, chunk_rows=4096)
        self._file.column("probability", dtype=np.float32, row_shape=(self.k,), chunk_rows=4096)
        self.n_written = 0

    def append(self, files: np.ndarray, indices: np.ndarray, proba: np.ndarray) -> None:
        """Add rows: frame files ``(n,)``, indices ``(n,)``, probabilities ``(n, K)``."""
        proba = np.asarray(proba, dtype=np.float32)
        n = proba.shape[0]
        if proba.shape != (n, self.k) or len(files) != n or len(indices) != n:
            raise ValueError(
                f"append needs (n,) files and indices and (n, {self.k}) probabilities; got "
                f"{len(files)}, {len(indices)}, {proba.shape}"
            )
        labels = np.argmax(proba, axis=1)
        cols = {
            "frame_file": np.asarray(files, dtype=object),
            "frame_index": np.asarray(indices, dtype=np.int64),
            "class": labels.astype(np.int16),
            "class_probability": proba[np.arange(n), labels],
            "diffuse_score": 1.0 - proba[:, 0],
            "probability": proba,
        }
        self._file.append(cols)
        self.n_written += n

    def close(self, *, ok: bool = True) -> None:
        """Finish the file (rename into place), or discard it when ``ok`` is false."""
        self._file.close(ok=ok)

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(ok=exc_type is None)


def read_predictions(path: str | Path) -> Predictions:
    """Read a predictions file.

    Raises
    ------
    FormatError
        Naming the file and the missing or malformed dataset.
    """
    path = Path(path)
    with open_hdf5(path, what="predictions file") as h5:
        for name in _DATASETS:
            if name not in h5:
                raise FormatError(
                    path,
                    f"not an hpcdiff predictions file; expected {_DATASETS}",
                    dataset=f"/{name}",
                )
        try:
            class_names = tuple(json.loads(h5.attrs["class_names"]))
        except (KeyError, TypeError, json.JSONDecodeError):
            raise FormatError(path, "attribute class_names missing or not a JSON list") from None
        proba = read_checked(h5["probability"], ..., path=path)
        if proba.ndim != 2 or proba.shape[1] != len(class_names):
            raise FormatError(
                path, f"shape {proba.shape} does not match {len(class_names)} classes",
                dataset="/probability",
            )  # fmt: skip
        files = np.asarray(h5["frame_file"].asstr()[...], dtype=object)
        indices = read_checked(h5["frame_index"], ..., path=path).astype(np.int64)
        if files.shape != (proba.shape[0],) or indices.shape != (proba.shape[0],):
            raise FormatError(path, "frame_file/frame_index length differs from probability rows")
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in h5.attrs.items()}
    return Predictions(files, indices, proba, class_names, attrs)

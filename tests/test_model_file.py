"""Loading something that is not a model as the model: a FormatError naming the file and
what was expected, never numpy's advice to load it with pickle."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcdiff.errors import FormatError
from hpcdiff.learn.model import DiffuseClassifier


def _non_models(folder: Path) -> dict[str, tuple[Path, str]]:
    """File -> (path, what the message must say it is)."""
    rng = np.random.default_rng(0)
    files: dict[str, tuple[Path, str]] = {}
    p = folder / "random.npz"
    p.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["random bytes"] = (p, "neither a zip")
    p = folder / "model.h5"
    with h5py.File(p, "w") as h5:
        h5["coef"] = np.zeros((1, 4))
    files["hdf5"] = (p, "an HDF5 file")
    p = folder / "pickled.npz"
    p.write_bytes(pickle.dumps({"coef": np.zeros(3)}))
    files["pickle"] = (p, "a Python pickle")
    p = folder / "array.npy"
    np.save(p, np.arange(4))
    files["npy"] = (p, "a single .npy array")
    p = folder / "features.npz"  # an npz of someone else's arrays
    np.savez(p, features=np.zeros((3, 4), np.float32), labels=np.arange(3))
    files["foreign npz"] = (p, "lacks arrays")
    p = folder / "objects.npz"  # every model array present, but pickled objects inside
    arrays: dict[str, np.ndarray] = {
        k: np.zeros(2) for k in ("pca_mean", "pca_explained_variance", "intercept")
    }
    arrays |= {
        "pca_components": np.zeros((1, 2)),
        "pca_explained_variance_ratio": np.zeros(1),
        "coef": np.array([None], dtype=object),
        "classes": np.arange(2),
        "metadata": np.array(json.dumps({"format": "hpcdiff-model"})),
    }
    np.savez(p, **arrays)  # type: ignore[arg-type]
    files["object arrays"] = (p, "object (pickled) arrays")
    p = folder / "notjson.npz"
    np.savez(p, **{**arrays, "coef": np.zeros((1, 1)), "metadata": np.array("not json")})
    files["metadata not json"] = (p, "metadata is not JSON")
    p = folder / "truncated.npz"
    np.savez(folder / "whole.npz", **{**arrays, "coef": np.zeros((1, 1))})
    p.write_bytes((folder / "whole.npz").read_bytes()[:-300])
    files["truncated npz"] = (p, "")
    p = folder / "empty.npz"
    p.write_bytes(b"")
    files["empty"] = (p, "an empty file")
    return files


def test_non_model_files_are_format_errors_without_pickle_advice(tmp_path: Path) -> None:
    for name, (path, what) in _non_models(tmp_path).items():
        with pytest.raises(FormatError) as info:
            DiffuseClassifier.load(path)
        text = str(info.value)
        assert info.value.path == str(path), name
        assert what in text, (name, text)
        assert "unsafely" not in text and "allow_pickle" not in text, (name, text)
        assert "pickle.load" not in text, (name, text)
        if name not in ("metadata not json",):
            assert "expected an hpcdiff model" in text, (name, text)


def test_model_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="does not exist"):
        DiffuseClassifier.load(tmp_path / "nowhere.npz")
    assert not os.path.exists(tmp_path / "nowhere.npz")

"""Opening a model file safely: what it is, before numpy is asked to read it.

A model is an ``.npz`` (a zip archive of ``.npy`` arrays, no pickle) written by
:meth:`hpcdiff.learn.model.DiffuseClassifier.save`.  Anything else handed over as the model
(an HDF5 file, a plain ``.npy``, a pickle, random bytes, an ``.npz`` without hpcdiff's
arrays) is a :class:`~hpcdiff.errors.FormatError` naming the file, what it looks like and
what was expected; numpy's own messages, which advise loading the file "unsafely" with
pickle, are never shown.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from hpcdiff.errors import FormatError

EXPECTED = (
    "expected an hpcdiff model: an .npz written by `hpcdiff classify train` "
    "(or `hpcdiff train`), with arrays {arrays} and JSON metadata"
)

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x93NUMPY", "a single .npy array"),
    (b"\x80", "a Python pickle"),
    (b"\x1f\x8b", "a gzip file"),
    (b"{", "a JSON or text file"),
)


def describe_bytes(head: bytes) -> str:
    """What a file that begins with ``head`` looks like (for messages)."""
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    if not head:
        return "an empty file"
    return "neither a zip (.npz) archive nor another known format"


def read_model_arrays(path: Path, names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays ``names`` and the parsed ``metadata`` of the model file ``path``.

    Raises
    ------
    FormatError
        The file is missing, is not an ``.npz``, lacks one of ``names`` or holds object
        (pickled) arrays, or its metadata is not a JSON object.
    """
    expected = EXPECTED.format(arrays=", ".join(names))
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except FileNotFoundError:
        raise FormatError(path, "model file does not exist") from None
    except OSError as exc:
        raise FormatError(path, f"cannot read the model file ({exc.strerror})") from None
    if not zipfile.is_zipfile(path):
        raise FormatError(path, f"is {describe_bytes(head)}, not a model; {expected}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in names if k not in npz.files]
            if missing:
                raise FormatError(path, f"lacks arrays {missing}; {expected}")
            arrays = {k: npz[k] for k in names}
    except FormatError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        # never numpy's text: it advises loading the file with pickle
        why = (
            "holds object (pickled) arrays, which hpcdiff never loads"
            if ("pickle" in str(exc))
            else f"is a damaged .npz ({type(exc).__name__})"
        )
        raise FormatError(path, f"{why}; {expected}") from None
    meta: Any
    try:
        meta = json.loads(str(arrays["metadata"]))
    except (json.JSONDecodeError, KeyError) as exc:
        raise FormatError(
            path, f"metadata is not JSON ({exc}); {expected}", dataset="metadata"
        ) from None
    if not isinstance(meta, dict):
        raise FormatError(path, f"metadata is not a JSON object; {expected}", dataset="metadata")
    return arrays, meta


__all__ = ["EXPECTED", "describe_bytes", "read_model_arrays"]

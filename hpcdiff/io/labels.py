"""Labels files (HDF5): which frames carry diffuse scattering, and how much.

A labels file holds one row per frame, identified by :class:`~hpcdiff.io.cxi.FrameId`
``(file, index)``:

========================  =========  ==============================================
dataset                   dtype      meaning
========================  =========  ==============================================
``file``                  utf-8 str  frame's file, as the run names it
``index``                 int64      frame's index in that file
``diffuse``               int8       1 where the frame shows diffuse scattering
``diffuse_strength``      float32    amount of diffuse scattering (arbitrary units)
``class``                 int16      ordered amount-of-diffuse class, 0 = none
========================  =========  ==============================================

Root attributes: ``class_names`` (JSON list, one name per class) and provenance.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcdiff.errors import FormatError
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.hdf5 import open_hdf5
from hpcdiff.io.outputs import atomic_path, provenance

_DATASETS = {
    "file": None,
    "index": np.int64,
    "diffuse": np.int8,
    "diffuse_strength": np.float32,
    "class": np.int16,
}


@dataclass(frozen=True, eq=False)
class Labels:
    """Per-frame labels, one row per frame.

    Parameters
    ----------
    file
        ``(n,)`` str: each frame's file.
    index
        ``(n,)`` int64: each frame's index in its file.
    diffuse
        ``(n,)`` int8, 0 or 1.
    diffuse_strength
        ``(n,)`` float32.
    diffuse_class
        ``(n,)`` int16 in ``[0, len(class_names))``; 0 means no diffuse scattering.
    class_names
        Name of each class, in order.
    attrs
        Provenance and other attributes read from a file (empty when built in memory).
    """

    file: np.ndarray
    index: np.ndarray
    diffuse: np.ndarray
    diffuse_strength: np.ndarray
    diffuse_class: np.ndarray
    class_names: tuple[str, ...] = ("none", "diffuse")
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arrays = {
            "file": np.asarray(self.file, dtype=np.str_),
            "index": np.asarray(self.index, dtype=np.int64),
            "diffuse": np.asarray(self.diffuse, dtype=np.int8),
            "diffuse_strength": np.asarray(self.diffuse_strength, dtype=np.float32),
            "diffuse_class": np.asarray(self.diffuse_class, dtype=np.int16),
        }
        n = arrays["file"].shape
        for name, arr in arrays.items():
            if arr.ndim != 1 or arr.shape != n:
                raise ValueError(f"labels {name} has shape {arr.shape}; every array must be {n}")
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if not np.isin(arrays["diffuse"], (0, 1)).all():
            raise ValueError("labels diffuse must be 0 or 1")
        cls = arrays["diffuse_class"]
        if cls.size and (cls.min() < 0 or cls.max() >= len(self.class_names)):
            raise ValueError(
                f"labels diffuse_class spans {cls.min()}..{cls.max()}; expected 0.."
                f"{len(self.class_names) - 1} ({len(self.class_names)} class names)"
            )
        keys = list(zip(arrays["file"].tolist(), arrays["index"].tolist(), strict=True))
        if len(set(keys)) != len(keys):
            seen: set[tuple[str, int]] = set()
            for key in keys:
                if key in seen:
                    raise ValueError(f"labels list frame {FrameId(*key)} more than once")
                seen.add(key)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def frame_ids(self) -> list[FrameId]:
        """Identity of each row's frame."""
        return [FrameId(f, i) for f, i in zip(self.file.tolist(), self.index.tolist(), strict=True)]

    @classmethod
    def from_frame_ids(
        cls,
        frame_ids: Sequence[FrameId],
        *,
        diffuse: Iterable[int],
        diffuse_strength: Iterable[float],
        diffuse_class: Iterable[int],
        class_names: Sequence[str] = ("none", "diffuse"),
    ) -> Labels:
        """Labels for the given frames, row ``k`` describing ``frame_ids[k]``."""
        return cls(
            file=np.array([f.file for f in frame_ids], dtype=np.str_),
            index=np.array([f.index for f in frame_ids], dtype=np.int64),
            diffuse=np.fromiter(diffuse, dtype=np.int8),
            diffuse_strength=np.fromiter(diffuse_strength, dtype=np.float32),
            diffuse_class=np.fromiter(diffuse_class, dtype=np.int16),
            class_names=tuple(class_names),
        )

    def take(self, rows: np.ndarray | Sequence[int]) -> Labels:
        """The labels of the given rows, in that order."""
        rows = np.asarray(rows, dtype=np.intp)
        return Labels(
            file=self.file[rows],
            index=self.index[rows],
            diffuse=self.diffuse[rows],
            diffuse_strength=self.diffuse_strength[rows],
            diffuse_class=self.diffuse_class[rows],
            class_names=self.class_names,
            attrs=self.attrs,
        )

    def lookup(self, frame_ids: Sequence[FrameId], *, source: str | Path | None = None) -> Labels:
        """Labels of ``frame_ids``, in the order given.

        A frame matches a row with the same file string and index.  Where the file string
        differs (the run names files by another folder), it matches the row whose file has
        the same base name, provided base names are unique in these labels.

        Raises
        ------
        KeyError
            Naming the frames (up to 10, and how many) that have no label.
        """
        exact = {
            key: k
            for k, key in enumerate(zip(self.file.tolist(), self.index.tolist(), strict=True))
        }
        files = set(self.file.tolist())
        by_name: dict[tuple[str, int], int] | None = None
        if len({Path(f).name for f in files}) == len(files):
            by_name = {
                (Path(f).name, i): k
                for k, (f, i) in enumerate(
                    zip(self.file.tolist(), self.index.tolist(), strict=True)
                )
            }
        rows: list[int] = []
        missing: list[FrameId] = []
        for fid in frame_ids:
            row = exact.get((fid.file, fid.index))
            if row is None and by_name is not None:
                row = by_name.get((Path(fid.file).name, fid.index))
            if row is None:
                missing.append(fid)
            else:
                rows.append(row)
        if missing:
            where = f" in {source}" if source is not None else ""
            listed = ", ".join(str(m) for m in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise KeyError(f"{len(missing)} frame(s) have no label{where}: {listed}{more}")
        return self.take(rows)

    def equals(self, other: Labels) -> bool:
        """True where both hold the same rows and class names (attributes ignored)."""
        return (
            self.class_names == other.class_names
            and np.array_equal(self.file, other.file)
            and np.array_equal(self.index, other.index)
            and np.array_equal(self.diffuse, other.diffuse)
            and np.array_equal(self.diffuse_strength, other.diffuse_strength)
            and np.array_equal(self.diffuse_class, other.diffuse_class)
        )


def write_labels(
    path: str | Path,
    labels: Labels,
    *,
    config_hash: str | None = None,
    force: bool = False,
) -> Path:
    """Write ``labels`` to an HDF5 labels file atomically, stamped with provenance.

    Raises
    ------
    hpcdiff.errors.OutputExistsError
        If ``path`` exists and ``force`` is false.
    """
    with atomic_path(path, force=force) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("file", data=labels.file.astype(object), dtype=h5py.string_dtype("utf-8"))
        h5.create_dataset("index", data=labels.index)
        h5.create_dataset("diffuse", data=labels.diffuse)
        h5.create_dataset("diffuse_strength", data=labels.diffuse_strength)
        h5.create_dataset("class", data=labels.diffuse_class)
        h5.attrs["class_names"] = json.dumps(list(labels.class_names))
        for key, value in provenance(config_hash, n_frames=len(labels)).items():
            h5.attrs[key] = value
    return Path(path)


def read_labels(path: str | Path) -> Labels:
    """Read a labels file written by :func:`write_labels` (or any file with its datasets).

    Raises
    ------
    hpcdiff.errors.FormatError
        Naming the file and dataset when a dataset is missing, of the wrong kind or length,
        or ``class_names`` is not a JSON list.
    """
    path = Path(path)
    with open_hdf5(path, what="labels file") as h5:
        arrays: dict[str, np.ndarray] = {}
        for name, dtype in _DATASETS.items():
            dset = h5.get(name)
            if not isinstance(dset, h5py.Dataset) or dset.ndim != 1:
                raise FormatError(
                    path,
                    f"labels need a 1-D dataset '{name}'; found {sorted(h5.keys())}",
                    dataset=f"/{name}",
                )
            if dtype is None:
                if dset.dtype.kind not in "OSU":
                    raise FormatError(
                        path, f"expected strings, found {dset.dtype}", dataset="/file"
                    )
                arrays[name] = np.asarray(dset.asstr()[()], dtype=np.str_)
            else:
                if dset.dtype.kind not in "iuf" or (
                    np.dtype(dtype).kind == "i" and dset.dtype.kind == "f"
                ):
                    raise FormatError(
                        path,
                        f"expected {np.dtype(dtype).name}, found {dset.dtype}",
                        dataset=f"/{name}",
                    )
                arrays[name] = dset[()].astype(dtype)
        lengths = {k: v.shape[0] for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise FormatError(path, f"labels datasets differ in length: {lengths}")
        raw = h5.attrs.get("class_names")
        try:
            class_names = tuple(json.loads(raw)) if raw is not None else ("none", "diffuse")
        except (TypeError, json.JSONDecodeError):
            raise FormatError(path, f"attribute class_names is not a JSON list: {raw!r}") from None
        attrs = {k: _plain(v) for k, v in h5.attrs.items() if k != "class_names"}
    try:
        return Labels(
            file=arrays["file"],
            index=arrays["index"],
            diffuse=arrays["diffuse"],
            diffuse_strength=arrays["diffuse_strength"],
            diffuse_class=arrays["class"],
            class_names=class_names,
            attrs=attrs,
        )
    except ValueError as exc:
        raise FormatError(path, str(exc)) from None


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value

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

:func:`read_labels` reads every form of labels hpcdiff accepts, told apart by content (not
by extension): this HDF5 file, a CSV with a ``file,index,label`` header, or CrystFEL list
files (``path //index`` lines), one per class; see :mod:`hpcdiff.io.labels_text`.  Every
row remembers where it came from (file and line, or HDF5 row), so that errors found later
(a frame the run lacks, the same frame twice) name the line to fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import h5py
import numpy as np

from hpcdiff.errors import FormatError
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.hdf5 import open_hdf5
from hpcdiff.io.outputs import atomic_path, provenance

#: What :func:`read_labels` accepts: one labels file (HDF5, CSV or a CrystFEL list), several
#: CrystFEL list files (class from each file's name, or ``"CLASS=PATH"``), or a mapping
#: ``{class name: list file}``.
LabelsSpec: TypeAlias = str | Path | Sequence[str | Path] | Mapping[str, str | Path]

#: Class names of labels given as ``diffuse`` / ``non-diffuse`` (class 0 = no diffuse scattering).
BINARY_NAMES: tuple[str, str] = ("non-diffuse", "diffuse")

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
    source
        ``(n,)`` str: the labels file each row was read from (``""`` when built in memory).
    line
        ``(n,)`` int64: where in ``source`` the row is: the 1-based line of a text file, the
        1-based row of an HDF5 file (0 when built in memory).
    """

    file: np.ndarray
    index: np.ndarray
    diffuse: np.ndarray
    diffuse_strength: np.ndarray
    diffuse_class: np.ndarray
    class_names: tuple[str, ...] = ("none", "diffuse")
    attrs: Mapping[str, Any] = field(default_factory=dict)
    source: np.ndarray | None = None
    line: np.ndarray | None = None

    def __post_init__(self) -> None:
        arrays = {
            "file": np.asarray(self.file, dtype=np.str_),
            "index": np.asarray(self.index, dtype=np.int64),
            "diffuse": np.asarray(self.diffuse, dtype=np.int8),
            "diffuse_strength": np.asarray(self.diffuse_strength, dtype=np.float32),
            "diffuse_class": np.asarray(self.diffuse_class, dtype=np.int16),
        }
        n = arrays["file"].shape
        arrays["source"] = np.asarray(
            np.full(n, "", dtype=np.str_) if self.source is None else self.source, dtype=np.str_
        )
        arrays["line"] = np.asarray(
            np.zeros(n, dtype=np.int64) if self.line is None else self.line, dtype=np.int64
        )
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
            seen: dict[tuple[str, int], int] = {}
            for k, key in enumerate(keys):
                if key in seen:
                    raise ValueError(
                        f"labels list frame {FrameId(*key)} more than once" + self._at(seen[key], k)
                    )
                seen[key] = k

    def _at(self, *rows: int) -> str:
        where = [self.where(r) for r in rows]
        where = [w for w in where if w]
        return f" ({'; '.join(where)})" if where else ""

    def where(self, row: int) -> str:
        """``"labels.csv, line 7"`` (or ``"labels.h5, dataset /file row 6"``): where ``row``
        came from; ``""`` for rows built in memory."""
        assert self.source is not None and self.line is not None
        src, line = str(self.source[row]), int(self.line[row])
        if not src:
            return ""
        if line <= 0:
            return src
        if _is_hdf5(src):
            return f"{src}, dataset /file row {line - 1}"
        return f"{src}, line {line}"

    def error_at(self, row: int, message: str) -> FormatError:
        """A :class:`FormatError` naming the file and line (or HDF5 row) of ``row``."""
        assert self.source is not None and self.line is not None
        src, line = str(self.source[row]), int(self.line[row])
        if not src:
            return FormatError("<labels>", message)
        if line <= 0:
            return FormatError(src, message)
        if _is_hdf5(src):
            return FormatError(src, message, dataset=f"/file row {line - 1}")
        return FormatError(src, message, line=line)

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
            source=None if self.source is None else self.source[rows],
            line=None if self.line is None else self.line[rows],
        )

    def match_run(self, frame_ids: Sequence[FrameId]) -> np.ndarray:
        """Where each row's frame is in a run: ``(n,)`` int64 positions in ``frame_ids``,
        ``-1`` for rows naming a frame the run lacks.

        A row matches a run frame with the same index and the same file: the same string,
        the same absolute path (a relative path in a labels file is taken relative to the
        labels file's folder, then to the working directory), or the same base name where
        that base name is unique among the run's files.

        Raises
        ------
        FormatError
            Naming the file and line of a row whose base name matches several run files,
            or of two rows that name the same run frame.
        """
        exact: dict[tuple[str, int], int] = {}
        absolute: dict[tuple[str, int], int] = {}
        by_name: dict[tuple[str, int], int] = {}
        name_files: dict[str, set[str]] = {}
        for k, fid in enumerate(frame_ids):
            exact.setdefault((fid.file, fid.index), k)
            absolute.setdefault((os.path.abspath(fid.file), fid.index), k)
            name = os.path.basename(fid.file)
            by_name.setdefault((name, fid.index), k)
            name_files.setdefault(name, set()).add(fid.file)
        assert self.source is not None
        out = np.full(len(self), -1, dtype=np.int64)
        taken: dict[int, int] = {}
        for row, (f, i) in enumerate(zip(self.file.tolist(), self.index.tolist(), strict=True)):
            pos: int | None = exact.get((f, i))
            if pos is None:
                for base in _bases(str(self.source[row])):
                    pos = absolute.get((os.path.abspath(os.path.join(base, f)), i))
                    if pos is not None:
                        break
            if pos is None:
                name = os.path.basename(f)
                if len(name_files.get(name, ())) > 1:
                    raise self.error_at(
                        row,
                        f"frame {f} //{i}: base name {name!r} matches several run files "
                        f"({', '.join(sorted(name_files[name])[:3])}); give the full path",
                    )
                pos = by_name.get((name, i))
            if pos is None:
                continue
            if pos in taken:
                raise self.error_at(
                    row,
                    f"frame {frame_ids[pos]} is labelled twice"
                    + self._at(taken[pos])
                    + " (the same frame under two names)",
                )
            taken[pos] = row
            out[row] = pos
        return out

    def for_run(self, frame_ids: Sequence[FrameId]) -> tuple[np.ndarray, Labels]:
        """The run frames these labels name and their labels, in run order.

        Returns
        -------
        positions, labels
            ``(m,)`` int64 sorted positions in ``frame_ids`` of the labelled frames, and
            the ``m`` rows of labels that describe them (same order).  Run frames without a
            label are simply absent: training uses the labelled frames only.

        Raises
        ------
        FormatError
            Naming the labels file and line of the first row whose frame the run lacks
            (and how many such rows there are).
        """
        pos = self.match_run(frame_ids)
        missing = np.flatnonzero(pos < 0)
        if missing.size:
            row = int(missing[0])
            more = (
                f"; {missing.size - 1} more row(s) name frames the run lacks"
                if (missing.size > 1)
                else ""
            )
            files = sorted({f.file for f in frame_ids})
            raise self.error_at(
                row,
                f"frame {self.file[row]} //{self.index[row]} is not in the run ({len(frame_ids)} "
                f"frames in {len(files)} file(s), e.g. {files[0] if files else '-'}){more}",
            )
        order = np.argsort(pos, kind="stable")
        return pos[order], self.take(order)

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
            and np.array_equal(self.diffuse_strength, other.diffuse_strength, equal_nan=True)
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


def read_labels(spec: LabelsSpec, *, class_names: Sequence[str] | None = None) -> Labels:
    """Read labels in any accepted form, told apart by content (not by extension).

    Parameters
    ----------
    spec
        One file: hpcdiff's HDF5 labels file, a CSV with a ``file,index,label`` header, or
        one CrystFEL list file (class from its name).  Several CrystFEL list files, one per
        class: the class of each is its file name without extension (``diffuse.lst``,
        ``non-diffuse.lst``), or given as ``"CLASS=PATH"``, or a mapping ``{CLASS: PATH}``.
    class_names
        The job's class names, class 0 (no diffuse scattering) first; ``None``: the HDF5
        file's own, else a CSV's ``# class_names = ...`` line, else ``("non-diffuse",
        "diffuse")``.  A label may be a class name, ``diffuse`` / ``non-diffuse`` (two
        classes), or an integer class.

    Raises
    ------
    hpcdiff.errors.FormatError
        Naming the file and the line (text) or dataset (HDF5): unreadable content, a bad
        header, a bad index, a wrong column count, an unknown class, the same frame twice.
    """
    from hpcdiff.io.labels_text import read_label_lists, read_labels_csv, sniff

    entries = label_sources(spec)
    if not entries:
        raise FormatError(str(spec), "no labels file given")
    if len(entries) == 1 and entries[0][1] is None:
        path = entries[0][0]
        kind = sniff(path)
        if kind == "hdf5":
            labels = read_labels_h5(path)
            if class_names is not None and tuple(class_names) != labels.class_names:
                raise FormatError(
                    path,
                    f"class names {list(labels.class_names)} differ from the job's "
                    f"{list(class_names)}",
                )
            return labels
        if kind == "csv":
            return read_labels_csv(path, class_names=class_names)
    for path, _ in entries:
        if sniff(path) != "list":
            raise FormatError(
                path,
                "several labels files must all be CrystFEL list files (path //index lines), "
                "one per class",
            )
    return read_label_lists(entries, class_names=class_names)


def label_sources(spec: LabelsSpec) -> list[tuple[Path, str | None]]:
    """``(path, class or None)`` of each file in a labels spec (see :data:`LabelsSpec`).

    A string ``"CLASS=PATH"`` names its class, unless a file of that exact name exists.
    """
    if isinstance(spec, Mapping):
        return [(Path(p), str(c)) for c, p in spec.items()]
    items = [spec] if isinstance(spec, str | Path) else list(spec)
    out: list[tuple[Path, str | None]] = []
    for item in items:
        text = str(item)
        if "=" in text and not Path(text).exists():
            # "CLASS=PATH" (a job's relative path may have been joined to its folder)
            head, _, rest = text.partition("=")
            parent, _, cls = head.rpartition(os.sep)
            if parent and not os.path.isabs(rest):
                rest = os.path.join(parent, rest)
            out.append((Path(rest), cls))
        else:
            out.append((Path(text), None))
    return out


def describe_spec(spec: LabelsSpec) -> str:
    """A short human form of a labels spec for messages."""
    entries = label_sources(spec)
    if len(entries) == 1 and entries[0][1] is None:
        return str(entries[0][0])
    return ", ".join(f"{c}={p}" if c else str(p) for p, c in entries)


def read_labels_h5(path: str | Path) -> Labels:
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
            source=np.array([str(path)] * lengths["file"], dtype=np.str_),
            line=np.arange(1, lengths["file"] + 1, dtype=np.int64),
        )
    except ValueError as exc:
        raise FormatError(path, str(exc)) from None


def _bases(source: str) -> list[str]:
    """Folders a relative frame path in labels file ``source`` may be relative to."""
    return [os.path.dirname(os.path.abspath(source)), os.getcwd()] if source else [os.getcwd()]


def _is_hdf5(path: str) -> bool:
    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value

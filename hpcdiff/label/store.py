"""The labels file of the labelling page: read, merged and replaced atomically on every answer.

Two forms, chosen by the path: ``*.csv`` is a CSV with the header ``file,index,label``
(``label`` the class name; extra columns, e.g. ``diffuse_strength``, are kept as they are);
anything else is hpcdiff's HDF5 labels file (:mod:`hpcdiff.io.labels`).

Every change is one read-modify-write under an exclusive ``fcntl.flock`` on
``PATH.lock``: the file is read again, the one change (set or remove a frame's label) is
applied to what is there, and the result replaces the file atomically
(:func:`hpcdiff.io.outputs.atomic_path`).  So two pages or two server processes on the
same file never lose each other's answers, and a crash leaves the last complete file.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcdiff.errors import FormatError
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.outputs import atomic_path
from hpcdiff.learn.metrics import BINARY_CLASS_NAMES

_BINARY_ALIASES = {
    "non-diffuse": 0, "nondiffuse": 0, "non_diffuse": 0, "none": 0, "no": 0,
    "diffuse": 1, "yes": 1,
}  # fmt: skip


@dataclass(frozen=True)
class LabelScheme:
    """The classes a job labels, their names in files and their keys on the page.

    Attributes
    ----------
    target
        ``"binary"`` (diffuse or not) or ``"classes"`` (ordered amount of diffuse).
    class_names
        Name of each class ``0..K-1`` (binary: ``("non-diffuse", "diffuse")``).
    keys
        Keyboard key of each class (binary: ``n`` and ``d``; classes: digits).
    """

    target: str
    class_names: tuple[str, ...]
    keys: tuple[str, ...]

    @classmethod
    def for_target(cls, target: str, class_names: Sequence[str] | None = None) -> LabelScheme:
        """The scheme of a job's ``[learn] target``; class targets need ``class_names``."""
        if target == "binary":
            return cls("binary", tuple(BINARY_CLASS_NAMES), ("n", "d"))
        if target == "classes":
            names = tuple(class_names or ())
            if not 2 <= len(names) <= 10:
                raise ValueError(f"class targets need 2 to 10 class names, got {list(names)}")
            return cls("classes", names, tuple(str(k) for k in range(len(names))))
        raise ValueError(f"target must be 'binary' or 'classes', got {target!r}")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def parse(self, text: str) -> int | None:
        """Class of a label written in a file (name or integer); ``None`` if unknown."""
        t = text.strip()
        if t.lstrip("-").isdigit():
            k = int(t)
            return k if 0 <= k < self.n_classes else None
        low = t.lower()
        for k, name in enumerate(self.class_names):
            if name.lower() == low:
                return k
        if self.target == "binary":
            return _BINARY_ALIASES.get(low)
        return None


@dataclass
class LabelRows:
    """The rows of a labels file: frame -> class, plus what else the file held.

    Attributes
    ----------
    label
        ``(file, index) -> class`` in the scheme's classes.
    extra
        ``(file, index) -> {column: value}``: other values kept on rewrite (CSV extra
        columns; HDF5 ``diffuse_strength`` and ``class``).
    columns
        Extra CSV columns, in file order.
    class_names
        HDF5 ``class_names`` of the file (kept on rewrite), or ``None``.
    """

    label: dict[tuple[str, int], int] = field(default_factory=dict)
    extra: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    class_names: tuple[str, ...] | None = None

    def find(self, frame: FrameId) -> tuple[str, int] | None:
        """The key of ``frame``'s row: same file and index, else same base name and index
        when base names are unique among the rows' files."""
        key = (frame.file, frame.index)
        if key in self.label:
            return key
        files = {f for f, _ in self.label}
        names = {Path(f).name for f in files}
        if len(names) != len(files):
            return None
        name = Path(frame.file).name
        for f, i in self.label:
            if i == frame.index and Path(f).name == name:
                return (f, i)
        return None


class LabelStore:
    """A labels file that the page reads and changes one answer at a time.

    Parameters
    ----------
    path
        The labels file (``.csv``: CSV; otherwise HDF5).  Need not exist yet.
    scheme
        The job's classes.
    config_hash
        Stamped into HDF5 files.
    """

    def __init__(
        self, path: str | Path, *, scheme: LabelScheme, config_hash: str | None = None
    ) -> None:
        self.path = Path(path)
        self.scheme = scheme
        self.config_hash = config_hash
        self.is_csv = self.path.suffix.lower() == ".csv"
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._thread_lock = threading.Lock()

    # ------------------------------------------------------------------ reading
    def signature(self) -> tuple[int, int, int] | None:
        """``(inode, size, mtime_ns)`` of the file, ``None`` if absent: changes on every write."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def read(self) -> LabelRows:
        """The file's rows (none when the file does not exist yet).

        Raises
        ------
        hpcdiff.errors.FormatError
            Naming the file (and line) when it is not a labels file of this scheme.
        """
        if not self.path.exists():
            return LabelRows()
        return self._read_csv() if self.is_csv else self._read_hdf5()

    def _read_csv(self) -> LabelRows:
        text = self.path.read_text(encoding="utf-8-sig")
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if header is None:
            return LabelRows()
        cols = [h.strip() for h in header]
        for need in ("file", "index", "label"):
            if need not in cols:
                raise FormatError(
                    self.path, f"CSV labels need a header with file,index,label; found {cols}",
                    line=1,
                )  # fmt: skip
        at = {c: k for k, c in enumerate(cols)}
        extras = [c for c in cols if c not in ("file", "index", "label")]
        rows = LabelRows(columns=extras)
        for line, rec in enumerate(reader, start=2):
            if not rec or all(not v.strip() for v in rec):
                continue
            if len(rec) < len(cols):
                raise FormatError(
                    self.path, f"expected {len(cols)} columns, found {len(rec)}", line=line
                )
            try:
                index = int(rec[at["index"]])
            except ValueError:
                raise FormatError(
                    self.path, f"index {rec[at['index']]!r} is not an integer", line=line
                ) from None
            cls = self.scheme.parse(rec[at["label"]])
            if cls is None:
                raise FormatError(
                    self.path,
                    f"label {rec[at['label']]!r} is not a class of this job "
                    f"({', '.join(self.scheme.class_names)} or 0..{self.scheme.n_classes - 1})",
                    line=line,
                )
            key = (rec[at["file"]].strip(), index)
            if key in rows.label:
                raise FormatError(self.path, f"frame {FrameId(*key)} is listed twice", line=line)
            rows.label[key] = cls
            if extras:
                rows.extra[key] = {c: rec[at[c]] for c in extras}
        return rows

    def _read_hdf5(self) -> LabelRows:
        from hpcdiff.io.labels import read_labels

        lab = read_labels(self.path)
        rows = LabelRows(class_names=tuple(lab.class_names))
        binary = self.scheme.target == "binary"
        if not binary and tuple(lab.class_names) != self.scheme.class_names:
            raise FormatError(
                self.path,
                f"class_names {list(lab.class_names)} differ from the job's "
                f"{list(self.scheme.class_names)}",
            )
        values = lab.diffuse if binary else lab.diffuse_class
        for f, i, v, s, c in zip(
            lab.file.tolist(), lab.index.tolist(), values.tolist(),
            lab.diffuse_strength.tolist(), lab.diffuse_class.tolist(), strict=True,
        ):  # fmt: skip
            rows.label[(f, int(i))] = int(v)
            rows.extra[(f, int(i))] = {"diffuse_strength": repr(float(s)), "class": str(int(c))}
        return rows

    # ------------------------------------------------------------------ writing
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock of the labels file across threads and processes."""
        with self._thread_lock:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def update(self, change: Callable[[LabelRows], None]) -> LabelRows:
        """Under the lock: read the file, apply ``change`` to its rows, replace it atomically."""
        with self.locked():
            rows = self.read()
            change(rows)
            self._write(rows)
            return rows

    def set(self, frame: FrameId, label: int) -> LabelRows:
        """Record ``frame``'s class (replacing an earlier answer); returns the file's rows."""
        if not 0 <= int(label) < self.scheme.n_classes:
            raise ValueError(f"label {label} is not in 0..{self.scheme.n_classes - 1}")

        def change(rows: LabelRows) -> None:
            old = rows.find(frame)
            extra = {}
            if old is not None:
                rows.label.pop(old)
                extra = rows.extra.pop(old, {})
            key = (frame.file, frame.index)
            rows.label[key] = int(label)
            if extra:
                rows.extra[key] = extra

        return self.update(change)

    def remove(self, frame: FrameId, *, only_if: int | None = None) -> LabelRows:
        """Remove ``frame``'s label (if its class is ``only_if``, when given)."""

        def change(rows: LabelRows) -> None:
            old = rows.find(frame)
            if old is not None and (only_if is None or rows.label[old] == only_if):
                rows.label.pop(old)
                rows.extra.pop(old, None)

        return self.update(change)

    def _write(self, rows: LabelRows) -> None:
        if self.is_csv:
            self._write_csv(rows)
        else:
            self._write_hdf5(rows)

    def _write_csv(self, rows: LabelRows) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file", "index", "label", *rows.columns])
        for key in sorted(rows.label):
            extra = rows.extra.get(key, {})
            name = self.scheme.class_names[rows.label[key]]
            w.writerow([key[0], key[1], name, *(extra.get(c, "") for c in rows.columns)])
        with atomic_path(self.path, force=True) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(buf.getvalue())
                fh.flush()
                os.fsync(fh.fileno())

    def _write_hdf5(self, rows: LabelRows) -> None:
        from hpcdiff.io.labels import Labels, write_labels

        binary = self.scheme.target == "binary"
        names = rows.class_names or (("none", "diffuse") if binary else self.scheme.class_names)
        keys = sorted(rows.label)
        diffuse, cls, strength = [], [], []
        for key in keys:
            y = rows.label[key]
            extra = rows.extra.get(key, {})
            if binary:
                diffuse.append(y)
                if "class" in extra:
                    c = int(extra["class"])
                    # keep an earlier amount-of-diffuse class where it agrees with the answer
                    c = c if (c > 0) == bool(y) else _binary_class(names, y)
                else:
                    c = _binary_class(names, y)
                cls.append(c)
            else:
                diffuse.append(int(y > 0))
                cls.append(y)
            strength.append(float(extra.get("diffuse_strength", "nan")))
        labels = Labels(
            file=np.array([k[0] for k in keys], dtype=np.str_),
            index=np.array([k[1] for k in keys], dtype=np.int64),
            diffuse=np.array(diffuse, dtype=np.int8),
            diffuse_strength=np.array(strength, dtype=np.float32),
            diffuse_class=np.array(cls, dtype=np.int16),
            class_names=tuple(names),
        )
        write_labels(self.path, labels, config_hash=self.config_hash, force=True)


def _binary_class(names: Sequence[str], y: int) -> int:
    """The HDF5 ``class`` of a binary answer: 0, or the class named "diffuse" (else 1)."""
    if not y:
        return 0
    lowered = [n.lower() for n in names]
    return lowered.index("diffuse") if "diffuse" in lowered else 1

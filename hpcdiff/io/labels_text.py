"""Labels as text: a CSV with a header, and CrystFEL list files (one per class).

CSV
    A header line holding at least ``file,index,label`` (any order, case ignored; extra
    columns are ignored; a ``class`` column stands in for ``label`` when there is none),
    then one row per frame.  ``label`` is a class name of the job, ``diffuse`` /
    ``non-diffuse`` (two classes), or an integer class (0 = no diffuse scattering).  An
    optional ``diffuse_strength`` column holds a number (empty: unknown).  ``index`` is
    the frame's index in its file (CrystFEL's ``//3`` form is accepted).  Lines starting
    with ``#`` before the header are comments; ``# class_names = none,weak,strong`` there
    names the classes, class 0 first (hpcdiff writes it when the classes are not
    ``non-diffuse,diffuse``).

CrystFEL list
    One frame per line, ``path //index`` (as ``indexamajig -i`` reads and ``list_events``
    writes), blank lines and ``#`` comments skipped.  The file's class is its name without
    extension (``diffuse.lst``), or given as ``CLASS=PATH`` (see
    :func:`hpcdiff.io.labels.read_labels`).

Every error names the file and the line.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpcdiff.errors import FormatError
from hpcdiff.io.labels import BINARY_NAMES, Labels
from hpcdiff.io.outputs import atomic_path, ensure_writable

_LIST_LINE = re.compile(r"^(?P<path>.*?\S)\s+//(?P<event>\S*)$")
_CLASS_NAMES_LINE = re.compile(r"^#\s*class_names\s*[=:]\s*(?P<names>.*)$", re.IGNORECASE)


def sniff(path: str | Path) -> str:
    """``"hdf5"``, ``"csv"`` or ``"list"``: what a labels file holds, judged by content.

    HDF5 by its signature; otherwise the first line that is neither blank nor a ``#``
    comment decides: ``... //N`` is a CrystFEL list, a line with a comma a CSV header, and
    anything else is read as a list (whose reader then names the line it cannot parse).

    Raises
    ------
    FormatError
        If the file does not exist, cannot be read as text, or holds no line.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "labels file not found")
    if h5py.is_hdf5(path):
        return "hdf5"
    for _, line in _text_lines(path):
        if _LIST_LINE.match(line):
            return "list"
        return "csv" if "," in line else "list"
    raise FormatError(
        path, "labels file holds no line; expected a CSV header or path //index lines"
    )


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` of every non-blank, non-comment line."""
    return [(n, s) for n, s in _all_lines(path) if s and not s.startswith("#")]


def _all_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FormatError(
            path, f"not a labels file: neither HDF5 nor UTF-8 text (byte {exc.start})"
        ) from None
    except OSError as exc:
        raise FormatError(path, f"cannot read labels file ({exc.strerror})") from None
    return [(n, s.strip()) for n, s in enumerate(text.splitlines(), start=1)]


def class_of(
    value: str, names: Sequence[str], *, path: str | Path, line: int | None, what: str = "label"
) -> int:
    """The class number of a label: a class name, diffuse/non-diffuse, or an integer.

    Names match without regard to case.  ``non-diffuse`` is class 0; ``diffuse`` is class
    1 where there are two classes.

    Raises
    ------
    FormatError
        Naming ``path`` and ``line``, the value and the valid choices.
    """
    text = value.strip()
    low = text.lower()
    lowered = [n.lower() for n in names]
    if low in lowered:
        return lowered.index(low)
    if low == "non-diffuse":
        return 0
    if low == "diffuse" and len(names) == 2:
        return 1
    if re.fullmatch(r"[+-]?\d+", text):
        k = int(text)
        if 0 <= k < len(names):
            return k
        raise FormatError(
            path,
            f"{what} {text} is not a class: expected 0..{len(names) - 1} ({', '.join(names)})",
            line=line,
        )
    hint = (
        "; say which classes exist with [experiment] class_names (or --class-names), class 0 first"
        if tuple(names) == BINARY_NAMES
        else ""
    )
    raise FormatError(
        path,
        f"unknown class {text!r} in {what}: expected one of {', '.join(names)}, or an integer "
        f"0..{len(names) - 1}{hint}",
        line=line,
    )


def _parse_index(text: str, *, path: Path, line: int) -> int:
    t = text.strip()
    if t.startswith("//"):
        t = t[2:]
    if not re.fullmatch(r"\+?\d+", t):
        raise FormatError(
            path, f"bad index {text.strip()!r}: expected a frame index (integer >= 0)", line=line
        )
    return int(t)


def read_labels_csv(path: str | Path, *, class_names: Sequence[str] | None = None) -> Labels:
    """Read a labels CSV (module docstring).

    Raises
    ------
    FormatError
        Naming the file and line: a header without ``file``, ``index`` and ``label``, a
        row whose column count differs from the header's, a bad index or strength, an
        unknown class, the same frame twice.
    """
    path = Path(path)
    lines = _all_lines(path)
    header_at = None
    names_from_file: tuple[str, ...] | None = None
    for k, (_n, s) in enumerate(lines):
        if not s:
            continue
        m = _CLASS_NAMES_LINE.match(s)
        if m:
            names_from_file = tuple(x.strip() for x in m.group("names").split(",") if x.strip())
            continue
        if s.startswith("#"):
            continue
        header_at = k
        break
    if header_at is None:
        raise FormatError(path, "labels CSV has no header line; expected file,index,label")
    names = tuple(class_names) if class_names is not None else names_from_file or BINARY_NAMES
    if len(names) < 2:
        raise FormatError(path, f"class_names must name at least 2 classes, got {list(names)}")
    header_line, header_text = lines[header_at]
    header = [h.strip().lower() for h in next(csv.reader([header_text]))]
    label_col = "label" if "label" in header else ("class" if "class" in header else None)
    missing = [c for c in ("file", "index") if c not in header] + ([] if label_col else ["label"])
    if missing:
        raise FormatError(
            path,
            f"bad header {header_text!r}: a labels CSV needs at least the columns file,index,"
            f"label (missing {','.join(missing)})",
            line=header_line,
        )
    dup = sorted({h for h in header if header.count(h) > 1 and h})
    if dup:
        raise FormatError(path, f"bad header: column(s) {dup} appear twice", line=header_line)
    assert label_col is not None
    col = {name: header.index(name) for name in ("file", "index")}
    col["label"] = header.index(label_col)
    strength_col = header.index("diffuse_strength") if "diffuse_strength" in header else None
    files: list[str] = []
    indices: list[int] = []
    classes: list[int] = []
    strengths: list[float] = []
    line_nos: list[int] = []
    seen: dict[tuple[str, int], int] = {}
    for n, s in lines[header_at + 1 :]:
        if not s or s.startswith("#"):
            continue
        try:
            row = next(csv.reader(io.StringIO(s)))
        except csv.Error as exc:
            raise FormatError(path, f"not a CSV row: {exc}", line=n) from None
        if len(row) != len(header):
            raise FormatError(
                path,
                f"wrong column count: {len(row)} value(s), the header has {len(header)} "
                f"({','.join(header)})",
                line=n,
            )
        file = row[col["file"]].strip()
        if not file:
            raise FormatError(path, "empty file name", line=n)
        index = _parse_index(row[col["index"]], path=path, line=n)
        key = (file, index)
        if key in seen:
            raise FormatError(
                path,
                f"frame {file} //{index} is labelled twice (first at line {seen[key]})",
                line=n,
            )
        seen[key] = n
        classes.append(class_of(row[col["label"]], names, path=path, line=n))
        strength = float("nan")
        if strength_col is not None and row[strength_col].strip():
            try:
                strength = float(row[strength_col])
            except ValueError:
                raise FormatError(
                    path,
                    f"bad diffuse_strength {row[strength_col].strip()!r}: expected a number",
                    line=n,
                ) from None
        files.append(file)
        indices.append(index)
        strengths.append(strength)
        line_nos.append(n)
    return _labels(files, indices, classes, strengths, names, [str(path)] * len(files), line_nos)


def read_label_lists(
    entries: Sequence[tuple[str | Path, str | None]],
    *,
    class_names: Sequence[str] | None = None,
) -> Labels:
    """Read CrystFEL list files, one per class.

    Parameters
    ----------
    entries
        ``(path, class)`` pairs; ``class`` ``None`` takes the file name without extension.
    class_names
        The job's class names (default ``("non-diffuse", "diffuse")``).

    Raises
    ------
    FormatError
        Naming the file (and line): an unknown class, a line that is not ``path //index``,
        a bad index, a frame listed twice (in one file or in two).
    """
    names = tuple(class_names) if class_names is not None else BINARY_NAMES
    files: list[str] = []
    indices: list[int] = []
    classes: list[int] = []
    sources: list[str] = []
    line_nos: list[int] = []
    seen: dict[tuple[str, int], tuple[Path, int]] = {}
    for raw_path, given in entries:
        path = Path(raw_path)
        if given is None:
            stem = path.name.split(".")[0] if not path.name.startswith(".") else path.name
            cls = class_of(stem, names, path=path, line=None, what="the class of the file name")
        else:
            cls = class_of(given, names, path=path, line=None, what="the class given for the file")
        if not path.is_file():
            raise FormatError(path, "labels list file not found")
        for n, s in _text_lines(path):
            m = _LIST_LINE.match(s)
            if m is None:
                raise FormatError(
                    path,
                    f"expected 'path //index' (a CrystFEL list line naming one frame), got {s!r}",
                    line=n,
                )
            index = _parse_index(m.group("event"), path=path, line=n)
            key = (m.group("path"), index)
            if key in seen:
                first, first_line = seen[key]
                raise FormatError(
                    path,
                    f"frame {key[0]} //{index} is labelled twice (first at {first}, line "
                    f"{first_line})",
                    line=n,
                )
            seen[key] = (path, n)
            files.append(key[0])
            indices.append(index)
            classes.append(cls)
            sources.append(str(path))
            line_nos.append(n)
    nan = [float("nan")] * len(files)
    return _labels(files, indices, classes, nan, names, sources, line_nos)


def _labels(
    files: list[str],
    indices: list[int],
    classes: list[int],
    strengths: list[float],
    names: tuple[str, ...],
    sources: list[str],
    lines: list[int],
) -> Labels:
    cls = np.asarray(classes, dtype=np.int16)
    return Labels(
        file=np.asarray(files, dtype=np.str_),
        index=np.asarray(indices, dtype=np.int64),
        diffuse=(cls > 0).astype(np.int8),
        diffuse_strength=np.asarray(strengths, dtype=np.float32),
        diffuse_class=cls,
        class_names=names,
        source=np.asarray(sources, dtype=np.str_),
        line=np.asarray(lines, dtype=np.int64),
    )


# --------------------------------------------------------------------------- writing


def csv_text(labels: Labels) -> str:
    """The labels as CSV text: ``file,index,label,diffuse_strength`` (label = class name),
    preceded by ``# class_names = ...`` unless the classes are ``non-diffuse,diffuse``."""
    buf = io.StringIO()
    if labels.class_names != BINARY_NAMES:
        buf.write(f"# class_names = {','.join(labels.class_names)}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "index", "label", "diffuse_strength"])
    for f, i, c, s in zip(
        labels.file.tolist(),
        labels.index.tolist(),
        labels.diffuse_class.tolist(),
        labels.diffuse_strength.tolist(),
        strict=True,
    ):
        w.writerow([f, i, labels.class_names[c], "" if np.isnan(s) else repr(float(s))])
    return buf.getvalue()


def write_labels_csv(path: str | Path, labels: Labels, *, force: bool = False) -> Path:
    """Write ``labels`` as a labels CSV atomically (never over a file without ``force``)."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(csv_text(labels))
    return Path(path)


def list_text(files: Sequence[str], indices: Sequence[int] | np.ndarray) -> str:
    """CrystFEL list text: one ``path //index`` line per frame."""
    return "".join(f"{f} //{int(i)}\n" for f, i in zip(files, indices, strict=True))


def write_label_lists(folder: str | Path, labels: Labels, *, force: bool = False) -> list[Path]:
    """Write one CrystFEL list per class, ``folder/CLASS.lst`` (empty for an unused class).

    Every file is checked before any is written, so nothing is left half done.
    """
    folder = Path(folder)
    paths = [folder / f"{name}.lst" for name in labels.class_names]
    for p in paths:
        ensure_writable(p, force=force)
    for k, p in enumerate(paths):
        rows = np.flatnonzero(labels.diffuse_class == k)
        with atomic_path(p, force=True) as tmp:
            tmp.write_text(list_text(labels.file[rows].tolist(), labels.index[rows].tolist()))
    return paths

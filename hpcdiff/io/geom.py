"""CrystFEL geometry files (``.geom``): where data is in the file, and where each panel sits.

The reader follows CrystFEL's semantics (``man crystfel_geometry``):

* ``key = value`` sets a *default* used by every panel first mentioned **after** that
  line; ``panel/key = value`` sets a key of one panel; ``;`` starts a comment.
* Names beginning with ``bad`` are bad regions, ``rigid_group``/``group_`` lines are
  panel groups (kept, written back, otherwise unused).
* ``clen`` is metres when a number, millimetres when an HDF5 path; ``photon_energy`` is eV
  (``keV`` suffix allowed) or an HDF5 path; ``wavelength`` (``m`` or ``A``) is converted to
  a photon energy.

It is stricter than CrystFEL: unknown keys, duplicated panel keys, overlapping panels,
missing required keys and unparsable values are :class:`~hpcdiff.errors.FormatError`
naming the file and line.  Keys CrystFEL knows but hpcdiff does not use (``flag_morethan``,
``peak_list`` ...) are kept verbatim in ``extra`` and written back.

Slab coordinates: every panel's ``min_fs .. max_ss`` are indices into one 2D float array
``(n_ss, n_fs)`` per frame.  Layouts with a fixed panel index (``dim1 = 7`` for the psana
``N x 32 x 185 x 388`` block) fold that index into the slow-scan axis:
``slab_ss = index * block_n_ss + file_ss``, so the block reshapes to ``(N, 5920, 388)``.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from hpcdiff.errors import FormatError

__all__ = [
    "BadRegion",
    "DetectorGeometry",
    "Panel",
    "format_geom",
    "parse_geom",
    "read_geom",
    "write_geom",
]

Vector = tuple[float, float, float]
DimEntry = str | int

#: hc in eV * m: ``lambda_m = HC_EV_M / E_eV``.
HC_EV_M = 12398.419843320026e-10


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Panel:
    """One detector panel: its pixels in the slab and its placement in the lab.

    Parameters
    ----------
    name
        Panel name, unique in the geometry (``q0a0``).
    min_fs, max_fs, min_ss, max_ss
        Inclusive pixel ranges in slab coordinates (``(n_ss, n_fs)`` frame array).
    fs, ss
        Lab-frame directions (x, y, z) of one step along fast scan and slow scan, in pixels.
    corner_x, corner_y
        Lab position of the panel's first corner (not the first pixel centre), pixels.
    res
        Pixels per metre.
    coffset_m
        Offset of this panel along z from ``clen``, metres.
    clen
        Camera length: metres when a number, an HDF5 path (value in mm) read per frame, or
        ``None`` when the caller supplies it.
    adu_per_ev, adu_per_photon
        Detector gain (at most one of them), or ``None``.
    max_adu
        Saturation value, ADU (``inf`` when not set).
    data
        HDF5 dataset holding the frames (``/entry_1/data_1/data``), or ``None``.
    dim_structure
        Meaning of each axis of ``data``: ``"%"`` (frame), ``"ss"``, ``"fs"`` or a fixed
        integer index (a panel index, as psana's ``N x 32 x 185 x 388`` layout).
    mask, mask_file, mask_good, mask_bad
        Bad-pixel mask dataset, the file it is in (``None``: the frame file) and the bits
        that mark good and bad pixels.
    no_index
        True for a panel to ignore completely.
    slab_ss_offset
        Rows added to the file's slow-scan index to get the slab's (non-zero only for
        layouts with a fixed panel index).
    extra
        CrystFEL keys kept verbatim but not used (``(key, value)`` pairs).
    """

    name: str
    min_fs: int
    max_fs: int
    min_ss: int
    max_ss: int
    fs: Vector
    ss: Vector
    corner_x: float
    corner_y: float
    res: float
    coffset_m: float = 0.0
    clen: float | str | None = None
    adu_per_ev: float | None = None
    adu_per_photon: float | None = None
    max_adu: float = math.inf
    data: str | None = None
    dim_structure: tuple[DimEntry, ...] = ("ss", "fs")
    mask: str | None = None
    mask_file: str | None = None
    mask_good: int = 0
    mask_bad: int = 0
    no_index: bool = False
    slab_ss_offset: int = 0
    extra: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if not self.name or any(c in self.name for c in "/=; \t"):
            problems.append(f"invalid panel name {self.name!r}")
        for lo, hi in (("min_fs", "max_fs"), ("min_ss", "max_ss")):
            a, b = getattr(self, lo), getattr(self, hi)
            if not all(isinstance(v, int | np.integer) for v in (a, b)):
                problems.append(f"{lo}/{hi} must be integers, got {a!r}, {b!r}")
            elif a < 0 or b < a:
                problems.append(f"{lo} = {a}, {hi} = {b}: need 0 <= {lo} <= {hi}")
        if self.min_ss - self.slab_ss_offset < 0:
            problems.append("slab_ss_offset is larger than min_ss")
        for key in ("fs", "ss"):
            vec = getattr(self, key)
            if len(vec) != 3 or not all(math.isfinite(v) for v in vec):
                problems.append(f"{key} must be three finite numbers, got {vec!r}")
            elif math.hypot(*vec) == 0:
                problems.append(f"{key} is a zero vector")
        if not problems and np.linalg.norm(np.cross(self.fs, self.ss)) < 1e-6:
            problems.append(f"fs {self.fs} and ss {self.ss} are parallel")
        for key in ("corner_x", "corner_y", "coffset_m"):
            if not math.isfinite(getattr(self, key)):
                problems.append(f"{key} must be finite, got {getattr(self, key)!r}")
        if not (math.isfinite(self.res) and self.res > 0):
            problems.append(f"res must be a positive number of pixels per metre, got {self.res!r}")
        if self.adu_per_ev is not None and self.adu_per_photon is not None:
            problems.append("give only one of adu_per_eV and adu_per_photon")
        if isinstance(self.clen, float | int) and not math.isfinite(self.clen):
            problems.append(f"clen must be finite, got {self.clen!r}")
        if problems:
            raise ValueError(f"panel {self.name}: " + "; ".join(problems))

    @property
    def n_fs(self) -> int:
        """Pixels along fast scan."""
        return self.max_fs - self.min_fs + 1

    @property
    def n_ss(self) -> int:
        """Pixels along slow scan."""
        return self.max_ss - self.min_ss + 1

    @property
    def n_pixels(self) -> int:
        """Pixels on this panel."""
        return self.n_fs * self.n_ss

    @property
    def fixed_index(self) -> int | None:
        """The fixed (panel) index of ``dim_structure``, or ``None``."""
        ints = [d for d in self.dim_structure if isinstance(d, int)]
        return ints[0] if ints else None


@dataclass(frozen=True)
class BadRegion:
    """Pixels CrystFEL ignores: a lab-frame box or a slab-coordinate box.

    Either all of ``min_x, max_x, min_y, max_y`` (lab pixels, relative to the beam; a pixel
    is bad when its first corner lies strictly inside, as CrystFEL >= 0.10 does) or all of
    ``min_fs, max_fs, min_ss, max_ss`` (slab coordinates, inclusive).  ``panel`` restricts
    the region to one panel.
    """

    name: str
    panel: str | None = None
    min_x: float | None = None
    max_x: float | None = None
    min_y: float | None = None
    max_y: float | None = None
    min_fs: int | None = None
    max_fs: int | None = None
    min_ss: int | None = None
    max_ss: int | None = None

    def __post_init__(self) -> None:
        xy = [self.min_x, self.max_x, self.min_y, self.max_y]
        fsss = [self.min_fs, self.max_fs, self.min_ss, self.max_ss]
        has_xy = [v is not None for v in xy]
        has_fsss = [v is not None for v in fsss]
        if any(has_xy) and any(has_fsss):
            raise ValueError(
                f"bad region {self.name}: mixes min_x/max_x/min_y/max_y with "
                "min_fs/max_fs/min_ss/max_ss; use one form"
            )
        if any(has_xy) and not all(has_xy):
            raise ValueError(f"bad region {self.name}: needs all of min_x, max_x, min_y, max_y")
        if any(has_fsss) and not all(has_fsss):
            raise ValueError(f"bad region {self.name}: needs all of min_fs, max_fs, min_ss, max_ss")
        if not any(has_xy) and not any(has_fsss):
            raise ValueError(
                f"bad region {self.name}: give min_x, max_x, min_y, max_y "
                "or min_fs, max_fs, min_ss, max_ss"
            )
        if self.is_fsss:
            min_fs, max_fs, min_ss, max_ss = cast(list[int], fsss)
            if min(min_fs, max_fs, min_ss, max_ss) < 0 or max_fs < min_fs or max_ss < min_ss:
                raise ValueError(
                    f"bad region {self.name}: need 0 <= min_fs <= max_fs and 0 <= min_ss <= max_ss"
                )
        else:
            min_x, max_x, min_y, max_y = cast(list[float], xy)
            if max_x < min_x or max_y < min_y:
                raise ValueError(f"bad region {self.name}: need min_x <= max_x and min_y <= max_y")

    @property
    def is_fsss(self) -> bool:
        """True when given in slab (fs/ss) coordinates, false for lab x/y."""
        return self.min_fs is not None

    @property
    def fs_ss_box(self) -> tuple[int, int, int, int]:
        """``(min_fs, max_fs, min_ss, max_ss)`` of a slab-coordinate region (inclusive)."""
        if not self.is_fsss:
            raise ValueError(f"bad region {self.name} is given in lab x/y, not fs/ss")
        return cast(tuple[int, int, int, int], (self.min_fs, self.max_fs, self.min_ss, self.max_ss))

    @property
    def xy_box(self) -> tuple[float, float, float, float]:
        """``(min_x, max_x, min_y, max_y)`` of a lab-frame region (pixels)."""
        if self.is_fsss:
            raise ValueError(f"bad region {self.name} is given in fs/ss, not lab x/y")
        return cast(
            tuple[float, float, float, float], (self.min_x, self.max_x, self.min_y, self.max_y)
        )


@dataclass(frozen=True)
class DetectorGeometry:
    """A whole detector: panels, bad regions, photon energy and the frame (slab) shape.

    ``slab_shape`` is computed from the panels when not given.  Equality ignores
    ``source`` so that a geometry written and read back compares equal.
    """

    panels: tuple[Panel, ...]
    bad_regions: tuple[BadRegion, ...] = ()
    photon_energy: float | str | None = None
    # None (the default) is replaced by the shape the panels need in __post_init__, so the
    # attribute is always a shape.
    slab_shape: tuple[int, int] = None  # type: ignore[assignment]
    rigid_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    extra: tuple[tuple[str, str], ...] = ()
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "panels", tuple(self.panels))
        object.__setattr__(self, "bad_regions", tuple(self.bad_regions))
        if not self.panels:
            raise ValueError("a detector geometry needs at least one panel")
        names = [p.name for p in self.panels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"panel names used twice: {', '.join(dupes)}")
        _check_no_overlap(self.panels)
        needed = (
            max(p.max_ss for p in self.panels) + 1,
            max(p.max_fs for p in self.panels) + 1,
        )
        if self.slab_shape is None:
            object.__setattr__(self, "slab_shape", needed)
        else:
            shape = tuple(int(v) for v in self.slab_shape)
            if len(shape) != 2 or shape[0] < needed[0] or shape[1] < needed[1]:
                raise ValueError(
                    f"slab_shape {self.slab_shape} does not cover the panels (need >= {needed})"
                )
            object.__setattr__(self, "slab_shape", shape)
        by_name = {p.name: p for p in self.panels}
        for region in self.bad_regions:
            if region.panel is not None and region.panel not in by_name:
                raise ValueError(
                    f"bad region {region.name} names panel {region.panel!r}, which is not defined"
                )
            if region.is_fsss and region.panel is not None:
                p = by_name[region.panel]
                lo_fs, hi_fs, lo_ss, hi_ss = region.fs_ss_box
                if not (
                    p.min_fs <= lo_fs
                    and hi_fs <= p.max_fs
                    and p.min_ss <= lo_ss
                    and hi_ss <= p.max_ss
                ):
                    raise ValueError(
                        f"bad region {region.name} (fs {region.min_fs}..{region.max_fs}, "
                        f"ss {region.min_ss}..{region.max_ss}) lies outside panel {p.name} "
                        f"(fs {p.min_fs}..{p.max_fs}, ss {p.min_ss}..{p.max_ss})"
                    )
        if isinstance(self.photon_energy, float | int) and not (
            math.isfinite(self.photon_energy) and self.photon_energy > 0
        ):
            raise ValueError(f"photon_energy must be positive eV, got {self.photon_energy!r}")

    @property
    def n_pixels(self) -> int:
        """Pixels on all panels together."""
        return sum(p.n_pixels for p in self.panels)

    @property
    def panel_names(self) -> tuple[str, ...]:
        """Panel names in file order."""
        return tuple(p.name for p in self.panels)

    def panel(self, name: str) -> Panel:
        """The panel called ``name`` (``KeyError`` listing the names if absent)."""
        for p in self.panels:
            if p.name == name:
                return p
        raise KeyError(f"no panel {name!r}; panels are {', '.join(self.panel_names)}")


def _check_no_overlap(panels: tuple[Panel, ...]) -> None:
    lo_fs = np.array([p.min_fs for p in panels])
    hi_fs = np.array([p.max_fs for p in panels])
    lo_ss = np.array([p.min_ss for p in panels])
    hi_ss = np.array([p.max_ss for p in panels])
    overlap = (
        (lo_fs[:, None] <= hi_fs[None, :])
        & (lo_fs[None, :] <= hi_fs[:, None])
        & (lo_ss[:, None] <= hi_ss[None, :])
        & (lo_ss[None, :] <= hi_ss[:, None])
    )
    np.fill_diagonal(overlap, False)
    if overlap.any():
        i, j = np.argwhere(overlap)[0]
        a, b = panels[i], panels[j]
        raise ValueError(
            f"panels {a.name} (fs {a.min_fs}..{a.max_fs}, ss {a.min_ss}..{a.max_ss}) and "
            f"{b.name} (fs {b.min_fs}..{b.max_fs}, ss {b.min_ss}..{b.max_ss}) overlap in the "
            "data array"
        )


# --------------------------------------------------------------------------- keys

_PANEL_KEYS = (
    "min_fs",
    "max_fs",
    "min_ss",
    "max_ss",
    "fs",
    "ss",
    "corner_x",
    "corner_y",
    "res",
    "clen",
    "coffset",
    "adu_per_eV",
    "adu_per_photon",
    "max_adu",
    "data",
    "mask",
    "mask_file",
    "mask_good",
    "mask_bad",
    "no_index",
)
_PANEL_SYNONYMS = {
    "mask0_data": "mask",
    "mask0_file": "mask_file",
    "mask0_goodbits": "mask_good",
    "mask0_badbits": "mask_bad",
}
#: CrystFEL panel keys that hpcdiff keeps verbatim but does not use.
_PANEL_KEPT = (
    "flag_lessthan",
    "flag_morethan",
    "flag_equal",
    "mask_edge_pixels",
    "saturation_map",
    "saturation_map_file",
    "clen_for_centering",
    "badrow_direction",
)
_REQUIRED = ("min_fs", "max_fs", "min_ss", "max_ss", "fs", "ss", "corner_x", "corner_y", "res")
_GLOBAL_ONLY = ("photon_energy", "wavelength")
#: CrystFEL top-level keys kept verbatim but not used.
_GLOBAL_KEPT = ("bandwidth", "photon_energy_bandwidth", "peak_list", "peak_list_type",
                "peak_info_location")  # fmt: skip
#: CrystFEL keys hpcdiff refuses rather than silently mis-handling.
_UNSUPPORTED = {
    "electron_voltage": "hpcdiff handles X-ray data; give photon_energy",
    "photon_energy_scale": "scale the photon energy yourself and give photon_energy",
    "detector_shift_x": "fold the shift into corner_x of every panel",
    "detector_shift_y": "fold the shift into corner_y of every panel",
}
_BAD_KEYS = ("min_x", "max_x", "min_y", "max_y", "min_fs", "max_fs", "min_ss", "max_ss", "panel")
_DIM_RE = re.compile(r"dim(\d)$")
_MASKN_RE = re.compile(r"mask([1-7])_(data|file|goodbits|badbits)$")
_VECTOR_TERM = re.compile(r"([+-]?)(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)?([xyz])")


def _valid_panel_keys() -> list[str]:
    return [*_PANEL_KEYS, "dim0..dim9", *_PANEL_SYNONYMS, *_PANEL_KEPT]


# --------------------------------------------------------------------------- parsing


class _Parser:
    """One pass over the lines; panels keep the defaults current at their first mention."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.defaults: dict[str, tuple[str, int]] = {}
        self.panels: dict[str, dict[str, tuple[str, int]]] = {}
        self.panel_line: dict[str, int] = {}
        self.explicit: dict[str, set[str]] = {}
        self.bad: dict[str, dict[str, tuple[str, int]]] = {}
        self.bad_line: dict[str, int] = {}
        self.photon_energy: tuple[float | str, int] | None = None
        self.groups: dict[str, tuple[tuple[str, ...], int]] = {}
        self.extra: dict[str, str] = {}

    def error(self, message: str, line: int | None) -> FormatError:
        return FormatError(self.source, message, line=line)

    def run(self) -> DetectorGeometry:
        for lineno, raw in enumerate(self.text.splitlines(), start=1):
            line = raw.split(";", 1)[0].strip()
            if line:
                self.line(line, lineno)
        if not self.panels:
            raise self.error("no panels defined (expected lines like 'p0/min_fs = 0')", None)
        panels = self.build_panels()
        self.check_groups({p.name for p in panels})
        regions = tuple(self.build_bad(name) for name in self.bad)
        groups = tuple((name, members) for name, (members, _) in self.groups.items())
        try:
            return DetectorGeometry(
                panels=panels,
                bad_regions=regions,
                photon_energy=None if self.photon_energy is None else self.photon_energy[0],
                rigid_groups=groups,
                extra=tuple(self.extra.items()),
                source=self.source,
            )
        except ValueError as exc:
            raise self.error(str(exc), self.blame_line(str(exc))) from None

    def check_groups(self, panel_names: set[str]) -> None:
        """Every member of every group must be defined in the file, as CrystFEL requires.

        Real files list their rigid groups before the panels, so a file cut at a panel
        boundary (which otherwise reads as a smaller detector) is caught here.
        ``rigid_group_collection_C`` lists rigid groups (``rigid_group_NAME`` -> ``NAME``);
        CrystFEL 0.10's ``group_G`` lists panels or other groups (``group_NAME``).
        """
        rigid = {k[len("rigid_group_") :] for k in self.groups
                 if k.startswith("rigid_group_") and not k.startswith("rigid_group_collection")}  # fmt: skip
        hierarchy = {k[len("group_") :] for k in self.groups if k.startswith("group_")}
        for key, (members, lineno) in self.groups.items():
            if key.startswith("rigid_group_collection"):
                known, what = rigid, "rigid group"
            elif key.startswith("group_"):
                known, what = panel_names | hierarchy, "panel or group"
            else:
                known, what = panel_names, "panel"
            unknown = [m for m in members if m not in known]
            if unknown:
                raise self.error(
                    f"{key} names {what} {unknown[0]!r}, which the file does not define "
                    f"({len(unknown)} undefined of {len(members)}; file truncated at a panel "
                    f"boundary?); every member must be a {what} of this file",
                    lineno,
                )

    def blame_line(self, message: str) -> int | None:
        """First-mention line of the first panel or bad region a message names."""
        for name, line in [*self.bad_line.items(), *self.panel_line.items()]:
            if re.search(rf"\b{re.escape(name)}\b", message):
                return line
        if self.photon_energy is not None and "photon_energy" in message:
            return self.photon_energy[1]
        return None

    def line(self, line: str, lineno: int) -> None:
        if "=" not in line:
            raise self.error(f"expected 'key = value', got {line!r} (truncated file?)", lineno)
        key, value = (s.strip() for s in line.split("=", 1))
        if not key:
            raise self.error(f"no key before '=' in {line!r}", lineno)
        if not value:
            raise self.error(f"no value for {key!r} (truncated file?)", lineno)
        if key.startswith(("rigid_group", "group_")) and "/" not in key:
            members = tuple(m.strip() for m in value.split(",") if m.strip())
            if not members:
                raise self.error(f"group {key} lists no members", lineno)
            self.groups[key] = (members, lineno)
            return
        if "/" in key:
            name, _, sub = key.partition("/")
            name, sub = name.strip(), sub.strip()
            if not name or not sub or "/" in sub:
                raise self.error(f"expected 'panel/key = value', got key {key!r}", lineno)
            if name.startswith("bad"):
                self.bad_key(name, sub, value, lineno)
            elif name.startswith(("group", "rigid_group")):
                raise self.error(
                    f"panel names must not start with 'group' or 'rigid_group': {name!r}", lineno
                )
            else:
                self.panel_key(name, sub, value, lineno)
            return
        if key in _GLOBAL_ONLY:
            self.photon_energy = (self.parse_energy(key, value, lineno), lineno)
        elif key in _GLOBAL_KEPT:
            self.extra[key] = value
        elif key in _UNSUPPORTED:
            raise self.error(f"{key} is not supported: {_UNSUPPORTED[key]}", lineno)
        else:
            key = self.check_panel_key(key, lineno, where="global key")
            self.parse_panel_value(key, value, lineno)  # fail early, at this line
            self.defaults[key] = (value, lineno)

    def check_panel_key(self, key: str, lineno: int, *, where: str) -> str:
        key = _PANEL_SYNONYMS.get(key, key)
        if key in _PANEL_KEYS or key in _PANEL_KEPT or _DIM_RE.match(key):
            return key
        if _MASKN_RE.match(key):
            raise self.error(f"{key}: hpcdiff reads one mask per panel (mask0/mask only)", lineno)
        valid = _valid_panel_keys() + ([] if "/" in where else [*_GLOBAL_ONLY, *_GLOBAL_KEPT])
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise self.error(f"unknown {where} {key!r}{hint}; valid keys: {', '.join(valid)}", lineno)

    def panel_key(self, name: str, sub: str, value: str, lineno: int) -> None:
        sub = self.check_panel_key(sub, lineno, where=f"key for panel {name}/")
        self.parse_panel_value(sub, value, lineno)
        if name not in self.panels:
            self.panels[name] = dict(self.defaults)
            self.panel_line[name] = lineno
            self.explicit[name] = set()
        entry = self.panels[name]
        if sub in self.explicit[name]:
            raise self.error(f"{name}/{sub} given twice (first at line {entry[sub][1]})", lineno)
        self.explicit[name].add(sub)
        entry[sub] = (value, lineno)

    def bad_key(self, name: str, sub: str, value: str, lineno: int) -> None:
        if sub not in _BAD_KEYS:
            close = difflib.get_close_matches(sub, _BAD_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.error(
                f"unknown bad-region key {sub!r}{hint}; valid: {', '.join(_BAD_KEYS)}", lineno
            )
        entry = self.bad.setdefault(name, {})
        self.bad_line.setdefault(name, lineno)
        if sub in entry:
            raise self.error(f"{name}/{sub} given twice (first at line {entry[sub][1]})", lineno)
        entry[sub] = (value, lineno)

    # ---- values

    def parse_int(self, key: str, value: str, lineno: int) -> int:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or not number.is_integer():
            raise self.error(f"{key} must be an integer, got {value!r}", lineno)
        return int(number)

    def parse_float(self, key: str, value: str, lineno: int) -> float:
        try:
            number = float(value)
        except ValueError:
            raise self.error(f"{key} must be a number, got {value!r}", lineno) from None
        if math.isnan(number):
            raise self.error(f"{key} must be a number, got {value!r}", lineno)
        return number

    def parse_vector(self, key: str, value: str, lineno: int) -> Vector:
        compact = value.replace(" ", "").replace("\t", "")
        pos, comps = 0, {}
        for m in _VECTOR_TERM.finditer(compact):
            if m.start() != pos or (pos > 0 and not m.group(1)):
                break
            axis = m.group(3)
            if axis in comps:
                raise self.error(f"{key}: {axis} given twice in {value!r}", lineno)
            coeff = float(m.group(2)) if m.group(2) else 1.0
            comps[axis] = -coeff if m.group(1) == "-" else coeff
            pos = m.end()
        if pos != len(compact) or not comps:
            raise self.error(
                f"{key}: cannot read vector {value!r}; expected terms like "
                "'+0.004806x +0.999989y' (optionally with a z term)",
                lineno,
            )
        vec = (comps.get("x", 0.0), comps.get("y", 0.0), comps.get("z", 0.0))
        if vec == (0.0, 0.0, 0.0):
            raise self.error(f"{key}: {value!r} is a zero vector", lineno)
        return vec

    def parse_clen(self, value: str, lineno: int) -> float | str:
        tokens = value.split()
        unit = tokens[1] if len(tokens) == 2 else None
        if len(tokens) > 2 or unit not in (None, "m", "mm"):
            raise self.error(
                f"clen must be a number or an HDF5 path, optionally followed by 'm' or 'mm'; "
                f"got {value!r}",
                lineno,
            )
        try:
            number = float(tokens[0])
        except ValueError:
            if not tokens[0].startswith("/"):
                raise self.error(
                    f"clen must be a number (metres) or an HDF5 path starting with '/', "
                    f"got {value!r}",
                    lineno,
                ) from None
            if unit == "m":
                raise self.error(
                    "clen from a file must be in mm (hpcdiff reads it as CrystFEL's default)",
                    lineno,
                ) from None
            return tokens[0]
        if not math.isfinite(number):
            raise self.error(f"clen must be finite, got {value!r}", lineno)
        return number / 1000.0 if unit == "mm" else number

    def parse_energy(self, key: str, value: str, lineno: int) -> float | str:
        tokens = value.split()
        units = {"photon_energy": {None: 1.0, "eV": 1.0, "keV": 1000.0}, "wavelength": {}}
        if len(tokens) > 2:
            raise self.error(f"{key}: expected 'number [unit]' or a path, got {value!r}", lineno)
        unit = tokens[1] if len(tokens) == 2 else None
        try:
            number = float(tokens[0])
        except ValueError:
            if key == "photon_energy" and tokens[0].startswith("/") and unit in (None, "eV"):
                return tokens[0]
            raise self.error(
                f"{key} must be a number or (photon_energy only) an HDF5 path in eV, got {value!r}",
                lineno,
            ) from None
        if not (math.isfinite(number) and number > 0):
            raise self.error(f"{key} must be positive, got {value!r}", lineno)
        if key == "wavelength":
            scale = {None: 1.0, "m": 1.0, "A": 1e-10}
            if unit not in scale:
                raise self.error(f"wavelength unit must be m or A, got {unit!r}", lineno)
            return HC_EV_M / (number * scale[unit])
        if unit not in units["photon_energy"]:
            raise self.error(f"photon_energy unit must be eV or keV, got {unit!r}", lineno)
        return number * units["photon_energy"][unit]

    def parse_panel_value(self, key: str, value: str, lineno: int) -> Any:
        """The value of panel key ``key``: int, float, 3-vector, dim entry or string, by key."""
        if key in ("min_fs", "max_fs", "min_ss", "max_ss"):
            number = self.parse_int(key, value, lineno)
            if number < 0:
                raise self.error(f"{key} must be >= 0, got {value!r}", lineno)
            return number
        if key in ("fs", "ss"):
            return self.parse_vector(key, value, lineno)
        if key in ("corner_x", "corner_y", "coffset", "max_adu", "adu_per_eV", "adu_per_photon"):
            real = self.parse_float(key, value, lineno)
            if key != "max_adu" and not math.isfinite(real):
                raise self.error(f"{key} must be finite, got {value!r}", lineno)
            return real
        if key == "res":
            real = self.parse_float(key, value, lineno)
            if not (math.isfinite(real) and real > 0):
                raise self.error(f"res must be positive pixels per metre, got {value!r}", lineno)
            return real
        if key == "clen":
            return self.parse_clen(value, lineno)
        if key in ("mask_good", "mask_bad"):
            try:
                return int(value, 0)
            except ValueError:
                raise self.error(
                    f"{key} must be an integer bit mask such as 0x0000, got {value!r}", lineno
                ) from None
        if key == "no_index":
            low = value.lower()
            if low in ("true", "false"):
                return low == "true"
            try:
                return int(value) != 0
            except ValueError:
                raise self.error(
                    f"no_index must be 0, 1, true or false, got {value!r}", lineno
                ) from None
        if _DIM_RE.match(key):
            if value in ("%", "ss", "fs"):
                return value
            if value.isdigit():
                return int(value)
            raise self.error(
                f"{key} must be '%', 'ss', 'fs' or a non-negative integer, got {value!r}", lineno
            )
        return value  # data, mask, mask_file and kept keys: strings

    # ---- building

    def build_panels(self) -> tuple[Panel, ...]:
        built: list[dict[str, Any]] = []
        for name, entry in self.panels.items():
            first = self.panel_line[name]
            missing = [k for k in _REQUIRED if k not in entry]
            if missing:
                raise self.error(
                    f"panel {name} (first mentioned here) has no {', '.join(missing)}; every "
                    f"panel needs {', '.join(_REQUIRED)} (truncated file?)",
                    first,
                )
            v = {k: self.parse_panel_value(k, val, ln) for k, (val, ln) in entry.items()}
            dims = self.build_dims(name, entry)
            built.append(
                dict(
                    name=name,
                    min_fs=v["min_fs"],
                    max_fs=v["max_fs"],
                    min_ss=v["min_ss"],
                    max_ss=v["max_ss"],
                    fs=v["fs"],
                    ss=v["ss"],
                    corner_x=v["corner_x"],
                    corner_y=v["corner_y"],
                    res=v["res"],
                    coffset_m=v.get("coffset", 0.0),
                    clen=v.get("clen"),
                    adu_per_ev=v.get("adu_per_eV"),
                    adu_per_photon=v.get("adu_per_photon"),
                    max_adu=v.get("max_adu", math.inf),
                    data=v.get("data"),
                    dim_structure=dims,
                    mask=v.get("mask"),
                    mask_file=v.get("mask_file"),
                    mask_good=v.get("mask_good", 0),
                    mask_bad=v.get("mask_bad", 0),
                    no_index=v.get("no_index", False),
                    extra=tuple((k, entry[k][0]) for k in _PANEL_KEPT if k in entry),
                )
            )
        self.fold_fixed_index(built)
        panels = []
        for kwargs in built:
            try:
                panels.append(Panel(**kwargs))
            except ValueError as exc:
                raise self.error(str(exc), self.panel_line[kwargs["name"]]) from None
        datas = [p.data for p in panels]
        odd = next((p for p in panels if p.data != datas[0]), None)
        if odd is not None:
            raise self.error(
                f"panel {odd.name} reads {odd.data!r} but panel {panels[0].name} reads "
                f"{datas[0]!r}; hpcdiff needs all panels in one data block",
                self.panel_line[odd.name],
            )
        return tuple(panels)

    def build_dims(self, name: str, entry: dict[str, tuple[str, int]]) -> tuple[DimEntry, ...]:
        dims = {int(m.group(1)): (val, ln) for k, (val, ln) in entry.items()
                if (m := _DIM_RE.match(k))}  # fmt: skip
        if not dims:
            return ("ss", "fs")
        line = max(ln for _, ln in dims.values())
        if sorted(dims) != list(range(len(dims))):
            raise self.error(
                f"panel {name}: dims {sorted(dims)} must be numbered 0, 1, 2, ... without gaps",
                line,
            )
        structure = tuple(self.parse_panel_value(f"dim{i}", *dims[i]) for i in sorted(dims))
        if structure.count("ss") != 1 or structure.count("fs") != 1:
            raise self.error(f"panel {name}: dims {structure} need exactly one ss and one fs", line)
        if structure.index("fs") < structure.index("ss"):
            raise self.error(f"panel {name}: dims {structure} put fs before ss", line)
        if structure.count("%") > 1:
            raise self.error(f"panel {name}: dims {structure} have more than one '%'", line)
        if sum(isinstance(d, int) for d in structure) > 1:
            raise self.error(
                f"panel {name}: dims {structure} have more than one fixed index; hpcdiff "
                "supports one (the panel index)",
                line,
            )
        fixed = [i for i, d in enumerate(structure) if isinstance(d, int)]
        if fixed and fixed[0] > structure.index("ss"):
            raise self.error(
                f"panel {name}: dims {structure} put the fixed index after ss; hpcdiff folds "
                "it into the slow-scan axis, so it must come before ss",
                line,
            )
        return structure

    def fold_fixed_index(self, built: list[dict[str, Any]]) -> None:
        """Fold a fixed panel index into the slow-scan axis (psana-style layouts)."""
        fixed = [any(isinstance(d, int) for d in b["dim_structure"]) for b in built]
        if not any(fixed):
            return
        if not all(fixed):
            name = built[fixed.index(False)]["name"]
            raise self.error(
                f"panel {name} has no fixed index dim while other panels do; give every "
                "panel the same dims layout",
                self.panel_line[name],
            )
        block_ss = max(b["max_ss"] for b in built) + 1
        for b in built:
            index = next(d for d in b["dim_structure"] if isinstance(d, int))
            offset = index * block_ss
            b["min_ss"] += offset
            b["max_ss"] += offset
            b["slab_ss_offset"] = offset

    def build_bad(self, name: str) -> BadRegion:
        entry = self.bad[name]
        values: dict[str, Any] = {}
        for key, (value, ln) in entry.items():
            if key == "panel":
                values[key] = value
            elif key in ("min_fs", "max_fs", "min_ss", "max_ss"):
                values[key] = self.parse_int(f"{name}/{key}", value, ln)
            else:
                values[key] = self.parse_float(f"{name}/{key}", value, ln)
        try:
            return BadRegion(name=name, **values)
        except ValueError as exc:
            raise self.error(str(exc), self.bad_line[name]) from None


def parse_geom(text: str, *, source: str = "<string>") -> DetectorGeometry:
    """Parse the text of a CrystFEL geometry file.

    Parameters
    ----------
    text
        The whole file.
    source
        Name used in error messages and kept as ``DetectorGeometry.source``.

    Raises
    ------
    FormatError
        Naming ``source`` and the line: unknown keys, unparsable values, panels missing
        required keys, overlapping panels, impossible ranges.
    """
    return _Parser(text, source).run()


def read_geom(path: str | Path) -> DetectorGeometry:
    """Read a CrystFEL ``.geom`` file (see :func:`parse_geom`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(path, "geometry file not found") from None
    except UnicodeDecodeError as exc:
        raise FormatError(path, f"not a text geometry file ({exc.reason})") from None
    return parse_geom(text, source=str(path))


# --------------------------------------------------------------------------- writing


def _num(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _vector(vec: Vector) -> str:
    """``+0.0x -1.0y +0.0z``: every component, as CrystFEL and EXtra-geom write them.

    Readers that start from a default vector and only overwrite the components given
    (OM's cfelpyutils starts ``fs`` from ``(1, 0, 0)``) need all three; a one-term
    ``fs = -1.0y`` would keep their default ``x`` component and misplace the panel.
    """
    return " ".join(
        f"{'+' if c >= 0 else '-'}{_num(abs(c))}{ax}" for c, ax in zip(vec, "xyz", strict=True)
    )


def _panel_items(p: Panel) -> list[tuple[str, str]]:
    """Every key of a panel, as text, in CrystFEL's spelling (defaults left out)."""
    items = [
        ("min_fs", str(p.min_fs)),
        ("min_ss", str(p.min_ss - p.slab_ss_offset)),
        ("max_fs", str(p.max_fs)),
        ("max_ss", str(p.max_ss - p.slab_ss_offset)),
        ("fs", _vector(p.fs)),
        ("ss", _vector(p.ss)),
        ("corner_x", _num(p.corner_x)),
        ("corner_y", _num(p.corner_y)),
        ("res", _num(p.res)),
    ]
    if p.clen is not None:
        items.append(("clen", p.clen if isinstance(p.clen, str) else _num(p.clen)))
    if p.coffset_m != 0.0:
        items.append(("coffset", _num(p.coffset_m)))
    if p.adu_per_ev is not None:
        items.append(("adu_per_eV", _num(p.adu_per_ev)))
    if p.adu_per_photon is not None:
        items.append(("adu_per_photon", _num(p.adu_per_photon)))
    if p.max_adu != math.inf:
        items.append(("max_adu", _num(p.max_adu)))
    if p.data is not None:
        items.append(("data", p.data))
    if p.dim_structure != ("ss", "fs"):
        items.extend((f"dim{i}", str(d)) for i, d in enumerate(p.dim_structure))
    if p.mask is not None:
        items.append(("mask", p.mask))
    if p.mask_file is not None:
        items.append(("mask_file", p.mask_file))
    if p.mask_good:
        items.append(("mask_good", f"0x{p.mask_good:x}"))
    if p.mask_bad:
        items.append(("mask_bad", f"0x{p.mask_bad:x}"))
    if p.no_index:
        items.append(("no_index", "1"))
    items.extend(p.extra)
    return items


#: Keys written once at the top when all panels share the value.
_SHAREABLE = ("res", "clen", "coffset", "adu_per_eV", "adu_per_photon", "max_adu", "data",
              "mask", "mask_file", "mask_good", "mask_bad")  # fmt: skip


def format_geom(geom: DetectorGeometry) -> str:
    """CrystFEL geometry text for ``geom``; :func:`parse_geom` of it gives an equal geometry.

    Values all panels share are written once at the top (they are defaults for the panels
    that follow); floats are written with ``repr`` so they survive the round trip exactly.
    """
    from hpcdiff import __version__

    per_panel = [dict(_panel_items(p)) for p in geom.panels]
    lines = [f"; CrystFEL geometry written by hpcdiff {__version__}", ""]
    if geom.photon_energy is not None:
        pe = geom.photon_energy
        lines.append(f"photon_energy = {pe if isinstance(pe, str) else _num(pe)}")
    lines.extend(f"{k} = {v}" for k, v in geom.extra)
    shared: dict[str, str] = {}
    for key in _SHAREABLE:
        values = {d.get(key) for d in per_panel}
        value = values.pop() if len(values) == 1 else None
        if value is not None:
            shared[key] = value
    dims = {tuple((k, v) for k, v in d.items() if _DIM_RE.match(k)) for d in per_panel}
    if len(dims) == 1:
        shared.update(dims.pop())
    lines.extend(f"{k} = {v}" for k, v in shared.items())
    for p, items in zip(geom.panels, per_panel, strict=True):
        lines.append("")
        lines.extend(f"{p.name}/{k} = {v}" for k, v in items.items() if k not in shared)
    for region in geom.bad_regions:
        lines.append("")
        keys = ("min_fs", "max_fs", "min_ss", "max_ss") if region.is_fsss else (
            "min_x", "max_x", "min_y", "max_y")  # fmt: skip
        for key in keys:
            value = getattr(region, key)
            lines.append(f"{region.name}/{key} = {value if region.is_fsss else _num(value)}")
        if region.panel is not None:
            lines.append(f"{region.name}/panel = {region.panel}")
    if geom.rigid_groups:
        lines.append("")
        lines.extend(f"{name} = {','.join(members)}" for name, members in geom.rigid_groups)
    return "\n".join(lines) + "\n"


def write_geom(geom: DetectorGeometry, path: str | Path, *, force: bool = False) -> Path:
    """Write ``geom`` as a CrystFEL ``.geom`` file atomically (never over a file unless ``force``)."""
    from hpcdiff.io.outputs import atomic_path

    with atomic_path(path, force=force) as tmp:
        tmp.write_text(format_geom(geom), encoding="utf-8")
    return Path(path)

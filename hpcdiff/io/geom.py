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
    "PanelMask",
    "PixelFlag",
    "SaturationMap",
    "length_spec",
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
class PanelMask:
    """One of CrystFEL's bad-pixel masks of a panel (``maskN_data`` ... ``maskN_badbits``).

    A pixel is bad unless every bit of ``goodbits`` is set in its mask value, and bad when
    any bit of ``badbits`` is set (CrystFEL's rule).

    Parameters
    ----------
    number
        ``N`` of ``maskN_*``, 0..7 (0 is also spelled ``mask``, ``mask_file``, ...).
    data
        HDF5 dataset (``/entry_1/data_1/mask``), laid out as the panel's data (the
        frame axis may be absent: a static mask).
    file
        HDF5 file holding it (absolute, or relative to the working directory), or
        ``None``: the frame file.
    goodbits, badbits
        Bit masks.
    line
        Geometry-file line of ``maskN_data`` (for error messages; not compared).
    """

    number: int
    data: str
    file: str | None = None
    goodbits: int = 0
    badbits: int = 0
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SaturationMap:
    """A panel's per-pixel saturation values (``saturation_map``, ``saturation_map_file``).

    ``data`` is an HDF5 dataset laid out as the panel's data (frame axis optional), ADU;
    ``file`` as for :class:`PanelMask`; ``line`` the geometry line (not compared).
    """

    data: str
    file: str | None = None
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PixelFlag:
    """``flag_lessthan``/``flag_morethan``/``flag_equal``: raw values that mark a pixel bad.

    ``kind`` is ``"lessthan"`` (bad when ``raw < value``), ``"morethan"`` (``raw > value``)
    or ``"equal"`` (``rint(raw) == value``); the comparisons are strict, as CrystFEL's.
    """

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in ("lessthan", "morethan", "equal"):
            raise ValueError(f"flag kind must be lessthan, morethan or equal, got {self.kind!r}")
        if math.isnan(self.value):
            raise ValueError("a flag value must be a number, got NaN")


def length_spec(spec: float | str) -> tuple[float | None, str | None, float]:
    """Split a CrystFEL length (``detector_shift_x``): ``(metres, None, 1)`` for a number,
    ``(None, path, scale_to_m)`` for an HDF5 path (``/x/shift mm`` -> scale 1e-3; no unit:
    metres, as CrystFEL)."""
    if not isinstance(spec, str):
        return float(spec), None, 1.0
    path, _, unit = spec.partition(" ")
    return None, path, {"": 1.0, "m": 1.0, "mm": 1e-3}[unit.strip()]


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
    masks
        Bad-pixel masks (CrystFEL 0.10's ``mask0_data`` .. ``mask7_data`` with their
        ``_file``, ``_goodbits``, ``_badbits``; ``mask``, ``mask_file``, ``mask_good`` and
        ``mask_bad`` are mask 0), at most one per number.  The properties ``mask``,
        ``mask_file``, ``mask_good`` and ``mask_bad`` read mask 0.
    no_index
        True for a panel to ignore completely.
    slab_ss_offset
        Rows added to the file's slow-scan index to get the slab's (non-zero only for
        layouts with a fixed panel index).
    extra
        CrystFEL keys kept verbatim but not used (``(key, value)`` pairs).
    flags
        ``flag_lessthan`` / ``flag_morethan`` / ``flag_equal`` values: raw pixel values
        that mark a pixel bad in that frame (:class:`PixelFlag`).
    mask_edge_pixels
        Outermost pixel rows and columns of the panel marked bad (``>= 0``).
    saturation_map
        Per-pixel saturation values (:class:`SaturationMap`), or ``None``.
    detector_shift_m
        ``(x, y)`` shift of this panel in metres (``p0/detector_shift_x``: an hpcdiff
        extension; CrystFEL reads only the top-level ``detector_shift_x/y``, which is
        :attr:`DetectorGeometry.detector_shift` and adds to this).
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
    masks: tuple[PanelMask, ...] = ()
    no_index: bool = False
    slab_ss_offset: int = 0
    extra: tuple[tuple[str, str], ...] = ()
    flags: tuple[PixelFlag, ...] = ()
    mask_edge_pixels: int = 0
    saturation_map: SaturationMap | None = None
    detector_shift_m: tuple[float, float] = (0.0, 0.0)

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
        numbers = [m.number for m in self.masks]
        if any(not 0 <= n <= 7 for n in numbers) or len(set(numbers)) != len(numbers):
            problems.append(f"mask numbers must be distinct and within 0..7, got {numbers}")
        if not (isinstance(self.mask_edge_pixels, int | np.integer) and self.mask_edge_pixels >= 0):
            problems.append(
                f"mask_edge_pixels must be an integer >= 0, got {self.mask_edge_pixels!r}"
            )
        if len(self.detector_shift_m) != 2 or not all(
            math.isfinite(v) for v in self.detector_shift_m
        ):
            problems.append(
                f"detector_shift_m must be two finite metres, got {self.detector_shift_m!r}"
            )
        if problems:
            raise ValueError(f"panel {self.name}: " + "; ".join(problems))

    def _mask0(self) -> PanelMask | None:
        return next((m for m in self.masks if m.number == 0), None)

    @property
    def mask(self) -> str | None:
        """Dataset of mask 0 (``mask`` / ``mask0_data``), or ``None``."""
        m = self._mask0()
        return None if m is None else m.data

    @property
    def mask_file(self) -> str | None:
        """File of mask 0, or ``None`` (the frame file)."""
        m = self._mask0()
        return None if m is None else m.file

    @property
    def mask_good(self) -> int:
        """``goodbits`` of mask 0 (0 without one)."""
        m = self._mask0()
        return 0 if m is None else m.goodbits

    @property
    def mask_bad(self) -> int:
        """``badbits`` of mask 0 (0 without one)."""
        m = self._mask0()
        return 0 if m is None else m.badbits

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
    #: Top-level ``detector_shift_x``/``_y``: ``(x, y)``, each metres or an HDF5 path read
    #: per frame (``"/path"`` metres, ``"/path mm"``; see :func:`length_spec`); added to
    #: every panel's position.
    detector_shift: tuple[float | str, float | str] | None = None

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
        if self.detector_shift is not None:
            shift = tuple(self.detector_shift)
            if len(shift) != 2 or any(
                not isinstance(v, str) and not math.isfinite(v) for v in shift
            ):
                raise ValueError(
                    f"detector_shift must be two finite metres or paths, got {shift!r}"
                )
            object.__setattr__(self, "detector_shift", shift)

    @property
    def has_frame_shift(self) -> bool:
        """True when the top-level detector shift is read from the frame files."""
        return self.detector_shift is not None and any(
            isinstance(v, str) for v in self.detector_shift
        )

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
    "no_index",
    "mask_edge_pixels",
    "saturation_map",
    "saturation_map_file",
    "detector_shift_x",
    "detector_shift_y",
)
#: CrystFEL's older mask spellings are mask 0.
_PANEL_SYNONYMS = {
    "mask": "mask0_data",
    "mask_file": "mask0_file",
    "mask_good": "mask0_goodbits",
    "mask_bad": "mask0_badbits",
}
#: Keys that may be given several times; each adds a value (CrystFEL's flag lists).
_FLAG_KEYS = {"flag_lessthan": "lessthan", "flag_morethan": "morethan", "flag_equal": "equal"}
#: CrystFEL panel keys that hpcdiff keeps verbatim but does not use.
_PANEL_KEPT = (
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
}
_SHIFT_KEYS = ("detector_shift_x", "detector_shift_y")
_BAD_KEYS = ("min_x", "max_x", "min_y", "max_y", "min_fs", "max_fs", "min_ss", "max_ss", "panel")
_DIM_RE = re.compile(r"dim(\d)$")
_MASKN_RE = re.compile(r"mask([0-7])_(data|file|goodbits|badbits)$")
_VECTOR_TERM = re.compile(r"([+-]?)(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)?([xyz])")


def _valid_panel_keys() -> list[str]:
    return [*_PANEL_KEYS, "dim0..dim9", "mask0_data..mask7_badbits", *_PANEL_SYNONYMS,
            *_FLAG_KEYS, *_PANEL_KEPT]  # fmt: skip


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
        #: flag_* values: the defaults so far, and each panel's (defaults at its first
        #: mention, then its own), as (kind, value, line)
        self.default_flags: list[tuple[str, float, int]] = []
        self.flags: dict[str, list[tuple[str, float, int]]] = {}
        self.shift: dict[str, tuple[float | str, int]] = {}

    def error(self, message: str, line: int | None) -> FormatError:
        return FormatError(self.source, message, line=line)

    def run(self) -> DetectorGeometry:
        for lineno, raw in enumerate(self.text.splitlines(), start=1):
            line = raw.split(";", 1)[0].strip()
            if line:
                self.line(line, lineno)
        if not self.panels:
            raise self.error("no panels defined (expected lines like 'p0/min_fs = 0')", None)
        shift = None
        if self.shift:
            missing = [k for k in _SHIFT_KEYS if k not in self.shift]
            if missing:
                given = next(iter(self.shift))
                raise self.error(
                    f"{given} is given without {missing[0]}; CrystFEL needs both (give "
                    f"{missing[0]} = 0 for no shift)",
                    self.shift[given][1],
                )
            shift = (self.shift["detector_shift_x"][0], self.shift["detector_shift_y"][0])
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
                detector_shift=shift,
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
        elif key in _SHIFT_KEYS:
            if key in self.shift:
                raise self.error(f"{key} given twice (first at line {self.shift[key][1]})", lineno)
            self.shift[key] = (self.parse_length(key, value, lineno), lineno)
        elif key in _FLAG_KEYS:
            self.default_flags.append(
                (_FLAG_KEYS[key], self.parse_float(key, value, lineno), lineno)
            )
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
        if key in _PANEL_KEYS or key in _PANEL_KEPT or _DIM_RE.match(key) or _MASKN_RE.match(key):
            return key
        if re.match(r"mask\d+_", key):
            raise self.error(
                f"{key}: CrystFEL has masks 0..7 (mask0_data .. mask7_data); got {key!r}", lineno
            )
        valid = _valid_panel_keys() + ([] if "/" in where else [*_GLOBAL_ONLY, *_GLOBAL_KEPT])
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise self.error(f"unknown {where} {key!r}{hint}; valid keys: {', '.join(valid)}", lineno)

    def panel_key(self, name: str, sub: str, value: str, lineno: int) -> None:
        flag = _FLAG_KEYS.get(sub)
        if flag is None:
            sub = self.check_panel_key(sub, lineno, where=f"key for panel {name}/")
            self.parse_panel_value(sub, value, lineno)
        if name not in self.panels:
            self.panels[name] = dict(self.defaults)
            self.panel_line[name] = lineno
            self.explicit[name] = set()
            self.flags[name] = list(self.default_flags)
        if flag is not None:
            self.flags[name].append(
                (flag, self.parse_float(f"{name}/{sub}", value, lineno), lineno)
            )
            return
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

    def parse_length(self, key: str, value: str, lineno: int) -> float | str:
        """CrystFEL's length: ``nnn [m|mm]`` (metres without a unit), or an HDF5 path with
        an optional unit (kept as ``"/path"`` or ``"/path mm"``; see :func:`length_spec`)."""
        tokens = value.split()
        unit = tokens[1] if len(tokens) == 2 else None
        if len(tokens) > 2 or unit not in (None, "m", "mm"):
            raise self.error(
                f"{key} must be a length 'number [m|mm]' or an HDF5 path [m|mm], got {value!r}",
                lineno,
            )
        try:
            number = float(tokens[0])
        except ValueError:
            if not tokens[0].startswith("/"):
                raise self.error(
                    f"{key} must be a number (metres unless 'mm' follows) or an HDF5 path "
                    f"starting with '/', got {value!r}",
                    lineno,
                ) from None
            return tokens[0] if unit is None else f"{tokens[0]} {unit}"
        if not math.isfinite(number):
            raise self.error(f"{key} must be finite, got {value!r}", lineno)
        return number * (1e-3 if unit == "mm" else 1.0)

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
        if key.endswith(("_goodbits", "_badbits")):
            try:
                bits = int(value, 0)
            except ValueError:
                bits = -1
            if bits < 0:
                raise self.error(
                    f"{key} must be a non-negative integer bit mask such as 0xffff, got {value!r}",
                    lineno,
                )
            return bits
        if key.endswith("_data") or key == "saturation_map":
            if not value.startswith("/") or " " in value:
                raise self.error(
                    f"{key} must be an HDF5 dataset path starting with '/', got {value!r}", lineno
                )
            return value
        if key == "mask_edge_pixels":
            edge = self.parse_int(key, value, lineno)
            if edge < 0:
                raise self.error(f"mask_edge_pixels must be >= 0, got {value!r}", lineno)
            return edge
        if key in _SHIFT_KEYS:
            shift = self.parse_length(key, value, lineno)
            if isinstance(shift, str):
                raise self.error(
                    f"a panel's {key} must be a number (m or mm); a per-frame shift read from "
                    f"the files is top-level only ('{key} = {value}' without a panel name)",
                    lineno,
                )
            return shift
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
                    masks=self.build_masks(entry, v),
                    no_index=v.get("no_index", False),
                    extra=tuple((k, entry[k][0]) for k in _PANEL_KEPT if k in entry),
                    flags=tuple(PixelFlag(k, val) for k, val, _ in self.flags[name]),
                    mask_edge_pixels=v.get("mask_edge_pixels", 0),
                    saturation_map=(
                        SaturationMap(
                            v["saturation_map"],
                            v.get("saturation_map_file"),
                            line=entry["saturation_map"][1],
                        )
                        if "saturation_map" in v
                        else None
                    ),
                    detector_shift_m=(
                        v.get("detector_shift_x", 0.0),
                        v.get("detector_shift_y", 0.0),
                    ),
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

    @staticmethod
    def build_masks(entry: dict[str, tuple[str, int]], v: dict[str, Any]) -> tuple[PanelMask, ...]:
        """The panel's masks 0..7; a number with bits or a file but no ``_data`` is no mask
        (as CrystFEL, which skips it)."""
        masks = []
        for n in range(8):
            key = f"mask{n}_data"
            if key in v:
                masks.append(
                    PanelMask(
                        n,
                        v[key],
                        v.get(f"mask{n}_file"),
                        v.get(f"mask{n}_goodbits", 0),
                        v.get(f"mask{n}_badbits", 0),
                        line=entry[key][1],
                    )
                )
        return tuple(masks)

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
    for m in p.masks:
        # mask 0 in the older spelling, which CrystFEL 0.9 and OM's reader also read
        names = (
            ("mask", "mask_file", "mask_good", "mask_bad")
            if m.number == 0
            else tuple(f"mask{m.number}_{k}" for k in ("data", "file", "goodbits", "badbits"))
        )
        items.append((names[0], m.data))
        if m.file is not None:
            items.append((names[1], m.file))
        items.append((names[2], f"0x{m.goodbits:x}"))
        items.append((names[3], f"0x{m.badbits:x}"))
    if p.mask_edge_pixels:
        items.append(("mask_edge_pixels", str(p.mask_edge_pixels)))
    if p.saturation_map is not None:
        items.append(("saturation_map", p.saturation_map.data))
        if p.saturation_map.file is not None:
            items.append(("saturation_map_file", p.saturation_map.file))
    for key, value in zip(_SHIFT_KEYS, p.detector_shift_m, strict=True):
        if value != 0.0:
            items.append((key, f"{_num(value)} m"))
    if p.no_index:
        items.append(("no_index", "1"))
    items.extend(p.extra)
    return items


#: Keys written once at the top when all panels share the value.
_SHAREABLE = ("res", "clen", "coffset", "adu_per_eV", "adu_per_photon", "max_adu", "data",
              "mask", "mask_file", "mask_good", "mask_bad",
              *(f"mask{n}_{k}" for n in range(1, 8) for k in ("data", "file", "goodbits", "badbits")),
              "mask_edge_pixels", "saturation_map", "saturation_map_file")  # fmt: skip


def _flag_lines(flags: tuple[PixelFlag, ...], prefix: str = "") -> list[str]:
    return [f"{prefix}flag_{f.kind} = {_num(f.value)}" for f in flags]


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
    if geom.detector_shift is not None:
        for key, spec in zip(_SHIFT_KEYS, geom.detector_shift, strict=True):
            lines.append(f"{key} = {spec if isinstance(spec, str) else _num(spec) + ' m'}")
    all_flags = {p.flags for p in geom.panels}
    shared_flags = all_flags.pop() if len(all_flags) == 1 else ()
    lines.extend(_flag_lines(shared_flags))
    shared: dict[str, str] = {}
    for key in _SHAREABLE:
        values = {d.get(key) for d in per_panel}
        common = values.pop() if len(values) == 1 else None
        if common is not None:
            shared[key] = common
    dims = {tuple((k, v) for k, v in d.items() if _DIM_RE.match(k)) for d in per_panel}
    if len(dims) == 1:
        shared.update(dims.pop())
    lines.extend(f"{k} = {v}" for k, v in shared.items())
    for p, items in zip(geom.panels, per_panel, strict=True):
        lines.append("")
        lines.extend(f"{p.name}/{k} = {v}" for k, v in items.items() if k not in shared)
        if p.flags != shared_flags:
            lines.extend(_flag_lines(p.flags, f"{p.name}/"))
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

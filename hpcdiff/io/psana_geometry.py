"""psana geometry-def files (``geometry-def-cspad.data``): CSPAD pixel positions.

A psana geometry file is a table of objects, each placed in its parent's frame::

    PARENT IND  OBJECT IND  X0[um] Y0[um] Z0[um]  ROT-Z ROT-Y ROT-X  TILT-Z TILT-Y TILT-X

Objects form a tree (``IP -> CSPAD:V2 -> SENS2X1:V1`` or ``CSPAD:V1 -> QUAD:V1 ->
SENS2X1:V1``); the leaves are CSPAD 2x1 sensors of 185 x 388 pixels of 109.92 um whose two
middle columns (193, 194) are 274.8 um wide.  A child's coordinates are rotated about z,
then y, then x by ``rot + tilt`` degrees and shifted by ``(x0, y0, z0)`` into its parent's
frame (psana's ``GeometryObject.transform_geo_coord_arrays``).

Segments are numbered depth-first with children in index order, as psana's data array
``(32, 185, 388)`` is; :func:`psana_to_slab` lays them out as the CrystFEL/Cheetah slab
``(8 x 185, 4 x 388)`` (quadrant ``q`` = segments ``8 q .. 8 q + 7``).

psana's frame is not CrystFEL's: CrystFEL ``x = -psana x``, ``y = psana y`` (as psgeom
converts Cheetah pixel maps); :meth:`PsanaGeometry.crystfel_slab_positions_m` applies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcdiff.errors import FormatError

__all__ = [
    "CSPAD_2X1_SHAPE",
    "GeometryObject",
    "PsanaGeometry",
    "cspad_2x1_pixel_coords_um",
    "psana_to_slab",
    "read_psana_geometry",
]

#: (rows, cols) of one CSPAD 2x1 sensor.
CSPAD_2X1_SHAPE = (185, 388)
_PIXEL_UM = 109.92
_WIDE_UM = 274.8
_SEGMENT_TYPES = ("SENS2X1:V1",)


@dataclass(frozen=True)
class GeometryObject:
    """One line of a psana geometry file: ``name:index`` placed in ``parent:parent_index``."""

    parent: str
    parent_index: int
    name: str
    index: int
    x0_um: float
    y0_um: float
    z0_um: float
    rot_z_deg: float
    rot_y_deg: float
    rot_x_deg: float
    tilt_z_deg: float
    tilt_y_deg: float
    tilt_x_deg: float
    line: int

    def to_parent(self, xyz: np.ndarray) -> np.ndarray:
        """Coordinates ``(..., 3)`` um in this object's frame -> its parent's frame."""
        az, ay, ax = (
            math.radians(self.rot_z_deg + self.tilt_z_deg),
            math.radians(self.rot_y_deg + self.tilt_y_deg),
            math.radians(self.rot_x_deg + self.tilt_x_deg),
        )
        x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
        x1, y1 = _rotate(x, y, az)  # about z
        z2, x2 = _rotate(z, x1, ay)  # about y
        y3, z3 = _rotate(y1, z2, ax)  # about x
        return np.stack([x2 + self.x0_um, y3 + self.y0_um, z3 + self.z0_um], axis=-1)


def _rotate(a: np.ndarray, b: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    return a * c - b * s, b * c + a * s


def cspad_2x1_pixel_coords_um() -> np.ndarray:
    """Pixel centres of a CSPAD 2x1 in its own frame, ``(185, 388, 3)`` float64, um.

    x runs along the 388 columns (two ASICs of 194, the middle columns 274.8 um wide), y
    along the 185 rows, decreasing with row; the origin is the sensor centre.
    """
    rows, cols = CSPAD_2X1_SHAPE
    half = np.arange(cols // 2) * _PIXEL_UM + _WIDE_UM - _PIXEL_UM / 2
    half[0] = _WIDE_UM / 2
    x = np.concatenate([-half[::-1], half])
    y = -np.arange(rows) * _PIXEL_UM
    y -= y[-1] / 2
    out = np.zeros((rows, cols, 3))
    out[..., 0] = x[None, :]
    out[..., 1] = y[:, None]
    return out


@dataclass(frozen=True)
class PsanaGeometry:
    """The object tree of a psana geometry file."""

    objects: tuple[GeometryObject, ...]
    source: str

    def _children(self, name: str, index: int) -> list[GeometryObject]:
        kids = [o for o in self.objects if (o.parent, o.parent_index) == (name, index)]
        return sorted(kids, key=lambda o: (o.index, o.name))

    @property
    def top(self) -> tuple[str, int]:
        """The root object (``IP 0`` or the detector when there is no IP line)."""
        placed = {(o.name, o.index) for o in self.objects}
        roots = sorted({(o.parent, o.parent_index) for o in self.objects} - placed)
        if len(roots) != 1:
            raise FormatError(self.source, f"expected one root object, found {roots}")
        return roots[0]

    def segments(self) -> list[list[GeometryObject]]:
        """Leaf-to-root chains of every sensor, in psana's data order (depth first)."""
        chains: list[list[GeometryObject]] = []

        def walk(name: str, index: int, chain: list[GeometryObject]) -> None:
            for kid in self._children(name, index):
                path = [kid, *chain]
                if kid.name in _SEGMENT_TYPES:
                    chains.append(path)
                elif self._children(kid.name, kid.index):
                    walk(kid.name, kid.index, path)
                else:
                    raise FormatError(
                        self.source,
                        f"object {kid.name} {kid.index} has no children and is not a supported "
                        f"sensor ({', '.join(_SEGMENT_TYPES)})",
                        line=kid.line,
                    )

        walk(*self.top, [])
        if not chains:
            raise FormatError(self.source, "no sensors (SENS2X1:V1) found")
        return chains

    def pixel_positions_um(self) -> np.ndarray:
        """Pixel centres in the root frame, ``(n_segments, 185, 388, 3)`` float64, um."""
        local = cspad_2x1_pixel_coords_um()
        out = []
        for chain in self.segments():
            xyz = local
            for obj in chain:
                xyz = obj.to_parent(xyz)
            out.append(xyz)
        return np.stack(out)

    def crystfel_slab_positions_m(self) -> np.ndarray:
        """Pixel centres in CrystFEL's lab frame and Cheetah slab layout.

        Returns
        -------
        np.ndarray
            ``(1480, 1552, 3)`` float64, metres (x flipped from psana's frame; z from the
            root, e.g. the interaction point when the file has an ``IP`` line).
        """
        xyz = psana_to_slab(self.pixel_positions_um()) * 1e-6
        xyz[..., 0] *= -1.0
        return xyz


def read_psana_geometry(path: str | Path) -> PsanaGeometry:
    """Read a psana geometry-def file.

    Raises
    ------
    FormatError
        Naming the file and line for a row without 13 fields, numbers that do not parse,
        an object placed twice, or a file with no objects.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(path, "psana geometry file not found") from None
    objects: list[GeometryObject] = []
    seen: dict[tuple[str, int, str, int], int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 13:
            raise FormatError(
                path,
                f"expected 13 fields (PARENT IND OBJECT IND X0 Y0 Z0 ROT-Z ROT-Y ROT-X TILT-Z "
                f"TILT-Y TILT-X), got {len(fields)}",
                line=lineno,
            )
        try:
            numbers = [float(v) for v in fields[4:]]
            parent_index, index = int(fields[1]), int(fields[3])
        except ValueError:
            raise FormatError(path, f"cannot read numbers in {line!r}", line=lineno) from None
        key = (fields[0], parent_index, fields[2], index)
        if key in seen:
            raise FormatError(
                path,
                f"{fields[2]} {index} placed twice in {fields[0]} {parent_index} "
                f"(first at line {seen[key]})",
                line=lineno,
            )
        seen[key] = lineno
        objects.append(
            GeometryObject(
                fields[0],
                parent_index,
                fields[2],
                index,
                x0_um=numbers[0],
                y0_um=numbers[1],
                z0_um=numbers[2],
                rot_z_deg=numbers[3],
                rot_y_deg=numbers[4],
                rot_x_deg=numbers[5],
                tilt_z_deg=numbers[6],
                tilt_y_deg=numbers[7],
                tilt_x_deg=numbers[8],
                line=lineno,
            )
        )
    if not objects:
        raise FormatError(path, "no geometry objects found")
    return PsanaGeometry(tuple(objects), str(path))


def psana_to_slab(per_segment: np.ndarray) -> np.ndarray:
    """psana ``(32, 185, 388, ...)`` CSPAD arrays -> Cheetah/CrystFEL slab ``(1480, 1552, ...)``.

    Segment ``8 q + s`` goes to rows ``185 s ..`` and columns ``388 q ..``.
    """
    n, rows, cols = per_segment.shape[:3]
    if (n, rows, cols) != (32, *CSPAD_2X1_SHAPE):
        raise ValueError(f"expected (32, 185, 388, ...) CSPAD segments, got {per_segment.shape}")
    rest = per_segment.shape[3:]
    grid = per_segment.reshape(4, 8, rows, cols, *rest)  # (quad, sensor, row, col)
    return np.moveaxis(grid, 0, 2).reshape(8 * rows, 4 * cols, *rest)

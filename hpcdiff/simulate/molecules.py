"""Unit-cell contents of the simulated crystal: space groups, random cells and molecules, PDB files.

A crystal's content is a set of atoms in **fractional** coordinates of its cell, with a
scattering weight each (electrons; 1 for the random molecules' equal atoms).  The simulator
Fourier transforms the whole cell content (the asymmetric unit and its symmetry copies), so
Bragg intensities follow the space group (systematic absences included) and every diffuse
model sees the same transform.

- :data:`SPACE_GROUPS`: the symmetry operations (fractional, International Tables setting)
  of the space groups random crystals are drawn in.
- :func:`random_cell`: cell lengths and angles consistent with a space group's lattice.
- :func:`random_molecule`: a compact random molecule (globular, elongated or flat) placed in
  the cell and copied by the space group.
- :func:`read_structure`: atoms, cell and space group of a PDB / mmCIF file through
  ``gemmi`` (the optional ``[sim]`` extra), imported only here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcdiff.simulate.physics import cell_matrix, random_rotation

# Symmetry operations x' = R x + t in fractional coordinates, as gemmi lists them
# (International Tables, first setting; unique axis b for the monoclinic groups).
_OPS: dict[str, tuple[str, ...]] = {
    "P1": ("x,y,z",),
    "P21": ("x,y,z", "-x,y+1/2,-z"),
    "C2": ("x,y,z", "-x,y,-z", "x+1/2,y+1/2,z", "-x+1/2,y+1/2,-z"),
    "P212121": ("x,y,z", "-x+1/2,-y,z+1/2", "x+1/2,-y+1/2,-z", "-x,y+1/2,-z+1/2"),
    "P43212": (
        "x,y,z",
        "-y+1/2,x+1/2,z+3/4",
        "-x,-y,z+1/2",
        "y+1/2,-x+1/2,z+1/4",
        "x+1/2,-y+1/2,-z+1/4",
        "-y,-x,-z+1/2",
        "-x+1/2,y+1/2,-z+3/4",
        "y,x,-z",
    ),
}

HERMANN_MAUGUIN: dict[str, str] = {
    "P1": "P 1",
    "P21": "P 1 21 1",
    "C2": "C 1 2 1",
    "P212121": "P 21 21 21",
    "P43212": "P 43 21 2",
}
"""Full Hermann-Mauguin symbols of the built-in space groups."""

LATTICE: dict[str, tuple[str, str, str | None]] = {
    "P1": ("triclinic", "P", None),
    "P21": ("monoclinic", "P", "b"),
    "C2": ("monoclinic", "C", "b"),
    "P212121": ("orthorhombic", "P", None),
    "P43212": ("tetragonal", "P", "c"),
}
"""CrystFEL ``lattice_type``, ``centering`` and ``unique_axis`` of each built-in space group."""

CELL_RANGE_NM: tuple[float, float] = (3.0, 15.0)
"""Range of the random cells' edge lengths (nm)."""

MAX_CELL_VOLUME_NM3 = 800.0
"""Random cells larger than this are scaled down (bounds the transform grid's memory)."""

SHAPE_AXES: dict[str, tuple[float, float, float]] = {
    "globular": (1.0, 1.0, 1.0),
    "elongated": (0.6, 0.6, 2.4),
    "flat": (1.4, 1.4, 0.45),
}
"""Relative semi-axes of the random molecules' ellipsoidal envelope, by shape."""


def _parse_triplet(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``"-x+1/2,y,z+3/4"`` -> (R (3, 3) int, t (3,) float)."""
    rot = np.zeros((3, 3), dtype=np.int64)
    tr = np.zeros(3)
    for row, part in enumerate(text.split(",")):
        term = ""
        for ch in part.replace(" ", "") + "+":
            if ch in "+-" and term:
                _add_term(term, row, rot, tr)
                term = ""
            term += ch
    return rot, tr


def _add_term(term: str, row: int, rot: np.ndarray, tr: np.ndarray) -> None:
    sign = -1.0 if term.startswith("-") else 1.0
    body = term.lstrip("+-")
    if body in ("x", "y", "z"):
        rot[row, "xyz".index(body)] += int(sign)
    else:
        num, _, den = body.partition("/")
        tr[row] += sign * float(num) / (float(den) if den else 1.0)


def symmetry_operations(space_group: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The operations ``(R, t)`` of a built-in space group (fractional coordinates).

    Raises
    ------
    KeyError
        Naming the built-in space groups.
    """
    try:
        ops = _OPS[space_group]
    except KeyError:
        raise KeyError(
            f"unknown space group {space_group!r}; built-in: {', '.join(_OPS)}"
        ) from None
    return [_parse_triplet(op) for op in ops]


@dataclass(frozen=True)
class CellContent:
    """Atoms of one unit cell.

    Attributes
    ----------
    frac
        (n, 3) float64 fractional coordinates (whole molecules, not wrapped atom by atom).
    weights
        (n,) float64 scattering weight of each atom (electrons, or 1).
    cell_nm, angles_deg
        Cell lengths (nm) and angles (degrees).
    space_group
        Space group name (built-in short name, or the file's Hermann-Mauguin symbol).
    n_molecules
        Copies of the asymmetric unit in the cell.
    shape
        ``globular`` / ``elongated`` / ``flat`` for random molecules, ``file`` otherwise.
    source
        The structure file, or ``None``.
    """

    frac: np.ndarray
    weights: np.ndarray
    cell_nm: tuple[float, float, float]
    angles_deg: tuple[float, float, float]
    space_group: str
    n_molecules: int
    shape: str
    source: str | None = None

    @property
    def n_atoms(self) -> int:
        """Atoms in the cell."""
        return int(self.frac.shape[0])

    def cartesian_nm(self) -> np.ndarray:
        """(n, 3) atom positions in the crystal frame (nm), relative to their centroid."""
        xyz = self.frac @ cell_matrix(self.cell_nm, self.angles_deg)
        return xyz - xyz.mean(axis=0)


def check_cell(space_group: str, cell_nm: tuple[float, ...], angles_deg: tuple[float, ...]) -> None:
    """Raise ``ValueError`` when a cell does not fit a built-in space group's lattice."""
    lattice = LATTICE[space_group][0]
    al, be, ga = angles_deg

    def right(x: float) -> bool:
        return math.isclose(x, 90.0, abs_tol=1e-6)

    if lattice == "monoclinic" and not (right(al) and right(ga)):
        raise ValueError(
            f"space group {space_group} needs alpha = gamma = 90 degrees, got {tuple(angles_deg)}"
        )
    if lattice in ("orthorhombic", "tetragonal") and not all(map(right, angles_deg)):
        raise ValueError(f"space group {space_group} needs right angles, got {tuple(angles_deg)}")
    if lattice == "tetragonal" and not math.isclose(cell_nm[0], cell_nm[1], rel_tol=1e-9):
        raise ValueError(f"space group {space_group} needs a = b, got {tuple(cell_nm)} nm")


def random_cell(
    rng: np.random.Generator, space_group: str
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Cell lengths (nm, log-uniform in :data:`CELL_RANGE_NM`) and angles fitting the lattice.

    Triclinic angles are uniform in [70, 110] degrees (redrawn until they form a cell);
    monoclinic beta in [90, 120]; tetragonal a = b.  Cells above
    :data:`MAX_CELL_VOLUME_NM3` are scaled down isotropically (never below 3 nm).
    Consumes six uniform numbers per attempt.
    """
    lo, hi = CELL_RANGE_NM
    lattice = LATTICE[space_group][0]
    while True:
        u = rng.random(6)
        a, b, c = (float(math.exp(math.log(lo) + x * math.log(hi / lo))) for x in u[:3])
        al = be = ga = 90.0
        if lattice == "triclinic":
            al, be, ga = (70.0 + 40.0 * float(x) for x in u[3:])
        elif lattice == "monoclinic":
            be = 90.0 + 30.0 * float(u[4])
        elif lattice == "tetragonal":
            b = a
        try:
            real = cell_matrix((a, b, c), (al, be, ga))
        except ValueError:
            continue
        volume = abs(float(np.linalg.det(real)))
        if volume > MAX_CELL_VOLUME_NM3:
            s = (MAX_CELL_VOLUME_NM3 / volume) ** (1 / 3)
            a, b, c = (max(lo, s * x) for x in (a, b, c))
            if lattice == "tetragonal":
                b = a
        return (a, b, c), (al, be, ga)


def random_molecule(
    rng: np.random.Generator,
    *,
    cell_nm: tuple[float, ...],
    angles_deg: tuple[float, ...],
    space_group: str = "P1",
    n_atoms: int = 150,
    shape: str = "globular",
    fill: float = 0.5,
) -> CellContent:
    """A compact random molecule and its symmetry copies filling a unit cell.

    In ``P1`` with a ``globular`` shape the atoms are uniform in an ellipsoid spanning 70 %
    of each cell axis (the simulator's original molecule, same random draws).  Otherwise the
    molecule is an ellipsoid of the shape's axis ratios (:data:`SHAPE_AXES`), volume
    ``fill * V_cell / Z``, randomly oriented and centred at a random fractional position;
    the space group's ``Z`` operations copy it, each copy moved by whole cells so its centre
    lies in the cell.  Molecules may touch or overlap (no packing is modelled).

    Parameters
    ----------
    rng
        Generator of the atom positions (the experiment's molecule stream).
    cell_nm, angles_deg
        Unit cell (nm, degrees).
    space_group
        Built-in space group (:data:`HERMANN_MAUGUIN` keys).
    n_atoms
        Atoms per molecule (asymmetric unit).
    shape
        Key of :data:`SHAPE_AXES`.
    fill
        Fraction of the cell volume the molecules' envelopes take.
    """
    if shape not in SHAPE_AXES:
        raise KeyError(f"unknown molecule shape {shape!r}; valid: {', '.join(SHAPE_AXES)}")
    ops = symmetry_operations(space_group)
    real = cell_matrix(tuple(cell_nm), tuple(angles_deg))
    pts = rng.normal(size=(n_atoms, 3))
    pts *= (rng.random(n_atoms) ** (1 / 3) / np.linalg.norm(pts, axis=1))[:, None]
    if space_group == "P1" and shape == "globular":
        frac = 0.35 * pts
    else:
        volume = fill * abs(float(np.linalg.det(real))) / len(ops)
        axes = np.array(SHAPE_AXES[shape])
        radius = (3 * volume / (4 * math.pi * float(np.prod(axes)))) ** (1 / 3)
        xyz = (pts * (radius * axes)) @ random_rotation(rng).T
        centre = rng.random(3)
        frac_mol = xyz @ np.linalg.inv(real) + centre
        copies = []
        for rot, tr in ops:
            copy = frac_mol @ rot.T + tr
            copies.append(copy - np.floor(copy.mean(axis=0)))
        frac = np.concatenate(copies)
    return CellContent(
        frac=frac,
        weights=np.ones(frac.shape[0]),
        cell_nm=(float(cell_nm[0]), float(cell_nm[1]), float(cell_nm[2])),
        angles_deg=(float(angles_deg[0]), float(angles_deg[1]), float(angles_deg[2])),
        space_group=space_group,
        n_molecules=len(ops),
        shape=shape,
    )


def read_structure(
    path: str | Path,
    *,
    default_cell_nm: tuple[float, ...] = (7.9, 7.9, 3.8),
    default_angles_deg: tuple[float, ...] = (90.0, 90.0, 90.0),
) -> CellContent:
    """Atoms of a PDB or mmCIF file and their symmetry copies in the file's cell.

    The cell and space group come from the file's ``CRYST1`` (mmCIF ``_cell``,
    ``_symmetry``).  A file without one (or with CRYST1's 1 A placeholder cell) is put, in
    P1, at the centre of ``default_cell_nm`` / ``default_angles_deg``.  Every atom of the
    first model counts, weighted by atomic number times occupancy.  Needs ``gemmi``
    (``pip install hpcdiff[sim]``).

    Raises
    ------
    hpcdiff.errors.FormatError
        When the file cannot be read or holds no atoms.
    ImportError
        Saying how to install gemmi.
    """
    from hpcdiff.errors import FormatError

    try:
        import gemmi
    except ImportError as exc:  # pragma: no cover - gemmi is installed in the test setup
        raise ImportError(
            "reading a structure file needs gemmi: pip install 'hpcdiff[sim]'"
        ) from exc
    path = Path(path)
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as exc:
        raise FormatError(path, f"not a readable PDB/mmCIF structure: {exc}") from None
    if len(st) == 0:
        raise FormatError(path, "holds no model (no ATOM/HETATM records)")
    xyz, weights = [], []
    for chain in st[0]:
        for residue in chain:
            for atom in residue:
                xyz.append((atom.pos.x, atom.pos.y, atom.pos.z))
                weights.append(max(atom.element.atomic_number, 1) * atom.occ)
    if not xyz:
        raise FormatError(path, "holds no atoms (no ATOM/HETATM records in its first model)")
    xyz_a = np.array(xyz, dtype=np.float64)
    w = np.array(weights, dtype=np.float64)
    cell = st.cell
    has_cell = cell.a > 1.5 and cell.b > 1.5 and cell.c > 1.5
    if has_cell:
        cell_nm = (cell.a / 10.0, cell.b / 10.0, cell.c / 10.0)
        angles = (cell.alpha, cell.beta, cell.gamma)
        fracs = [cell.fractionalize(gemmi.Position(*p)) for p in xyz_a]
        frac_au = np.array([(f.x, f.y, f.z) for f in fracs])
        sg = st.find_spacegroup()
        if sg is None:
            raise FormatError(
                path, f"space group {st.spacegroup_hm!r} of the CRYST1 record is not known"
            )
        copies = []
        for op in sg.operations():
            moved = np.array([op.apply_to_xyz(list(f)) for f in frac_au])
            copies.append(moved - np.floor(moved.mean(axis=0)))
        frac = np.concatenate(copies)
        weights_all = np.tile(w, len(copies))
        return CellContent(
            frac=frac,
            weights=weights_all,
            cell_nm=cell_nm,
            angles_deg=angles,
            space_group=sg.hm,
            n_molecules=len(copies),
            shape="file",
            source=str(path),
        )
    real = cell_matrix(tuple(default_cell_nm), tuple(default_angles_deg))
    centred = xyz_a / 10.0 - (xyz_a / 10.0).mean(axis=0)
    frac = centred @ np.linalg.inv(real) + 0.5
    return CellContent(
        frac=frac,
        weights=w,
        cell_nm=(float(default_cell_nm[0]), float(default_cell_nm[1]), float(default_cell_nm[2])),
        angles_deg=(
            float(default_angles_deg[0]),
            float(default_angles_deg[1]),
            float(default_angles_deg[2]),
        ),
        space_group="P1",
        n_molecules=1,
        shape="file",
        source=str(path),
    )


__all__ = [
    "CELL_RANGE_NM",
    "HERMANN_MAUGUIN",
    "LATTICE",
    "MAX_CELL_VOLUME_NM3",
    "SHAPE_AXES",
    "CellContent",
    "check_cell",
    "random_cell",
    "random_molecule",
    "read_structure",
    "symmetry_operations",
]

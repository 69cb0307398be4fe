"""Comparing a merged map with a reference ("truth") map: overall, per resolution shell, anisotropic.

The truth is an HDF5 file holding a 3D map on fractional ``h, k, l`` axes (a simulation's
``truth.h5``, or a map from elsewhere).  :func:`load_truth` reads it and checks its axes;
:func:`check_truth_grid` checks them against the merge grid before the job does any work;
:func:`truth_summary` gives, over the voxels measured in the merge and covered by the truth:

- ``cc``: the Pearson correlation of the two maps,
- ``shells``: the same in ``n_shells`` resolution shells of equal reciprocal-space volume
  (``q_min_nm_inv``, ``q_max_nm_inv``, ``cc``, ``voxels``; the shells partition the voxels),
- ``isotropic_removed``: the correlation after subtracting, from each map, its mean in thin
  ``|q|`` shells: what is left is the anisotropic (3D) signal, the part a merge of
  oriented frames adds over a powder average.

Correlations that are undefined (fewer than 2 voxels, or a map without variance, e.g. an
isotropic truth once its shell means are removed) are ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcdiff.errors import ConfigError, FormatError
from hpcdiff.io.hdf5 import open_hdf5
from hpcdiff.merge import Grid, MergeAccumulator, map_correlation

AXIS_NAMES = ("h", "k", "l")


@dataclass(frozen=True)
class TruthMap:
    """A reference map on uniformly spaced ``h, k, l`` axes.

    Attributes
    ----------
    path
        The file.
    dataset
        The map's dataset name.
    volume
        ``(n_h, n_k, n_l)`` float64.
    axes
        Voxel centres along ``h, k, l``: increasing, uniformly spaced 1D float64.
    axis_datasets
        The axes' dataset names.
    """

    path: Path
    dataset: str
    volume: np.ndarray
    axes: tuple[np.ndarray, np.ndarray, np.ndarray]
    axis_datasets: tuple[str, str, str]

    @property
    def steps(self) -> tuple[float, float, float]:
        """Spacing of each axis (1.0 for an axis of one point)."""
        s = [float(a[1] - a[0]) if a.size > 1 else 1.0 for a in self.axes]
        return (s[0], s[1], s[2])


def load_truth(path: str | Path) -> TruthMap:
    """Read a 3D reference map and its axes from HDF5, and check the axes.

    The map is the 3D dataset named ``intensity`` (in any group, e.g. ``/diffuse/intensity``
    of :func:`hpcdiff.simulate.simulate_experiment`'s ``truth.h5``), else the first 3D
    dataset; its axes are the 1D datasets ``h``, ``k``, ``l`` beside it (or at the top
    level): voxel centres in Miller-index units, one per voxel, finite, increasing and
    uniformly spaced (to 1e-6 of the spacing).

    Raises
    ------
    FormatError
        Naming the file, the dataset and what is wrong.
    """
    path = Path(path)
    with open_hdf5(path) as h5:
        cubes: list[str] = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and obj.ndim == 3:
                cubes.append(name)

        h5.visititems(visit)
        if not cubes:
            raise FormatError(path, "no 3D dataset (expected the map on an h, k, l grid)")
        named = [c for c in cubes if c.rsplit("/", 1)[-1] == "intensity"]
        name = named[0] if named else cubes[0]
        volume = np.asarray(h5[name][()], dtype=np.float64)
        group = name.rsplit("/", 1)[0] if "/" in name else ""
        axes: list[np.ndarray] = []
        names: list[str] = []
        for ax, n in zip(AXIS_NAMES, volume.shape, strict=True):
            cands = [k for k in (f"{group}/{ax}" if group else ax, ax) if k in h5]
            if not cands:
                raise FormatError(path, f"no axis dataset {ax!r} for the 3D map", dataset=name)
            a = np.asarray(h5[cands[0]][()], dtype=np.float64)
            if a.shape != (n,):
                raise FormatError(
                    path, f"axis {ax!r} has shape {a.shape}, expected ({n},)", dataset=cands[0]
                )
            _check_uniform(a, path=path, dataset=cands[0], name=ax)
            axes.append(a)
            names.append(cands[0])
    return TruthMap(path, name, volume, (axes[0], axes[1], axes[2]), (names[0], names[1], names[2]))


def _check_uniform(a: np.ndarray, *, path: Path, dataset: str, name: str) -> None:
    if not np.all(np.isfinite(a)):
        raise FormatError(path, f"axis {name!r} has values that are not finite", dataset=dataset)
    if a.size < 2:
        return
    d = np.diff(a)
    if not np.all(d > 0):
        raise FormatError(path, f"axis {name!r} is not strictly increasing", dataset=dataset)
    if np.max(np.abs(d - d[0])) > 1e-6 * d[0] + 1e-9 * np.max(np.abs(a)):
        raise FormatError(
            path,
            f"axis {name!r} is not uniformly spaced (steps {d.min():g} to {d.max():g}); "
            "expected voxel centres at equal steps",
            dataset=dataset,
        )


def read_truth(
    path: str | Path,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The map and its ``h, k, l`` axes (see :func:`load_truth`)."""
    truth = load_truth(path)
    return truth.volume, truth.axes


def check_truth_grid(truth: TruthMap, grid: Grid) -> None:
    """Check that a truth map can be compared on ``grid`` (before any work).

    The grid must be in ``hkl`` and each truth axis must overlap the grid's range on that
    axis.

    Raises
    ------
    ConfigError
        When the grid is not in ``hkl``.
    FormatError
        Naming the file and the axis dataset that does not match the grid.
    """
    if grid.extent != "hkl":
        raise ConfigError(
            f"{truth.path}: the truth map is on h, k, l axes; the merge grid is in q "
            '(extent = "q"): set extent = "hkl" to compare them'
        )
    for d, (a, w, name, ds) in enumerate(
        zip(truth.axes, grid.half_widths, AXIS_NAMES, truth.axis_datasets, strict=True)
    ):
        half = 0.5 * truth.steps[d]
        lo, hi = float(a[0]) - half, float(a[-1]) + half
        if hi <= -w or lo >= w:
            raise FormatError(
                truth.path,
                f"axis {name!r} spans [{lo:g}, {hi:g}], outside the merge grid's "
                f"[{-w:g}, {w:g}] on that axis: the truth map and the grid do not overlap",
                dataset=ds,
            )


def resample_truth(truth: TruthMap, grid: Grid) -> np.ndarray:
    """The truth map on the grid's voxels, ``grid.shape`` float64.

    Each grid voxel gets the mean of the (finite) truth voxels whose centres fall in it,
    or, where none does (a truth coarser than the grid), the truth voxel nearest its
    centre; NaN outside the truth's extent.
    """
    shape = grid.shape
    # block means: flat grid voxel of each truth voxel, separable per axis
    idx = []
    for d in range(3):
        a = truth.axes[d]
        i = np.floor((a + grid.half_widths[d]) / grid.steps[d]).astype(np.int64)
        i[(i < 0) | (i >= shape[d])] = -1
        idx.append(i)
    flat = (idx[0][:, None, None] * shape[1] + idx[1][None, :, None]) * shape[2]
    flat = flat + idx[2][None, None, :]
    ok = (idx[0][:, None, None] >= 0) & (idx[1][None, :, None] >= 0) & (idx[2][None, None, :] >= 0)
    ok = ok & np.isfinite(truth.volume)
    n = grid.n_voxels
    where = np.where(ok, flat, n).ravel()
    sums = np.bincount(where, weights=np.where(ok, truth.volume, 0.0).ravel(), minlength=n + 1)
    counts = np.bincount(where, minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (sums[:n] / counts[:n]).reshape(shape)
    # nearest truth voxel where no truth centre fell in the grid voxel
    near = []
    inside = []
    for d in range(3):
        a, c = truth.axes[d], grid.axis(d)
        j = (
            np.rint((c - a[0]) / truth.steps[d]).astype(np.int64)
            if a.size > 1
            else np.zeros(c.size, np.int64)
        )
        half = 0.5 * truth.steps[d]
        inside.append((c >= a[0] - half) & (c <= a[-1] + half))
        near.append(np.clip(j, 0, a.size - 1))
    empty = counts[:n].reshape(shape) == 0
    cover = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    fill = empty & cover
    if fill.any():
        nearest = truth.volume[np.ix_(near[0], near[1], near[2])]
        out[fill] = nearest[fill]
    out[empty & ~cover] = np.nan
    return out


def voxel_q_abs(grid: Grid, metric: np.ndarray) -> np.ndarray:
    """``|q|`` (nm^-1, no 2 pi) at each voxel centre, ``grid.shape`` float64.

    Parameters
    ----------
    grid
        The grid.
    metric
        ``(3, 3)`` reciprocal metric ``G* = A A^T`` (nm^-2, :func:`hpcdiff.merge.
        reciprocal_metric`); unused for a grid in ``q``.
    """
    h, k, l = grid.axes()  # noqa: E741
    x = (h[:, None, None], k[None, :, None], l[None, None, :])
    if grid.extent == "q":
        return np.sqrt(x[0] ** 2 + x[1] ** 2 + x[2] ** 2)
    g = np.asarray(metric, dtype=np.float64)
    if g.shape != (3, 3):
        raise ValueError(f"metric must be (3, 3), got {g.shape}")
    q2 = np.zeros(grid.shape)
    for i in range(3):
        for j in range(i, 3):
            q2 += (1.0 if i == j else 2.0) * g[i, j] * (x[i] * x[j])
    return np.sqrt(np.maximum(q2, 0.0))


def shell_edges(q_max: float, n_shells: int) -> np.ndarray:
    """``(n_shells + 1,)`` edges of shells of equal volume in ``|q| <= q_max`` (``q_max (i/n)^(1/3)``)."""
    if n_shells < 1:
        raise ValueError(f"n_shells must be >= 1, got {n_shells}")
    return float(q_max) * (np.arange(n_shells + 1) / n_shells) ** (1.0 / 3.0)


def _cc(a: np.ndarray, b: np.ndarray) -> float | None:
    cc, n = map_correlation(a, b)
    return float(cc) if n >= 2 and np.isfinite(cc) else None


def remove_shell_means(values: np.ndarray, shell: np.ndarray, n_shells: int) -> np.ndarray:
    """``values`` minus the mean of its shell (``shell``: ``(n,)`` int in ``[0, n_shells)``)."""
    counts = np.bincount(shell, minlength=n_shells)
    sums = np.bincount(shell, weights=values, minlength=n_shells)
    means = sums / np.maximum(counts, 1)
    return values - means[shell]


def compare_maps(
    merged: np.ndarray,
    truth: np.ndarray,
    q_abs: np.ndarray,
    *,
    n_shells: int = 10,
    isotropic_shell_width_per_nm: float,
) -> dict[str, Any]:
    """Correlations of two maps on the same voxels: overall, per shell, isotropic removed.

    Parameters
    ----------
    merged, truth
        Maps of one shape (float; NaN where unknown).  Voxels finite in both are compared.
    q_abs
        ``|q|`` of each voxel, nm^-1.
    n_shells
        Resolution shells of equal volume between 0 and the largest compared ``|q|``.
    isotropic_shell_width_per_nm
        Width of the thin shells whose means are removed, nm^-1.

    Returns
    -------
    dict
        ``cc``, ``voxels``, ``shells`` (list of ``q_min_nm_inv``, ``q_max_nm_inv``, ``cc``,
        ``voxels``, ``cc_isotropic_removed``), ``isotropic_removed`` (``cc``, ``voxels``,
        ``shell_width_per_nm``, and ``note`` when undefined).
    """
    m = np.asarray(merged, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=np.float64).ravel()
    q = np.asarray(q_abs, dtype=np.float64).ravel()
    if not (m.shape == t.shape == q.shape):
        raise ValueError(f"maps differ in size: {m.shape}, {t.shape}, {q.shape}")
    if not isotropic_shell_width_per_nm > 0:
        raise ValueError("isotropic_shell_width_per_nm must be > 0")
    both = np.isfinite(m) & np.isfinite(t) & np.isfinite(q)
    m, t, q = m[both], t[both], q[both]
    n = int(m.size)
    out: dict[str, Any] = {"cc": _cc(m, t), "voxels": n, "shells": []}
    q_top = float(q.max()) if n else 0.0
    edges = shell_edges(q_top if q_top > 0 else 1.0, n_shells)
    shell = np.clip(np.searchsorted(edges, q, side="right") - 1, 0, n_shells - 1)
    # thin shells for the isotropic part
    width = float(isotropic_shell_width_per_nm)
    thin = np.floor(q / width).astype(np.int64)
    n_thin = int(thin.max()) + 1 if n else 1
    m_aniso = remove_shell_means(m, thin, n_thin)
    t_aniso = remove_shell_means(t, thin, n_thin)
    # a map that is constant in each thin shell has (up to rounding) nothing left
    flat_t = _negligible(t_aniso, t)
    flat_m = _negligible(m_aniso, m)
    iso: dict[str, Any] = {
        "cc": None if (flat_t or flat_m) else _cc(m_aniso, t_aniso),
        "voxels": n,
        "shell_width_per_nm": width,
    }
    if flat_t or flat_m:
        which = "truth" if flat_t else "merged map"
        iso["note"] = (
            f"undefined: the {which} is isotropic (nothing left after removing shell means)"
        )
    out["isotropic_removed"] = iso
    for s in range(n_shells):
        sel = shell == s
        row: dict[str, Any] = {
            "q_min_nm_inv": float(edges[s]),
            "q_max_nm_inv": float(edges[s + 1]),
            "cc": _cc(m[sel], t[sel]),
            "voxels": int(np.count_nonzero(sel)),
            "cc_isotropic_removed": None if (flat_t or flat_m) else _cc(m_aniso[sel], t_aniso[sel]),
        }
        out["shells"].append(row)
    return out


def _negligible(residual: np.ndarray, original: np.ndarray) -> bool:
    if residual.size < 2:
        return True
    scale = float(np.var(original)) + float(np.mean(original) ** 2)
    return bool(float(np.var(residual)) <= 1e-20 * scale or float(np.var(residual)) == 0.0)


def isotropic_width(grid: Grid, metric: np.ndarray) -> float:
    """One voxel in ``|q|``: the largest voxel edge of ``grid`` in nm^-1."""
    if grid.extent == "q":
        return float(max(grid.steps))
    g = np.asarray(metric, dtype=np.float64)
    return float(max(s * np.sqrt(g[d, d]) for d, s in enumerate(grid.steps)))


def truth_summary(
    merged: MergeAccumulator,
    truth: TruthMap,
    *,
    metric: np.ndarray,
    n_shells: int = 10,
    isotropic_shell_width_per_nm: float | None = None,
    intensity: np.ndarray | None = None,
) -> dict[str, Any]:
    """The ``truth_correlation`` entry of ``fourier_summary.json`` (see :func:`compare_maps`).

    Parameters
    ----------
    merged
        The merge (its grid must be in ``hkl``).
    truth
        The reference map (:func:`load_truth`).
    metric
        ``(3, 3)`` reciprocal metric of the crystals, nm^-2.
    n_shells
        Resolution shells.
    isotropic_shell_width_per_nm
        Thin-shell width for the isotropic part; None for one voxel (:func:`isotropic_width`).
    intensity
        ``merged.grid.shape`` map to compare (e.g. the smoothed map of
        :mod:`hpcdiff.map_smooth`); None: ``merged.intensity()``.
    """
    check_truth_grid(truth, merged.grid)
    width = isotropic_shell_width_per_nm or isotropic_width(merged.grid, metric)
    on_grid = resample_truth(truth, merged.grid)
    out = compare_maps(
        merged.intensity() if intensity is None else intensity,
        on_grid,
        voxel_q_abs(merged.grid, metric),
        n_shells=n_shells,
        isotropic_shell_width_per_nm=width,
    )
    out["file"] = str(truth.path)
    out["dataset"] = truth.dataset
    out["shell_spacing"] = "equal reciprocal-space volume, 0 to the largest compared |q|"
    out["resampling"] = (
        "truth averaged over each grid voxel (nearest truth voxel where none falls in it)"
    )
    return out


def truth_correlation(merged: MergeAccumulator, truth_path: str | Path) -> tuple[float, int]:
    """Pearson CC between the merged map and a reference map over measured voxels.

    The reference is resampled onto the merge grid (:func:`resample_truth`).  Only grids
    in ``hkl`` are compared.

    Returns
    -------
    (float, int)
        The correlation (NaN when undefined) and the number of voxels compared.
    """
    truth = load_truth(truth_path)
    check_truth_grid(truth, merged.grid)
    return map_correlation(merged.intensity(), resample_truth(truth, merged.grid))


__all__ = [
    "TruthMap",
    "check_truth_grid",
    "compare_maps",
    "isotropic_width",
    "load_truth",
    "read_truth",
    "remove_shell_means",
    "resample_truth",
    "shell_edges",
    "truth_correlation",
    "truth_summary",
    "voxel_q_abs",
]

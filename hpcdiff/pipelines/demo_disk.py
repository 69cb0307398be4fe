"""How much disk the demo writes, said before it writes, and refused when it does not fit.

The demo's bytes are almost all frames: ``n_frames x n_ss x n_fs x itemsize`` per run,
times what the compression keeps.  Simulated frames are Poisson noise, which lz4 or gzip
barely shrink, so compressed frames are counted at :data:`COMPRESSED_FRACTION` of their
raw size (an upper bound seen on the demo's own frames, not a hope); uncompressed at 1.
Then each run's ``truth.h5`` (the true diffuse intensity, ``truth_grid_size^3`` float32),
the Fourier job's merged grid (intensity float32, counts and sums up to 8 bytes each per
voxel) and :data:`SMALL_OUTPUTS_BYTES` for features, models, predictions and the report.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcdiff.errors import OutputError

#: Fraction of the raw frame bytes a compressed file is counted at (Poisson frames
#: barely compress: the 2026-12 demo's float32 lz4 files kept 100%).
COMPRESSED_FRACTION = 1.0

#: Features, models, prediction lists, logs and the report, bytes.
SMALL_OUTPUTS_BYTES = 64 << 20

#: Bytes per voxel of the Fourier job's merged grid (float32 intensity, counts, sums).
FOURIER_BYTES_PER_VOXEL = 20


@dataclass(frozen=True)
class DiskEstimate:
    """Bytes the demo will write, by part.

    Attributes
    ----------
    parts
        ``(what, bytes)`` pairs, in writing order.
    """

    parts: tuple[tuple[str, int], ...]

    @property
    def total_bytes(self) -> int:
        """All parts, bytes."""
        return sum(b for _, b in self.parts)

    def describe(self) -> str:
        """One line: the total and its parts, in GB (10^9 bytes)."""
        inner = ", ".join(f"{what} {gb(b)}" for what, b in self.parts)
        return f"about {gb(self.total_bytes)} ({inner})"


def gb(n_bytes: float) -> str:
    """``n_bytes`` as ``"1.23 GB"`` (10^9 bytes)."""
    return f"{n_bytes / 1e9:.2f} GB"


def frame_bytes(n_frames: int, slab_shape: Sequence[int], *, dtype: str, compression: str) -> int:
    """Upper estimate of the bytes of ``n_frames`` frames of ``slab_shape`` in ``dtype``."""
    import numpy as np

    raw = int(n_frames) * int(np.prod(slab_shape)) * np.dtype(dtype).itemsize
    fraction = 1.0 if compression == "none" else COMPRESSED_FRACTION
    return int(raw * fraction)


def estimate_demo_bytes(
    runs: Sequence[Any], *, slab_shape: Sequence[int], fourier_grid: int
) -> DiskEstimate:
    """Bytes the demo writes for simulated ``runs`` (:class:`hpcdiff.config.SimulateConfig`).

    Parameters
    ----------
    runs
        The simulated runs: ``n_frames``, ``output_dtype``, ``compression``,
        ``truth_grid_size`` of each.
    slab_shape
        ``(n_ss, n_fs)`` of the simulated detector.
    fourier_grid
        The Fourier job's grid edge, voxels.
    """
    n = sum(int(r.n_frames) for r in runs)
    frames = sum(
        frame_bytes(r.n_frames, slab_shape, dtype=r.output_dtype, compression=r.compression)
        for r in runs
    )
    truth = sum(4 * int(r.truth_grid_size) ** 3 for r in runs)
    fourier = FOURIER_BYTES_PER_VOXEL * int(fourier_grid) ** 3
    return DiskEstimate(
        (
            (f"{n} frames", frames),
            ("truth", truth),
            ("Fourier grid", fourier),
            ("features, models, report", SMALL_OUTPUTS_BYTES),
        )
    )


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


def check_space(path: Path, estimate: DiskEstimate) -> None:
    """Raise :class:`~hpcdiff.errors.OutputError` when ``path``'s file system has less free
    space than ``estimate``, naming both and what to change."""
    free = free_bytes(path)
    need = estimate.total_bytes
    if free < need:
        raise OutputError(
            path,
            f"the demo needs {estimate.describe()} under {path}, but only {gb(free)} is free "
            "there; free some space, pick another --out, or make the demo smaller "
            "(--frames, --new-frames, --detector small, --grid)",
        )


__all__ = [
    "DiskEstimate",
    "check_space",
    "estimate_demo_bytes",
    "frame_bytes",
    "free_bytes",
    "gb",
]

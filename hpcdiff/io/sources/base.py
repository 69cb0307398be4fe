"""What every frame source shares: frame identities, global numbers, per-frame values.

:class:`~hpcdiff.io.cxi.FrameSource` reads CXI/HDF5 files; the sources in this package
(European XFEL run directories, NXmx files, psana2 XTC2 runs) read other layouts behind
the same interface, which :class:`IndexedSource` implements once given a frame list and a
method that reads a range of frames into a float32 slab block:

``n_frames``, ``frame_ids``, ``slab_shape``, ``files``, ``geometry``,
``read(start, stop)``, ``read_ids(ids)``, ``global_numbers(ids)``,
``frame_values(start, stop)``, ``frames_per_file()``, ``close()`` and the context manager.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hpcdiff.io.cxi import FrameId

if TYPE_CHECKING:
    from hpcdiff.io.geom import DetectorGeometry


class FrameReaderSource(Protocol):
    """The interface the pipelines use (what :class:`~hpcdiff.io.cxi.FrameSource` offers)."""

    files: tuple[str, ...]
    geometry: DetectorGeometry | None
    n_frames: int
    slab_shape: tuple[int, int]

    @property
    def frame_ids(self) -> list[FrameId]: ...

    def read(self, start: int, stop: int) -> np.ndarray: ...

    def read_ids(self, ids: Sequence[FrameId]) -> np.ndarray: ...

    def global_numbers(self, ids: Sequence[FrameId]) -> np.ndarray: ...

    def frame_values(self, start: int, stop: int) -> dict[str, np.ndarray]: ...

    def frames_per_file(self) -> list[int]: ...

    def close(self) -> None: ...

    def __enter__(self) -> FrameReaderSource: ...

    def __exit__(self, *exc: object) -> None: ...


class IndexedSource:
    """Base of the non-CXI sources: a fixed list of frames, each with a :class:`FrameId`.

    Subclasses set :attr:`files`, :attr:`geometry`, :attr:`slab_shape`, call
    :meth:`_set_frames` with the run's frame ids (in global order) and implement
    :meth:`_read_into`.

    Attributes
    ----------
    kind : str
        ``"euxfel"``, ``"nxmx"`` or ``"psana2"``.
    files : tuple of str
        The run's inputs (run directories, NXmx files, XTC2 files), in run order.
    n_frames : int
        Frames in the run.
    slab_shape : tuple of int
        ``(n_ss, n_fs)`` of the frames :meth:`read` returns.
    """

    kind = "base"

    files: tuple[str, ...]
    geometry: DetectorGeometry | None
    slab_shape: tuple[int, int]
    n_frames: int

    def _set_frames(self, ids: Sequence[FrameId]) -> None:
        self._ids = tuple(ids)
        self.n_frames = len(self._ids)
        self._number = {fid: k for k, fid in enumerate(self._ids)}
        if len(self._number) != self.n_frames:
            raise ValueError(f"{self.kind}: the run names some frames twice")

    @property
    def frame_ids(self) -> list[FrameId]:
        """Identity of every frame, in global order."""
        return list(self._ids)

    def frames_per_file(self) -> list[int]:
        """Frames in each of :attr:`files`, in run order."""
        counts = dict.fromkeys(self.files, 0)
        for fid in self._ids:
            counts[fid.file] = counts.get(fid.file, 0) + 1
        return [counts[f] for f in self.files]

    def __len__(self) -> int:
        return self.n_frames

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.n_frames:
            raise IndexError(
                f"frame range [{start}, {stop}) outside the run's {self.n_frames} frames"
            )

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` (global frame numbers) as ``(n, n_ss, n_fs)`` float32."""
        self._check_range(start, stop)
        out = np.empty((stop - start, *self.slab_shape), dtype=np.float32)
        if stop > start:
            self._read_into(start, stop, out)
        return out

    def _read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        raise NotImplementedError

    def global_numbers(self, ids: Sequence[FrameId]) -> np.ndarray:
        """Global frame numbers ``(n,)`` int64 of frames named by identity.

        Raises
        ------
        KeyError
            Naming the frames (up to 10) that are not in this run.
        """
        out = np.empty(len(ids), dtype=np.int64)
        missing = []
        for k, fid in enumerate(ids):
            g = self._number.get(fid)
            if g is None:
                missing.append(str(fid))
            else:
                out[k] = g
        if missing:
            raise KeyError(f"{len(missing)} frame(s) not in this run: {', '.join(missing[:10])}")
        return out

    def read_ids(self, ids: Sequence[FrameId]) -> np.ndarray:
        """Frames named by identity, in the order given, as ``(n, n_ss, n_fs)`` float32."""
        numbers = self.global_numbers(ids)
        out = np.empty((len(ids), *self.slab_shape), dtype=np.float32)
        for k, g in enumerate(numbers.tolist()):
            out[k] = self.read(g, g + 1)[0]
        return out

    def frame_values(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Per-frame values (``photon_energy_ev``, ``clen_m``, ``detector_distance_m``).

        The default takes the geometry's numbers (the same for every frame); sources whose
        files record them per frame override it.  Same keys and units as
        :meth:`hpcdiff.io.cxi.FrameSource.frame_values`.
        """
        self._check_range(start, stop)
        return constant_values(self.geometry, stop - start, source=self.files[0])

    def frame_dtype(self) -> np.dtype:
        """The dtype frames have in the files (:meth:`read` gives float32 whatever it is);
        float32 where the source does not know (subclasses that do override it)."""
        return np.dtype(np.float32)

    def describe(self) -> dict[str, Any]:
        """What :command:`hpcdiff inspect` prints: frames, shape, dtype, ids, geometry."""
        ids = self._ids
        return {
            "source": self.kind,
            "inputs": list(self.files),
            "n_frames": self.n_frames,
            "slab_shape": list(self.slab_shape),
            "frames_per_input": self.frames_per_file(),
            "first_ids": [str(f) for f in ids[:3]],
            "last_ids": [str(f) for f in ids[-3:]] if len(ids) > 3 else [],
        }

    def close(self) -> None:
        """Release open files (reopened on the next read)."""

    def __enter__(self) -> IndexedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.files)} input(s), {self.n_frames} frames, "
            f"slab {self.slab_shape[0]}x{self.slab_shape[1]})"
        )


def constant_values(
    geometry: DetectorGeometry | None, n: int, *, source: str
) -> dict[str, np.ndarray]:
    """``photon_energy_ev`` / ``clen_m`` / ``detector_distance_m`` ``(n,)`` from numbers.

    Raises
    ------
    FormatError
        When the geometry reads a value from an HDF5 path: only CXI files are read that way.
    """
    from hpcdiff.errors import FormatError

    out: dict[str, np.ndarray] = {}
    if geometry is None or not geometry.panels:
        return out
    energy = geometry.photon_energy
    panel = geometry.panels[0]
    for key, value in (("photon_energy", energy), ("clen", panel.clen)):
        if isinstance(value, str):
            raise FormatError(
                geometry.source or source,
                f"{key} = {value} names an HDF5 path; for {source} give {key} as a number "
                "in the geometry",
            )
    if energy is not None:
        out["photon_energy_ev"] = np.full(n, float(energy))
    if panel.clen is not None:
        out["clen_m"] = np.full(n, float(panel.clen))
        out["detector_distance_m"] = out["clen_m"] + float(panel.coffset_m)
    return out


def source_pixel_mask(source: object) -> np.ndarray | None:
    """``(n_ss, n_fs)`` bool, True on pixels the frames' files mark bad, or ``None``.

    Sources whose files carry a mask (NXmx ``pixel_mask``) have ``pixel_mask()``; the
    others (CXI: the geometry's mask keys) give ``None``.
    """
    method = getattr(source, "pixel_mask", None)
    if method is None:
        return None
    mask = method()
    return None if mask is None else np.asarray(mask, dtype=bool)

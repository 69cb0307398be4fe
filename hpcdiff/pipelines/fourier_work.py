"""The Fourier job's working folder: frames on disk, checkpoints, resumption.

``<out>/fourier.work/`` holds everything a run needs between its stages and everything a
stopped run needs to resume; it is removed after the summary, the last output, is written.

``state.json``
    The job's config hash and frame count: a rerun of the same job resumes from this
    folder; another job's folder is refused (or discarded with ``--force``).
``frames/chunk_START_STOP.h5``
    One per merge task, written by the worker that processed the frames: each frame's
    voxels on the similarity grid and its mean value there (CSR: ``lengths``, ``voxels``,
    ``means``), the downsampled images, the frame numbers.  The similarity tasks read
    their rows and columns from these files, so nothing per frame is broadcast to the
    workers or held by the client.
``merge.npz``
    The merge accumulator of every finished wave of merge tasks, and which tasks it holds.
``similarity/block_START_STOP.npz``
    Finished row blocks of the similarity matrices.

Every file is written to a temporary name and renamed, so a kill leaves either the
previous file or the new one; temporary names (``.*.part``) left by a killed process are
removed when the folder is next opened.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from hpcdiff.errors import FormatError, OutputExistsError
from hpcdiff.merge import FrameVoxels, Grid, MergeAccumulator
from hpcdiff.similarity import SimilarityBlock

STATE_VERSION = 1


def _tmp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")


@dataclass(frozen=True)
class ChunkData:
    """What one merge task leaves on disk for the similarity stage.

    Attributes
    ----------
    numbers
        ``(k,)`` int64 global frame numbers.
    frames
        ``k`` frames on the similarity grid (``sums`` are the means, ``counts`` ones).
    images
        ``(k, h, w)`` float32 downsampled normalised residuals.
    """

    numbers: np.ndarray
    frames: list[FrameVoxels]
    images: np.ndarray


@dataclass(frozen=True)
class SimilarityRows:
    """One finished row block: common-arc CC and overlap, image distance and correlation."""

    common_arc: SimilarityBlock
    image_distance: SimilarityBlock
    image_correlation: SimilarityBlock
    seconds: float = 0.0

    @property
    def start(self) -> int:
        return self.common_arc.start

    @property
    def stop(self) -> int:
        return self.common_arc.stop


@dataclass(frozen=True)
class FourierWork:
    """The working folder of one Fourier job (picklable: a path and a hash).

    Attributes
    ----------
    root
        ``<out>/fourier.work``.
    config_hash
        The job's :meth:`~hpcdiff.config.JobConfig.config_hash`.
    """

    root: Path
    config_hash: str

    # ------------------------------------------------------------------ folder
    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def frames_dir(self) -> Path:
        return self.root / "frames"

    @property
    def blocks_dir(self) -> Path:
        return self.root / "similarity"

    @property
    def merge_file(self) -> Path:
        return self.root / "merge.npz"

    def exists(self) -> bool:
        """True when the folder holds a state of this job (something to resume)."""
        state = self._state()
        return state is not None and state.get("config_hash") == self.config_hash

    def _state(self) -> dict | None:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return None

    def prepare(self, *, n_frames: int, force: bool) -> bool:
        """Create the folder, or check the one there; sweep stale temporary files.

        Returns
        -------
        bool
            True when an existing folder of this job is resumed.

        Raises
        ------
        OutputExistsError
            A folder of another job (or of another frame count) is there and ``force``
            is false.
        """
        state = self._state()
        if self.root.exists() and state is None and not self._has_checkpoints():
            shutil.rmtree(self.root)  # killed before its state was written: nothing to keep
        if self.root.exists() and (
            state is None
            or state.get("config_hash") != self.config_hash
            or state.get("n_frames") != n_frames
            or state.get("version") != STATE_VERSION
        ):
            if not force:
                raise OutputExistsError(
                    f"{self.root} holds checkpoints of another Fourier job (or is damaged); "
                    "pass --force to discard them, or choose another output.dir"
                )
            shutil.rmtree(self.root)
            state = None
        resumed = state is not None
        for d in (self.root, self.frames_dir, self.blocks_dir):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.root, self.frames_dir, self.blocks_dir):
            for stale in d.glob(".*.part"):
                stale.unlink(missing_ok=True)
        if not resumed:
            self._write_text(
                self.state_file,
                json.dumps(
                    {
                        "config_hash": self.config_hash,
                        "n_frames": n_frames,
                        "version": STATE_VERSION,
                    }
                ),
            )
        return resumed

    def _has_checkpoints(self) -> bool:
        return any(p.is_file() and not p.name.startswith(".") for p in self.root.rglob("*"))

    def remove(self) -> None:
        """Delete the folder (after the summary is written)."""
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _write_text(path: Path, text: str) -> None:
        tmp = _tmp_beside(path)
        tmp.write_text(text)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ frames
    def chunk_path(self, start: int, stop: int) -> Path:
        return self.frames_dir / f"chunk_{start:09d}_{stop:09d}.h5"

    def write_chunk(self, start: int, stop: int, data: ChunkData) -> Path:
        """Write one merge task's frames (called on the worker; atomic)."""
        path = self.chunk_path(start, stop)
        tmp = _tmp_beside(path)
        try:
            with h5py.File(tmp, "w") as h5:
                h5["numbers"] = np.asarray(data.numbers, np.int64)
                h5["lengths"] = np.array([len(f) for f in data.frames], np.int64)
                vox = [f.voxels for f in data.frames]
                means = [f.means for f in data.frames]
                h5["voxels"] = np.concatenate(vox) if vox else np.zeros(0, np.int64)
                h5["means"] = np.concatenate(means) if means else np.zeros(0)
                h5["images"] = np.asarray(data.images, np.float32)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def chunks_on_disk(self) -> set[tuple[int, int]]:
        """``(start, stop)`` of the chunk files present."""
        out = set()
        for p in self.frames_dir.glob("chunk_*_*.h5"):
            a, b = p.stem.split("_")[1:]
            out.add((int(a), int(b)))
        return out

    def read_rows(
        self, start: int, stop: int, chunks: list[tuple[int, int]], *, images: bool = True
    ) -> ChunkData:
        """Frames ``start:stop`` (plan rows) from the chunk files ``chunks`` that cover them."""
        numbers, frames, imgs = [], [], []
        for a, b in chunks:
            if b <= start or a >= stop:
                continue
            lo, hi = max(start, a) - a, min(stop, b) - a
            path = self.chunk_path(a, b)
            try:
                with h5py.File(path, "r") as h5:
                    lengths = h5["lengths"][()]
                    ends = np.cumsum(lengths)
                    begins = ends - lengths
                    v0, v1 = int(begins[lo]), int(ends[hi - 1])
                    vox = h5["voxels"][v0:v1]
                    means = h5["means"][v0:v1]
                    numbers.append(h5["numbers"][lo:hi])
                    if images:
                        imgs.append(h5["images"][lo:hi])
            except OSError as exc:
                raise FormatError(
                    path, f"cannot read a checkpoint chunk ({exc}); delete it and rerun"
                ) from None
            for j in range(lo, hi):
                s, e = int(begins[j]) - v0, int(ends[j]) - v0
                frames.append(FrameVoxels(vox[s:e], means[s:e], np.ones(e - s, np.int64)))
        got = sum(len(x) for x in numbers)
        if got != stop - start:
            raise FormatError(self.frames_dir, f"chunk files cover {got} of rows {start}:{stop}")
        return ChunkData(
            np.concatenate(numbers),
            frames,
            np.concatenate(imgs) if images else np.zeros((0, 0, 0), np.float32),
        )

    # ------------------------------------------------------------------ merge checkpoint
    def save_merge(self, acc: MergeAccumulator, done: list[tuple[int, int]]) -> None:
        """Save the accumulator of the finished merge tasks ``done`` (atomic)."""
        tmp = _tmp_beside(self.merge_file)
        try:
            with open(tmp, "wb") as fh:
                done_a = np.asarray(sorted(done), np.int64).reshape(-1, 2)
                shape = np.asarray(acc.sums.shape, np.int64)
                n_frames = np.asarray(acc.n_frames, np.int64)
                arrays: dict[str, np.ndarray] = {
                    "sums": acc.sums, "counts": acc.counts, "n_frames": n_frames,
                    "done": done_a, "grid_shape": shape,
                }  # fmt: skip
                if acc.weights is not None:  # a weighted merge (inverse-variance weights)
                    arrays["weights"] = acc.weights
                if acc.half_a is not None:  # half-map A (half B is the rest)
                    arrays["half_a_sums"] = acc.half_a.sums
                    arrays["half_a_counts"] = acc.half_a.counts
                    arrays["half_a_n_frames"] = np.asarray(acc.half_a.n_frames, np.int64)
                    if acc.half_a.weights is not None:
                        arrays["half_a_weights"] = acc.half_a.weights
                np.savez(fh, **arrays)  # type: ignore[arg-type]  # (no key is allow_pickle)
            os.replace(tmp, self.merge_file)
        finally:
            tmp.unlink(missing_ok=True)

    def load_merge(self, grid: Grid) -> tuple[MergeAccumulator, list[tuple[int, int]]] | None:
        """The saved accumulator and its finished tasks, or None when there is none."""
        if not self.merge_file.is_file():
            return None
        try:
            with np.load(self.merge_file) as z:
                sums, counts = z["sums"], z["counts"]
                weights = z["weights"] if "weights" in z.files else None
                n_frames = int(z["n_frames"])
                half = None
                if "half_a_sums" in z.files:
                    half = MergeAccumulator(
                        grid,
                        z["half_a_sums"],
                        z["half_a_counts"],
                        int(z["half_a_n_frames"]),
                        z["half_a_weights"] if "half_a_weights" in z.files else None,
                    )
                done = [(int(r[0]), int(r[1])) for r in z["done"]]
        except (OSError, ValueError, KeyError) as exc:
            raise FormatError(
                self.merge_file, f"damaged merge checkpoint ({exc}); delete it and rerun"
            ) from None
        empty = MergeAccumulator.empty(grid)
        if sums.shape != empty.sums.shape:
            raise FormatError(self.merge_file, f"grid {sums.shape} is not the job's")
        if weights is not None and weights.shape != sums.shape:
            raise FormatError(self.merge_file, f"weights {weights.shape} do not match the sums")
        if half is not None and (
            half.sums.shape != sums.shape or half.weighted != (weights is not None)
        ):
            raise FormatError(self.merge_file, "half-map A does not match the merge")
        return MergeAccumulator(grid, sums, counts, n_frames, weights, half), done

    @property
    def finite_file(self) -> Path:
        return self.root / "finite.npy"

    def save_finite(self, finite: np.ndarray) -> None:
        """Save the image pixels finite in every merged frame so far (atomic)."""
        tmp = _tmp_beside(self.finite_file)
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(finite, bool))
            os.replace(tmp, self.finite_file)
        finally:
            tmp.unlink(missing_ok=True)

    def load_finite(self) -> np.ndarray:
        """The saved image-pixel mask."""
        try:
            return np.asarray(np.load(self.finite_file), bool)
        except (OSError, ValueError) as exc:
            raise FormatError(
                self.finite_file, f"damaged checkpoint ({exc}); delete {self.root} and rerun"
            ) from None

    @property
    def shots_file(self) -> Path:
        return self.root / "shots.npy"

    def save_shots(self, shots: np.ndarray) -> None:
        """Save the ``(n,)`` float64 shot intensities of the merged frames so far (NaN for
        frames not merged yet; atomic)."""
        tmp = _tmp_beside(self.shots_file)
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(shots, np.float64))
            os.replace(tmp, self.shots_file)
        finally:
            tmp.unlink(missing_ok=True)

    def load_shots(self, n: int) -> np.ndarray:
        """The saved shot intensities, or ``(n,)`` NaN when none were saved."""
        if not self.shots_file.exists():
            return np.full(n, np.nan)
        try:
            shots = np.asarray(np.load(self.shots_file), np.float64)
        except (OSError, ValueError) as exc:
            raise FormatError(
                self.shots_file, f"damaged checkpoint ({exc}); delete {self.root} and rerun"
            ) from None
        if shots.shape != (n,):
            raise FormatError(self.shots_file, f"holds {shots.shape} shots, expected ({n},)")
        return shots

    def save_per_frame(self, name: str, values: np.ndarray) -> None:
        """Save ``(n,)`` float64 per-frame numbers as ``NAME.npy`` (e.g. the frames' noise
        ratios; NaN for frames not merged yet; atomic)."""
        path = self.root / f"{name}.npy"
        tmp = _tmp_beside(path)
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(values, np.float64))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_per_frame(self, name: str, n: int) -> np.ndarray:
        """The per-frame numbers :meth:`save_per_frame` saved, or ``(n,)`` NaN."""
        path = self.root / f"{name}.npy"
        if not path.exists():
            return np.full(n, np.nan)
        try:
            values = np.asarray(np.load(path), np.float64)
        except (OSError, ValueError) as exc:
            raise FormatError(
                path, f"damaged checkpoint ({exc}); delete {self.root} and rerun"
            ) from None
        if values.shape != (n,):
            raise FormatError(path, f"holds {values.shape} values, expected ({n},)")
        return values

    # ------------------------------------------------------------------ similarity blocks
    def block_path(self, start: int, stop: int) -> Path:
        return self.blocks_dir / f"block_{start:09d}_{stop:09d}.npz"

    def save_block(self, rows: SimilarityRows) -> None:
        """Save one finished similarity row block (atomic): CCs and distances as float32,
        overlaps as int32 (16 bytes per pair instead of 32)."""
        path = self.block_path(rows.start, rows.stop)
        tmp = _tmp_beside(path)
        try:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    start=rows.start,
                    stop=rows.stop,
                    common_arc=np.asarray(rows.common_arc.similarity, np.float32),
                    overlap=np.asarray(rows.common_arc.overlap, np.int32),
                    image_distance=np.asarray(rows.image_distance.similarity, np.float32),
                    image_correlation=np.asarray(rows.image_correlation.similarity, np.float32),
                    pixels=rows.image_distance.overlap[:1, :1],
                    seconds=rows.seconds,
                )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def blocks_done(self) -> set[tuple[int, int]]:
        """``(start, stop)`` of the saved row blocks."""
        out = set()
        for p in self.blocks_dir.glob("block_*_*.npz"):
            a, b = p.stem.split("_")[1:]
            out.add((int(a), int(b)))
        return out

    def load_block(self, start: int, stop: int) -> SimilarityRows:
        path = self.block_path(start, stop)
        try:
            with np.load(path) as z:
                ovl = np.asarray(z["overlap"], np.int64)
                pix = np.full(ovl.shape, int(z["pixels"].ravel()[0]) if z["pixels"].size else 0)
                f64 = np.float64
                return SimilarityRows(
                    SimilarityBlock(start, stop, np.asarray(z["common_arc"], f64), ovl),
                    SimilarityBlock(start, stop, np.asarray(z["image_distance"], f64), pix),
                    SimilarityBlock(start, stop, np.asarray(z["image_correlation"], f64), pix),
                    float(z["seconds"]),
                )
        except (OSError, ValueError, KeyError) as exc:
            raise FormatError(
                path, f"damaged similarity checkpoint ({exc}); delete it and rerun"
            ) from None

    def iter_blocks(self, blocks: list[tuple[int, int]]) -> Iterator[SimilarityRows]:
        """The saved blocks, in the order given."""
        for s, e in blocks:
            yield self.load_block(s, e)


__all__ = ["ChunkData", "FourierWork", "SimilarityRows"]

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
    Finished row blocks of the similarity matrices, when the job writes the dense N x N
    matrices (``N <= [fourier] dense_similarity_max_frames``).
``similarity_fold.npz``
    Above ``dense_similarity_max_frames``: the per-frame partial results of the row
    blocks folded so far (:class:`SimilarityFold`: score sums, profile sketch, kNN lists,
    overlap sums and histogram, and which blocks), all the later steps need, in
    ``O(N (k + dims))`` instead of the ``O(N^2)`` blocks.  Sums are exact fixed point, so
    the order blocks finish in does not matter and a resumed run gives the uninterrupted
    run's result bit for bit.

Every file is written to a temporary name and renamed, so a kill leaves either the
previous file or the new one; temporary names (``.*.part``) left by a killed process are
removed when the folder is next opened.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from hpcdiff.diffusion import BlockKnn
from hpcdiff.errors import FormatError, OutputExistsError
from hpcdiff.merge import FrameVoxels, Grid, MergeAccumulator
from hpcdiff.similarity import (
    FrameScores,
    ProfileForm,
    ProfileSketch,
    SimilarityBlock,
    fisher_z,
)

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


class ExactSum:
    """Float sums that do not depend on the order of the terms (bit for bit).

    Each added value is held as fixed point in two int64 limbs: ``floor(v 2^e)`` and the
    rest in units of ``2^-(e + 31)``; integer sums are exact and associative, so adding
    the same values in any order gives the same bits.  ``e`` is chosen from ``bound``, a
    bound on the magnitude of every sum, so the high limb cannot overflow; the resolution
    is ``2^-(e + 31)`` per added value (about 1e-12 relative to ``bound``'s scale or
    better).

    Parameters
    ----------
    shape
        Shape of the sums.
    bound
        Largest ``|sum|`` possible (> 0).
    """

    LO_BITS = 31

    def __init__(self, shape: int | tuple[int, ...], *, bound: float) -> None:
        self.exponent = 61 - max(0, math.ceil(math.log2(max(float(bound), 1.0)) + 1))
        self.hi = np.zeros(shape, np.int64)
        self.lo = np.zeros(shape, np.int64)

    def add(self, where: slice | tuple[slice, ...], values: np.ndarray) -> None:
        """``sums[where] += values`` (float64 values of ``sums[where]``'s shape)."""
        x = np.ldexp(np.asarray(values, np.float64), self.exponent)
        h = np.floor(x)
        self.hi[where] += h.astype(np.int64)
        self.lo[where] += np.rint(np.ldexp(x - h, self.LO_BITS)).astype(np.int64)

    def value(self) -> np.ndarray:
        """The sums, float64."""
        carry = self.lo >> self.LO_BITS  # floor division by 2^LO_BITS
        rest = self.lo - (carry << self.LO_BITS)
        whole = (self.hi + carry).astype(np.float64)
        return np.ldexp(whole + np.ldexp(rest.astype(np.float64), -self.LO_BITS), -self.exponent)


_Z_MAX = float(np.arctanh(1.0 - 1e-12))  # |Fisher z| of a clipped |r| = 1
_OVERLAP_MAX = 2**31  # overlaps are saved as int32


@dataclass
class SimilarityFold:
    """What the steps after the similarity need from its row blocks, folded block by block.

    Per frame: the Fisher-z and correlation sums of the scores (as
    :class:`~hpcdiff.similarity.FrameScores`), the profile sketch (as
    :class:`~hpcdiff.similarity.ProfileSketch`, ``(n, dims)``), the ``k`` nearest frames by
    common-arc CC, image distance and image correlation
    (:class:`~hpcdiff.diffusion.BlockKnn`), the summed overlaps; and the pairs with a
    similarity and the histogram of the overlaps (their exact quantiles).  Memory and
    checkpoint ``O(n (2 dims + 3 k))`` (the sketch's two int64 limbs): 0.48 GiB at
    ``n = 10^5`` with the defaults, where the saved blocks would be 75 GiB.

    The float sums are :class:`ExactSum` (the rest are integers, and the kNN lists break
    ties by index), so blocks may be folded in any order, as they finish, with the same
    result bit for bit: a resumed run gives the uninterrupted run's result.

    Parameters
    ----------
    n
        Frames.
    k
        Neighbours kept per frame (``[fourier] diffusion_knn``).
    dims, form
        Profile sketch dimensions and form (``[fourier] profile_dims``, ``profile_form``).
    """

    n: int
    k: int
    dims: int
    form: ProfileForm
    task_seconds: float = 0.0
    pairs_with: int = 0
    done: set[tuple[int, int]] = field(default_factory=set)
    knn_arc: BlockKnn = field(init=False)
    knn_dist: BlockKnn = field(init=False)
    knn_corr: BlockKnn = field(init=False)

    def __post_init__(self) -> None:
        n = self.n
        self._projection = ProfileSketch(n, dims=self.dims, seed=0, form=self.form).projection
        z_max = {"cc": 1.0, "fisher": _Z_MAX, "significance": _Z_MAX * _OVERLAP_MAX**0.5}
        r_max = float(np.abs(self._projection).max()) if self._projection.size else 1.0
        self.sum_wz = ExactSum(n, bound=n * _Z_MAX * _OVERLAP_MAX)
        self.sum_r = ExactSum(n, bound=n)
        self.sketch_sum = ExactSum((n, self.dims), bound=n * z_max[self.form] * r_max)
        self.sum_w = np.zeros(n, np.int64)
        self.pairs = np.zeros(n, np.int64)
        self.overlap_sum = np.zeros(n, np.int64)
        self.overlap_hist = np.zeros(0, np.int64)  # pairs per overlap value
        self.knn_arc = BlockKnn(n, self.k, largest=True)
        self.knn_dist = BlockKnn(n, self.k)
        self.knn_corr = BlockKnn(n, self.k, largest=True)

    @property
    def folded(self) -> int:
        """Blocks folded so far."""
        return len(self.done)

    def add(self, rows: SimilarityRows) -> None:
        """Fold one row block (rows ``start:stop``, columns ``start:``), in any order.

        Raises
        ------
        ValueError
            The block was folded already.
        """
        s, e, n = rows.start, rows.stop, self.n
        if (s, e) in self.done:
            raise ValueError(f"row block {s}:{e} is folded already")
        block = rows.common_arc
        r = np.array(block.similarity, dtype=np.float64)
        ovl = np.asarray(block.overlap).astype(np.int64)
        upper = np.arange(s, n)[None, :] > np.arange(s, e)[:, None]
        r[~upper] = np.nan  # each pair once: strictly above the diagonal
        cols = slice(s, n)
        # scores (FrameScores.add): w = n_ij - 3 (integer), z = atanh(r)
        z = fisher_z(r, ovl, significance=False)
        ok = np.isfinite(z)
        w = np.where(ok, np.maximum(ovl - 3, 0), 0)
        wz = np.where(ok, w * z, 0.0)
        rr = np.where(ok, r, 0.0)
        for acc, vals in ((self.sum_wz, wz), (self.sum_r, rr)):
            acc.add(slice(s, e), vals.sum(axis=1))
            acc.add(cols, vals.sum(axis=0))
        for arr, ivals in ((self.sum_w, w), (self.pairs, ok.astype(np.int64))):
            arr[s:e] += ivals.sum(axis=1)
            arr[cols] += ivals.sum(axis=0)
        # profile sketch (ProfileSketch.add)
        if self.form == "cc":
            zp = r
        else:
            zp = fisher_z(r, ovl, significance=self.form == "significance")
        zp = np.where(np.isfinite(zp), zp, 0.0)
        proj = self._projection
        self.sketch_sum.add(slice(s, e), zp @ proj[cols])
        self.sketch_sum.add(cols, zp.T @ proj[s:e])
        # kNN lists, overlaps
        self.knn_dist.add(s, rows.image_distance.similarity)
        self.knn_corr.add(s, rows.image_correlation.similarity)
        self.knn_arc.add(s, block.similarity)
        self.pairs_with += int(np.isfinite(r[upper]).sum())
        ovl_up = np.where(upper, ovl, 0)
        self.overlap_sum[s:e] += ovl_up.sum(axis=1)
        self.overlap_sum[cols] += ovl_up.sum(axis=0)
        counts = np.bincount(ovl[upper])
        if counts.size > self.overlap_hist.size:
            self.overlap_hist = np.pad(self.overlap_hist, (0, counts.size - self.overlap_hist.size))
        self.overlap_hist[: counts.size] += counts
        self.task_seconds += rows.seconds
        self.done.add((s, e))

    def scores(self) -> FrameScores:
        """The per-frame scores (``mean_z``, ``significance``, ``mean_cc``)."""
        out = FrameScores(self.n)
        out.sum_wz[...] = self.sum_wz.value()
        out.sum_w[...] = self.sum_w
        out.sum_r[...] = self.sum_r.value()
        out.pairs[...] = self.pairs
        return out

    def sketch(self) -> np.ndarray:
        """``(n, dims)`` float64 profile sketch ``Z @ R``."""
        return self.sketch_sum.value()

    # ------------------------------------------------------------------ checkpoint
    _SUMS = ("sum_wz", "sum_r", "sketch_sum")
    _INTS = ("sum_w", "pairs", "overlap_sum", "overlap_hist")

    def arrays(self) -> dict[str, np.ndarray]:
        """The state as arrays (:meth:`from_arrays` restores it exactly)."""
        out: dict[str, np.ndarray] = {
            "shape": np.array([self.n, self.k, self.dims], np.int64),
            "form": np.array(self.form),
            "done": np.array(sorted(self.done), np.int64).reshape(-1, 2),
            "task_seconds": np.array(self.task_seconds),
            "pairs_with": np.array(self.pairs_with, np.int64),
        }
        for name in self._SUMS:
            acc: ExactSum = getattr(self, name)
            out[f"{name}_hi"], out[f"{name}_lo"] = acc.hi, acc.lo
        for name in self._INTS:
            out[name] = getattr(self, name)
        for name in ("arc", "dist", "corr"):
            knn: BlockKnn = getattr(self, f"knn_{name}")
            out[f"knn_{name}_keys"], out[f"knn_{name}_indices"] = knn.keys, knn.indices
        return out

    @classmethod
    def from_arrays(cls, z: dict[str, np.ndarray]) -> SimilarityFold:
        """The fold saved by :meth:`arrays`."""
        n, k, dims = (int(v) for v in z["shape"])
        form = str(z["form"])
        if form not in ("cc", "fisher", "significance"):
            raise ValueError(f"unknown profile form {form!r}")
        fold = cls(n, k, dims, form)  # type: ignore[arg-type]  # checked above
        fold.done = {(int(a), int(b)) for a, b in z["done"]}
        fold.pairs_with = int(z["pairs_with"])
        fold.task_seconds = float(z["task_seconds"])
        for name in cls._SUMS:
            acc: ExactSum = getattr(fold, name)
            acc.hi[...] = z[f"{name}_hi"]
            acc.lo[...] = z[f"{name}_lo"]
        for name in cls._INTS[:-1]:
            getattr(fold, name)[...] = z[name]
        fold.overlap_hist = np.asarray(z["overlap_hist"], np.int64)
        for name in ("arc", "dist", "corr"):
            knn: BlockKnn = getattr(fold, f"knn_{name}")
            knn.keys[...] = z[f"knn_{name}_keys"]
            knn.indices[...] = z[f"knn_{name}_indices"]
        return fold


def as_saved(rows: SimilarityRows) -> SimilarityRows:
    """``rows`` as :meth:`FourierWork.save_block` keeps them (CCs and distances rounded to
    float32): the dense path (blocks saved, then folded from disk) and the folded path
    (blocks folded as they arrive) give the same bits."""

    def f32(b: SimilarityBlock) -> SimilarityBlock:
        values = np.asarray(b.similarity, np.float32).astype(np.float64)
        return SimilarityBlock(b.start, b.stop, values, b.overlap)

    return SimilarityRows(
        f32(rows.common_arc), f32(rows.image_distance), f32(rows.image_correlation), rows.seconds
    )


class BlockFolder:
    """``on_result`` of the similarity tasks when no dense matrix is written.

    Each block is folded into ``fold`` as it arrives (:func:`as_saved` first) and
    dropped: no block is written.  The fold is saved (``similarity_fold.npz``) at most
    every ``checkpoint_s`` seconds and on :meth:`checkpoint` (a stop signal, the end of
    the stage), so a kill loses at most the blocks folded since the last save, which a
    rerun computes again.

    Parameters
    ----------
    work
        The job's working folder.
    fold
        The fold so far (:meth:`FourierWork.load_fold` on a rerun).
    layout
        Every row block ``(start, stop)``.
    checkpoint_s
        Least seconds between two saves of the fold (0: after every block).
    """

    def __init__(
        self,
        work: FourierWork,
        fold: SimilarityFold,
        layout: list[tuple[int, int]],
        *,
        checkpoint_s: float = 60.0,
    ) -> None:
        self.work, self.fold, self.layout = work, fold, list(layout)
        self.checkpoint_s = float(checkpoint_s)
        self._last = time.monotonic()
        # row blocks saved by a stopped run of the dense path's layout: fold, then drop them
        saved = sorted(work.blocks_done())
        for b in saved:
            if b in self.layout and b not in fold.done:
                fold.add(work.load_block(*b))
        if saved:
            self.checkpoint()
            for b in saved:
                work.block_path(*b).unlink(missing_ok=True)

    def missing(self) -> list[tuple[int, int]]:
        """Blocks not folded yet: the tasks to run."""
        return [b for b in self.layout if b not in self.fold.done]

    def __call__(self, _index: int, rows: SimilarityRows) -> None:
        self.fold.add(as_saved(rows))
        if time.monotonic() - self._last >= self.checkpoint_s:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Save the fold."""
        self.work.save_fold(self.fold)
        self._last = time.monotonic()


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

    # ------------------------------------------------------------------ folded blocks
    @property
    def fold_file(self) -> Path:
        return self.root / "similarity_fold.npz"

    def save_fold(self, fold: SimilarityFold) -> None:
        """Save the folded per-frame partial results (atomic)."""
        tmp = _tmp_beside(self.fold_file)
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, **fold.arrays())  # type: ignore[arg-type]  # no key is allow_pickle
            os.replace(tmp, self.fold_file)
        finally:
            tmp.unlink(missing_ok=True)

    def load_fold(self, *, n: int, k: int, dims: int, form: ProfileForm) -> SimilarityFold:
        """The saved fold, or an empty one when none was saved.

        Raises
        ------
        FormatError
            The file is damaged or holds another layout (frames, ``k``, ``dims``, form).
        """
        if not self.fold_file.is_file():
            return SimilarityFold(n, k, dims, form)
        try:
            with np.load(self.fold_file) as z:
                fold = SimilarityFold.from_arrays({name: z[name] for name in z.files})
        except (OSError, ValueError, KeyError) as exc:
            raise FormatError(
                self.fold_file, f"damaged similarity checkpoint ({exc}); delete it and rerun"
            ) from None
        if (fold.n, fold.k, fold.dims, fold.form) != (n, k, dims, form):
            raise FormatError(
                self.fold_file,
                f"holds n={fold.n}, k={fold.k}, dims={fold.dims}, form={fold.form!r}; the job "
                f"has n={n}, k={k}, dims={dims}, form={form!r}: delete {self.root} and rerun",
            )
        return fold


__all__ = [
    "BlockFolder",
    "ChunkData",
    "ExactSum",
    "FourierWork",
    "SimilarityFold",
    "SimilarityRows",
    "as_saved",
]

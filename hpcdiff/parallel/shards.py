"""Checkpoint shards: each rank's results, written atomically every K frames.

A job's working folder (``<output.dir>/<kind>.shards/``) holds ``state.json`` (which
job wrote it: config hash, number of frames, frame files) and shard files
``shard-FFFFFFFFFF-NNNNNN.h5`` (first global frame number, number of frames).  A shard
holds, for the frames it covers::

    frame          (n,) int64        global frame numbers that gave results
    <name>         (n, ...)          one dataset per result (features, class, ...)
    reject_frame   (m,) int64        frames that could not be used
    reject_reason  (m,) utf-8 str    why
    attrs: provenance (hpcdiff version, config hash, time), rank

Shards are written to a temporary name and renamed, so a shard either exists whole or
not at all; a frame is *done* once it is in a shard (with a result or as a reject).
Frame sets of shards are disjoint, so the folder can be read in any order and by any
number of ranks, and a resumed job may use a different number of ranks.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from hpcdiff.errors import FormatError, OutputExistsError
from hpcdiff.io.hdf5 import read_checked
from hpcdiff.io.outputs import atomic_path, output_errors, provenance, write_json

STATE_FILE = "state.json"
_REDO = "delete this shard and run the same command again (its frames are computed again)"
_SHARD_GLOB = "shard-*.h5"
_SHARD_NAME = re.compile(r"shard-(\d+)-(\d+)\.h5")


def shard_name(first: int, n_frames: int) -> str:
    """File name of a shard whose lowest frame is ``first`` and that holds ``n_frames`` frames
    (results and rejects): ``shard-FFFFFFFFFF-NNNNNN.h5``."""
    return f"shard-{first:010d}-{n_frames:06d}.h5"


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """``(first, n_frames)`` of a shard file name (see :func:`shard_name`); ``None`` if
    ``name`` is not one (temporary files of interrupted writes are not)."""
    m = _SHARD_NAME.fullmatch(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass
class ShardBuffer:
    """Results of one rank not yet written to a shard."""

    frames: list[np.ndarray] = field(default_factory=list)
    arrays: dict[str, list[np.ndarray]] = field(default_factory=dict)
    rejects: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(f) for f in self.frames) + len(self.rejects)

    def add(
        self,
        frames: np.ndarray,
        arrays: Mapping[str, np.ndarray],
        rejects: list[tuple[int, str]] = (),  # type: ignore[assignment]
    ) -> None:
        """Append results for ``frames`` ((n,) int) and their rejects (frame, reason).

        Raises
        ------
        ValueError
            If an array's first dimension is not ``len(frames)`` or the result names
            change between calls.
        """
        frames = np.asarray(frames, dtype=np.int64)
        self.rejects.extend((int(f), str(r)) for f, r in rejects)
        if not len(frames):
            return
        if self.frames and set(arrays) != set(self.arrays):
            raise ValueError(f"result names changed: {sorted(arrays)} vs {sorted(self.arrays)}")
        for name, arr in arrays.items():
            if len(arr) != len(frames):
                raise ValueError(f"result {name!r} has {len(arr)} rows for {len(frames)} frames")
            self.arrays.setdefault(name, []).append(np.asarray(arr))
        self.frames.append(frames)

    def clear(self) -> None:
        """Forget everything (after it was written)."""
        self.frames.clear()
        self.arrays.clear()
        self.rejects.clear()


class ShardStore:
    """The shard folder of one job.

    Parameters
    ----------
    directory
        The folder (created by :meth:`prepare`).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    # ---------------------------------------------------------------- lifecycle (root)

    @classmethod
    def prepare(
        cls,
        directory: str | Path,
        *,
        config_hash: str,
        n_frames: int,
        files: list[str],
        extra: dict | None = None,
        force: bool = False,
    ) -> tuple[ShardStore, bool]:
        """Create the folder, or reopen it to resume the same job.  Call on one rank.

        Returns
        -------
        (store, resumed)
            ``resumed`` is true when the folder held shards of this same job.

        Raises
        ------
        OutputError
            If the folder cannot be created or written (read-only, full disk).
        OutputExistsError
            If the folder was written by a different job (config hash, number of frames,
            files or ``extra``, e.g. the model's hash, differ) and ``force`` is false.  With ``force`` it is emptied.
        FormatError
            If its ``state.json`` cannot be read.
        """
        with output_errors(directory):
            return cls._prepare(
                directory,
                config_hash=config_hash,
                n_frames=n_frames,
                files=files,
                extra=extra,
                force=force,
            )

    @classmethod
    def _prepare(
        cls,
        directory: str | Path,
        *,
        config_hash: str,
        n_frames: int,
        files: list[str],
        extra: dict | None,
        force: bool,
    ) -> tuple[ShardStore, bool]:
        store = cls(directory)
        state = {
            "config_hash": config_hash,
            "n_frames": n_frames,
            "files": list(files),
            "extra": extra or {},
        }
        state_path = store.directory / STATE_FILE
        if state_path.exists():
            try:
                old = json.loads(state_path.read_text())
            except (OSError, ValueError) as exc:
                raise FormatError(state_path, f"cannot read the checkpoint state ({exc})") from None
            same = all(old.get(k) == v for k, v in state.items())
            if same:
                return store, bool(store.paths())
            if not force:
                differs = [k for k, v in state.items() if old.get(k) != v]
                raise OutputExistsError(
                    f"{store.directory} holds checkpoints of a different job ({', '.join(differs)} "
                    f"differ: config hash {old.get('config_hash')} there, {config_hash} here); "
                    "pass --force to discard them, or choose another output.dir"
                )
            store.remove()
        elif store.directory.exists() and any(store.directory.iterdir()) and not force:
            raise OutputExistsError(
                f"{store.directory} exists and is not a checkpoint folder of hpcdiff; "
                "pass --force to discard it"
            )
        elif store.directory.exists():
            store.remove()
        store.directory.mkdir(parents=True, exist_ok=True)
        write_json(state_path, {**state, **provenance(config_hash)})
        return store, False

    def remove(self) -> None:
        """Delete the folder and every shard in it."""
        if self.directory.exists():
            shutil.rmtree(self.directory)

    # ---------------------------------------------------------------- writing (any rank)

    def write(self, buffer: ShardBuffer, *, config_hash: str, rank: int) -> Path | None:
        """Write ``buffer`` as one shard (atomically) and clear it; ``None`` if empty."""
        if not len(buffer):
            return None
        frames = np.concatenate(buffer.frames) if buffer.frames else np.empty(0, dtype=np.int64)
        rej_frames = np.array([f for f, _ in buffer.rejects], dtype=np.int64)
        first = int(min(frames.min(initial=2**62), rej_frames.min(initial=2**62)))
        path = self.directory / shard_name(first, len(buffer))
        # built in memory, then written with plain file I/O: a full disk is then a clean
        # OSError (HDF5 writing to a full disk fails in its close, and can crash)
        image = io.BytesIO()
        with h5py.File(image, "w") as h5:
            # fletcher32: HDF5 checks every chunk on read (ShardStore.read)
            h5.create_dataset("frame", data=frames, fletcher32=True)
            for name, parts in buffer.arrays.items():
                h5.create_dataset(name, data=np.concatenate(parts), fletcher32=True)
            h5.create_dataset("reject_frame", data=rej_frames, fletcher32=True)
            h5.create_dataset(
                "reject_reason",
                data=[r for _, r in buffer.rejects],
                dtype=h5py.string_dtype("utf-8"),
            )
            for key, value in provenance(config_hash, rank=rank).items():
                h5.attrs[key] = value
        with atomic_path(path) as tmp:
            tmp.write_bytes(image.getbuffer())
        buffer.clear()
        return path

    # ---------------------------------------------------------------- reading (any rank)

    def paths(self) -> list[Path]:
        """The finished shard files (temporary files of interrupted writes excluded)."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(_SHARD_GLOB))

    def n_done_by_name(self) -> int:
        """Frames in the finished shards, counted from their names alone (no file opened)."""
        total = 0
        for path in self.paths():
            parsed = parse_shard_name(path.name)
            if parsed is not None:
                total += parsed[1]
        return total

    def done_frames(self) -> np.ndarray:
        """Sorted global frame numbers already in a shard, as results or rejects, (n,) int64.

        Raises
        ------
        FormatError
            If a shard is unreadable or two shards claim the same frame.
        """
        parts = []
        for path in self.paths():
            with _open(path) as h5:
                parts.append(read_checked(h5["frame"], path=path, advice=_REDO))
                parts.append(read_checked(h5["reject_frame"], path=path, advice=_REDO))
        done = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        done = np.sort(done.astype(np.int64))
        if done.size and np.any(done[1:] == done[:-1]):
            dup = int(done[1:][done[1:] == done[:-1]][0])
            raise FormatError(self.directory, f"frame {dup} is in more than one shard")
        return done

    def read(
        self, names: list[str], *, start: int = 0, stop: int | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Results for the frames in ``[start, stop)``, sorted by frame.

        Returns
        -------
        frames
            (n,) int64 global frame numbers that have results (rejects excluded).
        arrays
            ``{name: (n, ...)}`` in the same order.
        """
        frames_parts: list[np.ndarray] = []
        arrays: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for path in self.paths():
            with _open(path) as h5:
                frames = read_checked(h5["frame"], path=path, advice=_REDO)
                keep = (frames >= start) & (frames < (np.inf if stop is None else stop))
                if not keep.any():
                    continue
                frames_parts.append(frames[keep])
                for name in names:
                    if name not in h5:
                        raise FormatError(path, f"shard has no result {name!r}", dataset=name)
                    arrays[name].append(read_checked(h5[name], path=path, advice=_REDO)[keep])
        if not frames_parts:
            return np.empty(0, dtype=np.int64), {n: np.empty((0,)) for n in names}
        frames = np.concatenate(frames_parts)
        order = np.argsort(frames, kind="stable")
        return frames[order], {n: np.concatenate(p)[order] for n, p in arrays.items()}

    def rejects(self) -> list[tuple[int, str]]:
        """Every (global frame, reason) recorded in the shards, sorted by frame."""
        out: list[tuple[int, str]] = []
        for path in self.paths():
            with _open(path) as h5:
                reasons = h5["reject_reason"].asstr()[()] if len(h5["reject_reason"]) else []
                out.extend(zip(h5["reject_frame"][()].tolist(), list(reasons), strict=True))
        return sorted(out)


def _open(path: Path) -> h5py.File:
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise FormatError(path, f"cannot open checkpoint shard ({exc})") from None
    for name in ("frame", "reject_frame", "reject_reason"):
        if name not in h5:
            h5.close()
            raise FormatError(path, "not a checkpoint shard (dataset missing)", dataset=name)
    return h5


__all__ = ["STATE_FILE", "ShardBuffer", "ShardStore"]

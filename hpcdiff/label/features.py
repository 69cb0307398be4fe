"""Feature vectors of the run's frames for the labelling page's active learning.

The run's features file (``output.dir/features.h5`` from ``hpcdiff features JOB.toml``)
supplies the frames it holds, when it was made with the job's layer; the other frames'
features are computed in a background thread (:class:`FeatureWorker`) with the job's
preprocessing and :class:`hpcdiff.features.FeatureExtractor`, batch by batch, so the page
can use what exists while the rest is computed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpcdiff.io.cxi import FrameId

log = logging.getLogger("hpcdiff.label")


class FeatureTable:
    """``(n, d)`` features of the run's frames, filled as they become known (thread-safe).

    Attributes
    ----------
    n_frames
        Frames of the run.
    x
        ``(n, d)`` float32 once ``d`` is known (``None`` before).
    have
        ``(n,)`` bool, rows whose features are known.
    version
        Increases with every batch added.
    status
        One line for the page (``"computing"``, ``"done"``, ``"failed: ..."``).
    source
        Where the features come from (file, computed, both).
    """

    def __init__(self, n_frames: int) -> None:
        self.n_frames = int(n_frames)
        self.x: np.ndarray | None = None
        self.have = np.zeros(self.n_frames, dtype=bool)
        self.version = 0
        self.status = "waiting"
        self.source = ""
        self.lock = threading.Lock()

    def add(self, rows: np.ndarray, x: np.ndarray) -> None:
        """Record features ``x`` ``(m, d)`` of ``rows`` ``(m,)``."""
        rows = np.asarray(rows, dtype=np.int64)
        x = np.asarray(x, dtype=np.float32)
        with self.lock:
            if self.x is None:
                self.x = np.zeros((self.n_frames, x.shape[1]), dtype=np.float32)
            self.x[rows] = x
            self.have[rows] = True
            self.version += 1

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, int]:
        """``(rows, x[rows], version)`` of the rows known now (copies)."""
        with self.lock:
            rows = np.flatnonzero(self.have)
            x = self.x[rows].copy() if self.x is not None else np.zeros((0, 0), dtype=np.float32)
            return rows, x, self.version

    def progress(self) -> dict[str, Any]:
        with self.lock:
            return {
                "done": int(self.have.sum()),
                "total": self.n_frames,
                "status": self.status,
                "source": self.source,
            }


def load_features_file(
    path: str | Path,
    frame_ids: Sequence[FrameId],
    *,
    layer: str,
    table: FeatureTable,
) -> int:
    """Fill ``table`` from a features file; returns the rows taken (0 if it does not fit).

    A file made with another layer is not used (its frames are computed instead).  Frames
    match by file and index, or by base name and index where base names are unique.
    """
    from hpcdiff.io.featurefile import read_features

    fs = read_features(path)
    if fs.meta.layer != layer:
        log.warning("%s holds layer %s, the job asks for %s: not used", path, fs.meta.layer, layer)
        return 0
    exact = {(f.file, f.index): k for k, f in enumerate(frame_ids)}
    files = {f.file for f in frame_ids}
    names_unique = len({Path(f).name for f in files}) == len(files)
    by_name = {(Path(f.file).name, f.index): k for k, f in enumerate(frame_ids)}
    rows, src = [], []
    for j, (f, i) in enumerate(fs.keys):
        k = exact.get((f, i))
        if k is None and names_unique:
            k = by_name.get((Path(f).name, i))
        if k is not None:
            rows.append(k)
            src.append(j)
    if rows:
        table.add(np.array(rows), fs.features[np.array(src)])
    return len(rows)


class FeatureWorker(threading.Thread):
    """Computes the features of the rows a :class:`FeatureTable` lacks, in batches.

    Parameters
    ----------
    table
        Where features go.
    compute
        ``compute(rows) -> (m, d)`` features of global frame numbers ``rows`` (reads,
        preprocesses and runs the CNN); built lazily in this thread by ``make_compute``.
    make_compute
        Called once in the thread (loading weights takes seconds).
    batch_size
        Frames per batch.
    """

    def __init__(
        self,
        table: FeatureTable,
        make_compute: Any,
        *,
        batch_size: int = 16,
    ) -> None:
        super().__init__(name="hpcdiff-label-features", daemon=True)
        self.table = table
        self.make_compute = make_compute
        self.batch_size = int(batch_size)
        self.stop_event = threading.Event()

    def run(self) -> None:
        todo = np.flatnonzero(~self.table.have)
        if todo.size == 0:
            self.table.status = "done"
            return
        self.table.status = "loading weights"
        try:
            compute = self.make_compute()
            self.table.status = "computing"
            t0 = time.perf_counter()
            for start in range(0, todo.size, self.batch_size):
                if self.stop_event.is_set():
                    self.table.status = "stopped"
                    return
                rows = todo[start : start + self.batch_size]
                self.table.add(rows, compute(rows))
                log.info(
                    "features %d/%d (%.0f s)",
                    start + rows.size, todo.size, time.perf_counter() - t0,
                )  # fmt: skip
            self.table.status = "done"
        except Exception as exc:  # the page goes on in random order and shows why
            log.exception("feature computation failed")
            self.table.status = f"failed: {exc}"

    def stop(self) -> None:
        self.stop_event.set()

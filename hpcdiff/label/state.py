"""What the labelling page knows: the labels so far, what to offer next, undo and skip.

:class:`LabellingSession` sits between the HTTP handlers and the labels file.  Each page
(browser tab) is a *client* with its own id, current frame, undo history and skipped
frames.  Every answer goes straight to the file (:class:`~hpcdiff.label.store.LabelStore`:
read, merge, atomic replace under a lock); the session reloads the file whenever another
page or process changed it, so a restart continues where the file left off.

Frames are offered in a random order (fixed by ``seed``) until the active learner
(:class:`~hpcdiff.label.active.ActiveLearner`) has enough labels of every class and
features; then the most uncertain frames, spread over the feature space, come first.
A frame offered to one page is not offered to another for ``reserve_s`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpcdiff.io.cxi import FrameId
from hpcdiff.label.active import MIN_PER_CLASS, AccuracyEstimate, ActiveLearner
from hpcdiff.label.features import FeatureTable
from hpcdiff.label.store import LabelRows, LabelStore


@dataclass
class _Client:
    current: int | None = None
    reason: str = ""
    history: list[tuple[int, int]] = field(default_factory=list)  # (row, label) answered
    skipped: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Offer:
    """A frame offered to a page.

    Attributes
    ----------
    row
        Global frame number in the run (``None``: nothing left to label).
    reason
        ``"random"``, ``"uncertain"`` (chosen by the active learner) or ``"undo"``.
    proba
        The model's class probabilities of the frame, where a model exists.
    """

    row: int | None
    reason: str
    proba: tuple[float, ...] | None = None


class LabellingSession:
    """Labels of one run, shared by every page of one server.

    Parameters
    ----------
    frame_ids
        The run's frames; position = global frame number.
    store
        The labels file.
    features
        Feature table of the run's frames (``None``: random order only).
    seed
        Seed of the random order.
    n_components, C
        PCA dimension and regularisation of the active learner (the job's ``[learn]``).
    reserve_s
        How long a frame offered to one page is kept from the others.
    """

    def __init__(
        self,
        frame_ids: Sequence[FrameId],
        store: LabelStore,
        *,
        features: FeatureTable | None = None,
        seed: int = 0,
        n_components: int = 50,
        C: float = 1.0,
        reserve_s: float = 120.0,
    ) -> None:
        self.frame_ids = list(frame_ids)
        self.store = store
        self.scheme = store.scheme
        self.features = features
        self.n_components = int(n_components)
        self.C = float(C)
        self.reserve_s = float(reserve_s)
        self.order = np.random.default_rng(seed).permutation(len(self.frame_ids))
        self._rng = np.random.default_rng(seed + 1)
        self._lock = threading.RLock()
        self._clients: dict[str, _Client] = {}
        self._offered: dict[int, tuple[str, float]] = {}
        self._rows: dict[tuple[str, int], int] = {
            (f.file, f.index): k for k, f in enumerate(self.frame_ids)
        }
        files = {f.file for f in self.frame_ids}
        self._by_name: dict[tuple[str, int], int] | None = None
        from pathlib import Path

        if len({Path(f).name for f in files}) == len(files):
            self._by_name = {(Path(f.file).name, f.index): k for k, f in enumerate(self.frame_ids)}
        self.labels: dict[int, int] = {}
        self.n_outside = 0
        self._signature: Any = object()
        self._labels_version = 0
        self._learner: ActiveLearner | None = None
        self._learner_rows = np.zeros(0, dtype=np.int64)
        self._learner_features_version = -1
        self._fit_version = -1
        self._fitted = False
        self._estimate: tuple[int, AccuracyEstimate | None] = (-1, None)
        self.refresh()

    # ------------------------------------------------------------------ labels file
    def _row_of(self, key: tuple[str, int]) -> int | None:
        row = self._rows.get(key)
        if row is None and self._by_name is not None:
            from pathlib import Path

            row = self._by_name.get((Path(key[0]).name, key[1]))
        return row

    def _adopt(self, rows: LabelRows) -> None:
        labels: dict[int, int] = {}
        outside = 0
        for key, y in rows.label.items():
            row = self._row_of(key)
            if row is None:
                outside += 1
            else:
                labels[row] = y
        if labels != self.labels:
            self._labels_version += 1
        self.labels = labels
        self.n_outside = outside
        self._signature = self.store.signature()

    def refresh(self) -> None:
        """Reload the labels file if it changed since it was last read."""
        with self._lock:
            if self.store.signature() != self._signature:
                self._adopt(self.store.read())

    # ------------------------------------------------------------------ answers
    def client(self, cid: str) -> _Client:
        with self._lock:
            return self._clients.setdefault(cid, _Client())

    def answer(self, cid: str, row: int, label: int) -> Offer:
        """Save ``label`` for frame ``row`` (from page ``cid``); returns the next offer."""
        self._check_row(row)
        if not 0 <= int(label) < self.scheme.n_classes:
            raise ValueError(f"label {label} is not in 0..{self.scheme.n_classes - 1}")
        with self._lock:
            rows = self.store.set(self.frame_ids[row], int(label))
            self._adopt(rows)
            c = self.client(cid)
            c.history.append((row, int(label)))
            c.current = None
            self._offered.pop(row, None)
            return self.next(cid)

    def skip(self, cid: str, row: int) -> Offer:
        """Do not offer ``row`` to this page again (this session); returns the next offer."""
        self._check_row(row)
        with self._lock:
            c = self.client(cid)
            c.skipped.add(row)
            if c.current == row:
                c.current = None
            self._offered.pop(row, None)
            return self.next(cid)

    def undo(self, cid: str) -> Offer:
        """Take back this page's last answer (its label is removed from the file unless
        another page changed it since) and offer that frame again."""
        with self._lock:
            c = self.client(cid)
            if not c.history:
                return self.next(cid)
            row, label = c.history.pop()
            rows = self.store.remove(self.frame_ids[row], only_if=label)
            self._adopt(rows)
            c.current, c.reason = row, "undo"
            self._offered[row] = (cid, time.monotonic())
            return Offer(row, "undo", self._proba(row))

    def _check_row(self, row: int) -> None:
        if not 0 <= int(row) < len(self.frame_ids):
            raise IndexError(f"frame {row} is not in 0..{len(self.frame_ids) - 1}")

    # ------------------------------------------------------------------ offers
    def _blocked(self, cid: str) -> set[int]:
        now = time.monotonic()
        c = self.client(cid)
        held = {
            r for r, (other, t) in self._offered.items()
            if other != cid and now - t < self.reserve_s
        }  # fmt: skip
        return held | c.skipped

    def next(self, cid: str) -> Offer:
        """The frame page ``cid`` should label now (the same one until it is answered)."""
        with self._lock:
            self.refresh()
            c = self.client(cid)
            if c.current is not None and c.current not in self.labels:
                self._offered[c.current] = (cid, time.monotonic())
                return Offer(c.current, c.reason, self._proba(c.current))
            blocked = self._blocked(cid)
            row, reason = None, "random"
            if self._fit():
                assert self._learner is not None
                local_labelled = self._local(list(self.labels))
                exclude = self._local(list(blocked))
                picked = self._learner.select(
                    local_labelled, n=1, exclude=exclude, random_state=self._rng
                )
                if picked:
                    row, reason = int(self._learner_rows[picked[0]]), "uncertain"
            if row is None:
                for r in self.order.tolist():
                    if r not in self.labels and r not in blocked:
                        row = int(r)
                        break
            c.current, c.reason = row, reason
            if row is None:
                return Offer(None, "done")
            self._offered[row] = (cid, time.monotonic())
            return Offer(row, reason, self._proba(row))

    # ------------------------------------------------------------------ model
    def _local(self, rows: list[int]) -> np.ndarray:
        """Learner rows of global frame numbers (those without features dropped)."""
        if not rows:
            return np.zeros(0, dtype=np.int64)
        pos = np.searchsorted(self._learner_rows, rows)
        pos = np.clip(pos, 0, max(len(self._learner_rows) - 1, 0))
        ok = self._learner_rows[pos] == np.asarray(rows)
        return pos[ok].astype(np.int64)

    def _refresh_learner(self) -> None:
        """(Re)build the learner's PCA when the known features grew by 20 % or are complete."""
        table = self.features
        if table is None:
            return
        prog = table.progress()
        n_have = prog["done"]
        n_before = len(self._learner_rows)
        complete = n_have == table.n_frames
        if n_have < max(2 * self.scheme.n_classes * 3, 10):
            return
        grown = n_have >= 1.2 * n_before or (complete and n_have != n_before)
        if self._learner is not None and not grown:
            return
        rows, x, version = table.snapshot()
        self._learner = ActiveLearner(
            x, n_classes=self.scheme.n_classes, n_components=self.n_components, C=self.C
        )
        self._learner_rows = rows
        self._learner_features_version = version
        self._fit_version = -1

    def _fit(self) -> bool:
        """Fit the learner on the labels it has features for; whether a model exists."""
        self._refresh_learner()
        if self._learner is None:
            return False
        if self._fit_version == self._labels_version:
            return self._fitted
        glob = np.array(sorted(self.labels), dtype=np.int64)
        local = self._local(glob.tolist())
        known = self._learner_rows[local] if len(local) else np.zeros(0, np.int64)
        y = np.array([self.labels[int(r)] for r in known], dtype=np.int64)
        self._fitted = self._learner.fit(local, y)
        self._fit_version = self._labels_version
        return self._fitted

    def _proba(self, row: int) -> tuple[float, ...] | None:
        if not self._fitted or self._learner is None:
            return None
        local = self._local([row])
        if not len(local):
            return None
        return tuple(float(p) for p in self._learner.predict_proba(local)[0])

    def estimate(self) -> AccuracyEstimate | None:
        """Cross-validated accuracy on the labelled frames that have features."""
        with self._lock:
            if self._estimate[0] == self._labels_version:
                return self._estimate[1]
            est = None
            if self._fit() and self._learner is not None:
                glob = sorted(self.labels)
                local = self._local(glob)
                known = self._learner_rows[local]
                y = np.array([self.labels[int(r)] for r in known], dtype=np.int64)
                est = self._learner.accuracy_estimate(local, y)
            self._estimate = (self._labels_version, est)
            return est

    # ------------------------------------------------------------------ summary
    def counts(self) -> list[int]:
        """Labelled frames of each class (frames of this run)."""
        with self._lock:
            c = np.bincount(
                np.fromiter(self.labels.values(), dtype=np.int64, count=len(self.labels)),
                minlength=self.scheme.n_classes,
            )
            return [int(v) for v in c[: self.scheme.n_classes]]

    def summary(self, cid: str | None = None) -> dict[str, Any]:
        """Everything the page shows beside the frame."""
        with self._lock:
            self.refresh()
            est = self.estimate()
            expected = (
                self._learner.expected_accuracy()
                if self._fitted and self._learner is not None
                else None
            )
            c = self._clients.get(cid) if cid is not None else None
            return {
                "n_frames": len(self.frame_ids),
                "n_labelled": len(self.labels),
                "n_outside_run": self.n_outside,
                "counts": self.counts(),
                "model": "fitted" if self._fitted else "waiting",
                "min_per_class": MIN_PER_CLASS,
                "accuracy": None if est is None else est.as_dict(),
                "expected_accuracy": expected,
                "n_with_features": len(self._learner_rows),
                "features": None if self.features is None else self.features.progress(),
                "can_undo": bool(c and c.history),
                "skipped": len(c.skipped) if c else 0,
                "labels_file": str(self.store.path),
            }

"""Which frames of a run train and test a model: the labelled ones, split by the job.

A run's frames need not all be labelled (a user labels a few hundred of many thousand);
the features stage may process every frame, but the fit and the held-out evaluation use
the labelled frames only (:func:`labelled_split`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcdiff.errors import ConfigError, FormatError
from hpcdiff.learn.split import split_rows, too_few_labelled

log = logging.getLogger("hpcdiff.learn")


@dataclass(frozen=True)
class LabelledSplit:
    """Train and test frames of a run, as positions in the run's frame list.

    Attributes
    ----------
    train, test
        ``int64`` sorted positions of the training and test frames.
    y_train, y_test
        ``int64`` labels of those frames (same order).
    class_names
        Name of each label.
    n_labelled
        Labelled frames usable (with features, not rejected).
    n_unlabelled
        Usable run frames without a label (not used).
    """

    train: np.ndarray
    test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    n_labelled: int
    n_unlabelled: int


def labelled_split(
    labels: Any,
    frame_ids: Sequence[Any],
    valid: np.ndarray,
    cfg: Any,
    *,
    source: str | Path,
    job_source: str | Path | None = None,
    skip_files: Sequence[str] = (),
) -> LabelledSplit:
    """Split the labelled frames among ``valid`` run frames into train and test.

    Parameters
    ----------
    labels
        :class:`hpcdiff.io.labels.Labels` read from ``source``.
    frame_ids
        The run's frames (:class:`hpcdiff.io.cxi.FrameId`), in run order.
    valid
        ``int64`` positions of the frames that have features (read and not rejected).
    cfg
        :class:`hpcdiff.config.LearnConfig` (``target``, ``n_train``, ``n_test``,
        ``n_components``, ``random_state``, ``split``).
    source
        The labels, named in messages.
    skip_files
        Frame files the job names but that could not be read: labels of their frames are
        left out (logged) instead of being "frames the run lacks".

    Raises
    ------
    FormatError
        Naming the labels file and line of a frame the run lacks or a frame labelled twice;
        or a split the classes cannot fill.
    ConfigError
        Too few labelled frames for ``n_components`` (counts named).
    """
    from hpcdiff.learn.workflow import targets

    pos = labels.match_run(frame_ids)
    missing = np.flatnonzero(pos < 0)
    if missing.size and skip_files:
        skipped = _in_files(labels, missing, skip_files)
        if skipped.any():
            log.warning(
                "%d labelled frame(s) are in frame files that could not be read; not used",
                int(skipped.sum()),
            )
        keep = np.ones(len(labels), bool)
        keep[missing[skipped]] = False
        labels = labels.take(np.flatnonzero(keep))
        pos = pos[keep]
    if (pos < 0).any():
        labels.for_run(frame_ids)  # raises, naming the file and line of the first such row
    usable = np.isin(pos, valid)
    if (~usable).any():
        log.warning("%d labelled frame(s) were rejected; not used", int((~usable).sum()))
    order = np.argsort(pos, kind="stable")
    order = order[usable[order]]
    mine = labels.take(order)
    frames = pos[order]
    y, class_names = targets(mine, cfg.target)
    problem = too_few_labelled(
        len(frames), n_components=cfg.n_components, n_train=cfg.n_train, n_test=cfg.n_test
    )
    if problem:
        where = f"{job_source}: " if job_source else ""
        raise ConfigError(
            f"{where}cannot train: {problem} ({len(valid)} run frames have features; labels: "
            f"{source})"
        )
    try:
        tr, te = split_rows(
            y,
            n_train=cfg.n_train,
            n_test=cfg.n_test,
            random_state=cfg.random_state,
            method=getattr(cfg, "split", "stratified"),
        )
    except ValueError as exc:
        raise FormatError(source, f"cannot split the labelled frames: {exc}") from None
    n_unlabelled = int(len(valid) - len(frames))
    log.info(
        "%d labelled frames (%d run frames without a label): %d train, %d test (%s split)",
        len(frames), n_unlabelled, len(tr), len(te), getattr(cfg, "split", "stratified"),
    )  # fmt: skip
    return LabelledSplit(
        frames[tr], frames[te], y[tr], y[te], tuple(class_names), len(frames), n_unlabelled
    )


def _in_files(labels: Any, rows: np.ndarray, files: Sequence[str]) -> np.ndarray:
    """Bool per row of ``rows``: does its file name one of ``files`` (path or base name)?"""
    full = {os.path.abspath(f) for f in files} | set(files)
    names = {os.path.basename(f) for f in files}
    out = np.zeros(rows.size, bool)
    for k, r in enumerate(rows.tolist()):
        f = str(labels.file[r])
        out[k] = f in full or os.path.abspath(f) in full or os.path.basename(f) in names
    return out

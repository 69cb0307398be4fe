"""Train, apply and evaluate on whole features files: the steps behind ``hpcdiff train``,
``predict`` and ``evaluate`` (and the root rank of the distributed classify job).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hpcdiff.errors import FormatError
from hpcdiff.io.featurefile import FeatureSet
from hpcdiff.learn.metrics import BINARY_CLASS_NAMES, classification_report
from hpcdiff.learn.model import DiffuseClassifier
from hpcdiff.learn.pca_stats import PCABasis, PCAStatistics, pca_from_statistics
from hpcdiff.learn.split import split_rows, too_few_labelled


def targets(labels: Any, target: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Label vector and class names for a target.

    Parameters
    ----------
    labels
        :class:`hpcdiff.io.labels.Labels` (rows already aligned with the features).
    target
        ``"binary"``: ``diffuse`` 0/1 named ``("non-diffuse", "diffuse")``; ``"classes"``: the
        ordered amount-of-diffuse ``class`` with the labels file's ``class_names``.
    """
    if target == "binary":
        return np.asarray(labels.diffuse, dtype=np.int64), BINARY_CLASS_NAMES
    if target == "classes":
        return np.asarray(labels.diffuse_class, dtype=np.int64), tuple(labels.class_names)
    raise ValueError(f"target must be 'binary' or 'classes', got {target!r}")


class HasFrameIds(Protocol):
    """Rows that name their frames (a features file, a predictions file)."""

    @property
    def frame_ids(self) -> list[Any]: ...


def align_labels(features: HasFrameIds, labels: Any, *, source: str | Path = "labels") -> Any:
    """The labels of every frame in ``features``, in the features' row order.

    Raises
    ------
    FormatError
        Naming the labels file and the frames without a label.
    """
    try:
        return labels.lookup(features.frame_ids, source=source)
    except KeyError as exc:
        raise FormatError(source, str(exc.args[0]) if exc.args else str(exc)) from None


def labelled_rows(frames: Any, labels: Any) -> tuple[np.ndarray, Any]:
    """The rows of ``frames`` (a features or predictions file in memory) that ``labels``
    describe, and their labels, in row order.  Rows without a label are left out.

    Raises
    ------
    FormatError
        Naming the labels file and line of a frame that ``frames`` lacks, or of a frame
        labelled twice.
    """
    return labels.for_run(frames.frame_ids)


def _full(y: np.ndarray, rows: np.ndarray | None, n: int) -> np.ndarray:
    """``(n,)`` int64 labels per row, ``-1`` where a row has none."""
    y = np.asarray(y, dtype=np.int64)
    if rows is None:
        return y
    full = np.full(n, -1, dtype=np.int64)
    full[np.asarray(rows, dtype=np.int64)] = y
    return full


@dataclass(frozen=True)
class TrainResult:
    """A fitted model, its held-out report and the rows used.

    Attributes
    ----------
    model
        Fitted :class:`DiffuseClassifier`.
    report
        :func:`~hpcdiff.learn.metrics.classification_report` on the test rows (``None`` when
        ``n_test = 0``).
    train_rows, test_rows
        ``int64`` row indices into the features file.
    """

    model: DiffuseClassifier
    report: dict[str, Any] | None
    train_rows: np.ndarray
    test_rows: np.ndarray


def train(
    features: FeatureSet,
    y: np.ndarray,
    *,
    class_names: tuple[str, ...],
    cfg: Any,
    config_hash: str | None = None,
    extra: dict[str, Any] | None = None,
    rows: np.ndarray | None = None,
) -> TrainResult:
    """Split the labelled rows, fit PCA + logistic regression on the training rows,
    report on the test rows.

    Parameters
    ----------
    features
        The features file in memory.
    y
        Labels: ``(n,)`` aligned with ``features`` rows, or ``(m,)`` aligned with ``rows``.
    cfg
        A :class:`hpcdiff.config.LearnConfig` (``n_components``, ``n_train``, ``n_test``,
        ``random_state``, ``target``, ``C``, ``pca_from``, ``split``).
    rows
        ``(m,)`` sorted rows of ``features`` that have labels (``None``: every row); only
        these are split, fitted and scored.

    Raises
    ------
    ValueError
        Too few labelled frames for ``n_components`` (message says how many), or a split
        the classes cannot fill.
    """
    y = np.asarray(y, dtype=np.int64)
    rows = np.arange(len(features), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    if y.shape != rows.shape:
        raise ValueError(f"{y.size} labels for {rows.size} labelled rows")
    problem = too_few_labelled(
        rows.size, n_components=cfg.n_components, n_train=cfg.n_train, n_test=cfg.n_test
    )
    if problem:
        raise ValueError(problem)
    tr, te = split_rows(
        y,
        n_train=cfg.n_train,
        n_test=cfg.n_test,
        random_state=cfg.random_state,
        method=getattr(cfg, "split", "stratified"),
    )
    train_rows, test_rows = rows[tr], rows[te]
    y_full = _full(y, rows, len(features))
    x_train = features.features[train_rows]
    pca = None
    if cfg.pca_from == "statistics":
        pca = pca_from_statistics(PCAStatistics.from_array(x_train), cfg.n_components)
    model = fit_model(
        x_train,
        y_full[train_rows],
        class_names=class_names,
        cfg=cfg,
        feature_meta=features.meta,
        pca=pca,
        n_test=int(test_rows.size),
        config_hash=config_hash,
        extra={"split": cfg.split, **(extra or {})},
    )
    report = evaluate(model, features, y_full, rows=test_rows) if test_rows.size else None
    return TrainResult(model, report, train_rows, test_rows)


def fit_model(
    rows: np.ndarray,
    y: np.ndarray,
    *,
    class_names: tuple[str, ...],
    cfg: Any,
    feature_meta: Any,
    pca: PCABasis | None = None,
    projected: bool = False,
    n_test: int = 0,
    config_hash: str | None = None,
    extra: dict[str, Any] | None = None,
) -> DiffuseClassifier:
    """Fit PCA + logistic regression on training rows: the one fit of serial and MPI training.

    Parameters
    ----------
    rows
        ``(n_train, d)`` feature rows, or with ``projected`` their ``(n_train, k)``
        projections on ``pca`` (a distributed "statistics" collect gathers only those).
    y
        ``(n_train,)`` labels.
    cfg
        A :class:`hpcdiff.config.LearnConfig`.
    feature_meta
        :class:`~hpcdiff.io.featurefile.FeatureMeta` of the rows.
    pca
        Axes computed elsewhere (from statistics); ``None``: fitted on ``rows``.
    n_test
        Held-out rows (recorded in the model's metadata with ``cfg.pca_from`` and ``extra``).
    """
    meta_extra = {"pca_from": cfg.pca_from, "n_test": int(n_test), **(extra or {})}
    model = DiffuseClassifier(n_components=cfg.n_components, C=cfg.C, random_state=cfg.random_state)
    model = _fit_model(model, rows, y, class_names=class_names, cfg=cfg,
                       feature_meta=feature_meta, pca=pca, projected=projected,
                       config_hash=config_hash, meta_extra=meta_extra)  # fmt: skip
    standardise = getattr(cfg, "standardise", "none")
    recalibrate = getattr(cfg, "recalibrate", "none")
    if recalibrate == "auto":  # the default: measured best for transfer (bench_transfer.py)
        recalibrate = "mixture_wide" if getattr(cfg, "target", "binary") == "binary" else "none"
    if standardise != "none" or recalibrate != "none":
        from hpcdiff.learn.transfer import record_transfer

        z = rows if projected else model.pca_.transform(rows)
        record_transfer(model, z, y, standardise=standardise, recalibrate=recalibrate)
    return model


def _fit_model(
    model: DiffuseClassifier,
    rows: np.ndarray,
    y: np.ndarray,
    *,
    class_names: tuple[str, ...],
    cfg: Any,
    feature_meta: Any,
    pca: PCABasis | None,
    projected: bool,
    config_hash: str | None,
    meta_extra: dict[str, Any],
) -> DiffuseClassifier:
    if projected:
        if pca is None:
            raise ValueError("projected rows need the pca they were projected on")
        return model.fit_projected(
            rows,
            y,
            pca=pca,
            class_names=class_names,
            feature_meta=feature_meta,
            target=cfg.target,
            config_hash=config_hash,
            n_train=len(rows),
            extra=meta_extra,
        )
    return model.fit(
        rows,
        y,
        class_names=class_names,
        feature_meta=feature_meta,
        pca=pca,
        target=cfg.target,
        config_hash=config_hash,
        extra=meta_extra,
    )


def evaluate(
    model: DiffuseClassifier,
    features: FeatureSet,
    y: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    source: str | Path | None = None,
) -> dict[str, Any]:
    """Apply ``model`` to ``features`` (checked compatible) and report against labels ``y``.

    A model with transfer settings (:mod:`hpcdiff.learn.transfer`) is adapted to the whole
    features file (one experiment) with its unlabelled statistics, then ``rows`` are scored.

    ``y`` is aligned with ``features`` rows; ``rows`` (default: all) are the rows scored.
    """
    model.check_compatible(features.meta, source=source)
    x = features.features if rows is None else features.features[rows]
    y = np.asarray(y, dtype=np.int64)
    y = y if rows is None else y[rows]
    from hpcdiff.learn.transfer import needs_experiment, predict_adapted

    if needs_experiment(model):  # adapted with the whole file's (unlabelled) statistics
        proba = predict_adapted(model, features.features)
        proba = proba if rows is None else proba[rows]
    else:
        proba = model.predict_proba(x)
    return classification_report(y, np.argmax(proba, axis=1), proba, class_names=model.class_names_)


def report_from_predictions(
    y_true: np.ndarray, proba: np.ndarray, *, class_names: tuple[str, ...]
) -> dict[str, Any]:
    """Report from stored class probabilities ``(n, K)`` (``hpcdiff evaluate --predictions``)."""
    proba = np.asarray(proba, dtype=np.float64)
    return classification_report(y_true, np.argmax(proba, axis=1), proba, class_names=class_names)


def cross_experiment(
    train_features: FeatureSet,
    train_y: np.ndarray,
    test_features: FeatureSet,
    test_y: np.ndarray,
    *,
    class_names: tuple[str, ...],
    cfg: Any,
    names: tuple[str, str] = ("A", "B"),
    config_hash: str | None = None,
    train_rows: np.ndarray | None = None,
    test_rows: np.ndarray | None = None,
) -> tuple[dict[str, dict[str, Any]], TrainResult]:
    """Within- and cross-experiment scores side by side.

    Trains on experiment A (its split) and on experiment B (its split), and reports:
    ``"A->A"`` (A's model on A's test rows), ``"B->B"`` (B's model on B's test rows),
    ``"A->B"`` (A's model on the same B test rows, so the last two compare directly) and
    ``"A->B all"`` (A's model on every B frame).

    Returns
    -------
    reports, result_a
        Reports keyed as above, and A's :class:`TrainResult` (its model can be saved).
    """
    a, b = names
    res_a = train(
        train_features,
        train_y,
        class_names=class_names,
        cfg=cfg,
        config_hash=config_hash,
        rows=train_rows,
    )
    res_b = train(
        test_features,
        test_y,
        class_names=class_names,
        cfg=cfg,
        config_hash=config_hash,
        rows=test_rows,
    )
    yb = _full(test_y, test_rows, len(test_features))
    if res_a.report is None or res_b.report is None:
        raise ValueError("cross-experiment evaluation needs n_test > 0")
    reports = {
        f"{a}->{a}": res_a.report,
        f"{b}->{b}": res_b.report,
        f"{a}->{b}": evaluate(res_a.model, test_features, yb, rows=res_b.test_rows),
        f"{a}->{b} all": evaluate(
            res_a.model,
            test_features,
            yb,
            rows=None if test_rows is None else np.asarray(test_rows, np.int64),
        ),
    }
    return reports, res_a

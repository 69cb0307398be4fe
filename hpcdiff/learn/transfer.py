"""Calibrated transfer: predictions on a new experiment that are right without its labels.

A model trained on one experiment ranks another experiment's frames well, but its score
scale need not carry over (every frame of the new experiment can score below 0.5).  This
module applies a model to one *whole experiment* at a time and adapts it with that
experiment's own unlabelled statistics, never its labels:

``standardise`` (chosen at training, stored in the model, applied the same at predict)
    ``"none"``; ``"features"``: every feature standardised with its own experiment's mean
    and standard deviation (training experiment(s) at training, the new one at predict),
    then PCA + logistic regression; ``"scores"``: the PCA scores of each experiment are
    shifted and scaled to the training experiment's mean and standard deviation.
``recalibrate`` (at predict; default stored in the model)
    ``"none"``; ``"em"``: prior shift by EM (:func:`~hpcdiff.learn.calibration.em_prior_shift`);
    ``"mixture"``: a two-Gaussian mixture of the experiment's logit scores
    (:func:`~hpcdiff.learn.calibration.mixture_recalibrate`); ``"mixture_wide"``: the
    same with a width per component (:func:`~hpcdiff.learn.calibration.wide_mixture_recalibrate`:
    the diffuse frames' scores spread as widely as their strengths).
target labels (at predict, optional)
    A Platt map (:class:`~hpcdiff.learn.calibration.PlattScaling`) fitted on a handful of
    labelled frames of the new experiment, applied to every frame after the above.

Pooled training on many simulated experiments (domain randomisation) can first drop the
experiments whose own labels the features cannot learn (:func:`learnable_experiments`).

Per-experiment statistics are mergeable sums (:class:`ExperimentStats`: count, sum, sum of
squares), so ranks that each hold part of an experiment combine them with one
``Allreduce``/``Reduce`` of :meth:`ExperimentStats.to_buffer`.

The model's ``metadata_["transfer"]`` holds ``standardise``, ``recalibrate``, the reference
score mean/std (``"scores"``) and the training diffuse fraction (``train_prior``).  A model
trained with ``standardise = "features"`` must be applied with :func:`predict_adapted` (its
plain ``predict_proba`` would see unstandardised features); :func:`needs_experiment` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from hpcdiff.io.featurefile import FeatureMeta
from hpcdiff.learn.calibration import (
    PlattScaling,
    em_prior_shift,
    logit,
    mixture_recalibrate,
    wide_mixture_recalibrate,
)
from hpcdiff.learn.model import DiffuseClassifier
from hpcdiff.learn.pca_stats import pca_from_array

Standardise = Literal["none", "features", "scores"]
Recalibrate = Literal["none", "em", "mixture", "mixture_wide"]
STANDARDISE: tuple[str, ...] = ("none", "features", "scores")
RECALIBRATE: tuple[str, ...] = ("none", "em", "mixture", "mixture_wide")


@dataclass(frozen=True)
class TransferSettings:
    """How a model is adapted to each experiment it is applied to (see the module notes)."""

    standardise: Standardise = "none"
    recalibrate: Recalibrate = "none"

    def __post_init__(self) -> None:
        if self.standardise not in STANDARDISE:
            raise ValueError(f"standardise must be one of {STANDARDISE}, got {self.standardise!r}")
        if self.recalibrate not in RECALIBRATE:
            raise ValueError(f"recalibrate must be one of {RECALIBRATE}, got {self.recalibrate!r}")


@dataclass(frozen=True)
class ExperimentStats:
    """Mergeable per-column sums of one experiment's rows.

    Attributes
    ----------
    count
        Number of rows.
    sum, sumsq
        ``(d,)`` float64 column sums and sums of squares.
    """

    count: int
    sum: np.ndarray
    sumsq: np.ndarray

    @classmethod
    def from_array(cls, x: np.ndarray) -> ExperimentStats:
        """Statistics of ``x`` ``(n, d)`` (any float dtype; summed in float64)."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"x must be (n, d), got {x.shape}")
        x64 = x.astype(np.float64, copy=False)
        return cls(int(x.shape[0]), x64.sum(axis=0), np.einsum("ij,ij->j", x64, x64))

    @classmethod
    def empty(cls, d: int) -> ExperimentStats:
        return cls(0, np.zeros(d), np.zeros(d))

    def __add__(self, other: ExperimentStats) -> ExperimentStats:
        return ExperimentStats(self.count + other.count, self.sum + other.sum,
                               self.sumsq + other.sumsq)  # fmt: skip

    def to_buffer(self) -> np.ndarray:
        """``(1 + 2 d,)`` float64 ``[count, sum, sumsq]`` for ``MPI.Reduce(SUM)``."""
        return np.concatenate([[float(self.count)], self.sum, self.sumsq])

    @classmethod
    def from_buffer(cls, buf: np.ndarray, d: int) -> ExperimentStats:
        buf = np.asarray(buf, dtype=np.float64)
        if buf.shape != (1 + 2 * d,):
            raise ValueError(f"buffer must have shape ({1 + 2 * d},), got {buf.shape}")
        return cls(int(round(buf[0])), buf[1 : 1 + d].copy(), buf[1 + d :].copy())

    @property
    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no rows: the experiment's mean is undefined")
        return self.sum / self.count

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation; columns that do not vary get 1 (left unscaled)."""
        var = np.maximum(self.sumsq / max(self.count, 1) - self.mean**2, 0.0)
        std = np.sqrt(var)
        scale = float(std.max()) if std.size else 0.0
        return np.where(std > max(scale * 1e-6, 1e-12), std, 1.0)


def _standardise(x: np.ndarray, stats: ExperimentStats) -> np.ndarray:
    return ((np.asarray(x, dtype=np.float64) - stats.mean) / stats.std).astype(np.float32)


def _per_group(x: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Each group's rows standardised with that group's own statistics (float32)."""
    if groups is None:
        return _standardise(x, ExperimentStats.from_array(x))
    out = np.empty(x.shape, np.float32)
    for g in np.unique(groups):
        rows = groups == g
        out[rows] = _standardise(x[rows], ExperimentStats.from_array(x[rows]))
    return out


def fit_transfer(
    x: np.ndarray,
    y: np.ndarray,
    *,
    class_names: Sequence[str],
    feature_meta: FeatureMeta,
    settings: TransferSettings = TransferSettings(),
    groups: np.ndarray | None = None,
    n_components: int = 50,
    C: float = 1.0,
    random_state: int = 0,
    target: str = "binary",
    config_hash: str | None = None,
    extra: dict[str, Any] | None = None,
) -> DiffuseClassifier:
    """Fit PCA + logistic regression for transfer, recording ``settings`` in the model.

    Parameters
    ----------
    x
        ``(n, d)`` labelled training features.
    y
        ``(n,)`` integer labels.
    groups
        ``(n,)`` experiment of each row when training pools several experiments (each is
        standardised with its own statistics); ``None``: one experiment.
    settings
        Standardisation (applied here) and the default recalibration at predict.
    """
    x = np.asarray(x)
    y = np.asarray(y, dtype=np.int64)
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != y.shape:
            raise ValueError(f"groups {groups.shape} must match y {y.shape}")
    info: dict[str, Any] = {
        "standardise": settings.standardise,
        "recalibrate": settings.recalibrate,
        "train_prior": float(np.mean(y == y.max())) if y.size else 0.5,
    }
    clf = DiffuseClassifier(n_components=n_components, C=C, random_state=random_state)
    if settings.standardise == "features":
        clf.fit(_per_group(x, groups), y, class_names=class_names, feature_meta=feature_meta,
                target=target, config_hash=config_hash,
                extra={**(extra or {}), "transfer": info})  # fmt: skip
        return clf
    pca = pca_from_array(x, n_components, random_state=random_state)
    z = pca.transform(x)
    if settings.standardise == "scores":
        ref = ExperimentStats.from_array(z)
        if groups is not None:  # each experiment's scores onto the pooled reference
            z = z.copy()
            for g in np.unique(groups):
                rows = groups == g
                s = ExperimentStats.from_array(z[rows])
                z[rows] = (z[rows] - s.mean) / s.std * ref.std + ref.mean
        info["score_mean"] = ref.mean.tolist()
        info["score_std"] = ref.std.tolist()
    clf.fit_projected(z, y, pca=pca, class_names=class_names, feature_meta=feature_meta,
                      target=target, config_hash=config_hash, n_train=int(x.shape[0]),
                      extra={**(extra or {}), "transfer": info})  # fmt: skip
    return clf


def transfer_info(model: DiffuseClassifier) -> dict[str, Any]:
    """The model's transfer record (``standardise = "none"`` for models made without one)."""
    info = dict(model.metadata_.get("transfer") or {})
    info.setdefault("standardise", "none")
    info.setdefault("recalibrate", "none")
    return info


def needs_experiment(model: DiffuseClassifier) -> bool:
    """Whether the model's predictions need statistics of the whole experiment."""
    info = transfer_info(model)
    return info["standardise"] != "none" or info["recalibrate"] != "none"


def stats_space(model: DiffuseClassifier) -> str:
    """Where :func:`experiment_stats` are taken: ``"features"``, ``"scores"`` or ``"none"``."""
    return str(transfer_info(model)["standardise"])


def experiment_stats(model: DiffuseClassifier, x: np.ndarray) -> ExperimentStats | None:
    """The statistics :func:`adapted_scores` needs from rows ``x`` of one experiment (or of one
    rank's part of it; add the parts); ``None`` when the model needs none."""
    space = stats_space(model)
    if space == "features":
        return ExperimentStats.from_array(x)
    if space == "scores":
        return ExperimentStats.from_array(model.pca_.transform(x))
    return None


def adapted_scores(
    model: DiffuseClassifier, x: np.ndarray, *, stats: ExperimentStats | None = None
) -> np.ndarray:
    """PCA scores ``(n, k)`` of rows ``x`` of one experiment, standardised as the model was.

    ``stats``: the whole experiment's :func:`experiment_stats` (default: from ``x`` itself,
    which must then be the whole experiment).
    """
    info = transfer_info(model)
    mode = info["standardise"]
    x = np.asarray(x)
    if mode == "features":
        s = stats if stats is not None else ExperimentStats.from_array(x)
        return model.pca_.transform(_standardise(x, s))
    z = model.pca_.transform(x)
    if mode == "scores":
        s = stats if stats is not None else ExperimentStats.from_array(z)
        ref_mean = np.asarray(info["score_mean"], dtype=np.float64)
        ref_std = np.asarray(info["score_std"], dtype=np.float64)
        return (z - s.mean) / s.std * ref_std + ref_mean
    return z


def proba_from_scores(
    model: DiffuseClassifier,
    z: np.ndarray,
    *,
    recalibrate: str | None = None,
    labelled: tuple[np.ndarray, np.ndarray] | None = None,
    prior_strength: float = 1.0,
) -> np.ndarray:
    """Class probabilities ``(n, K)`` of one experiment's adapted PCA scores ``z`` ``(n, k)``.

    Parameters
    ----------
    recalibrate
        ``"none"``, ``"em"``, ``"mixture"``; ``None``: the model's stored choice.  Uses the
        scores of all ``n`` rows (the whole experiment), never labels.
    labelled
        ``(rows, y)``: row indices into ``z`` and their 0/1 labels (a handful of labelled
        frames of this experiment); a Platt map fitted on them is applied to every row.
    """
    info = transfer_info(model)
    mode = info["recalibrate"] if recalibrate is None else recalibrate
    if mode not in RECALIBRATE:
        raise ValueError(f"recalibrate must be one of {RECALIBRATE}, got {mode!r}")
    proba = model.predict_proba_scores(z)
    if mode == "none" and labelled is None:
        return proba
    if proba.shape[1] != 2 or model.coef_.shape[0] != 1:
        raise ValueError("recalibration and target labels need a binary model")
    t = model.decision_scores(z)[:, 0]
    if mode == "em":
        p, _ = em_prior_shift(proba[:, 1], train_prior=float(info.get("train_prior", 0.5)))
        t = logit(p)
    elif mode == "mixture":
        t = logit(mixture_recalibrate(t))
    elif mode == "mixture_wide":
        t = logit(wide_mixture_recalibrate(t))
    if labelled is not None:
        rows, y = (np.asarray(a) for a in labelled)
        t = PlattScaling.fit(t[rows], y, prior_strength=prior_strength)(t)
        t = logit(t)
    p1 = 1.0 / (1.0 + np.exp(-t))
    return np.stack([1.0 - p1, p1], axis=1)


def predict_adapted(
    model: DiffuseClassifier,
    x: np.ndarray,
    *,
    recalibrate: str | None = None,
    labelled: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Class probabilities ``(n, K)`` of the frames ``x`` ``(n, d)`` of ONE whole experiment.

    Standardisation as stored in the model (with ``x``'s own statistics), then the
    recalibration and the optional labelled Platt map of :func:`proba_from_scores`.
    """
    return proba_from_scores(
        model, adapted_scores(model, x), recalibrate=recalibrate, labelled=labelled
    )


def evaluate_transfer(
    model: DiffuseClassifier,
    x: np.ndarray,
    y: np.ndarray,
    *,
    recalibrate: str | None = None,
    labelled_rows: np.ndarray | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Predict one whole experiment ``x`` ``(n, d)`` as :func:`predict_adapted`, then score.

    The labels ``y`` ``(n,)`` are used for the report only, except those of
    ``labelled_rows`` (the target labels of a Platt map).  Returns the
    :func:`~hpcdiff.learn.metrics.classification_report` and the ``(n, K)`` probabilities.
    """
    from hpcdiff.learn.metrics import classification_report

    y = np.asarray(y, dtype=np.int64)
    labelled = None
    if labelled_rows is not None:
        rows = np.asarray(labelled_rows, dtype=np.int64)
        labelled = (rows, y[rows])
    proba = predict_adapted(model, x, recalibrate=recalibrate, labelled=labelled)
    report = classification_report(
        y, np.argmax(proba, axis=1), proba, class_names=model.class_names_
    )
    return report, proba


def record_transfer(
    model: DiffuseClassifier,
    z: np.ndarray,
    y: np.ndarray,
    *,
    standardise: str,
    recalibrate: str,
) -> DiffuseClassifier:
    """Record transfer settings in a model fitted the usual way (``fit`` / ``fit_projected``).

    For ``standardise = "scores"`` the reference mean and standard deviation are those of
    the training rows' PCA scores ``z`` ``(n, k)``; ``"features"`` cannot be recorded after
    the fact (the model must be fitted on standardised features: :func:`fit_transfer`).
    """
    TransferSettings(standardise=standardise, recalibrate=recalibrate)  # type: ignore[arg-type]
    if standardise == "features":
        raise ValueError("standardise = 'features' needs fit_transfer (fit on standardised rows)")
    y = np.asarray(y, dtype=np.int64)
    info: dict[str, Any] = {
        "standardise": standardise,
        "recalibrate": recalibrate,
        "train_prior": float(np.mean(y == y.max())) if y.size else 0.5,
    }
    if standardise == "scores":
        ref = ExperimentStats.from_array(np.asarray(z, dtype=np.float64))
        info["score_mean"] = ref.mean.tolist()
        info["score_std"] = ref.std.tolist()
    model.metadata_["transfer"] = info
    return model


def proba_from_stored_scores(
    model: DiffuseClassifier,
    z: np.ndarray,
    *,
    recalibrate: str | None = None,
    labelled: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Probabilities ``(n, K)`` of one whole experiment from its raw PCA scores ``z``
    (``model.pca_.transform(x)``, e.g. stored by the ranks of a predict job).

    Only for models whose standardisation lives in score space (``"none"``, ``"scores"``).
    """
    info = transfer_info(model)
    z = np.asarray(z, dtype=np.float64)
    if info["standardise"] == "features":
        raise ValueError("a model with standardise = 'features' needs the features themselves")
    if info["standardise"] == "scores" and z.shape[0]:
        s = ExperimentStats.from_array(z)
        ref_mean = np.asarray(info["score_mean"], dtype=np.float64)
        ref_std = np.asarray(info["score_std"], dtype=np.float64)
        z = (z - s.mean) / s.std * ref_std + ref_mean
    if z.shape[0] == 0:
        return np.empty((0, len(model.class_names_)))
    return proba_from_scores(model, z, recalibrate=recalibrate, labelled=labelled)


def predict_batches(
    model: DiffuseClassifier,
    batches: Callable[[], Iterable[np.ndarray]],
    *,
    recalibrate: str | None = None,
    labelled: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Probabilities ``(n, K)`` of one whole experiment read in batches (``batches()`` yields
    ``(b, d)`` rows in order; called twice when feature statistics are needed).  Holds only
    the ``(n, k)`` scores in memory."""
    stats = None
    if stats_space(model) == "features":
        parts = [ExperimentStats.from_array(x) for x in batches()]
        stats = sum(parts[1:], parts[0]) if parts else None
    zs = [model.pca_.transform(np.asarray(x)) for x in batches()]
    z = np.concatenate(zs) if zs else np.empty((0, model.pca_.components_.shape[0]))
    if stats is not None:
        z = np.concatenate([adapted_scores(model, x, stats=stats) for x in batches()])
        return proba_from_scores(model, z, recalibrate=recalibrate, labelled=labelled)
    return proba_from_stored_scores(model, z, recalibrate=recalibrate, labelled=labelled)


def choose_target_rows(
    positions: np.ndarray, y: np.ndarray, *, n: int, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` of the labelled target frames (``positions`` into the experiment, labels ``y``),
    drawn at random with each class in proportion; ``n = 0`` or more than there are: all."""
    positions = np.asarray(positions, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    if n <= 0 or n >= positions.size:
        return positions, y
    from hpcdiff.learn.split import stratified_split

    rows, _ = stratified_split(y, n_train=n, n_test=0, random_state=random_state)
    rows = np.sort(rows)
    return positions[rows], y[rows]


def learnable_experiments(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    min_auc: float = 0.75,
    n_components: int = 20,
    n_splits: int = 5,
    random_state: int = 0,
) -> tuple[np.ndarray, dict[int, float]]:
    """Which experiments of a pooled training set have labels the features can learn.

    Domain randomisation draws experiments whose diffuse signal the features do not show
    at all (e.g. a smooth, nearly isotropic liquid-like halo that background removal takes
    away): their labels are noise to a pooled model.  Each experiment's own
    cross-validated ROC AUC (``n_splits`` stratified folds of standardised features ->
    PCA(``n_components``) -> logistic regression, on its rows only) decides.

    Parameters
    ----------
    x
        ``(n, d)`` features of the pooled training rows.
    y
        ``(n,)`` 0/1 labels.
    groups
        ``(n,)`` experiment of each row.
    min_auc
        Experiments whose cross-validated AUC is below this are left out.

    Returns
    -------
    keep, auc
        ``(n,)`` bool mask of the rows of kept experiments; each experiment's AUC (``nan``
        where it has fewer than ``n_splits`` frames of a class: kept).
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x)
    y = np.asarray(y, dtype=np.int64)
    groups = np.asarray(groups)
    if not (x.shape[0] == y.shape[0] == groups.shape[0]):
        raise ValueError(f"x {x.shape}, y {y.shape} and groups {groups.shape} must have n rows")
    keep = np.ones(y.shape, dtype=bool)
    aucs: dict[int, float] = {}
    for g in np.unique(groups):
        rows = groups == g
        yg = y[rows]
        if min(int(np.sum(yg == 0)), int(np.sum(yg == 1))) < n_splits:
            aucs[int(g)] = float("nan")
            continue
        k = int(min(n_components, rows.sum() * (n_splits - 1) // n_splits - 1, x.shape[1]))
        pipe = make_pipeline(StandardScaler(), PCA(k, random_state=random_state),
                             LogisticRegression(max_iter=2000))  # fmt: skip
        folds = StratifiedKFold(n_splits, shuffle=True, random_state=random_state)
        p = cross_val_predict(pipe, x[rows], yg, cv=folds, method="predict_proba")[:, 1]
        aucs[int(g)] = float(roc_auc_score(yg, p))
        keep[rows] = aucs[int(g)] >= min_auc
    return keep, aucs

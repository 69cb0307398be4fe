"""PCA + logistic regression classifier of feature vectors, and its pickle-free model file.

A model file is an ``.npz`` of plain arrays plus one JSON string (``metadata``), read back
with ``np.load(allow_pickle=False)``:

==================================  ======================  ==============================
array                               shape, dtype            meaning
==================================  ======================  ==============================
``pca_mean``                        (d,) float64            PCA centre
``pca_components``                  (k, d) float64          principal axes
``pca_explained_variance``          (k,) float64            variance along each axis
``pca_explained_variance_ratio``    (k,) float64            fraction of total variance
``coef``                            (1 or K, k) float64     logistic-regression weights
``intercept``                       (1 or K,) float64       logistic-regression offsets
``classes``                         (K,) int64              labels seen in training
``metadata``                        () unicode              JSON, see below
==================================  ======================  ==============================

``metadata`` holds ``format``, ``format_version``, ``class_names``, ``target``,
``n_components``, ``C``, ``random_state``, ``n_train``, ``feature`` (layer, n_features,
weights name/sha256/pretrained, background method and settings: the features file's
:class:`~hpcdiff.io.featurefile.FeatureMeta`), the hpcdiff version, config hash and creation
time.  Features made another way (layer, weights hash, background settings) are refused by
:meth:`DiffuseClassifier.check_compatible`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpcdiff.errors import FormatError, HpcdiffError
from hpcdiff.io.featurefile import FeatureMeta
from hpcdiff.io.outputs import atomic_path, provenance
from hpcdiff.learn.pca_stats import PCABasis, pca_from_array

MODEL_FORMAT = "hpcdiff-model"
MODEL_FORMAT_VERSION = 1
_ARRAYS = (
    "pca_mean",
    "pca_components",
    "pca_explained_variance",
    "pca_explained_variance_ratio",
    "coef",
    "intercept",
    "classes",
    "metadata",
)


class ModelMismatchError(HpcdiffError, ValueError):
    """Features were made differently from those the model was trained on."""


class DiffuseClassifier:
    """PCA to ``n_components`` then (multinomial) logistic regression.

    Parameters
    ----------
    n_components
        PCA dimension (the method: 50).
    C
        Inverse L2 regularisation strength of the logistic regression.
    random_state
        Seed for PCA's randomised solvers and the logistic regression.
    max_iter
        Iterations of the L-BFGS solver.

    Attributes
    ----------
    pca_ : PCABasis
    coef_ : ndarray, (1, k) for two classes or (K, k)
    intercept_ : ndarray, (1,) or (K,)
    classes_ : ndarray, (K,) int64, labels seen in training
    class_names_ : tuple of str, name of every label ``0..len-1``
    feature_meta_ : FeatureMeta, how the training features were made
    metadata_ : dict, everything recorded in the model file
    """

    def __init__(
        self, *, n_components: int = 50, C: float = 1.0, random_state: int = 0, max_iter: int = 2000
    ) -> None:
        self.n_components = int(n_components)
        self.C = float(C)
        self.random_state = int(random_state)
        self.max_iter = int(max_iter)

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        class_names: Sequence[str],
        feature_meta: FeatureMeta,
        pca: PCABasis | None = None,
        target: str = "binary",
        config_hash: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> DiffuseClassifier:
        """Fit PCA (unless ``pca`` is given, e.g. from statistics) and the logistic regression.

        Parameters
        ----------
        x
            ``(n, d)`` training features.
        y
            ``(n,)`` integer labels in ``range(len(class_names))``; at least two distinct.
        class_names
            Name of every label (binary: ``("non-diffuse", "diffuse")``).
        feature_meta
            How the features were made (recorded; checked when the model is applied).
        pca
            Precomputed basis (:func:`~hpcdiff.learn.pca_stats.pca_from_statistics`).
        """
        x = np.asarray(x)
        y = np.asarray(y, dtype=np.int64)
        if x.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x {x.shape} and y {y.shape} must be (n, d) and (n,)")
        if x.shape[1] != feature_meta.n_features:
            raise ValueError(
                f"x has {x.shape[1]} features, feature_meta says {feature_meta.n_features}"
            )
        if np.unique(y).size < 2:
            raise ValueError(f"training needs at least two classes; all labels are {y[:1]}")
        if y.min() < 0 or y.max() >= len(class_names):
            raise ValueError(f"labels must lie in 0..{len(class_names) - 1} ({list(class_names)})")
        if pca is None:
            pca = pca_from_array(x, self.n_components, random_state=self.random_state)
        elif pca.components_.shape[1] != x.shape[1]:
            raise ValueError(f"pca has {pca.components_.shape[1]} features, x has {x.shape[1]}")
        return self.fit_projected(
            pca.transform(x),
            y,
            pca=pca,
            class_names=class_names,
            feature_meta=feature_meta,
            target=target,
            config_hash=config_hash,
            n_train=x.shape[0],
            extra=extra,
        )

    def fit_projected(
        self,
        z: np.ndarray,
        y: np.ndarray,
        *,
        pca: PCABasis,
        class_names: Sequence[str],
        feature_meta: FeatureMeta,
        target: str = "binary",
        config_hash: str | None = None,
        n_train: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> DiffuseClassifier:
        """Fit the logistic regression on PCA scores ``z`` ``(n, k)`` already projected.

        The scores are whitened (divided by each component's standard deviation) before
        the fit, here and in :meth:`predict_proba`.

        For distributed training: ranks project their rows with ``pca.transform`` and only
        ``(n, k)`` scores reach the root.
        """
        from sklearn.linear_model import LogisticRegression

        z = np.asarray(z, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        lr = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
        lr.fit(_whiten(z, pca), y)
        self.pca_ = pca
        self.coef_ = lr.coef_.astype(np.float64)
        self.intercept_ = lr.intercept_.astype(np.float64)
        self.classes_ = lr.classes_.astype(np.int64)
        self.class_names_ = tuple(str(c) for c in class_names)
        self.feature_meta_ = feature_meta
        self.metadata_ = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "class_names": list(self.class_names_),
            "target": target,
            "n_components": int(pca.n_components),
            "C": self.C,
            "random_state": self.random_state,
            "n_train": int(n_train if n_train is not None else z.shape[0]),
            "train_class_counts": {
                self.class_names_[c]: int(np.sum(y == c)) for c in self.classes_.tolist()
            },
            "feature": _meta_to_dict(feature_meta),
            **provenance(config_hash),
            **(extra or {}),
        }
        return self

    # ------------------------------------------------------------------ applying
    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise RuntimeError("this DiffuseClassifier is not fitted; call fit() or load()")

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, len(class_names_))`` float64; classes unseen in training get 0."""
        self._check_fitted()
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.pca_.components_.shape[1]:
            raise ValueError(
                f"features must be (n, {self.pca_.components_.shape[1]}); got {x.shape}"
            )
        return self.predict_proba_scores(self.pca_.transform(x))

    def decision_scores(self, z: np.ndarray) -> np.ndarray:
        """Logistic-regression scores ``(n, 1 or K)`` of PCA scores ``z`` ``(n, k)`` (binary:
        the logit of the last seen class)."""
        self._check_fitted()
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.coef_.shape[1]:
            raise ValueError(f"PCA scores must be (n, {self.coef_.shape[1]}); got {z.shape}")
        return _whiten(z, self.pca_) @ self.coef_.T + self.intercept_

    def predict_proba_scores(self, z: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, len(class_names_))`` of PCA scores ``z`` ``(n, k)``."""
        scores = self.decision_scores(z)
        if self.coef_.shape[0] == 1:
            p1 = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            seen = np.stack([1.0 - p1, p1], axis=1)
        else:
            scores = scores - scores.max(axis=1, keepdims=True)
            e = np.exp(scores)
            seen = e / e.sum(axis=1, keepdims=True)
        out = np.zeros((scores.shape[0], len(self.class_names_)))
        out[:, self.classes_] = seen
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(n,)`` int64 most probable label."""
        return np.argmax(self.predict_proba(x), axis=1).astype(np.int64)

    @staticmethod
    def diffuse_score(proba: np.ndarray) -> np.ndarray:
        """Probability of any diffuse scattering: ``1 - P(class 0)`` (``(n,)`` float64)."""
        return 1.0 - np.asarray(proba)[:, 0]

    def check_compatible(self, meta: FeatureMeta, *, source: str | Path | None = None) -> None:
        """Refuse features made differently (layer, size, weights hash, background settings).

        Raises
        ------
        ModelMismatchError
            Listing every difference, model value first.
        """
        self._check_fitted()
        diffs = self.feature_meta_.differences(meta)
        if diffs:
            where = f" {source}" if source is not None else ""
            raise ModelMismatchError(
                f"features{where} were made differently from the model's training features "
                f"(model vs features): {'; '.join(diffs)}. Recompute the features with the "
                "model's settings, or train a model on these features"
            )

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the model as ``.npz`` (no pickle); atomic; refuses to overwrite unless ``force``."""
        self._check_fitted()
        path = Path(path)
        arrays = {
            "pca_mean": self.pca_.mean_,
            "pca_components": self.pca_.components_,
            "pca_explained_variance": self.pca_.explained_variance_,
            "pca_explained_variance_ratio": self.pca_.explained_variance_ratio_,
            "coef": self.coef_,
            "intercept": self.intercept_,
            "classes": self.classes_,
            "metadata": np.array(json.dumps(self.metadata_, sort_keys=True, default=str)),
        }
        with atomic_path(path, force=force) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DiffuseClassifier:
        """Read a model file written by :meth:`save` (``allow_pickle=False``).

        Raises
        ------
        FormatError
            Naming the file and what is missing or malformed.
        """
        from hpcdiff.learn.model_file import read_model_arrays

        path = Path(path)
        arrays, meta = read_model_arrays(path, _ARRAYS)
        if meta.get("format") != MODEL_FORMAT:
            raise FormatError(
                path, f"metadata format is {meta.get('format')!r}, not {MODEL_FORMAT}"
            )
        if meta.get("format_version", 0) > MODEL_FORMAT_VERSION:
            raise FormatError(
                path, f"model format version {meta['format_version']} is newer than this hpcdiff"
            )
        try:
            k, d = arrays["pca_components"].shape
            if arrays["pca_mean"].shape != (d,) or arrays["coef"].shape[1] != k:
                raise FormatError(
                    path,
                    f"inconsistent shapes: pca_mean {arrays['pca_mean'].shape}, pca_components "
                    f"{(k, d)}, coef {arrays['coef'].shape}",
                )
            model = cls(
                n_components=k,
                C=float(meta.get("C", 1.0)),
                random_state=int(meta.get("random_state", 0)),
            )
            model.pca_ = PCABasis(
                arrays["pca_mean"].astype(np.float64),
                arrays["pca_components"].astype(np.float64),
                arrays["pca_explained_variance"].astype(np.float64),
                arrays["pca_explained_variance_ratio"].astype(np.float64),
            )
            model.coef_ = arrays["coef"].astype(np.float64)
            model.intercept_ = arrays["intercept"].astype(np.float64)
            model.classes_ = arrays["classes"].astype(np.int64)
            model.class_names_ = tuple(meta["class_names"])
            model.feature_meta_ = _meta_from_dict(path, meta.get("feature", {}))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, FormatError):
                raise
            raise FormatError(
                path, f"model arrays or metadata are malformed ({type(exc).__name__}: {exc})"
            ) from None
        model.metadata_ = meta
        return model


def _whiten(z: np.ndarray, pca: PCABasis) -> np.ndarray:
    """PCA scores divided by their training standard deviation (unit variance per component).

    Logistic regression is fit on whitened scores so that its L2 penalty treats every
    component alike, whatever the scale of the features (random-weight VGG16 features are
    orders of magnitude smaller than pretrained ones; unscaled, they collapse to the
    majority class).  The scale is the saved ``explained_variance_``: nothing extra to store.
    """
    sd = np.sqrt(np.maximum(np.asarray(pca.explained_variance_, dtype=np.float64), 0.0))
    floor = max(float(sd.max(initial=0.0)) * 1e-12, np.finfo(np.float64).tiny)
    return z / np.maximum(sd, floor)


def _meta_to_dict(meta: FeatureMeta) -> dict[str, Any]:
    return {
        "layer": meta.layer,
        "n_features": int(meta.n_features),
        "weights": meta.weights,
        "weights_sha256": meta.weights_sha256,
        "background": meta.background,
        "background_method": meta.background_method,
        "config_hash": meta.config_hash,
        "layer_note": meta.extra.get("layer_note"),
    }


def _meta_from_dict(path: Path, d: dict[str, Any]) -> FeatureMeta:
    try:
        return FeatureMeta(
            layer=d["layer"],
            n_features=int(d["n_features"]),
            weights=d["weights"],
            background=d["background"],
            config_hash=d.get("config_hash"),
            extra={"layer_note": d["layer_note"]} if d.get("layer_note") else {},
        )
    except (KeyError, TypeError) as exc:
        raise FormatError(path, f"metadata 'feature' lacks {exc}", dataset="metadata") from None

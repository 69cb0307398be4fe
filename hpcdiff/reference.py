"""Reference classifiers the method is measured against, as functions on arrays.

The method (background removal -> CNN image -> VGG16 features -> PCA -> logistic
regression, :mod:`hpcdiff.learn`) must beat two references to show what the CNN adds:

* **radial profile** (:class:`RadialProfiler`, :class:`RadialProfileClassifier`): per-frame
  mean photons per ``|q|`` ring of the detector-corrected frame (masked pixels excluded),
  divided by the mean over the water-ring band, standardised, then logistic regression.
  Diffuse scattering adds intensity that grows with ``|q|`` on top of the isotropic
  background, so its isotropic part is visible here; background removal before the CNN
  deletes exactly that part.
* **combined** (:class:`CombinedClassifier`): the radial-profile features concatenated with
  the CNN features of the background-removed residual reduced by PCA, standardised, then
  logistic regression.  This is the model to beat: it has everything the radial profile
  knows plus what the CNN sees in the residual.

:func:`strength_curve` scores predictions within bins of the true diffuse strength (recall
of diffuse frames per bin, specificity of the frames without diffuse scattering).

All three use the same train/test rows as the method
(:func:`hpcdiff.learn.stratified_split`); nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from hpcdiff.backend import to_numpy
from hpcdiff.background import Segments, radial_profile

DEFAULT_WATER_BAND_PER_NM: tuple[float, float] = (2.8, 3.4)
"""|q| band (nm^-1, no 2 pi; d = 3.6 to 2.9 Angstrom) of the water ring used to normalise."""

RingStatistic = Literal["mean", "median", "clipped_mean"]
"""``"mean"`` (the reference), ``"median"`` or ``"clipped_mean"`` (:func:`radial_profile`)."""


# --------------------------------------------------------------------------- features


def water_ring_normalise(
    profiles: np.ndarray,
    q_centres: np.ndarray,
    *,
    band_per_nm: tuple[float, float] = DEFAULT_WATER_BAND_PER_NM,
) -> np.ndarray:
    """Divide each radial profile by its mean over the water-ring band.

    Parameters
    ----------
    profiles
        ``(n, n_rings)`` (or ``(n_rings,)``) ring levels, any unit (photons per pixel).
    q_centres
        ``(n_rings,)`` ring centres, nm^-1 (no 2 pi).
    band_per_nm
        ``(low, high)``: rings with ``low <= q < high`` form the water-ring band.

    Returns
    -------
    numpy.ndarray
        float64, the shape of ``profiles``, dimensionless (1 on average over the band).
        A frame whose band mean is not finite and positive (a blank shot) gives a NaN row.

    Raises
    ------
    ValueError
        If the shapes disagree or no ring centre lies in the band (the message gives the
        |q| range the rings cover).
    """
    p = np.asarray(profiles, dtype=np.float64)
    q = np.asarray(q_centres, dtype=np.float64)
    if q.ndim != 1 or p.shape[-1] != q.size or p.ndim not in (1, 2):
        raise ValueError(
            f"profiles {p.shape} must be (n, n_rings) or (n_rings,) with n_rings = "
            f"q_centres.size ({q.size})"
        )
    low, high = (float(v) for v in band_per_nm)
    if not high > low:
        raise ValueError(f"water-ring band must have high > low, got {band_per_nm}")
    band = (q >= low) & (q < high)
    if not band.any():
        raise ValueError(
            f"no ring centre lies in the water-ring band [{low}, {high}) nm^-1; the rings "
            f"cover {q.min():.3g}..{q.max():.3g} nm^-1: choose a band the detector covers"
        )
    in_band = p[..., band]
    finite = np.isfinite(in_band)
    with np.errstate(invalid="ignore", divide="ignore"):
        level = np.where(finite, in_band, 0.0).sum(axis=-1, keepdims=True) / finite.sum(
            axis=-1, keepdims=True
        )
        level = np.where(np.isfinite(level) & (level > 0), level, np.nan)
        return p / level


@dataclass(frozen=True)
class RadialProfiler:
    """Water-ring-normalised ring means of one detector's frames (computed once per detector).

    Build it with :meth:`from_model`; call it on detector-corrected frames.

    Attributes
    ----------
    ring_index
        ``(n_ss, n_fs)`` int32 ring of each pixel, ``-1`` for pixels in no kept ring.
    q_centres
        ``(n_rings,)`` float64 centre of each kept ring, nm^-1 (no 2 pi), increasing.
    water_band_per_nm
        ``(low, high)`` band of :func:`water_ring_normalise`.
    statistic
        Ring statistic: ``"mean"`` (default), ``"median"`` or ``"clipped_mean"``.
    segments
        The rings as :class:`hpcdiff.background.Segments` (index arrays, built once).
    """

    ring_index: np.ndarray
    q_centres: np.ndarray
    water_band_per_nm: tuple[float, float]
    statistic: RingStatistic
    segments: Segments

    @classmethod
    def from_model(
        cls,
        model: Any,
        *,
        n_bins: int = 64,
        q_min: float | None = None,
        q_max: float | None = None,
        water_band_per_nm: tuple[float, float] = DEFAULT_WATER_BAND_PER_NM,
        bad_pixel_mask: np.ndarray | None = None,
        min_pixels: int = 10,
        statistic: RingStatistic = "mean",
    ) -> RadialProfiler:
        """Rings of equal |q| width over a detector's valid pixels.

        Parameters
        ----------
        model
            :class:`hpcdiff.geometry.DetectorModel` (uses ``radial_bins`` and ``valid``).
        n_bins
            Rings between ``q_min`` and ``q_max`` before empty rings are dropped.
        q_min, q_max
            |q| range, nm^-1; default the range of the valid pixels.
        water_band_per_nm
            Normalisation band; must hold at least one kept ring.
        bad_pixel_mask
            ``(n_ss, n_fs)`` bool, True on bad pixels (never in a ring).
        min_pixels
            Rings with fewer valid pixels are dropped (their means are noise or undefined).
        statistic
            Ring statistic (see :attr:`statistic`).

        Raises
        ------
        ValueError
            If no ring is left, the band holds no ring, or a mask has the wrong shape.
        """
        if statistic not in ("mean", "median", "clipped_mean"):
            raise ValueError(
                f"unknown ring statistic {statistic!r}; valid: 'mean', 'median', 'clipped_mean'"
            )
        ring, edges = model.radial_bins(int(n_bins), q_min=q_min, q_max=q_max)
        ring = np.asarray(ring, dtype=np.int32)
        if bad_pixel_mask is not None:
            bad = np.asarray(bad_pixel_mask, dtype=bool)
            if bad.shape != ring.shape:
                raise ValueError(
                    f"bad_pixel_mask has shape {bad.shape}, the detector slab is {ring.shape}"
                )
            ring = np.where(bad, -1, ring)
        counts = np.bincount(ring[ring >= 0], minlength=int(n_bins))
        kept = np.flatnonzero(counts >= int(min_pixels))
        if kept.size == 0:
            raise ValueError(
                f"no |q| ring has {min_pixels} valid pixels (n_bins={n_bins}); "
                "use fewer rings or a lower min_pixels"
            )
        remap = np.full(int(n_bins), -1, dtype=np.int32)
        remap[kept] = np.arange(kept.size, dtype=np.int32)
        ring = np.where(ring >= 0, remap[np.maximum(ring, 0)], -1).astype(np.int32)
        centres = 0.5 * (edges[:-1] + edges[1:])[kept]
        low, high = (float(v) for v in water_band_per_nm)
        band = (low, high)
        water_ring_normalise(np.ones(kept.size), centres, band_per_nm=band)  # checks the band
        ring.setflags(write=False)
        centres.setflags(write=False)
        return cls(ring, centres, band, statistic, Segments(ring, n_segments=int(kept.size)))

    @property
    def n_rings(self) -> int:
        """Number of features per frame."""
        return int(self.q_centres.size)

    def profiles(self, photons: Any, *, valid: Any | None = None) -> np.ndarray:
        """Ring levels before normalisation.

        Parameters
        ----------
        photons
            ``(n, n_ss, n_fs)`` (or ``(n_ss, n_fs)``) detector-corrected frames, photons
            (numpy or cupy).
        valid
            Optional bool mask ``(n_ss, n_fs)`` or ``(n, n_ss, n_fs)``; False pixels (bad
            pixels, Bragg peaks) and non-finite values are excluded.

        Returns
        -------
        numpy.ndarray
            ``(n, n_rings)`` (or ``(n_rings,)``) float64 photons per pixel; NaN for a ring
            with no valid pixel in that frame.
        """
        shape = tuple(np.shape(photons))
        if len(shape) not in (2, 3) or shape[-2:] != self.ring_index.shape:
            raise ValueError(
                f"frames must be (n, {self.ring_index.shape[0]}, {self.ring_index.shape[1]}) "
                f"slabs of this detector, got shape {shape}"
            )
        prof = radial_profile(photons, self.segments, valid=valid, statistic=self.statistic)
        return np.asarray(to_numpy(prof), dtype=np.float64)

    def __call__(self, photons: Any, *, valid: Any | None = None) -> np.ndarray:
        """Radial-profile features: ring levels divided by the water-ring level.

        Parameters are those of :meth:`profiles`.

        Returns
        -------
        numpy.ndarray
            ``(n, n_rings)`` (or ``(n_rings,)``) float64, dimensionless; unchanged when a
            frame is multiplied by a positive constant.
        """
        return water_ring_normalise(
            self.profiles(photons, valid=valid), self.q_centres, band_per_nm=self.water_band_per_nm
        )


# --------------------------------------------------------------------------- classifiers


def _as_matrix(x: Any, name: str, *, n: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 1 or (n is not None and a.shape[0] != n):
        want = f"({n}, d)" if n is not None else "(n, d)"
        raise ValueError(f"{name} must be a {want} matrix with d >= 1, got shape {a.shape}")
    return a


def _labels(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) like the feature rows, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    if np.unique(y).size < 2:
        raise ValueError("training needs at least two classes; every label is the same")
    return y.astype(np.int64)


class _StandardisedLogistic:
    """Impute non-finite values with training medians, standardise, logistic regression."""

    def __init__(self, *, C: float, random_state: int, max_iter: int) -> None:
        if not C > 0:
            raise ValueError(f"C must be > 0, got {C}")
        self.C = float(C)
        self.random_state = int(random_state)
        self.max_iter = int(max_iter)

    def fit(self, x: np.ndarray, y: np.ndarray) -> _StandardisedLogistic:
        from sklearn.linear_model import LogisticRegression

        finite = np.isfinite(x)
        with np.errstate(all="ignore"):
            fill = np.nanmedian(np.where(finite, x, np.nan), axis=0)
        self.fill_ = np.where(np.isfinite(fill), fill, 0.0)
        x = np.where(finite, x, self.fill_)
        self.mean_ = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        lr = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
        lr.fit((x - self.mean_) / self.scale_, y)
        self.coef_ = lr.coef_.astype(np.float64)
        self.intercept_ = lr.intercept_.astype(np.float64)
        self.classes_ = lr.classes_.astype(np.int64)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] != self.mean_.size:
            raise ValueError(f"features must be (n, {self.mean_.size}), got {x.shape}")
        x = np.where(np.isfinite(x), x, self.fill_)
        scores = ((x - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_
        if self.coef_.shape[0] == 1:
            p1 = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        scores = scores - scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=1, keepdims=True)


class _ReferenceModel:
    """Shared fitted state of the reference classifiers."""

    # learned by fit() (copied from the standardised logistic regression)
    classes_: np.ndarray
    coef_: np.ndarray
    intercept_: np.ndarray
    fill_: np.ndarray
    mean_: np.ndarray
    scale_: np.ndarray

    def __init__(self, *, C: float, random_state: int, max_iter: int) -> None:
        self._lr = _StandardisedLogistic(C=C, random_state=random_state, max_iter=max_iter)
        self.random_state = int(random_state)

    def _fit_design(self, x: np.ndarray, y: np.ndarray) -> None:
        self._lr.fit(x, y)
        for name in ("classes_", "coef_", "intercept_", "fill_", "mean_", "scale_"):
            setattr(self, name, getattr(self._lr, name))

    def _proba(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted; call fit() first")
        return self._lr.predict_proba(x)


class RadialProfileClassifier(_ReferenceModel):
    """Radial-profile reference: standardised ring features -> logistic regression.

    Parameters
    ----------
    C
        Inverse L2 regularisation strength.
    random_state
        Seed of the solver.
    max_iter
        L-BFGS iterations.

    Attributes
    ----------
    classes_ : ndarray, (K,) int64
        Labels seen in training; :meth:`predict_proba` columns follow them.
    coef_ : ndarray, (1, d) or (K, d)
        Coefficients on the standardised features.
    fill_, mean_, scale_ : ndarray, (d,)
        Training medians used for non-finite values, and the standardisation.
    """

    def __init__(self, *, C: float = 1.0, random_state: int = 0, max_iter: int = 5000) -> None:
        super().__init__(C=C, random_state=random_state, max_iter=max_iter)

    def fit(self, radial: np.ndarray, y: np.ndarray) -> RadialProfileClassifier:
        """Fit on ``radial`` ``(n, n_rings)`` features and ``(n,)`` integer labels."""
        x = _as_matrix(radial, "radial")
        self._fit_design(x, _labels(y, x.shape[0]))
        return self

    def predict_proba(self, radial: np.ndarray) -> np.ndarray:
        """``(n, K)`` float64 class probabilities, columns in :attr:`classes_` order."""
        return self._proba(_as_matrix(radial, "radial"))

    def predict(self, radial: np.ndarray) -> np.ndarray:
        """``(n,)`` int64 most probable label."""
        proba = self.predict_proba(radial)
        return self.classes_[np.argmax(proba, axis=1)]


class CombinedClassifier(_ReferenceModel):
    """Radial profile + PCA-reduced CNN features of the residual -> logistic regression.

    The CNN block is projected on ``n_components`` principal axes fitted on the training
    rows (:func:`hpcdiff.learn.pca_from_array`, as the method does), concatenated after the
    radial block, and every column is standardised before the logistic regression so the
    two blocks compete on equal terms.

    Parameters
    ----------
    n_components
        PCA dimension of the CNN block (the method: 50); reduced to ``n_train - 1`` when
        fewer training rows are given (recorded in :attr:`n_components_`).
    C, random_state, max_iter
        As :class:`RadialProfileClassifier`.

    Attributes
    ----------
    pca_ : hpcdiff.learn.PCABasis
        Principal axes of the CNN block.
    n_radial_, n_components_ : int
        Widths of the two blocks in :attr:`coef_` (radial first).
    classes_, coef_, fill_, mean_, scale_
        As :class:`RadialProfileClassifier`, over the concatenated columns.
    """

    def __init__(
        self,
        *,
        n_components: int = 50,
        C: float = 1.0,
        random_state: int = 0,
        max_iter: int = 5000,
    ) -> None:
        super().__init__(C=C, random_state=random_state, max_iter=max_iter)
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.n_components = int(n_components)

    def _design(self, radial: np.ndarray, cnn: np.ndarray) -> np.ndarray:
        r = _as_matrix(radial, "radial")
        c = _as_matrix(cnn, "cnn", n=r.shape[0])
        return np.concatenate([r, self.pca_.transform(c)], axis=1)

    def fit(self, radial: np.ndarray, cnn: np.ndarray, y: np.ndarray) -> CombinedClassifier:
        """Fit on ``radial`` ``(n, n_rings)``, ``cnn`` ``(n, d)`` features and ``(n,)`` labels.

        Raises
        ------
        ValueError
            If the row counts differ, the CNN features are not finite, or one class only.
        """
        from hpcdiff.learn import pca_from_array

        r = _as_matrix(radial, "radial")
        c = _as_matrix(cnn, "cnn", n=r.shape[0])
        if not np.all(np.isfinite(c)):
            raise ValueError("cnn features hold NaN or inf values; drop those frames first")
        y = _labels(y, r.shape[0])
        k = min(self.n_components, c.shape[0] - 1, c.shape[1])
        if k < 1:
            raise ValueError(f"need at least 2 training rows for PCA, got {c.shape[0]}")
        self.pca_ = pca_from_array(c, k, random_state=self.random_state)
        self.n_radial_ = int(r.shape[1])
        self.n_components_ = int(k)
        self._fit_design(self._design(r, c), y)
        return self

    def predict_proba(self, radial: np.ndarray, cnn: np.ndarray) -> np.ndarray:
        """``(n, K)`` float64 class probabilities, columns in :attr:`classes_` order."""
        if not hasattr(self, "pca_"):
            raise RuntimeError("this CombinedClassifier is not fitted; call fit() first")
        return self._proba(self._design(radial, cnn))

    def predict(self, radial: np.ndarray, cnn: np.ndarray) -> np.ndarray:
        """``(n,)`` int64 most probable label."""
        proba = self.predict_proba(radial, cnn)
        return self.classes_[np.argmax(proba, axis=1)]

    def block_weights(self) -> dict[str, float]:
        """L2 norm of the standardised coefficients of each block: ``{"radial", "cnn"}``.

        Both are positive when the model uses both kinds of features.
        """
        if not hasattr(self, "coef_"):
            raise RuntimeError("this CombinedClassifier is not fitted; call fit() first")
        w = self.coef_
        return {
            "radial": float(np.linalg.norm(w[:, : self.n_radial_])),
            "cnn": float(np.linalg.norm(w[:, self.n_radial_ :])),
        }


# --------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class StrengthCurve:
    """Binary predictions scored within bins of the true diffuse strength.

    Attributes
    ----------
    edges
        ``(n_bins + 1,)`` strength bin edges (diffuse-to-background ratio, dimensionless).
    centres
        ``(n_bins,)`` geometric bin centres.
    recall
        ``(n_bins,)`` fraction of the diffuse frames in each bin predicted diffuse (the
        accuracy on those frames); NaN for an empty bin.
    count
        ``(n_bins,)`` diffuse frames in each bin.
    specificity
        Fraction of the frames without diffuse scattering (strength 0) predicted
        non-diffuse; NaN when there are none.
    n_negative
        Frames without diffuse scattering.
    """

    edges: np.ndarray
    centres: np.ndarray
    recall: np.ndarray
    count: np.ndarray
    specificity: float
    n_negative: int

    def stderr(self) -> np.ndarray:
        """``(n_bins,)`` binomial standard error of :attr:`recall` (NaN for empty bins)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.recall * (1.0 - self.recall) / self.count)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (JSON)."""
        return {
            "edges": self.edges.tolist(),
            "centres": self.centres.tolist(),
            "recall": [None if not np.isfinite(v) else float(v) for v in self.recall],
            "count": self.count.tolist(),
            "specificity": None if not np.isfinite(self.specificity) else self.specificity,
            "n_negative": self.n_negative,
        }


def strength_curve(
    y_pred: np.ndarray, strength: np.ndarray, *, edges: Sequence[float]
) -> StrengthCurve:
    """Score binary predictions against the true diffuse strength of each frame.

    Parameters
    ----------
    y_pred
        ``(n,)`` predicted labels, 1 = diffuse, 0 = not.
    strength
        ``(n,)`` true diffuse strength (0 for frames without diffuse scattering).
    edges
        Increasing positive bin edges; bin ``i`` holds ``edges[i] <= s < edges[i + 1]``
        (the last bin includes its top edge).  Diffuse frames outside every bin are left out.

    Returns
    -------
    StrengthCurve
    """
    y_pred = np.asarray(y_pred)
    s = np.asarray(strength, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    if y_pred.shape != s.shape or s.ndim != 1:
        raise ValueError(f"y_pred {y_pred.shape} and strength {s.shape} must be equal (n,)")
    if e.ndim != 1 or e.size < 2 or not np.all(np.diff(e) > 0) or e[0] <= 0:
        raise ValueError(f"edges must be increasing positive values (>= 2), got {e.tolist()}")
    hit = y_pred == 1
    pos = s > 0
    idx = np.searchsorted(e, s, side="right") - 1
    idx[s == e[-1]] = e.size - 2
    inside = pos & (idx >= 0) & (idx < e.size - 1)
    count = np.bincount(idx[inside], minlength=e.size - 1)
    hits = np.bincount(idx[inside], weights=hit[inside].astype(float), minlength=e.size - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(count > 0, hits / np.maximum(count, 1), np.nan)
    neg = ~pos
    spec = float(np.mean(~hit[neg])) if neg.any() else float("nan")
    return StrengthCurve(
        edges=e,
        centres=np.sqrt(e[:-1] * e[1:]),
        recall=recall,
        count=count.astype(np.int64),
        specificity=spec,
        n_negative=int(neg.sum()),
    )


__all__ = [
    "DEFAULT_WATER_BAND_PER_NM",
    "CombinedClassifier",
    "RadialProfileClassifier",
    "RadialProfiler",
    "StrengthCurve",
    "strength_curve",
    "water_ring_normalise",
]

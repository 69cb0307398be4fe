"""Calibration of binary diffuse scores: measures and recalibration maps (numpy only).

Measures (a probability ``p`` of the diffuse class against 0/1 labels ``y``):
:func:`brier_score`, :func:`reliability_curve`, :func:`expected_calibration_error` and
:func:`calibration_summary` (the block :func:`hpcdiff.learn.metrics.classification_report`
adds to a binary report).

Recalibration of the scores of one experiment, none of which looks at its labels:

* :func:`em_prior_shift` - Saerens, Latinne & Decaestecker (2002), "Adjusting the outputs of
  a classifier to new a priori probabilities": EM estimate of the new experiment's diffuse
  fraction, posteriors re-weighted by the ratio of new to training priors.  Corrects a change
  of class balance, not a shift of the score scale.
* :func:`mixture_recalibrate` - a two-component Gaussian mixture (one shared width) of the
  logit scores; the posterior of the component with the larger mean is the diffuse
  probability.  Corrects a shift and scaling of the score scale when the two classes stay
  separated; a logistic map of the scores, so their ranking is kept.

and from a handful of labelled frames of the new experiment: :class:`PlattScaling`
(``sigmoid(a * logit + b)``, shrunk towards the identity ``a = 1, b = 0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_EPS = 1e-12


def _as_binary(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"y {y.shape} and p {p.shape} must be equal 1-D shapes")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y must hold 0/1 labels")
    return y.astype(np.float64), p


def logit(p: np.ndarray, *, eps: float = 1e-9) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]``; float64."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def sigmoid(t: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-t))`` without overflow; float64."""
    t = np.asarray(t, dtype=np.float64)
    out = np.empty_like(t)
    pos = t >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-t[pos]))
    e = np.exp(t[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference of the diffuse probability ``p`` ``(n,)`` and labels ``y`` 0/1."""
    y, p = _as_binary(y, p)
    return float(np.mean((p - y) ** 2)) if y.size else float("nan")


def reliability_curve(y: np.ndarray, p: np.ndarray, *, n_bins: int = 10) -> dict[str, list[Any]]:
    """Reliability diagram on ``n_bins`` equal-width probability bins over [0, 1].

    Returns
    -------
    dict
        ``edges`` (n_bins + 1), and per bin ``count``, ``mean_predicted`` and
        ``fraction_positive`` (``None`` for an empty bin).
    """
    y, p = _as_binary(y, p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    return {
        "edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "mean_predicted": [float(s / c) if c else None for s, c in zip(sum_p, count, strict=True)],
        "fraction_positive": [
            float(s / c) if c else None for s, c in zip(sum_y, count, strict=True)
        ],
    }


def expected_calibration_error(y: np.ndarray, p: np.ndarray, *, n_bins: int = 10) -> float:
    """Count-weighted mean |fraction positive - mean predicted| over the reliability bins."""
    curve = reliability_curve(y, p, n_bins=n_bins)
    n = sum(curve["count"])
    if n == 0:
        return float("nan")
    gap = sum(
        c * abs(f - m)
        for c, f, m in zip(
            curve["count"], curve["fraction_positive"], curve["mean_predicted"], strict=True
        )
        if c
    )
    return float(gap / n)


def calibration_summary(y: np.ndarray, p: np.ndarray, *, n_bins: int = 10) -> dict[str, Any]:
    """``{"brier", "ece", "n_bins", "reliability"}`` of diffuse probabilities ``p``."""
    return {
        "brier": brier_score(y, p),
        "ece": expected_calibration_error(y, p, n_bins=n_bins),
        "n_bins": int(n_bins),
        "reliability": reliability_curve(y, p, n_bins=n_bins),
    }


# --------------------------------------------------------------------------- unlabelled


def em_prior_shift(
    p: np.ndarray, *, train_prior: float, max_iter: int = 200, tol: float = 1e-8
) -> tuple[np.ndarray, float]:
    """Saerens et al. (2002) EM: posteriors under the new experiment's own diffuse fraction.

    Parameters
    ----------
    p
        ``(n,)`` diffuse probabilities of the new experiment's frames under the training prior.
    train_prior
        Diffuse fraction of the training frames, in (0, 1).

    Returns
    -------
    p_new, prior
        ``(n,)`` adjusted probabilities and the estimated diffuse fraction.
    """
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    if not 0.0 < train_prior < 1.0:
        raise ValueError(f"train_prior must lie in (0, 1), got {train_prior}")
    if p.size == 0:
        return p.copy(), float(train_prior)
    prior = float(train_prior)
    w1 = p / train_prior
    w0 = (1.0 - p) / (1.0 - train_prior)
    p_new = p
    for _ in range(max_iter):
        a1 = prior * w1
        a0 = (1.0 - prior) * w0
        p_new = a1 / (a1 + a0)
        new = float(np.clip(np.mean(p_new), 1e-6, 1 - 1e-6))
        if abs(new - prior) < tol:
            prior = new
            break
        prior = new
    return p_new, prior


def _two_gaussians_em(
    t: np.ndarray,
    weight: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    tied: bool,
    floor: float,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for two 1-D Gaussians from a start, until the log likelihood stops rising.

    Parameters
    ----------
    t
        ``(n,)`` float64 values.
    weight, mean, std
        ``(2,)`` starting mixing weights, means and standard deviations.
    tied
        One width shared by both components (pooled over all values) or one each.
    floor
        Lower bound of every width.

    Returns
    -------
    (weight, mean, std)
        ``(2,)`` each, in the components' starting order.
    """
    last = -np.inf
    for _ in range(max_iter):
        log_r = np.log(weight)[None] - 0.5 * ((t[:, None] - mean[None]) / std[None]) ** 2
        log_r -= np.log(std)[None]
        top = log_r.max(axis=1, keepdims=True)
        ll = float(np.sum(top[:, 0] + np.log(np.exp(log_r - top).sum(axis=1))))
        r = np.exp(log_r - top)
        r /= r.sum(axis=1, keepdims=True)
        nk = r.sum(axis=0) + 1e-12
        weight = np.clip(nk / t.size, 1e-4, 1.0)
        weight /= weight.sum()
        mean = (r * t[:, None]).sum(axis=0) / nk
        sq = r * (t[:, None] - mean[None]) ** 2
        if tied:
            std = np.full(2, float(np.sqrt(sq.sum() / t.size)))
        else:
            std = np.sqrt(sq.sum(axis=0) / nk)
        std = np.maximum(std, floor)
        if ll - last < tol * max(1.0, abs(ll)):
            break
        last = ll
    return weight, mean, std


@dataclass(frozen=True)
class GaussianMixture1D:
    """Two 1-D Gaussians of one shared width, fitted by EM (component 1 has the larger mean).

    A shared width makes the posterior of the upper component exactly logistic in ``t``
    (:meth:`posterior`), so it is monotone and keeps the ranking of ``t`` (unequal widths
    would make the wider component win both tails).

    Attributes
    ----------
    weight, mean
        ``(2,)`` mixing weights and means.
    std
        The shared standard deviation.
    """

    weight: np.ndarray
    mean: np.ndarray
    std: float

    @classmethod
    def fit(cls, t: np.ndarray, *, max_iter: int = 500, tol: float = 1e-10) -> GaussianMixture1D:
        """EM from a deterministic start: the lower and upper halves of the sorted values."""
        t = np.asarray(t, dtype=np.float64)
        if t.ndim != 1 or t.size < 4:
            raise ValueError(f"a mixture needs at least 4 values, got shape {t.shape}")
        floor = max(float(np.std(t)) * 1e-3, 1e-6)
        s = np.sort(t)
        half = t.size // 2
        mean = np.array([s[:half].mean(), s[half:].mean()])
        std = max(float(np.sqrt((s[:half].var() + s[half:].var()) / 2)), floor)
        weight, mean, widths = _two_gaussians_em(
            t,
            np.array([0.5, 0.5]),
            mean,
            np.array([std, std]),
            tied=True,
            floor=floor,
            max_iter=max_iter,
            tol=tol,
        )
        order = np.argsort(mean)
        return cls(weight[order], mean[order], float(widths[0]))

    def log_likelihood(self, t: np.ndarray) -> float:
        """Log likelihood of values ``t`` ``(n,)`` under the mixture."""
        t = np.asarray(t, dtype=np.float64)
        z = (t[:, None] - self.mean[None]) / self.std
        log_p = np.log(self.weight)[None] - 0.5 * z**2 - np.log(self.std * np.sqrt(2 * np.pi))
        top = log_p.max(axis=1)
        return float(np.sum(top + np.log(np.exp(log_p - top[:, None]).sum(axis=1))))

    def posterior(self, t: np.ndarray) -> np.ndarray:
        """``(n,)`` posterior probability of the upper component: logistic in ``t``."""
        t = np.asarray(t, dtype=np.float64)
        (w0, w1), (m0, m1), s = self.weight, self.mean, self.std
        slope = (m1 - m0) / s**2
        return sigmoid(slope * (t - (m0 + m1) / 2) + np.log(w1 / w0))


def bimodal(t: np.ndarray) -> GaussianMixture1D | None:
    """The two-Gaussian mixture of ``t`` ``(n,)`` when the data prefer it to one Gaussian.

    Bayesian information criterion: the mixture (4 parameters) against a single Gaussian
    (2 parameters).  ``None`` when one Gaussian is enough: a run with no diffuse frames (or
    only diffuse ones) has one mode, and splitting it would call half its frames diffuse.
    """
    t = np.asarray(t, dtype=np.float64)
    if t.size < 4:
        return None
    mix = GaussianMixture1D.fit(t)
    std = max(float(np.std(t)), 1e-12)
    one = float(np.sum(-0.5 * ((t - t.mean()) / std) ** 2 - np.log(std * np.sqrt(2 * np.pi))))
    bic_one = 2 * np.log(t.size) - 2 * one
    bic_mix = 4 * np.log(t.size) - 2 * mix.log_likelihood(t)
    return mix if bic_mix < bic_one else None


def mixture_recalibrate(t: np.ndarray) -> np.ndarray:
    """Diffuse probability of logit scores ``t`` ``(n,)`` from their own two-Gaussian mixture.

    The posterior of the upper component of :class:`GaussianMixture1D` (one shared width):
    a logistic map of ``t``, so the ranking and the ROC AUC are those of ``t``.  When the
    scores have one mode (:func:`bimodal` is ``None``: e.g. a run without diffuse frames),
    the model's own scale ``sigmoid(t)`` is kept.
    """
    t = np.asarray(t, dtype=np.float64)
    mix = bimodal(t)
    return sigmoid(t) if mix is None else mix.posterior(t)


@dataclass(frozen=True)
class WideMixture1D:
    """Two 1-D Gaussians, each with its own width, fitted by EM (component 1: larger mean).

    Made for transfer scores, where the non-diffuse frames form one compact peak and the
    diffuse frames spread over a range as wide as their diffuse strengths (log-uniform over
    a decade): a shared width (:class:`GaussianMixture1D`) then fits the upper component to
    the strongest frames only and calls the weak ones non-diffuse.  With unequal widths the
    raw posterior of the wider component rises again in the far lower tail, so
    :meth:`posterior` is made monotone: below the point where the raw posterior is lowest
    (between the component means) it keeps that lowest value, and ranks are kept.

    Attributes
    ----------
    weight, mean, std
        ``(2,)`` mixing weights, means and standard deviations (same units as the scores).
    """

    weight: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, t: np.ndarray, *, max_iter: int = 500, tol: float = 1e-10) -> WideMixture1D:
        """EM from the shared-width fit (:class:`GaussianMixture1D`), a deterministic start.

        Each width is floored at 5 % of the spread of ``t`` so that neither component can
        collapse onto a few tied scores.
        """
        t = np.asarray(t, dtype=np.float64)
        start = GaussianMixture1D.fit(t)
        floor = max(float(np.std(t)) * 0.05, 1e-6)
        weight, mean = start.weight.copy(), start.mean.copy()
        std = np.array([max(start.std, floor)] * 2)
        weight, mean, std = _two_gaussians_em(
            t, weight, mean, std, tied=False, floor=floor, max_iter=max_iter, tol=tol
        )
        order = np.argsort(mean)
        return cls(weight[order], mean[order], std[order])

    def log_likelihood(self, t: np.ndarray) -> float:
        """Log likelihood of values ``t`` ``(n,)`` under the mixture."""
        return float(np.sum(_logsumexp(self._log_joint(t))))

    def _log_joint(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        z = (t[:, None] - self.mean[None]) / self.std[None]
        return np.log(self.weight)[None] - 0.5 * z**2 - np.log(self.std * np.sqrt(2 * np.pi))[None]

    def _raw(self, t: np.ndarray) -> np.ndarray:
        lj = self._log_joint(t)
        return sigmoid(lj[:, 1] - lj[:, 0])

    def turning_point(self) -> float:
        """Where the log odds of the upper component have their extreme (``t`` where
        ``(t - m0) / s0^2 = (t - m1) / s1^2``): a minimum when the upper component is the
        wider, a maximum when it is the narrower; ``nan`` for equal widths (monotone)."""
        (m0, m1), (s0, s1) = self.mean, self.std
        if s0 == s1:
            return float("nan")
        return float((m0 / s0**2 - m1 / s1**2) / (1 / s0**2 - 1 / s1**2))

    def posterior(self, t: np.ndarray) -> np.ndarray:
        """``(n,)`` monotone non-decreasing posterior of the upper (diffuse) component."""
        t = np.asarray(t, dtype=np.float64)
        p = self._raw(t)
        (s0, s1) = self.std
        if s0 == s1:
            return p
        t_e = self.turning_point()
        p_e = self._raw(np.array([t_e]))[0]
        if s1 > s0:  # wider upper component: flat below the minimum of its posterior
            return np.where(t < t_e, p_e, p)
        return np.where(t > t_e, p_e, p)  # narrower upper: flat above the maximum


def _logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(axis=1)
    return top + np.log(np.exp(a - top[:, None]).sum(axis=1))


def wide_mixture_recalibrate(t: np.ndarray) -> np.ndarray:
    """Diffuse probability of logit scores ``t`` ``(n,)`` from a two-Gaussian mixture with
    unequal widths (:class:`WideMixture1D`), when the data prefer it to one Gaussian
    (Bayesian information criterion, 5 against 2 parameters); otherwise ``sigmoid(t)``.
    Monotone in ``t``: the ranking (and the ROC AUC) of ``t`` is kept up to ties.
    """
    t = np.asarray(t, dtype=np.float64)
    if t.size < 6:
        return sigmoid(t)
    mix = WideMixture1D.fit(t)
    std = max(float(np.std(t)), 1e-12)
    one = float(np.sum(-0.5 * ((t - t.mean()) / std) ** 2 - np.log(std * np.sqrt(2 * np.pi))))
    bic_one = 2 * np.log(t.size) - 2 * one
    bic_mix = 5 * np.log(t.size) - 2 * mix.log_likelihood(t)
    return mix.posterior(t) if bic_mix < bic_one else sigmoid(t)


# --------------------------------------------------------------------------- labelled


@dataclass(frozen=True)
class PlattScaling:
    """``p = sigmoid(a * t + b)`` fitted on a few labelled scores, shrunk to ``a=1, b=0``.

    Minimises the log loss plus ``prior_strength / 2 * ((a - 1)^2 + b^2)`` by Newton steps,
    so that 20 labels (or labels of one class only) give a finite, sensible map.
    """

    a: float = 1.0
    b: float = 0.0

    @classmethod
    def fit(
        cls, t: np.ndarray, y: np.ndarray, *, prior_strength: float = 1.0, max_iter: int = 100
    ) -> PlattScaling:
        """Fit on logit scores ``t`` ``(m,)`` and their 0/1 labels ``y`` ``(m,)``."""
        yf, t = _as_binary(y, t)
        if t.size == 0:
            return cls()
        lam = float(prior_strength)

        def objective(a: float, b: float) -> float:
            u = a * t + b  # log loss, computed stably: log(1 + e^u) - y u
            return float(np.sum(np.logaddexp(0.0, u) - yf * u)) + lam / 2 * ((a - 1.0) ** 2 + b**2)

        a, b = 1.0, 0.0
        value = objective(a, b)
        for _ in range(max_iter):
            p = sigmoid(a * t + b)
            g = np.array([np.sum((p - yf) * t) + lam * (a - 1.0), np.sum(p - yf) + lam * b])
            w = p * (1 - p)
            h = np.array(
                [[np.sum(w * t * t) + lam, np.sum(w * t)], [np.sum(w * t), np.sum(w) + lam]]
            )
            step = np.linalg.solve(h, g)
            scale = 1.0  # damped Newton: halve the step until the objective decreases
            while scale > 1e-8:
                na, nb = a - scale * float(step[0]), b - scale * float(step[1])
                new = objective(na, nb)
                if new <= value:
                    break
                scale /= 2
            else:
                break
            a, b, done = na, nb, value - new < 1e-12 * max(1.0, abs(value))
            value = new
            if done:
                break
        return cls(a, b)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        """``(n,)`` calibrated probabilities of logit scores ``t``."""
        return sigmoid(self.a * np.asarray(t, dtype=np.float64) + self.b)

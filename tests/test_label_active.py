"""Active learning of the labelling page: what it offers next and how it scores itself."""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff.label.active import (
    ActiveLearner,
    margin_uncertainty,
    wilson_interval,
)


def blobs(n: int = 400, d: int = 20, sep: float = 6.0, seed: int = 0):
    """Two Gaussian classes along the first axis, ``sep`` standard deviations apart."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] += sep * y
    return x, y


def test_wilson_interval_matches_the_closed_form():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_margin_uncertainty_is_largest_at_even_odds():
    p = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [1.0, 0.0]])
    u = margin_uncertainty(p)
    assert u[0] == pytest.approx(1.0) and u[3] == pytest.approx(0.0)
    assert u[1] == pytest.approx(0.2) and u[2] == pytest.approx(0.4)


def test_no_model_until_three_labels_of_each_class():
    x, y = blobs()
    learner = ActiveLearner(x, n_classes=2, n_components=10)
    zeros = np.flatnonzero(y == 0)[:5]
    ones = np.flatnonzero(y == 1)[:2]
    rows = np.concatenate([zeros, ones])
    assert not learner.fit(rows, y[rows])
    with pytest.raises(RuntimeError):
        learner.select(rows)
    rows = np.concatenate([zeros, np.flatnonzero(y == 1)[:3]])
    assert learner.fit(rows, y[rows])


def test_select_offers_uncertain_unlabelled_frames_spread_out():
    x, y = blobs(sep=3.0)
    learner = ActiveLearner(x, n_classes=2, n_components=10, n_candidates=20)
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.choice(np.flatnonzero(y == c), 6, replace=False) for c in (0, 1)])
    assert learner.fit(rows, y[rows])
    picked = learner.select(rows, n=5, random_state=0)
    assert len(picked) == len(set(picked)) == 5
    assert not set(picked) & set(rows.tolist())
    unc = margin_uncertainty(learner.predict_proba())
    unc[rows] = -1
    # each pick is among the 20 most uncertain unlabelled frames
    top = set(np.argsort(-unc)[:20].tolist())
    assert set(picked) <= top
    # and far more uncertain than a typical frame
    assert np.min(unc[picked]) > np.median(unc[unc >= 0])
    # the first pick is the candidate farthest from the labelled frames
    z = learner.z_
    cand = sorted(top)
    dist = [np.min(((z[rows] - z[c]) ** 2).sum(axis=1)) for c in cand]
    assert picked[0] == cand[int(np.argmax(dist))]
    # excluded and labelled frames are never offered
    again = learner.select(rows, n=5, exclude=np.array(picked), random_state=0)
    assert not set(again) & set(picked)


def test_select_returns_nothing_when_every_frame_is_taken():
    x, y = blobs(n=30)
    learner = ActiveLearner(x, n_classes=2, n_components=5)
    rows = np.arange(30)
    learner.fit(rows, y)
    assert learner.select(rows) == []


def test_accuracy_estimate_is_high_on_separable_classes_and_chance_on_noise():
    x, y = blobs(n=300, sep=8.0)
    learner = ActiveLearner(x, n_classes=2, n_components=10)
    rows = np.arange(200)
    est = learner.accuracy_estimate(rows, y[rows])
    assert est is not None and est.folds == 5 and est.n == 200
    assert est.accuracy > 0.95 and est.low <= est.accuracy <= est.high
    learner.fit(rows, y[rows])
    assert 0.9 < learner.expected_accuracy() <= 1.0
    # labels unrelated to the features: the estimate's interval holds the chance level
    noise = np.random.default_rng(3).integers(0, 2, 200)
    est = learner.accuracy_estimate(rows, noise)
    assert est is not None
    chance = max(noise.mean(), 1 - noise.mean())
    assert est.low < chance + 0.02 and est.accuracy < 0.65
    # too few labels of a class: no estimate
    assert learner.accuracy_estimate(rows[:3], np.array([0, 0, 1])) is None


def test_active_ordering_beats_random_ordering_on_a_hard_boundary():
    """Few labels near a boundary suffice when the learner asks for them."""
    x, y = blobs(n=700, d=10, sep=2.0, seed=4)
    test = np.arange(400, 700)
    pool = np.arange(400)
    accs = {}
    for active in (False, True):
        learner = ActiveLearner(x[pool], n_classes=2, n_components=10, random_state=0)
        order = np.random.default_rng(0).permutation(pool.size).tolist()
        labelled: list[int] = []
        while len(labelled) < 25:
            rows = np.array(labelled, dtype=np.int64)
            nxt = learner.select(rows)[0] if active and learner.fit(rows, y[rows]) else None
            if nxt is None:
                nxt = next(r for r in order if r not in labelled)
            labelled.append(nxt)
        rows = np.array(labelled)
        learner.fit(rows, y[rows], force=True)
        accs[active] = np.mean(learner.predict_proba_rows_of(x[test]).argmax(1) == y[test])
    assert accs[True] >= accs[False] - 0.01

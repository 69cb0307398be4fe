"""Similarity row blocks folded into per-frame partial results instead of being kept.

Above ``dense_similarity_max_frames`` the Fourier job keeps no N x N block: each block is
folded, as it arrives, into :class:`SimilarityFold` (score sums, profile sketch, kNN
lists, overlap sums and histogram).  Invariants: the fold equals the results of the whole
matrices; any arrival order, any stop and resume give the in-order fold bit for bit; no
block is written.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpcdiff.diffusion import BlockKnn
from hpcdiff.errors import FormatError
from hpcdiff.pipelines.fourier_work import (
    BlockFolder,
    ExactSum,
    FourierWork,
    SimilarityFold,
    SimilarityRows,
    as_saved,
)
from hpcdiff.similarity import ProfileSketch, SimilarityBlock, blocks, frame_scores

N, BLOCK, K, DIMS = 23, 5, 4, 16


def _matrices(seed: int = 0) -> dict[str, np.ndarray]:
    """Symmetric CC (NaN for some pairs), overlaps, image distances and correlations."""
    rng = np.random.default_rng(seed)
    cc = np.tanh(rng.normal(scale=0.3, size=(N, N)))
    ovl = rng.integers(0, 60, size=(N, N))
    cc = np.where(ovl >= 5, cc, np.nan)
    dist = rng.uniform(0.5, 2.0, size=(N, N))
    corr = np.tanh(rng.normal(scale=0.5, size=(N, N)))
    dist[3, 7] = dist[3, 9]  # a tie: broken by index whatever the order
    out = {}
    for name, m in (("cc", cc), ("overlap", ovl), ("dist", dist), ("corr", corr)):
        m = np.triu(m, 1)
        out[name] = m + m.T
    np.fill_diagonal(out["cc"], 1.0)
    return out


def _rows(m: dict[str, np.ndarray], s: int, e: int) -> SimilarityRows:
    pix = np.full((e - s, N - s), 7, np.int64)
    return SimilarityRows(
        SimilarityBlock(s, e, m["cc"][s:e, s:].copy(), m["overlap"][s:e, s:].astype(np.int64)),
        SimilarityBlock(s, e, m["dist"][s:e, s:].copy(), pix),
        SimilarityBlock(s, e, m["corr"][s:e, s:].copy(), pix),
        seconds=0.5,
    )


def _work(tmp_path) -> FourierWork:
    work = FourierWork(tmp_path / "fourier.work", "hash")
    work.prepare(n_frames=N, force=False)
    return work


def _in_order(m: dict[str, np.ndarray], layout, *, saved: bool = True) -> SimilarityFold:
    """Blocks folded in order (``saved``: as the job keeps them, CCs rounded to float32)."""
    fold = SimilarityFold(N, K, DIMS, "cc")
    for s, e in layout:
        fold.add(as_saved(_rows(m, s, e)) if saved else _rows(m, s, e))
    return fold


def _assert_same_fold(a: SimilarityFold, b: SimilarityFold) -> None:
    fa, fb = a.arrays(), b.arrays()
    assert fa.keys() == fb.keys()
    for key in fa:
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


def test_exact_sum_is_order_independent_and_accurate():
    rng = np.random.default_rng(4)
    values = rng.normal(scale=10.0, size=(200, 7)) * 10.0 ** rng.integers(-6, 3, size=(200, 1))
    sums = []
    for order in (np.arange(200), rng.permutation(200), rng.permutation(200)):
        acc = ExactSum(7, bound=float(np.abs(values).sum()) * 10)
        for i in order:
            acc.add(slice(None), values[i])
        sums.append(acc.value())
    np.testing.assert_array_equal(sums[0], sums[1])
    np.testing.assert_array_equal(sums[0], sums[2])
    exact = [math.fsum(values[:, j]) for j in range(7)]
    np.testing.assert_allclose(sums[0], exact, rtol=0, atol=1e-9 * np.abs(values).max())


def test_fold_equals_the_whole_matrices():
    """Scores, sketch, kNN lists and overlap statistics of the fold are those of the
    whole matrices."""
    m = _matrices()
    layout = blocks(N, BLOCK)
    fold = _in_order(m, layout, saved=False)
    assert fold.folded == len(layout)
    whole = frame_scores(m["cc"], m["overlap"])
    mine = fold.scores()
    for name in ("mean_z", "significance", "mean_cc"):
        np.testing.assert_allclose(
            getattr(mine, name), getattr(whole, name), rtol=1e-12, err_msg=name
        )
    for form in ("cc", "significance"):
        f = SimilarityFold(N, K, DIMS, form)
        for s, e in layout:
            f.add(_rows(m, s, e))
        sketch = ProfileSketch(N, dims=DIMS, form=form)
        sketch.add(SimilarityBlock(0, N, m["cc"], m["overlap"]))
        np.testing.assert_allclose(f.sketch(), sketch.sketch, rtol=1e-10, atol=1e-10)
    for knn, values, largest in (
        (fold.knn_arc, m["cc"], True),
        (fold.knn_dist, m["dist"], False),
        (fold.knn_corr, m["corr"], True),
    ):
        ref = BlockKnn(N, K, largest=largest)
        ref.add(0, values)
        for got, want in zip(knn.result(), ref.result(), strict=True):
            np.testing.assert_array_equal(got, want)
    iu = np.triu_indices(N, 1)
    assert fold.pairs_with == int(np.isfinite(m["cc"][iu]).sum())
    np.testing.assert_array_equal(fold.overlap_hist, np.bincount(m["overlap"][iu].astype(np.int64)))
    off = ~np.eye(N, dtype=bool)
    np.testing.assert_array_equal(fold.overlap_sum, np.where(off, m["overlap"], 0).sum(axis=1))
    assert fold.task_seconds == pytest.approx(0.5 * len(layout))
    with pytest.raises(ValueError, match="folded already"):
        fold.add(_rows(m, *layout[0]))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_arrival_order_and_a_stop_give_the_in_order_fold(tmp_path, seed):
    """Blocks arriving in any order, a stop part-way (its checkpoint), a rerun with the
    rest in another order: the in-order fold bit for bit; no block is ever written."""
    m = _matrices()
    layout = blocks(N, BLOCK)
    reference = _in_order(m, layout)
    rng = np.random.default_rng(seed)
    work = _work(tmp_path)
    folder = BlockFolder(work, SimilarityFold(N, K, DIMS, "cc"), layout, checkpoint_s=1e9)
    order = [layout[i] for i in rng.permutation(len(layout))]
    first = order[:3]
    for i, (s, e) in enumerate(first):
        folder(i, _rows(m, s, e))
    folder.checkpoint()  # the stop signal's save
    folder(3, _rows(m, *order[3]))  # folded, then killed before the next save
    assert folder.fold.folded == 4
    assert not work.blocks_done()
    resumed = BlockFolder(
        work, work.load_fold(n=N, k=K, dims=DIMS, form="cc"), layout, checkpoint_s=0.0
    )
    todo = resumed.missing()
    assert set(todo) == set(layout) - set(first) and order[3] in todo
    for i in rng.permutation(len(todo)):
        s, e = todo[i]
        resumed(int(i), _rows(m, s, e))
    assert resumed.fold.folded == len(layout) and not resumed.missing()
    assert not work.blocks_done()
    _assert_same_fold(
        work.load_fold(n=N, k=K, dims=DIMS, form="cc"),  # saved after every block (0 s)
        reference,
    )


def test_fold_checkpoint_of_another_layout_is_an_error(tmp_path):
    work = _work(tmp_path)
    work.save_fold(SimilarityFold(N, K, DIMS, "cc"))
    with pytest.raises(FormatError, match="similarity_fold.npz.*dims=16"):
        work.load_fold(n=N, k=K, dims=DIMS + 1, form="cc")
    work.fold_file.write_bytes(b"not an npz")
    with pytest.raises(FormatError, match="damaged similarity checkpoint"):
        work.load_fold(n=N, k=K, dims=DIMS, form="cc")


def test_saved_row_blocks_are_folded_and_dropped(tmp_path):
    """Row blocks a stopped run saved (the dense path's files) are folded on resume, with
    the same bits as blocks folded on arrival, and deleted."""
    m = _matrices()
    layout = blocks(N, BLOCK)
    work = _work(tmp_path)
    for b in layout[:2]:
        work.save_block(_rows(m, *b))
    folder = BlockFolder(work, SimilarityFold(N, K, DIMS, "cc"), layout, checkpoint_s=1e9)
    assert not work.blocks_done() and work.fold_file.is_file()
    assert folder.missing() == layout[2:]
    for i, b in enumerate(reversed(layout[2:])):
        folder(i, _rows(m, *b))
    _assert_same_fold(folder.fold, _in_order(m, layout))

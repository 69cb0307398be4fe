"""Similarity row blocks folded into per-frame partial results instead of being kept.

Above ``dense_similarity_max_frames`` the Fourier job keeps no N x N block: each block is
folded, in block order, into :class:`SimilarityFold` (score sums, profile sketch, kNN
lists, overlap sums and histogram).  Invariants: the fold equals the results of the whole
matrices; any arrival order, any stop and resume give the in-order fold bit for bit; the
saved blocks do not outlive the fold that holds them.
"""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff.diffusion import BlockKnn
from hpcdiff.errors import FormatError
from hpcdiff.pipelines.fourier_work import (
    FourierWork,
    InOrderFold,
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


def test_fold_equals_the_whole_matrices():
    """Scores, sketch, kNN lists and overlap statistics of the fold are those of the
    whole matrices."""
    m = _matrices()
    layout = blocks(N, BLOCK)
    fold = _in_order(m, layout, saved=False)
    assert fold.folded == len(layout)
    whole = frame_scores(m["cc"], m["overlap"])
    for name in ("mean_z", "significance", "mean_cc"):
        np.testing.assert_allclose(
            getattr(fold.scores, name), getattr(whole, name), rtol=1e-12, err_msg=name
        )
    sketch = ProfileSketch(N, dims=DIMS, form="cc")
    sketch.add(SimilarityBlock(0, N, m["cc"], m["overlap"]))
    np.testing.assert_allclose(fold.sketch.sketch, sketch.sketch, rtol=1e-10, atol=1e-12)
    for mine, values, largest in (
        (fold.knn_arc, m["cc"], True),
        (fold.knn_dist, m["dist"], False),
        (fold.knn_corr, m["corr"], True),
    ):
        ref = BlockKnn(N, K, largest=largest)
        ref.add(0, values)
        for got, want in zip(mine.result(), ref.result(), strict=True):
            np.testing.assert_array_equal(got, want)
    iu = np.triu_indices(N, 1)
    assert fold.pairs_with == int(np.isfinite(m["cc"][iu]).sum())
    np.testing.assert_array_equal(fold.overlap_hist, np.bincount(m["overlap"][iu].astype(np.int64)))
    off = ~np.eye(N, dtype=bool)
    np.testing.assert_allclose(fold.overlap_sum, np.where(off, m["overlap"], 0).sum(axis=1))
    assert fold.task_seconds == pytest.approx(0.5 * len(layout))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_arrival_order_and_a_stop_give_the_in_order_fold(tmp_path, seed):
    """Blocks arriving out of order, a stop part-way (checkpoint), a resumed run with the
    rest in another order: the in-order fold bit for bit; no block file left."""
    m = _matrices()
    layout = blocks(N, BLOCK)
    reference = _in_order(m, layout)
    rng = np.random.default_rng(seed)
    work = _work(tmp_path)
    folder = InOrderFold(work, SimilarityFold(N, K, DIMS, "cc"), layout, checkpoint_s=1e9)
    order = [layout[i] for i in rng.permutation(len(layout))]
    first = order[:3]
    for i, (s, e) in enumerate(first):
        folder(i, _rows(m, s, e))
        # folded: exactly the leading blocks that arrived; the others wait on disk
        arrived = set(first[: i + 1])
        lead = next((j for j, b in enumerate(layout) if b not in arrived), len(layout))
        assert folder.fold.folded == lead
        assert set(work.blocks_done()) >= arrived - set(layout[:lead])
    folder.checkpoint()  # the stop signal's save
    saved = set(work.blocks_done())
    assert saved.isdisjoint(layout[: folder.fold.folded])  # folded blocks deleted
    assert len(saved) + folder.fold.folded <= len(first)
    # a rerun: the checkpoint and the early blocks; only the others are computed again
    resumed = InOrderFold(
        work, work.load_fold(n=N, k=K, dims=DIMS, form="cc"), layout, checkpoint_s=0.0
    )
    todo = resumed.missing()
    assert set(todo) == set(layout) - set(first)
    for i in rng.permutation(len(todo)):
        s, e = todo[i]
        resumed(int(i), _rows(m, s, e))
    resumed.checkpoint()
    assert resumed.fold.folded == len(layout)
    assert not work.blocks_done()
    _assert_same_fold(resumed.fold, reference)
    _assert_same_fold(work.load_fold(n=N, k=K, dims=DIMS, form="cc"), reference)


def test_kill_between_fold_checkpoint_and_block_deletion(tmp_path):
    """A block folded and checkpointed but still on disk (killed before its deletion) is
    not folded twice."""
    m = _matrices()
    layout = blocks(N, BLOCK)
    work = _work(tmp_path)
    fold = SimilarityFold(N, K, DIMS, "cc")
    folder = InOrderFold(work, fold, layout, checkpoint_s=1e9)
    folder(0, _rows(m, *layout[1]))  # early: saved
    folder(1, _rows(m, *layout[0]))  # in turn: folds 0, then 1 from disk
    assert fold.folded == 2 and work.blocks_done() == {layout[1]}
    work.save_fold(fold)  # the checkpoint's save, then the "kill" before deleting
    again = InOrderFold(
        work, work.load_fold(n=N, k=K, dims=DIMS, form="cc"), layout, checkpoint_s=1e9
    )
    assert again.fold.folded == 2 and not work.blocks_done()
    assert again.missing() == layout[2:]
    for i, b in enumerate(layout[2:]):
        again(i, _rows(m, *b))
    _assert_same_fold(again.fold, _in_order(m, layout))


def test_fold_checkpoint_of_another_layout_is_an_error(tmp_path):
    work = _work(tmp_path)
    work.save_fold(SimilarityFold(N, K, DIMS, "cc"))
    with pytest.raises(FormatError, match="similarity_fold.npz.*dims=16"):
        work.load_fold(n=N, k=K, dims=DIMS + 1, form="cc")
    work.fold_file.write_bytes(b"not an npz")
    with pytest.raises(FormatError, match="damaged similarity checkpoint"):
        work.load_fold(n=N, k=K, dims=DIMS, form="cc")

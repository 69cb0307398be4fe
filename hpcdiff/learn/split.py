"""Train/test splits of the labelled frames: stratified at random as the method used it
(500 training, 500 test frames), or by order (first ``n_train`` / last ``n_test``)."""

from __future__ import annotations

import numpy as np


def split_sizes(n: int, *, n_train: int = 500, n_test: int = 500) -> tuple[int, int]:
    """Train and test sizes for ``n`` labelled frames.

    With ``n >= n_train + n_test`` the sizes are ``(n_train, n_test)`` (other frames unused).
    With fewer frames the split is proportional: ``train = round(n * n_train / (n_train +
    n_test))`` and ``test = n - train`` (so 200 frames with the 500/500 default give 100/100).
    ``n_test = 0`` trains on ``min(n, n_train)`` frames and tests on none.
    """
    if n < 1:
        raise ValueError("no labelled frames to split")
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got {n_train}, {n_test}")
    if n_test == 0:
        return min(n, n_train), 0
    if n >= n_train + n_test:
        return n_train, n_test
    train = int(round(n * n_train / (n_train + n_test)))
    train = min(max(train, 1), n - 1) if n > 1 else 1
    return train, n - train


def stratified_split(
    y: np.ndarray, *, n_train: int = 500, n_test: int = 500, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of a stratified train/test split (sizes from :func:`split_sizes`).

    Parameters
    ----------
    y
        ``(n,)`` integer class labels.
    n_train, n_test
        Requested sizes.
    random_state
        Seed; the same seed and labels always give the same split.

    Returns
    -------
    train, test
        Sorted ``int64`` row indices, disjoint; each class is represented in proportion.

    Raises
    ------
    ValueError
        A class has too few frames to appear on both sides (the message names it).
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    n_tr, n_te = split_sizes(y.size, n_train=n_train, n_test=n_test)
    rows = np.arange(y.size)
    classes, counts = np.unique(y, return_counts=True)
    if n_te == 0:
        if n_tr == y.size:
            return rows.astype(np.int64), np.empty(0, np.int64)
        train, _ = train_test_split(rows, train_size=n_tr, stratify=y, random_state=random_state)
        return np.sort(train).astype(np.int64), np.empty(0, np.int64)
    few = [(int(c), int(k)) for c, k in zip(classes, counts, strict=True) if k < 2]
    if few:
        raise ValueError(
            "cannot stratify: class(es) with fewer than 2 frames (label, count): "
            f"{few}; label more frames or drop the class"
        )
    if n_tr < classes.size or n_te < classes.size:
        raise ValueError(
            f"a stratified split of {y.size} frames into {n_tr} train / {n_te} test cannot hold "
            f"all {classes.size} classes on both sides; label more frames"
        )
    train, test = train_test_split(
        rows, train_size=n_tr, test_size=n_te, stratify=y, random_state=random_state
    )
    return np.sort(train).astype(np.int64), np.sort(test).astype(np.int64)


def order_split(n: int, *, n_train: int = 500, n_test: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a split by order: the first frames train, the last frames test.

    Parameters
    ----------
    n
        Labelled frames, in run order.
    n_train, n_test
        Requested sizes (fewer frames: proportional sizes, :func:`split_sizes`).

    Returns
    -------
    train, test
        ``int64`` rows ``0..n_tr-1`` and ``n-n_te..n-1``.
    """
    n_tr, n_te = split_sizes(n, n_train=n_train, n_test=n_test)
    return np.arange(n_tr, dtype=np.int64), np.arange(n - n_te, n, dtype=np.int64)


def split_rows(
    y: np.ndarray,
    *,
    n_train: int = 500,
    n_test: int = 500,
    random_state: int = 0,
    method: str = "stratified",
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows of labels ``y`` by ``method`` (``"stratified"`` or ``"order"``).

    Raises
    ------
    ValueError
        An unknown method, or a stratified split the classes cannot fill.
    """
    if method == "stratified":
        return stratified_split(y, n_train=n_train, n_test=n_test, random_state=random_state)
    if method == "order":
        return order_split(np.asarray(y).size, n_train=n_train, n_test=n_test)
    raise ValueError(f"split must be 'stratified' or 'order', got {method!r}")


def too_few_labelled(
    n_labelled: int, *, n_components: int, n_train: int, n_test: int
) -> str | None:
    """Why ``n_labelled`` labelled frames cannot train this model, or ``None`` when they can.

    PCA needs more training frames than ``n_components``; with fewer labelled frames than
    ``n_train + n_test`` the split shrinks in proportion (:func:`split_sizes`), so the
    training frames are counted after that.
    """
    if n_labelled < 1:
        return "no run frame has a label"
    n_tr, _ = split_sizes(n_labelled, n_train=n_train, n_test=n_test)
    if n_tr <= n_components:
        return (
            f"only {n_labelled} labelled frame(s), of which {n_tr} train, but [learn] "
            f"n_components = {n_components} needs more than {n_components} training frames "
            f"(n_train = {n_train}, n_test = {n_test}); label more frames or lower n_components"
        )
    return None

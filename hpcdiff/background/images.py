"""The image the CNN sees: assembled, area-downsampled, three identical channels.

Slab values are placed through the detector's pixel map into the assembled image, which
is centred in a square canvas (aspect ratio kept), and reduced to ``size x size`` by exact
area weighting: each output pixel is the mean of the valid input pixels it covers, each
weighted by its overlap.  This is two small matrix products per frame, so it runs the
same on numpy and cupy.  Output pixels covering no valid pixel (panel gaps, masks, the
canvas border) take the neutral value of the normalised scale (0, i.e. 0.5 in [0, 1]).

No ImageNet or Caffe normalisation is applied here: the feature extractor applies what
its weights declare.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from hpcdiff.backend import array_module


class PixelMapLike(Protocol):
    """What :func:`cnn_images` needs of :class:`hpcdiff.geometry.PixelMap`."""

    rows: np.ndarray  # (n_ss, n_fs) int, -1 off-panel
    cols: np.ndarray
    shape: tuple[int, int]


def _area_matrix(length: int, canvas: int, size: int) -> np.ndarray:
    """(size, length) overlap of input pixels, centred in ``canvas``, with output pixels."""
    offset = (canvas - length) // 2
    step = canvas / size
    out_lo = np.arange(size)[:, None] * step
    in_lo = offset + np.arange(length)[None, :]
    overlap = np.minimum(out_lo + step, in_lo + 1) - np.maximum(out_lo, in_lo)
    return np.clip(overlap, 0, None)


def _nonzeros_per_column(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices and values of each column's non-zeros, padded with weight 0."""
    k = max(int((m > 0).sum(axis=0).max()), 1)
    order = np.argsort(~(m > 0), axis=0, kind="stable")[:k].T  # (length, k)
    weights = np.take_along_axis(m.T, order, axis=1)
    return order, weights


_CACHE: dict[tuple, tuple[Any, Any, Any]] = {}


def resampling_matrix(pixmap: PixelMapLike, size: int) -> tuple[Any, np.ndarray]:
    """Sparse area-weighting map from on-panel slab pixels to the ``size x size`` image.

    Returns
    -------
    matrix : scipy.sparse.csr_matrix, (size * size, m)
        ``matrix[o, j]`` is the area of on-panel pixel ``j`` inside output pixel ``o``
        (in assembled pixels), for the assembled image centred in a square canvas.
    on : ndarray, (n_ss * n_fs,) bool
        Which slab pixels are on a panel (the ``m`` columns, in slab order).
    """
    key = (id(pixmap.rows), id(pixmap.cols), tuple(pixmap.shape), size)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is pixmap.rows:
        return hit[1], hit[2]

    import scipy.sparse

    rows = np.asarray(pixmap.rows).ravel()
    cols = np.asarray(pixmap.cols).ravel()
    height, width = (int(v) for v in pixmap.shape)
    on = (rows >= 0) & (cols >= 0)
    r, c = rows[on], cols[on]
    canvas = max(height, width)
    iy, wy = _nonzeros_per_column(_area_matrix(height, canvas, size))
    ix, wx = _nonzeros_per_column(_area_matrix(width, canvas, size))
    out_idx, col_idx, weight = [], [], []
    pixel = np.arange(r.size)
    for a in range(iy.shape[1]):
        for b in range(ix.shape[1]):
            w = wy[r, a] * wx[c, b]
            keep = w > 0
            out_idx.append((iy[r, a] * size + ix[c, b])[keep])
            col_idx.append(pixel[keep])
            weight.append(w[keep])
    matrix = scipy.sparse.csr_matrix(
        (np.concatenate(weight), (np.concatenate(out_idx), np.concatenate(col_idx))),
        shape=(size * size, r.size),
        dtype=np.float32,
    )
    if len(_CACHE) > 8:
        _CACHE.clear()
    _CACHE[key] = (pixmap.rows, matrix, on)
    return matrix, on


_DEVICE: dict[tuple[int, int], tuple[Any, Any]] = {}


def _on_device(matrix: Any) -> Any:
    """The cupyx copy of a host CSR matrix, made once per matrix (and cupyx module)."""
    import cupyx.scipy.sparse

    key = (id(matrix), id(cupyx.scipy.sparse))
    hit = _DEVICE.get(key)
    if hit is None or hit[0] is not matrix:
        if len(_DEVICE) > 8:
            _DEVICE.clear()
        hit = _DEVICE[key] = (matrix, cupyx.scipy.sparse.csr_matrix(matrix))
    return hit[1]


_INDICES: dict[tuple[int, int], tuple[Any, Any]] = {}


def _on_indices(on: np.ndarray, xp: Any) -> Any:
    """``flatnonzero(on)`` as an ``xp`` array, made once per mask and module: gathering with
    it has a static output size, where indexing with the bool mask makes cupy count the
    True entries on the host."""
    key = (id(on), id(xp))
    hit = _INDICES.get(key)
    if hit is None or hit[0] is not on:
        if len(_INDICES) > 8:
            _INDICES.clear()
        hit = _INDICES[key] = (on, xp.asarray(np.flatnonzero(on)))
    return hit[1]


def cnn_images(
    values: Any,
    *,
    pixmap: PixelMapLike,
    valid: Any | None = None,
    size: int = 224,
    limit: float | None = None,
) -> Any:
    """Turn normalised slab frames into CNN input images.

    Parameters
    ----------
    values
        ``(n, n_ss, n_fs)`` normalised frames (:func:`hpcdiff.background.normalise`),
        symmetric around the neutral value 0.
    pixmap
        The detector's pixel map (``rows``, ``cols`` ``(n_ss, n_fs)`` int, ``-1`` off-panel;
        ``shape`` = assembled ``(H, W)``).
    valid
        Optional bool mask ``(n_ss, n_fs)`` or ``(n, n_ss, n_fs)``; invalid pixels do not
        contribute.
    size
        Output edge in pixels.
    limit
        ``values`` in ``[-limit, limit]`` map to ``[0, 1]`` (clipped); default the
        largest absolute valid value of each frame.

    Returns
    -------
    ndarray, (n, 3, size, size) float32
        In [0, 1]; the three channels are identical; 0.5 where no valid pixel is.
    """
    xp = array_module(values, valid)
    single = values.ndim == 2
    batch = values[None] if single else values
    n = batch.shape[0]
    if tuple(np.shape(pixmap.rows)) != tuple(batch.shape[1:]):
        raise ValueError(
            f"pixel map is for slab {np.shape(pixmap.rows)}, frames are {tuple(batch.shape[1:])}"
        )
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be > 0, got {limit}")
    matrix, on = resampling_matrix(pixmap, size)
    on_x = _on_indices(on, xp)
    flat = xp.take(batch.reshape(n, -1), on_x, axis=1).astype(xp.float32)
    ok = xp.isfinite(flat)
    if valid is not None:
        ok &= xp.take(xp.broadcast_to(valid, batch.shape).reshape(n, -1), on_x, axis=1)
    flat = xp.where(ok, flat, xp.float32(0))
    if limit is None:
        lim = xp.abs(flat).max(axis=1) if flat.shape[1] else xp.zeros(n, dtype=xp.float32)
        lim = xp.where(lim > 0, lim, xp.float32(1))
    else:
        lim = xp.full(n, limit, dtype=xp.float32)
    if xp is not np:
        matrix = _on_device(matrix)
    num = xp.asarray(matrix @ xp.ascontiguousarray(flat.T)).T.reshape(n, size, size)
    den = xp.asarray(matrix @ xp.ascontiguousarray(ok.T.astype(xp.float32))).T
    den = den.reshape(n, size, size)
    covered = den > 1e-6
    mean = xp.where(covered, num / xp.where(covered, den, xp.float32(1)), xp.float32(0))
    unit = xp.clip((mean / lim[:, None, None] + 1) / 2, 0, 1).astype(xp.float32)
    out = xp.ascontiguousarray(xp.broadcast_to(unit[:, None], (n, 3, size, size)))
    return out[0] if single else out


__all__ = ["PixelMapLike", "cnn_images", "resampling_matrix"]

"""Radial background, Bragg masking, normalisation and CNN images of numpy frames, in ring order.

The CPU path of :class:`hpcdiff.preprocess.Preprocessor` for ``method = "radial"``.  The
reference chain (:meth:`~hpcdiff.preprocess.Preprocessor.residual` then
:func:`~hpcdiff.background.cnn_images`) works on slab-ordered arrays and moves between
slab order and |q|-ring order at every stage: the ring statistics gather the pixels by
ring, and each result (background, Bragg threshold) is spread back over the slab with
another gather.  On a CPU those gathers of 2.3 M pixels per CSPAD frame, and the eight
full-frame shifts that grow the peak mask, cost more than the statistics themselves.

:class:`RingOrderImages` gathers each corrected frame into ring order once and stays
there: ring statistics are contiguous slices, per-ring values are spread with
``np.repeat``, Bragg peaks (a few per cent of pixels at most) are grown as a sparse list of
pixel indices, normalisation runs on the ring-ordered residual, and the area-weighting
resampling matrix of :func:`~hpcdiff.background.images.resampling_matrix` has its columns
permuted into ring order once per detector, so nothing is ever scattered back onto the
slab.  The statistics are the very functions the reference path calls on the same
pixels, so the images equal the reference images up to float32 summation order (tested).

Pixels in no ring (off-panel, masked by the geometry, beyond the ring range) have no
background in the reference path either: they are invalid there and absent here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcdiff.background.images import PixelMapLike, resampling_matrix
from hpcdiff.background.normalise import (
    MAD_TO_SIGMA,
    MEAN_ABS_TO_SIGMA,
    _compress,
)
from hpcdiff.background.peaks import NEIGHBOURS
from hpcdiff.segments import (
    Segments,
    _clipped_sorted,
    _moments_sorted,
    _percentile_sorted,
    percentile_sorted_1d,
)

#: Pixels per frame above which :func:`~hpcdiff.background.normalise.robust_scale`
#: estimates from a regular subsample (its default ``max_samples``).
_ROBUST_MAX_SAMPLES = 1 << 18

_NEIGHBOURS = np.array(NEIGHBOURS, dtype=np.int64)  # (8, 2) row and column steps


def _float32_floor(t: np.ndarray) -> np.ndarray:
    """The largest float32 ``<= t`` for float64 ``t`` (NaN stays NaN).

    For float32 ``r``: ``r > t`` exactly when ``r > _float32_floor(t)``, so float32 residuals
    can be compared with float64 thresholds without widening every pixel to float64.
    """
    t32 = t.astype(np.float32)
    with np.errstate(invalid="ignore"):
        above = t32.astype(np.float64) > t
    return np.where(above, np.nextafter(t32, np.float32(-np.inf)), t32)


class RingOrderImages:
    """Corrected numpy frames -> CNN images, radial background, computed in ring order.

    Parameters
    ----------
    rings
        The |q| rings of the detector (:class:`~hpcdiff.segments.Segments` of
        the ring index).
    valid
        ``(n_ss, n_fs)`` bool pixels that carry signal (geometry mask minus bad pixels).
    panel_index
        ``(n_ss, n_fs)`` int panel of each pixel (``-1`` off-panel): peaks grow within panels.
    pixmap
        The detector's pixel map (assembled image positions).
    cfg
        The :class:`~hpcdiff.config.BackgroundConfig` (``method`` must be ``"radial"``).
    limit
        Largest absolute normalised value (maps to 0 and 1 in the images).
    resampling
        Optional ``(matrix, on)`` image resampling in place of the assembled-image one of
        :func:`~hpcdiff.background.images.resampling_matrix` (same meaning: ``matrix``
        ``(size * size, on.sum())``, ``on`` the slab pixels of its columns); ``pixmap`` is
        then unused.

    Notes
    -----
    Everything that depends only on the detector is computed in the constructor: the
    ring order of the valid mask, the every-4th-pixel subsample the Bragg noise estimate
    uses (:meth:`Segments.subsample`), the regular slab subsample of the robust scale,
    the inverse permutation (slab pixel -> ring position) for growing peaks, and the
    resampling matrix in ring order.
    """

    def __init__(
        self,
        rings: Segments,
        *,
        valid: np.ndarray,
        panel_index: np.ndarray,
        pixmap: PixelMapLike | None,
        cfg: Any,
        limit: float,
        resampling: tuple[Any, np.ndarray] | None = None,
    ) -> None:
        import scipy.sparse

        if resampling is None and cfg.method != "radial":
            raise ValueError(f"ring-order images need method 'radial', got {cfg.method!r}")
        self.rings = rings
        self.cfg = cfg
        self.limit = float(limit)
        self.shape = rings.shape
        order = rings.order
        n_pix = self.shape[0] * self.shape[1]
        self.valid = np.ascontiguousarray(np.asarray(valid, bool).ravel()[order])
        self.panel_flat = np.asarray(panel_index).ravel()
        self.position = np.full(n_pix, -1, dtype=np.int64)
        self.position[order] = np.arange(order.size)
        # Bragg noise: the pixels of rings.subsample(4), in ring order
        self.noise_segments = rings.subsample(4)
        self.noise_take = self.position[self.noise_segments.order]
        # robust scale: every step-th slab pixel, as robust_scale subsamples the slab
        step = -(-n_pix // _ROBUST_MAX_SAMPLES) if n_pix > _ROBUST_MAX_SAMPLES else 1
        sub = self.position[::step]
        self.scale_take = sub[sub >= 0]
        # resampling matrix, columns in ring order (ring pixels are all on a panel)
        if resampling is None:
            if pixmap is None:
                raise ValueError("a pixel map or a resampling matrix is needed")
            matrix, on = resampling_matrix(pixmap, cfg.image_size_px)
        else:
            matrix, on = resampling
        column = np.full(n_pix, -1, dtype=np.int64)
        column[np.flatnonzero(on)] = np.arange(int(on.sum()))
        cols = column[order]
        if (cols < 0).any():
            raise ValueError("a ring pixel is off every panel: the ring index and pixel map differ")
        self.matrix = scipy.sparse.csr_matrix(matrix.tocsc()[:, cols])
        self.size = int(cfg.image_size_px)

    # ------------------------------------------------------------------ stages

    def _profile(self, g: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """``(n, n_rings)`` ring background (as :func:`~hpcdiff.background.radial_profile`)."""
        cfg = self.cfg
        if cfg.radial_statistic == "median":
            prof = _percentile_sorted(g, ok, self.rings, 50.0)
        elif cfg.radial_statistic == "clipped_mean":
            prof, _ = _clipped_sorted(g, ok, self.rings, cfg.radial_clip_sigma, 5)
        elif cfg.radial_statistic == "mean":
            _, prof, _ = _moments_sorted(g, ok, self.rings)
        else:
            raise ValueError(
                f"unknown radial statistic {cfg.radial_statistic!r}; "
                "valid: 'median', 'clipped_mean', 'mean'"
            )
        return prof.astype(g.dtype, copy=False)

    def _residual(self, g: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """``g`` minus its ring background; ``ok`` loses pixels whose ring has none."""
        r = g - np.repeat(self._profile(g, ok), self.rings.sizes, axis=1)
        ok &= np.isfinite(r)
        return r

    def _bragg(
        self, r: np.ndarray, ok: np.ndarray, min_excess: float | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ring positions ``(frame, position)`` of grown Bragg peaks, as :func:`bragg_mask`."""
        cfg = self.cfg
        segs = self.noise_segments
        mean, std = _clipped_sorted(
            r[:, self.noise_take], ok[:, self.noise_take], segs, sigma=3.0, max_iter=3
        )
        floor = np.asarray(min_excess, dtype=np.float64)
        if floor.ndim == 1:
            floor = floor[:, None]  # one value per frame
        threshold = _float32_floor(mean + np.maximum(cfg.bragg_sigma * std, floor))
        peaks = r > np.repeat(threshold, self.rings.sizes, axis=1)
        peaks &= ok
        frame, pos = np.nonzero(peaks)
        if cfg.bragg_grow_px > 0 and frame.size:
            frame, pixel = self._grow(frame, self.rings.order[pos], cfg.bragg_grow_px)
            pos = self.position[pixel]
            inside = pos >= 0
            frame, pos = frame[inside], pos[inside]
        return frame, pos

    def _grow(
        self, frame: np.ndarray, pixel: np.ndarray, steps: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add the 8 neighbours of each ``(frame, slab pixel)``, ``steps`` times, within panels."""
        n_ss, n_fs = self.shape
        n_pix = n_ss * n_fs
        key = np.unique(frame * n_pix + pixel)
        for _ in range(steps):
            f, p = np.divmod(key, n_pix)
            ss, fs = np.divmod(p, n_fs)
            nss = ss[:, None] + _NEIGHBOURS[:, 0]
            nfs = fs[:, None] + _NEIGHBOURS[:, 1]
            inside = (nss >= 0) & (nss < n_ss) & (nfs >= 0) & (nfs < n_fs)
            q = np.where(inside, nss * n_fs + nfs, 0)
            same = inside & (self.panel_flat[q] == self.panel_flat[p][:, None])
            grown = (f[:, None] * n_pix + q)[same]
            key = np.unique(np.concatenate([key, grown]))
        return np.divmod(key, n_pix)

    def _normalise(self, r: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Robust per-frame scaling, as :func:`~hpcdiff.background.normalise`; 0 where not ok.

        The scale is :func:`~hpcdiff.background.normalise.robust_scale` written out on the
        valid values alone: calling it on the masked rows measured 15.3 against 17.7 CSPAD
        frames/s for this whole chain.
        """
        cfg = self.cfg
        n = r.shape[0]
        centre = np.full(n, np.nan, dtype=r.dtype)
        scale = np.full(n, np.nan, dtype=r.dtype)
        for i in range(n):
            values = r[i, self.scale_take][ok[i, self.scale_take]]
            if not values.size:
                continue
            c = percentile_sorted_1d(values, 50.0)
            dev = np.abs(values - c)
            mad = percentile_sorted_1d(dev, 50.0) * MAD_TO_SIGMA
            mean_abs = dev.sum() / values.size * MEAN_ABS_TO_SIGMA
            centre[i] = c
            scale[i] = mad if mad > 0 else (mean_abs if mean_abs > 0 else 1.0)
        z = r - centre[:, None]
        z /= scale[:, None]
        np.clip(z, -cfg.clip_sigma, cfg.clip_sigma, out=z)
        z = _compress(z, cfg.compression, np)
        ok &= np.isfinite(z)
        z[~ok] = 0
        return z

    def _images(self, z: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Area-weighted ``(n, 3, size, size)`` images in [0, 1], as :func:`cnn_images`."""
        n, size = z.shape[0], self.size
        num = np.empty((n, size * size), dtype=np.float32)
        den = np.empty((n, size * size), dtype=np.float32)
        for i in range(n):  # one matrix-vector product per frame: no transposed copies
            num[i] = self.matrix @ z[i]
            den[i] = self.matrix @ ok[i].astype(np.float32)
        num3, den3 = num.reshape(n, size, size), den.reshape(n, size, size)
        covered = den3 > 1e-6
        mean = np.where(covered, num3 / np.where(covered, den3, np.float32(1)), np.float32(0))
        unit = np.clip((mean / np.float32(self.limit) + 1) / 2, 0, 1).astype(np.float32)
        return np.ascontiguousarray(np.broadcast_to(unit[:, None], (n, 3, size, size)))

    def __call__(
        self, corrected: np.ndarray, *, min_excess: float | np.ndarray = 0.0
    ) -> np.ndarray:
        """CNN images of corrected frames.

        Parameters
        ----------
        corrected
            ``(n, n_ss, n_fs)`` float32 frames after detector corrections (photons), numpy.
        min_excess
            Smallest excess over the ring mean a Bragg peak must have, unit of
            ``corrected`` (:func:`~hpcdiff.background.bragg_mask`): a scalar or ``(n,)``.

        Returns
        -------
        ndarray, (n, 3, size, size) float32
            In [0, 1]; 0.5 where no valid pixel is.
        """
        n = corrected.shape[0]
        g = np.take(corrected.reshape(n, -1), self.rings.order, axis=1)
        ok = np.isfinite(g)
        ok &= self.valid
        r = self._residual(g, ok)
        if self.cfg.mask_bragg:
            frame, pos = self._bragg(r, ok, min_excess)
            ok[frame, pos] = False
            if self.cfg.radial_statistic == "clipped_mean":
                r = self._residual(g, ok)
        del g
        return self._images(self._normalise(r, ok), ok)


__all__ = ["RingOrderImages"]

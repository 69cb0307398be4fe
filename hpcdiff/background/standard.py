"""The "standard" preprocessing: residuals in noise units on a fixed q-space grid.

The seed recipe (``[background] preprocessing = "seed"``) scales every frame by its own
robust spread and shows the CNN the assembled detector image, so one CNN pixel means a
different |q| on every detector, distance and energy, and the image's contrast depends on
the frame's own statistics.  The standard recipe (``preprocessing = "standard"``) makes an
image that does not depend on the detector, its gain, the shot intensity or the
background's shape:

1. detector corrections as for the seed (:mod:`hpcdiff.corrections`), in photons;
2. a polarisation-aware ring background ``B = P * ring_mean(I / P)`` (``P`` the
   detector's polarisation factor): Bragg peaks are the pixels of ``I / P`` standing out
   of their ring (:func:`~hpcdiff.background.bragg_mask`: its thresholds are relative to
   each ring's clipped mean, so no first background is subtracted), then the background
   is the plain ring mean of ``I / P`` over the remaining pixels (a median or clipped
   mean is biased low for Poisson counts of a few photons);
3. the residual in units of its expected noise, Poisson plus read noise:
   ``z = (I - B) / sqrt(B + read_noise_photons^2)`` (:func:`noise_residual`); pure noise
   has zero mean and unit variance whatever the gain, intensity and background shape;
4. a robust per-frame rescale only as a guard (:func:`noise_scale`): when the clipped
   standard deviation ``s`` of ``z`` leaves ``[1/guard, guard]`` (a wrong gain or read
   noise), ``z`` is divided by ``s / clip(s, 1/guard, guard)``; inside the band ``z`` is
   kept as it is, so a frame with diffuse scattering keeps its excess variance;
5. clipping to ``+-clip_sigma`` and ``compression`` as for the seed;
6. the q-space image (:func:`qspace_matrix`, :func:`qspace_images`): each pixel's
   scattering vector, projected on the detector plane, ``(q_x, q_y)`` in nm^-1, is binned
   onto a fixed ``size x size`` grid spanning ``[-q_max_per_nm, q_max_per_nm]`` (x to the
   right, y up, beam at the centre); a cell is ``sum(w z) / sqrt(sum(w^2))`` over the valid
   pixels in it (``w`` their area in the cell; pixels larger than a cell are split into
   sub-pixels): unit variance for pure noise however many pixels a cell holds, and the
   significance of the cell's photons for a signal, so the same on every detector and
   distance (``q_cell = "mean"``, the area-weighted mean, is the alternative: its noise
   depends on the pixels per cell); cells with no valid pixel take the neutral value 0
   (0.5 in the image).  An optional Gaussian smoothing of sigma
   ``q_smooth_per_nm`` (normalised convolution over the covered cells) averages the noise
   at the scale of diffuse speckles (about one reciprocal cell, ``1/a``).

The resampling matrix depends only on the detector model (positions, wavelength), so it is
built once per detector and reused for every frame.  The q grid uses the model's photon
energy; frames whose energy differs by a fraction ``f`` land ``f`` of their |q| off.

:class:`StandardRingOrder` is the numpy (CPU) chain, computed in |q|-ring order as
:class:`~hpcdiff.background.ring_order.RingOrderImages`; the slab-order chain
(:meth:`hpcdiff.preprocess.Preprocessor.residual` then :func:`qspace_images`) is the
reference and the cupy path; both give the same images up to float32 summation order.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, overload

import numpy as np

from hpcdiff.backend import array_module
from hpcdiff.background.normalise import _compress
from hpcdiff.background.ring_order import _NEIGHBOURS, RingOrderImages, _float32_floor
from hpcdiff.geometry import scattering_vectors
from hpcdiff.segments import Segments

#: Pixels per frame above which the guard's noise scale is estimated from a subsample.
GUARD_MAX_SAMPLES = 1 << 16


class DetectorModelLike(Protocol):
    """What :func:`qspace_matrix` needs of :class:`hpcdiff.geometry.DetectorModel`."""

    geom: Any
    clen_m: float

    @property
    def wavelength_m(self) -> float: ...

    @property
    def slab_shape(self) -> tuple[int, int]: ...


# --------------------------------------------------------------------------- noise units


def noise_residual(corrected: Any, *, background: Any, read_noise_photons: float) -> Any:
    """Residual in units of its expected noise, ``(I - B) / sqrt(max(B, 0) + sigma^2)``.

    Parameters
    ----------
    corrected
        ``(n, ...)`` float32 frames, photons.
    background
        Expected background ``B``, photons, same shape.
    read_noise_photons
        Read-noise RMS ``sigma``, photons.

    Returns
    -------
    ndarray, same shape, float32
        Non-finite where ``B`` is unknown or ``B + sigma^2`` is 0.
    """
    xp = array_module(corrected, background)
    var = xp.maximum(background, xp.float32(0)) + xp.float32(read_noise_photons**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (corrected - background) / xp.sqrt(var)
    return z.astype(xp.float32, copy=False)


def noise_scale(z: Any, ok: Any, *, clip: float = 4.0, max_iter: int = 3) -> Any:
    """Per-frame clipped standard deviation of ``z`` over the ``ok`` values.

    Mean and spread of the ok values, then ``max_iter`` times those of the values within
    ``clip`` spreads of the mean.  A moment estimate, not a MAD: at a few photons per pixel
    the MAD of Poisson counts is quantised and far from the standard deviation.

    Parameters
    ----------
    z
        ``(n, m)`` values (e.g. a subsample of each frame's noise residual).
    ok
        ``(n, m)`` bool, values to use.

    Returns
    -------
    ndarray, (n,) float64
        NaN for a frame with no ok value.
    """
    xp = array_module(z, ok)
    keep = ok & xp.isfinite(z)
    zz = xp.where(keep, z, 0).astype(xp.float64)
    mean = std = None
    for _ in range(max_iter + 1):
        cnt = keep.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = xp.where(keep, zz, 0).sum(axis=1) / cnt
            dev = xp.where(keep, zz - mean[:, None], 0)
            std = xp.sqrt((dev * dev).sum(axis=1) / cnt)
        keep = keep & (xp.abs(zz - mean[:, None]) <= clip * std[:, None])
    return std


def scipy_diag(values: np.ndarray) -> Any:
    """Sparse diagonal matrix of ``values`` (CSR)."""
    import scipy.sparse

    return scipy.sparse.diags(values, format="csr")


def noise_scale_flat(
    z: np.ndarray, ok: np.ndarray, *, clip: float = 4.0, max_iter: int = 3
) -> np.ndarray:
    """:func:`noise_scale` of one numpy frame's values ``z`` ``(m,)`` (``ok`` ``(m,)``
    bool): the same clipping on the kept values only, compressed once per pass instead of
    masked sums over all of them (equal up to float64 summation order).

    Returns
    -------
    ndarray, (1,) float64
        NaN when no value is ok.
    """
    v = z[ok].astype(np.float64)
    v = v[np.isfinite(v)]
    std = np.float64(np.nan)
    for it in range(max_iter + 1):
        if v.size == 0:
            return np.full(1, np.nan)
        mean = v.mean()
        dev = v - mean
        np.multiply(dev, dev, out=dev)  # not np.dot: BLAS threads cost more than they save
        std = np.sqrt(dev.sum() / v.size)
        if it < max_iter:
            v = v[np.abs(v - mean) <= clip * std]
    return np.full(1, std)


def guard_divisor(scale: Any, *, guard: float) -> Any:
    """``scale / clip(scale, 1/guard, guard)``: 1 inside the band, else what brings the
    noise scale back to the band's edge; 1 where ``scale`` is not finite or not > 0."""
    xp = array_module(scale)
    good = xp.isfinite(scale) & (scale > 0)
    s = xp.where(good, scale, 1.0)
    return s / xp.clip(s, 1.0 / guard, guard)


def finish_noise_units(
    z: Any, ok: Any, *, divisor: Any, clip_sigma: float, compression: str
) -> Any:
    """Divide each frame by its guard divisor, clip, compress; 0 where not ok.

    ``z`` ``(n, m)`` float32 is changed in place and returned; ``ok`` loses non-finite values.
    """
    xp = array_module(z, ok)
    z /= xp.asarray(divisor, dtype=xp.float32)[:, None]
    xp.clip(z, -clip_sigma, clip_sigma, out=z)
    z = _compress(z, compression, xp)
    ok &= xp.isfinite(z)
    return xp.where(ok, z, xp.float32(0)).astype(xp.float32, copy=False)


def slab_subsample(n_pixels: int, max_samples: int = GUARD_MAX_SAMPLES) -> slice:
    """The regular slab subsample the guard's noise scale is estimated from."""
    step = -(-n_pixels // max_samples) if n_pixels > max_samples else 1
    return slice(None, None, step)


# --------------------------------------------------------------------------- q-space grid


def _oversampling(geom: Any, clen_m: float, wavelength_m: float, cell: float) -> int:
    """Sub-pixels per pixel edge so that a sub-pixel spans at most half a cell in q."""
    nearest = min(clen_m + p.coffset_m for p in geom.panels)
    pixel = max(1.0 / p.res for p in geom.panels)
    dq = pixel / max(nearest, 1e-6) / (wavelength_m * 1e9)  # nm^-1 per pixel, near the beam
    return int(min(max(math.ceil(2.0 * dq / cell), 1), 8))


_QCACHE: dict[tuple, tuple[Any, Any]] = {}


def qspace_matrix(model: DetectorModelLike, *, size: int, q_max_per_nm: float) -> Any:
    """Sparse area-weighting map from slab pixels to the ``size x size`` q-space grid.

    Cell ``(row, col)`` covers ``q_x`` in ``[-q_max + col h, -q_max + (col + 1) h]`` and
    ``q_y`` in ``[q_max - (row + 1) h, q_max - row h]``, ``h = 2 q_max / size`` nm^-1
    (lab frame: x to the right, y up, looking along the beam).  Each pixel is split into
    ``s x s`` sub-pixels (``s`` so that a sub-pixel spans at most half a cell) and each
    sub-pixel adds ``1 / s^2`` to the cell its centre falls in.

    Parameters
    ----------
    model
        The detector (geometry, camera length, wavelength).
    size
        Grid edge, cells.
    q_max_per_nm
        Half-width of the grid, nm^-1 (no 2 pi).

    Returns
    -------
    scipy.sparse.csr_matrix, (size * size, n_ss * n_fs) float32
        ``matrix[cell, pixel]`` = fraction of the slab pixel's area in the cell; columns of
        off-panel pixels and pixels beyond the grid are empty.  Cached per model.
    """
    import scipy.sparse

    if q_max_per_nm <= 0 or size < 1:
        raise ValueError(f"need q_max_per_nm > 0 and size >= 1, got {q_max_per_nm}, {size}")
    key = (id(model), int(size), float(q_max_per_nm))
    hit = _QCACHE.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    geom = model.geom
    n_ss, n_fs = (int(v) for v in model.slab_shape)
    lam = float(model.wavelength_m)
    cell = 2.0 * q_max_per_nm / size
    s = _oversampling(geom, float(model.clen_m), lam, cell)
    offsets = (np.arange(s) + 0.5) / s
    rows, cols, weights = [], [], []
    for p in geom.panels:
        fs = np.arange(p.n_fs, dtype=np.float64)
        ss = np.arange(p.n_ss, dtype=np.float64)
        slab = (ss[:, None] + p.min_ss) * n_fs + (fs[None, :] + p.min_fs)
        corner = np.array([p.corner_x, p.corner_y, 0.0])
        for b in offsets:
            for a in offsets:
                xyz = (
                    corner
                    + (fs[None, :, None] + a) * np.asarray(p.fs)
                    + (ss[:, None, None] + b) * np.asarray(p.ss)
                ) / p.res
                xyz[..., 2] += float(model.clen_m) + p.coffset_m
                q = scattering_vectors(xyz, wavelength_m=lam)
                c = np.floor((q[..., 0] + q_max_per_nm) / cell)
                r = np.floor((q_max_per_nm - q[..., 1]) / cell)
                inside = (c >= 0) & (c < size) & (r >= 0) & (r < size)
                rows.append((r[inside] * size + c[inside]).astype(np.int64))
                cols.append(slab[inside].astype(np.int64))
                weights.append(np.full(int(inside.sum()), 1.0 / (s * s), np.float32))
    matrix = scipy.sparse.csr_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
        shape=(size * size, n_ss * n_fs),
        dtype=np.float32,
    )
    matrix.sum_duplicates()
    if len(_QCACHE) > 8:
        _QCACHE.clear()
    _QCACHE[key] = (model, matrix)
    return matrix


def gaussian_matrix(size: int, sigma_cells: float) -> np.ndarray:
    """``(size, size)`` float32 Gaussian smoothing along one axis (rows sum to at most 1;
    cut at 4 sigma, no wrap-around): ``G @ image @ G.T`` smooths both axes."""
    i = np.arange(size, dtype=np.float64)
    d = i[:, None] - i[None, :]
    g = np.exp(-0.5 * (d / sigma_cells) ** 2)
    g[np.abs(d) > 4 * sigma_cells + 0.5] = 0
    g /= g.sum(axis=1, keepdims=True)
    return g.astype(np.float32)


def squared_weights(matrix: Any) -> Any:
    """The matrix of squared weights (``matrix.multiply(matrix)``), made once per matrix."""
    hit = _SQUARED.get(id(matrix))
    if hit is None or hit[0] is not matrix:
        if len(_SQUARED) > 8:
            _SQUARED.clear()
        hit = _SQUARED[id(matrix)] = (matrix, matrix.multiply(matrix).tocsr())
    return hit[1]


_SQUARED: dict[int, tuple[Any, Any]] = {}


def grid_images(
    num: Any,
    den: Any,
    den2: Any,
    *,
    limit: float,
    cell: str = "significance",
    smooth: Any | None = None,
) -> Any:
    """``(n, 3, size, size)`` float32 images in [0, 1] from per-cell weighted sums.

    Parameters
    ----------
    num, den, den2
        ``(n, size, size)`` float32 sums of ``w z``, ``w`` and ``w^2`` over the valid pixels
        of each cell (``w`` the area weights of :func:`qspace_matrix`).
    limit
        Cell values in ``[-limit, limit]`` map to ``[0, 1]`` (clipped).
    cell
        ``"significance"``: ``sum(w z) / sqrt(sum(w^2))``, unit variance for pure noise
        whatever the number of pixels in the cell, and, for a signal, the significance of
        the photons in the cell (the same on every detector and distance: a q cell holds
        the same photons); ``"mean"``: ``sum(w z) / sum(w)``, whose noise falls as the
        square root of the pixels per cell (so differs between detectors).
    smooth
        Optional ``(size, size)`` :func:`gaussian_matrix` ``G`` (same array module):
        ``G num G^T`` over ``G den G^T`` (mean) or ``sqrt(G^2 den2 G^2^T)`` (significance).

    Returns
    -------
    ndarray
        0.5 (neutral) in cells without a valid pixel.
    """
    xp = array_module(num, den)
    covered = den > 1e-6
    if cell == "mean":
        norm = den
        if smooth is not None:
            num = smooth @ num @ smooth.T
            norm = smooth @ den @ smooth.T
    elif cell == "significance":
        norm = den2
        if smooth is not None:
            g2 = smooth * smooth
            num = smooth @ num @ smooth.T
            norm = g2 @ den2 @ g2.T
        norm = xp.sqrt(xp.maximum(norm, xp.float32(0)))
    else:
        raise ValueError(f"unknown q cell statistic {cell!r}; valid: 'significance', 'mean'")
    ok = covered & (norm > 1e-12)
    value = xp.where(ok, num / xp.where(ok, norm, xp.float32(1)), xp.float32(0))
    unit = xp.clip((value / xp.float32(limit) + 1) / 2, 0, 1).astype(xp.float32)
    n, size = unit.shape[0], unit.shape[-1]
    return xp.ascontiguousarray(xp.broadcast_to(unit[:, None], (n, 3, size, size)))


def qspace_images(
    values: Any,
    *,
    valid: Any,
    matrix: Any,
    size: int,
    limit: float,
    cell: str = "significance",
    smooth: Any | None = None,
) -> Any:
    """q-space CNN images of noise-unit slab frames (the slab-order / cupy path).

    Parameters
    ----------
    values
        ``(n, n_ss, n_fs)`` float32 clipped noise-unit residuals (0 where invalid).
    valid
        ``(n, n_ss, n_fs)`` bool.
    matrix
        :func:`qspace_matrix` of the detector (host scipy CSR; copied to the GPU once).
    size
        Grid edge.
    limit
        Cell values in ``[-limit, limit]`` map to ``[0, 1]``.
    cell
        Cell statistic, see :func:`grid_images`.
    smooth
        Optional :func:`gaussian_matrix` (numpy; moved to the values' device).

    Returns
    -------
    ndarray, (n, 3, size, size) float32
        In [0, 1]; 0.5 in cells without a valid pixel.
    """
    from hpcdiff.background.images import _on_device

    xp = array_module(values, valid)
    n = values.shape[0]
    flat = xp.where(valid, values, xp.float32(0)).reshape(n, -1).astype(xp.float32)
    ok = xp.ascontiguousarray(valid.reshape(n, -1).astype(xp.float32).T)
    m2 = squared_weights(matrix)
    m, m2 = (matrix, m2) if xp is np else (_on_device(matrix), _on_device(m2))
    num = xp.asarray(m @ xp.ascontiguousarray(flat.T)).T.reshape(n, size, size)
    den = xp.asarray(m @ ok).T.reshape(n, size, size)
    den2 = xp.asarray(m2 @ ok).T.reshape(n, size, size)
    g = None if smooth is None else xp.asarray(smooth)
    c = xp.ascontiguousarray
    return grid_images(c(num), c(den), c(den2), limit=limit, cell=cell, smooth=g)


# --------------------------------------------------------------------------- ring-order chain


class StandardRingOrder(RingOrderImages):
    """Corrected numpy frames (photons) -> standard q-space images, in |q|-ring order.

    Parameters
    ----------
    rings, valid, panel_index, cfg, limit
        As :class:`~hpcdiff.background.ring_order.RingOrderImages`.
    polarisation
        ``(n_ss, n_fs)`` polarisation factor of each pixel (> 0 on valid pixels).
    matrix
        :func:`qspace_matrix` of the detector.
    """

    def __init__(
        self,
        rings: Segments,
        *,
        valid: np.ndarray,
        panel_index: np.ndarray,
        polarisation: np.ndarray,
        matrix: Any,
        cfg: Any,
        limit: float,
    ) -> None:
        n_pix = rings.shape[0] * rings.shape[1]
        super().__init__(
            rings,
            valid=valid,
            panel_index=panel_index,
            pixmap=None,
            cfg=cfg,
            limit=limit,
            resampling=(matrix, np.ones(n_pix, dtype=bool)),
        )
        pol = np.asarray(polarisation, np.float64).ravel()[rings.order]
        good = np.isfinite(pol) & (pol > 0)
        self.valid &= good
        self.pol = np.where(good, pol, 1.0).astype(np.float32)
        self.inv_pol = (1.0 / self.pol).astype(np.float32)
        # the finite-frame path: 1/P zeroed off the valid pixels, static masks and counts
        self.inv_pol_valid = np.where(self.valid, self.inv_pol, np.float32(0))
        # the resampling matrix without the invalid pixels' columns: their values unread
        keep = scipy_diag(self.valid.astype(np.float32))
        self.matrix_valid = (self.matrix @ keep).tocsr()
        self.matrix_valid.eliminate_zeros()
        self.invalid = ~self.valid
        self.noise_valid = self.valid[self.noise_take]
        self.valid_counts = np.zeros(rings.n_segments, dtype=np.int64)
        if rings.n_segments:
            self.valid_counts[:] = np.bincount(
                rings.sorted_labels[self.valid], minlength=rings.n_segments
            )
        self.matrix_sq = self.matrix.multiply(self.matrix).tocsr()
        self.matrix_csc = self.matrix.tocsc()
        self.matrix_sq_csc = self.matrix_sq.tocsc()
        self.matrix_csc_squares = self.matrix_csc.data * self.matrix_csc.data
        on = self.valid.astype(np.float64)
        self.den_static = self.matrix.astype(np.float64) @ on
        self.den2_static = self.matrix_sq.astype(np.float64) @ on
        self.ring_nz = np.flatnonzero(rings.sizes > 0)
        self.ring_starts = rings.starts[self.ring_nz]
        noise = self.noise_segments
        self.noise_nz = np.flatnonzero(noise.sizes > 0)
        self.noise_starts = noise.starts[self.noise_nz]
        self.guard_take = self.position[slab_subsample(n_pix)]
        self.guard_take = self.guard_take[self.guard_take >= 0]
        self.guard_valid = self.valid[self.guard_take]
        self.valid_view = self.valid.view()  # read-only: never changed through it
        self.valid_view.flags.writeable = False
        self.guard_slot = np.full(self.valid.size, -1, dtype=np.int64)
        self.guard_slot[self.guard_take] = np.arange(self.guard_take.size)
        size = int(cfg.image_size_px)
        self.smooth = (
            gaussian_matrix(size, cfg.q_smooth_per_nm / (2 * cfg.q_max_per_nm / size))
            if cfg.q_smooth_per_nm > 0
            else None
        )

    def _ring_mean(self, g: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """``(n, n_rings)`` float32 mean of the ok values of each ring (NaN: none).

        float32 sums (numpy's pairwise summation: relative error about 1e-7 on a ring of
        20,000 values), int32 counts: a third of the time of float64 sums.
        """
        rings = self.rings
        n = g.shape[0]
        cnt = np.zeros((n, rings.n_segments), dtype=np.int32)
        s1 = np.zeros((n, rings.n_segments), dtype=np.float64)
        nz = self.ring_nz
        if nz.size:
            starts = self.ring_starts
            cnt[:, nz] = np.add.reduceat(ok, starts, axis=1, dtype=np.int32)
            s1[:, nz] = np.add.reduceat(np.where(ok, g, np.float32(0)), starts, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (s1 / cnt).astype(np.float32)

    def _bragg_fast(
        self,
        gp: np.ndarray,
        ok: np.ndarray,
        min_excess: float,
        *,
        sample_ok: np.ndarray | None = None,
    ) -> np.ndarray:
        """Ring positions of the grown Bragg peaks of one ring-ordered frame ``gp`` (m,).

        As :meth:`~hpcdiff.background.ring_order.RingOrderImages._bragg` (the clipped ring
        statistics of the every-4th-pixel noise sample, the threshold, the grown peaks),
        with the clipping passes of :func:`clipped_ring_stats` (float32 comparisons,
        moments updated from the pixels that changed).  ``sample_ok``: ``ok`` of the
        noise sample when known; then ``gp`` is known finite and 0 where not ``ok``.
        """
        cfg = self.cfg
        mean, std = clipped_ring_stats(
            np.take(gp, self.noise_take, mode="wrap"),  # indices valid by construction
            ok[self.noise_take] if sample_ok is None else sample_ok,
            starts=self.noise_starts,
            nonempty=self.noise_nz,
            labels=self.noise_segments.sorted_labels,
            n_segments=self.rings.n_segments,
            sigma=3.0,
            max_iter=3,
            clean=sample_ok is not None,
        )
        threshold = _float32_floor(mean + np.maximum(cfg.bragg_sigma * std, float(min_excess)))
        peaks = gp > np.repeat(threshold.astype(np.float32), self.rings.sizes)
        known = threshold[np.isfinite(threshold)]
        if sample_ok is None or (known.size and known.min() < 0):
            peaks &= ok  # else gp is 0 where not ok, never above a threshold >= 0
        pos = np.flatnonzero(peaks)
        if cfg.bragg_grow_px > 0 and pos.size:
            pixel = grow_within_panels(
                self.rings.order[pos],
                panel=self.panel_flat,
                shape=self.shape,
                steps=cfg.bragg_grow_px,
            )
            pos = self.position[pixel]
            pos = pos[pos >= 0]
        return pos

    def _noise_units(
        self,
        g: np.ndarray,
        ok: np.ndarray,
        mean: np.ndarray,
        *,
        finite: bool = False,
        dropped: np.ndarray | None = None,
        guard_ok: np.ndarray | None = None,
    ) -> np.ndarray:
        """Clipped, compressed noise units of one ring-ordered frame, 0 where not ok.

        :func:`noise_residual` with ``B = P * mean`` (``mean`` the ``(n_rings,)`` ring
        means of ``I / P``) with two frame-sized temporaries, :func:`noise_scale` of the
        guard sample and :func:`finish_noise_units`.  ``ok`` loses the non-finite values,
        in place (``finite``: every value of ``g`` is known finite, so the check is needed
        only without read noise; ``dropped``: with ``finite``, the ring positions of the
        valid pixels that are not ok: only they are zeroed, the invalid pixels keep
        meaningless values, to be read only through ``matrix_valid``; ``guard_ok``: ``ok``
        of the guard sample, when known).  (Fusing the passes over cache-sized blocks measured slower here.)
        """
        cfg = self.cfg
        bg = np.repeat(mean, self.rings.sizes)
        bg *= self.pol
        z = np.subtract(g, bg, out=g)
        finite_mean = mean[np.isfinite(mean)]
        if finite_mean.size and finite_mean.min() < 0:  # else B >= 0 already (P > 0)
            np.maximum(bg, 0, out=bg)
        bg += np.float32(cfg.read_noise_photons**2)
        np.sqrt(bg, out=bg)
        with np.errstate(divide="ignore", invalid="ignore"):
            z /= bg
        del bg
        if not finite or cfg.read_noise_photons <= 0:
            # with finite inputs and sigma > 0, z is finite on every ok pixel: its ring
            # has an ok value, so its mean is finite, and B + sigma^2 > 0
            ok &= np.isfinite(z)
        take = self.guard_take
        scale = noise_scale_flat(z[take], ok[take] if guard_ok is None else guard_ok)
        # finish_noise_units, in place: a divisor of 1 (the guard idle) is skipped, and
        # values non-finite after the clip were non-finite before it (ok is False there)
        divisor = np.float32(guard_divisor(scale, guard=cfg.standard_guard)[0])
        if divisor != 1:
            z /= divisor
        clip = np.float32(cfg.clip_sigma)
        np.clip(z, -clip, clip, out=z)
        if cfg.compression != "none":
            z = _compress(z, cfg.compression, np)
            ok &= np.isfinite(z)
        elif finite and dropped is not None:
            z[dropped] = 0  # invalid pixels: not read through matrix_valid
            return z
        np.copyto(z, np.float32(0), where=~ok)
        return z

    def _frame(self, x: np.ndarray, min_excess: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cell sums ``sum(w z)``, ``sum(w)``, ``sum(w^2)`` over the valid pixels of one
        corrected frame ``x`` ``(n_ss * n_fs,)`` float32 photons; ``(size * size,)`` float32
        each (see :func:`grid_images`)."""
        return self._ordered_frame(np.take(x, self.rings.order), min_excess, finite=False)

    def _ordered_frame(
        self, g: np.ndarray, min_excess: float, *, finite: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_frame` of a frame already in ring order, ``g`` ``(n_ring_pixels,)``
        float32 photons (changed in place); ``finite``: every value of ``g`` is finite."""
        if finite and self.cfg.compression == "none" and self.cfg.read_noise_photons > 0:
            return self._finite_frame(g, min_excess)
        cfg = self.cfg
        if finite:
            ok = self.valid.copy()
        else:
            ok = np.isfinite(g)
            ok &= self.valid
        gp = np.multiply(g, self.inv_pol)
        if cfg.mask_bragg:  # thresholds are relative to each ring's clipped mean
            ok[self._bragg_fast(gp, ok, min_excess)] = False
        mean = self._ring_mean(gp[None], ok[None])[0]
        del gp
        z = self._noise_units(g, ok, mean, finite=finite)
        num = self.matrix @ z
        # sums of w and w^2: their values for the static mask minus the pixels dropped here
        dropped = np.flatnonzero(self.valid & ~ok)
        cells = self.size * self.size
        den = self.den_static - column_sums(self.matrix_csc, dropped, cells)
        den2 = self.den2_static - column_sums(self.matrix_sq_csc, dropped, cells)
        return num, den.astype(np.float32), den2.astype(np.float32)

    def _finite_frame(
        self, g: np.ndarray, min_excess: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_ordered_frame` of a ring-ordered frame whose values are all finite
        (integer ADU through finite maps), ``compression = "none"``, read noise > 0 (so
        the noise units are finite on every ok pixel).

        The pixels a frame drops are the valid pixels of its grown Bragg peaks: the ring
        means of ``I / P`` are the sums over the valid pixels (``I / P`` made 0 on invalid
        pixels by a precomputed factor) less the dropped pixels' values, and the counts
        the static counts less theirs; the cell weights ``sum(w)``, ``sum(w^2)`` lose the
        same pixels.  No frame-sized mask is negated or searched: the same images up to
        float32 summation order.
        """
        cfg = self.cfg
        gp = np.multiply(g, self.inv_pol_valid)
        dropped = np.empty(0, dtype=np.int64)
        if cfg.mask_bragg:
            pos = self._bragg_fast(gp, self.valid, min_excess, sample_ok=self.noise_valid)
            pos = np.sort(pos)  # unique by sorting: a few 10^4 positions
            dropped = pos[np.concatenate(([True], pos[1:] != pos[:-1]))] if pos.size else pos
            dropped = dropped[self.valid[dropped]]
        guard_ok = self.guard_valid.copy()
        slot = self.guard_slot[dropped]
        guard_ok[slot[slot >= 0]] = False
        # ring means of I / P over the ok pixels
        labels = self.rings.sorted_labels[dropped]
        n_rings = self.rings.n_segments
        s1 = np.zeros(n_rings, dtype=np.float64)
        if self.ring_nz.size:
            s1[self.ring_nz] = np.add.reduceat(gp, self.ring_starts)
        s1 -= np.bincount(labels, weights=gp[dropped], minlength=n_rings)
        cnt = self.valid_counts - np.bincount(labels, minlength=n_rings)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (s1 / cnt).astype(np.float32)
        del gp
        z = self._noise_units(
            g, self.valid_view, mean, finite=True, dropped=dropped, guard_ok=guard_ok
        )
        num = self.matrix_valid @ z
        cells = self.size * self.size
        lost, lost2 = column_sums(self.matrix_csc, dropped, cells, squares=self.matrix_csc_squares)
        den = self.den_static - lost
        den2 = self.den2_static - lost2
        return num, den.astype(np.float32), den2.astype(np.float32)

    def __call__(
        self, corrected: np.ndarray, *, min_excess: float | np.ndarray = 0.0
    ) -> np.ndarray:
        """Standard images of corrected frames.

        Parameters
        ----------
        corrected
            ``(n, n_ss, n_fs)`` float32 frames after detector corrections, photons.
        min_excess
            Smallest excess of a Bragg peak over the ring level of ``I / P``, photons.

        Returns
        -------
        ndarray, (n, 3, size, size) float32
            In [0, 1]; 0.5 where no valid pixel is.
        """
        cfg = self.cfg
        n = corrected.shape[0]
        floor = np.broadcast_to(np.asarray(min_excess, dtype=np.float64), (n,))
        size = self.size
        sums = np.empty((3, n, size * size), dtype=np.float32)
        flat = corrected.reshape(n, -1)
        for i in range(n):
            sums[0, i], sums[1, i], sums[2, i] = self._frame(flat[i], float(floor[i]))
        num, den, den2 = sums.reshape(3, n, size, size)
        return grid_images(num, den, den2, limit=self.limit, cell=cfg.q_cell, smooth=self.smooth)

    def ordered_images(
        self, ordered: np.ndarray, *, min_excess: float | np.ndarray = 0.0, finite: bool = False
    ) -> np.ndarray:
        """:meth:`__call__` of frames already gathered into ring order.

        Parameters
        ----------
        ordered
            ``(n, n_ring_pixels)`` float32 corrected frames, photons, in the order of
            ``rings.order`` (e.g. from
            :class:`~hpcdiff.cpu_corrections.OrderedCorrections`); changed in place.
        min_excess
            As for :meth:`__call__`.
        finite
            Every value is known finite (skips the finiteness checks).

        Returns
        -------
        ndarray, (n, 3, size, size) float32
            Equal to :meth:`__call__` of the slab frames they were gathered from.
        """
        n = ordered.shape[0]
        floor = np.broadcast_to(np.asarray(min_excess, dtype=np.float64), (n,))
        size = self.size
        sums = np.empty((3, n, size * size), dtype=np.float32)
        for i in range(n):
            sums[0, i], sums[1, i], sums[2, i] = self._ordered_frame(
                ordered[i], float(floor[i]), finite=finite
            )
        num, den, den2 = sums.reshape(3, n, size, size)
        return grid_images(
            num, den, den2, limit=self.limit, cell=self.cfg.q_cell, smooth=self.smooth
        )


def grow_within_panels(
    pixel: np.ndarray, *, panel: np.ndarray, shape: tuple[int, int], steps: int
) -> np.ndarray:
    """Flat slab pixels ``pixel`` and their 8-neighbours within the same panel, ``steps``
    times (the set of :meth:`RingOrderImages._grow` of one frame).

    The result may list a pixel more than once (only the last step's additions are not
    made unique: the caller masks them), so no sort of the whole list is needed.

    Parameters
    ----------
    pixel
        ``(k,)`` int flat slab indices.
    panel
        ``(n_ss * n_fs,)`` panel of each slab pixel.
    shape
        ``(n_ss, n_fs)``.
    """
    n_ss, n_fs = shape
    for step in range(steps):
        if step:
            pixel = np.unique(pixel)
        ss, fs = np.divmod(pixel, n_fs)
        nss = ss[:, None] + _NEIGHBOURS[:, 0]
        nfs = fs[:, None] + _NEIGHBOURS[:, 1]
        inside = (nss >= 0) & (nss < n_ss) & (nfs >= 0) & (nfs < n_fs)
        q = np.where(inside, nss * n_fs + nfs, 0)
        same = inside & (panel[q] == panel[pixel][:, None])
        pixel = np.concatenate([pixel, q[same]])
    return pixel


def _float32_ceil(t: np.ndarray) -> np.ndarray:
    """The smallest float32 ``>= t`` for float64 ``t`` (NaN stays NaN)."""
    return -_float32_floor(-t)


def clipped_ring_stats(
    v: np.ndarray,
    ok: np.ndarray,
    *,
    starts: np.ndarray,
    nonempty: np.ndarray,
    labels: np.ndarray,
    n_segments: int,
    sigma: float,
    max_iter: int,
    clean: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Sigma-clipped mean and std of each segment of one frame in segment order.

    As :func:`~hpcdiff.segments._clipped_sorted` (moments over the ok values, then up to
    ``max_iter`` passes keeping the values within ``sigma`` stds of the mean), but the
    pass compares the float32 values with float32 bounds (the float32 values inside the
    float64 interval ``mean +- sigma std``) and updates the float64 sums with the few
    values that entered or left, instead of summing every value again.

    Parameters
    ----------
    v
        ``(m,)`` float32 values in segment order.
    ok
        ``(m,)`` bool, values to use.
    starts, nonempty
        Start in ``v`` of each non-empty segment, and its segment number.
    labels
        ``(m,)`` int segment of each value.
    n_segments
        Number of segments.
    clean
        ``v`` is known finite, and 0 where not ``ok`` (skips the check and the masking).

    Returns
    -------
    mean, std : ndarray, (n_segments,) float64
        NaN where a segment has no ok value.
    """
    cnt = np.zeros(n_segments, dtype=np.float64)
    s1 = np.zeros(n_segments, dtype=np.float64)
    s2 = np.zeros(n_segments, dtype=np.float64)
    ok = ok if clean else ok & np.isfinite(v)
    if nonempty.size:
        w = v.astype(np.float64) if clean else np.where(ok, v, np.float32(0)).astype(np.float64)
        cnt[nonempty] = np.add.reduceat(ok, starts, dtype=np.int32)
        s1[nonempty] = np.add.reduceat(w, starts)
        np.multiply(w, w, out=w)
        s2[nonempty] = np.add.reduceat(w, starts)
    sizes = np.diff(np.append(starts, v.size))

    def moments() -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s1 / cnt
            var = np.maximum(s2 / cnt - mean * mean, 0.0)
        return mean, np.sqrt(var)

    mean, std = moments()
    keep = ok
    for _ in range(max_iter):
        lo = _float32_ceil(mean - sigma * std)[nonempty]
        hi = _float32_floor(mean + sigma * std)[nonempty]
        new = v >= np.repeat(lo, sizes)
        new &= v <= np.repeat(hi, sizes)
        new &= ok
        changed = np.flatnonzero(new != keep)
        if changed.size == 0:
            break
        sign = np.where(new[changed], 1.0, -1.0)
        val = v[changed].astype(np.float64)
        seg = labels[changed]
        cnt += np.bincount(seg, weights=sign, minlength=n_segments)
        s1 += np.bincount(seg, weights=sign * val, minlength=n_segments)
        s2 += np.bincount(seg, weights=sign * val * val, minlength=n_segments)
        keep = new
        mean, std = moments()
    return mean, std


@overload
def column_sums(csc: Any, columns: np.ndarray, n_rows: int) -> np.ndarray: ...


@overload
def column_sums(
    csc: Any, columns: np.ndarray, n_rows: int, *, squares: np.ndarray
) -> tuple[np.ndarray, np.ndarray]: ...


def column_sums(
    csc: Any, columns: np.ndarray, n_rows: int, *, squares: np.ndarray | None = None
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``(n_rows,)`` float64 sum of the given columns of a CSC matrix (repeats count).

    With ``squares`` (the matrix's ``data`` squared, same layout), also the sums of the
    squared entries, from the same gathered entries.
    """
    empty = np.zeros(n_rows)
    if columns.size == 0:
        return empty if squares is None else (empty, empty.copy())
    first = csc.indptr[columns]
    lengths = csc.indptr[columns + 1] - first
    total = int(lengths.sum())
    if total == 0:
        return empty if squares is None else (empty, empty.copy())
    ends = np.cumsum(lengths)
    at = np.arange(total) - np.repeat(ends - lengths, lengths) + np.repeat(first, lengths)
    rows = csc.indices[at]
    sums = np.bincount(rows, weights=csc.data[at].astype(np.float64), minlength=n_rows)
    if squares is None:
        return sums
    return sums, np.bincount(rows, weights=squares[at].astype(np.float64), minlength=n_rows)


__all__ = [
    "StandardRingOrder",
    "clipped_ring_stats",
    "column_sums",
    "grow_within_panels",
    "finish_noise_units",
    "gaussian_matrix",
    "grid_images",
    "guard_divisor",
    "noise_residual",
    "noise_scale",
    "noise_scale_flat",
    "qspace_images",
    "qspace_matrix",
    "slab_subsample",
    "squared_weights",
]

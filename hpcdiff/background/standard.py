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
   right, y up, beam at the centre); a cell is the area-weighted mean of the valid pixels
   in it (pixels larger than a cell are split into sub-pixels); cells with no valid pixel
   take the neutral value 0 (0.5 in the image).  An optional Gaussian smoothing of sigma
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
from typing import Any, Protocol

import numpy as np

from hpcdiff.backend import array_module
from hpcdiff.background.normalise import _compress
from hpcdiff.background.ring_order import RingOrderImages
from hpcdiff.segments import Segments
from hpcdiff.geometry import scattering_vectors

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


def grid_images(num: Any, den: Any, *, limit: float, smooth: Any | None = None) -> Any:
    """``(n, 3, size, size)`` float32 images in [0, 1] from per-cell weighted sums.

    Parameters
    ----------
    num, den
        ``(n, size, size)`` float32 sums of ``w z`` and of ``w`` over the valid pixels.
    limit
        ``z`` in ``[-limit, limit]`` maps to ``[0, 1]``.
    smooth
        Optional ``(size, size)`` :func:`gaussian_matrix` (same array module).

    Returns
    -------
    ndarray
        0.5 (neutral) in cells without a valid pixel.
    """
    xp = array_module(num, den)
    covered = den > 1e-6
    if smooth is not None:
        num = smooth @ num @ smooth.T
        den = smooth @ den @ smooth.T
    ok = covered & (den > 1e-6)
    mean = xp.where(ok, num / xp.where(ok, den, xp.float32(1)), xp.float32(0))
    unit = xp.clip((mean / xp.float32(limit) + 1) / 2, 0, 1).astype(xp.float32)
    n, size = unit.shape[0], unit.shape[-1]
    return xp.ascontiguousarray(xp.broadcast_to(unit[:, None], (n, 3, size, size)))


def qspace_images(
    values: Any, *, valid: Any, matrix: Any, size: int, limit: float, smooth: Any | None = None
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
        Largest absolute value of ``values`` (maps to 0 and 1).
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
    ok = valid.reshape(n, -1).astype(xp.float32)
    m = matrix if xp is np else _on_device(matrix)
    num = xp.asarray(m @ xp.ascontiguousarray(flat.T)).T.reshape(n, size, size)
    den = xp.asarray(m @ xp.ascontiguousarray(ok.T)).T.reshape(n, size, size)
    g = None if smooth is None else xp.asarray(smooth)
    return grid_images(xp.ascontiguousarray(num), xp.ascontiguousarray(den), limit=limit, smooth=g)


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
        self.guard_take = self.position[slab_subsample(n_pix)]
        self.guard_take = self.guard_take[self.guard_take >= 0]
        size = int(cfg.image_size_px)
        self.smooth = (
            gaussian_matrix(size, cfg.q_smooth_per_nm / (2 * cfg.q_max_per_nm / size))
            if cfg.q_smooth_per_nm > 0
            else None
        )

    def _ring_mean(self, g: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """``(n, n_rings)`` float32 mean of the ok values of each ring (NaN: none); the
        count and sum of :func:`~hpcdiff.segments._moments_sorted`, no squares."""
        rings = self.rings
        n = g.shape[0]
        cnt = np.zeros((n, rings.n_segments), dtype=np.int64)
        s1 = np.zeros((n, rings.n_segments), dtype=np.float64)
        nz = np.flatnonzero(rings.sizes > 0)
        if nz.size:
            starts = rings.starts[nz]
            cnt[:, nz] = np.add.reduceat(ok, starts, axis=1, dtype=np.int64)
            s1[:, nz] = np.add.reduceat(np.where(ok, g, 0), starts, axis=1, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (s1 / cnt).astype(np.float32)

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
        g = np.take(corrected.reshape(n, -1), self.rings.order, axis=1)
        ok = np.isfinite(g)
        ok &= self.valid
        gp = g * self.inv_pol
        if cfg.mask_bragg:  # thresholds are relative to each ring's clipped mean
            frame, pos = self._bragg(gp, ok, min_excess)
            ok[frame, pos] = False
        mean = self._ring_mean(gp, ok)
        del gp
        # z = (g - B) / sqrt(max(B, 0) + sigma^2), B = P * ring mean, with two temporaries
        bg = np.repeat(mean, self.rings.sizes, axis=1)
        bg *= self.pol
        z = np.subtract(g, bg)
        del g
        np.maximum(bg, 0, out=bg)
        bg += np.float32(cfg.read_noise_photons**2)
        np.sqrt(bg, out=bg)
        with np.errstate(divide="ignore", invalid="ignore"):
            z /= bg
        del bg
        ok &= np.isfinite(z)
        scale = noise_scale(z[:, self.guard_take], ok[:, self.guard_take])
        z = finish_noise_units(
            z,
            ok,
            divisor=guard_divisor(scale, guard=cfg.standard_guard),
            clip_sigma=cfg.clip_sigma,
            compression=cfg.compression,
        )
        size = self.size
        num = np.empty((n, size * size), dtype=np.float32)
        den = np.empty((n, size * size), dtype=np.float32)
        for i in range(n):
            num[i] = self.matrix @ z[i]
            den[i] = self.matrix @ ok[i].astype(np.float32)
        return grid_images(
            num.reshape(n, size, size),
            den.reshape(n, size, size),
            limit=self.limit,
            smooth=self.smooth,
        )


__all__ = [
    "StandardRingOrder",
    "finish_noise_units",
    "gaussian_matrix",
    "grid_images",
    "guard_divisor",
    "noise_residual",
    "noise_scale",
    "qspace_images",
    "qspace_matrix",
    "slab_subsample",
]

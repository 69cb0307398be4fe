"""Detector corrections applied before background removal.

* :func:`apply_pedestal_gain`: ``(raw - pedestal) * gain`` with per-pixel maps read by
  :func:`read_calibration`;
* :func:`common_mode_offsets` / :func:`subtract_common_mode`: the per-ASIC, per-frame
  baseline shift of CSPAD-like detectors, estimated from the pixels that saw no photon
  (psana's common-mode idea): the median of the pixels below a photon threshold, or the
  peak of their (zero-photon) histogram;
* :func:`adu_to_photons`: ADU / (ADU per eV x photon energy);
* :func:`find_bad_pixels`: dead (stuck or almost always zero) and hot pixels judged over
  many frames, never from one frame's zeros.

Array functions take numpy or cupy batches ``(n, n_ss, n_fs)`` and return the same kind;
on cupy the ASIC statistics are vectorised over all ASICs and frames
(:mod:`hpcdiff.segments`), on numpy a loop partitions each ASIC's contiguous
slice (faster on a CPU, same result).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hpcdiff.backend import array_module, to_numpy
from hpcdiff.errors import FormatError
from hpcdiff.segments import (
    Segments,
    as_segments,
    expand,
    panel_rectangles,
    percentile_sorted_1d,
    segment_clipped_stats,
    segment_median,
    segment_moments,
)

CommonModeMethod = Literal["median", "histogram"]


# --------------------------------------------------------------------------- calibration maps


def read_pedestal_and_gain(
    experiment: Any, *, shape: tuple[int, int]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The ``[experiment]`` ``pedestal`` and ``gain`` maps of a job, each ``None`` if unset.

    Parameters
    ----------
    experiment
        A :class:`hpcdiff.config.ExperimentConfig`.
    shape
        ``(n_ss, n_fs)`` detector slab the maps must match.
    """
    pedestal = (
        None if experiment.pedestal is None else read_calibration(experiment.pedestal, shape=shape)
    )
    gain = None if experiment.gain is None else read_calibration(experiment.gain, shape=shape)
    return pedestal, gain


def read_calibration(
    path: str | Path, *, shape: tuple[int, int], dataset: str | None = None
) -> np.ndarray:
    """Read a per-pixel calibration map (pedestal or gain) from an HDF5 file.

    Parameters
    ----------
    path
        HDF5 file.
    shape
        The slab shape ``(n_ss, n_fs)`` the map must have.
    dataset
        Dataset path; default: the only dataset in the file, or ``/data`` if present.

    Returns
    -------
    ndarray, (n_ss, n_fs) float32

    Raises
    ------
    FormatError
        Naming the file and dataset, if the dataset is missing, ambiguous, not numeric,
        not of ``shape`` or not finite.
    """
    import h5py

    path = Path(path)
    from hpcdiff.io.hdf5 import open_hdf5

    with open_hdf5(path) as fh:
        if dataset is None:
            found: list[str] = []
            fh.visititems(
                lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None
            )
            if "data" in found:
                dataset = "/data"
            elif len(found) == 1:
                dataset = "/" + found[0]
            else:
                raise FormatError(
                    path,
                    f"cannot tell which dataset is the calibration map; found {found or 'none'},"
                    " name one with dataset=",
                )
        if dataset not in fh or not isinstance(fh[dataset], h5py.Dataset):
            raise FormatError(path, "no such dataset", dataset=dataset)
        ds = fh[dataset]
        if ds.dtype.kind not in "fiu":
            raise FormatError(
                path, f"expected a numeric map, found dtype {ds.dtype}", dataset=dataset
            )
        if tuple(ds.shape) != tuple(shape):
            raise FormatError(
                path,
                f"expected shape {tuple(shape)} (the detector slab n_ss x n_fs), found {ds.shape}",
                dataset=dataset,
            )
        values = ds[()].astype(np.float32)
    if not np.isfinite(values).all():
        raise FormatError(path, "map holds non-finite values", dataset=dataset)
    return values


def apply_pedestal_gain(
    frames: Any, *, pedestal: Any | None = None, gain: Any | None = None
) -> Any:
    """``(frames - pedestal) * gain``; either map may be omitted.

    Parameters
    ----------
    frames
        ``(n, n_ss, n_fs)`` raw frames, ADU.
    pedestal
        ``(n_ss, n_fs)`` dark level, ADU.
    gain
        ``(n_ss, n_fs)`` relative gain factor (1 = nominal), dimensionless.

    Returns
    -------
    ndarray, same shape as ``frames``; float32 unless ``frames`` is float64.
    """
    xp = array_module(frames, pedestal, gain)
    dtype = frames.dtype if frames.dtype == np.float64 else np.float32
    out = frames.astype(dtype, copy=True)
    for name, m in (("pedestal", pedestal), ("gain", gain)):
        if m is not None and m.shape != frames.shape[-2:]:
            raise ValueError(f"{name} map has shape {m.shape}, frames {frames.shape[-2:]}")
    if pedestal is not None:
        out -= xp.asarray(pedestal, dtype=dtype)
    if gain is not None:
        out *= xp.asarray(gain, dtype=dtype)
    return out


# --------------------------------------------------------------------------- common mode


def asic_index(panel_index: Any, *, asic_shape: tuple[int, int] | None = None) -> np.ndarray:
    """ASIC of every pixel, from the panel index.

    Parameters
    ----------
    panel_index
        ``(n_ss, n_fs)`` int panel of each pixel, ``-1`` where none.
    asic_shape
        ``(rows, columns)`` of one ASIC when panels hold several (psana's 2x1 sensors are
        185 x 388 = two 185 x 194 ASICs); ``None`` when every panel is one ASIC (CrystFEL's
        CSPAD geometries).

    Returns
    -------
    ndarray, (n_ss, n_fs) int32
        ASIC number, ``-1`` off-panel.
    """
    idx = to_numpy(panel_index)
    if asic_shape is None:
        return np.where(idx >= 0, idx, -1).astype(np.int32)
    ah, aw = asic_shape
    out = np.full(idx.shape, -1, dtype=np.int32)
    n = 0
    for r in panel_rectangles(idx):
        h, w = r.shape
        if h % ah or w % aw:
            raise ValueError(
                f"panel {r.panel} is {h} x {w}, not a whole number of {ah} x {aw} ASICs"
            )
        for i in range(h // ah):
            for j in range(w // aw):
                out[
                    r.ss0 + i * ah : r.ss0 + (i + 1) * ah, r.fs0 + j * aw : r.fs0 + (j + 1) * aw
                ] = n
                n += 1
    return out


def _counts(key: Any, size: int, xp: Any) -> Any:
    """How often each of ``0 .. size - 1`` occurs in the int64 array ``key`` (entries
    ``== size`` are not counted).  numpy: ``bincount``; cupy: one sort and a
    ``searchsorted`` of the bin edges (cupy's ``bincount`` reads ``max(key)`` back to the
    host to size its output)."""
    if xp is np:
        return np.bincount(key, minlength=size + 1)[:size]
    edges = xp.searchsorted(xp.sort(key), xp.arange(size + 1, dtype=key.dtype))
    return edges[1:] - edges[:-1]


def _histogram_peak(
    rows: Any,
    ok: Any,
    labels: Any,
    n_seg: int,
    centre: Any,
    threshold: float,
    bin_width: float,
    xp: Any,
) -> Any:
    """Peak (centroid of the top bin and its neighbours) of each ASIC's histogram."""
    n = rows.shape[0]
    n_bins = int(np.ceil(2 * threshold / bin_width))
    take = xp.where(labels >= 0, labels, 0)
    rel = rows - xp.take(centre, take, axis=1)
    # NaN (an ASIC without a level, or a non-finite pixel) -> bin -1, outside the histogram
    b = xp.floor(xp.where(xp.isfinite(rel), (rel + threshold) / bin_width, -1)).astype(xp.int64)
    use = ok & (b >= 0) & (b < n_bins) & (labels >= 0)[None, :]
    seg_frame = labels[None, :] + n_seg * xp.arange(n)[:, None]
    size = n * n_seg * n_bins
    # pixels not counted go to one extra bin past the end: static shapes, no mask indexing
    key = xp.where(use, seg_frame * n_bins + b, size)
    hist = _counts(key.ravel(), size, xp).reshape(n, n_seg, n_bins)
    peak = xp.argmax(hist, axis=2)

    def count(k: Any) -> Any:
        inside = (k >= 0) & (k < n_bins)
        h = xp.take_along_axis(hist, k.clip(0, n_bins - 1)[..., None], axis=2)[..., 0]
        return xp.where(inside, h, 0).astype(xp.float64)

    # Gaussian peak through the top bin and its neighbours (parabola in log counts)
    h0, hm, hp = count(peak), count(peak - 1), count(peak + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lm, l0, lp = xp.log(hm), xp.log(h0), xp.log(hp)
        curvature = lm - 2 * l0 + lp
        shift = xp.where((hm > 0) & (hp > 0) & (curvature < 0), (lm - lp) / (2 * curvature), 0.0)
    offset = (peak + 0.5 + xp.clip(shift, -0.5, 0.5)) * bin_width - threshold
    offset = xp.where(h0 > 0, offset, xp.nan)
    return centre + offset


def common_mode_offsets(
    frames: Any,
    asics: Segments | Any,
    *,
    threshold: float,
    valid: Any | None = None,
    method: CommonModeMethod = "median",
    bin_width: float | None = None,
    n_iter: int = 2,
    stride: int = 1,
) -> Any:
    """Per-frame, per-ASIC common-mode offset, from the pixels that saw no photon.

    As psana's common-mode methods, on pedestal-subtracted data, where pixels that saw
    no photon read about 0 plus the ASIC's offset: the level is the median of the valid
    pixels below ``level + threshold``, starting from level 0 and repeated ``n_iter``
    times so the window re-centres on the zero-photon peak (robust to any occupancy,
    for offsets smaller than about ``threshold``).  ``"histogram"`` then takes the peak
    of those pixels' histogram between ``level - threshold`` and ``level + threshold``
    (``bin_width`` default ``threshold / 5``, refined by a Gaussian through the top bin
    and its neighbours) instead of the median.

    Parameters
    ----------
    frames
        ``(n, n_ss, n_fs)`` frames (pedestal-subtracted ADU, or photons).
    asics
        ASIC index ``(n_ss, n_fs)`` int (:func:`asic_index`), or a Segments of it.
    threshold
        Photon threshold in the unit of ``frames`` (e.g. 0.5 photon in ADU).
    valid
        Optional bool mask; bad pixels do not vote.
    method
        ``"median"`` or ``"histogram"``.
    bin_width
        Histogram bin width (``"histogram"``), unit of ``frames``.
    n_iter
        Median passes (>= 1).
    stride
        Estimate from every ``stride``-th pixel of each ASIC (:meth:`Segments.subsample`;
        all pixels of ASICs under 256 pixels); the early, window-centring passes use
        every ``4 * stride``-th.  1 = every pixel.

    Returns
    -------
    ndarray, (n, n_asics)
        Offsets in the unit of ``frames``; NaN for an ASIC with no valid pixel.
    """
    if threshold <= 0:
        raise ValueError(f"common-mode threshold must be > 0, got {threshold}")
    xp = array_module(frames, valid)
    segs = as_segments(asics)
    n = frames.shape[0]
    if method not in ("median", "histogram"):
        raise ValueError(f"unknown common-mode method {method!r}; valid: 'median', 'histogram'")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    ix = segs.arrays(xp)
    rows = frames.reshape(n, -1)
    allowed = xp.isfinite(rows)
    if valid is not None:
        allowed &= xp.broadcast_to(valid, frames.shape).reshape(n, -1)
    if xp is np:
        level = _zero_photon_level_numpy(rows, allowed, segs, threshold, n_iter, stride)
    else:
        level = _zero_photon_level(frames, rows, allowed, segs, threshold, n_iter, xp, stride)
    if method == "median":
        return level
    width = threshold / 5 if bin_width is None else float(bin_width)
    if width <= 0:
        raise ValueError(f"bin_width must be > 0, got {width}")
    peak = _histogram_peak(
        rows, allowed, ix["labels"], segs.n_segments, level, threshold, width, xp
    )
    return peak.astype(level.dtype)


def _zero_photon_level(
    frames: Any,
    rows: Any,
    allowed: Any,
    segs: Segments,
    threshold: float,
    n_iter: int,
    xp: Any,
    stride: int = 1,
) -> Any:
    """Iterated median below ``level + threshold``, vectorised over ASICs (cupy path)."""
    n = rows.shape[0]
    ix = segs.arrays(xp)
    take = xp.where(ix["labels"] >= 0, ix["labels"], 0)
    level = xp.zeros((n, segs.n_segments), dtype=frames.dtype)
    for i in range(n_iter):
        start = xp.where(xp.isfinite(level), level, 0)
        below = rows < xp.take(start, take, axis=1) + threshold
        # early passes only centre the window: every 4th pixel of the sample is plenty
        use = segs.subsample(stride if i == n_iter - 1 else 4 * stride)
        level = segment_median(frames, use, valid=(below & allowed).reshape(frames.shape))
    return level


def _zero_photon_level_numpy(
    rows: np.ndarray,
    allowed: np.ndarray,
    segs: Segments,
    threshold: float,
    n_iter: int,
    stride: int = 1,
) -> np.ndarray:
    """numpy path of :func:`_zero_photon_level`: one small median per frame and ASIC.

    The sampled pixels of each ASIC (``segs.subsample(stride)``) are gathered once into a
    contiguous slice, its valid pixels kept, and each pass selects those below
    ``level + threshold`` and partitions them.  Early passes use the same
    ``segs.subsample(4 * stride)`` as the vectorised path, so the results are equal.

    Parameters
    ----------
    rows
        ``(n, n_ss * n_fs)`` frames.
    allowed
        ``(n, n_ss * n_fs)`` bool, finite and valid pixels.

    Returns
    -------
    ndarray, (n, n_asics)
        dtype of ``rows`` (float64 for integer frames); NaN where no pixel is below.
    """
    n, k = rows.shape[0], segs.n_segments
    dtype = rows.dtype if np.issubdtype(rows.dtype, np.floating) else np.dtype(np.float64)
    sample = segs.subsample(stride)
    g = np.take(rows, sample.order, axis=1).astype(dtype, copy=False)
    gok = np.take(allowed, sample.order, axis=1)
    # which sampled pixels segs.subsample(4 * stride) keeps: early passes look at these
    early = segs.subsample(4 * stride).labels.ravel()[sample.order] >= 0
    segs = sample
    level = np.full((n, k), np.nan, dtype=dtype)
    thr = dtype.type(threshold)
    nz = np.flatnonzero(segs.sizes > 0)
    if nz.size == 0:
        return level
    starts = segs.starts[nz]
    for i in range(n):
        # each ASIC's valid pixels, contiguous: ASIC s is vals[e - c : e]
        vals, vals_early = g[i][gok[i]], early[gok[i]]
        counts = np.add.reduceat(gok[i], starts, dtype=np.int64)
        ends = np.cumsum(counts)
        for s, c, e in zip(nz.tolist(), counts.tolist(), ends.tolist(), strict=True):
            v_all = vals[e - c : e]
            level[i, s] = window_median_level(v_all, v_all[vals_early[e - c : e]], thr, n_iter)
    return level


def window_median_level(v_all: np.ndarray, v_early: np.ndarray, thr: Any, n_iter: int) -> Any:
    """One ASIC's common-mode level: ``n_iter`` medians of the values below the last level
    plus ``thr`` (the first window starts at 0), over ``v_early`` then, last, ``v_all``.

    Parameters
    ----------
    v_all, v_early
        ``(m,)`` the ASIC's valid pixel values, and those of its early (sampled) pixels.
    thr
        Window width above the level, in the values' units and dtype.

    Returns
    -------
    scalar of ``v_all``'s dtype; NaN when the last window holds nothing.
    """
    dtype = v_all.dtype
    lev = dtype.type(np.nan)
    for it in range(n_iter):
        v = v_early if it < n_iter - 1 else v_all
        # a pass that found nothing restarts the window at 0, as the cupy path
        start = lev if np.isfinite(lev) else dtype.type(0)
        sel = v[v < start + thr]
        lev = percentile_sorted_1d(sel, 50.0) if sel.size else dtype.type(np.nan)
    return lev


def subtract_common_mode(
    frames: Any,
    asics: Segments | Any,
    *,
    threshold: float,
    valid: Any | None = None,
    method: CommonModeMethod = "median",
    stride: int = 1,
) -> Any:
    """Frames minus their per-ASIC common-mode offsets (:func:`common_mode_offsets`).

    Returns
    -------
    ndarray, same shape and dtype as ``frames``
        Pixels outside every ASIC, and ASICs with no valid pixel, are left unchanged.
    """
    xp = array_module(frames, valid)
    segs = as_segments(asics)
    off = common_mode_offsets(
        frames, segs, threshold=threshold, valid=valid, method=method, stride=stride
    )
    shift = expand(xp.where(xp.isfinite(off), off, 0).astype(frames.dtype), segs, fill=0)
    return frames - shift


# --------------------------------------------------------------------------- photons


def adu_to_photons(frames: Any, *, adu_per_ev: Any, photon_energy_ev: Any) -> Any:
    """Convert ADU to photons: ``frames / (adu_per_ev * photon_energy_ev)``.

    Parameters
    ----------
    frames
        ``(n, n_ss, n_fs)`` ADU.
    adu_per_ev
        Detector gain, ADU per eV: a scalar or an ``(n_ss, n_fs)`` map (per panel).
    photon_energy_ev
        Photon energy, eV: a scalar or ``(n,)`` per frame.

    Returns
    -------
    ndarray, same shape as ``frames``; float32 unless ``frames`` is float64.
    """
    xp = array_module(frames)
    dtype = frames.dtype if frames.dtype == np.float64 else np.float32
    energy = xp.asarray(photon_energy_ev, dtype=np.float64)
    gain = xp.asarray(adu_per_ev, dtype=np.float64)
    if energy.ndim == 1:
        if energy.shape[0] != frames.shape[0]:
            raise ValueError(f"{energy.shape[0]} photon energies for {frames.shape[0]} frames")
        energy = energy[:, None, None]
    elif energy.ndim != 0:
        raise ValueError(f"photon_energy_ev must be a scalar or (n,), got shape {energy.shape}")
    if bool((energy <= 0).any()) or not bool(xp.isfinite(energy).all()):
        raise ValueError("photon energies must be finite and > 0 eV")
    if bool((gain <= 0).any()):
        raise ValueError("adu_per_ev must be > 0")
    adu_per_photon = (gain * energy).astype(dtype)
    return (frames / adu_per_photon).astype(dtype, copy=False)


# --------------------------------------------------------------------------- bad pixels


@dataclass(frozen=True)
class BadPixels:
    """Bad pixels found over many frames; every array is ``(n_ss, n_fs)`` bool.

    Attributes
    ----------
    stuck
        The same non-zero value in at least ``dead_fraction`` of the frames.
    dead
        Exactly zero in at least ``dead_fraction`` of the frames.
    hot
        Median over frames far above the pixel's group (ring or ASIC).
    n_frames
        Frames the decision was made from.
    """

    stuck: np.ndarray
    dead: np.ndarray
    hot: np.ndarray
    n_frames: int

    @property
    def mask(self) -> np.ndarray:
        """True where a pixel is bad for any reason."""
        return self.stuck | self.dead | self.hot


def find_bad_pixels(
    frames: Any,
    *,
    groups: Any | None = None,
    valid: Any | None = None,
    dead_fraction: float = 0.9,
    hot_sigma: float = 10.0,
    min_excess: float = 5.0,
    min_frames: int = 10,
) -> BadPixels:
    """Find dead, stuck and hot pixels from a stack of frames.

    A pixel is judged on its behaviour across frames, never on one frame: a frame of
    zeros (a dropped read-out) flags nothing.  Within each group (|q| ring or ASIC), a
    pixel is compared with the others of the group, so a ring of strong scattering is not
    "hot" and a weakly exposed ring is not "dead"; flags are raised only where they are
    rare in the group (less than half its pixels).

    Parameters
    ----------
    frames
        ``(n, n_ss, n_fs)`` corrected frames, ``n >= min_frames``.
    groups
        ``(n_ss, n_fs)`` int group of each pixel (``-1`` = none); default one group.
    valid
        ``(n_ss, n_fs)`` bool pixels to judge (others are not flagged).
    dead_fraction
        A pixel exactly zero in at least this fraction of frames is dead; one reading
        the same non-zero value (its median) that often is stuck.
    hot_sigma
        A pixel whose median over frames exceeds the (sigma-clipped) mean of its group's
        medians by this many of their (clipped) standard deviations is hot ...
    min_excess
        ... if it also exceeds it by at least this much, in the unit of ``frames``
        (photons in :class:`hpcdiff.preprocess.Preprocessor`): medians of a few frames
        of discrete photon counts scatter by a few photons, hot pixels by far more.
    min_frames
        Refuse to judge from fewer frames.

    Returns
    -------
    BadPixels
        numpy arrays on the host.
    """
    xp = array_module(frames, valid)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (n, n_ss, n_fs), got shape {frames.shape}")
    n = frames.shape[0]
    if n < max(min_frames, 2):
        raise ValueError(
            f"bad pixels are judged over many frames: got {n}, need at least {max(min_frames, 2)}"
        )
    if not 0 < dead_fraction <= 1:
        raise ValueError(f"dead_fraction must lie in (0, 1], got {dead_fraction}")
    shape = frames.shape[1:]
    ok = xp.ones(shape, dtype=bool) if valid is None else xp.asarray(valid, dtype=bool)
    labels = xp.zeros(shape, dtype=xp.int64) if groups is None else xp.asarray(groups)
    labels = xp.where(ok, labels, -1)
    segs = Segments(labels)
    med = xp.median(frames, axis=0)
    zero = (frames == 0).mean(axis=0)
    dead = (zero >= dead_fraction) & ok
    stuck = ((frames == med[None]).mean(axis=0) >= dead_fraction) & ok & ~dead
    med = med[None]
    # spread of the pixel medians in each group: sigma-clipped, so that the hot pixels
    # themselves and discrete photon counts (medians 0, 1, 2 ...) do not fool it
    centre, spread = segment_clipped_stats(med, segs, sigma=3.0)
    excess = med - expand(centre, segs)
    with np.errstate(invalid="ignore", divide="ignore"):
        hot = (excess > hot_sigma * expand(spread, segs)) & (excess > min_excess)
    hot = hot[0] & ok

    def rare(flag: Any) -> Any:
        frac = segment_moments(flag[None].astype(xp.float32), segs)[1]
        return flag & (expand(frac, segs, fill=1.0)[0] < 0.5)

    return BadPixels(
        stuck=to_numpy(rare(stuck)), dead=to_numpy(rare(dead)), hot=to_numpy(rare(hot)), n_frames=n
    )


__all__ = [
    "BadPixels",
    "CommonModeMethod",
    "adu_to_photons",
    "apply_pedestal_gain",
    "asic_index",
    "common_mode_offsets",
    "find_bad_pixels",
    "read_calibration",
    "subtract_common_mode",
]

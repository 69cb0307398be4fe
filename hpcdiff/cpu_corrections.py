"""Detector corrections of one numpy frame, with everything per-detector precomputed.

The CPU path of :meth:`hpcdiff.preprocess.Preprocessor.correct` for the usual settings
(photon conversion on, per-ASIC ``"median"`` common mode or none): the same arithmetic as
the array functions of :mod:`hpcdiff.corrections` in the same float32 order, so the
frames are equal bit for bit, without their frame-sized temporaries:

* the raw frame is read in its own dtype (int16 ADU stays int16 until here) and widened
  once, by the first multiplication (``raw * ev_per_adu``, float32 out);
* the common-mode sample (every ``stride``-th pixel of each ASIC) is gathered once per
  frame, and only its pixels are checked for finiteness and validity;
* the per-ASIC offsets are subtracted from rectangular ASICs through slab views (no
  frame-sized map of offsets); ASICs of any other shape use a precomputed label gather.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hpcdiff.corrections import window_median_level
from hpcdiff.segments import Segments


@dataclass(frozen=True)
class CommonModePlan:
    """Per-detector index arrays of the common-mode estimate of one frame.

    Attributes
    ----------
    order
        ``(m,)`` int64 flat slab index of the sampled pixels, ASIC by ASIC.
    valid
        ``(m,)`` bool, the sampled pixels allowed to vote (geometry and bad-pixel mask).
    early
        ``(m,)`` bool, the sampled pixels the early (window-centring) passes use.
    starts, asics
        Start of each non-empty ASIC's slice in ``order``, and its ASIC number.
    rects
        ``(n_asics, 4)`` int ``ss0, ss1, fs0, fs1`` of each ASIC when every ASIC is a
        full rectangle, else None.
    labels
        ``(n_ss * n_fs,)`` int64 ASIC of each pixel (``n_asics`` outside every ASIC).
    """

    order: np.ndarray
    valid: np.ndarray
    early: np.ndarray
    starts: np.ndarray
    asics: np.ndarray
    rects: np.ndarray | None
    labels: np.ndarray
    n_asics: int

    @classmethod
    def build(cls, asics: Segments, *, valid: np.ndarray, stride: int) -> CommonModePlan:
        """The plan of ``asics`` (Segments of the ASIC index) for ``valid`` pixels."""
        sample = asics.subsample(stride)
        early = asics.subsample(4 * stride).labels.ravel()[sample.order] >= 0
        nz = np.flatnonzero(sample.sizes > 0)
        n_ss, n_fs = asics.shape
        rects: np.ndarray | None = np.zeros((asics.n_segments, 4), dtype=np.int64)
        lab2d = asics.labels.reshape(asics.shape)
        for s in range(asics.n_segments):
            pix = asics.order[asics.starts[s] : asics.starts[s] + asics.sizes[s]]
            if pix.size == 0:
                continue
            ss, fs = np.divmod(pix, n_fs)
            r = (int(ss.min()), int(ss.max()) + 1, int(fs.min()), int(fs.max()) + 1)
            if (r[1] - r[0]) * (r[3] - r[2]) != pix.size or not (
                lab2d[r[0] : r[1], r[2] : r[3]] == s
            ).all():
                rects = None
                break
            assert rects is not None
            rects[s] = r
        labels = np.where(asics.labels >= 0, asics.labels, asics.n_segments).astype(np.int64)
        return cls(
            order=sample.order,
            valid=np.asarray(valid, bool).ravel()[sample.order],
            early=early,
            starts=sample.starts[nz],
            asics=nz,
            rects=rects,
            labels=labels,
            n_asics=asics.n_segments,
        )

    def levels(self, frame: np.ndarray, *, threshold: float, n_iter: int = 2) -> np.ndarray:
        """``(n_asics,)`` zero-photon level of each ASIC of one frame (NaN: none).

        As :func:`hpcdiff.corrections.common_mode_offsets` (``"median"``) of the frame:
        the iterated median of the valid sampled pixels below ``level + threshold``.

        Parameters
        ----------
        frame
            ``(n_ss, n_fs)`` float32 frame (photons).
        """
        dtype = frame.dtype
        vals = np.take(frame.reshape(-1), self.order)
        ok = np.isfinite(vals)
        ok &= self.valid
        level = np.full(self.n_asics, np.nan, dtype=dtype)
        if self.asics.size == 0:
            return level
        counts = np.add.reduceat(ok, self.starts, dtype=np.int32)
        kept, kept_early = vals[ok], self.early[ok]
        ends = np.cumsum(counts)
        thr = dtype.type(threshold)
        for s, c, e in zip(self.asics.tolist(), counts.tolist(), ends.tolist(), strict=True):
            v_all = kept[e - c : e]
            level[s] = window_median_level(v_all, v_all[kept_early[e - c : e]], thr, n_iter)
        return level

    def counting_levels(
        self,
        raw: np.ndarray,
        *,
        scale: np.ndarray,
        inv_energy: np.float32,
        threshold: float,
        n_iter: int = 2,
        photons: float = 8.0,
    ) -> np.ndarray | None:
        """:meth:`levels` from the integer ADU of a raw frame, by counting.

        For integer frames whose photon value is ``f(r) = float32(float32(r * scale_s) *
        inv_energy)`` (``scale_s`` one ``ev_per_adu`` per ASIC, no pedestal or gain map),
        ``f`` is monotone, so the pixels below ``level + threshold`` are the ADU values up
        to a bound ``R_s``, and the order statistics of their photon values are ``f`` of
        those of the ADU: one histogram of the ADU values in ``[R_s - W, R_s]`` per ASIC
        (``W`` ADU spanning ``photons`` photons) and a cumulative count give them, with no
        selection.  The levels are equal bit for bit to :meth:`levels` of the photons.

        Parameters
        ----------
        raw
            ``(n_ss, n_fs)`` integer frame of at most 16 bits, ADU.
        scale
            ``(n_asics,)`` float32 ``ev_per_adu`` of each ASIC.
        inv_energy
            float32 ``1 / photon_energy_ev``.

        Returns
        -------
        ndarray or None
            ``(n_asics,)`` float32 levels; None when a median falls below the histogram
            window of its ASIC (then use :meth:`levels`).
        """
        f32 = np.float32
        m = self.asics.size
        per_adu = (scale.astype(np.float64) * float(inv_energy))[self.asics]
        if not (np.isfinite(per_adu).all() and (per_adu > 0).all()):
            return None
        width = int(min(max(np.ceil(photons / per_adu.min()), 4), 1 << 14))
        s_scale = scale[self.asics].astype(f32)

        def photon(v: np.ndarray) -> np.ndarray:
            return (v.astype(f32) * s_scale).astype(f32) * inv_energy

        # the ADU of every voter, gathered once; the early voters are a subset of them
        adu_all = np.take(raw.reshape(-1), self.voters[0]).astype(np.int32)
        level = np.full(m, np.nan, dtype=f32)
        thr = f32(threshold)
        lowest = np.iinfo(np.int64).min
        for it in range(n_iter):
            early = it < n_iter - 1
            sizes = (self.voters_early if early else self.voters)[1]
            start = np.where(np.isfinite(level), level, f32(0)).astype(f32)
            top = (start + thr).astype(f32)  # a pixel counts when f(r) < top
            guess = np.floor(top.astype(np.float64) / per_adu).astype(np.int64)
            bound = np.full(m, lowest, dtype=np.int64)
            for step in range(-2, 3):
                cand = guess + step
                bound = np.where(photon(cand) < top, np.maximum(bound, cand), bound)
            if (bound == lowest).any() or (photon(guess + 3) < top).any():
                return None
            low = bound - width + 1
            if np.abs(low).max() > 1 << 30:
                return None
            # bins of ASIC s: s (W + 2) + [under, W window values, over]
            key = adu_all[self.early_in_voters] if early else adu_all  # last use
            key -= np.repeat((low - 1).astype(np.int32), sizes)
            np.clip(key, 0, width + 1, out=key)
            key += self._bin_base(early, width)
            hist = np.bincount(key, minlength=m * (width + 2)).reshape(m, width + 2)
            count = sizes - hist[:, -1]
            cum = np.cumsum(hist[:, :-1], axis=1)
            pos = (count - 1) * 0.5
            lo = np.floor(pos).astype(np.int64)
            hi = np.minimum(lo + 1, count - 1)
            frac = (pos - lo).astype(f32)
            empty = count == 0
            if ((lo < hist[:, 0]) & ~empty).any():
                return None
            a = photon(low - 1 + np.argmax(cum > lo[:, None], axis=1))
            b = photon(low - 1 + np.argmax(cum > hi[:, None], axis=1))
            level = np.where(empty, f32(np.nan), a + (b - a) * frac).astype(f32)
        out = np.full(self.n_asics, np.nan, dtype=f32)
        out[self.asics] = level
        return out

    def _bin_base(self, early: bool, width: int) -> np.ndarray:
        """``(voters,)`` int32 first histogram bin ``s (width + 2)`` of each voter's ASIC
        (cached per width)."""
        key = (early, width)
        hit = self._bases.get(key)
        if hit is None:
            sizes = (self.voters_early if early else self.voters)[1]
            m = self.asics.size
            if len(self._bases) > 8:
                self._bases.clear()
            hit = self._bases[key] = np.repeat((np.arange(m) * (width + 2)).astype(np.int32), sizes)
        return hit

    @cached_property
    def _bases(self) -> dict[tuple[bool, int], np.ndarray]:
        return {}

    @cached_property
    def early_in_voters(self) -> np.ndarray:
        """Index of the early voters within :attr:`voters`."""
        return np.flatnonzero(self.early[self.valid])

    @cached_property
    def voters(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat slab index of the valid sampled pixels, ASIC by ASIC, and the number of
        them in each non-empty ASIC."""
        return self._voters(self.valid)

    @cached_property
    def voters_early(self) -> tuple[np.ndarray, np.ndarray]:
        """:attr:`voters` of the early (window-centring) passes."""
        return self._voters(self.valid & self.early)

    def _voters(self, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = np.add.reduceat(use, self.starts, dtype=np.int64)
        return self.order[use], counts

    def subtract(self, frame: np.ndarray, level: np.ndarray) -> None:
        """``frame -= level`` of each pixel's ASIC, in place (NaN levels subtract 0)."""
        off = np.where(np.isfinite(level), level, 0).astype(frame.dtype)
        if self.rects is not None:
            for s in self.asics.tolist():
                ss0, ss1, fs0, fs1 = self.rects[s]
                frame[ss0:ss1, fs0:fs1] -= off[s]
            return
        padded = np.concatenate([off, np.zeros(1, frame.dtype)])
        frame -= np.take(padded, self.labels).reshape(frame.shape)


class FrameCorrections:
    """Pedestal/gain, ADU -> photons and median common mode of one numpy frame.

    Parameters
    ----------
    ev_per_adu
        ``(n_ss, n_fs)`` float32 ``1 / adu_per_ev`` (1 off the valid pixels).
    pedestal, gain
        Optional ``(n_ss, n_fs)`` float32 maps.
    plan
        :class:`CommonModePlan`, or None for no common mode.
    threshold
        Common-mode photon threshold.
    """

    def __init__(
        self,
        *,
        ev_per_adu: np.ndarray,
        pedestal: np.ndarray | None,
        gain: np.ndarray | None,
        plan: CommonModePlan | None,
        threshold: float,
    ) -> None:
        self.ev_per_adu = np.ascontiguousarray(ev_per_adu, dtype=np.float32)
        self.pedestal = pedestal
        self.gain = gain
        self.plan = plan
        self.threshold = float(threshold)
        # one ev_per_adu per ASIC (over its sampled pixels): levels by counting integer ADU
        self.asic_scale: np.ndarray | None = None
        if plan is not None and pedestal is None and gain is None and plan.asics.size:
            sampled = self.ev_per_adu.reshape(-1)[plan.order]
            sampled = np.where(plan.valid, sampled, np.float32(np.nan))  # voters only
            lo = np.fmin.reduceat(sampled, plan.starts)
            hi = np.fmax.reduceat(sampled, plan.starts)
            lo = np.where(np.isfinite(lo), lo, np.float32(1))
            if (lo == np.where(np.isfinite(hi), hi, np.float32(1))).all():
                scale = np.ones(plan.n_asics, dtype=np.float32)
                scale[plan.asics] = lo
                self.asic_scale = scale
        self._maps_finite: bool | None = None

    def _photons(self, raw: np.ndarray, inv_energy: np.float32) -> np.ndarray:
        """Photons of ``raw`` before the common mode (any shape, the maps' shape)."""
        if self.pedestal is None and self.gain is None:
            x = np.multiply(raw, self.ev_per_adu, dtype=np.float32)
        else:
            x = raw.astype(np.float32)
            if self.pedestal is not None:
                x -= self.pedestal
            if self.gain is not None:
                x *= self.gain
            x *= self.ev_per_adu
        x *= inv_energy
        return x

    def _levels(
        self, raw: np.ndarray, inv_energy: np.float32, photons: np.ndarray | None
    ) -> np.ndarray:
        """``(n_asics,)`` common-mode levels of ``raw`` (counted on integer ADU when the
        settings allow, else from its slab ``photons``, computed here when None)."""
        assert self.plan is not None
        level = None
        if (
            self.asic_scale is not None
            and np.issubdtype(raw.dtype, np.integer)
            and raw.dtype.itemsize <= 2
        ):
            level = self.plan.counting_levels(
                raw, scale=self.asic_scale, inv_energy=inv_energy, threshold=self.threshold
            )
        if level is None:
            if photons is None:
                photons = self._photons(raw, inv_energy)
            level = self.plan.levels(photons, threshold=self.threshold)
        return level

    def __call__(self, raw: np.ndarray, *, photon_energy_ev: float) -> np.ndarray:
        """``(n_ss, n_fs)`` float32 photons of a raw ``(n_ss, n_fs)`` frame (any real dtype).

        Equal bit for bit to :meth:`hpcdiff.preprocess.Preprocessor.correct` of the frame.
        """
        inv_energy = np.float32(1.0 / photon_energy_ev)
        x = self._photons(raw, inv_energy)
        if self.plan is None:
            return x
        self.plan.subtract(x, self._levels(raw, inv_energy, x))
        return x

    def finite_for(self, raw: np.ndarray) -> bool:
        """Whether every corrected value of ``raw`` is finite without looking at it:
        integer ADU of at most 16 bits and finite maps (a NaN common-mode level
        subtracts 0)."""
        if self._maps_finite is None:
            maps = [m for m in (self.ev_per_adu, self.pedestal, self.gain) if m is not None]
            self._maps_finite = bool(all(np.isfinite(m).all() for m in maps))
        return (
            self._maps_finite and np.issubdtype(raw.dtype, np.integer) and raw.dtype.itemsize <= 2
        )


__all__ = ["CommonModePlan", "FrameCorrections"]

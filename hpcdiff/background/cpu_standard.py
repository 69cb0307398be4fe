"""The standard recipe of one raw numpy frame in three fused passes (a compiled CPU kernel).

The numpy chain (:class:`~hpcdiff.cpu_corrections.FrameCorrections`, a gather into |q|-ring
order, :class:`~hpcdiff.background.standard.StandardRingOrder`) makes about twenty passes
over a frame and gathers 2.3 M pixels into ring order.  :class:`StandardKernel` computes
the same images in slab order, with every per-detector quantity laid out once in slab
order, in three passes over the frame and a few over samples of it:

0. common-mode levels of each ASIC from its sampled voters (the iterated window median of
   :func:`~hpcdiff.corrections.window_median_level`, by a histogram of the integer ADU
   when the frame is integer and each ASIC has one ``ev_per_adu``, else by selection);
1. corrections (``raw * ev_per_adu / E`` minus the ASIC's level, pedestal and gain when
   given) stored once as float32 photons ``g``; the ring sums of ``g / P`` over the valid
   pixels, and the Bragg noise sample of each ring (the pixels of ``rings.subsample(4)``);
   then the clipped ring statistics of the sample (float64, 3 sigma, 3 passes);
2. Bragg peaks (``g / P`` above the ring threshold), grown within panels as a sparse list;
   the ring means lose the peaks' pixels; the guard's noise scale of the slab subsample;
3. the noise units ``(g - P m) / sqrt(P m + sigma^2)``, guard divisor, clip, scattered at
   once onto the q-space cells through the resampling matrix's columns (CSC in slab
   order); no frame-sized residual is written.

Statistics are sums in float64 (the numpy chain sums some in float32); per-pixel values
are the same float32 operations in the same order, so the Bragg decisions, and the images
up to float32 summation order, are those of the numpy chain (tested against the slab
reference chain).  The kernels release the GIL, so :class:`~hpcdiff.preprocess.Preprocessor`
threads run frames concurrently; each thread has its own scratch buffers.

numba compiles the kernels on first use and caches them on disk (``cache=True``); without
numba, :func:`StandardKernel.build` returns None and the numpy chain runs.

Measured (``benchmarks/bench_throughput.py --frames 16 --batch 8 --repeats 3 --baseline
fe5a3e2 --only preprocess prep-stages``, 16 CSPAD int16 frames at 0.1 m, one thread, 2-core
machine shared with other jobs, medians of interleaved subprocesses): 19.8 ms CPU per
frame against 31.4 for the numpy chain (1.59x) and 22.8 for fe5a3e2's kernel (1.15x),
images equal to fe5a3e2's and within 2.4e-7 of the numpy chain's (at 0.15 m, twice the
grid pixels: 26.9 against 30.7, 1.14x).  Per stage (``--only prep-stages``; CPU ms per
frame at 0.1 m): pass 1 5.1, grid pixels' corrections and backgrounds 2.6, common-mode
levels 2.5, noise sample 2.2, clipped ring statistics 2.0, cell sums 1.6, ring means and
guard 1.1, noise units 0.9, dropped pixels 0.65, the rest 1.3; the read before it (lz4,
``read_raw``) 3.1.  One-time costs: compiling all kernels 4.1 s CPU (once per installation and
numba version: the cache), loading them from the cache 0.3 s, building the kernel's
per-detector arrays 1.1 s (CSPAD; in ``Preprocessor.prepare``).  The loops that gather
through a ring or ASIC index (pass 1, the samples) stay scalar; a
vectorised pass needs its inputs without gathers (:func:`_noise_units`).
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: Whether numba can be imported (it is imported, and the kernels compiled or loaded from
#: its cache, only when a :class:`StandardKernel` is built: importing this module is cheap).
HAVE_NUMBA = importlib.util.find_spec("numba") is not None

#: Noise-sample value of a pixel not to use (the largest float32: finite, so that the
#: moment sums multiply it by 0 instead of branching, and above any photon count used).
UNUSED = float(np.finfo(np.float32).max)

#: Interleaved partial ring sums of the first pass (a power of 2).
N_BANKS = 8

#: Widest ADU range of one ASIC's window counted by a histogram (else selection).
HIST_MAX_BINS = 1 << 14


_KERNELS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}


def _jit(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """Register ``fn`` as a kernel; :func:`_compile` replaces it by its numba dispatcher."""
    _KERNELS[fn.__name__] = (fn, options)
    return fn


def _compile() -> None:
    """Swap every kernel of this module for ``numba.njit(cache=True, nogil=True)`` of it
    (once; before any kernel runs, so that kernels calling kernels see dispatchers)."""
    if _COMPILED:
        return
    import numba

    module = globals()
    for name, (fn, options) in _KERNELS.items():
        module[name] = numba.njit(cache=True, nogil=True, error_model="numpy", **options)(fn)
    _COMPILED.append(True)


_COMPILED: list[bool] = []


# --------------------------------------------------------------------------- kernels


def _select_median(buf: np.ndarray, n: int) -> np.float32:
    """Median of ``buf[:n]`` (float32) as :func:`~hpcdiff.segments.percentile_sorted_1d`:
    the lower order statistic, the next one, linear interpolation in float32 (``buf`` is
    reordered)."""
    pos = (n - 1) * 0.5
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = np.float32(pos - lo)
    left, right = 0, n - 1
    while right > left:  # quickselect of position lo
        pivot = buf[(left + right) // 2]
        i, j = left, right
        while i <= j:
            while buf[i] < pivot:
                i += 1
            while buf[j] > pivot:
                j -= 1
            if i <= j:
                t = buf[i]
                buf[i] = buf[j]
                buf[j] = t
                i += 1
                j -= 1
        if lo <= j:
            right = j
        elif lo >= i:
            left = i
        else:
            break
    a = buf[lo]
    b = a
    if hi > lo:
        b = buf[lo + 1]
        for k in range(lo + 2, n):
            if buf[k] < b:
                b = buf[k]
    return a + (b - a) * frac


_select_median = _jit(_select_median)


def _adu_bound(sc: np.float32, inv_e: np.float32, top: np.float32) -> int:
    """The largest integer ``r`` with ``float32(float32(r * sc) * inv_e) < top`` (``sc``,
    ``inv_e`` > 0: the photons are non-decreasing in ``r``)."""
    r = np.int64(np.floor(np.float64(top) / (np.float64(sc) * np.float64(inv_e))))
    while (np.float32(r + 1) * sc) * inv_e < top:
        r += 1
    while not (np.float32(r) * sc) * inv_e < top:
        r -= 1
    return int(r)


_adu_bound = _jit(_adu_bound)


def _hist_median(
    adu: np.ndarray,
    n: int,
    bound: int,
    lowest: int,
    sc: np.float32,
    inv_e: np.float32,
    hist: np.ndarray,
) -> np.float32:
    """Median photons of the values ``adu[:n] <= bound`` (all ``>= lowest``), counted in
    ``hist``; NaN when none."""
    width = bound - lowest + 1
    hist[: width + 1] = 0
    for k in range(n):
        r = adu[k]
        b = (r if r <= bound else bound + 1) - lowest
        hist[b] += 1
    count = n - hist[width]
    if count == 0:
        return np.float32(np.nan)
    pos = (count - 1) * 0.5
    lo = int(np.floor(pos))
    hi = min(lo + 1, count - 1)
    frac = np.float32(pos - lo)
    cum = 0
    ra = lowest
    rb = lowest
    found = False
    for b in range(width):
        cum += hist[b]
        if not found and cum > lo:
            ra = lowest + b
            found = True
        if cum > hi:
            rb = lowest + b
            break
    va = (np.float32(ra) * sc) * inv_e
    vb = (np.float32(rb) * sc) * inv_e
    return va + (vb - va) * frac


_hist_median = _jit(_hist_median)


def _levels(
    raw: np.ndarray,
    voters: np.ndarray,
    starts: np.ndarray,
    early: np.ndarray,
    early_starts: np.ndarray,
    asics: np.ndarray,
    scale: np.ndarray,
    use_hist: bool,
    ev: np.ndarray,
    ped: np.ndarray,
    gain: np.ndarray,
    inv_e: np.float32,
    thr: np.float32,
    n_iter: int,
    level: np.ndarray,
    fbuf: np.ndarray,
    ibuf: np.ndarray,
    hist: np.ndarray,
) -> None:
    """Common-mode level of each ASIC (``level`` ``(n_asics,)`` float32, NaN: none), as
    :meth:`~hpcdiff.cpu_corrections.CommonModePlan.levels` of the frame's photons.

    ``voters`` / ``early``: flat slab pixels of the valid sampled pixels and of the early
    (window-centring) ones, ASIC by ASIC (``starts`` / ``early_starts`` ``(k + 1,)``
    bounds for ASIC ``asics[j]``).  With ``use_hist`` (integer ``raw``, one ``scale`` =
    ``ev_per_adu`` per ASIC, no pedestal or gain), photons are ``f(r) =
    float32(float32(r * scale) * inv_e)``, non-decreasing in ``r``: the window is the ADU up
    to a bound, and the median of the window's photons is ``f`` of the ADU order
    statistics, counted in a histogram (the same floats as a selection).
    """
    hp = ped.size > 0
    hg = gain.size > 0
    for j in range(asics.size):
        s = asics[j]
        lev = np.float32(np.nan)
        for it in range(n_iter):
            last = it == n_iter - 1
            idx = voters if last else early
            a0 = starts[j] if last else early_starts[j]
            a1 = starts[j + 1] if last else early_starts[j + 1]
            n = a1 - a0
            start = lev if np.isfinite(lev) else np.float32(0)
            top = np.float32(start + thr)
            if use_hist and n > 0:
                sc = scale[s]
                lowest = np.int64(raw[idx[a0]])
                for k in range(n):
                    r = np.int64(raw[idx[a0 + k]])
                    ibuf[k] = r
                    lowest = min(lowest, r)
                bound = _adu_bound(sc, inv_e, top)
                if bound < lowest:
                    lev = np.float32(np.nan)
                    continue
                if bound - lowest + 2 <= hist.size:
                    lev = _hist_median(ibuf, n, bound, int(lowest), sc, inv_e, hist)
                    continue
            m = 0
            for k in range(a0, a1):
                p = idx[k]
                x = np.float32(raw[p])
                if hp:
                    x = x - ped[p]
                if hg:
                    x = x * gain[p]
                v = (x * ev[p]) * inv_e
                if np.isfinite(v) and v < top:
                    fbuf[m] = v
                    m += 1
            lev = _select_median(fbuf, m) if m else np.float32(np.nan)
        level[s] = lev


_levels = _jit(_levels)


def _noise_sample(
    raw: np.ndarray,
    pix: np.ndarray,
    asic: np.ndarray,
    offset: np.ndarray,
    ev: np.ndarray,
    evtab: np.ndarray,
    ped: np.ndarray,
    gain: np.ndarray,
    inv_e: np.float32,
    unit: np.float32,
    inv_pol: np.ndarray,
    slot: np.ndarray,
    noise: np.ndarray,
) -> None:
    """``g / P`` of the Bragg noise sample's pixels ``pix`` (in slab order: gathers in
    ring order measured 4x slower, a cache and TLB miss each) into ``noise[slot]`` (ring by
    ring; :data:`UNUSED` where not valid or not finite): the same floats as :func:`_pass1` computes there (the
    float32 operations of :meth:`~hpcdiff.cpu_corrections.FrameCorrections.__call__`,
    then ``/ unit``; written out in both loops: a jitted helper taking the arrays
    measured 8x slower here)."""
    hp = ped.size > 0
    hg = gain.size > 0
    tab = evtab.size > 0
    divide = unit != np.float32(1)
    zero = np.float32(0)
    unused = np.float32(UNUSED)
    for k in range(pix.size):
        p = pix[k]
        a = asic[p]
        x = np.float32(raw[p])
        if hp:
            x = x - ped[p]
        if hg:
            x = x * gain[p]
        x = (x * (evtab[a] if tab else ev[p])) * inv_e
        x = x - offset[a]
        if divide:
            x = x / unit
        ip = inv_pol[p]
        gp = x * ip
        noise[slot[k]] = gp if ip != zero and np.isfinite(gp) else unused


_noise_sample = _jit(_noise_sample)


def _corrected(
    raw: np.ndarray,
    pix: np.ndarray,
    n: int,
    asic: np.ndarray,
    offset: np.ndarray,
    ev: np.ndarray,
    evtab: np.ndarray,
    ped: np.ndarray,
    gain: np.ndarray,
    inv_e: np.float32,
    unit: np.float32,
    out: np.ndarray,
) -> None:
    """Corrected photons of the pixels ``pix[:n]`` into ``out[:n]`` (the floats of
    :func:`_pass1`)."""
    hp = ped.size > 0
    hg = gain.size > 0
    tab = evtab.size > 0
    divide = unit != np.float32(1)
    for k in range(n):
        p = pix[k]
        a = asic[p]
        x = np.float32(raw[p])
        if hp:
            x = x - ped[p]
        if hg:
            x = x * gain[p]
        x = (x * (evtab[a] if tab else ev[p])) * inv_e
        x = x - offset[a]
        if divide:
            x = x / unit
        out[k] = x


_corrected = _jit(_corrected)


def _corrected_bg(
    raw: np.ndarray,
    pix: np.ndarray,
    n: int,
    asic: np.ndarray,
    offset: np.ndarray,
    ev: np.ndarray,
    evtab: np.ndarray,
    ped: np.ndarray,
    gain: np.ndarray,
    inv_e: np.float32,
    unit: np.float32,
    out: np.ndarray,
    gring: np.ndarray,
    gpol: np.ndarray,
    mean: np.ndarray,
    bg: np.ndarray,
) -> None:
    """:func:`_corrected` of the pixels with a q-space column, and their backgrounds
    ``bg = mean[gring] * gpol`` (both gathers in one loop, so that
    :func:`_noise_units` is a vectorised one)."""
    hp = ped.size > 0
    hg = gain.size > 0
    tab = evtab.size > 0
    divide = unit != np.float32(1)
    for k in range(n):
        p = pix[k]
        a = asic[p]
        x = np.float32(raw[p])
        if hp:
            x = x - ped[p]
        if hg:
            x = x * gain[p]
        x = (x * (evtab[a] if tab else ev[p])) * inv_e
        x = x - offset[a]
        if divide:
            x = x / unit
        out[k] = x
        bg[k] = mean[gring[k]] * gpol[k]


_corrected_bg = _jit(_corrected_bg)


def _corrected_bg_runs(
    raw: np.ndarray,
    gpix: np.ndarray,
    runs: np.ndarray,
    asic: np.ndarray,
    offset: np.ndarray,
    evtab: np.ndarray,
    inv_e: np.float32,
    unit: np.float32,
    out: np.ndarray,
    gring: np.ndarray,
    gpol: np.ndarray,
    mean: np.ndarray,
    bg: np.ndarray,
) -> None:
    """:func:`_corrected_bg` with one ``ev_per_adu`` per ASIC (``evtab``, no pedestal or
    gain), run by run: ``runs`` ``(n_runs + 1,)`` bounds in ``gpix`` of runs of
    consecutive slab pixels of one ASIC (the grid pixels of a CSPAD frame make 6,544), so
    that the ASIC's scale and level are read once a run and the frame is read in order
    (the same floats; measured 1.3x faster)."""
    divide = unit != np.float32(1)
    for q in range(runs.size - 1):
        k0 = runs[q]
        k1 = runs[q + 1]
        p0 = gpix[k0]
        a = asic[p0]
        sc = evtab[a]
        off = offset[a]
        for j in range(k1 - k0):
            x = (np.float32(raw[p0 + j]) * sc) * inv_e
            x = x - off
            if divide:
                x = x / unit
            out[k0 + j] = x
            bg[k0 + j] = mean[gring[k0 + j]] * gpol[k0 + j]


_corrected_bg_runs = _jit(_corrected_bg_runs)


def _fold_banks(banks: np.ndarray, s1: np.ndarray) -> None:
    """``s1[r]`` = the sum of ring ``r``'s :data:`N_BANKS` interleaved banks, bank by bank
    (``banks`` ``(N_BANKS * n_rings,)`` float64, bank-major)."""
    n1 = s1.size
    for r in range(n1):
        t = 0.0
        for b in range(N_BANKS):
            t += banks[b * n1 + r]
        s1[r] = t


_fold_banks = _jit(_fold_banks)


def _pass1(
    raw: np.ndarray,
    ring: np.ndarray,
    asic: np.ndarray,
    offset: np.ndarray,
    ev: np.ndarray,
    evtab: np.ndarray,
    ped: np.ndarray,
    gain: np.ndarray,
    inv_e: np.float32,
    unit: np.float32,
    inv_pol: np.ndarray,
    threshold: np.ndarray,
    s1: np.ndarray,
    bad: np.ndarray,
    peaks: np.ndarray,
    banks: np.ndarray,
) -> int:
    """Corrected photons ``g`` of every pixel (not stored: what needs them later
    recomputes them, :func:`_corrected`), ring sums of ``g / P`` over the valid
    finite pixels (``s1`` ``(n_rings + 1,)`` float64; pixel ``p`` adds to bank ``p %
    N_BANKS`` of ``banks`` ``(N_BANKS * (n_rings + 1),)``, so that neighbours in one ring
    do not wait on each other's sums: 1.15x faster than a run of one ring's pixels added
    in a register and flushed at every change of ring, a branch that mispredicts), the count of valid non-finite pixels of each ring (``bad``), and the valid
    pixels whose finite ``g / P`` exceeds their ring's Bragg ``threshold`` (float32;
    ``+inf``: none) listed in ``peaks``; returns how many.

    ``ring``: ring of each pixel (``n_rings`` outside every ring); ``asic`` its ASIC
    (``offset`` ``(n_asics + 1,)`` the levels, 0 where none); ``inv_pol`` ``1 / P`` on
    the valid ring pixels, else 0.
    """
    s1[:] = 0
    bad[:] = 0
    hp = ped.size > 0
    hg = gain.size > 0
    tab = evtab.size > 0
    divide = unit != np.float32(1)
    zero = np.float32(0)
    n = 0
    n1 = s1.size
    banks[:] = 0
    for p in range(raw.size):
        a = asic[p]
        x = np.float32(raw[p])
        if hp:
            x = x - ped[p]
        if hg:
            x = x * gain[p]
        x = (x * (evtab[a] if tab else ev[p])) * inv_e
        x = x - offset[a]
        if divide:
            x = x / unit
        ip = inv_pol[p]
        gp = x * ip
        r = ring[p]
        if np.isfinite(gp):
            banks[(p & (N_BANKS - 1)) * n1 + r] += gp  # 0 where not valid
            if gp > threshold[r] and ip != zero:
                peaks[n] = p
                n += 1
        elif ip != zero:
            bad[r] += 1
    _fold_banks(banks, s1)
    return n


_pass1 = _jit(_pass1)


def _pass1_table(
    raw: np.ndarray,
    ring: np.ndarray,
    asic: np.ndarray,
    offset: np.ndarray,
    evtab: np.ndarray,
    inv_e: np.float32,
    unit: np.float32,
    inv_pol: np.ndarray,
    threshold: np.ndarray,
    s1: np.ndarray,
    bad: np.ndarray,
    peaks: np.ndarray,
    banks: np.ndarray,
    finite: bool,
) -> int:
    """:func:`_pass1` without pedestal or gain maps, one ``ev_per_adu`` per ASIC
    (``evtab``): the loop without those choices (measured 1.7x faster).  ``finite``: every
    ``g / P`` is known to be finite (integer ``raw``, finite ``evtab``, ``offset`` and
    ``inv_pol``): no test per pixel (1.1x faster)."""
    s1[:] = 0
    bad[:] = 0
    divide = unit != np.float32(1)
    zero = np.float32(0)
    n = 0
    n1 = s1.size
    banks[:] = 0
    for p in range(raw.size):
        a = asic[p]
        x = (np.float32(raw[p]) * evtab[a]) * inv_e
        x = x - offset[a]
        if divide:
            x = x / unit
        ip = inv_pol[p]
        gp = x * ip
        r = ring[p]
        if finite or np.isfinite(gp):
            banks[(p & (N_BANKS - 1)) * n1 + r] += gp  # 0 where not valid
            if gp > threshold[r] and ip != zero:
                peaks[n] = p
                n += 1
        elif ip != zero:
            bad[r] += 1
    _fold_banks(banks, s1)
    return n


_pass1_table = _jit(_pass1_table)


def _bragg_thresholds(
    noise: np.ndarray,
    noise_start: np.ndarray,
    sigma: float,
    max_iter: int,
    bragg_sigma: float,
    min_excess: float,
    threshold: np.ndarray,
) -> None:
    """Per ring the float32 floor of ``mean + max(bragg_sigma std, min_excess)`` of the
    sigma-clipped noise sample (values below :data:`UNUSED`; float64 moments), as
    :func:`~hpcdiff.background.standard.clipped_ring_stats`; NaN without values.  A
    pass whose moments equal the previous pass's ends the iterations: the window, and so
    every later pass, would be the same (exact; most rings converge before ``max_iter``).
    ``noise_start`` ``(n_rings + 1,)`` bounds of each ring's sample."""
    for r in range(noise_start.size - 1):
        a = noise_start[r]
        b = noise_start[r + 1]
        lo = -np.inf
        hi = UNUSED / 2  # below the sentinel
        mean = np.nan
        std = np.nan
        last = (-1.0, 0.0, 0.0)
        for _ in range(max_iter + 1):
            s0 = 0.0
            m1 = 0.0
            m2 = 0.0
            for k in range(a, b):
                v = np.float64(noise[k])
                w = np.float64((v >= lo) & (v <= hi))
                s0 += w
                m1 += v * w  # the sentinel times 0: 0
                m2 += (v * v) * w
            if s0 == 0:
                mean = np.nan
                std = np.nan
                break
            if (s0, m1, m2) == last:
                break  # the same moments give the same window: every later pass is this one
            last = (s0, m1, m2)
            mean = m1 / s0
            var = m2 / s0 - mean * mean
            std = np.sqrt(var if var > 0 else 0.0)
            lo = mean - sigma * std
            hi = mean + sigma * std
        t = mean + max(bragg_sigma * std, min_excess)
        t32 = np.float32(t)
        if np.float64(t32) > t:  # the largest float32 <= t: gp > t32 exactly when gp > t
            t32 = np.nextafter(t32, np.float32(-np.inf))
        threshold[r] = t32


# reassociated float64 sums (vectorised): the moments differ from the numpy chain's by
# summation order only
_bragg_thresholds = _jit(_bragg_thresholds, fastmath={"reassoc"})


def _grow(
    pix: np.ndarray,
    n: int,
    steps: int,
    n_ss: int,
    n_fs: int,
    panel: np.ndarray,
    mark: np.ndarray,
) -> int:
    """Mark ``pix[:n]`` and their 8-neighbours within the same panel, ``steps`` times, in
    ``mark`` (slab, 0 before); the marked pixels are listed in ``pix`` (returns how many;
    ``pix.size + 1`` when it is too small)."""
    m = 0
    for k in range(n):  # unique seeds
        p = pix[k]
        if mark[p] == 0:
            mark[p] = 1
            pix[m] = p
            m += 1
    lo = 0
    for _ in range(steps):
        hi = m
        for k in range(lo, hi):
            p = pix[k]
            ss = p // n_fs
            fs = p - ss * n_fs
            pn = panel[p]
            for dss in range(-1, 2):
                s2 = ss + dss
                if s2 < 0 or s2 >= n_ss:
                    continue
                for dfs in range(-1, 2):
                    f2 = fs + dfs
                    if (dss == 0 and dfs == 0) or f2 < 0 or f2 >= n_fs:
                        continue
                    q = s2 * n_fs + f2
                    if mark[q] == 0 and panel[q] == pn:
                        if m >= pix.size:
                            return pix.size + 1
                        mark[q] = 1
                        pix[m] = q
                        m += 1
        lo = hi
    return m


_grow = _jit(_grow)


def _finish(
    xd: np.ndarray,
    dropped: np.ndarray,
    n_dropped: int,
    ring: np.ndarray,
    inv_pol: np.ndarray,
    s1: np.ndarray,
    counts: np.ndarray,
    bad: np.ndarray,
    mean: np.ndarray,
    xg: np.ndarray,
    guard_pix: np.ndarray,
    guard_ring: np.ndarray,
    guard_pol: np.ndarray,
    mark: np.ndarray,
    rn2: np.float32,
    gbuf: np.ndarray,
) -> int:
    """Ring means of ``g / P`` over the valid finite pixels less the dropped ones
    (``xd``: their corrected photons; ``mean`` ``(n_rings + 1,)`` float32, NaN: none),
    and the noise units of the guard sample's pixels not dropped (``xg``: their
    corrected photons) into ``gbuf`` (float64; returns how many).  ``counts``: valid
    pixels of each ring."""
    n1 = mean.size
    total = np.zeros(n1, dtype=np.float64)
    cnt = np.zeros(n1, dtype=np.int64)
    for r in range(n1):
        total[r] = s1[r]
        cnt[r] = counts[r] - bad[r]
    zero = np.float32(0)
    for k in range(n_dropped):
        p = dropped[k]
        gp = xd[k] * inv_pol[p]
        if inv_pol[p] != zero and np.isfinite(gp):
            r = ring[p]
            total[r] -= gp
            cnt[r] -= 1
    for r in range(n1):
        mean[r] = np.float32(total[r] / cnt[r]) if cnt[r] > 0 else np.float32(np.nan)
    n = 0
    for k in range(guard_pix.size):
        if mark[guard_pix[k]]:
            continue
        bg = mean[guard_ring[k]] * guard_pol[k]
        z = xg[k] - bg
        if bg < zero:
            bg = zero
        z = z / np.sqrt(bg + rn2)
        if np.isfinite(z):
            gbuf[n] = z
            n += 1
    return n


_finish = _jit(_finish)


def _guard_scale(v: np.ndarray, n: int, clip: float, max_iter: int) -> float:
    """:func:`~hpcdiff.background.standard.noise_scale_flat` of ``v[:n]`` (float64,
    compacted in place; NaN: none): moments, then ``max_iter`` times those of the values
    within ``clip`` stds of the mean."""
    std = np.nan
    for it in range(max_iter + 1):
        if n == 0:
            return np.nan
        m1 = 0.0
        for k in range(n):
            m1 += v[k]
        mean = m1 / n
        m2 = 0.0
        for k in range(n):
            d = v[k] - mean
            m2 += d * d
        std = np.sqrt(m2 / n)
        if it < max_iter:
            bound = clip * std
            kept = 0
            for k in range(n):
                if abs(v[k] - mean) <= bound:
                    v[kept] = v[k]
                    kept += 1
            n = kept
    return std


_guard_scale = _jit(_guard_scale, fastmath={"reassoc"})


def _count_nan(z: np.ndarray) -> int:
    """Number of NaN in ``z`` (a vectorised NaN test first: counting in the loop that
    makes the values kept it from being vectorised)."""
    probe = np.float32(0)
    for k in range(z.size):
        probe += z[k] * np.float32(0)  # NaN once any value is
    if probe == probe:
        return 0
    n = 0
    for k in range(z.size):
        if z[k] != z[k]:
            n += 1
    return n


_count_nan = _jit(_count_nan, fastmath={"reassoc"})


def _noise_units(
    rn2: np.float32,
    divisor: np.float32,
    clip: np.float32,
    z: np.ndarray,
    bg: np.ndarray,
) -> int:
    """Noise units ``(g - B) / sqrt(max(B, 0) + sigma^2)`` of the valid ring pixels with
    a q-space column (``z``: their corrected photons ``g``, in place; ``bg``: their
    backgrounds ``B = P m``, from :func:`_corrected_bg`), divided by the guard
    ``divisor`` and clipped to ``+-clip``; NaN where not finite (returns how many).
    Without gathers the loop is vectorised (square roots and divisions 16 at a time)."""
    zero = np.float32(0)
    nan = np.float32(np.nan)
    for k in range(z.size):
        b = bg[k]
        x = z[k] - b
        x = x / np.sqrt(max(b, zero) + rn2)
        x = x / divisor  # exact when the divisor is 1
        x = x if np.isfinite(x) else nan  # not finite: dropped by _drop, not clipped
        x = clip if x > clip else x  # NaN stays NaN
        x = -clip if x < -clip else x
        z[k] = x
    return _count_nan(z)


_noise_units = _jit(_noise_units)


def _drop(
    z: np.ndarray,
    column: np.ndarray,
    dropped: np.ndarray,
    n_dropped: int,
    cindptr: np.ndarray,
    ccells: np.ndarray,
    cweights: np.ndarray,
    lost: np.ndarray,
    lost2: np.ndarray,
    n_bad: int,
) -> None:
    """Zero the noise units of the dropped pixels (``column``: slab pixel -> index in
    ``z``, -1: none) and of the ``n_bad`` non-finite ones (a scan only when there are),
    adding their columns' ``w``, ``w^2`` to ``lost``, ``lost2``, each pixel once."""
    lost[:] = 0
    lost2[:] = 0
    for k in range(n_dropped):
        c = column[dropped[k]]
        if c >= 0 and np.isfinite(z[c]):  # a non-finite one is the scan's
            z[c] = 0
            for e in range(cindptr[c], cindptr[c + 1]):
                w = np.float64(cweights[e])
                lost[ccells[e]] += w
                lost2[ccells[e]] += w * w
    if n_bad == 0:
        return
    for c in range(z.size):
        if not np.isfinite(z[c]):
            z[c] = 0
            for e in range(cindptr[c], cindptr[c + 1]):
                w = np.float64(cweights[e])
                lost[ccells[e]] += w
                lost2[ccells[e]] += w * w


_drop = _jit(_drop)


def _cells(
    indptr: np.ndarray, columns: np.ndarray, weights: np.ndarray, z: np.ndarray, num: np.ndarray
) -> None:
    """``num = matrix @ z`` (CSR; float64 sums)."""
    for c in range(num.size):
        acc = 0.0
        for e in range(indptr[c], indptr[c + 1]):
            acc += weights[e] * np.float64(z[columns[e]])
        num[c] = acc


_cells = _jit(_cells)


def _cells_one(cell: np.ndarray, weight: np.ndarray, z: np.ndarray, num: np.ndarray) -> None:
    """:func:`_cells` where every column has one entry (``cell``, ``weight`` of each,
    nearest-cell binning): ``num[cell] += weight z`` in column order, the same float64
    additions in the same order as the CSR rows, read in order instead of gathered
    (measured 2.4x faster on a CSPAD frame, 2.9x with twice the grid pixels)."""
    num[:] = 0
    for c in range(z.size):
        num[cell[c]] += np.float64(weight[c]) * np.float64(z[c])


_cells_one = _jit(_cells_one)


def _unmark(mark: np.ndarray, pix: np.ndarray, n: int) -> None:
    for k in range(n):
        mark[pix[k]] = 0


_unmark = _jit(_unmark)


# --------------------------------------------------------------------------- driver


class _Scratch:
    """One thread's buffers (frame-sized: ``g``, ``mark``, ``pix``)."""

    def __init__(self, k: StandardKernel) -> None:
        n_pix = k.ring.size
        n1 = k.n_rings + 1
        self.mark = np.zeros(n_pix, dtype=np.uint8)
        self.pix = np.empty(n_pix, dtype=np.int32)
        self.noise = np.empty(int(k.noise_start[-1]), np.float32)
        self.s1 = np.zeros(n1, dtype=np.float64)
        self.banks = np.zeros(N_BANKS * n1, dtype=np.float64)
        self.bad = np.zeros(n1, dtype=np.int64)
        self.threshold = np.full(n1, np.inf, dtype=np.float32)
        self.mean = np.empty(n1, dtype=np.float32)
        self.guard = np.empty(k.guard_pix.size, dtype=np.float64)
        self.xg = np.empty(k.guard_pix.size, dtype=np.float32)
        self.xd = np.empty(n_pix, dtype=np.float32)
        self.level = np.empty(max(k.n_asics, 1), dtype=np.float32)
        self.offset = np.zeros(k.n_asics + 1, dtype=np.float32)
        self.fbuf = np.empty(max(k.max_voters, 1), dtype=np.float32)
        self.ibuf = np.empty(max(k.max_voters, 1), dtype=np.int64)
        self.hist = np.empty(HIST_MAX_BINS, dtype=np.int64)
        cells = k.den_static.size
        self.z = np.empty(k.gpix.size, dtype=np.float32)
        self.bg = np.empty(k.gpix.size, dtype=np.float32)
        self.num = np.empty(cells, dtype=np.float64)
        self.lost = np.empty(cells, dtype=np.float64)
        self.lost2 = np.empty(cells, dtype=np.float64)


class StandardKernel:
    """Raw frame -> q-space cell sums of the standard recipe, in three fused passes.

    Built by :meth:`build` from the detector's numpy chain
    (:class:`~hpcdiff.background.standard.StandardRingOrder`) and its per-frame corrections
    (:class:`~hpcdiff.cpu_corrections.FrameCorrections`): the same pixels, masks,
    polarisation, rings, Bragg noise sample, guard sample and resampling matrix, laid out
    in slab order once per detector.
    """

    def __init__(self, chain: Any, corrections: Any) -> None:
        import scipy.sparse

        _compile()
        cfg = chain.cfg
        rings = chain.rings
        n_ss, n_fs = (int(v) for v in chain.shape)
        n_pix = n_ss * n_fs
        order = rings.order
        self.shape = (n_ss, n_fs)
        self.n_rings = n_rings = int(rings.n_segments)
        if n_rings >= np.iinfo(np.int16).max:
            raise ValueError(f"at most {np.iinfo(np.int16).max - 1} rings, got {n_rings}")
        self.ring = np.full(n_pix, n_rings, dtype=np.int16)  # spare ring: outside all
        self.ring[order] = rings.sorted_labels
        self.inv_pol = np.zeros(n_pix, dtype=np.float32)
        self.inv_pol[order] = np.where(chain.valid, chain.inv_pol, np.float32(0))
        self.pol = np.ones(n_pix, dtype=np.float32)
        self.pol[order] = chain.pol
        self.counts = np.append(chain.valid_counts, 0).astype(np.int64)
        # the Bragg noise sample (rings.subsample(4)) in its own order, a spare slot last
        noise = chain.noise_segments
        self.noise_start = np.append(noise.starts, noise.order.size).astype(np.int64)
        by_slab = np.argsort(noise.order, kind="stable")
        self.noise_pix = noise.order[by_slab].astype(np.int32)
        self.noise_dest = by_slab.astype(np.int32)  # its slot in the ring-by-ring sample
        self.panel = np.ascontiguousarray(chain.panel_flat, dtype=np.int32)
        # the guard sample: every step-th slab pixel that is a valid ring pixel (as guard_take)
        guard = np.arange(0, n_pix, _guard_step(n_pix))
        self.guard_pix = guard[self.inv_pol[guard] != 0].astype(np.int32)
        self.guard_ring = self.ring[self.guard_pix]
        self.guard_pol = self.pol[self.guard_pix]
        # resampling matrix: the columns of the valid pixels in the grid, in slab order
        coo = chain.matrix_valid.tocoo()
        cells = chain.size * chain.size
        self.gpix = np.unique(order[coo.col]).astype(np.int32)
        self.column = np.full(n_pix, -1, dtype=np.int32)
        self.column[self.gpix] = np.arange(self.gpix.size, dtype=np.int32)
        self.gring = self.ring[self.gpix]
        self.gpol = self.pol[self.gpix]
        csr = scipy.sparse.csr_matrix(
            (coo.data.astype(np.float32), (coo.row, self.column[order[coo.col]])),
            shape=(cells, self.gpix.size),
        )
        csr.sort_indices()
        csc = csr.tocsc()
        csc.sort_indices()
        index = np.int32 if csr.nnz < 2**31 else np.int64
        self.indptr, self.columns = csr.indptr.astype(index), csr.indices.astype(np.int32)
        self.weights = csr.data.astype(np.float32)
        self.cindptr, self.ccells = csc.indptr.astype(index), csc.indices.astype(np.int32)
        self.cweights = csc.data.astype(np.float32)
        #: every grid pixel lies in one cell (ccells, cweights: its cell and weight)
        self.one_cell = bool((np.diff(self.cindptr) == 1).all())
        self.den_static = np.asarray(chain.den_static, np.float64)
        self.den2_static = np.asarray(chain.den2_static, np.float64)
        self.size = int(chain.size)
        self.limit = float(chain.limit)
        self.q_cell = cfg.q_cell
        self.smooth = chain.smooth
        self.mask_bragg = bool(cfg.mask_bragg)
        self.bragg_sigma = float(cfg.bragg_sigma)
        self.grow = int(cfg.bragg_grow_px)
        self.rn2 = np.float32(cfg.read_noise_photons**2)
        self.guard = float(cfg.standard_guard)
        self.clip = np.float32(cfg.clip_sigma)
        # corrections
        c = corrections
        self.ev = np.ascontiguousarray(c.ev_per_adu, np.float32).ravel()
        empty = np.empty(0, np.float32)
        self.ped = empty if c.pedestal is None else _flat32(c.pedestal)
        self.gain = empty if c.gain is None else _flat32(c.gain)
        self.threshold = np.float32(c.threshold)
        plan = c.plan
        self.n_asics = 0 if plan is None else int(plan.n_asics)
        self.asic: np.ndarray = np.zeros(n_pix, dtype=np.int16)  # offset[n_asics]: 0
        self.voters = self.early = np.empty(0, np.int64)
        self.vstarts = self.estarts = np.zeros(1, np.int64)
        self.asics = np.empty(0, np.int64)
        self.scale = np.ones(max(self.n_asics, 1), np.float32)
        self.max_voters = 0
        self.hist_ok = False
        if plan is not None:
            self.asic = plan.labels.astype(np.int16 if self.n_asics < 2**15 else np.int32)
            voters, counts = plan.voters
            early, ecounts = plan.voters_early
            self.voters, self.early = voters.astype(np.int64), early.astype(np.int64)
            self.vstarts = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
            self.estarts = np.concatenate(([0], np.cumsum(ecounts))).astype(np.int64)
            self.asics = plan.asics.astype(np.int64)
            self.max_voters = int(counts.max()) if counts.size else 0
            if c.asic_scale is not None:
                self.scale = c.asic_scale.astype(np.float32)
                used = self.scale[self.asics]
                self.hist_ok = bool(np.isfinite(used).all() and (used > 0).all())
        # one ev_per_adu per ASIC over the ring pixels: a table instead of the map
        self.evtab = np.empty(0, np.float32)
        if c.pedestal is None and c.gain is None:
            inside = self.ring < n_rings
            lab, val = self.asic[inside], self.ev[inside]
            table = np.ones(self.n_asics + 1, np.float32)
            table[lab] = val
            if (table[lab] == val).all():
                self.evtab = table
        # largest |ev_per_adu| and |1 / P|: bound |g / P| of integer frames (NaN: not finite)
        self.max_evtab = float(np.abs(self.evtab).max()) if self.evtab.size else np.nan
        # runs of consecutive grid pixels of one ASIC (for _corrected_bg_runs)
        step = (np.diff(self.gpix) != 1) | (np.diff(self.asic[self.gpix]) != 0)
        self.gruns = np.concatenate(([0], np.flatnonzero(step) + 1, [self.gpix.size])).astype(
            np.int64
        )
        self.max_inv_pol = float(np.abs(self.inv_pol).max()) if n_pix else 0.0
        # scratch buffers of the calls under way, reused by later calls in any thread
        # (Preprocessor threads are new for every batch)
        self._pool: list[_Scratch] = []
        self._pool_lock = threading.Lock()

    @classmethod
    def build(cls, chain: Any, corrections: Any) -> StandardKernel | None:
        """The kernel of a :class:`~hpcdiff.background.standard.StandardRingOrder` and its
        :class:`~hpcdiff.cpu_corrections.FrameCorrections`, or None where it does not
        apply (no numba, no fast corrections, ``compression`` other than ``"none"``):
        then the numpy chain runs."""
        if not HAVE_NUMBA or corrections is None or chain.cfg.compression != "none":
            return None
        return cls(chain, corrections)

    def _always_finite(
        self, dtype: np.dtype, offset: np.ndarray, inv_e: np.float32, unit: np.float32
    ) -> bool:
        """Whether every ``g / P`` of :func:`_pass1_table` on integer ADU of ``dtype`` is
        finite: a bound on each float32 intermediate (float64, with a margin) below the
        largest float32."""
        info = np.iinfo(dtype)
        top = 0.5 * UNUSED
        m1 = max(-float(info.min), float(info.max)) * self.max_evtab  # |raw * ev|
        m2 = m1 * float(inv_e) + float(np.abs(offset).max())  # photons less the level
        m3 = m2 / abs(float(unit))
        m4 = m3 * self.max_inv_pol
        # NaN compares False: a NaN bound (a NaN map or level) is not finite
        return bool(m1 < top and m2 < top and m3 < top and m4 < top)

    def _take(self) -> _Scratch:
        """A free set of scratch buffers (made when every set is in use)."""
        with self._pool_lock:
            if self._pool:
                return self._pool.pop()
        return _Scratch(self)

    def _give(self, s: _Scratch) -> None:
        with self._pool_lock:
            self._pool.append(s)

    def sums(
        self,
        raw: np.ndarray,
        *,
        photon_energy_ev: float,
        min_excess: float,
        unit: float = 1.0,
        stages: dict[str, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cell sums ``sum(w z)``, ``sum(w)``, ``sum(w^2)`` of one raw frame.

        Parameters
        ----------
        raw
            ``(n_ss, n_fs)`` raw frame, ADU, any real dtype (int16 stays int16).
        photon_energy_ev
            The frame's photon energy, eV (finite, > 0).
        min_excess
            Smallest excess of a Bragg peak over the ring level of ``I / P``, photons.
        unit
            The corrected values are divided by it (one photon in the corrections' unit).
        stages
            Optional: the calling thread's CPU seconds (``time.thread_time``) of each
            stage are added to it under the names of :data:`STAGES` (for benchmarks).

        Returns
        -------
        num, den, den2 : ndarray, (size * size,) float32
            As :meth:`~hpcdiff.background.standard.StandardRingOrder._ordered_frame`.
        """
        if raw.shape != self.shape:
            raise ValueError(f"frame shape {raw.shape}, the detector slab is {self.shape}")
        s = self._take()
        try:
            return self._sums(s, raw, photon_energy_ev, min_excess, unit, stages)
        finally:
            self._give(s)

    def _sums(
        self,
        s: _Scratch,
        raw: np.ndarray,
        photon_energy_ev: float,
        min_excess: float,
        unit: float,
        stages: dict[str, float] | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`sums` with the scratch buffers ``s``."""
        lap = _Laps(stages)
        flat = np.ascontiguousarray(raw).reshape(-1)
        integer = np.issubdtype(flat.dtype, np.integer)
        if not (integer or np.issubdtype(flat.dtype, np.floating)):
            flat = flat.astype(np.float32)
        inv_e = np.float32(1.0 / photon_energy_ev)
        if self.n_asics:
            s.level[:] = np.nan
            _levels(
                flat,
                self.voters,
                self.vstarts,
                self.early,
                self.estarts,
                self.asics,
                self.scale,
                bool(self.hist_ok and integer and flat.dtype.itemsize <= 4),
                self.ev,
                self.ped,
                self.gain,
                inv_e,
                self.threshold,
                2,
                s.level,
                s.fbuf,
                s.ibuf,
                s.hist,
            )
            s.offset[:-1] = np.where(np.isfinite(s.level), s.level, np.float32(0))
        lap("common-mode levels")
        f32_unit = np.float32(unit)
        if self.mask_bragg:
            _noise_sample(
                flat,
                self.noise_pix,
                self.asic,
                s.offset,
                self.ev,
                self.evtab,
                self.ped,
                self.gain,
                inv_e,
                f32_unit,
                self.inv_pol,
                self.noise_dest,
                s.noise,
            )
            lap("Bragg noise sample")
            _bragg_thresholds(
                s.noise, self.noise_start, 3.0, 3, self.bragg_sigma, float(min_excess), s.threshold
            )
            lap("clipped ring statistics")
        tail = (inv_e, f32_unit, self.inv_pol, s.threshold, s.s1, s.bad, s.pix, s.banks)
        if self.evtab.size and not (self.ped.size or self.gain.size):
            finite = integer and self._always_finite(flat.dtype, s.offset, inv_e, f32_unit)
            n_peaks = _pass1_table(flat, self.ring, self.asic, s.offset, self.evtab, *tail, finite)
        else:
            n_peaks = _pass1(
                flat,
                self.ring,
                self.asic,
                s.offset,
                self.ev,
                self.evtab,
                self.ped,
                self.gain,
                *tail,
            )
        lap("pass 1: corrections, ring sums, peaks")
        n_drop = 0
        if n_peaks:
            n_drop = _grow(
                s.pix, n_peaks, self.grow, self.shape[0], self.shape[1], self.panel, s.mark
            )
        lap("peak growth")
        correct = (self.asic, s.offset, self.ev, self.evtab, self.ped, self.gain, inv_e, f32_unit)
        try:
            _corrected(flat, s.pix, n_drop, *correct, s.xd)
            _corrected(flat, self.guard_pix, self.guard_pix.size, *correct, s.xg)
            n_guard = _finish(
                s.xd,
                s.pix,
                n_drop,
                self.ring,
                self.inv_pol,
                s.s1,
                self.counts,
                s.bad,
                s.mean,
                s.xg,
                self.guard_pix,
                self.guard_ring,
                self.guard_pol,
                s.mark,
                self.rn2,
                s.guard,
            )
            scale = _guard_scale(s.guard, n_guard, 4.0, 3)
            sc = scale if np.isfinite(scale) and scale > 0 else 1.0
            divisor = np.float32(sc / min(max(sc, 1.0 / self.guard), self.guard))
            lap("ring means, guard noise scale")
            if self.evtab.size and not (self.ped.size or self.gain.size):
                _corrected_bg_runs(
                    flat,
                    self.gpix,
                    self.gruns,
                    self.asic,
                    s.offset,
                    self.evtab,
                    inv_e,
                    f32_unit,
                    s.z,
                    self.gring,
                    self.gpol,
                    s.mean,
                    s.bg,
                )
            else:
                _corrected_bg(
                    flat,
                    self.gpix,
                    self.gpix.size,
                    *correct,
                    s.z,
                    self.gring,
                    self.gpol,
                    s.mean,
                    s.bg,
                )
            lap("grid pixels: corrections, backgrounds")
            n_bad = _noise_units(self.rn2, divisor, self.clip, s.z, s.bg)
            lap("noise units")
            _drop(
                s.z,
                self.column,
                s.pix,
                n_drop,
                self.cindptr,
                self.ccells,
                self.cweights,
                s.lost,
                s.lost2,
                n_bad,
            )
            lap("dropped pixels' weights")
            if self.one_cell:
                _cells_one(self.ccells, self.cweights, s.z, s.num)
            else:
                _cells(self.indptr, self.columns, self.weights, s.z, s.num)
            lap("cell sums (resampling matrix)")
        finally:
            _unmark(s.mark, s.pix, n_drop)
        num = s.num.astype(np.float32)
        den = (self.den_static - s.lost).astype(np.float32)
        den2 = (self.den2_static - s.lost2).astype(np.float32)
        lap("cell sums to float32")
        return num, den, den2

    def image(
        self,
        raw: np.ndarray,
        *,
        photon_energy_ev: float,
        min_excess: float,
        unit: float = 1.0,
        stages: dict[str, float] | None = None,
    ) -> np.ndarray:
        """``(3, size, size)`` float32 standard image of one raw frame (see :meth:`sums`;
        ``stages`` as there), equal to the numpy chain's up to float32 summation order."""
        from hpcdiff.background.standard import grid_images

        num, den, den2 = self.sums(
            raw, photon_energy_ev=photon_energy_ev, min_excess=min_excess, unit=unit, stages=stages
        )
        lap = _Laps(stages)
        shape = (1, self.size, self.size)
        out = grid_images(
            num.reshape(shape),
            den.reshape(shape),
            den2.reshape(shape),
            limit=self.limit,
            cell=self.q_cell,
            smooth=self.smooth,
        )[0]
        lap("image: smoothing, normalisation, RGB")
        return out


#: The stages :meth:`StandardKernel.sums` and :meth:`StandardKernel.image` time, in order.
STAGES = (
    "common-mode levels",
    "Bragg noise sample",
    "clipped ring statistics",
    "pass 1: corrections, ring sums, peaks",
    "peak growth",
    "ring means, guard noise scale",
    "grid pixels: corrections, backgrounds",
    "noise units",
    "dropped pixels' weights",
    "cell sums (resampling matrix)",
    "cell sums to float32",
    "image: smoothing, normalisation, RGB",
)


class _Laps:
    """Adds the calling thread's CPU seconds since the last call to ``stages[name]`` (a
    no-op without ``stages``)."""

    def __init__(self, stages: dict[str, float] | None) -> None:
        self.stages = stages
        self.t = time.thread_time() if stages is not None else 0.0

    def __call__(self, name: str) -> None:
        if self.stages is not None:
            t = time.thread_time()
            self.stages[name] = self.stages.get(name, 0.0) + t - self.t
            self.t = t


def _flat32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).ravel()


def _guard_step(n_pix: int) -> int:
    from hpcdiff.background.standard import slab_subsample

    step = slab_subsample(n_pix).step
    return int(step) if step else 1


__all__ = ["HAVE_NUMBA", "STAGES", "StandardKernel"]

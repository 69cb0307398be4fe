"""The classification preprocessor: raw slab frames -> CNN images.

:class:`Preprocessor` glues the array stages of :mod:`hpcdiff.corrections` and
:mod:`hpcdiff.background` to one detector (:class:`hpcdiff.geometry.DetectorModel`).
Everything that depends only on the detector (ring index, panel rectangles, ASIC index,
pixel map, per-pixel gain) is computed once, in the constructor; a call then runs, for a
batch ``(n, n_ss, n_fs)``:

0. the geometry's per-frame bad pixels on the raw values (``flag_*``, ``saturation_map``:
   :mod:`hpcdiff.pixel_masks`) become NaN, i.e. invalid; its mask files join ``valid``;
1. pedestal and gain maps (optional): ``(raw - pedestal) * gain``;
2. ADU -> photons with the geometry's ``adu_per_eV`` and each frame's photon energy;
3. per-ASIC common-mode subtraction from the zero-photon pixels;
4. background: per-|q|-ring median / clipped mean (``radial``), per-panel median or
   percentile filter (``local``) or nothing (``none``);
5. Bragg-peak masking (pixels ``bragg_sigma`` above the background, per |q| ring); with
   ``clipped_mean`` the radial background is re-estimated without the peaks;
6. robust normalisation; masked pixels are 0 (neutral) and flagged in ``valid``;
7. assembled, area-downsampled ``(n, 3, size, size)`` float32 images in [0, 1].

That is the ``"seed"`` recipe.  With ``[background] preprocessing = "standard"`` steps
4-7 are those of :mod:`hpcdiff.background.standard`: polarisation-aware ring background
(``method`` is not used), Bragg masking, the residual in units of its expected Poisson +
read noise, a guard-only rescale, and the q-space image (one cell = the same q on every
detector, distance and energy).

numpy frames are processed with numpy, cupy frames with cupy (see :mod:`hpcdiff.backend`).
numpy frames go one at a time (a frame's temporaries stay in the CPU cache), on
``threads`` threads (numpy and scipy release the GIL in the heavy loops); every frame's
result depends on that frame alone, so batch size and thread count never change an image.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from hpcdiff.backend import array_module
from hpcdiff.background import (
    RingOrderImages,
    Segments,
    bragg_mask,
    cnn_images,
    local_background,
    normalise,
    normalised_limit,
    panel_rectangles,
    radial_background,
)
from hpcdiff.background.cpu_standard import StandardKernel
from hpcdiff.background.images import resampling_matrix
from hpcdiff.background.standard import (
    StandardRingOrder,
    finish_noise_units,
    gaussian_matrix,
    guard_divisor,
    noise_residual,
    noise_scale,
    qspace_images,
    qspace_matrix,
    slab_subsample,
)
from hpcdiff.config import BackgroundConfig, CorrectionsConfig
from hpcdiff.corrections import (
    BadPixels,
    adu_to_photons,
    apply_pedestal_gain,
    asic_index,
    find_bad_pixels,
    read_pedestal_and_gain,
    subtract_common_mode,
)
from hpcdiff.cpu_corrections import CommonModePlan, FrameCorrections


@dataclass(frozen=True)
class PreprocessResult:
    """Intermediate products of one batch, for reports and checks.

    All arrays are ``(n, n_ss, n_fs)`` on the device of the input frames.

    Attributes
    ----------
    corrected
        Frames after pedestal/gain, photon conversion and common mode (photons, or ADU
        when ``convert_to_photons`` is off).
    background
        The background that was subtracted (0 for ``method = "none"``), NaN where unknown.
    residual
        ``corrected - background``; NaN on invalid pixels.
    normalised
        Robustly normalised residual in ``[-L, L]``; 0 (neutral) on invalid pixels.
    valid
        bool, pixels that carry signal: on a panel, not bad, not a Bragg peak, finite.
    bragg
        bool, pixels masked as Bragg peaks.
    """

    corrected: Any
    background: Any
    residual: Any
    normalised: Any
    valid: Any
    bragg: Any


def per_frame(values: np.ndarray, like: Any) -> Any:
    """Host per-frame values ``(n,)`` as a factor for ``(n, n_ss, n_fs)`` arrays like
    ``like``: a scalar of ``values``' dtype when every frame has the same value (no upload:
    nothing the device must wait for), else an ``(n, 1, 1)`` array on ``like``'s device."""
    values = np.asarray(values)
    if values.size and (values == values.flat[0]).all():
        return values.dtype.type(values.flat[0])
    return array_module(like).asarray(values)[:, None, None]


def _adu_per_ev_map(model: Any) -> np.ndarray | None:
    """Per-pixel ADU per eV from the geometry's panels; None if a panel lacks it."""
    geom = model.geom
    per_panel = []
    for p in geom.panels:
        value = p.adu_per_ev
        if value is None and getattr(p, "adu_per_photon", None) is not None:
            value = p.adu_per_photon / model.photon_energy_ev
        if value is None:
            return None
        per_panel.append(float(value))
    idx = model.panel_index
    table = np.asarray(per_panel + [np.nan], dtype=np.float64)
    return table[np.where(idx >= 0, idx, len(per_panel))]


class Preprocessor:
    """Raw frames of one detector -> normalised residuals -> CNN images.

    Parameters
    ----------
    model
        The detector (:class:`hpcdiff.geometry.DetectorModel`): uses ``valid``,
        ``panel_index``, ``radial_bins()``, ``pixel_map()``, ``geom.panels`` and, where it
        has them, ``pixel_masks`` (the geometry's mask files, flags, saturation map).
    background_cfg
        Background and normalisation settings.
    corrections_cfg
        Detector-correction settings.
    adu_per_ev
        Detector gain in ADU per eV: a scalar or ``(n_ss, n_fs)`` map; default the
        geometry's per-panel ``adu_per_eV``.  Required when photon conversion or common
        mode is on and the geometry gives none.
    bad_pixel_mask
        ``(n_ss, n_fs)`` bool, True on bad pixels (e.g. :meth:`find_bad_pixels`); added
        to the geometry's mask.
    pedestal, gain
        Optional ``(n_ss, n_fs)`` maps (:func:`hpcdiff.corrections.read_calibration`).
    threads
        CPU threads for numpy frames (frames of a batch run concurrently, one per
        thread); cupy frames run as one batch on the GPU whatever this says.

    Raises
    ------
    ValueError
        If a map has the wrong shape, the gain is needed and unknown, or ``threads < 1``.
    """

    def __init__(
        self,
        model: Any,
        background_cfg: BackgroundConfig | None = None,
        corrections_cfg: CorrectionsConfig | None = None,
        *,
        adu_per_ev: float | np.ndarray | None = None,
        bad_pixel_mask: np.ndarray | None = None,
        pedestal: np.ndarray | None = None,
        gain: np.ndarray | None = None,
        threads: int = 1,
    ) -> None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = int(threads)
        self.model = model
        self.cfg = background_cfg or BackgroundConfig()
        self.corrections = corrections_cfg or CorrectionsConfig()
        shape = tuple(model.panel_index.shape)
        self.slab_shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        for name, m in (("bad_pixel_mask", bad_pixel_mask), ("pedestal", pedestal), ("gain", gain)):
            if m is not None and tuple(np.shape(m)) != self.slab_shape:
                raise ValueError(f"{name} has shape {np.shape(m)}, the detector slab is {shape}")
        if adu_per_ev is None:
            adu_per_ev = _adu_per_ev_map(model)
        needs_gain = self.corrections.convert_to_photons or self.corrections.common_mode
        if adu_per_ev is None and needs_gain:
            raise ValueError(
                "the detector gain is unknown: the geometry gives no adu_per_eV (or "
                "adu_per_photon) for every panel; pass adu_per_ev= or turn off "
                "[corrections] convert_to_photons and common_mode"
            )
        self.adu_per_ev = None if adu_per_ev is None else np.asarray(adu_per_ev, np.float64)
        if self.adu_per_ev is not None:
            used = np.broadcast_to(self.adu_per_ev, self.slab_shape)[np.asarray(model.valid, bool)]
            if not (np.isfinite(used).all() and (used > 0).all()):
                raise ValueError("adu_per_ev must be finite and > 0 on every valid pixel")
        self.pedestal = None if pedestal is None else np.asarray(pedestal, np.float32)
        self.gain = None if gain is None else np.asarray(gain, np.float32)
        self.panel_index = np.asarray(model.panel_index)
        self.ring_index, self.ring_edges = model.radial_bins(self.cfg.n_radial_bins)
        self.rings = Segments(self.ring_index, n_segments=self.cfg.n_radial_bins)
        self.panels = panel_rectangles(self.panel_index)
        asic_shape = cast("tuple[int, int] | None", tuple(self.corrections.asic_shape) or None)
        self.asics = Segments(asic_index(self.panel_index, asic_shape=asic_shape))
        self.pixmap = model.pixel_map()
        self.pixel_masks = getattr(model, "pixel_masks", None)
        self.bad_pixel_mask = (
            np.zeros(self.slab_shape, bool)
            if bad_pixel_mask is None
            else np.asarray(bad_pixel_mask, bool)
        )
        self._device: dict[int, dict[str, Any]] = {}
        self._ring_order: RingOrderImages | None = None
        self._qmatrix: Any = None
        self._frame_corrections: FrameCorrections | None = None
        #: numpy frames of the standard recipe run the fused kernel where it applies
        #: (:class:`~hpcdiff.background.cpu_standard.StandardKernel`); False: numpy chain
        self.cpu_kernel = True
        self._kernel: StandardKernel | None = None
        self._kernel_built = False

    @classmethod
    def from_job(
        cls, job: Any, model: Any, *, bad_pixel_mask: np.ndarray | None = None
    ) -> Preprocessor:
        """A preprocessor for a job: its ``[background]``, ``[corrections]`` and the
        ``[experiment]`` pedestal and gain maps (read with
        :func:`hpcdiff.corrections.read_calibration`; FormatError on a wrong shape).

        Parameters
        ----------
        job
            A :class:`hpcdiff.config.JobConfig`.
        model
            The detector.
        bad_pixel_mask
            Optional ``(n_ss, n_fs)`` bool bad pixels.
        """
        n_ss, n_fs = model.panel_index.shape
        shape = (int(n_ss), int(n_fs))
        pedestal, gain = read_pedestal_and_gain(job.experiment, shape=shape)
        return cls(
            model,
            job.background,
            job.corrections,
            bad_pixel_mask=bad_pixel_mask,
            pedestal=pedestal,
            gain=gain,
        )

    # ------------------------------------------------------------------ helpers

    @property
    def valid(self) -> np.ndarray:
        """``(n_ss, n_fs)`` bool pixels used: the geometry's valid pixels minus bad pixels
        and those its mask files mark bad."""
        ok = np.asarray(self.model.valid, bool) & ~self.bad_pixel_mask
        if self.pixel_masks is not None:
            ok &= ~self.pixel_masks.static_bad
        return ok

    @property
    def limit(self) -> float:
        """Largest absolute normalised value (maps to 0 and 1 in the images)."""
        return normalised_limit(compression=self.cfg.compression, clip_sigma=self.cfg.clip_sigma)

    def _arrays(self, xp: Any) -> dict[str, Any]:
        key = id(xp)
        if key not in self._device:
            self._device[key] = {
                "valid": xp.asarray(self.valid),
                "panel_index": xp.asarray(self.panel_index),
                "adu_per_ev": None if self.adu_per_ev is None else xp.asarray(self.adu_per_ev),
                "ev_per_adu": None if self.adu_per_ev is None else xp.asarray(self._ev_per_adu()),
                "pedestal": None if self.pedestal is None else xp.asarray(self.pedestal),
                "gain": None if self.gain is None else xp.asarray(self.gain),
                "saturation": (
                    None
                    if self.pixel_masks is None or self.pixel_masks.saturation is None
                    else xp.asarray(self.pixel_masks.saturation)
                ),
            }
            if self.pixel_masks is not None:  # flag_* panel groups, uploaded once
                self._device[key]["flag_where"] = tuple(
                    None if w is None else xp.asarray(w) for w, _ in self.pixel_masks.flag_groups
                )
            if self.standard:
                self._device[key]["polarisation"] = xp.asarray(self._polarisation())
        return self._device[key]

    @property
    def standard(self) -> bool:
        """Whether ``[background] preprocessing = "standard"``."""
        return self.cfg.preprocessing == "standard"

    def _polarisation(self) -> np.ndarray:
        """``(n_ss, n_fs)`` float32 polarisation factor, 1 where unknown or not > 0."""
        pol = np.asarray(self.model.polarisation, np.float64)
        return np.where(np.isfinite(pol) & (pol > 0), pol, 1.0).astype(np.float32)

    @property
    def qmatrix(self) -> Any:
        """The detector's q-space resampling matrix
        (:func:`~hpcdiff.background.standard.qspace_matrix`), built on first use."""
        if self._qmatrix is None:
            self._qmatrix = qspace_matrix(
                self.model, size=self.cfg.image_size_px, q_max_per_nm=self.cfg.q_max_per_nm
            )
        return self._qmatrix

    def _ev_per_adu(self) -> np.ndarray:
        """``(n_ss, n_fs)`` float32 ``1 / adu_per_ev`` on valid pixels, 1 elsewhere."""
        assert self.adu_per_ev is not None
        gain = np.where(self.valid, self.adu_per_ev, 1.0)
        return (1.0 / gain).astype(np.float32)

    def _to_photons(self, x: Any, energy: np.ndarray, dev: dict[str, Any]) -> Any:
        """``x / (adu_per_ev * E)`` in place, as float32 products (no batch-sized map).

        ``x`` is a float32 ``(n, n_ss, n_fs)`` batch this class owns (a fresh copy);
        ``energy`` the ``(n,)`` photon energies, eV.
        """
        x *= dev["ev_per_adu"][None]
        x *= per_frame((1.0 / energy).astype(x.dtype), x)
        return x

    def _energies(self, photon_energy_ev: Any, n: int) -> np.ndarray:
        energy = np.asarray(photon_energy_ev, dtype=np.float64)
        if energy.ndim == 0:
            energy = np.full(n, float(energy))
        if energy.shape != (n,):
            raise ValueError(f"photon_energy_ev must be a scalar or ({n},), got {energy.shape}")
        return energy

    def _photon_unit(self, photon_energy_ev: Any, n: int) -> np.ndarray:
        """``(n,)`` one photon of each frame in the unit of :meth:`correct`'s output: 1, or
        (``convert_to_photons`` off) the median ADU per eV times the frame's energy."""
        c = self.corrections
        if c.convert_to_photons or self.adu_per_ev is None:
            return np.ones(n)
        per_pixel = np.broadcast_to(self.adu_per_ev, self.slab_shape)
        gain = float(np.nanmedian(per_pixel[np.asarray(self.model.valid, bool)]))
        return gain * self._energies(photon_energy_ev, n)

    @property
    def frame_corrections(self) -> FrameCorrections | None:
        """:meth:`correct` of one numpy frame with per-detector plans
        (:class:`~hpcdiff.cpu_corrections.FrameCorrections`, the same float32 results), or
        None for settings it does not cover (no photon conversion, histogram common mode,
        a geometry's per-frame ``flag_*`` / ``saturation_map``, which :meth:`correct` applies
        before the common mode); built on first use."""
        c = self.corrections
        if not c.convert_to_photons or self.adu_per_ev is None:
            return None
        if self.pixel_masks is not None and self.pixel_masks.per_frame:
            return None
        if c.common_mode and c.common_mode_method != "median":
            return None
        if self._frame_corrections is None:
            plan = (
                CommonModePlan.build(self.asics, valid=self.valid, stride=c.common_mode_stride)
                if c.common_mode
                else None
            )
            self._frame_corrections = FrameCorrections(
                ev_per_adu=self._ev_per_adu(),
                pedestal=self.pedestal,
                gain=self.gain,
                plan=plan,
                threshold=c.common_mode_threshold_photons,
            )
        return self._frame_corrections

    def _check(self, frames: Any) -> Any:
        """``frames`` as float32 after :meth:`_check_shape`."""
        frames = self._check_shape(frames)
        xp = array_module(frames)
        return frames if frames.dtype == np.float32 else frames.astype(xp.float32)

    def _check_shape(self, frames: Any) -> Any:
        """``frames`` unchanged when they are ``(n, n_ss, n_fs)`` slabs of this detector."""
        if frames.ndim != 3 or tuple(frames.shape[1:]) != self.slab_shape:
            raise ValueError(
                f"frames must be (n, {self.slab_shape[0]}, {self.slab_shape[1]}) slabs of "
                f"this detector, got shape {tuple(frames.shape)}"
            )
        return frames

    # ------------------------------------------------------------------ stages

    def correct(self, frames: Any, *, photon_energy_ev: Any) -> Any:
        """Pedestal/gain, ADU -> photons and common mode.

        Parameters
        ----------
        frames
            ``(n, n_ss, n_fs)`` raw frames, ADU (numpy or cupy).
        photon_energy_ev
            Scalar or ``(n,)`` photon energy of each frame, eV.

        Returns
        -------
        ndarray, (n, n_ss, n_fs) float32
            Photons (or ADU when ``convert_to_photons`` is off); NaN where the geometry's
            ``flag_*`` or ``saturation_map`` mark a raw value bad.
        """
        frames = self._check(frames)
        xp = array_module(frames)
        dev = self._arrays(xp)
        flagged = (
            None
            if self.pixel_masks is None
            else self.pixel_masks.frame_bad(
                frames, saturation=dev["saturation"], where=dev["flag_where"]
            )
        )
        x = apply_pedestal_gain(frames, pedestal=dev["pedestal"], gain=dev["gain"])
        if flagged is not None:  # flag_* / saturation_map: bad in this frame, before all else
            xp.copyto(x, xp.float32(np.nan), where=flagged)
        c = self.corrections
        if not (c.convert_to_photons or c.common_mode):
            return x
        energies = self._energies(photon_energy_ev, frames.shape[0])
        if not (np.isfinite(energies).all() and (energies > 0).all()):
            raise ValueError("photon energies must be finite and > 0 eV")
        x = self._to_photons(x, energies, dev)
        if c.common_mode:
            x = subtract_common_mode(
                x,
                self.asics,
                threshold=c.common_mode_threshold_photons,
                valid=dev["valid"],
                method=c.common_mode_method,
                stride=c.common_mode_stride,
            )
        if not c.convert_to_photons:
            gain = xp.where(dev["valid"], dev["adu_per_ev"], 1.0)
            x = x * (gain[None] * per_frame(energies, x)).astype(xp.float32)
        return x

    def _background(self, x: Any, valid: Any) -> Any:
        cfg = self.cfg
        xp = array_module(x)
        if cfg.method == "radial":
            return radial_background(
                x,
                self.rings,
                valid=valid,
                statistic=cfg.radial_statistic,
                clip_sigma=cfg.radial_clip_sigma,
            )
        if cfg.method == "local":
            return local_background(
                x,
                self.panels,
                valid=valid,
                size_px=cfg.local_size_px,
                statistic=cfg.local_filter,
                percentile=cfg.local_percentile,
                bin_px=cfg.local_bin_px,
            )
        return xp.zeros_like(x)

    def residual(self, frames: Any, *, photon_energy_ev: Any) -> PreprocessResult:
        """Run every stage up to the normalised residual.

        Parameters
        ----------
        frames
            ``(n, n_ss, n_fs)`` raw frames, ADU (numpy or cupy).
        photon_energy_ev
            Scalar or ``(n,)`` photon energy of each frame, eV.

        Returns
        -------
        PreprocessResult
        """
        if self.standard:
            return self._standard_residual(frames, photon_energy_ev)
        x = self.correct(frames, photon_energy_ev=photon_energy_ev)
        xp = array_module(x)
        dev = self._arrays(xp)
        valid = xp.broadcast_to(dev["valid"], x.shape) & xp.isfinite(x)
        bg = self._background(x, valid)
        r = x - bg
        valid = valid & xp.isfinite(r)
        if self.cfg.mask_bragg:
            bragg = bragg_mask(
                r,
                self.rings,
                valid=valid,
                k_sigma=self.cfg.bragg_sigma,
                grow_px=self.cfg.bragg_grow_px,
                panel_index=dev["panel_index"],
                min_excess=self.bragg_min_excess(photon_energy_ev, x.shape[0]),
            )
            valid = valid & ~bragg
            if self.cfg.method == "radial" and self.cfg.radial_statistic == "clipped_mean":
                bg = self._background(x, valid)
                r = x - bg
                valid = valid & xp.isfinite(r)
        else:
            bragg = xp.zeros(x.shape, dtype=bool)
        z = normalise(
            r, valid=valid, compression=self.cfg.compression, clip_sigma=self.cfg.clip_sigma
        )
        r = xp.where(valid, r, xp.float32(np.nan))
        return PreprocessResult(
            corrected=x, background=bg, residual=r, normalised=z, valid=valid, bragg=bragg
        )

    def _standard_residual(self, frames: Any, photon_energy_ev: Any) -> PreprocessResult:
        """:meth:`residual` of the standard recipe (slab order, numpy or cupy).

        ``corrected``, ``background`` and ``residual`` are photons; ``normalised`` is the
        clipped, compressed noise-unit residual (:mod:`hpcdiff.background.standard`).
        """
        cfg = self.cfg
        x = self.correct(frames, photon_energy_ev=photon_energy_ev)
        xp = array_module(x)
        n = x.shape[0]
        unit = self._photon_unit(photon_energy_ev, n)
        if not np.all(unit == 1):
            x = x / per_frame(unit.astype(np.float32), x)
        dev = self._arrays(xp)
        pol = dev["polarisation"]
        valid = xp.broadcast_to(dev["valid"], x.shape) & xp.isfinite(x)
        xn = x / pol[None]
        if cfg.mask_bragg:  # thresholds are relative to each ring's clipped mean
            bragg = bragg_mask(
                xn,
                self.rings,
                valid=valid,
                k_sigma=cfg.bragg_sigma,
                grow_px=cfg.bragg_grow_px,
                panel_index=dev["panel_index"],
                min_excess=np.full(n, cfg.bragg_min_photons),
            )
            valid = valid & ~bragg
        else:
            bragg = xp.zeros(x.shape, dtype=bool)
        bg = radial_background(xn, self.rings, valid=valid, statistic="mean") * pol[None]
        z = noise_residual(x, background=bg, read_noise_photons=cfg.read_noise_photons)
        valid = valid & xp.isfinite(z)
        zf, okf = z.reshape(n, -1), valid.reshape(n, -1)
        take = slab_subsample(zf.shape[1])
        scale = noise_scale(zf[:, take], okf[:, take])
        okf = okf.copy()
        zn = finish_noise_units(
            zf.copy(),
            okf,
            divisor=guard_divisor(scale, guard=cfg.standard_guard),
            clip_sigma=cfg.clip_sigma,
            compression=cfg.compression,
        ).reshape(x.shape)
        valid = okf.reshape(x.shape)
        r = xp.where(valid, x - bg, xp.float32(np.nan))
        return PreprocessResult(
            corrected=x, background=bg, residual=r, normalised=zn, valid=valid, bragg=bragg
        )

    def images(self, result: PreprocessResult) -> Any:
        """CNN images of a :meth:`residual` result: the assembled detector image (seed) or
        the q-space image (standard).

        Returns
        -------
        ndarray, (n, 3, size, size) float32
            In [0, 1]; 0.5 is the neutral (masked / gap / empty cell) value.
        """
        cfg = self.cfg
        if self.standard:
            size = cfg.image_size_px
            smooth = (
                gaussian_matrix(size, cfg.q_smooth_per_nm / (2 * cfg.q_max_per_nm / size))
                if cfg.q_smooth_per_nm > 0
                else None
            )
            return qspace_images(
                result.normalised,
                valid=result.valid,
                matrix=self.qmatrix,
                size=size,
                limit=self.limit,
                cell=cfg.q_cell,
                smooth=smooth,
            )
        return cnn_images(
            result.normalised,
            pixmap=self.pixmap,
            valid=result.valid,
            size=cfg.image_size_px,
            limit=self.limit,
        )

    def __call__(self, frames: Any, *, photon_energy_ev: Any, threads: int | None = None) -> Any:
        """CNN images of raw frames.

        Parameters
        ----------
        frames
            ``(n, n_ss, n_fs)`` raw frames, ADU: numpy (one frame at a time on
            :attr:`threads` threads; the radial chain in ring order) or cupy (one batch).
        photon_energy_ev
            Scalar or ``(n,)`` photon energy of each frame, eV.
        threads
            CPU threads for this call's numpy frames instead of :attr:`threads` (e.g. all
            the CNN's while it waits for its first batch).

        Returns
        -------
        ndarray, (n, 3, size, size) float32
            In [0, 1], ``size = image_size_px``; 0.5 is the neutral (masked / gap) value.
            Frame ``i``'s image depends on frame ``i`` alone.
        """
        if array_module(frames) is np:
            return self._numpy_images(frames, photon_energy_ev, threads=threads)
        return self._slab_images(frames, photon_energy_ev)

    def _slab_images(self, frames: Any, photon_energy_ev: Any) -> Any:
        """:meth:`residual` then :func:`cnn_images`, on the whole batch (any array type)."""
        return self.images(self.residual(frames, photon_energy_ev=photon_energy_ev))

    @property
    def ring_order(self) -> RingOrderImages:
        """The ring-order radial chain of this detector (built on first use; ``method`` must
        be ``"radial"``, or the recipe ``"standard"``: then a
        :class:`~hpcdiff.background.standard.StandardRingOrder`, photons in): :meth:`__call__`
        runs it on numpy frames after :meth:`correct`."""
        if self._ring_order is None and self.standard:
            self._ring_order = StandardRingOrder(
                self.rings,
                valid=self.valid,
                panel_index=self.panel_index,
                polarisation=self._polarisation(),
                matrix=self.qmatrix,
                cfg=self.cfg,
                limit=self.limit,
            )
        if self._ring_order is None:
            self._ring_order = RingOrderImages(
                self.rings,
                valid=self.valid,
                panel_index=self.panel_index,
                pixmap=self.pixmap,
                cfg=self.cfg,
                limit=self.limit,
            )
        return self._ring_order

    @property
    def standard_kernel(self) -> StandardKernel | None:
        """The fused CPU kernel of the standard recipe (built on first use), or None where
        it does not apply (:attr:`cpu_kernel` off, no numba, settings it does not cover)."""
        if not (self.cpu_kernel and self.standard):
            return None
        if not self._kernel_built:
            fast = self.frame_corrections
            chain = self.ring_order
            if fast is not None and isinstance(chain, StandardRingOrder):
                self._kernel = StandardKernel.build(chain, fast)
            self._kernel_built = True
        return self._kernel

    def prepare(self) -> None:
        """Build now what the numpy path builds on first use (detector maps, the ring-order
        chain with its resampling matrix, the per-frame corrections), so that the first
        batch of the frame loop costs what every other batch costs."""
        self._arrays(np)
        if self.cfg.method == "radial" or self.standard:
            _ = self.ring_order
            _ = self.frame_corrections
            _ = self.standard_kernel
        else:
            resampling_matrix(self.pixmap, self.cfg.image_size_px)

    def bragg_min_excess(self, photon_energy_ev: Any, n: int) -> np.ndarray:
        """``(n,)`` smallest excess over the background of a Bragg peak in each frame, unit
        of :meth:`correct`'s output (photons for the standard recipe):
        ``bragg_min_photons`` photons of that frame."""
        if self.standard:
            return np.full(n, self.cfg.bragg_min_photons)
        return self._photon_unit(photon_energy_ev, n) * self.cfg.bragg_min_photons

    def _numpy_images(
        self, frames: np.ndarray, photon_energy_ev: Any, *, threads: int | None = None
    ) -> np.ndarray:
        """The numpy path of :meth:`__call__`: one frame at a time, on :attr:`threads`.

        With the radial background, :meth:`correct` then :attr:`ring_order` (the same
        images as the slab-order chain, without moving every pixel between slab and ring
        order at every stage); otherwise :meth:`_slab_images` of each frame.
        """
        frames = self._check_shape(frames)
        n = frames.shape[0]
        energy = self._energies(photon_energy_ev, n)
        size = self.cfg.image_size_px
        out = np.empty((n, 3, size, size), np.float32)
        # everything built on first use is built here, before any thread starts
        self._arrays(np)
        if self.cfg.method == "radial" or self.standard:
            chain = self.ring_order
            min_excess = self.bragg_min_excess(energy, n)
            unit = self._photon_unit(energy, n) if self.standard else np.ones(n)
            fast = self.frame_corrections
            if fast is not None and not (np.isfinite(energy).all() and (energy > 0).all()):
                raise ValueError("photon energies must be finite and > 0 eV")

            ring_chain = chain if isinstance(chain, StandardRingOrder) else None
            kernel = self.standard_kernel if ring_chain is not None else None

            def image(i: int) -> None:
                if kernel is not None:
                    out[i] = kernel.image(
                        frames[i],
                        photon_energy_ev=float(energy[i]),
                        min_excess=float(min_excess[i]),
                        unit=float(unit[i]),
                    )
                    return
                if fast is not None and ring_chain is not None:
                    # gathered into ring order once; integer frames need no finiteness check
                    x = fast(frames[i], photon_energy_ev=float(energy[i]))
                    # (indices valid by construction: "wrap" skips the bounds checks)
                    g = np.take(x.reshape(-1), ring_chain.rings.order, mode="wrap")[None]
                    del x
                    if unit[i] != 1:
                        g /= np.float32(unit[i])
                    out[i] = ring_chain.ordered_images(
                        g, min_excess=min_excess[i : i + 1], finite=fast.finite_for(frames)
                    )[0]
                    return
                if fast is not None:
                    x = fast(frames[i], photon_energy_ev=float(energy[i]))[None]
                else:
                    x = self.correct(frames[i : i + 1], photon_energy_ev=energy[i : i + 1])
                if unit[i] != 1:
                    x = x / np.float32(unit[i])
                out[i : i + 1] = chain(x, min_excess=min_excess[i : i + 1])

        else:
            resampling_matrix(self.pixmap, size)

            def image(i: int) -> None:
                out[i : i + 1] = self._slab_images(frames[i : i + 1], energy[i : i + 1])

        self._each(image, n, threads=threads)
        return out

    def _each(self, fn: Callable[[int], None], n: int, *, threads: int | None = None) -> None:
        """``fn(i)`` for ``i`` in ``range(n)``, on up to :attr:`threads` threads.

        The first exception of any call is raised here, once every call has ended.
        """
        workers = min(self.threads if threads is None else max(int(threads), 1), n)
        if workers <= 1:
            for i in range(n):
                fn(i)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="hpcdiff-preprocess") as pool:
            for _ in pool.map(fn, range(n)):
                pass

    def find_bad_pixels(self, frames: Any, *, photon_energy_ev: Any) -> BadPixels:
        """Judge bad pixels over many raw frames and add them to :attr:`bad_pixel_mask`.

        Frames are pedestal/gain corrected and converted to photons (no common mode, so a
        dead pixel still reads exactly 0); hot pixels are judged against their |q| ring.

        Parameters
        ----------
        frames
            ``(n, n_ss, n_fs)`` raw frames, ADU, ``n >= 10`` (e.g. ``bad_pixel_frames``).
        photon_energy_ev
            Scalar or ``(n,)`` photon energy, eV.

        Returns
        -------
        BadPixels
            What was found (numpy); the mask is also kept for later calls.
        """
        frames = self._check(frames)
        xp = array_module(frames)
        dev = self._arrays(xp)
        x = apply_pedestal_gain(frames, pedestal=dev["pedestal"], gain=dev["gain"])
        if dev["adu_per_ev"] is not None:
            energy = xp.asarray(self._energies(photon_energy_ev, frames.shape[0]))
            gain = xp.where(dev["valid"], dev["adu_per_ev"], 1.0)
            x = adu_to_photons(x, adu_per_ev=gain, photon_energy_ev=energy)
        found = find_bad_pixels(
            x,
            groups=xp.asarray(self.ring_index),
            valid=xp.asarray(np.asarray(self.model.valid, bool)),
            dead_fraction=self.corrections.bad_pixel_dead_fraction,
            hot_sigma=self.corrections.bad_pixel_hot_sigma,
        )
        self.bad_pixel_mask = self.bad_pixel_mask | found.mask
        self._device.clear()
        self._ring_order = None
        self._frame_corrections = None
        self._kernel = None
        self._kernel_built = False
        return found


__all__ = ["PreprocessResult", "Preprocessor", "per_frame"]

"""The run's frames for the labelling page: read, preprocessed as the job does, as PNG images.

:class:`RunFrames` opens the job's frame files once, builds the detector model from frame
0's camera length and photon energy, judges bad pixels over the first frames and builds
the job's :class:`hpcdiff.preprocess.Preprocessor`, exactly as the classify job's frame
stage does, so the image the page shows is the image the CNN sees.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from hpcdiff.config import JobConfig
from hpcdiff.io.cxi import FrameId

MAX_VIEW_PX = 1024
"""Longest edge of the large background-removed view (larger detectors are area-reduced)."""


def png_gray(image: np.ndarray) -> bytes:
    """PNG bytes of a ``(H, W)`` uint8 image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="L").save(
        buf, format="PNG", compress_level=1
    )
    return buf.getvalue()


def to_uint8(values: np.ndarray, *, lo: float, hi: float, fill: int = 0) -> np.ndarray:
    """Map ``values`` linearly from ``[lo, hi]`` to ``0..255`` (clipped); NaN -> ``fill``."""
    v = np.asarray(values, dtype=np.float32)
    scale = 255.0 / max(hi - lo, 1e-12)
    out = np.clip((v - lo) * scale, 0, 255)
    out = np.where(np.isfinite(v), out, fill)
    return np.rint(out).astype(np.uint8)


def reduce_to(image: np.ndarray, max_px: int) -> np.ndarray:
    """Block-mean ``(H, W)`` float image so its longest edge is at most ``max_px`` (NaN-aware)."""
    h, w = image.shape
    f = int(np.ceil(max(h, w) / max_px))
    if f <= 1:
        return image
    hh, ww = -(-h // f) * f, -(-w // f) * f
    pad = np.full((hh, ww), np.nan, dtype=np.float32)
    pad[:h, :w] = image
    blocks = pad.reshape(hh // f, f, ww // f, f)
    with np.errstate(invalid="ignore"):
        count = np.isfinite(blocks).sum(axis=(1, 3))
        total = np.nansum(blocks, axis=(1, 3))
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def _sqrt_stretch(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``sqrt`` of ``image`` scaled from ``[lo, hi]`` to ``[0, 1]`` (clipped; NaN stays NaN)."""
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0))


class RunFrames:
    """The job's run: frame identities, raw frames, and the job's preprocessing.

    Parameters
    ----------
    job
        The job (``[experiment]``, ``[corrections]``, ``[background]``, ``[features]``).

    Attributes
    ----------
    frame_ids : list of FrameId, one per global frame number
    model : hpcdiff.geometry.DetectorModel
    preprocess : hpcdiff.preprocess.Preprocessor
    """

    def __init__(self, job: JobConfig) -> None:
        from hpcdiff.corrections import read_pedestal_and_gain
        from hpcdiff.io.sources import open_job_source
        from hpcdiff.pipelines.classify import _bad_pixels, _geometry, detector_model, probe_files

        self.job = job
        self.run = probe_files(job)
        self.geometry = _geometry(job)
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()
        self.source = open_job_source(job, self.run.files, geometry=self.geometry)
        self.geometry = self.source.geometry
        self.frame_ids: list[FrameId] = list(self.source.frame_ids)
        self.model = detector_model(
            self.geometry,
            self.source.frame_values(0, 1),
            frame_file=self.source.files[0],
            polarisation_degree=job.corrections.polarisation_degree,
        )
        self.pedestal, self.gain = read_pedestal_and_gain(
            job.experiment, shape=self.source.slab_shape
        )
        self.bad_pixel_mask = _bad_pixels(job, self.source, self.model, self.pedestal, self.gain)
        self.preprocess = self._preprocessor()
        self._pngs: OrderedDict[int, dict[str, bytes]] = OrderedDict()

    def _preprocessor(self) -> Any:
        from hpcdiff.preprocess import Preprocessor

        return Preprocessor(
            self.model,
            self.job.background,
            self.job.corrections,
            bad_pixel_mask=self.bad_pixel_mask,
            pedestal=self.pedestal,
            gain=self.gain,
        )

    @property
    def n_frames(self) -> int:
        return len(self.frame_ids)

    def close(self) -> None:
        with self._lock:
            self.source.close()

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw frames ``(m, n_ss, n_fs)`` float32 ADU and photon energies ``(m,)`` eV."""
        with self._lock:
            frames = np.asarray(self.source.read(start, stop), dtype=np.float32)
            values = self.source.frame_values(start, stop)
        energy = values.get("photon_energy_ev")
        if energy is None:
            energy = np.full(stop - start, self.model.photon_energy_ev)
        return frames, np.asarray(energy, dtype=np.float64)

    # ------------------------------------------------------------------ images
    def pngs(self, row: int) -> dict[str, bytes]:
        """PNG images of frame ``row``: ``raw``, ``cnn`` and ``view`` (cached, last 16).

        ``raw``: the assembled raw frame, 0.5th to 99.8th percentile of its valid pixels
        mapped to black..white through a square root (Bragg peaks
        do not swamp the rest).  ``cnn``: the ``size x size`` image the CNN sees (one of
        its three identical channels).  ``view``: the assembled normalised residual,
        ``[-L, L]`` mapped to ``0..255`` (128 = no excess over the background; gaps and
        masked pixels 128), for the page's contrast slider.
        """
        if not 0 <= row < self.n_frames:
            raise IndexError(f"frame {row} is not in 0..{self.n_frames - 1}")
        # the page asks for a frame's three images at once: one renders, the others wait
        with self._render_lock:
            with self._lock:
                hit = self._pngs.get(row)
                if hit is not None:
                    self._pngs.move_to_end(row)
                    return hit
            return self._render(row)

    def _render(self, row: int) -> dict[str, bytes]:
        from hpcdiff.background import cnn_images

        frames, energy = self.read(row, row + 1)
        pre = self.preprocess
        pixmap = pre.pixmap
        raw = pixmap.assemble(frames[0], fill=np.nan)
        valid_raw = raw[np.isfinite(raw)]
        lo, hi = np.percentile(valid_raw, [0.5, 99.8]) if valid_raw.size else (0.0, 1.0)
        res = pre.residual(frames, photon_energy_ev=energy)
        cnn = cnn_images(
            res.normalised, pixmap=pre.pixmap, valid=res.valid,
            size=pre.cfg.image_size_px, limit=pre.limit,
        )  # fmt: skip
        view = pixmap.assemble(
            np.where(res.valid[0], res.normalised[0], 0.0).astype(np.float32), fill=np.nan
        )
        view = reduce_to(view, MAX_VIEW_PX)
        limit = float(pre.limit)
        out = {
            "raw": png_gray(
                to_uint8(
                    _sqrt_stretch(reduce_to(raw, MAX_VIEW_PX), float(lo), float(hi)), lo=0.0, hi=1.0
                )
            ),
            "cnn": png_gray(to_uint8(np.asarray(cnn)[0, 0], lo=0.0, hi=1.0, fill=128)),
            "view": png_gray(to_uint8(view, lo=-limit, hi=limit, fill=128)),
        }
        with self._lock:
            self._pngs[row] = out
            while len(self._pngs) > 16:
                self._pngs.popitem(last=False)
        return out

    # ------------------------------------------------------------------ features
    def feature_computer(self) -> Callable[[np.ndarray], np.ndarray]:
        """``compute(rows) -> (m, d)`` float32 features of the job's layer (loads weights)."""
        from hpcdiff.features import FeatureExtractor
        from hpcdiff.features.extractor import resolve_device

        fc = self.job.features
        extractor = FeatureExtractor(
            fc.weights,
            layer=fc.layer,
            device=resolve_device(fc.device),
            bf16=fc.bf16,
            bf16_cpu=fc.bf16_cpu,
            channels_last=fc.channels_last,
            batch_size=fc.batch_size,
        )
        pre = self._preprocessor()  # its own: this runs in the feature thread

        def compute(rows: np.ndarray) -> np.ndarray:
            rows = np.asarray(rows, dtype=np.int64)
            parts = []
            for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):
                frames, energy = self.read(int(run[0]), int(run[-1]) + 1)
                parts.append(extractor.extract(pre(frames, photon_energy_ev=energy)))
            return np.concatenate(parts).astype(np.float32, copy=False)

        self.weights_info = extractor.weights_info
        return compute

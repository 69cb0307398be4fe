"""The Fourier job's per-frame path: which frames, one frame chain, scaled values, the merge.

One frame chain
    Every frame goes through the classify job's chain (:class:`hpcdiff.preprocess.Preprocessor`
    built from the same ``[corrections]``, ``[background]`` and ``[experiment]`` sections, the
    same :class:`hpcdiff.geometry.DetectorModel` at frame 0's camera length and photon energy,
    and the same bad pixels judged over the run's first ``bad_pixel_frames`` frames): pedestal
    and gain, photons, common mode, background removal, Bragg-peak pixel mask, normalisation.
    Its :class:`~hpcdiff.preprocess.PreprocessResult` gives the pixels (``valid``) and the
    residual (photons) the merge uses, so both jobs see the same pixels and the same residual.

Merge inputs (:class:`FrameChain.merge_values`)
    ``residual / (polarisation x solid angle) / shot``: per pixel, the polarisation factor
    (``[corrections] polarisation_degree``) and solid angle (sr) at the frame's own camera
    length; per frame (``scale_shot``, off by default), the shot intensity ``shot`` = mean
    corrected counts per (polarisation x sr) over the valid pixels (Bragg peaks masked), so
    frames of different pulse energy merge on one scale.  Pixels within ``bragg_radius_hkl`` of an integer ``hkl`` of the frame's
    crystal are left out as well, and those within ``bragg_radius_per_nm`` (``|q|``) of a
    lattice point near the frame's Ewald sphere (``bragg_excitation_per_nm``): the Bragg
    tails (:meth:`hpcdiff.merge.PixelDirections.voxels`).

Scale refinement (:func:`refine_scales`, :mod:`hpcdiff.merge_scale`)
    In the spirit of mdx2's scaling: each frame's scale ``g`` in ``v ~ g M`` is fitted
    against the smoothed map ``M`` of the *other* half of the frames (no own noise in the
    reference), with a jackknife error over blocks of pixels (:func:`~hpcdiff.merge_scale.fit_scale`).
    When the scales can be told from noise, frames whose scale is confidently below
    ``scale_min`` of the typical scale are left out; uncertain frames are kept
    (:func:`~hpcdiff.merge_scale.decide_scales`); the kept frames are merged again,
    unscaled (``scale_model = "select"``) or as ``v / g`` with ``g`` shrunk towards the
    typical scale (``"shrunk"``).  A pass is two map steps: the fit, then the merge
    (skipped when the decision keeps every frame with scale 1).

Pixel weights (``[fourier] merge_weights``)
    ``"inverse-variance"`` (default): each pixel enters its voxel's mean with weight
    ``1 / noise_var`` (:func:`pixel_weights`; the photon model ``max(B, 0) +
    read_noise_photons^2`` times the frame's measured noise ratio,
    :func:`hpcdiff.noise_model.noise_ratio`, so frames in ADU or already scaled weigh
    right; floored), ``g^2 / noise_var`` as ``v / g`` in a scale pass, so each voxel's
    mean is the weighted mean ``sum(w v) / sum(w)`` (a weighted
    :class:`~hpcdiff.merge.MergeAccumulator`); ``"none"``: the plain mean.

Frame choice (:func:`plan_frames`)
    ``[fourier] frames``: ``"all"`` oriented frames, ``"labelled-diffuse"`` (``[experiment]
    labels``) or ``"predicted-diffuse"`` (the classify job's ``predictions.h5``).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np

from hpcdiff.config import BackgroundConfig, CorrectionsConfig, ExperimentConfig, JobConfig
from hpcdiff.errors import ConfigError, FormatError
from hpcdiff.geometry import photon_energy_to_wavelength_m
from hpcdiff.merge import (
    FrameVoxels,
    MergeAccumulator,
    PixelDirections,
    bin_frame,
    frame_half,
)

if TYPE_CHECKING:
    from hpcdiff.geometry import DetectorModel
    from hpcdiff.io.sources.base import FrameReaderSource
    from hpcdiff.merge_scale import HalfReference, ScaleDecision, ScaleModel
    from hpcdiff.merge_sparse import SparseAccumulator
    from hpcdiff.pipelines.fourier import FourierSettings
    from hpcdiff.preprocess import Preprocessor, PreprocessResult

FrameChoice = Literal["all", "labelled-diffuse", "predicted-diffuse"]

log = logging.getLogger("hpcdiff.fourier")

# --------------------------------------------------------------------------- settings


def default_scale_passes(frames: str) -> int:
    """``[fourier] scale_passes`` when unset: 1 whatever the frame choice (the pass keeps
    frames whose scale it cannot tell from noise, :mod:`hpcdiff.merge_scale`; it left out
    weakly diffuse frames of chosen-diffuse merges before, when it fitted against the
    frame's own noisy map)."""
    del frames
    return 1


@dataclass(frozen=True)
class ChainSettings:
    """What a worker needs to run the frame chain and scale the merge inputs (picklable).

    Attributes
    ----------
    background, corrections, experiment
        The job's ``[background]``, ``[corrections]`` and ``[experiment]`` sections (the
        classify job's; pedestal and gain maps are read from ``experiment`` on the worker).
    correct_polarisation, correct_solid_angle
        Divide each pixel by its polarisation factor / solid angle (sr).
    scale_shot
        Divide each frame by its shot intensity.
    scale_passes
        Passes of per-frame scale refinement against the merged map.
    scale_min
        Frames whose refined scale plus its error is below this fraction of the typical
        scale are left out of the refined merge (:func:`hpcdiff.merge_scale.decide_scales`).
    scale_model
        ``"select"``: kept frames merge unscaled; ``"shrunk"``: as ``v / g`` with their
        scale shrunk towards the typical one by its error.
    merge_weights
        ``"inverse-variance"``: each pixel enters its voxel's mean with weight
        ``g^2 / noise_var`` (:func:`pixel_weights`; ``g`` the frame's refined scale, 1
        before refinement); ``"none"``: every pixel weighs the same.
    """

    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    corrections: CorrectionsConfig = field(default_factory=CorrectionsConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    correct_polarisation: bool = True
    correct_solid_angle: bool = True
    scale_shot: bool = False
    scale_passes: int = 1
    scale_min: float = 0.5
    scale_model: ScaleModel = "select"
    merge_weights: Literal["inverse-variance", "none"] = "inverse-variance"

    @property
    def weighted(self) -> bool:
        """Whether the merge weighs pixels (``merge_weights`` is not ``"none"``)."""
        return self.merge_weights != "none"

    @classmethod
    def from_job(cls, job: JobConfig) -> ChainSettings:
        """The chain of ``job``: its ``[background]``, ``[corrections]``, ``[experiment]`` and
        the ``[fourier]`` scale keys."""
        f = job.fourier
        return cls(
            background=job.background,
            corrections=job.corrections,
            experiment=job.experiment,
            correct_polarisation=f.correct_polarisation,
            correct_solid_angle=f.correct_solid_angle,
            scale_shot=f.scale_shot,
            scale_passes=default_scale_passes(f.frames)
            if f.scale_passes is None
            else f.scale_passes,
            scale_min=f.scale_min,
            scale_model=f.scale_model,
            merge_weights=f.merge_weights,
        )


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class FramePlan:
    """The frames the job merges: oriented frames, chosen by ``[fourier] frames``.

    Attributes
    ----------
    files
        The run's frame files (global frame numbers run through them in order).
    data_path
        Frame dataset override (None: from the geometry).
    geometry
        :class:`~hpcdiff.io.geom.DetectorGeometry`.
    numbers
        ``(n,)`` int64 global frame numbers of the chosen frames, increasing.
    frame_ids
        Their :class:`~hpcdiff.io.cxi.FrameId`.
    orientations
        ``(n, 3, 3)`` float64 rows ``astar, bstar, cstar`` (nm^-1, lab frame).
    photon_energy_ev
        ``(n,)`` float64 from the stream; NaN where the stream has none (then from the
        frame file or the geometry).
    labels
        ``(n,)`` int8 diffuse 0/1, or None without a labels file.
    n_frames_total, n_multi_crystal
        Frames in the run; chunks with more than one crystal (the first is used).
    model_clen_m, model_photon_energy_ev
        Camera length (m) and photon energy (eV) of the chain's detector model: frame 0's
        values, as the classify job (NaN: the geometry's).
    bad_pixel_mask
        ``(n_ss, n_fs)`` bool bad pixels judged over the run's first frames (the classify
        job's), or None.
    frames, n_oriented
        The ``[fourier] frames`` choice and how many oriented frames it chose from.
    det_shift_m
        ``(n, 2)`` float64 per-frame detector shift (x, y, metres, lab frame): each
        crystal's stream ``det_shift`` (0 where none), or None.
    model_shift_m
        The chain's top-level detector shift ``(x, y)``, metres (the geometry's
        ``detector_shift_x/y``, frame 0's value where it names a dataset).
    profile_radius_nm_inv
        ``(n,)`` float64 each crystal's stream ``profile_radius`` (nm^-1; NaN where none),
        or None.
    source_kind, detector
        The frame source that reads :attr:`files` (``"cxi"``, ``"nxmx"``, ``"euxfel"``,
        ``"psana2"``; never ``"auto"``) and its detector name: what each dask worker needs
        to reopen it (:func:`open_plan_source`).
    """

    files: tuple[str, ...]
    data_path: str | None
    geometry: Any
    numbers: np.ndarray
    frame_ids: tuple[Any, ...]
    orientations: np.ndarray
    photon_energy_ev: np.ndarray
    labels: np.ndarray | None
    n_frames_total: int
    n_multi_crystal: int = 0
    model_clen_m: float = float("nan")
    model_photon_energy_ev: float = float("nan")
    bad_pixel_mask: np.ndarray | None = None
    frames: FrameChoice = "all"
    n_oriented: int = 0
    det_shift_m: np.ndarray | None = None
    model_shift_m: tuple[float, float] = (0.0, 0.0)
    source_kind: str = "cxi"
    detector: str | None = None
    profile_radius_nm_inv: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.numbers.size)


def plan_frames(job: JobConfig) -> FramePlan:
    """Match the stream's oriented chunks to the run's frames and choose the frames to merge.

    The frames are read by the job's frame source (CXI, NXmx, European XFEL, psana2;
    the geometry is the job's or, for NXmx, the files' own).  A chunk matches the frame
    whose file (or run directory) has the same name (folders ignored: streams record the
    paths the indexer saw) and whose index is the chunk's event (``//N``; 0 without an
    event; European XFEL: ``//train_id * 10000 + pulse``), see
    :mod:`hpcdiff.io.sources.stream_match`; a chunk naming a frame of the run's files that
    the run does not have is an error.  Of those, ``[fourier] frames`` chooses: all, those labelled
    diffuse, or those predicted diffuse.  The bad pixels are judged as the classify job
    judges them.

    Raises
    ------
    ConfigError
        When the job names no frames, geometry or stream, or the choice needs a labels or
        predictions file the job lacks.
    FormatError
        When the stream orients no frame of the run, or a labels / predictions file does not
        cover the oriented frames.
    """
    from hpcdiff.corrections import read_pedestal_and_gain
    from hpcdiff.io.geom import read_geom
    from hpcdiff.io.sources import open_job_source
    from hpcdiff.io.sources.stream_match import FrameMatcher
    from hpcdiff.io.stream import read_stream
    from hpcdiff.pipelines.classify import _bad_pixels, detector_model

    exp = job.experiment
    src = job.source or "<job>"
    if exp.stream is None:
        raise ConfigError(f"{src}: [experiment.stream] is needed by the Fourier job (orientations)")
    files = [str(f) for f in job.frame_files()]
    if not files:
        raise ConfigError(f"{src}: [experiment.frames] names no frame file")
    with open_job_source(
        job, files, geometry=None if exp.geometry is None else read_geom(exp.geometry)
    ) as source:
        geom = source.geometry  # the job's, or the frames' own (NXmx)
        if geom is None:
            raise ConfigError(
                f"{src}: [experiment.geometry] is needed by the Fourier job (the frames "
                "carry no geometry of their own)"
            )
        kind = getattr(source, "kind", "cxi")
        frame_ids = list(source.frame_ids)
        values0 = source.frame_values(0, 1)
        model = detector_model(
            geom,
            values0,
            frame_file=files[0],
            polarisation_degree=job.corrections.polarisation_degree,
        )
        pedestal, gain = read_pedestal_and_gain(exp, shape=source.slab_shape)
        bad = _bad_pixels(job, source, model, pedestal, gain)
    matcher = FrameMatcher(frame_ids, kind=kind)
    stream = read_stream(exp.stream)
    found: dict[int, tuple[np.ndarray, float]] = {}
    shifts: dict[int, tuple[float, float]] = {}
    radii: dict[int, float] = {}
    n_multi = 0
    for chunk in stream.chunks:
        if not chunk.crystals:
            continue
        number = matcher.number(
            chunk.image_filename, chunk.frame_index, stream=str(exp.stream), line=chunk.line
        )
        if number is None:  # another run's frame
            continue
        n_multi += len(chunk.crystals) > 1
        energy = chunk.photon_energy_ev if chunk.photon_energy_ev is not None else np.nan
        found.setdefault(number, (chunk.crystals[0].reciprocal_matrix, float(energy)))
        shifts.setdefault(number, chunk.crystals[0].det_shift_mm or (0.0, 0.0))
        radius = chunk.crystals[0].profile_radius_nm_inv
        radii.setdefault(number, np.nan if radius is None else float(radius))
    if not found:
        raise FormatError(
            exp.stream,
            f"no chunk with a crystal matches a frame of the run ({len(files)} file(s), e.g. "
            f"{Path(files[0]).name}); chunks name files {stream.chunks[0].image_filename!r}..."
            if stream.chunks
            else "the stream has no chunks",
        )
    numbers = np.array(sorted(found), dtype=np.int64)
    ids = [frame_ids[i] for i in numbers]
    labels = _labels(job, ids)
    choice: FrameChoice = job.fourier.frames
    keep = np.ones(numbers.size, bool)
    if choice == "labelled-diffuse":
        keep = _labelled_diffuse(job, ids)
    elif choice == "predicted-diffuse":
        keep = _predicted_diffuse(job, ids)
    log.info("fourier: %s chose %d of %d oriented frames", choice, int(keep.sum()), keep.size)
    numbers = numbers[keep]
    orientations = np.stack([found[i][0] for i in numbers]) if numbers.size else np.zeros((0, 3, 3))
    energies = np.array([found[i][1] for i in numbers], dtype=np.float64)
    return FramePlan(
        files=tuple(files),
        data_path=exp.data_path,
        geometry=geom,
        numbers=numbers,
        frame_ids=tuple(frame_ids[i] for i in numbers),
        orientations=orientations,
        photon_energy_ev=energies,
        labels=None if labels is None else labels[keep],
        n_frames_total=len(frame_ids),
        n_multi_crystal=int(n_multi),
        model_clen_m=model.clen_m,
        model_photon_energy_ev=model.photon_energy_ev,
        bad_pixel_mask=bad,
        frames=choice,
        n_oriented=int(keep.size),
        det_shift_m=np.array([shifts[i] for i in numbers], dtype=np.float64).reshape(-1, 2) * 1e-3,
        model_shift_m=(float(model.shift_m[0]), float(model.shift_m[1])),
        source_kind=kind,
        detector=exp.detector,
        profile_radius_nm_inv=np.array([radii[i] for i in numbers], dtype=np.float64),
    )


def open_plan_source(plan: FramePlan) -> FrameReaderSource:
    """Open the plan's frames again (in a dask worker) with the source that planned them."""
    from hpcdiff.io.sources import open_source

    return open_source(
        plan.files,
        kind=plan.source_kind,
        geometry=plan.geometry,
        data_path=plan.data_path,
        detector=plan.detector,
    )


def _labels(job: JobConfig, ids: Sequence[Any]) -> np.ndarray | None:
    """``(n,)`` int8 labels of the oriented frames (None: no labels file, or not all covered)."""
    exp = job.experiment
    if exp.labels is None:
        return None
    from hpcdiff.io.labels import read_labels

    all_labels = read_labels(exp.labels, class_names=exp.class_names or None)
    try:
        return all_labels.lookup(list(ids)).diffuse.astype(np.int8)
    except KeyError as exc:  # labels of some frames only: no label colours or AUCs
        log.warning(
            "labels cover only some merged frames (%s); diffusion maps without labels",
            exc.args[0] if exc.args else exc,
        )
        return None


def _labelled_diffuse(job: JobConfig, ids: Sequence[Any]) -> np.ndarray:
    """``(n,)`` bool: oriented frames the labels mark diffuse (unlabelled frames: False)."""
    from hpcdiff.io.labels import describe_spec, read_labels

    exp = job.experiment
    if exp.labels is None:
        raise ConfigError(
            f"{job.source or '<job>'}: [fourier] frames = 'labelled-diffuse' needs "
            "[experiment] labels (a labels file naming the diffuse frames)"
        )
    labels = read_labels(exp.labels, class_names=exp.class_names or None)
    return _diffuse_of(labels, ids, what=f"labels {describe_spec(exp.labels)}")


def _predicted_diffuse(job: JobConfig, ids: Sequence[Any]) -> np.ndarray:
    """``(n,)`` bool: oriented frames the classify job predicted diffuse (class != 0)."""
    from hpcdiff.io.labels import Labels
    from hpcdiff.io.predictions import read_predictions
    from hpcdiff.pipelines.layout import ClassifyLayout

    path = job.fourier.predictions or ClassifyLayout.from_job(job).predictions
    if not Path(path).is_file():
        raise ConfigError(
            f"{job.source or '<job>'}: [fourier] frames = 'predicted-diffuse' reads the classify "
            f"job's predictions, but {path} does not exist; run `hpcdiff classify` (or `hpcdiff "
            "predict`) first, or name the file in [fourier] predictions"
        )
    pred = read_predictions(path)
    diffuse = (pred.labels != 0).astype(np.int8)
    as_labels = Labels.from_frame_ids(
        pred.frame_ids,
        diffuse=diffuse,
        diffuse_strength=pred.diffuse_score,
        diffuse_class=np.minimum(pred.labels, 1),
    )
    return _diffuse_of(as_labels, ids, what=f"predictions {path}", path=path)


def _diffuse_of(labels: Any, ids: Sequence[Any], *, what: str, path: Any = None) -> np.ndarray:
    """``(n,)`` bool: frames ``ids`` that ``labels`` (a :class:`~hpcdiff.io.labels.Labels`)
    mark diffuse; frames it does not name are False (with a warning)."""
    pos = labels.match_run(list(ids))  # each labels row's position in ids, -1: not a run frame
    named = pos >= 0
    if not named.any():
        raise FormatError(
            path or what,
            f"the {what} name none of the {len(ids)} oriented frames "
            f"(e.g. {ids[0].file} //{ids[0].index})",
        )
    out = np.zeros(len(ids), bool)
    out[pos[named]] = np.asarray(labels.diffuse)[named] != 0
    n_covered = int(np.unique(pos[named]).size)
    if n_covered < len(ids):
        log.warning(
            "fourier: %s cover %d of %d oriented frames; the others are left out",
            what,
            n_covered,
            len(ids),
        )
    return out


# --------------------------------------------------------------------------- the frame chain


@dataclass
class MergeValues:
    """One frame's merge inputs.

    Attributes
    ----------
    values
        ``(n_ss, n_fs)`` float32 residual per (polarisation x sr) over the shot intensity;
        NaN where not valid.
    valid
        ``(n_ss, n_fs)`` bool pixels the chain kept.
    pixels
        The chain's valid pixels as scattering directions (:class:`~hpcdiff.merge.PixelDirections`,
        cached per camera length; built for this frame when it has a detector shift).
    wavelength_nm
        The frame's wavelength, nm (``q = direction / wavelength_nm``).
    normalised
        ``(n_ss, n_fs)`` float32 the chain's normalised residual (image similarity).
    shot
        The frame's shot intensity: mean corrected counts per (polarisation x sr) over the
        valid pixels; 1 when ``scale_shot`` is off, NaN when not > 0 (not merged).
    noise_var
        ``(n_ss, n_fs)`` float32 each value's expected noise variance, in the unit of
        ``values`` squared: Poisson and read noise ``max(B, 0) + read_noise_photons^2``
        (photons; ``B`` the background) times ``noise_ratio`` over ``(divisor * shot)^2``;
        NaN where not valid.
    noise_ratio
        The frame's observed noise variance over the photon model's
        (:func:`hpcdiff.noise_model.noise_ratio`; about 1 for photons, NaN: not measured).
    """

    values: np.ndarray
    valid: np.ndarray
    pixels: PixelDirections
    wavelength_nm: float
    normalised: np.ndarray
    shot: float
    noise_var: np.ndarray | None = None
    noise_ratio: float = float("nan")


class FrameChain:
    """The classify job's per-frame chain and the merge's per-pixel factors, for one run.

    Parameters
    ----------
    model
        :class:`~hpcdiff.geometry.DetectorModel` of the chain (frame 0's camera length and
        energy, ``[corrections] polarisation_degree``).
    settings
        The chain settings.
    bad_pixel_mask, pedestal, gain
        ``(n_ss, n_fs)`` maps for :class:`~hpcdiff.preprocess.Preprocessor`, or None.
    max_models
        Camera lengths whose per-pixel arrays are kept (least recently used dropped).
    """

    def __init__(
        self,
        model: DetectorModel,
        settings: ChainSettings,
        *,
        bad_pixel_mask: np.ndarray | None = None,
        pedestal: np.ndarray | None = None,
        gain: np.ndarray | None = None,
        max_models: int = 8,
    ) -> None:
        from hpcdiff.preprocess import Preprocessor

        self.model = model
        self.settings = settings
        self.preprocessor: Preprocessor = Preprocessor(
            model,
            settings.background,
            settings.corrections,
            bad_pixel_mask=bad_pixel_mask,
            pedestal=pedestal,
            gain=gain,
        )
        self.max_models = max_models
        self._models: OrderedDict[float, tuple[DetectorModel, np.ndarray]] = OrderedDict()
        self._pixels: dict[float, PixelDirections] = {}

    @classmethod
    def for_plan(cls, plan: FramePlan, settings: ChainSettings) -> FrameChain:
        """The chain of a plan: its detector model, bad pixels and the job's pedestal/gain."""
        from hpcdiff.corrections import read_pedestal_and_gain
        from hpcdiff.geometry import DetectorModel

        geom = plan.geometry
        model = DetectorModel.build(
            geom,
            clen_m=None if not np.isfinite(plan.model_clen_m) else plan.model_clen_m,
            photon_energy_ev=None
            if not np.isfinite(plan.model_photon_energy_ev)
            else plan.model_photon_energy_ev,
            polarisation_degree=settings.corrections.polarisation_degree,
            shift_m=plan.model_shift_m,
            frame_file=plan.files[0] if plan.files else None,
        )
        pedestal, gain = read_pedestal_and_gain(settings.experiment, shape=geom.slab_shape)
        return cls(
            model, settings, bad_pixel_mask=plan.bad_pixel_mask, pedestal=pedestal, gain=gain
        )

    @property
    def valid(self) -> np.ndarray:
        """``(n_ss, n_fs)`` bool pixels the chain can use (geometry's valid minus bad pixels)."""
        return self.preprocessor.valid

    def detector(self, clen_m: float) -> tuple[DetectorModel, np.ndarray]:
        """The detector model at ``clen_m`` (m) and its ``(n_ss, n_fs)`` float64 per-pixel
        divisor (polarisation x solid angle, as configured; NaN off-panel)."""
        from hpcdiff.geometry import DetectorModel

        key = round(float(clen_m), 7)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        m = self.model
        model = (
            m
            if key == round(m.clen_m, 7)
            else DetectorModel.build(
                m.geom,
                clen_m=float(clen_m),
                photon_energy_ev=m.photon_energy_ev,
                polarisation_degree=m.polarisation_degree,
                shift_m=m.shift_m,
                frame_file=m.frame_file,
            )
        )
        divisor = np.ones(model.slab_shape, np.float64)
        if self.settings.correct_polarisation:
            divisor = divisor * model.polarisation
        if self.settings.correct_solid_angle:
            divisor = divisor * model.solid_angle_sr
        self._models[key] = (model, divisor)
        if len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return model, divisor

    def residual(self, frames: np.ndarray, *, photon_energy_ev: Any) -> PreprocessResult:
        """The classify job's :meth:`~hpcdiff.preprocess.Preprocessor.residual` of raw frames."""
        return self.preprocessor.residual(frames, photon_energy_ev=photon_energy_ev)

    def _noise_var(
        self, res: PreprocessResult, valid: np.ndarray, unit: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """``(n_ss, n_fs)`` float64 noise variance of each merge value (``residual / unit``)
        and the frame's noise ratio ``k``.

        The photon model ``max(B, 0) + read_noise_photons^2`` (``B`` the background, in the
        unit of the chain's ``corrected``), times ``k``, the ratio of the frame's observed
        noise variance to that model (:func:`hpcdiff.noise_model.noise_ratio`, from
        neighbouring pixels' differences; the gain for ADU taken as photons), when ``k``
        lies outside :data:`~hpcdiff.noise_model.PHOTON_BAND` (the frame is evidently not
        photons).  Within the band the photon model stands: there ``k`` above 1 is mostly
        diffuse scattering that varies from pixel to pixel (not noise, and not removed by
        a model of the expected counts either), which would weigh the most diffuse frames
        down (measured: whole-map truth CC 0.560 instead of 0.592 on A, all frames).  The
        strongest frames of randomised experiments reach ``k`` 2.1-3.6 and are weighed
        down all the same.  ``k`` is NaN when it cannot be measured (the model stands).
        """
        from hpcdiff.noise_model import PHOTON_BAND, noise_ratio

        rn2 = self.settings.background.read_noise_photons**2
        bg = np.asarray(res.background[0], np.float64)
        model = np.maximum(bg, 0.0) + rn2
        k = noise_ratio(
            np.asarray(res.residual[0]),
            model_var=model,
            valid=valid,
            panel_index=self.preprocessor.panel_index,
            rings=self.preprocessor.ring_index,
        )
        if np.isfinite(k) and not (PHOTON_BAND[0] <= k <= PHOTON_BAND[1]):
            model = model * k  # not photons: the measured unit of the noise
        with np.errstate(invalid="ignore", divide="ignore"):
            return model / unit**2, k

    def merge_values(
        self,
        frame: np.ndarray,
        *,
        photon_energy_ev: float,
        clen_m: float,
        det_shift_m: tuple[float, float] | np.ndarray | None = None,
    ) -> MergeValues:
        """One raw frame's merge inputs (see the module docstring).

        Parameters
        ----------
        frame
            ``(n_ss, n_fs)`` raw frame, ADU.
        photon_energy_ev
            The frame's photon energy, eV.
        clen_m
            The frame's camera length, m (without coffset).
        det_shift_m
            The frame's detector shift ``(dx, dy)`` in metres, lab frame (CrystFEL stream
            ``det_shift_x_mm`` / ``det_shift_y_mm`` divided by 1000), or None.

        Returns
        -------
        MergeValues
        """

        res = self.residual(frame[None], photon_energy_ev=np.full(1, photon_energy_ev))
        valid = np.asarray(res.valid[0], bool)
        model, divisor = self.detector(clen_m)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = (np.asarray(res.residual[0], np.float64) / divisor).astype(np.float32)
            shot = 1.0
            if self.settings.scale_shot:
                per_sr = np.asarray(res.corrected[0], np.float64) / divisor
                ok = valid & np.isfinite(per_sr)
                shot = float(np.mean(per_sr[ok])) if ok.any() else float("nan")
                if not (np.isfinite(shot) and shot > 0):
                    shot = float("nan")  # no scattering: the frame carries nothing usable
                values = values / np.float32(shot)
            var, ratio = self._noise_var(res, valid, divisor * (shot if np.isfinite(shot) else 1.0))
        valid = valid & np.isfinite(values)
        values = np.where(valid, values, np.float32(np.nan))
        noise_var = np.where(valid, var, np.nan).astype(np.float32)
        pixels = self.pixels(clen_m, det_shift_m=det_shift_m)
        wavelength_nm = photon_energy_to_wavelength_m(photon_energy_ev) * 1e9
        normalised = np.asarray(res.normalised[0], np.float32)
        return MergeValues(values, valid, pixels, wavelength_nm, normalised, shot, noise_var, ratio)

    def pixels(
        self, clen_m: float, *, det_shift_m: tuple[float, float] | np.ndarray | None = None
    ) -> PixelDirections:
        """The valid pixels' scattering directions ``k_out - k_in`` (``|k| = 1``) at ``clen_m``
        (cached), or with the detector moved by ``det_shift_m`` ``(dx, dy)`` metres (lab
        frame; not cached)."""
        key = round(float(clen_m), 7)
        if det_shift_m is None and key in self._pixels:
            return self._pixels[key]
        model, _ = self.detector(clen_m)
        pos = model.positions_m
        if det_shift_m is not None:
            dx, dy = (float(v) for v in np.asarray(det_shift_m, np.float64).reshape(2))
            pos = pos + np.array([dx, dy, 0.0])
        with np.errstate(invalid="ignore"):
            unit = pos / np.linalg.norm(pos, axis=-1, keepdims=True)
        unit[..., 2] -= 1.0
        out = PixelDirections.build(unit, self.valid)
        if det_shift_m is None:
            if len(self._pixels) >= self.max_models:
                self._pixels.pop(next(iter(self._pixels)))
            self._pixels[key] = out
        return out


# --------------------------------------------------------------------------- per-frame work


@dataclass
class ChunkFrames:
    """What one task returns besides its accumulator.

    Attributes
    ----------
    numbers
        ``(k,)`` global frame numbers.
    similarity_frames
        ``k`` frames binned on the similarity grid (empty in a scale pass).
    images
        ``(k, h, w)`` float32 normalised residuals, downsampled (``(0, 0, 0)`` in a scale pass).
    seconds
        Wall time of the task.
    shot
        ``(k,)`` float64 shot intensity of each frame (NaN: no background, not merged).
    scale
        ``(k,)`` float64 refined scale of each frame (1 without a reference map; NaN: no
        overlap with it).
    merged
        ``(k,)`` bool whether the frame went into the accumulator.
    scale_error
        ``(k,)`` float64 standard error of ``scale`` (0 without a reference map).
    noise_ratio
        ``(k,)`` float64 each frame's observed noise variance over the photon model's
        (:func:`hpcdiff.noise_model.noise_ratio`; NaN: not measured).
    """

    numbers: np.ndarray
    similarity_frames: list[FrameVoxels]
    images: np.ndarray
    seconds: float = 0.0
    shot: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale: np.ndarray = field(default_factory=lambda: np.zeros(0))
    merged: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    scale_error: np.ndarray = field(default_factory=lambda: np.zeros(0))
    noise_ratio: np.ndarray = field(default_factory=lambda: np.zeros(0))


#: Pixel noise variances are floored at this fraction of the frame's median (a pixel with no
#: background and no read noise would otherwise get an infinite weight).
VAR_FLOOR_FRACTION = 0.01


def pixel_weights(var: np.ndarray) -> np.ndarray:
    """Inverse-variance weights ``1 / max(var, f * median(var))`` of a frame's pixels
    (``f`` = :data:`VAR_FLOOR_FRACTION`, the median over the finite positive variances).

    Parameters
    ----------
    var
        ``(n,)`` float noise variance per pixel (NaN: not merged).

    Returns
    -------
    np.ndarray
        ``(n,)`` float64 weights; 0 where ``var`` is not finite.
    """
    v = np.asarray(var, np.float64)
    ok = np.isfinite(v) & (v > 0)
    if not ok.any():
        return np.where(np.isfinite(v), 1.0, 0.0)  # no noise model: equal weights
    floor = VAR_FLOOR_FRACTION * float(np.median(v[ok]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(v), 1.0 / np.maximum(v, floor), 0.0)


def pixels_with_noise(
    mv: MergeValues, orientation: np.ndarray, *, settings: FourierSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame's ``(n,)`` pixel values, noise variances (both NaN where either is not
    finite) and merge-grid voxels (-1: outside or Bragg)."""
    px = mv.pixels
    vals = px.values(mv.values)
    var = px.values(mv.noise_var) if mv.noise_var is not None else np.zeros_like(vals)
    both = np.isfinite(vals) & np.isfinite(var)
    vals = np.where(both, vals, np.nan)
    var = np.where(both, var, np.nan)
    (vox,) = px.voxels(
        orientation,
        wavelength_nm=mv.wavelength_nm,
        grids=(settings.grid,),
        bragg_radius_hkl=settings.bragg_radius_hkl,
        bragg_radius_per_nm=settings.bragg_radius_per_nm,
        bragg_excitation_per_nm=settings.bragg_excitation_per_nm,
    )
    return vals, var, vox


def process_frames(
    frames: np.ndarray,
    orientations: np.ndarray,
    *,
    photon_energy_ev: np.ndarray,
    clen_m: np.ndarray,
    chain: FrameChain,
    settings: FourierSettings,
    numbers: np.ndarray | None = None,
    det_shift_m: np.ndarray | None = None,
    reference: HalfReference | None = None,
    scales: np.ndarray | None = None,
) -> tuple[MergeAccumulator, ChunkFrames]:
    """Merge a batch of raw frames and bin them for the similarities (array in, arrays out).

    Parameters
    ----------
    frames
        ``(k, n_ss, n_fs)`` raw slab frames, ADU.
    orientations
        ``(k, 3, 3)`` rows ``astar, bstar, cstar``, nm^-1 lab frame.
    photon_energy_ev, clen_m
        ``(k,)`` per-frame photon energy (eV) and camera length (m, without coffset).
    chain
        The frame chain (:class:`FrameChain`).
    settings
        Grids, Bragg radius, image downsampling, scale settings.
    numbers
        ``(k,)`` global frame numbers (default ``0..k-1``).
    det_shift_m
        ``(k, 2)`` per-frame detector shift (x, y) in metres, lab frame, or None.
    reference
        A scale pass's fit: each frame's scale and error against the other half's map
        (:func:`hpcdiff.merge_scale.fit_scale`) in ``ChunkFrames.scale`` /
        ``scale_error``; nothing is merged and no similarity frames or images are made.
    scales
        ``(k,)`` a scale pass's merge: each frame merged as ``v / g`` (weight ``g^2 /
        var``), left out where ``g`` is not > 0; no similarity frames or images.

    Returns
    -------
    (MergeAccumulator, ChunkFrames)
        The merge, with the half-map of the frames of half A
        (:func:`~hpcdiff.merge.frame_half` of ``numbers``) as its ``half_a``, and the
        frames binned for the similarities.
    """
    from hpcdiff.merge_scale import fit_scale
    from hpcdiff.similarity import downsample

    t0 = time.perf_counter()
    frames = np.asarray(frames)
    k = frames.shape[0]
    if orientations.shape != (k, 3, 3):
        raise ValueError(f"orientations {orientations.shape} do not match {k} frames")
    if det_shift_m is not None and np.shape(det_shift_m) != (k, 2):
        raise ValueError(f"det_shift_m {np.shape(det_shift_m)} is not ({k}, 2)")
    if reference is not None and scales is not None:
        raise ValueError("a scale pass fits (reference) or merges (scales), not both")
    if scales is not None and np.shape(scales) != (k,):
        raise ValueError(f"scales {np.shape(scales)} is not ({k},)")
    valid = chain.valid
    if frames.shape[1:] != valid.shape:
        raise ValueError(f"frames {frames.shape[1:]} do not match the detector slab {valid.shape}")
    weighted = chain.settings.weighted
    first = reference is None and scales is None
    nums = np.arange(k) if numbers is None else np.asarray(numbers)
    # half-maps: the frames of each half merged apart, summed at the end
    half_of = frame_half(nums)
    halves = (
        MergeAccumulator.empty(settings.grid, weighted=weighted),
        MergeAccumulator.empty(settings.grid, weighted=weighted),
    )
    sim_frames: list[FrameVoxels] = []
    normed = np.empty(frames.shape if first else (0, 0, 0), np.float32)
    shots, fitted, errors = np.ones(k), np.ones(k), np.zeros(k)
    ratios = np.full(k, np.nan)
    if scales is not None:
        fitted = np.asarray(scales, np.float64).copy()
    elif reference is not None:
        fitted, errors = np.full(k, np.nan), np.full(k, np.nan)
    merged = np.zeros(k, bool)
    for i in range(k):
        mv = chain.merge_values(
            frames[i],
            photon_energy_ev=float(photon_energy_ev[i]),
            clen_m=float(clen_m[i]),
            det_shift_m=None if det_shift_m is None else det_shift_m[i],
        )
        shots[i], ratios[i] = mv.shot, mv.noise_ratio
        acc = halves[int(half_of[i])]
        if first:
            vals = mv.pixels.values(mv.values)  # NaN where the chain left the pixel out
            merge_vox, sim_vox = mv.pixels.voxels(
                orientations[i],
                wavelength_nm=mv.wavelength_nm,
                grids=(settings.grid, settings.similarity_grid),
                bragg_radius_hkl=settings.bragg_radius_hkl,
                bragg_radius_per_nm=settings.bragg_radius_per_nm,
                bragg_excitation_per_nm=settings.bragg_excitation_per_nm,
            )
            sim_frames.append(bin_frame(vals, sim_vox))
            normed[i] = np.where(mv.valid, mv.normalised, np.nan)
            if np.isfinite(mv.shot):
                if weighted:
                    assert mv.noise_var is not None
                    w = pixel_weights(mv.pixels.values(mv.noise_var))
                    acc.add_voxels(merge_vox, vals, weights=np.where(np.isfinite(vals), w, 0.0))
                else:
                    acc.add_voxels(merge_vox, vals)
                merged[i] = True
            continue
        if not np.isfinite(mv.shot):
            continue
        pvals, pvar, pvox = pixels_with_noise(mv, orientations[i], settings=settings)
        if reference is not None:  # the fit: against the other half's map
            fitted[i], errors[i] = fit_scale(
                np.where(pvox >= 0, pvals, np.nan),
                reference=reference.at(pvox, half=int(half_of[i])),
                weights=pixel_weights(pvar),
            )
            continue
        g = float(fitted[i])
        if not g > 0:
            continue  # left out by the scale pass
        if weighted:  # v / g has noise variance var / g^2: weight g^2 / var
            acc.add_voxels(pvox, pvals / g, weights=pixel_weights(pvar) * g * g)
        else:
            acc.add_voxels(pvox, pvals / g)
        merged[i] = True
    images = (
        downsample(normed, settings.image_downsample) if first else np.zeros((0, 0, 0), np.float32)
    )
    acc = (halves[0] + halves[1]).with_half_a(halves[0])
    return acc, ChunkFrames(
        nums,
        sim_frames,
        images,
        time.perf_counter() - t0,
        shots,
        fitted,
        merged,
        errors,
        ratios,
    )


_CHAIN: list[tuple[FramePlan, ChainSettings, FrameChain]] = []  # this process's last chain


def chain_for(plan: FramePlan, settings: ChainSettings) -> FrameChain:
    """This process's :class:`FrameChain` of ``plan`` (built once per plan object)."""
    if not _CHAIN or _CHAIN[0][0] is not plan or _CHAIN[0][1] != settings:
        _CHAIN[:] = [(plan, settings, FrameChain.for_plan(plan, settings))]
    return _CHAIN[0][2]


def process_chunk(
    plan: FramePlan,
    rows: Sequence[int],
    settings: FourierSettings,
    *,
    reference: HalfReference | None = None,
    scales: np.ndarray | None = None,
) -> tuple[MergeAccumulator, ChunkFrames]:
    """Read and process the plan's frames ``rows`` (indices into ``plan.numbers``): one dask task.

    Reads the frames from their files (each worker opens them itself), takes each frame's
    photon energy from the stream (else the file, else the geometry) and camera length
    from the file (else the geometry), then :func:`process_frames` (``reference``: a scale
    pass's fit; ``scales``, ``(len(rows),)``: its merge).
    """
    from hpcdiff.geometry import detector_shift_m

    index = np.asarray(rows, dtype=np.int64)
    numbers = plan.numbers[index]
    chain = chain_for(plan, settings.chain)
    with open_plan_source(plan) as source:
        frames = np.stack([source.read(int(n), int(n) + 1)[0] for n in numbers])
        values = [source.frame_values(int(n), int(n) + 1) for n in numbers]
    masks = chain.model.pixel_masks  # mask files, flags, saturation: in the chain; per-frame
    if masks is not None and masks.frame_masks:  # mask datasets (Cheetah's per-event mask) here
        bad = masks.read_frame_bad([plan.frame_ids[j] for j in index])
        frames = frames.astype(np.float64 if frames.dtype == np.float64 else np.float32)
        frames[bad] = np.nan
    energies = plan.photon_energy_ev[index].copy()
    clens = np.empty(len(index))
    for j, v in enumerate(values):
        if not np.isfinite(energies[j]):
            energies[j] = _number(
                v, "photon_energy_ev", plan.geometry.photon_energy, "photon energy", plan
            )
        clens[j] = _number(v, "clen_m", plan.geometry.panels[0].clen, "camera length (clen)", plan)
    return process_frames(
        frames,
        plan.orientations[index],
        photon_energy_ev=energies,
        clen_m=clens,
        chain=chain,
        settings=settings,
        numbers=numbers,
        det_shift_m=_frame_shifts(plan, index, values, chain.model.shift_m, detector_shift_m),
        reference=reference,
        scales=None if scales is None else np.asarray(scales, np.float64),
    )


def _frame_shifts(
    plan: FramePlan,
    index: np.ndarray,
    values: Sequence[dict[str, np.ndarray]],
    model_shift_m: Any,
    detector_shift_m: Any,
) -> np.ndarray | None:
    """``(k, 2)`` metres each frame is shifted from the chain's model: its crystal's stream
    ``det_shift`` plus, where the geometry reads ``detector_shift_x/y`` per frame, the
    frame's value minus frame 0's (which the model holds); None when nothing moves."""
    shift = None if plan.det_shift_m is None else plan.det_shift_m[index].copy()
    if plan.geometry.has_frame_shift:
        own = np.stack([detector_shift_m(plan.geometry, v) for v in values]) - np.asarray(
            model_shift_m, np.float64
        )
        shift = own if shift is None else shift + own
    if shift is not None and not np.any(shift):
        return None
    return shift


def _number(
    values: dict[str, np.ndarray], key: str, fallback: Any, what: str, plan: FramePlan
) -> float:
    if key in values and np.isfinite(values[key][0]):
        return float(values[key][0])
    if isinstance(fallback, int | float):
        return float(fallback)
    raise FormatError(
        plan.geometry.source or "geometry",
        f"no {what} for the frames: neither the frame files nor the geometry give a number",
    )


def chunk_task(
    plan: FramePlan, start: int, stop: int, *, settings: FourierSettings
) -> tuple[MergeAccumulator, ChunkFrames]:
    """:func:`process_chunk` of the plan's frames ``start:stop`` (a block of
    :func:`~hpcdiff.parallel.dask_blocks.map_blocks`)."""
    return process_chunk(plan, range(start, stop), settings)


@dataclass(frozen=True)
class ScalePass:
    """What every task of a scale pass shares: the plan, and the reference (the fit) or the
    frames' scales in plan order (the merge).

    Attributes
    ----------
    plan
        The frames.
    reference
        The half-maps each frame is fitted against (:func:`~hpcdiff.merge_scale.half_reference`).
    scales
        ``(n,)`` the scale each frame is merged with (0: left out), or None (the fit).
    """

    plan: FramePlan
    reference: HalfReference | None = None
    scales: np.ndarray | None = None


def scale_task(
    shared: ScalePass, start: int, stop: int, *, settings: FourierSettings
) -> tuple[MergeAccumulator, ChunkFrames]:
    """A scale pass of the plan's frames ``start:stop`` (a block of
    :func:`~hpcdiff.parallel.dask_blocks.map_blocks`): the fit, or the merge."""
    return process_chunk(
        shared.plan,
        range(start, stop),
        settings,
        reference=shared.reference,
        scales=None if shared.scales is None else shared.scales[start:stop],
    )


def scale_merge_task(
    shared: ScalePass, start: int, stop: int, *, settings: FourierSettings
) -> tuple[MergeAccumulator | SparseAccumulator, None]:
    """The merge of a scale pass for the plan's frames ``start:stop``: the accumulator in
    the voxels the task touched (:func:`~hpcdiff.merge_sparse.compact`), nothing else."""
    from hpcdiff.merge_sparse import compact

    return compact(scale_task(shared, start, stop, settings=settings)[0]), None


def scale_fit_task(
    shared: ScalePass, start: int, stop: int, *, settings: FourierSettings
) -> ChunkFrames:
    """The fit of a scale pass for the plan's frames ``start:stop``: only the per-frame
    scales and errors come back (the fit merges nothing; an accumulator per task, 200^3
    voxels each, would pile up on the workers: at 10^4 frames 625 of them filled 67 GB of
    dask spill space)."""
    return scale_task(shared, start, stop, settings=settings)[1]


def _fitted(parts: Sequence[ChunkFrames]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.concatenate([p.scale for p in parts]),
        np.concatenate([p.scale_error for p in parts]),
    )


def _decide(fitted: np.ndarray, errors: np.ndarray, settings: FourierSettings) -> ScaleDecision:
    from hpcdiff.merge_scale import decide_scales

    chain = settings.chain
    return decide_scales(fitted, errors, scale_min=chain.scale_min, model=chain.scale_model)


def refine_scales(
    client: Any,
    plan: FramePlan,
    settings: FourierSettings,
    merged: MergeAccumulator,
    *,
    frames_per_task: int,
    wave_tasks: int = 32,
    log: IO[str] | None = None,
) -> tuple[MergeAccumulator | None, ScaleDecision]:
    """One scale pass on a dask cluster: each frame's scale against the other half's map
    (tasks of the fit, returning only the scales), the decision
    (:func:`~hpcdiff.merge_scale.decide_scales`), then the frames merged again with their
    scales in waves of ``wave_tasks`` tasks, as the first merge (each wave's accumulators
    folded on the workers as they finish, a few tasks in flight).

    Returns
    -------
    (MergeAccumulator or None, ScaleDecision)
        The new (unsymmetrised) accumulator, None when the decision changes nothing (every
        frame kept with scale 1: ``merged`` stands), and the decision in plan order.
    """
    from hpcdiff.merge_scale import half_reference
    from hpcdiff.merge_sparse import add_into
    from hpcdiff.parallel.dask_blocks import MappedBlocks, map_blocks
    from hpcdiff.pipelines.fourier import merge_into
    from hpcdiff.similarity import blocks

    chunks = blocks(len(plan), frames_per_task)
    fit: MappedBlocks[None] = map_blocks(
        client,
        scale_fit_task,
        ScalePass(plan, reference=half_reference(merged)),
        chunks,
        label="scale fit",
        log=log,
        settings=settings,
    )
    decision = _decide(*_fitted(fit.parts), settings)
    if decision.changes_nothing:
        return None, decision
    total: MergeAccumulator | None = None
    waves = [chunks[i : i + wave_tasks] for i in range(0, len(chunks), max(1, wave_tasks))]
    for w, wave in enumerate(waves):
        mapped = map_blocks(
            client,
            scale_merge_task,
            ScalePass(plan, scales=decision.scale),
            wave,
            reduce=merge_into,
            label=f"scale merge (wave {w + 1}/{len(waves)})",
            log=log,
            settings=settings,
        )
        assert mapped.reduced is not None
        # a wave of one task comes back compact: merge_into makes it dense
        total = merge_into(mapped.reduced) if total is None else add_into(total, mapped.reduced)
        del mapped
    return total, decision


def scale_pass(
    plan: FramePlan, rows: Sequence[int], settings: FourierSettings, merged: MergeAccumulator
) -> tuple[MergeAccumulator, ScaleDecision]:
    """:func:`refine_scales` of the plan's frames ``rows`` in this process (the same fit,
    decision and merge; ``merged`` the merge of ``rows``, returned when nothing changes)."""
    from hpcdiff.merge_scale import half_reference

    _, fit = process_chunk(plan, rows, settings, reference=half_reference(merged))
    decision = _decide(fit.scale, fit.scale_error, settings)
    if decision.changes_nothing:
        return merged, decision
    acc, _ = process_chunk(plan, rows, settings, scales=decision.scale)
    return acc, decision


def scale_summary(
    shots: np.ndarray, decision: ScaleDecision | None, scale_min: float
) -> dict[str, Any]:
    """Summary numbers of the per-frame scales (for ``fourier_summary.json``): the shot
    intensities, and (after a scale pass) the last pass's :meth:`ScaleDecision.summary`
    as ``refined``, ``n_below_scale_min`` the frames it left out."""

    from hpcdiff.merge_scale import percentile_stats as stats

    out: dict[str, Any] = {
        "shot": stats(shots),
        "n_no_background": int((~np.isfinite(shots)).sum()),
    }
    if decision is not None:
        out["refined"] = decision.summary()
        out["n_below_scale_min"] = int((decision.scale <= 0).sum())
        out["scale_min"] = scale_min
    return out


__all__ = [
    "ChainSettings",
    "ChunkFrames",
    "FrameChain",
    "FrameChoice",
    "FramePlan",
    "MergeValues",
    "ScalePass",
    "chain_for",
    "chunk_task",
    "pixel_weights",
    "pixels_with_noise",
    "plan_frames",
    "process_chunk",
    "process_frames",
    "refine_scales",
    "scale_pass",
    "scale_summary",
    "scale_merge_task",
    "scale_task",
]

"""Job files (TOML) loaded into frozen, validated dataclasses.

A job file is a set of sections; each section is one frozen dataclass below.  Everything
is validated when the file is loaded (:func:`load_job`): unknown keys, wrong types,
impossible values and missing input files fail at once with the file, the key and the
valid choices named.  Relative paths are resolved against the job file's folder.

Units are in the names: ``detector_distance_m``, ``photon_energy_ev``, ``time_limit_min``.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hpcdiff.config._schema import (
    _Context,
    build_section,
    fraction,
    non_negative,
    non_negative_or_auto,
    positive,
    to_plain,
)
from hpcdiff.errors import ConfigError


def percent(value: float) -> str | None:
    """Field check: a percentile in [0, 100]."""
    return None if 0 <= value <= 100 else "must lie between 0 and 100"


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ExperimentConfig:
    """Where the experiment's files are.

    ``frames`` lists CXI/HDF5 files or glob patterns (relative to the job file); together
    they form one run, frame identity being (file, index).  They may also be NXmx files,
    European XFEL run directories or psana2 ``.xtc2`` files (see ``source``).  ``geometry`` is a CrystFEL
    ``.geom``; ``stream`` a CrystFEL ``.stream`` with orientations (Fourier job);
    ``labels`` the labels (training and evaluation), told apart by content: hpcdiff's
    HDF5 labels file, a CSV with a ``file,index,label`` header, or CrystFEL list files one
    per class, ``["diffuse.lst", "non-diffuse.lst"]`` (class from the file name) or
    ``{diffuse = "hits.lst", non-diffuse = "rest.lst"}`` (see
    :func:`hpcdiff.io.labels.read_labels`).  ``class_names`` names the label classes,
    class 0 (no diffuse scattering) first; empty: the labels file's own, or
    ``non-diffuse, diffuse``.
    """

    name: str = "experiment"
    frames: tuple[str, ...] = ()
    geometry: Path | None = None
    stream: Path | None = None
    labels: Path | tuple[Path, ...] | dict[str, Path] | None = None
    class_names: tuple[str, ...] = ()
    data_path: str | None = None
    pedestal: Path | None = None
    gain: Path | None = None
    source: Literal["auto", "cxi", "euxfel", "nxmx", "psana2"] = field(
        default="auto",
        metadata={
            "doc": "Reader of the `frames`: `cxi` (CXI/HDF5 files), `euxfel` (European XFEL "
            "run directories, AGIPD/JUNGFRAU, needs hpcdiff[euxfel]), `nxmx` (NeXus/NXmx "
            "files, geometry from their NXtransformations unless `geometry` is given), "
            "`psana2` (LCLS-II .xtc2 files, needs psana); `auto`: from the first input "
            "(a run directory, an .xtc2 file, an NXmx file by its NXentry definition, "
            "else CXI)."
        },
    )
    detector: str | None = field(
        default=None,
        metadata={
            "doc": "Detector to read where an input holds several: a European XFEL "
            "detector name (`SPB_DET_AGIPD1M-1`) or a psana2 detector name (`jungfrau`)."
        },
    )


@dataclass(frozen=True)
class SimulateConfig:
    """A simulated experiment (the embedded default data set); see :mod:`hpcdiff.simulate`.

    ``preset`` is a difficulty level of :data:`hpcdiff.simulate.presets.PRESETS`;
    ``noise = false`` writes expected (noise-free) frames; ``truth_grid_size`` and
    ``truth_max_hkl`` set the hkl grid of the true diffuse intensity in ``truth.h5``.

    ``diffuse_model``: ``displacement`` (the original term), ``liquid_like``,
    ``rigid_body``, ``correlated`` or ``random`` (one drawn per experiment); ``auto`` is
    displacement, or random with the ``randomised`` preset (see
    :mod:`hpcdiff.simulate.diffuse_models`).  ``molecule``: ``"random"`` or a PDB/mmCIF file (cell and space
    group from its CRYST1; needs gemmi, ``pip install hpcdiff[sim]``).  ``space_group``
    and ``molecule_shape`` of random molecules (``auto``: P1 and globular, or drawn with
    ``randomised``; ``random``: drawn, with a random cell).  ``output_dtype``: frames as
    detector integers (``int16`` saturating at 32767, ``int32``) or ``float32`` ADU.
    ``like``: a target job file whose geometry, data layout (``data_path``, dtype, frames
    per file), distance and energy the simulation copies (``hpcdiff simulate --like``;
    the target's frames may be of any ``[experiment] source``);
    ``detector_distance_m`` is the sample-detector distance (``clen + coffset``).
    ``geometry_layout = "file"`` keeps the geometry's own data path, dimensions and
    per-frame value paths instead of the Cheetah slab at ``data_path``; ``frame_shape``
    (empty: the slab) is the shape each frame is written in (psana ``[32, 185, 388]``).
    """

    n_frames: int = field(default=200, metadata={"check": positive})
    seed: int = field(default=0, metadata={"check": non_negative})
    detector: Literal["cspad", "small"] = "cspad"
    geometry: Path | None = None
    preset: str = "moderate"
    diffuse_fraction: float = field(default=0.3, metadata={"check": fraction})
    frames_per_file: int = field(default=100, metadata={"check": positive})
    photon_energy_ev: float = field(default=9500.0, metadata={"check": positive})
    detector_distance_m: float = field(default=0.1, metadata={"check": positive})
    cell_nm: tuple[float, ...] = (7.9, 7.9, 3.8)
    cell_angles_deg: tuple[float, ...] = (90.0, 90.0, 90.0)
    compression: Literal["none", "gzip", "lz4", "bitshuffle"] = "lz4"
    processes: int = field(default=1, metadata={"check": positive})
    n_atoms: int = field(default=150, metadata={"check": positive})
    noise: bool = True
    truth_grid_size: int = field(default=200, metadata={"check": positive})
    truth_max_hkl: float = field(default=10.0, metadata={"check": positive})
    diffuse_model: Literal[
        "auto", "displacement", "liquid_like", "rigid_body", "correlated", "random"
    ] = "auto"
    molecule: Literal["random"] | Path = "random"
    molecule_shape: Literal["auto", "globular", "elongated", "flat", "random"] = "auto"
    space_group: Literal["auto", "P1", "P21", "C2", "P212121", "P43212", "random"] = "auto"
    output_dtype: Literal["int16", "int32", "float32"] = "int16"
    data_path: str = field(
        default="/entry_1/data_1/data",
        metadata={"doc": "HDF5 path the simulated frames are written to (slab layout)."},
    )
    like: Path | None = None
    geometry_layout: Literal["slab", "file"] = "slab"
    frame_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        from hpcdiff.simulate.presets import PRESETS

        if self.preset not in PRESETS:
            valid = ", ".join(PRESETS)
            raise ValueError(f"preset {self.preset!r} is unknown; valid presets: {valid}")
        if len(self.cell_nm) != 3 or min(self.cell_nm) <= 0:
            raise ValueError(f"cell_nm must be three positive lengths, got {self.cell_nm}")
        if len(self.cell_angles_deg) != 3:
            raise ValueError(f"cell_angles_deg must be three angles, got {self.cell_angles_deg}")


@dataclass(frozen=True)
class CorrectionsConfig:
    """Detector corrections applied before background removal (:mod:`hpcdiff.corrections`).

    ``common_mode_method``: ``"median"`` of the pixels below the photon threshold in each
    ASIC, or ``"histogram"`` (peak of their zero-photon histogram).  ``asic_shape``
    splits panels into ASICs (``[185, 194]`` for psana's 2x1 slabs); empty = one ASIC
    per panel.  Bad pixels are judged over ``bad_pixel_frames`` frames (0 = only the
    geometry's mask): dead = zero in ``bad_pixel_dead_fraction`` of them, hot = median
    ``bad_pixel_hot_sigma`` robust sigmas above its |q| ring.  ``common_mode_stride``:
    each ASIC's level is estimated from every ``stride``-th of its pixels (4: about 9,000
    of a CSPAD ASIC's 35,890; on 200 simulated ASICs the level moves by 1.4 % rms of the
    zero-photon noise from the every-pixel estimate; 1 = every pixel).
    """

    common_mode: bool = True
    common_mode_threshold_photons: float = field(default=0.5, metadata={"check": positive})
    common_mode_method: Literal["median", "histogram"] = "median"
    common_mode_stride: int = field(default=4, metadata={"check": positive})
    asic_shape: tuple[int, ...] = ()
    convert_to_photons: bool = True
    bad_pixel_frames: int = field(default=50, metadata={"check": non_negative})
    bad_pixel_dead_fraction: float = field(default=0.9, metadata={"check": fraction})
    bad_pixel_hot_sigma: float = field(default=10.0, metadata={"check": positive})
    polarisation_degree: float = field(
        default=1.0,
        metadata={
            "check": fraction,
            "doc": "Fraction of the beam polarised horizontally (lab x): 1.0 for an XFEL, "
            "about 0.99 at a synchrotron, 0.5 unpolarised; used by the standard recipe's "
            "ring background and the Fourier job's polarisation correction.",
        },
    )

    def __post_init__(self) -> None:
        if self.asic_shape and (len(self.asic_shape) != 2 or min(self.asic_shape) < 1):
            raise ValueError(f"asic_shape must be [rows, columns] or empty, got {self.asic_shape}")


@dataclass(frozen=True)
class BackgroundConfig:
    """Background removal and normalisation (:mod:`hpcdiff.background`).

    ``local_bin_px``: block size of the fast local filter (1 = exact full-resolution
    filter).  ``radial_clip_sigma``: clipping of ``radial_statistic = "clipped_mean"``.
    Bragg peaks: pixels ``bragg_sigma`` noise sigmas and at least ``bragg_min_photons``
    above the background (diffuse speckles reach 5 sigma at low counts), grown by
    ``bragg_grow_px``.  Normalised values are clipped to ``+-clip_sigma``, then compressed.

    ``preprocessing`` names the recipe (:mod:`hpcdiff.background.standard`): ``"seed"`` is
    the seed method's (background by ``method``, robust per-frame scale, the assembled
    detector image); ``"standard"`` is the detector-independent one: polarisation-aware
    ring background, residual in units of its expected noise
    ``(I - B) / sqrt(B + read_noise_photons^2)`` (photons), a robust per-frame rescale only
    where the noise scale leaves ``[1/standard_guard, standard_guard]``, and a q-space CNN
    image (``q_max_per_nm`` half-width, optional Gaussian smoothing of
    ``q_smooth_per_nm`` sigma; ``q_cell``: a cell's ``sum(w z) / sqrt(sum(w^2))``, unit
    noise on every detector, or the area-weighted ``"mean"``).
    """

    preprocessing: Literal["seed", "standard"] = "standard"
    read_noise_photons: float = field(
        default=0.12,
        metadata={
            "check": non_negative,
            "doc": "Detector read noise in photons (rms), added to the background's Poisson "
            "variance in the standard recipe's noise units.",
        },
    )
    standard_guard: float = field(default=2.0, metadata={"check": positive})
    q_max_per_nm: float = field(default=4.0, metadata={"check": positive})
    q_smooth_per_nm: float = field(default=0.0, metadata={"check": non_negative})
    q_cell: Literal["significance", "mean"] = "significance"
    method: Literal["radial", "local", "none"] = "radial"
    radial_statistic: Literal["median", "clipped_mean"] = "median"
    n_radial_bins: int = field(default=400, metadata={"check": positive})
    local_filter: Literal["median", "percentile"] = "median"
    local_size_px: int = field(default=15, metadata={"check": positive})
    local_percentile: float = field(default=50.0, metadata={"check": percent})
    local_bin_px: int = field(default=5, metadata={"check": positive})
    radial_clip_sigma: float = field(default=3.0, metadata={"check": positive})
    mask_bragg: bool = True
    bragg_sigma: float = field(default=5.0, metadata={"check": positive})
    bragg_grow_px: int = field(default=1, metadata={"check": non_negative})
    bragg_min_photons: float = field(default=5.0, metadata={"check": non_negative})
    compression: Literal["none", "sqrt", "log"] = "none"
    clip_sigma: float = field(default=5.0, metadata={"check": positive})
    image_size_px: int = field(default=224, metadata={"check": positive})
    preprocess_device: Literal["auto", "cpu"] = field(
        default="auto",
        metadata={
            "doc": "Where background removal runs: `auto` (cupy on the rank's GPU when its "
            "torch device is CUDA, numpy otherwise; a GPU rank without a working cupy is an "
            "error naming `pip install 'hpcdiff[gpu]'`) or `cpu` (numpy on the host, on "
            "purpose, also on GPU ranks).",
        },
    )

    def __post_init__(self) -> None:
        if self.standard_guard < 1.0:
            raise ValueError(
                f"standard_guard must be >= 1 (the noise-scale band [1/guard, guard]), "
                f"got {self.standard_guard}"
            )


@dataclass(frozen=True)
class FeaturesConfig:
    """VGG16 feature extraction (:mod:`hpcdiff.features`).

    ``weights`` is a checkpoint path, ``"hub"`` (the torch hub cache) or ``"random:SEED"``.
    ``layer = "auto"`` is the method's ``fc6+fc7`` where the weights hold the fc layers and
    the best conv layer (``hpcdiff.features.layers.BEST_CONV_LAYER``) with conv-only
    weights; outputs record the layer used, and say when it is not fc6+fc7.
    ``bf16`` is bfloat16 autocast on GPUs; ``bf16_cpu`` the same on CPUs: ``"auto"`` turns
    it on where the CPU has bf16 instructions (AVX512-BF16, AMX: 3x the fp32 rate of VGG16
    on a 2-core Sapphire Rapids, ``benchmarks/bench_pipeline.py``; emulated and slower
    elsewhere).  bf16 features differ from fp32 at ~1e-2; run reports and features files
    record which was used.
    """

    weights: str = "hub"
    layer: Literal["auto", "fc6+fc7", "fc7", "pool5", "gap", "pool4+pool5"] = "auto"
    batch_size: int = field(default=16, metadata={"check": positive})
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True
    bf16_cpu: bool | Literal["auto"] = "auto"
    channels_last: bool = True
    compile: bool = False


@dataclass(frozen=True)
class LearnConfig:
    """PCA + logistic regression (:mod:`hpcdiff.learn`).

    Only labelled frames are used.  ``split = "stratified"``: ``n_train`` / ``n_test``
    frames drawn at random (seed ``random_state``), each class in proportion;
    ``"order"``: the first ``n_train`` labelled frames (in run order) train, the last
    ``n_test`` test.

    Transfer to a new experiment (:mod:`hpcdiff.learn.transfer`; predict uses the whole
    experiment's unlabelled frames, never its labels): ``standardise = "scores"`` shifts and
    scales each experiment's PCA scores to the training experiment's; ``recalibrate``
    (``"mixture"``: two-Gaussian mixture of the experiment's logit scores;
    ``"mixture_wide"``: the same with a width per component, for diffuse frames whose
    strengths spread over a decade; ``"em"``: prior shift; ``"auto"``, the default:
    ``"mixture_wide"`` for a binary target, ``"none"`` for classes) sets the probability scale;
    ``n_target_labels``: how many frames of the new experiment's labels
    (``hpcdiff predict --target-labels``) fit a Platt map (0 = all given).
    """

    n_components: int = field(default=50, metadata={"check": positive})
    n_train: int = field(default=500, metadata={"check": positive})
    n_test: int = field(default=500, metadata={"check": non_negative})
    random_state: int = 0
    target: Literal["binary", "classes"] = "binary"
    C: float = field(default=1.0, metadata={"check": positive})
    pca_from: Literal["gather", "statistics"] = "gather"
    split: Literal["stratified", "order"] = "stratified"
    standardise: Literal["none", "scores"] = "none"
    recalibrate: Literal["auto", "none", "em", "mixture", "mixture_wide"] = "auto"
    n_target_labels: int = field(default=0, metadata={"check": non_negative})

    def __post_init__(self) -> None:
        if self.target != "binary" and self.recalibrate not in ("none", "auto"):
            raise ValueError(
                f"recalibrate = {self.recalibrate!r} needs target = 'binary' (diffuse or not)"
            )
        if self.n_components >= self.n_train:
            raise ValueError(
                f"n_components ({self.n_components}) must be smaller than n_train "
                f"({self.n_train}): PCA needs fewer components than training frames"
            )


@dataclass(frozen=True)
class ParallelConfig:
    """How ranks work: batches, prefetch, checkpoints, rejects, devices.

    Each rank writes a checkpoint shard every ``checkpoint_every`` frames; its reader
    thread keeps up to ``prefetch_batches`` batches ready (and, with
    ``overlap_preprocess``, also removes their background, so that only the CNN runs on
    the main thread).  The job fails at the end if more than ``max_reject_fraction`` of
    the frames could not be used.  ``threads_per_rank`` (CPU threads for torch and for
    preprocessing numpy frames, one frame per thread) defaults
    to ``SLURM_CPUS_PER_TASK``, else the node's cores shared among its ranks.  ``gpu``:
    ``"auto"`` (GPU by node-local rank when there are GPUs), ``"local_rank"`` (require
    one), ``"none"`` (CPU).  The root logs progress every ``progress_interval_s``.
    """

    checkpoint_every: int = field(default=64, metadata={"check": positive})
    prefetch_batches: int = field(default=2, metadata={"check": positive})
    max_reject_fraction: float = field(default=0.01, metadata={"check": fraction})
    threads_per_rank: int | None = field(default=None, metadata={"check": positive})
    gpu: Literal["auto", "none", "local_rank"] = "auto"
    progress_interval_s: float = field(default=10.0, metadata={"check": positive})
    overlap_preprocess: bool = True
    reader_processes: int | None = field(
        default=None,
        metadata={
            "check": non_negative,
            "doc": "Reader processes per rank that decompress frames in parallel into "
            "shared-memory buffers of the file's dtype (h5py lets one thread decompress at a "
            "time); 0: the one reader thread. Default: 0 where frames are preprocessed on the "
            "CPU (preprocessing, not reading, limits those ranks); on ranks preprocessing on "
            "a GPU, the rank's CPU threads minus one (1 to 8), to feed it thousands of "
            "frames/s. Each process needs a core. Results are the same either way.",
        },
    )


@dataclass(frozen=True)
class SlurmConfig:
    """SLURM settings for ``hpcdiff slurm render|submit`` and ``hpcdiff reprocess``."""

    job_name: str = "hpcdiff"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = field(default=1, metadata={"check": positive})
    tasks_per_node: int = field(default=4, metadata={"check": positive})
    gpus_per_task: int = field(default=1, metadata={"check": non_negative})
    cpus_per_task: int = field(default=8, metadata={"check": positive})
    mem: str | None = None
    time_limit_min: int = field(default=120, metadata={"check": positive})
    signal_ahead_s: int = field(default=300, metadata={"check": non_negative})
    requeue: bool = True
    constraint: str | None = None
    mpi: str = "pmi2"
    setup: tuple[str, ...] = ()
    extra_directives: tuple[str, ...] = ()
    array_throttle: int = field(default=10, metadata={"check": positive})
    site_file: Path | None = None
    log_dir: Path | None = None


@dataclass(frozen=True)
class ReprocessConfig:
    """Overnight reprocessing of a whole experiment (:mod:`hpcdiff.pipelines.reprocess`).

    ``runs`` lists glob patterns (relative to the job file) of run folders (each holding
    frame files matching ``frames``) or of per-run job files (``*.toml``, whose
    ``[experiment]`` section names the run's files).  A run is named after its folder,
    or its job file's stem (its folder's name for ``job.toml``).  The trained model is
    ``[output] model``; per-run results go under ``[output] dir``.
    """

    runs: tuple[str, ...] = ()
    frames: str = "*.cxi"


@dataclass(frozen=True)
class ClusterConfig:
    """The dask cluster of the Fourier job (:mod:`hpcdiff.parallel.dask_cluster`).

    ``kind``: ``"local"`` (LocalCluster of ``n_workers`` processes), ``"slurm"``
    (dask-jobqueue SLURMCluster scaled to ``n_workers``, one worker process per job with
    ``threads_per_worker`` cores), ``"mpi"`` (dask-mpi inside an existing allocation:
    rank 0 scheduler, rank 1 client, the rest workers) or ``"address"`` (join the
    scheduler at ``address``).  ``queue``, ``account``, ``walltime_min``,
    ``job_extra_directives`` and ``job_script_prologue`` go into the SLURM job script.
    """

    kind: Literal["local", "slurm", "mpi", "address"] = "local"
    address: str | None = None
    n_workers: int = field(default=2, metadata={"check": positive})
    threads_per_worker: int = field(default=1, metadata={"check": positive})
    memory_per_worker: str = "4GiB"
    dashboard_address: str = ":0"
    queue: str | None = None
    account: str | None = None
    walltime_min: int = field(default=60, metadata={"check": positive})
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    interface: str | None = None
    local_directory: str | None = None
    connect_timeout_s: float = field(default=60.0, metadata={"check": positive})

    def __post_init__(self) -> None:
        if self.kind == "address" and not self.address:
            raise ValueError("kind 'address' needs address = 'tcp://HOST:PORT' of a scheduler")


@dataclass(frozen=True)
class FourierConfig:
    """The Fourier job: merge, common-arc similarity, diffusion maps (:mod:`hpcdiff.merge`).

    The merge grid has ``grid_size`` voxels per axis.  ``extent`` chooses its axes:
    ``"hkl"`` (fractional Miller indices) or ``"q"`` (crystal-frame Cartesian, nm^-1
    without 2 pi).  With ``max_hkl`` the grid is the cube ``+-max_hkl`` on every hkl axis;
    without, each axis spans the largest ``|h|``, ``|k|``, ``|l|`` reachable up to ``q_max``
    (``q_max`` times the cell edge), so every axis has the same voxel extent in ``|q|``
    (:mod:`hpcdiff.fourier_grid`).  The resolution limit ``q_max`` is ``max_q_per_nm``
    (nm^-1 without 2 pi) or, unset, the detector's largest ``|q|``; on a q grid the grid
    is the cube ``+-q_max``.  The common-arc similarity bins frames on a grid of
    ``similarity_grid_size`` (default: ``grid_size``) over the same extent.
    Diffusion maps use sparse Gaussian kernels on each frame's ``diffusion_knn`` nearest
    neighbours: of the common-arc profiles (sketched to ``profile_dims``, then
    ``profile_components`` principal components, beside each frame's standardised score
    weighted ``profile_score_weight``) and of the image-space distances.  Above
    ``dense_similarity_max_frames`` frames ``similarity.h5`` keeps no N x N matrices.
    ``truth`` is an optional HDF5 map (e.g. a simulation's
    ``truth.h5``) to validate the merge against: the summary gives the correlation overall,
    in ``truth_shells`` resolution shells of equal reciprocal-space volume, and after
    subtracting from both maps their means in thin shells ``truth_isotropic_shell_width_per_nm``
    thick (default: one voxel).
    """

    grid_size: int = field(default=200, metadata={"check": positive})
    similarity_grid_size: int | None = field(default=None, metadata={"check": positive})
    diffusion_epsilon: float | None = field(
        default=None,
        metadata={
            "check": positive,
            "doc": "Bandwidth of the diffusion maps' Gaussian kNN kernels, squared distance "
            "units; unset: the median squared distance to the `diffusion_knn`-th neighbour "
            "(median heuristic, recorded in fourier_summary.json).",
        },
    )
    diffusion_knn: int = field(
        default=20,
        metadata={
            "check": positive,
            "doc": "Neighbours per frame in the sparse kernel of the diffusion maps.",
        },
    )
    profile_dims: int = field(
        default=256,
        metadata={
            "check": positive,
            "doc": "Dimensions of the random projection of each frame's common-arc "
            "significance profile (its Fisher-z to every frame).",
        },
    )
    profile_form: Literal["cc", "fisher", "significance"] = field(
        default="cc",
        metadata={
            "doc": "What a frame's similarity profile holds per pair: `cc` the common-arc "
            "correlation, `fisher` atanh(cc), `significance` atanh(cc) sqrt(overlap - 3) "
            "(pairs weighted by overlap). `cc` measured best on the tuning configurations "
            "(benchmarks/bench_fourier.py --sections embedding).",
        },
    )
    profile_components: int = field(
        default=8,
        metadata={
            "check": positive,
            "doc": "Principal components of the profile sketch the kNN kernel is built on.",
        },
    )
    profile_score_weight: float = field(
        default=2.0,
        metadata={
            "check": non_negative,
            "doc": "Weight of the standardised per-frame score (`mean_cc` for `cc` profiles, "
            "the mean Fisher z otherwise) as one more coordinate beside the profile's "
            "principal components (scaled so the first has unit spread) in the common-arc "
            "diffusion map's kernel; 0: principal components only (the embedding before "
            "this key). 2 was chosen on the tuning configurations (0.5, 1, 2 tried) and "
            "holds on held-out ones (benchmarks/bench_fourier.py --sections embedding).",
        },
    )
    dense_similarity_max_frames: int = field(
        default=20000,
        metadata={
            "check": positive,
            "doc": "Above this many frames `similarity.h5` holds no dense N x N matrices "
            "(about 28 bytes per pair): only the per-frame scores, each frame's "
            "`diffusion_knn` nearest neighbours (indices and values) and a summary of the "
            "overlaps; and the working folder keeps no N x N block (each is folded into "
            "per-frame partial results as it finishes).",
        },
    )
    checkpoint_tasks: int = field(
        default=32,
        metadata={
            "check": positive,
            "doc": "Merge tasks between checkpoints of the merge accumulator (a stop signal "
            "is honoured at the next checkpoint).",
        },
    )
    similarity_column_block: int = field(
        default=512,
        metadata={
            "check": positive,
            "doc": "Frames per column block a similarity task reads from disk at once "
            "(bounds a worker's memory).",
        },
    )
    truth: Path | None = None
    extent: Literal["hkl", "q"] = "hkl"
    max_hkl: float | None = field(default=None, metadata={"check": positive})
    max_q_per_nm: float | None = field(default=None, metadata={"check": positive})
    truth_shells: int = field(default=10, metadata={"check": positive})
    truth_isotropic_shell_width_per_nm: float | None = field(
        default=None, metadata={"check": positive}
    )
    mask_bragg_radius_hkl: float = field(default=0.1, metadata={"check": non_negative})
    mask_bragg_radius_per_nm: float | Literal["auto"] = field(
        default="auto",
        metadata={
            "check": non_negative_or_auto,
            "doc": "Pixels within this |q| distance (nm^-1, no 2 pi) of a reciprocal-lattice "
            "point (on the Ewald sphere: `mask_bragg_excitation_per_nm`) are left out of the "
            "merge as well: Bragg tails have a width in q, not in hkl, set by the data's spot "
            "size (0.035-0.055 nm^-1 measured in the simulator's frames; real streams' "
            'profile_radius is often 0.002-0.004). 0: only `mask_bragg_radius_hkl`. "auto" '
            "(default): "
            "measured before the merge on up to 50 frames (hpcdiff.bragg_radius): where the "
            "residual's excess (noise units) around lattice points on the Ewald sphere, "
            "over that around points off it, is no longer significant; bounded below by the "
            "stream's profile_radius and above by 0.5 of the smallest reciprocal spacing; "
            "recorded in fourier_summary.json (bragg_radius) and the job's output.",
        },
    )
    mask_bragg_excitation_per_nm: float | None = field(
        default=0.012,
        metadata={
            "check": non_negative,
            "doc": "With `mask_bragg_radius_per_nm`: mask only around lattice points within "
            "this distance (nm^-1) of the frame's Ewald sphere (excitation error), the ones "
            "that put a peak on the detector; the diffuse around points off the sphere (a "
            "halo of correlated disorder) is kept. Unset: around every point.",
        },
    )
    symmetrise: Literal["none", "friedel", "laue"] = "none"
    min_overlap: int = field(default=20, metadata={"check": positive})
    frames_per_task: int = field(default=16, metadata={"check": positive})
    similarity_block: int = field(default=256, metadata={"check": positive})
    image_downsample: int = field(default=8, metadata={"check": positive})
    n_diffusion_coords: int = field(default=4, metadata={"check": positive})
    frames: Literal["all", "labelled-diffuse", "predicted-diffuse"] = field(
        default="all",
        metadata={
            "doc": "Frames to merge and compare: `all` oriented frames, those "
            "`[experiment] labels` mark diffuse (`labelled-diffuse`), or those the classify "
            "job predicted diffuse (`predicted-diffuse`, read from `predictions`).",
        },
    )
    predictions: Path | None = field(
        default=None,
        metadata={
            "doc": 'Predictions file of the classify job for `frames = "predicted-diffuse"` '
            "(default: `predictions.h5` in `[output] dir`).",
        },
    )
    correct_polarisation: bool = field(
        default=True,
        metadata={
            "doc": "Divide each pixel by its polarisation factor "
            "(`[corrections] polarisation_degree`).",
        },
    )
    correct_solid_angle: bool = field(
        default=True,
        metadata={"doc": "Divide each pixel by its solid angle (sr) before merging."},
    )
    scale_shot: bool = field(
        default=False,
        metadata={
            "doc": "Divide each frame by its shot intensity: the mean of its corrected "
            "counts per (polarisation x sr) over the valid pixels (Bragg peaks masked). Off "
            "by default: where the background varies apart from the pulse it adds noise (the "
            "refined scale of `scale_passes` is fitted to the diffuse map itself).",
        },
    )
    scale_passes: int | None = field(
        default=None,
        metadata={
            "check": non_negative,
            "doc": "Passes of per-frame scale refinement (each frame's scale fitted against "
            "the smoothed map of the other half of the frames, with a jackknife error; "
            "frames confidently below `scale_min` of the typical scale left out; a new "
            "merge); 0: none. Unset: 1 for every `frames` choice (the pass changes nothing "
            "when the scales cannot be told from noise). See hpcdiff/merge_scale.py.",
        },
    )
    scale_min: float = field(
        default=0.5,
        metadata={
            "check": non_negative,
            "doc": "A frame whose refined scale plus its standard error is below this "
            "fraction of the typical scale (median of the frames with a significant scale) "
            "carries no measurable copy of the map and is left out of the refined merge.",
        },
    )
    scale_model: Literal["select", "shrunk"] = field(
        default="select",
        metadata={
            "doc": "What the scale pass does with the frames it keeps: `select` merges them "
            "unscaled; `shrunk` merges each as v / g with weight g^2 / var, its scale g "
            "shrunk towards the typical scale by its error (measured worse on the tuning "
            "sets, benchmarks/bench_fourier_chain.py).",
        },
    )
    merge_weights: Literal["inverse-variance", "none"] = field(
        default="inverse-variance",
        metadata={
            "doc": "How pixels weigh in each voxel's mean: `inverse-variance` by the inverse "
            "of the frame chain's noise variance (Poisson + read noise of the background; "
            "times the frame's measured noise ratio when that shows the frame is not photons, "
            "hpcdiff/noise_model.py; times g^2 after a scale pass), `none` equally (the plain "
            "mean).",
        },
    )
    map_smooth_sigma_voxels: float | None = field(
        default=None,
        metadata={
            "check": non_negative,
            "doc": "Gaussian sigma (voxels) of the normalised convolution that gives the "
            "merged map (`intensity` in merged.h5; `intensity_raw` keeps the voxel means); "
            "unset: chosen per run by `map_smooth_rule` (hpcdiff.map_smooth, "
            "recorded in fourier_summary.json `map_smoothing`); 0: no smoothing.",
        },
    )
    map_smooth_rule: Literal["half-maps", "leave-one-out"] = field(
        default="half-maps",
        metadata={
            "doc": "How an unset `map_smooth_sigma_voxels` is chosen: `half-maps` by the "
            "largest correlation of one half of the frames' (split by a hash of the frame "
            "number) unsmoothed voxel means with the other half smoothed, 0 (no smoothing) "
            "among the candidates "
            "(falls back to leave-one-out with fewer than 2 frames in a half); "
            "`leave-one-out` by predicting each voxel from its neighbours.  The rule and "
            "each candidate's score are in fourier_summary.json `map_smoothing`.  Half-maps "
            "is the default once Bragg tails are masked (`mask_bragg_radius_per_nm`): their "
            "leftovers are shared by both halves and made the rule choose no smoothing (RM0); "
            "chosen on A and B (benchmarks/bench_fourier_chain.py).",
        },
    )
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


@dataclass(frozen=True)
class OutputConfig:
    """Where results go; nothing there is overwritten without ``--force``."""

    dir: Path = Path("hpcdiff-out")
    model: Path | None = None
    report: bool = True


@dataclass(frozen=True)
class JobConfig:
    """A whole job file.  Sections absent from the file take their defaults."""

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    simulate: SimulateConfig | None = None
    corrections: CorrectionsConfig = field(default_factory=CorrectionsConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    learn: LearnConfig = field(default_factory=LearnConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    fourier: FourierConfig = field(default_factory=FourierConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    reprocess: ReprocessConfig | None = None
    source: Path | None = field(default=None, compare=False, kw_only=True, metadata={"toml": False})
    """The job file this job was loaded from (relative frame patterns resolve against its
    folder); not a TOML key, not hashed, kept by :func:`dataclasses.replace`."""

    def frame_files(self) -> list[Path]:
        """The experiment's frame files, globs expanded, in sorted order within each pattern."""
        base = self.source.parent if self.source is not None else Path.cwd()
        files: list[Path] = []
        for pattern in self.experiment.frames:
            full = pattern if Path(pattern).is_absolute() else str(base / pattern)
            matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
            files.extend(Path(m) for m in matches)
        return files

    def to_dict(self) -> dict:
        """Plain-value form of the job (paths as strings), for outputs and hashing."""
        plain = to_plain(self)
        plain.pop("source", None)
        return plain

    def config_hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the job's canonical JSON form; stamps outputs."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- loading


def parse_job(mapping: dict, *, source: str = "<job>", base_dir: Path | None = None) -> JobConfig:
    """Validate a job given as a mapping (the parsed TOML) into a :class:`JobConfig`."""
    ctx = _Context(source, base_dir or Path.cwd())
    job = build_section(JobConfig, mapping, key="", ctx=ctx)
    return job


def load_job(path: str | Path, *, check_files: bool = True) -> JobConfig:
    """Load and validate a job file.

    Parameters
    ----------
    path
        The TOML job file.
    check_files
        Also check that every input file the job names exists (frames, geometry, stream,
        labels).  A job with a ``[simulate]`` section may name inputs the simulator writes;
        those are not required to exist yet.

    Raises
    ------
    ConfigError
        Naming the file, the key and what was expected.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read job file ({exc.strerror})") from None
    try:
        mapping = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    job = parse_job(mapping, source=str(path), base_dir=path.resolve().parent)
    job = dataclasses.replace(job, source=path.resolve())
    if check_files and job.simulate is None:
        _check_inputs(job)
    return job


def _check_inputs(job: JobConfig) -> None:
    src = str(job.source)
    exp = job.experiment
    for key in ("geometry", "stream", "pedestal", "gain"):
        value = getattr(exp, key)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{src}: [experiment.{key}] file {value} does not exist")
    if exp.labels is not None:
        from hpcdiff.io.labels import label_sources

        for value, _ in label_sources(exp.labels):
            if not Path(value).is_file():
                raise ConfigError(f"{src}: [experiment.labels] file {value} does not exist")
    base = job.source.parent if job.source else Path.cwd()
    for i, pattern in enumerate(exp.frames):
        full = pattern if Path(pattern).is_absolute() else str(base / pattern)
        matches = (
            glob.glob(full) if glob.has_magic(full) else ([full] if Path(full).exists() else [])
        )
        if not matches:
            raise ConfigError(
                f"{src}: [experiment.frames[{i}]] {pattern!r} matches no file (looked in {base})"
            )


__all__ = [
    "BackgroundConfig",
    "ClusterConfig",
    "ConfigError",
    "CorrectionsConfig",
    "ExperimentConfig",
    "FeaturesConfig",
    "FourierConfig",
    "JobConfig",
    "LearnConfig",
    "OutputConfig",
    "ParallelConfig",
    "ReprocessConfig",
    "SimulateConfig",
    "SlurmConfig",
    "load_job",
    "parse_job",
    "positive",
]

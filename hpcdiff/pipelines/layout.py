"""Where each job kind's files live in its output folder: the one owner of every output name.

A layout object per job kind (as :class:`hpcdiff.pipelines.reprocess.Layout` is for an
overnight reprocessing experiment) names that job's files; no other module spells them.

* :class:`ClassifyLayout`: ``[output] dir`` of the classify jobs (``features``, ``train``,
  ``predict``): the features, predictions, model and training-report files, and per frame
  stage (:meth:`ClassifyLayout.stage`) a :class:`StageLayout` with its checkpoint shards,
  rejects and run report.
* :class:`FourierLayout`: the Fourier job's output folder.
* :func:`report_beside`, :func:`predictions_beside`: defaults of the standalone
  ``hpcdiff train`` and ``hpcdiff predict`` commands, named after their input file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpcdiff.config import JobConfig

FEATURES_NAME = "features.h5"
PREDICTIONS_NAME = "predictions.h5"
MODEL_NAME = "model.npz"
TRAIN_REPORT_NAME = "train-report.json"


@dataclass(frozen=True)
class StageLayout:
    """The files of one frame stage (``kind``) in ``root``.

    Attributes
    ----------
    root
        ``[output] dir``.
    kind
        ``"features"``, ``"train"`` or ``"predict"``.
    """

    root: Path
    kind: str

    @property
    def shards(self) -> Path:
        """Folder of checkpoint shards (``KIND.shards/``), removed after success."""
        return self.root / f"{self.kind}.shards"

    @property
    def rejects(self) -> Path:
        """``KIND-rejects.jsonl``: one JSON line per frame that could not be processed."""
        return self.root / f"{self.kind}-rejects.jsonl"

    @property
    def run_report(self) -> Path:
        """``KIND-run.json``: what ran where, how fast, with which weights."""
        return self.root / f"{self.kind}-run.json"


@dataclass(frozen=True)
class ClassifyLayout:
    """The files of the classify jobs in ``[output] dir``.

    Attributes
    ----------
    root
        ``[output] dir``.
    model_file
        ``[output] model`` when the job names one (else :attr:`model` is ``root/model.npz``).
    """

    root: Path
    model_file: Path | None = None

    @classmethod
    def from_job(cls, job: JobConfig) -> ClassifyLayout:
        """The layout of ``job``'s ``[output]`` section."""
        return cls(Path(job.output.dir), job.output.model)

    @property
    def features(self) -> Path:
        """``features.h5``: one feature vector per frame, ordered by frame."""
        return self.root / FEATURES_NAME

    @property
    def predictions(self) -> Path:
        """``predictions.h5``: one row per frame (see :mod:`hpcdiff.io.predictions`)."""
        return self.root / PREDICTIONS_NAME

    @property
    def model(self) -> Path:
        """The model file: ``[output] model``, or ``root/model.npz``."""
        return self.model_file if self.model_file is not None else self.root / MODEL_NAME

    @property
    def train_report(self) -> Path:
        """``train-report.json``: the training run's precision/recall table and sizes."""
        return self.root / TRAIN_REPORT_NAME

    @property
    def report_dir(self) -> Path:
        """``report/``: the HTML report of the last train or predict run."""
        return self.root / "report"

    def stage(self, kind: str) -> StageLayout:
        """The shards, rejects and run report of frame stage ``kind``."""
        return StageLayout(self.root, kind)


def report_beside(model: Path) -> Path:
    """Default report of ``hpcdiff train``: ``<model stem>.report.json`` beside the model."""
    return model.with_name(model.stem + ".report.json")


def predictions_beside(features: Path) -> Path:
    """Default output of ``hpcdiff predict``: ``<features stem>.predictions.h5`` beside them."""
    return features.with_name(features.stem + ".predictions.h5")


@dataclass(frozen=True)
class FourierLayout:
    """The files of the Fourier job in its output folder ``root``."""

    root: Path

    @property
    def merged(self) -> Path:
        """``merged.h5``: the reciprocal-space grid (sum, count)."""
        return self.root / "merged.h5"

    @property
    def similarity(self) -> Path:
        """``similarity.h5``: common-arc and image-space similarity matrices."""
        return self.root / "similarity.h5"

    @property
    def diffusion(self) -> Path:
        """``diffusion.h5``: the diffusion maps."""
        return self.root / "diffusion.h5"

    def plot(self, name: str) -> Path:
        """``diffusion_NAME.png`` (``name`` is ``"common_arc"`` or ``"image"``)."""
        return self.root / f"diffusion_{name}.png"

    @property
    def summary(self) -> Path:
        """``fourier_summary.json``."""
        return self.root / "fourier_summary.json"

    @property
    def work(self) -> Path:
        """``fourier.work/``: frames on disk and checkpoints, removed after the summary."""
        return self.root / "fourier.work"

    @property
    def outputs(self) -> tuple[Path, ...]:
        """Every file the job writes (refused when present, unless ``--force``)."""
        return (
            self.merged,
            self.similarity,
            self.diffusion,
            self.plot("common_arc"),
            self.plot("image"),
            self.summary,
        )


__all__ = [
    "ClassifyLayout",
    "FourierLayout",
    "StageLayout",
    "predictions_beside",
    "report_beside",
]

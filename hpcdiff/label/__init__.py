"""The labelling page: label a run's frames in a browser, with active learning.

``hpcdiff label JOB.toml`` (:mod:`hpcdiff.cli.label`) serves a local page that shows one
frame at a time (raw, the image the CNN sees, and a large background-removed view with a
contrast slider), takes a key per class, undo and skip, and saves every answer to a labels
file at once.  Modules:

:mod:`~hpcdiff.label.store`
    the labels file (CSV or HDF5): locked read-merge-atomic-write of one answer at a time.
:mod:`~hpcdiff.label.state`
    the session: labels so far, what each page is shown next, undo, skip.
:mod:`~hpcdiff.label.active`
    PCA + logistic regression, uncertainty sampling with a diversity term, CV accuracy.
:mod:`~hpcdiff.label.features`
    the run's features: from ``features.h5`` or computed in a background thread.
:mod:`~hpcdiff.label.frames`
    the run's frames, the job's preprocessing, PNG images.
:mod:`~hpcdiff.label.server`
    HTTP routes (``http.server``) and the static page.

Nothing here imports torch until features are computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcdiff.config import JobConfig
from hpcdiff.label.active import AccuracyEstimate, ActiveLearner, wilson_interval
from hpcdiff.label.store import LabelRows, LabelScheme, LabelStore

if TYPE_CHECKING:
    from hpcdiff.label.features import FeatureWorker
    from hpcdiff.label.frames import RunFrames
    from hpcdiff.label.server import LabelApp
    from hpcdiff.label.state import LabellingSession

__all__ = [
    "AccuracyEstimate",
    "ActiveLearner",
    "LabelRows",
    "LabelScheme",
    "LabelStore",
    "Labeller",
    "default_labels_path",
    "open_labeller",
    "wilson_interval",
]


def default_labels_path(job: JobConfig) -> Path:
    """``[experiment] labels`` when the job names one file, else ``output.dir/labels.csv``.

    Raises
    ------
    ConfigError
        When ``[experiment] labels`` names several CrystFEL list files: the page writes one
        file, so name it with ``--labels``.
    """
    from hpcdiff.errors import ConfigError

    spec = job.experiment.labels
    if spec is None:
        return job.output.dir / "labels.csv"
    if isinstance(spec, str | Path):
        return Path(spec)
    raise ConfigError(
        f"{job.source}: [experiment] labels names several list files; the labelling page "
        "writes one labels file: give it with --labels labels.csv"
    )


@dataclass
class Labeller:
    """Everything a running page needs; :meth:`close` stops the feature thread."""

    app: LabelApp
    session: LabellingSession
    frames: RunFrames
    worker: FeatureWorker | None
    features_note: str

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker.join(timeout=5)  # a daemon: it ends with the process
        self.frames.close()


def open_labeller(
    job: JobConfig,
    *,
    labels: str | Path | None = None,
    features: str | Path | None = None,
    class_names: tuple[str, ...] | None = None,
    seed: int = 0,
    compute_features: bool = True,
) -> Labeller:
    """Open the run, the labels file and the features; start the feature thread.

    Parameters
    ----------
    job
        The job: frames, geometry, preprocessing, features layer and weights, ``[learn]``.
    labels
        The labels file (default :func:`default_labels_path`); ``.csv`` for CSV.
    features
        A features file (default ``output.dir/features.h5`` where it exists).
    class_names
        Class names of a ``[learn] target = "classes"`` job (default: those of an existing
        HDF5 labels file, else the simulator's ``none, weak, moderate, strong``).
    seed
        Seed of the random order.
    compute_features
        Compute the features the file lacks in a background thread.
    """
    from hpcdiff.label.features import FeatureTable, FeatureWorker, load_features_file
    from hpcdiff.label.frames import RunFrames
    from hpcdiff.label.server import LabelApp
    from hpcdiff.label.state import LabellingSession

    path = Path(labels) if labels is not None else default_labels_path(job)
    scheme = LabelScheme.for_target(job.learn.target, _class_names(job, path, class_names))
    store = LabelStore(path, scheme=scheme, config_hash=job.config_hash())
    store.read()  # a wrong file is refused before anything starts
    frames = RunFrames(job)
    table = FeatureTable(frames.n_frames)
    fpath = Path(features) if features is not None else job.output.dir / "features.h5"
    notes = []
    if fpath.is_file():
        n = load_features_file(fpath, frames.frame_ids, layer=job.features.layer, table=table)
        notes.append(f"{n} of {frames.n_frames} frames' features from {fpath}")
        table.source = str(fpath)
    elif features is not None:
        from hpcdiff.errors import ConfigError

        raise ConfigError(f"features file {fpath} does not exist")
    worker = None
    if compute_features and not table.have.all():
        worker = FeatureWorker(table, frames.feature_computer, batch_size=job.features.batch_size)
        table.source = (table.source + " + " if table.source else "") + "computed"
        notes.append(
            f"computing {int((~table.have).sum())} frames' features "
            f"({job.features.layer}, weights {job.features.weights}) in the background"
        )
    elif table.have.all():
        table.status = "done"
    session = LabellingSession(
        frames.frame_ids, store, features=table, seed=seed,
        n_components=job.learn.n_components, C=job.learn.C,
    )  # fmt: skip
    app = LabelApp(session, frames, title=job.experiment.name)
    if worker is not None:
        worker.start()
    return Labeller(app, session, frames, worker, "; ".join(notes))


def _class_names(
    job: JobConfig, path: Path, given: tuple[str, ...] | None
) -> tuple[str, ...] | None:
    if job.learn.target != "classes":
        return None
    if given:
        return tuple(given)
    if path.is_file() and path.suffix.lower() != ".csv":
        from hpcdiff.io.labels import read_labels

        return tuple(read_labels(path).class_names)
    from hpcdiff.simulate.presets import CLASS_NAMES

    return tuple(CLASS_NAMES)

"""``hpcdiff check``: every problem a run of a job would hit, found before anything runs.

:func:`check_job` opens what a run opens, but only as much as needed to know it will work:
the first frame of every frame file (does it open; does its shape fit the geometry), the
labels (do they match the run's frames; are there enough for ``n_train`` and
``n_components``), the weights (do they exist; can they give the layer), the model for
``predict`` (does it exist; were its features made with this job's layer, weights and
background settings), the stream and the ``[fourier] truth`` map.  It collects every problem
instead of stopping at the first, each naming the file or key and what to do.

What is checked depends on the run it is for (``mode``): ``"train"`` (labels, outputs that
exist), ``"predict"`` (the model), ``"features"``, ``"fourier"`` (stream required, truth).
``"auto"`` picks ``predict`` when the model file exists, else ``train`` when the job names
labels, else ``predict``; the data, weights, stream and truth checks apply to every mode.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcdiff.config import JobConfig
from hpcdiff.errors import HpcdiffError

MODES = ("auto", "train", "predict", "features", "fourier")


@dataclass(frozen=True)
class Problem:
    """One thing that would make a run fail or go wrong.

    Attributes
    ----------
    where
        The job key and/or file: ``"[experiment.frames] /data/r0100/frames_001.cxi"``.
    what
        What is wrong.
    fix
        What to do about it.
    """

    where: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}. {self.fix}"


@dataclass
class CheckResult:
    """What :func:`check_job` found."""

    job: Path | None
    mode: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_files: int = 0
    n_frames: int = 0
    n_labelled: int | None = None
    layer: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, where: str, what: str, fix: str) -> None:
        self.problems.append(Problem(where, what.rstrip("."), fix))

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": None if self.job is None else str(self.job),
            "mode": self.mode,
            "ok": self.ok,
            "files": self.n_files,
            "frames": self.n_frames,
            "labelled_frames": self.n_labelled,
            "layer": self.layer,
            "problems": [p.__dict__ for p in self.problems],
            "notes": self.notes,
        }


def read_run_labels(job: JobConfig) -> Any:
    """The one way ``check`` reads ``[experiment] labels`` (any form and spec that
    :func:`hpcdiff.io.labels.read_labels` accepts, with the job's class names)."""
    from hpcdiff.io.labels import read_labels

    assert job.experiment.labels is not None
    return read_labels(job.experiment.labels, class_names=job.experiment.class_names or None)


def choose_mode(job: JobConfig, mode: str = "auto") -> str:
    """The run a check is for; see the module docstring."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    from hpcdiff.pipelines.classify import default_model_path

    if default_model_path(job).is_file():
        return "predict"
    return "train" if job.experiment.labels is not None else "predict"


def check_job(job: JobConfig, *, mode: str = "auto") -> CheckResult:
    """Every problem a run of ``job`` in ``mode`` would hit, without running it.

    Parameters
    ----------
    job
        A job loaded with ``load_job(path, check_files=False)`` (missing files are reported
        here, all of them, rather than the first one at load time).
    mode
        ``"auto"``, ``"train"``, ``"predict"``, ``"features"`` or ``"fourier"``.

    Returns
    -------
    CheckResult
        Problems (empty when a run can go ahead) and notes.
    """
    mode = choose_mode(job, mode)
    result = CheckResult(job=job.source, mode=mode)
    if job.simulate is not None:
        result.notes.append(
            "the job has a [simulate] section: its input files are written by "
            "`hpcdiff simulate`, so only the job file itself was checked"
        )
        return result
    geom = _check_inputs_exist(job, result, mode)
    frame_ids = _check_frames(job, result, geom)
    if mode == "train" or (job.experiment.labels is not None and mode != "fourier"):
        _check_labels(job, result, frame_ids, training=mode == "train")
    weights = _check_weights(job, result, need_info=mode == "predict")
    if mode == "predict":
        _check_model(job, result, weights)
    if mode in ("train", "predict", "features"):
        _check_outputs(job, result, mode)
    if mode == "fourier" and job.experiment.stream is None:
        result.add(
            "[experiment.stream]",
            "the Fourier job needs crystal orientations",
            'name the CrystFEL stream of the run: stream = "run.stream" (indexamajig output)',
        )
    if mode == "fourier":
        _check_frame_choice(job, result)
    if job.experiment.stream is not None and job.experiment.stream.is_file():
        _check_stream(job, result, frame_ids if mode == "fourier" else [])
    if job.fourier.truth is not None:
        _check_truth(job, result)
    return result


# --------------------------------------------------------------------------- inputs


def _src(job: JobConfig) -> str:
    return str(job.source) if job.source is not None else "<job>"


def _check_inputs_exist(job: JobConfig, result: CheckResult, mode: str) -> Any:
    """Missing input files, frame patterns that match nothing; the parsed geometry or None."""
    from hpcdiff.errors import FormatError

    exp = job.experiment
    base = job.source.parent if job.source is not None else Path.cwd()
    for key in ("geometry", "stream", "labels", "pedestal", "gain"):
        value = getattr(exp, key)
        if value is not None and not Path(value).is_file():
            result.add(
                f"[experiment.{key}] {value}",
                "file does not exist",
                f"fix the path in {_src(job)} (relative paths are relative to the job file)",
            )
    if not exp.frames and job.reprocess is not None:
        result.notes.append(
            "frames come from [reprocess] runs: check one run's files with a job naming them"
        )
    elif not exp.frames:
        result.add(
            "[experiment.frames]",
            "the job names no frame files",
            'add frames = ["run/*.cxi"] (CXI/HDF5 files or glob patterns)',
        )
    for i, pattern in enumerate(exp.frames):
        full = pattern if Path(pattern).is_absolute() else str(base / pattern)
        found = glob.glob(full) if glob.has_magic(full) else [full] * Path(full).exists()
        if not found:
            result.add(
                f"[experiment.frames[{i}]] {pattern!r}",
                f"matches no file (looked in {base})",
                "fix the pattern, or check that the files were copied",
            )
    if exp.geometry is None and not _geometry_in_frames(job):
        result.add(
            "[experiment.geometry]",
            "no detector geometry",
            'name the CrystFEL geometry: geometry = "detector.geom"',
        )
        return None
    if exp.geometry is None or not exp.geometry.is_file():
        return None
    from hpcdiff.io.geom import read_geom

    try:
        return read_geom(exp.geometry)
    except (FormatError, ValueError) as exc:
        result.add(
            f"[experiment.geometry] {exp.geometry}",
            f"not a usable CrystFEL geometry: {exc}",
            "fix the .geom file (`hpcdiff inspect` summarises one)",
        )
        return None


def _geometry_in_frames(job: JobConfig) -> bool:
    """True when the frames carry their own geometry (NXmx files)."""
    from hpcdiff.io.sources import detect_kind

    if job.experiment.source == "nxmx":
        return True
    files = job.frame_files()
    if job.experiment.source != "auto" or not files:
        return False
    try:
        return detect_kind(files[0]) == "nxmx"
    except HpcdiffError:
        return False


def _check_frames(job: JobConfig, result: CheckResult, geom: Any) -> list[Any]:
    """Open every frame file and read its first frame; the run's frame ids (readable files)."""
    import numpy as np

    from hpcdiff.io.sources import open_job_source

    ids: list[Any] = []
    files = [f for f in job.frame_files() if f.exists()]
    result.n_files = len(files)
    for f in files:
        try:
            with open_job_source(job, [f], geometry=geom) as src:
                if src.n_frames == 0:
                    result.add(
                        f"[experiment.frames] {f}",
                        "holds no frames",
                        "remove it from the run, or check the data path",
                    )
                    continue
                first = src.read(0, 1)
                if not np.isfinite(first).any():
                    result.notes.append(f"{f}: first frame holds no finite pixel values")
                ids.extend(src.frame_ids)
        except (OSError, HpcdiffError, ValueError, KeyError, ImportError) as exc:
            shape = tuple(geom.slab_shape) if geom is not None else "the first file's"
            fix = (
                f"frames must be {shape} (n_ss, n_fs) as the geometry says, or stacked "
                "panels; use the geometry the file was written with, or set "
                "[experiment] data_path"
                if "shape" in str(exc)
                else "check the file (`hpcdiff inspect FILE`); the run would reject it"
            )
            result.add(f"[experiment.frames] {f}", f"cannot be used: {exc}", fix)
    result.n_frames = len(ids)
    return ids


def _check_labels(
    job: JobConfig, result: CheckResult, frame_ids: list[Any], *, training: bool
) -> None:
    import numpy as np

    from hpcdiff.io.labels import describe_spec, label_sources
    from hpcdiff.learn import split_rows, split_sizes, targets
    from hpcdiff.learn.split import too_few_labelled

    spec = job.experiment.labels
    if spec is None:
        result.add(
            "[experiment.labels]",
            "training needs labels",
            'name a labels file: labels = "labels.csv" (hpcdiff labels file, CSV '
            "file,index,label or CrystFEL list files; `hpcdiff label JOB.toml` makes one)",
        )
        return
    if not all(p.is_file() for p, _ in label_sources(spec)):
        return  # reported with the other missing inputs
    where = f"[experiment.labels] {describe_spec(spec)}"
    try:
        labels = read_run_labels(job)
    except (HpcdiffError, ValueError, OSError) as exc:
        result.add(where, f"cannot be read: {exc}", "fix or remake it")
        return
    if not frame_ids:
        return  # no readable frames: reported already
    try:
        positions = labels.match_run(frame_ids)
    except HpcdiffError as exc:
        result.add(where, str(exc), "fix the labels file")
        return
    absent = np.flatnonzero(positions < 0)
    if absent.size:
        listed = "; ".join(
            f"{labels.file[r]} //{labels.index[r]} ({labels.where(int(r))})" for r in absent[:5]
        )
        more = f" and {absent.size - 5} more" if absent.size > 5 else ""
        result.add(
            where,
            f"{absent.size} labelled frame(s) are not in the run ({listed}{more})",
            "point [experiment] frames at the files these labels were made for, or remove "
            "those rows",
        )
    mine = labels.take(np.flatnonzero(positions >= 0))
    n = len(mine.index)
    result.n_labelled = n
    if n == 0:
        result.add(
            where,
            f"none of the run's {len(frame_ids)} frames has a label",
            "use the labels of this run (file names must match the frame files by path or "
            "base name)",
        )
        return
    unlabelled = len(frame_ids) - n
    if unlabelled:
        result.notes.append(
            f"{unlabelled} of the run's {len(frame_ids)} frames have no label; "
            f"training uses the {n} labelled frames"
        )
    if not training:
        return
    lc = job.learn
    if lc.n_train > n:
        result.add(
            "[learn.n_train]",
            f"is {lc.n_train}, more than the {n} labelled frames of the run",
            f"set n_train (and n_test) to fit {n} frames, or label more frames",
        )
    why = too_few_labelled(n, n_components=lc.n_components, n_train=lc.n_train, n_test=lc.n_test)
    if why is not None:
        n_tr, _ = split_sizes(n, n_train=lc.n_train, n_test=lc.n_test)
        result.add(
            "[learn.n_components]",
            why,
            f"PCA needs fewer components than training frames: set n_components below {n_tr}, "
            "or label more frames",
        )
    y, names = targets(mine, lc.target)
    try:
        split_rows(
            y,
            n_train=lc.n_train,
            n_test=lc.n_test,
            random_state=lc.random_state,
            method=lc.split,
        )
    except ValueError as exc:
        counts = ", ".join(f"{names[c]} {int((y == c).sum())}" for c in range(len(names)))
        result.add(
            where,
            f"the labelled frames cannot be split into training and test sets ({exc}); "
            f"labelled per class: {counts}",
            "label more frames of the rare class",
        )


# --------------------------------------------------------------------------- weights, model


def _check_weights(
    job: JobConfig, result: CheckResult, *, need_info: bool
) -> dict[str, Any] | None:
    """Problems with ``[features] weights``/``layer``; the weights info a run would record."""

    from hpcdiff.errors import FormatError
    from hpcdiff.features.catalog import verify_checkpoint
    from hpcdiff.features.layers import LAYER_SIZES, layer_note, resolve_layer
    from hpcdiff.features.weights import (
        _missing_message,
        hub_checkpoint_path,
        load_weights,
    )

    fc = job.features
    spec = fc.weights
    if spec.startswith("random:"):
        if not spec.split(":", 1)[1].lstrip("-").isdigit():
            result.add(
                f"[features.weights] {spec!r}", "malformed", "use random:SEED with an integer SEED"
            )
            return None
        result.notes.append(f"weights {spec}: untrained random weights, NOT pretrained")
        result.layer = resolve_layer(fc.layer, LAYER_SIZES)
        # their hash (drawing 138 M values) is needed only to compare with a model
        return load_weights(spec).info.to_dict() if need_info else None
    path = hub_checkpoint_path() if spec == "hub" else Path(spec).expanduser()
    if not path.is_file():
        result.add(
            f"[features.weights] {spec!r}",
            f"checkpoint {path} not found",
            _missing_message(path, spec).split(" not found. ", 1)[-1],
        )
        return None
    try:
        report = verify_checkpoint(path)
    except FormatError as exc:
        result.add(f"[features.weights] {path}", str(exc), "see `hpcdiff weights verify`")
        return None
    for problem in report.problems:
        result.add(
            f"[features.weights] {path}",
            problem,
            "replace the checkpoint (README, section Weights; `hpcdiff weights verify PATH`)",
        )
    if not report.ok:
        return None
    layer = resolve_layer(fc.layer, report.layers)
    result.layer = layer
    if layer not in report.layers:
        result.add(
            f"[features.layer] {fc.layer!r}",
            f"the weights {path.name} are {report.kind} and cannot give layer {layer!r} "
            f"(they give {', '.join(report.layers)})",
            f'use layer = "auto" (picks {resolve_layer("auto", report.layers)}), '
            f"{' or '.join(repr(x) for x in report.layers)}, or a full torchvision checkpoint",
        )
    note = layer_note(fc.layer, report.layers)
    if note is not None:
        result.notes.append(note)
    if report.pretrained is False:
        result.notes.append(f"weights {path.name}: NOT pretrained ({report.pretrained_reason})")
    return {
        "name": path.name,
        "path": str(report.path),
        "sha256": report.sha256,
        "pretrained": bool(report.pretrained),
        "layers": list(report.layers or LAYER_SIZES),
    }


def _check_model(job: JobConfig, result: CheckResult, weights: dict[str, Any] | None) -> None:
    from hpcdiff.learn import DiffuseClassifier, ModelMismatchError
    from hpcdiff.pipelines.classify import default_model_path, feature_meta

    path = default_model_path(job)
    key = "[output.model]" if job.output.model is not None else "[output.dir]/model.npz"
    if not path.is_file():
        result.add(
            f"{key} {path}",
            "model file does not exist; predict needs a trained model",
            "train one first (`hpcdiff classify train` with labels) or set [output] model",
        )
        return
    try:
        clf = DiffuseClassifier.load(path)
    except (HpcdiffError, ValueError, OSError, KeyError) as exc:
        result.add(f"{key} {path}", f"cannot be read: {exc}", "train the model again")
        return
    if weights is None:
        return  # the weights problem is listed already; nothing to compare against
    try:
        clf.check_compatible(feature_meta(job, weights), source=job.source)
    except ModelMismatchError as exc:
        result.add(
            f"{key} {path}",
            f"was made another way: {exc}",
            "set [features] and [background] as the model's training job had them, or "
            "train a model with this job's settings",
        )


def _check_outputs(job: JobConfig, result: CheckResult, mode: str) -> None:
    from hpcdiff.pipelines.classify import default_model_path

    out = job.output.dir
    # the files that mark a run finished; features.h5 of an unfinished train run is reused
    results = {
        "train": [default_model_path(job), out / "train-report.json"],
        "predict": [out / "predictions.h5"],
        "features": [out / "features.h5"],
    }[mode]
    if mode == "train" and not all(p.exists() for p in results):
        return
    for path in results:
        if path.exists():
            result.add(
                f"[output] {path}",
                f"exists already: the run is finished; `classify {mode}` refuses to overwrite it",
                "pass --force to run it again and overwrite its outputs, or choose another "
                "[output] dir",
            )


# --------------------------------------------------------------------------- stream, truth


def _check_stream(job: JobConfig, result: CheckResult, frame_ids: list[Any]) -> None:
    """The stream parses, has crystals and (``frame_ids``: the Fourier job's run) names frames
    the run has (:mod:`hpcdiff.io.sources.stream_match`)."""
    from hpcdiff.io.stream import read_stream

    path = job.experiment.stream
    assert path is not None
    try:
        stream = read_stream(path)
    except (HpcdiffError, ValueError, OSError) as exc:
        result.add(
            f"[experiment.stream] {path}",
            f"does not parse: {exc}",
            "fix the stream (CrystFEL indexamajig output) or remove the key",
        )
        return
    n_crystals = sum(len(c.crystals) for c in stream.chunks)
    if n_crystals == 0:
        result.notes.append(f"{path}: no indexed crystals; the Fourier job has nothing to merge")
    elif frame_ids:
        _check_stream_frames(job, result, stream, frame_ids)


def _check_stream_frames(job: JobConfig, result: CheckResult, stream: Any, ids: list[Any]) -> None:
    from hpcdiff.io.sources import detect_kind
    from hpcdiff.io.sources.stream_match import check_stream_frames

    path = job.experiment.stream
    source = job.experiment.source
    kind = detect_kind(ids[0].file) if source == "auto" else str(source)
    n_matched, errors = check_stream_frames(stream.chunks, ids, kind=kind, stream=str(path))
    if errors:
        result.add(
            f"[experiment.stream] {path}",
            f"{len(errors)} chunk(s) name frames the run does not have; first: {errors[0]}",
            "use the stream indexed from these frame files",
        )
    elif n_matched == 0:
        result.add(
            f"[experiment.stream] {path}",
            f"no chunk with a crystal names a frame of the run (e.g. {ids[0]})",
            "use the stream indexed from these frame files (chunks are matched by file name "
            "and event //N)",
        )


def _check_frame_choice(job: JobConfig, result: CheckResult) -> None:
    """``[fourier] frames`` needs the labels or the classify job's predictions."""
    choice = job.fourier.frames
    if choice == "labelled-diffuse" and job.experiment.labels is None:
        result.add(
            "[fourier.frames]",
            "'labelled-diffuse' merges the frames the labels mark diffuse, but the job names "
            "no labels",
            'name them in [experiment] labels, or set frames = "all"',
        )
    if choice == "predicted-diffuse":
        from hpcdiff.pipelines.layout import ClassifyLayout

        path = job.fourier.predictions or ClassifyLayout.from_job(job).predictions
        if not Path(path).is_file():
            result.add(
                "[fourier.predictions]",
                f"'predicted-diffuse' reads the classify job's predictions, but {path} does "
                "not exist",
                "run `hpcdiff classify` (or `hpcdiff predict`) first, or name the file in "
                "[fourier] predictions",
            )


def _check_truth(job: JobConfig, result: CheckResult) -> None:
    from hpcdiff.pipelines.fourier import read_truth

    path = job.fourier.truth
    assert path is not None
    if not path.is_file():
        result.add(
            f"[fourier.truth] {path}", "file does not exist", "fix the path or remove the key"
        )
        return
    if job.fourier.extent != "hkl":
        result.add(
            "[fourier.truth]",
            f"a truth map is compared on an hkl grid, but [fourier] extent = "
            f"{job.fourier.extent!r}",
            'set extent = "hkl", or remove truth',
        )
    try:
        read_truth(path)
    except (HpcdiffError, ValueError, OSError) as exc:
        result.add(
            f"[fourier.truth] {path}",
            f"not a map with h, k, l axes: {exc}",
            "the map is a 3D dataset (named intensity) with 1D datasets h, k, l beside it, "
            "as in a simulation's truth.h5",
        )


__all__ = ["MODES", "CheckResult", "Problem", "check_job", "choose_mode", "read_run_labels"]

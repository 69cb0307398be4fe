"""The HTML reports the jobs write, built from the files they wrote.

Each ``add_*`` function adds one part to a :class:`hpcdiff.report.Report` from a job's
output folder, so a report shows exactly what a user finds there.  ``classify train``,
``classify predict`` and ``fourier`` write ``output.dir/report/`` at the end (unless
``[output] report = false``); ``hpcdiff demo`` combines all parts in one page.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hpcdiff.config import JobConfig
from hpcdiff.errors import ConfigError
from hpcdiff.pipelines.layout import ClassifyLayout
from hpcdiff.report import Report
from hpcdiff.report import figures as F

BINARY = ("non-diffuse", "diffuse")


def _devices(devices: Any) -> str | None:
    """``"2 x cpu"`` style summary of a run report's per-rank devices."""
    if not devices:
        return None
    from collections import Counter

    names = Counter(d.get("device", "?") if isinstance(d, dict) else str(d) for d in devices)
    return ", ".join(f"{n} x {name}" for name, n in names.items())


def _layer(job: JobConfig, run: dict[str, Any]) -> str:
    """The layer the run used (``layer = "auto"`` resolved), with why where it is not fc6+fc7."""
    features = run.get("features")
    if not isinstance(features, dict):
        features = {}
    layer = str(features.get("layer") or job.features.layer)
    note = features.get("layer_note")
    return f"{layer} ({note})" if note else layer


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


_PRETRAINED: dict[object, str] = {True: "yes", False: "no: RANDOM weights"}


def new_report(title: str, job: JobConfig, run: dict[str, Any]) -> Report:
    """A report whose provenance block names version, config hash and weights."""
    weights = run.get("weights") or {}
    pretrained = weights.get("pretrained") if isinstance(weights, dict) else None
    return Report(
        title,
        provenance={
            "hpcdiff_version": run.get("hpcdiff_version"),
            "config_hash": job.config_hash(),
            "job file": str(job.source),
            "weights": weights.get("name") if isinstance(weights, dict) else weights,
            "weights_sha256": run.get("weights_sha256"),
            "pretrained": _PRETRAINED.get(pretrained, "n/a"),
            "feature layer": _layer(job, run),
            "ranks": run.get("ranks"),
            "devices": _devices(run.get("devices")),
            "created_utc": run.get("created_utc"),
        },
    )


def strength_curve(
    strength: np.ndarray, correct: np.ndarray, *, n_bins: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of diffuse frames in log-spaced strength bins; non-diffuse frames at x = 0.

    Parameters
    ----------
    strength
        ``(n,)`` diffuse strength (0 for non-diffuse frames).
    correct
        ``(n,)`` bool, whether each frame was classified right.
    """
    diffuse = strength > 0
    xs, ys = [], []
    if (~diffuse).any():
        xs.append(0.0)
        ys.append(float(correct[~diffuse].mean()))
    if diffuse.any():
        s = strength[diffuse]
        edges = np.geomspace(s.min(), s.max() * (1 + 1e-9), n_bins + 1)
        which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, n_bins - 1)
        for b in range(n_bins):
            sel = which == b
            if sel.any():
                xs.append(float(np.sqrt(edges[b] * edges[b + 1])))
                ys.append(float(correct[diffuse][sel].mean()))
    return np.array(xs), np.array(ys)


def _labelled(job: JobConfig, frame_ids: list[Any]) -> tuple[np.ndarray, Any]:
    """Rows of ``frame_ids`` that the job's labels name, and their labels (labels of
    frames not in ``frame_ids`` are left out: a report shows what it can)."""
    from hpcdiff.io.labels import read_labels

    assert job.experiment.labels is not None
    labels = read_labels(job.experiment.labels, class_names=job.experiment.class_names or None)
    pos = labels.match_run(frame_ids)
    keep = np.flatnonzero(pos >= 0)
    order = keep[np.argsort(pos[keep], kind="stable")]
    return pos[order], labels.take(order)


def add_training(report: Report, job: JobConfig) -> None:
    """Held-out precision/recall, confusion matrix and PCA scatter of a ``classify train``."""
    from hpcdiff.io.featurefile import read_features
    from hpcdiff.learn import DiffuseClassifier, format_report

    layout = ClassifyLayout.from_job(job)
    train = _json(layout.train_report)
    held_out = train.get("report")
    report.add_section("Classifier: held-out frames of the training run")
    if held_out is None:
        report.add_text("No held-out frames (learn.n_test = 0).")
    else:
        report.add_preformatted(format_report(held_out), title="Precision / recall (held-out)")
        cm = held_out["confusion_matrix"]
        report.add_figure(
            "Confusion matrix (held-out)",
            F.confusion_matrix_figure(np.array(cm["matrix"]), class_names=cm["labels"]),
        )
    model = DiffuseClassifier.load(train.get("model") or layout.model)
    features_path = layout.features
    if features_path.is_file() and job.experiment.labels is not None:
        feats = read_features(features_path)
        rows, labels = _labelled(job, feats.frame_ids)
        report.add_figure(
            "PCA of VGG16 features (training run)",
            F.pca_scatter_figure(
                model.pca_.transform(feats.features[rows]), labels.diffuse, class_names=BINARY
            ),
            caption=f"first two principal components of the {len(rows)} labelled frames, "
            "coloured by the labels file",
        )


def add_predictions(report: Report, job: JobConfig, *, examples: int = 4) -> str | None:
    """Predictions of a ``classify predict``: scores, truth check when labels exist, examples.

    Returns
    -------
    str or None
        The precision/recall table against the labels, when the job names a labels file.
    """
    from hpcdiff.io.predictions import read_predictions
    from hpcdiff.learn import classification_report, format_report

    pred = read_predictions(ClassifyLayout.from_job(job).predictions)
    score = pred.diffuse_score
    report.add_section("Predictions")
    report.add_text(
        f"{len(score)} frames; {int((score >= 0.5).sum())} predicted diffuse "
        f"(diffuse fraction {np.mean(score >= 0.5) if len(score) else float('nan'):.3f})."
    )
    add_confidence_table(report, pred)
    table = None
    if job.experiment.labels is not None and len(score):
        rows, labels = _labelled(job, pred.frame_ids)
        y_true = np.asarray(labels.diffuse, dtype=np.int64)
        y_pred = (score[rows] >= 0.5).astype(np.int64)
        result = classification_report(
            y_true, y_pred, np.stack([1 - score[rows], score[rows]], axis=1), class_names=BINARY
        )
        table = format_report(
            result, title=f"{len(y_true)} labelled of {len(score)} frames against the labels file"
        )
        report.add_preformatted(table, title="Precision / recall against the labels")
        strength = np.asarray(labels.diffuse_strength)
        known = np.isfinite(strength)
        if not known.any():
            return table
        x, y = strength_curve(strength[known], (y_true == y_pred)[known])
        report.add_figure(
            "Accuracy against diffuse strength",
            F.accuracy_curve_figure(
                {"VGG16 + PCA + LR": (x, y)},
                xlabel="diffuse strength (diffuse-to-background ratio; 0 = non-diffuse)",
            ),
        )
    if examples and len(score):
        raw, residual, titles = example_frames(job, pred, n=examples)
        report.add_figure(
            "Example frames: raw and after background removal",
            F.frames_figure(raw, residual, titles=titles),
            caption="top: raw ADU; bottom: the normalised residual the CNN sees "
            "(Bragg peaks and bad pixels masked)",
        )
    return table


def confident_frames(predictions: Any, *, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the ``n`` most and the ``n`` least confident predictions.

    Confidence is the probability of the predicted class; the most confident come first
    in falling order, the least confident (nearest the decision boundary) in rising order.
    """
    p = np.max(np.asarray(predictions.proba), axis=1) if len(predictions.proba) else np.empty(0)
    order = np.argsort(-p, kind="stable")
    k = min(n, p.size)
    most = order[:k]
    least = order[::-1][: min(k, p.size - k)] if p.size > k else np.empty(0, np.int64)
    return most.astype(np.int64), least.astype(np.int64)


def add_confidence_table(report: Report, predictions: Any, *, n: int = 10) -> None:
    """Tables of the most and least confident frames, with their file and index."""
    most, least = confident_frames(predictions, n=n)
    labels = predictions.labels
    proba = np.asarray(predictions.proba)
    score = predictions.diffuse_score
    columns = ["file", "index", "class", "probability", "diffuse score"]

    def rows(picks: np.ndarray) -> list[list[Any]]:
        return [
            [
                str(predictions.files[r]),
                int(predictions.indices[r]),
                predictions.class_names[int(labels[r])],
                round(float(proba[r, labels[r]]), 4),
                round(float(score[r]), 4),
            ]
            for r in picks.tolist()
        ]

    if most.size:
        report.add_table(f"Most confident frames ({most.size})", rows(most), columns=columns)
    if least.size:
        report.add_table(
            f"Least confident frames ({least.size}): worth a look, or a label",
            rows(least),
            columns=columns,
        )


def example_frames(job: JobConfig, predictions: Any, *, n: int = 4) -> tuple[list, list, list]:
    """Raw and background-removed assembled images of the most and least diffuse-looking frames."""
    from hpcdiff.io.geom import read_geom
    from hpcdiff.io.sources import open_job_source
    from hpcdiff.pipelines.classify import detector_model
    from hpcdiff.preprocess import Preprocessor

    geom = None if job.experiment.geometry is None else read_geom(job.experiment.geometry)
    source = open_job_source(job, job.frame_files(), geometry=geom)
    geom = source.geometry  # the job's, or the frames' own (NXmx)
    if geom is None:
        raise ConfigError(f"{job.source}: example frames need [experiment] geometry")
    order = np.argsort(-predictions.diffuse_score)
    picks = list(dict.fromkeys([*order[: n // 2], *order[::-1][: n - n // 2]]))
    numbers = source.global_numbers([predictions.frame_ids[i] for i in picks])
    raw, residual, titles = [], [], []
    pre = pixmap = None
    for pick, number in zip(picks, numbers, strict=True):
        frames = source.read(int(number), int(number) + 1)
        values = source.frame_values(int(number), int(number) + 1)
        energy = values.get("photon_energy_ev")
        if pre is None:
            model = detector_model(geom, values, frame_file=source.files[0])
            pre = Preprocessor.from_job(job, model)
            pixmap = model.pixel_map()
        assert pixmap is not None  # built with pre, on the first frame
        result = pre.residual(frames, photon_energy_ev=energy)
        raw.append(pixmap.assemble(frames[0]))
        residual.append(pixmap.assemble(np.where(result.valid[0], result.normalised[0], np.nan)))
        name = predictions.class_names[int(predictions.labels[pick])]
        titles.append(f"{name}, p(diffuse)={predictions.diffuse_score[pick]:.2f}")
    return raw, residual, titles


def add_fourier(report: Report, job: JobConfig, fourier: Any) -> None:
    """Merged volume (with the truth when the job names one), CC, diffusion maps."""
    import h5py

    report.add_section("Fourier job: merge, common-arc similarity, diffusion maps")
    summary = fourier.summary
    truth_cc = summary.get("truth_correlation", {}).get("cc")
    report.add_text(
        f"{summary.get('n_frames_oriented')} frames merged into "
        f"{summary.get('voxels_measured')} voxels of a "
        f"{'x'.join(map(str, fourier.merged.grid.shape))} grid"
        + (f"; correlation with the true diffuse intensity {truth_cc:.3f}" if truth_cc else "")
        + f". Common-arc pairs with a similarity: {summary.get('pairs_with_similarity')} of "
        f"{summary.get('pairs_total')} (median overlap {summary.get('median_overlap')} voxels)."
    )
    truth = None
    if job.fourier.truth is not None and Path(job.fourier.truth).is_file():
        with h5py.File(job.fourier.truth, "r") as h5:
            if "diffuse/intensity" in h5:
                truth = h5["diffuse/intensity"][...]
    report.add_figure(
        "Merged reciprocal-space volume (central slices)",
        F.volume_slices_figure(
            fourier.merged.intensity(),
            truth=truth,
            extent=fourier.merged.grid.half_width if fourier.merged.grid.is_cube else None,
        ),
        caption="log10 intensity; white where no pixel landed",
    )
    labels = fourier.labels if fourier.labels is not None else np.zeros(len(fourier.frame_ids))
    for name, dm in fourier.maps.items():
        aucs = [a["auc_max"] for a in summary.get("auc", {}).get(name, [])]
        report.add_figure(
            f"Diffusion map: {name}",
            F.diffusion_map_figure(
                dm.coords,
                np.asarray(labels, dtype=np.int64),
                class_names=BINARY,
                aucs=aucs or None,
            ),
            caption="AUC = max(AUC, 1 - AUC) of each coordinate for diffuse vs non-diffuse",
        )
    rate = summary.get("timing_s", {}).get("frames_per_s_per_worker")
    if rate:
        report.add_text(f"Merge throughput: {rate:.2f} frames/s per dask worker.")


def stage_rates(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``stage -> {rank: frames/s}`` from a classify run report (``KIND-run.json``)."""
    rates: dict[str, dict[str, float]] = {}
    for rank, stages in enumerate(run.get("timings", [])):
        for stage in ("read", "preprocess", "features", "learn", "predict", "total"):
            t = stages.get(stage)
            if isinstance(t, dict) and t.get("seconds") and t.get("frames"):
                rates.setdefault(stage, {})[str(rank)] = t["frames"] / t["seconds"]
    return rates


def add_throughput(report: Report, run: dict[str, Any], *, kind: str) -> None:
    """Per-stage, per-rank frames/s of a classify run."""
    rates = stage_rates(run)
    if rates:
        report.add_figure(
            f"Throughput per stage and rank (classify {kind})",
            F.throughput_figure(rates),
            caption=f"frames/s of each stage on each rank ({_devices(run.get('devices'))})",
        )


def write_classify_report(job: JobConfig, kind: str, *, force: bool = False) -> Path | None:
    """``output.dir/report/`` of a ``classify train`` or ``classify predict``."""
    if not job.output.report:
        return None
    layout = ClassifyLayout.from_job(job)
    run = _json(layout.stage(kind).run_report)
    report = new_report(f"hpcdiff classify {kind}: {job.experiment.name}", job, run)
    if kind == "train":
        add_training(report, job)
    else:
        add_predictions(report, job)
    add_throughput(report, run, kind=kind)
    return report.write(layout.report_dir, force=True)


def write_fourier_report(job: JobConfig, fourier: Any, out_dir: Path) -> Path | None:
    """``out_dir/report/`` of a Fourier job."""
    if not job.output.report:
        return None
    run = {"hpcdiff_version": fourier.summary.get("provenance", {}).get("hpcdiff_version")}
    report = new_report(f"hpcdiff fourier: {job.experiment.name}", job, run)
    add_fourier(report, job, fourier)
    return report.write(Path(out_dir) / "report", force=True)

"""The demo's report: every figure of the method, from the files the jobs wrote.

It reads only outputs (model, features, predictions, labels, run reports, Fourier
files) plus a handful of frames for the example images, so it shows what a user at the
facility would find in the output folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hpcdiff.config import JobConfig
from hpcdiff.report import Report
from hpcdiff.report import figures as F


def _strength_curve(
    strength: np.ndarray, correct: np.ndarray, *, n_bins: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of diffuse frames in log-spaced strength bins; non-diffuse frames at x = 0."""
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


def _example_frames(job: JobConfig, predictions: Any, *, n: int = 4) -> tuple[list, list, list]:
    """Raw and background-removed assembled images of a few frames, with their titles."""
    from hpcdiff.geometry import DetectorModel
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.io.geom import read_geom
    from hpcdiff.preprocess import Preprocessor

    geom = read_geom(job.experiment.geometry)
    source = FrameSource(job.frame_files(), geometry=geom, data_path=job.experiment.data_path)
    order = np.argsort(-predictions.diffuse_score)
    picks = list(order[: n // 2]) + list(order[::-1][: n - n // 2])
    numbers = source.global_numbers([predictions.frame_ids[i] for i in picks])
    raw, residual, titles = [], [], []
    model = None
    for pick, number in zip(picks, numbers, strict=True):
        frames = source.read(int(number), int(number) + 1)
        values = source.frame_values(int(number), int(number) + 1)
        if model is None:
            clen = values.get("clen_m")
            energy = values.get("photon_energy_ev")
            model = DetectorModel.build(
                geom,
                clen_m=None if clen is None else float(clen[0]),
                photon_energy_ev=None if energy is None else float(energy[0]),
            )
            pre = Preprocessor.from_job(job, model)
            pixmap = model.pixel_map()
        energy = values.get("photon_energy_ev")
        result = pre.residual(frames, photon_energy_ev=energy)
        raw.append(pixmap.assemble(frames[0]))
        residual.append(pixmap.assemble(np.where(result.valid[0], result.normalised[0], np.nan)))
        name = predictions.class_names[int(predictions.labels[pick])]
        titles.append(f"{name}, p(diffuse)={predictions.diffuse_score[pick]:.2f}")
    return raw, residual, titles


def write_demo_report(
    out: Path,
    *,
    train_job: JobConfig,
    predict_job: JobConfig,
    fourier: Any,
    weights: str,
    layer: str,
    weights_reason: str,
    seconds: dict[str, float],
) -> tuple[Path, str]:
    """Write ``out/report/index.html`` from the demo's outputs.

    Returns
    -------
    page, table
        The report page, and the precision/recall table of the new run's predictions
        against the simulated truth (the method's form).
    """
    from hpcdiff.io.featurefile import read_features
    from hpcdiff.io.labels import read_labels
    from hpcdiff.learn import DiffuseClassifier, classification_report, format_report
    from hpcdiff.learn.predictions import read_predictions

    train_dir = Path(train_job.output.dir)
    predict_dir = Path(predict_job.output.dir)
    train_report = json.loads((train_dir / "train-report.json").read_text())
    run_train = json.loads((train_dir / "train-run.json").read_text())
    model = DiffuseClassifier.load(train_job.output.model or train_dir / "model.npz")
    report = Report(
        "hpcdiff demo",
        provenance={
            "hpcdiff_version": train_report.get("hpcdiff_version"),
            "config_hash (train)": train_report.get("config_hash"),
            "weights": weights,
            "weights_sha256": train_report.get("weights_sha256"),
            "pretrained": "no: RANDOM weights" if weights.startswith("random:") else "yes",
            "feature layer": layer,
            "created_utc": train_report.get("created_utc"),
        },
    )
    report.add_section(
        "What ran",
        text=(
            f"Simulated experiment, classify job on {run_train.get('ranks', '?')} MPI rank(s) "
            f"(train, then predict on new frames), Fourier job on a dask LocalCluster. "
            f"Weights: {weights_reason}. Time: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        ),
    )

    # ---- training: held-out precision/recall, confusion matrix, PCA scatter
    report.add_section("Classifier on held-out training-run frames")
    held_out = train_report["report"]
    report.add_preformatted(format_report(held_out), title="Precision / recall (held-out)")
    cm = held_out["confusion_matrix"]
    report.add_figure(
        "Confusion matrix (held-out)",
        F.confusion_matrix_figure(np.array(cm["matrix"]), class_names=cm["labels"]),
    )
    feats = read_features(train_dir / "features.h5")
    labels_train = read_labels(train_job.experiment.labels).lookup(feats.frame_ids)
    z = model.pca_.transform(feats.features)
    report.add_figure(
        "PCA of VGG16 features (training run)",
        F.pca_scatter_figure(z, labels_train.diffuse, class_names=["non-diffuse", "diffuse"]),
        caption="first two principal components, coloured by the simulated truth",
    )

    # ---- new run: predictions against the truth
    pred = read_predictions(predict_dir / "predictions.h5")
    labels_new = read_labels(predict_job.experiment.labels).lookup(pred.frame_ids)
    y_true = np.asarray(labels_new.diffuse, dtype=np.int64)
    y_pred = (pred.diffuse_score >= 0.5).astype(np.int64)
    binary_proba = np.stack([1 - pred.diffuse_score, pred.diffuse_score], axis=1)
    new_report = classification_report(
        y_true, y_pred, binary_proba, class_names=("non-diffuse", "diffuse")
    )
    report.add_section("Predictions on a new run (checked against the simulated truth)")
    report.add_preformatted(format_report(new_report), title="Precision / recall (new run)")
    x, y = _strength_curve(np.asarray(labels_new.diffuse_strength), y_true == y_pred)
    report.add_figure(
        "Accuracy against diffuse strength (new run)",
        F.accuracy_curve_figure(
            {"VGG16 + PCA + LR": (x, y)}, xlabel="diffuse-to-background ratio (0 = non-diffuse)"
        ),
    )
    raw, residual, titles = _example_frames(predict_job, pred)
    report.add_figure(
        "Example frames: raw and after background removal",
        F.frames_figure(raw, residual, titles=titles),
        caption="top: raw ADU; bottom: normalised residual the CNN sees (Bragg peaks masked)",
    )

    # ---- Fourier job
    report.add_section("Fourier job: merge, common-arc similarity, diffusion maps")
    summary = fourier.summary
    truth_cc = summary.get("truth_correlation", {}).get("cc")
    report.add_text(
        f"{summary.get('n_frames_oriented')} frames merged into "
        f"{summary.get('voxels_measured')} voxels of a {train_job.fourier.grid_size}^3 grid"
        + (f"; correlation with the true diffuse intensity {truth_cc:.3f}" if truth_cc else "")
    )
    truth = _truth_volume(train_job)
    report.add_figure(
        "Merged reciprocal-space volume (central slices)",
        F.volume_slices_figure(
            fourier.merged.intensity(), truth=truth, extent=train_job.fourier.max_hkl
        ),
    )
    fourier_labels = (
        fourier.labels if fourier.labels is not None else np.zeros(len(fourier.frame_ids))
    )
    for name, dm in fourier.maps.items():
        aucs = [a["auc_max"] for a in summary.get("auc", {}).get(name, [])]
        report.add_figure(
            f"Diffusion map: {name}",
            F.diffusion_map_figure(
                dm.coords,
                np.asarray(fourier_labels, dtype=np.int64),
                class_names=["non-diffuse", "diffuse"],
                aucs=aucs or None,
            ),
            caption="AUC = max(AUC, 1 - AUC) of each coordinate for diffuse vs non-diffuse",
        )

    # ---- throughput
    report.add_section("Throughput")
    for kind, run in (("train", run_train), ("predict", _run_report(predict_dir, "predict"))):
        rates = _stage_rates(run)
        if rates:
            report.add_figure(
                f"Throughput per stage and rank (classify {kind})",
                F.throughput_figure(rates),
                caption=f"frames/s of each stage alone on each rank; {run.get('devices')}",
            )
    fourier_rate = summary.get("timing_s", {}).get("frames_per_s_per_worker")
    if fourier_rate:
        report.add_text(f"Fourier merge: {fourier_rate:.2f} frames/s per dask worker.")
    table = format_report(new_report, title=f"new run ({len(y_true)} frames) vs simulated truth")
    return report.write(out / "report", force=True), table


def _truth_volume(job: JobConfig) -> np.ndarray | None:
    import h5py

    path = Path(job.experiment.labels).parent / "truth.h5"
    if not path.is_file():
        return None
    with h5py.File(path, "r") as h5:
        return h5["diffuse/intensity"][...] if "diffuse/intensity" in h5 else None


def _run_report(out_dir: Path, kind: str) -> dict[str, Any]:
    path = out_dir / f"{kind}-run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _stage_rates(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``stage -> {rank: frames/s}`` from a classify run report."""
    rates: dict[str, dict[str, float]] = {}
    wanted = ("read", "preprocess", "features", "learn", "predict", "total")
    for rank, stages in enumerate(run.get("timings", [])):
        for stage in wanted:
            t = stages.get(stage)
            if isinstance(t, dict) and t.get("seconds") and t.get("frames"):
                rates.setdefault(stage, {})[str(rank)] = t["frames"] / t["seconds"]
    return rates

"""The demo's report: every part of :mod:`hpcdiff.pipelines.reports` on one page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpcdiff.config import JobConfig
from hpcdiff.pipelines import reports
from hpcdiff.pipelines.layout import ClassifyLayout


def write_demo_report(
    out: Path,
    *,
    train_job: JobConfig,
    predict_job: JobConfig,
    fourier: Any,
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
    train_run = json.loads(ClassifyLayout.from_job(train_job).stage("train").run_report.read_text())
    predict_run = json.loads(
        ClassifyLayout.from_job(predict_job).stage("predict").run_report.read_text()
    )
    report = reports.new_report("hpcdiff demo", train_job, train_run)
    report.add_section(
        "What ran",
        text=(
            f"A simulated experiment; the classify job on {train_run.get('ranks', '?')} MPI "
            "rank(s), trained on one run and applied to a new run; the Fourier job on a dask "
            f"LocalCluster. Weights: {weights_reason}. Time: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
            + "."
        ),
    )
    reports.add_training(report, train_job)
    report.add_section("New run")
    table = reports.add_predictions(report, predict_job) or ""
    reports.add_fourier(report, train_job, fourier)
    report.add_section("Throughput")
    reports.add_throughput(report, train_run, kind="train")
    reports.add_throughput(report, predict_run, kind="predict")
    return report.write(out / "report", force=True), table

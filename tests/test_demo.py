"""``hpcdiff demo`` end to end on a tiny simulated experiment (2 MPI ranks where possible)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.mpi
def test_demo_runs_end_to_end_and_says_which_weights(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "hpcdiff", "demo", "--detector", "small", "--frames", "24",
           "--new-frames", "8", "--grid", "24", "--weights", "random:0", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "RANDOM, NOT pretrained" in text
    assert re.search(r"^diffuse\s+\d\.\d{3}\s+\d\.\d{3}", text, re.M)  # precision/recall table
    page = out / "report" / "index.html"
    assert f"report: {page}" in text
    html = page.read_text()
    assert "no: RANDOM weights" in html
    n_figures = html.count("<img ")
    assert n_figures >= 8
    assert len(list((out / "report" / "figures").glob("*.png"))) == n_figures
    for job in ("train", "predict"):
        assert (out / job / "report" / "index.html").is_file()
        assert (out / job / f"{job}-run.json").is_file()
    assert (out / "train" / "model.npz").is_file()
    assert (out / "predict" / "predictions.h5").is_file()
    assert (out / "fourier" / "merged.h5").is_file()
    # nothing is overwritten without --force
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "--force" in again.stderr

"""The HTML report: content, escaping, no overwrite, and every figure loads in a real browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from hpcdiff.errors import OutputExistsError
from hpcdiff.report import Report
from hpcdiff.report import figures as F


def _all_figures() -> dict:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(40, 50)).astype(np.float32)
    img[:, 20:23] = np.nan  # a panel gap
    vol = rng.random((16, 16, 16))
    vol[vol < 0.3] = np.nan
    return {
        "frames": F.frames_figure([img, img], [img - 1, img + 1], titles=["a", "b"]),
        "pca": F.pca_scatter_figure(
            rng.normal(size=(30, 3)), rng.integers(0, 2, 30), class_names=["non-diffuse", "diffuse"]
        ),
        "confusion": F.confusion_matrix_figure(
            np.array([[5, 1], [2, 7]]), class_names=["non-diffuse", "diffuse"]
        ),
        "accuracy": F.accuracy_curve_figure({"radial": (np.arange(4), np.linspace(0.5, 1, 4))}),
        "diffusion": F.diffusion_map_figure(
            rng.normal(size=(20, 2)),
            rng.integers(0, 2, 20),
            class_names=["n", "d"],
            aucs=[0.9, 0.6],
        ),
        "volume": F.volume_slices_figure(vol, truth=vol),
        "throughput": F.throughput_figure({"read": 100.0, "vgg16": {"0": 3.0, "1": 2.9}}),
        "runs": F.run_fraction_figure(["r1", "r2"], [0.1, np.nan]),
    }


def test_empty_and_nan_inputs_make_figures_not_errors():
    figs = [
        F.frames_figure([], []),
        F.pca_scatter_figure(np.empty((0, 2)), np.empty(0), class_names=["a"]),
        F.confusion_matrix_figure(np.empty((0, 0)), class_names=[]),
        F.accuracy_curve_figure({"x": (np.array([np.nan]), np.array([np.nan]))}),
        F.diffusion_map_figure(np.full((5, 2), np.nan), np.zeros(5), class_names=["a"]),
        F.volume_slices_figure(np.full((4, 4, 4), np.nan)),
        F.throughput_figure({}),
        F.run_fraction_figure([], []),
    ]
    rep = Report("empty")
    for i, fig in enumerate(figs):
        rep.add_figure(f"f{i}", fig)
    assert rep.n_figures == len(figs)


def test_text_is_escaped_and_tables_checked(tmp_path):
    rep = Report("<b>x</b>", provenance={"weights": "random:0 <not pretrained>"})
    rep.add_section("A & B", text="<script>alert(1)</script>")
    rep.add_table("t", [["diffuse", 0.95, float("nan")]], columns=["class", "precision", "recall"])
    page = rep.render()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "random:0 &lt;not pretrained&gt;" in page
    assert "0.950" in page and "n/a" in page
    with pytest.raises(ValueError, match="row 0 has 2 cells, expected 3"):
        rep.add_table("bad", [[1, 2]], columns=["a", "b", "c"])
    with pytest.raises(ValueError, match="not a PNG"):
        rep.add_figure("bad", b"GIF89a")


def test_write_never_overwrites_without_force(tmp_path):
    rep = Report("r")
    rep.add_figure("one", F.throughput_figure({"read": 1.0}))
    page = rep.write(tmp_path / "report")
    assert page.read_text().startswith("<!DOCTYPE html>")
    assert len(list((tmp_path / "report" / "figures").glob("*.png"))) == 1
    with pytest.raises(OutputExistsError, match="--force"):
        rep.write(tmp_path / "report")
    rep.write(tmp_path / "report", force=True)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "chromium"],
            capture_output=True,
            timeout=900,
        )
        exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Debian's chromium is not installed and cannot be installed here (needs root)")
    return exe


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.slow
def test_every_figure_loads_in_headless_chromium(tmp_path):
    exe = _chromium()
    rep = Report("hpcdiff report test", provenance={"hpcdiff_version": "test"})
    rep.add_section("All figures")
    figs = _all_figures()
    for name, fig in figs.items():
        rep.add_figure(name, fig, caption=f"the {name} figure")
    page = rep.write(tmp_path / "report")
    profile = tmp_path / "profile"
    out = subprocess.run(
        [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    total = re.search(r'data-images-total="(\d+)"', out.stdout)
    loaded = re.search(r'data-images-loaded="(\d+)"', out.stdout)
    assert total and loaded, f"page did not finish loading: {out.stderr[-2000:]}"
    assert int(total.group(1)) == len(figs)
    assert int(loaded.group(1)) == len(figs)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 10_000

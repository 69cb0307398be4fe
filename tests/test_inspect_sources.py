"""``hpcdiff inspect`` on the frame sources beside CXI: an NXmx file, a European XFEL run
directory and a psana2 XTC2 file (where the optional packages are installed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_sources_nxmx import N_FS, N_SS, write_nxmx  # noqa: E402


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(["inspect", *args])
    out, _ = capsys.readouterr()
    return status, out


def test_nxmx(tmp_path, capsys):
    frames = np.zeros((3, 2 * N_SS, N_FS), np.uint16)
    path = write_nxmx(tmp_path / "x_master.h5", frames)
    status, out = _run(capsys, str(path), "--json")
    assert status == 0
    summary = json.loads(out)
    assert summary["kind"] == "nxmx" and summary["n_frames"] == 3
    assert summary["slab_shape"] == [2 * N_SS, N_FS] and summary["dtype"] == "uint16"
    assert summary["modules"] == 2 and summary["pixel_size_m"] == pytest.approx([5e-4, 5e-4])
    assert summary["beam_centre_px"] == pytest.approx([16.0, 20.0])
    assert summary["first_ids"][0] == f"{path}//0"
    status, out = _run(capsys, str(path))
    assert status == 0 and "NXmx file" in out and "beam centre px" in out


def test_euxfel_run_directory(tmp_path, capsys):
    pytest.importorskip(
        "extra_data", reason="extra-data not installed: pip install hpcdiff[euxfel]"
    )
    from test_sources_euxfel import make_agipd_run

    run = make_agipd_run(tmp_path / "r0001", ntrains=2, per_train=3)
    status, out = _run(capsys, str(run), "--json")
    assert status == 0
    summary = json.loads(out)
    assert summary["kind"] == "euxfel" and summary["n_frames"] == 6
    assert summary["slab_shape"] == [8192, 128] and summary["trains"] == 2
    assert summary["frames_per_train"] == [3] and summary["detector"].startswith("AGIPD1M")
    status, out = _run(capsys, str(run))
    assert status == 0 and "European XFEL run directory" in out


def test_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) != 0
    _, err = capsys.readouterr()
    assert "not a European XFEL run directory" in err and str(tmp_path) in err


def test_xtc2(tmp_path, capsys):
    pytest.importorskip("psana", reason="psana2 not installed: pip install hpcdiff[psana]")
    from test_sources_psana2 import write_xtc2

    path = write_xtc2(tmp_path / "r.xtc2")
    status, out = _run(capsys, str(path), "--json")
    assert status == 0
    summary = json.loads(out)
    assert summary["kind"] == "psana2" and summary["n_frames"] == 5
    assert summary["detector"] == "amopnccd" and summary["photon_energy_ev"] == 9200.0

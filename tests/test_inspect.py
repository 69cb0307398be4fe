"""``hpcdiff inspect`` on the real CrystFEL fixtures and on CXI files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.cli import main
from hpcdiff.io.cxi import write_cxi


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["inspect", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_geometry(capsys: pytest.CaptureFixture[str], real_fixtures: Path) -> None:
    path = real_fixtures / "om_cxi06216_v4-predrefine.geom"
    status, out, _ = _run(capsys, str(path), "--json")
    assert status == 0
    summary = json.loads(out)
    assert summary["kind"] == "geometry" and summary["panels"] == 64
    assert summary["pixels"] == 64 * 194 * 185
    assert summary["slab_shape"] == [1480, 1552]
    h, w = summary["assembled_shape"]
    assert abs(h - 1734) <= 5 and abs(w - 1737) <= 5  # SOURCES.md: about 1734 x 1737
    # the assembled image must hold the largest radius on both sides of the beam
    assert max(h, w) / 2 < summary["largest_radius_px"] < np.hypot(h, w) / 2
    assert summary["clen"] == "/LCLS/detector_1/EncoderValue"
    status, out, _ = _run(capsys, str(path))
    assert status == 0
    assert "CrystFEL geometry" in out and "1480 x 1552 (n_ss x n_fs)" in out
    assert f"{summary['assembled_shape'][0]} x {summary['assembled_shape'][1]} (H x W)" in out


def test_streams(capsys: pytest.CaptureFixture[str], real_fixtures: Path) -> None:
    status, out, _ = _run(capsys, str(real_fixtures / "crystfel_tests_test.stream"), "--json")
    assert status == 0
    summary = json.loads(out)
    assert (summary["chunks"], summary["hits"], summary["crystals"]) == (70, 70, 32)
    assert summary["lattice_types"] == {"orthorhombic/C": 32}
    assert summary["median_cell"]["b_nm"] == pytest.approx(12.26, abs=0.1)
    assert summary["geometry"] == {"panels": 64, "slab_shape": [1480, 1552]}
    status, out, _ = _run(capsys, str(real_fixtures / "rs_tests_crystfel.stream"))
    assert status == 0
    assert "CrystFEL stream" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line.strip()}
    assert lines["chunks"] == ["3"] and lines["crystals"] == ["3"]
    assert "slab 1440 x 1440" in out


def test_cxi_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    frames = np.zeros((3, 20, 10), dtype=np.float32)
    path = write_cxi(
        tmp_path / "run.cxi",
        frames,
        compression="lz4",
        per_frame={"/LCLS/photon_energy_eV": [1.0, 2.0, 3.0]},
    )
    status, out, _ = _run(capsys, str(path), "--json")
    assert status == 0
    summary = json.loads(out)
    assert (
        summary["kind"] == "hdf5"
        and summary["n_frames"] == 3
        and summary["frame_shape"] == [20, 10]
    )
    data = {d["path"]: d for d in summary["datasets"]}
    assert data["/entry_1/data_1/data"]["compression"] == ["lz4"]
    assert data["/entry_1/data_1/data"]["dtype"] == "float32"
    status, out, _ = _run(capsys, str(path))
    row = next(line for line in out.splitlines() if line.strip().startswith("/entry_1/data_1/data"))
    assert row.split() == [
        "/entry_1/data_1/data",
        "3",
        "x",
        "20",
        "x",
        "10",
        "float32",
        "1",
        "x",
        "20",
        "x",
        "10",
        "lz4",
    ]
    # an HDF5 file without a known suffix is recognised by its signature
    renamed = path.rename(tmp_path / "run.data")
    assert _run(capsys, str(renamed))[0] == 0


def test_unknown_and_missing_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    status, out, err = _run(capsys, str(notes))
    assert status == 1 and out == ""
    assert "notes.txt: unknown file type .txt; expected a CrystFEL geometry (.geom)" in err
    status, _, err = _run(capsys, str(tmp_path / "absent.stream"))
    assert status == 1 and "absent.stream: file not found" in err
    bad = tmp_path / "bad.stream"
    bad.write_text("CrystFEL stream format 2.3\n----- Begin chunk -----\nImage filename: x.h5\n")
    status, _, err = _run(capsys, str(bad))
    assert status == 1 and "bad.stream, line 2: chunk is truncated" in err

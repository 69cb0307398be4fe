"""``hpcdiff simulate --like`` a target whose frames are NXmx files (geometry from their
NXtransformations) or a European XFEL run (JUNGFRAU, EXtra-geom geometry): the simulated
experiment copies the target's geometry, layout, dtype, distance and energy, and its frames
read back with the written geometry."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_sources_nxmx import DISTANCE_MM, N_FS, N_SS, WAVELENGTH_A, write_nxmx

from hpcdiff.config import SimulateConfig
from hpcdiff.errors import ConfigError
from hpcdiff.geometry import pixel_positions_m
from hpcdiff.io.cxi import FrameSource
from hpcdiff.io.geom import HC_EV_M, read_geom
from hpcdiff.simulate import simulate_experiment

BASE = SimulateConfig(
    n_frames=2,
    seed=7,
    detector="small",
    frames_per_file=2,
    diffuse_fraction=0.5,
    truth_grid_size=8,
    truth_max_hkl=4.0,
    cell_nm=(4.5, 5.0, 3.5),
    compression="none",
)


def _target_job(root: Path, frames: str, geometry: str | None = None) -> Path:
    geom = f'geometry = "{geometry}"' if geometry else ""
    job = root / "target.toml"
    job.write_text(textwrap.dedent(f'[experiment]\nframes = ["{frames}"]\n{geom}\n'))
    return job


def _read_back(exp, geom) -> np.ndarray:
    with FrameSource(exp.frame_files, geometry=geom) as src:
        return src.read(0, src.n_frames)


def test_like_an_nxmx_target_takes_the_files_geometry(tmp_path):
    from hpcdiff.io.sources.nxmx import read_nxmx

    frames = np.zeros((3, 2 * N_SS, N_FS), np.uint16)
    master = write_nxmx(
        tmp_path / "scan_master.h5", frames, two_theta_deg=25.0
    )  # covers the 2..4 nm^-1 ratio band
    job = _target_job(tmp_path, "scan_master.h5")
    exp = simulate_experiment(dataclasses.replace(BASE, like=job), tmp_path / "like")
    manifest = json.loads(exp.manifest.read_text())
    params = manifest["parameters"]
    assert params["geometry_layout"] == "file" and params["frames_per_file"] == 3
    assert params["data_path"] == "/entry/data/data" and params["output_dtype"] == "int16"
    original = read_nxmx(master).geometry
    p0 = original.panels[0]  # on the two-theta arm: z of the first module's corner
    assert p0.clen < DISTANCE_MM * 1e-3
    assert manifest["experiment"]["detector_distance_m"] == pytest.approx(p0.clen + p0.coffset_m)
    energy = HC_EV_M / (WAVELENGTH_A * 1e-10)
    assert manifest["experiment"]["photon_energy_ev"] == pytest.approx(energy)
    with h5py.File(exp.frame_files[0], "r") as h5:
        assert h5["/entry/data/data"].shape == (2, 2 * N_SS, N_FS)
        assert h5["/entry/data/data"].dtype == np.int16
    written = read_geom(exp.geometry)
    assert written.slab_shape == original.slab_shape
    np.testing.assert_allclose(
        pixel_positions_m(written), pixel_positions_m(original), atol=1e-9, equal_nan=True
    )
    back = _read_back(exp, written)
    assert back.shape == (2, 2 * N_SS, N_FS) and np.isfinite(back).all() and back.max() > 0


def test_like_a_target_without_any_geometry_is_refused(tmp_path):
    from hpcdiff.io.cxi import write_cxi

    write_cxi(tmp_path / "plain.cxi", np.zeros((2, 8, 8), np.float32), compression=None)
    job = _target_job(tmp_path, "plain.cxi")
    with pytest.raises(ConfigError, match="geometry is needed to simulate like it"):
        simulate_experiment(dataclasses.replace(BASE, like=job), tmp_path / "x")


def test_like_a_european_xfel_run_keeps_the_module_layout(tmp_path):
    pytest.importorskip(
        "extra_data", reason="extra-data not installed: pip install hpcdiff[euxfel]"
    )
    extra_geom = pytest.importorskip("extra_geom", reason="EXtra-geom not installed")
    from extra_data.tests.mockdata import write_file
    from extra_data.tests.mockdata.jungfrau import JUNGFRAUModule

    run = tmp_path / "r0007"
    run.mkdir()
    for m in (1, 2):
        write_file(
            str(run / f"CORR-R0007-JNGFR{m:02}-S00000.h5"),
            [JUNGFRAUModule(f"SPB_IRDA_JF4M/CORR/JNGFR{m:02}")],
            ntrains=1,
            chunksize=1,
            format_version="1.0",
        )
    geom_xg = extra_geom.JUNGFRAUGeometry.from_module_positions([(0, 0), (0, -560)])
    geom_path = tmp_path / "jf.geom"
    geom_xg.write_crystfel_geom(
        str(geom_path), dims=("frame", "modno", "ss", "fs"), clen=0.11, photon_energy=9000
    )
    job = _target_job(tmp_path, "r0007", "jf.geom")
    exp = simulate_experiment(dataclasses.replace(BASE, like=job), tmp_path / "like")
    params = json.loads(exp.manifest.read_text())["parameters"]
    assert params["output_dtype"] == "float32"  # CORR frames
    assert params["frames_per_file"] == 16  # one train of 16 memory cells
    manifest = json.loads(exp.manifest.read_text())["experiment"]
    assert manifest["detector_distance_m"] == pytest.approx(0.11)
    assert manifest["photon_energy_ev"] == pytest.approx(9000.0)
    data_path = "/entry_1/instrument_1/detector_1/data"
    with h5py.File(exp.frame_files[0], "r") as h5:
        assert h5[data_path].shape == (2, 2, 512, 1024)  # (frame, module, ss, fs)
        stored = h5[data_path][()]
    geom = read_geom(exp.geometry)
    back = _read_back(exp, geom)
    assert back.shape == (2, 1024, 1024)
    np.testing.assert_array_equal(back, stored.reshape(2, 1024, 1024))  # module m at rows m*512

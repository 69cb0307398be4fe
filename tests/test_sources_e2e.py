"""The classify job's per-frame stage on sources beside CXI: a tiny NXmx file (geometry from
its own NXtransformations) and a tiny European XFEL mock run (geometry from a .geom file),
selected by ``[experiment] source`` or detected; features with random weights."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.config import load_job
from hpcdiff.errors import ConfigError
from hpcdiff.io.featurefile import read_features
from hpcdiff.parallel.mpi import SelfComm
from hpcdiff.pipelines.classify import probe_files, run_features

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_sources_nxmx import N_FS, N_SS, write_nxmx  # noqa: E402

JOB = """\
[experiment]
name = "{name}"
frames = [{frames}]
{extra}
[corrections]
bad_pixel_frames = 0
common_mode = false
[background]
n_radial_bins = 20
image_size_px = 64
[features]
weights = "random:0"
layer = "gap"
batch_size = 4
device = "cpu"
bf16 = false
channels_last = false
[parallel]
checkpoint_every = 4
threads_per_rank = 1
[output]
dir = "out_{name}"
"""


def _job(tmp_path: Path, name: str, frames: list[str], extra: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(JOB.format(name=name, frames=", ".join(f'"{f}"' for f in frames), extra=extra))
    return path


def _check_features(job_path: Path, ids: list) -> None:
    out = run_features(load_job(job_path), comm=SelfComm())
    feats = read_features(out)
    assert feats.frame_ids == ids
    assert feats.features.shape == (len(ids), 512)
    assert np.isfinite(feats.features).all()
    assert np.ptp(feats.features, axis=0).max() > 0  # frames differ, so do their features


def test_nxmx_file_runs_through_the_feature_stage(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.poisson(2.0, (6, 2 * N_SS, N_FS)).astype(np.uint16)
    frames[3] += 20  # one bright frame
    write_nxmx(tmp_path / "scan_master.h5", frames)
    job = _job(tmp_path, "nxmx", ["scan_master.h5"])  # detected; no geometry file
    run = probe_files(load_job(job))
    assert run.frames_per_file == (6,) and not run.file_rejects
    from hpcdiff.io.cxi import FrameId

    _check_features(job, [FrameId(str(tmp_path / "scan_master.h5"), i) for i in range(6)])


def test_euxfel_run_runs_through_the_feature_stage(tmp_path):
    pytest.importorskip(
        "extra_data", reason="extra-data not installed: pip install hpcdiff[euxfel]"
    )
    import h5py
    from test_sources_euxfel import _agipd_source, make_agipd_run

    from hpcdiff.io.geom import DetectorGeometry, Panel, write_geom
    from hpcdiff.io.sources.euxfel import EuXFELSource

    run = make_agipd_run(tmp_path / "r0001", ntrains=2, per_train=3)
    rng = np.random.default_rng(1)
    for m in range(16):
        with h5py.File(run / f"CORR-R0001-AGIPD{m:02}-S00000.h5", "r+") as h5:
            data = h5[f"INSTRUMENT/{_agipd_source(m)}/image/data"]
            data[...] = rng.poisson(1.0, data.shape).astype(np.float32)
    # 16 modules as horizontal strips (ss along x, fs along y), 200 um pixels, 0.1 m away
    panels = [
        Panel(
            name=f"p{m}",
            min_fs=0,
            max_fs=127,
            min_ss=512 * m,
            max_ss=512 * m + 511,
            fs=(0.0, 1.0, 0.0),
            ss=(1.0, 0.0, 0.0),
            corner_x=-256.0,
            corner_y=(m - 8) * 136.0 + 4.0,
            res=5000.0,
            clen=0.1,
            adu_per_photon=1.0,
        )
        for m in range(16)
    ]
    geom = DetectorGeometry(panels=tuple(panels), photon_energy=9300.0)
    write_geom(geom, tmp_path / "agipd.geom")
    job = _job(tmp_path, "euxfel", ["r0001"], 'geometry = "agipd.geom"\nsource = "euxfel"')
    with EuXFELSource([run], geometry=geom) as src:
        ids = src.frame_ids
    assert len(ids) == 6
    _check_features(job, ids)


def test_wrong_source_is_a_clear_rejection(tmp_path):
    rng = np.random.default_rng(0)
    write_nxmx(tmp_path / "a.nxs", rng.poisson(2.0, (2, 2 * N_SS, N_FS)).astype(np.uint16))
    job = _job(tmp_path, "wrong", ["a.nxs"], 'source = "euxfel"')
    with pytest.raises(ConfigError, match="none of the 1 frame files can be read") as err:
        probe_files(load_job(job))
    assert "a.nxs" in str(err.value) and "not a European XFEL run directory (a file)" in str(
        err.value
    )

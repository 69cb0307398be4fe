"""The Fourier job on frame sources beside CXI: NXmx frames (geometry from the file) merge
exactly as the same frames in a CXI file with the same geometry; stream chunks are matched
by each source's frame naming, and a chunk naming a frame the run lacks is an error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_fourier_job import ENERGY_EV, make_frames
from test_sources_nxmx import N_FS, N_SS, write_nxmx

from hpcdiff.config import load_job
from hpcdiff.errors import FormatError
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.sources.stream_match import FrameMatcher
from hpcdiff.pipelines.fourier import FourierSettings
from hpcdiff.pipelines.fourier_frames import plan_frames, process_chunk, scale_pass

N = 6


def _stream(
    path: Path,
    name: str,
    orientations: np.ndarray,
    *,
    extra: int | None = None,
    energy: float | None = ENERGY_EV,
) -> None:
    from hpcdiff.io.stream import Chunk, Crystal, Stream, write_stream

    chunks = [
        Chunk(
            f"/beamline/raw/{name}",
            event=f"//{i}",
            photon_energy_ev=energy,
            crystals=(Crystal(None, *(tuple(r) for r in orientations[i])),),
        )
        for i in range(len(orientations))
    ]
    chunks.append(Chunk("other_run.h5", event="//0", crystals=chunks[0].crystals))  # skipped
    if extra is not None:
        chunks.append(Chunk(name, event=f"//{extra}", crystals=chunks[0].crystals))
    write_stream(Stream(chunks=tuple(chunks)), path)


def _job(root: Path, frames: str, *, geometry: str | None, stream: str, name: str = "") -> Path:
    geom = f'geometry = "{geometry}"' if geometry else ""
    path = root / f"job_{Path(frames).stem}{name}.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [experiment]
            frames = ["{frames}"]
            stream = "{stream}"
            {geom}

            [corrections]
            bad_pixel_frames = 0

            [background]
            method = "radial"
            n_radial_bins = 12

            [fourier]
            grid_size = 12
            max_hkl = 6.0
            min_overlap = 1
            frames_per_task = 3
            """
        )
    )
    return path


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """The same frames as an NXmx master file (geometry from its NXtransformations) and as a
    CXI file with that geometry written as a ``.geom``, each with its own stream."""
    from hpcdiff.io.cxi import write_cxi
    from hpcdiff.io.geom import write_geom
    from hpcdiff.io.sources.nxmx import read_nxmx

    root = tmp_path_factory.mktemp("fsrc")
    master = write_nxmx(root / "scan_master.h5", np.zeros((N, 2 * N_SS, N_FS), np.uint16))
    geom = read_nxmx(master).geometry
    frames, orientations, _, _ = make_frames(geom, N, seed=3)
    frames = np.round(frames / frames.max() * 50000).astype(np.uint16)
    master.unlink()
    write_nxmx(master, frames)
    write_geom(geom, root / "twin.geom")
    write_cxi(root / "twin.cxi", frames.astype(np.float32), compression=None)
    _stream(root / "nxmx.stream", "scan_master.h5", orientations)
    _stream(root / "cxi.stream", "twin.cxi", orientations)
    nx = _job(root, "scan_master.h5", geometry=None, stream="nxmx.stream")
    cx = _job(root, "twin.cxi", geometry="twin.geom", stream="cxi.stream")
    return nx, cx, orientations


def test_nxmx_frames_merge_as_their_cxi_twin(twins):
    nx_path, cx_path, orientations = twins
    nx_job, cx_job = load_job(nx_path), load_job(cx_path)
    nx, cx = plan_frames(nx_job), plan_frames(cx_job)
    assert nx.source_kind == "nxmx" and cx.source_kind == "cxi"
    assert nx.geometry.slab_shape == (2 * N_SS, N_FS)  # the file's own geometry
    np.testing.assert_array_equal(nx.numbers, np.arange(N))
    np.testing.assert_allclose(nx.orientations, orientations)
    assert [f.index for f in nx.frame_ids] == list(range(N))
    np.testing.assert_allclose(nx.model_clen_m, cx.model_clen_m)
    settings = FourierSettings.from_job(nx_job, plan=nx)
    a, fa = process_chunk(nx, range(N), settings)
    b, fb = process_chunk(cx, range(N), FourierSettings.from_job(cx_job, plan=cx))
    assert a.n_frames == b.n_frames == N
    assert np.count_nonzero(a.counts) > 0
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.sums, b.sums, rtol=1e-5, atol=1e-6 * np.abs(b.sums).max())
    # a worker reopens the plan's source from what the plan holds (pickled to dask)
    import pickle

    again, _ = process_chunk(pickle.loads(pickle.dumps(nx)), [1, 4], settings)
    part, _ = process_chunk(nx, [1, 4], settings)
    np.testing.assert_array_equal(again.counts, part.counts)


def test_a_chunk_naming_a_frame_the_nxmx_file_lacks_is_an_error(twins, tmp_path):
    nx_path, _, orientations = twins
    root = nx_path.parent
    _stream(tmp_path / "bad.stream", "scan_master.h5", orientations, extra=N + 3)
    job = load_job(
        _job(
            root, "scan_master.h5", geometry=None, stream=str(tmp_path / "bad.stream"), name="_bad"
        )
    )
    with pytest.raises(FormatError, match=rf"frame {N + 3} of scan_master.h5.*does not have") as e:
        plan_frames(job)
    assert e.value.line is not None and e.value.line > 1
    # `hpcdiff check --for fourier` lists it before the job is queued; the good stream passes
    from hpcdiff.pipelines.preflight import check_job

    def stream_problems(j):
        return [p for p in check_job(j, mode="fourier").problems if "stream" in p.where]

    problems = stream_problems(job)
    assert [p.where for p in problems] == [f"[experiment.stream] {tmp_path / 'bad.stream'}"]
    assert f"frame {N + 3} of scan_master.h5" in str(problems[0])
    assert not stream_problems(load_job(nx_path))


def test_euxfel_chunks_name_train_and_pulse():
    """European XFEL frames: the run directory plus ``//train_id * 10000 + pulse``."""
    from hpcdiff.io.sources.euxfel import frame_id

    ids = [frame_id("/gpfs/exfel/proc/r0142", t, p) for t in (10000012, 10000013) for p in (0, 2)]
    m = FrameMatcher(ids, kind="euxfel")
    assert m.number("/elsewhere/r0142", 10000013 * 10000 + 2) == 3
    assert m.number("r0142/", 10000012 * 10000) == 0
    assert m.number("r0143", 10000012 * 10000) is None  # another run: skipped
    with pytest.raises(FormatError, match="train 10000012, pulse 1 of r0142"):
        m.number("r0142", 10000012 * 10000 + 1, stream="x.stream", line=7)
    with pytest.raises(FormatError, match="without an event"):
        m.number("r0142", None, stream="x.stream")
    cxi = FrameMatcher([FrameId("/d/a.cxi", 0), FrameId("/d/a.cxi", 1)], kind="cxi")
    assert cxi.number("a.cxi", None) == 0 and cxi.number("/x/a.cxi", 1) == 1


def test_run_fourier_on_nxmx_frames(twins, tmp_path):
    """The whole job on a one-worker dask client: the merged grid is the serial merge."""
    import os

    import h5py
    from distributed import Client

    from hpcdiff.pipelines.fourier import run_fourier

    nx_path, _, _ = twins
    job = load_job(nx_path)
    plan = plan_frames(job)
    settings = FourierSettings.from_job(job, plan=plan)
    serial, _ = process_chunk(plan, range(N), settings)
    for _ in range(settings.chain.scale_passes):  # the job's scale passes, as it runs them
        serial, _ = scale_pass(plan, range(N), settings, serial)
    with (
        Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None),
        open(os.devnull, "w") as log,
    ):
        run_fourier(job, Client.current(), out_dir=tmp_path, log=log)
    with h5py.File(tmp_path / "merged.h5") as h5:
        np.testing.assert_array_equal(h5["counts"][()], serial.counts.reshape(serial.grid.shape))
        np.testing.assert_allclose(
            h5["sums"][()], serial.sums.reshape(serial.grid.shape), rtol=1e-10, atol=1e-12
        )


def test_energies_per_frame_from_the_nxmx_file(twins, tmp_path):
    """A stream without photon energies: each frame's comes from the NXmx file's
    per-frame wavelength, in the merge and in the grid's q range."""
    from hpcdiff.fourier_grid import detector_q_max, plan_q_max
    from hpcdiff.io.geom import HC_EV_M

    _, _, orientations = twins
    wavelength_a = np.linspace(1.0, 1.5, N)
    frames = np.full((N, 2 * N_SS, N_FS), 100, np.uint16)
    write_nxmx(tmp_path / "w_master.h5", frames, per_frame_wavelength=wavelength_a)
    _stream(tmp_path / "w.stream", "w_master.h5", orientations, energy=None)
    job = load_job(_job(tmp_path, "w_master.h5", geometry=None, stream="w.stream"))
    plan = plan_frames(job)
    assert plan.geometry.photon_energy is None and np.isnan(plan.photon_energy_ev).all()
    energies = HC_EV_M / (wavelength_a * 1e-10)
    assert plan.model_photon_energy_ev == pytest.approx(energies[0])
    want = detector_q_max(plan.geometry, photon_energy_ev=energies.max(), clen_m=None)
    assert plan_q_max(plan) == pytest.approx(want)
    acc, _ = process_chunk(plan, range(N), FourierSettings.from_job(job, plan=plan))
    assert acc.n_frames == N


def test_plan_and_merge_a_european_xfel_run(tmp_path):
    """JUNGFRAU run (extra-data mock files, EXtra-geom geometry): chunks naming the run
    directory and ``//train_id * 10000 + pulse`` select those frames; they merge."""
    pytest.importorskip(
        "extra_data", reason="extra-data not installed: pip install hpcdiff[euxfel]"
    )
    extra_geom = pytest.importorskip("extra_geom", reason="EXtra-geom not installed")
    import h5py
    from extra_data.tests.mockdata import write_file
    from extra_data.tests.mockdata.jungfrau import JUNGFRAUModule

    from hpcdiff.io.sources.euxfel import frame_id, train_pulse

    run = tmp_path / "r0042"
    run.mkdir()
    rng = np.random.default_rng(2)
    for m in (1, 2):
        path = run / f"CORR-R0042-JNGFR{m:02}-S00000.h5"
        write_file(
            str(path),
            [JUNGFRAUModule(f"SPB_IRDA_JF4M/CORR/JNGFR{m:02}")],
            ntrains=2,
            chunksize=1,
            format_version="1.0",
        )
        with h5py.File(path, "r+") as h5:
            adc = h5[f"INSTRUMENT/SPB_IRDA_JF4M/CORR/JNGFR{m:02}:daqOutput/data/adc"]
            adc[...] = rng.uniform(50, 150, adc.shape).astype(adc.dtype)
    geom_xg = extra_geom.JUNGFRAUGeometry.from_module_positions([(0, 0), (0, -560)])
    geom_xg.write_crystfel_geom(
        str(tmp_path / "jf.geom"),
        dims=("frame", "modno", "ss", "fs"),
        clen=0.1,
        photon_energy=9500,
        adu_per_ev=0.01,
    )
    from hpcdiff.io.sources import open_source
    from hpcdiff.io.stream import Chunk, Crystal, Stream, write_stream

    with open_source([run]) as src:
        ids = src.frame_ids
    chosen = [3, 17, 30]  # global frames: (train, memory cell) of both trains
    orientations = np.stack([np.diag([1 / 7.9, 1 / 7.9, 1 / 3.8])] * 3)
    chunks = [
        Chunk(
            f"/gpfs/exfel/proc/{run.name}",
            event=f"//{ids[k].index}",
            crystals=(Crystal(None, *(tuple(r) for r in orientations[j])),),
        )
        for j, k in enumerate(chosen)
    ]
    write_stream(Stream(chunks=tuple(chunks)), tmp_path / "run.stream")
    job = load_job(_job(tmp_path, "r0042", geometry="jf.geom", stream="run.stream"))
    plan = plan_frames(job)
    assert plan.source_kind == "euxfel" and plan.n_frames_total == 32
    np.testing.assert_array_equal(plan.numbers, chosen)
    train, cell = train_pulse(plan.frame_ids[1])
    assert plan.frame_ids[1] == frame_id(str(run), train, cell)
    acc, _ = process_chunk(plan, range(3), FourierSettings.from_job(job, plan=plan))
    assert acc.n_frames == 3 and np.count_nonzero(acc.counts) > 0
    # a frame id the run lacks (a third train) is named
    bad = Chunk(run.name, event=f"//{(train + 5) * 10000}", crystals=chunks[0].crystals)
    write_stream(Stream(chunks=(*chunks, bad)), tmp_path / "bad.stream", force=True)
    job = load_job(_job(tmp_path, "r0042", geometry="jf.geom", stream="bad.stream", name="_b"))
    with pytest.raises(FormatError, match=f"train {train + 5}, pulse 0 of r0042"):
        plan_frames(job)


def test_plan_and_merge_a_psana2_run(tmp_path):
    """XTC2 run (psana's DgramEdit): chunks ``run.xtc2 //N`` select event N; each frame's
    photon energy comes from the run (the stream has none)."""
    pytest.importorskip("psana", reason="psana not installed")
    from test_sources_psana2 import ENERGIES, N_SEG, write_xtc2
    from test_sources_psana2 import N_FS as P_FS
    from test_sources_psana2 import N_SS as P_SS

    from hpcdiff.io.stream import Chunk, Crystal, Stream, write_stream

    run = write_xtc2(tmp_path / "run0003.xtc2")
    n_ss = N_SEG * P_SS
    (tmp_path / "pnccd.geom").write_text(
        "clen = 0.08\nres = 5000\nadu_per_eV = 0.01\n"
        + "".join(
            f"p0/{k} = {v}\n"
            for k, v in (
                ("min_fs", 0),
                ("max_fs", P_FS - 1),
                ("min_ss", 0),
                ("max_ss", n_ss - 1),
                ("fs", "+1.0x +0.0y +0.0z"),
                ("ss", "+0.0x +1.0y +0.0z"),
                ("corner_x", -P_FS / 2),
                ("corner_y", -n_ss / 2),
            )  # fmt: skip
        )
    )
    chosen = [1, 4]
    a = np.diag([1 / 7.9, 1 / 7.9, 1 / 3.8])
    chunks = [Chunk(f"/sdf/data/{run.name}", event=f"//{k}", crystals=(Crystal(None, *a),))
              for k in chosen]  # fmt: skip
    write_stream(Stream(chunks=tuple(chunks)), tmp_path / "run.stream")
    job = load_job(_job(tmp_path, run.name, geometry="pnccd.geom", stream="run.stream"))
    plan = plan_frames(job)
    assert plan.source_kind == "psana2" and plan.n_frames_total == len(ENERGIES)
    np.testing.assert_array_equal(plan.numbers, chosen)
    assert plan.model_photon_energy_ev == pytest.approx(ENERGIES[0])
    acc, _ = process_chunk(plan, range(2), FourierSettings.from_job(job, plan=plan))
    assert acc.n_frames == 2 and np.count_nonzero(acc.counts) > 0

"""The Fourier job end to end: a tiny experiment with a known 3D map, dask clusters, CLI."""

from __future__ import annotations

import functools
import json
import operator
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcdiff.config import BackgroundConfig, ClusterConfig, load_job
from hpcdiff.merge import Grid, map_correlation
from hpcdiff.parallel.dask_cluster import slurm_cluster, slurm_cluster_kwargs
from hpcdiff.pipelines.fourier import (
    FourierSettings,
    process_frames,
    read_truth,
)
from hpcdiff.pipelines.fourier_frames import ChainSettings, FrameChain, scale_pass

CELL_NM = (7.9, 7.9, 3.8)
ENERGY_EV = 9500.0
N_FRAMES = 16
MAX_HKL = 12.0


def field3d(hkl: np.ndarray) -> np.ndarray:
    """The experiment's true diffuse map, a smooth function of fractional hkl."""
    h, k, l = hkl[..., 0], hkl[..., 1], hkl[..., 2]  # noqa: E741
    return np.cos(2 * np.pi * h / 6) * np.cos(2 * np.pi * k / 6) + 0.7 * np.sin(2 * np.pi * l / 5)


def rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def make_frames(geom, n: int, *, seed: int = 0):
    """Frames (ADU), orientations and labels of a tiny experiment on ``geom``."""
    from hpcdiff.geometry import DetectorModel

    model = DetectorModel.build(geom, clen_m=0.1, photon_energy_ev=ENERGY_EV)
    rng = np.random.default_rng(seed)
    q = model.q_vectors
    corr = model.polarisation * model.solid_angle_sr
    q_abs = model.q_abs
    orientations = np.stack([np.diag(1 / np.array(CELL_NM)) @ rotation(rng).T for _ in range(n)])
    labels = (np.arange(n) % 2).astype(np.int8)  # alternate diffuse / not diffuse
    frames = np.empty((n, *model.slab_shape), np.float32)
    for i in range(n):
        hkl = np.nan_to_num(q) @ np.linalg.inv(orientations[i])
        signal = 50.0 * np.exp(-q_abs) + 1.0  # isotropic background, removed by the job
        if labels[i]:
            signal = signal + 2.0 * field3d(hkl)
        noise = rng.normal(scale=0.3, size=signal.shape)
        frames[i] = np.where(model.valid, (signal + noise) * corr * 1e6, 0.0)
    return frames, orientations, labels, model


def write_experiment(root: Path, n: int = N_FRAMES) -> Path:
    """Frames, geometry, stream, labels, truth and a job file in ``root``; returns the job."""
    from hpcdiff.geometry import small_geometry
    from hpcdiff.io.cxi import FrameId, write_cxi
    from hpcdiff.io.geom import write_geom
    from hpcdiff.io.labels import Labels, write_labels
    from hpcdiff.io.stream import Chunk, Crystal, Stream, write_stream

    geom = small_geometry(clen_m=0.1, photon_energy=ENERGY_EV)
    frames, orientations, labels, _ = make_frames(geom, n)
    root.mkdir(parents=True, exist_ok=True)
    write_geom(geom, root / "detector.geom")
    write_cxi(root / "frames_000.cxi", frames[: n // 2], compression=None)
    write_cxi(root / "frames_001.cxi", frames[n // 2 :], compression=None)
    chunks = []
    ids = []
    for i in range(n):
        name, idx = f"frames_00{i // (n // 2)}.cxi", i % (n // 2)
        ids.append(FrameId(str(root / name), idx))
        a = orientations[i]
        crystal = Crystal(None, tuple(a[0]), tuple(a[1]), tuple(a[2]))
        chunks.append(
            Chunk(
                f"/data/elsewhere/{name}",
                event=f"//{idx}",
                photon_energy_ev=ENERGY_EV,
                crystals=(crystal,),
            )
        )
    # one unindexed chunk, skipped
    chunks.append(Chunk("frames_000.cxi", event="//0", photon_energy_ev=ENERGY_EV))
    write_stream(Stream(chunks=tuple(chunks)), root / "orientations.stream")
    lab = Labels.from_frame_ids(
        ids, diffuse=labels, diffuse_strength=labels.astype(float), diffuse_class=labels
    )
    write_labels(root / "labels.h5", lab)
    axis = np.linspace(-MAX_HKL, MAX_HKL, 49)
    hh, kk, ll = np.meshgrid(axis, axis, axis, indexing="ij")
    with h5py.File(root / "truth.h5", "w") as h5:
        h5["intensity"] = field3d(np.stack([hh, kk, ll], axis=-1))
        for name in "hkl":
            h5[name] = axis
    job = root / "job.toml"
    job.write_text(
        textwrap.dedent(
            f"""
            [experiment]
            frames = ["frames_*.cxi"]
            geometry = "detector.geom"
            stream = "orientations.stream"
            labels = "labels.h5"

            [background]
            method = "radial"
            n_radial_bins = 40

            [fourier]
            grid_size = 24
            max_hkl = {MAX_HKL}
            min_overlap = 5
            frames_per_task = 3
            similarity_block = 5
            image_downsample = 4
            n_diffusion_coords = 2
            truth = "truth.h5"

            [fourier.cluster]
            kind = "local"
            n_workers = 2
            memory_per_worker = "1GiB"

            [output]
            dir = "out"
            """
        )
    )
    return job


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    return write_experiment(tmp_path_factory.mktemp("fourier") / "exp")


def chain_of(geom, settings: FourierSettings) -> FrameChain:
    """The frame chain of ``geom`` at the experiment's distance and energy."""
    from hpcdiff.geometry import DetectorModel

    model = DetectorModel.build(geom, clen_m=0.1, photon_energy_ev=ENERGY_EV)
    return FrameChain(model, settings.chain)


def test_truth_correlation_rises_with_frames(experiment):
    """Merging more frames of the known map gives a map closer to it."""
    from hpcdiff.io.geom import read_geom

    geom = read_geom(experiment.parent / "detector.geom")
    frames, orientations, labels, _ = make_frames(geom, 24, seed=3)
    diffuse = np.flatnonzero(labels)
    settings = FourierSettings(
        Grid(24, MAX_HKL),
        Grid(24, MAX_HKL),
        chain=ChainSettings(background=BackgroundConfig(n_radial_bins=40)),
    )
    detector = chain_of(geom, settings)
    grid = settings.grid
    axis = grid.axis()
    truth = field3d(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1))
    ccs = []
    for n in (1, 4, len(diffuse)):
        rows = diffuse[:n]
        acc, chunk = process_frames(
            frames[rows],
            orientations[rows],
            photon_energy_ev=np.full(n, ENERGY_EV),
            clen_m=np.full(n, 0.1),
            chain=detector,
            settings=settings,
        )
        assert acc.n_frames == n and len(chunk.similarity_frames) == n
        ccs.append(map_correlation(acc.intensity(), truth)[0])
    assert ccs[0] < ccs[1] < ccs[2] and ccs[2] > 0.8, ccs


def test_process_frames_split_invariance(experiment):
    from hpcdiff.io.geom import read_geom

    geom = read_geom(experiment.parent / "detector.geom")
    frames, orientations, _, _ = make_frames(geom, 6, seed=4)
    background = BackgroundConfig(preprocessing="seed", method="none")
    settings = FourierSettings(
        Grid(16, MAX_HKL), Grid(8, MAX_HKL), chain=ChainSettings(background=background)
    )
    kw = dict(
        photon_energy_ev=np.full(6, ENERGY_EV),
        clen_m=np.full(6, 0.1),
        chain=chain_of(geom, settings),
        settings=settings,
    )
    whole, _ = process_frames(frames, orientations, **kw)
    parts = []
    for s in (slice(0, 1), slice(1, 4), slice(4, 6)):
        n = s.stop - s.start
        kw2 = dict(kw, photon_energy_ev=np.full(n, ENERGY_EV), clen_m=np.full(n, 0.1))
        parts.append(process_frames(frames[s], orientations[s], **kw2)[0])
    merged = functools.reduce(operator.add, parts)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-12)


def _run_cli(args: list[str]) -> int:
    from hpcdiff.cli import main

    return main(args)


def test_local_cluster_job_end_to_end(experiment, capsys):
    out = experiment.parent / "out_local"
    assert _run_cli(["fourier", str(experiment), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "dashboard" in err and "CC(merged, truth)" in err
    with h5py.File(out / "merged.h5") as h5:
        intensity = h5["intensity"][()]
        counts = h5["counts"][()]
        n_merged = int(h5.attrs["n_frames"])
        # the scale pass may leave out frames with no copy of the map (the unlabelled half,
        # and a diffuse frame whose slice the other half's map barely measures)
        assert intensity.shape == (24, 24, 24) and N_FRAMES // 2 - 1 <= n_merged <= N_FRAMES
        assert "config_hash" in h5.attrs
        np.testing.assert_array_equal(np.isnan(intensity), counts == 0)
        np.testing.assert_allclose(h5["h"][()], Grid(24, MAX_HKL).axis())
        # intensity: the smoothed map (width recorded); intensity_raw: the voxel means
        raw = h5["intensity_raw"][()]
        sigma = float(h5["intensity"].attrs["smooth_sigma_voxels"])
        # inverse-variance weighted by default: weighted means sums / weights
        weights = h5["weights"][()]
        assert (weights[counts > 0] > 0).all() and (weights[counts == 0] == 0).all()
        with np.errstate(invalid="ignore", divide="ignore"):
            np.testing.assert_allclose(raw, h5["sums"][()] / weights, rtol=1e-6)
        from hpcdiff.map_smooth import smoothed_mean

        expect = smoothed_mean(h5["sums"][()], weights, sigma_voxels=sigma)
        np.testing.assert_allclose(intensity, expect.astype(np.float32), rtol=1e-6)
    with h5py.File(out / "similarity.h5") as h5:
        sim = h5["common_arc"][()]
        assert sim.shape == (N_FRAMES, N_FRAMES) and len(h5["file"]) == N_FRAMES
        np.testing.assert_array_equal(sim, sim.T)
        np.testing.assert_array_equal(np.diag(sim), 1.0)
        labels = h5["diffuse"][()]
        both = np.outer(labels, labels).astype(bool) & ~np.eye(N_FRAMES, dtype=bool)
        # diffuse frames see the same 3D map along their common arcs
        assert np.nanmedian(sim[both]) > 0.3
    summary = (out / "fourier_summary.json").read_text()
    import json

    summary = json.loads(summary)
    tc = summary["truth_correlation"]
    assert tc["cc"] > 0.5  # half the frames carry no diffuse map
    assert len(tc["shells"]) == 10 and sum(s["voxels"] for s in tc["shells"]) == tc["voxels"]
    assert tc["isotropic_removed"]["voxels"] == tc["voxels"]
    smoothing = summary["map_smoothing"]
    # default rule: half-maps (leave-one-out: [fourier] map_smooth_rule)
    assert smoothing["method"] == "half-maps" and smoothing["sigma_voxels"] == sigma
    assert len(smoothing["half_map_ccs"]) >= 2
    half = summary["cc_half"]
    assert sum(half["frames"]) == n_merged and min(half["frames"]) >= 2
    assert -1.0 <= half["cc"] <= 1.0 and len(half["shells"]) == 10
    assert sum(s["voxels"] for s in half["shells"]) == half["voxels"] > 0
    assert all("cc_star" in s for s in half["shells"]) and ("smoothed" in half) == (sigma > 0)
    if sigma > 0:
        assert "cc" in tc["unsmoothed"] and len(tc["unsmoothed"]["shells"]) == 10
    assert summary["grid"]["shape"] == [24, 24, 24]
    assert summary["n_frames_oriented"] == N_FRAMES
    scales = summary["frame_scales"]
    assert scales["n_below_scale_min"] == N_FRAMES - n_merged, scales
    assert scales["refined"]["measurable"] and scales["shot"]["median"] > 0, scales
    assert 0.5 < scales["refined"]["fitted"]["p95"] < 3.0, scales
    # these frames carry Gaussian noise of sd 0.3 on up to 50 "photons": far less than the
    # photon model's, so the job measures that and says the frames are not photons
    noise = summary["noise_model"]
    assert noise["n_measured"] == N_FRAMES and noise["median"] < 0.1, noise
    assert noise["photons"] is False and "not photons" in noise["warning"]
    assert "not photons" in err
    for name in ("common_arc", "image"):
        aucs = [r["auc_max"] for r in summary["auc"][name]]
        assert len(aucs) == 2 and all(0.5 <= a <= 1.0 for a in aucs)
    assert max(r["auc_max"] for r in summary["auc"]["common_arc"]) > 0.8
    # the per-frame score separates the alternating diffuse frames; epsilon is recorded
    assert summary["frame_score_auc"]["mean_z"] > 0.8
    assert summary["diffusion"]["epsilon_rule"] == "median heuristic"
    assert summary["diffusion"]["epsilon"]["common_arc"] > 0
    assert not (out / "fourier.work").exists()  # the working folder goes after the summary
    assert (out / "diffusion_common_arc.png").read_bytes()[:4] == b"\x89PNG"
    # nothing is overwritten without --force
    assert _run_cli(["fourier", str(experiment), "--out", str(out)]) == 1
    assert "exists already" in capsys.readouterr().err


@pytest.fixture(scope="module")
def serial_reference(experiment):
    """The merge (with the job's one scale pass) and common-arc similarity computed in this
    process, one chunk, no dask."""
    from hpcdiff.pipelines.fourier import plan_frames, process_chunk
    from hpcdiff.similarity import common_arc_similarity

    job = load_job(experiment)
    plan = plan_frames(job)
    settings = FourierSettings.from_job(job)
    assert settings.chain.scale_passes == 1
    acc, frames = process_chunk(plan, range(len(plan)), settings)
    acc, _ = scale_pass(plan, range(len(plan)), settings, acc)
    sim, _ = common_arc_similarity(
        frames.similarity_frames,
        n_voxels=settings.similarity_grid.n_voxels,
        min_overlap=job.fourier.min_overlap,
    )
    return acc, sim


def _check_against(out: Path, reference) -> None:
    acc, sim = reference
    with h5py.File(out / "merged.h5") as h5:
        np.testing.assert_array_equal(h5["counts"][()], acc.counts.reshape(acc.grid.shape))
        np.testing.assert_allclose(h5["sums"][()], acc.sums.reshape(acc.grid.shape), rtol=1e-10)
    with h5py.File(out / "similarity.h5") as h5:
        # the saved row blocks hold float32: the CCs agree to float32 rounding
        np.testing.assert_allclose(h5["common_arc"][()], sim, atol=1e-6, equal_nan=True)


def test_local_cluster_merge_equals_serial(experiment, serial_reference):
    """2 worker processes, 3 frames per task: the same merge as one serial chunk."""
    out = experiment.parent / "out_local"
    if not (out / "merged.h5").is_file():
        assert _run_cli(["fourier", str(experiment), "--out", str(out)]) == 0
    _check_against(out, serial_reference)


def test_one_worker_other_chunks_equal_serial(experiment, serial_reference, tmp_path):
    """1 in-process worker, 7 frames per task: the same merge again."""
    import dataclasses

    from distributed import Client

    from hpcdiff.pipelines.fourier import run_fourier

    job = load_job(experiment)
    job2 = dataclasses.replace(job, fourier=dataclasses.replace(job.fourier, frames_per_task=7))
    with (
        Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None),
        open(os.devnull, "w") as log,
    ):
        run_fourier(job2, Client.current(), out_dir=tmp_path, log=log)
    _check_against(tmp_path, serial_reference)


def test_read_truth_errors(tmp_path):
    from hpcdiff.errors import FormatError

    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as h5:
        h5["intensity"] = np.zeros((3, 3, 3))
    with pytest.raises(FormatError, match="no axis dataset 'h'"):
        read_truth(path)
    with h5py.File(path, "w") as h5:
        h5["flat"] = np.zeros((3, 3))
    with pytest.raises(FormatError, match="no 3D dataset"):
        read_truth(path)


def test_slurm_cluster_job_script():
    pytest.importorskip("dask_jobqueue")
    cfg = ClusterConfig(
        kind="slurm",
        n_workers=4,
        threads_per_worker=8,
        memory_per_worker="32GiB",
        queue="gpu",
        account="lcls",
        walltime_min=90,
        job_extra_directives=("--gpus-per-task=1",),
        job_script_prologue=("module load hpcdiff",),
    )
    kwargs = slurm_cluster_kwargs(cfg)
    assert kwargs["walltime"] == "01:30:00" and kwargs["cores"] == 8
    cluster = slurm_cluster(cfg)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p gpu" in script
    assert "#SBATCH -A lcls" in script
    assert "#SBATCH -t 01:30:00" in script
    assert "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH --mem=" in script
    assert "#SBATCH --gpus-per-task=1" in script
    assert "module load hpcdiff" in script
    assert "--nthreads 8" in script


def test_cluster_config_address_needs_address():
    with pytest.raises(ValueError, match="address"):
        ClusterConfig(kind="address")


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec not found")
def test_dask_mpi_job_under_mpiexec(experiment):
    out = experiment.parent / "out_mpi"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = ["mpiexec", "-n", "3", sys.executable, "-m", "hpcdiff", "fourier", str(experiment)]
    cmd += ["--cluster", "mpi", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "dask cluster (mpi)" in proc.stderr
    summary = json.loads((out / "fourier_summary.json").read_text())
    left_out = summary["frame_scales"].get("n_below_scale_min", 0)  # the scale pass's choice
    with h5py.File(out / "merged.h5") as h5:
        assert h5.attrs["n_frames"] == N_FRAMES - left_out > 0
    with h5py.File(out / "similarity.h5") as h5:
        assert h5["common_arc"].shape == (N_FRAMES, N_FRAMES)


def test_stream_matching_no_frame_is_an_error(experiment, tmp_path):
    import dataclasses

    from hpcdiff.errors import FormatError
    from hpcdiff.io.stream import Chunk, Crystal, Stream, write_stream
    from hpcdiff.pipelines.fourier import plan_frames

    a = np.diag(1 / np.array(CELL_NM))
    chunk = Chunk("other.cxi", event="//0", crystals=(Crystal(None, *map(tuple, a)),))
    write_stream(Stream(chunks=(chunk,)), tmp_path / "other.stream")
    job = load_job(experiment)
    bad = dataclasses.replace(
        job, experiment=dataclasses.replace(job.experiment, stream=tmp_path / "other.stream")
    )
    with pytest.raises(FormatError, match=r"other\.stream.*no chunk with a crystal matches"):
        plan_frames(bad)


def test_grid_fitted_to_cell_and_detector_holds_every_pixel(experiment):
    """Without max_hkl the grid spans q_max * (|a|, |b|, |c|): every pixel lands inside."""
    import dataclasses

    from hpcdiff.fourier_grid import detector_q_max
    from hpcdiff.io.geom import read_geom
    from hpcdiff.pipelines.fourier import plan_frames

    job = load_job(experiment)
    job = dataclasses.replace(job, fourier=dataclasses.replace(job.fourier, max_hkl=None))
    plan = plan_frames(job)
    settings = FourierSettings.from_job(job, plan=plan)
    geom = read_geom(experiment.parent / "detector.geom")
    q_max = detector_q_max(geom, photon_energy_ev=ENERGY_EV)
    np.testing.assert_allclose(settings.grid.half_widths, q_max * np.array(CELL_NM), rtol=1e-6)
    assert settings.grid.shape == (24, 24, 24) and not settings.grid.is_cube
    pixels = FrameChain.for_plan(plan, settings.chain).pixels(0.1)
    lam_nm = 1239.84198 / ENERGY_EV
    for a in plan.orientations[:4]:
        (vox,) = pixels.voxels(a, wavelength_nm=lam_nm, grids=(settings.grid,))
        assert np.all(vox >= 0)
    # a resolution limit shrinks it
    capped = dataclasses.replace(job.fourier, max_hkl=None, max_q_per_nm=1.0)
    grid = FourierSettings.from_job(dataclasses.replace(job, fourier=capped), plan=plan).grid
    np.testing.assert_allclose(grid.half_widths, np.array(CELL_NM), rtol=1e-6)


def test_truth_not_matching_the_grid_fails_before_any_work(experiment, tmp_path):
    import dataclasses

    from hpcdiff.errors import FormatError
    from hpcdiff.pipelines.fourier import run_fourier

    axis = np.linspace(50.0, 60.0, 5)
    with h5py.File(tmp_path / "far.h5", "w") as h5:
        h5["intensity"] = np.zeros((5, 5, 5))
        for name in "hkl":
            h5[name] = axis
    job = load_job(experiment)
    job = dataclasses.replace(
        job, fourier=dataclasses.replace(job.fourier, truth=tmp_path / "far.h5")
    )
    out = tmp_path / "out"
    # no client: the check comes before any task is submitted
    with pytest.raises(FormatError, match=r"far\.h5.*dataset h.*do not overlap"):
        run_fourier(job, None, out_dir=out, log=open(os.devnull, "w"))
    assert not out.exists() or not any(out.iterdir())


def test_large_n_writes_no_dense_matrices(experiment, tmp_path):
    """Above dense_similarity_max_frames: per-frame scores, the kNN graph and the overlaps'
    summary only; the same embedding as the dense run."""
    import dataclasses

    from distributed import Client

    from hpcdiff.pipelines.fourier import run_fourier

    job = load_job(experiment)
    job_dense = dataclasses.replace(job, fourier=dataclasses.replace(job.fourier, diffusion_knn=5))
    job_sparse = dataclasses.replace(
        job_dense, fourier=dataclasses.replace(job_dense.fourier, dense_similarity_max_frames=4)
    )
    with (
        Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None),
        open(os.devnull, "w") as log,
    ):
        dense = run_fourier(job_dense, Client.current(), out_dir=tmp_path / "d", log=log)
        sparse = run_fourier(job_sparse, Client.current(), out_dir=tmp_path / "s", log=log)
    n = N_FRAMES
    assert dense.summary["similarity_output"]["dense_matrices"] is True
    assert sparse.summary["similarity_output"]["dense_matrices"] is False
    recorded = dense.summary["diffusion"]["common_arc_score"]
    assert recorded["score"] == "mean_cc" and recorded["weight"] == job.fourier.profile_score_weight
    with pytest.raises(KeyError, match="dense_similarity_max_frames"):
        sparse.matrix("common_arc")
    sim = dense.matrix("common_arc")
    ovl = dense.matrix("overlap")
    with h5py.File(sparse.outputs["similarity"]) as h5:
        for name in ("common_arc", "overlap", "image_distance", "image_correlation"):
            assert name not in h5
        assert not h5.attrs["dense_matrices"]
        idx = h5["knn/common_arc/indices"][()]
        val = h5["knn/common_arc/values"][()]
        assert idx.shape == val.shape == (n, 5)
        np.testing.assert_allclose(h5["mean_z"][()], dense.scores["mean_z"], rtol=1e-12)
        off = ~np.eye(n, dtype=bool)
        np.testing.assert_allclose(
            h5["mean_overlap"][()], np.where(off, ovl, 0).sum(axis=1) / (n - 1), rtol=1e-12
        )
        iu = np.triu_indices(n, 1)
        np.testing.assert_allclose(
            h5.attrs["overlap_quantiles"], np.quantile(ovl[iu], [0, 0.25, 0.5, 0.75, 1])
        )
    # the kNN graph: each frame's 5 largest common-arc CCs of the dense matrix
    for i in range(n):
        row = np.where(off[i] & np.isfinite(sim[i]), sim[i], -np.inf)
        top = np.sort(row)[::-1][:5]
        top = np.where(np.isfinite(top), top, np.nan)
        np.testing.assert_allclose(val[i], top, rtol=1e-12, equal_nan=True)
    assert sparse.summary["median_overlap"] == float(np.median(ovl[iu]))
    np.testing.assert_allclose(
        sparse.maps["common_arc"].coords, dense.maps["common_arc"].coords, equal_nan=True
    )

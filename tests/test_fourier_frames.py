"""The Fourier job's per-frame path: one frame chain with the classify job, scales, frame choice."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_fourier_job import ENERGY_EV, N_FRAMES, write_experiment

from hpcdiff.config import load_job
from hpcdiff.errors import ConfigError
from hpcdiff.merge_scale import half_reference
from hpcdiff.pipelines.fourier import FourierSettings
from hpcdiff.pipelines.fourier_frames import (
    FrameChain,
    plan_frames,
    process_chunk,
    process_frames,
    scale_pass,
)

DEAD = (10, 20)  # a pixel of panel p0 that reads 0 in every frame


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """The tiny experiment of test_fourier_job with photon shot noise, a ``no_index`` panel,
    a bad region and a dead pixel."""
    from hpcdiff.io.geom import BadRegion, read_geom, write_geom

    job = write_experiment(tmp_path_factory.mktemp("frames") / "exp")
    path = job.parent / "detector.geom"
    geom = read_geom(path)
    panels = list(geom.panels)
    panels[3] = dataclasses.replace(panels[3], no_index=True)
    box = BadRegion("badbox", panel="p1", min_fs=0, max_fs=9, min_ss=48, max_ss=60)
    path.unlink()
    write_geom(dataclasses.replace(geom, panels=tuple(panels), bad_regions=(box,)), path)
    rng = np.random.default_rng(5)
    adu_per_photon = 0.001 * ENERGY_EV  # small_geometry's adu_per_eV
    for f in sorted(job.parent.glob("frames_*.cxi")):
        with h5py.File(f, "r+") as h5:
            data = h5["/entry_1/data_1/data"]
            photons = rng.poisson(np.maximum(data[()] / adu_per_photon, 0))  # shot noise
            data[...] = (photons * adu_per_photon).astype(data.dtype)
            data[:, DEAD[0], DEAD[1]] = 0
    return job


def _with_fourier(job, **changes):
    return dataclasses.replace(job, fourier=dataclasses.replace(job.fourier, **changes))


def test_both_jobs_see_the_same_pixels_and_residual(experiment):
    """The Fourier job's merge input is the classify job's residual, on its valid pixels."""
    from hpcdiff.corrections import read_pedestal_and_gain
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.io.geom import read_geom
    from hpcdiff.pipelines.classify import _bad_pixels, detector_model
    from hpcdiff.preprocess import Preprocessor

    job = load_job(experiment)
    geom = read_geom(job.experiment.geometry)
    files = job.frame_files()
    # the classify job's chain, built as hpcdiff.pipelines.classify.run builds it
    with FrameSource(files, geometry=geom) as source:
        model = detector_model(
            geom,
            source.frame_values(0, 1),
            polarisation_degree=job.corrections.polarisation_degree,
        )
        pedestal, gain = read_pedestal_and_gain(job.experiment, shape=source.slab_shape)
        mask = _bad_pixels(job, source, model, pedestal, gain)
        classify = Preprocessor(
            model, job.background, job.corrections, bad_pixel_mask=mask, pedestal=pedestal,
            gain=gain,
        )  # fmt: skip
        raw = source.read(0, N_FRAMES)
    assert mask is not None and mask[DEAD]
    plan = plan_frames(job)
    chain = FrameChain.for_plan(plan, FourierSettings.from_job(job).chain)
    panel = model.panel_index
    for n in (0, 5, 11):
        expected = classify.residual(raw[n : n + 1], photon_energy_ev=ENERGY_EV)
        mv = chain.merge_values(raw[n], photon_energy_ev=ENERGY_EV, clen_m=0.1)
        np.testing.assert_array_equal(mv.valid, expected.valid[0])
        assert mv.valid.sum() > 0.5 * (panel >= 0).sum()
        assert not mv.valid[panel == 3].any()  # the no_index panel
        assert not mv.valid[48:61, 0:10].any() and not mv.valid[DEAD]  # bad region, dead pixel
        det, _ = chain.detector(0.1)
        divisor = det.polarisation * det.solid_angle_sr * mv.shot
        np.testing.assert_allclose(
            mv.values[mv.valid] * divisor[mv.valid], expected.residual[0][mv.valid], rtol=1e-5
        )
        assert np.isnan(mv.values[~mv.valid]).all()


def test_scale_passes_default_to_one_pass_for_every_frame_choice(experiment):
    """Unset, one scale pass runs whatever the frame choice (it keeps the frames whose
    scale it cannot tell from noise); a number in the job file wins."""
    from hpcdiff.pipelines.fourier_frames import ChainSettings

    job = load_job(experiment)
    assert job.fourier.scale_passes is None
    assert ChainSettings.from_job(job).scale_passes == 1
    for frames in ("labelled-diffuse", "predicted-diffuse"):
        assert ChainSettings.from_job(_with_fourier(job, frames=frames)).scale_passes == 1
        chosen = _with_fourier(job, frames=frames, scale_passes=2)
        assert ChainSettings.from_job(chosen).scale_passes == 2
    assert ChainSettings.from_job(_with_fourier(job, scale_passes=0)).scale_passes == 0


def test_frame_choice(experiment, tmp_path):
    from hpcdiff.io.predictions import PredictionWriter

    job = load_job(experiment)
    every = plan_frames(job)
    assert every.frames == "all" and len(every) == N_FRAMES and every.labels is not None
    labelled = plan_frames(_with_fourier(job, frames="labelled-diffuse"))
    assert len(labelled) == N_FRAMES // 2 and labelled.n_oriented == N_FRAMES
    assert (labelled.labels == 1).all()
    assert set(labelled.numbers) == set(every.numbers[every.labels == 1])

    no_labels = dataclasses.replace(
        job, experiment=dataclasses.replace(job.experiment, labels=None)
    )
    with pytest.raises(ConfigError, match="labelled-diffuse.*needs.*labels"):
        plan_frames(_with_fourier(no_labels, frames="labelled-diffuse"))

    missing = tmp_path / "nowhere" / "predictions.h5"
    with pytest.raises(ConfigError, match=r"predicted-diffuse.*predictions\.h5 does not exist"):
        plan_frames(_with_fourier(job, frames="predicted-diffuse", predictions=missing))

    # the classify job's predictions: frames 0..5 of the run diffuse (in another folder)
    path = tmp_path / "predictions.h5"
    proba = np.zeros((N_FRAMES, 2), np.float32)
    proba[:, 0] = 1.0
    proba[:6] = [0.1, 0.9]
    with PredictionWriter(path, class_names=("none", "diffuse"), attrs={}) as w:
        names = np.array([f"/elsewhere/{Path(f.file).name}" for f in every.frame_ids], object)
        w.append(names, np.array([f.index for f in every.frame_ids]), proba)
    predicted = plan_frames(_with_fourier(job, frames="predicted-diffuse", predictions=path))
    np.testing.assert_array_equal(predicted.numbers, every.numbers[:6])


def test_shot_intensity_is_divided_out(experiment):
    """A frame recorded with 3x the pulse energy merges to the same values (Bragg-peak pixel
    masking off: its threshold is in photons, so it rightly depends on the counts; equal
    pixel weights: inverse-variance weights rightly follow the photon counts)."""
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.io.geom import read_geom

    job = load_job(experiment)
    job = dataclasses.replace(
        _with_fourier(job, scale_shot=True, merge_weights="none"),
        background=dataclasses.replace(job.background, mask_bragg=False),
    )
    plan = plan_frames(job)
    settings = FourierSettings.from_job(job)
    chain = FrameChain.for_plan(plan, settings.chain)
    with FrameSource(job.frame_files(), geometry=read_geom(job.experiment.geometry)) as source:
        raw = source.read(0, 4)
    kw = dict(
        photon_energy_ev=np.full(4, ENERGY_EV), clen_m=np.full(4, 0.1), chain=chain,
        settings=settings,
    )  # fmt: skip
    one, f1 = process_frames(raw, plan.orientations[:4], **kw)
    three, f3 = process_frames(raw * 3, plan.orientations[:4], **kw)
    np.testing.assert_allclose(f3.shot, 3 * f1.shot, rtol=1e-5)
    np.testing.assert_array_equal(one.counts, three.counts)
    np.testing.assert_allclose(three.sums, one.sums, rtol=1e-4, atol=1e-6 * np.abs(one.sums).max())


def test_scale_pass_leaves_out_frames_without_the_map(experiment):
    """Fitted against the other half's map, the diffuse frames carry the map (kept; of 8,
    two whose slices the other half barely measures may fit low: with the Bragg |q| mask
    one fits -0.11 +- 0.26 against a threshold of 0.2, and the one-error rule measured
    better than two errors on held-out frames, H-cspad-real all-frames CC 0.504 vs 0.365),
    the others a scale near 0 (left out); the refined merge holds exactly the kept frames."""
    job = load_job(experiment)
    plan = plan_frames(job)
    settings = FourierSettings.from_job(job)
    rows = range(len(plan))
    first, _ = process_chunk(plan, rows, settings)
    second, decision = scale_pass(plan, rows, settings, first)
    diffuse = plan.labels == 1
    assert decision.measurable
    assert decision.kept[diffuse].sum() >= diffuse.sum() - 2, decision.fitted
    assert not decision.kept[~diffuse].any(), decision.fitted[~diffuse]
    assert second.n_frames == int(decision.kept.sum())
    g, e = decision.fitted, decision.error
    assert (np.abs(g[~diffuse]) < 3 * e[~diffuse] + 0.1 * decision.typical).all()
    # the fit alone merges nothing and makes no similarity frames
    _, fit = process_chunk(plan, rows, settings, reference=half_reference(first))
    assert not fit.merged.any() and fit.similarity_frames == [] and fit.images.size == 0
    np.testing.assert_allclose(fit.scale, g)


def test_scale_pass_on_the_cluster_merges_in_waves(experiment, monkeypatch):
    """On a cluster the fit tasks return only their scales (no accumulator each) and the
    refined merge runs in waves of ``wave_tasks``; one task per wave gives the serial
    pass's decision and map."""
    import os

    from distributed import Client

    import hpcdiff.parallel.dask_blocks as dask_blocks
    from hpcdiff.pipelines.fourier_frames import refine_scales

    job = load_job(experiment)
    plan = plan_frames(job)
    settings = FourierSettings.from_job(job)
    rows = range(len(plan))
    first, _ = process_chunk(plan, rows, settings)
    serial, serial_decision = scale_pass(plan, rows, settings, first)
    calls: list[tuple[str, int, bool]] = []
    real = dask_blocks.map_blocks

    def spy(client, fn, shared, blocks, **kw):
        calls.append((kw.get("label", ""), len(blocks), kw.get("reduce") is not None))
        return real(client, fn, shared, blocks, **kw)

    monkeypatch.setattr(dask_blocks, "map_blocks", spy)
    with (
        Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None),
        open(os.devnull, "w") as log,
    ):
        refined, decision = refine_scales(
            Client.current(), plan, settings, first, frames_per_task=4, wave_tasks=1, log=log
        )
    np.testing.assert_array_equal(decision.kept, serial_decision.kept)
    fit, *merges = calls
    assert fit == ("scale fit", 4, False)
    assert [m[1:] for m in merges] == [(1, True)] * 4
    assert refined is not None
    assert refined.n_frames == serial.n_frames
    np.testing.assert_allclose(
        refined.sums, serial.sums, rtol=1e-5, atol=1e-6 * np.abs(serial.sums).max()
    )
    np.testing.assert_array_equal(refined.counts, serial.counts)


def test_detector_shift_moves_the_pixels(experiment):
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.io.geom import read_geom

    job = load_job(experiment)
    plan = plan_frames(job)
    settings = FourierSettings.from_job(job, plan=plan)
    chain = FrameChain.for_plan(plan, settings.chain)
    with FrameSource(job.frame_files(), geometry=read_geom(job.experiment.geometry)) as source:
        raw = source.read(0, 2)
    plain = chain.merge_values(raw[0], photon_energy_ev=ENERGY_EV, clen_m=0.1)
    zero = chain.merge_values(raw[0], photon_energy_ev=ENERGY_EV, clen_m=0.1, det_shift_m=(0, 0))
    np.testing.assert_allclose(zero.pixels.directions, plain.pixels.directions)
    shift = (1e-3, -2e-3)
    moved = chain.merge_values(raw[0], photon_energy_ev=ENERGY_EV, clen_m=0.1, det_shift_m=shift)
    det, _ = chain.detector(0.1)
    pos = det.positions_m + np.array([*shift, 0.0])
    unit = pos / np.linalg.norm(pos, axis=-1, keepdims=True) - np.array([0.0, 0.0, 1.0])
    np.testing.assert_array_equal(moved.pixels.pixels, plain.pixels.pixels)
    expected = unit.reshape(-1, 3)[moved.pixels.pixels].T
    np.testing.assert_allclose(moved.pixels.directions[:3], expected, rtol=1e-5, atol=1e-7)
    assert np.abs(moved.pixels.directions - plain.pixels.directions).max() > 1e-3
    with pytest.raises(ValueError, match="det_shift_m"):
        process_frames(
            raw, plan.orientations[:2], photon_energy_ev=np.full(2, ENERGY_EV),
            clen_m=np.full(2, 0.1), chain=chain, settings=settings, det_shift_m=np.zeros((2, 3)),
        )  # fmt: skip


def test_polarisation_degree_reaches_both_jobs(experiment, tmp_path):
    from hpcdiff.config import parse_job
    from hpcdiff.pipelines.classify import detector_model

    job = load_job(experiment)
    job = dataclasses.replace(
        job, corrections=dataclasses.replace(job.corrections, polarisation_degree=0.5)
    )
    plan = plan_frames(job)
    chain = FrameChain.for_plan(plan, FourierSettings.from_job(job).chain)
    assert chain.model.polarisation_degree == 0.5
    det, divisor = chain.detector(0.1)
    assert det.polarisation_degree == 0.5
    np.testing.assert_allclose(divisor, det.polarisation * det.solid_angle_sr)
    model = detector_model(plan.geometry, {}, polarisation_degree=0.5)
    np.testing.assert_allclose(model.polarisation, chain.model.polarisation, equal_nan=True)
    with pytest.raises(ConfigError, match="polarisation_degree"):
        parse_job({"corrections": {"polarisation_degree": 1.5}})
    unpolarised = FourierSettings.from_job(
        _with_fourier(job, correct_polarisation=False, correct_solid_angle=False)
    )
    _, ones = FrameChain.for_plan(plan, unpolarised.chain).detector(0.1)
    assert (ones == 1).all()


def test_check_reports_a_frame_choice_without_its_file(experiment, tmp_path):
    from hpcdiff.pipelines.preflight import check_job

    job = load_job(experiment)
    missing = tmp_path / "predictions.h5"
    r = check_job(
        _with_fourier(job, frames="predicted-diffuse", predictions=missing), mode="fourier"
    )
    mine = [p for p in r.problems if p.where.startswith("[fourier")]
    assert [p.where for p in mine] == ["[fourier.predictions]"] and str(missing) in mine[0].what
    no_labels = dataclasses.replace(
        job, experiment=dataclasses.replace(job.experiment, labels=None)
    )
    r = check_job(_with_fourier(no_labels, frames="labelled-diffuse"), mode="fourier")
    assert [p.where for p in r.problems if p.where.startswith("[fourier")] == ["[fourier.frames]"]
    r = check_job(_with_fourier(job, frames="labelled-diffuse"), mode="fourier")
    assert not [p for p in r.problems if p.where.startswith("[fourier")]


def test_job_on_the_labelled_diffuse_frames(experiment, tmp_path):
    """The whole job (one in-process dask worker) on the frames the labels mark diffuse."""
    import json
    import os

    from distributed import Client

    from hpcdiff.pipelines.fourier import run_fourier

    job = _with_fourier(load_job(experiment), frames="labelled-diffuse")
    with (
        Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None),
        open(os.devnull, "w") as log,
    ):
        result = run_fourier(job, Client.current(), out_dir=tmp_path, log=log)
    summary = json.loads((tmp_path / "fourier_summary.json").read_text())
    assert summary["frames"] == {
        "choice": "labelled-diffuse",
        "n_oriented": N_FRAMES,
        "n_chosen": 8,
    }
    # frames already chosen diffuse: the default scale pass runs and keeps them (a frame is
    # left out only when its scale is confidently small)
    scales = summary["frame_scales"]
    assert summary["n_frames_oriented"] == 8 and "refined" in scales
    assert result.merged.n_frames == 8 - scales["n_below_scale_min"] >= 7
    with h5py.File(tmp_path / "similarity.h5") as h5:
        assert h5["common_arc"].shape == (8, 8) and (h5["diffuse"][()] == 1).all()


def test_half_maps_split_the_frames_by_global_number(experiment):
    """Half A is exactly the merge of its frames alone (chosen by ``frame_half`` of the
    global frame numbers); A + B is the full merge (counts exactly, sums to rounding)."""
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.io.geom import read_geom
    from hpcdiff.merge import frame_half

    job = load_job(experiment)
    plan = plan_frames(job)
    settings = FourierSettings.from_job(job)
    chain = FrameChain.for_plan(plan, settings.chain)
    with FrameSource(job.frame_files(), geometry=read_geom(job.experiment.geometry)) as source:
        raw = source.read(0, 4)
    kw = dict(
        photon_energy_ev=np.full(4, ENERGY_EV), clen_m=np.full(4, 0.1), chain=chain,
        settings=settings,
    )  # fmt: skip
    numbers = np.array([1, 2, 3, 4])  # global numbers
    half = frame_half(numbers)
    a_idx, b_idx = np.flatnonzero(half == 0), np.flatnonzero(half == 1)
    assert a_idx.size == 2 and b_idx.size == 2  # (a fixed hash: this split is known)
    full, _ = process_frames(raw, plan.orientations[:4], numbers=numbers, **kw)
    assert full.half_a is not None and full.weighted and full.half_a.weighted
    assert full.n_frames == 4 and full.half_a.n_frames == 2
    sub = {}
    for name, idx in (("a", a_idx), ("b", b_idx)):
        kw_sub = {k: (v[idx] if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        sub[name], _ = process_frames(
            raw[idx], plan.orientations[idx], numbers=numbers[idx], **kw_sub
        )
    a, b = full.half_a, full.half_b()
    np.testing.assert_array_equal(a.sums, sub["a"].sums)
    np.testing.assert_array_equal(a.counts, sub["a"].counts)
    np.testing.assert_array_equal(a.weights, sub["a"].weights)
    np.testing.assert_array_equal(b.counts, sub["b"].counts)
    scale = np.abs(full.sums).max()
    np.testing.assert_allclose(b.sums, sub["b"].sums, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(b.weights, sub["b"].weights, rtol=1e-12, atol=1e-12)
    assert sub["a"].half_a.n_frames == 2 and sub["b"].half_a.n_frames == 0
    assert full.counts.sum() == sub["a"].counts.sum() + sub["b"].counts.sum() > 0

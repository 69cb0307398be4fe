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
from hpcdiff.merge import FrameVoxels, Grid, MergeAccumulator
from hpcdiff.pipelines.fourier import FourierSettings
from hpcdiff.pipelines.fourier_frames import (
    SCALE_PRIOR_SD,
    FrameChain,
    frame_scale,
    plan_frames,
    process_chunk,
    process_frames,
    reference_map,
)

DEAD = (10, 20)  # a pixel of panel p0 that reads 0 in every frame


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """The tiny experiment of test_fourier_job, with a ``no_index`` panel, a bad region and
    a dead pixel."""
    from hpcdiff.io.geom import BadRegion, read_geom, write_geom

    job = write_experiment(tmp_path_factory.mktemp("frames") / "exp")
    path = job.parent / "detector.geom"
    geom = read_geom(path)
    panels = list(geom.panels)
    panels[3] = dataclasses.replace(panels[3], no_index=True)
    box = BadRegion("badbox", panel="p1", min_fs=0, max_fs=9, min_ss=48, max_ss=60)
    path.unlink()
    write_geom(dataclasses.replace(geom, panels=tuple(panels), bad_regions=(box,)), path)
    for f in sorted(job.parent.glob("frames_*.cxi")):
        with h5py.File(f, "r+") as h5:
            h5["/entry_1/data_1/data"][:, DEAD[0], DEAD[1]] = 0
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
    masking off: its threshold is in photons, so it rightly depends on the counts)."""
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.io.geom import read_geom

    job = load_job(experiment)
    job = dataclasses.replace(job, background=dataclasses.replace(job.background, mask_bragg=False))
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


def test_frame_scale_is_the_least_squares_scale_without_the_frame():
    grid = Grid(6, 3.0)
    rng = np.random.default_rng(0)
    voxels = np.sort(rng.choice(grid.n_voxels, 40, replace=False))
    truth = rng.normal(size=40) + 2.0
    others = MergeAccumulator.empty(grid)
    others.add_frame(FrameVoxels(voxels, truth * 3, np.full(40, 3)))  # 3 pixels per voxel
    g = 0.37
    frame = FrameVoxels(voxels, g * truth * 2, np.full(40, 2))  # 2 pixels per voxel
    merged = others.copy().add_frame(frame)
    ref = reference_map(merged)
    # a precise fit keeps its least-squares value, with a small error
    g_fit, err = frame_scale(frame, reference=ref, pixel_sd=1e-6)
    assert g_fit == pytest.approx(g, rel=1e-5) and 0 < err < 1e-5
    # a noisy one is pulled towards 1 (prior 1 +- SCALE_PRIOR_SD), with a larger error
    sum_m2 = 2 * np.sum(truth**2)
    sd = np.sqrt(sum_m2) * SCALE_PRIOR_SD  # fit error = prior spread: halfway
    g_half, err_half = frame_scale(frame, reference=ref, pixel_sd=sd)
    assert g_half == pytest.approx((g + 1) / 2, rel=1e-4)
    assert err_half == pytest.approx(SCALE_PRIOR_SD / np.sqrt(2), rel=1e-4)
    # no other frame measured these voxels: no scale
    alone = MergeAccumulator.empty(grid).add_frame(frame)
    assert np.isnan(frame_scale(frame, reference=reference_map(alone), pixel_sd=1.0)[0])


def test_scale_pass_leaves_out_frames_without_the_map(experiment):
    """Against the merged map, frames carrying the map get scales near 1, the others near 0
    (below scale_min: left out of the refined merge)."""
    job = load_job(experiment)
    plan = plan_frames(job)
    settings = FourierSettings.from_job(job)
    rows = range(len(plan))
    first, _ = process_chunk(plan, rows, settings)
    second, frames = process_chunk(plan, rows, settings, reference=reference_map(first))
    diffuse = plan.labels == 1
    np.testing.assert_array_equal(frames.merged, diffuse)
    assert second.n_frames == diffuse.sum()
    assert (frames.scale[diffuse] > 0.5).all()
    assert (frames.scale[~diffuse] < settings.chain.scale_min).all()
    assert frames.similarity_frames == [] and frames.images.size == 0


def test_detector_shift_moves_the_pixels(experiment):
    from hpcdiff.geometry import photon_energy_to_wavelength_m, scattering_vectors
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.io.geom import read_geom

    job = load_job(experiment)
    plan = plan_frames(job)
    settings = FourierSettings.from_job(job)
    chain = FrameChain.for_plan(plan, settings.chain)
    with FrameSource(job.frame_files(), geometry=read_geom(job.experiment.geometry)) as source:
        raw = source.read(0, 2)
    plain = chain.merge_values(raw[0], photon_energy_ev=ENERGY_EV, clen_m=0.1)
    zero = chain.merge_values(raw[0], photon_energy_ev=ENERGY_EV, clen_m=0.1, det_shift_m=(0, 0))
    np.testing.assert_allclose(zero.q, plain.q, equal_nan=True)
    shift = (1e-3, -2e-3)
    moved = chain.merge_values(raw[0], photon_energy_ev=ENERGY_EV, clen_m=0.1, det_shift_m=shift)
    det, _ = chain.detector(0.1)
    pos = det.positions_m + np.array([*shift, 0.0])
    expected = scattering_vectors(pos, wavelength_m=photon_energy_to_wavelength_m(ENERGY_EV))
    np.testing.assert_allclose(moved.q, expected, equal_nan=True)
    assert np.nanmax(np.abs(moved.q - plain.q)) > 0.01
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

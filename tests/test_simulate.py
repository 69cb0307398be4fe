"""Tests of the simulated experiment (:mod:`hpcdiff.simulate`) and ``hpcdiff simulate``."""

from __future__ import annotations

import dataclasses
import json
import math

import h5py
import numpy as np
import pytest

from hpcdiff.config import SimulateConfig, load_job
from hpcdiff.errors import OutputExistsError
from hpcdiff.simulate import build_simulator, simulate_experiment
from hpcdiff.simulate.detector_effects import DetectorResponse, panel_boxes, panel_edges, poisson
from hpcdiff.simulate.frames import EXCITATION_SIGMA_PER_NM, SPOT_SIGMA_PER_NM
from hpcdiff.simulate.physics import (
    NOMINAL_BACKGROUND,
    MolecularTransform,
    background_per_usr,
    cell_matrix,
    diffuse_weight,
    draw_background,
    random_rotation,
    reciprocal_basis,
)
from hpcdiff.simulate.presets import (
    PRESETS,
    RATIO_BAND_PER_NM,
    diffuse_class,
    draw_diffuse_strength,
    get_preset,
)

SMALL = SimulateConfig(
    n_frames=10,
    seed=7,
    detector="small",
    frames_per_file=4,
    diffuse_fraction=0.5,
    truth_grid_size=24,
    truth_max_hkl=6.0,
    compression="gzip",
)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A small experiment written once for the file tests (10 frames in 3 files)."""
    return simulate_experiment(SMALL, tmp_path_factory.mktemp("sim") / "run")


@pytest.fixture(scope="module")
def sim():
    """The frame simulator of SMALL."""
    return build_simulator(SMALL)


# --------------------------------------------------------------------------- physics


def test_random_rotations_are_proper_and_uniform():
    rng = np.random.default_rng(0)
    rots = np.array([random_rotation(rng) for _ in range(4000)])
    eye = np.einsum("nij,nkj->nik", rots, rots)
    assert np.allclose(eye, np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(rots), 1.0)
    # uniform over SO(3): E[R] = 0 and the image of any axis is uniform on the sphere
    assert np.abs(rots.mean(axis=0)).max() < 0.05
    z = rots[:, :, 2]
    assert np.allclose((z**2).mean(axis=0), 1 / 3, atol=0.03)
    hist, _ = np.histogram(z[:, 2], bins=4, range=(-1, 1))
    assert hist.min() > 0.85 * len(z) / 4


def test_reciprocal_basis_is_dual_to_the_cell():
    cell, angles = (7.9, 8.3, 3.8), (88.0, 95.0, 101.0)
    real = cell_matrix(cell, angles)
    recip = reciprocal_basis(cell, angles)
    assert np.allclose(real @ recip.T, np.eye(3))
    assert np.allclose(np.linalg.norm(real, axis=1), cell)
    ortho = reciprocal_basis((7.9, 7.9, 3.8), (90.0, 90.0, 90.0))
    assert np.allclose(ortho, np.diag([1 / 7.9, 1 / 7.9, 1 / 3.8]), atol=1e-15)
    with pytest.raises(ValueError, match="do not form a unit cell"):
        cell_matrix(cell, (10.0, 10.0, 170.0))


def test_molecular_transform_is_the_structure_factor_of_its_atoms():
    rng = np.random.default_rng(1)
    cell, angles = (4.0, 4.5, 3.0), (90.0, 90.0, 90.0)
    t = MolecularTransform.random(cell, angles, rng=rng, q_max_per_nm=3.0, n_atoms=20)
    sigma = 0.08  # atom_sigma_nm default: |F| carries exp(-2 pi^2 sigma^2 q^2)
    hkls = np.array([(1, 0, 0), (2, -3, 1), (-4, 5, 2), (6, 1, -3), (3, 3, 3)])
    direct = []
    for hkl in hkls:
        q = hkl @ t.basis
        amp = np.exp(2j * np.pi * (t.atoms_nm @ q)).sum() * np.exp(
            -2 * np.pi**2 * sigma**2 * (q @ q)
        )
        direct.append(abs(amp) ** 2)
    ratio = t.at_nodes(hkls) / np.array(direct)
    assert np.allclose(ratio, ratio[0], rtol=1e-3)
    # trilinear interpolation is exact at grid nodes; Friedel's law holds
    assert np.allclose(t.continuous(hkls.astype(np.float32)), t.at_nodes(hkls), rtol=1e-5)
    assert np.allclose(t.at_nodes(-hkls), t.at_nodes(hkls), rtol=1e-4)
    # halfway between two grid points the interpolation is their mean
    a, b = np.array([1.0, 2.0, 1.0]), np.array([1.5, 2.0, 1.0])
    mid = t.continuous(((a + b) / 2)[None].astype(np.float32))[0]
    assert mid == pytest.approx(0.5 * (t.continuous(a[None])[0] + t.continuous(b[None])[0]))
    assert t.continuous(np.array([[1e3, 0.0, 0.0]], dtype=np.float32))[0] == 0


def test_transform_normalisation_and_shell_averages():
    rng = np.random.default_rng(5)
    cell, angles = (4.0, 4.0, 3.0), (90.0, 90.0, 90.0)
    band = (1.0, 2.0)
    t = MolecularTransform.random(
        cell, angles, rng=rng, q_max_per_nm=2.5, n_atoms=15, normalise_band=band
    )
    r = np.arange(-12, 13)
    nodes = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    q = np.linalg.norm(nodes @ t.basis, axis=1)
    in_band = (q >= band[0]) & (q < band[1])
    assert t.at_nodes(nodes[in_band]).mean() == pytest.approx(1.0, rel=1e-5)
    # uniform and non-uniform shell edges give the same averages; the weight scales them
    edges = np.linspace(0.0, 2.0, 5)
    uneven = np.array([0.0, 0.5, 1.0, 1.5, 2.0 + 1e-12])
    assert np.allclose(t.radial_average(edges), t.radial_average(uneven))
    weighted = t.radial_average(edges, sigma_nm=0.05)
    assert np.all(weighted < t.radial_average(edges)) and np.all(weighted > 0)


def test_diffuse_weight_and_background_shapes():
    q = np.linspace(0, 6, 601, dtype=np.float32)
    w = diffuse_weight(q, sigma_nm=0.05)
    assert w.dtype == np.float32 and w[0] == 0 and np.all(np.diff(w) >= 0) and w[-1] < 1
    assert w[300] == pytest.approx(1 - math.exp(-((2 * math.pi * 3.0 * 0.05) ** 2)), rel=1e-5)
    bg = background_per_usr(q, NOMINAL_BACKGROUND)
    assert bg.dtype == np.float32
    ring = q[np.argmax(np.where(q > 1.5, bg, 0))]
    assert 3.0 <= ring <= 3.2  # water ring at |q| ~ 1/(0.32 nm)
    # the shape (not only the scale) changes shot to shot
    rng = np.random.default_rng(2)
    shapes = [background_per_usr(q, draw_background(rng)) for _ in range(20)]
    normalised = np.array([s / s[300] for s in shapes])
    assert np.ptp(normalised[:, 100], axis=0) > 0.2


# --------------------------------------------------------------------------- labels


def test_strength_distribution_and_classes():
    preset = get_preset("hard")
    rng = np.random.default_rng(3)
    s = np.array([draw_diffuse_strength(rng, preset, diffuse_fraction=0.3) for _ in range(5000)])
    diffuse = s > 0
    assert diffuse.mean() == pytest.approx(0.3, abs=0.03)
    lo, hi = preset.ratio_range
    assert s[diffuse].min() >= lo and s[diffuse].max() <= hi
    # log-uniform: the median is the geometric mean, the nominal ratio
    assert np.median(s[diffuse]) == pytest.approx(preset.nominal_ratio, rel=0.05)
    cls = diffuse_class(s, preset)
    assert set(np.unique(cls[~diffuse])) == {0}
    counts = np.bincount(cls[diffuse], minlength=4)[1:]
    assert counts.min() > 0.28 * diffuse.sum()
    order = np.argsort(s[diffuse])
    assert np.all(np.diff(cls[diffuse][order]) >= 0)
    with pytest.raises(KeyError, match="valid presets"):
        get_preset("impossible")


# --------------------------------------------------------------------------- detector


def test_poisson_sampler_statistics():
    rng = np.random.default_rng(4)
    for lam in (0.05, 0.8, 4.0, 11.0, 30.0, 900.0):
        x = poisson(rng, np.full(200_000, lam, dtype=np.float32))
        assert x.dtype == np.float32
        assert x.mean() == pytest.approx(lam, rel=0.02, abs=0.002)
        assert x.var() == pytest.approx(lam, rel=0.03, abs=0.002)
        if lam < 12:
            assert np.mean(x == 0) == pytest.approx(math.exp(-lam), abs=0.004)
    assert np.all(poisson(rng, np.zeros(100, dtype=np.float32)) == 0)


def test_detector_response_gain_offset_saturation_and_defects():
    panel_index = np.full((10, 12), -1, dtype=np.int16)
    panel_index[0:4, 0:12] = 0
    panel_index[5:10, 2:8] = 1
    assert panel_boxes(panel_index) == [(0, 4, 0, 12), (5, 10, 2, 8)]
    edge = panel_edges(panel_index)
    assert edge[0].all() and not edge[1, 1:11].any() and edge[1, 0] and not edge[7, 4]
    resp = DetectorResponse.build(
        panel_index,
        rng=np.random.default_rng(0),
        adu_per_photon=30.0,
        max_adu=1000.0,
        dead_fraction=0.1,
    )
    drift = resp.draw_drift(np.random.default_rng(1))
    photons = np.full(panel_index.shape, 5.0, dtype=np.float32)
    photons[2, 3] = 1e4  # saturates
    adu = resp.to_adu(photons, drift, rng=None)
    on = panel_index >= 0
    assert np.all(adu[~on] == 0) and np.all(adu[resp.dead] == 0)
    assert adu[2, 3] == 1000.0 or resp.dead[2, 3]
    good = on & ~resp.dead & (photons < 100)
    p = panel_index[good]
    expect = 5.0 * 30.0 * drift.gain[p] + drift.offset_adu[p]
    assert np.allclose(adu[good], expect, rtol=1e-6)
    noisy = resp.to_adu(photons, drift, rng=np.random.default_rng(2))
    assert noisy.dtype == np.float32 and np.all(noisy[resp.dead | ~on] == 0)
    assert not np.allclose(noisy[good], adu[good])


# --------------------------------------------------------------------------- frames


def test_frames_are_deterministic_and_independent_of_order(sim):
    a, truth_a = sim.frame(3)
    sim.frame(0)
    b, truth_b = sim.frame(3)
    assert a.dtype == np.float32 and a.shape == sim.detector.slab_shape
    assert np.array_equal(a, b) and truth_a.strength == truth_b.strength
    assert not np.array_equal(a, sim.frame(4)[0])
    other = dataclasses.replace(SMALL, seed=8)
    assert not np.array_equal(a, build_simulator(other).frame(3)[0])


def test_twin_differs_by_the_diffuse_term_alone(sim):
    index = next(i for i in range(50) if sim.truth(i).strength > 0)
    frame, truth = sim.frame(index, noise=False)
    twin, twin_truth = sim.frame(index, twin=True, noise=False)
    parts, _ = sim.components(index)
    _, drift = sim.parameters(index)
    assert np.array_equal(truth.reciprocal, twin_truth.reciprocal)
    unsaturated = (frame < sim.response.max_adu) & (twin < sim.response.max_adu)
    expect = sim.response.photons_to_adu_linear(parts.diffuse, drift)
    assert np.allclose((frame - twin)[unsaturated], expect[unsaturated], rtol=1e-4, atol=1e-3)
    assert expect.max() > 0
    # with noise the twin keeps the same noise streams; a non-diffuse frame is its own twin
    plain = next(i for i in range(50) if sim.truth(i).strength == 0)
    assert np.array_equal(sim.frame(plain)[0], sim.frame(plain, twin=True)[0])


def test_frame_ratio_is_the_measured_band_ratio(sim):
    index = next(i for i in range(50) if sim.truth(i).strength > 0)
    parts, truth = sim.components(index)
    q = np.linalg.norm(sim.detector.q_vectors, axis=-1)
    band = sim.detector.valid & (q >= RATIO_BAND_PER_NM[0]) & (q < RATIO_BAND_PER_NM[1])
    measured = parts.diffuse[band].mean() / parts.background[band].mean()
    assert measured == pytest.approx(truth.ratio, rel=1e-4)
    assert truth.ratio == pytest.approx(sim.truth(index).ratio, rel=1e-4)
    assert truth.ratio == pytest.approx(truth.strength, rel=0.6)
    # the background term is the analytic profile x polarisation x solid angle x pulse
    omega_usr = sim.detector.polarisation * sim.detector.solid_angle_sr * 1e6
    on = sim.detector.panel_index >= 0
    expect = background_per_usr(q[on], truth.background) * omega_usr[on] * truth.pulse_scale
    assert np.allclose(parts.background[on], expect, rtol=1e-5)
    assert np.all(parts.background[~on] == 0)


def test_every_preset_ratio_is_what_it_says(sim):
    for name, preset in PRESETS.items():
        cal = sim.calibrate(name)
        assert cal["nominal_ratio"] == pytest.approx(preset.nominal_ratio)
        assert cal["measured_ratio"] == pytest.approx(preset.nominal_ratio, rel=0.25), name
    ratios = [p.nominal_ratio for p in PRESETS.values() if not p.randomise]
    assert ratios == sorted(ratios, reverse=True) and ratios[-1] < 0.02  # one is subtle
    # the training preset spans the hard to the easy ratios
    randomised = get_preset("randomised")
    assert randomised.ratio_range[0] <= PRESETS["hard"].ratio_range[0]
    assert randomised.ratio_range[1] >= PRESETS["easy"].ratio_range[1]


def test_label_is_in_the_speckle_not_in_the_radial_profile():
    """Debris scattering hides the diffuse term's radial mean; its speckle still shows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    cfg = dataclasses.replace(SMALL, preset="easy", seed=11)
    sim = build_simulator(cfg)
    q = np.linalg.norm(sim.detector.q_vectors, axis=-1)
    rings = np.digitize(q, np.linspace(0.5, 3.0, 11)) - 1
    masks = [sim.detector.valid & (rings == k) for k in range(10)]
    profile, contrast, label = [], [], []
    for i in range(200):
        frame, truth = sim.frame(i)
        values = [frame[m] for m in masks]
        means = np.array([v.mean() for v in values])
        profile.append(means / means.mean())
        contrast.append([np.subtract(*np.percentile(v, [75, 25])) / np.median(v) for v in values])
        label.append(truth.diffuse)
    model = LogisticRegression(C=10, max_iter=5000)
    auc_profile = cross_val_score(model, profile, label, cv=5, scoring="roc_auc").mean()
    auc_contrast = cross_val_score(model, contrast, label, cv=5, scoring="roc_auc").mean()
    assert auc_profile < 0.85
    assert auc_contrast > auc_profile + 0.1


def test_bragg_peaks_fall_on_predicted_nodes(sim):
    # the brightest Bragg pixels index close to integer hkl on the Ewald sphere
    for index in range(3):
        parts, truth = sim.components(index)
        bragg = parts.bragg
        bright = bragg > 0.2 * bragg.max()
        assert 0 < bright.sum() < 0.01 * bragg.size
        q = sim.detector.q_vectors[bright]
        hkl = q @ np.linalg.inv(truth.reciprocal)
        node = np.rint(hkl) @ truth.reciprocal
        spot = math.sqrt(SPOT_SIGMA_PER_NM**2 + sim.pixel_q_area.max() / 12)
        assert np.linalg.norm(q - node, axis=1).max() < 3 * spot + 3 * EXCITATION_SIGMA_PER_NM
        k = np.array([0.0, 0.0, 1.0 / sim.wavelength_nm])
        eps = np.linalg.norm(node + k, axis=1) - k[2]
        assert np.abs(eps).max() < 3 * EXCITATION_SIGMA_PER_NM
        # and the Bragg term is far brighter than the background where it is bright
        assert np.median(bragg[bright] / parts.background[bright]) > 5


# --------------------------------------------------------------------------- files


def test_experiment_files_read_back_with_project_readers(experiment):
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.io.geom import read_geom
    from hpcdiff.io.labels import read_labels
    from hpcdiff.io.stream import read_stream

    out = experiment.out_dir
    assert [f.name for f in experiment.frame_files] == [
        "frames_000.cxi",
        "frames_001.cxi",
        "frames_002.cxi",
    ]
    geom = read_geom(experiment.geometry)
    source = FrameSource(experiment.frame_files, geometry=geom)
    assert source.n_frames == SMALL.n_frames and source.slab_shape == geom.slab_shape
    frames = source.read(0, SMALL.n_frames)
    assert frames.dtype == np.float32
    values = source.frame_values(0, SMALL.n_frames)
    assert np.allclose(values["photon_energy_ev"], SMALL.photon_energy_ev)
    sim = build_simulator(SMALL)
    written = sim.frame(5, dtype="int16")[0]
    assert written.dtype == np.int16 and np.array_equal(frames[5], written)
    # integers are the float ADU rounded
    assert np.abs(written - sim.frame(5)[0]).max() <= 0.5 + 1e-3
    # the same through plain h5py: detector-like int16 ADU
    with h5py.File(out / "frames_001.cxi", "r") as h5:
        data = h5["/entry_1/data_1/data"]
        assert data.shape == (4, *geom.slab_shape) and data.dtype == np.int16
        assert np.array_equal(data[1], frames[5])
        assert np.allclose(h5["/LCLS/detector_1/EncoderValue"][()], 1e3 * SMALL.detector_distance_m)
        assert h5.attrs["config_hash"]
    # panel edges are bad regions; dead pixels read 0
    with h5py.File(experiment.truth, "r") as h5:
        edge = h5["detector/edge"][()]
        dead = h5["detector/dead"][()]
        strengths = h5["frames/diffuse_strength"][()]
        recip = h5["frames/reciprocal_basis"][()]
        grid = h5["diffuse/intensity"]
        assert grid.shape == (SMALL.truth_grid_size,) * 3 and grid.dtype == np.float32
        axis = h5["diffuse/h"][()]
        from hpcdiff.merge import Grid

        merge_grid = Grid(size=SMALL.truth_grid_size, half_width=SMALL.truth_max_hkl)
        assert np.allclose(axis, merge_grid.axis())  # voxel centres of the merge grid
        assert np.all(grid[()] >= 0) and grid[()].max() > 0
        assert h5["diffuse"].attrs["molecular_transform_scale"] > 0
        # the geometry states the gain and saturation the frames were made with
        adu_per_photon = h5["detector"].attrs["adu_per_photon"]
        max_adu = h5["detector"].attrs["max_adu"]
    assert {p.max_adu for p in geom.panels} == {max_adu} and frames.max() <= max_adu
    assert geom.panels[0].adu_per_ev * SMALL.photon_energy_ev == pytest.approx(adu_per_photon)
    from hpcdiff.geometry import DetectorModel

    model = DetectorModel.build(geom, clen_m=0.1, photon_energy_ev=SMALL.photon_energy_ev)
    assert np.array_equal(~model.valid & (model.panel_index >= 0), edge)
    assert np.all(frames[:, dead] == 0)
    # labels
    labels = read_labels(experiment.labels)
    assert len(labels) == SMALL.n_frames
    assert list(labels.file[:5]) == ["frames_000.cxi"] * 4 + ["frames_001.cxi"]
    assert np.array_equal(labels.index[:5], [0, 1, 2, 3, 0])
    assert np.allclose(labels.diffuse_strength, strengths)
    assert np.array_equal(labels.diffuse, (strengths > 0).astype(np.int8))
    assert labels.class_names == ("none", "weak", "moderate", "strong")
    assert labels.lookup(source.frame_ids).equals(labels)
    with h5py.File(experiment.labels, "r") as h5:
        assert np.array_equal(h5["class"][()], labels.diffuse_class)
    # the stream holds the true orientations, one crystal per frame
    stream = read_stream(experiment.stream)
    assert len(stream.chunks) == SMALL.n_frames
    for i, chunk in enumerate(stream.chunks):
        (xtal,) = chunk.crystals
        assert np.allclose(xtal.reciprocal_matrix, recip[i], rtol=1e-5, atol=1e-7)
        assert chunk.image_filename == labels.file[i] and chunk.frame_index == labels.index[i]
        assert chunk.photon_energy_ev == pytest.approx(SMALL.photon_energy_ev)
    assert xtal.cell.a_nm == pytest.approx(SMALL.cell_nm[0], rel=1e-4)


def test_manifest_and_job_file(experiment):
    manifest = json.loads(experiment.manifest.read_text())
    assert manifest["parameters"]["seed"] == SMALL.seed
    for name, preset in PRESETS.items():
        entry = manifest["presets"][name]
        assert entry["nominal_ratio"] == pytest.approx(preset.nominal_ratio)
        assert entry["measured_ratio"] == pytest.approx(entry["nominal_ratio"], rel=0.25)
    this = manifest["this_experiment"]
    assert this["n_diffuse_frames"] == sum(manifest["labels"]["class_counts"][1:])
    if this["n_diffuse_frames"]:
        assert this["median_ratio_over_strength"] == pytest.approx(1.0, rel=0.4)
    from hpcdiff.io.outputs import sha256_file

    for name, info in manifest["files"].items():
        assert sha256_file(experiment.out_dir / name) == info["sha256"]
    job = load_job(experiment.job)
    assert [p.name for p in job.frame_files()] == [f.name for f in experiment.frame_files]
    assert job.experiment.geometry == experiment.geometry.resolve()
    assert job.experiment.labels.is_file() and job.experiment.stream.is_file()


def test_output_is_independent_of_writer_processes(tmp_path, experiment):
    cfg = dataclasses.replace(SMALL, processes=2)
    other = simulate_experiment(cfg, tmp_path / "two")
    for one, two in zip(experiment.frame_files, other.frame_files, strict=True):
        with h5py.File(one, "r") as a, h5py.File(two, "r") as b:
            assert np.array_equal(a["/entry_1/data_1/data"][()], b["/entry_1/data_1/data"][()])
    for name in ("orientations.stream", "detector.geom", "job.toml"):
        text_a = (experiment.out_dir / name).read_text()
        text_b = (other.out_dir / name).read_text()
        assert text_a == text_b, name
    with h5py.File(experiment.truth, "r") as a, h5py.File(other.truth, "r") as b:
        assert np.array_equal(a["diffuse/intensity"][()], b["diffuse/intensity"][()])


def test_existing_output_is_refused_unless_forced(tmp_path):
    cfg = dataclasses.replace(SMALL, n_frames=2, frames_per_file=2, truth_grid_size=8)
    simulate_experiment(cfg, tmp_path / "run")
    with pytest.raises(OutputExistsError, match="--force"):
        simulate_experiment(cfg, tmp_path / "run")
    again = simulate_experiment(cfg, tmp_path / "run", force=True)
    assert again.n_frames == 2


def test_cli_simulate_writes_a_loadable_job(tmp_path, capsys):
    from hpcdiff.cli import main

    out = tmp_path / "cli"
    args = ["simulate", "--out", str(out), "--frames", "3", "--detector", "small"]
    assert main([*args, "--seed", "5", "--preset", "subtle", "--frames-per-file", "2"]) == 0
    assert "simulated 3 frames" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["preset"] == "subtle" and manifest["n_files"] == 2
    load_job(out / "job.toml")
    assert main(args) == 1
    assert "exists already" in capsys.readouterr().err
    assert main([*args, "--frames", "0", "--force"]) == 1
    assert "--frames must be >= 1" in capsys.readouterr().err


def test_cli_reads_the_example_job(tmp_path):
    from pathlib import Path

    from hpcdiff.cli import build_parser
    from hpcdiff.cli.simulate import simulate_config

    example = Path(__file__).resolve().parents[1] / "jobs" / "simulate-small.toml"
    args = build_parser().parse_args(["simulate", str(example), "--out", str(tmp_path)])
    cfg, out = simulate_config(args)
    assert cfg.detector == "small" and out == tmp_path
    assert load_job(example, check_files=False).simulate == cfg


@pytest.mark.slow
def test_simulates_on_a_real_cspad_geometry(tmp_path, real_fixtures):
    """A real CrystFEL CSPAD geometry (clen and photon energy read per frame) drives the
    simulation; the written geometry keeps its panel layout and reads the written frames."""
    from hpcdiff.geometry import pixel_positions_m
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.io.geom import read_geom

    real = real_fixtures / "om_cxi06216_v4-predrefine.geom"
    cfg = SimulateConfig(n_frames=2, geometry=real, truth_grid_size=8, compression="none")
    exp = simulate_experiment(cfg, tmp_path / "real")
    original, written = read_geom(real), read_geom(exp.geometry)
    assert written.slab_shape == original.slab_shape
    pos_written, pos_original = pixel_positions_m(written), pixel_positions_m(original, clen_m=0)
    # the panels keep their place across the beam; the distance is detector_distance_m
    assert np.allclose(pos_written[..., :2], pos_original[..., :2], equal_nan=True)
    assert np.allclose(pos_written[..., 2], cfg.detector_distance_m, equal_nan=True)
    frames = FrameSource(exp.frame_files, geometry=written).read(0, 2)
    assert frames.shape == (2, *original.slab_shape) and frames.dtype == np.float32
    assert np.isfinite(frames).all() and frames.std() > 0

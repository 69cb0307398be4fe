"""``[fourier] mask_bragg_radius_per_nm = "auto"``: the Bragg mask radius measured from the frames."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.bragg_radius import (
    UPPER_FRACTION,
    bragg_radius_text,
    excess_profile,
    lattice_distance,
    measure_bragg_radius,
    radius_upper,
    sample_rows,
)
from hpcdiff.config import ConfigError, load_job, parse_job
from hpcdiff.merge import Grid, PixelDirections


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _sphere_pixels(n: int, seed: int) -> PixelDirections:
    """Unit directions ``k_out - k_in`` of a random patch of the Ewald sphere."""
    rng = np.random.default_rng(seed)
    two_theta = rng.uniform(0.05, 0.4, n)
    phi = rng.uniform(0, 2 * np.pi, n)
    out = np.stack(
        [np.sin(two_theta) * np.cos(phi), np.sin(two_theta) * np.sin(phi), np.cos(two_theta)], 1
    )
    return PixelDirections.build(out - np.array([0.0, 0.0, 1.0]))


def test_lattice_distance_is_the_merge_masks_rule():
    """Pixels within r of a point on the sphere by :func:`lattice_distance` are exactly the
    pixels the merge masks with the same radius and excitation cut."""
    wavelength = 0.13
    a = np.diag(1.0 / np.array([12.0, 8.0, 4.0])) @ _rotation(4).T
    pixels = _sphere_pixels(30000, 2)
    dist, on = lattice_distance(pixels, a, wavelength_nm=wavelength, excitation_per_nm=0.01)
    (vox,) = pixels.voxels(
        a,
        wavelength_nm=wavelength,
        grids=(Grid(20, 40.0),),
        bragg_radius_per_nm=0.03,
        bragg_excitation_per_nm=0.01,
    )
    clear = np.abs(dist - 0.03) > 1e-4
    np.testing.assert_array_equal((vox < 0)[clear], ((dist <= 0.03) & on)[clear])
    assert 0 < on.sum() < on.size
    every, all_on = lattice_distance(pixels, a, wavelength_nm=wavelength, excitation_per_nm=None)
    np.testing.assert_allclose(every, dist)
    assert all_on.all()


def _synthetic(tail_per_nm: float, seed: int = 0, n: int = 400000):
    """Noise-unit residuals: N(0, 1) everywhere, + 2 within ``tail_per_nm`` of points on the
    sphere; distances uniform in area (density ~ d) up to 0.06 nm^-1."""
    rng = np.random.default_rng(seed)
    dist = 0.06 * np.sqrt(rng.uniform(size=n))
    on = rng.uniform(size=n) < 0.3
    z = rng.normal(size=n) + np.where(on & (dist < tail_per_nm), 2.0, 0.0)
    return z, dist, on


def test_excess_profile_finds_the_tail_and_respects_the_bounds():
    radii = []
    for tail in (0.01, 0.02, 0.03):
        p = excess_profile(*_synthetic(tail), upper=0.05)
        width = p.edges[1]
        assert abs(p.measured - tail) <= 1.01 * width, (tail, p.measured)
        radii.append(p.radius)
    assert radii == sorted(radii) and radii[0] < radii[-1]
    # a tail beyond the upper bound: capped; a lower bound above the measurement: raised
    assert excess_profile(*_synthetic(0.06), upper=0.04).radius == pytest.approx(0.04)
    p = excess_profile(*_synthetic(0.01), upper=0.05, lower=0.025)
    assert p.measured < 0.025 and p.radius == pytest.approx(0.025)
    # the lower bound never beats the upper
    assert excess_profile(*_synthetic(0.01), upper=0.02, lower=0.03).radius == pytest.approx(0.02)
    # no tail at all: nothing to mask
    assert excess_profile(*_synthetic(0.0), upper=0.05).radius <= 0.0025 + 1e-12
    with pytest.raises(ValueError, match="upper"):
        excess_profile(*_synthetic(0.01), upper=0.0)


def test_record_is_json_and_text():
    p = excess_profile(*_synthetic(0.02), upper=0.05, lower=0.01, n_frames=7)
    rec = json.loads(json.dumps(p.to_dict()))
    assert rec["rule"] == "auto" and rec["radius_per_nm"] == pytest.approx(p.radius)
    assert rec["lower_per_nm"] == 0.01 and rec["upper_per_nm"] == 0.05 and rec["n_frames"] == 7
    assert len(rec["profile"]) == p.excess.size
    assert rec["profile"][-1]["d_max_per_nm"] == pytest.approx(0.05)
    text = bragg_radius_text(rec)
    assert f"{p.radius:.4f}" in text and "bounds [0.0100, 0.0500]" in text


def test_upper_bound_and_sample():
    a = np.diag(1.0 / np.array([12.0, 8.0, 4.0])) @ _rotation(1).T
    assert radius_upper(np.stack([a, a])) == pytest.approx(UPPER_FRACTION / 12.0)
    rows = sample_rows(500, 50)
    assert rows.size == 50 and rows[0] == 0 and rows[-1] == 499
    assert sample_rows(7, 50).tolist() == list(range(7)) and sample_rows(0).size == 0


def test_config_auto_and_bad_values():
    assert parse_job({"fourier": {"mask_bragg_radius_per_nm": "auto"}}).fourier.mask_bragg_radius_per_nm == "auto"  # fmt: skip
    for bad in ("big", -0.01, True):
        with pytest.raises(ConfigError, match="mask_bragg_radius_per_nm"):
            parse_job({"fourier": {"mask_bragg_radius_per_nm": bad}})


def _simulate(root: Path, spot_sigma_per_nm: float, monkeypatch) -> Path:
    import hpcdiff.simulate.frames as sim_frames
    from hpcdiff.config import SimulateConfig
    from hpcdiff.simulate import simulate_experiment

    monkeypatch.setattr(sim_frames, "SPOT_SIGMA_PER_NM", spot_sigma_per_nm)
    cfg = SimulateConfig(
        n_frames=40, detector="small", diffuse_fraction=0.5, compression="none",
        truth_grid_size=24, n_atoms=40, seed=3,
    )  # fmt: skip
    sim = simulate_experiment(cfg, root, force=True)
    assert sim.job is not None
    return Path(sim.job)


def _auto_settings(job_path: Path):
    from hpcdiff.pipelines.fourier import FourierSettings
    from hpcdiff.pipelines.fourier_frames import plan_frames

    job = load_job(job_path)
    job = dataclasses.replace(
        job,
        fourier=dataclasses.replace(
            job.fourier, grid_size=24, max_hkl=10.0, mask_bragg_radius_per_nm="auto"
        ),
    )
    plan = plan_frames(job)
    return job, plan, FourierSettings.from_job(job, plan=plan)


def test_measured_radius_grows_with_the_spot_width(tmp_path, monkeypatch):
    """Two simulations differing only in the spot width: the wider spots get the wider mask,
    within the bounds; the stream's profile radius is a floor."""
    radii = {}
    for sigma in (0.003, 0.016):
        job, plan, settings = _auto_settings(_simulate(tmp_path / f"s{sigma}", sigma, monkeypatch))
        rec = settings.bragg_profile
        assert rec is not None and settings.bragg_radius_per_nm == rec["radius_per_nm"]
        upper = radius_upper(plan.orientations)
        assert 0 <= rec["radius_per_nm"] <= upper == rec["upper_per_nm"]
        assert rec["n_frames"] == len(plan) == 40
        radii[sigma] = rec["radius_per_nm"]
    assert radii[0.016] > radii[0.003], radii
    floor = 0.9 * upper
    plan = dataclasses.replace(plan, profile_radius_nm_inv=np.full(len(plan), floor))
    p = measure_bragg_radius(plan, settings, max_frames=10)
    assert p.lower == pytest.approx(floor) and p.radius >= floor and p.n_frames == 10


def test_job_records_the_measured_radius(tmp_path, monkeypatch, capsys):
    from hpcdiff.cli import main

    job = _simulate(tmp_path / "sim", 0.008, monkeypatch)
    text = job.read_text() + (
        '\n[fourier]\ngrid_size = 16\nmax_hkl = 8.0\nmask_bragg_radius_per_nm = "auto"\n'
        'similarity_grid_size = 8\n\n[fourier.cluster]\nkind = "local"\nn_workers = 1\n'
    )
    job.write_text(text)
    out = tmp_path / "out"
    assert main(["fourier", str(job), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    summary = json.loads((out / "fourier_summary.json").read_text())
    rec = summary["bragg_radius"]
    assert rec["rule"] == "auto" and 0 <= rec["radius_per_nm"] <= rec["upper_per_nm"]
    assert len(rec["profile"]) > 0 and rec["n_frames"] == summary["n_frames_oriented"]
    assert f"Bragg mask radius {rec['radius_per_nm']:.4f} nm^-1 (auto" in err

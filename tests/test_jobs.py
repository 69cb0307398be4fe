"""Every example job file in jobs/ is valid, and the real-data ones name their inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcdiff.cli import main
from hpcdiff.config import load_job

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.toml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_example_job_files_parse(path: Path) -> None:
    job = load_job(path, check_files=False)
    assert job.source == path.resolve()
    assert len(job.config_hash()) == 16


def test_check_reports_missing_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).resolve().parents[1] / "jobs" / "train-cspad.toml"
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "train-cspad.toml" in out
    # every missing input at once, each with what to do
    assert "[experiment.geometry]" in out and "[experiment.labels]" in out
    assert "matches no file" in out and out.count("->") >= 3


def test_check_accepts_a_simulated_experiment(tmp_path: Path, capsys) -> None:
    from hpcdiff.config import SimulateConfig
    from hpcdiff.features.weights import hub_checkpoint_path
    from hpcdiff.simulate import simulate_experiment

    sim = simulate_experiment(
        SimulateConfig(
            n_frames=12, detector="small", truth_grid_size=8, processes=1, diffuse_fraction=0.5
        ),
        tmp_path / "sim",
    )
    # the simulator's job names no weights: "hub", absent here, is the one problem check finds
    if not hub_checkpoint_path().is_file():
        assert main(["check", str(sim.job)]) == 1
        assert "1 problem(s)" in capsys.readouterr().out
    with sim.job.open("a") as fh:
        fh.write('\n[features]\nweights = "random:0"\n')
    assert main(["check", str(sim.job)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "1 frame file" in out and "12 labelled" in out

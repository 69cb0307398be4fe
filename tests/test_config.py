"""Job files: validated at load time, errors name the file, the key and the valid choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcdiff.config import JobConfig, load_job, parse_job
from hpcdiff.errors import ConfigError


def _write(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_method() -> None:
    job = parse_job({})
    # fc6+fc7 with full weights, the best conv layer with conv-only ones (test_weights_tools)
    assert job.features.layer == "auto"
    assert job.learn.n_components == 50
    assert (job.learn.n_train, job.learn.n_test) == (500, 500)
    assert job.fourier.grid_size == 200
    assert job.simulate is None


def test_jobs_are_frozen() -> None:
    job = parse_job({})
    with pytest.raises(AttributeError):
        job.learn.n_components = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[featurs]\n", "top level unknown key 'featurs'; valid keys: background,"),
        ("[features]\nlayr = 'gap'\n", "[features] unknown key 'layr'; valid keys: batch_size"),
        (
            "[features]\nlayer = 'fc8'\n",
            "[features.layer] is 'fc8'; valid choices: 'auto', 'fc6+fc7'",
        ),
        ("[features]\nbatch_size = 0\n", "[features.batch_size] is 0; must be > 0"),
        ("[features]\nbatch_size = 'big'\n", "[features.batch_size] is 'big'; expected an integer"),
        ("[features]\nbf16 = 1\n", "[features.bf16] is 1; expected true or false"),
        ("[parallel]\nmax_reject_fraction = 1.5\n", "must lie between 0 and 1"),
        ("[simulate]\ncell_nm = [1.0, 2.0]\n", "cell_nm must be three positive lengths"),
        ("[learn]\nn_train = 20\n", "n_components (50) must be smaller than n_train (20)"),
        ("[fourier.cluster]\nkind = 'kubernetes'\n", "[fourier.cluster.kind] is 'kubernetes'"),
        ("[experiment]\nframes = 'a.cxi'\n", "[experiment.frames] is 'a.cxi'; expected list"),
    ],
)
def test_invalid_values_fail_at_load_time(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_job(path, check_files=False)
    message = str(info.value)
    assert message.startswith(str(path))
    assert expected in message


def test_not_toml_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[features\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_job(path)


def test_missing_inputs_fail_at_load_time(tmp_path: Path) -> None:
    path = _write(tmp_path, "[experiment]\ngeometry = 'nowhere.geom'\n")
    with pytest.raises(ConfigError, match=r"\[experiment.geometry\] file .*nowhere.geom does not"):
        load_job(path)
    path = _write(tmp_path, "[experiment]\nframes = ['run/*.cxi']\n")
    with pytest.raises(ConfigError, match=r"\[experiment.frames\[0\]\] 'run/\*.cxi' matches no"):
        load_job(path)


def test_paths_are_relative_to_the_job_file_and_globs_sorted(tmp_path: Path) -> None:
    run = tmp_path / "data"
    run.mkdir()
    for name in ("b.cxi", "a.cxi", "c.txt"):
        (run / name).write_bytes(b"")
    (tmp_path / "d.geom").write_text("")
    path = _write(tmp_path, "[experiment]\nframes = ['data/*.cxi']\ngeometry = 'd.geom'\n")
    job = load_job(path)
    assert job.experiment.geometry == tmp_path / "d.geom"
    assert [p.name for p in job.frame_files()] == ["a.cxi", "b.cxi"]


def test_config_hash_changes_with_any_value_and_ignores_location(tmp_path: Path) -> None:
    a = load_job(_write(tmp_path, "[learn]\nC = 1.0\n", "a.toml"), check_files=False)
    b = load_job(_write(tmp_path, "[learn]\nC = 1.0\n", "b.toml"), check_files=False)
    c = load_job(_write(tmp_path, "[learn]\nC = 2.0\n", "c.toml"), check_files=False)
    assert a.config_hash() == b.config_hash() != c.config_hash()
    assert isinstance(a, JobConfig) and a.to_dict()["learn"]["C"] == 1.0


def test_source_survives_replace_and_is_not_a_toml_key(tmp_path: Path) -> None:
    import dataclasses

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.cxi").write_bytes(b"")
    job = load_job(_write(tmp_path, "[experiment]\nframes = ['data/*.cxi']\n"))
    moved = dataclasses.replace(job, learn=dataclasses.replace(job.learn, C=2.0))
    assert moved.source == job.source == (tmp_path / "job.toml").resolve()
    assert [p.name for p in moved.frame_files()] == ["a.cxi"]
    with pytest.raises(ConfigError, match="unknown key 'source'"):
        parse_job({"source": "elsewhere.toml"})


def test_loading_a_job_does_not_import_the_simulator(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = _write(tmp_path, "[simulate]\npreset = 'easy'\n")
    code = (
        "import sys; from hpcdiff.config import load_job; "
        f"load_job({str(path)!r}, check_files=False); "
        "print(sorted(m for m in sys.modules if m.startswith('hpcdiff.simulate.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['hpcdiff.simulate.presets']"

"""sbatch text, site files, the SLURM environment and submission, without a cluster.

Golden files in tests/golden/ hold render_sbatch's output; after an intended change,
regenerate them with ``HPCDIFF_UPDATE_GOLDEN=1 python -m pytest tests/test_slurm_render.py``
and review the diff.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hpcdiff import __version__
from hpcdiff.cli import main
from hpcdiff.config import SlurmConfig, load_job, parse_job
from hpcdiff.errors import ConfigError
from hpcdiff.parallel.signals import EXIT_PREEMPTED
from hpcdiff.slurm.env import SlurmEnvironment, SlurmEnvironmentError, slurm_variables
from hpcdiff.slurm.sbatch import (
    ScriptArgument,
    format_time_limit,
    quote_directive_value,
    render_sbatch,
)
from hpcdiff.slurm.scripts import classify_script, fourier_script
from hpcdiff.slurm.settings import resolve_settings
from hpcdiff.slurm.submit import SlurmCommandError, parse_parsable, queued_jobs, submit

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
EXAMPLE = REPO / "jobs" / "reprocess-example.toml"

FULL = SlurmConfig(
    job_name="xpp diffuse",
    partition="gpu a100",
    account="lcls:xpp12345",
    qos="high",
    nodes=2,
    tasks_per_node=4,
    gpus_per_task=1,
    cpus_per_task=16,
    mem="256G",
    time_limit_min=1500,
    signal_ahead_s=600,
    requeue=True,
    constraint="a100&nvlink",
    setup=("module load cuda/12.4", 'source "$HOME/envs/hpcdiff/bin/activate"'),
    extra_directives=("--exclusive", '--comment=night run "A" #1'),
)
MINIMAL = SlurmConfig(
    tasks_per_node=2,
    gpus_per_task=0,
    cpus_per_task=1,
    signal_ahead_s=0,
    requeue=False,
    time_limit_min=30,
)


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    stable = text.replace(f"hpcdiff {__version__} ", "hpcdiff VERSION ")
    if os.environ.get("HPCDIFF_UPDATE_GOLDEN"):
        path.write_text(stable)
    assert path.exists(), f"{path} missing; run with HPCDIFF_UPDATE_GOLDEN=1 to create it"
    assert stable == path.read_text(), f"render differs from {path}"


@pytest.fixture(scope="session")
def shellcheck() -> str:
    """The shellcheck executable, installed with apt-get where missing and possible."""
    if shutil.which("shellcheck") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=120", "shellcheck"],
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    path = shutil.which("shellcheck")
    if path is None:
        pytest.skip("shellcheck is not installed and apt-get could not install it")
    return path


def _check_shell(text: str, shellcheck: str) -> None:
    syntax = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr
    lint = subprocess.run(
        [shellcheck, "-s", "bash", "-"], input=text, text=True, capture_output=True
    )
    assert lint.returncode == 0, lint.stdout


# --------------------------------------------------------------------------- pure pieces


@pytest.mark.parametrize(
    ("minutes", "text"),
    [
        (1, "00:01:00"),
        (59, "00:59:00"),
        (120, "02:00:00"),
        (1439, "23:59:00"),
        (1440, "1-00:00:00"),
        (1500, "1-01:00:00"),
        (4 * 1440 + 61, "4-01:01:00"),
    ],
)
def test_time_limit(minutes: int, text: str) -> None:
    assert format_time_limit(minutes) == text


def test_directive_values_round_trip_the_sbatch_quoting() -> None:
    assert quote_directive_value("gpu") == "gpu"
    assert quote_directive_value("a100&nvlink") == '"a100&nvlink"'
    assert quote_directive_value('say "hi" #x') == '"say \\"hi\\" #x"'
    with pytest.raises(ConfigError, match="single-line"):
        quote_directive_value("gpu\n#SBATCH --qos=high", key="partition")
    with pytest.raises(ConfigError, match="partition"):
        render_sbatch(SlurmConfig(partition="a\nb"), ["true"])


def test_bad_extra_directive_is_named() -> None:
    with pytest.raises(ConfigError, match=r"extra_directives\[0\].*one sbatch option"):
        render_sbatch(SlurmConfig(extra_directives=("exclusive",)), ["true"])


def test_render_is_pure_and_quotes_command_words() -> None:
    command = ["hpcdiff", "classify", "predict", "/data/my run/job's.toml"]
    first = render_sbatch(FULL, command)
    assert first == render_sbatch(FULL, command)
    assert "srun --mpi=pmi2 hpcdiff classify predict '/data/my run/job'\"'\"'s.toml' &" in first
    assert "#SBATCH --signal=B:USR1@600" in first
    assert "#SBATCH --time=1-01:00:00" in first
    assert "#SBATCH --ntasks-per-node=4" in first and "#SBATCH --nodes=2" in first
    # setup lines come after the directives (sbatch stops reading at the first command)
    lines = first.splitlines()
    last_directive = max(i for i, x in enumerate(lines) if x.startswith("#SBATCH"))
    assert lines.index("  module load cuda/12.4") > last_directive


def test_golden_full(shellcheck: str) -> None:
    text = classify_script(
        FULL,
        job="/data/xpp12345/jobs/predict run.toml",
        mode="predict",
        output="/data/xpp12345/logs/%x-%j.out",
    )
    _golden("classify-full.sbatch", text)
    _check_shell(text, shellcheck)


def test_golden_minimal(shellcheck: str) -> None:
    text = classify_script(MINIMAL, job="jobs/train.toml", mode="train")
    assert "--requeue" not in text and "scontrol requeue" not in text
    assert "--no-requeue" in text and "#SBATCH --signal" not in text
    assert "--gpus-per-task" not in text
    _golden("classify-minimal.sbatch", text)
    _check_shell(text, shellcheck)


def test_golden_array_and_dependency(shellcheck: str) -> None:
    array = render_sbatch(
        MINIMAL,
        ["hpcdiff", "reprocess", "/exp/job.toml", "--task"],
        kind="reprocess array",
        output="/exp/out/logs/%x-%A_%a.out",
        array="0-9%3",
        srun=False,
    )
    assert "#SBATCH --array=0-9%3" in array and "\nhpcdiff reprocess" in array
    _golden("reprocess-array.sbatch", array)
    summary = render_sbatch(
        MINIMAL,
        ["hpcdiff", "reprocess", "/exp/job.toml", "--summarise"],
        kind="reprocess summary",
        dependency="afterany:1234",
        srun=False,
    )
    assert "#SBATCH --dependency=afterany:1234" in summary
    _golden("reprocess-summary.sbatch", summary)
    for text in (array, summary):
        _check_shell(text, shellcheck)


def test_generic_scripts_take_the_job_as_argument(shellcheck: str) -> None:
    text = fourier_script(FULL, job=None)
    assert 'JOB="${1:?usage: sbatch fourier.sbatch JOB.toml}"' in text
    assert 'hpcdiff fourier "$JOB" &' in text
    _golden("fourier-generic.sbatch", text)
    _check_shell(text, shellcheck)
    with pytest.raises(ConfigError, match="at least 3 tasks"):
        fourier_script(MINIMAL, job=None)
    with pytest.raises(ValueError, match="shell variable"):
        render_sbatch(MINIMAL, ["true"], arguments=(ScriptArgument("1X", "x"),))


# --------------------------------------------------------------------------- committed scripts


@pytest.mark.parametrize("kind", ["classify", "fourier"])
def test_committed_scripts_are_what_render_makes(
    kind: str, shellcheck: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["slurm", "render", str(EXAMPLE), "--kind", kind, "--generic"]) == 0
    rendered = capsys.readouterr().out
    committed = (REPO / "slurm" / f"{kind}.sbatch").read_text()
    assert rendered == committed, (
        f"slurm/{kind}.sbatch is stale: hpcdiff slurm render jobs/reprocess-example.toml "
        f"--kind {kind} --generic > slurm/{kind}.sbatch"
    )


@pytest.mark.parametrize("name", ["classify.sbatch", "fourier.sbatch", "reprocess.sh"])
def test_committed_scripts_pass_bash_and_shellcheck(name: str, shellcheck: str) -> None:
    _check_shell((REPO / "slurm" / name).read_text(), shellcheck)


def test_example_job_is_valid() -> None:
    job = load_job(EXAMPLE, check_files=False)
    assert job.reprocess is not None and job.reprocess.runs
    assert job.slurm.signal_ahead_s > 0 and job.slurm.requeue


# --------------------------------------------------------------------------- the signal path


def test_script_passes_usr1_to_the_step_and_exits_preempted(tmp_path: Path) -> None:
    """The batch shell forwards USR1 to its step; the step's status 75 is the script's."""
    marker = tmp_path / "got-signal"
    step = tmp_path / "step.py"
    step.write_text(
        textwrap.dedent(f"""
        import signal, sys, time
        from pathlib import Path
        got = []
        signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
        Path({str(tmp_path / "ready")!r}).touch()
        deadline = time.time() + 20
        while not got and time.time() < deadline:
            time.sleep(0.02)
        Path({str(marker)!r}).write_text(str(got))
        sys.exit({EXIT_PREEMPTED} if got else 0)
    """)
    )
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(MINIMAL, [sys.executable, str(step)], srun=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen(["bash", str(script)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not (tmp_path / "ready").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_PREEMPTED, stderr
    assert marker.read_text() == f"[{int(signal.SIGUSR1)}]"
    assert "passing it to the step" in stderr


# --------------------------------------------------------------------------- site files


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_site_file_fills_in_under_the_job(tmp_path: Path) -> None:
    _write(
        tmp_path / "site.toml",
        """
        [slurm]
        partition = "gpu"
        account = "site-account"
        tasks_per_node = 8
        setup = ["module load cuda"]
    """,
    )
    job_path = _write(
        tmp_path / "job.toml",
        """
        [slurm]
        site_file = "site.toml"
        account = "my-account"
        tasks_per_node = 4
        setup = ["export X=1"]
    """,
    )
    settings = resolve_settings(load_job(job_path))
    assert settings.partition == "gpu"  # only the site sets it
    assert settings.account == "my-account"  # the job wins
    assert settings.tasks_per_node == 4  # the job wins even when it sets the default
    assert settings.setup == ("module load cuda", "export X=1")  # site lines first
    assert settings.cpus_per_task == SlurmConfig().cpus_per_task


def test_site_file_errors_name_the_site_file(tmp_path: Path) -> None:
    site = _write(tmp_path / "site.toml", "[slurm]\npartiton = 'gpu'\n")
    job_path = _write(tmp_path / "job.toml", "[slurm]\nsite_file = 'site.toml'\n")
    with pytest.raises(ConfigError, match=r"site\.toml.*unknown key 'partiton'.*valid keys"):
        resolve_settings(load_job(job_path))
    site.write_text("partition = 'gpu'\n")
    with pytest.raises(ConfigError, match=r"site\.toml.*one \[slurm\] table"):
        resolve_settings(load_job(job_path))
    site.unlink()
    with pytest.raises(ConfigError, match="cannot read site file"):
        resolve_settings(load_job(job_path))


def test_in_memory_job_counts_non_defaults_as_set(tmp_path: Path) -> None:
    _write(tmp_path / "site.toml", "[slurm]\npartition = 'gpu'\nqos = 'low'\n")
    job = parse_job({"slurm": {"site_file": "site.toml", "qos": "high"}}, base_dir=tmp_path)
    settings = resolve_settings(job)
    assert (settings.partition, settings.qos) == ("gpu", "high")


# --------------------------------------------------------------------------- environment


def test_slurm_environment_reads_every_variable() -> None:
    environ = {
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_NTASKS": "8",
        "SLURM_CPUS_PER_TASK": "16",
        "SLURM_JOB_ID": "1001",
        "SLURM_ARRAY_JOB_ID": "1000",
        "SLURM_ARRAY_TASK_ID": "1",
        "SLURM_RESTART_COUNT": "2",
        "HOME": "/root",
    }
    env = SlurmEnvironment.from_environ(environ)
    assert (env.proc_id, env.local_id, env.node_id, env.n_tasks) == (3, 1, 1, 8)
    assert (env.cpus_per_task, env.job_id, env.restart_count) == (16, 1001, 2)
    assert env.in_job and env.task_label == "1000_1"
    assert env.log_prefix() == "job 1000_1 try 2 rank 3/8 node 1"
    assert env.device_index(4) == 1 and env.device_index(1) == 0 and env.device_index(0) is None
    assert set(slurm_variables()) == {k for k in environ if k.startswith("SLURM_")}
    with pytest.raises(AttributeError):
        env.proc_id = 0  # type: ignore[misc]


def test_slurm_environment_outside_slurm_and_bad_values() -> None:
    env = SlurmEnvironment.from_environ({})
    assert not env.in_job and env.task_label is None and env.restart_count == 0
    assert env.device_index(2) is None and env.log_prefix() == ""
    with pytest.raises(SlurmEnvironmentError, match="SLURM_LOCALID='0,1'"):
        SlurmEnvironment.from_environ({"SLURM_LOCALID": "0,1"})


# --------------------------------------------------------------------------- submission


class FakeRunner:
    def __init__(self, returncode: int = 0, stdout: str = "4242\n", stderr: str = "") -> None:
        self.result = (returncode, stdout, stderr)
        self.calls: list[tuple[list[str], dict]] = []

    def __call__(self, command: list[str], **kwargs) -> subprocess.CompletedProcess:
        self.calls.append((command, kwargs))
        code, out, err = self.result
        return subprocess.CompletedProcess(command, code, out, err)


def test_submit_passes_the_script_on_stdin_as_a_list() -> None:
    runner = FakeRunner(stdout="4242;cluster-a\n")
    sub = submit("#!/bin/bash\ntrue\n", runner=runner)
    assert (sub.job_id, sub.cluster) == ("4242", "cluster-a")
    command, kwargs = runner.calls[0]
    assert command == ["sbatch", "--parsable"] and kwargs["input"].endswith("true\n")
    assert "shell" not in kwargs


def test_submit_errors_carry_sbatch_stderr() -> None:
    with pytest.raises(SlurmCommandError, match="invalid partition"):
        submit("x", runner=FakeRunner(1, "", "sbatch: error: invalid partition specified"))
    with pytest.raises(SlurmCommandError, match="expected a job id"):
        parse_parsable("Submitted batch job 12")
    with pytest.raises(SlurmCommandError, match="not found"):
        submit("x", sbatch="/nonexistent/sbatch")


def test_queued_jobs_parses_squeue() -> None:
    runner = FakeRunner(stdout="12_0 RUNNING\n12_1 PENDING\n13 PENDING\n")
    assert queued_jobs(["12", "13"], runner=runner) == {
        "12_0": "RUNNING",
        "12_1": "PENDING",
        "13": "PENDING",
    }
    assert runner.calls[0][0][:2] == ["squeue", "--noheader"]
    forgotten = FakeRunner(1, "", "slurm_load_jobs error: Invalid job id specified")
    assert queued_jobs(["12", "13"], runner=forgotten) == {}
    assert len(forgotten.calls) == 3  # all at once, then one by one
    down = FakeRunner(1, "", "slurm_load_jobs error: Unable to contact slurm controller")
    with pytest.raises(SlurmCommandError, match="Unable to contact"):
        queued_jobs(["12"], runner=down)


def test_cli_submit_dry_run_and_fourier_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _write(tmp_path / "job.toml", "[slurm]\ntasks_per_node = 4\n")
    assert main(["slurm", "submit", str(job), "--dry-run", "--mode", "train"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# would run: sbatch --parsable < script")
    assert f"hpcdiff classify train {job.resolve()}" in out
    assert main(["slurm", "render", str(job), "--kind", "fourier"]) == 1
    assert 'kind = "mpi"' in capsys.readouterr().err
    job.write_text("[slurm]\ntasks_per_node = 4\n[fourier.cluster]\nkind = 'mpi'\n")
    assert main(["slurm", "render", str(job), "--kind", "fourier"]) == 0
    assert "srun --mpi=pmi2 hpcdiff fourier" in capsys.readouterr().out

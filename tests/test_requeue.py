"""Requeue-safe training: a train run killed or failing in the learn stage resumes without
--force and gives the same model; a signal during the fit stops with exit 75 before any
model is written; clear one-line errors for unwritable output folders."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.config import load_job
from hpcdiff.errors import OutputExistsError
from hpcdiff.parallel.mpi import SelfComm
from hpcdiff.parallel.signals import EXIT_PREEMPTED
from hpcdiff.pipelines.classify import run_train

sys.path.insert(0, str(Path(__file__).resolve().parent / "mpi"))
from tiny_experiment import make_experiment  # noqa: E402

LAUNCH_VARS = ("PMI_SIZE", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny simulated experiment (random:0 weights, gap layer) and its reference model."""
    job = make_experiment(tmp_path_factory.mktemp("requeue"), n_frames=24, per_file=8)
    run_train(load_job(job), comm=SelfComm())
    return job


def _variant(job: Path, name: str) -> Path:
    path = job.parent / f"job_{name}.toml"
    path.write_text(job.read_text().replace('dir = "out"', f'dir = "out_{name}"'))
    return path


def _model(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _assert_same_model(a: Path, b: Path) -> None:
    ma, mb = _model(a), _model(b)
    assert set(ma) == set(mb)
    for key in ma:
        if ma[key].dtype.kind in "fc":
            np.testing.assert_allclose(ma[key], mb[key], rtol=1e-6, atol=1e-7, err_msg=key)
        elif key == "metadata":  # the same but for the time and the job's hash (output.dir)
            da, db = json.loads(str(ma[key])), json.loads(str(mb[key]))
            for d in (da, db):
                d.pop("created_utc"), d.pop("config_hash"), d["feature"].pop("config_hash")
            assert da == db
        else:
            assert np.array_equal(ma[key], mb[key]), key


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)


def test_failure_in_the_fit_then_rerun_without_force_gives_the_same_model(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpcdiff.learn

    job = _variant(tiny, "fail")
    out = tiny.parent / "out_fail"

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("simulated crash of the root during the fit")

    with monkeypatch.context() as m:
        m.setattr(hpcdiff.learn, "fit_model", broken)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_train(load_job(job), comm=SelfComm())
    assert (out / "features.h5").exists()  # written before the fit
    assert not (out / "model.npz").exists() and not (out / "train-report.json").exists()
    assert list((out / "train.shards").glob("shard-*.h5"))
    run_train(load_job(job), comm=SelfComm())  # no force: resumes from the shards
    _assert_same_model(out / "model.npz", tiny.parent / "out" / "model.npz")
    assert (out / "train-report.json").exists() and not (out / "train.shards").exists()
    # now it is finished: refused without --force, and the message says what --force does
    with pytest.raises(OutputExistsError, match="is finished; pass --force to run it again"):
        run_train(load_job(job), comm=SelfComm())


def test_sigterm_during_the_fit_exits_75_then_a_rerun_finishes(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGTERM to this process while the model is being fitted (as SLURM sends
    on preemption), through the CLI's signal handling and exit status."""
    import hpcdiff.learn
    from hpcdiff.cli.classify import run

    _clean_env(monkeypatch)
    job = _variant(tiny, "term")
    out = tiny.parent / "out_term"
    real_fit = hpcdiff.learn.fit_model

    def fit_then_signal(*args: object, **kwargs: object) -> object:
        model = real_fit(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the root is in the learn stage
        return model

    args = argparse.Namespace(job=str(job), action="train", force=False, verbose=False)
    with monkeypatch.context() as m:
        m.setattr(hpcdiff.learn, "fit_model", fit_then_signal)
        assert run(args) == EXIT_PREEMPTED
    assert not (out / "model.npz").exists() and not (out / "train-report.json").exists()
    assert not (out / "train-run.json").exists()
    assert not list(out.glob("*.tmp*"))  # nothing half-written
    assert run(args) == 0  # the requeued job, unchanged command line
    _assert_same_model(out / "model.npz", tiny.parent / "out" / "model.npz")
    # --force runs a finished run again
    assert run(argparse.Namespace(**{**vars(args), "force": True})) == 0
    _assert_same_model(out / "model.npz", tiny.parent / "out" / "model.npz")


KILL_DURING_FIT = """
import os, signal, sys
import hpcdiff.learn
from hpcdiff.cli import main

def fit_model(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # the root dies in the middle of the fit

hpcdiff.learn.fit_model = fit_model
sys.exit(main(["classify", "train", sys.argv[1]]))
"""


def test_root_killed_during_the_fit_then_rerun_gives_the_same_model(tiny: Path) -> None:
    """A real SIGKILL (no handler can run: a node failure, the OOM killer)."""
    job = _variant(tiny, "kill")
    out = tiny.parent / "out_kill"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", KILL_DURING_FIT, str(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / "features.h5").exists() and not (out / "model.npz").exists()
    run_train(load_job(job), comm=SelfComm())  # the requeued job: no --force
    _assert_same_model(out / "model.npz", tiny.parent / "out" / "model.npz")


def test_stray_features_file_without_checkpoints_is_refused(tiny: Path) -> None:
    job = _variant(tiny, "stray")
    out = tiny.parent / "out_stray"
    out.mkdir()
    (out / "features.h5").write_bytes(b"someone else's file")
    with pytest.raises(OutputExistsError, match="holds no checkpoints of this job"):
        run_train(load_job(job), comm=SelfComm())
    assert (out / "features.h5").read_bytes() == b"someone else's file"


# --------------------------------------------------------------------------- unwritable outputs


def _can_mount() -> bool:
    """Root with mount namespaces (unshare -m): a private read-only bind or tmpfs mount."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(
    not _can_mount(),
    reason="needs root and mount namespaces (unshare -m) for a real "
    "read-only or full file system (chmod does not stop root)",
)


def _train_under(mount: str, out: Path, job: Path) -> subprocess.CompletedProcess:
    """``hpcdiff classify train JOB`` in a private mount namespace where ``mount`` (a shell
    command; ``$0`` is ``out``) has made ``out`` read-only or small."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {"OMP_NUM_THREADS": "1"}
    script = f'{mount} && exec "$@"'
    cmd = ["unshare", "-m", "sh", "-c", script, str(out)]
    cmd += [sys.executable, "-m", "hpcdiff", "classify", "train", str(job)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@needs_mount
def test_read_only_output_folder_is_a_one_line_error(tiny: Path) -> None:
    """A real read-only file system (a read-only bind mount of the output folder)."""
    job = _variant(tiny, "ro")
    out = tiny.parent / "out_ro"
    out.mkdir()
    proc = _train_under('mount --bind -o ro "$0" "$0"', out, job)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, proc.stderr
    assert str(out / "train.shards") in errors[0]
    assert "read-only" in errors[0] and "set [output] dir to a writable folder" in errors[0]


@needs_mount
@pytest.mark.parametrize(("size", "fails_at"), [("40k", "train.shards"), ("128k", "features.h5")])
def test_full_disk_is_a_one_line_error(tiny: Path, size: str, fails_at: str) -> None:
    """A real ENOSPC: the output folder is a small tmpfs; the run stops at the first write
    that does not fit (a checkpoint shard, or the HDF5 features file), with the path and
    what to do, exit status 1 (not HDF5's crash at exit)."""
    job = _variant(tiny, f"full{size}")
    out = tiny.parent / f"out_full{size}"
    out.mkdir()
    proc = _train_under(f'mount -t tmpfs -o size={size} tmpfs "$0"', out, job)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, proc.stderr
    assert f"cannot write {out / fails_at}" in errors[0]
    assert "no space left on the device" in errors[0]
    assert "run the same command again" in errors[0]

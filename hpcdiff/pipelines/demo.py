"""``hpcdiff demo``: the whole method on the embedded default, on any machine.

Steps, each a real job run the way a user runs it:

1. simulate two runs of one experiment (CSPAD-like detector): a training run with
   labels, and a new run to apply the model to;
2. ``hpcdiff classify train`` on the training run under ``mpiexec -n RANKS`` (one
   process where MPI is absent): background removal, VGG16 features, PCA + logistic
   regression, the precision/recall table;
3. ``hpcdiff classify predict`` on the new run, the same way;
4. ``hpcdiff fourier`` on the training run on a dask LocalCluster: 200^3 merge,
   common-arc similarity, diffusion maps;
5. a report folder (``report/index.html``) with every figure.

The weights are chosen honestly (:func:`choose_weights`) and named in every output.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hpcdiff.errors import HpcdiffError, OutputExistsError
from hpcdiff.pipelines.layout import ClassifyLayout

CONV_ONLY_DEFAULT = Path("/tmp/hpcdiff-weights/vgg16_features_imagenet_caffe.pth")
"""Where ``shared/tools/vgg16-imagenet-conv`` writes ImageNet conv weights (see README)."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs.  Defaults finish in under 5 minutes on 2 CPU cores."""

    out_dir: Path = Path("hpcdiff-demo")
    n_train_frames: int = 160
    n_new_frames: int = 48
    detector: str = "cspad"
    preset: str = "moderate"
    seed: int = 2026
    ranks: int = 2
    weights: str | None = None
    layer: str | None = None
    grid_size: int = 200
    force: bool = False


@dataclass
class DemoResult:
    """Paths and timings of a finished demo."""

    out_dir: Path
    report: Path
    weights: str
    layer: str
    pretrained: bool
    seconds: dict[str, float] = field(default_factory=dict)
    table: str = ""


def choose_weights(requested: str | None = None) -> tuple[str, str, str]:
    """Pick VGG16 weights and the feature layer they support, and say why.

    Order: an explicit request; torchvision's full checkpoint in the torch hub cache
    (``fc6+fc7``, the method's layer); ImageNet conv-only weights (``HPCDIFF_WEIGHTS`` or
    the vgg16-imagenet-conv tool's output; layer ``gap``); otherwise ``random:0`` with the
    method's layer, stated as NOT pretrained.

    Returns
    -------
    weights, layer, reason
    """
    from hpcdiff.features.layers import BEST_CONV_LAYER
    from hpcdiff.features.weights import hub_checkpoint_path

    if requested:
        layer = BEST_CONV_LAYER if requested.endswith("_caffe.pth") else "fc6+fc7"
        return requested, layer, "requested on the command line"
    hub = hub_checkpoint_path()
    if hub.is_file():
        return "hub", "fc6+fc7", f"torchvision ImageNet checkpoint found at {hub}"
    conv = Path(os.environ.get("HPCDIFF_WEIGHTS", CONV_ONLY_DEFAULT))
    if conv.is_file():
        return (
            str(conv),
            BEST_CONV_LAYER,
            f"ImageNet conv-only weights found at {conv} (no fc layers)",
        )
    return (
        "random:0",
        "fc6+fc7",
        f"no pretrained checkpoint found (looked for {hub} and {conv}): using RANDOM weights, "
        "NOT pretrained; see README for obtaining vgg16-397923af.pth",
    )


def _mpi_launcher(ranks: int) -> list[str] | None:
    """``mpiexec -n RANKS`` if MPI works here, else None (run as one process)."""
    if ranks <= 1:
        return None
    exe = shutil.which("mpiexec") or shutil.which("mpirun")
    if exe is None:
        return None
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    return [exe, "-n", str(ranks)]


def _job_text(
    sim_job: Path,
    *,
    settings: DemoSettings,
    weights: str,
    layer: str,
    out: Path,
    n_train: int,
    n_test: int,
    model: Path,
) -> str:
    """A demo job file: the simulator's ``[experiment]`` (absolute paths) plus the demo's settings."""
    import tomllib

    import tomli_w

    base = sim_job.parent
    experiment = tomllib.loads(sim_job.read_text())["experiment"]
    for key in ("geometry", "stream", "labels"):
        experiment[key] = str((base / experiment[key]).resolve())
    experiment["frames"] = [str((base / f).resolve()) for f in experiment["frames"]]
    job = {
        "experiment": experiment,
        "features": {"weights": weights, "layer": layer, "batch_size": 8},
        "learn": {"n_train": n_train, "n_test": n_test, "n_components": min(50, n_train - 1)},
        "parallel": {"checkpoint_every": 16, "progress_interval_s": 5.0},
        "fourier": {
            "grid_size": settings.grid_size,
            "truth": str((base / "truth.h5").resolve()),
            "cluster": {"kind": "local", "n_workers": 2, "threads_per_worker": 1},
        },
        "output": {"dir": str(out), "model": str(model)},
    }
    return "# Written by hpcdiff demo.\n\n" + tomli_w.dumps(job)


def _run_classify(action: str, job: Path, *, ranks: int, say: Callable[[str], None]) -> None:
    launcher = _mpi_launcher(ranks)
    cmd = [*(launcher or []), sys.executable, "-m", "hpcdiff", "classify", action, str(job)]
    if launcher is None:
        say(f"MPI not available here: running classify {action} as one process")
    say("$ " + " ".join(cmd))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(ranks, 1))))
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise HpcdiffError(f"hpcdiff classify {action} failed with exit status {proc.returncode}")


def run_demo(settings: DemoSettings, *, stream: IO[str] | None = None) -> DemoResult:
    """Run the whole demo; see the module docstring.

    Raises
    ------
    OutputExistsError
        If ``settings.out_dir`` is not empty and ``settings.force`` is false.
    """
    from hpcdiff.config import SimulateConfig, load_job
    from hpcdiff.simulate import simulate_experiment

    out = settings.out_dir.resolve()
    stream = stream or sys.stdout

    def say(text: str) -> None:
        print(f"[demo] {text}", file=stream, flush=True)

    if out.exists() and any(out.iterdir()):
        if not settings.force:
            raise OutputExistsError(f"{out} exists and is not empty; pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    weights, layer, reason = choose_weights(settings.weights)
    layer = settings.layer or layer
    pretrained = not weights.startswith("random:")
    say(f"weights: {weights} (layer {layer}) - {reason}")
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    common: dict[str, Any] = dict(
        seed=settings.seed,
        detector=settings.detector,
        preset=settings.preset,
        processes=min(2, os.cpu_count() or 1),
        compression="lz4",
        diffuse_fraction=0.5,
    )
    train_cfg = SimulateConfig(n_frames=settings.n_train_frames, **common)
    new_cfg = dataclasses.replace(train_cfg, n_frames=settings.n_new_frames, seed=settings.seed + 1)
    from hpcdiff.pipelines.demo_disk import check_space, estimate_demo_bytes
    from hpcdiff.simulate.experiment import simulated_geometry

    disk = estimate_demo_bytes(
        [train_cfg, new_cfg],
        slab_shape=simulated_geometry(train_cfg).slab_shape,
        fourier_grid=settings.grid_size,
    )
    say(f"disk: writes {disk.describe()} under {out}")
    check_space(out, disk)
    say(
        f"simulating {train_cfg.n_frames} training frames and {new_cfg.n_frames} new frames "
        f"({settings.detector} detector, preset {settings.preset!r})"
    )
    sim_train = simulate_experiment(train_cfg, out / "experiment" / "train")
    sim_new = simulate_experiment(new_cfg, out / "experiment" / "new")
    seconds["simulate"] = time.perf_counter() - t

    n_test = max(2, settings.n_train_frames // 2)
    n_train = settings.n_train_frames - n_test
    model = ClassifyLayout(out / "train").model
    train_job = out / "train.toml"
    train_job.write_text(
        _job_text(
            sim_train.job,
            settings=settings,
            weights=weights,
            layer=layer,
            out=out / "train",
            n_train=n_train,
            n_test=n_test,
            model=model,
        )
    )
    predict_job = out / "predict.toml"
    predict_job.write_text(
        _job_text(
            sim_new.job,
            settings=settings,
            weights=weights,
            layer=layer,
            out=out / "predict",
            n_train=n_train,
            n_test=n_test,
            model=model,
        )
    )

    t = time.perf_counter()
    _run_classify("train", train_job, ranks=settings.ranks, say=say)
    seconds["classify train"] = time.perf_counter() - t
    t = time.perf_counter()
    _run_classify("predict", predict_job, ranks=settings.ranks, say=say)
    seconds["classify predict"] = time.perf_counter() - t

    t = time.perf_counter()
    from hpcdiff.parallel.dask_cluster import open_cluster
    from hpcdiff.pipelines.fourier import run_fourier

    job = load_job(train_job)
    say("Fourier job on a dask LocalCluster (merge, common-arc similarity, diffusion maps)")
    with open_cluster(job.fourier.cluster, log=stream) as session:
        fourier = run_fourier(job, session.client, out_dir=out / "fourier", log=stream)
    seconds["fourier"] = time.perf_counter() - t

    from hpcdiff.pipelines.demo_report import write_demo_report

    report, table = write_demo_report(
        out,
        train_job=job,
        predict_job=load_job(predict_job),
        fourier=fourier,
        weights_reason=reason,
        seconds=seconds,
    )
    return DemoResult(out, report, weights, layer, pretrained, seconds, table)

"""``hpcdiff simulate [JOB.toml] [--out DIR] ...``: write a simulated experiment.

Parameters come from the job file's ``[simulate]`` section (defaults without a job file);
flags override them.  The output folder is ``--out``, else the job's ``[output] dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from hpcdiff.config import SimulateConfig, load_job
from hpcdiff.errors import ConfigError

_FLAGS = {
    "frames": "n_frames",
    "preset": "preset",
    "detector": "detector",
    "seed": "seed",
    "processes": "processes",
    "frames_per_file": "frames_per_file",
    "diffuse_fraction": "diffuse_fraction",
    "compression": "compression",
    "diffuse_model": "diffuse_model",
    "space_group": "space_group",
    "molecule": "molecule",
    "dtype": "output_dtype",
    "like": "like",
}


def register(sub: argparse._SubParsersAction) -> None:
    from hpcdiff.simulate.presets import PRESETS

    p = sub.add_parser(
        "simulate",
        help="write a simulated experiment with ground truth (the default data set)",
        description=__doc__,
    )
    p.add_argument("job", nargs="?", help="TOML job file with a [simulate] section (optional)")
    p.add_argument("--out", type=Path, help="output folder (default: the job's [output] dir)")
    p.add_argument("--frames", type=int, help="number of frames")
    p.add_argument("--preset", choices=sorted(PRESETS), help="difficulty preset")
    p.add_argument("--detector", choices=("small", "cspad"), help="built-in detector")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--processes", type=int, help="writer processes (each writes whole files)")
    p.add_argument("--frames-per-file", type=int, help="frames in each CXI file")
    p.add_argument("--diffuse-fraction", type=float, help="fraction of diffuse frames")
    p.add_argument("--compression", choices=("none", "gzip", "lz4"), help="frame compression")
    p.add_argument(
        "--diffuse-model",
        choices=("auto", "displacement", "liquid_like", "rigid_body", "correlated", "random"),
        help="diffuse-scattering model (auto: displacement, or random with --preset randomised)",
    )
    p.add_argument(
        "--space-group",
        choices=("auto", "P1", "P21", "C2", "P212121", "P43212", "random"),
        help="space group of the random crystal",
    )
    p.add_argument("--molecule", help='"random" or a PDB/mmCIF file (cell from its CRYST1)')
    p.add_argument(
        "--dtype", choices=("int16", "int32", "float32"), help="frame data type (default int16)"
    )
    p.add_argument(
        "--like",
        type=Path,
        help="target job file: copy its geometry, data layout, distance and energy",
    )
    p.add_argument("--no-noise", action="store_true", help="write expected (noise-free) frames")
    p.add_argument("--force", action="store_true", help="write into a non-empty output folder")
    p.set_defaults(func=run)


def simulate_config(args: argparse.Namespace) -> tuple[SimulateConfig, Path]:
    """The simulation parameters and output folder that ``args`` ask for."""
    if args.job is not None:
        job = load_job(args.job, check_files=False)
        cfg = job.simulate if job.simulate is not None else SimulateConfig()
        out = args.out if args.out is not None else job.output.dir
    else:
        cfg = SimulateConfig()
        out = args.out if args.out is not None else Path("hpcdiff-sim")
    changes = {
        field: getattr(args, flag)
        for flag, field in _FLAGS.items()
        if getattr(args, flag) is not None
    }
    if args.no_noise:
        changes["noise"] = False
    if "molecule" in changes and changes["molecule"] != "random":
        path = Path(changes["molecule"])
        if not path.is_file():
            raise ConfigError(f"--molecule {path}: no such structure file")
        changes["molecule"] = path
    if "like" in changes and not Path(changes["like"]).is_file():
        raise ConfigError(f"--like {changes['like']}: no such job file")
    for flag in ("frames", "processes", "frames_per_file"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.seed is not None and args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    if "diffuse_fraction" in changes and not 0 <= changes["diffuse_fraction"] <= 1:
        raise ConfigError(
            f"--diffuse-fraction must lie in [0, 1], got {changes['diffuse_fraction']}"
        )
    try:
        cfg = dataclasses.replace(cfg, **changes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg, Path(out)


def _detector_name(cfg: SimulateConfig) -> str:
    if cfg.like is not None:
        return f"the detector of {cfg.like}"
    return cfg.detector if cfg.geometry is None else str(cfg.geometry)


def run(args: argparse.Namespace) -> int:
    from hpcdiff.simulate import simulate_experiment

    cfg, out = simulate_config(args)
    exp = simulate_experiment(cfg, out, force=args.force)
    rate = exp.n_frames / exp.seconds if exp.seconds > 0 else float("nan")
    print(
        f"simulated {exp.n_frames} frames ({_detector_name(cfg)}"
        f" detector, preset {cfg.preset!r}, seed {cfg.seed}) in {exp.seconds:.1f} s "
        f"({rate:.1f} frames/s) -> {exp.out_dir}"
    )
    if cfg.like is not None:
        print(f"  like {cfg.like}: geometry, data layout, distance and energy copied")
    print(f"  job file: {exp.job}")
    return 0

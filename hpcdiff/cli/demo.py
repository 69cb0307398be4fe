"""``hpcdiff demo``: simulate, train and predict on 2 MPI ranks, Fourier job, report."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole method on a simulated experiment (the embedded default)",
        description=(
            "Simulate a small experiment, run the classify job on MPI ranks (train, then "
            "predict on new frames), run the Fourier job on a local dask cluster, and write "
            "a report. Finishes in a few minutes on 2 CPU cores; uses a GPU when there is one."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("hpcdiff-demo"), help="output folder")
    p.add_argument("--frames", type=int, default=160, help="training frames to simulate")
    p.add_argument("--new-frames", type=int, default=48, help="new frames to classify")
    p.add_argument("--ranks", type=int, default=2, help="MPI ranks (1 = one process)")
    p.add_argument("--detector", choices=["cspad", "small"], default="cspad")
    p.add_argument("--preset", default="moderate", help="difficulty preset of the simulation")
    p.add_argument(
        "--weights",
        help="VGG16 weights: checkpoint path, 'hub' or 'random:SEED' (default: best available)",
    )
    p.add_argument("--layer", help="feature layer (default: what the weights support)")
    p.add_argument("--grid", type=int, default=200, help="Fourier grid size per axis")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hpcdiff.pipelines.demo import DemoSettings, run_demo

    settings = DemoSettings(
        out_dir=args.out,
        n_train_frames=args.frames,
        n_new_frames=args.new_frames,
        detector=args.detector,
        preset=args.preset,
        ranks=args.ranks,
        weights=args.weights,
        layer=args.layer,
        grid_size=args.grid,
        force=args.force,
    )
    result = run_demo(settings)
    total = sum(result.seconds.values())
    print()
    print(result.table)
    print(
        f"weights: {result.weights} (layer {result.layer}); "
        f"{'pretrained' if result.pretrained else 'RANDOM, NOT pretrained'}"
    )
    print(
        "time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
        + f"; total {total:.0f} s"
    )
    print(f"report: {result.report}")
    return 0

"""A tiny simulated experiment for the MPI job tests, with a fast job file.

:func:`hpcdiff.simulate.experiment.simulate_experiment` on the small 4-panel detector
(3 files), then ``job.toml`` replaced by one with random ``gap`` VGG16 features on 64 px
images, one thread per rank and small checkpoints, so a whole job takes seconds.

Usage: python tiny_experiment.py OUT_DIR [N_FRAMES]
"""

from __future__ import annotations

import sys
from pathlib import Path

JOB = """\
[experiment]
name = "tiny"
frames = ["frames_*.cxi"]
geometry = "detector.geom"
labels = "labels.h5"
data_path = "/entry_1/data_1/data"

[corrections]
bad_pixel_frames = 0

[background]
n_radial_bins = 40
image_size_px = 64

[features]
weights = "random:0"
layer = "gap"
batch_size = 4
device = "cpu"
bf16 = false
channels_last = false

[learn]
n_components = 4
n_train = 20
n_test = 16

[parallel]
checkpoint_every = 4
threads_per_rank = 1
progress_interval_s = 0.5
max_reject_fraction = 0.2

[output]
dir = "out"
"""


def make_experiment(out: Path, n_frames: int = 36, *, per_file: int = 12, seed: int = 0) -> Path:
    """Simulate the experiment into ``out`` (:mod:`hpcdiff.simulate`); returns the job file."""
    from hpcdiff.config import SimulateConfig
    from hpcdiff.simulate.experiment import simulate_experiment

    cfg = SimulateConfig(
        detector="small",
        n_frames=n_frames,
        frames_per_file=per_file,
        seed=seed,
        diffuse_fraction=0.5,
        truth_grid_size=16,
    )
    sim = simulate_experiment(cfg, out)
    job = sim.job
    job.write_text(JOB)
    return job


if __name__ == "__main__":
    make_experiment(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 36)

"""SLURM: sbatch text from one pure function, the SLURM environment read in one class,
submission through ``sbatch --parsable``.

Modules: :mod:`~hpcdiff.slurm.env` (:class:`SlurmEnvironment`),
:mod:`~hpcdiff.slurm.sbatch` (:func:`render_sbatch`), :mod:`~hpcdiff.slurm.settings`
(site file merged under the job), :mod:`~hpcdiff.slurm.scripts` (the classify and Fourier
scripts), :mod:`~hpcdiff.slurm.submit` (sbatch, squeue).
"""

from hpcdiff.slurm.env import SlurmEnvironment
from hpcdiff.slurm.sbatch import ScriptArgument, Shell, render_sbatch
from hpcdiff.slurm.settings import resolve_settings
from hpcdiff.slurm.submit import Submission, submit

__all__ = [
    "ScriptArgument",
    "Shell",
    "SlurmEnvironment",
    "Submission",
    "render_sbatch",
    "resolve_settings",
    "submit",
]

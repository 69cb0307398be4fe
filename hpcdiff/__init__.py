"""hpcdiff: sort serial-crystallography frames by diffuse scattering on HPC clusters.

Importing the package is cheap: it touches no GPU, no MPI and no torch. Stages live in
their own modules (``hpcdiff.io``, ``hpcdiff.geometry``, ``hpcdiff.background`` ...).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

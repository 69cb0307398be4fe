"""Difficulty presets of the simulated experiment, in physical terms.

A preset fixes how much diffuse scattering a diffuse frame carries relative to the
isotropic background.  The measure is the **diffuse-to-background ratio**

.. math::  R = \\frac{\\langle I_\\mathrm{diffuse} \\rangle}{\\langle I_\\mathrm{background} \\rangle}

the mean expected diffuse photons per pixel divided by the mean expected background
photons per pixel (water ring + air + solvent), both noise-free, over the valid pixels
with :data:`RATIO_BAND_PER_NM` ``[0] <= |q| < [1]`` (nm^-1, no 2 pi).  Bragg spots are
in neither term.

Label model (documented contract of :func:`draw_diffuse_strength`): a frame is diffuse
with probability ``diffuse_fraction``; a diffuse frame's *strength* is its nominal
diffuse-to-background ratio, drawn log-uniformly in the preset's ``ratio_range``; a
non-diffuse frame has strength 0.  The ordered class splits the preset's log range in
thirds: 0 none, 1 weak, 2 moderate, 3 strong.  Every frame, diffuse or not, also carries
isotropic debris scattering (:func:`draw_debris`) with the diffuse term's radial shape, so
that only the speckle, not the radial profile, gives the label away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy loads on use: ``hpcdiff --help`` lists the presets
    import numpy as np

RATIO_BAND_PER_NM: tuple[float, float] = (2.0, 4.0)
"""|q| band (nm^-1, no 2 pi; d = 5.0 to 2.5 Angstrom) where ratios are defined."""

CLASS_NAMES: tuple[str, ...] = ("none", "weak", "moderate", "strong")
"""Names of the ordered amount-of-diffuse classes 0..3."""


@dataclass(frozen=True)
class Preset:
    """One difficulty level.

    Attributes
    ----------
    name
        Preset name used in job files (``[simulate] preset``).
    ratio_range
        ``(low, high)`` diffuse-to-background ratio of diffuse frames in the ratio band;
        strengths are log-uniform in this range.
    displacement_sigma_nm
        RMS displacement disorder sigma (nm) of the diffuse weight
        ``1 - exp(-(2 pi |q| sigma)^2)``.
    description
        What a human sees at this level.
    randomise
        Draw the experiment (diffuse model, molecule, cell, space group, detector distance,
        energy, gain, noise, masks, background family) from
        :data:`hpcdiff.simulate.randomise.RANDOMISED_RANGES`, for training.
    """

    name: str
    ratio_range: tuple[float, float]
    displacement_sigma_nm: float
    description: str
    randomise: bool = False

    @property
    def nominal_ratio(self) -> float:
        """Median diffuse-to-background ratio of the preset's diffuse frames (geometric mean)."""
        low, high = self.ratio_range
        return math.sqrt(low * high)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "easy",
            (0.25, 0.6),
            0.06,
            "speckled diffuse clouds obvious between the Bragg spots in a single frame",
        ),
        Preset(
            "moderate",
            (0.08, 0.2),
            0.05,
            "diffuse visible by eye after subtracting the radial background",
        ),
        Preset(
            "hard",
            (0.025, 0.06),
            0.05,
            "diffuse a few per cent of the background; visible only after smoothing",
        ),
        Preset(
            "subtle",
            (0.008, 0.02),
            0.05,
            "diffuse about one per cent of the background; not visible by eye, only statistically",
        ),
        Preset(
            "randomised",
            (0.025, 0.6),
            0.05,
            "training preset: ratios from hard to easy; diffuse model, molecule, cell, space "
            "group, detector, gain, noise, masks and background family drawn per experiment",
            randomise=True,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises
    ------
    KeyError
        Naming the valid presets.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


def draw_diffuse_strength(
    rng: np.random.Generator, preset: Preset, *, diffuse_fraction: float
) -> float:
    """Draw one frame's diffuse strength (its nominal diffuse-to-background ratio).

    Always consumes exactly two uniform numbers from ``rng`` so the draws that follow do
    not depend on the outcome.

    Returns
    -------
    float
        0.0 for a non-diffuse frame, otherwise log-uniform in ``preset.ratio_range``.
    """
    is_diffuse, u = rng.random(2)
    if is_diffuse >= diffuse_fraction:
        return 0.0
    low, high = preset.ratio_range
    return float(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))


DEBRIS_SPAN = 2.0
"""Isotropic debris scattering per frame is uniform in [0, DEBRIS_SPAN x preset high ratio]."""


def draw_debris(rng: np.random.Generator, preset: Preset) -> float:
    """Draw one frame's isotropic debris level, independent of its label.

    Crystal fragments and dissolved molecules in the jet scatter like the orientation
    average of the crystal's diffuse scattering, ``w(|q|) <|F|^2>_sphere``: an isotropic
    term with the same radial shape as the diffuse term's azimuthal mean.  Its level (in
    the units of the diffuse strength) is uniform in ``[0, DEBRIS_SPAN * high]`` of the
    preset's ratio range, on every frame, so a radial profile alone cannot tell diffuse
    frames from the others; the diffuse frames differ by their anisotropic speckle.
    Consumes one uniform number.
    """
    return float(DEBRIS_SPAN * preset.ratio_range[1] * rng.random())


def diffuse_class(strength: float | np.ndarray, preset: Preset) -> np.ndarray:
    """Ordered amount-of-diffuse class of strengths: 0 none, then thirds of the log range.

    Parameters
    ----------
    strength
        Diffuse strengths, shape (n,) (or scalar), dimensionless.
    preset
        The preset whose ``ratio_range`` the thirds split.

    Returns
    -------
    numpy.ndarray
        int16, same shape; 0 where strength is 0, else 1, 2 or 3.
    """
    import numpy as np

    s = np.asarray(strength, dtype=np.float64)
    low, high = preset.ratio_range
    with np.errstate(divide="ignore"):
        third = (np.log(np.maximum(s, 1e-300)) - math.log(low)) / (math.log(high / low) / 3.0)
    cls = 1 + np.clip(np.floor(third), 0, 2)
    return np.where(s > 0, cls, 0).astype(np.int16)


__all__ = [
    "CLASS_NAMES",
    "DEBRIS_SPAN",
    "PRESETS",
    "RATIO_BAND_PER_NM",
    "Preset",
    "diffuse_class",
    "draw_debris",
    "draw_diffuse_strength",
    "get_preset",
]

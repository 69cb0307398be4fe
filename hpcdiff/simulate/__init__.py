"""Simulated serial-crystallography experiments with ground truth for every stage.

The simulator is hpcdiff's embedded default data set: still frames of randomly oriented
crystals of one random molecule, with Bragg spots, speckled diffuse scattering between them
(on a fraction of the frames), a water/air background whose shape changes shot to shot,
and a CSPAD-like detector's gains, offsets, noise, saturation and defects.

- :mod:`~hpcdiff.simulate.physics`: pure functions of q-vector arrays (orientations,
  molecular transform, Bragg, diffuse, background).
- :mod:`~hpcdiff.simulate.detector_effects`: photons -> ADU.
- :mod:`~hpcdiff.simulate.presets`: difficulty presets and the label model.
- :mod:`~hpcdiff.simulate.frames`: :class:`FrameSimulator`, frame ``i`` from ``(seed, i)``.
- :mod:`~hpcdiff.simulate.experiment`: :func:`simulate_experiment` writes the files.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpcdiff.simulate.experiment import (
        SimulatedExperiment,
        build_simulator,
        simulate_experiment,
    )
    from hpcdiff.simulate.frames import (
        DetectorArrays,
        FrameComponents,
        FrameSimulator,
        FrameTruth,
    )
    from hpcdiff.simulate.presets import (
        CLASS_NAMES,
        PRESETS,
        RATIO_BAND_PER_NM,
        Preset,
        get_preset,
    )

# The names below load their module on first use, so that importing one leaf module
# (``hpcdiff.config`` validates ``[simulate] preset`` against ``hpcdiff.simulate.presets``,
# numpy only) does not import the whole simulator.
_HOME = {
    "SimulatedExperiment": "experiment",
    "build_simulator": "experiment",
    "simulate_experiment": "experiment",
    "DetectorArrays": "frames",
    "FrameComponents": "frames",
    "FrameSimulator": "frames",
    "FrameTruth": "frames",
    "CLASS_NAMES": "presets",
    "PRESETS": "presets",
    "RATIO_BAND_PER_NM": "presets",
    "Preset": "presets",
    "get_preset": "presets",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{home}"), name)


__all__ = [
    "CLASS_NAMES",
    "PRESETS",
    "RATIO_BAND_PER_NM",
    "DetectorArrays",
    "FrameComponents",
    "FrameSimulator",
    "FrameTruth",
    "Preset",
    "SimulatedExperiment",
    "build_simulator",
    "get_preset",
    "simulate_experiment",
]

"""Background removal and normalisation: array functions on numpy or cupy slabs.

Frames are ``(n, n_ss, n_fs)`` slabs as the geometry addresses them; every stage works
on the slab through per-pixel index arrays (ring, panel, pixel map), computed once per
detector, and a bool ``valid`` mask that travels with the data.

* :func:`radial_background` / :func:`radial_profile`: per-|q|-ring median or clipped mean;
* :func:`local_background`: median or percentile filter per panel, never across gaps;
* :func:`bragg_mask`: pixels standing ``k`` sigma above the background;
* :func:`normalise`: robust per-frame scaling, clipping, optional compression;
* :func:`cnn_images`: assembled, area-downsampled ``(n, 3, 224, 224)`` float32 in [0, 1];
* :class:`RingOrderImages`: the radial chain above on numpy frames, kept in ring order
  (the CPU path of the preprocessor; the same images, fewer passes over the pixels).

The stages are chained by :class:`hpcdiff.preprocess.Preprocessor`, one floor up (it
imports this package; this package never imports it).  Pixel groups (:class:`Segments`,
:func:`panel_rectangles`) live one floor down, in :mod:`hpcdiff.segments`.
"""

from hpcdiff.background.images import cnn_images
from hpcdiff.background.local import PanelRect, local_background, panel_rectangles
from hpcdiff.background.normalise import normalise, normalised_limit, robust_scale
from hpcdiff.background.peaks import bragg_mask, grow_mask
from hpcdiff.background.radial import radial_background, radial_profile
from hpcdiff.background.ring_order import RingOrderImages
from hpcdiff.segments import Segments

__all__ = [
    "PanelRect",
    "RingOrderImages",
    "Segments",
    "bragg_mask",
    "cnn_images",
    "grow_mask",
    "local_background",
    "normalise",
    "normalised_limit",
    "panel_rectangles",
    "radial_background",
    "radial_profile",
    "robust_scale",
]

"""VGG16 feature extraction (torch, no torchvision needed).

Importing this package does not import torch; torch is loaded when weights are resolved or
an extractor is built.

>>> from hpcdiff.features import FeatureExtractor
>>> fx = FeatureExtractor("random:0", layer="gap", device="cpu")   # doctest: +SKIP
>>> fx.extract(images).shape                                       # doctest: +SKIP
(n, 512)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcdiff.features.layers import CLASSIFIER_LAYERS, CONV_LAYERS, LAYER_SIZES

if TYPE_CHECKING:  # pragma: no cover
    from hpcdiff.features.extractor import FeatureExtractor
    from hpcdiff.features.weights import WeightsError, WeightsInfo, load_weights

_LAZY = {
    "FeatureExtractor": "hpcdiff.features.extractor",
    "WeightsError": "hpcdiff.features.weights",
    "WeightsInfo": "hpcdiff.features.weights",
    "load_weights": "hpcdiff.features.weights",
    "VGG16": "hpcdiff.features.vgg16",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpcdiff.features' has no attribute {name!r}")


__all__ = [
    "CLASSIFIER_LAYERS",
    "CONV_LAYERS",
    "LAYER_SIZES",
    "FeatureExtractor",
    "VGG16",
    "WeightsError",
    "WeightsInfo",
    "load_weights",
]

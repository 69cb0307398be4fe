"""Names and sizes of the VGG16 feature layers (no torch import)."""

from __future__ import annotations

#: Output length of each feature layer (per image).
LAYER_SIZES: dict[str, int] = {
    "fc6+fc7": 8192,
    "fc7": 4096,
    "pool5": 512 * 7 * 7,
    "gap": 512,
    "pool4+pool5": 512 + 512,
}

#: Layers that need the classifier (fc6/fc7) weights.
CLASSIFIER_LAYERS: frozenset[str] = frozenset({"fc6+fc7", "fc7"})

#: Layers computed from the convolutional stack alone.
CONV_LAYERS: frozenset[str] = frozenset({"pool5", "gap", "pool4+pool5"})

"""Names and sizes of the VGG16 feature layers, and how ``layer = "auto"`` resolves (no torch import)."""

from __future__ import annotations

from collections.abc import Iterable

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

#: ``[features] layer`` value that lets the weights decide (see :func:`resolve_layer`).
AUTO_LAYER = "auto"

#: The method's layer, used by ``"auto"`` when the weights hold fc6/fc7.
METHOD_LAYER = "fc6+fc7"

#: The conv layer ``"auto"`` uses with conv-only weights (no fc6/fc7): the best conv-layer
#: features the benchmarks found.  With ImageNet conv-only weights and the standard
#: preprocessing, ``pool4+pool5`` beat ``gap`` and ``pool5`` in-domain on hard frames and
#: across simulated configurations (``benchmarks/bench_transfer.py``).
BEST_CONV_LAYER = "pool4+pool5"


def resolve_layer(layer: str, available: Iterable[str]) -> str:
    """The feature layer a job computes.

    Parameters
    ----------
    layer
        ``[features] layer``: a name in :data:`LAYER_SIZES`, or ``"auto"``.
    available
        The layers the weights can give (:attr:`hpcdiff.features.weights.WeightsInfo.layers`).

    Returns
    -------
    str
        ``layer`` itself unless it is ``"auto"``: then :data:`METHOD_LAYER` (fc6+fc7) where
        the weights hold the fc layers, else :data:`BEST_CONV_LAYER`.  Whether the weights
        can give an explicit layer is checked elsewhere
        (:func:`hpcdiff.features.weights.check_layer`).
    """
    if layer != AUTO_LAYER:
        return layer
    return METHOD_LAYER if METHOD_LAYER in set(available) else BEST_CONV_LAYER


def layer_note(layer: str, available: Iterable[str]) -> str | None:
    """What outputs say when ``"auto"`` did not give the method's layer, else ``None``.

    Examples
    --------
    >>> layer_note("auto", ["pool5", "gap"])  # doctest: +ELLIPSIS
    'layer auto: the weights hold no fc6/fc7 (conv-only checkpoint), so features are gap ...'
    """
    resolved = resolve_layer(layer, available)
    if layer != AUTO_LAYER or resolved == METHOD_LAYER:
        return None
    return (
        f"layer auto: the weights hold no fc6/fc7 (conv-only checkpoint), so features are "
        f"{resolved} ({LAYER_SIZES[resolved]} values), the best conv layer in the accuracy "
        f"benchmark, instead of the method's {METHOD_LAYER}"
    )

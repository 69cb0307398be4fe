"""Where VGG16 weights come from, what they cover and how their input must be normalised.

A weights *spec* is one of

``"hub"``
    torchvision's ImageNet checkpoint in the torch hub cache,
    ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``.
``"random:SEED"``
    Untrained weights drawn with torchvision's initialisation from ``SEED`` (for tests and
    throughput runs; never presented as pretrained).
a path
    A ``torch.save`` d state dict: either a full torchvision VGG16 checkpoint, or a conv-only one
    (``features.*`` keys only) such as the ImageNet Caffe conversion made by
    ``shared/tools/vgg16-imagenet-conv``.  A JSON sidecar with the same stem
    (``NAME.json``) may declare the preprocessing (``"preprocessing": {"channel_order": "BGR",
    "mean_subtracted_bgr": [...]}`` for Caffe weights) and the file's ``sha256``, which is checked.

Every resolution yields a :class:`WeightsInfo` that outputs record (name, path, SHA-256,
pretrained, layers available, preprocessing).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcdiff.errors import FormatError, HpcdiffError
from hpcdiff.features.hashcache import cached_sha256
from hpcdiff.features.layers import CLASSIFIER_LAYERS, CONV_LAYERS, LAYER_SIZES
from hpcdiff.features.vgg16 import VGG16

#: torchvision's ImageNet VGG16 checkpoint (the method's weights).
TORCHVISION_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
TORCHVISION_FILE = "vgg16-397923af.pth"

#: torchvision preprocessing: RGB in [0, 1], minus ImageNet mean, divided by std.
TORCHVISION_PREPROCESSING: dict[str, Any] = {
    "style": "torchvision",
    "channel_order": "RGB",
    "scale": 1.0,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}

#: Caffe preprocessing: BGR, 0-255, minus the BGR channel means, no std.
CAFFE_MEAN_BGR = [103.939, 116.779, 123.68]
CAFFE_PREPROCESSING: dict[str, Any] = {
    "style": "caffe",
    "channel_order": "BGR",
    "scale": 255.0,
    "mean": CAFFE_MEAN_BGR,
    "std": [1.0, 1.0, 1.0],
}


class WeightsError(HpcdiffError, ValueError):
    """Weights cannot be found, read or used for the requested layer."""


@dataclass(frozen=True)
class WeightsInfo:
    """What a set of VGG16 weights is; recorded in every features file and model.

    Attributes
    ----------
    name
        Human-readable name: the checkpoint file name, or ``"random:SEED (untrained)"``.
    path
        Absolute checkpoint path, or ``None`` for random weights.
    sha256
        Hex SHA-256 of the checkpoint file; for random weights, of the tensors' bytes.
    pretrained
        True only for weights loaded from a checkpoint file.
    layers
        Feature layers these weights can produce.
    preprocessing
        ``style``, ``channel_order`` ("RGB"/"BGR"), ``scale`` (input [0, 1] multiplied by it),
        ``mean`` and ``std`` per channel in ``channel_order``.
    """

    name: str
    path: str | None
    sha256: str
    pretrained: bool
    layers: tuple[str, ...]
    preprocessing: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        out = asdict(self)
        out["layers"] = list(self.layers)
        out["preprocessing"] = dict(self.preprocessing)
        return out


@dataclass(frozen=True)
class LoadedWeights:
    """A state dict (torchvision key names) and its :class:`WeightsInfo`."""

    state_dict: Mapping[str, Any]
    info: WeightsInfo


def hub_checkpoint_path() -> Path:
    """Where ``"hub"`` looks: ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def _missing_message(path: Path, spec: str) -> str:
    hub = hub_checkpoint_path()
    return (
        f"VGG16 weights {spec!r}: checkpoint {path} not found. On a machine with internet "
        f"access, `hpcdiff weights download` puts torchvision's ImageNet checkpoint at {hub} "
        f'(weights = "hub"); without one, download {TORCHVISION_URL} elsewhere and copy '
        f"{TORCHVISION_FILE} there, or anywhere and give its path (weights = "
        f'"/path/{TORCHVISION_FILE}"). ImageNet conv-only weights with a JSON sidecar give '
        f'layers pool5/gap (layer = "auto" picks one). For untrained weights (tests, '
        f'throughput) use weights = "random:SEED". `hpcdiff weights` lists what it finds.'
    )


def _tensor_sha256(state_dict: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        arr = state_dict[key].detach().cpu().contiguous().numpy()
        digest.update(key.encode() + b"\0" + str(arr.shape).encode() + b"\0")
        # hash the array's own buffer: the same bytes as tobytes(), without a copy
        digest.update(np.ascontiguousarray(arr, dtype="<f4").data.cast("B"))
    return digest.hexdigest()


def _random_state_dict(seed: int) -> dict[str, Any]:
    """Seeded untrained VGG16 weights, drawn straight into float32 tensors.

    The same values as ``VGG16(generator=torch.Generator().manual_seed(seed))`` (torchvision's
    init: Kaiming-normal, fan-out, ReLU conv kernels; N(0, 0.01) linear weights; zero biases;
    drawn in module order from one generator), without first building the modules, whose
    default initialisation draws every weight a second time from the global generator.

    Returns
    -------
    dict of str to torch.Tensor
        torchvision key names, float32 on the CPU.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    for key, shape in _expected_shapes().items():
        t = torch.empty(shape, dtype=torch.float32)
        if key.endswith(".bias"):
            t.zero_()
        elif len(shape) == 4:  # conv kernel (out, in, kh, kw): fan_out = out * kh * kw
            t.normal_(0.0, math.sqrt(2.0 / (shape[0] * shape[2] * shape[3])), generator=gen)
        elif len(shape) == 2:
            t.normal_(0.0, 0.01, generator=gen)
        else:
            raise AssertionError(f"unexpected VGG16 parameter {key} of shape {shape}")
        state[key] = t
    return state


def _random_weights(spec: str) -> LoadedWeights:
    text = spec.split(":", 1)[1]
    try:
        seed = int(text)
    except ValueError:
        raise WeightsError(
            f"VGG16 weights {spec!r}: expected 'random:SEED' with an integer SEED"
        ) from None
    state = _random_state_dict(seed)
    info = WeightsInfo(
        name=f"random:{seed} (untrained, not pretrained)",
        path=None,
        sha256=_tensor_sha256(state),
        pretrained=False,
        layers=tuple(LAYER_SIZES),
        preprocessing=dict(TORCHVISION_PREPROCESSING),
    )
    return LoadedWeights(state, info)


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    import torch

    with torch.device("meta"):
        model = VGG16()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _read_sidecar(path: Path, sha: str) -> dict[str, Any] | None:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FormatError(sidecar, f"weights sidecar is not readable JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise FormatError(sidecar, "weights sidecar must be a JSON object")
    declared = meta.get("sha256")
    if declared is not None and declared != sha:
        raise FormatError(
            sidecar,
            f"declares sha256 {declared} but {path.name} has sha256 {sha}; "
            "the checkpoint was changed or the sidecar belongs to another file",
        )
    return meta


def _preprocessing_from_sidecar(sidecar: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    pre = meta.get("preprocessing")
    if pre is None:
        return dict(TORCHVISION_PREPROCESSING)
    if not isinstance(pre, Mapping):
        raise FormatError(sidecar, "'preprocessing' must be an object")
    order = str(pre.get("channel_order", "RGB")).upper()
    if order == "BGR":
        mean = pre.get("mean_subtracted_bgr", pre.get("mean", CAFFE_MEAN_BGR))
        if len(mean) != 3:
            raise FormatError(sidecar, f"'preprocessing' mean must have 3 values, got {mean}")
        out = dict(CAFFE_PREPROCESSING)
        out["mean"] = [float(m) for m in mean]
        return out
    if order == "RGB":
        out = dict(TORCHVISION_PREPROCESSING)
        for key in ("scale", "mean", "std"):
            if key in pre:
                out[key] = pre[key]
        return out
    raise FormatError(sidecar, f"'preprocessing.channel_order' must be RGB or BGR, got {order!r}")


def _file_weights(spec: str, path: Path) -> LoadedWeights:
    import torch

    if not path.is_file():
        raise WeightsError(_missing_message(path, spec))
    sha = cached_sha256(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad archive
        raise FormatError(path, f"not a torch state dict readable without pickle ({exc})") from None
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise FormatError(path, "expected a dict of tensors keyed like torchvision's vgg16()")
    expected = _expected_shapes()
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise FormatError(
            path,
            f"keys not in torchvision's vgg16(): {unknown[:6]}{' ...' if len(unknown) > 6 else ''}",
        )
    for key, value in state.items():
        if tuple(value.shape) != expected[key]:
            raise FormatError(
                path, f"{key} has shape {tuple(value.shape)}, vgg16() expects {expected[key]}"
            )
    conv_keys = {k for k in expected if k.startswith("features.")}
    fc_keys = {
        k for k in expected if k.startswith("classifier.") and not k.startswith("classifier.6")
    }
    missing_conv = sorted(conv_keys - set(state))
    if missing_conv:
        raise FormatError(path, f"missing convolution weights {missing_conv[:6]}")
    layers = tuple(LAYER_SIZES) if fc_keys <= set(state) else tuple(sorted(CONV_LAYERS))
    sidecar = path.with_suffix(".json")
    meta = _read_sidecar(path, sha)
    pre = (
        _preprocessing_from_sidecar(sidecar, meta)
        if meta is not None
        else dict(TORCHVISION_PREPROCESSING)
    )
    info = WeightsInfo(
        name=path.name,
        path=str(path.resolve()),
        sha256=sha,
        pretrained=True,
        layers=layers,
        preprocessing=pre,
    )
    return LoadedWeights(state, info)


def load_weights(spec: str) -> LoadedWeights:
    """Resolve a weights spec into a state dict and its description.

    Parameters
    ----------
    spec
        ``"hub"``, ``"random:SEED"`` or a checkpoint path (see the module docstring).

    Raises
    ------
    WeightsError
        The checkpoint does not exist (the message says where to get it) or the spec is malformed.
    FormatError
        The file is not a VGG16 state dict, or its sidecar disagrees with it.
    """
    if spec == "hub":
        return _file_weights(spec, hub_checkpoint_path())
    if spec.startswith("random:"):
        return _random_weights(spec)
    return _file_weights(spec, Path(spec).expanduser())


def check_layer(info: WeightsInfo, layer: str) -> None:
    """Refuse a layer the weights do not cover (e.g. fc6/fc7 from a conv-only checkpoint)."""
    if layer not in LAYER_SIZES:
        raise WeightsError(f"unknown VGG16 layer {layer!r}; expected one of {sorted(LAYER_SIZES)}")
    if layer not in info.layers:
        need = "fc6/fc7 (classifier.0, classifier.3)" if layer in CLASSIFIER_LAYERS else layer
        raise WeightsError(
            f"VGG16 weights {info.name} ({info.path}) hold only the convolutional stack and "
            f"cannot give layer {layer!r}, which needs {need} weights; use layer "
            f"{' or '.join(repr(x) for x in info.layers)}, or a full torchvision checkpoint "
            f"({TORCHVISION_URL})"
        )

"""A plain-torch VGG16 whose ``state_dict`` is identical to ``torchvision.models.vgg16()``.

The module tree (``features``, ``avgpool``, ``classifier``), the parameter names
(``features.{0,2,5,7,10,12,14,17,19,21,24,26,28}``, ``classifier.{0,3,6}``) and their shapes
are torchvision's, so the public checkpoint ``vgg16-397923af.pth`` loads unchanged, with
``strict=True``, and hpcdiff never needs torchvision itself.

Feature layers (the ``layer`` argument of :meth:`VGG16.forward_features`):

``"fc6+fc7"``
    ReLU outputs of fc6 and fc7 concatenated, 4096 + 4096 = 8192 values (the method's default).
``"fc7"``
    ReLU output of fc7, 4096 values.
``"pool5"``
    Output of the last max-pool after the adaptive 7x7 average pool, flattened, 512 * 7 * 7 = 25088
    values (at 224 x 224 input the adaptive pool is the identity).
``"gap"``
    Global spatial average of the last max-pool output (pool5), 512 values.
``"pool4+pool5"``
    Global spatial averages of the pool4 and pool5 outputs concatenated (pool4 first),
    512 + 512 = 1024 values: a finer-scale block (pool4 sees 16 x 16 px cells at 224 px
    input) beside pool5's.

Dropout layers are kept for state-dict and module-index identity; in evaluation mode
(``model.eval()``, which :class:`~hpcdiff.features.extractor.FeatureExtractor` always uses)
they are the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from hpcdiff.features.layers import LAYER_SIZES

#: VGG16 configuration "D": channel counts, ``"M"`` for a 2x2 max-pool.
CONFIG_D: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip

#: Modules of ``features`` up to and including the fourth max-pool (pool4).
POOL4_END = 24


def _make_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for spec in CONFIG_D:
        if spec == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_channels, int(spec), kernel_size=3, padding=1))
            layers.append(nn.ReLU(inplace=True))
            in_channels = int(spec)
    return nn.Sequential(*layers)


class VGG16(nn.Module):
    """VGG16 (configuration D) with torchvision's module tree and initialisation.

    Parameters
    ----------
    num_classes
        Size of the last linear layer (fc8); 1000 for the ImageNet checkpoints.
    generator
        Random generator for the initial weights; ``None`` uses torch's global generator.
        Initialisation is torchvision's: Kaiming-normal (fan-out, ReLU) conv kernels, N(0, 0.01)
        linear weights, zero biases.
    """

    def __init__(self, num_classes: int = 1000, *, generator: torch.Generator | None = None):
        super().__init__()
        self.features = _make_features()
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, num_classes),
        )
        self.reset_parameters(generator=generator)

    @torch.no_grad()
    def reset_parameters(self, *, generator: torch.Generator | None = None) -> None:
        """Re-draw every weight as torchvision does (deterministic given ``generator``)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(
                    m.weight, mode="fan_out", nonlinearity="relu", generator=generator
                )
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01, generator=generator)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits, ``(n, num_classes)``, as torchvision's ``VGG.forward``."""
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)

    def forward_features(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """Feature vectors of one named layer.

        Parameters
        ----------
        x
            Normalised images, ``(n, 3, H, W)``, H and W >= 32 (224 for the method).
        layer
            One of :data:`LAYER_SIZES`.

        Returns
        -------
        torch.Tensor
            ``(n, LAYER_SIZES[layer])`` in the dtype the computation ran in.
        """
        if layer not in LAYER_SIZES:
            raise ValueError(
                f"unknown VGG16 layer {layer!r}; expected one of {sorted(LAYER_SIZES)}"
            )
        if layer == "pool4+pool5":
            pool4 = self.features[:POOL4_END](x)
            pool5 = self.features[POOL4_END:](pool4)
            return torch.cat([pool4.mean(dim=(2, 3)), pool5.mean(dim=(2, 3))], dim=1)
        conv = self.features(x)
        if layer == "gap":
            return conv.mean(dim=(2, 3))
        pooled = torch.flatten(self.avgpool(conv), 1)
        if layer == "pool5":
            return pooled
        fc6 = self.classifier[1](self.classifier[0](pooled))  # Linear + ReLU
        fc7 = self.classifier[4](
            self.classifier[3](self.classifier[2](fc6))
        )  # Dropout, Linear, ReLU
        if layer == "fc7":
            return fc7
        return torch.cat([fc6, fc7], dim=1)

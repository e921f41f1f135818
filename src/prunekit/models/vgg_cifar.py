"""VGG-11/16/19 with BatchNorm for 32x32 inputs (the CIFAR variant used by pruning papers).

``features`` is one plain ``nn.Sequential`` of conv3x3-BN-ReLU triples and 2x2 max-pools
(five pools take 32x32 down to 1x1), followed by ``classifier`` = Linear(512, num_classes).

>>> import torch
>>> m = vgg_cifar("vgg16_bn")
>>> m(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.registry import register

# Output channels per conv; "M" is a 2x2 max-pool.
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11_bn": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16_bn": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19_bn": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ),
}  # fmt: skip


class VGGCifar(nn.Module):
    """``features`` (conv-BN-ReLU / max-pool stack) then ``classifier`` (one Linear)."""

    def __init__(self, config: tuple[int | str, ...], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out = int(item)
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, classes)
        out = self.features(x)  # (B, 512, 1, 1)
        return self.classifier(out.flatten(1))


def scaled(config: tuple[int | str, ...], width: float) -> tuple[int | str, ...]:
    """``config`` with every conv's channels times ``width`` (rounded, at least 8).

    >>> scaled(CONFIGS["vgg11_bn"], 0.25)[:4]
    (16, 'M', 32, 'M')
    """
    if not (isinstance(width, (int, float)) and not isinstance(width, bool) and 0 < width <= 4):
        raise ConfigError(f"VGG width must be a number in (0, 4] (1 = the paper's channels), got {width!r}")
    return tuple(c if c == "M" else max(8, int(round(int(c) * width))) for c in config)


def vgg_cifar(name: str, num_classes: int = 10, width: float = 1.0) -> VGGCifar:
    """Build ``vgg11_bn``, ``vgg16_bn`` or ``vgg19_bn`` (``width`` scales every conv's channels)."""
    if name not in CONFIGS:
        raise ConfigError(f"unknown VGG {name!r}; use one of {sorted(CONFIGS)}")
    return VGGCifar(scaled(CONFIGS[name], width) if width != 1.0 else CONFIGS[name], num_classes=num_classes)


def _make_builder(name: str):
    def build(num_classes: int = 10, width: float = 1.0) -> VGGCifar:
        return vgg_cifar(name, num_classes=num_classes, width=width)

    build.__doc__ = (f"{name} for 32x32 inputs (BatchNorm, Linear(512, num_classes) classifier); ``width`` "
                     "scales the channels (0.25: a quarter as wide).")
    return build


for _name in CONFIGS:
    register(_name)(_make_builder(_name))

"""ResNet for CIFAR (He et al. 2016, section 4.2): ResNet-20/32/44/56/110.

State-dict keys match the widely used pretrained CIFAR-10 checkpoints
(``conv1``, ``bn1``, ``layer{1,2,3}.{i}.conv{1,2}/bn{1,2}``, ``linear``), after stripping
their ``module.`` prefix; see :func:`prunekit.models.pretrained.load_pretrained`.

Shortcut option "A" is the parameter-free one (spatial subsample + zero channel padding);
option "B" is a 1x1 conv + BN projection (keys ``shortcut.0`` / ``shortcut.1``).

>>> import torch
>>> m = resnet_cifar(20)
>>> m(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.registry import register
from prunekit.nn import PadShortcut  # the option-A shortcut (registers its structural rule)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if option == "A":
                extra = planes - in_planes
                self.shortcut = PadShortcut(extra // 2, extra - extra // 2, stride)
            elif option == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )
            else:
                raise ConfigError(f"unknown shortcut option {option!r}; use 'A' or 'B'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet with 3 stages of ``n`` BasicBlocks (depth = 6n + 2)."""

    def __init__(
        self, num_blocks: tuple[int, int, int], num_classes: int = 10, option: str = "A", width: int = 16
    ) -> None:
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(width, num_blocks[0], 1, option)
        self.layer2 = self._make_layer(2 * width, num_blocks[1], 2, option)
        self.layer3 = self._make_layer(4 * width, num_blocks[2], 2, option)
        self.linear = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, n: int, stride: int, option: str) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s, option))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, classes)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, 4w)
        return self.linear(out)


def resnet_cifar(depth: int, num_classes: int = 10, option: str = "A") -> ResNetCifar:
    """Build a CIFAR ResNet of ``depth`` = 6n + 2 layers (20, 32, 44, 56, 110, ...)."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ConfigError(f"ResNet-CIFAR depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    return ResNetCifar((n, n, n), num_classes=num_classes, option=option)


def _make_builder(depth: int):
    def build(num_classes: int = 10, option: str = "A") -> ResNetCifar:
        return resnet_cifar(depth, num_classes=num_classes, option=option)

    build.__doc__ = f"ResNet-{depth} for CIFAR (option 'A' pad shortcut or 'B' projection)."
    return build


for _depth in (20, 32, 44, 56, 110):
    register(f"resnet{_depth}")(_make_builder(_depth))

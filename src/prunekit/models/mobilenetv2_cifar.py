"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 CIFAR inputs.

As in the common CIFAR variants, the stem conv and the 24-channel stage use stride 1 (instead
of 2), so the 32x32 input is downsampled 8x in all, to a 4x4 map. Blocks are inverted
residuals: 1x1 expand - 3x3 depthwise - 1x1 linear projection, with a residual add when the
stride is 1 and the channel count is unchanged.

>>> import torch
>>> m = mobilenetv2(width_mult=0.5)
>>> m(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.registry import register

# (expansion t, output channels c, repeats n, stride of the first block s)
STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 in the ImageNet model
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never dropping below 90% of it.

    >>> make_divisible(32 * 0.75), make_divisible(16 * 0.5)
    (24, 8)
    """
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) - BN - ReLU6, "same" padding."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """``conv`` = [1x1 expand-BN-ReLU6] - 3x3 depthwise-BN-ReLU6 - 1x1 project - BN; optional residual."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(cin, hidden, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H/s, W/s)
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2Cifar(nn.Module):
    """``features`` (stem, inverted residuals, 1x1 head conv) - global pool - ``classifier``."""

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ConfigError(f"width_mult must be > 0, got {width_mult}")
        cin = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [conv_bn_relu6(3, cin, 3, stride=1)]  # stride 2 in the ImageNet model
        for t, c, n, s in STAGES:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_relu6(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, classes)
        out = self.features(x)  # (B, last, 4, 4)
        out = nn.functional.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, last)
        return self.classifier(self.dropout(out))


@register("mobilenetv2")
def mobilenetv2(num_classes: int = 10, width_mult: float = 1.0, dropout: float = 0.0) -> MobileNetV2Cifar:
    """MobileNetV2 for 32x32 inputs (stride-1 stem and first stages), ``width_mult`` scales channels."""
    return MobileNetV2Cifar(num_classes, width_mult, dropout)

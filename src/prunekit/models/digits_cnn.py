"""A small CNN for scikit-learn's 8x8 digits ``(B, 1, 8, 8)``; trains in seconds on a CPU.

Two conv-BN-ReLU pairs per stage so channel pruning has real coupled layers to act on.

>>> import torch
>>> DigitsCNN()(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.registry import register


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DigitsCNN(nn.Module):
    """``features``: conv(1->w)-conv(w->w)-pool-conv(w->2w)-conv(2w->2w)-pool; ``classifier``: 2w*2*2 -> classes."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn_relu(1, w), *_conv_bn_relu(w, w), nn.MaxPool2d(2),  # (B, w, 4, 4)
            *_conv_bn_relu(w, 2 * w), *_conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2),  # (B, 2w, 2, 2)
        )  # fmt: skip
        self.classifier = nn.Linear(2 * w * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 8, 8) -> (B, classes)
        return self.classifier(self.features(x).flatten(1))


@register("digits_cnn")
def digits_cnn(num_classes: int = 10, width: int = 16) -> DigitsCNN:
    """Small CNN for (B, 1, 8, 8) scikit-learn digits."""
    return DigitsCNN(num_classes, width)

"""LeNet-300-100 and LeNet-5 for MNIST ``(B, 1, 28, 28)`` inputs.

>>> import torch
>>> sum(p.numel() for p in LeNet300100().parameters())
266610
>>> LeNet5()(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.registry import register


class LeNet300100(nn.Module):
    """Fully connected 784-300-100-classes with ReLU; flattens (B, 1, 28, 28) input."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, classes)
        out = self.relu(self.fc1(x.flatten(1)))  # (B, 300)
        out = self.relu(self.fc2(out))  # (B, 100)
        return self.fc3(out)


class LeNet5(nn.Module):
    """conv(1->6, 5x5, pad 2)-ReLU-pool, conv(6->16, 5x5)-ReLU-pool, 400-120-84-classes.

    The flatten follows PyTorch's (C, H, W) order, so conv2's output channel ``c`` owns the
    25 input features ``c*25 .. c*25+24`` of ``fc1`` (what channel pruning must slice).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, classes)
        out = self.pool(self.relu(self.conv1(x)))  # (B, 6, 14, 14)
        out = self.pool(self.relu(self.conv2(out)))  # (B, 16, 5, 5)
        out = self.relu(self.fc1(out.flatten(1)))  # (B, 120)
        out = self.relu(self.fc2(out))  # (B, 84)
        return self.fc3(out)


@register("lenet300_100")
def lenet300_100(num_classes: int = 10) -> LeNet300100:
    """LeNet-300-100 (266,610 parameters) for (B, 1, 28, 28) MNIST."""
    return LeNet300100(num_classes)


@register("lenet5")
def lenet5(num_classes: int = 10) -> LeNet5:
    """LeNet-5 (61,706 parameters) for (B, 1, 28, 28) MNIST."""
    return LeNet5(num_classes)

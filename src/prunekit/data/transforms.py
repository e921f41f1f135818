"""Tensor image transforms used by the loaders (no torchvision needed)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Normalize:
    """``(x - mean) / std`` per channel on a float (C, H, W) tensor in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class RandomCropFlip:
    """Standard CIFAR augmentation: random crop ``size`` after zero-padding ``padding``, then a
    horizontal flip with probability 1/2. Works on a (C, H, W) tensor.

    >>> t = RandomCropFlip(32, 4, generator=torch.Generator().manual_seed(0))
    >>> t(torch.ones(3, 32, 32)).shape
    torch.Size([3, 32, 32])
    """

    def __init__(self, size: int = 32, padding: int = 4, generator: torch.Generator | None = None) -> None:
        self.size = size
        self.padding = padding
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (C, H, W)
        p = self.padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        h, w = padded.shape[-2:]
        i = int(torch.randint(0, h - self.size + 1, (1,), generator=self.generator))
        j = int(torch.randint(0, w - self.size + 1, (1,), generator=self.generator))
        out = padded[:, i : i + self.size, j : j + self.size]
        if float(torch.rand(1, generator=self.generator)) < 0.5:
            out = out.flip(-1)
        return out

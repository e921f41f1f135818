"""Data-free criteria: weight magnitude and random scores."""

from __future__ import annotations

import zlib

import torch

from prunekit.errors import ConfigError
from prunekit.targets import Target


class Magnitude:
    """``|W|^p`` element scores.

    Summing the scores over a group gives the group's Lp norm to the power p, which ranks groups
    exactly like the Lp norm (p=1: L1, p=2: L2).

    >>> import torch.nn as nn
    >>> lin = nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = lin.weight.copy_(torch.tensor([[-3.0, 2.0]]))
    >>> Magnitude(p=2).scores(Target("fc", lin))
    tensor([[9., 4.]])
    """

    needs_calibration = False

    def __init__(self, p: float = 1) -> None:
        if not p > 0:
            raise ConfigError(f"Magnitude(p={p}): p must be > 0 (1 for L1, 2 for L2)")
        self.p = float(p)

    def scores(self, target: Target) -> torch.Tensor:
        w = target.weight.detach()
        return w.abs() if self.p == 1 else w.abs().pow(self.p)

    def __repr__(self) -> str:
        return f"Magnitude(p={self.p:g})"


class Random:
    """Uniform random scores in [0, 1); deterministic per (seed, layer name).

    >>> import torch.nn as nn
    >>> t = Target("fc", nn.Linear(4, 3))
    >>> torch.equal(Random(seed=1).scores(t), Random(seed=1).scores(t))
    True
    """

    needs_calibration = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def scores(self, target: Target) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(target.name.encode()))
        w = target.weight
        return torch.rand(w.shape, generator=gen).to(w.device)

    def __repr__(self) -> str:
        return f"Random(seed={self.seed})"

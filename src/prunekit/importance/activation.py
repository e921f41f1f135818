"""Activation-based channel criteria: APoZ (Hu et al. 2016) and mean activation.

Both look at each target's *post-activation* output on calibration batches. The activation is
taken to be a ReLU right after the layer, or after the BatchNorm that consumes the layer's output
(found from the data flow, see :func:`prunekit.importance.bn.following_batchnorm`): a value is
"zero after the ReLU" exactly when the pre-activation is ``<= 0``. ReLUs are often functional
(``F.relu``), so the ReLU itself is not hooked; the pre-activation is.

For a conv whose BN output is first added to a residual branch (``conv2`` of a ResNet block) the
statistic describes the branch before the add. Scores are per output channel/neuron, broadcast
over the channel's weights.

>>> import torch, torch.nn as nn
>>> from prunekit.targets import select
>>> m = nn.Sequential(nn.Linear(2, 2))
>>> with torch.no_grad():
...     _ = m[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])); _ = m[0].bias.zero_()
>>> x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [3.0, 0.0]])
>>> APoZ().calibrate(m, [x], 1, select(m)).scores(select(m)[0])[:, 0]
tensor([0.7500, 0.2500])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from prunekit.errors import ConfigError
from prunekit.importance.base import DataDrivenImportance, call_model, preserved_modes
from prunekit.importance.bn import broadcast_channels, following_batchnorm
from prunekit.targets import Target


def channel_dim(module: nn.Module) -> int:
    """Channel dimension of ``module``'s output: -1 for Linear (features last), 1 otherwise (N, C, ...)."""
    return -1 if isinstance(module, nn.Linear) else 1


def per_channel_sum(y: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of ``y`` over every dimension except the channel dimension ``dim`` -> (C,)."""
    y = y.movedim(dim, -1)
    return y.reshape(-1, y.shape[-1]).sum(dim=0)


class ChannelStatistic(DataDrivenImportance):
    """Base for criteria that reduce each target's (BN-normalised) output per channel.

    The first calibration batch also finds the BatchNorm after each target (one extra forward).
    Subclasses implement ``_batch_stat(target, pre_activation, channel_dim) -> (C,)`` (summed over
    the batch) and ``_per_channel(total, count) -> (C,)``; ``count`` is the number of values per
    channel seen so far.
    """

    def __init__(self) -> None:
        super().__init__()
        self._targets: list[Target] = []
        self._bn: dict[str, _BatchNorm | None] | None = None
        self._sum: dict[str, torch.Tensor] = {}
        self._count: dict[str, int] = {}
        self._active = False

    # -- subclass interface ---------------------------------------------------------------------
    def _batch_stat(self, target: Target, y: torch.Tensor, dim: int) -> torch.Tensor:
        raise NotImplementedError

    def _per_channel(self, total: torch.Tensor, count: int) -> torch.Tensor:
        return total / max(count, 1)

    # -- plumbing -------------------------------------------------------------------------------
    def calibrate(
        self, model: nn.Module, loader: Iterable[Any], num_batches: int, targets: Sequence[Target] | None = None
    ) -> ChannelStatistic:
        """Collect statistics on up to ``num_batches`` batches; every submodule's mode is restored."""
        with preserved_modes(model):
            super().calibrate(model, loader, num_batches, targets)
        return self

    def _attach(self, model: nn.Module, targets: Sequence[Target]) -> list[RemovableHandle]:
        self._targets = list(targets)
        self._bn = None
        self._sum, self._count = {}, {}
        self._active = False
        handles = []
        for t in targets:
            handles.append(t.module.register_forward_hook(self._layer_hook(t)))
        for bn in {id(m): m for m in model.modules() if isinstance(m, _BatchNorm)}.values():
            handles.append(bn.register_forward_hook(self._bn_hook(bn)))
        return handles

    def _record(self, target: Target, y: torch.Tensor, dim: int) -> None:
        stat = self._batch_stat(target, y.detach(), dim).float()  # (C,)
        if target.name in self._sum:
            self._sum[target.name] += stat.to(self._sum[target.name].device)
        else:
            self._sum[target.name] = stat
        self._count[target.name] = self._count.get(target.name, 0) + y.numel() // y.shape[dim]

    def _uses_bn(self, target: Target) -> bool:
        return self._bn is not None and self._bn.get(target.name) is not None

    def _layer_hook(self, target: Target):
        def hook(mod: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
            if self._active and isinstance(out, torch.Tensor) and not self._uses_bn(target):
                self._record(target, out, channel_dim(mod))

        return hook

    def _bn_hook(self, bn: _BatchNorm):
        def hook(_mod: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
            if not self._active or self._bn is None:
                return
            for t in self._targets:
                if self._bn.get(t.name) is bn:
                    self._record(t, out, 1)

        return hook

    def _run_batch(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None) -> None:
        if self._bn is None:
            self._bn = following_batchnorm(model, self._targets, inputs)
            model.train(self.train_mode)
        self._active = True
        try:
            with torch.no_grad():
                call_model(model, inputs)
        finally:
            self._active = False

    def channel_scores(self, target: Target) -> torch.Tensor:
        """The per-channel score vector (C,) of ``target`` (before broadcasting)."""
        self.scores(target)  # raises if not calibrated
        return self._channel(target)

    def _channel(self, target: Target) -> torch.Tensor:
        if target.name not in self._sum:
            raise ConfigError(
                f"{type(self).__name__}: layer {target.name!r} never ran during calibration; is it used "
                "in the model's forward?"
            )
        return self._per_channel(self._sum[target.name], self._count[target.name])

    def _score(self, target: Target) -> torch.Tensor:
        return broadcast_channels(self._channel(target), target.weight, dim=0)


class APoZ(ChannelStatistic):
    """``1 - APoZ``: the fraction of a channel's post-ReLU outputs that are non-zero (higher = keep).

    APoZ (average percentage of zeros) counts, over calibration batches and positions, how often a
    channel's output is zero after the ReLU that follows the layer (or its BatchNorm).
    """

    def _batch_stat(self, target: Target, y: torch.Tensor, dim: int) -> torch.Tensor:
        return per_channel_sum((y <= 0).float(), dim)

    def _per_channel(self, total: torch.Tensor, count: int) -> torch.Tensor:
        return 1.0 - total / max(count, 1)

    def apoz(self, target: Target) -> torch.Tensor:
        """The average percentage of zeros (C,) itself, in [0, 1]."""
        return 1.0 - self.channel_scores(target)

    def __repr__(self) -> str:
        return "APoZ()"


class MeanActivation(ChannelStatistic):
    """Mean post-ReLU output of each channel over calibration batches and positions."""

    def _batch_stat(self, target: Target, y: torch.Tensor, dim: int) -> torch.Tensor:
        return per_channel_sum(y.clamp(min=0), dim)

    def __repr__(self) -> str:
        return "MeanActivation()"

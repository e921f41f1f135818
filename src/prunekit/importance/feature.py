"""Feature-based criterion: how much a layer's output changes on real data when a channel goes.

``FeatureReconstruction(dim=0)`` scores output channel ``c`` by the energy of its output,
``E_x ||Y_c||^2`` (summed over positions, averaged over samples): masking that channel's weights
changes the output by exactly ``Y_c`` (the bias is not part of the weights and stays).
``dim=1`` scores input channel ``c`` by ``E_x ||W[:, c] * X_c||^2``, the output error from dropping
that input (for a conv: the energy of the convolution of ``X_c`` with the filters' slice ``c``).

When a BatchNorm consumes the layer's output (found from the data flow), the change is measured
after it, i.e. each output channel is scaled by ``gamma / sqrt(running_var + eps)``; otherwise the
raw conv output would rank channels by an arbitrary pre-BN scale. Pass ``through_bn=False`` for
the raw layer output. Masking a conv's weights leaves its BN emitting the constant
``beta - gamma * mean / sqrt(var + eps)``; when the channel is removed *with* its BN channel
(structural pruning, or zeroing gamma and beta too), pass ``bn_removed=True``: the change is then
the whole BN output, ``E ||BN(Y)_c||^2``. ``relu=True`` measures the change after a ReLU that
follows (what the next layer actually receives), e.g. ``E ||relu(BN(Y))_c - relu(BN(b))_c||^2``.

>>> import torch, torch.nn as nn
>>> from prunekit.targets import select
>>> m = nn.Sequential(nn.Linear(2, 2, bias=False))
>>> with torch.no_grad():
...     _ = m[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
>>> x = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
>>> FeatureReconstruction().calibrate(m, [x], 1, select(m)).scores(select(m)[0])[:, 0]
tensor([1., 9.])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunekit.errors import ConfigError, UnsupportedError
from prunekit.importance.activation import ChannelStatistic, channel_dim, per_channel_sum
from prunekit.importance.bn import bn_channel_scale, broadcast_channels
from prunekit.targets import Target

CHUNK_ELEMENTS = 1 << 24  # bound on the temporary per-input-channel conv output (elements)


def _output_scale(bn: _BatchNorm | None, y: torch.Tensor, out_ch: int) -> torch.Tensor:
    if bn is None:
        return torch.ones(out_ch, device=y.device)
    return bn_channel_scale(bn, y).to(y.device).float()


def _bn_output(bn: _BatchNorm, v: torch.Tensor, stats_from: torch.Tensor | None = None) -> torch.Tensor:
    """``bn(v)`` in eval form, channels on dim 1, without updating ``bn``.

    Uses the running statistics, or (a BN keeping none) the batch statistics of ``stats_from``
    (default ``v``).
    """
    if bn.running_mean is not None and bn.running_var is not None:
        mean, var = bn.running_mean.float(), bn.running_var.float()
    else:
        ref = v if stats_from is None else stats_from
        dims = [d for d in range(ref.dim()) if d != 1]
        mean, var = ref.mean(dim=dims), ref.var(dim=dims, unbiased=False)
    shape = [1, -1] + [1] * (v.dim() - 2)
    out = (v - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + bn.eps)
    if bn.weight is not None:
        out = out * bn.weight.detach().float().reshape(shape) + bn.bias.detach().float().reshape(shape)
    return out


def input_channel_energy(conv: nn.Conv2d, x: torch.Tensor, out_scale: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of ``||conv(X_c, W[:, c]) * s||^2`` for every input channel ``c`` -> (Cin,).

    Computed as one grouped convolution per chunk of input channels: input channel ``c`` convolved
    with the ``Cout/groups`` filters that read it (each scaled by ``out_scale``).
    """
    if conv.padding_mode != "zeros":
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding: Any = 0
    else:
        padding = conv.padding
    w = conv.weight.detach().float() * out_scale.reshape(-1, 1, 1, 1)  # (Cout, Cin/G, kh, kw)
    cout, cin_g, kh, kw = w.shape
    groups = conv.groups
    og = cout // groups
    cin = cin_g * groups
    # per input channel c = g * cin_g + j: the og filters W[g*og:(g+1)*og, j] -> (Cin, og, kh, kw)
    w_in = w.reshape(groups, og, cin_g, kh, kw).permute(0, 2, 1, 3, 4).reshape(cin, og, kh, kw)
    b, _, h, wd = x.shape
    chunk = max(1, CHUNK_ELEMENTS // max(1, b * og * h * wd))
    energy = torch.empty(cin, device=x.device)
    for start in range(0, cin, chunk):
        stop = min(cin, start + chunk)
        n = stop - start
        y = F.conv2d(
            x[:, start:stop].float(), w_in[start:stop].reshape(n * og, 1, kh, kw),
            stride=conv.stride, padding=padding, dilation=conv.dilation, groups=n,
        )  # (B, n*og, H', W')
        energy[start:stop] = y.pow(2).reshape(b, n, -1).sum(dim=(0, 2))
    return energy


def input_channel_broadcast(per_input: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Broadcast per-input-channel scores (Cin,) over a weight (Cout, Cin/groups, ...)."""
    cout, cin_g = weight.shape[:2]
    rows = per_input.reshape(groups, cin_g).repeat_interleave(cout // groups, dim=0)  # (Cout, Cin/G)
    shape = (cout, cin_g) + (1,) * (weight.dim() - 2)
    return rows.reshape(shape).to(weight.device, weight.dtype).expand_as(weight).clone()


class FeatureReconstruction(ChannelStatistic):
    """Output-error scores of output (``dim=0``) or input (``dim=1``) channels on calibration data."""

    def __init__(self, dim: int = 0, through_bn: bool = True, bn_removed: bool = False, relu: bool = False) -> None:
        super().__init__()
        if dim not in (0, 1):
            raise ConfigError(f"FeatureReconstruction(dim={dim}): use 0 (output channels) or 1 (input channels)")
        if (bn_removed or relu) and (dim != 0 or not through_bn):
            raise ConfigError(
                "FeatureReconstruction(bn_removed=True or relu=True) applies to output channels (dim=0) with through_bn"
            )
        self.dim = dim
        self.through_bn = through_bn
        self.bn_removed = bn_removed
        self.relu = relu

    def _layer_hook(self, target: Target):
        def hook(mod: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
            if not self._active or not isinstance(out, torch.Tensor):
                return
            bn = self._bn.get(target.name) if (self._bn is not None and self.through_bn) else None
            with torch.no_grad():
                if self.dim == 0:
                    self._record_output(target, mod, out.detach(), bn)
                else:
                    self._record_input(target, mod, inp[0].detach(), out.detach(), bn)

        return hook

    def _bn_hook(self, bn: _BatchNorm):
        def hook(*_: Any) -> None:
            return None

        return hook

    def _add(self, target: Target, stat: torch.Tensor, samples: int) -> None:
        if target.name in self._sum:
            self._sum[target.name] += stat
        else:
            self._sum[target.name] = stat
        self._count[target.name] = self._count.get(target.name, 0) + samples

    def _record_output(self, target: Target, mod: nn.Module, y: torch.Tensor, bn: _BatchNorm | None) -> None:
        dim = channel_dim(mod)
        y = y.float()
        shape = [1] * y.dim()
        shape[dim] = -1
        bias = getattr(mod, "bias", None)
        # what the next layer sees with the channel's weights kept (full) and masked (masked)
        if isinstance(bias, torch.Tensor):
            masked = bias.detach().float().reshape(shape).expand_as(y)
        else:
            masked = torch.zeros_like(y)
        full = y
        if bn is not None:
            full = _bn_output(bn, y)
            masked = torch.zeros_like(y) if self.bn_removed else _bn_output(bn, masked, y)
        if self.relu:
            full, masked = full.clamp(min=0), masked.clamp(min=0)
        energy = per_channel_sum((full - masked).pow(2), 1 if bn is not None else dim)  # (C,) over batch, positions
        self._add(target, energy, y.shape[0])

    def _record_input(
        self, target: Target, mod: nn.Module, x: torch.Tensor, y: torch.Tensor, bn: _BatchNorm | None
    ) -> None:
        if isinstance(mod, nn.Conv2d):
            scale = _output_scale(bn, y, mod.weight.shape[0])
            energy = input_channel_energy(mod, x, scale)
        elif isinstance(mod, nn.Linear):
            scale = _output_scale(bn, y, mod.weight.shape[0])
            col = (mod.weight.detach().float() * scale[:, None]).pow(2).sum(dim=0)  # (Cin,)
            energy = per_channel_sum(x.float().pow(2), -1) * col
        else:
            raise UnsupportedError(
                f"FeatureReconstruction(dim=1) supports Conv2d and Linear, not {type(mod).__name__} "
                f"({target.name!r}); use dim=0"
            )
        self._add(target, energy, x.shape[0])

    def _score(self, target: Target) -> torch.Tensor:
        per_channel = self._channel(target)
        if self.dim == 0:
            return broadcast_channels(per_channel, target.weight, dim=0)
        return input_channel_broadcast(per_channel, target.weight, getattr(target.module, "groups", 1))

    def __repr__(self) -> str:
        extra = (", bn_removed=True" if self.bn_removed else "") + (", relu=True" if self.relu else "")
        return f"FeatureReconstruction(dim={self.dim}, through_bn={self.through_bn}{extra})"

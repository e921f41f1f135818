"""Sparsity-inducing loss terms for any training loop: ``loss = task_loss + reg(model)``.

Each regularizer is built once over its targets and called with the model (the signature
:func:`prunekit.train.fit` takes as ``regularizer=``); in your own loop add ``reg(model)`` to the
loss. They hold no state besides their targets and strength, so they survive a resume unchanged.

* :class:`L1` / :class:`L2`: ``strength * sum |w|`` / ``strength * sum w^2`` over the targets.
* :class:`GroupLasso`: ``strength * sum_g sqrt(|g|) * ||w_g||_2`` over the groups of any granularity
  (structured sparsity learning, Wen et al. 2016): ``Channel(0)`` filters, ``Channel(1)`` input
  channels, ``Kernel()`` filter shapes, ``Block``/``Vector`` tiles; ``per_layer=True`` takes each whole
  layer as one group (depth).
* :class:`Slimming`: ``strength * sum |gamma|`` of the BatchNorms (network slimming, Liu et al. 2017).
* :class:`TowardMasks`: ``strength * sum over pruned weights of w^2``: drives the groups a target
  allocation will cut towards zero before they are cut, so the cut costs little.
* :class:`Sum`: several of them.

>>> import torch
>>> from torch import nn
>>> from prunekit.granularity import Channel
>>> from prunekit.targets import select
>>> model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False))
>>> with torch.no_grad(): _ = model[0].weight.copy_(torch.tensor([3.0, -4.0]).view(2, 1, 1, 1))
>>> float(L1(select(model), 0.5)(model).detach()), float(GroupLasso(select(model), Channel(0), 1.0)(model).detach())
(3.5, 7.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunekit.errors import ConfigError
from prunekit.granularity import Granularity
from prunekit.targets import Target

__all__ = ["L1", "L2", "GroupLasso", "Slimming", "Sum", "TowardMasks"]


def _strength(value: float) -> float:
    s = float(value)
    if not math.isfinite(s) or s < 0:
        raise ConfigError(f"regularizer strength must be a finite number >= 0, got {value!r}")
    return s


def _targets(targets: Sequence[Target]) -> list[Target]:
    out = list(targets)
    if not out or not all(isinstance(t, Target) for t in out):
        raise ConfigError("a regularizer needs a non-empty list of targets (prunekit.select(model, ...))")
    return out


class L1:
    """``strength * sum |w|`` over the targets' weights."""

    def __init__(self, targets: Sequence[Target], strength: float) -> None:
        self.targets, self.strength = _targets(targets), _strength(strength)

    def __call__(self, model: nn.Module | None = None) -> torch.Tensor:
        return self.strength * sum(t.weight.abs().sum() for t in self.targets)

    def __repr__(self) -> str:
        return f"L1({len(self.targets)} targets, strength={self.strength:g})"


class L2:
    """``strength * sum w^2`` over the targets' weights (weight decay as a loss term)."""

    def __init__(self, targets: Sequence[Target], strength: float) -> None:
        self.targets, self.strength = _targets(targets), _strength(strength)

    def __call__(self, model: nn.Module | None = None) -> torch.Tensor:
        return self.strength * sum(t.weight.pow(2).sum() for t in self.targets)

    def __repr__(self) -> str:
        return f"L2({len(self.targets)} targets, strength={self.strength:g})"


class GroupLasso:
    """``strength * sum_g sqrt(|g|) ||w_g||_2`` over the groups ``granularity`` forms in each target.

    The groups are exactly the ones pruning with the same granularity removes (a regular
    granularity: Element, Vector, Kernel, Channel, Block), so a group driven to zero here is cut at
    no cost. ``per_layer=True`` makes every target one group (learning the depth).
    """

    def __init__(self, targets: Sequence[Target], granularity: Granularity | None, strength: float,
                 per_layer: bool = False) -> None:
        self.targets, self.strength, self.per_layer = _targets(targets), _strength(strength), bool(per_layer)
        if not per_layer:
            if not isinstance(granularity, Granularity):
                raise ConfigError(f"GroupLasso needs a Granularity (e.g. Channel(0)), got {granularity!r}")
            if granularity.within_group:
                raise ConfigError(
                    f"GroupLasso groups are whole removable groups; {granularity!r} selects inside groups "
                    "(use Element, Vector, Kernel, Channel or Block)"
                )
            for t in self.targets:
                granularity.check(t)
        self.granularity = granularity

    def __call__(self, model: nn.Module | None = None) -> torch.Tensor:
        total = None
        for t in self.targets:
            w = t.weight
            if self.per_layer:
                term = math.sqrt(w.numel()) * w.pow(2).sum().clamp_min(1e-24).sqrt()
            else:
                g = self.granularity
                sq = g.group_scores(w.pow(2), "sum")  # (G,) squared norm of each group
                term = math.sqrt(g.group_size(w.shape)) * sq.clamp_min(1e-24).sqrt().sum()
            total = term if total is None else total + term
        return self.strength * total

    def __repr__(self) -> str:
        what = "per layer" if self.per_layer else repr(self.granularity)
        return f"GroupLasso({len(self.targets)} targets, {what}, strength={self.strength:g})"


class Slimming:
    """``strength * sum |gamma|`` over the model's affine BatchNorms (or those named in ``names``)."""

    def __init__(self, model: nn.Module, strength: float, names: Sequence[str] | None = None) -> None:
        self.strength = _strength(strength)
        bns = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.affine}
        if names is not None:
            missing = [n for n in names if n not in bns]
            if missing:
                raise ConfigError(f"Slimming: {missing[0]!r} is not an affine BatchNorm of the model")
            bns = {n: bns[n] for n in names}
        if not bns:
            raise ConfigError("Slimming found no affine BatchNorm in the model")
        self.names = list(bns)
        self._bns = list(bns.values())

    def __call__(self, model: nn.Module | None = None) -> torch.Tensor:
        return self.strength * sum(bn.weight.abs().sum() for bn in self._bns)

    def __repr__(self) -> str:
        return f"Slimming({len(self.names)} BatchNorms, strength={self.strength:g})"


class TowardMasks:
    """``strength * sum of w^2 over the weights the masks prune``: shrink what a planned cut removes.

    ``masks`` maps target names to bool keep-masks (e.g. what an allocation returns, or a
    :class:`~prunekit.masks.Masks` not applied yet); the kept weights are not touched.
    """

    def __init__(self, model: nn.Module, masks, strength: float) -> None:
        self.strength = _strength(strength)
        self._pairs = []
        for name, keep in masks.items():
            if "::" in name:
                continue
            w = getattr(model.get_submodule(name), "weight", None)
            if not isinstance(w, torch.Tensor) or tuple(w.shape) != tuple(keep.shape):
                raise ConfigError(f"TowardMasks: mask {name!r} does not fit the model's weight")
            self._pairs.append((w, (~keep.bool()).to(w.device)))

    def __call__(self, model: nn.Module | None = None) -> torch.Tensor:
        return self.strength * sum((w * pruned).pow(2).sum() for w, pruned in self._pairs)

    def __repr__(self) -> str:
        return f"TowardMasks({len(self._pairs)} layers, strength={self.strength:g})"


class Sum:
    """Several regularizers added: ``Sum([L1(...), Slimming(...)])``."""

    def __init__(self, terms: Sequence) -> None:
        self.terms = list(terms)
        if not self.terms or not all(callable(t) for t in self.terms):
            raise ConfigError("Sum needs a non-empty list of regularizers")

    def __call__(self, model: nn.Module | None = None) -> torch.Tensor:
        return sum(t(model) for t in self.terms)

    def __repr__(self) -> str:
        return f"Sum({self.terms!r})"

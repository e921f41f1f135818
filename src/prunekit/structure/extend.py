"""Open extension points: teach structured pruning a module type of your own.

A module type needs two things: a *rule* saying how channel indices flow through a call of it (which
of its input and output channels are the same channel, which module axes they belong to), and a
*handler* saying which parameter slices each axis owns and how to shrink the module. Register both
with :func:`register_module`; the dependency graph, the scoring, the plan replay and
:func:`~prunekit.structure.verify` then treat it like a built-in layer. :func:`channelwise` is the
rule of a per-channel module (like BatchNorm); write others with :class:`Propagation`'s ``mod``,
``val``, ``ident`` and ``pin``.

>>> import torch
>>> from torch import nn
>>> from prunekit.structure import prune_channels
>>> class Scale(nn.Module):  # one learnable factor per channel
...     def __init__(self, c):
...         super().__init__(); self.gain = nn.Parameter(torch.ones(c))
...     def forward(self, x):
...         return x * self.gain.view(1, -1, 1, 1)
>>> class ScaleHandler(Handler):
...     types = (Scale,)
...     def axes(self, m): return {"feat": m.gain.numel()}
...     def slices(self, m, axis): return [ParamSlice("gain", 0, kind="norm")]
...     def mask(self, m, axis): return MaskSpec("out", 1)
>>> register_module(Scale, channelwise("feat"), ScaleHandler())
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3), Scale(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
>>> small, plan, report = prune_channels(net, torch.zeros(1, 3, 8, 8), 0.5)   # verified
>>> small[1].gain.numel(), report.verified is not None
(4, True)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import fx, nn

from prunekit.structure.rules import Propagation, channelwise, register_rule
from prunekit.structure.surgery import Handler, MaskSpec, ParamSlice, register_handler

__all__ = ["Handler", "MaskSpec", "ParamSlice", "Propagation", "channelwise", "register_module"]


def register_module(
    types: type[nn.Module] | tuple[type[nn.Module], ...],
    rule: Callable[[Propagation, fx.Node], None],
    handler: Handler,
) -> None:
    """Register the channel-flow ``rule`` and the surgery ``handler`` of module ``types``.

    Registered types are traced as leaves (their rule sees the whole call) and take precedence over
    built-in rules and handlers, so a subclass of a built-in layer can be handled differently.
    """
    if not isinstance(handler, Handler):
        raise TypeError(f"handler must be a prunekit.structure.Handler instance, got {type(handler).__name__}")
    if not callable(rule):
        raise TypeError(f"rule must be a function (Propagation, fx.Node) -> None, got {type(rule).__name__}")
    register_rule(types, rule)
    register_handler(handler)

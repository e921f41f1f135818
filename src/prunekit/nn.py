"""Layers prunekit itself defines, each registering how structured pruning handles it.

:class:`PadShortcut` is the parameter-free option-A shortcut of the CIFAR ResNets. It plugs into
the dependency graph and the surgery through :func:`prunekit.structure.register_module`, the same
public mechanism a user's own module uses; nothing in ``prunekit.structure`` knows it.

>>> import torch
>>> PadShortcut(2, 2)(torch.ones(1, 4, 8, 8)).shape
torch.Size([1, 8, 4, 4])
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from prunekit.errors import UnsupportedError
from prunekit.structure.extend import register_module
from prunekit.structure.rules import Propagation
from prunekit.structure.surgery import Handler, MaskSpec

__all__ = ["PadShortcut"]


class PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::2, ::2]`` zero-padded with ``pad`` channels on each side.

    ``pad_before`` zero channels go before the input channels and ``pad_after`` after them, so
    input channel ``c`` lands on output channel ``pad_before + c``.
    """

    def __init__(self, pad_before: int, pad_after: int, stride: int = 2) -> None:
        super().__init__()
        self.pad_before = pad_before
        self.pad_after = pad_after
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C+pads, H/s, W/s)
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"pad_before={self.pad_before}, pad_after={self.pad_after}, stride={self.stride}"


def _pad_shortcut_rule(p: Propagation, node: fx.Node) -> None:
    """Input channel ``c`` is output channel ``pad_before + c``; the padded channels belong to no input."""
    name = str(node.target)
    m: PadShortcut = p.modules[name]
    x = node.all_input_nodes[0]
    c_in = p.shape(x)[1]
    c_out = p.shape(node)[1]
    kin, kout = p.mod(name, "in", c_in), p.mod(name, "out", c_out)
    p.ident(p.val(x, 1), kin)
    p.ident(p.val(node, 1), kout)
    p.space.link(kin, np.arange(c_in), kout, np.arange(m.pad_before, m.pad_before + c_in))


class PadShortcutHandler(Handler):
    """Option-A shortcut: input channel ``c`` is output channel ``pad_before + c``; the rest are zeros.

    Its input width is not stored on the module: axis sizes come from the graph (traced shapes).
    """

    types = (PadShortcut,)

    def axes(self, module: nn.Module) -> dict[str, int]:
        return {}

    def mask(self, module: nn.Module, axis: str) -> MaskSpec:
        return MaskSpec(axis, 1)

    def apply(self, module: nn.Module, keep: dict[str, torch.Tensor], sizes: dict[str, int]) -> nn.Module:
        pb, c_in = module.pad_before, sizes["in"]
        if sizes["out"] != pb + c_in + module.pad_after:
            raise UnsupportedError(
                f"PadShortcut {module}: planned sizes {sizes} do not match its padding for {c_in} inputs"
            )
        kept_in = keep.get("in", torch.arange(c_in))
        kept_out = keep.get("out", torch.arange(sizes["out"]))
        middle = kept_out[(kept_out >= pb) & (kept_out < pb + c_in)] - pb
        if not torch.equal(middle, kept_in):
            raise UnsupportedError(
                f"PadShortcut {module}: kept output channels {kept_out.tolist()} do not map onto kept input "
                f"channels {kept_in.tolist()} through pad_before={pb}"
            )
        module.pad_before = int((kept_out < pb).sum())
        module.pad_after = int((kept_out >= pb + c_in).sum())
        return module


register_module(PadShortcut, _pad_shortcut_rule, PadShortcutHandler())

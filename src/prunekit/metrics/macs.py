"""MACs and FLOPs counted from a real forward pass, attributed to the module that ran each op.

A :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every ATen op the forward pass
executes (so ``torch.matmul`` inside a Hugging Face attention block, ``F.scaled_dot_product_attention``
and functional calls in ``forward`` are all counted), and forward hooks keep a stack of the
modules currently running, so each op is charged to the innermost one. Costs depend on shapes
only (see :mod:`prunekit.metrics.ops`): zeroed weights still count as dense.

A module whose ops the dispatcher cannot see (a custom kernel) may define
``prunekit_cost(self, inputs, output) -> (macs, elementwise_flops)``; its own value then replaces
whatever ran inside it.

>>> import torch
>>> from torch import nn
>>> count_macs(nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.zeros(1, 3, 4, 4))
3456
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from prunekit.metrics.ops import cost
from prunekit.moduletools import eval_mode

ROOT = ""  # key under which ops run directly by the top-level module's forward are charged


@dataclass
class CostProfile:
    """Per-module MACs and elementwise FLOPs of one forward pass (keys are module names)."""

    macs: dict[str, int] = field(default_factory=dict)
    elementwise: dict[str, int] = field(default_factory=dict)

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())

    @property
    def total_flops(self) -> int:
        """2 FLOPs per MAC plus the elementwise FLOPs."""
        return 2 * self.total_macs + sum(self.elementwise.values())

    def add(self, name: str, macs: int, elementwise: int) -> None:
        if macs:
            self.macs[name] = self.macs.get(name, 0) + int(macs)
        if elementwise:
            self.elementwise[name] = self.elementwise.get(name, 0) + int(elementwise)


class _CostMode(TorchDispatchMode):
    """Charges the cost of every ATen op to the module on top of ``stack``."""

    def __init__(self, profile: CostProfile, stack: list[tuple[str, bool]]) -> None:
        super().__init__()
        self.profile = profile
        self.stack = stack  # (module name, ops suppressed because a prunekit_cost module is running)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name, suppressed = self.stack[-1] if self.stack else (ROOT, False)
        if not suppressed:
            macs, other = cost(func, args, kwargs, out)
            self.profile.add(name, macs, other)
        return out


def run_model(model: nn.Module, example_input: Any) -> Any:
    """Call ``model`` with ``example_input``: a tensor, a tuple/list of positional args, or a dict of kwargs."""
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


@contextmanager
def _module_stack(model: nn.Module, profile: CostProfile) -> Iterator[list[tuple[str, bool]]]:
    stack: list[tuple[str, bool]] = []
    handles = []

    def pre_hook(name: str, custom: bool):
        def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            suppressed = custom or (bool(stack) and stack[-1][1])
            stack.append((name, suppressed))

        return hook

    def post_hook(name: str, custom: bool):
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            stack.pop()
            outer_suppressed = bool(stack) and stack[-1][1]
            if custom and not outer_suppressed:
                macs, other = module.prunekit_cost(inputs, output)  # type: ignore[operator]
                profile.add(name, macs, other)

        return hook

    try:
        for name, module in model.named_modules():
            custom = callable(getattr(module, "prunekit_cost", None))
            handles.append(module.register_forward_pre_hook(pre_hook(name, custom)))
            handles.append(module.register_forward_hook(post_hook(name, custom), always_call=True))
        yield stack
    finally:
        for h in handles:
            h.remove()


def profile_costs(model: nn.Module, example_input: Any) -> CostProfile:
    """Run one eval-mode, no-grad forward pass and return the per-module :class:`CostProfile`.

    The model's train/eval flags are restored afterwards.

    >>> p = profile_costs(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.zeros(2, 4))
    >>> p.macs, p.elementwise
    ({'0': 24}, {'0': 6, '1': 6})
    """
    profile = CostProfile()
    with eval_mode(model), torch.no_grad(), _module_stack(model, profile) as stack:
        with _CostMode(profile, stack):
            run_model(model, example_input)
    return profile


def count_macs(model: nn.Module, example_input: Any) -> int:
    """Multiply-accumulates of one forward pass on ``example_input`` (dense: zeros count).

    >>> count_macs(nn.Linear(8, 4), torch.zeros(2, 3, 8))  # 2*3 tokens * 8 * 4
    192
    """
    return profile_costs(model, example_input).total_macs


def count_flops(model: nn.Module, example_input: Any) -> int:
    """FLOPs of one forward pass: 2 per MAC plus elementwise ops (bias, norms, activations, pooling).

    >>> count_flops(nn.Linear(8, 4, bias=False), torch.zeros(1, 8))
    64
    """
    return profile_costs(model, example_input).total_flops


def macs_by_layer(model: nn.Module, example_input: Any) -> dict[str, int]:
    """MACs per module name (``""`` = ops run directly in the top-level ``forward``), nonzero only.

    >>> macs_by_layer(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), torch.zeros(1, 4))
    {'0': 16, '2': 8}
    """
    return dict(profile_costs(model, example_input).macs)


def count_nonzero_macs(model: nn.Module, example_input: Any, profile: CostProfile | None = None) -> int:
    """MACs that multiply a nonzero weight: each conv/linear layer's MACs times its weight density.

    Exact for ``nn.Conv*d``/``nn.Linear`` (every weight entry takes part in the same number of
    MACs); other ops (attention matmuls, custom kernels) are counted dense. This is the number
    an ideal sparse kernel would execute, not what dense hardware does (see :func:`count_macs`).

    >>> lin = nn.Linear(4, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = lin.weight[0].zero_()
    >>> count_macs(lin, torch.zeros(3, 4)), count_nonzero_macs(lin, torch.zeros(3, 4))
    (24, 12)
    """
    from prunekit.metrics.counts import effective_tensors

    macs = (profile or profile_costs(model, example_input)).macs
    density: dict[str, float] = {}
    for mod_name, module, tname, t in effective_tensors(model):
        if tname == "weight" and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and t.numel():
            density[mod_name] = int(torch.count_nonzero(t)) / t.numel()
    return int(round(sum(m * density.get(name, 1.0) for name, m in macs.items())))

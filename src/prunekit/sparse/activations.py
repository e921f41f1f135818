"""Dynamic activation sparsity: the fraction of exact zeros in each layer's input.

After a ReLU many inputs of the next Linear/Conv2d are zero, and which ones changes from input
to input; "zero x anything" could be skipped too (EIE skips zero activations). This module only
measures it, per layer, over calibration batches.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> stats = activation_sparsity(model, [torch.randn(16, 4)])
>>> list(stats), stats["0"].zero_fraction
(['0', '2'], 0.0)
>>> 0.0 < stats["2"].zero_fraction < 1.0
True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.metrics.macs import eval_mode, run_model

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class ActivationSparsity:
    """Zeros seen in one layer's input over the calibration batches."""

    name: str
    zeros: int
    numel: int
    batches: int

    @property
    def zero_fraction(self) -> float:
        """zeros / numel (0.0 when nothing was seen)."""
        return self.zeros / self.numel if self.numel else 0.0


def activation_sparsity(
    model: nn.Module,
    batches: Iterable[Any],
    types: tuple[type[nn.Module], ...] = DEFAULT_TYPES,
    max_batches: int | None = None,
) -> dict[str, ActivationSparsity]:
    """Count exact zeros in the first input of every ``types`` module over ``batches``.

    ``batches`` yields model inputs (a tensor, a tuple of args) or ``(input, label)`` pairs from
    a data loader (then the first element is used). Runs in eval mode under ``no_grad``; the
    model's train/eval flags are restored and the hooks removed afterwards.
    """
    totals: dict[str, list[int]] = {name: [0, 0] for name, m in model.named_modules() if isinstance(m, types)}
    if not totals:
        raise ConfigError(f"model has no {', '.join(t.__name__ for t in types)} layers to measure")

    def hook_for(name: str):
        def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
            x = inputs[0]
            totals[name][0] += int((x == 0).sum())
            totals[name][1] += x.numel()

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in model.named_modules() if n in totals]
    seen = 0
    try:
        with torch.no_grad(), eval_mode(model):
            for batch in batches:
                if max_batches is not None and seen >= max_batches:
                    break
                run_model(model, _model_input(batch))
                seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise ConfigError("activation_sparsity got no batches; pass at least one input batch")
    return {n: ActivationSparsity(n, z, t, seen) for n, (z, t) in totals.items()}


def _model_input(batch: Any) -> Any:
    """A loader's ``(inputs, labels)`` pair -> inputs; anything else is passed as is."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor) \
            and batch[1].dtype in (torch.int64, torch.int32):
        return batch[0]
    return batch


__all__ = ["ActivationSparsity", "activation_sparsity"]

"""BatchNorm-scale criterion (Network Slimming): ``|gamma|`` of the BN that consumes a layer's output.

Which BatchNorm follows which conv is read from the model's data flow, never guessed from names:
with an example batch, forward hooks check that the BN's input *is* the conv's output tensor;
without one, the edge is read from prunekit's one ``torch.fx`` trace (:func:`prunekit.tracing.trace`,
the trace the structural dependency graph is built from, registered modules kept as leaves).

>>> import torch, torch.nn as nn
>>> from prunekit.targets import select
>>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
>>> with torch.no_grad():
...     _ = m[1].weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
>>> imp = BNScale().calibrate(m, None, 1, select(m))
>>> imp.scores(select(m)[0])[:, 0, 0, 0]
tensor([1.0000, 2.0000, 0.5000, 3.0000])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunekit.errors import ConfigError, DataError
from prunekit.importance.base import (
    call_model,
    inputs_to,
    model_device,
    preserved_modes,
    split_batch,
)
from prunekit.targets import Target, select
from prunekit.tracing import direct_consumers, trace


def out_channels(module: nn.Module) -> int:
    """Number of output channels/features of a conv or linear layer (dim 0 of its weight)."""
    return int(module.weight.shape[0])


def _pair_by_hooks(model: nn.Module, targets: Sequence[Target], example: torch.Tensor) -> dict[str, _BatchNorm | None]:
    """Run ``example`` once; a BN is paired with a target when its input tensor is that target's output."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> (target name, output kept alive)
    pairs: dict[str, _BatchNorm | None] = {t.name: None for t in targets}
    handles = []

    def on_output(name: str):
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                produced[id(out)] = (name, out)

        return hook

    def on_bn_input(bn: _BatchNorm):
        def hook(_mod: nn.Module, inp: tuple[Any, ...]) -> None:
            hit = produced.get(id(inp[0])) if inp else None
            if hit is not None and hit[1] is inp[0] and pairs[hit[0]] is None:
                pairs[hit[0]] = bn

        return hook

    try:
        for t in targets:
            handles.append(t.module.register_forward_hook(on_output(t.name)))
        for mod in model.modules():
            if isinstance(mod, _BatchNorm):
                handles.append(mod.register_forward_pre_hook(on_bn_input(mod)))
        with preserved_modes(model), torch.no_grad():
            model.eval()
            call_model(model, inputs_to(example, model_device(model)))
    finally:
        for h in handles:
            h.remove()
    return pairs


def _pair_by_fx(model: nn.Module, targets: Sequence[Target]) -> dict[str, _BatchNorm | None]:
    """Find ``target -> BatchNorm`` edges in prunekit's ``torch.fx`` trace of ``model`` (the one the
    structural dependency graph reads, :func:`prunekit.tracing.trace`)."""
    gm = trace(
        model, "find the BatchNorm after each layer",
        "pass calibration data (a loader) so the pairing is read from one forward pass instead",
    )
    modules = dict(model.named_modules())
    pairs: dict[str, _BatchNorm | None] = {t.name: None for t in targets}
    for t in targets:
        for name in direct_consumers(gm, t.name):
            if isinstance(modules.get(name), _BatchNorm):
                pairs[t.name] = modules[name]
                break
    return pairs


def following_batchnorm(
    model: nn.Module, targets: Sequence[Target], example: torch.Tensor | None = None
) -> dict[str, _BatchNorm | None]:
    """Map each target name to the BatchNorm that directly consumes its output (``None`` if none).

    With ``example`` (one input batch) the pairing comes from a forward pass with hooks; without,
    from a ``torch.fx`` trace. A pairing whose ``num_features`` differs from the layer's output
    channels raises :class:`ConfigError`.

    >>> m = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    >>> {k: type(v).__name__ for k, v in following_batchnorm(m, select(m)).items()}
    {'0': 'BatchNorm2d', '3': 'NoneType'}
    """
    pairs = _pair_by_hooks(model, targets, example) if example is not None else _pair_by_fx(model, targets)
    by_name = {t.name: t for t in targets}
    for name, bn in pairs.items():
        if bn is not None and bn.num_features != out_channels(by_name[name].module):
            raise ConfigError(
                f"layer {name!r} feeds a BatchNorm with {bn.num_features} features but has "
                f"{out_channels(by_name[name].module)} output channels; its channels cannot be scored by BN"
            )
    return pairs


def bn_channel_scale(bn: _BatchNorm, y: torch.Tensor | None = None) -> torch.Tensor:
    """Per-channel factor ``gamma / sqrt(var + eps)`` by which ``bn`` scales its input (C,).

    Uses the running variance; a BN without running statistics uses the variance of ``y``.
    """
    device = bn.running_var.device if bn.running_var is not None else (y.device if y is not None else None)
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones(bn.num_features, device=device)
    if bn.running_var is not None:
        var = bn.running_var.detach()
    elif y is not None:
        dims = [d for d in range(y.dim()) if d != 1]
        var = y.detach().var(dim=dims, unbiased=False)  # (C,)
    else:
        raise ConfigError("a BatchNorm without running statistics needs its input to compute its scale")
    return gamma / torch.sqrt(var + bn.eps)


def broadcast_channels(per_channel: torch.Tensor, weight: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Broadcast a (weight.shape[dim],) score vector over ``weight``'s elements.

    >>> broadcast_channels(torch.tensor([1.0, 2.0]), torch.zeros(2, 3)).tolist()
    [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    """
    shape = [1] * weight.dim()
    shape[dim] = weight.shape[dim]
    return per_channel.to(weight.device, weight.dtype).reshape(shape).expand_as(weight).clone()


class BNScale:
    """``|gamma|`` of the BatchNorm after each layer, broadcast over the layer's output channels.

    The model must be seen once: ``calibrate(model, loader_or_None, num_batches, targets)`` finds
    the BN after each target (one batch of ``loader`` if given, else a ``torch.fx`` trace). Scoring a
    layer with no BatchNorm after it raises :class:`ConfigError` naming the layer.
    """

    needs_calibration = True  # it must see the model (data optional)

    def __init__(self) -> None:
        self._bn: dict[str, _BatchNorm | None] | None = None

    def calibrate(
        self,
        model: nn.Module,
        loader: Iterable[Any] | None = None,
        num_batches: int = 1,
        targets: Sequence[Target] | None = None,
    ) -> BNScale:
        """Pair every target with its BatchNorm (data optional: one batch of ``loader`` if given)."""
        targets = list(targets) if targets is not None else select(model)
        example = None
        if loader is not None:
            for batch in loader:
                example, _ = split_batch(batch)
                break
            if example is None:
                raise DataError("BNScale.calibrate: the loader yielded no batches")
        self._bn = following_batchnorm(model, targets, example)
        return self

    def scores(self, target: Target) -> torch.Tensor:
        if self._bn is None:
            raise ConfigError(
                "BNScale needs the model to find each layer's BatchNorm: call calibrate(model, loader, "
                "num_batches) (loader may be None)"
            )
        if target.name not in self._bn:
            raise ConfigError(f"BNScale was not calibrated for layer {target.name!r}: pass it in targets=")
        bn = self._bn[target.name]
        if bn is None:
            raise ConfigError(
                f"BNScale: layer {target.name!r} has no BatchNorm consuming its output; exclude it "
                "from the targets or use another criterion for it"
            )
        if bn.weight is None:
            raise ConfigError(f"BNScale: the BatchNorm after {target.name!r} has no affine weight (affine=False)")
        return broadcast_channels(bn.weight.detach().abs(), target.weight)

    def __repr__(self) -> str:
        return "BNScale()"

"""One call from scores to enforced masks: :func:`prune`.

>>> import torch, torch.nn as nn
>>> from prunekit.allocation import Global, Uniform
>>> from prunekit.granularity import NM, Element
>>> from prunekit.importance import Magnitude
>>> from prunekit.targets import select
>>> torch.manual_seed(0) and None
>>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
>>> masks = prune(model, select(model), Magnitude(p=1), Element(), Global(0.75))
>>> round(masks.sparsity(), 4)
0.75
>>> masks.remove()
>>> masks = prune(model, select(model), Magnitude(), NM(2, 4), Uniform(None))
>>> int(model[0].weight.reshape(-1, 4).ne(0).sum(1).max())
2
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunekit.allocation.basic import Allocation
from prunekit.errors import ConfigError
from prunekit.granularity import Channel, Granularity
from prunekit.importance.base import Importance, checked_scores
from prunekit.masks import Masks
from prunekit.targets import Target, select


def compute_scores(targets: Sequence[Target], importance: Importance) -> dict[str, torch.Tensor]:
    """``importance.scores`` of every target, checked for shape, finiteness and sign."""
    return {t.name: checked_scores(importance, t) for t in targets}


def check_components(importance: Any, granularity: Any, allocation: Any) -> None:
    """Raise :class:`ConfigError` naming the argument when a component has the wrong type.

    >>> from prunekit.granularity import Element
    >>> check_components("magnitude", Element(), None)
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: importance must be an Importance object such as pk.Magnitude(p=1), got str 'magnitude'...
    """
    wanted = (
        ("importance", importance, Importance, "pk.Magnitude(p=1)"),
        ("granularity", granularity, Granularity, "pk.Element() or pk.NM(2, 4)"),
        ("allocation", allocation, Allocation, "pk.Global(0.9) or pk.Uniform(0.5)"),
    )
    for name, value, cls, example in wanted:
        if not isinstance(value, cls):
            hint = ""
            if isinstance(value, str):
                hint = "; the command-line names are built with prunekit.registry.build"
            elif isinstance(value, (int, float)) and name == "allocation":
                hint = f"; for a sparsity of {value} use pk.Uniform({value}) or pk.Global({value})"
            raise ConfigError(
                f"{name} must be {'an' if name[0] in 'aei' else 'a'} {cls.__name__} object such as {example}, "
                f"got {type(value).__name__} {value!r}{hint}"
            )


def prune(
    model: nn.Module,
    targets: Sequence[Target] | None,
    importance: Importance,
    granularity: Granularity,
    allocation: Allocation,
    enforce: bool = True,
    couple_norms: bool = True,
) -> Masks:
    """Score ``targets`` (default: every Conv2d/Linear), allocate, and apply the masks to ``model``.

    With ``enforce=True`` (default) the pruned weights stay zero through any training loop until
    ``masks.remove()``; with ``enforce=False`` they are zeroed once. Data-driven importances must
    be calibrated first (``importance.calibrate(model, loader, num_batches, targets)``). Pruning an
    already-pruned model again: call the old ``masks.remove()`` first; zero weights score lowest
    under magnitude criteria, so they stay pruned.

    With output-channel granularity (``Channel(0)``) and ``couple_norms`` (default), the gamma and
    beta of the BatchNorm that consumes a pruned filter are masked too, so the channel outputs
    exactly zero, as after physical removal; otherwise the BN would keep emitting the constant
    ``beta - gamma * mean / std`` (measured on ResNet-20 at 30 % channels: L1 top-1 17.6 % with
    filters masked only vs 43.8 % with the BN channel zeroed; see benchmarks/results/pruning_core.md).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"prune() needs an nn.Module as model, got {type(model).__name__}")
    check_components(importance, granularity, allocation)
    targets = list(targets) if targets is not None else select(model)
    if not targets:
        raise ConfigError("prune() got no targets: select(model, ...) returned nothing to prune")
    for t in targets:
        granularity.check(t)
    scores = compute_scores(targets, importance)
    mask_dict = allocation.allocate(targets, scores, granularity)
    masks = Masks(mask_dict, {t.name: t.param_name for t in targets if t.name in mask_dict})
    if couple_norms and isinstance(granularity, Channel) and granularity.dim == 0:
        couple_batchnorms(model, [t for t in targets if t.name in mask_dict], masks)
    return masks.apply(model, enforce=enforce)


def couple_batchnorms(model: nn.Module, targets: Sequence[Target], masks: Masks) -> Masks:
    """Add masks on the gamma/beta of each BatchNorm that directly follows a channel-masked target.

    >>> import torch.nn as nn
    >>> from prunekit.allocation import Uniform
    >>> from prunekit.granularity import Channel
    >>> from prunekit.importance import Magnitude
    >>> m = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
    >>> masks = prune(m, select(m, types=(nn.Conv2d,)), Magnitude(), Channel(0), Uniform(0.5))
    >>> sorted(masks), int((m[1].weight == 0).sum()), masks.sparsity()
    (['0', '1::bias', '1::weight'], 2, 0.5)
    """
    import warnings

    from prunekit.importance.bn import following_batchnorm

    names = {id(mod): n for n, mod in model.named_modules()}
    try:
        pairs = following_batchnorm(model, targets)
    except Exception as exc:  # e.g. a model torch.fx cannot trace
        warnings.warn(
            f"channel masks: could not find the BatchNorms after the pruned layers ({exc}); their "
            "gamma/beta are not masked, so pruned channels output the BN's constant offset. "
            "Pass couple_norms=False to silence this, or zero those BN channels yourself.",
            stacklevel=2,
        )
        return masks
    for name, bn in pairs.items():
        if bn is None or not bn.affine:
            continue
        m = masks[name]
        keep = m.reshape(m.shape[0], -1).any(dim=1)  # (Cout,) channel kept
        masks.couple(names[id(bn)], "weight", keep)
        masks.couple(names[id(bn)], "bias", keep)
    return masks

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

import torch
from torch import nn

from prunekit.allocation.basic import Allocation
from prunekit.errors import ConfigError
from prunekit.granularity import Granularity
from prunekit.importance.base import Importance
from prunekit.masks import Masks
from prunekit.targets import Target, select


def compute_scores(targets: Sequence[Target], importance: Importance) -> dict[str, torch.Tensor]:
    """``importance.scores`` of every target, checked for shape, finiteness and sign."""
    out: dict[str, torch.Tensor] = {}
    for t in targets:
        s = importance.scores(t)
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != tuple(t.weight.shape):
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ConfigError(
                f"{importance!r} returned scores of shape {got} for layer {t.name!r}, "
                f"expected the weight's shape {tuple(t.weight.shape)}"
            )
        s = s.detach().float()
        if not torch.isfinite(s).all() or (s < 0).any():
            raise ConfigError(f"{importance!r} returned negative or non-finite scores for layer {t.name!r}")
        out[t.name] = s
    return out


def prune(
    model: nn.Module,
    targets: Sequence[Target] | None,
    importance: Importance,
    granularity: Granularity,
    allocation: Allocation,
    enforce: bool = True,
) -> Masks:
    """Score ``targets`` (default: every Conv2d/Linear), allocate, and apply the masks to ``model``.

    With ``enforce=True`` (default) the pruned weights stay zero through any training loop until
    ``masks.remove()``; with ``enforce=False`` they are zeroed once. Data-driven importances must
    be calibrated first (``importance.calibrate(model, loader, num_batches, targets)``). Pruning an
    already-pruned model again: call the old ``masks.remove()`` first; zero weights score lowest
    under magnitude criteria, so they stay pruned.
    """
    targets = list(targets) if targets is not None else select(model)
    if not targets:
        raise ConfigError("prune() got no targets: select(model, ...) returned nothing to prune")
    for t in targets:
        granularity.check(t)
    scores = compute_scores(targets, importance)
    mask_dict = allocation.allocate(targets, scores, granularity)
    masks = Masks(mask_dict, {t.name: t.param_name for t in targets if t.name in mask_dict})
    return masks.apply(model, enforce=enforce)

"""Iterative channel pruning: prune -> fine-tune rounds, each round a physically smaller model.

Each round removes the same fraction of what is left (of channels, MACs or parameters), so after
``rounds`` rounds ``final`` of the original is gone; after each cut the caller's ``finetune``
recovers the small model. The rounds' plans are one plan history (:meth:`PruningPlan.then`), so the
result is saved and rebuilt from the original architecture like any channel-pruned model.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3),
...                     nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
>>> small, plan, reports = prune_channels_iteratively(net, torch.zeros(1, 3, 12, 12), 0.75, rounds=2,
...                                                   finetune=lambda model, k: None)
>>> len(plan.steps), small[0].out_channels + small[3].out_channels   # 8 of the 32 channels left
(2, 8)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from prunekit.allocation.basic import Allocation, Global
from prunekit.errors import ConfigError
from prunekit.structure.api import PruneReport, prune_channels
from prunekit.structure.plan import PruningPlan

__all__ = ["prune_channels_iteratively"]


def prune_channels_iteratively(
    model: nn.Module,
    example_input: Any,
    final: float,
    rounds: int,
    finetune: Callable[[nn.Module, int], None],
    importance: Any = None,
    allocation: Callable[[float], Allocation] | Sequence[Allocation] = Global,
    target: str = "channels",
    exclude: Sequence[str] = (),
) -> tuple[nn.Module, PruningPlan, list[PruneReport]]:
    """``rounds`` rounds of ``prune_channels`` + ``finetune(small_model, round)``; returns the final model,
    the plan of all rounds (replayable on the original architecture) and each round's report.

    ``final``: the fraction of ``target`` (channels, MACs, params) of the *original* model to remove;
    each round removes ``1 - (1 - final) ** (1 / rounds)`` of what the previous round left
    (``allocation(that fraction)`` is each round's allocation). ``allocation`` may instead be one
    allocation per round, e.g. ``[PerLayer(r) for r in ratio_rounds(...)]`` to reach a searched
    per-group allocation in rounds (``final`` is then only checked).
    """
    if not 0.0 < float(final) < 1.0:
        raise ConfigError(f"final (fraction to remove in the end) must be in (0, 1), got {final}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an int >= 1, got {rounds!r}")
    per_round = 1.0 - (1.0 - float(final)) ** (1.0 / rounds)
    if isinstance(allocation, Sequence):
        if len(allocation) != rounds:
            raise ConfigError(f"allocation: {len(allocation)} allocations given for {rounds} rounds; give one per round")
        per_round_allocations = list(allocation)
    else:
        per_round_allocations = [allocation(per_round) for _ in range(rounds)]
    current, plan, reports = model, None, []
    for k in range(1, rounds + 1):
        small, step, report = prune_channels(current, example_input, per_round_allocations[k - 1], importance,
                                             target=target, exclude=exclude)
        plan = step if plan is None else plan.then(step)
        reports.append(report)
        finetune(small, k)
        current = small
    return current, plan, reports

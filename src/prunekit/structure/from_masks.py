"""Channel masks -> structured plan: physically remove the channels a mask pruned entirely.

:func:`plan_from_masks` turns keep-masks (e.g. the :class:`~prunekit.masks.Masks` returned by
``prune(model, targets, importance, Channel(0), allocation)``) into a :class:`PruningPlan` over the
model's :class:`~prunekit.structure.graph.DependencyGraph`. A coupled unit (one channel of a group)
is removed iff it is prunable and *every* producing slice of it (the output rows of each conv /
linear layer writing that channel, an attention head's q/k/v rows) lies in a masked weight whose
mask is all ``False`` there. A unit with any producer that has no mask, or whose mask keeps any
element of that producer's slice, stays; so do pinned units. In a residual group this means a
channel goes only when every layer adding into it was masked on that channel.

The small model computes what the masked model computes (eval mode) when each removed channel is
exactly zero where it is consumed: its producers' weights are masked (as required above) and the
biases / BatchNorm affine terms on the way are zero too (``prune(..., Channel(0))`` with
``couple_norms=True`` masks the following BatchNorm's gamma and beta; a conv/linear *bias* on a
removed channel is not masked by ``prune`` and would be dropped).

>>> import torch, torch.nn as nn
>>> from prunekit.allocation import Uniform
>>> from prunekit.granularity import Channel
>>> from prunekit.importance import Magnitude
>>> from prunekit.pruning import prune
>>> from prunekit.targets import select
>>> torch.manual_seed(0) and None
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
...                     nn.Conv2d(8, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
>>> masks = prune(net, select(net, include="0"), Magnitude(), Channel(0), Uniform(0.5))
>>> small, plan = masks_to_small_model(net, masks, torch.zeros(1, 3, 8, 8))
>>> small[0].out_channels, small[1].num_features, small[3].in_channels
(4, 4, 4)
>>> x = torch.randn(2, 3, 8, 8)
>>> torch.allclose(small(x), net(x), atol=1e-6)
True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError, close_matches
from prunekit.masks import clean_copy
from prunekit.structure.api import make_plan
from prunekit.structure.graph import DependencyGraph
from prunekit.structure.groups import Unit
from prunekit.structure.plan import PruningPlan
from prunekit.structure.ranking import OUT_AXES
from prunekit.structure.surgery import get_tensor, handler_for

COUPLED_SEP = "::"  # keys "<module>::<param>" are coupled (e.g. BatchNorm) masks: not channel decisions


def _mask_table(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
    """``{(module path, parameter name): bool keep-mask}`` for the non-coupled masks, shapes checked."""
    param_names: Mapping[str, str] = getattr(masks, "param_names", {})
    names = [n for n, _ in model.named_modules()]
    out: dict[tuple[str, str], torch.Tensor] = {}
    for key in masks:
        if COUPLED_SEP in key:
            continue
        param = param_names.get(key, "weight")
        try:
            module = model.get_submodule(key)
        except AttributeError:
            raise ConfigError(
                f"mask names layer {key!r}, which the model lacks; {close_matches(key, names)}"
            ) from None
        tensor = get_tensor(module, param)
        mask = masks[key]
        if tensor is None or tuple(tensor.shape) != tuple(mask.shape):
            have = "no such tensor" if tensor is None else f"shape {tuple(tensor.shape)}"
            raise ConfigError(
                f"mask of layer {key!r} has shape {tuple(mask.shape)} but its {param} has {have}; "
                "the masks belong to another model"
            )
        out[(key, param)] = mask.detach().to(torch.bool).cpu()
    return out


def _fully_masked(graph: DependencyGraph, unit: Unit, table: dict[tuple[str, str], torch.Tensor]) -> bool:
    """True when the unit has producing weight slices and every one is masked out entirely."""
    producers = 0
    for ref, idx in unit.slots.items():
        if ref.axis not in OUT_AXES:
            continue
        module = graph.module(ref.module)
        for sl in handler_for(module).slices(module, ref.axis):
            if sl.kind != "weight" or get_tensor(module, sl.param) is None:
                continue
            owner, _, leaf = sl.param.rpartition(".")
            mask = table.get((f"{ref.module}.{owner}" if owner else ref.module, leaf))
            if mask is None:
                return False
            producers += 1
            rows = sl.indices(torch.tensor(idx, dtype=torch.long))
            if bool(mask.index_select(sl.dim, rows).any()):
                return False
    return producers > 0


def plan_from_masks(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    example_input: Any,
    graph: DependencyGraph | None = None,
) -> PruningPlan:
    """The one-step :class:`PruningPlan` removing the channels that ``masks`` pruned entirely.

    ``masks``: module name -> bool keep-mask shaped like that module's weight (a
    :class:`~prunekit.masks.Masks`; its ``param_names`` are honoured, coupled ``"<module>::<param>"``
    keys are ignored). ``graph`` defaults to ``DependencyGraph.build(model, example_input)``. See the
    module docstring for which units go; ``plan.meta`` records the counts.

    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> keep = torch.ones(6, 4, dtype=torch.bool)
    >>> keep[[1, 4]] = False                        # rows 1 and 4 of the first layer: pruned
    >>> keep[2, 0] = False                          # one element of row 2: that neuron stays
    >>> plan = plan_from_masks(net, {"0": keep}, torch.zeros(1, 4))
    >>> plan.modules["0"].remove, plan.modules["2"].remove, plan.meta["units_removed"]
    ({'out': [1, 4]}, {'in': [1, 4]}, 2)
    """
    table = _mask_table(model, masks)
    graph = graph if graph is not None else DependencyGraph.build(model, example_input)
    graph.check_handlers()
    units = [u.index for u in graph.units if u.prunable and _fully_masked(graph, u, table)]
    meta = {
        "method": "masks",
        "masked_layers": len(table),
        "units_removed": len(units),
        "units_prunable": sum(u.prunable for u in graph.units),
    }
    return make_plan(graph, units, meta)


def masks_to_small_model(
    model: nn.Module, masks: Mapping[str, torch.Tensor], example_input: Any
) -> tuple[nn.Module, PruningPlan]:
    """``(small, plan)``: :func:`plan_from_masks` applied to a copy of ``model`` (which should have the
    masks' zeros applied, e.g. by ``prune``); ``model`` itself is not modified.

    The copy loses prunekit's mask-enforcement hooks: the small model is a plain dense model.
    """
    small = clean_copy(model)
    graph = DependencyGraph.build(small, example_input)
    plan = plan_from_masks(small, masks, example_input, graph)
    return plan.apply(small), plan

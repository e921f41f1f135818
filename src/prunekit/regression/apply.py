"""Apply a regression channel selection through ``prunekit.structure`` (dependency graph + plan).

Removing input channel ``i`` of a conv removes the coupled unit of the dependency graph (the
producer's output channel, its BN entry, ...). :func:`apply_selection` turns the dropped input
channels into graph units, builds a :class:`~prunekit.structure.PruningPlan`, applies it, and then
writes the reconstructed weight into the consumer (the plan API carries indices only).

>>> import torch
>>> from torch import nn
>>> from prunekit.regression import collect_samples, regression_prune_layer
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
>>> X, Y = collect_samples(net, "3", [torch.randn(4, 3, 10, 10)], positions_per_image=30)
>>> sel = regression_prune_layer(net[3], X, Y, n_keep=5)
>>> small, plan = apply_selection(net, torch.zeros(1, 3, 10, 10), "3", sel)
>>> small[0].out_channels, small[1].num_features, tuple(small[3].weight.shape)
(5, 5, (4, 5, 3, 3))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError, UnsupportedError
from prunekit.masks import clean_copy
from prunekit.regression.channel_selection import LayerSelection
from prunekit.structure import DependencyGraph, PruningPlan, make_plan
from prunekit.structure.groups import AxisRef

__all__ = ["apply_selection", "units_for_input_channels"]


def units_for_input_channels(graph: DependencyGraph, consumer: str, dropped: set[int]) -> list[int]:
    """Graph units that own the ``dropped`` input channels of ``consumer``.

    Raises :class:`UnsupportedError` when such a unit is pinned or also removes input channels of
    ``consumer`` that are meant to stay (e.g. a channel tied to others by a residual addition).
    """
    ref = AxisRef(consumer, "in")
    if ref not in graph.axes:
        raise ConfigError(f"{consumer!r} has no prunable input axis in the dependency graph")
    chosen: list[int] = []
    for unit in graph.units:
        idx = set(unit.slots.get(ref, ()))
        if not idx & dropped:
            continue
        if not unit.prunable:
            raise UnsupportedError(f"input channels {sorted(idx)} of {consumer!r} are pinned: {unit.pinned}")
        if not idx <= dropped:
            raise UnsupportedError(
                f"input channels {sorted(idx)} of {consumer!r} can only be removed together; "
                "select whole coupled groups"
            )
        chosen.append(unit.index)
    return chosen


@torch.no_grad()
def apply_selection(
    model: nn.Module,
    example_input: Any,
    consumer: str,
    selection: LayerSelection,
    graph: DependencyGraph | None = None,
) -> tuple[nn.Module, PruningPlan]:
    """Return a pruned copy of ``model`` keeping ``selection.kept`` input channels of ``consumer``
    (and the matching producer channels), with ``selection.weight`` as the consumer's weight.

    Other layers that read the same channels (if the graph couples any) lose them too, without
    reconstruction; inside a ResNet basic block or a VGG chain there are none.
    """
    graph = graph if graph is not None else DependencyGraph.build(model, example_input)
    c_in = graph.axes.get(AxisRef(consumer, "in"))
    if c_in is None:
        raise ConfigError(f"{consumer!r} has no prunable input axis in the dependency graph")
    kept = {int(i) for i in selection.kept}
    dropped = set(range(c_in)) - kept
    units = units_for_input_channels(graph, consumer, dropped)
    plan = make_plan(graph, units, {"method": "regression", "consumer": consumer})
    small = plan.apply(clean_copy(model))
    layer = small.get_submodule(consumer)
    if tuple(layer.weight.shape) != tuple(selection.weight.shape):
        raise ConfigError(
            f"reconstructed weight {tuple(selection.weight.shape)} does not fit {consumer!r} after surgery "
            f"{tuple(layer.weight.shape)}"
        )
    layer.weight.copy_(selection.weight.to(layer.weight))
    return small, plan

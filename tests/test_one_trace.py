"""One trace, one BatchNorm pairing: the mask path pairs each layer with the BN the dependency graph
couples to its output channels, for every model of the zoo and for a user's registered module."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunekit.allocation import Uniform
from prunekit.errors import UnsupportedError
from prunekit.granularity import Channel
from prunekit.importance import BNScale, Magnitude, following_batchnorm
from prunekit.models import available, create
from prunekit.pruning import prune
from prunekit.structure.extend import Handler, MaskSpec, ParamSlice, channelwise, register_module
from prunekit.structure.graph import DependencyGraph
from prunekit.structure.groups import AxisRef
from prunekit.targets import select
from prunekit.tracing import leaf_types, trace

INPUT_SHAPES = {"digits_cnn": (1, 8, 8), "lenet300_100": (1, 28, 28), "lenet5": (1, 28, 28)}


def _example(name: str) -> torch.Tensor:
    return torch.randn(2, *INPUT_SHAPES.get(name, (3, 32, 32)), generator=torch.Generator().manual_seed(0))


def _bn_axis(graph: DependencyGraph, bn_name: str) -> AxisRef:
    axes = [a for a in graph.axes if a.module == bn_name]
    assert len(axes) == 1, (bn_name, axes)
    return axes[0]


@pytest.mark.parametrize("name", available())
def test_mask_pairing_is_the_graphs_direct_edge(name: str) -> None:
    """Trace and forward-hook pairings agree, and every paired BN channel is in the graph unit of the
    layer's output channel with the same index (the graph couples it; the mask path takes only the
    BN directly after the layer, since masking one layer's channel does not remove the unit)."""
    model = create(name).eval()
    targets = select(model)
    traced = following_batchnorm(model, targets)
    hooked = following_batchnorm(model, targets, _example(name))
    names = {id(m): n for n, m in model.named_modules()}
    as_names = {k: names[id(v)] if v is not None else None for k, v in traced.items()}
    assert as_names == {k: names[id(v)] if v is not None else None for k, v in hooked.items()}
    graph = DependencyGraph.build(model, _example(name)[:1])
    n_bn = sum(isinstance(m, _BatchNorm) for m in model.modules())
    assert sum(v is not None for v in as_names.values()) == n_bn  # every BN of the zoo follows a layer
    for layer, bn in as_names.items():
        if bn is None:
            continue
        bn_axis = _bn_axis(graph, bn)
        for unit in graph.units_on(layer, "out"):
            out_idx = unit.slots[AxisRef(layer, "out")]
            assert unit.slots.get(bn_axis) == out_idx, (layer, bn, unit.index)


class _Gate(nn.Module):
    """A per-channel gain with data-dependent control flow: fx cannot trace *through* it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 1e9):  # data-dependent: a plain symbolic trace fails here
            return x
        return x * self.gain.view(1, -1, 1, 1)


class _GateHandler(Handler):
    types = (_Gate,)

    def axes(self, m):
        return {"feat": m.gain.numel()}

    def slices(self, m, axis):
        return [ParamSlice("gain", 0, kind="norm")]

    def mask(self, m, axis):
        return MaskSpec("out", 1)


def _gated_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), _Gate(8), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3),
                         nn.BatchNorm2d(4))


def test_a_registered_module_is_one_call_for_the_graph_and_the_mask_pairing() -> None:
    net = _gated_net()
    with pytest.raises(UnsupportedError, match=r"cannot trace Sequential with torch.fx to find the BatchNorm"):
        following_batchnorm(net, select(net))  # before registration: the trace enters the gate
    register_module(_Gate, channelwise("feat"), _GateHandler())
    assert _Gate in leaf_types()
    assert [n.target for n in trace(net, "test").graph.nodes if n.op == "call_module"] == ["0", "1", "2", "3", "4", "5"]
    pairs = following_batchnorm(net, select(net))
    assert pairs["0"] is None and pairs["4"] is net[5]  # conv 0 feeds the gate, not a BN
    graph = DependencyGraph.build(net, torch.zeros(1, 3, 10, 10))
    unit = graph.units_on("4", "out")[0]
    assert AxisRef("5", "feat") in unit.slots
    # BN scale scores and channel masks with their BN coupling work without data
    scores = BNScale().calibrate(net, None, 1, [t for t in select(net) if t.name == "4"]).scores(select(net)[-1])
    assert torch.equal(scores[:, 0, 0, 0], net[5].weight.detach().abs())
    masks = prune(net, [t for t in select(net) if t.name == "4"], Magnitude(), Channel(0), Uniform(0.5))
    assert sorted(masks) == ["4", "5::bias", "5::weight"]
    assert int((net[5].weight == 0).sum()) == 2
    masks.remove()

"""Allocations: exact sparsity, equality with torch.nn.utils.prune, LAMP, min_keep, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

from prunekit.allocation import Global, PerLayer, Uniform, WithOverrides, lamp
from prunekit.errors import ConfigError
from prunekit.granularity import NM, Block, Channel, Element, Kernel, LoadBalanced, Pattern, Vector
from prunekit.importance import Magnitude
from prunekit.targets import select


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 8)
    )


def _scores(targets, p: float = 1):
    return {t.name: Magnitude(p).scores(t) for t in targets}


GRANS = [Element(), Vector(0), Vector(1), Channel(0), Channel(1), Block(2, 4)]


@pytest.mark.parametrize("g", GRANS, ids=repr)
@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.9])
def test_uniform_is_exact_per_layer(g, s) -> None:
    ts = select(_net())
    masks = Uniform(s).allocate(ts, _scores(ts), g)
    for t in ts:
        m = masks[t.name]
        assert m.shape == t.weight.shape and m.dtype == torch.bool
        sparsity = 1 - m.float().mean().item()
        assert abs(sparsity - s) * m.numel() <= g.group_size(t.weight.shape) / 2 + 1e-6


@pytest.mark.parametrize("g", GRANS, ids=repr)
@pytest.mark.parametrize("s", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("normalize", [None, "lamp", "max", "l2"])
def test_global_is_exact_overall(g, s, normalize) -> None:
    ts = select(_net())
    masks = Global(s, normalize=normalize).allocate(ts, _scores(ts), g)
    total = sum(m.numel() for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    biggest_group = max(g.group_size(t.weight.shape) for t in ts)
    assert abs(pruned - s * total) <= biggest_group


def test_element_l1_equals_torch_prune() -> None:
    ts = select(_net())
    ref = copy.deepcopy(_net())
    for s in (0.3, 0.77):
        ours = Uniform(s).allocate(ts, _scores(ts), Element())
        for t in ts:
            mod = copy.deepcopy(t.module)
            tprune.l1_unstructured(mod, "weight", amount=s)
            assert torch.equal(ours[t.name], mod.weight_mask.bool()), t.name
        ours = Global(s).allocate(ts, _scores(ts), Element())
        ref = copy.deepcopy(_net())
        params = [(m, "weight") for m in ref if isinstance(m, (nn.Conv2d, nn.Linear))]
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=s)
        for t, (mod, _) in zip(ts, params):
            assert torch.equal(ours[t.name], mod.weight_mask.bool()), t.name


def test_per_layer_ratios_and_unknown_name() -> None:
    ts = select(_net())
    masks = PerLayer({"0": 0.5, "5": 0.25}).allocate(ts, _scores(ts), Element())
    assert set(masks) == {"0", "5"}
    assert int((~masks["0"]).sum()) == 144 and int((~masks["5"]).sum()) == 32
    masks = PerLayer({"0": 0.5}, default=0.1).allocate(ts, _scores(ts), Element())
    assert int((~masks["2"]).sum()) == round(0.1 * 8 * 16 * 9)
    with pytest.raises(ConfigError, match=r"PerLayer names layer '6', .*known names include: '0', '2', '5'"):
        PerLayer({"6": 0.5}).allocate(ts, _scores(ts), Element())
    named = select(nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))))
    with pytest.raises(ConfigError, match=r"layer '0.2'.*did you mean: .*'0.0'"):
        PerLayer({"0.2": 0.5}).allocate(named, _scores(named), Element())


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_unit_interval(bad) -> None:
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\)"):
        Uniform(bad)
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\)"):
        Global(bad)
    with pytest.raises(ConfigError, match=r"sparsity of layer 'fc' must be in \[0, 1\)"):
        PerLayer({"fc": bad})


def test_global_errors() -> None:
    with pytest.raises(ConfigError, match="min_keep"):
        Global(0.5, min_keep=2.0)
    with pytest.raises(ConfigError, match="unknown normalize='lamb'"):
        Global(0.5, normalize="lamb")


def test_min_keep_stops_a_layer_being_emptied() -> None:
    ts = select(_net())
    with torch.no_grad():
        ts[-1].weight.mul_(1e-4)  # tiny last layer: a raw global ranking removes all of it
    emptied = Global(0.5).allocate(ts, _scores(ts), Element())
    assert int(emptied["5"].sum()) == 0
    kept = Global(0.5, min_keep=0.1).allocate(ts, _scores(ts), Element())
    assert int(kept["5"].sum()) == 13  # ceil(0.1 * 128)
    total = sum(m.numel() for m in kept.values())
    assert abs(sum(int((~m).sum()) for m in kept.values()) - 0.5 * total) <= 1


def test_lamp_matches_the_paper_definition() -> None:
    w = torch.tensor([0.5, -2.0, 1.0, 0.1])
    sq = w.pow(2)
    ref = torch.stack([sq[i] / sq[w.abs() >= w[i].abs()].sum() for i in range(4)])
    assert torch.allclose(lamp(sq), ref)
    assert lamp(sq).argmax() == 1 and lamp(sq)[1] == 1.0
    # LAMP keeps the largest weight of each layer at score 1, so it is never pruned before others
    ts = select(_net())
    masks = Global(0.95, normalize="lamp").allocate(ts, _scores(ts, p=2), Element())
    for t in ts:
        assert bool(masks[t.name].reshape(-1)[t.weight.abs().argmax()])


def test_global_with_within_group_structures() -> None:
    ts = select(_net(), types=(nn.Conv2d,))
    nm = Global(0.5).allocate(ts, _scores(ts), NM(2, 4))
    for t in ts:
        assert int(nm[t.name].movedim(1, -1).reshape(-1, 4).sum(1).max()) == 2
    with pytest.raises(ConfigError, match="fixes sparsity at 0.5"):
        Global(0.9).allocate(ts, _scores(ts), NM(2, 4))
    pat = Global(0.7).allocate(ts, _scores(ts), Pattern())
    for t in ts:
        assert set(pat[t.name].reshape(-1, 9).sum(1).tolist()) <= {0, 4}
    lb = Global(0.6).allocate(ts, _scores(ts), LoadBalanced(4))
    for t in ts:
        m2d = lb[t.name].reshape(t.weight.shape[0], -1)
        assert len({int(m2d[pe::4].sum()) for pe in range(4)}) == 1


def test_uniform_none_uses_the_nm_ratio() -> None:
    ts = select(_net(), types=(nn.Conv2d,))
    masks = Uniform(None).allocate(ts, _scores(ts), NM(2, 4))
    assert all(abs(m.double().mean().item() - 0.5) < 1e-9 for m in masks.values())
    masks = Uniform(None).allocate(ts, _scores(ts), Pattern())
    assert all(abs(m.double().mean().item() - 4 / 9) < 1e-9 for m in masks.values())
    with pytest.raises(ConfigError, match="fixed-ratio"):
        Uniform(None).allocate(ts, _scores(ts), Kernel())


def test_with_overrides_pins_layers_and_ranks_the_rest() -> None:
    ts = select(_net())
    masks = WithOverrides(Global(0.6), {"5": 0.0}).allocate(ts, _scores(ts), Element())
    assert bool(masks["5"].all())
    rest = [masks["0"], masks["2"]]
    total = sum(m.numel() for m in rest)
    assert sum(int((~m).sum()) for m in rest) == round(0.6 * total)
    with pytest.raises(ConfigError, match="PerLayer names layer 'fc'"):
        WithOverrides(Uniform(0.5), {"fc": 0.1}).allocate(ts, _scores(ts), Element())

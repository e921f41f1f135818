"""Channel masks also mask the BatchNorm after a pruned filter, so the channel outputs exactly 0."""

import pytest
import torch
from torch import nn

from prunekit.allocation import Uniform
from prunekit.granularity import Channel, Element
from prunekit.importance import Magnitude
from prunekit.masks import Masks
from prunekit.pruning import prune
from prunekit.targets import select


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():  # a BN whose pruned channels would otherwise emit a nonzero constant
        net[1].bias.uniform_(0.5, 1.0)
        net[1].running_mean.uniform_(-1, 1)
    return net


def _bn_out(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net[1](net[0](x))  # (B, 8, H, W)


def test_pruned_channels_output_zero_and_stay_zero_through_training() -> None:
    net = _net()
    masks = prune(net, select(net, include=["0"]), Magnitude(), Channel(0), Uniform(0.5))
    assert masks.sparsity() == pytest.approx(0.5)  # targets only; the coupled BN masks do not count
    assert masks.target_names == ["0"]
    pruned = (~masks["0"].reshape(8, -1).any(1)).nonzero().flatten()
    assert len(pruned) == 4
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(20):
        opt.zero_grad()
        net(torch.randn(4, 3, 6, 6)).pow(2).mean().backward()
        opt.step()
    net.eval()
    out = _bn_out(net, torch.randn(2, 3, 6, 6))
    assert torch.equal(out[:, pruned], torch.zeros_like(out[:, pruned]))
    assert torch.equal(net[1].weight[pruned], torch.zeros(4)) and torch.equal(net[1].bias[pruned], torch.zeros(4))


def test_couple_norms_false_leaves_the_bn_constant() -> None:
    net = _net().eval()
    masks = prune(net, select(net, include=["0"]), Magnitude(), Channel(0), Uniform(0.5), couple_norms=False)
    pruned = (~masks["0"].reshape(8, -1).any(1)).nonzero().flatten()
    out = _bn_out(net, torch.randn(2, 3, 6, 6))
    assert out[:, pruned].abs().min() > 0  # the constant beta - gamma * mean / std
    assert sorted(masks) == ["0"]


def test_element_granularity_does_not_couple() -> None:
    net = _net()
    masks = prune(net, select(net), Magnitude(), Element(), Uniform(0.5))
    assert masks.target_names == sorted(masks) == ["0", "3"]


def test_coupled_masks_save_load_round_trip(tmp_path) -> None:
    net = _net()
    masks = prune(net, select(net, include=["0"]), Magnitude(), Channel(0), Uniform(0.5))
    masks.save(tmp_path / "m.pt")
    fresh = _net()
    loaded = Masks.load(tmp_path / "m.pt", fresh)
    assert sorted(loaded) == ["0", "1::bias", "1::weight"]
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(net.eval()(x), fresh.eval()(x))

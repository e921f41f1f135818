"""Dependency graph: coupled channel units through residuals, option-A padding, concat, grouped
convs, flatten -> Linear, attention; pins; clear errors for ops it cannot map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import UnsupportedError
from prunekit.models import create
from prunekit.structure import AxisRef, DependencyGraph

torch.set_num_threads(1)
X32 = torch.zeros(2, 3, 32, 32)


def unit_with(graph: DependencyGraph, module: str, axis: str, index: int):
    for u in graph.units:
        if index in u.slots.get(AxisRef(module, axis), ()):
            return u
    raise AssertionError(f"no unit owns {module}:{axis}[{index}]")


def test_resnet_option_a_maps_channels_through_the_pad_shortcut():
    g = DependencyGraph.build(create("resnet20", option="A"), X32)
    # stage 2 first block: PadShortcut(8, 8): input c -> output 8 + c
    sc = g.module("layer2.0.shortcut")
    assert (sc.pad_before, sc.pad_after) == (8, 8)
    for c in (0, 5, 15):
        u = unit_with(g, "layer2.0.shortcut", "in", c)
        assert u.slots[AxisRef("layer2.0.shortcut", "out")] == (8 + c,)
        assert u.slots[AxisRef("conv1", "out")] == (c,)  # the stem feeds stage 1's residual stream
        assert u.slots[AxisRef("layer2.0.bn2", "feat")] == (8 + c,)
        assert u.slots[AxisRef("layer2.2.conv2", "out")] == (8 + c,)
    # padded (constant zero) channels own no stage-1 input channel
    pad_unit = unit_with(g, "layer2.0.shortcut", "out", 3)
    assert AxisRef("layer2.0.shortcut", "in") not in pad_unit.slots
    assert AxisRef("conv1", "out") not in pad_unit.slots
    # stage 3 pads 16 each side: stage-2 channel c -> stage-3 channel 16 + c, which reaches the classifier
    u = unit_with(g, "layer3.0.shortcut", "in", 2)
    assert u.slots[AxisRef("layer3.0.shortcut", "out")] == (18,)
    assert u.slots[AxisRef("linear", "in")] == (18,)
    # everything on the residual stream is one group of 64 units; inner block channels are their own groups
    assert len(g.units_on("layer2.0.shortcut", "in")) == 16
    residual = g.units[u.index].group
    assert len(g.groups[residual].units) == 64
    inner = unit_with(g, "layer1.0.conv1", "out", 0)
    assert set(inner.slots) == {
        AxisRef("layer1.0.conv1", "out"),
        AxisRef("layer1.0.bn1", "feat"),
        AxisRef("layer1.0.conv2", "in"),
    }
    assert sum(u.prunable for u in g.units) == 64 + 3 * (16 + 32 + 64)


def test_resnet_option_b_projection_joins_its_stage_group():
    g = DependencyGraph.build(create("resnet20", option="B"), X32)
    u = unit_with(g, "layer2.0.shortcut.0", "out", 4)
    assert u.slots[AxisRef("layer2.0.shortcut.1", "feat")] == (4,)
    assert u.slots[AxisRef("layer2.1.conv2", "out")] == (4,)
    assert u.slots[AxisRef("layer3.0.shortcut.0", "in")] == (4,)
    assert AxisRef("conv1", "out") not in u.slots  # the projection decouples stages


def test_model_input_and_output_are_pinned():
    g = DependencyGraph.build(create("resnet20"), X32)
    assert unit_with(g, "conv1", "in", 0).pinned == "model input"
    assert unit_with(g, "linear", "out", 3).pinned == "model output"


class DenseBlock(nn.Module):
    """DenseNet-style: each conv sees the concatenation of everything before it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.grow1 = nn.Conv2d(8, 4, 3, padding=1)
        self.grow2 = nn.Conv2d(12, 4, 3, padding=1)
        self.trans = nn.Conv2d(16, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.stem(x)))  # (B, 8, H, W)
        h = torch.cat([h, F.relu(self.grow1(h))], dim=1)  # (B, 12, H, W)
        h = torch.cat([h, F.relu(self.grow2(h))], 1)  # (B, 16, H, W)
        h = F.adaptive_avg_pool2d(self.trans(h), 1).flatten(1)
        return self.fc(h)


def test_concat_offsets():
    g = DependencyGraph.build(DenseBlock(), torch.zeros(1, 3, 8, 8))
    u = unit_with(g, "stem", "out", 5)
    assert u.slots[AxisRef("grow1", "in")] == (5,)
    assert u.slots[AxisRef("grow2", "in")] == (5,)
    assert u.slots[AxisRef("trans", "in")] == (5,)
    v = unit_with(g, "grow1", "out", 2)
    assert v.slots[AxisRef("grow2", "in")] == (8 + 2,)
    assert v.slots[AxisRef("trans", "in")] == (8 + 2,)
    w = unit_with(g, "grow2", "out", 3)
    assert w.slots == {AxisRef("grow2", "out"): (3,), AxisRef("trans", "in"): (12 + 3,)}


def test_flatten_to_linear_channel_owns_hw_features():
    g = DependencyGraph.build(create("lenet5"), torch.zeros(1, 1, 28, 28))
    u = unit_with(g, "conv2", "out", 7)
    assert u.slots[AxisRef("fc1", "in")] == tuple(range(7 * 25, 8 * 25))
    assert u.prunable


class GroupedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.g2 = nn.Conv2d(8, 12, 3, padding=1, groups=2)
        self.b = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(self.g2(F.relu(self.dw(F.relu(self.a(x)))))))


def test_depthwise_is_one_to_one_and_grouped_conv_moves_whole_groups():
    g = DependencyGraph.build(GroupedNet(), torch.zeros(1, 3, 6, 6))
    u = unit_with(g, "a", "out", 3)
    # depthwise: input channel c is output channel c (here merged with g2's whole first group)
    assert u.slots[AxisRef("dw", "in")] == u.slots[AxisRef("dw", "out")] == u.slots[AxisRef("a", "out")]
    # g2 has 2 groups of (4 in, 6 out): one unit per group, owning 4 dw channels and 6 g2 outputs
    w = unit_with(g, "g2", "out", 7)
    assert w.slots[AxisRef("g2", "out")] == tuple(range(6, 12))
    assert w.slots[AxisRef("g2", "in")] == tuple(range(4, 8))
    assert w.slots[AxisRef("a", "out")] == tuple(range(4, 8))
    assert w.slots[AxisRef("b", "in")] == tuple(range(6, 12))


class AttnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)  # (B, T, 16)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.norm(h + a)
        h = h + self.fc2(F.gelu(self.fc1(h)))
        return self.head(h.mean(1))


def test_attention_heads_are_units_and_the_model_width_is_pinned():
    g = DependencyGraph.build(AttnNet(), torch.zeros(2, 5, 8))
    heads = unit_with(g, "attn", "heads", 2)
    assert heads.prunable and set(heads.slots) == {AxisRef("attn", "heads")}
    assert unit_with(g, "fc1", "out", 9).prunable
    width = unit_with(g, "proj", "out", 0)
    assert width.pinned is not None and "MultiheadAttention" in width.pinned


class Mixer(nn.Module):
    """MLP-Mixer-style token mixing: a Linear over tokens, the channel dim passes through it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 2, stride=2)  # (B, 8, 2, 2) -> 4 tokens
        self.tokens = nn.Linear(4, 4)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).flatten(2).transpose(1, 2)  # (B, 4, 8)
        h = h + self.tokens(h.transpose(1, 2)).transpose(1, 2)  # mix tokens, keep channels
        h = h + self.fc2(F.gelu(self.fc1(h)))
        return self.head(h.mean(1))


def test_linear_over_tokens_keeps_channels_coupled():
    g = DependencyGraph.build(Mixer(), torch.zeros(1, 3, 4, 4))
    u = unit_with(g, "embed", "out", 5)
    assert u.slots[AxisRef("fc1", "in")] == (5,) and u.slots[AxisRef("fc2", "out")] == (5,)
    assert unit_with(g, "tokens", "out", 1).pinned  # tokens are conv positions, not prunable
    assert unit_with(g, "fc1", "out", 3).prunable


def test_layernorm_channels_are_pinned():
    net = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    g = DependencyGraph.build(net, torch.zeros(3, 4))
    assert "LayerNorm" in unit_with(g, "0", "out", 1).pinned


def test_transposed_conv_channels_are_pinned():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 4, 3), nn.Conv2d(4, 2, 1))
    g = DependencyGraph.build(net, torch.zeros(1, 3, 8, 8))
    assert "transposed conv" in unit_with(g, "0", "out", 1).pinned
    assert "transposed conv" in unit_with(g, "3", "in", 1).pinned


class HardCoded(nn.Module):
    """Ops whose channel counts are literals in forward: their channels must be kept."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(3, 6, 1)
        self.d = nn.Conv2d(3, 8, 1)
        self.e = nn.Conv2d(6, 2, 1)
        self.fc = nn.Linear(6 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = torch.split(F.relu(self.a(x)), [4, 4], dim=1)  # (B, 4, H, W) each
        y = self.b(left + right).sum()
        z = self.fc(self.c(x).view(-1, 6 * 16))  # literal size: channels of c are kept
        w = self.e(self.d(x)[:, :6])  # literal slice bounds: channels of d are kept
        return z + y + w.sum()


def test_reductions_over_channels_pin_them():
    g = DependencyGraph.build(ChannelMean(), torch.zeros(1, 3, 8, 8))
    assert "reduces over these channels" in unit_with(g, "c1", "out", 0).pinned
    assert unit_with(g, "c2", "out", 0).pinned == "model output"


def test_literal_sizes_in_forward_pin_channels():
    g = DependencyGraph.build(HardCoded(), torch.zeros(1, 3, 4, 4))
    assert "split sizes" in unit_with(g, "a", "out", 6).pinned
    assert unit_with(g, "b", "out", 1).prunable
    assert "hard-coded size" in unit_with(g, "c", "out", 2).pinned
    assert "slice bounds" in unit_with(g, "d", "out", 2).pinned
    assert unit_with(g, "fc", "in", 5).pinned


class Rolled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.c2 = nn.Conv2d(8, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.roll(self.c1(x), 1, dims=1))


class Shuffled(Rolled):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        b, c, hh, ww = h.shape
        h = h.view(b, 2, c // 2, hh, ww).transpose(1, 2).reshape(b, c, hh, ww)  # channel shuffle
        return self.c2(h)


class ChannelMean(Rolled):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        return self.c2(h - h.mean(dim=1, keepdim=True))


class Branchy(Rolled):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        if h.sum() > 0:
            h = -h
        return self.c2(h)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (Rolled(), r"roll.*in module"),
        (Shuffled(), r"cannot prove which part indexes channels"),
        (Branchy(), r"cannot trace Branchy"),
    ],
)
def test_ops_that_cannot_be_mapped_raise_unsupported(model, match):
    with pytest.raises(UnsupportedError, match=match):
        DependencyGraph.build(model, torch.zeros(1, 3, 8, 8))


def test_an_op_without_a_rule_is_refused_even_on_spatial_dims():
    class SpatialRoll(Rolled):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c2(torch.roll(self.c1(x), 1, dims=2))

    # roll has no rule, so it is refused even on a spatial dim (conservative) and names the op
    with pytest.raises(UnsupportedError, match=r"op 'torch.roll' \(node 'roll'\)"):
        DependencyGraph.build(SpatialRoll(), torch.zeros(1, 3, 8, 8))

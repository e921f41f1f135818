"""Granularities: grouping round trips, reductions, and the structure of produced masks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.granularity import NM, Block, Channel, Element, Kernel, LoadBalanced, Pattern, Vector, parse
from prunekit.targets import Target

CONV_SHAPE = (8, 4, 3, 3)
REGULAR = [Element(), Vector(0), Vector(1), Kernel(), Channel(0), Channel(1), Block(2, 4)]


@pytest.fixture()
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("g", REGULAR, ids=repr)
def test_groups_partition_the_weight(g) -> None:
    n = g.num_groups(CONV_SHAPE)
    assert n * g.group_size(CONV_SHAPE) == math.prod(CONV_SHAPE)
    cover = torch.zeros(CONV_SHAPE, dtype=torch.long)
    for i in range(n):
        one = torch.zeros(n, dtype=torch.bool)
        one[i] = True
        m = g.expand(one, CONV_SHAPE)
        assert m.shape == CONV_SHAPE and int(m.sum()) == g.group_size(CONV_SHAPE)
        cover += m.long()
    assert torch.equal(cover, torch.ones_like(cover))  # every element in exactly one group


@pytest.mark.parametrize("g", REGULAR, ids=repr)
def test_group_score_is_the_sum_over_the_expanded_group(g, gen) -> None:
    scores = torch.rand(CONV_SHAPE, generator=gen)
    gs = g.group_scores(scores)
    assert gs.shape == (g.num_groups(CONV_SHAPE),)
    for i in (0, gs.numel() - 1):
        one = torch.zeros(gs.numel(), dtype=torch.bool)
        one[i] = True
        assert torch.allclose(gs[i], scores[g.expand(one, CONV_SHAPE)].sum())


def test_reductions() -> None:
    scores = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert Vector(0, "sum").group_scores(scores).tolist() == [7.0, 2.0]
    assert Vector(0, "mean").group_scores(scores).tolist() == [3.5, 1.0]
    assert Vector(0, "max").group_scores(scores).tolist() == [4.0, 1.0]
    assert torch.allclose(Vector(0, "l2").group_scores(scores), torch.tensor([5.0, math.sqrt(2)]))
    assert Vector(0).group_scores(scores, reduction="max").tolist() == [4.0, 1.0]
    with pytest.raises(ConfigError, match="unknown group reduction 'median'"):
        Channel(0, reduction="median")


def test_vector_and_channel_dims() -> None:
    assert Vector(0).num_groups(CONV_SHAPE) == 8 and Vector(1).num_groups(CONV_SHAPE) == 36
    assert Channel(0).num_groups(CONV_SHAPE) == 8 and Channel(1).num_groups(CONV_SHAPE) == 4
    keep = torch.tensor([True, False, True, True])
    m = Channel(1).expand(keep, CONV_SHAPE)
    assert m[:, 1].sum() == 0 and bool(m[:, [0, 2, 3]].all())
    with pytest.raises(ConfigError, match="dim must be 0"):
        Vector(2)


def test_kernel_structure_and_linear_error(gen) -> None:
    w = torch.rand(CONV_SHAPE, generator=gen)
    m = Kernel().select(w, 0.5)
    per_kernel = m.reshape(32, 9).sum(1)
    assert set(per_kernel.tolist()) == {0, 9} and int((per_kernel == 0).sum()) == 16
    with pytest.raises(ConfigError, match=r"Kernel\(\) applies to conv layers only; 'fc' is a Linear"):
        Kernel().check(Target("fc", nn.Linear(4, 4)))


def test_block_structure_and_divisibility_error(gen) -> None:
    w = torch.rand(8, 12, generator=gen)
    m = Block(2, 4).select(w, 0.5)
    tiles = m.reshape(4, 2, 3, 4).permute(0, 2, 1, 3).reshape(12, 8)
    assert all(t.all() or not t.any() for t in tiles) and int(m.sum()) == 48
    with pytest.raises(ConfigError, match=r"Block\(3x4\) does not tile layer 'fc': its 2-D view is 8x12"):
        Block(3, 4).check(Target("fc", nn.Linear(12, 8)))


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
@pytest.mark.parametrize("shape", [(16, 32), (8, 16, 3, 3)])
def test_nm_keeps_exactly_n_of_every_m(n, m, shape, gen) -> None:
    scores = torch.rand(shape, generator=gen)  # distinct scores
    mask = NM(n, m).select(scores)
    rows = mask.movedim(1, -1).reshape(-1, m) if len(shape) == 4 else mask.reshape(-1, m)
    assert torch.equal(rows.sum(1), torch.full((rows.shape[0],), n))
    # the kept entries are the n largest of their group
    srows = scores.movedim(1, -1).reshape(-1, m) if len(shape) == 4 else scores.reshape(-1, m)
    kept_min = torch.where(rows, srows, torch.inf).amin(1)
    dropped_max = torch.where(rows, -torch.inf, srows).amax(1)
    assert bool((kept_min > dropped_max).all())


def test_nm_with_ties_keeps_at_most_n() -> None:
    mask = NM(2, 4).select(torch.ones(4, 8))
    assert int(mask.reshape(-1, 4).sum(1).max()) <= 2


def test_nm_errors() -> None:
    with pytest.raises(ConfigError, match="n must be < m"):
        NM(4, 4)
    with pytest.raises(ConfigError, match="n must be < m"):
        NM(5, 4)
    with pytest.raises(ConfigError, match=r"layer 'conv1' to be divisible by 4, but it is 3"):
        NM(2, 4).check(Target("conv1", nn.Conv2d(3, 8, 3)))
    with pytest.raises(ConfigError, match="fixed at 0.5"):
        NM(2, 4).select(torch.rand(4, 8), 0.9)


def test_pattern_every_kernel_takes_one_pattern(gen) -> None:
    p = Pattern()
    assert p.patterns.shape == (8, 9) and bool((p.patterns.sum(1) == 4).all())
    w = torch.rand(CONV_SHAPE, generator=gen)
    m = p.select(w).reshape(-1, 9)
    pats = {tuple(r) for r in p.patterns.int().tolist()}
    assert all(tuple(r) in pats for r in m.int().tolist())
    # each kernel took the pattern covering the most score
    covered = w.reshape(-1, 9) @ p.patterns.float().t()
    assert torch.allclose((w.reshape(-1, 9) * m).sum(1), covered.amax(1))


def test_pattern_extra_sparsity_removes_whole_kernels(gen) -> None:
    p = Pattern()
    w = torch.rand(CONV_SHAPE, generator=gen)
    m = p.select(w, 0.8).reshape(-1, 9)
    per_kernel = m.sum(1)
    assert set(per_kernel.tolist()) <= {0, 4}
    assert abs(1 - m.float().mean().item() - 0.8) <= 4 / m.numel()
    with pytest.raises(ConfigError, match="at least"):
        p.select(w, 0.3)
    with pytest.raises(ConfigError, match="applies to 3x3 conv kernels only; layer 'fc'"):
        p.check(Target("fc", nn.Linear(9, 9)))


def test_pattern_from_weights_picks_the_most_frequent_patterns(gen) -> None:
    w = torch.rand(64, 2, 3, 3, generator=gen) * 0.1
    w.reshape(-1, 9)[:100, [0, 1, 2, 4]] += 1.0  # 100 kernels with the top row + centre
    w.reshape(-1, 9)[100:, [1, 3, 4, 5]] += 1.0  # 28 with the centre cross minus bottom
    p = Pattern.from_weights([w], num_patterns=2, entries=4)
    assert p.patterns.int().tolist() == [[1, 1, 1, 0, 1, 0, 0, 0, 0], [0, 1, 0, 1, 1, 1, 0, 0, 0]]
    assert Pattern.from_weights(w, num_patterns=5).patterns.shape == (5, 9)  # padded when data has 2


def test_load_balanced_every_pe_keeps_the_same_count(gen) -> None:
    w = torch.rand(12, 20, generator=gen)
    w[0::3] *= 10  # PE 0 would hog the nonzeros under plain magnitude pruning
    lb = LoadBalanced(3)
    m = lb.select(w, 0.75)
    counts = [int(m[pe::3].sum()) for pe in range(3)]
    assert counts == [20, 20, 20]
    plain = Element().select(w, 0.75)
    assert len({int(plain[pe::3].sum()) for pe in range(3)}) > 1  # unbalanced without it
    with pytest.raises(ConfigError, match="at least 16 rows"):
        LoadBalanced(16).check(Target("fc", nn.Linear(4, 8)))


def test_parse() -> None:
    assert repr(parse("block:4x1")) == "Block(4, 1)"
    assert repr(parse("nm:2:4")) == "NM(2, 4)"
    assert repr(parse("vector:1")) == "Vector(dim=1)"
    assert repr(parse("lb:4")) == "LoadBalanced(num_pe=4)"
    for bad in ("blok", "block:4", "nm:2", "block:axb"):
        with pytest.raises(ConfigError, match="cannot parse granularity"):
            parse(bad)
    with pytest.raises(ConfigError, match="n must be < m"):
        parse("nm:4:2")

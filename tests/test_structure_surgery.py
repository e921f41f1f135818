"""Surgery, plans and targets: the small model equals the masked model, counts drop as planned,
plans replay exactly, and the knobs (round_to, min_keep, uniform/global, MACs/params targets) hold."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.allocation import Uniform
from prunekit.checkpoint import load_pruned, save_pruned
from prunekit.errors import CheckpointError, ConfigError
from prunekit.metrics import count_macs, count_params
from prunekit.models import create
from prunekit.models.vgg_cifar import VGGCifar
from prunekit.structure import (
    ChannelConstraints,
    DependencyGraph,
    PruningPlan,
    VerificationError,
    make_plan,
    masked_reference,
    prune_channels,
    verify,
)
from prunekit.structure.ranking import CostModel

torch.set_num_threads(1)
X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms so a wrong slice shows up in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model.eval()


def tiny_vgg() -> nn.Module:
    return randomize_bn(VGGCifar((16, "M", 16, "M", 32, "M", 32, "M", 32, "M")))


class DenseBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.grow1 = nn.Conv2d(8, 4, 3, padding=1)
        self.grow2 = nn.Conv2d(12, 4, 3, padding=1)
        self.trans = nn.Conv2d(16, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.stem(x)))
        h = torch.cat([h, torch.sigmoid(self.grow1(h))], dim=1)  # sigmoid(0) != 0: masking must be exact
        h = torch.cat([h, F.relu(self.grow2(h))], 1)
        return self.fc(F.adaptive_avg_pool2d(self.trans(h), 1).flatten(1))


class GroupedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.g4 = nn.Conv2d(16, 24, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(24)
        self.b = nn.Conv2d(24, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(self.bn(self.g4(F.relu(self.dw(F.relu(self.a(x))))))))


class AttnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = h + a
        h = h + self.fc2(F.gelu(self.fc1(h)))
        return self.head(h.mean(1))


def _mixer() -> nn.Module:
    from test_structure_graph import Mixer

    return Mixer()


CASES = {
    "resnet20_A": (lambda: randomize_bn(create("resnet20", option="A")), X32),
    "resnet20_B": (lambda: randomize_bn(create("resnet20", option="B")), X32),
    "vgg": (tiny_vgg, X32),
    "mobilenetv2": (lambda: randomize_bn(create("mobilenetv2", width_mult=0.25)), X32[:1, :, :16, :16]),
    "densenet_block": (lambda: randomize_bn(DenseBlock()), torch.randn(2, 3, 8, 8)),
    "lenet5": (lambda: create("lenet5").eval(), torch.randn(2, 1, 28, 28)),
    "grouped": (lambda: randomize_bn(GroupedNet()), torch.randn(2, 3, 8, 8)),
    "mha": (lambda: AttnNet().eval(), torch.randn(2, 5, 8)),
    "mixer": (lambda: _mixer().eval(), torch.randn(2, 3, 4, 4)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_small_model_equals_masked_model_and_plan_replays(case):
    build, x = CASES[case]
    torch.manual_seed(0)
    model = build()
    before = copy.deepcopy(model.state_dict())
    small, plan, report = prune_channels(model, x, Uniform(0.4))  # verify=True inside
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    assert report.units_removed > 0 and report.verified is not None
    # independent check against the masked reference
    graph = DependencyGraph.build(model, x)
    removed = {}
    for name, mp in plan.modules.items():
        for axis, idx in mp.remove.items():
            removed[next(a for a in graph.axes if a.module == name and a.axis == axis)] = idx
    ref = masked_reference(graph, removed).eval()
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(x), ref(x), rtol=1e-4, atol=1e-5)
    # counts: what the report says, and fewer than before
    assert report.params_after == count_params(small) < count_params(model)
    assert report.macs_after == count_macs(small, x) < count_macs(model, x)
    # replay: JSON round trip on a fresh model gives the same architecture; loading gives identical tensors
    fresh = build()
    replayed = PruningPlan.from_json(plan.to_json()).apply(fresh)
    assert {k: v.shape for k, v in replayed.state_dict().items()} == {
        k: v.shape for k, v in small.state_dict().items()
    }
    replayed.load_state_dict(small.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(replayed.state_dict().values(), small.state_dict().values()))
    assert repr(replayed) == repr(small)


def test_grouped_conv_loses_whole_groups():
    model = randomize_bn(GroupedNet())
    small, plan, _ = prune_channels(model, torch.randn(1, 3, 8, 8), Uniform(0.5))
    assert small.g4.groups == 2 and small.g4.in_channels == 8 and small.g4.out_channels == 12
    assert small.dw.groups == small.dw.in_channels == small.dw.out_channels == 8
    assert small.a.out_channels == 8


def test_option_a_pad_shortcut_is_rewritten():
    model = randomize_bn(create("resnet20", option="A"))
    small, plan, _ = prune_channels(model, X32, 0.3)
    for stage in ("layer2", "layer3"):
        sc = small.get_submodule(f"{stage}.0.shortcut")
        conv1 = small.get_submodule(f"{stage}.0.conv1")
        bn2 = small.get_submodule(f"{stage}.0.bn2")
        assert sc.pad_before + conv1.in_channels + sc.pad_after == bn2.num_features


def test_cost_model_matches_real_counts_and_targets_are_reached():
    model = tiny_vgg()
    graph = DependencyGraph.build(model, X32)
    units = [u.index for u in graph.prunable_units()][::3]
    small = make_plan(graph, units).apply(copy.deepcopy(model))
    params, macs = CostModel(graph, X32).estimate(units)
    assert (params, macs) == (count_params(small), count_macs(small, X32))
    for target in ("macs", "params"):
        _, _, report = prune_channels(model, X32, 0.5, target=target, graph=graph, verify=False)
        assert 0.5 <= report.reached[target] < 0.6, report


def test_round_to_keeps_multiples():
    model = tiny_vgg()
    small, _, _ = prune_channels(model, X32, Uniform(0.6), constraints=ChannelConstraints(round_to=8))
    assert [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)] == [8, 8, 16, 16, 16]


def test_min_keep_is_a_per_layer_floor():
    model = tiny_vgg()
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    small, _, _ = prune_channels(model, X32, 0.95, constraints=ChannelConstraints(min_keep=0.25))
    kept = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert kept == [w // 4 for w in widths]


def test_max_keep_forces_every_layer_to_shrink():
    model = tiny_vgg()
    small, _, report = prune_channels(model, X32, 0.05, constraints=ChannelConstraints(max_keep=0.5))
    assert [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)] == [8, 8, 16, 16, 16]
    assert report.verified is not None


class ByIndex:
    """Importance = channel index: the lowest-index channels are the least important."""

    def scores(self, target):
        w = target.weight
        idx = torch.arange(w.shape[0], dtype=torch.float32).view(-1, *([1] * (w.dim() - 1)))
        return idx.expand_as(w).clone()


def test_importance_contract_decides_which_channels_go():
    model = tiny_vgg()
    small, plan, _ = prune_channels(model, X32, Uniform(0.5), importance=ByIndex())
    assert plan.modules["features.0"].remove["out"] == list(range(8))
    assert plan.meta["importance"] == "ByIndex"
    _, plan_bn, _ = prune_channels(model, X32, Uniform(0.5), importance="bn")
    gammas = model.features[1].weight.detach().abs()
    assert plan_bn.modules["features.0"].remove["out"] == sorted(gammas.argsort()[:8].tolist())


class NotFor:
    """Refuses to score one layer (like a criterion without data for it)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def scores(self, target):
        if target.name == self.name:
            raise ConfigError(f"no scores for {target.name}")
        return target.weight.detach().abs()


def test_excluded_and_pinned_layers_are_never_scored():
    model = tiny_vgg()
    with pytest.raises(ConfigError, match="no scores for features.0"):
        prune_channels(model, X32, 0.3, importance=NotFor("features.0"))
    small, plan, _ = prune_channels(
        model, X32, 0.3, importance=NotFor("features.0"), exclude=["features.0"]
    )
    assert "features.0" not in plan.modules and small.features[0].out_channels == 16
    prune_channels(model, X32, 0.3, importance=NotFor("classifier"))  # pinned output: not scored


@pytest.mark.parametrize("batch_first", [False, True])
def test_head_pruned_attention_matches_stock_attention_with_all_heads(batch_first):
    from prunekit.structure import HeadPrunedMultiheadAttention

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(12, 3, batch_first=batch_first).eval()
    small = HeadPrunedMultiheadAttention.from_mha(mha, torch.arange(3)).eval()
    q, k = torch.randn(4, 2, 12), torch.randn(6, 2, 12)
    if batch_first:
        q, k = q.transpose(0, 1), k.transpose(0, 1)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[1, -2:] = True
    for kwargs in (
        {},
        {"key_padding_mask": kpm, "attn_mask": torch.rand(4, 6) > 0.8},
        {"average_attn_weights": False},
    ):
        for a, b in zip(mha(q, k, k, **kwargs), small(q, k, k, **kwargs)):
            torch.testing.assert_close(a, b)


def test_verification_catches_a_wrong_model():
    model = tiny_vgg()
    graph = DependencyGraph.build(model, X32)
    units = [u.index for u in graph.prunable_units()][::2]
    removed = graph.removed_slots(units)
    small = make_plan(graph, units).apply(copy.deepcopy(model))
    assert verify(graph, removed, small, X32).max_abs_diff < 1e-4
    with pytest.raises(VerificationError, match="differs from the masked model"):
        verify(graph, {}, small, X32)  # the unmasked original is not what the small model computes
    with torch.no_grad():
        small.features[4].weight[0, 0, 0, 0] += 1.0
    with pytest.raises(VerificationError, match="differs from the masked model"):
        verify(graph, removed, small, X32)


def test_plan_io_and_pruned_checkpoint_round_trip(tmp_path):
    model = create("resnet20", option="A")
    small, plan, _ = prune_channels(model, X32, 0.3, verify=False)
    path = plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(path) == plan
    ckpt = save_pruned(tmp_path / "small.pt", "resnet20", {"option": "A"}, plan, small)
    again, meta = load_pruned(ckpt)
    assert meta["plan"] == plan and meta["model_name"] == "resnet20"
    for (k, a), b in zip(again.state_dict().items(), small.state_dict().values()):
        assert torch.equal(a, b), k
    assert plan.apply(small) is small  # already pruned by the plan: nothing left to do
    with pytest.raises(ConfigError, match="fresh, unpruned copy"):
        plan.apply(prune_channels(model, X32, 0.5, verify=False)[0])
    with pytest.raises(CheckpointError, match="not a structured pruning plan"):
        PruningPlan.from_json('{"modules": {}}')
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pruned(tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="lacks"):
        d = plan.to_dict()
        d["steps"][0]["modules"] = {"layer9.conv": d["steps"][0]["modules"]["conv1"]}
        PruningPlan.from_dict(d).apply(create("resnet20"))


def test_bad_arguments_raise_config_errors():
    model = tiny_vgg()
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\)"):
        prune_channels(model, X32, 1.0)
    with pytest.raises(ConfigError, match="target"):
        prune_channels(model, X32, 0.3, target="flops")
    with pytest.raises(ConfigError, match="exclude 'features.99' matches no prunable layer"):
        prune_channels(model, X32, 0.3, exclude=["features.99"])


def test_cli_prune_structured_writes_model_and_plan(tmp_path, capsys):
    from prunekit.cli.main import main

    out, plan_out = tmp_path / "l5.pt", tmp_path / "l5.json"
    argv = ["prune", "--structured", "--model", "lenet5", "--sparsity", "0.5", "--target", "params",
            "--round-to", "2", "--out", str(out), "--plan-out", str(plan_out), "--latency-repeats", "2"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "params" in text and "MACs" in text and "latency" in text and "verified" in text
    small, ckpt = load_pruned(out)
    assert PruningPlan.load(plan_out) == ckpt["plan"]
    assert 1 - count_params(small) / count_params(create("lenet5")) >= 0.5
    assert ckpt["metadata"]["pruning"]["target"] == "params"
    assert main(["prune", "--structured", "--model", "lenet5", "--out", str(out)]) == 2  # no --sparsity
    assert "--sparsity" in capsys.readouterr().err


def test_pretrained_resnet20_prunes_exactly(pretrained_dir, tmp_path):
    from prunekit.models import load_pretrained

    model = load_pretrained(create("resnet20"), pretrained_dir / "resnet20-12fca82f.th").eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    small, plan, report = prune_channels(model, x, Uniform(0.3), target="macs")
    assert report.reached["macs"] >= 0.3 and report.verified.max_rel_diff < 1e-4
    again, _ = load_pruned(save_pruned(tmp_path / "r20.pt", "resnet20", {}, plan, small))
    with torch.no_grad():
        assert torch.equal(again.eval()(x), small.eval()(x))

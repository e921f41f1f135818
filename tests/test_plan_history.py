"""Plans as histories of steps (prune, prune the small model again, chain, save, replay from any step)
and channel masks -> plan -> small model."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from prunekit.allocation import Uniform
from prunekit.checkpoint import load_pruned, save_pruned
from prunekit.errors import CheckpointError, ConfigError
from prunekit.granularity import Channel
from prunekit.importance import Magnitude
from prunekit.masks import Masks
from prunekit.metrics import count_params
from prunekit.models import create
from prunekit.models.resnet_cifar import ResNetCifar
from prunekit.pruning import prune
from prunekit.structure import (
    AxisRef,
    DependencyGraph,
    ModulePlan,
    PlanStep,
    PruningPlan,
    masks_to_small_model,
    plan_from_masks,
    prune_channels,
)
from prunekit.targets import select
from test_structure_surgery import randomize_bn  # the same non-trivial BN statistics

X0 = torch.zeros(1, 3, 32, 32)
X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def twice():
    """ResNet-20 pruned at 0.3, the small model pruned again at 0.3, and the chained plan."""
    torch.manual_seed(0)
    model = randomize_bn(create("resnet20"))
    small1, plan1, _ = prune_channels(model, X0, 0.3)
    small2, plan2, report2 = prune_channels(small1, X0, 0.3)
    assert report2.units_removed > 0 and count_params(small2) < count_params(small1) < count_params(model)
    return model, small1, plan1, small2, plan2, plan1.then(plan2)


def test_prune_twice_chain_save_and_load(twice, tmp_path):
    model, small1, plan1, small2, plan2, plan = twice
    assert len(plan.steps) == 2 and plan.steps[0].meta == plan1.meta
    assert plan.meta == plan2.meta and plan.modules is plan.steps[-1].modules  # .modules/.meta: last step
    assert plan.original_sizes()["conv1"] == {"in": 3, "out": 16}
    assert plan.final_sizes()["layer3.2.conv1"]["out"] == small2.layer3[2].conv1.out_channels
    path = save_pruned(tmp_path / "r20x2.pt", "resnet20", {}, plan, small2)
    again, ckpt = load_pruned(path)
    assert ckpt["plan"] == plan and len(ckpt["plan"].steps) == 2
    assert same_state(again, small2)
    with torch.no_grad():
        assert torch.equal(again.eval()(X), small2.eval()(X))


def test_apply_detects_the_steps_a_model_already_has(twice):
    model, small1, plan1, small2, plan2, plan = twice
    assert plan.steps_applied(copy.deepcopy(model)) == 0
    assert plan.steps_applied(small1) == 1 and plan.steps_applied(small2) == 2
    part = copy.deepcopy(small1)
    out = plan.apply(part)  # only step 2 runs: the result is exactly what prune_channels gave
    assert out is part and same_state(part, small2)
    with torch.no_grad():
        assert torch.equal(part.eval()(X), small2(X))
    fresh = plan.apply(create("resnet20"))  # all steps: same architecture as small2
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in small2.state_dict().items()
    }
    done = copy.deepcopy(small2)
    assert plan.apply(done) is done and same_state(done, small2)  # already final: unchanged


@pytest.mark.parametrize("case", ["mha", "resnet20_B", "grouped", "densenet_block"])
def test_chained_plans_replay_on_other_architectures(case):
    """Attention heads (the module type changes after step 1), projection shortcuts, grouped convs, concat."""
    from test_structure_surgery import CASES

    build, x = CASES[case]
    torch.manual_seed(0)
    small1, plan1, _ = prune_channels(build(), x, Uniform(0.5))
    small2, plan2, _ = prune_channels(small1, x, Uniform(0.5))
    plan = PruningPlan.from_json(plan1.then(plan2).to_json())
    if case == "mha":
        assert all(s.modules["attn"].remove["heads"] for s in plan.steps)
        assert [s.modules["attn"].type for s in plan.steps] == [
            "MultiheadAttention",
            "HeadPrunedMultiheadAttention",
        ]
    assert plan.steps_applied(small1) == 1 and plan.steps_applied(small2) == 2
    part = plan.apply(copy.deepcopy(small1))
    assert same_state(part, small2)
    fresh = plan.apply(build())
    fresh.load_state_dict(small2.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), small2.eval()(x))


def test_plan_json_round_trip_is_exact_and_deterministic(twice, tmp_path):
    plan = twice[-1]
    text = plan.to_json()
    data = json.loads(text)
    assert data["version"] == 2 and len(data["steps"]) == 2 and set(data) == {"format", "version", "steps"}
    back = PruningPlan.from_json(text)
    assert back == plan and back.to_json() == text
    assert PruningPlan.load(plan.save(tmp_path / "p.json")) == plan
    assert json.dumps(data, sort_keys=True) == text


def test_then_rejects_plans_made_on_another_model(twice):
    model, small1, plan1, small2, plan2, plan = twice
    with pytest.raises(ConfigError, match=r"cannot chain plans: the next plan expects \S+:\w+ of size \d+"):
        plan1.then(plan1)  # plan1 was made on the dense model, not on small1
    with pytest.raises(ConfigError, match="0:out of size 6, this plan leaves it at 4"):
        _lin(6, [1, 4]).then(_lin(6, [0]))


def test_apply_to_a_model_matching_no_step_names_the_axis(twice):
    plan = twice[-1]
    expected = r"matches no step of the plan: \S+:\w+ has size \d+, the (original model|model after step 1 of 2) has \d+"
    with pytest.raises(ConfigError, match=expected):
        plan.apply(ResNetCifar((3, 3, 3), width=8))
    two = _lin(6, [1, 4]).then(_lin(4, [0]))
    with pytest.raises(ConfigError, match="0:out has size 5, the original model has 6"):
        two.apply(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)))
    with pytest.raises(ConfigError, match="lacks"):
        two.apply(nn.Sequential(nn.Linear(4, 6)))
    with pytest.raises(ConfigError, match="expects '0' to be a Linear"):
        two.apply(nn.Sequential(nn.Conv1d(4, 6, 1), nn.ReLU(), nn.Linear(6, 2)))


def _lin(width: int, removed: list[int]) -> PruningPlan:
    """One step on Linear(4, width) -> ReLU -> Linear(width, 2), removing ``removed`` hidden neurons."""
    return PruningPlan(
        {
            "0": ModulePlan("Linear", {"in": 4, "out": width}, {"out": list(removed)}),
            "2": ModulePlan("Linear", {"in": width, "out": 2}, {"in": list(removed)}),
        },
        {"width": width},
    )


def test_two_step_plan_on_a_small_net_equals_one_shot_removal():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    plan = _lin(6, [1, 4]).then(_lin(4, [0]))  # step 2's index 0 is original neuron 0
    assert [s.meta for s in plan.steps] == [{"width": 6}, {"width": 4}] and len(plan) == 2
    small = plan.apply(copy.deepcopy(net))
    assert small[0].out_features == 3
    torch.testing.assert_close(small[0].weight, net[0].weight[[2, 3, 5]])
    torch.testing.assert_close(small[2].weight, net[2].weight[:, [2, 3, 5]])
    assert repr(plan) == "PruningPlan(2 steps, 2 modules, 6 indices removed)"


def test_version_1_files_still_load():
    v1 = {
        "format": "prunekit.structured-plan",
        "version": 1,
        "meta": {"target": "channels", "ratio": 0.5},
        "modules": {
            "0": {"type": "Linear", "sizes": {"in": 4, "out": 6}, "remove": {"out": [1, 4]}},
            "2": {"type": "Linear", "sizes": {"in": 6, "out": 2}, "remove": {"in": [1, 4]}},
        },
    }
    plan = PruningPlan.from_json(json.dumps(v1))
    assert len(plan.steps) == 1 and plan.meta == v1["meta"] and plan.modules["0"].remove == {"out": [1, 4]}
    assert plan == _lin(6, [1, 4]).__class__.from_steps([PlanStep(plan.modules, v1["meta"])])
    small = plan.apply(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)))
    assert small[0].out_features == 4 and small[2].in_features == 4
    assert json.loads(plan.to_json())["version"] == 2  # written back as v2


def test_malformed_plans_are_checkpoint_errors():
    good = _lin(6, [1, 4]).then(_lin(4, [0])).to_dict()
    bad_chain = copy.deepcopy(good)
    bad_chain["steps"][1]["modules"]["0"]["sizes"]["out"] = 5
    with pytest.raises(CheckpointError, match="step 2 of the plan expects 0:out of size 5"):
        PruningPlan.from_dict(bad_chain)
    with pytest.raises(CheckpointError, match="both 'steps'"):
        PruningPlan.from_dict({**good, "modules": {}})
    out_of_range = copy.deepcopy(good)
    out_of_range["steps"][0]["modules"]["0"]["remove"]["out"] = [7]
    with pytest.raises(CheckpointError, match="out-of-range"):
        PruningPlan.from_dict(out_of_range)
    with pytest.raises(CheckpointError, match="newer"):
        PruningPlan.from_dict({**good, "version": 3})
    with pytest.raises(ConfigError, match="at least one step"):
        PruningPlan.from_steps([])


def test_save_pruned_refuses_a_model_missing_steps(twice, tmp_path):
    model, small1, plan1, small2, plan2, plan = twice
    with pytest.raises(ConfigError, match="only the first 1 of the plan's 2 steps"):
        save_pruned(tmp_path / "x.pt", "resnet20", {}, plan, small1)
    assert not (tmp_path / "x.pt").exists()


# ---------------------------------------------------------------------------------------------
# channel masks -> plan
# ---------------------------------------------------------------------------------------------
class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def _check_small_equals_masked(masked: nn.Module, small: nn.Module) -> None:
    masked.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(X), masked(X), rtol=1e-4, atol=1e-5)
    assert count_params(small) < count_params(masked)


def test_channel_masks_of_a_conv_bn_net_become_a_small_model():
    torch.manual_seed(0)
    model = randomize_bn(ConvNet())
    masks = prune(model, select(model, types=(nn.Conv2d,)), Magnitude(), Channel(0), Uniform(0.5))
    small, plan = masks_to_small_model(model, masks, X0)
    _check_small_equals_masked(model, small)
    assert (small.conv1.out_channels, small.conv2.out_channels, small.conv3.out_channels) == (4, 8, 8)
    assert small.fc.in_features == 8 and plan.meta["units_removed"] == 20
    assert masks.enforced and any(model.conv1._forward_pre_hooks.values())  # the input keeps its masks
    assert not any(h for m in small.modules() for h in m._forward_pre_hooks.values())  # small: plain
    small.train()
    small(X).sum().backward()  # trains without the old masks' hooks getting in the way
    again = plan_from_masks(model, masks, X0)
    assert again == plan
    masks.remove()


def test_resnet20_block_interior_masks_become_a_small_model():
    torch.manual_seed(0)
    model = randomize_bn(create("resnet20"))
    targets = select(model, types=(nn.Conv2d,), include="layer*.conv1")
    masks = prune(model, targets, Magnitude(), Channel(0), Uniform(0.5))
    small, plan = masks_to_small_model(model, masks, X0)
    _check_small_equals_masked(model, small)
    assert all(small.get_submodule(t.name).out_channels == t.weight.shape[0] // 2 for t in targets)
    assert small.conv1.out_channels == 16  # the residual stream had no masks: untouched
    masks.remove()


def test_partly_masked_residual_units_stay():
    """All convs channel-masked (each layer picks its own channels): a residual channel goes only when
    every conv adding into it dropped it."""
    torch.manual_seed(0)
    model = randomize_bn(create("resnet20"))
    graph = DependencyGraph.build(model, X0)
    residual = next(g for g in graph.groups if AxisRef("conv1", "out") in g.axes)
    full, part = [graph.units[u] for u in residual.units if graph.units[u].prunable][:2]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    keep = {n: torch.ones_like(model.get_submodule(n).weight, dtype=torch.bool) for n in convs}
    gates: dict[str, list[int]] = {}  # BN channels zeroed (as prune's couple_norms does)
    for unit, skip in ((full, None), (part, "conv1")):
        for ref, idx in unit.slots.items():
            if ref.axis == "out" and ref.module in keep and ref.module != skip:
                keep[ref.module][list(idx)] = False
            if isinstance(model.get_submodule(ref.module), nn.BatchNorm2d):
                if skip is None or ref.module != "bn1":  # the stem's BN: its conv keeps the channel
                    gates.setdefault(ref.module, []).extend(idx)
    masks = Masks(keep).apply(model, enforce=False)
    with torch.no_grad():
        for name, idx in gates.items():
            bn = model.get_submodule(name)
            bn.weight[idx] = 0.0
            bn.bias[idx] = 0.0
    plan = plan_from_masks(model, masks, X0, graph)
    assert plan.meta["units_removed"] == 1
    assert plan.modules["conv1"].remove == {"out": list(full.slots[AxisRef("conv1", "out")])}
    small = plan.apply(copy.deepcopy(model))
    _check_small_equals_masked(model, small)
    # natural channel masks on every conv: per-layer choices rarely agree on residual channels
    torch.manual_seed(0)
    model2 = randomize_bn(create("resnet20"))
    masks2 = prune(model2, select(model2, types=(nn.Conv2d,)), Magnitude(), Channel(0), Uniform(0.5))
    small2, plan2 = masks_to_small_model(model2, masks2, X0)
    _check_small_equals_masked(model2, small2)
    assert small2.conv1.out_channels > 8  # the stem's masked channels were not all dropped by the blocks
    masks2.remove()


def test_masks_for_another_model_raise():
    model = ConvNet()
    with pytest.raises(ConfigError, match="belong to another model"):
        plan_from_masks(model, {"conv1": torch.ones(4, 3, 3, 3, dtype=torch.bool)}, X0)
    with pytest.raises(ConfigError, match="lacks"):
        plan_from_masks(model, {"conv9": torch.ones(8, 3, 3, 3, dtype=torch.bool)}, X0)
    plan = plan_from_masks(model, {"bn1::weight": torch.zeros(8, dtype=torch.bool)}, X0)  # coupled: ignored
    assert plan.meta["units_removed"] == 0 and plan.apply(model) is model


@pytest.mark.parametrize("module_name", ["prunekit.structure.plan", "prunekit.structure.from_masks"])
def test_docstring_examples_run(module_name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

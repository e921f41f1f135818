"""Loss terms for recovery: L1 / L2, group lasso over any granularity's groups, slimming, the pull
toward a planned cut, and knowledge distillation from the dense teacher."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit import NM, Block, Channel, Element, Kernel, Uniform, Vector, select
from prunekit.errors import ConfigError
from prunekit.train import TrainConfig, fit
from prunekit.train.distill import Distillation
from prunekit.train.engine import Classification
from prunekit.train.regularizers import L1, L2, GroupLasso, Slimming, Sum, TowardMasks


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _data(n: int = 128, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()  # learnable labels
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("granularity", [Element(), Channel(0), Channel(1), Kernel(), Vector(1), Block(2, 1)],
                         ids=lambda g: repr(g))
def test_group_lasso_is_the_sum_of_the_granularity_groups_norms(granularity) -> None:
    model = _net()
    targets = select(model, types=(nn.Conv2d,))
    reg = GroupLasso(targets, granularity, 0.1)
    want = 0.0
    for t in targets:
        w = t.weight.detach()
        keep_one = torch.zeros(granularity.group_scores(w.abs()).numel(), dtype=torch.bool)
        for gi in range(keep_one.numel()):  # each group by expanding a one-hot group mask
            one = keep_one.clone()
            one[gi] = True
            members = w[granularity.expand(one, w.shape)]
            want += members.numel() ** 0.5 * float(members.norm())
    assert float(reg(model).detach()) == pytest.approx(0.1 * want, rel=1e-5)
    reg(model).backward()
    assert all(t.weight.grad is not None and torch.isfinite(t.weight.grad).all() for t in targets)


def test_group_lasso_drives_whole_filters_to_zero_and_l1_does_not() -> None:
    def train(reg_for) -> nn.Module:
        model = _net()
        reg = reg_for(model)
        fit(model, _data(), None, TrainConfig(epochs=60, lr=0.05, weight_decay=0.0, seed=0, progress=False),
            regularizer=reg)
        return model

    def dead_filters(model: nn.Module) -> int:  # filters whose norm fell below 15 % of the largest one
        norms = torch.cat([m.weight.detach().flatten(1).norm(dim=1) for m in model if isinstance(m, nn.Conv2d)])
        return int((norms < 0.15 * norms.max()).sum())

    lasso = train(lambda m: GroupLasso(select(m, types=(nn.Conv2d,)), Channel(0), 0.005))
    l1 = train(lambda m: L1(select(m, types=(nn.Conv2d,)), 0.001))
    assert dead_filters(lasso) >= 3 and dead_filters(l1) == 0


def test_slimming_shrinks_gammas_and_toward_masks_shrinks_only_the_pruned() -> None:
    base, slim = _net(), _net()
    cfg = TrainConfig(epochs=10, lr=0.05, weight_decay=0.0, seed=0, progress=False)
    fit(base, _data(), None, cfg)
    fit(slim, _data(), None, cfg, regularizer=Slimming(slim, 0.05))
    gammas = [lambda m: torch.cat([b.weight.detach().abs() for b in m if isinstance(b, nn.BatchNorm2d)])]
    assert float(gammas[0](slim).mean()) < 0.8 * float(gammas[0](base).mean())

    model = _net()
    targets = select(model, types=(nn.Conv2d,))
    keep = Uniform(0.5).allocate(targets, {t.name: t.weight.detach().abs() for t in targets}, Channel(0))
    before = {t.name: t.weight.detach().clone() for t in targets}
    fit(model, _data(), None, cfg, regularizer=TowardMasks(model, keep, 1.0))
    for t in targets:
        pruned, kept = ~keep[t.name], keep[t.name]
        assert float(t.weight.detach()[pruned].norm()) < 0.3 * float(before[t.name][pruned].norm())
        assert float(t.weight.detach()[kept].norm()) > 0.5 * float(before[t.name][kept].norm())


def test_regularizer_arguments_are_checked() -> None:
    model = _net()
    ts = select(model)
    with pytest.raises(ConfigError, match="strength"):
        L1(ts, -1.0)
    with pytest.raises(ConfigError, match="non-empty list of targets"):
        L2([], 0.1)
    with pytest.raises(ConfigError, match="selects inside groups"):
        GroupLasso(ts, NM(2, 4), 0.1)
    with pytest.raises(ConfigError, match="no affine BatchNorm"):
        Slimming(nn.Linear(2, 2), 0.1)
    total = Sum([L1(ts, 0.1), L2(ts, 0.1)])
    assert torch.isclose(total(model), L1(ts, 0.1)(model) + L2(ts, 0.1)(model))


def test_distillation_pulls_the_student_toward_the_teacher() -> None:
    teacher = _net(0)
    fit(teacher, _data(), None, TrainConfig(epochs=15, lr=0.05, seed=0, progress=False))
    teacher.eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():  # a damaged copy, as after pruning
        for m in student.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.rand_like(m.weight) > 0.6)
    x = torch.cat([b for b, _ in _data()])

    def gap(model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            return float(nn.functional.kl_div(model(x).log_softmax(1), teacher(x).log_softmax(1), log_target=True,
                                              reduction="batchmean"))

    before = gap(student)
    teacher_weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    fit(student, _data(), None, TrainConfig(epochs=5, lr=0.01, seed=0, progress=False),
        task=Distillation(teacher, temperature=4.0, alpha=1.0))
    assert gap(student) < 0.5 * before
    assert all(torch.equal(v, teacher_weights[k]) for k, v in teacher.state_dict().items())  # teacher untouched
    with pytest.raises(ConfigError, match="alpha"):
        Distillation(teacher, alpha=1.5)
    assert isinstance(Distillation(teacher).base, Classification)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def _flat_data(n: int = 256, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4] @ torch.randn(4, 4, generator=torch.Generator().manual_seed(9))).argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1))


def test_admm_beats_one_shot_magnitude_at_90_percent_before_fine_tuning() -> None:
    from prunekit import Global, Magnitude, prune
    from prunekit.train import evaluate
    from prunekit.train.admm import ADMM

    dense = _mlp()
    fit(dense, _flat_data(), None, TrainConfig(epochs=20, lr=0.05, seed=0, progress=False))
    test = _flat_data(512, seed=3)
    one_shot = copy.deepcopy(dense)
    prune(one_shot, select(one_shot), Magnitude(), Element(), Global(0.9), enforce=False)
    model = copy.deepcopy(dense)
    admm = ADMM(model, select(model), Element(), Global(0.9), rho=0.3, every=16, rho_growth=1.2)
    fit(model, _flat_data(), None, TrainConfig(epochs=15, lr=0.05, seed=0, progress=False), regularizer=admm,
        pruner=admm)
    assert admm.residual() < 0.1  # W has come close to the constraint set
    masks = admm.hard_prune(enforce=False)
    assert masks.sparsity() == pytest.approx(0.9, abs=1e-3)
    assert evaluate(model, test).loss < evaluate(one_shot, test).loss
    assert evaluate(model, test).top1 > evaluate(one_shot, test).top1


def test_admm_projects_onto_any_granularity_and_resumes() -> None:
    from prunekit.train import TrainState
    from prunekit.train.admm import ADMM

    model = _mlp()
    admm = ADMM(model, select(model), NM(2, 4), Uniform(None), rho=0.01, every=4)
    fit(model, _flat_data(), None, TrainConfig(epochs=2, lr=0.01, seed=0, progress=False), regularizer=admm,
        pruner=admm, state=TrainState())
    saved = admm.state_dict()
    other = ADMM(_mlp(1), select(_mlp(1)), NM(2, 4), Uniform(None)).load_state_dict(saved)
    assert other.step_count == admm.step_count and other.rho == admm.rho
    masks = admm.hard_prune(enforce=False)
    for name in masks.target_names:
        assert int(masks[name].reshape(-1, 4).sum(1).max()) == 2  # a valid 2:4 pattern
    with pytest.raises(ConfigError, match="every"):
        ADMM(model, select(model), Element(), Uniform(0.5), every=0)


def test_lottery_rounds_prune_the_survivors_and_rewind_exactly() -> None:
    from prunekit import Global, Magnitude, prune
    from prunekit.train import evaluate
    from prunekit.train.lottery import find_ticket, random_reinit_control

    cfg = TrainConfig(epochs=2, lr=0.05, seed=0, progress=False)
    rounds = find_ticket(_mlp(), _flat_data(), _flat_data(256, 3), cfg, rounds=3, rate=0.5, rewind_step=3)
    assert [r.remaining for r in rounds] == pytest.approx([1.0, 0.5, 0.25, 0.125], abs=1e-3)
    for a, b in zip(rounds[1:], rounds[2:]):  # monotone: a pruned weight never comes back
        assert all(not bool((b.masks[n] & ~a.masks[n]).any()) for n in a.masks)
    # rewinding to the last step restores the trained weights and the finished training state:
    # round 1 then equals one-shot magnitude pruning of the trained model, without training
    steps = 2 * len(_flat_data())
    end = find_ticket(_mlp(), _flat_data(), _flat_data(256, 3), cfg, rounds=1, rate=0.5, rewind_step=steps)
    trained = _mlp()
    fit(trained, _flat_data(), None, cfg)
    prune(trained, select(trained), Magnitude(), Element(), Global(0.5), enforce=False)
    assert end[1].top1 == evaluate(trained, _flat_data(256, 3)).top1
    control = random_reinit_control(_mlp, rounds[-1].masks, _flat_data(), _flat_data(256, 3), cfg, seed=5)
    assert control.remaining == pytest.approx(0.125, abs=1e-3)
    with pytest.raises(ConfigError, match="past the end of training"):
        find_ticket(_mlp(), _flat_data(), _flat_data(), cfg, rounds=1, rewind_step=10_000)


@pytest.mark.parametrize("rewind_step", [1, 5])
def test_rewinding_with_nothing_pruned_replays_the_training_exactly(rewind_step: int) -> None:
    """From step k the rewound round sees the weights, momentum, schedule and RNG of step k; pruning
    nothing, it must end where round 0 ended (it would not with the momentum of the last step)."""
    from prunekit.train.lottery import find_ticket

    cfg = TrainConfig(epochs=2, lr=0.05, momentum=0.9, seed=0, progress=False)
    model = _mlp()
    ends: list[dict[str, torch.Tensor]] = []
    find_ticket(model, _flat_data(), _flat_data(64, 3), cfg, rounds=1, rate=1e-6, rewind_step=rewind_step,
                on_round=lambda r: ends.append({k: v.clone() for k, v in model.state_dict().items()}))
    assert rewind_step < 2 * len(_flat_data())  # a step inside the training
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])


def test_iterative_channel_pruning_rounds_make_one_plan_history() -> None:
    from prunekit.checkpoint import load_pruned, save_pruned
    from prunekit.metrics import count_macs
    from prunekit.models import create
    from prunekit.train.iterative import prune_channels_iteratively

    model = create("resnet20").eval()
    x = torch.zeros(1, 3, 32, 32)
    tuned = []
    small, plan, reports = prune_channels_iteratively(model, x, 0.5, rounds=2, target="macs",
                                                      finetune=lambda m, k: tuned.append((k, count_macs(m, x))))
    assert [k for k, _ in tuned] == [1, 2] and len(plan.steps) == 2
    assert 0.5 <= 1 - count_macs(small, x) / count_macs(model, x) < 0.6
    import tempfile
    from pathlib import Path

    path = save_pruned(Path(tempfile.mkdtemp()) / "r.pt", "resnet20", {}, plan, small)
    again, _ = load_pruned(path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), small.state_dict().values()))


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_ratio_rounds_reach_the_one_shot_channel_counts(rounds: int) -> None:
    from prunekit import Magnitude, PerLayer
    from prunekit.models import create
    from prunekit.search.channels import exact_ratios, ratio_rounds
    from prunekit.structure import prune_channels
    from prunekit.train.iterative import prune_channels_iteratively

    torch.manual_seed(0)
    model = create("resnet20").eval()
    x = torch.zeros(1, 3, 32, 32)
    ratios = {"layer1.0.conv1:out": 0.9, "layer2.1.conv1:out": 0.5, "layer3.2.conv1:out": 0.3}
    once, _, _ = prune_channels(model, x, PerLayer(exact_ratios(model, x, ratios)), importance=Magnitude(p=1),
                                target="channels")
    steps = ratio_rounds(model, x, ratios, rounds)
    assert len(steps) == rounds and all(set(r) == set(ratios) for r in steps)
    sizes = []
    small, plan, _ = prune_channels_iteratively(model, x, 0.5, rounds, importance=Magnitude(p=1), target="channels",
                                                allocation=[PerLayer(r) for r in steps],
                                                finetune=lambda m, k: sizes.append(m.layer1[0].conv1.out_channels))
    assert {n: p.shape for n, p in small.named_parameters()} == {n: p.shape for n, p in once.named_parameters()}
    assert len(plan.steps) == rounds
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 2  # 16 channels -> round(1.6) = 2 kept
    if rounds > 1:
        assert sizes[0] < 16  # every round cuts: the first one too
    # no fine-tuning between rounds: the survivors are the one-shot's (magnitude of the same weights)
    assert torch.equal(small.layer2[1].conv1.weight, once.layer2[1].conv1.weight)


def test_iterative_channel_rounds_refuse_a_wrong_number_of_allocations() -> None:
    from prunekit import Uniform
    from prunekit.errors import ConfigError
    from prunekit.models import create
    from prunekit.train.iterative import prune_channels_iteratively

    with pytest.raises(ConfigError, match="2 allocations given for 3 rounds"):
        prune_channels_iteratively(create("resnet20").eval(), torch.zeros(1, 3, 32, 32), 0.5, 3,
                                   finetune=lambda m, k: None, allocation=[Uniform(0.2), Uniform(0.2)])


def test_cut_ratios_read_a_cut_back_and_name_a_model_that_is_not_a_cut_of_it() -> None:
    from prunekit.models import create
    from prunekit.search.channels import cut_ratios, prune_groups

    model = create("resnet20").eval()
    x = torch.zeros(1, 3, 32, 32)
    small, _ = prune_groups(model, x, {"layer1.0.conv1:out": 0.5, "layer3.1.conv1:out": 0.25})
    assert cut_ratios(model, small.eval(), x) == {"layer1.0.conv1:out": 0.5, "layer3.1.conv1:out": 0.25}
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with pytest.raises(ConfigError, match="no prunable counterpart in the smaller model"):
        cut_ratios(model, other, x)

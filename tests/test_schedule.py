"""Schedules and the Pruner: exact sparsity, monotone masks, any loop, resumable state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import Block, Channel, Element, Global, Magnitude, Masks, PerLayer, Uniform, Vector, select
from prunekit.errors import ConfigError
from prunekit.schedule import AGP, Iterative, OneShot, Pruner


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def _exact_count(masks: Masks, group: int) -> int:
    return sum(int((~masks[n]).sum()) for n in masks.target_names)


@pytest.mark.parametrize(
    "granularity, allocation",
    [(Element(), Global(0.9)), (Element(), Uniform(0.9)), (Block(2, 2), Global(0.9)), (Vector(1), Uniform(0.9)),
     (Channel(0), Uniform(0.9))],
    ids=["element-global", "element-uniform", "block-global", "vector-uniform", "channel-uniform"],
)
def test_agp_in_own_loop_reaches_exact_target_with_monotone_masks(granularity, allocation) -> None:
    model = _net()
    targets = select(model)
    schedule = AGP(0.9, start=10, end=80, every=5)
    pruner = Pruner(model, targets, Magnitude(), granularity, allocation, schedule)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(0)
    previous = {n: m.clone() for n, m in pruner.masks.items()}
    seen = []
    for step in range(1, 101):
        opt.zero_grad()
        x = torch.randn(16, 16, generator=gen)
        nn.functional.mse_loss(model(x), torch.zeros(16, 4)).backward()
        opt.step()
        pruner.step()
        assert pruner.sparsity == pytest.approx(schedule(step))
        for n, m in pruner.masks.items():  # monotone: nothing pruned comes back
            assert not bool((m & ~previous[n]).any())
            assert bool((model.get_submodule(n).weight[~m] == 0).all())
        previous = {n: m.clone() for n, m in pruner.masks.items()}
        seen.append(pruner.masks.sparsity())
    total = sum(t.weight.numel() for t in targets)
    group = max(granularity.group_size(t.weight.shape) for t in targets)
    pruned = _exact_count(pruner.masks, group)
    # exact up to one group per layer (uniform rounds per layer; global to one group overall)
    assert abs(pruned - round(0.9 * total)) <= group * len(targets)
    if isinstance(granularity, Element) and isinstance(allocation, Global):
        assert pruned == round(0.9 * total)
    assert seen == sorted(seen)  # sparsity never falls
    assert seen[8] == 0.0 and seen[-1] > 0.89


def test_schedules_values_and_validation() -> None:
    assert [OneShot(0.5)(t) for t in (0, 10)] == [0.5, 0.5]
    it = Iterative(0.9, rounds=2, every=5, start=3)
    assert it(2) == 0.0 and it(3) == pytest.approx(1 - 0.1**0.5) and it(8) == pytest.approx(0.9)
    agp = AGP(0.8, end=10)
    assert agp(0) == 0.0 and agp(10) == pytest.approx(0.8) and agp(5) == pytest.approx(0.8 * (1 - 0.5**3))
    for bad in (lambda: AGP(0.9, end=0), lambda: AGP(1.2, end=5), lambda: Iterative(0.5, rounds=0, every=1),
                lambda: OneShot(0.5, at=-1), lambda: AGP(0.5, end=10, initial=0.7)):
        with pytest.raises(ConfigError):
            bad()


def test_oneshot_at_zero_prunes_on_construction_and_fixed_ratios_refused() -> None:
    model = _net()
    pruner = Pruner(model, None, Magnitude(), Element(), Global(0.5), OneShot(0.5))
    assert pruner.masks.sparsity() == pytest.approx(0.5, abs=1e-3) and pruner.masks.enforced
    with pytest.raises(ConfigError, match="fixed per-layer ratios"):
        Pruner(_net(), None, Magnitude(), Element(), PerLayer({"0": 0.5}), OneShot(0.5))
    with pytest.raises(ConfigError, match="importance must be an Importance"):
        Pruner(_net(), None, "magnitude", Element(), Global(0.5), OneShot(0.5))


def test_pruner_state_round_trip_resumes_identically(tmp_path) -> None:
    def run(steps: int, model: nn.Module, pruner: Pruner, opt: torch.optim.Optimizer, gen) -> None:
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.mse_loss(model(torch.randn(8, 16, generator=gen)), torch.zeros(8, 4)).backward()
            opt.step()
            pruner.step()

    schedule = AGP(0.8, end=30, every=3)
    a = _net()
    pa = Pruner(a, None, Magnitude(), Element(), Global(0.8), schedule)
    oa = torch.optim.SGD(a.parameters(), lr=0.05)
    run(40, a, pa, oa, torch.Generator().manual_seed(1))

    b = _net()
    pb = Pruner(b, None, Magnitude(), Element(), Global(0.8), schedule)
    ob = torch.optim.SGD(b.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    run(13, b, pb, ob, gen)
    torch.save({"model": b.state_dict(), "pruner": pb.state_dict(), "opt": ob.state_dict()}, tmp_path / "s.pt")
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    c = _net(seed=5)
    c.load_state_dict(saved["model"])
    pc = Pruner(c, None, Magnitude(), Element(), Global(0.8), schedule).load_state_dict(saved["pruner"])
    oc = torch.optim.SGD(c.parameters(), lr=0.05)
    oc.load_state_dict(saved["opt"])
    assert pc.step_count == 13
    run(27, c, pc, oc, gen)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    assert all(torch.equal(pa.masks[n], pc.masks[n]) for n in pa.masks)


def test_pruner_in_fit_reaches_the_target_and_resumes_exactly(tmp_path) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from prunekit.train import StopTraining, TrainConfig, TrainState, fit

    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(96, 16, generator=gen), torch.randint(0, 4, (96,), generator=gen))

    def run(stop_at: int | None = None, state: TrainState | None = None, saved: dict | None = None):
        model = _net()
        pruner = Pruner(model, None, Magnitude(), Element(), Global(0.8), AGP(0.8, end=18, every=3))
        if saved is not None:
            model.load_state_dict(saved["model"])
        loader = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1))
        cfg = TrainConfig(epochs=4, lr=0.05, seed=0 if state is None else None, progress=False)
        st = state if state is not None else TrainState()

        def on_step(s: TrainState) -> None:
            if stop_at is not None and s.step == stop_at:
                raise StopTraining

        fit(model, loader, None, cfg, pruner=pruner, state=st, on_step=on_step)
        return model, pruner, st

    full, pf, _ = run()
    assert pf.step_count == 24 and pf.masks.sparsity() == pytest.approx(0.8, abs=1e-3)
    zeros = sum(int((full.get_submodule(n).weight == 0).sum()) for n in pf.masks.target_names)
    assert zeros == round(0.8 * sum(pf.masks[n].numel() for n in pf.masks.target_names))
    cut, _, st = run(stop_at=10)
    torch.save({"model": cut.state_dict(), "state": st.state_dict()}, tmp_path / "s.pt")
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    resumed, pr, _ = run(state=TrainState.from_state_dict(saved["state"]), saved=saved)
    assert pr.step_count == 24
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))

"""NetAdapt: measured latency target, one plan history, latency table, resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.masks import clean_copy
from prunekit.search.netadapt import LatencyTable, netadapt


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
        nn.Conv2d(48, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    ).eval()


X = torch.randn(1, 3, 16, 16)


def _fidelity(reference: nn.Module):
    data = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        ref = reference(data)

    @torch.no_grad()
    def evaluate(m: nn.Module) -> float:
        return -float((m.eval()(data) - ref).pow(2).mean())

    return evaluate


def test_reaches_the_measured_latency_target_with_one_plan() -> None:
    model = _model()
    calls = []
    result = netadapt(model, X, _fidelity(model), latency_ratio=0.6, step=0.25, repeats=7,
                      short_term=lambda m: calls.append(m), threads=1)
    assert result.iterations, "no iteration ran"
    assert result.latency_ratio <= 0.6 or len(result.iterations) == 100
    assert len(result.plan.steps) == len(result.iterations)
    assert len(calls) == sum(len(r.candidates) for r in result.iterations)  # every candidate was fine-tuned
    est = [r.estimated_s for r in result.iterations]
    assert est == sorted(est, reverse=True)  # each iteration cuts the table's estimate
    # the original architecture + the plan rebuilds the final model exactly
    rebuilt = result.plan.apply(clean_copy(model))
    rebuilt.load_state_dict(result.model.state_dict())
    assert torch.equal(rebuilt(X), result.model(X))
    assert all(p.numel() for p in rebuilt.parameters())
    assert sum(p.numel() for p in rebuilt.parameters()) < sum(p.numel() for p in model.parameters())


def test_every_layer_keeps_its_minimum() -> None:
    model = _model()
    result = netadapt(model, X, _fidelity(model), latency_ratio=0.05, step=0.6, min_keep=0.25, repeats=3,
                      max_iterations=8, threads=1)
    assert result.iterations
    for name, m in result.model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels >= 0.25 * model.get_submodule(name).out_channels, name


def test_a_stopped_search_resumes_from_its_state(tmp_path) -> None:
    model = _model()
    state = tmp_path / "netadapt.pt"
    first = netadapt(model, X, _fidelity(model), latency_ratio=0.3, step=0.1, repeats=3, max_iterations=2,
                     state_path=state, threads=1)
    assert len(first.iterations) == 2 and state.is_file()
    second = netadapt(model, X, _fidelity(model), latency_ratio=0.3, step=0.1, repeats=3, max_iterations=3,
                      state_path=state, threads=1)
    assert second.iterations[:2] == first.iterations  # the saved iterations, not redone
    assert len(second.plan.steps) == len(second.iterations) == 3
    assert second.table.measured < first.table.measured + 20  # the saved table was reused, not re-measured
    rebuilt = second.plan.apply(clean_copy(model))
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in second.model.parameters()]


def test_a_state_file_of_something_else_is_refused(tmp_path) -> None:
    from prunekit.errors import CheckpointError

    bad = tmp_path / "x.pt"
    torch.save({"format": "other"}, bad)
    with pytest.raises(CheckpointError, match="not a NetAdapt state file"):
        netadapt(_model(), X, lambda m: 0.0, state_path=bad, repeats=3)


def test_latency_table_measures_once_and_round_trips() -> None:
    table = LatencyTable.for_model(_model(), X, repeats=3, threads=1)
    assert set(table.shapes) == {"0", "3", "6", "10"}
    t = table.lookup("3", 48, 32)
    assert t > 0 and table.measured == 1
    assert table.lookup("3", 48, 32) == t and table.measured == 1
    again = LatencyTable.from_json(table.to_json())
    assert again.times == table.times and again.shapes == table.shapes
    with pytest.raises(ConfigError, match="not a prunekit latency table"):
        LatencyTable.from_json('{"times": {}}')


@pytest.mark.parametrize("kwargs, match", [
    ({"latency_ratio": 1.2}, "latency_ratio must be in"),
    ({"step": 0.0}, "step must be in"),
    ({"min_keep": 1.0}, "min_keep must be in"),
])
def test_bad_arguments_are_named(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        netadapt(_model(), X, lambda m: 0.0, **kwargs)

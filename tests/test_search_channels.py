"""Channel-group ratios: prune named groups, scan them, meet a measured MACs target."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.metrics import count_macs, count_params
from prunekit.search.channels import (
    names,
    prune_groups,
    ratios_for_cost,
    ratios_for_latency,
    ratios_for_macs,
    scan_channels,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 20, 3, padding=1), nn.BatchNorm2d(20), nn.ReLU(),
                         nn.Conv2d(20, 30, 3, padding=1), nn.BatchNorm2d(30), nn.ReLU(),
                         nn.Conv2d(30, 10, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


X = torch.randn(2, 3, 10, 10)
DATA = torch.randn(32, 3, 10, 10)


def _fidelity(model):
    with torch.no_grad():
        ref = model(DATA)

    @torch.no_grad()
    def evaluate(m):
        return -float((m.eval()(DATA) - ref).pow(2).mean())

    return evaluate


def test_prune_groups_removes_exactly_the_asked_fraction_of_the_lowest_channels() -> None:
    model = _model()
    assert names(model, X) == ["0:out", "3:out"]
    small, plan = prune_groups(model, X, {"3:out": 0.4})
    assert (small[0].out_channels, small[3].out_channels, small[6].in_channels) == (20, 18, 18)
    norms = model[3].weight.detach().abs().flatten(1).mean(1) / 1.0
    assert len(plan.steps) == 1 and norms.numel() == 30
    with pytest.raises(ConfigError, match="no prunable channel group '3:ou'.*did you mean"):
        prune_groups(model, X, {"3:ou": 0.4})
    with pytest.raises(ConfigError, match="must be in \\[0, 1\\)"):
        prune_groups(model, X, {"3:out": 1.0})


def test_scan_leaves_the_model_unchanged_and_covers_every_group() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    curves = scan_channels(model, X, _fidelity(model), ratios=(0.25, 0.5, 0.75),
                           progress=lambda n, r, v: seen.append((n, r)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert curves.names == ["0:out", "3:out"] and len(seen) == 6
    assert curves.baseline == 0.0 and all(v <= 0.0 for vs in curves.values.values() for v in vs)
    assert all(curves.sizes[n] > 0 for n in curves.names)


def test_ratios_for_macs_meets_the_measured_target() -> None:
    model = _model()
    curves = scan_channels(model, X, _fidelity(model), ratios=(0.2, 0.4, 0.6, 0.8))
    ratios, small, plan, reached = ratios_for_macs(curves, model, X, 0.5)
    assert reached <= 0.5 and reached == count_macs(small, X) / count_macs(model, X)
    assert reached > 0.3  # not far below the target: the bisection stops near it
    assert set(ratios) <= set(curves.names)
    with pytest.raises(ConfigError, match="above 0.01"):
        ratios_for_macs(curves, model, X, 0.01)


def test_ratios_for_cost_meets_any_measured_budget() -> None:
    model = _model()
    curves = scan_channels(model, X, _fidelity(model), ratios=(0.2, 0.4, 0.6, 0.8))
    dense = count_params(model)
    ratios, small, _, reached = ratios_for_cost(curves, model, X, lambda m: count_params(m) / dense, 0.6, "params")
    assert reached == count_params(small) / dense and 0.4 < reached <= 0.6
    with pytest.raises(ConfigError, match="params ratio"):
        ratios_for_cost(curves, model, X, lambda m: 1.0, 1.5, "params")


def test_ratios_for_latency_reaches_the_measured_target() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(64, 10, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.randn(8, 3, 32, 32)
    curves = scan_channels(model, x, _fidelity_on(model, x), ratios=(0.25, 0.5, 0.75))
    ratios, small, _, reached = ratios_for_latency(curves, model, x, 0.7, repeats=5, threads=1, iterations=6)
    assert reached <= 0.7 and count_macs(small, x) < count_macs(model, x)


def _fidelity_on(model, x):
    with torch.no_grad():
        ref = model(x)

    @torch.no_grad()
    def evaluate(m):
        return -float((m.eval()(x) - ref).pow(2).mean())

    return evaluate

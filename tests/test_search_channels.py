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


@pytest.mark.parametrize("model_name", ["resnet20", "vgg11_bn", "mobilenetv2"])
def test_exact_ratios_make_prune_channels_cut_what_prune_groups_cuts(model_name) -> None:
    """Searched per-group ratios handed to prune_channels (PerLayer keyed by group names) give the same small
    model as prune_groups: same shapes and weights, so the budget the search met is met."""
    from prunekit.allocation import PerLayer
    from prunekit.models import create
    from prunekit.search.channels import exact_ratios
    from prunekit.structure import prune_channels

    torch.manual_seed(0)
    model = create(model_name).eval()
    x = torch.zeros(1, 3, 32, 32)
    groups = names(model, x)
    ratios = {g: (0.1 + 0.37 * i) % 0.9 for i, g in enumerate(groups[::2])}
    ref, _ = prune_groups(model, x, ratios)
    exact = exact_ratios(model, x, ratios)
    assert set(exact) == set(ratios) and all(abs(exact[g] - ratios[g]) < 0.5 for g in exact)
    small, _, report = prune_channels(model, x, PerLayer(exact), target="channels")
    assert report.verified is not None
    a, b = ref.state_dict(), small.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def test_group_names_as_perlayer_keys_touch_only_that_group() -> None:
    from prunekit.allocation import PerLayer
    from prunekit.structure import prune_channels

    model = _model()
    small, _, _ = prune_channels(model, X, PerLayer({"3:out": 0.5}), target="channels")
    assert (small[0].out_channels, small[3].out_channels) == (20, 15)
    with pytest.raises(ConfigError, match="PerLayer"):
        prune_channels(model, X, PerLayer({"3:ou": 0.5}), target="channels")


def test_prune_groups_never_empties_a_module_of_a_group_spanning_stages() -> None:
    """The option-A residual stream is one group of 64 units whose first stage holds 16: cutting 90 % of it by
    any ranking leaves every module at least one channel (and prune_channels cuts the same)."""
    from prunekit.allocation import PerLayer
    from prunekit.models import create
    from prunekit.search.channels import exact_ratios
    from prunekit.structure import prune_channels

    class Stage3High:  # the stream units of the first stage (members in every stage) rank lowest
        def scores(self, target):
            return torch.ones_like(target.weight) * (100.0 if target.name.startswith("layer3") else 1.0)

    torch.manual_seed(0)
    model = create("resnet20").eval()
    x = torch.zeros(1, 3, 32, 32)
    small, _ = prune_groups(model, x, {"conv1:out": 0.9}, Stage3High())
    assert small.conv1.out_channels == 1 and small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert all(m.out_channels >= 1 for m in small.modules() if isinstance(m, nn.Conv2d))
    exact = exact_ratios(model, x, {"conv1:out": 0.9}, Stage3High())
    same, _, _ = prune_channels(model, x, PerLayer(exact), Stage3High(), target="channels")
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), same.state_dict().values()))

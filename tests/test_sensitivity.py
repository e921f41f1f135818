"""Sensitivity analysis: one layer pruned at a time, weights restored exactly, curves -> per-layer ratios."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import NM, Element, Magnitude, select
from prunekit.errors import ConfigError
from prunekit.sensitivity import SensitivityCurves, ratios_for, scan


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def test_scan_measures_each_layer_alone_and_restores_the_weights() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(128, 16)
    ref = model(x).detach()
    seen = []

    @torch.no_grad()
    def fidelity(m: nn.Module) -> float:
        zeros = [int((t.weight == 0).sum()) for t in select(m)]
        seen.append(sum(z > 0 for z in zeros))  # how many layers are pruned during this probe
        return -float((m(x) - ref).pow(2).mean())

    curves = scan(model, select(model), Magnitude(), Element(), fidelity, ratios=(0.2, 0.5, 0.8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # bit-exact afterwards
    assert seen[0] == 0 and all(s == 1 for s in seen[1:])  # baseline dense, then exactly one layer per probe
    assert curves.baseline == 0.0 and curves.names == ["0", "2", "4"]
    for name in curves.names:  # pruning more of one layer costs more
        assert curves.drop(name) == sorted(curves.drop(name))
    assert curves.sizes == {"0": 512, "2": 1024, "4": 128}


def test_ratios_come_from_the_smallest_tolerated_drop() -> None:
    curves = SensitivityCurves([0.2, 0.4, 0.6, 0.8], 1.0,
                               {"a": [1.0, 1.0, 0.9, 0.5], "b": [1.0, 0.8, 0.5, 0.1]}, {"a": 100, "b": 100})
    alloc = ratios_for(curves, 0.5)
    assert alloc.ratios == {"a": 0.6, "b": 0.4}  # T = 0.2: a drops 0.1 at 0.6, b 0.2 at 0.4
    assert curves.overall_sparsity(alloc.ratios) == pytest.approx(0.5)
    assert ratios_for(curves, 0.3).ratios == {"a": 0.4, "b": 0.2}  # no drop at all suffices
    # steps overshoot: for 0.2 overall the bisection gives a 0.4 / b 0.2 (0.3); trimming steps back a
    assert ratios_for(curves, 0.2).ratios == {"a": 0.2, "b": 0.2}
    with pytest.raises(ConfigError, match="reach at most 0.800"):
        ratios_for(curves, 0.85)


def test_curves_round_trip_and_plot(tmp_path) -> None:
    model = _model()
    x = torch.randn(32, 16)
    curves = scan(model, select(model), Magnitude(), NM(2, 4), lambda m: float(m(x).abs().mean().detach()),
                  ratios=(0.5,))
    path = curves.save(tmp_path / "sens.json")
    again = SensitivityCurves.from_json(path.read_text())
    assert again == curves
    csv = (tmp_path / "sens.csv").read_text().splitlines()
    assert csv[0] == "layer,size,0.5" and len(csv) == 2 + len(curves.names)
    pytest.importorskip("matplotlib")
    png = curves.plot(tmp_path / "sens.png", ylabel="mean |output|")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="cannot read sensitivity curves"):
        SensitivityCurves.from_json('{"format": "other"}')
    with pytest.raises(ConfigError, match="increasing"):
        scan(model, select(model), Magnitude(), Element(), lambda m: 0.0, ratios=(0.5, 0.2))

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


class _Stop(Exception):
    pass


def _channel_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).eval()


def _scan_masks(model, evaluate, **kw):
    return scan(model, select(model), Magnitude(), Element(), evaluate, ratios=(0.3, 0.6), **kw)


def _scan_channels(model, evaluate, **kw):
    from prunekit.search.channels import scan_channels

    return scan_channels(model, torch.randn(1, 3, 8, 8), evaluate, ratios=(0.3, 0.6), **kw)


SCANS = {"masks": (_model, lambda: torch.randn(64, 16), _scan_masks),
         "channels": (_channel_model, lambda: torch.randn(16, 3, 8, 8), _scan_channels)}


@pytest.mark.parametrize("kind", sorted(SCANS))
def test_an_interrupted_scan_continues_where_it_stopped(kind: str, tmp_path) -> None:
    make, data, run = SCANS[kind]
    model = make()
    torch.manual_seed(1)
    x = data()
    ref = model(x).detach()
    calls = []

    @torch.no_grad()
    def fidelity(m: nn.Module) -> float:
        calls.append(1)
        return -float((m(x) - ref).pow(2).mean())

    whole = run(model, fidelity)
    per_target = (len(calls) - 1) // len(whole.names)  # probes per target (the first call is the baseline)
    state = tmp_path / "scan.state"
    seen: list[str] = []

    def stop_at_second(name: str, r: float, v: float) -> None:
        if name not in seen:
            seen.append(name)
        if len(seen) == 2:
            raise _Stop

    with pytest.raises(_Stop):
        run(model, fidelity, progress=stop_at_second, state_path=state)
    assert state.is_file()  # the two finished targets are on disk
    calls.clear()
    again = run(model, fidelity, state_path=state)
    assert len(calls) == per_target * (len(whole.names) - 2)  # no baseline, no finished target again
    assert again.values == whole.values and again.baseline == whole.baseline and again.sizes == whole.sizes
    calls.clear()
    assert run(model, fidelity, state_path=state).values == whole.values and not calls  # all done: nothing runs


@pytest.mark.parametrize("kind", sorted(SCANS))
def test_a_scan_state_from_another_scan_is_refused(kind: str, tmp_path) -> None:
    make, data, run = SCANS[kind]
    model = make()
    state = tmp_path / "scan.state"
    run(model, lambda m: 0.5, state_path=state)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # other weights: the state does not belong to this model
    with pytest.raises(ConfigError, match=r"scan\.state was written by another scan \(model differs.*delete it"):
        run(model, lambda m: 0.5, state_path=state)
    state.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cannot read the sensitivity scan state .*scan\.state.*delete it"):
        run(model, lambda m: 0.5, state_path=state)
    state.write_text('{"format": "something else"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="is not a scan state file"):
        run(model, lambda m: 0.5, state_path=state)


def test_a_scan_state_for_other_ratios_is_refused(tmp_path) -> None:
    model = _model()
    state = tmp_path / "s.state"
    scan(model, select(model), Magnitude(), Element(), lambda m: 0.5, ratios=(0.3, 0.6), state_path=state)
    with pytest.raises(ConfigError, match=r"ratios differs: \[0\.3, 0\.6\] there, \[0\.3, 0\.7\] now"):
        scan(model, select(model), Magnitude(), Element(), lambda m: 0.5, ratios=(0.3, 0.7), state_path=state)


def test_a_scan_state_for_other_validation_data_is_refused(tmp_path) -> None:
    from prunekit.probe import Probe

    model = _model()
    torch.manual_seed(2)
    batches = [(torch.randn(32, 16), torch.randint(0, 4, (32,)))]
    state = tmp_path / "s.state"
    first = scan(model, select(model), Magnitude(), Element(), Probe(model, batches), ratios=(0.5,), state_path=state)
    again = scan(model, select(model), Magnitude(), Element(), Probe(model, batches), ratios=(0.5,), state_path=state)
    assert again.values == first.values
    other = [(batches[0][0] + 1, batches[0][1])]
    with pytest.raises(ConfigError, match=r"another scan \(data differs"):
        scan(model, select(model), Magnitude(), Element(), Probe(model, other), ratios=(0.5,), state_path=state)

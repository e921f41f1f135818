"""The typed component registry: every entry builds, parameters are typed, errors list the choices."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import criteria, registry
from prunekit.cli.main import main
from prunekit.errors import ConfigError
from prunekit.targets import select

# parameters for the entries that have required ones
REQUIRED = {
    ("granularity", "block"): "block:h=2,w=2", ("granularity", "nm"): "nm:n=2,m=4", ("granularity", "lb"): "lb:num_pe=2",
    ("allocation", "uniform"): "uniform:sparsity=0.5", ("allocation", "global"): "global:sparsity=0.5",
    ("schedule", "oneshot"): "oneshot:sparsity=0.5", ("schedule", "iterative"): "iterative:sparsity=0.5,rounds=2,every=3",
    ("schedule", "agp"): "agp:final=0.5,end=10",
}  # fmt: skip
ENTRIES = [(kind, name) for kind in registry.KINDS for name in registry.names(kind)]


@pytest.mark.parametrize("kind, name", ENTRIES, ids=[f"{k}-{n}" for k, n in ENTRIES])
def test_every_entry_builds_from_its_spec(kind: str, name: str) -> None:
    spec = REQUIRED.get((kind, name), name)
    obj = registry.build(kind, spec)
    assert obj is not None
    if kind == "criterion":  # and scores a layer (calibrated on made-up batches where needed)
        model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(36, 3))
        targets = select(model)
        data = [(torch.randn(4, 2, 5, 5), torch.randint(0, 3, (4,))) for _ in range(2)]
        imp = criteria.build(spec, model, targets, data, 2)
        s = imp.scores(targets[0])
        assert s.shape == model[0].weight.shape and bool((s >= 0).all())
    if kind == "schedule":
        assert 0.0 <= obj(0) <= obj(100) < 1.0


def test_parameters_are_typed_and_named() -> None:
    assert registry.build("criterion", "magnitude:p=3").p == 3.0
    assert registry.build("criterion", {"name": "obd", "samples": 2, "method": "hutchinson"}).samples == 2
    assert repr(registry.build("granularity", "nm:2:4")) == repr(registry.build("granularity", "nm:n=2,m=4"))
    with pytest.raises(ConfigError, match="parameter samples must be an int, got 'two'"):
        registry.build("criterion", "obd:samples=two")
    with pytest.raises(ConfigError, match=r"parameter method must be one of \['fisher', 'hutchinson'\]"):
        registry.build("criterion", "obd:method=hutch")
    with pytest.raises(ConfigError, match="has no parameter 'sample'.*did you mean: 'samples'"):
        registry.build("criterion", "obd:sample=2")
    with pytest.raises(ConfigError, match="needs parameter final"):
        registry.build("schedule", "agp:end=5")
    with pytest.raises(ConfigError, match="choose one of: agp, iterative, oneshot; did you mean: 'agp'"):
        registry.build("schedule", "apg")
    with pytest.raises(ConfigError, match="parameter p must be a float, got 'nan'"):
        registry.build("criterion", "magnitude:p=nan")
    with pytest.raises(ConfigError, match="cannot parse"):
        registry.build("criterion", "magnitude:p")
    with pytest.raises(ConfigError, match="unknown component kind"):
        registry.names("optimizer")


def test_a_registered_component_is_usable_by_name_everywhere() -> None:
    from prunekit.importance import Magnitude

    registry.register("criterion", "cube", Magnitude, fixed={"p": 3})
    try:
        assert "cube" in criteria.CRITERIA and repr(criteria.make("cube")) == "Magnitude(p=3)"
    finally:
        registry.unregister("criterion", "cube")
    assert "cube" not in criteria.CRITERIA


def test_cli_criterion_with_parameters(tmp_path, capsys) -> None:
    args = ["prune", "--model", "digits_cnn", "--dataset", "digits", "--sparsity", "0.5"]
    assert main([*args, "--criterion", "magnitude:p=2", "--out", str(tmp_path / "a.pt")]) == 0
    assert "Magnitude(p=2)" in capsys.readouterr().out
    assert main([*args, "--criterion", "magnitude:q=2", "--out", str(tmp_path / "b.pt")]) == 1
    assert "has no parameter 'q'" in capsys.readouterr().err
    assert main([*args, "--criterion", "magnitud", "--out", str(tmp_path / "b.pt")]) == 1
    err = capsys.readouterr().err
    assert "did you mean: 'magnitude'" in err and "taylor" in err  # the full list too

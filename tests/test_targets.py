"""Target selection: type filters, include/exclude globs, errors for patterns matching nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models import create
from prunekit.targets import Target, select


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)
    )


def test_default_types_are_conv_and_linear_in_module_order() -> None:
    ts = select(_net())
    assert [t.name for t in ts] == ["0", "4"]
    assert isinstance(ts[0], Target) and ts[0].weight is ts[0].module.weight
    assert tuple(ts[1].shape) == (10, 144)


def test_type_filter_and_globs_on_resnet() -> None:
    model = create("resnet20")
    convs = select(model, types=(nn.Conv2d,))
    assert all(isinstance(t.module, nn.Conv2d) for t in convs) and len(convs) == 19
    layer1 = select(model, include="layer1.*")
    assert layer1 and all(t.name.startswith("layer1.") for t in layer1)
    no_fc = select(model, exclude=["linear", "conv1"])
    assert {t.name for t in no_fc} == {t.name for t in select(model)} - {"linear", "conv1"}
    both = select(model, include=["layer2.*", "layer3.*"], exclude="*.conv2")
    assert both and all(t.name.endswith("conv1") for t in both)


def test_pattern_matching_nothing_lists_close_matches() -> None:
    model = create("resnet20")
    with pytest.raises(ConfigError, match=r"include pattern 'layer1.0.conv' .*did you mean.*layer1.0.conv1"):
        select(model, include="layer1.0.conv")
    with pytest.raises(ConfigError, match="exclude pattern 'fcc'"):
        select(model, exclude="fcc")


def test_everything_excluded_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no layer left"):
        select(_net(), exclude="*")


def test_other_parameter_name() -> None:
    ts = select(_net(), types=(nn.Linear,), param_name="bias")
    assert ts[0].param_name == "bias" and ts[0].weight.shape == (10,)
    assert torch.equal(ts[0].weight, ts[0].module.bias)

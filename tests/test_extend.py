"""A user's own module type, registered with a rule and a handler, prunes like a built-in layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.allocation import Uniform
from prunekit.errors import ConfigError
from prunekit.structure import (
    Handler,
    MaskSpec,
    ParamSlice,
    channelwise,
    prune_channels,
    register_module,
)


class Gain(nn.Module):
    """A learnable per-channel gain and shift, written by a user (not a BatchNorm)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.rand(c) + 0.5)
        self.b = nn.Parameter(torch.randn(c) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        return x * self.g.view(1, -1, 1, 1) + self.b.view(1, -1, 1, 1)


class GainHandler(Handler):
    types = (Gain,)

    def axes(self, module: nn.Module) -> dict[str, int]:
        return {"feat": module.g.numel()}

    def slices(self, module: nn.Module, axis: str) -> list[ParamSlice]:
        return [ParamSlice("g", 0, kind="norm"), ParamSlice("b", 0, kind="bias")]

    def mask(self, module: nn.Module, axis: str) -> MaskSpec:
        return MaskSpec("out", 1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Gain(8), nn.ReLU(), nn.Conv2d(8, 8, 3), Gain(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def test_unregistered_module_is_refused_then_registered_one_prunes_and_verifies(monkeypatch) -> None:
    from prunekit.structure import rules, surgery

    monkeypatch.setattr(rules, "MODULE_RULES", list(rules.MODULE_RULES))  # registration undone after the test
    monkeypatch.setattr(surgery, "HANDLERS", list(surgery.HANDLERS))
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ConfigError, match=r"pinned \(.*tensor attribute '1.g' used in forward.*register_module"):
        prune_channels(_net(), x, Uniform(0.5))  # without a rule its channels cannot be followed: kept whole
    register_module(Gain, channelwise("feat"), GainHandler())
    model = _net()
    small, plan, report = prune_channels(model, x, Uniform(0.5))  # verify=True: small == masked model
    assert report.verified is not None and report.verified.max_abs_diff < 1e-5
    assert small[1].g.numel() == 4 and small[3].in_channels == 4
    assert plan.apply(_net()).state_dict().keys() == small.state_dict().keys()
    with pytest.raises(TypeError, match="Handler instance"):
        register_module(Gain, channelwise(), object())  # type: ignore[arg-type]


def test_option_a_shortcut_uses_the_public_mechanism() -> None:
    import prunekit.nn
    from prunekit.structure import rules, surgery

    assert any(t is prunekit.nn.PadShortcut for t, _ in rules.MODULE_RULES)
    assert any(isinstance(h, prunekit.nn.PadShortcutHandler) for h in surgery.HANDLERS)
    source = open(rules.__file__).read() + open(surgery.__file__).read()
    assert "prunekit.nn" not in source and "prunekit.models" not in source  # structure knows neither

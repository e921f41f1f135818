"""Every registered model builds, runs on its input size, and round-trips its state dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models import available, create

INPUT_SHAPES = {"digits_cnn": (1, 8, 8), "lenet300_100": (1, 28, 28), "lenet5": (1, 28, 28)}
BATCH = 2





def input_for(name: str) -> torch.Tensor:
    return torch.randn(BATCH, *INPUT_SHAPES.get(name, (3, 32, 32)), generator=torch.Generator().manual_seed(0))


def test_zoo_names_registered() -> None:
    expected = {"vgg11_bn", "vgg16_bn", "vgg19_bn", "mobilenetv2", "lenet300_100", "lenet5", "digits_cnn"}
    assert expected <= set(available())


@pytest.mark.parametrize("name", available())
def test_forward_shape(name: str) -> None:
    model = create(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(input_for(name)).shape == (BATCH, 7)


@pytest.mark.parametrize("name", available())
def test_state_dict_round_trip(name: str) -> None:
    torch.manual_seed(0)
    src = create(name).eval()
    with torch.no_grad():  # perturb weights and BN running stats so every entry is checked
        for t in src.state_dict().values():
            if t.is_floating_point():
                t.add_(0.01 * torch.rand_like(t))
    torch.manual_seed(1)
    dst = create(name).eval()
    before = dst.state_dict()
    assert any(not torch.equal(v, before[k]) for k, v in src.state_dict().items())
    dst.load_state_dict(src.state_dict())
    x = input_for(name)[:1]
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


@pytest.mark.parametrize(
    "name,params",
    [("lenet300_100", 266_610), ("lenet5", 61_706), ("vgg16_bn", 14_724_042), ("mobilenetv2", 2_236_682)],
)
def test_param_counts(name: str, params: int) -> None:
    assert sum(p.numel() for p in create(name).parameters()) == params


def test_vgg_is_plain_features_plus_classifier() -> None:
    model = create("vgg11_bn")
    assert isinstance(model.features, nn.Sequential)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8 and sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 512
    assert len([m for m in create("vgg19_bn").features if isinstance(m, nn.Conv2d)]) == 16


def test_mobilenetv2_width_and_depthwise() -> None:
    half = create("mobilenetv2", width_mult=0.5)
    full = create("mobilenetv2")
    assert sum(p.numel() for p in half.parameters()) < sum(p.numel() for p in full.parameters())
    depthwise = [m for m in full.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    with torch.no_grad():  # stride-1 stem and first stages: 32x32 -> 4x4 before pooling
        assert full.eval().features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (4, 4)


def test_mobilenetv2_bad_width() -> None:
    with pytest.raises(ConfigError, match="width_mult"):
        create("mobilenetv2", width_mult=0)


def test_lenet5_flatten_owns_channel_features() -> None:
    """Zeroing conv2's channel c changes only fc1 inputs c*25..c*25+24."""
    model = create("lenet5").eval()
    x = torch.randn(1, 1, 28, 28)
    feats = {}
    model.fc1.register_forward_hook(lambda m, inp, out: feats.__setitem__("in", inp[0].clone()))
    with torch.no_grad():
        model(x)
        before = feats["in"]
        model.conv2.weight[3].zero_()
        model.conv2.bias[3] = -1e3  # ReLU makes the channel exactly 0
        model(x)
    changed = (feats["in"] != before).nonzero()[:, 1]
    assert changed.numel() > 0 and changed.min() >= 75 and changed.max() < 100


def test_bad_config_is_config_error() -> None:
    with pytest.raises(ConfigError, match="lenet5"):
        create("lenet5", widthh=2)

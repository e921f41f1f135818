"""NISP importance propagation (Yu et al. 2018)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.importance.base import Importance
from prunekit.regression import NISP, nisp_channel_scores
from prunekit.targets import select


def _two_layer(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def test_two_layer_linear_net_matches_hand_propagation():
    net = _two_layer()
    batches = [torch.randn(8, 5) for _ in range(3)]
    imp = NISP().calibrate(net, batches, num_batches=3)
    with torch.no_grad():
        s2 = torch.cat([net(b) for b in batches]).abs().mean(0).double()  # FRL scores: mean |logit|
        s1 = net[2].weight.abs().double().T @ s2  # propagate through |W2|
    torch.testing.assert_close(imp.final_response_scores, s2)
    torch.testing.assert_close(imp.channel_scores("2"), s2)
    torch.testing.assert_close(imp.channel_scores("0"), s1)
    t0, t2 = select(net)
    sc = imp.scores(t0)  # per-layer normalised (mean 1), broadcast over the weight
    assert sc.shape == net[0].weight.shape and sc.dtype == torch.float32 and torch.all(sc >= 0)
    torch.testing.assert_close(sc, (s1 / s1.mean()).float()[:, None].expand(4, 5))
    torch.testing.assert_close(imp.scores(t2)[:, 0], (s2 / s2.mean()).float())
    assert isinstance(imp, Importance)


def test_nisp_with_negative_weights_and_inputs_is_sign_free():
    net = _two_layer(1)
    with torch.no_grad():
        net[2].weight.copy_(-net[2].weight.abs())  # all negative: a signed backprop would give < 0
    imp = NISP(frl_scores="uniform").calibrate(net, [torch.randn(4, 5)], num_batches=1)
    torch.testing.assert_close(imp.channel_scores("0"), net[2].weight.detach().abs().sum(0).double())


def test_conv_bn_pool_chain_with_1x1_convs_is_exact():
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 1),
        nn.BatchNorm2d(6),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    ).eval()
    s_n = torch.tensor([1.0, 3.0])
    scores = nisp_channel_scores(net, torch.randn(1, 3, 8, 8), "9", s_n)
    s_conv2 = net[9].weight.detach().abs().T @ s_n  # BN / ReLU6 / pooling are identity
    s_conv1 = net[4].weight.detach().abs().flatten(1).T @ s_conv2
    s_conv1, s_conv2 = s_conv1.double(), s_conv2.double()
    torch.testing.assert_close(scores["9"], s_n.double())
    torch.testing.assert_close(scores["4"], s_conv2)
    torch.testing.assert_close(scores["0"], s_conv1)


def test_residual_add_sums_both_branches():
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3, bias=False)
            self.b = nn.Linear(3, 3, bias=False)
            self.fc = nn.Linear(3, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.fc(torch.relu(h + self.b(torch.relu(h))))

    torch.manual_seed(3)
    net = Res()
    scores = nisp_channel_scores(net, torch.randn(2, 3), "fc", torch.ones(1))
    s_top = net.fc.weight.detach().abs()[0]  # (3,)
    expected_a = (s_top + net.b.weight.detach().abs().T @ s_top).double()
    torch.testing.assert_close(scores["a"], expected_a)
    torch.testing.assert_close(scores["b"], s_top.double())


def test_resnet_scores_every_conv_and_leaves_model_untouched():
    from prunekit.models import create

    model = create("resnet20").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = [(torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))]
    imp = NISP().calibrate(model, loader, num_batches=1)
    for t in select(model):
        s = imp.scores(t)
        assert s.shape == t.weight.shape and torch.all(s > 0) and torch.all(torch.isfinite(s)), t.name
        assert torch.all(torch.isfinite(imp.channel_scores(t.name)))
    # raw scores grow geometrically towards the input; they must not overflow
    assert float(imp.channel_scores("conv1").mean()) > 1e6 * float(imp.channel_scores("linear").mean())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert not model.training


def test_errors():
    net = _two_layer()
    t0 = select(net)[0]
    with pytest.raises(ConfigError, match="needs calibration data"):
        NISP().scores(t0)
    with pytest.raises(ConfigError, match="unknown frl_scores"):
        NISP(frl_scores="max")
    with pytest.raises(ConfigError, match="final_layer 'fc'"):
        NISP(final_layer="fc").calibrate(net, [torch.randn(2, 5)], num_batches=1)
    with pytest.raises(ConfigError, match="final_scores has 2 entries"):
        nisp_channel_scores(net, torch.randn(1, 5), "2", torch.ones(2))

"""Data-driven and structure-aware importance criteria: BN scale, Taylor, OBD, APoZ, mean, feature."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.criteria import CRITERIA, build, needs_data
from prunekit.errors import ConfigError, DataError
from prunekit.importance import (
    OBD,
    APoZ,
    BNScale,
    FeatureReconstruction,
    MeanActivation,
    Taylor,
    following_batchnorm,
)
from prunekit.models import create
from prunekit.targets import Target, select


def _batches(n: int, b: int, shape: tuple[int, ...], classes: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn((b, *shape), generator=g), torch.randint(0, classes, (b,), generator=g)) for _ in range(n)]


class ConvBN(nn.Module):
    """conv -> bn -> relu -> conv2 -> bn2, with BN modules declared *before* the convs and a decoy BN."""

    def __init__(self) -> None:
        super().__init__()
        self.decoy = nn.BatchNorm2d(4)  # same width as conv's output but never consumes it
        self.bn2 = nn.BatchNorm2d(3)
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(4, 3, 1)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return self.head(y.mean(dim=(2, 3)))


def _set_gammas(m: ConvBN) -> None:
    with torch.no_grad():
        m.bn.weight.copy_(torch.tensor([0.5, -2.0, 1.5, 0.0]))
        m.bn2.weight.copy_(torch.tensor([-1.0, 3.0, 0.25]))
        m.decoy.weight.fill_(100.0)


# -- BN scale ------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_data", [False, True])
def test_bn_scale_broadcasts_abs_gamma_of_the_consuming_bn(with_data: bool) -> None:
    m = ConvBN()
    _set_gammas(m)
    targets = select(m, types=(nn.Conv2d,))
    loader = _batches(1, 2, (2, 5, 5), 2) if with_data else None
    imp = BNScale().calibrate(m, loader, 1, targets)
    s0, s1 = imp.scores(targets[0]), imp.scores(targets[1])
    assert s0.shape == m.conv.weight.shape and s1.shape == m.conv2.weight.shape
    assert torch.equal(s0, torch.tensor([0.5, 2.0, 1.5, 0.0]).view(4, 1, 1, 1).expand(4, 2, 3, 3))
    assert torch.equal(s1, torch.tensor([1.0, 3.0, 0.25]).view(3, 1, 1, 1).expand(3, 4, 1, 1))


def test_bn_pairing_agrees_between_trace_and_hooks_on_resnet() -> None:
    model = create("resnet20", option="B")
    targets = select(model)
    traced = following_batchnorm(model, targets)
    hooked = following_batchnorm(model, targets, torch.randn(2, 3, 32, 32))
    names = {id(mod): name for name, mod in model.named_modules()}
    as_names = {k: (names[id(v)] if v is not None else None) for k, v in traced.items()}
    assert as_names == {k: (names[id(v)] if v is not None else None) for k, v in hooked.items()}
    assert as_names["conv1"] == "bn1"
    assert as_names["layer2.0.conv2"] == "layer2.0.bn2"
    assert as_names["layer2.0.shortcut.0"] == "layer2.0.shortcut.1"
    assert as_names["linear"] is None


def test_bn_scale_layer_without_bn_raises_naming_it() -> None:
    m = ConvBN()
    targets = select(m)
    imp = BNScale().calibrate(m, None, 1, targets)
    with pytest.raises(ConfigError, match="'head' has no BatchNorm"):
        imp.scores(targets[-1])


# -- Taylor / OBD -----------------------------------------------------------------------------------


def _linear_grad(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dCE/dW of a linear classifier, by hand: (softmax - onehot)^T x / B."""
    p = torch.softmax(x @ lin.weight.detach().T + lin.bias.detach(), dim=1)  # (B, K)
    return (p - F.one_hot(y, p.shape[1]).float()).T @ x / x.shape[0]  # (K, D)


def test_taylor_equals_abs_w_times_grad_by_hand() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 3))
    data = _batches(2, 8, (5,), 3)
    t = select(m)[0]
    one = Taylor().calibrate(m, data, 1, [t]).scores(t)
    w = m[0].weight.detach()
    torch.testing.assert_close(one, (w * _linear_grad(m[0], *data[0])).abs())
    two = Taylor().calibrate(m, data, 2, [t]).scores(t)
    expected = ((w * _linear_grad(m[0], *data[0])).abs() + (w * _linear_grad(m[0], *data[1])).abs()) / 2
    torch.testing.assert_close(two, expected)


def test_obd_fisher_is_half_mean_squared_grad_times_w2() -> None:
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(4, 3))
    data = _batches(3, 6, (4,), 3, seed=1)
    t = select(m)[0]
    s = OBD(method="fisher").calibrate(m, data, 3, [t]).scores(t)
    fisher = sum(_linear_grad(m[0], x, y).pow(2) for x, y in data) / 3
    torch.testing.assert_close(s, 0.5 * fisher * m[0].weight.detach().pow(2))


def _half_sum_squares(out: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
    return 0.5 * out.pow(2).sum()


def test_hutchinson_is_exact_for_a_diagonal_hessian() -> None:
    # loss = 1/2 sum_b,o (d_b W[o, b])^2 with inputs x_b = d_b e_b: Hessian diagonal, h[o, j] = d_j^2
    d = torch.tensor([1.0, 2.0, 0.5, 3.0])
    m = nn.Sequential(nn.Linear(4, 2, bias=False))
    data = [(torch.diag(d), torch.zeros(4, dtype=torch.long))]
    t = select(m)[0]
    imp = OBD(method="hutchinson", samples=1, loss_fn=_half_sum_squares).calibrate(m, data, 1, [t])
    torch.testing.assert_close(imp.hessian_diagonal(t), d.pow(2).expand(2, 4))
    torch.testing.assert_close(imp.scores(t), 0.5 * d.pow(2) * m[0].weight.detach().pow(2))


def test_hutchinson_approximates_the_exact_hessian_diagonal() -> None:
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(3, 2))
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    t = select(m)[0]
    imp = OBD(method="hutchinson", samples=1500).calibrate(m, [(x, y)], 1, [t])

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(x @ w.T + m[0].bias.detach(), y)

    exact = torch.autograd.functional.hessian(loss_of, m[0].weight.detach()).reshape(6, 6).diagonal().reshape(2, 3)
    est = imp.hessian_diagonal(t)
    assert (est - exact).abs().max() < 0.1 * exact.abs().max()
    assert not torch.allclose(est, exact, atol=1e-6)  # it is an estimate, not the exact value


def test_gradient_criteria_need_labels() -> None:
    m = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(DataError, match="labelled calibration batches"):
        Taylor().calibrate(m, [torch.randn(4, 3)], 1)


def test_obd_rejects_unknown_method() -> None:
    with pytest.raises(ConfigError, match="use 'fisher' or 'hutchinson'"):
        OBD(method="exact")


# -- APoZ / mean activation ---------------------------------------------------------------------------


def _identity_conv(c: int) -> nn.Conv2d:
    conv = nn.Conv2d(c, c, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(c).view(c, c, 1, 1))
        conv.bias.zero_()
    return conv


def test_apoz_counts_zero_fraction_after_relu() -> None:
    m = nn.Sequential(_identity_conv(3), nn.ReLU())
    x = torch.ones(2, 3, 2, 2)  # 8 values per channel
    x[0, 0, 0, :] = -1.0  # channel 0: 2/8 zeros
    x[0, 1] = 0.0  # channel 1: 4/8 zeros (exact zeros count)
    x[:, 2] = -5.0  # channel 2: all zero
    t = select(m)[0]
    imp = APoZ().calibrate(m, [x, x], 2, [t])
    torch.testing.assert_close(imp.apoz(t), torch.tensor([0.25, 0.5, 1.0]))
    assert torch.equal(imp.scores(t), torch.tensor([0.75, 0.5, 0.0]).view(3, 1, 1, 1).expand(3, 3, 1, 1))


def test_apoz_and_mean_are_measured_after_the_following_bn() -> None:
    bn = nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.0, -10.0]))  # channel 1 always negative after BN
        bn.weight.copy_(torch.tensor([2.0, 1.0]))
    m = nn.Sequential(_identity_conv(2), bn).eval()
    x = torch.ones(1, 2, 2, 2)
    x[0, 0, 0, 0] = -1.0
    t = select(m)[0]
    torch.testing.assert_close(APoZ().calibrate(m, [x], 1, [t]).apoz(t), torch.tensor([0.25, 1.0]))
    # mean of relu(2 * x) over channel 0: three values of 2 and one 0
    torch.testing.assert_close(MeanActivation().calibrate(m, [x], 1, [t]).channel_scores(t), torch.tensor([1.5, 0.0]))


# -- feature reconstruction ----------------------------------------------------------------------------


def test_feature_ranks_a_channel_with_zero_output_lowest_despite_large_weights() -> None:
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight[1] = 0.0
        conv.weight[1, 1] = 50.0  # output channel 1 reads only input 1, which is always zero
        conv.weight[:, 1] = 50.0  # ... and every filter has huge weights on that dead input
    m = nn.Sequential(conv)
    x = torch.randn(4, 2, 6, 6)
    x[:, 1] = 0.0
    t = select(m)[0]
    out = FeatureReconstruction(dim=0).calibrate(m, [x], 1, [t]).channel_scores(t)
    assert out.argmin().item() == 1 and out[1].item() == 0.0
    inp = FeatureReconstruction(dim=1).calibrate(m, [x], 1, [t]).channel_scores(t)
    assert inp[1].item() == 0.0 and inp[0].item() > 0.0
    assert conv.weight.abs().sum(dim=(0, 2, 3)).argmin().item() == 0  # magnitude would keep the dead input


def _energy(delta: torch.Tensor) -> float:
    return float(delta.pow(2).sum() / delta.shape[0])


@pytest.mark.parametrize("groups", [1, 2])
def test_feature_equals_output_change_from_masking_each_channel(groups: int) -> None:
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=groups)
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-2, 2)
    m = nn.Sequential(conv, bn).eval()
    x = torch.randn(3, 4, 7, 7)
    t = select(m)[0]
    out_s = FeatureReconstruction(dim=0).calibrate(m, [x], 1, [t]).scores(t)
    in_s = FeatureReconstruction(dim=1).calibrate(m, [x], 1, [t]).scores(t)
    with torch.no_grad():
        ref = m(x)
        w0 = conv.weight.clone()
        for c in range(6):  # mask output channel c
            conv.weight.copy_(w0)
            conv.weight[c] = 0.0
            assert out_s[c, 0, 0, 0].item() == pytest.approx(_energy(ref - m(x)), rel=1e-4)
        cin_g = 4 // groups
        for c in range(4):  # mask input channel c (its slice in the filters of its group)
            conv.weight.copy_(w0)
            g, j = divmod(c, cin_g)
            rows = slice(g * 6 // groups, (g + 1) * 6 // groups)
            conv.weight[rows, j] = 0.0
            assert in_s[rows, j].unique().numel() == 1
            assert in_s[rows, j][0, 0, 0].item() == pytest.approx(_energy(ref - m(x)), rel=1e-4)
        conv.weight.copy_(w0)


def test_feature_bn_removed_is_the_energy_of_the_whole_bn_output() -> None:
    torch.manual_seed(5)
    conv, bn = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.bias.copy_(torch.tensor([5.0, 0.0, -1.0]))
    m = nn.Sequential(conv, bn).eval()
    x = torch.randn(4, 2, 5, 5)
    t = select(m)[0]
    s = FeatureReconstruction(bn_removed=True).calibrate(m, [x], 1, [t]).channel_scores(t)
    with torch.no_grad():
        torch.testing.assert_close(s, m(x).pow(2).sum(dim=(0, 2, 3)) / 4)
    with pytest.raises(ConfigError, match="bn_removed=True"):
        FeatureReconstruction(dim=1, bn_removed=True)


@pytest.mark.parametrize("bn_removed", [False, True])
def test_feature_relu_equals_post_relu_change_from_removing_each_channel(bn_removed: bool) -> None:
    torch.manual_seed(6)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.bias.uniform_(-1, 1)
    m = nn.Sequential(conv, bn, nn.ReLU()).eval()
    x = torch.randn(3, 3, 6, 6)
    t = select(m)[0]
    s = FeatureReconstruction(relu=True, bn_removed=bn_removed).calibrate(m, [x], 1, [t]).channel_scores(t)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        ref = m(x)
        for c in range(4):
            m.load_state_dict(state)
            conv.weight[c] = 0.0
            if bn_removed:
                bn.weight[c] = bn.bias[c] = 0.0
            assert s[c].item() == pytest.approx(_energy(ref - m(x)), rel=1e-4)


def test_feature_input_channels_of_linear_by_hand() -> None:
    lin = nn.Linear(3, 2)
    m = nn.Sequential(lin)
    x = torch.randn(5, 3)
    t = select(m)[0]
    s = FeatureReconstruction(dim=1).calibrate(m, [x], 1, [t]).scores(t)
    expected = (lin.weight.detach().pow(2).sum(0) * x.pow(2).sum(0) / 5).expand(2, 3)
    torch.testing.assert_close(s, expected)


# -- calibration hygiene and errors ---------------------------------------------------------------------


DATA_CRITERIA = [
    Taylor, lambda: OBD("fisher"), lambda: OBD("hutchinson", samples=2), APoZ, MeanActivation,
    FeatureReconstruction, lambda: FeatureReconstruction(dim=1), BNScale,
]


def _all_hooks(model: nn.Module) -> int:
    return sum(
        len(mod._forward_hooks) + len(mod._forward_pre_hooks) + len(mod._backward_hooks)
        + len(getattr(mod, "_backward_pre_hooks", {}))
        for mod in model.modules()
    )


@pytest.mark.parametrize("make", DATA_CRITERIA)
@pytest.mark.parametrize("training", [True, False])
def test_calibrate_restores_mode_hooks_grads_and_bn_stats(make, training: bool) -> None:
    m = ConvBN()
    m.train(training)
    m.head.eval()  # a mixed state must come back exactly
    modes = {n: mod.training for n, mod in m.named_modules()}
    stats = {k: v.clone() for k, v in m.state_dict().items()}
    grad = torch.ones_like(m.conv.weight)
    m.conv.weight.grad = grad
    targets = select(m)
    imp = make().calibrate(m, _batches(3, 4, (2, 5, 5), 2), 2, targets)
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert _all_hooks(m) == 0
    assert m.conv.weight.grad is grad and m.conv2.weight.grad is None
    assert all(torch.equal(stats[k], v) for k, v in m.state_dict().items())
    s = imp.scores(targets[0])
    assert s.shape == m.conv.weight.shape and bool((s >= 0).all())


@pytest.mark.parametrize("make", DATA_CRITERIA)
def test_scores_before_calibrate_raise(make) -> None:
    t = Target("conv", nn.Conv2d(2, 2, 1))
    with pytest.raises(ConfigError, match="calibrate"):
        make().scores(t)


def test_scores_for_an_uncalibrated_layer_raise() -> None:
    m = ConvBN()
    targets = select(m)
    imp = APoZ().calibrate(m, _batches(1, 2, (2, 5, 5), 2), 1, targets[:1])
    with pytest.raises(ConfigError, match="not calibrated for layer 'conv2'"):
        imp.scores(targets[1])


def test_registry_names_and_data_needs() -> None:
    assert {"l1", "l2", "random", "bn", "taylor", "obd", "apoz", "mean", "feature"} <= set(CRITERIA)
    assert [n for n in CRITERIA if needs_data(n)] == [
        "taylor", "obd", "obd-hutchinson", "apoz", "mean", "feature", "feature-relu", "nisp"
    ]
    m = ConvBN()
    targets = select(m, types=(nn.Conv2d,))
    with pytest.raises(ConfigError, match="'feature' needs calibration data"):
        build("feature", m, targets)
    with pytest.raises(ConfigError, match="did you mean: 'apoz'"):
        build("apozz", m, targets)
    data = _batches(2, 2, (2, 5, 5), 2)
    for name in CRITERIA:
        s = build(name, m, targets, data, 2).scores(targets[1])
        assert s.shape == m.conv2.weight.shape and bool((s >= 0).all()), name


def test_calibrate_restores_a_mixed_train_eval_state() -> None:
    """The base class restores every submodule's own flag (e.g. frozen BN in eval inside a training model)."""
    from prunekit.importance.base import DataDrivenImportance
    from prunekit.targets import select

    class Bare(DataDrivenImportance):  # relies on the base class alone for mode handling
        def _attach(self, model, targets):
            return []

        def _score(self, target):
            return torch.ones_like(target.weight)

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2), torch.nn.ReLU())
    model.train()
    model[1].eval()
    batches = [(torch.randn(2, 1, 3, 3), torch.zeros(2, dtype=torch.long))]
    Bare().calibrate(model, batches, 1, select(model))
    assert [m.training for m in model.modules()] == [True, True, False, True]

"""Sparse-regression solvers and regression-based channel pruning (He et al. 2017)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, UnsupportedError
from prunekit.regression import (
    RegressionChannelSelector,
    apply_selection,
    apply_to_chain,
    collect_samples,
    group_lasso,
    l1_prune_layer,
    lasso,
    least_squares,
    omp,
    regression_prune_layer,
    ridge,
    samples_from_features,
    soft_threshold,
)


def _orthonormal_design(n: int, p: int, seed: int) -> np.ndarray:
    """X with X^T X / n = I."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, p)))
    return q * np.sqrt(n)


def _random_problem(n: int = 60, p: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    beta = np.zeros(p)
    beta[[0, 3, 5]] = [2.0, -1.5, 0.7]
    return X, X @ beta + 0.1 * rng.normal(size=n)


# -- closed forms ---------------------------------------------------------------------------


def test_soft_threshold_numpy_and_torch():
    z = np.array([3.0, -3.0, 0.5, -0.5, 0.0])
    assert soft_threshold(z, 1.0).tolist() == [2.0, -2.0, 0.0, 0.0, 0.0]
    assert soft_threshold(torch.tensor(z), 1.0).tolist() == [2.0, -2.0, 0.0, 0.0, 0.0]


def test_least_squares_matches_normal_equations():
    X, y = _random_problem()
    expected = np.linalg.solve(X.T @ X, X.T @ y)
    np.testing.assert_allclose(least_squares(X, y), expected, rtol=1e-10)
    out = least_squares(torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4)


def test_ridge_closed_form_and_sklearn():
    X, y = _random_problem()
    expected = np.linalg.solve(X.T @ X + 3.0 * np.eye(X.shape[1]), X.T @ y)
    np.testing.assert_allclose(ridge(X, y, 3.0), expected, rtol=1e-10)
    np.testing.assert_allclose(ridge(X, y, 3.0, backend="sklearn"), expected, rtol=1e-8)
    Y2 = np.stack([y, -2 * y], 1)  # multi-target
    np.testing.assert_allclose(ridge(X, Y2, 3.0), np.stack([expected, -2 * expected], 1), rtol=1e-10)


def test_lasso_orthonormal_design_is_soft_threshold_of_xty():
    X = _orthonormal_design(50, 6, seed=1)
    y = np.random.default_rng(2).normal(size=50)
    alpha = 0.15
    expected = soft_threshold(X.T @ y / 50, alpha)
    got = lasso(X, y, alpha)
    np.testing.assert_allclose(got, expected, atol=1e-10)
    assert np.count_nonzero(got) == np.count_nonzero(expected) < 6  # some coefficients exactly zero


def test_lasso_agrees_with_sklearn():
    X, y = _random_problem()
    for alpha in (0.01, 0.1, 0.5):
        native = lasso(X, y, alpha, tol=1e-12, max_iter=10000)
        sk = lasso(X, y, alpha, tol=1e-12, max_iter=10000, backend="sklearn")
        np.testing.assert_allclose(native, sk, atol=1e-6)
    assert np.all(lasso(X, y, 10.0) == 0.0)  # alpha >= max|X^T y|/n zeroes everything


def test_lasso_positive_constraint():
    X, y = _random_problem()
    beta = lasso(X, y, 0.01, positive=True)
    assert np.all(beta >= 0) and beta[3] == 0.0  # the true -1.5 coefficient is clipped


def test_group_lasso_orthonormal_closed_form():
    X = _orthonormal_design(40, 6, seed=3)
    y = np.random.default_rng(4).normal(size=40)
    groups = [0, 0, 1, 1, 2, 2]
    alpha = 0.1
    z = X.T @ y / 40
    expected = np.zeros(6)
    for g in range(3):
        v = z[2 * g : 2 * g + 2]
        t = alpha * np.sqrt(2)
        norm = np.linalg.norm(v)
        expected[2 * g : 2 * g + 2] = 0 if norm <= t else (1 - t / norm) * v
    np.testing.assert_allclose(group_lasso(X, y, groups, alpha), expected, atol=1e-8)


def test_group_lasso_zeroes_whole_groups():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(80, 9))
    true = np.array([1.0, -2.0, 1.5, 0, 0, 0, 0, 0, 0])
    y = X @ true + 0.05 * rng.normal(size=80)
    groups = np.repeat([0, 1, 2], 3)
    beta = group_lasso(X, y, groups, alpha=0.2)
    for g in range(3):
        block = beta[groups == g]
        assert np.all(block == 0) or np.all(block != 0)  # never a partly-zero group
    assert np.all(beta[:3] != 0) and np.all(beta[3:] == 0)
    plain = lasso(X, y, 0.2)
    assert np.count_nonzero(plain) >= 1  # lasso selects coordinates, group lasso whole blocks


def test_group_lasso_bad_groups():
    X, y = _random_problem()
    with pytest.raises(ConfigError, match="one group label per column"):
        group_lasso(X, y, [0, 1], 0.1)


def test_omp_exact_recovery_and_sklearn():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(40, 30))
    X /= np.linalg.norm(X, axis=0)
    true = np.zeros(30)
    true[[2, 11, 25]] = [1.5, -2.0, 0.8]
    y = X @ true
    np.testing.assert_allclose(omp(X, y, 3), true, atol=1e-10)
    np.testing.assert_allclose(omp(X, y, 3, backend="sklearn"), true, atol=1e-10)
    y_noisy = y + 0.01 * rng.normal(size=40)
    np.testing.assert_allclose(omp(X, y_noisy, 3), omp(X, y_noisy, 3, backend="sklearn"), atol=1e-8)


def test_solver_errors():
    X, y = _random_problem()
    with pytest.raises(ConfigError, match="unknown backend"):
        lasso(X, y, 0.1, backend="scipy")
    with pytest.raises(ConfigError, match="n_nonzero must be"):
        omp(X, y, 0)
    with pytest.raises(ConfigError, match="samples but y has"):
        ridge(X, y[:-1], 1.0)
    with pytest.raises(ConfigError, match="alpha must be >= 0"):
        lasso(X, y, -1.0)


# -- channel pruning ------------------------------------------------------------------------


def _correlated_layer(seed: int = 0) -> tuple[nn.Conv2d, torch.Tensor]:
    """8 input channels that are noisy mixtures of 4 latent maps (correlated channels)."""
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(8, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
    latent = torch.randn(16, 4, 8, 8, generator=g)
    mixing = torch.randn(8, 4, generator=g)
    feats = torch.einsum("ck,bkhw->bchw", mixing, latent)  # (16, 8, 8, 8)
    return conv, feats + 0.02 * torch.randn(feats.shape, generator=g)


def _duplicate_pairs_layer(seed: int = 0) -> tuple[nn.Conv2d, torch.Tensor]:
    """8 input channels forming 4 near-duplicate pairs."""
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(8, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
    base = torch.randn(16, 4, 8, 8, generator=g)
    return conv, torch.cat([base, base + 0.05 * torch.randn(base.shape, generator=g)], 1)


def test_samples_match_conv_output():
    conv, feats = _correlated_layer()
    X, Y = samples_from_features(conv, feats, positions_per_image=5, seed=0)
    assert X.shape == (80, 8, 9) and Y.shape == (80, 6)
    out = conv(feats)  # (16, 6, 8, 8)
    # every sampled response is one of the true output vectors of its image
    flat = out.detach().permute(0, 2, 3, 1).reshape(16, 64, 6)
    for s in range(0, 80, 17):
        dists = (flat[s // 5] - Y[s]).abs().amax(1)
        assert float(dists.min()) < 1e-4


def test_regression_beats_l1_removal_on_correlated_channels():
    for seed in range(3):
        conv, feats = _correlated_layer(seed)
        X, Y = samples_from_features(conv, feats, positions_per_image=20, seed=0)
        reg = regression_prune_layer(conv, X, Y, n_keep=4)
        l1 = l1_prune_layer(conv, X, Y, n_keep=4)
        assert reg.kept.numel() == 4 and tuple(reg.weight.shape) == (6, 4, 3, 3)
        assert np.count_nonzero(reg.beta.numpy()) == 4  # the LASSO itself picked exactly 4
        assert reg.relative_error < 0.1 < 0.3 < l1.relative_error
        # reconstruction is least squares: never worse than the kept weights as they were
        plain = regression_prune_layer(conv, X, Y, 4, reconstruct_weights=False)
        assert reg.relative_error <= plain.relative_error + 1e-9


def test_lasso_selection_prefers_informative_channels_over_large_weights():
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(6, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.weight[:, 3:] *= 10.0  # big weights on channels whose activations are tiny
    feats = torch.randn(8, 6, 6, 6, generator=g)
    feats[:, 3:] *= 0.001
    X, Y = samples_from_features(conv, feats, positions_per_image=20)
    assert regression_prune_layer(conv, X, Y, 3).kept.tolist() == [0, 1, 2]
    assert l1_prune_layer(conv, X, Y, 3).kept.tolist() == [3, 4, 5]


def test_duplicate_pairs_greedy_selection():
    # LASSO on beta only rescales each channel's contribution Z_i, so it does not see that two
    # channels are copies; the greedy least-squares selection does.
    conv, feats = _duplicate_pairs_layer()
    X, Y = samples_from_features(conv, feats, positions_per_image=20, seed=0)
    greedy = regression_prune_layer(conv, X, Y, n_keep=4, selection="greedy")
    assert greedy.relative_error < 0.1
    assert sorted(int(i) % 4 for i in greedy.kept) == [0, 1, 2, 3]  # one channel of each pair


def test_full_keep_is_lossless():
    conv, feats = _correlated_layer()
    X, Y = samples_from_features(conv, feats, positions_per_image=20, seed=0)
    sel = regression_prune_layer(conv, X, Y, n_keep=8)
    assert sel.kept.tolist() == list(range(8)) and sel.relative_error < 1e-6


def test_apply_to_chain_vgg_like_matches_selection():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1, bias=True)
    ).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    batches = [torch.randn(4, 3, 10, 10) for _ in range(3)]
    sel = RegressionChannelSelector(positions_per_image=30).select(net, "3", batches, n_keep=5)
    X, Y = collect_samples(net, "3", batches, positions_per_image=30)
    apply_to_chain(net, "0", "3", sel, norm="1")
    assert net[0].out_channels == 5 and net[1].num_features == 5 and net[3].in_channels == 5
    # the pruned net's conv input equals the kept channels of the original input samples
    X_new, _ = collect_samples(net, "3", batches, positions_per_image=30)
    torch.testing.assert_close(X_new, X[:, sel.kept])
    approx = torch.einsum("sck,nck->sn", X_new, net[3].weight.detach().flatten(2))
    err = float((approx - Y).norm() / Y.norm())
    assert abs(err - sel.relative_error) < 1e-4


def test_selector_uses_reference_outputs():
    torch.manual_seed(1)
    ref = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3))
    pruned = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3))
    pruned.load_state_dict(ref.state_dict())
    with torch.no_grad():
        pruned[0].weight.mul_(1.1)  # upstream changed by earlier pruning
    batches = [torch.randn(4, 3, 9, 9)]
    sel = RegressionChannelSelector(positions_per_image=40).select(pruned, "2", batches, 6, reference=ref)
    X, _ = collect_samples(pruned, "2", batches, positions_per_image=40)
    _, Y_ref = collect_samples(ref, "2", batches, positions_per_image=40)
    # with every channel kept, least squares fits the reference responses from the drifted inputs
    approx = torch.einsum("sck,nck->sn", X, sel.weight.flatten(2))
    assert float((approx - Y_ref).norm() / Y_ref.norm()) < 0.05
    assert float((approx - Y_ref).norm() / Y_ref.norm()) == pytest.approx(sel.relative_error, abs=1e-5)


def test_channel_pruning_errors():
    conv, feats = _correlated_layer()
    X, Y = samples_from_features(conv, feats, positions_per_image=3)
    with pytest.raises(ConfigError, match="n_keep must be"):
        regression_prune_layer(conv, X, Y, n_keep=0)
    with pytest.raises(ConfigError, match="unknown selection"):
        regression_prune_layer(conv, X, Y, n_keep=2, selection="random")
    with pytest.raises(UnsupportedError, match="groups=1"):
        samples_from_features(nn.Conv2d(8, 8, 3, groups=8), feats)
    with pytest.raises(ConfigError, match="features must be"):
        samples_from_features(conv, feats[:, :3])
    with pytest.raises(ConfigError, match="no module named 'convx'"):
        collect_samples(nn.Sequential(conv), "convx", [feats])


class _TinyRes(nn.Module):
    """stem -> one basic block with an identity shortcut -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h)))))
        return self.fc(torch.relu(out + h).mean((2, 3)))


def test_apply_selection_through_structure_graph_matches_chain_adapter():
    import copy

    torch.manual_seed(0)
    model = _TinyRes().eval()
    batches = [torch.randn(4, 3, 12, 12)]
    example = torch.zeros(1, 3, 12, 12)
    X, Y = collect_samples(model, "conv2", batches, positions_per_image=30)
    sel = regression_prune_layer(model.conv2, X, Y, n_keep=5)
    small, plan = apply_selection(model, example, "conv2", sel)
    assert set(plan.modules) == {"conv1", "bn1", "conv2"}
    chain = copy.deepcopy(model)
    apply_to_chain(chain, "conv1", "conv2", sel, norm="bn1")
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(small(x), chain(x))
    # conv1 reads the residual stream: its channels are coupled to the stem and conv2's outputs
    X2, Y2 = collect_samples(model, "conv1", batches, positions_per_image=30)
    sel2 = regression_prune_layer(model.conv1, X2, Y2, n_keep=6)
    small2, plan2 = apply_selection(model, example, "conv1", sel2)
    assert {"stem", "bn", "conv2", "bn2", "fc"} <= set(plan2.modules)
    torch.testing.assert_close(small2.conv1.weight, sel2.weight)

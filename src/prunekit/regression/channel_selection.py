"""Regression-based channel pruning (He, Zhang & Sun 2017, "Channel Pruning for Accelerating
Very Deep Neural Networks", ICCV).

For a conv layer with weight ``W`` (n, c, kh, kw), sample ``N`` input volumes ``X`` (N, c, kh*kw)
at random output positions and the layer's responses ``Y`` (N, n). Then

1. *selection* -- with ``Z_i = X_i W_i^T`` (N, n), solve the LASSO
   ``min_beta 1/(2N n) ||Y - sum_i beta_i Z_i||_F^2 + alpha ||beta||_1`` for increasing ``alpha``
   (bisection) until ``c'`` coefficients are non-zero; the non-zero ones are the kept input channels;
2. *reconstruction* -- refit the kept channels' weights by least squares
   ``min_W' ||Y - X' W'^T||_F^2`` (``X'`` = kept channels' columns).

Removing input channel ``i`` of this layer removes output channel ``i`` of the layer that
produces it (and its BN entry): see :func:`apply_to_chain` for plain conv -> [BN] -> act -> conv
chains (VGG, the inside of a ResNet basic block, which is what the paper prunes).

``X`` may come from an already-pruned network and ``Y`` from the original one (the paper's
way of not accumulating error): :func:`collect_samples` uses the same positions for both when
given the same ``seed``.

>>> import torch
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> conv = torch.nn.Conv2d(8, 6, 3, padding=1, bias=False)
>>> base = torch.randn(16, 4, 8, 8)
>>> feats = torch.cat([base, base + 0.05 * torch.randn_like(base)], 1)  # 4 near-duplicate pairs
>>> X, Y = samples_from_features(conv, feats, positions_per_image=20, seed=0)
>>> sel = regression_prune_layer(conv, X, Y, n_keep=4)
>>> tuple(sel.weight.shape), sel.relative_error < l1_prune_layer(conv, X, Y, n_keep=4).relative_error
((6, 4, 3, 3), True)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError, UnsupportedError
from prunekit.moduletools import replace_submodule
from prunekit.regression.solvers import lasso_gram

__all__ = [
    "LayerSelection",
    "RegressionChannelSelector",
    "apply_to_chain",
    "collect_samples",
    "l1_prune_layer",
    "lasso_select",
    "output_error",
    "reconstruct",
    "regression_prune_layer",
    "samples_from_features",
]


@dataclass
class LayerSelection:
    """Result of pruning one layer's input channels.

    ``kept``: sorted kept input-channel indices; ``weight``: the new (n, c', kh, kw) weight;
    ``beta``: LASSO coefficients (c,) at the chosen ``alpha`` (None for non-LASSO selection);
    ``relative_error``: ``||Y - X' W'^T||_F / ||Y||_F`` on the samples used.
    """

    kept: torch.Tensor
    weight: torch.Tensor
    beta: torch.Tensor | None
    alpha: float | None
    relative_error: float


def _check_conv(conv: nn.Module) -> nn.Conv2d:
    if not isinstance(conv, nn.Conv2d):
        raise UnsupportedError(f"regression channel pruning needs an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1:
        raise UnsupportedError(
            f"regression channel pruning supports groups=1 convolutions only (got groups={conv.groups}); "
            "prune grouped/depthwise convs through their producer instead"
        )
    if isinstance(conv.padding, str):
        raise UnsupportedError(f"padding={conv.padding!r} is not supported; use explicit integer padding")
    return conv


def samples_from_features(
    conv: nn.Conv2d, features: torch.Tensor, positions_per_image: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``(X, Y)`` for ``conv`` from its input feature maps ``features`` (B, c, H, W).

    Returns ``X`` (B*positions, c, kh*kw) input volumes at random output positions and ``Y``
    (B*positions, n) the conv's response there, without bias. The positions depend only on
    ``seed`` and the shapes, so two networks with equal spatial sizes get the same positions.
    """
    conv = _check_conv(conv)
    if features.ndim != 4 or features.shape[1] != conv.in_channels:
        raise ConfigError(
            f"features must be (B, {conv.in_channels}, H, W) for this conv, got {tuple(features.shape)}"
        )
    X = _sample_patches(conv, features, positions_per_image, seed)  # (N, c, k)
    w = conv.weight.detach().flatten(2).to(X.dtype)  # (n, c, k)
    Y = torch.einsum("sck,nck->sn", X, w)  # (N, n)
    return X, Y


def _sample_patches(conv: nn.Conv2d, features: torch.Tensor, positions: int, seed: int) -> torch.Tensor:
    b, c = features.shape[:2]
    kh, kw = conv.kernel_size
    cols = F.unfold(
        features.detach(), (kh, kw), dilation=conv.dilation, padding=conv.padding, stride=conv.stride
    )  # (B, c*kh*kw, L)
    n_pos = cols.shape[-1]
    gen = torch.Generator().manual_seed(int(seed))
    k = min(int(positions), n_pos)
    idx = torch.stack([torch.randperm(n_pos, generator=gen)[:k] for _ in range(b)])  # (B, k)
    picked = torch.gather(cols, 2, idx.unsqueeze(1).expand(b, cols.shape[1], k))  # (B, c*kh*kw, k)
    return picked.permute(0, 2, 1).reshape(b * k, c, kh * kw)  # (N, c, kh*kw)


def _prepare(X: torch.Tensor, Y: torch.Tensor, weight: torch.Tensor) -> None:
    if X.ndim != 3 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ConfigError(
            f"need X (N, c, k) and Y (N, n) with equal N, got {tuple(X.shape)}, {tuple(Y.shape)}"
        )
    n, c = weight.shape[:2]
    if X.shape[1] != c or Y.shape[1] != n or X.shape[2] != weight[0, 0].numel():
        raise ConfigError(
            f"X {tuple(X.shape)} / Y {tuple(Y.shape)} do not match the weight {tuple(weight.shape)}"
        )


def lasso_select(
    X: torch.Tensor,
    Y: torch.Tensor,
    weight: torch.Tensor,
    n_keep: int,
    max_bisections: int = 40,
    positive: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Choose ``n_keep`` input channels by LASSO on ``beta`` (He et al. 2017, eq. 3).

    Bisects ``alpha`` between 0 and the smallest value that zeroes every coefficient until
    exactly ``n_keep`` coefficients are non-zero; if no ``alpha`` gives exactly ``n_keep``
    (ties), keeps the ``n_keep`` largest ``|beta|`` at the largest ``alpha`` with more than
    ``n_keep`` non-zeros. Returns ``(kept indices sorted, beta (c,), alpha)``.
    """
    _prepare(X, Y, weight)
    c = X.shape[1]
    if not 1 <= n_keep <= c:
        raise ConfigError(f"n_keep must be in [1, {c}] (input channels), got {n_keep}")
    x64 = X.double()
    w64 = weight.detach().double().flatten(2)  # (n, c, k)
    w64 = w64 / w64.norm(dim=(0, 2), keepdim=True).clamp_min(1e-30)  # paper: ||W_i||_F = 1 per channel
    Z = torch.einsum("sck,nck->csn", x64, w64).reshape(c, -1)  # (c, N*n): Z_i flattened
    y = Y.double().reshape(-1)  # (N*n,)
    m = y.numel()
    gram = (Z @ Z.T / m).numpy()  # (c, c)
    zty = (Z @ y / m).numpy()  # (c,)
    if n_keep == c:
        beta = lasso_gram(gram, zty, 0.0, positive=positive)
        return torch.arange(c), torch.as_tensor(beta), 0.0
    lo, hi = 0.0, float(np.max(np.abs(zty)))
    best_over: tuple[np.ndarray, float] | None = None  # (beta, alpha) with nnz > n_keep, largest alpha
    beta = np.zeros(c)
    for _ in range(max_bisections):
        alpha = 0.5 * (lo + hi)
        beta = lasso_gram(gram, zty, alpha, positive=positive, beta0=beta)
        nnz = int(np.count_nonzero(beta))
        if nnz == n_keep:
            kept = np.flatnonzero(beta)
            return torch.as_tensor(kept), torch.as_tensor(beta), alpha
        if nnz > n_keep:
            lo = alpha
            best_over = (beta.copy(), alpha)
        else:
            hi = alpha
    if best_over is None:  # every alpha tried zeroed too much: fall back to least squares magnitude
        best_over = (lasso_gram(gram, zty, 0.0, positive=positive), 0.0)
    beta, alpha = best_over
    kept = np.sort(np.argsort(-np.abs(beta), kind="stable")[:n_keep])
    return torch.as_tensor(kept), torch.as_tensor(beta), alpha


def reconstruct(
    X: torch.Tensor, Y: torch.Tensor, kept: torch.Tensor, kernel_size: Sequence[int]
) -> torch.Tensor:
    """Least-squares weights (n, c', kh, kw) of the kept channels minimising ``||Y - X' W'^T||_F`` (eq. 4)."""
    xk = X[:, kept].double().reshape(X.shape[0], -1)  # (N, c'*k)
    sol = torch.linalg.lstsq(xk, Y.double(), driver="gelsd").solution  # (c'*k, n)
    n = Y.shape[1]
    return sol.T.reshape(n, len(kept), *kernel_size)  # (n, c', kh, kw)


def output_error(X: torch.Tensor, Y: torch.Tensor, kept: torch.Tensor, weight: torch.Tensor) -> float:
    """Relative error ``||Y - X[:, kept] W^T||_F / ||Y||_F`` of a pruned weight (n, c', kh, kw)."""
    approx = torch.einsum("sck,nck->sn", X[:, kept].double(), weight.double().flatten(2))  # (N, n)
    return float((Y.double() - approx).norm() / Y.double().norm().clamp_min(1e-30))


def regression_prune_layer(
    conv: nn.Conv2d,
    X: torch.Tensor,
    Y: torch.Tensor,
    n_keep: int,
    selection: str = "lasso",
    reconstruct_weights: bool = True,
) -> LayerSelection:
    """Keep ``n_keep`` input channels of ``conv`` and reconstruct its weight from samples ``(X, Y)``.

    ``selection``: ``"lasso"`` (the paper), ``"l1"`` (largest ``||W[:, i]||_1``), or
    ``"greedy"`` (the channel whose removal raises the least-squares error least, one at a time;
    slower, sometimes better). ``reconstruct_weights=False`` keeps the original kept weights.
    """
    conv = _check_conv(conv)
    weight = conv.weight.detach()
    _prepare(X, Y, weight)
    beta: torch.Tensor | None = None
    alpha: float | None = None
    if selection == "lasso":
        kept, beta, alpha = lasso_select(X, Y, weight, n_keep)
    elif selection == "l1":
        kept = _l1_kept(weight, n_keep)
    elif selection == "greedy":
        kept = _greedy_select(X, Y, n_keep)
    else:
        raise ConfigError(f"unknown selection {selection!r}; use 'lasso', 'l1' or 'greedy'")
    if reconstruct_weights:
        new_w = reconstruct(X, Y, kept, conv.kernel_size).to(weight.dtype)
    else:
        new_w = weight[:, kept].clone()
    err = output_error(X, Y, kept, new_w)
    return LayerSelection(kept=kept.long(), weight=new_w, beta=beta, alpha=alpha, relative_error=err)


def l1_prune_layer(conv: nn.Conv2d, X: torch.Tensor, Y: torch.Tensor, n_keep: int) -> LayerSelection:
    """Baseline: keep the ``n_keep`` input channels with the largest ``||W[:, i]||_1``, weights unchanged."""
    return regression_prune_layer(conv, X, Y, n_keep, selection="l1", reconstruct_weights=False)


def _l1_kept(weight: torch.Tensor, n_keep: int) -> torch.Tensor:
    c = weight.shape[1]
    if not 1 <= n_keep <= c:
        raise ConfigError(f"n_keep must be in [1, {c}] (input channels), got {n_keep}")
    norms = weight.abs().sum(dim=(0, 2, 3))  # (c,)
    return torch.sort(torch.argsort(norms, descending=True, stable=True)[:n_keep]).values


def _greedy_select(X: torch.Tensor, Y: torch.Tensor, n_keep: int) -> torch.Tensor:
    c = X.shape[1]
    if not 1 <= n_keep <= c:
        raise ConfigError(f"n_keep must be in [1, {c}] (input channels), got {n_keep}")
    x64 = X.double().reshape(X.shape[0], -1)  # (N, c*k)
    k = X.shape[2]
    gram = x64.T @ x64  # (c*k, c*k)
    gram = gram + 1e-8 * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    xty = x64.T @ Y.double()  # (c*k, n)
    kept = list(range(c))
    while len(kept) > n_keep:
        best, best_gain = kept[0], -float("inf")
        for drop in kept:
            cols = torch.cat([torch.arange(i * k, (i + 1) * k) for i in kept if i != drop])
            sol = torch.linalg.solve(gram[cols][:, cols], xty[cols])  # (cols, n)
            explained = float((xty[cols] * sol).sum())  # ||Y||^2 - residual
            if explained > best_gain:
                best, best_gain = drop, explained
        kept.remove(best)
    return torch.tensor(kept)


def collect_samples(
    model: nn.Module,
    layer: str,
    batches: Iterable[Any],
    positions_per_image: int = 10,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``batches`` (tensors or ``(inputs, labels)``) through ``model`` (eval mode, no grad) and
    sample ``(X, Y)`` of the conv at module path ``layer``. Batch ``j`` uses seed ``seed + j``."""
    modules = dict(model.named_modules())
    if layer not in modules:
        from prunekit.errors import close_matches

        raise ConfigError(f"no module named {layer!r} in the model; {close_matches(layer, list(modules))}")
    conv = _check_conv(modules[layer])
    feats: list[torch.Tensor] = []
    handle = conv.register_forward_hook(lambda _m, inp, _out: feats.append(inp[0].detach()))
    xs, ys = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for j, batch in enumerate(batches):
                inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
                feats.clear()
                model(inputs)
                if not feats:
                    raise ConfigError(f"layer {layer!r} was not called in the forward pass")
                x, y = samples_from_features(conv, feats[0], positions_per_image, seed + j)
                xs.append(x)
                ys.append(y)
    finally:
        handle.remove()
        model.train(was_training)
    if not xs:
        raise ConfigError("collect_samples: no batches given")
    return torch.cat(xs), torch.cat(ys)


class RegressionChannelSelector:
    """Regression-based channel pruning of one conv layer, with calibration batches.

    ``select(model, layer, batches, n_keep, reference=None)`` samples ``X`` from ``model`` and
    ``Y`` from ``reference`` (the unpruned network; default ``model``) at the same positions,
    and returns a :class:`LayerSelection`.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 3))
    >>> sel = RegressionChannelSelector(positions_per_image=20).select(net, "2", [torch.randn(4, 3, 9, 9)], 3)
    >>> sel.kept.numel(), tuple(sel.weight.shape)
    (3, (4, 3, 3, 3))
    """

    def __init__(self, positions_per_image: int = 10, selection: str = "lasso", seed: int = 0) -> None:
        if positions_per_image < 1:
            raise ConfigError(f"positions_per_image must be >= 1, got {positions_per_image}")
        self.positions_per_image = positions_per_image
        self.selection = selection
        self.seed = seed

    def select(
        self,
        model: nn.Module,
        layer: str,
        batches: Sequence[Any],
        n_keep: int,
        reference: nn.Module | None = None,
    ) -> LayerSelection:
        X, Y = collect_samples(model, layer, batches, self.positions_per_image, self.seed)
        if reference is not None:
            _, Y = collect_samples(reference, layer, batches, self.positions_per_image, self.seed)
        conv = dict(model.named_modules())[layer]
        return regression_prune_layer(conv, X, Y, n_keep, selection=self.selection)


@torch.no_grad()
def apply_to_chain(
    model: nn.Module, producer: str, consumer: str, selection: LayerSelection, norm: str | None = None
) -> None:
    """Apply ``selection`` to a plain chain ``producer conv -> [norm BN] -> elementwise act -> consumer conv``.

    Keeps output channels ``selection.kept`` of ``producer`` (and of ``norm``), and replaces
    ``consumer`` by a conv with those input channels and ``selection.weight``. Modules are
    replaced in place (new ``nn.Conv2d`` / ``nn.BatchNorm2d`` objects). Only valid when nothing
    else reads the producer's output (true inside a ResNet basic block and in VGG).
    """
    mods = dict(model.named_modules())
    for name in (producer, consumer) + ((norm,) if norm else ()):
        if name not in mods:
            from prunekit.errors import close_matches

            raise ConfigError(f"no module named {name!r}; {close_matches(name, list(mods))}")
    prod, cons = _check_conv(mods[producer]), _check_conv(mods[consumer])
    kept = selection.kept.long()
    if prod.out_channels != cons.in_channels:
        raise ConfigError(
            f"{producer} has {prod.out_channels} outputs but {consumer} takes {cons.in_channels}"
        )
    new_prod = _conv_like(prod, prod.in_channels, len(kept))
    new_prod.weight.copy_(prod.weight[kept])
    if prod.bias is not None:
        new_prod.bias.copy_(prod.bias[kept])
    replace_submodule(model, producer, new_prod)
    if norm:
        bn = mods[norm]
        if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != prod.out_channels:
            raise ConfigError(f"{norm} must be a BatchNorm2d with {prod.out_channels} features")
        new_bn = nn.BatchNorm2d(
            len(kept),
            eps=bn.eps,
            momentum=bn.momentum,
            affine=bn.affine,
            track_running_stats=bn.track_running_stats,
        ).to(bn.weight.device)
        if bn.affine:
            new_bn.weight.copy_(bn.weight[kept])
            new_bn.bias.copy_(bn.bias[kept])
        if bn.track_running_stats:
            new_bn.running_mean.copy_(bn.running_mean[kept])
            new_bn.running_var.copy_(bn.running_var[kept])
            new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
        new_bn.train(bn.training)
        replace_submodule(model, norm, new_bn)
    new_cons = _conv_like(cons, len(kept), cons.out_channels)
    new_cons.weight.copy_(selection.weight.to(cons.weight.dtype))
    if cons.bias is not None:
        new_cons.bias.copy_(cons.bias)
    replace_submodule(model, consumer, new_cons)


def _conv_like(conv: nn.Conv2d, in_ch: int, out_ch: int) -> nn.Conv2d:
    new = nn.Conv2d(
        in_ch,
        out_ch,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    new.train(conv.training)
    return new.to(device=conv.weight.device, dtype=conv.weight.dtype)

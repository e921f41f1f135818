"""Codebook fine-tuning of weight-shared layers (Deep Compression, Han et al. 2016).

The storage side (k-means codebooks, :class:`~prunekit.sparse.formats.sharing.SharedWeightLinear`)
lives in ``prunekit.sparse.formats``; this is the training loop that moves each centroid by the
summed gradient of the weights sharing it.

>>> import torch
>>> from torch import nn
>>> from prunekit.sparse.formats import share_linear_layers
>>> torch.manual_seed(0) and None
>>> net = nn.Sequential(nn.Linear(4, 3))
>>> _ = share_linear_layers(net, bits=2)
>>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))] * 5
>>> losses = finetune_codebook(net, data, epochs=1, lr=1e-2)
>>> len(losses), losses[-1] < losses[0]
(5, True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.sparse.formats.sharing import SharedWeightLinear

__all__ = ["finetune_codebook"]


def finetune_codebook(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                      epochs: int = 1, lr: float = 1e-3, train_bias: bool = False,
                      loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                      max_steps: int | None = None) -> list[float]:
    """Fine-tune the centroids of every :class:`SharedWeightLinear` in ``model`` (Adam, ``lr``).

    Each centroid moves by the summed gradient of the weights that share it; everything else
    stays frozen unless ``train_bias`` (then the shared layers' biases train too), BatchNorm running
    statistics included (those layers run in eval mode). Returns the loss of every step. The train/eval
    mode of every submodule and the ``requires_grad`` flags are restored.
    """
    layers = [m for m in model.modules() if isinstance(m, SharedWeightLinear)]
    if not layers:
        raise ConfigError("finetune_codebook found no SharedWeightLinear layer; call share_linear_layers(model) first")
    params = [m.centroids for m in layers]
    if train_bias:
        params += [m.bias for m in layers if m.bias is not None]
    chosen = {id(p) for p in params}
    saved = {p: p.requires_grad for p in model.parameters()}
    modes = [(m, m.training) for m in model.modules()]
    device = params[0].device
    losses: list[float] = []
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)
        opt = torch.optim.Adam(params, lr=lr)
        model.train()
        for m in model.modules():  # BatchNorm statistics stay frozen like every other weight
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        for _ in range(epochs):
            for x, y in loader:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x.to(device)), y.to(device))
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if max_steps is not None and len(losses) >= max_steps:
                    return losses
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
        for m, flag in modes:
            m.training = flag
    return losses

"""NISP: Neuron Importance Score Propagation (Yu et al. 2018, CVPR).

The importance ``s_n`` of the final response layer (FRL) is propagated backwards with the
absolute weights, ``s_k = |W_{k+1}|^T s_{k+1}``; BN, activations and pooling pass scores
through unchanged (identity), residual additions send them to both branches.

Implementation: the propagation is the vector-Jacobian product of an *absolute linear
surrogate* of the network (every conv/linear weight replaced by ``|W|``, biases by 0, norms
and activation modules by the identity, every conv/linear output shifted by +1 so that
functional ReLUs stay in their linear region), evaluated on an all-ones input of the calibration
shape. One ``autograd.grad`` call gives every layer's neuron scores; a channel's score is the sum
over its spatial positions. For fully connected layers and 1x1 convs this is exactly
``|W|^T s``; for k x k convs it is ``sum_{o, taps} |W[o, c, taps]| s_o`` up to zero-padding
border effects (neurons near the border have fewer taps), which is the neuron-level rule of the
paper applied to every output position.

>>> import torch
>>> from torch import nn
>>> from prunekit.targets import select
>>> net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
>>> with torch.no_grad():
...     _ = net[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.5, 0.5]]))
...     _ = net[2].weight.copy_(torch.tensor([[-3.0, 1.0]]))
>>> imp = NISP(frl_scores="uniform").calibrate(net, [torch.randn(4, 3)], num_batches=1)
>>> imp.channel_scores("0").tolist()  # |W2|^T [1] = [3, 1]
[3.0, 1.0]
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.utils.hooks import RemovableHandle

from prunekit.errors import ConfigError, UnsupportedError, close_matches
from prunekit.importance.base import DataDrivenImportance, first_example
from prunekit.targets import Target

__all__ = ["NISP", "nisp_channel_scores"]

FrlScores = Literal["mean_abs", "uniform"]

_WEIGHTED = (_ConvNd, nn.Linear)
_PASS_THROUGH = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Mish,
    nn.Softplus,
    nn.Dropout,
)


def _last_weighted(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if n and isinstance(m, _WEIGHTED)]
    if not names:
        raise ConfigError("NISP needs at least one Conv or Linear layer to use as the final response layer")
    return names[-1]


def nisp_channel_scores(
    model: nn.Module, example_input: torch.Tensor, final_layer: str, final_scores: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Propagate ``final_scores`` (one per output unit/channel of ``final_layer``) back through
    ``model``; returns ``{module name: per-output-channel score}`` for every Conv/Linear layer
    that feeds the final layer (layers that do not get zeros), in float64 (scores of early layers
    in deep networks exceed the float32 range). ``model`` is not modified.
    """
    modules = dict(model.named_modules())
    if final_layer not in modules or not isinstance(modules[final_layer], _WEIGHTED):
        candidates = [n for n, m in modules.items() if isinstance(m, _WEIGHTED)]
        raise ConfigError(
            f"final_layer {final_layer!r} is not a Conv/Linear layer of the model; {close_matches(final_layer, candidates)}"
        )
    # float64: products of |W| over ~50 layers overflow float32 (ResNet-56 reaches ~1e80)
    surrogate = copy.deepcopy(model).eval().double()
    outputs: dict[str, list[torch.Tensor]] = {}
    handles: list[RemovableHandle] = []

    def record(name: str):
        def hook(_m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            outputs.setdefault(name, []).append(out)
            return out + 1.0  # keeps every downstream activation > 0: functional ReLUs act as identity

        return hook

    def identity(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        return inp[0] if inp[0].shape == out.shape else out

    try:
        with torch.no_grad():
            for p in surrogate.parameters():
                p.requires_grad_(False)
            for name, m in surrogate.named_modules():
                if isinstance(m, _WEIGHTED):
                    m.weight.abs_()
                    if m.bias is not None:
                        m.bias.zero_()
                    handles.append(m.register_forward_hook(record(name)))
                elif isinstance(m, _PASS_THROUGH):
                    handles.append(m.register_forward_hook(identity))
        if not example_input.is_floating_point():
            raise UnsupportedError(
                "NISP propagation needs a floating-point input (embeddings are not supported)"
            )
        ones = torch.ones((1, *example_input.shape[1:]), dtype=torch.float64, device=example_input.device)
        with torch.enable_grad():
            ones.requires_grad_(True)
            surrogate(ones)
            if final_layer not in outputs:
                raise ConfigError(f"final_layer {final_layer!r} was not called in the forward pass")
            frl = outputs[final_layer][-1]  # (1, C, ...) response of the final layer
            if final_scores.numel() != frl.shape[1]:
                raise ConfigError(
                    f"final_scores has {final_scores.numel()} entries but {final_layer!r} has {frl.shape[1]} outputs"
                )
            shape = (1, -1) + (1,) * (frl.ndim - 2)
            objective = (frl * final_scores.to(frl).reshape(shape)).sum()
            names = list(outputs)
            flat = [t for n in names for t in outputs[n]]
            grads = torch.autograd.grad(objective, flat, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    scores: dict[str, torch.Tensor] = {}
    i = 0
    for name in names:
        total: torch.Tensor | None = None
        for t in outputs[name]:
            g = grads[i]
            i += 1
            per_channel = (
                torch.zeros(t.shape[1]) if g is None else g.detach().transpose(0, 1).flatten(1).sum(1)
            )
            total = per_channel if total is None else total + per_channel
        scores[name] = total.double().cpu() if total is not None else torch.zeros(0, dtype=torch.float64)
    return scores


class NISP(DataDrivenImportance):
    """NISP channel importance, usable wherever an importance is (``calibrate`` then ``scores``).

    ``calibrate`` measures the final-response-layer scores ``s_n`` on the calibration batches
    (``frl_scores="mean_abs"``: mean ``|response|`` per unit; ``"uniform"``: all ones; or a
    tensor you pass) and propagates them to every Conv/Linear layer. ``scores(target)`` broadcasts
    the layer's per-output-channel score, divided by its mean over the layer (NISP ranks neurons
    within a layer; raw scores grow geometrically with depth), over that channel's weights;
    ``channel_scores(name)`` gives the raw float64 scores.
    ``final_layer`` defaults to the last Conv/Linear module (the classifier).
    """

    def __init__(
        self, final_layer: str | None = None, frl_scores: FrlScores | torch.Tensor = "mean_abs"
    ) -> None:
        super().__init__()
        if isinstance(frl_scores, str) and frl_scores not in ("mean_abs", "uniform"):
            raise ConfigError(f"unknown frl_scores {frl_scores!r}; use 'mean_abs', 'uniform' or a tensor")
        self.final_layer = final_layer
        self.frl_scores = frl_scores
        self._channel: dict[str, torch.Tensor] = {}

    def _attach(self, model: nn.Module, targets: Sequence[Target]) -> list[RemovableHandle]:
        self._model = model
        self._frl_name = self.final_layer or _last_weighted(model)
        modules = dict(model.named_modules())
        if self._frl_name not in modules:
            raise ConfigError(
                f"final_layer {self._frl_name!r} not in the model; {close_matches(self._frl_name, list(modules))}"
            )
        self._acc: torch.Tensor | None = None
        self._count = 0
        self._example: torch.Tensor | None = None

        def hook(_m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            resp = out.detach().abs().transpose(0, 1).flatten(1)  # (C, B*spatial)
            total = resp.sum(1).double().cpu()
            self._acc = total if self._acc is None else self._acc + total
            self._count += resp.shape[1]

        return [modules[self._frl_name].register_forward_hook(hook)]

    def _run_batch(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None) -> None:
        if self._example is None:
            self._example = first_example(inputs)
        super()._run_batch(model, inputs, labels)

    def _finish(self) -> None:
        if isinstance(self.frl_scores, torch.Tensor):
            s_n = self.frl_scores.detach().double().reshape(-1)
        elif self.frl_scores == "uniform" or self._acc is None:
            n_out = 0 if self._acc is None else self._acc.numel()
            s_n = torch.ones(n_out, dtype=torch.float64)
        else:
            s_n = self._acc / max(self._count, 1)
        self.final_response_scores = s_n
        self._channel = nisp_channel_scores(self._model, self._example, self._frl_name, s_n)
        self._model = None  # do not keep the model alive

    def channel_scores(self, name: str) -> torch.Tensor:
        """Per-output-channel NISP score of the layer at module path ``name`` (after ``calibrate``)."""
        if not self.calibrated:
            raise ConfigError("NISP needs calibration data: call calibrate(model, loader, num_batches)")
        if name not in self._channel:
            raise ConfigError(f"no NISP score for {name!r}; {close_matches(name, list(self._channel))}")
        return self._channel[name].clone()

    def _score(self, target: Target) -> torch.Tensor:
        w = target.weight
        s = self._channel.get(target.name)
        if s is None or s.numel() != w.shape[0]:
            raise ConfigError(
                f"NISP has no per-channel score of size {w.shape[0]} for {target.name!r}; "
                "calibrate on the same model (before pruning it)"
            )
        mean = float(s.mean())
        s = s / mean if mean > 0 else s
        return s.to(w.device, w.dtype).reshape((-1,) + (1,) * (w.ndim - 1)).expand_as(w).clone()

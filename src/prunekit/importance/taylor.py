"""Gradient-based criteria: first-order Taylor and second-order Optimal Brain Damage.

Both run the model in eval mode (BatchNorm running statistics are used and left untouched) on
labelled calibration batches and differentiate the loss (cross entropy by default) with respect to
the target weights only, through :func:`torch.autograd.grad`, so no ``.grad`` is left behind.

>>> import torch, torch.nn as nn
>>> from prunekit.targets import select
>>> m = nn.Sequential(nn.Linear(3, 2))
>>> data = [(torch.randn(8, 3), torch.randint(0, 2, (8,)))]
>>> Taylor().calibrate(m, data, 1, select(m)).scores(select(m)[0]).shape
torch.Size([2, 3])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunekit.errors import ConfigError, DataError
from prunekit.importance.base import DataDrivenImportance, call_model, logits_of, preserved_modes
from prunekit.targets import Target

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(outputs: Any, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy of the logits in ``outputs`` (B, classes) against integer ``labels`` (B,).

    ``outputs`` may be a tensor or a model output holding ``logits`` (Hugging Face); token logits
    (B, T, classes) with labels (B, T) are scored per token (label -100 ignored).
    """
    logits = logits_of(outputs, "cross-entropy loss")
    if logits.dim() == 3 and labels.dim() == 2:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    return F.cross_entropy(logits, labels)


class _GradientCriterion(DataDrivenImportance):
    """Shared plumbing: keep the targets, compute the batch loss, restore ``requires_grad``."""

    def __init__(self, loss_fn: LossFn | None = None) -> None:
        super().__init__()
        self.loss_fn: LossFn = loss_fn if loss_fn is not None else cross_entropy
        self._targets: list[Target] = []
        self._acc: dict[str, torch.Tensor] = {}
        self._count = 0

    def calibrate(
        self, model: nn.Module, loader: Iterable[Any], num_batches: int, targets: Sequence[Target] | None = None
    ) -> _GradientCriterion:
        """Collect statistics on up to ``num_batches`` batches; every submodule's mode is restored."""
        with preserved_modes(model):
            super().calibrate(model, loader, num_batches, targets)
        return self

    def _attach(self, model: nn.Module, targets: Sequence[Target]) -> list[RemovableHandle]:
        self._targets = list(targets)
        self._acc = {t.name: torch.zeros_like(t.weight, dtype=torch.float32) for t in targets}
        self._count = 0
        return []

    def _loss(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise DataError(
                f"{type(self).__name__} needs labelled calibration batches ((inputs, labels) pairs) "
                "to compute the loss gradient"
            )
        with torch.enable_grad():
            loss = self.loss_fn(call_model(model, inputs), labels)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ConfigError(f"{type(self).__name__}: loss_fn must return a scalar tensor, got {type(loss).__name__}"
                              + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""))
        return loss

    def _weights(self) -> list[torch.Tensor]:
        ws = [t.weight for t in self._targets]
        for w in ws:
            if not w.requires_grad:
                raise ConfigError(
                    f"{type(self).__name__}: a target weight has requires_grad=False; unfreeze it for calibration"
                )
        return ws


class Taylor(_GradientCriterion):
    """First-order Taylor importance ``|w * dL/dw|``, averaged over calibration batches.

    It estimates the loss change from zeroing one weight, ``L(w=0) - L(w) ~ -w * dL/dw``; summed
    over a group (channel, block) it scores the group. ``loss_fn(outputs, labels)`` defaults to
    cross entropy.
    """

    def _run_batch(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None) -> None:
        ws = self._weights()
        grads = torch.autograd.grad(self._loss(model, inputs, labels), ws, allow_unused=True)
        for t, w, g in zip(self._targets, ws, grads):
            if g is not None:
                self._acc[t.name] += (w.detach() * g).abs().float()
        self._count += 1

    def _score(self, target: Target) -> torch.Tensor:
        return (self._acc[target.name] / max(self._count, 1)).to(target.weight.dtype)

    def __repr__(self) -> str:
        return "Taylor()"


class OBD(_GradientCriterion):
    """Optimal Brain Damage saliency ``1/2 * h_ii * w_i^2`` with a data-estimated Hessian diagonal.

    ``method="fisher"``: ``h_ii`` = mean over calibration batches of the squared batch gradient
    (empirical Fisher at batch granularity; a loader with batch size 1 gives the per-sample Fisher).
    ``method="hutchinson"``: ``h_ii = E[v * (H v)]`` over ``samples`` Rademacher vectors ``v`` per
    batch, ``H v`` by double backpropagation; unbiased for the Hessian of the batch loss. Negative
    estimates (negative curvature or noise) are clamped to 0: OBD predicts no loss increase there.

    >>> OBD(method="newton")
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: OBD(method='newton'): use 'fisher' or 'hutchinson'
    """

    METHODS = ("fisher", "hutchinson")

    def __init__(
        self, method: str = "fisher", samples: int = 1, loss_fn: LossFn | None = None, seed: int = 0
    ) -> None:
        super().__init__(loss_fn)
        if method not in self.METHODS:
            raise ConfigError(f"OBD(method={method!r}): use 'fisher' or 'hutchinson'")
        if int(samples) < 1:
            raise ConfigError(f"OBD(samples={samples}): need at least one Hutchinson sample per batch")
        self.method = method
        self.samples = int(samples)
        self.seed = int(seed)
        self._gen: torch.Generator | None = None

    def _attach(self, model: nn.Module, targets: Sequence[Target]) -> list[RemovableHandle]:
        self._gen = torch.Generator().manual_seed(self.seed)
        return super()._attach(model, targets)

    def _rademacher(self, like: torch.Tensor) -> torch.Tensor:
        v = torch.randint(0, 2, like.shape, generator=self._gen, dtype=torch.int8)
        return (v.to(like.dtype) * 2 - 1).to(like.device)  # entries +-1

    def _run_batch(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None) -> None:
        ws = self._weights()
        loss = self._loss(model, inputs, labels)
        if self.method == "fisher":
            grads = torch.autograd.grad(loss, ws, allow_unused=True)
            for t, g in zip(self._targets, grads):
                if g is not None:
                    self._acc[t.name] += g.detach().float().pow(2)
            self._count += 1
            return
        grads = torch.autograd.grad(loss, ws, create_graph=True, allow_unused=True)
        live = [(t, w, g) for t, w, g in zip(self._targets, ws, grads) if g is not None and g.requires_grad]
        for s in range(self.samples):
            vs = [self._rademacher(w) for _, w, _ in live]
            gv = sum((g * v).sum() for (_, _, g), v in zip(live, vs))
            hvs = torch.autograd.grad(gv, [w for _, w, _ in live], retain_graph=s + 1 < self.samples, allow_unused=True)
            for (t, _, _), v, hv in zip(live, vs, hvs):
                if hv is not None:
                    self._acc[t.name] += (v * hv).detach().float()
            self._count += 1

    def hessian_diagonal(self, target: Target) -> torch.Tensor:
        """The estimated ``h_ii`` of ``target``'s weights (same shape; may be negative for Hutchinson)."""
        self.scores(target)  # raises if not calibrated for this target
        return self._acc[target.name] / max(self._count, 1)

    def _score(self, target: Target) -> torch.Tensor:
        h = (self._acc[target.name] / max(self._count, 1)).clamp(min=0)
        return (0.5 * h * target.weight.detach().float().pow(2)).to(target.weight.dtype)

    def __repr__(self) -> str:
        return f"OBD(method={self.method!r}, samples={self.samples})"

"""ADMM pruning (Zhang et al. 2018): learn weights that a hard prune at the target sparsity barely hurts.

Pruning is the constraint ``W in S`` (S: weights that keep only the allowed groups). ADMM splits it:

* W-step: SGD on ``loss + rho/2 ||W - Z + U||^2`` (the :meth:`ADMM.__call__` loss term);
* Z-step: ``Z = project(W + U)``, keeping the best groups of ``W + U`` under the granularity and
  allocation (any granularity: element, N:M, block, channel ...) -- every ``every`` steps;
* U-step: ``U += W - Z``; ``rho`` grows by ``rho_growth`` at each Z-step, up to ``rho_max``.

Then :meth:`ADMM.hard_prune` applies the masks of the last projection (and returns them), and
training continues with the masks in force. One object is both the loss term and the stepping
pruner of :func:`prunekit.train.fit` (``fit(..., regularizer=admm, pruner=admm)``); its
``state_dict`` (Z, U, rho, step) goes into the training state, so a run resumes.

>>> import torch
>>> from torch import nn
>>> from prunekit import Element, Global, Magnitude, select
>>> torch.manual_seed(0) and None
>>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
>>> admm = ADMM(model, select(model), Element(), Global(0.75), rho=0.1, every=5)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.05)
>>> for _ in range(20):
...     opt.zero_grad(); (model(torch.randn(16, 8)).pow(2).mean() + admm(model)).backward(); opt.step()
...     admm.step()
>>> masks = admm.hard_prune()
>>> round(masks.sparsity(), 2)
0.75
>>> masks.remove()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunekit.allocation.basic import Allocation
from prunekit.errors import ConfigError
from prunekit.granularity import Granularity
from prunekit.importance.magnitude import Magnitude
from prunekit.masks import Masks
from prunekit.targets import Target

__all__ = ["ADMM"]


class ADMM:
    """The ADMM state over ``targets``: auxiliary ``Z`` (projected), scaled duals ``U``, penalty ``rho``."""

    def __init__(
        self,
        model: nn.Module,
        targets: Sequence[Target],
        granularity: Granularity,
        allocation: Allocation,
        rho: float = 1e-3,
        every: int = 100,
        rho_growth: float = 1.3,
        rho_max: float = 1.0,
    ) -> None:
        from prunekit.pruning import check_components

        check_components(Magnitude(), granularity, allocation)
        self.targets = list(targets)
        if not self.targets:
            raise ConfigError("ADMM needs targets (prunekit.select(model, ...))")
        for name, value in (("rho", rho), ("rho_growth", rho_growth), ("rho_max", rho_max)):
            if not (math.isfinite(float(value)) and value > 0):
                raise ConfigError(f"ADMM {name} must be > 0, got {value!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"ADMM every (steps between Z/U updates) must be an int >= 1, got {every!r}")
        for t in self.targets:
            granularity.check(t)
        self.model, self.granularity, self.allocation = model, granularity, allocation
        self.rho, self.every, self.rho_growth, self.rho_max = float(rho), every, float(rho_growth), float(rho_max)
        self.step_count = 0
        self.U = {t.name: torch.zeros_like(t.weight.detach()) for t in self.targets}
        self.Z: dict[str, torch.Tensor] = {}
        self.keep: dict[str, torch.Tensor] = {}
        self._project()

    def _project(self) -> None:
        """Z-step: keep the best groups of W + U (by magnitude) under the granularity and allocation."""
        with torch.no_grad():
            v = {t.name: t.weight.detach() + self.U[t.name] for t in self.targets}
            scores = {n: x.abs().float() for n, x in v.items()}
            self.keep = self.allocation.allocate(self.targets, scores, self.granularity)
            self.Z = {n: v[n] * self.keep[n].to(v[n].dtype) for n in v}

    def __call__(self, model: nn.Module | None = None) -> torch.Tensor:
        """The W-step's loss term ``rho/2 * sum ||W - Z + U||^2``."""
        return 0.5 * self.rho * sum((t.weight - self.Z[t.name] + self.U[t.name]).pow(2).sum() for t in self.targets)

    def step(self) -> None:
        """After each optimizer step: every ``every`` steps, the Z- and U-steps and the rho update."""
        self.step_count += 1
        if self.step_count % self.every:
            return
        self._project()
        with torch.no_grad():
            for t in self.targets:
                self.U[t.name] += t.weight.detach() - self.Z[t.name]
        self.rho = min(self.rho * self.rho_growth, self.rho_max)

    def residual(self) -> float:
        """``sqrt(sum ||W - Z||^2) / sqrt(sum ||W||^2)``: how far W is from the constraint set."""
        with torch.no_grad():
            num = sum(float((t.weight - self.Z[t.name]).pow(2).sum()) for t in self.targets)
            den = sum(float(t.weight.pow(2).sum()) for t in self.targets)
        return math.sqrt(num / max(den, 1e-30))

    def hard_prune(self, enforce: bool = True) -> Masks:
        """Project once more and apply those masks to the model (enforced by default); returns them."""
        self._project()
        masks = Masks(dict(self.keep), {t.name: t.param_name for t in self.targets})
        return masks.apply(self.model, enforce=enforce)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count, "rho": self.rho, "U": {n: u.clone() for n, u in self.U.items()},
                "Z": {n: z.clone() for n, z in self.Z.items()}, "keep": {n: k.clone() for n, k in self.keep.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> ADMM:
        try:
            self.step_count, self.rho = int(state["step"]), float(state["rho"])
            self.U = {n: u.clone() for n, u in state["U"].items()}
            self.Z = {n: z.clone() for n, z in state["Z"].items()}
            self.keep = {n: k.clone() for n, k in state["keep"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"not an ADMM state (needs step, rho, U, Z, keep): {exc!r}") from None
        return self

    def __repr__(self) -> str:
        return (f"ADMM({len(self.targets)} targets, {self.granularity!r}, {self.allocation!r}, rho={self.rho:g}, "
                f"every={self.every}, step={self.step_count})")

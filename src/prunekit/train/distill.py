"""Knowledge distillation as a :class:`~prunekit.train.engine.Task`: recover a pruned model from its dense teacher.

``loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * base loss``
(Hinton et al. 2015). The teacher runs in eval mode without gradients on the same batch;
evaluation is the base task's (top-1 of the student).

>>> import torch
>>> from torch import nn
>>> teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
>>> task = Distillation(teacher, temperature=2.0, alpha=0.5)
>>> batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
>>> float(task.loss(student, batch).detach()) > 0
True
>>> student.load_state_dict(teacher.state_dict()) and None
>>> base = Classification().loss(student, batch)
>>> bool(torch.isclose(Distillation(teacher, 2.0, 0.5).loss(student, batch), 0.5 * base))
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.moduletools import eval_mode
from prunekit.train.engine import Classification, EvalResult, _logits, forward_batch

__all__ = ["Distillation"]


class Distillation:
    """Train the student on the teacher's softened outputs plus the base task's loss."""

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9,
                 base: Classification | None = None) -> None:
        if not isinstance(teacher, nn.Module):
            raise ConfigError(f"Distillation needs the teacher model, got {type(teacher).__name__}")
        if not (math.isfinite(float(temperature)) and temperature > 0):
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"alpha (the distillation weight) must be in [0, 1], got {alpha!r}")
        self.teacher, self.temperature, self.alpha = teacher, float(temperature), float(alpha)
        self.base = base if base is not None else Classification()

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        outputs, targets = forward_batch(model, batch)
        student = _logits(outputs)
        with torch.no_grad(), eval_mode(self.teacher):
            teacher = _logits(forward_batch(self.teacher, batch)[0])
        t = self.temperature
        soft = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1), log_target=True,
                        reduction="batchmean") * t * t
        if self.alpha == 1.0:
            return soft
        return self.alpha * soft + (1.0 - self.alpha) * self.base.loss_from(outputs, targets)

    def evaluate(self, model: nn.Module, loader: Iterable[Any], max_batches: int | None = None) -> EvalResult:
        return self.base.evaluate(model, loader, max_batches)

    def __repr__(self) -> str:
        return f"Distillation(T={self.temperature:g}, alpha={self.alpha:g}, base={self.base!r})"

"""Sparsity schedules (plain functions of the step) and :class:`Pruner`, which steps masks in any loop.

A schedule maps a training step to the target overall sparsity: :class:`OneShot`, :class:`Iterative`
(k prune -> fine-tune rounds) and :class:`AGP` (Zhu & Gupta 2017's cubic ramp). They are frozen
dataclasses, so a schedule is its parameters and nothing else.

:class:`Pruner` combines targets, importance, granularity, an allocation and a schedule. Its
``step()`` goes after ``optimizer.step()`` in any training loop (the way an LR scheduler does) and
updates the enforced :class:`~prunekit.masks.Masks` whenever the scheduled sparsity changes; it is
also what :func:`prunekit.train.fit` takes as ``pruner=``. Each piece stays usable alone.

>>> import torch, torch.nn as nn
>>> from prunekit import Element, Global, Magnitude, select
>>> torch.manual_seed(0) and None
>>> model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
>>> pruner = Pruner(model, select(model), Magnitude(), Element(), Global(0.9), AGP(0.9, end=40, every=10))
>>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
>>> for _ in range(50):
...     opt.zero_grad(); model(torch.randn(8, 32)).pow(2).mean().backward(); opt.step()
...     _ = pruner.step()
>>> round(pruner.masks.sparsity(), 3), pruner.sparsity
(0.9, 0.9)
>>> _ = pruner.remove()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.allocation.basic import Allocation
from prunekit.errors import ConfigError
from prunekit.granularity import Granularity, check_sparsity
from prunekit.importance.base import Importance
from prunekit.masks import Masks
from prunekit.targets import Target


def _check_step(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a step number >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class OneShot:
    """All of ``sparsity`` at step ``at`` (0: before training starts).

    >>> OneShot(0.8, at=5)(4), OneShot(0.8, at=5)(5)
    (0.0, 0.8)
    """

    sparsity: float
    at: int = 0

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        _check_step(self.at, "at")

    @property
    def final(self) -> float:
        return float(self.sparsity)

    def __call__(self, step: int) -> float:
        return float(self.sparsity) if step >= self.at else 0.0


@dataclass(frozen=True)
class Iterative:
    """``rounds`` pruning rounds, one every ``every`` steps from ``start``; each round removes the
    same fraction of the weights still left (``keep_k = (1 - sparsity) ** (k / rounds)``, as in
    Han et al. 2015 / Frankle & Carbin 2019), reaching ``sparsity`` at the last round.

    >>> s = Iterative(0.875, rounds=3, every=10)
    >>> [round(s(t), 3) for t in (0, 9, 10, 20, 99)]
    [0.5, 0.5, 0.75, 0.875, 0.875]
    """

    sparsity: float
    rounds: int
    every: int
    start: int = 0

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"rounds must be an int >= 1, got {self.rounds!r}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(f"every must be an int >= 1 (steps between rounds), got {self.every!r}")
        _check_step(self.start, "start")

    @property
    def final(self) -> float:
        return float(self.sparsity)

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 0.0
        k = min(self.rounds, (step - self.start) // self.every + 1)
        return 1.0 - (1.0 - float(self.sparsity)) ** (k / self.rounds)


@dataclass(frozen=True)
class AGP:
    """Automated gradual pruning (Zhu & Gupta 2017): from ``initial`` at ``start`` to ``final`` at
    ``end``, updated every ``every`` steps, ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3``.

    Steep at first, while redundant weights abound; flat near the end.

    >>> s = AGP(0.9, start=0, end=100, every=10)
    >>> [round(s(t), 4) for t in (0, 5, 10, 50, 100, 200)]
    [0.0, 0.0, 0.2439, 0.7875, 0.9, 0.9]
    """

    final: float
    end: int
    start: int = 0
    initial: float = 0.0
    every: int = 1

    def __post_init__(self) -> None:
        check_sparsity(self.final, "final")
        check_sparsity(self.initial, "initial")
        _check_step(self.start, "start")
        _check_step(self.end, "end")
        if self.end <= self.start:
            raise ConfigError(f"AGP end ({self.end}) must come after start ({self.start})")
        if self.initial > self.final:
            raise ConfigError(f"AGP initial ({self.initial}) must not exceed final ({self.final})")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(f"every must be an int >= 1 (steps between mask updates), got {self.every!r}")

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 0.0
        t = min(step, self.end)
        t = self.start + ((t - self.start) // self.every) * self.every  # updates only every `every` steps
        if step >= self.end:
            t = self.end
        frac = (t - self.start) / (self.end - self.start)
        return float(self.final + (self.initial - self.final) * (1.0 - frac) ** 3)


SCHEDULES = {"oneshot": OneShot, "iterative": Iterative, "agp": AGP}


class Pruner:
    """Targets + importance + granularity + allocation + schedule, stepped like an LR scheduler.

    Construction applies the step-0 sparsity (a :class:`OneShot` at 0 prunes at once). Each
    ``step()`` advances the step and, when the schedule's sparsity changed, re-scores the targets
    and updates the masks (monotone by default: a pruned weight stays pruned, and the scheduled
    sparsity is reached exactly up to one group as long as kept weights score above zero).
    Data-driven importances must be calibrated by the caller. ``state_dict()`` holds the step and
    the masks, so a training run that saves it resumes exactly.
    """

    def __init__(
        self,
        model: nn.Module,
        targets: Sequence[Target] | None,
        importance: Importance,
        granularity: Granularity,
        allocation: Allocation,
        schedule: Any,
        monotone: bool = True,
    ) -> None:
        from prunekit.pruning import check_components
        from prunekit.targets import select

        self.targets = list(targets) if targets is not None else select(model)
        if not self.targets:
            raise ConfigError("Pruner got no targets: select(model, ...) returned nothing to prune")
        check_components(importance, granularity, allocation)
        if not callable(schedule):
            raise ConfigError(f"schedule must map a step to a sparsity (e.g. AGP(...)), got {schedule!r}")
        for t in self.targets:
            granularity.check(t)
        self.model, self.importance, self.granularity = model, importance, granularity
        self.allocation, self.schedule, self.monotone = allocation, schedule, bool(monotone)
        self.step_count = 0
        self.sparsity = 0.0  # the scheduled sparsity the masks currently implement
        self.masks = Masks(
            {t.name: torch.ones_like(t.weight, dtype=torch.bool) for t in self.targets},
            {t.name: t.param_name for t in self.targets},
        ).apply(model)
        self._prune_to(self._scheduled(0))

    def _scheduled(self, step: int) -> float:
        s = float(self.schedule(step))
        if not 0.0 <= s < 1.0 or math.isnan(s):
            raise ConfigError(f"schedule {self.schedule!r} gave sparsity {s} at step {step}; expected [0, 1)")
        return s

    def _prune_to(self, sparsity: float) -> None:
        if sparsity == self.sparsity:
            return
        from prunekit.pruning import compute_scores

        scores = compute_scores(self.targets, self.importance)
        if self.monotone:  # already-pruned weights rank lowest, so they are the first to go again
            scores = {n: s.masked_fill(~self.masks[n].to(s.device), 0.0) for n, s in scores.items()}
        new = self.allocation.at(sparsity).allocate(self.targets, scores, self.granularity)
        self.masks.update(new, monotone=self.monotone)
        self.sparsity = sparsity

    def step(self) -> float:
        """Advance one step; update the masks if the schedule says so. Returns the scheduled sparsity."""
        self.step_count += 1
        self._prune_to(self._scheduled(self.step_count))
        return self.sparsity

    def remove(self) -> Masks:
        """Stop enforcing (the pruned weights stay zero); returns the masks."""
        self.masks.remove()
        return self.masks

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count, "sparsity": self.sparsity, "masks": self.masks.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> Pruner:
        """Continue from a saved state: same step, same masks (applied and enforced)."""
        try:
            step, sparsity, masks = int(state["step"]), float(state["sparsity"]), state["masks"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a Pruner state (needs step, sparsity, masks): {exc!r}") from None
        self.masks.load_state_dict(masks)
        self.step_count, self.sparsity = step, sparsity
        return self

    def __repr__(self) -> str:
        return (
            f"Pruner(step={self.step_count}, sparsity={self.sparsity:.4f}, {self.importance!r}, "
            f"{self.granularity!r}, {self.allocation!r}, {self.schedule!r})"
        )

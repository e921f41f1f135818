"""Lottery tickets: iterative magnitude pruning with reset or rewinding (Frankle & Carbin 2019;
Frankle et al. 2019, "Stabilizing the lottery ticket hypothesis").

Each round trains to the end, prunes ``rate`` of the weights still left (global magnitude by
default), then sets the survivors back to their values at step ``rewind_step`` -- 0 is the
original initialisation -- together with the optimizer, the learning-rate schedule and the RNG
state of that step (a :class:`~prunekit.train.TrainState` captured while training), and trains
again with the masks in force. :func:`random_reinit_control` trains the same masks from a fresh
random initialisation, the paper's control.

>>> import torch
>>> from torch import nn
>>> from torch.utils.data import DataLoader, TensorDataset
>>> from prunekit.train import TrainConfig
>>> torch.manual_seed(0) and None
>>> data = DataLoader(TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,))), batch_size=16)
>>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
>>> rounds = find_ticket(model, data, data, TrainConfig(epochs=1, lr=0.1, seed=0, progress=False),
...                      rounds=2, rate=0.5, rewind_step=1)
>>> [round(r.remaining, 2) for r in rounds]
[1.0, 0.5, 0.25]
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.allocation.basic import Allocation, Global
from prunekit.errors import ConfigError
from prunekit.granularity import Element, Granularity
from prunekit.masks import Masks
from prunekit.targets import Target, select
from prunekit.train.engine import TrainConfig, fit
from prunekit.train.state import TrainState

__all__ = ["TicketRound", "find_ticket", "random_reinit_control"]


@dataclass(frozen=True)
class TicketRound:
    """One round: the fraction of target weights left, test top-1 and loss after training, the masks."""

    round: int
    remaining: float
    top1: float
    loss: float
    masks: dict[str, torch.Tensor]


def find_ticket(
    model: nn.Module,
    train_loader: Any,
    test_loader: Any,
    cfg: TrainConfig,
    rounds: int,
    rate: float = 0.2,
    rewind_step: int = 0,
    targets: Sequence[Target] | None = None,
    granularity: Granularity | None = None,
    allocation: Callable[[float], Allocation] = Global,
    on_round: Callable[[TicketRound], None] | None = None,
) -> list[TicketRound]:
    """Iterative magnitude pruning with rewinding; returns round 0 (dense) and one entry per round.

    ``rate``: fraction of the remaining weights removed per round (0.2 in the paper), so after
    ``r`` rounds ``(1 - rate) ** r`` are left. ``rewind_step``: the optimizer step whose weights
    and training state the survivors go back to (0: reset to the initialisation). ``allocation``
    builds the allocation for an overall sparsity (default :class:`Global`). The model ends as the
    last round trained it, with its masks removed (zeros in place).
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an int >= 1, got {rounds!r}")
    if not 0.0 < float(rate) < 1.0:
        raise ConfigError(f"rate (fraction of the remaining weights pruned per round) must be in (0, 1), got {rate}")
    if isinstance(rewind_step, bool) or not isinstance(rewind_step, int) or rewind_step < 0:
        raise ConfigError(f"rewind_step must be an int >= 0, got {rewind_step!r}")
    targets = list(targets) if targets is not None else select(model)
    granularity = granularity if granularity is not None else Element()
    snapshot: dict[str, Any] = {}
    if rewind_step == 0:
        snapshot.update(weights=copy.deepcopy(model.state_dict()), state=None)

    def capture(state: TrainState) -> None:
        if state.step == rewind_step and "weights" not in snapshot:
            # deep copies: state_dict()s share storage with the live tensors (the optimizer's momentum
            # buffers are updated in place), and the rewind needs the values of this step
            snapshot.update(weights=copy.deepcopy(model.state_dict()), state=copy.deepcopy(state.state_dict()))

    history: list[TicketRound] = []
    masks: Masks | None = None
    for r in range(rounds + 1):
        if r == 0:
            fit(model, train_loader, None, cfg, state=TrainState(), on_step=capture)
            if "weights" not in snapshot:
                raise ConfigError(f"rewind_step {rewind_step} is past the end of training ({cfg.epochs} epochs)")
        else:
            sparsity = 1.0 - (1.0 - rate) ** r
            scores = {t.name: t.weight.detach().abs().float() for t in targets}
            if masks is not None:  # survivors only: what was pruned stays pruned
                scores = {n: s.masked_fill(~masks[n], 0.0) for n, s in scores.items()}
            keep = allocation(sparsity).allocate(targets, scores, granularity)
            if masks is not None:
                keep = {n: k & masks[n] for n, k in keep.items()}
                masks.remove()
            model.load_state_dict(snapshot["weights"])  # rewind the survivors (and everything else)
            masks = Masks(keep, {t.name: t.param_name for t in targets}).apply(model)
            state = TrainState.from_state_dict(snapshot["state"]) if snapshot["state"] is not None else TrainState()
            fit(model, train_loader, None, _without_seed(cfg) if snapshot["state"] is not None else cfg, state=state)
        result = _evaluate(model, test_loader)
        remaining = 1.0 if masks is None else 1.0 - masks.sparsity()
        entry = TicketRound(r, remaining, result.top1, result.loss,
                            {n: m.clone() for n, m in (masks.items() if masks is not None else ())})
        history.append(entry)
        if on_round is not None:
            on_round(entry)
    if masks is not None:
        masks.remove()
    return history


def random_reinit_control(
    model_factory: Callable[[], nn.Module],
    masks: dict[str, torch.Tensor],
    train_loader: Any,
    test_loader: Any,
    cfg: TrainConfig,
    seed: int,
) -> TicketRound:
    """Train a fresh model (``model_factory()`` under ``torch.manual_seed(seed)``) with ``masks`` in force:
    the same sparse structure from a random initialisation."""
    torch.manual_seed(seed)
    model = model_factory()
    applied = Masks(masks).apply(model)
    fit(model, train_loader, None, cfg, state=TrainState())
    result = _evaluate(model, test_loader)
    entry = TicketRound(-1, 1.0 - applied.sparsity(), result.top1, result.loss, dict(masks))
    applied.remove()
    return entry


def _without_seed(cfg: TrainConfig) -> TrainConfig:
    """A resumed run restores the RNG states of the rewind step: it must not reseed."""
    from dataclasses import replace

    return replace(cfg, seed=None)


def _evaluate(model: nn.Module, loader: Any):
    from prunekit.train.engine import evaluate

    return evaluate(model, loader)


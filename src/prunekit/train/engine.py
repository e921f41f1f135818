"""Train, fine-tune and evaluate any ``nn.Module`` on any DataLoader of ``(inputs, labels)``.

>>> import torch
>>> from torch.utils.data import DataLoader, TensorDataset
>>> data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))), batch_size=16)
>>> model = torch.nn.Linear(4, 2)
>>> history = fit(model, data, data, TrainConfig(epochs=1, lr=0.1, progress=False))
>>> 0.0 <= history[-1].test.top1 <= 1.0
True
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from prunekit.errors import ConfigError

StepHook = Callable[[nn.Module, int], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training / fine-tuning run needs (one flat dataclass, no hidden defaults)."""

    epochs: int = 1
    lr: float = 0.01
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the total steps, for "step"
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    channels_last: bool = False
    seed: int | None = 0
    max_steps_per_epoch: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; use 'sgd' or 'adamw'")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ConfigError(f"unknown schedule {self.schedule!r}; use 'cosine', 'step' or 'constant'")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError(f"max_steps_per_epoch must be >= 1 or None, got {self.max_steps_per_epoch}")


@dataclass(frozen=True)
class EvalResult:
    """Top-1 / top-5 accuracy (fractions) and mean cross-entropy loss over a dataset."""

    top1: float
    top5: float
    loss: float
    samples: int


@dataclass
class EpochRecord:
    """What one epoch of :func:`fit` measured."""

    epoch: int
    train_loss: float
    test: EvalResult
    seconds: float
    lr: float
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _progress(iterable: Iterable, enabled: bool, desc: str, total: int | None) -> Iterable:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, max_batches: int | None = None, progress: bool = False) -> EvalResult:
    """Top-1, top-5 and loss of ``model`` on ``loader``; restores the model's train/eval mode."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    correct1 = correct5 = 0
    loss_sum = 0.0
    n = 0
    try:
        for i, (x, y) in enumerate(_progress(loader, progress, "eval", None)):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            logits = model(x)  # (B, classes)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            k = min(5, logits.shape[1])
            topk = logits.topk(k, dim=1).indices  # (B, k)
            hit = topk.eq(y[:, None])
            correct1 += int(hit[:, 0].sum())
            correct5 += int(hit.any(dim=1).sum())
            n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        raise ConfigError("evaluate() got an empty loader")
    return EvalResult(correct1 / n, correct5 / n, loss_sum / n, n)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov-free, with momentum) or AdamW over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step`` of ``total`` under the config's schedule."""
    if cfg.schedule == "constant" or total <= 0:
        return cfg.lr
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(step, total) / total))
    passed = sum(step >= m * total for m in cfg.step_milestones)
    return cfg.lr * cfg.step_gamma**passed


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    step0: int,
    total_steps: int,
    after_step: StepHook | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
) -> tuple[float, int]:
    """One pass over ``loader``; returns (mean loss, global step after the epoch).

    ``after_step(model, step)`` runs after every optimizer step (mask enforcement, schedules);
    ``regularizer(model)`` is added to the loss (L1, group lasso, slimming...).
    """
    model.train()
    device = model_device(model)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    step, loss_sum, n = step0, 0.0, 0
    limit = cfg.max_steps_per_epoch
    total = min(len(loader), limit) if limit else len(loader)
    for i, (x, y) in enumerate(_progress(loader, cfg.progress, "train", total)):
        if limit is not None and i >= limit:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, cfg)
        x, y = x.to(device), y.to(device)
        if cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = criterion(model(x), y)
        if regularizer is not None:
            loss = loss + regularizer(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if after_step is not None:
            after_step(model, step)
        loss_sum += float(loss.detach()) * len(y)
        n += len(y)
    return loss_sum / max(n, 1), step


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader | None,
    cfg: TrainConfig,
    after_step: StepHook | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> list[EpochRecord]:
    """Train ``model`` for ``cfg.epochs`` epochs, evaluating after each; returns the history.

    Works with any model and DataLoader; pass ``after_step`` to keep pruning masks in force.
    """
    if cfg.seed is not None:
        seed_everything(cfg.seed)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    per_epoch = min(len(train_loader), cfg.max_steps_per_epoch or len(train_loader))
    total = per_epoch * cfg.epochs
    history: list[EpochRecord] = []
    step = 0
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        lr = lr_at(step, total, cfg)
        train_loss, step = train_epoch(model, train_loader, optimizer, cfg, step, total, after_step, regularizer)
        test = evaluate(model, test_loader) if test_loader is not None else EvalResult(math.nan, math.nan, math.nan, 0)
        record = EpochRecord(epoch + 1, train_loss, test, time.perf_counter() - t0, lr)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return history

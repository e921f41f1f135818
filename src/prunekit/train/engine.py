"""Train, fine-tune and evaluate any ``nn.Module`` on any DataLoader, for any task; resumable.

A batch is an ``(inputs, targets)`` pair or a mapping of model keyword arguments (a dict, a
Hugging Face ``BatchEncoding``). What the loss and the evaluation are comes from a :class:`Task`
(default :class:`Classification`: cross-entropy, top-1 / top-5). A non-finite loss stops
training with :class:`TrainingDiverged` before the bad update is applied; a callback raising
:class:`StopTraining` stops it cleanly, and the :class:`~prunekit.train.state.TrainState` it saw
continues the run bit-identically through ``fit(..., state=...)``.

>>> import torch
>>> from torch.utils.data import DataLoader, TensorDataset
>>> data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))), batch_size=16)
>>> model = torch.nn.Linear(4, 2)
>>> history = fit(model, data, data, TrainConfig(epochs=1, lr=0.1, progress=False))
>>> 0.0 <= history[-1].test.top1 <= 1.0
True
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from prunekit.errors import CheckpointError, ConfigError, PrunekitError
from prunekit.moduletools import model_device
from prunekit.train import distributed
from prunekit.train.state import TrainState, capture_rng, loader_generators, restore_rng

StepHook = Callable[[nn.Module, int], None]
IGNORE_INDEX = -100  # targets equal to this are skipped (torch's and Hugging Face's convention)


class TrainingDiverged(PrunekitError):
    """The training loss became NaN or infinite; raised before the update from that loss is applied.

    ``step`` (1-based global step that failed), ``epoch`` (1-based, ``None`` outside :func:`fit`)
    and ``loss`` are attributes as well as part of the message.

    >>> err = TrainingDiverged("training diverged at global step 3", step=3, epoch=1, loss=float("nan"))
    >>> (err.step, err.epoch, isinstance(err, PrunekitError))
    (3, 1, True)
    """

    def __init__(
        self, message: str, *, step: int = 0, epoch: int | None = None, loss: float = math.nan
    ) -> None:
        super().__init__(message)
        self.step = step
        self.epoch = epoch
        self.loss = loss


class StopTraining(Exception):
    """Raise from ``on_step`` / ``on_epoch`` / ``on_epoch_state`` / ``after_step`` to end :func:`fit` cleanly.

    ``fit`` returns the history so far, and the :class:`TrainState` passed to the callbacks (or
    to ``fit(state=...)``) is then resumable.

    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=2)
    >>> def stop_at_3(state):
    ...     if state.step == 3:
    ...         raise StopTraining
    >>> state = TrainState()
    >>> fit(torch.nn.Linear(4, 2), data, None, TrainConfig(epochs=2, progress=False), state=state, on_step=stop_at_3)
    []
    >>> (state.epoch, state.step, state.epoch_step)
    (0, 3, 3)
    """


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training / fine-tuning run needs (one flat dataclass, no hidden defaults).

    ``seed=None`` (the default) leaves the global RNGs alone; an integer makes :func:`fit` call
    :func:`seed_everything` first.

    >>> TrainConfig(lr=float("nan"))
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: lr must be > 0 and finite, got nan
    """

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
    seed: int | None = None
    max_steps_per_epoch: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be > 0 and finite, got {self.lr}")
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be >= 0 and finite, got {value}")
        if not (math.isfinite(self.step_gamma) and self.step_gamma > 0):
            raise ConfigError(f"step_gamma must be > 0 and finite, got {self.step_gamma}")
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
    """Top-1 / top-5 accuracy (fractions) and mean loss over a dataset (``nan`` where a task has none)."""

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

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EpochRecord:
        """The inverse of :meth:`as_dict`.

        >>> r = EpochRecord(1, 0.5, EvalResult(0.9, 1.0, 0.3, 10), 2.0, 0.1)
        >>> EpochRecord.from_dict(r.as_dict()) == r
        True
        """
        test = d["test"]
        if not isinstance(test, EvalResult):
            test = EvalResult(
                float(test["top1"]), float(test["top5"]), float(test["loss"]), int(test["samples"])
            )
        extra = {str(k): float(v) for k, v in dict(d.get("extra") or {}).items()}
        return cls(int(d["epoch"]), float(d["train_loss"]), test, float(d["seconds"]), float(d["lr"]), extra)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _progress(iterable: Iterable, enabled: bool, desc: str, total: int | None) -> Iterable:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------- batches


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _check_batch(batch: Any) -> None:
    if isinstance(batch, Mapping) or (isinstance(batch, (tuple, list)) and len(batch) == 2):
        return
    what = type(batch).__name__ + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    raise ConfigError(
        f"a batch must be an (inputs, targets) pair or a mapping of model keyword arguments "
        f"(dict, BatchEncoding), got a {what}; wrap the dataset or pass a collate_fn that returns one"
    )


def forward_batch(model: nn.Module, batch: Any) -> tuple[Any, torch.Tensor | None]:
    """Move ``batch`` to the model's device and run the model: ``(outputs, targets)``.

    A pair ``(inputs, targets)`` runs ``model(inputs)``; a mapping runs ``model(**batch)`` (every
    tensor value moved) and its targets are ``batch["labels"]`` (``None`` when absent).

    >>> import torch
    >>> out, y = forward_batch(torch.nn.Linear(3, 2), (torch.zeros(4, 3), torch.ones(4)))
    >>> tuple(out.shape), y.tolist()
    ((4, 2), [1.0, 1.0, 1.0, 1.0])
    >>> class KW(torch.nn.Module):
    ...     def forward(self, x, labels=None):
    ...         return {"logits": x * 2}
    >>> forward_batch(KW(), {"x": torch.ones(1, 2), "labels": torch.tensor([1])})[0]["logits"].tolist()
    [[2.0, 2.0]]
    """
    _check_batch(batch)
    device = model_device(model)
    if isinstance(batch, Mapping):
        moved = {k: _to_device(v, device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return model(**moved), moved.get("labels")
    inputs, targets = batch
    return model(_to_device(inputs, device)), _to_device(targets, device)


def _prepare(batch: Any, device: torch.device, channels_last: bool) -> Any:
    """The batch on ``device`` (inputs of a pair in channels_last when asked and 4-D)."""
    _check_batch(batch)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    inputs, targets = _to_device(tuple(batch), device)
    if channels_last and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, targets


def _batch_size(batch: Any) -> int:
    """Samples in a batch: the first dimension of the targets (pair) or of the first tensor (mapping)."""
    values = list(batch.values()) if isinstance(batch, Mapping) else [batch[1], batch[0]]
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
    for v in values:
        try:
            return len(v)
        except TypeError:
            continue
    return 1


def _logits(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, Mapping):
        logits = outputs.get("logits")
    if not isinstance(logits, torch.Tensor):
        raise ConfigError(
            f"the model returned a {type(outputs).__name__}: Classification needs a logits tensor, an "
            "object with .logits or a mapping with 'logits'; pass fit(..., task=...) for other outputs"
        )
    return logits


def _targets(targets: torch.Tensor | None) -> torch.Tensor:
    if targets is None:
        raise ConfigError("the batch mapping has no 'labels' entry: Classification takes its targets from it")
    return targets


def _flatten(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, C) logits with (B, T) targets (token classification) become (B*T, C) and (B*T,)."""
    if logits.dim() > 2 and logits.shape[:-1] == targets.shape:
        return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    return logits, targets


# ------------------------------------------------------------------------------------------- tasks


@runtime_checkable
class Task(Protocol):
    """What to minimise and how to measure it. :func:`fit` needs exactly these two methods.

    ``loss(model, batch)`` returns a scalar tensor (``fit`` hands it the batch already on the
    model's device); ``evaluate(model, loader, max_batches)`` returns an :class:`EvalResult`
    (use ``nan`` for the fields a task has no meaning for) and must restore the model's mode.

    >>> isinstance(Classification(), Task)
    True
    """

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...

    def evaluate(
        self, model: nn.Module, loader: Iterable[Any], max_batches: int | None = None
    ) -> EvalResult: ...


@dataclass(frozen=True)
class Classification:
    """Cross-entropy training, top-1 / top-5 evaluation (the default :class:`Task`).

    Logits are the model output, its ``.logits`` or its ``["logits"]``; targets are the second
    element of a pair or ``batch["labels"]``. ``(B, T, C)`` logits with ``(B, T)`` targets are
    scored per token, and targets equal to -100 are skipped. ``loss_fn(logits, targets)``
    replaces the cross-entropy (training, and the ``loss`` of :meth:`evaluate`, weighted by the
    number of targets per batch); it cannot be combined with ``label_smoothing``.

    >>> import torch
    >>> task = Classification()
    >>> batch = (torch.zeros(2, 3), torch.tensor([0, 1]))
    >>> float(task.loss(torch.nn.Linear(3, 4), batch).detach()) >= 0
    True
    >>> mse = Classification(loss_fn=lambda logits, y: ((logits - 1) ** 2).mean())
    >>> float(mse.loss(torch.nn.Identity(), (torch.ones(2, 3), torch.tensor([0, 1]))))
    0.0
    """

    label_smoothing: float = 0.0
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.loss_fn is not None and self.label_smoothing:
            raise ConfigError(
                "Classification takes label_smoothing or loss_fn, not both (put smoothing in loss_fn)"
            )
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise ConfigError(f"loss_fn must be callable(logits, targets), got {type(self.loss_fn).__name__}")

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        outputs, targets = forward_batch(model, batch)
        return self.loss_from(outputs, targets)

    def loss_from(self, outputs: Any, targets: Any) -> torch.Tensor:
        """The loss of model ``outputs`` against ``targets`` (for tasks that add terms, e.g. distillation)."""
        logits, targets = _logits(outputs), _targets(targets)
        if self.loss_fn is not None:
            return self.loss_fn(logits, targets)
        logits, targets = _flatten(logits, targets)
        return nn.functional.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable[Any], max_batches: int | None = None) -> EvalResult:
        """Top-1, top-5 and loss over ``loader`` (the first ``max_batches``); restores train/eval mode."""
        was_training = model.training
        model.eval()
        correct1 = correct5 = 0
        loss_sum = 0.0
        n = 0
        try:
            for batch in itertools.islice(loader, max_batches):
                outputs, targets = forward_batch(model, batch)
                raw_logits, raw_targets = _logits(outputs), _targets(targets)
                logits, targets = _flatten(raw_logits, raw_targets)  # (N, classes), (N,)
                valid = targets != IGNORE_INDEX
                count = int(valid.sum())
                if self.loss_fn is None:
                    loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
                else:
                    loss_sum += float(self.loss_fn(raw_logits, raw_targets)) * count
                k = min(5, logits.shape[1])
                hit = logits.topk(k, dim=1).indices.eq(targets[:, None]) & valid[:, None]  # (N, k)
                correct1 += int(hit[:, 0].sum())
                correct5 += int(hit.any(dim=1).sum())
                n += count
        finally:
            model.train(was_training)
        if n == 0:
            raise ConfigError("evaluate() got an empty loader")
        return EvalResult(correct1 / n, correct5 / n, loss_sum / n, n)


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    max_batches: int | None = None,
    progress: bool = False,
    *,
    task: Task | None = None,
) -> EvalResult:
    """Evaluate ``model`` with ``task`` (default :class:`Classification`); restores the model's mode."""
    task = Classification() if task is None else task
    return task.evaluate(model, _progress(loader, progress, "eval", None), max_batches)


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


# ---------------------------------------------------------------------------------------- training


def _steps_per_epoch(loader: Any, cfg: TrainConfig) -> int:
    try:
        n = len(loader)
    except TypeError as exc:
        raise ConfigError(
            f"the train loader ({type(loader).__name__}) has no len(); fit needs it for the schedule"
        ) from exc
    return min(n, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else n


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"]) if optimizer.param_groups else math.nan


def _diverged(
    value: float, state: TrainState, epoch: int | None, model: nn.Module, lr: float
) -> TrainingDiverged:
    step = state.step + 1
    where = f"global step {step}" + (
        f" (epoch {epoch}, step {state.epoch_step + 1} of the epoch)" if epoch else ""
    )
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    weights = (
        f"the update was not applied, the weights are those after step {state.step}"
        if finite
        else "the weights were already non-finite (an earlier update overflowed)"
    )
    return TrainingDiverged(
        f"training diverged at {where}: the loss is {value}; {weights}. Lower the learning rate "
        f"(it was {lr:.4g}; try {lr / 10:.4g}) or check the inputs for NaN/inf values",
        step=step,
        epoch=epoch,
        loss=value,
    )


def _run_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    task: Task,
    total_steps: int,
    per_epoch: int,
    state: TrainState,
    *,
    epoch: int | None,
    skip: int = 0,
    resume_rng: Mapping[str, Any] | None = None,
    scheduler: Any = None,
    pruner: Any = None,
    after_step: StepHook | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    notify: Callable[[], None] | None = None,
) -> None:
    """Train the rest of one epoch, updating ``state`` (step counters, loss sum) in place."""
    model.train()
    device = model_device(model)
    ddp = distributed.active(model)
    it = iter(_progress(loader, cfg.progress, "train", per_epoch))
    for done in range(skip):  # batches the interrupted run already trained on: fetched, not computed
        try:
            next(it)
        except StopIteration:
            raise CheckpointError(
                f"cannot resume: the state is {skip} steps into the epoch but the train loader ran out "
                f"after {done}; use the loader of the interrupted run"
            ) from None
    if resume_rng is not None:
        restore_rng(resume_rng)
    for batch in itertools.islice(it, per_epoch - skip):
        batch = _prepare(batch, device, cfg.channels_last)
        if scheduler is None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(state.step, total_steps, cfg)
        loss = task.loss(model, batch)
        if regularizer is not None:
            loss = loss + regularizer(model)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ConfigError(f"the task's loss must be a scalar tensor, got {shape}")
        value = float(loss.detach())
        n = _batch_size(batch)
        loss_sum, samples = value * n, n
        if ddp:  # every rank reports (and checks) the loss over the global batch, so all stop together
            loss_sum, total = distributed.all_reduce_sum([loss_sum, float(n)])
            samples = int(round(total))
            value = loss_sum / max(samples, 1)
        if not math.isfinite(value):
            raise _diverged(value, state, epoch, model, _current_lr(optimizer))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if pruner is not None:
            pruner.step()
        state.step += 1
        state.epoch_step += 1
        state.epoch_loss_sum += loss_sum
        state.epoch_samples += samples
        if after_step is not None:
            after_step(model, state.step)
        if notify is not None:
            notify()


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    step0: int,
    total_steps: int,
    after_step: StepHook | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    *,
    task: Task | None = None,
) -> tuple[float, int]:
    """One pass over ``loader``; returns (mean loss, global step after the epoch).

    ``after_step(model, step)`` runs after every optimizer step (mask enforcement, schedules);
    ``regularizer(model)`` is added to the loss (L1, group lasso, slimming...). Raises
    :class:`TrainingDiverged` on a non-finite loss, before the update.
    """
    task = Classification(label_smoothing=cfg.label_smoothing) if task is None else task
    state = TrainState(step=step0)
    per_epoch = _steps_per_epoch(loader, cfg)
    _run_epoch(
        model,
        loader,
        optimizer,
        cfg,
        task,
        total_steps,
        per_epoch,
        state,
        epoch=None,
        after_step=after_step,
        regularizer=regularizer,
    )
    return state.epoch_loss_sum / max(state.epoch_samples, 1), state.step


def _check_methods(obj: Any, name: str, methods: tuple[str, ...]) -> None:
    missing = [m for m in methods if not callable(getattr(obj, m, None))]
    if missing:
        raise ConfigError(f"{name} ({type(obj).__name__}) lacks {', '.join(m + '()' for m in missing)}")


def _load(obj: Any, saved: Mapping[str, Any], name: str) -> None:
    try:
        obj.load_state_dict(saved)
    except Exception as exc:
        raise CheckpointError(
            f"cannot restore the {name} from the training state: {type(exc).__name__}: {exc} "
            f"(build the {name} as in the interrupted run)"
        ) from exc


def _check_resume(state: TrainState, per_epoch: int, cfg: TrainConfig, scheduler: Any, pruner: Any) -> None:
    if state.epoch > cfg.epochs:
        raise ConfigError(f"the training state has {state.epoch} epochs done but cfg.epochs is {cfg.epochs}")
    if state.epoch_step > per_epoch or state.step != state.epoch * per_epoch + state.epoch_step:
        raise CheckpointError(
            f"the training state (epoch {state.epoch}, step {state.step}, {state.epoch_step} steps into the "
            f"epoch) does not match {per_epoch} steps per epoch; resume with the same loader and "
            "max_steps_per_epoch as the interrupted run"
        )
    if state.epoch_step > 0 and not (state.rng and state.rng.get("epoch_start") and state.rng.get("current")):
        raise CheckpointError(
            "the training state stopped mid-epoch but holds no RNG states to replay it from"
        )
    if state.scheduler is not None and scheduler is None:
        raise ConfigError(
            "the training state holds a scheduler's state: pass the scheduler (fit(scheduler=...))"
        )
    if state.pruner is not None and pruner is None:
        raise ConfigError("the training state holds a pruner's state: pass the pruner (fit(pruner=...))")


def _check_sampler(state: TrainState, sampler: Any) -> None:
    saved = (state.rng or {}).get("sampler")
    if saved is None or sampler is None:
        return
    now = {"seed": int(sampler.seed), "num_replicas": int(sampler.num_replicas)}
    for key, value in now.items():
        if int(saved.get(key, value)) != value:
            raise CheckpointError(
                f"the training state was written with a DistributedSampler {key} of {saved[key]} but the train "
                f"loader's is {value}; resume with the same seed and number of processes as the interrupted run"
            )


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader | None,
    cfg: TrainConfig,
    after_step: StepHook | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    *,
    task: Task | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    pruner: Any = None,
    state: TrainState | None = None,
    on_step: Callable[[TrainState], None] | None = None,
    on_epoch_state: Callable[[EpochRecord, TrainState], None] | None = None,
) -> list[EpochRecord]:
    """Train ``model`` for ``cfg.epochs`` epochs, evaluating after each; returns the history.

    - ``task``: the loss and evaluation (default ``Classification(label_smoothing=cfg.label_smoothing)``;
      a task given together with a non-zero ``cfg.label_smoothing`` is refused).
    - ``optimizer``: used as given (``cfg.optimizer/momentum/weight_decay`` then do not apply).
      Without ``scheduler`` the config's schedule still sets every group's lr before each step;
      with ``scheduler`` (anything with ``step()``, ``state_dict()``, ``load_state_dict()``, built
      on ``optimizer``) ``scheduler.step()`` runs after each optimizer step and the config's lr
      schedule is not used.
    - ``pruner``: anything with ``step()``, ``state_dict()``, ``load_state_dict()``; stepped after
      every optimizer step (after the scheduler).
    - After each step, in order: ``scheduler.step()``, ``pruner.step()``, ``after_step(model, step)``,
      ``on_step(state)``. After each epoch: ``on_epoch(record)``, then ``on_epoch_state(record, state)``.
      Any of these callbacks may raise :class:`StopTraining`: fit returns the history so far.
    - ``state``: a :class:`TrainState` that fit keeps up to date in place (pass ``TrainState()``
      to start a fresh run and keep hold of it). One from an interrupted run (or read back with
      :meth:`TrainState.from_state_dict`) continues it: optimizer / scheduler / pruner states are
      loaded, the RNGs of the epoch start restored, the batches already done in that epoch
      fetched and discarded, and the RNGs after the last step restored, so the result is
      bit-identical to an uninterrupted run (same loaders, config and single-process or
      non-persistent workers; callbacks must not draw random numbers). A resumed run is not reseeded.
    - ``cfg.seed``: when not ``None``, a fresh (not resumed) run calls :func:`seed_everything` first.
      That does not reseed a generator the train loader was built with (``DataLoader(generator=g)``):
      its shuffle runs on, so two fits over one such loader see different data orders. For paired
      runs (a pruned model against the dense one fine-tuned as long), reseed it before each fit:
      ``for g in prunekit.train.state.loader_generators(loader): g.manual_seed(seed)``.
    - A train loader drawing from a :class:`~torch.utils.data.DistributedSampler` gets
      ``set_epoch(epoch)`` (0-based) before each epoch; its seed and replica count are recorded
      in ``state.rng["sampler"]`` and a resume with others is refused.
    - Distributed (``model`` is a ``DistributedDataParallel``, or a process group is initialised;
      see :mod:`prunekit.train.distributed`): each step's loss is all-reduced, so the reported
      train loss is the mean over the global batch and a non-finite loss stops every rank at the
      same step; the ``TrainState`` is then identical on every rank except its RNG states, so
      rank 0's saved copy resumes all (bit-identically when nothing draws per-rank random numbers,
      e.g. dropout: after a resume every rank continues from rank 0's RNG states). Evaluation runs on the inner module
      (no DDP collectives): when the test loader has a DistributedSampler each rank scores its
      share and the results are summed over the ranks (:func:`~prunekit.train.distributed.all_reduce_eval`);
      otherwise every rank scores the whole test set and no reduction is needed. Callbacks run
      on every rank: write files only where ``is_main()``, and raise :class:`StopTraining` on
      every rank at the same step or on none.

    A NaN / infinite loss raises :class:`TrainingDiverged` before that step's update (``state``
    then describes the last good step; its dropout RNG has moved on, so a resume from it is not
    bit-exact).
    """
    if task is None:
        task = Classification(label_smoothing=cfg.label_smoothing)
    elif cfg.label_smoothing:
        raise ConfigError("cfg.label_smoothing applies to the default task only; set it on the task you pass")
    if not isinstance(task, Task):
        raise ConfigError(
            f"task ({type(task).__name__}) needs loss(model, batch) and evaluate(model, loader, ...)"
        )
    if scheduler is not None:
        _check_methods(scheduler, "scheduler", ("step", "state_dict", "load_state_dict"))
        if optimizer is None:
            raise ConfigError(
                "a scheduler needs the optimizer it was built on: pass fit(optimizer=..., scheduler=...)"
            )
        bound = getattr(scheduler, "optimizer", optimizer)
        if bound is not optimizer:
            raise ConfigError("the scheduler was built on a different optimizer than the one passed to fit")
    if pruner is not None:
        _check_methods(pruner, "pruner", ("step", "state_dict", "load_state_dict"))
    per_epoch = _steps_per_epoch(train_loader, cfg)
    total = per_epoch * cfg.epochs
    resuming = state is not None and (state.step > 0 or state.epoch > 0 or state.rng is not None)
    state = TrainState() if state is None else state
    if resuming:
        _check_resume(state, per_epoch, cfg, scheduler, pruner)
    elif cfg.seed is not None:
        seed_everything(cfg.seed)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg) if optimizer is None else optimizer
    if resuming:
        if state.optimizer is not None:
            _load(optimizer, state.optimizer, "optimizer")
        if state.scheduler is not None:
            _load(scheduler, state.scheduler, "scheduler")
        if state.pruner is not None:
            _load(pruner, state.pruner, "pruner")
    gens = loader_generators(train_loader)
    sampler = distributed.distributed_sampler(train_loader)
    if resuming:
        _check_sampler(state, sampler)
    ddp = distributed.active(model)
    eval_model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    split_eval = ddp and test_loader is not None and distributed.distributed_sampler(test_loader) is not None
    history = [EpochRecord.from_dict(h) for h in state.history]

    def fresh_rng() -> dict[str, Any]:
        rng: dict[str, Any] = {"epoch_start": capture_rng(gens), "current": None}
        if sampler is not None:  # its order is a function of (seed, epoch): recording these replays it
            rng["sampler"] = {"seed": int(sampler.seed), "epoch": int(state.epoch),
                              "num_replicas": int(sampler.num_replicas)}
        return rng

    def refresh() -> None:
        state.optimizer = optimizer.state_dict()
        state.scheduler = scheduler.state_dict() if scheduler is not None else None
        state.pruner = pruner.state_dict() if pruner is not None else None
        if state.epoch_step > 0 and state.rng is not None:
            state.rng["current"] = capture_rng()

    def notify() -> None:
        refresh()
        on_step(state)  # type: ignore[misc]

    replay = resuming and state.rng is not None and state.rng.get("epoch_start") is not None
    try:
        while state.epoch < cfg.epochs:
            t0 = time.perf_counter()
            skip, resume_rng = 0, None
            if sampler is not None:
                sampler.set_epoch(state.epoch)
            if replay:
                restore_rng(state.rng["epoch_start"], gens)
                if state.epoch_step > 0:
                    skip, resume_rng = state.epoch_step, state.rng["current"]
                replay = False
            else:
                state.rng = fresh_rng()
            if state.epoch_step == 0:
                state.epoch_loss_sum, state.epoch_samples = 0.0, 0
                state.epoch_lr = (
                    lr_at(state.step, total, cfg) if scheduler is None else _current_lr(optimizer)
                )
            _run_epoch(
                model,
                train_loader,
                optimizer,
                cfg,
                task,
                total,
                per_epoch,
                state,
                epoch=state.epoch + 1,
                skip=skip,
                resume_rng=resume_rng,
                scheduler=scheduler,
                pruner=pruner,
                after_step=after_step,
                regularizer=regularizer,
                notify=notify if on_step is not None else None,
            )
            if test_loader is not None:
                test = task.evaluate(eval_model, test_loader, None)
                if split_eval:  # each rank evaluated its DistributedSampler share
                    test = distributed.all_reduce_eval(test)
            else:
                test = EvalResult(math.nan, math.nan, math.nan, 0)
            train_loss = state.epoch_loss_sum / max(state.epoch_samples, 1)
            lr = state.epoch_lr if state.epoch_lr is not None else math.nan
            record = EpochRecord(state.epoch + 1, train_loss, test, time.perf_counter() - t0, lr)
            history.append(record)
            state.history.append(record.as_dict())
            state.epoch += 1
            state.epoch_step, state.epoch_loss_sum, state.epoch_samples, state.epoch_lr = 0, 0.0, 0, None
            state.rng = fresh_rng()
            refresh()
            if on_epoch is not None:
                on_epoch(record)
            if on_epoch_state is not None:
                on_epoch_state(record, state)
    except StopTraining:
        pass
    except TrainingDiverged:
        refresh()  # raised before the update: the state is that of the last good step
        raise
    refresh()
    return history

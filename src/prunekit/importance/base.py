"""The importance contract every criterion implements.

An importance maps a :class:`~prunekit.targets.Target` to a non-negative tensor of the same shape
as ``target.weight`` (higher = more important). Channel-level criteria broadcast one score per
output channel over that channel's elements so that a granularity's group reduction recovers it.

Data-driven criteria subclass :class:`DataDrivenImportance`: they must be calibrated on a few
batches first (``calibrate(model, loader, num_batches, targets)``); ``scores`` before that raises
:class:`~prunekit.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunekit.errors import ConfigError, DataError
from prunekit.moduletools import model_device, preserved_modes
from prunekit.targets import Target, select


@runtime_checkable
class Importance(Protocol):
    """Anything with ``scores(target) -> Tensor`` (same shape as ``target.weight``, >= 0)."""

    def scores(self, target: Target) -> torch.Tensor: ...


def checked_scores(importance: Any, target: Target) -> torch.Tensor:
    """``importance.scores(target)`` as float, checked: the weight's shape, finite, >= 0 (the one validator
    masks and channel groups share; the error names the criterion and the layer)."""
    s = importance.scores(target)
    if not isinstance(s, torch.Tensor) or tuple(s.shape) != tuple(target.weight.shape):
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ConfigError(
            f"{importance!r} returned scores of shape {got} for layer {target.name!r}, "
            f"expected the weight's shape {tuple(target.weight.shape)}"
        )
    s = s.detach().float()
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ConfigError(f"{importance!r} returned negative or non-finite scores for layer {target.name!r}")
    return s


def needs_calibration(importance: object) -> bool:
    """True when ``importance`` must see data (``calibrate``) before it can score.

    >>> from prunekit.importance.magnitude import Magnitude
    >>> needs_calibration(Magnitude())
    False
    """
    return bool(getattr(importance, "needs_calibration", False))


Inputs = Any  # a tensor, or a mapping of keyword arguments (dict, Hugging Face BatchEncoding)
LABEL_KEYS = ("labels", "label")


def split_batch(batch: Any) -> tuple[Inputs, torch.Tensor | None]:
    """Return ``(inputs, labels_or_None)`` from a loader batch.

    A batch is a tensor, an ``(inputs, labels)`` tuple/list, or a mapping (a dict or a Hugging Face
    ``BatchEncoding``): then every entry but ``labels``/``label`` is a keyword argument of the
    model (so an ``attention_mask`` is honoured) and ``labels`` the labels; ``{"input": x, "label": y}``
    means ``x`` and ``y``.

    >>> x, y = split_batch({"input_ids": torch.ones(2, 3), "attention_mask": torch.ones(2, 3), "labels": torch.zeros(2)})
    >>> sorted(x), y.shape
    (['attention_mask', 'input_ids'], torch.Size([2]))
    """
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], (torch.Tensor, Mapping)):
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], labels
    if isinstance(batch, Mapping):
        if isinstance(batch.get("input"), torch.Tensor):
            return batch["input"], batch.get("label")
        labels = next((batch[k] for k in LABEL_KEYS if isinstance(batch.get(k), torch.Tensor)), None)
        inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        if inputs:
            return inputs, labels
    raise DataError(
        f"cannot read a calibration batch of type {type(batch).__name__}: yield tensors, (inputs, labels) "
        "pairs, or dicts of model keyword arguments (labels under 'labels')"
    )


def inputs_to(inputs: Inputs, device: torch.device) -> Inputs:
    """``inputs`` (a tensor or a mapping of them) moved to ``device``."""
    if isinstance(inputs, Mapping):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return inputs.to(device)


def call_model(model: nn.Module, inputs: Inputs) -> Any:
    """``model(**inputs)`` for a mapping of keyword arguments, ``model(inputs)`` otherwise."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def first_example(inputs: Inputs) -> Inputs:
    """The first sample of a batch (a tensor or a mapping of tensors), batch dimension kept."""
    if isinstance(inputs, Mapping):
        return {k: v[:1] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in inputs.items()}
    return inputs[:1]


def logits_of(outputs: Any, where: str) -> torch.Tensor:
    """The logits in a model's output: a tensor, ``.logits`` (Hugging Face), or ``["logits"]``."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, Mapping):
        logits = outputs.get("logits")
    if isinstance(logits, torch.Tensor):
        return logits
    raise ConfigError(
        f"{where}: the model returned a {type(outputs).__name__}, not logits; pass loss_fn=... that takes the "
        "model's output and the labels and returns a scalar loss"
    )


class DataDrivenImportance:
    """Base class for criteria that accumulate statistics over calibration batches.

    Subclasses implement:

    * ``_attach(model, targets) -> list[RemovableHandle]``: reset accumulators, register hooks;
    * ``_score(target) -> Tensor``: the element scores once calibrated;

    and optionally ``_run_batch(model, inputs, labels)`` (default: a ``no_grad`` forward pass;
    gradient-based criteria override it to run a loss and ``backward``) and ``_finish()``.
    Calibration runs in eval mode unless ``train_mode = True``; the model's mode and the
    ``.grad`` of its parameters are restored and every hook is removed afterwards, even on error.

    >>> class Count(DataDrivenImportance):
    ...     def _attach(self, model, targets):
    ...         self.n = 0
    ...         def hook(*_):
    ...             self.n += 1
    ...         return [model.register_forward_hook(hook)]
    ...     def _score(self, target):
    ...         return torch.full_like(target.weight, float(self.n))
    >>> m = torch.nn.Linear(3, 2)
    >>> c, t = Count(), Target("fc", m)
    >>> c.scores(t)
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: Count needs calibration data: call calibrate(model, loader, num_batches)
    >>> loader = [torch.randn(4, 3) for _ in range(5)]
    >>> c.calibrate(m, loader, num_batches=2, targets=[t]).scores(t)[0, 0].item()
    2.0
    """

    needs_calibration: bool = True
    train_mode: bool = False

    def __init__(self) -> None:
        self._calibrated_names: set[str] | None = None

    @property
    def calibrated(self) -> bool:
        return self._calibrated_names is not None

    # -- subclass hooks ---------------------------------------------------------------------
    def _attach(self, model: nn.Module, targets: Sequence[Target]) -> list[RemovableHandle]:
        raise NotImplementedError

    def _run_batch(self, model: nn.Module, inputs: Inputs, labels: torch.Tensor | None) -> None:
        with torch.no_grad():
            call_model(model, inputs)

    def _finish(self) -> None:
        return None

    def _score(self, target: Target) -> torch.Tensor:
        raise NotImplementedError

    # -- public API -------------------------------------------------------------------------
    def calibrate(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        num_batches: int,
        targets: Sequence[Target] | None = None,
    ) -> DataDrivenImportance:
        """Run up to ``num_batches`` batches of ``loader`` through ``model`` and collect statistics."""
        if int(num_batches) < 1:
            raise ConfigError(f"num_batches must be >= 1, got {num_batches}")
        targets = list(targets) if targets is not None else select(model)
        saved_grads = {id(p): p.grad for p in model.parameters()}
        device = model_device(model)
        handles: list[RemovableHandle] = []
        seen = 0
        with preserved_modes(model):  # every submodule's own train/eval flag comes back, not just the root's
            try:
                handles = self._attach(model, targets)
                model.train(self.train_mode)
                for batch in loader:
                    if seen >= num_batches:
                        break
                    inputs, labels = split_batch(batch)
                    inputs = inputs_to(inputs, device)
                    labels = labels.to(device) if labels is not None else None
                    self._run_batch(model, inputs, labels)
                    seen += 1
            finally:
                for h in handles:
                    h.remove()
                for p in model.parameters():
                    p.grad = saved_grads.get(id(p))
        if seen == 0:
            raise DataError(f"{type(self).__name__}.calibrate: the loader yielded no batches")
        self._finish()
        self.batches_seen = seen
        self._calibrated_names = {t.name for t in targets}
        return self

    def scores(self, target: Target) -> torch.Tensor:
        """Element scores of ``target`` (same shape as its weight); requires ``calibrate`` first."""
        if self._calibrated_names is None:
            raise ConfigError(
                f"{type(self).__name__} needs calibration data: call calibrate(model, loader, num_batches)"
            )
        if target.name not in self._calibrated_names:
            raise ConfigError(
                f"{type(self).__name__} was not calibrated for layer {target.name!r}: pass it in "
                "calibrate(..., targets=...)"
            )
        return self._score(target)

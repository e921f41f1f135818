"""Binary masks per target and their enforcement during training.

:class:`Masks` maps a module name to a bool tensor of its weight's shape (``True`` = kept).
``apply(model)`` zeroes the pruned weights and, by default, keeps them zero in any training loop:

* a forward pre-hook re-zeroes a weight in place whenever it changed since the last check
  (its autograd version counter moved), so nothing that bypasses the optimizer survives a forward;
* a gradient hook zeroes the gradient of pruned weights;
* one global optimizer step post-hook re-applies the masks of the parameters that optimizer owns,
  so momentum, Adam moments and weight decay cannot revive a pruned weight.

The model stays a plain ``nn.Module``: same state-dict keys, ``copy.deepcopy`` and
``torch.compile`` work. Hook handles live on the :class:`Masks` object; ``remove()`` detaches them.

>>> import torch, torch.nn as nn
>>> torch.manual_seed(0) and None
>>> m = nn.Linear(4, 2)
>>> masks = Masks({"": torch.tensor([[True, False] * 2] * 2)}).apply(m)
>>> opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
>>> for _ in range(3):
...     opt.zero_grad(); m(torch.randn(8, 4)).pow(2).sum().backward(); opt.step()
>>> int((m.weight == 0).sum())
4
>>> masks.remove()
"""

from __future__ import annotations

import copy
import os
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.hooks import RemovableHandle

from prunekit.errors import CheckpointError, ConfigError, close_matches
from prunekit.io import atomic_torch_save
from prunekit.targets import Target

FORMAT = "prunekit.masks/1"
COUPLED_SEP = "::"  # key of a coupled mask: "<module path>::<parameter>" (e.g. a BN's gamma/beta)


def coupled_key(module_name: str, param_name: str) -> str:
    """Key of a mask that follows a target rather than being one (see :meth:`Masks.couple`)."""
    return f"{module_name}{COUPLED_SEP}{param_name}"


def module_of(key: str) -> str:
    """Module path of a mask key (a target name, or the module part of a coupled key)."""
    return key.split(COUPLED_SEP, 1)[0]


class _PrunekitHook:
    """Base of every hook prunekit registers on a user's model (see :func:`strip_hooks`).

    A deep copy of a model copies its forward pre-hooks. A prunekit hook does not carry its
    enforcement into the copy: the copy gets an inert :class:`_Detached` hook, which removes
    itself on the copy's first forward, and which ``Masks.remove()`` of the original removes too.
    """

    def __init__(self, enforcement: _Enforcement) -> None:
        self.enforcement = enforcement  # the model owns its enforcement through its hooks
        self.hooks_dict: weakref.ref | None = None  # the hook dict this hook lives in (set on registration)
        self.key: int | None = None

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (_Detached, ())  # a pickled model carries no enforcement either

    def __deepcopy__(self, memo: dict[int, Any]) -> _Detached:
        detached = _Detached()
        enforcement = self.enforcement
        hooks = self.hooks_dict() if self.hooks_dict is not None else None
        new_dict = memo.get(id(hooks)) if hooks is not None else None
        if enforcement is not None and new_dict is not None and self.key is not None:
            enforcement.copies.append((weakref.ref(new_dict), self.key))
        return detached


class _Detached:
    """What a prunekit hook becomes in a copy of the model: it does nothing and removes itself."""

    def __call__(self, module: nn.Module, args: Any) -> None:
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook is self:
                del module._forward_pre_hooks[key]


class _ZeroPrunedBeforeForward(_PrunekitHook):
    """Forward pre-hook: re-zero the pruned weights if the parameter changed since last time."""

    def __init__(self, enforcement: _Enforcement, pruned: torch.Tensor, param_name: str) -> None:
        super().__init__(enforcement)
        self.pruned, self.param_name = pruned, param_name  # True where the weight must be 0
        self.seen: tuple[int, int] | None = None  # (id(param), version) after the last re-zero

    def __call__(self, module: nn.Module, args: Any) -> None:
        param = getattr(module, self.param_name)
        if self.seen != (id(param), param._version):
            with torch.no_grad():
                param.masked_fill_(self.pruned.to(param.device), 0)
            self.seen = (id(param), param._version)


class _ZeroPrunedGrad:
    """Tensor gradient hook: pruned entries of the gradient set to 0 (parameters' deep copies drop it)."""

    def __init__(self, pruned: torch.Tensor) -> None:
        self.pruned = pruned

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(self.pruned.to(grad.device), 0)


class _Enforcement:
    """The live enforcement of one :class:`Masks` on one model.

    Owned by the model (its forward pre-hooks hold it) and by the ``Masks`` object; the one
    process-wide optimizer hook holds it only weakly, and is removed when it is collected, so a
    discarded model frees its masks and hooks.
    """

    def __init__(self) -> None:
        # id(param) -> (weak param, weak forward pre-hook); weak, so the hooks own this and not the reverse
        self.params: dict[int, tuple[weakref.ref, weakref.ref]] = {}
        self.handles: list[RemovableHandle] = []
        self.copies: list[tuple[weakref.ref, int]] = []  # (hook dict of a deep copy, key) to clean up
        ref = weakref.ref(self)
        handle = register_optimizer_step_post_hook(
            lambda optimizer, args, kwargs: _after_step(ref, optimizer)
        )
        weakref.finalize(self, handle.remove)
        self.handles.append(handle)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.params.clear()
        for dict_ref, key in self.copies:
            hooks = dict_ref()
            if hooks is not None:
                hooks.pop(key, None)
        self.copies.clear()


def _after_step(ref: weakref.ref, optimizer: torch.optim.Optimizer) -> None:
    """Optimizer step post-hook: re-zero the pruned weights of the parameters ``optimizer`` owns."""
    enforcement = ref()
    if enforcement is None or not enforcement.params:
        return
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                hit = enforcement.params.get(id(p))
                pre = hit[1]() if hit is not None and hit[0]() is p else None
                if pre is not None:
                    p.masked_fill_(pre.pruned, 0)
                    pre.seen = (id(p), p._version)  # the pre-hook need not redo it


def strip_hooks(model: nn.Module) -> nn.Module:
    """Remove every prunekit hook from ``model`` (e.g. a copy of an enforced model); returns it.

    >>> import copy, torch, torch.nn as nn
    >>> m = nn.Linear(4, 2)
    >>> masks = Masks({"": torch.ones(2, 4, dtype=torch.bool)}).apply(m)
    >>> clone = strip_hooks(copy.deepcopy(m))
    >>> len(clone._forward_pre_hooks), len(m._forward_pre_hooks)
    (0, 1)
    >>> masks.remove()
    """
    for module in model.modules():
        hooks = module._forward_pre_hooks
        for key in [k for k, h in hooks.items() if isinstance(h, (_PrunekitHook, _Detached))]:
            del hooks[key]
        for p in module.parameters(recurse=False):
            bw = p._backward_hooks
            if bw:
                for key in [k for k, h in bw.items() if isinstance(h, _ZeroPrunedGrad)]:
                    del bw[key]
    return model


def clean_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without any prunekit hook (weights as they are, zeros included)."""
    return strip_hooks(copy.deepcopy(model))


@dataclass(frozen=True)
class LayerSparsity:
    """One row of :meth:`Masks.sparsity_report`."""

    name: str
    shape: tuple[int, ...]
    numel: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / max(self.numel, 1)


class Masks(Mapping[str, torch.Tensor]):
    """Target name -> bool keep-mask, plus the hooks that enforce them on a model."""

    def __init__(self, masks: Mapping[str, torch.Tensor], param_names: Mapping[str, str] | None = None) -> None:
        self._masks: dict[str, torch.Tensor] = {}
        for name, m in masks.items():
            if not isinstance(m, torch.Tensor):
                raise ConfigError(f"mask of {name!r} must be a tensor, got {type(m).__name__}")
            self._masks[str(name)] = m.detach().to(torch.bool)
        self.param_names: dict[str, str] = dict.fromkeys(self._masks, "weight")
        if isinstance(masks, Masks):
            self.param_names.update(masks.param_names)
        self.param_names.update(dict(param_names or {}))
        self._enforcement: _Enforcement | None = None
        self._model_ref: weakref.ref | None = None  # the model last applied to (held weakly)
        # name -> (forward pre-hook, grad hook or None) of the enforced targets
        self._bound: dict[str, tuple[_ZeroPrunedBeforeForward, _ZeroPrunedGrad | None]] = {}

    # -- mapping ----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        state = "enforced" if self.enforced else "not enforced"
        return f"Masks({len(self)} layers, sparsity={self.sparsity():.3f}, {state})"

    @property
    def enforced(self) -> bool:
        return self._enforcement is not None

    @property
    def _model(self) -> nn.Module | None:
        return self._model_ref() if self._model_ref is not None else None

    @property
    def target_names(self) -> list[str]:
        """The pruned targets' names (coupled masks, e.g. of a following BatchNorm, left out)."""
        return [k for k in self._masks if COUPLED_SEP not in k]

    def couple(self, module_name: str, param_name: str, mask: torch.Tensor) -> Masks:
        """Add a mask that follows a target (e.g. the BN channel after a pruned filter).

        Coupled masks are applied and enforced like any other but do not count in
        :meth:`sparsity` or :meth:`sparsity_report`, which describe the targets.
        """
        key = coupled_key(module_name, param_name)
        self._masks[key] = mask.detach().to(torch.bool)
        self.param_names[key] = param_name
        return self

    def sparsity(self) -> float:
        """Fraction of masked-out elements over the targets' masks."""
        masks = [self._masks[k] for k in self.target_names]
        total = sum(m.numel() for m in masks)
        return sum(int((~m).sum()) for m in masks) / max(total, 1)

    # -- binding to a model -----------------------------------------------------------------
    def _resolve(self, model: nn.Module) -> list[tuple[str, nn.Module, nn.Parameter, torch.Tensor]]:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"masks apply to an nn.Module, got {type(model).__name__}")
        names = [n for n, _ in model.named_modules()]
        out = []
        for name, mask in self._masks.items():
            try:
                module = model.get_submodule(module_of(name))
            except AttributeError:
                raise ConfigError(
                    f"mask names layer {name!r}, which the model does not have; {close_matches(name, names)}"
                ) from None
            param = getattr(module, self.param_names[name], None)
            if not isinstance(param, nn.Parameter):
                raise ConfigError(f"layer {name!r} has no parameter {self.param_names[name]!r} to mask")
            if tuple(param.shape) != tuple(mask.shape):
                raise ConfigError(
                    f"mask of layer {name!r} has shape {tuple(mask.shape)} but its "
                    f"{self.param_names[name]} has shape {tuple(param.shape)}; the masks belong to another model"
                )
            out.append((name, module, param, mask.to(param.device)))
        return out

    def apply(self, model: nn.Module, enforce: bool = True) -> Masks:
        """Zero the pruned weights of ``model``; with ``enforce`` keep them zero while training.

        Enforcement lives exactly as long as the model: the hooks are the model's, the one
        optimizer hook holds them weakly, and copies of the model do not inherit it.
        """
        self.remove()
        bound = self._resolve(model)
        with torch.no_grad():
            for _, _, param, mask in bound:
                param.masked_fill_(~mask, 0)
        self._model_ref = weakref.ref(model)
        if enforce:
            enforcement = _Enforcement()
            for name, module, param, mask in bound:
                pruned = ~mask
                pre = _ZeroPrunedBeforeForward(enforcement, pruned, self.param_names[name])
                handle = module.register_forward_pre_hook(pre)
                pre.hooks_dict, pre.key = weakref.ref(module._forward_pre_hooks), handle.id
                enforcement.handles.append(handle)
                grad = None
                if param.requires_grad:
                    grad = _ZeroPrunedGrad(pruned)
                    enforcement.handles.append(param.register_hook(grad))
                pre.seen = (id(param), param._version)
                enforcement.params[id(param)] = (weakref.ref(param), weakref.ref(pre))
                self._bound[name] = (pre, grad)
            self._enforcement = enforcement
        return self

    def remove(self) -> None:
        """Stop enforcing (weights stay as they are; pruned ones are zero right after ``apply``)."""
        if self._enforcement is not None:
            self._enforcement.remove()
        self._enforcement = None
        self._bound.clear()

    def update(self, new: Mapping[str, torch.Tensor], monotone: bool = False) -> Masks:
        """Replace some or all masks (e.g. re-pruning during training) and zero what they prune.

        With ``monotone`` a weight once pruned stays pruned (``new & old``). Enforcement, if on,
        continues with the new masks (hooks updated in place). Names not yet masked are added.

        >>> import torch, torch.nn as nn
        >>> m = nn.Linear(4, 1)
        >>> masks = Masks({"": torch.tensor([[True, True, True, False]])}).apply(m)
        >>> _ = masks.update({"": torch.tensor([[False, True, True, True]])}, monotone=True)
        >>> masks[""].tolist(), int((m.weight == 0).sum())
        ([[False, True, True, False]], 2)
        >>> masks.remove()
        """
        added = []
        for name, m in new.items():
            if not isinstance(m, torch.Tensor):
                raise ConfigError(f"mask of {name!r} must be a tensor, got {type(m).__name__}")
            m = m.detach().to(torch.bool)
            old = self._masks.get(name)
            if old is None:
                added.append(name)
                self.param_names.setdefault(name, "weight")
            elif tuple(old.shape) != tuple(m.shape):
                raise ConfigError(
                    f"update: new mask of {name!r} has shape {tuple(m.shape)}, the current one {tuple(old.shape)}"
                )
            elif monotone:
                m = m & old.to(m.device)
            self._masks[name] = m
        model = self._model
        if model is None:
            return self
        if added or not self.enforced:
            return self.apply(model, enforce=self.enforced)
        with torch.no_grad():
            for name, _, param, mask in self._resolve(model):
                if name not in new:
                    continue
                pre, grad = self._bound[name]
                pre.pruned = ~mask
                if grad is not None:
                    grad.pruned = pre.pruned
                param.masked_fill_(pre.pruned, 0)
                pre.seen = (id(param), param._version)
        return self

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily zero the pruned weights of ``model`` (no hooks); restore them on exit.

        For probing (sensitivity scans prune each layer many times): only the masked-out values
        are saved and written back, so the weights are bit-identical afterwards.

        >>> import torch, torch.nn as nn
        >>> m = nn.Linear(2, 1)
        >>> with torch.no_grad(): _ = m.weight.copy_(torch.tensor([[1.0, 2.0]]))
        >>> with Masks({"": torch.tensor([[True, False]])}).applied(m):
        ...     m.weight.tolist()
        [[1.0, 0.0]]
        >>> m.weight.tolist()
        [[1.0, 2.0]]
        """
        bound = self._resolve(model)
        saved = []
        with torch.no_grad():
            for _, _, param, mask in bound:
                saved.append((param, ~mask, param[~mask].clone()))
                param.masked_fill_(~mask, 0)
        try:
            yield model
        finally:
            with torch.no_grad():
                for param, pruned, values in saved:
                    param[pruned] = values

    def make_permanent(self, model: nn.Module | None = None) -> nn.Module:
        """Zero the pruned weights one last time and remove every hook; returns the model."""
        model = model if model is not None else self._model
        if model is None:
            raise ConfigError("make_permanent() needs the model: call apply(model) first or pass it")
        self.apply(model, enforce=False)
        return model

    # -- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "masks": {n: m.cpu() for n, m in self._masks.items()},
            "param_names": dict(self.param_names),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> Masks:
        """Replace the masks with those in ``state`` (re-applied if this object was enforcing)."""
        if not isinstance(state, Mapping) or state.get("format") != FORMAT:
            raise CheckpointError(f"not a prunekit masks state (expected format {FORMAT!r})")
        if not isinstance(state.get("masks"), Mapping):
            raise CheckpointError("masks state has no 'masks' mapping (name -> bool tensor)")
        model, was_enforced = self._model, self.enforced
        fresh = Masks(state["masks"], state.get("param_names"))
        self.remove()
        self._masks, self.param_names = fresh._masks, fresh.param_names
        if model is not None and was_enforced:
            self.apply(model)
        return self

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the masks to ``path`` atomically (bool tensors, loadable with weights_only)."""
        atomic_torch_save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module | None = None, enforce: bool = True) -> Masks:
        """Read masks saved by :meth:`save`; if ``model`` is given, apply them to it."""
        from prunekit.inputs import read_torch_file

        where = repr(os.fspath(path))
        state = read_torch_file(path, "mask file", "write it again with Masks.save")
        if isinstance(state, Mapping) and state.get("format") == "prunekit.checkpoint":
            raise CheckpointError(f"{where} is a prunekit checkpoint, not a mask file; its masks are "
                                  "prunekit.checkpoint.read(path).masks")
        try:
            masks = cls({}).load_state_dict(state)
        except CheckpointError as exc:
            raise CheckpointError(f"mask file {where}: {exc}; write it with Masks.save") from None
        except (TypeError, ValueError, AttributeError) as exc:  # a masks-like dict holding wrong values
            raise CheckpointError(f"mask file {where} is malformed ({exc}); write it with Masks.save") from None
        if model is not None:
            try:
                masks.apply(model, enforce=enforce)
            except (ConfigError, CheckpointError) as exc:
                raise type(exc)(f"the masks in {where} do not fit this model: {exc}") from None
        return masks

    @classmethod
    def from_zeros(cls, model: nn.Module, targets: Sequence[Target]) -> Masks:
        """Masks that keep exactly the nonzero weights of ``targets`` (e.g. a pruned checkpoint)."""
        return cls(
            {t.name: t.weight.detach() != 0 for t in targets}, {t.name: t.param_name for t in targets}
        )

    # -- reporting --------------------------------------------------------------------------
    def sparsity_report(self, model: nn.Module | None = None) -> list[LayerSparsity]:
        """Per-layer zeros: of the model's actual weights if given, else of the masks."""
        rows = []
        model = model if model is not None else self._model
        for name in self.target_names:
            mask = self._masks[name]
            if model is not None:
                w = getattr(model.get_submodule(name), self.param_names[name]).detach()
                zeros = int((w == 0).sum())
            else:
                zeros = int((~mask).sum())
            rows.append(LayerSparsity(name, tuple(mask.shape), mask.numel(), zeros))
        return rows

    def format_report(self, model: nn.Module | None = None) -> str:
        """The sparsity report as an aligned text table with a total row."""
        rows = self.sparsity_report(model)
        width = max([len(r.name) for r in rows] + [5])
        lines = [f"{'layer':<{width}}  {'shape':<18} {'params':>10} {'zeros':>10} {'sparsity':>8}"]
        for r in rows:
            shape = "x".join(map(str, r.shape))
            lines.append(f"{r.name:<{width}}  {shape:<18} {r.numel:>10} {r.zeros:>10} {r.sparsity:>8.2%}")
        numel, zeros = sum(r.numel for r in rows), sum(r.zeros for r in rows)
        lines.append(f"{'total':<{width}}  {'':<18} {numel:>10} {zeros:>10} {zeros / max(numel, 1):>8.2%}")
        return "\n".join(lines)

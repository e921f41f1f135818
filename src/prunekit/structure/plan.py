"""A structured-pruning plan: which indices of which module axes are removed.

The plan is plain JSON (``to_json``/``from_json``, atomic ``save``/``load``) and replays on a fresh,
unpruned copy of the original model (``apply``), so a pruned model is stored as its architecture
name + config + plan + state_dict (:func:`save_pruned` / :func:`load_pruned`).

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
>>> plan = PruningPlan({"0": ModulePlan("Linear", {"in": 4, "out": 6}, {"out": [1, 4]}),
...                     "2": ModulePlan("Linear", {"in": 6, "out": 2}, {"in": [1, 4]})})
>>> small = PruningPlan.from_json(plan.to_json()).apply(net)
>>> small(torch.zeros(3, 4)).shape, small[0].out_features
(torch.Size([3, 2]), 4)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import CheckpointError, ConfigError, close_matches
from prunekit.io import atomic_torch_save, atomic_write_text
from prunekit.structure.surgery import handler_for

FORMAT = "prunekit.structured-plan"
VERSION = 1


@dataclass
class ModulePlan:
    """Removals for one module: its type name, original axis sizes, removed indices per axis."""

    type: str
    sizes: dict[str, int]
    remove: dict[str, list[int]] = field(default_factory=dict)

    def keep(self, axis: str) -> torch.Tensor:
        """Sorted kept indices on ``axis`` (all of them when nothing is removed there)."""
        removed = set(self.remove.get(axis, ()))
        return torch.tensor([i for i in range(self.sizes[axis]) if i not in removed], dtype=torch.long)

    def kept_sizes(self) -> dict[str, int]:
        return {a: n - len(self.remove.get(a, ())) for a, n in self.sizes.items()}


class PruningPlan:
    """``{module name: ModulePlan}`` plus free-form ``meta`` (how it was chosen)."""

    def __init__(
        self, modules: dict[str, ModulePlan] | None = None, meta: dict[str, Any] | None = None
    ) -> None:
        self.modules: dict[str, ModulePlan] = dict(modules or {})
        self.meta: dict[str, Any] = dict(meta or {})

    def __len__(self) -> int:
        return len(self.modules)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PruningPlan) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        removed = sum(len(v) for mp in self.modules.values() for v in mp.remove.values())
        return f"PruningPlan({len(self.modules)} modules, {removed} indices removed)"

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "meta": self.meta,
            "modules": {
                name: {
                    "type": mp.type,
                    "sizes": dict(mp.sizes),
                    "remove": {a: list(v) for a, v in mp.remove.items()},
                }
                for name, mp in self.modules.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"not a structured pruning plan (expected format {FORMAT!r})")
        if int(data.get("version", -1)) > VERSION:
            raise CheckpointError(f"plan version {data.get('version')} is newer than supported ({VERSION})")
        try:
            modules = {
                str(name): ModulePlan(
                    str(m["type"]),
                    {str(a): int(n) for a, n in m["sizes"].items()},
                    {str(a): [int(i) for i in v] for a, v in m["remove"].items()},
                )
                for name, m in data["modules"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"malformed structured pruning plan: {exc!r}") from exc
        return cls(modules, data.get("meta", {}))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"structured pruning plan is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as JSON (atomically)."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PruningPlan:
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"plan file {str(p)!r} does not exist")
        return cls.from_json(p.read_text(encoding="utf-8"))

    # -- replay ----------------------------------------------------------------------------------
    def apply(self, model: nn.Module) -> nn.Module:
        """Shrink ``model`` (a fresh, unpruned instance of the original architecture) in place.

        Returns the model. Raises :class:`ConfigError` when a module is missing or its type or
        sizes differ from the plan (e.g. the model was already pruned).
        """
        names = [n for n, _ in model.named_modules()]
        for name, mp in self.modules.items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                hint = close_matches(name, names)
                raise ConfigError(f"plan names module {name!r} that the model lacks; {hint}") from None
            if type(module).__name__ != mp.type:
                raise ConfigError(
                    f"plan expects {name!r} to be a {mp.type}, the model has a {type(module).__name__}"
                )
            handler = handler_for(module)
            actual = handler.axes(module)
            for axis, size in mp.sizes.items():
                if axis in actual and actual[axis] != size:
                    raise ConfigError(
                        f"plan expects {name}:{axis} of size {size}, the model has {actual[axis]}; "
                        "apply the plan to a fresh, unpruned copy of the original model"
                    )
        for name, mp in self.modules.items():
            module = model.get_submodule(name)
            keep = {axis: mp.keep(axis) for axis in mp.remove}
            new = handler_for(module).apply(module, keep, dict(mp.sizes))
            if new is not module:
                _replace(model, name, new)
        return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# ---------------------------------------------------------------------------------------------
# pruned checkpoints: architecture + plan + state_dict
# ---------------------------------------------------------------------------------------------
PRUNED_FORMAT = "prunekit.pruned-model"


def build_model(model_name: str, model_config: dict[str, Any]) -> nn.Module:
    """Build an unpruned model: a registry name, or ``"hf:<ClassName>"`` with a transformers config dict."""
    if model_name.startswith("hf:"):
        try:
            import transformers
        except ImportError as exc:
            raise ConfigError("this checkpoint needs transformers: pip install 'prunekit[hf]'") from exc
        cfg = dict(model_config)
        model_type = cfg.pop("model_type", None)
        if model_type is None:
            raise ConfigError("hf model_config needs 'model_type' (use config.to_dict())")
        config = transformers.AutoConfig.for_model(model_type, **cfg)
        cls = getattr(transformers, model_name[3:], None)
        if cls is None:
            raise ConfigError(f"transformers has no model class {model_name[3:]!r}")
        return cls(config)
    from prunekit.models import create

    return create(model_name, **model_config)


def save_pruned(
    path: str | os.PathLike[str],
    model_name: str,
    model_config: dict[str, Any],
    plan: PruningPlan,
    model: nn.Module,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Save a pruned model as architecture (``model_name`` + ``model_config``) + plan + state_dict.

    >>> import tempfile, pathlib, torch
    >>> from prunekit.models import create
    >>> from prunekit.structure.api import prune_channels
    >>> small, plan, _ = prune_channels(create("resnet20"), torch.zeros(1, 3, 32, 32), ratio=0.3)
    >>> p = save_pruned(pathlib.Path(tempfile.mkdtemp()) / "s.pt", "resnet20", {}, plan, small)
    >>> again, ckpt = load_pruned(p)
    >>> all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), small.state_dict().values()))
    True
    """
    payload = {
        "format": PRUNED_FORMAT,
        "format_version": 1,  # same keys as prunekit.train.save_checkpoint, plus the plan
        "model_name": model_name,
        "model_config": dict(model_config),
        "plan": plan.to_dict(),
        "structured_plan": True,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    return atomic_torch_save(payload, path)


def load_pruned(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_pruned`: fresh architecture, plan replay, state_dict.

    Returns ``(model, checkpoint)`` where ``checkpoint["plan"]`` is a :class:`PruningPlan`.
    """
    from prunekit.train.checkpoint import load_checkpoint  # same safe reader and errors as any checkpoint

    p = Path(path)
    ckpt = load_checkpoint(p)
    if ckpt.get("format") != PRUNED_FORMAT:
        raise CheckpointError(
            f"{str(p)!r} is not a prunekit pruned-model checkpoint (save it with save_pruned)"
        )
    plan = PruningPlan.from_dict(ckpt["plan"])
    model = plan.apply(build_model(ckpt["model_name"], ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"state_dict in {str(p)!r} does not match the replayed plan: {exc}") from exc
    ckpt["plan"] = plan
    return model, ckpt

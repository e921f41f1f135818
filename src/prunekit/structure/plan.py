"""A structured-pruning plan: an ordered history of steps, each removing indices of module axes.

Each :class:`PlanStep` is ``{module name: ModulePlan(type, sizes, remove)}`` plus free-form ``meta``:
``sizes`` are the module's axis sizes *before that step* and ``remove`` lists indices relative to
them. A plan built by :func:`~prunekit.structure.api.make_plan` has one step; ``plan.then(other)``
appends the steps of a plan made on the already-pruned model (prune, then prune the small model
again). The plan is plain JSON (``to_json``/``from_json``, atomic ``save``/``load``) and replays
(``apply``) on the original model or on one already pruned by its first steps, so a pruned model is
stored as its architecture name + config + plan + state_dict (:func:`save_pruned` / :func:`load_pruned`).

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
>>> plan = PruningPlan({"0": ModulePlan("Linear", {"in": 4, "out": 6}, {"out": [1, 4]}),
...                     "2": ModulePlan("Linear", {"in": 6, "out": 2}, {"in": [1, 4]})})
>>> small = PruningPlan.from_json(plan.to_json()).apply(net)
>>> small(torch.zeros(3, 4)).shape, small[0].out_features
(torch.Size([3, 2]), 4)
>>> more = plan.then(PruningPlan({"0": ModulePlan("Linear", {"in": 4, "out": 4}, {"out": [0]}),
...                               "2": ModulePlan("Linear", {"in": 4, "out": 2}, {"in": [0]})}))
>>> len(more.steps), more.final_sizes()["0"], more.original_sizes()["0"]
(2, {'in': 4, 'out': 3}, {'in': 4, 'out': 6})
>>> more.apply(small) is small, small[0].out_features  # small already had step 1: only step 2 runs
(True, 3)
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import CheckpointError, ConfigError, UnsupportedError, close_matches
from prunekit.io import atomic_write_text
from prunekit.moduletools import replace_submodule
from prunekit.structure.surgery import handler_for

FORMAT = "prunekit.structured-plan"
VERSION = 2  # 1: one step at the top level ({"meta", "modules"}); 2: {"steps": [{"meta", "modules"}, ...]}

Sizes = dict[str, dict[str, int]]


@dataclass
class ModulePlan:
    """Removals for one module in one step: its type name, its axis sizes before the step and the
    removed indices per axis (relative to those sizes)."""

    type: str
    sizes: dict[str, int]
    remove: dict[str, list[int]] = field(default_factory=dict)

    def keep(self, axis: str) -> torch.Tensor:
        """Sorted kept indices on ``axis`` (all of them when nothing is removed there)."""
        removed = set(self.remove.get(axis, ()))
        return torch.tensor([i for i in range(self.sizes[axis]) if i not in removed], dtype=torch.long)

    def kept_sizes(self) -> dict[str, int]:
        return {a: n - len(self.remove.get(a, ())) for a, n in self.sizes.items()}

    def check(self, name: str) -> None:
        """:class:`ConfigError` unless every removed axis has a size and its indices are unique and in range."""
        for axis, idx in self.remove.items():
            if axis not in self.sizes:
                raise ConfigError(f"plan removes indices of {name}:{axis} but gives no size for that axis")
            n = self.sizes[axis]
            if len(set(idx)) != len(idx) or any(not 0 <= i < n for i in idx):
                raise ConfigError(
                    f"plan removes repeated or out-of-range indices of {name}:{axis} (size {n})"
                )


@dataclass
class PlanStep:
    """One pruning step: ``{module name: ModulePlan}`` (sizes before this step) and its ``meta``."""

    modules: dict[str, ModulePlan] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def sizes_before(self) -> Sizes:
        return {name: dict(mp.sizes) for name, mp in self.modules.items()}

    def sizes_after(self) -> Sizes:
        return {name: mp.kept_sizes() for name, mp in self.modules.items()}

    def n_removed(self) -> int:
        return sum(len(v) for mp in self.modules.values() for v in mp.remove.values())

    def to_dict(self) -> dict[str, Any]:
        return {
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
    def from_dict(cls, data: dict[str, Any]) -> PlanStep:
        modules = {
            str(name): ModulePlan(
                str(m["type"]),
                {str(a): int(n) for a, n in m["sizes"].items()},
                {str(a): [int(i) for i in v] for a, v in m["remove"].items()},
            )
            for name, m in data["modules"].items()
        }
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise TypeError(f"step meta must be a mapping, got {type(meta).__name__}")
        return cls(modules, dict(meta))


class PruningPlan:
    """An ordered list of :class:`PlanStep` s (``plan.steps``).

    ``PruningPlan(modules, meta)`` is a one-step plan (what :func:`~prunekit.structure.api.make_plan`
    returns); :meth:`then` chains plans and :meth:`from_steps` builds one from steps. ``plan.modules``
    and ``plan.meta`` are the **last** step's (the only step's for a one-step plan); its sizes are those
    of the model that step was made on. :meth:`original_sizes` / :meth:`final_sizes` describe the
    model before the first and after the last step; ``len(plan)`` counts the modules any step touches.
    """

    def __init__(
        self, modules: dict[str, ModulePlan] | None = None, meta: dict[str, Any] | None = None
    ) -> None:
        self.steps: list[PlanStep] = [PlanStep(dict(modules or {}), dict(meta or {}))]

    @classmethod
    def from_steps(cls, steps: Sequence[PlanStep]) -> PruningPlan:
        """A plan of (copies of) ``steps``; :class:`ConfigError` unless each step's sizes are what the
        steps before it leave."""
        if not steps:
            raise ConfigError("a pruning plan needs at least one step")
        plan = cls()
        plan.steps = [copy.deepcopy(s) for s in steps]
        plan._check_chain()
        return plan

    # -- the last step (compatibility with one-step plans) ----------------------------------------
    @property
    def modules(self) -> dict[str, ModulePlan]:
        """The last step's ``{module name: ModulePlan}``."""
        return self.steps[-1].modules

    @modules.setter
    def modules(self, value: dict[str, ModulePlan]) -> None:
        self.steps[-1].modules = dict(value)

    @property
    def meta(self) -> dict[str, Any]:
        """The last step's ``meta`` (each step keeps its own: ``plan.steps[i].meta``)."""
        return self.steps[-1].meta

    @meta.setter
    def meta(self, value: dict[str, Any]) -> None:
        self.steps[-1].meta = dict(value)

    def __len__(self) -> int:
        return len({name for step in self.steps for name in step.modules})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PruningPlan) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        removed = sum(s.n_removed() for s in self.steps)
        steps = f"{len(self.steps)} steps, " if len(self.steps) > 1 else ""
        return f"PruningPlan({steps}{len(self)} modules, {removed} indices removed)"

    # -- sizes and chaining ------------------------------------------------------------------------
    def original_sizes(self) -> Sizes:
        """``{module: {axis: size}}`` of the model before the first step (each module axis as the first
        step touching it found it)."""
        out: Sizes = {}
        for step in self.steps:
            for name, mp in step.modules.items():
                sizes = out.setdefault(name, {})
                for axis, n in mp.sizes.items():
                    sizes.setdefault(axis, n)
        return out

    def final_sizes(self) -> Sizes:
        """``{module: {axis: size}}`` after every step (modules any step touches)."""
        out = self.original_sizes()
        for step in self.steps:
            for name, kept in step.sizes_after().items():
                out[name].update(kept)
        return out

    def _states(self) -> list[dict[tuple[str, str], int]]:
        """Axis sizes before step 0, 1, ..., and after the last step (``len(steps) + 1`` states)."""
        cur = {(m, a): n for m, sizes in self.original_sizes().items() for a, n in sizes.items()}
        states = [dict(cur)]
        for step in self.steps:
            for name, kept in step.sizes_after().items():
                cur.update({(name, a): n for a, n in kept.items()})
            states.append(dict(cur))
        return states

    def _check_chain(self) -> None:
        cur: dict[tuple[str, str], int] = {}
        for k, step in enumerate(self.steps):
            for name, mp in step.modules.items():
                mp.check(name)
                for axis, n in mp.sizes.items():
                    have = cur.get((name, axis))
                    if have is not None and have != n:
                        raise ConfigError(
                            f"step {k + 1} of the plan expects {name}:{axis} of size {n}, "
                            f"the steps before it leave {have}"
                        )
            for name, kept in step.sizes_after().items():
                cur.update({(name, a): n for a, n in kept.items()})

    def then(self, other: PruningPlan) -> PruningPlan:
        """A new plan: this plan's steps, then ``other``'s (made on the model this plan produces).

        :class:`ConfigError` names the first module axis whose size in ``other`` differs from the size
        this plan leaves.
        """
        left = self.final_sizes()
        for name, sizes in other.original_sizes().items():
            for axis, n in sizes.items():
                have = left.get(name, {}).get(axis)
                if have is not None and have != n:
                    raise ConfigError(
                        f"cannot chain plans: the next plan expects {name}:{axis} of size {n}, "
                        f"this plan leaves it at {have} (make the next plan on the model this one produces)"
                    )
        return PruningPlan.from_steps(self.steps + other.steps)

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        """Read :meth:`to_dict` output; version-1 plans (one step at the top level) too."""
        if not isinstance(data, dict):
            raise CheckpointError(f"not a structured pruning plan: it holds a {type(data).__name__}, not a mapping "
                                  f"with format {FORMAT!r}")
        if data.get("format") != FORMAT:
            raise CheckpointError(f"not a structured pruning plan: format {data.get('format')!r}, expected {FORMAT!r}")
        try:
            version = int(data.get("version", -1))
        except (TypeError, ValueError):
            raise CheckpointError(f"malformed structured pruning plan: version {data.get('version')!r}") from None
        if version > VERSION:
            raise CheckpointError(f"plan version {data.get('version')} is newer than supported ({VERSION})")
        if "steps" in data and "modules" in data:
            raise CheckpointError(
                "malformed structured pruning plan: it has both 'steps' (v2) and 'modules' (v1)"
            )
        try:
            if "steps" in data:
                steps = [PlanStep.from_dict(s) for s in data["steps"]]
            else:
                steps = [PlanStep.from_dict(data)]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"missing entry {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
            raise CheckpointError(f"malformed structured pruning plan ({what}); write it with PruningPlan.save") from None
        try:
            return cls.from_steps(steps)
        except ConfigError as exc:
            raise CheckpointError(f"malformed structured pruning plan: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        """Read :meth:`to_json` output (plain JSON: nothing in it runs)."""
        if not isinstance(text, str):
            raise CheckpointError(f"from_json takes the JSON text of a plan, got {type(text).__name__}; "
                                  "for a file use PruningPlan.load(path)")
        if not text.strip():
            raise CheckpointError("structured pruning plan is empty; write it with PruningPlan.save")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(
                f"structured pruning plan is not valid JSON ({exc}); truncated or not a plan? "
                "write it with PruningPlan.save"
            ) from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as JSON (atomically)."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PruningPlan:
        """Read a plan written by :meth:`save` (JSON); a :class:`CheckpointError` naming the file otherwise."""
        p = Path(path)
        if p.is_dir():
            raise CheckpointError(f"plan file {str(p)!r} is a directory; pass the path of a .json plan")
        if not p.is_file():
            raise CheckpointError(f"plan file {str(p)!r} does not exist")
        try:
            text = p.read_bytes().decode("utf-8")
        except OSError as exc:
            raise CheckpointError(f"plan file {str(p)!r} cannot be read ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise CheckpointError(
                f"plan file {str(p)!r} is binary, not a JSON plan (a checkpoint? read its plan with "
                "prunekit.checkpoint.read(path).plan)"
            ) from None
        try:
            return cls.from_json(text)
        except CheckpointError as exc:
            raise CheckpointError(f"plan file {str(p)!r}: {exc}") from None

    # -- replay ----------------------------------------------------------------------------------
    def steps_applied(self, model: nn.Module) -> int:
        """How many leading steps ``model`` already has: 0 for the original model, ``len(steps)`` for
        the final one, judged by its module axis sizes (the latest step when several match).

        Raises :class:`ConfigError` when a module is missing, has a type no step expects, or the sizes
        match no step (naming the first mismatching module axis, expected and found sizes).
        """
        names = [n for n, _ in model.named_modules()]
        types: dict[str, set[str]] = {}
        for step in self.steps:
            for name, mp in step.modules.items():
                types.setdefault(name, set()).add(mp.type)
        observed: dict[tuple[str, str], int] = {}
        for name, sizes in self.original_sizes().items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                hint = close_matches(name, names)
                raise ConfigError(f"plan names module {name!r} that the model lacks; {hint}") from None
            try:  # a step may change a module's type (MultiheadAttention -> HeadPrunedMultiheadAttention)
                actual = handler_for(module).axes(module)
            except UnsupportedError:
                want = " or ".join(sorted(types[name]))
                raise ConfigError(
                    f"plan expects {name!r} to be a {want}, the model has a {type(module).__name__}"
                ) from None
            observed.update({(name, a): actual[a] for a in sizes if a in actual})
        states = self._states()
        matches = [k for k, st in enumerate(states) if all(st[key] == n for key, n in observed.items())]
        if matches:
            return matches[-1]
        misses = [sum(st[key] != n for key, n in observed.items()) for st in states]
        best = misses.index(min(misses))
        (name, axis), found = next((key, n) for key, n in observed.items() if states[best][key] != n)
        where = "the original model" if best == 0 else f"the model after step {best} of {len(self.steps)}"
        raise ConfigError(
            f"the model matches no step of the plan: {name}:{axis} has size {found}, {where} has "
            f"{states[best][(name, axis)]}; apply the plan to a fresh, unpruned copy of the original model "
            "or to one pruned by the plan's first steps"
        )

    def apply(self, model: nn.Module) -> nn.Module:
        """Shrink ``model`` in place by the steps it does not have yet and return it.

        ``model`` is the original architecture (every step is replayed) or a model already pruned by
        the first ``k`` steps (found by :meth:`steps_applied`; steps ``k..`` are applied); a model that
        already has every step is returned unchanged. Raises :class:`ConfigError` when a module is
        missing or its type or sizes match no step.
        """
        for k in range(self.steps_applied(model), len(self.steps)):
            self._apply_step(model, k)
        return model

    def _apply_step(self, model: nn.Module, k: int) -> None:
        step = self.steps[k]
        label = f" (step {k + 1} of {len(self.steps)})" if len(self.steps) > 1 else ""
        for name, mp in step.modules.items():
            module = model.get_submodule(name)
            if type(module).__name__ != mp.type:
                raise ConfigError(
                    f"plan{label} expects {name!r} to be a {mp.type}, the model has a {type(module).__name__}"
                )
            actual = handler_for(module).axes(module)
            for axis, size in mp.sizes.items():
                if axis in actual and actual[axis] != size:
                    raise ConfigError(
                        f"plan{label} expects {name}:{axis} of size {size}, the model has {actual[axis]}; "
                        "apply the plan to a fresh, unpruned copy of the original model"
                    )
        for name, mp in step.modules.items():
            module = model.get_submodule(name)
            keep = {axis: mp.keep(axis) for axis in mp.remove}
            new = handler_for(module).apply(module, keep, dict(mp.sizes))
            if new is not module:
                replace_submodule(model, name, new)

"""Dependency graph: which channel slices of which layers must be removed together.

:meth:`DependencyGraph.build` traces a model with ``torch.fx`` (shapes from one example input),
propagates channel indices through every op (:mod:`prunekit.structure.rules`) and returns the
coupled :class:`~prunekit.structure.groups.Unit` s and :class:`~prunekit.structure.groups.Group` s.
Hugging Face models (any submodule from ``transformers``) are handled structurally by module type
instead: attention heads and MLP intermediate neurons of BERT- and GPT-2-style blocks.

>>> import torch
>>> from prunekit.models import create
>>> g = DependencyGraph.build(create("resnet20"), torch.zeros(1, 3, 32, 32))
>>> len(g.groups), sum(u.prunable for u in g.units)
(12, 400)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from prunekit.errors import UnsupportedError
from prunekit.structure.groups import AxisRef, Group, SlotSpace, UnionFind, Unit
from prunekit.structure.rules import Propagation
from prunekit.structure.surgery import handler_for
from prunekit.tracing import trace


def as_args(example_input: Any) -> tuple[Any, ...]:
    """Positional arguments for ``model(*args)`` from a tensor, tuple/list (dicts are not traced)."""
    if isinstance(example_input, torch.Tensor):
        return (example_input,)
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input)
    raise UnsupportedError(
        f"example input of type {type(example_input).__name__}: pass a tensor or a tuple of tensors"
    )


def is_hf_model(model: nn.Module) -> bool:
    """True when any submodule comes from the ``transformers`` package."""
    return any(type(m).__module__.startswith("transformers.") for m in model.modules())


@dataclass
class DependencyGraph:
    """Coupled channel units of a model. ``axes`` maps every module axis to its size."""

    model: nn.Module
    axes: dict[AxisRef, int]
    units: list[Unit]
    groups: list[Group]

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def build(cls, model: nn.Module, example_input: Any) -> DependencyGraph:
        """Trace ``model`` on ``example_input`` and group its coupled channels.

        Raises :class:`UnsupportedError` naming the op and module when some op touching channels
        has no rule (never a silently wrong grouping).
        """
        space = SlotSpace()
        if is_hf_model(model):
            from prunekit.structure.hf import build_hf_space

            pins = build_hf_space(model, space)
        else:
            gm = _trace(model)
            _propagate_shapes(gm, model, example_input)
            prop = Propagation(gm, space)
            prop.run()
            prop.finalize()
            pins = prop.pins
        return cls._from_space(model, space, pins)

    @classmethod
    def _from_space(cls, model: nn.Module, space: SlotSpace, pins: Mapping[Any, str]) -> DependencyGraph:
        uf = space.uf
        pinned: dict[int, str] = {}
        for key, reason in pins.items():
            for root in space.roots(key):
                pinned.setdefault(root, reason)
        axes: dict[AxisRef, int] = {}
        by_root: dict[int, Unit] = {}
        units: list[Unit] = []
        for key, (offset, size) in space.ranges.items():
            if not isinstance(key, AxisRef):
                continue
            axes[key] = size
            per_unit: dict[int, list[int]] = {}
            for i in range(size):
                per_unit.setdefault(uf.find(offset + i), []).append(i)
            for root, idx in per_unit.items():
                unit = by_root.get(root)
                if unit is None:
                    unit = Unit(len(units), {}, pinned.get(root))
                    by_root[root] = unit
                    units.append(unit)
                unit.slots[key] = tuple(idx)
        groups = _group_units(list(axes), units)
        return cls(model, axes, units, groups)

    # -- queries ---------------------------------------------------------------------------------
    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def prunable_units(self) -> list[Unit]:
        return [u for u in self.units if u.prunable]

    def units_on(self, module: str, axis: str) -> list[Unit]:
        """Units owning some index of ``module``'s ``axis`` (e.g. ``("layer1.0.conv2", "in")``)."""
        ref = AxisRef(module, axis)
        return [u for u in self.units if ref in u.slots]

    def module_axes(self) -> dict[str, dict[str, int]]:
        """``{module name: {axis: size}}`` for every module touched by the graph."""
        out: dict[str, dict[str, int]] = {}
        for ref, size in self.axes.items():
            out.setdefault(ref.module, {})[ref.axis] = size
        return out

    def axis_list(self) -> list[AxisRef]:
        """Module axes in a fixed order (ids used by :meth:`unit_counts`)."""
        return list(self.axes)

    def unit_counts(self) -> list[list[tuple[int, int]]]:
        """Per unit, ``(axis id, number of indices)`` for each axis it owns (cached)."""
        cached = getattr(self, "_unit_counts", None)
        if cached is None:
            ids = {a: i for i, a in enumerate(self.axes)}
            cached = [[(ids[a], len(ix)) for a, ix in u.slots.items()] for u in self.units]
            self._unit_counts = cached
        return cached

    def removed_counts(self, removed_units: Iterable[int]) -> dict[AxisRef, int]:
        """Number of removed indices on each module axis when ``removed_units`` are pruned."""
        axes = self.axis_list()
        counts = [0] * len(axes)
        per_unit = self.unit_counts()
        for ui in removed_units:
            for a, n in per_unit[ui]:
                counts[a] += n
        return {axes[i]: c for i, c in enumerate(counts) if c}

    def removed_slots(self, removed_units: Iterable[int]) -> dict[AxisRef, list[int]]:
        """Sorted removed indices on each module axis when ``removed_units`` are pruned."""
        out: dict[AxisRef, set[int]] = {}
        for ui in removed_units:
            unit = self.units[ui]
            if not unit.prunable:
                raise UnsupportedError(f"unit {ui} is pinned ({unit.pinned}) and cannot be removed")
            for ref, idx in unit.slots.items():
                out.setdefault(ref, set()).update(idx)
        return {ref: sorted(ix) for ref, ix in out.items()}

    def summary(self) -> str:
        """One line per group: prunable/total units and the axes it spans."""
        lines = []
        for g in self.groups:
            n_ok = sum(self.units[u].prunable for u in g.units)
            reasons = sorted({self.units[u].pinned for u in g.units if self.units[u].pinned})
            pin = f"; pinned: {', '.join(reasons)}" if reasons else ""
            axes = ", ".join(str(a) for a in g.axes[:4]) + (
                f", ... ({len(g.axes)} axes)" if len(g.axes) > 4 else ""
            )
            lines.append(f"group {g.index}: {n_ok}/{len(g.units)} prunable units over {axes}{pin}")
        return "\n".join(lines)

    def check_handlers(self) -> None:
        """Every module in the graph must have surgery support."""
        for name in self.module_axes():
            handler_for(self.module(name))


def _group_units(axes: list[AxisRef], units: list[Unit]) -> list[Group]:
    index = {a: i for i, a in enumerate(axes)}
    uf = UnionFind(len(axes))
    for u in units:
        refs = [index[a] for a in u.slots]
        for r in refs[1:]:
            uf.union(refs[0], r)
    groups: dict[int, Group] = {}
    for a in axes:
        root = uf.find(index[a])
        if root not in groups:
            groups[root] = Group(len(groups), [])
        groups[root].axes.append(a)
    for u in units:
        g = groups[uf.find(index[next(iter(u.slots))])]
        u.group = g.index
        g.units.append(u.index)
    return list(groups.values())


def _trace(model: nn.Module) -> fx.GraphModule:
    return trace(
        model, "group its channels", "structured pruning needs a traceable forward (no data-dependent control flow)"
    )


def _propagate_shapes(gm: fx.GraphModule, model: nn.Module, example_input: Any) -> None:
    from torch.fx.passes.shape_prop import ShapeProp

    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*as_args(example_input))
    finally:
        for m, flag in flags:
            m.training = flag

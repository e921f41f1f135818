"""Score coupled units with any importance and choose which to remove.

A unit's score reduces (``sum``/``mean``/``max``/``min``) the scores of every member slice: for each
module axis it owns and each weight slice of that axis, the importance's element scores summed over
the non-channel dims. ``members="out"`` scores the producing slices only (conv/linear output rows,
attention heads); ``"all"`` adds the consumers' input columns.

>>> import torch
>>> from prunekit.models import create
>>> from prunekit.structure.graph import DependencyGraph
>>> g = DependencyGraph.build(create("resnet20"), torch.zeros(1, 3, 32, 32))
>>> s = unit_scores(g)
>>> removed = choose_units(g, s, ratio=0.5, allocation="uniform")
>>> len(removed), sum(u.prunable for u in g.units) // 2
(200, 200)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import ConfigError, close_matches
from prunekit.granularity import REDUCTIONS, reduce_groups
from prunekit.importance.base import checked_scores
from prunekit.structure.graph import DependencyGraph
from prunekit.structure.groups import AxisRef
from prunekit.structure.surgery import ParamSlice, get_tensor, handler_for
from prunekit.targets import Target

OUT_AXES = ("out", "feat", "heads")
def _reduce(reduction: str) -> Callable[[np.ndarray], float]:
    """One unit's score from its members' values, with the granularity's reduction table."""
    return lambda v: float(reduce_groups(torch.from_numpy(np.asarray(v, dtype=np.float64)).view(1, -1), reduction)[0])


def default_importance() -> Any:
    """L1 weight magnitude (``prunekit.importance.magnitude.Magnitude(p=1)``)."""
    from prunekit.importance.magnitude import Magnitude

    return Magnitude(p=1)


def _target(graph: DependencyGraph, module_name: str, param: str) -> Target:
    owner, _, leaf = param.rpartition(".")
    name = f"{module_name}.{owner}" if owner else module_name
    return Target(name, graph.model.get_submodule(name), leaf)


def candidate_axes(graph: DependencyGraph, exclude: Sequence[str] = ()) -> set[AxisRef]:
    """Module axes of the units that may be removed (prunable, touching no ``exclude`` module)."""
    excluded = set(exclude)
    out: set[AxisRef] = set()
    for u in graph.units:
        if u.prunable and not any(a.module in excluded for a in u.slots):
            out.update(u.slots)
    return out


def scored_slices(
    graph: DependencyGraph, members: str = "out", include_norm: bool = False, exclude: Sequence[str] = ()
) -> list[tuple[AxisRef, ParamSlice]]:
    """The (axis, slice) pairs whose element scores feed unit scores (candidate units' axes only)."""
    if members not in ("out", "all"):
        raise ConfigError(f"members must be 'out' or 'all', got {members!r}")
    kinds = {"weight", "norm"} if include_norm else {"weight"}
    wanted = candidate_axes(graph, exclude)
    out = []
    for ref in graph.axes:
        if ref not in wanted:
            continue
        if members == "out" and ref.axis not in OUT_AXES:
            continue
        module = graph.module(ref.module)
        for sl in handler_for(module).slices(module, ref.axis):
            if sl.kind in kinds and get_tensor(module, sl.param) is not None:
                out.append((ref, sl))
    return out


def score_targets(
    graph: DependencyGraph, members: str = "out", include_norm: bool = False, exclude: Sequence[str] = ()
) -> list[Target]:
    """Targets :func:`unit_scores` will call ``importance.scores`` on (calibrate on these)."""
    seen: dict[str, Target] = {}
    for ref, sl in scored_slices(graph, members, include_norm, exclude):
        t = _target(graph, ref.module, sl.param)
        seen.setdefault(f"{t.name}/{t.param_name}", t)
    return list(seen.values())


def unit_scores(
    graph: DependencyGraph,
    importance: Any = None,
    reduction: str = "mean",
    members: str = "out",
    include_norm: bool = False,
    member_norm: bool = True,
    exclude: Sequence[str] = (),
) -> np.ndarray:
    """One score per unit (``nan`` for pinned units or units without scored slices).

    With ``member_norm`` each member slice's scores are first divided by their mean over that
    axis, so layers of different fan-in weigh alike when a unit spans several layers. Units
    touching an ``exclude`` module are not scored (``nan``).
    """
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduction!r}; use one of {REDUCTIONS}")
    importance = importance if importance is not None else default_importance()
    per_axis: dict[AxisRef, list[np.ndarray]] = {}
    cache: dict[str, torch.Tensor] = {}
    for ref, sl in scored_slices(graph, members, include_norm, exclude):
        t = _target(graph, ref.module, sl.param)
        key = f"{t.name}/{t.param_name}"
        if key not in cache:
            cache[key] = checked_scores(importance, t).cpu()
        s = cache[key]
        v = s.transpose(0, sl.dim).reshape(s.shape[sl.dim], -1).sum(1)  # (param dim,)
        size = graph.axes[ref]
        idx = sl.indices(torch.arange(size)).view(len(sl.offsets), size, sl.unit)
        vec = v[idx].sum(dim=(0, 2)).numpy()  # (size,)
        if member_norm:
            mean = float(vec.mean())
            vec = vec / mean if mean > 0 else vec
        per_axis.setdefault(ref, []).append(vec)
    reduce = _reduce(reduction)
    out = np.full(len(graph.units), np.nan)
    excluded = set(exclude)
    for u in graph.units:
        if not u.prunable or any(a.module in excluded for a in u.slots):
            continue
        vals = [vec[list(ix)] for ref, ix in u.slots.items() for vec in per_axis.get(ref, [])]
        if vals:
            out[u.index] = reduce(np.concatenate(vals))
    return out


class _Budget:
    """Tracks kept indices per module axis so no axis drops below its minimum."""

    def __init__(self, graph: DependencyGraph, min_keep: float, max_keep: float = 1.0) -> None:
        sizes = list(graph.axes.values())
        self.per_unit = graph.unit_counts()
        self.kept = list(sizes)
        self.floor = [max(1, math.ceil(min_keep * n)) for n in sizes]
        self.cap = [max(f, math.floor(max_keep * n + 1e-9)) for f, n in zip(self.floor, sizes)]

    def over_cap(self, ui: int) -> bool:
        return any(self.kept[a] > self.cap[a] for a, _ in self.per_unit[ui])

    def can_remove(self, ui: int) -> bool:
        kept, floor = self.kept, self.floor
        return all(kept[a] - n >= floor[a] for a, n in self.per_unit[ui])

    def remove(self, ui: int) -> None:
        for a, n in self.per_unit[ui]:
            self.kept[a] -= n

    def restore(self, ui: int) -> None:
        for a, n in self.per_unit[ui]:
            self.kept[a] += n


def _group_order(graph: DependencyGraph, scores: np.ndarray, normalize: bool) -> dict[int, list[int]]:
    """Prunable, scored units of each group, lowest score first (ties by index)."""
    out: dict[int, list[int]] = {}
    for g in graph.groups:
        units = [u for u in g.units if graph.units[u].prunable and not np.isnan(scores[u])]
        units.sort(key=lambda u: (scores[u], u))
        if units:
            out[g.index] = units
    return out


class UnitSelector:
    """Chooses units to remove for any ratio; the score order is computed once (see :func:`choose_units`)."""

    def __init__(
        self,
        graph: DependencyGraph,
        scores: np.ndarray,
        allocation: str = "global",
        min_keep: float = 0.0,
        round_to: int | None = None,
        normalize: bool = True,
        exclude: Sequence[str] = (),
        max_keep: float = 1.0,
        group_ratios: dict[int, float] | None = None,
    ) -> None:
        if allocation not in ("global", "uniform"):
            raise ConfigError(f"allocation must be 'global' or 'uniform', got {allocation!r}")
        if round_to is not None and int(round_to) < 1:
            raise ConfigError(f"round_to must be >= 1, got {round_to}")
        if not 0.0 <= min_keep <= 1.0:
            raise ConfigError(f"min_keep is a kept fraction in [0, 1], got {min_keep}")
        if not min_keep <= max_keep <= 1.0:
            raise ConfigError(f"max_keep is a kept fraction in [min_keep, 1], got {max_keep}")
        self.graph, self.allocation, self.min_keep, self.round_to = graph, allocation, min_keep, round_to
        self.max_keep = max_keep
        self.group_ratios = group_ratios  # uniform mode: each group's own ratio instead of the one passed
        excluded = set(exclude)
        unknown = excluded - {a.module for a in graph.axes}
        if unknown:
            names = sorted({a.module for a in graph.axes})
            raise ConfigError(
                f"exclude names unknown layer(s) {sorted(unknown)}; {close_matches(min(unknown), names)}"
            )
        self.orders = {
            g: [u for u in us if not any(a.module in excluded for a in graph.units[u].slots)]
            for g, us in _group_order(graph, scores, normalize).items()
        }
        flat = []
        for g, units in self.orders.items():
            mean = float(np.mean([scores[u] for u in units])) if (normalize and units) else 1.0
            mean = mean if mean > 0 else 1.0
            flat += [(scores[u] / mean, u, g) for u in units]
        flat.sort()
        self.flat = flat

    @property
    def n_candidates(self) -> int:
        return len(self.flat)

    def choose(self, ratio: float) -> list[int]:
        """Sorted indices of the units removed at pruning ``ratio`` (fraction of candidate units)."""
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"pruning ratio must be in [0, 1), got {ratio}")
        graph = self.graph
        budget = _Budget(graph, self.min_keep, self.max_keep)
        removed: dict[int, list[int]] = {g: [] for g in self.orders}
        if self.allocation == "uniform":
            for g, units in self.orders.items():
                r = self.group_ratios.get(g, 0.0) if self.group_ratios is not None else ratio
                want = int(math.floor(r * len(units) + 1e-9))
                for u in units:
                    if len(removed[g]) >= want:
                        break
                    if budget.can_remove(u):
                        budget.remove(u)
                        removed[g].append(u)
        else:
            want = int(math.floor(ratio * len(self.flat) + 1e-9))
            done = 0
            for _, u, g in self.flat:
                if done >= want:
                    break
                if budget.can_remove(u):
                    budget.remove(u)
                    removed[g].append(u)
                    done += 1
        if self.round_to and self.round_to > 1:
            for g, rem in removed.items():
                total = len(graph.groups[g].units)
                target_keep = min(total, int(math.ceil((total - len(rem)) / self.round_to) * self.round_to))
                while total - len(rem) < target_keep and rem:
                    budget.restore(rem.pop())  # give back the highest-scored removal
        if self.max_keep < 1.0:  # force more removals (lowest scores first) where a layer keeps too much
            gone = {u for rem in removed.values() for u in rem}
            for g, units in self.orders.items():
                for u in units:
                    if u not in gone and budget.over_cap(u) and budget.can_remove(u):
                        budget.remove(u)
                        removed[g].append(u)
                        gone.add(u)
        return sorted(u for rem in removed.values() for u in rem)


def choose_units(
    graph: DependencyGraph,
    scores: np.ndarray,
    ratio: float,
    allocation: str = "global",
    min_keep: float = 0.0,
    round_to: int | None = None,
    normalize: bool = True,
    exclude: Sequence[str] = (),
    max_keep: float = 1.0,
) -> list[int]:
    """Indices of units to remove so that about ``ratio`` of the prunable units go.

    ``allocation="uniform"``: the same fraction of every group; ``"global"``: lowest scores across
    groups (each group's scores divided by its mean when ``normalize``). No module axis keeps fewer
    than ``max(1, ceil(min_keep * size))`` indices; where possible none keeps more than
    ``floor(max_keep * size)`` (extra lowest-score removals). ``round_to``: each group's kept unit count is
    rounded up to a multiple of it. Units touching a module in ``exclude`` are never removed.
    """
    return UnitSelector(graph, scores, allocation, min_keep, round_to, normalize, exclude, max_keep).choose(
        ratio
    )


# ---------------------------------------------------------------------------------------------
# cost estimation (for MACs / parameter targets)
# ---------------------------------------------------------------------------------------------
class CostModel:
    """Estimates parameters and MACs after removing units, from per-module costs of the dense model.

    Parameters are exact (sliced tensor sizes); MACs scale each module's measured MACs by the
    kept fraction of its weight (or of its axes for weightless modules such as attention cores).
    """

    def __init__(self, graph: DependencyGraph, example_input: Any) -> None:
        from prunekit.metrics import count_params, macs_by_layer

        self.graph = graph
        self.total_params = count_params(graph.model)
        self.module_macs = macs_by_layer(graph.model, example_input)
        self.total_macs = sum(self.module_macs.values())
        self.mod_axes = graph.module_axes()

    def _param_sizes(self, name: str, removed: dict[AxisRef, int]) -> dict[str, tuple[int, int]]:
        """``{param path: (old numel, new numel)}`` for the module's sliced parameters."""
        module = self.graph.module(name)
        handler = handler_for(module)
        shrink: dict[str, dict[int, int]] = {}
        for axis in self.mod_axes[name]:
            n_removed = removed.get(AxisRef(name, axis), 0)
            for sl in handler.slices(module, axis):
                t = get_tensor(module, sl.param)
                if isinstance(t, nn.Parameter):
                    d = shrink.setdefault(sl.param, {})
                    d[sl.dim] = d.get(sl.dim, 0) + n_removed * sl.unit * len(sl.offsets)
        out = {}
        for path, dims in shrink.items():
            t = get_tensor(module, path)
            shape = list(t.shape)
            for d, r in dims.items():
                shape[d] -= r
            out[path] = (t.numel(), math.prod(shape))
        return out

    def scope_totals(self, within: Sequence[str]) -> tuple[int, int]:
        """``(params, macs)`` of the dense model counted over the modules named in ``within`` only."""
        params = sum(
            p.numel() for n, m in self.graph.model.named_modules() if n in within for p in m.parameters(recurse=False)
        )
        return params, sum(v for n, v in self.module_macs.items() if n in within)

    def estimate(self, removed_units: Sequence[int], within: Sequence[str] | None = None) -> tuple[int, int]:
        """``(params, macs)`` after removing ``removed_units``; with ``within``, of those modules only."""
        removed = self.graph.removed_counts(removed_units)
        touched = {ref.module for ref in removed}
        params, macs = self.total_params, self.total_macs
        if within is not None:
            scope = set(within)
            touched &= scope
            params, macs = self.scope_totals(scope)
        for name in touched:
            sizes = self._param_sizes(name, removed)
            params -= sum(old - new for old, new in sizes.values())
            base = self.module_macs.get(name, 0)
            if not base:
                continue
            weight = sizes.get("weight") or sizes.get("in_proj_weight")
            if weight is not None and weight[0]:
                frac = weight[1] / weight[0]
            else:
                frac = 1.0
                for axis, n in self.mod_axes[name].items():
                    frac *= (n - removed.get(AxisRef(name, axis), 0)) / n
            macs -= int(round(base * (1.0 - frac)))
        return params, macs

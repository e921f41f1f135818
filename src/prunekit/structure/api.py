"""One call from a dense model to a smaller dense model: :func:`prune_channels`.

>>> import torch
>>> from prunekit.models import create
>>> model = create("resnet20")
>>> small, plan, report = prune_channels(model, torch.zeros(1, 3, 32, 32), ratio=0.5, target="macs")
>>> report.reached["macs"] >= 0.5, report.verified is not None
(True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from prunekit.errors import ConfigError
from prunekit.masks import clean_copy
from prunekit.structure.graph import DependencyGraph
from prunekit.structure.plan import ModulePlan, PruningPlan
from prunekit.structure.ranking import CostModel, UnitSelector, unit_scores
from prunekit.structure.verify import VerifyResult, verify

TARGETS = ("channels", "macs", "params")


@dataclass
class PruneReport:
    """What :func:`prune_channels` asked for and what it reached (ratios are fractions removed)."""

    target: str
    ratio: float
    channel_ratio: float
    units_removed: int
    units_prunable: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    verified: VerifyResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def reached(self) -> dict[str, float]:
        return {
            "channels": self.channel_ratio,
            "params": 1.0 - self.params_after / self.params_before if self.params_before else 0.0,
            "macs": 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (for benchmark result files)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("verified", "notes")}
        out["reached"] = self.reached
        out["verified_max_abs_diff"] = self.verified.max_abs_diff if self.verified else None
        out["notes"] = list(self.notes)
        return out

    def __str__(self) -> str:
        r = self.reached
        lines = [
            f"target {self.target} ratio {self.ratio:.3f}: removed {self.units_removed}/{self.units_prunable} "
            f"prunable channels ({r['channels']:.1%})",
            f"params {self.params_before:,} -> {self.params_after:,} (-{r['params']:.1%}); "
            f"MACs {self.macs_before:,} -> {self.macs_after:,} (-{r['macs']:.1%})",
            f"verified: {self.verified}" if self.verified else "verified: not checked",
        ]
        return "\n".join(lines + self.notes)


def make_plan(
    graph: DependencyGraph, removed_units: Sequence[int], meta: dict[str, Any] | None = None
) -> PruningPlan:
    """The one-step :class:`PruningPlan` removing ``removed_units`` of ``graph`` (sizes: those of
    ``graph.model``; chain it after the plan that produced that model with ``PruningPlan.then``)."""
    removed = graph.removed_slots(removed_units)
    sizes = graph.module_axes()
    modules: dict[str, ModulePlan] = {}
    for ref, idx in sorted(removed.items()):
        mp = modules.get(ref.module)
        if mp is None:
            mp = ModulePlan(type(graph.module(ref.module)).__name__, dict(sizes[ref.module]))
            modules[ref.module] = mp
        mp.remove[ref.axis] = list(idx)
    return PruningPlan(modules, meta)


def _search(
    graph: DependencyGraph,
    scores: np.ndarray,
    goal: float,
    measure: Any,
    choose: Any,
) -> tuple[float, list[int]]:
    """Smallest channel ratio whose removal reduces ``measure`` by at least ``goal`` (bisection)."""
    lo, hi = 0.0, 0.999
    best = choose(hi)
    if measure(best) < goal:
        return hi, best
    for _ in range(30):
        mid = (lo + hi) / 2
        units = choose(mid)
        if measure(units) >= goal:
            hi, best = mid, units
        else:
            lo = mid
        if hi - lo < 1e-3:
            break
    return hi, best


def prune_channels(
    model: nn.Module,
    example_input: Any,
    ratio: float,
    importance: Any = None,
    target: str = "channels",
    round_to: int | None = None,
    verify: bool = True,
    allocation: str = "global",
    reduction: str = "mean",
    members: str = "out",
    member_norm: bool = True,
    min_keep: float = 0.0,
    max_keep: float = 1.0,
    exclude: Sequence[str] = (),
    graph: DependencyGraph | None = None,
) -> tuple[nn.Module, PruningPlan, PruneReport]:
    """Remove channels (conv filters, linear neurons, attention heads) and return a smaller model.

    ``ratio`` is the fraction to remove of ``target``: ``"channels"`` (prunable units),
    ``"macs"`` or ``"params"`` (searched until reached; the report gives what was reached).
    ``importance`` follows the prunekit importance contract (default L1 magnitude; a criterion name
    such as ``"l2"`` or ``"bn"`` is built for the graph's layers); ``allocation``
    ``"global"`` or ``"uniform"``; ``min_keep``/``max_keep`` bound each layer's kept fraction; ``round_to``
    rounds each group's kept channel count up to a multiple. The input model is not modified. With
    ``verify`` the small model is checked against the masked original (eval mode).
    """
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {TARGETS}, got {target!r}")
    if not 0.0 <= float(ratio) < 1.0:
        raise ConfigError(f"ratio is the fraction to remove and must be in [0, 1), got {ratio}")
    graph = graph if graph is not None else DependencyGraph.build(model, example_input)
    graph.check_handlers()
    if isinstance(importance, str):  # a criterion name without calibration data ("l1", "l2", "bn", ...)
        from prunekit.importance import registry
        from prunekit.structure.ranking import score_targets

        importance = registry.build(importance, model, score_targets(graph, members, exclude=exclude))
    scores = unit_scores(
        graph, importance, reduction=reduction, members=members, member_norm=member_norm, exclude=exclude
    )
    n_prunable = int(np.sum(~np.isnan(scores)))

    choose = UnitSelector(
        graph, scores, allocation, min_keep, round_to, exclude=exclude, max_keep=max_keep
    ).choose

    cost = CostModel(graph, example_input)
    notes: list[str] = []
    if target == "channels":
        units = choose(float(ratio))
    else:
        idx = 0 if target == "params" else 1
        base = cost.total_params if target == "params" else cost.total_macs

        def measure(us: list[int]) -> float:
            return 1.0 - cost.estimate(us)[idx] / base if base else 0.0

        _, units = _search(graph, scores, float(ratio), measure, choose)
    meta = {
        "target": target, "ratio": float(ratio), "allocation": allocation, "reduction": reduction,
        "members": members, "member_norm": member_norm, "round_to": round_to, "min_keep": min_keep, "max_keep": max_keep,
        "importance": _describe(importance),
    }  # fmt: skip
    plan = make_plan(graph, units, meta)
    small = plan.apply(clean_copy(model))
    from prunekit.metrics import count_macs, count_params

    report = PruneReport(
        target=target,
        ratio=float(ratio),
        channel_ratio=len(units) / n_prunable if n_prunable else 0.0,
        units_removed=len(units),
        units_prunable=n_prunable,
        params_before=cost.total_params,
        params_after=count_params(small),
        macs_before=cost.total_macs,
        macs_after=count_macs(small, example_input),
        notes=notes,
    )
    if target != "channels" and report.reached[target] + 1e-9 < ratio:
        notes.append(
            f"note: could not reach {target} ratio {ratio:.3f} (reached {report.reached[target]:.3f}) "
            "within the per-layer minimums"
        )
    if verify:
        report.verified = _verify(graph, units, small, example_input)
    return small, plan, report


def _describe(importance: Any) -> str:
    if importance is None:
        return "Magnitude(p=1)"
    if type(importance).__repr__ is object.__repr__:
        return type(importance).__name__
    return repr(importance)


def _verify(graph: DependencyGraph, units: list[int], small: nn.Module, example_input: Any) -> VerifyResult:
    return verify(graph, graph.removed_slots(units), small, example_input)

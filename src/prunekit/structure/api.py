"""One call from a dense model to a smaller dense model: :func:`prune_channels`.

>>> import torch
>>> from prunekit.models import create
>>> model = create("resnet20")
>>> small, plan, report = prune_channels(model, torch.zeros(1, 3, 32, 32), 0.5, target="macs")
>>> report.reached["macs"] >= 0.5, report.verified is not None
(True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from prunekit.errors import ConfigError, close_matches
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
    within: list[str] = field(default_factory=list)  # modules the params / MACs ratios count (empty: all)
    scoped: dict[str, tuple[int, int]] = field(default_factory=dict)  # "params"/"macs" -> (before, after) in scope

    @property
    def reached(self) -> dict[str, float]:
        (pb, pa), (mb, ma) = self.scoped.get("params", (self.params_before, self.params_after)), self.scoped.get(
            "macs", (self.macs_before, self.macs_after))
        return {
            "channels": self.channel_ratio,
            "params": 1.0 - pa / pb if pb else 0.0,
            "macs": 1.0 - ma / mb if mb else 0.0,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (for benchmark result files)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("verified", "notes", "within", "scoped")}
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


@dataclass(frozen=True)
class ChannelScoring:
    """How a coupled channel's score is made from its member slices' element scores.

    ``reduction`` (sum / mean / max / min / l2) over every member slice; ``members="out"`` scores the
    producing slices only (filters, neurons, heads), ``"all"`` adds the consumers' input columns;
    ``member_norm`` divides each member's scores by their mean first, so layers of different fan-in
    weigh alike. The defaults are the ones the structured benchmarks use.
    """

    reduction: str = "mean"
    members: str = "out"
    member_norm: bool = True

    def __post_init__(self) -> None:
        from prunekit.granularity import REDUCTIONS

        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"ChannelScoring reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.members not in ("out", "all"):
            raise ConfigError(f"ChannelScoring members must be 'out' or 'all', got {self.members!r}")


@dataclass(frozen=True)
class ChannelConstraints:
    """Bounds on every module axis: keep at least ``min_keep`` and at most ``max_keep`` of it (fractions),
    and round each group's kept channel count up to a multiple of ``round_to`` (hardware-friendly sizes).
    """

    min_keep: float = 0.0
    max_keep: float = 1.0
    round_to: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_keep <= 1.0:
            raise ConfigError(f"min_keep is a kept fraction in [0, 1], got {self.min_keep}")
        if not self.min_keep <= self.max_keep <= 1.0:
            raise ConfigError(f"max_keep is a kept fraction in [min_keep, 1], got {self.max_keep}")
        if self.round_to is not None and (isinstance(self.round_to, bool) or int(self.round_to) < 1):
            raise ConfigError(f"round_to must be an int >= 1, got {self.round_to!r}")


def match_modules(patterns: Sequence[str], names: Sequence[str], what: str = "exclude") -> list[str]:
    """The names matching any glob in ``patterns``; a pattern matching nothing is a ConfigError.

    >>> match_modules(["layer1.*"], ["conv1", "layer1.0.conv1", "layer1.0.conv2"])
    ['layer1.0.conv1', 'layer1.0.conv2']
    """
    import fnmatch

    if isinstance(patterns, str):
        patterns = [patterns]
    out: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ConfigError(f"{what} {pattern!r} matches no prunable layer; {close_matches(pattern, list(names))}")
        out += [h for h in hits if h not in out]
    return out


def _selector_args(allocation: Any, graph: DependencyGraph, constraints: ChannelConstraints) -> tuple[
    str, float, float, dict[int, float] | None
]:
    """(mode, ratio, min_keep, per-group ratios) of the unit selector for an allocation object."""
    from prunekit.allocation import Allocation, Global, PerLayer, Uniform

    if isinstance(allocation, bool) or not isinstance(allocation, (int, float, Allocation)):
        raise ConfigError(
            f"allocation must be a fraction to remove or an allocation object such as pk.Global(0.5) or "
            f"pk.Uniform(0.5), got {type(allocation).__name__} {allocation!r}"
        )
    if isinstance(allocation, (int, float)):
        allocation = Global(float(allocation))
    if isinstance(allocation, Global):
        if allocation.normalize is not None:
            raise ConfigError(
                "Global(normalize=...) applies to masks; channel groups are always compared after dividing "
                "each group's scores by their mean"
            )
        return "global", allocation.sparsity, max(constraints.min_keep, allocation.min_keep), None
    if isinstance(allocation, Uniform):
        if allocation.sparsity is None:
            raise ConfigError("Uniform(None) takes its ratio from an N:M or pattern granularity; give a ratio")
        return "uniform", allocation.sparsity, constraints.min_keep, None
    if isinstance(allocation, PerLayer):
        names = sorted({a.module for a in graph.axes})
        labels = {str(g.axes[0]) for g in graph.groups}  # a group's name (prunekit.search.channels.group_label)
        for pattern in allocation.ratios:
            if pattern not in labels:
                match_modules([pattern], names, "PerLayer")
        import fnmatch

        def matches(pattern: str, g: Any) -> bool:  # a group's name names that group; a glob, any of its modules
            if pattern in labels:
                return pattern == str(g.axes[0])
            return any(fnmatch.fnmatchcase(a.module, pattern) for a in g.axes)

        per_group: dict[int, float] = {}
        for g in graph.groups:
            ratio = next((r for pattern, r in allocation.ratios.items() if matches(pattern, g)), allocation.default)
            per_group[g.index] = 0.0 if ratio is None else ratio
        return "uniform", 0.0, constraints.min_keep, per_group
    raise ConfigError(
        f"{type(allocation).__name__} cannot allocate channel groups yet; use Global, Uniform or PerLayer"
    )


def prune_channels(
    model: nn.Module,
    example_input: Any,
    allocation: Any,
    importance: Any = None,
    *,
    target: str = "channels",
    exclude: Sequence[str] = (),
    scoring: ChannelScoring | None = None,
    constraints: ChannelConstraints | None = None,
    calibration: Any = None,
    within: Sequence[str] = (),
    verify: bool = True,
    graph: DependencyGraph | None = None,
) -> tuple[nn.Module, PruningPlan, PruneReport]:
    """Remove channels (conv filters, linear neurons, attention heads) and return a smaller model.

    ``allocation`` says how much and where, over the dependency graph's coupled channel groups,
    with the same objects masks use: ``Global(0.5)`` (one ranking; a plain ``0.5`` means this),
    ``Uniform(0.5)`` (the same fraction of every group) or ``PerLayer({"layer3.*": 0.6}, default=0.3)``
    (glob patterns; a group takes the first pattern that matches one of its modules, or that is its name,
    e.g. ``"layer1.0.conv1:out"`` as :mod:`prunekit.search.channels` names groups). The ratio is
    the fraction to remove of ``target``: ``"channels"`` (prunable units), ``"macs"`` or ``"params"``
    (searched until reached; the report says what was reached). ``importance`` follows the prunekit
    importance contract (default L1 magnitude); a name or spec such as ``"l2"`` or ``"taylor"`` is
    built for the graph's layers, and a data-driven one is calibrated on ``calibration`` (a loader or
    list of batches: all of a list, the first 8 of a loader) when it is not calibrated yet. ``exclude``: glob patterns of modules whose channels
    stay. ``within``: glob patterns of the modules whose parameters / MACs the ``"params"`` /
    ``"macs"`` target counts (e.g. ``["bert.encoder.*"]``: the encoder without the embeddings);
    default the whole model. ``scoring`` and ``constraints`` hold the rest (see :class:`ChannelScoring`,
    :class:`ChannelConstraints`). The input model is not modified. With ``verify`` the small model
    is checked against the masked original (eval mode).
    """
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {TARGETS}, got {target!r}; {close_matches(str(target), TARGETS)}")
    from prunekit.inputs import check_example_input

    check_example_input(model, example_input, "prune_channels")
    scoring = scoring if scoring is not None else ChannelScoring()
    constraints = constraints if constraints is not None else ChannelConstraints()
    graph = graph if graph is not None else DependencyGraph.build(model, example_input)
    graph.check_handlers()
    mode, ratio, min_keep, per_group = _selector_args(allocation, graph, constraints)
    if per_group is not None and target != "channels":
        raise ConfigError("PerLayer ratios are fractions of each group's channels: use target='channels'")
    exclude = match_modules(exclude, sorted({a.module for a in graph.axes})) if exclude else []
    importance = _ready_importance(importance, model, graph, scoring, exclude, calibration)
    scores = unit_scores(
        graph, importance, reduction=scoring.reduction, members=scoring.members, member_norm=scoring.member_norm,
        exclude=exclude,
    )  # fmt: skip
    n_prunable = int(np.sum(~np.isnan(scores)))
    selector = UnitSelector(
        graph, scores, mode, min_keep, constraints.round_to, exclude=exclude, max_keep=constraints.max_keep,
        group_ratios=per_group,
    )  # fmt: skip
    if selector.n_candidates == 0 and (ratio > 0 or per_group):
        if exclude:
            why = f"exclude={list(exclude)} touches every prunable channel group; exclude fewer layers"
        else:
            why = (f"every channel group of the model is pinned ({_pinned_summary(graph)}); register a rule for "
                   "modules whose channels prunekit cannot follow (prunekit.structure.register_module)")
        raise ConfigError(f"nothing can be pruned: {why}")
    choose = selector.choose

    cost = CostModel(graph, example_input)
    scope = None
    if within:
        scope = match_modules(within, [n for n, _ in model.named_modules() if n], "within")
    notes: list[str] = []
    if target == "channels":
        units = choose(float(ratio))
    else:
        idx = 0 if target == "params" else 1
        base = (cost.total_params, cost.total_macs)[idx] if scope is None else cost.scope_totals(scope)[idx]
        if not base:
            raise ConfigError(f"the modules matched by within={list(within)} have no {target} to remove")

        def measure(us: list[int]) -> float:
            return 1.0 - cost.estimate(us, scope)[idx] / base

        _, units = _search(graph, scores, float(ratio), measure, choose)
    meta = {
        "target": target, "ratio": float(ratio), "allocation": repr(allocation) if not isinstance(allocation, (int, float))
        else f"Global({float(allocation)})", "mode": mode,
        "reduction": scoring.reduction, "members": scoring.members, "member_norm": scoring.member_norm,
        "round_to": constraints.round_to, "min_keep": min_keep, "max_keep": constraints.max_keep,
        "exclude": list(exclude), "importance": _describe(importance),
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
    if scope is not None:
        from prunekit.metrics import macs_by_layer

        inside = set(scope)
        small_macs = macs_by_layer(small, example_input)
        after = (
            sum(p.numel() for n, m in small.named_modules() if n in inside for p in m.parameters(recurse=False)),
            sum(v for n, v in small_macs.items() if n in inside),
        )
        before = cost.scope_totals(scope)
        report.within = list(within)
        report.scoped = {"params": (before[0], after[0]), "macs": (before[1], after[1])}
    if target != "channels" and report.reached[target] + 1e-9 < ratio:
        notes.append(
            f"note: could not reach {target} ratio {ratio:.3f} (reached {report.reached[target]:.3f}) "
            f"within the per-layer minimums (min_keep {min_keep:g}"
            + (f", {len(exclude)} excluded modules" if exclude else "") + ")"
        )
    pinned = _pinned_summary(graph)
    if pinned:
        notes.append(f"kept whole (pinned): {pinned}")
    if verify:
        report.verified = _verify(graph, units, small, example_input)
    return small, plan, report


def _pinned_summary(graph: DependencyGraph) -> str:
    """'N channels: reason (modules...)' for the units the graph pinned, grouped by reason."""
    by_reason: dict[str, int] = {}
    for u in graph.units:
        if u.pinned:
            by_reason[u.pinned] = by_reason.get(u.pinned, 0) + 1
    return "; ".join(f"{n} channel{'s' if n != 1 else ''}: {reason}" for reason, n in sorted(by_reason.items()))


def _ready_importance(
    importance: Any, model: nn.Module, graph: DependencyGraph, scoring: ChannelScoring, exclude: Sequence[str],
    calibration: Any,
) -> Any:
    """The importance object to score with: built from a name, calibrated on ``calibration`` if it needs data."""
    from prunekit.importance.base import needs_calibration
    from prunekit.structure.ranking import score_targets

    targets = score_targets(graph, scoring.members, exclude=exclude)
    if isinstance(importance, (str, Mapping)):
        from prunekit import criteria as registry

        return registry.build(importance, model, targets, calibration)
    if importance is None:
        return None
    if not callable(getattr(importance, "scores", None)):
        raise ConfigError(
            f"importance must be a criterion object with scores() (e.g. pk.Magnitude(p=1)) or a name such as "
            f"'l1', got {type(importance).__name__} {importance!r}"
        )
    if needs_calibration(importance) and calibration is not None and not getattr(importance, "calibrated", False):
        batches = len(calibration) if isinstance(calibration, (list, tuple)) else 8
        return importance.calibrate(model, calibration, batches, targets)
    return importance


def _describe(importance: Any) -> str:
    if importance is None:
        return "Magnitude(p=1)"
    if type(importance).__repr__ is object.__repr__:
        return type(importance).__name__
    return repr(importance)


def _verify(graph: DependencyGraph, units: list[int], small: nn.Module, example_input: Any) -> VerifyResult:
    return verify(graph, graph.removed_slots(units), small, example_input)

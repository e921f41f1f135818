"""Per-group channel ratios: prune named channel groups, scan their sensitivity, meet a MACs target.

The dependency graph's coupled channel groups are named by their first module axis
(``"layer1.0.conv1:out"``). :func:`prune_groups` removes a given fraction of each named group's
lowest-scored channels (one plan step); :func:`scan_channels` prunes each group alone at each
ratio and records ``evaluate(model)`` (:class:`~prunekit.sensitivity.SensitivityCurves`, sizes =
the MACs each group's layers run); :func:`ratios_for_macs` / :func:`ratios_for_latency` turn the curves into per-group
ratios whose pruned model keeps ``macs_ratio`` of the dense MACs or runs in ``latency_ratio`` of its
latency (measured on each candidate, not modelled).

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1))
>>> x = torch.randn(2, 3, 12, 12)
>>> names(model, x)
['0:out', '2:out']
>>> small, plan = prune_groups(model, x, {"0:out": 0.5})
>>> small[0].out_channels, small[2].in_channels, small[2].out_channels
(8, 8, 16)
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from prunekit.errors import ConfigError, close_matches

__all__ = ["cut_ratios", "exact_ratios", "group_label", "names", "prune_groups", "ratio_rounds", "ratios_for_cost",
           "ratios_for_latency", "ratios_for_macs", "scan_channels"]

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def group_label(group: Any) -> str:
    """A group's name: its first module axis (stable for the same model and input)."""
    return str(group.axes[0])


def _groups(graph: Any, importance: Any, exclude: Sequence[str]) -> dict[str, list[int]]:
    """label -> the group's prunable unit indices, lowest score first (groups with none left out)."""
    from prunekit.structure.api import match_modules
    from prunekit.structure.ranking import unit_scores

    excl = match_modules(list(exclude), sorted({a.module for a in graph.axes}), "exclude") if exclude else []
    scores = unit_scores(graph, importance, exclude=excl)
    out = {}
    for g in graph.groups:
        units = sorted((u for u in g.units if not math.isnan(scores[u])), key=lambda u: (scores[u], u))
        if units:
            out[group_label(g)] = units
    return out


def names(model: nn.Module, example_input: Any, exclude: Sequence[str] = ()) -> list[str]:
    """The prunable channel groups of ``model`` (not touching ``exclude`` globs), by name."""
    from prunekit.structure import DependencyGraph

    return list(_groups(DependencyGraph.build(model, example_input), None, exclude))


def prune_groups(model: nn.Module, example_input: Any, ratios: Mapping[str, float], importance: Any = None,
                 exclude: Sequence[str] = (), graph: Any = None) -> tuple[nn.Module, Any]:
    """A copy of ``model`` with ``round(ratio * n)`` of each named group's ``n`` channels removed
    (the lowest-scored; at least one kept), and the one-step plan that does it."""
    from prunekit.masks import clean_copy
    from prunekit.structure import DependencyGraph
    from prunekit.structure.api import make_plan

    graph = graph if graph is not None else DependencyGraph.build(model, example_input)
    groups = _groups(graph, importance, exclude)
    removed = [u for units in _removed(graph, groups, ratios).values() for u in units]
    plan = make_plan(graph, sorted(removed), {"ratios": {k: float(v) for k, v in ratios.items()}})
    return plan.apply(clean_copy(model)), plan


def _removed(graph: Any, groups: Mapping[str, list[int]], ratios: Mapping[str, float]) -> dict[str, list[int]]:
    """The units removed from each named group: its ``round(ratio * n)`` lowest-scored, skipping any whose
    removal would leave a module with no channel (a group can span several modules' axes, e.g. the
    residual stream of an option-A ResNet, whose first stage holds only a quarter of its units)."""
    from prunekit.structure.ranking import _Budget

    budget = _Budget(graph, 0.0)
    out: dict[str, list[int]] = {}
    for label, r in ratios.items():
        if label not in groups:
            raise ConfigError(f"no prunable channel group {label!r}; groups: {', '.join(groups)}; "
                              f"{close_matches(label, list(groups))}")
        if not 0.0 <= float(r) < 1.0:
            raise ConfigError(f"ratio of group {label!r} must be in [0, 1), got {r!r}")
        want = min(len(groups[label]) - 1, int(round(float(r) * len(groups[label]))))
        out[label] = []
        for u in groups[label]:
            if len(out[label]) >= want:
                break
            if budget.can_remove(u):
                budget.remove(u)
                out[label].append(u)
    return out


def exact_ratios(model: nn.Module, example_input: Any, ratios: Mapping[str, float], importance: Any = None,
                 exclude: Sequence[str] = (), graph: Any = None) -> dict[str, float]:
    """``ratios`` as the exact fractions ``k / n`` that :func:`prune_groups` removes from each group, so
    ``prune_channels(model, x, PerLayer(exact_ratios(...)), target="channels")`` cuts the same channel
    counts (group names are accepted as ``PerLayer`` keys) and reports, verifies and plans as usual.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 1))
    >>> exact_ratios(model, torch.randn(1, 3, 8, 8), {"0:out": 0.3})
    {'0:out': 0.3333333333333333}
    """
    from prunekit.structure import DependencyGraph

    graph = graph if graph is not None else DependencyGraph.build(model, example_input)
    groups = _groups(graph, importance, exclude)
    return {label: len(units) / len(groups[label]) for label, units in _removed(graph, groups, ratios).items()}


def cut_ratios(model: nn.Module, small: nn.Module, example_input: Any, exclude: Sequence[str] = (),
               graph: Any = None) -> dict[str, float]:
    """The share of each channel group of ``model`` that ``small`` (a channel-pruned copy of it) lacks,
    as exact fractions ``k / n`` (groups ``small`` left whole are left out): what
    ``PerLayer(cut_ratios(...))`` or :func:`ratio_rounds` needs to make the same cut again.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    >>> small, _ = prune_groups(model, torch.zeros(1, 3, 8, 8), {"0:out": 0.25})
    >>> cut_ratios(model, small, torch.zeros(1, 3, 8, 8))
    {'0:out': 0.25}
    """
    from prunekit.structure import DependencyGraph

    before = _groups(graph if graph is not None else DependencyGraph.build(model, example_input), None, exclude)
    after = _groups(DependencyGraph.build(small, example_input), None, exclude)
    out = {}
    for label, units in before.items():
        if label not in after:
            raise ConfigError(f"channel group {label!r} of the model has no prunable counterpart in the smaller "
                              "model: was it cut from this model, with the same exclude?")
        if len(after[label]) < len(units):
            out[label] = (len(units) - len(after[label])) / len(units)
    return out


def ratio_rounds(model: nn.Module, example_input: Any, ratios: Mapping[str, float], rounds: int,
                 importance: Any = None, exclude: Sequence[str] = (), graph: Any = None) -> list[dict[str, float]]:
    """Per-group ratios for ``rounds`` successive cuts that together remove exactly what
    ``exact_ratios(model, example_input, ratios)`` removes at once: a group of ``n`` channels that keeps
    ``m`` in the end keeps ``round(n * (m / n) ** (k / rounds))`` after round ``k`` (the same fraction
    of what is left each round), and round ``k``'s ratio is the exact fraction of the channels the
    group has after round ``k - 1``. Each round's dict goes to ``PerLayer`` on that round's model.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1))
    >>> ratio_rounds(model, torch.randn(1, 3, 8, 8), {"0:out": 0.75}, rounds=2)   # 16 -> 8 -> 4
    [{'0:out': 0.5}, {'0:out': 0.5}]
    """
    from prunekit.structure import DependencyGraph

    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an int >= 1, got {rounds!r}")
    graph = graph if graph is not None else DependencyGraph.build(model, example_input)
    groups = _groups(graph, importance, exclude)
    removed = _removed(graph, groups, ratios)
    out: list[dict[str, float]] = [{} for _ in range(rounds)]
    for label, units in removed.items():
        n = len(groups[label])
        keep = n - len(units)
        left = n
        for k in range(1, rounds + 1):
            target = keep if k == rounds else max(keep, min(left, int(round(n * (keep / n) ** (k / rounds)))))
            out[k - 1][label] = (left - target) / left
            left = target
    return out


def _group_macs(graph: Any, example_input: Any) -> dict[str, int]:
    from prunekit.metrics import macs_by_layer

    macs = macs_by_layer(graph.model, example_input)
    return {group_label(g): int(sum(macs.get(m, 0) for m in {a.module for a in g.axes})) for g in graph.groups}


def scan_channels(model: nn.Module, example_input: Any, evaluate: Callable[[nn.Module], float],
                  ratios: Sequence[float] = DEFAULT_RATIOS, importance: Any = None, exclude: Sequence[str] = (),
                  progress: Callable[[str, float, float], None] | None = None, workers: int = 1,
                  pool: str = "process", state_path: str | os.PathLike[str] | None = None) -> Any:
    """Each prunable channel group removed alone at each ratio: ``evaluate`` of the smaller model.
    ``sizes`` are the MACs of each group's layers (what :func:`ratios_for_macs` weighs by).

    With a :class:`~prunekit.probe.Probe` as ``evaluate`` the unchanged prefix runs once per
    batch for all ratios, and ``workers`` / ``pool`` score the groups in parallel
    (:mod:`prunekit.parallel`; the importance, if given, must pickle). ``state_path`` makes the
    scan resumable, as :func:`prunekit.sensitivity.scan`'s."""
    from prunekit.probe import Probe
    from prunekit.sensitivity import ScanRows, SensitivityCurves, _describe
    from prunekit.structure import DependencyGraph

    ratios = [float(r) for r in ratios]
    if not ratios or ratios != sorted(ratios) or not all(0.0 < r < 1.0 for r in ratios):
        raise ConfigError(f"ratios must be an increasing list in (0, 1), got {ratios}")
    parallel = workers != 1 or pool != "process"
    if parallel and not isinstance(evaluate, Probe):
        raise ConfigError("workers > 1 (or a pool other than 'process') needs a prunekit.probe.Probe "
                          "as evaluate: a function cannot be sent to another process")
    was = model.training
    model.eval()
    try:
        graph = DependencyGraph.build(model, example_input)
        groups = _groups(graph, importance, exclude)
        if not groups:
            raise ConfigError("no prunable channel group to scan (everything pinned or excluded)")
        sizes = _group_macs(graph, example_input)
        key = {"kind": "channel groups", "ratios": ratios, "targets": list(groups),
               "importance": _describe(importance), "exclude": list(exclude)}
        rows = ScanRows(state_path, key, model, evaluate)
        if rows.baseline is None:
            rows.set_baseline(float(evaluate(model)))
        todo = [g for g in groups if g not in rows.done]

        def finish(label: str, row: list[float]) -> None:
            rows.finish(label, row, f"group {label!r}", progress)

        rows.replay(list(groups), progress)
        if parallel and todo:
            from prunekit.masks import clean_copy
            from prunekit.parallel import make_pool

            copy = clean_copy(model)
            tasks = [(copy, example_input, evaluate.batches, evaluate.cache_mb, evaluate.recalibrate, label, ratios,
                      importance, tuple(exclude)) for label in todo]
            with make_pool(pool, workers) as p:
                for label, row in zip(todo, p.map(_group_task, tasks)):
                    finish(label, row)
        for label in todo if not parallel else ():
            if isinstance(evaluate, Probe):  # all ratios at once, the unchanged prefix once per batch
                row = _group_row(evaluate, model, example_input, graph, label, ratios, importance, exclude)
            else:
                row = []
                for r in ratios:
                    small, _ = prune_groups(model, example_input, {label: r}, importance, exclude, graph)
                    row.append(float(evaluate(small.eval())))
            finish(label, row)
    finally:
        model.train(was)
    return SensitivityCurves(ratios, rows.baseline, {g: rows.done[g] for g in groups}, {g: sizes[g] for g in groups},
                             {"kind": "channel groups", "importance": repr(importance)})


def _group_row(probe: Any, model: nn.Module, example_input: Any, graph: Any, label: str, ratios: Sequence[float],
               importance: Any, exclude: Sequence[str]) -> list[float]:
    smalls = [prune_groups(model, example_input, {label: r}, importance, exclude, graph)[0].eval() for r in ratios]
    group = next(g for g in graph.groups if group_label(g) == label)
    changed = sorted({a.module for a in group.axes})
    return probe.sweep(model, changed, [functools.partial(contextlib.nullcontext, m) for m in smalls])


def _group_task(task: tuple) -> list[float]:
    """One group's row in a worker: ``(model, example, batches, cache_mb, recalibrate, label, ratios, importance,
    exclude)``."""
    from prunekit.probe import Probe
    from prunekit.structure import DependencyGraph

    model, example, batches, cache_mb, recalibrate, label, ratios, importance, exclude = task
    model.eval()
    graph = DependencyGraph.build(model, example)
    return _group_row(Probe(model, batches, cache_mb, recalibrate), model, example, graph, label, ratios, importance,
                      exclude)


def ratios_for_macs(curves: Any, model: nn.Module, example_input: Any, macs_ratio: float, importance: Any = None,
                    exclude: Sequence[str] = (), iterations: int = 14) -> tuple[dict[str, float], nn.Module, Any, float]:
    """Per-group ratios from ``curves`` whose pruned model keeps at most ``macs_ratio`` of the MACs.

    Bisects the overall target handed to :func:`prunekit.sensitivity.ratios_for` (which weighs
    groups by their MACs, a linear model) until the *measured* MACs of the pruned model meet
    ``macs_ratio``. Returns ``(ratios, small model, plan, measured MACs ratio)``."""
    from prunekit.metrics import count_macs

    dense = count_macs(model, example_input)
    return ratios_for_cost(curves, model, example_input, lambda small: count_macs(small, example_input) / dense,
                           macs_ratio, "MACs", importance, exclude, iterations)


def ratios_for_latency(curves: Any, model: nn.Module, example_input: Any, latency_ratio: float,
                       importance: Any = None, exclude: Sequence[str] = (), repeats: int = 30,
                       threads: int | None = None, iterations: int = 12) -> tuple[dict[str, float], nn.Module, Any, float]:
    """Per-group ratios from ``curves`` whose pruned model runs in at most ``latency_ratio`` of the
    dense model's *measured* latency on ``example_input`` (each candidate timed interleaved with the
    dense model, ``repeats`` rounds, medians: :func:`prunekit.metrics.compare_latency`). The same
    bisection as :func:`ratios_for_macs`; the last element is the measured latency ratio."""
    from prunekit.metrics import compare_latency

    def cost(small: nn.Module) -> float:
        r = compare_latency({"dense": model, "small": small}, example_input, warmup=3, repeats=repeats,
                            threads=threads)
        return r["small"].median_s / r["dense"].median_s

    return ratios_for_cost(curves, model, example_input, cost, latency_ratio, "latency", importance, exclude,
                           iterations)


def ratios_for_cost(curves: Any, model: nn.Module, example_input: Any, cost: Callable[[nn.Module], float],
                    budget: float, what: str = "cost", importance: Any = None, exclude: Sequence[str] = (),
                    iterations: int = 14) -> tuple[dict[str, float], nn.Module, Any, float]:
    """Per-group ratios from ``curves`` whose pruned model has ``cost(small) <= budget`` (``cost``:
    the fraction of the dense model's cost the small model keeps, measured on each candidate).

    The curves weigh groups by their ``sizes``; the overall target handed to
    :func:`prunekit.sensitivity.ratios_for` is bisected until the measured cost meets ``budget``.
    Returns ``(ratios, small model, plan, measured cost)``."""
    from prunekit.sensitivity import _ratios_at, ratios_for
    from prunekit.structure import DependencyGraph

    if not 0.0 < budget < 1.0:
        raise ConfigError(f"the {what} ratio (the fraction kept) must be in (0, 1), got {budget!r}")
    graph = DependencyGraph.build(model, example_input)
    top = curves.overall_sparsity(_ratios_at(curves, math.inf))

    def attempt(t: float) -> tuple[dict[str, float], nn.Module, Any, float]:
        ratios = ratios_for(curves, t).ratios if t > 0 else {}
        small, plan = prune_groups(model, example_input, ratios, importance, exclude, graph)
        return ratios, small, plan, float(cost(small))

    best = attempt(top)
    if best[3] > budget + 1e-9:
        raise ConfigError(f"pruning every group at its largest scanned ratio keeps {best[3]:.3f} of the {what}, "
                          f"above {budget}; scan larger ratios or exclude fewer layers")
    lo, hi = 0.0, top
    for _ in range(iterations):
        mid = (lo + hi) / 2
        trial = attempt(mid)
        if trial[3] <= budget + 1e-9:
            hi, best = mid, trial
        else:
            lo = mid
    return best

"""NetAdapt (Yang et al. 2018): shrink a model step by step until it meets a *measured* latency target.

Each iteration asks for a latency cut of ``step`` (a fraction of the dense latency, decaying). For
every prunable channel group it removes just enough of the lowest-scored channels that the
latency the :class:`LatencyTable` predicts drops by that much, fine-tunes the candidate briefly
(``short_term``, any callable) and scores it (``evaluate``); the best candidate becomes the model of
the next iteration. The loop stops when the model's latency, *measured* against the dense model in
the same interleaved run, meets the target. Every iteration is one step of a single
:class:`~prunekit.structure.PruningPlan`, so the result is the original architecture plus one plan.

The latency table holds the measured time of every conv / linear layer at each (in, out) channel
count met, measured on this machine the first time it is needed (a layer alone, on an input of the
shape it sees in the model) and kept for the rest of the search (and in the state file).

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
>>> x = torch.randn(1, 3, 16, 16)
>>> result = netadapt(model, x, lambda m: 0.0, latency_ratio=0.7, step=0.3, repeats=5, threads=1)
>>> len(result.iterations) >= 1 and len(result.plan.steps) == len(result.iterations)
True
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError

__all__ = ["IterationRecord", "LatencyTable", "NetAdaptResult", "netadapt"]


@dataclass
class LatencyTable:
    """Measured seconds of each layer at each ``(in, out)`` channel count: ``times[layer]["cin,cout"]``.

    ``shapes`` records what a layer is (kind, kernel, stride, padding, groups, input size), so a
    missing entry is measured on demand (:meth:`lookup`). Saved as JSON (``to_json``)."""

    shapes: dict[str, dict[str, Any]] = field(default_factory=dict)
    times: dict[str, dict[str, float]] = field(default_factory=dict)
    batch: int = 1
    repeats: int = 10
    threads: int | None = None
    measured: int = 0  # entries measured by this object (the rest came from a saved table)

    @classmethod
    def for_model(cls, model: nn.Module, example_input: torch.Tensor, repeats: int = 10,
                  threads: int | None = None) -> LatencyTable:
        """An empty table knowing the shapes of ``model``'s conv / linear layers (one forward pass)."""
        shapes: dict[str, dict[str, Any]] = {}
        hooks = []
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                def hook(mod: nn.Module, inputs: tuple, _out: Any, name: str = name) -> None:
                    x = inputs[0]
                    if isinstance(mod, nn.Conv2d):
                        shapes[name] = {"kind": "conv", "k": list(mod.kernel_size), "stride": list(mod.stride),
                                        "padding": list(mod.padding), "dilation": list(mod.dilation),
                                        "depthwise": mod.groups > 1 and mod.groups == mod.in_channels,
                                        "hw": list(x.shape[-2:]), "bias": mod.bias is not None}
                    else:
                        shapes[name] = {"kind": "linear", "lead": list(x.shape[1:-1]), "bias": mod.bias is not None}
                hooks.append(m.register_forward_hook(hook))
        was = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(example_input)
        finally:
            model.train(was)
            for h in hooks:
                h.remove()
        return cls(shapes, {}, int(example_input.shape[0]), repeats, threads)

    def lookup(self, layer: str, cin: int, cout: int) -> float:
        """Seconds of ``layer`` with ``cin`` inputs and ``cout`` outputs (measured now if missing)."""
        key = f"{cin},{cout}"
        row = self.times.setdefault(layer, {})
        if key not in row:
            row[key] = self._measure(self.shapes[layer], cin, cout)
            self.measured += 1
        return row[key]

    def _measure(self, shape: dict[str, Any], cin: int, cout: int) -> float:
        if cin < 1 or cout < 1:
            return 0.0
        if shape["kind"] == "conv":
            groups = cin if shape["depthwise"] else 1
            if shape["depthwise"]:
                cout = cin
            layer: nn.Module = nn.Conv2d(cin, cout, tuple(shape["k"]), tuple(shape["stride"]), tuple(shape["padding"]),
                                         tuple(shape["dilation"]), groups=groups, bias=shape["bias"])
            x = torch.randn(self.batch, cin, *shape["hw"])
        else:
            layer = nn.Linear(cin, cout, bias=shape["bias"])
            x = torch.randn(self.batch, *shape["lead"], cin)
        return _median_time(layer.eval(), x, self.repeats, self.threads)

    def estimate(self, sizes: dict[str, tuple[int, int]]) -> float:
        """Sum of the table's times for layers at ``{layer: (cin, cout)}``."""
        return sum(self.lookup(name, cin, cout) for name, (cin, cout) in sizes.items() if name in self.shapes)

    def to_json(self) -> str:
        return json.dumps({"format": "prunekit.latency-table", "version": 1, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LatencyTable:
        data = json.loads(text)
        if data.pop("format", None) != "prunekit.latency-table":
            raise ConfigError("not a prunekit latency table (no format 'prunekit.latency-table')")
        data.pop("version", None)
        data["measured"] = 0
        return cls(**data)


def _median_time(layer: nn.Module, x: torch.Tensor, repeats: int, threads: int | None) -> float:
    """Median seconds of ``layer(x)`` after two warm-up calls (no garbage collection per entry: a table
    measures hundreds of entries, and ``gc.collect`` on a large heap would dominate)."""
    import statistics

    from prunekit.metrics.latency import num_threads

    with torch.no_grad(), num_threads(threads):
        for _ in range(2):
            layer(x)
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class IterationRecord:
    """One NetAdapt iteration: the chosen group, channels removed, latency and accuracy."""

    iteration: int
    group: str  # the module axes of the chosen channel group (first few)
    removed: int  # channels removed from it
    estimated_s: float  # latency table estimate of the new model (sum of layers)
    measured_s: float  # the new model's measured latency
    dense_s: float  # the dense model's, measured in the same run
    accuracy: float  # after the short-term fine-tune
    candidates: list[dict[str, Any]] = field(default_factory=list)  # group, removed, accuracy
    seconds: float = 0.0

    @property
    def latency_ratio(self) -> float:
        return self.measured_s / self.dense_s if self.dense_s > 0 else float("nan")


@dataclass
class NetAdaptResult:
    """The final model, its plan (one step per iteration) and every iteration's record."""

    model: nn.Module
    plan: Any
    iterations: list[IterationRecord]
    table: LatencyTable
    target_ratio: float
    dense_s: float

    @property
    def latency_ratio(self) -> float:
        """Measured latency / dense latency after the last iteration (1.0 when nothing was pruned)."""
        return self.iterations[-1].latency_ratio if self.iterations else 1.0

    @property
    def reached(self) -> bool:
        """Whether the measured latency met the target (False: every group hit its minimum first)."""
        return self.latency_ratio <= self.target_ratio

    def to_json(self) -> str:
        return json.dumps({"target_ratio": self.target_ratio, "reached": self.reached, "dense_s": self.dense_s,
                           "iterations": [{**asdict(r), "latency_ratio": r.latency_ratio} for r in self.iterations]},
                          indent=1)


def _sizes(graph: Any, removed: Sequence[int], shapes: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(cin, cout) of every timed layer of ``graph.model`` after removing ``removed`` units."""
    from prunekit.structure.groups import AxisRef

    counts = graph.removed_counts(removed) if removed else {}
    out = {}
    for name in shapes:
        m = graph.model.get_submodule(name)
        cin = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
        cout = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        out[name] = (cin - counts.get(AxisRef(name, "in"), 0), cout - counts.get(AxisRef(name, "out"), 0))
    return out


def _measured(dense: nn.Module, model: nn.Module, x: torch.Tensor, repeats: int,
              threads: int | None) -> tuple[float, float]:
    from prunekit.metrics import compare_latency

    lat = compare_latency({"dense": dense, "model": model}, x, warmup=3, repeats=repeats, threads=threads)
    return lat["dense"].median_s, lat["model"].median_s


def netadapt(
    model: nn.Module,
    example_input: torch.Tensor,
    evaluate: Callable[[nn.Module], float],
    *,
    latency_ratio: float = 0.5,
    step: float = 0.05,
    step_decay: float = 0.98,
    short_term: Callable[[nn.Module], None] | None = None,
    importance: Any = None,
    exclude: Sequence[str] = (),
    min_keep: float = 0.1,
    repeats: int = 20,
    threads: int | None = None,
    table: LatencyTable | None = None,
    max_iterations: int = 100,
    state_path: str | os.PathLike[str] | None = None,
    progress: Callable[[IterationRecord], None] | None = None,
) -> NetAdaptResult:
    """Prune channels of ``model`` until its measured latency is ``latency_ratio`` x the dense one.

    ``evaluate(model) -> float``: higher is better (e.g. top-1 on held-out training images).
    ``step``: the latency cut asked of each iteration, a fraction of the dense model's latency as the
    table estimates it (the sum of its layers), multiplied by ``step_decay`` after each. ``short_term(model)``: fine-tunes a candidate in place (e.g. a
    few hundred steps; default none). ``importance``: which channels of a group go first (default
    L1 magnitude, the paper's choice). ``min_keep``: every group keeps this fraction of its channels.
    ``state_path``: after every iteration the plan, the weights, the records and the latency table
    are written there (atomically); a later call with the same path continues from them. ``model``
    is not modified; the long-term fine-tune is the caller's (the result's model is ready for it).
    """
    from prunekit.masks import clean_copy
    from prunekit.structure import DependencyGraph
    from prunekit.structure.api import make_plan, match_modules
    from prunekit.structure.ranking import unit_scores

    if not 0.0 < latency_ratio < 1.0:
        raise ConfigError(f"latency_ratio must be in (0, 1) (0.5 = half the dense latency), got {latency_ratio!r}")
    if not 0.0 < step < 1.0 or not 0.0 < step_decay <= 1.0:
        raise ConfigError(f"step must be in (0, 1) and step_decay in (0, 1], got {step!r}, {step_decay!r}")
    if not 0.0 <= min_keep < 1.0:
        raise ConfigError(f"min_keep must be in [0, 1), got {min_keep!r}")
    dense = clean_copy(model).eval()
    table = table or LatencyTable.for_model(dense, example_input, repeats=max(3, repeats // 2), threads=threads)
    current, plan, records = clean_copy(model), None, []
    if state_path is not None and Path(state_path).is_file():
        current, plan, records, table = _resume(model, state_path, table)
    dense_s = _measured(dense, dense, example_input, repeats, threads)[0]
    sizes0 = _sizes(DependencyGraph.build(dense, example_input), [], table.shapes)
    floor = {n: max(1, math.ceil(min_keep * c)) for n, (_, c) in sizes0.items()}
    cut = step * table.estimate(sizes0) * step_decay ** len(records)  # in the table's own units
    min_cut = cut / 64
    measured_s = records[-1].measured_s if records else dense_s
    dense_s_run = records[-1].dense_s if records else dense_s
    while measured_s > latency_ratio * dense_s_run and len(records) < max_iterations:
        t0 = time.perf_counter()
        current.eval()
        graph = DependencyGraph.build(current, example_input)
        names = sorted({a.module for a in graph.axes})
        excl = match_modules(list(exclude), names, "exclude") if exclude else []
        scores = unit_scores(graph, importance, exclude=excl)
        base_sizes = _sizes(graph, [], table.shapes)
        base_est = table.estimate(base_sizes)
        candidates = []
        for g in graph.groups:
            units = sorted((u for u in g.units if not math.isnan(scores[u])), key=lambda u: scores[u])
            if not units:
                continue
            limit = _removable(graph, units, base_sizes, floor)
            if limit == 0:
                continue
            k = _smallest_cut(graph, units, limit, table, base_est, cut)
            if k is None:
                continue
            removed = units[:k]
            step_plan = make_plan(graph, removed, {"netadapt_iteration": len(records) + 1})
            cand = step_plan.apply(clean_copy(current))
            if short_term is not None:
                short_term(cand)
            acc = float(evaluate(cand))
            label = ", ".join(str(a) for a in g.axes[:3]) + (" ..." if len(g.axes) > 3 else "")
            candidates.append((acc, -k, label, k, step_plan, cand, table.estimate(_sizes(graph, removed, table.shapes))))
        if not candidates:
            if cut > min_cut:  # no group can cut that much any more: ask for less
                cut /= 2
                continue
            break  # every group is at its floor, or none can lower the estimate at all
        candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
        acc, _, label, k, step_plan, cand, est = candidates[0]
        plan = step_plan if plan is None else plan.then(step_plan)
        current = cand
        dense_s_run, measured_s = _measured(dense, current.eval(), example_input, repeats, threads)
        rec = IterationRecord(len(records) + 1, label, k, est, measured_s, dense_s_run, acc,
                              [{"group": c[2], "removed": c[3], "accuracy": c[0]} for c in candidates],
                              time.perf_counter() - t0)
        records.append(rec)
        cut *= step_decay
        if state_path is not None:
            _save_state(state_path, current, plan, records, table)
        if progress is not None:
            progress(rec)
    return NetAdaptResult(current, plan, records, table, latency_ratio, dense_s)


def _removable(graph: Any, units: list[int], base: dict[str, tuple[int, int]], floor: dict[str, int]) -> int:
    """How many of ``units`` (a group's, lowest score first) can go before a layer hits its floor."""
    lo, hi = 0, len(units)
    while lo < hi:  # largest k whose removal keeps every out-axis at or above its floor
        mid = (lo + hi + 1) // 2
        sizes = _sizes(graph, units[:mid], dict.fromkeys(base))
        if all(sizes[n][1] >= floor.get(n, 1) for n in sizes if sizes[n][1] != base[n][1]):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _smallest_cut(graph: Any, units: list[int], limit: int, table: LatencyTable, base_est: float,
                  cut: float) -> int | None:
    """The fewest units whose removal lowers the table's estimate by ``cut`` (None if even ``limit`` cannot)."""
    def saving(k: int) -> float:
        return base_est - table.estimate(_sizes(graph, units[:k], table.shapes))

    if saving(limit) < cut:
        return None
    lo, hi = 1, limit
    while lo < hi:  # latency falls (noisily) with channels: bisect on the measured table
        mid = (lo + hi) // 2
        if saving(mid) >= cut:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _save_state(path: str | os.PathLike[str], model: nn.Module, plan: Any, records: list[IterationRecord],
                table: LatencyTable) -> None:
    from prunekit.io import atomic_torch_save

    atomic_torch_save({"format": "prunekit.netadapt-state", "plan": plan.to_json(), "state_dict": model.state_dict(),
                       "records": json.dumps([asdict(r) for r in records]), "table": table.to_json()}, path)


def _resume(model: nn.Module, path: str | os.PathLike[str], table: LatencyTable) -> tuple[Any, Any, list, Any]:
    from prunekit.errors import CheckpointError
    from prunekit.masks import clean_copy
    from prunekit.structure import PruningPlan

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets one named error
        raise CheckpointError(f"cannot read the NetAdapt state {path}: {exc}; delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != "prunekit.netadapt-state":
        raise CheckpointError(f"{path} is not a NetAdapt state file; delete it or choose another state_path")
    plan = PruningPlan.from_json(state["plan"])
    current = plan.apply(clean_copy(model))
    current.load_state_dict(state["state_dict"])
    records = [IterationRecord(**r) for r in json.loads(state["records"])]
    saved = LatencyTable.from_json(state["table"])
    saved.shapes = table.shapes or saved.shapes
    return current, plan, records, saved

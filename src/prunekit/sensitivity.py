"""Sensitivity analysis: prune one layer at a time, measure, and turn the curves into per-layer ratios.

:func:`scan` prunes each target alone at each ratio (the others dense) and records
``evaluate(model)`` (e.g. top-1 on a validation subset); the weights are restored bit-exactly after
every probe (:meth:`prunekit.masks.Masks.applied`). :func:`ratios_for` then finds, by bisection
over the tolerated drop ``T``, the largest per-layer ratios whose drops stay within ``T`` while the
overall sparsity reaches the target -- the method of the lecture's VGG-11 figure, as in Distiller.
The result is a :class:`~prunekit.allocation.PerLayer` any pruning call takes.

>>> import torch
>>> from torch import nn
>>> from prunekit import Element, Magnitude, select
>>> torch.manual_seed(0) and None
>>> model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
>>> x = torch.randn(64, 8); ref = model(x).detach()
>>> @torch.no_grad()
... def fidelity(m):  # higher is better: negative output error against the dense model
...     return -float((m(x) - ref).pow(2).mean())
>>> curves = scan(model, select(model), Magnitude(), Element(), fidelity, ratios=(0.25, 0.5, 0.75))
>>> curves.names, len(curves.values["0"])
(['0', '2'], 3)
>>> alloc = ratios_for(curves, 0.5)
>>> sorted(alloc.ratios), abs(curves.overall_sparsity(alloc.ratios) - 0.5) < 0.2
(['0', '2'], True)
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from prunekit.allocation import PerLayer, Uniform
from prunekit.errors import ConfigError
from prunekit.granularity import Granularity, check_sparsity
from prunekit.targets import Target

__all__ = ["ScanRows", "SensitivityCurves", "ratios_for", "scan"]

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class SensitivityCurves:
    """``values[name][i]``: the metric with only ``name`` pruned at ``ratios[i]``; ``baseline``: unpruned."""

    ratios: list[float]
    baseline: float
    values: dict[str, list[float]]
    sizes: dict[str, int]  # prunable elements per target (weights the overall sparsity)
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.values)

    def drop(self, name: str) -> list[float]:
        """``baseline - value`` at each ratio (how much pruning that layer alone costs)."""
        return [self.baseline - v for v in self.values[name]]

    def overall_sparsity(self, ratios: dict[str, float]) -> float:
        total = sum(self.sizes.values())
        return sum(self.sizes[n] * r for n, r in ratios.items()) / max(total, 1)

    def to_json(self) -> str:
        return json.dumps({"format": "prunekit.sensitivity", "version": 1, "ratios": self.ratios,
                           "baseline": self.baseline, "values": self.values, "sizes": self.sizes,
                           "meta": self.meta}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SensitivityCurves:
        try:
            d = json.loads(text)
            if d.get("format") != "prunekit.sensitivity":
                raise ValueError("not a prunekit sensitivity file")
            return cls([float(r) for r in d["ratios"]], float(d["baseline"]),
                       {str(k): [float(v) for v in vs] for k, vs in d["values"].items()},
                       {str(k): int(v) for k, v in d["sizes"].items()}, dict(d.get("meta", {})))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"cannot read sensitivity curves: {exc}") from None

    def to_csv(self) -> str:
        """One row per layer: name, size, then the metric at each ratio."""
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["layer", "size", *[f"{r:g}" for r in self.ratios]])
        w.writerow(["(dense)", sum(self.sizes.values()), *[f"{self.baseline:.6g}"] * len(self.ratios)])
        for n, vs in self.values.items():
            w.writerow([n, self.sizes[n], *[f"{v:.6g}" for v in vs]])
        return out.getvalue()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (.json) and its ``.csv`` twin, atomically."""
        from prunekit.io import atomic_write_text

        p = Path(path)
        atomic_write_text(p.with_suffix(".csv"), self.to_csv())
        return atomic_write_text(p.with_suffix(".json"), self.to_json())

    def plot(self, path: str | os.PathLike[str], ylabel: str = "metric") -> Path:
        """A PNG with one line per layer (needs matplotlib: ``pip install matplotlib``)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ConfigError("plotting sensitivity curves needs matplotlib: pip install matplotlib") from exc
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        for n, vs in self.values.items():
            ax.plot([0.0, *self.ratios], [self.baseline, *vs], marker="o", markersize=3, label=n)
        ax.set_xlabel("pruning ratio of that layer alone")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        from prunekit.io import atomic_write

        data = buf.getvalue()
        return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def scan(
    model: nn.Module,
    targets: Sequence[Target],
    importance,
    granularity: Granularity,
    evaluate: Callable[[nn.Module], float],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    progress: Callable[[str, float, float], None] | None = None,
    workers: int = 1,
    pool: str = "process",
    state_path: str | os.PathLike[str] | None = None,
) -> SensitivityCurves:
    """Prune each target alone at each ratio (uniform allocation, the given granularity) and record
    ``evaluate(model)`` (higher = better). The model is unchanged afterwards (bit-exact).

    With a :class:`prunekit.probe.Probe` as ``evaluate``, the part of the network upstream
    of each layer runs once per batch for all ratios (the scores are the same; ``progress`` is
    then called per layer, after its ratios ran). ``workers > 1`` (a probe only) scores the layers in
    that many worker processes, or on Ray with ``pool="ray"`` (:mod:`prunekit.parallel`).
    ``state_path``: every finished layer is written there (JSON, atomically); a scan started again
    with the same file continues after the last finished layer (the file must come from the same
    model, data, targets, ratios and criterion, else :class:`ConfigError`). It stays when done."""
    from prunekit.pruning import check_components, compute_scores

    check_components(importance, granularity, Uniform(0.5))
    ratios = [check_sparsity(r, "sensitivity ratio") for r in ratios]
    if not ratios or ratios != sorted(ratios):
        raise ConfigError(f"sensitivity ratios must be a non-empty increasing list, got {ratios}")
    targets = list(targets)
    if not targets:
        raise ConfigError("sensitivity scan got no targets")
    for t in targets:
        granularity.check(t)
    from prunekit.masks import Masks
    from prunekit.probe import Probe

    parallel = workers != 1 or pool != "process"
    if parallel and not isinstance(evaluate, Probe):
        raise ConfigError("workers > 1 (or a pool other than 'process') needs a prunekit.probe.Probe as "
                          "evaluate: a function cannot be sent to another process")
    key = {"kind": "masks", "ratios": ratios, "targets": [t.name for t in targets],
           "importance": _describe(importance), "granularity": _describe(granularity)}
    rows = ScanRows(state_path, key, model, evaluate)
    if rows.baseline is None:
        rows.set_baseline(float(evaluate(model)))
    todo = [t for t in targets if t.name not in rows.done]
    keeps = {}
    if todo:
        scores = compute_scores(todo, importance)
        keeps = {t.name: [Uniform(r).allocate([t], {t.name: scores[t.name]}, granularity)[t.name] for r in ratios]
                 for t in todo}

    def finish(name: str, row: list[float]) -> None:
        rows.finish(name, row, f"layer {name!r}", progress)

    rows.replay([t.name for t in targets], progress)
    if parallel and todo:
        from prunekit.masks import clean_copy
        from prunekit.parallel import make_pool

        copy = clean_copy(model)
        tasks = [(copy, evaluate.batches, evaluate.cache_mb, evaluate.recalibrate, t.name, t.param_name,
                      keeps[t.name]) for t in todo]
        with make_pool(pool, workers) as p:
            for t, row in zip(todo, p.map(_layer_task, tasks)):
                finish(t.name, row)
    for t in todo if not parallel else ():
        if isinstance(evaluate, Probe):  # every ratio at once, the unchanged prefix computed once per batch
            row = _layer_row(evaluate, model, t.name, t.param_name, keeps[t.name])
        else:
            row = []
            for keep in keeps[t.name]:
                with Masks({t.name: keep}, {t.name: t.param_name}).applied(model):
                    row.append(float(evaluate(model)))
        finish(t.name, row)
    return SensitivityCurves(ratios, rows.baseline, {t.name: rows.done[t.name] for t in targets},
                             {t.name: t.weight.numel() for t in targets},
                             {"importance": repr(importance), "granularity": repr(granularity)})


def _describe(obj: object) -> str:
    """``repr`` without memory addresses (stable between runs, for a scan state's key)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def _fingerprint(obj: object) -> str:
    """A short hash of every tensor in ``obj`` (a module's state, batches: nested lists / dicts)."""
    import hashlib

    import torch

    h = hashlib.sha256()

    def walk(o: object) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"{t.dtype}{tuple(o.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(o, nn.Module):
            walk(o.state_dict())
        elif isinstance(o, dict):
            for k in sorted(o, key=str):
                h.update(str(k).encode())
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            for x in o:
                walk(x)
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()[:20]


class ScanRows:
    """The finished rows of a scan, and (with a ``path``) their JSON file, rewritten atomically
    after each row, so an interrupted scan continues. ``key`` says what was scanned; the file also
    records a hash of the model's weights and, for a :class:`~prunekit.probe.Probe`, of its batches.
    A file written for another scan raises :class:`ConfigError` naming the field that differs."""

    FORMAT = "prunekit.sensitivity-state"

    def __init__(self, path: str | os.PathLike[str] | None, key: dict, model: nn.Module, evaluate: object) -> None:

        self.path = None if path is None else Path(path)
        self.baseline: float | None = None
        self.done: dict[str, list[float]] = {}
        if self.path is None:
            self.key = key
            return
        self.key = {**key, "model": _fingerprint(model),
                    "data": _probe_data(evaluate)}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        where = f"the sensitivity scan state {self.path}"
        try:
            d = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {where}: {exc}; delete it to start the scan over") from None
        if not isinstance(d, dict) or d.get("format") != self.FORMAT:
            raise ConfigError(f"{where} is not a scan state file; delete it or give another state path")
        saved = d.get("key", {})
        for k, v in self.key.items():
            if saved.get(k) != v:
                raise ConfigError(f"{where} was written by another scan ({k} differs: {saved.get(k)!r} there, "
                                  f"{v!r} now); delete it to start over, or give another state path")
        try:
            self.baseline = None if d.get("baseline") is None else float(d["baseline"])
            self.done = {str(n): [float(v) for v in row] for n, row in d.get("rows", {}).items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{where} is damaged ({exc}); delete it to start the scan over") from None
        bad = [n for n, row in self.done.items() if len(row) != len(self.key["ratios"])]
        if bad:
            raise ConfigError(f"{where} is damaged (rows of the wrong length: {bad}); delete it to start over")

    def set_baseline(self, value: float) -> None:
        self.baseline = value
        self._save()

    def finish(self, name: str, row: Sequence[float], what: str,
               progress: Callable[[str, float, float], None] | None = None) -> None:
        """Record ``name``'s finished row (every value finite, else :class:`ConfigError` naming ``what``),
        then report it to ``progress``."""
        ratios = self.key["ratios"]
        for r, v in zip(ratios, row):
            if not math.isfinite(v):
                raise ConfigError(f"evaluate returned {v} with {what} pruned at {r}")
        self.done[name] = [float(v) for v in row]
        self._save()
        if progress is not None:
            for r, v in zip(ratios, self.done[name]):
                progress(name, r, v)

    def replay(self, names: Sequence[str], progress: Callable[[str, float, float], None] | None) -> None:
        """Report the rows finished before an interruption to ``progress``."""
        if progress is not None:
            for name in names:
                for r, v in zip(self.key["ratios"], self.done.get(name, ())):
                    progress(name, r, v)

    def _save(self) -> None:
        if self.path is None:
            return
        from prunekit.io import atomic_write_text

        atomic_write_text(self.path, json.dumps({"format": self.FORMAT, "version": 1, "key": self.key,
                                                 "baseline": self.baseline, "rows": self.done}, indent=1))


def _probe_data(evaluate: object) -> str | None:
    """A hash of a probe's batches (and of its recalibration batches, when it has them)."""
    from prunekit.probe import Probe

    if not isinstance(evaluate, Probe):
        return None
    if evaluate.recalibrate is None:
        return _fingerprint(evaluate.batches)
    return _fingerprint([evaluate.batches, "recalibrate", evaluate.recalibrate])


def _layer_row(probe, model: nn.Module, name: str, param_name: str, keeps: list) -> list[float]:
    from prunekit.masks import Masks

    return probe.sweep(model, [name], [functools.partial(Masks({name: k}, {name: param_name}).applied, model)
                                       for k in keeps])


def _layer_task(task: tuple) -> list[float]:
    """One layer's row in a worker: ``(model, batches, cache_mb, recalibrate, name, param_name, keeps)``.

    The probe masks the layer's weight in place, so it works on a private copy: the tensors a worker
    receives may sit in shared memory (torch's multiprocessing pickler moves them there), where every
    worker scanning at the same time would see each other's masked layers."""
    from prunekit.masks import clean_copy
    from prunekit.probe import Probe

    shared, batches, cache_mb, recalibrate, name, param_name, keeps = task
    model = clean_copy(shared)
    return _layer_row(Probe(model, batches, cache_mb, recalibrate), model, name, param_name, keeps)


def _ratios_at(curves: SensitivityCurves, tolerance: float) -> dict[str, float]:
    """Each layer's largest ratio whose drop is at most ``tolerance`` (0 when even the first is worse)."""
    out = {}
    for n in curves.names:
        best = 0.0
        for r, d in zip(curves.ratios, curves.drop(n)):
            if d <= tolerance:
                best = r
            else:
                break  # curves are read left to right: the first ratio over the tolerance stops the layer
        out[n] = best
    return out


def ratios_for(curves: SensitivityCurves, target_sparsity: float, iterations: int = 50) -> PerLayer:
    """The per-layer ratios reaching ``target_sparsity`` overall with the smallest tolerated drop ``T``
    (bisection over ``T``), then trimmed: while the target still holds, the layer whose last step cost
    the most steps back. Raises :class:`ConfigError` when even the scanned maximum falls short."""
    target = check_sparsity(target_sparsity, "target sparsity")
    if curves.overall_sparsity(_ratios_at(curves, math.inf)) + 1e-12 < target:
        most = curves.overall_sparsity(_ratios_at(curves, math.inf))
        raise ConfigError(
            f"the scanned ratios reach at most {most:.3f} overall sparsity, below the target {target}; "
            "scan larger ratios"
        )
    drops = [d for n in curves.names for d in curves.drop(n)]
    lo, hi = min(0.0, min(drops)) - 1e-12, max(drops)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if curves.overall_sparsity(_ratios_at(curves, mid)) >= target:
            hi = mid
        else:
            lo = mid
    return PerLayer(_trim(curves, _ratios_at(curves, hi), target))


def _trim(curves: SensitivityCurves, ratios: dict[str, float], target: float) -> dict[str, float]:
    """Step back the layers whose last step costs the most while the target still holds: the
    scanned ratios come in steps, so the bisection alone can overshoot the target."""
    ratios = dict(ratios)
    while True:
        options = []
        for n, r in ratios.items():
            if r <= 0.0:
                continue
            i = curves.ratios.index(r)
            lower = curves.ratios[i - 1] if i > 0 else 0.0
            drop_here = curves.drop(n)[i]
            drop_lower = curves.drop(n)[i - 1] if i > 0 else 0.0
            trial = {**ratios, n: lower}
            if curves.overall_sparsity(trial) >= target:
                options.append((drop_here - drop_lower, r, n, lower))  # ties: the most-pruned layer first
        if not options:
            return ratios
        _, _, n, lower = max(options)
        ratios[n] = lower

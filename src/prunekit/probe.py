"""Scoring many variants of one model on fixed batches, recomputing only what each variant changes.

A sensitivity scan prunes one layer (or channel group) at a time at ten ratios and scores each
variant on the same validation images. Everything upstream of the changed layer computes the
same values every time, so :class:`Probe` runs that *prefix* once per batch, keeps the tensors
that cross into the changed part (the *frontier*, at most ``cache_mb`` of them at a time) and runs
only the *suffix* for each variant. The model is traced with :func:`prunekit.tracing.trace` (the
dependency graph's trace); a model that does not trace, or a variant whose graph differs from the model's, is
scored by a plain full forward pass instead (``Probe.reuse`` and ``Probe.reason`` say which).
Scores are top-1 accuracy, exactly what :func:`prunekit.train.evaluate` reports on the same batches.

With ``recalibrate=`` training batches, every variant is scored with fresh BatchNorm statistics
(the "adaptive BatchNorm" evaluation of Li et al., EagleEye 2020): a pruned layer shifts every
activation after it, and scored with the dense model's running statistics a variant at a high
ratio collapses towards chance for that reason alone, so the scan measures stale statistics
rather than what the layer can lose and recover. Only the BatchNorm layers downstream of the change
are re-estimated (upstream ones see the same inputs), on the recalibration batches' cached prefix,
and the model's statistics are restored after each variant.

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
>>> batches = [(torch.randn(32, 8), torch.randint(0, 3, (32,))) for _ in range(3)]
>>> probe = Probe(model, batches)
>>> probe.reuse
True
>>> def zeroed(scale):  # a variant: layer "2" scaled for the duration of the probe
...     @contextlib.contextmanager
...     def variant():
...         saved = model[2].weight.detach().clone()
...         with torch.no_grad():
...             model[2].weight.mul_(scale)
...         try:
...             yield model
...         finally:
...             with torch.no_grad():
...                 model[2].weight.copy_(saved)
...     return variant
>>> fast = probe.sweep(model, ["2"], [zeroed(1.0), zeroed(0.0)])
>>> fast[0] == probe(model)
True
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import torch
from torch import fx, nn

from prunekit.errors import ConfigError
from prunekit.moduletools import eval_mode as _eval_mode
from prunekit.tracing import trace
from prunekit.train.bn import batchnorms, estimating, restore, snapshot

__all__ = ["Probe"]

Variant = Callable[[], contextlib.AbstractContextManager[nn.Module]]


class Probe:
    """Top-1 on fixed ``batches`` of ``(inputs, labels)``; :meth:`sweep` scores variants of ``model``
    that differ only in the modules named ``changed``, reusing the unchanged prefix.

    ``batches`` are materialised once (an iterable such as a ``DataLoader`` is read here), so every
    probe sees the same images. Calling the probe (``probe(model)``) is a plain full evaluation;
    a probe is therefore also a drop-in ``evaluate`` callable.

    ``recalibrate``: training batches (augmented as in training; ``(inputs, labels)`` pairs or bare
    input tensors, materialised once) on which every scored model's BatchNorm statistics are
    re-estimated first -- all of them by ``probe(model)``, those downstream of the change by
    :meth:`sweep`. The model's own statistics are back afterwards. ``None``: scored as it is."""

    def __init__(self, model: nn.Module, batches: Iterable[Any], cache_mb: float = 512.0,
                 recalibrate: Iterable[Any] | None = None) -> None:
        self.batches = [_pair(b) for b in batches]
        if not self.batches:
            raise ConfigError("Probe got no batches: give at least one (inputs, labels) pair")
        self.recalibrate: list[torch.Tensor] | None = None
        if recalibrate is not None:
            self.recalibrate = [_inputs(b) for b in recalibrate]
            if not self.recalibrate:
                raise ConfigError("Probe got recalibrate= with no batches: give at least one training batch, "
                                  "or recalibrate=None to score with the model's own BatchNorm statistics")
            if not batchnorms(model):
                raise ConfigError("Probe got recalibrate= but the model has no BatchNorm layer that tracks "
                                  "running statistics: there is nothing to recalibrate; drop recalibrate=")
        if not cache_mb > 0 or not math.isfinite(cache_mb):
            raise ConfigError(f"cache_mb must be a positive number of megabytes, got {cache_mb!r}")
        self.cache_mb = float(cache_mb)
        self.cache_bytes = int(cache_mb * 2**20)
        self.images = sum(int(y.numel()) for _, y in self.batches)
        self.reuse = False
        self.reason = ""
        self._graph: fx.Graph | None = None
        try:
            self._graph = _trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure falls back to full forwards
            self.reason = f"not traceable with torch.fx ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
            return
        with torch.no_grad(), _eval_mode(model):
            x = self.batches[0][0]
            if not torch.equal(_run_all(self._graph, model, x), _logits(model(x))):
                self.reason = "the traced graph does not reproduce the model's output"
                return
        self.reuse = True

    def __call__(self, model: nn.Module) -> float:
        """Top-1 of ``model`` on the batches (a full forward pass each; with ``recalibrate``, after
        re-estimating all its BatchNorm statistics, which are restored afterwards)."""
        if self.recalibrate is None:
            return self._score(model)
        layers = batchnorms(model)
        saved = snapshot(layers)
        try:
            with torch.no_grad(), _eval_mode(model), estimating(layers):
                for x in self.recalibrate:
                    model(x)
            return self._score(model)
        finally:
            restore(layers, saved)

    def _score(self, model: nn.Module) -> float:
        correct = total = 0
        with torch.no_grad(), _eval_mode(model):
            for x, y in self.batches:
                c, n = _top1(_logits(model(x)), y)
                correct, total = correct + c, total + n
        return correct / max(total, 1)

    def sweep(self, model: nn.Module, changed: Collection[str], variants: Sequence[Variant]) -> list[float]:
        """Top-1 of each variant. ``variants[i]()`` is a context manager yielding the module to score
        (``model`` itself with some weights changed, or a copy whose ``changed`` modules were
        replaced); everything not downstream of ``changed`` must compute what ``model`` computes."""
        split = _split(self._graph, set(changed)) if self.reuse and self._graph is not None else None
        if split is None:
            out = []
            for v in variants:
                with v() as m:
                    out.append(self(m))
            return out
        suffix, frontier, prefix = split
        graphs: dict[int, fx.Graph | None] = {}
        correct = [0] * len(variants)
        total = 0
        estimated: dict[int, list[dict[str, torch.Tensor]]] = {}  # variant -> its recalibrated statistics
        recal: list[dict[str, Any]] = []
        if self.recalibrate is not None:
            with torch.no_grad(), _eval_mode(model):
                recal = [{**_run_prefix(self._graph, model, x, prefix, frontier), "__input__": x}
                         for x in self.recalibrate]

        def flush(chunk: list[tuple[dict[str, Any], torch.Tensor]]) -> None:
            for i, v in enumerate(variants):
                with v() as m, torch.no_grad(), _eval_mode(m):
                    g = graphs[i] if i in graphs else _variant_graph(self._graph, m, model, graphs, i)
                    layers = [] if self.recalibrate is None else _suffix_batchnorms(m, g, suffix)
                    saved = snapshot(layers)
                    try:
                        if i in estimated:  # a later chunk: the statistics estimated for this variant
                            restore(layers, estimated[i])
                        elif layers:
                            with estimating(layers):
                                for values in recal:
                                    _run_variant(g, m, values, suffix)
                            estimated[i] = snapshot(layers)
                        for values, y in chunk:
                            correct[i] += _top1(_run_variant(g, m, values, suffix), y)[0]
                    finally:
                        restore(layers, saved)

        chunk: list[tuple[dict[str, Any], torch.Tensor]] = []
        size = 0
        with torch.no_grad(), _eval_mode(model):
            for x, y in self.batches:
                values = _run_prefix(self._graph, model, x, prefix, frontier)
                values["__input__"] = x  # for variants scored by a full forward pass
                chunk.append((values, y))
                total += int((y != _ignore()).sum())
                size += sum(v.numel() * v.element_size() for v in values.values() if isinstance(v, torch.Tensor))
                if size >= self.cache_bytes:
                    flush(chunk)
                    chunk, size = [], 0
            if chunk:
                flush(chunk)
        return [c / max(total, 1) for c in correct]


# ----------------------------------------------------------------------------------------- helpers


def _inputs(batch: Any) -> torch.Tensor:
    """The input tensor of a recalibration batch: a bare tensor or the first of an (inputs, ...) pair."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise ConfigError(f"Probe's recalibrate= takes input tensors or (inputs, labels) pairs, got a "
                      f"{type(batch).__name__}; recalibrate other models with prunekit.train.recalibrate_bn")


def _suffix_batchnorms(m: nn.Module, graph: fx.Graph | None, suffix: list[str]) -> list[nn.Module]:
    """The BatchNorm layers of ``m`` the suffix runs (all of them when ``m`` runs by a full forward)."""
    if graph is None:
        return batchnorms(m)
    tracked = {id(bn) for bn in batchnorms(m)}
    by_name = {n.name: n for n in graph.nodes}
    mods = _modules(m)
    out: list[nn.Module] = []
    for name in suffix:
        node = by_name[name]
        mod = mods.get(str(node.target)) if node.op == "call_module" else None
        if mod is not None and id(mod) in tracked and all(mod is not o for o in out):
            out.append(mod)
    return out


def _pair(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], torch.Tensor) \
            and isinstance(batch[1], torch.Tensor):
        return batch[0], batch[1]
    raise ConfigError(f"Probe takes (inputs, labels) tensor pairs, got a {type(batch).__name__}; "
                      "score other batches with prunekit.train.evaluate")


def _ignore() -> int:
    from prunekit.train.engine import IGNORE_INDEX

    return IGNORE_INDEX


def _logits(outputs: Any) -> torch.Tensor:
    from prunekit.train.engine import _logits as logits

    return logits(outputs)


def _top1(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    from prunekit.train.engine import _flatten

    logits, y = _flatten(logits, y)
    valid = y != _ignore()
    return int((logits.argmax(dim=1).eq(y) & valid).sum()), int(valid.sum())


def _trace(model: nn.Module) -> fx.Graph:
    return trace(model, "reuse the unchanged prefix").graph


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def _attr(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _exec(node: fx.Node, env: dict[str, Any], model: nn.Module, mods: dict[str, nn.Module]) -> Any:
    args = fx.node.map_arg(node.args, lambda n: env[n.name])
    kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
    if node.op == "call_module":
        return mods[str(node.target)](*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        obj, *rest = args
        return getattr(obj, str(node.target))(*rest, **kwargs)
    if node.op == "get_attr":
        return _attr(model, str(node.target))
    if node.op == "output":
        return args[0]
    raise ConfigError(f"unexpected graph node {node.op} {node.name}")


def _placeholders(graph: fx.Graph, x: torch.Tensor, env: dict[str, Any]) -> None:
    first = True
    for node in graph.nodes:
        if node.op == "placeholder":
            env[node.name] = x if first else (node.args[0] if node.args else None)
            first = False


def _run_all(graph: fx.Graph, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    env: dict[str, Any] = {}
    _placeholders(graph, x, env)
    mods = _modules(model)
    out = None
    for node in graph.nodes:
        if node.op != "placeholder":
            env[node.name] = out = _exec(node, env, model, mods)
    return _logits(out)


def _split(graph: fx.Graph | None, changed: set[str]) -> tuple[list[str], list[str], list[str]] | None:
    """(suffix node names in order, frontier names, prefix names to run) for modules ``changed``;
    None when the change cannot be located in the graph (the caller scores full forwards)."""
    if graph is None or not changed:
        return None
    nodes = list(graph.nodes)

    def touched(n: fx.Node) -> bool:
        if n.op not in ("call_module", "get_attr"):
            return False
        t = str(n.target)
        return any(t == c or t.startswith(c + ".") for c in changed)

    down: set[str] = set()
    for n in nodes:
        if touched(n) or any(isinstance(a, fx.Node) and a.name in down for a in n.all_input_nodes):
            down.add(n.name)
    out = [n for n in nodes if n.op == "output"]
    if not down or not out or out[0].name not in down:
        return None
    suffix = [n.name for n in nodes if n.name in down]
    frontier = sorted({a.name for n in nodes if n.name in down for a in n.all_input_nodes if a.name not in down})
    # prefix: the unchanged nodes the frontier needs (ancestors included), in graph order
    need = set(frontier)
    for n in reversed(nodes):
        if n.name in need:
            need.update(a.name for a in n.all_input_nodes)
    prefix = [n.name for n in nodes if n.name in need and n.op != "placeholder"]
    return suffix, frontier, prefix


def _steps(graph: fx.Graph, names: list[str], keep: Collection[str] = ()) -> list[tuple[fx.Node, list[str]]]:
    """``names``' nodes in order, each with the values no later node reads (freed after it runs, so
    the allocator reuses their memory instead of faulting in fresh pages); ``keep`` is never freed."""
    by_name = {n.name: n for n in graph.nodes}
    last: dict[str, int] = {}
    for i, name in enumerate(names):
        for a in by_name[name].all_input_nodes:
            last[a.name] = i
    free: list[list[str]] = [[] for _ in names]
    for value, i in last.items():
        if value not in keep:
            free[i].append(value)
    return [(by_name[name], free[i]) for i, name in enumerate(names)]


def _run_steps(steps: list[tuple[fx.Node, list[str]]], env: dict[str, Any], model: nn.Module) -> Any:
    mods = _modules(model)
    out = None
    for node, free in steps:
        out = env[node.name] = _exec(node, env, model, mods)
        for name in free:
            env.pop(name, None)
    return out


def _run_prefix(graph: fx.Graph, model: nn.Module, x: torch.Tensor, prefix: list[str],
                frontier: list[str]) -> dict[str, Any]:
    env: dict[str, Any] = {}
    _placeholders(graph, x, env)
    _run_steps(_steps(graph, prefix, keep=frontier), env, model)
    return {k: env[k] for k in frontier}


def _run_suffix(graph: fx.Graph, model: nn.Module, values: dict[str, Any], suffix: list[str]) -> torch.Tensor:
    return _logits(_run_steps(_steps(graph, suffix), dict(values), model))


def _run_variant(graph: fx.Graph | None, m: nn.Module, values: dict[str, Any], suffix: list[str]) -> torch.Tensor:
    """Logits of variant ``m``: its suffix on the cached frontier ``values``, or (no usable graph) a
    full forward of the batch's input."""
    return _logits(m(values["__input__"])) if graph is None else _run_suffix(graph, m, values, suffix)


def _variant_graph(base: fx.Graph | None, m: nn.Module, model: nn.Module, cache: dict[int, fx.Graph | None],
                   i: int) -> fx.Graph | None:
    """The graph to run variant ``m`` with: the model's own when ``m`` is ``model``; else ``m``'s trace
    when its node names and operations match the model's (None = score ``m`` by a full forward)."""
    if m is model or base is None:
        cache[i] = base
        return base
    try:
        g = _trace(m)
    except Exception:  # noqa: BLE001
        cache[i] = None
        return None
    same = [(n.name, n.op, str(n.target)) for n in g.nodes] == [(n.name, n.op, str(n.target)) for n in base.nodes]
    cache[i] = g if same else None
    return cache[i]

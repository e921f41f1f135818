"""AMC (He et al. 2018, "AMC: AutoML for Model Compression"): per-layer channel ratios learned by DDPG.

:class:`AMCEnv` is a ``gymnasium`` environment that walks the prunable layers (one step per coupled
channel group of the :class:`~prunekit.structure.graph.DependencyGraph`, in forward order; groups
whose channels cannot be removed, or that touch an ``exclude`` module, are skipped). The state is
the paper's layer embedding (:data:`FEATURES`: index, out channels, in channels, input height and
width, stride, kernel size, the layer's FLOPs, FLOPs reduced so far, FLOPs of the later layers, the
previous action), each feature scaled to [0, 1] over the layers. The action is the layer's
pruning ratio in ``[0, max_ratio]``. The budget (keep ``macs_ratio`` of the MACs, or
``params_ratio`` of the parameters) is enforced by bounding each action as in the paper's
Algorithm 1: at least what is still needed if every later layer is pruned at ``max_ratio``; with
``reward="err"`` also at most what is needed if no later layer is pruned, so every episode ends on
the budget (within one channel) and the reward is the error alone (``R_err = -error``). With
``reward="flops"`` only the lower bound holds and the reward is ``R_FLOPs = -error * log(FLOPs)``.
``error = 1 - evaluate(model)``: ``evaluate`` returns the accuracy as a fraction (any "higher is
better" score works; no fine-tuning happens). Rewards come at the end of an episode only.

Costs are modelled exactly on the dependency graph: for a ratio the env knows which channels
:func:`~prunekit.structure.api.prune_channels` removes (the same importance ranking and per-group
rule), and counts MACs and parameters with the graph's cost model; at the end of each episode the
model is pruned for real and its MACs are measured with :func:`~prunekit.metrics.count_macs`.

:func:`amc_search` trains stable-baselines3's DDPG on the env (warm-up episodes of random actions,
Gaussian exploration noise decaying per episode, a moving-average reward baseline), keeps the best
episode that meets the budget and returns an :class:`AMCResult`; ``result.allocation()`` is the
:class:`~prunekit.allocation.PerLayer` to pass to ``prune_channels(..., target="channels")``. With
``checkpoint_path`` the search state (networks, optimizers, replay buffer, random states, history)
is written every ``checkpoint_every`` episodes as a ``torch.load(weights_only=True)`` file, and a
second call with the same path continues where the first stopped, ending with the same result.

Needs the ``search`` extra: ``pip install prunekit[search]`` (gymnasium, stable-baselines3).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import CheckpointError, ConfigError, UnsupportedError

try:  # the env must subclass gymnasium.Env; without the extra, constructing it raises a ConfigError
    import gymnasium as _gym

    _EnvBase: Any = _gym.Env
except ImportError:  # pragma: no cover - exercised by the missing-extra test through _require
    _gym = None
    _EnvBase = object

__all__ = ["FEATURES", "AMCEnv", "AMCLayer", "AMCResult", "amc_search"]

INSTALL_HINT = "pip install prunekit[search]"
FEATURES = ("t", "n", "c", "h", "w", "stride", "k", "flops", "reduced", "rest", "a_prev")
REWARDS = ("err", "flops")
FORMAT, VERSION = "prunekit.amc", 1
CHECKPOINT_FORMAT = "prunekit.amc-search"
OUT_AXES = ("out", "heads", "feat")
TOLERANCE = 0.01  # an episode meets the budget when its measured cost exceeds the target by at most 1 %

# the paper's DDPG settings (its code's defaults) where stable-baselines3 takes them
LR_ACTOR, LR_CRITIC = 1e-4, 1e-3
TAU, GAMMA, BATCH = 0.01, 1.0, 64
HIDDEN = [300, 300]
REPLAY_EPISODES = 100  # the replay buffer holds this many episodes
BASELINE_DECAY = 0.95  # moving-average reward baseline: b <- 0.95 b + 0.05 R


def _require(what: str = "AMC") -> None:
    """Raise a ConfigError naming the extra when gymnasium or stable-baselines3 cannot be imported."""
    for name in ("gymnasium", "stable_baselines3"):
        try:
            __import__(name)
        except ImportError:
            raise ConfigError(f"{what} needs {name.replace('_', '-')}: {INSTALL_HINT}") from None


def _constraint(macs_ratio: float | None, params_ratio: float | None) -> tuple[str, float]:
    """``(resource, kept fraction)`` of the budget; exactly one of the two ratios is given."""
    if params_ratio is not None and macs_ratio is not None:
        raise ConfigError("give either macs_ratio or params_ratio (pass macs_ratio=None with params_ratio)")
    if params_ratio is None and macs_ratio is None:
        raise ConfigError("give a budget: macs_ratio (fraction of MACs to keep) or params_ratio")
    resource, ratio = ("params", params_ratio) if params_ratio is not None else ("macs", macs_ratio)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
        word = "MACs" if resource == "macs" else "parameters"
        raise ConfigError(f"{resource}_ratio is the fraction of the {word} to keep, in (0, 1), got {ratio!r}")
    return resource, float(ratio)


@dataclass(frozen=True)
class AMCLayer:
    """One step of the env: a coupled channel group, named by ``key`` (a :class:`PerLayer` glob).

    ``module`` is the layer whose shape gives the step's features (the group's first producing
    layer in forward order); ``channels`` the group's prunable channels; ``max_remove`` the most a
    step may remove (``floor(max_ratio * channels)``, at least one channel stays on every layer).
    """

    key: str
    module: str
    group: int
    channels: int
    max_remove: int
    in_channels: int
    h: int
    w: int
    stride: int
    kernel: int
    macs: int  # dense MACs of the layers producing these channels


def _forward_info(model: nn.Module, example_input: Any) -> dict[str, tuple[int, tuple[int, ...]]]:
    """``{module name: (call index, input shape)}`` of one eval-mode forward (first call of each)."""
    from prunekit.metrics import run_model
    from prunekit.moduletools import eval_mode

    info: dict[str, tuple[int, tuple[int, ...]]] = {}
    handles = []

    def make(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            if name not in info:
                first = inputs[0] if inputs else None
                info[name] = (len(info), tuple(first.shape) if isinstance(first, torch.Tensor) else ())

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(make(name)))
        with eval_mode(model), torch.no_grad():
            run_model(model, example_input)
    finally:
        for h in handles:
            h.remove()
    return info


def _group_keys(graph: Any, stepped: list[int], order: Mapping[str, int]) -> dict[int, str]:
    """A module name per channel group such that ``PerLayer`` (first matching glob wins, a glob matching
    any module of a group) gives every stepped group its own ratio and every other prunable group none.

    Returned in the order the globs must appear. Groups other than ``stepped`` get a key only when
    some stepped key also matches them (their ratio is then 0, placed before that key).
    """
    relevant = {g.index for g in graph.groups if any(graph.units[u].prunable for u in g.units)}
    module_groups: dict[str, set[int]] = {}
    for g in graph.groups:
        if g.index in relevant:
            for a in g.axes:
                module_groups.setdefault(a.module, set()).add(g.index)

    def candidates(gi: int) -> list[str]:
        axes = graph.groups[gi].axes
        names = list(dict.fromkeys(a.module for a in axes))
        producers = {a.module for a in axes if a.axis in OUT_AXES}
        return sorted(names, key=lambda n: (module_groups[n] != {gi}, n not in producers, order.get(n, 1 << 30), n))

    keys: dict[int, str] = {}
    used: set[str] = set()
    queue = list(stepped)
    while queue:
        gi = queue.pop(0)
        if gi in keys:
            continue
        name = next((n for n in candidates(gi) if n not in used), None)
        if name is None:
            raise UnsupportedError(f"channel group {gi} has no module name left to key its ratio with")
        keys[gi] = name
        used.add(name)
        queue += [h for h in sorted(module_groups[name]) if h not in keys and h not in queue]
    # the key of h comes before the key of g whenever g's key also matches h
    before = {g: {h for h in module_groups[name] if h != g} for g, name in keys.items()}
    rank = {g: i for i, g in enumerate(stepped)}
    placed: list[int] = []
    left = set(keys)
    while left:
        ready = sorted((g for g in left if not (before[g] & left)), key=lambda g: (rank.get(g, -1), g))
        if not ready:
            raise UnsupportedError(
                "cannot name the channel groups with PerLayer globs (module names shared by groups in a "
                f"cycle: {sorted(keys[g] for g in left)}); exclude some of these layers"
            )
        placed.append(ready[0])
        left.remove(ready[0])
    ordered = {g: keys[g] for g in placed}
    for gi in sorted(relevant):  # check by simulation: the first matching glob is the group's own (or none)
        first = next((g for g, name in ordered.items() if any(fnmatch.fnmatchcase(a.module, name)
                                                                for a in graph.groups[gi].axes)), None)
        if first != (gi if gi in ordered else None):
            raise UnsupportedError(f"channel group {gi} would take the ratio of {ordered.get(first)!r}")
    return ordered


class AMCEnv(_EnvBase):
    """The AMC environment: one step per prunable channel group; see the module docstring.

    ``evaluate(model) -> float`` scores a pruned model (higher is better, e.g. top-1 as a fraction);
    ``macs_ratio`` / ``params_ratio``: the fraction to keep (give one); ``importance``: which channels
    go, as in :func:`~prunekit.structure.api.prune_channels` (default L1 magnitude); ``baseline_decay``:
    when given, the final reward handed out is ``R - b`` with ``b`` a moving average of past ``R``
    (``info["raw_reward"]`` holds ``R``). After each episode ``last_episode`` holds its record.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        model: nn.Module,
        example_input: Any,
        evaluate: Callable[[nn.Module], float],
        *,
        macs_ratio: float | None = 0.5,
        params_ratio: float | None = None,
        importance: Any = None,
        exclude: Sequence[str] = (),
        max_ratio: float = 0.8,
        reward: str = "err",
        baseline_decay: float | None = None,
    ) -> None:
        _require("AMCEnv")
        from gymnasium import spaces

        from prunekit.structure.api import ChannelScoring, _ready_importance, match_modules
        from prunekit.structure.graph import DependencyGraph
        from prunekit.structure.ranking import CostModel, UnitSelector, unit_scores

        self.resource, self.target = _constraint(macs_ratio, params_ratio)
        if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or not 0.0 < max_ratio < 1.0:
            raise ConfigError(f"max_ratio is the largest fraction of a layer's channels to remove, in (0, 1), "
                              f"got {max_ratio!r}")
        if reward not in REWARDS:
            raise ConfigError(f"reward must be one of {REWARDS}, got {reward!r}")
        if baseline_decay is not None and not 0.0 <= baseline_decay < 1.0:
            raise ConfigError(f"baseline_decay must be in [0, 1), got {baseline_decay!r}")
        if not callable(evaluate):
            raise ConfigError(f"evaluate must be a callable model -> float, got {type(evaluate).__name__}")
        self.model, self.example_input, self.evaluate = model, example_input, evaluate
        self.max_ratio, self.reward_kind, self.baseline_decay = float(max_ratio), reward, baseline_decay

        graph = DependencyGraph.build(model, example_input)
        graph.check_handlers()
        names = sorted({a.module for a in graph.axes})
        self.exclude = match_modules(list(exclude), names) if exclude else []
        self.importance = _ready_importance(importance, model, graph, ChannelScoring(), self.exclude, None)
        scores = unit_scores(graph, self.importance, exclude=self.exclude)
        orders = UnitSelector(graph, scores, "uniform", exclude=self.exclude).orders
        self.graph = graph
        self.cost_model = CostModel(graph, example_input)
        self.dense = {"params": self.cost_model.total_params, "macs": self.cost_model.total_macs}
        if not self.dense[self.resource]:
            raise ConfigError(f"the model has no {self.resource} to reduce")

        # removal order of each group, exactly as prune_channels' per-group rule takes them
        per_unit, kept = graph.unit_counts(), list(graph.axes.values())
        seqs: dict[int, list[int]] = {}
        for g, units in orders.items():
            seq = []
            for u in units:
                if all(kept[a] - n >= 1 for a, n in per_unit[u]):
                    for a, n in per_unit[u]:
                        kept[a] -= n
                    seq.append(u)
            seqs[g] = seq

        info = _forward_info(model, example_input)
        order = {name: idx for name, (idx, _) in info.items()}
        macs = self.cost_model.module_macs
        candidates = []
        for g, units in orders.items():
            most = min(len(seqs[g]), math.floor(self.max_ratio * len(units) + 1e-9))
            if most < 1:
                continue
            axes = graph.groups[g].axes
            producers = [a.module for a in axes if a.axis in OUT_AXES]
            rep = min(producers or [a.module for a in axes], key=lambda n: (
                not isinstance(graph.module(n), (nn.modules.conv._ConvNd, nn.Linear)), order.get(n, 1 << 30)))
            layer_macs = sum(macs.get(a.module, 0) for a in axes if a.axis in ("out", "heads"))
            candidates.append((order.get(rep, 1 << 30), g, rep, len(units), most, layer_macs))
        if not candidates:
            why = (f" with exclude={list(exclude)}" if exclude else "") + f" and max_ratio={max_ratio}"
            raise ConfigError(f"AMC found no prunable layers: no channel group can lose a channel{why} "
                              f"({sum(u.prunable for u in graph.units)} prunable channels in the graph)")
        candidates.sort()
        keys = _group_keys(graph, [c[1] for c in candidates], order)
        layers = []
        for _, g, rep, n, most, layer_macs in candidates:
            module = graph.module(rep)
            shape = info.get(rep, (0, ()))[1]
            cin, h, w, stride, kernel = 0, 1, 1, 1, 1
            if isinstance(module, nn.modules.conv._ConvNd):
                cin, stride, kernel = module.in_channels, int(module.stride[0]), int(module.kernel_size[0])
                h, w = (int(shape[-2]), int(shape[-1])) if len(shape) >= 3 else (1, 1)
            elif isinstance(module, nn.Linear):
                cin = module.in_features
            layers.append(AMCLayer(keys[g], rep, g, n, most, cin, h, w, stride, kernel, int(layer_macs)))
        self.layers: list[AMCLayer] = layers
        self.zero_keys = [name for g, name in keys.items() if g not in {la.group for la in layers}]
        self._key_order = list(keys.values())
        self._seqs = [seqs[la.group] for la in layers]
        self._cache: dict[tuple[int, ...], tuple[int, int]] = {}

        most = self._cost(tuple(la.max_remove for la in layers))
        reachable = most[self._ri] / self.dense[self.resource]
        if reachable > self.target:
            raise ConfigError(
                f"{self.resource}_ratio {self.target:g} is below what max_ratio {self.max_ratio:g} allows: pruning "
                f"every prunable layer at max_ratio keeps {reachable:.3f} of the {self.resource}; "
                "raise the ratio or max_ratio"
            )

        static = np.array([[t, la.channels, la.in_channels, la.h, la.w, la.stride, la.kernel, la.macs]
                           for t, la in enumerate(layers)], dtype=np.float64)
        lo, span = static.min(0), static.max(0) - static.min(0)
        self._static = np.where(span > 0, (static - lo) / np.where(span > 0, span, 1.0), 0.0)
        total = float(self.dense["macs"]) or 1.0
        self._rest = [sum(la.macs for la in layers[t + 1:]) / total for t in range(len(layers))]
        self.observation_space = spaces.Box(0.0, 1.0, (len(FEATURES),), dtype=np.float32)
        self.action_space = spaces.Box(0.0, self.max_ratio, (1,), dtype=np.float32)
        self.baseline: float | None = None
        self.episodes_done = 0
        self.last_episode: dict[str, Any] | None = None
        self._t, self._counts, self._prev = 0, [], 0.0

    # -- costs ------------------------------------------------------------------------------------
    @property
    def _ri(self) -> int:
        return 0 if self.resource == "params" else 1

    def _cost(self, counts: tuple[int, ...]) -> tuple[int, int]:
        """``(params, macs)`` after removing the first ``counts[i]`` channels of each layer's group."""
        hit = self._cache.get(counts)
        if hit is None:
            units = [u for seq, k in zip(self._seqs, counts) for u in seq[:k]]
            hit = self.cost_model.estimate(units)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[counts] = hit
        return hit

    def action_bounds(self) -> tuple[int, int]:
        """``(fewest, most)`` channels the current step may remove (the paper's Algorithm 1)."""
        t, layers = self._t, self.layers
        if t >= len(layers):
            raise ConfigError("the episode is over; call reset()")
        done, most, target = tuple(self._counts), layers[t].max_remove, self.target * self.dense[self.resource]
        later_max = tuple(la.max_remove for la in layers[t + 1:])
        later_none = (0,) * len(later_max)

        def cost(k: int, later: tuple[int, ...]) -> int:
            return self._cost(done + (k,) + later)[self._ri]

        lower = min(most, _first(0, most, lambda k: cost(k, later_max) <= target))  # reachable at max_ratio after
        upper = most
        if self.reward_kind == "err":  # not past the budget even if no later layer is pruned
            upper = _first(0, most, lambda k: cost(k, later_none) < target) - 1
        return lower, max(lower, min(upper, most))

    # -- gymnasium API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._t, self._counts, self._prev = 0, [], 0.0
        return self._observation(), {}

    def _observation(self) -> np.ndarray:
        t = min(self._t, len(self.layers) - 1)
        reduced = 1.0 - self._cost(tuple(self._counts) + (0,) * (len(self.layers) - len(self._counts)))[1] / max(
            self.dense["macs"], 1)
        obs = np.concatenate([self._static[t], [reduced, self._rest[t], self._prev]])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    def step(self, action: Any):
        lower, upper = self.action_bounds()
        layer = self.layers[self._t]
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, self.max_ratio))
        k = int(min(max(math.floor(a * layer.channels + 0.5), lower), upper))
        self._counts.append(k)
        self._prev = k / layer.channels
        self._t += 1
        info: dict[str, Any] = {"ratio": self._prev, "bounds": (lower / layer.channels, upper / layer.channels)}
        if self._t < len(self.layers):
            return self._observation(), 0.0, False, False, info
        record = self._finish()
        reward = record["reward"]
        if self.baseline_decay is not None:
            base = reward if self.baseline is None else self.baseline
            self.baseline = self.baseline_decay * base + (1.0 - self.baseline_decay) * reward
            reward = reward - base
        info.update(raw_reward=record["reward"], record=record)
        return self._observation(), float(reward), True, False, info

    # -- the end of an episode --------------------------------------------------------------------
    def ratios_for(self, counts: Sequence[int]) -> dict[str, float]:
        """The ordered ``{glob: ratio}`` for ``PerLayer`` when layer ``i`` loses ``counts[i]`` channels."""
        given = {la.key: k / la.channels for la, k in zip(self.layers, counts)}
        return {key: given.get(key, 0.0) for key in self._key_order}

    def prune(self, ratios: Mapping[str, float]) -> tuple[nn.Module, Any]:
        """``prune_channels`` with ``PerLayer(ratios)``: ``(small model, report)``."""
        from prunekit.allocation import PerLayer
        from prunekit.structure.api import prune_channels

        small, _, report = prune_channels(
            self.model, self.example_input, PerLayer(dict(ratios)), self.importance, target="channels",
            exclude=self.exclude, verify=False, graph=self.graph,
        )  # fmt: skip
        return small, report

    def _finish(self) -> dict[str, Any]:
        counts = tuple(self._counts)
        ratios = self.ratios_for(counts)
        modelled = self._cost(counts)
        small, report = self.prune(ratios)
        accuracy = float(self.evaluate(small))
        if not math.isfinite(accuracy):
            raise ConfigError(f"evaluate returned {accuracy} for the pruned model")
        macs, params = report.macs_after / report.macs_before, report.params_after / report.params_before
        error = 1.0 - accuracy
        reward = -error if self.reward_kind == "err" else -error * math.log(max(2.0 * report.macs_after, 2.0))
        measured = params if self.resource == "params" else macs
        record = {
            "episode": self.episodes_done, "reward": reward, "accuracy": accuracy, "macs_ratio": macs,
            "params_ratio": params, "modelled_macs_ratio": modelled[1] / self.dense["macs"],
            "modelled_params_ratio": modelled[0] / self.dense["params"],
            "meets": bool(measured <= self.target * (1.0 + TOLERANCE)), "ratios": ratios,
        }
        self.episodes_done += 1
        self.last_episode = record
        return record


def _first(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """Smallest ``k`` in ``[lo, hi]`` with ``ok(k)`` (monotone: false ... false true ... true), or ``hi + 1``."""
    if not ok(hi):
        return hi + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


# ------------------------------------------------------------------------------------------------
# the result
# ------------------------------------------------------------------------------------------------
@dataclass
class AMCResult:
    """The best episode of an AMC search (highest reward among those meeting the budget).

    ``ratios``: ``{glob: fraction of the group's channels to remove}`` for
    ``PerLayer(ratios)`` / :meth:`allocation` with ``prune_channels(..., target="channels")`` (ordered:
    PerLayer takes the first glob that matches a group); ``macs_ratio`` / ``params_ratio``: kept
    fractions measured on the pruned model; ``history``: one record per episode (reward, accuracy,
    measured and modelled ratios, per-layer ratios, warm-up or not).
    """

    ratios: dict[str, float]
    accuracy: float
    reward: float
    macs_ratio: float
    history: list[dict[str, Any]]
    seconds: float
    params_ratio: float = 1.0
    episode: int = -1
    target: dict[str, float] = field(default_factory=dict)  # {"macs": 0.5} or {"params": 0.5}
    dense_accuracy: float | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)  # key, module, channels, per step
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def allocation(self) -> Any:
        """The :class:`~prunekit.allocation.PerLayer` of :attr:`ratios` (use with ``target="channels"``)."""
        from prunekit.allocation import PerLayer

        return PerLayer(dict(self.ratios))

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> AMCResult:
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("format") != FORMAT:
                raise ValueError("not a prunekit AMC result")
            if d.get("version") != VERSION:
                raise ValueError(f"unknown version {d.get('version')!r}")
            dense = d.get("dense_accuracy")
            return cls(
                {str(k): float(v) for k, v in d["ratios"].items()}, float(d["accuracy"]), float(d["reward"]),
                float(d["macs_ratio"]), list(d["history"]), float(d["seconds"]), float(d["params_ratio"]),
                int(d["episode"]), {str(k): float(v) for k, v in d["target"].items()},
                None if dense is None else float(dense), list(d["layers"]), [str(n) for n in d["notes"]],
                dict(d["meta"]),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"cannot read the AMC result: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically."""
        from prunekit.io import atomic_write_text

        return atomic_write_text(path, self.to_json())

    def plot(self, path: str | os.PathLike[str], rewards: bool = True) -> Path:
        """A PNG: the kept fraction of each layer's channels (bars), and the reward per episode below.

        Drawn on its own matplotlib ``Figure`` with an Agg canvas (pyplot is not used) and written
        atomically. Needs matplotlib (``pip install prunekit[plots]``).
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise ConfigError("plotting needs matplotlib: pip install prunekit[plots]") from exc
        layers = self.layers or [{"key": k, "module": k, "channels": 0} for k in self.ratios]
        keys = [la["key"] for la in layers]
        kept = [1.0 - self.ratios.get(k, 0.0) for k in keys]
        show_rewards = rewards and bool(self.history)
        fig = Figure(figsize=(max(6.0, 0.28 * len(keys) + 2.0), 6.0 if show_rewards else 3.8), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(2 if show_rewards else 1, 1, 1)
        x = np.arange(len(keys))
        ax.bar(x, [1.0] * len(keys), color="#dddddd", label="pruned")
        ax.bar(x, kept, color="#3b75af", label="kept")
        for i, la in enumerate(layers):
            n = int(la.get("channels", 0))
            if n:
                ax.text(i, kept[i] + 0.01, str(round(kept[i] * n)), ha="center", va="bottom", fontsize=6)
        ax.set_xticks(x)
        ax.set_xticklabels([la.get("module", la["key"]) for la in layers], rotation=75, fontsize=6)
        ax.set_ylim(0.0, 1.08)
        ax.set_ylabel("kept fraction of channels")
        target = ", ".join(f"{'MACs' if k == 'macs' else k} {v:.0%}" for k, v in self.target.items())
        ax.set_title(f"AMC: MACs kept {self.macs_ratio:.1%} (target {target}), accuracy {self.accuracy:.4g}",
                     fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        if show_rewards:
            ax2 = fig.add_subplot(2, 1, 2)
            eps = [int(h.get("episode", i)) for i, h in enumerate(self.history)]
            warm = [bool(h.get("warmup", False)) for h in self.history]
            rew = [float(h["reward"]) for h in self.history]
            ax2.plot(eps, rew, color="#999999", linewidth=0.6)
            ax2.scatter([e for e, w in zip(eps, warm) if w], [r for r, w in zip(rew, warm) if w], s=6,
                        color="#e3a33b", label="warm-up (random)")
            ax2.scatter([e for e, w in zip(eps, warm) if not w], [r for r, w in zip(rew, warm) if not w], s=6,
                        color="#3b75af", label="DDPG")
            ax2.axvline(self.episode, color="#c44e52", linewidth=0.8, linestyle="--", label="best")
            ax2.set_xlabel("episode")
            ax2.set_ylabel("reward")
            ax2.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", facecolor="white", metadata={"Software": None})
        from prunekit.io import atomic_write

        data = buf.getvalue()
        return atomic_write(path, lambda tmp: tmp.write_bytes(data))


# ------------------------------------------------------------------------------------------------
# the search
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _isolated_random_state() -> Iterator[None]:
    """Python's, numpy's and torch's global random states are the caller's again afterwards."""
    py, np_state, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(th)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _make_agent(env: AMCEnv, seed: int, warmup: int, scale: float) -> tuple[Any, Any]:
    """stable-baselines3 DDPG with the paper's settings, and its exploration noise."""
    from stable_baselines3 import DDPG
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.noise import ActionNoise

    class DecayingNoise(ActionNoise):
        """Gaussian noise with a standard deviation set per episode (0 during the warm-up)."""

        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
            self.sigma = 0.0

        def __call__(self) -> np.ndarray:
            if self.sigma <= 0.0:
                return np.zeros(1, dtype=np.float32)
            return (self.rng.normal(0.0, self.sigma * scale, size=1)).astype(np.float32)

        def reset(self) -> None:  # the decay is set per episode by the search loop
            pass

    class Agent(DDPG):
        """DDPG with the paper's two learning rates (actor 1e-4, critic 1e-3)."""

        def _update_learning_rate(self, optimizers: Any) -> None:
            for opt, lr in ((self.actor.optimizer, LR_ACTOR), (self.critic.optimizer, LR_CRITIC)):
                for group in opt.param_groups:
                    group["lr"] = lr

    steps = len(env.layers)
    noise = DecayingNoise()
    agent = Agent(
        "MlpPolicy", env, learning_rate=LR_CRITIC, buffer_size=REPLAY_EPISODES * steps, learning_starts=warmup * steps,
        batch_size=BATCH, tau=TAU, gamma=GAMMA, train_freq=(1, "episode"), gradient_steps=-1, action_noise=noise,
        policy_kwargs={"net_arch": list(HIDDEN)}, seed=seed, device="cpu", verbose=0,
    )  # fmt: skip
    agent.set_logger(Logger(folder=None, output_formats=[]))  # no files, no output
    agent._update_learning_rate([])
    return agent, noise


REPLAY_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _np_generator_state(gen: np.random.Generator) -> dict[str, Any]:
    return dict(gen.bit_generator.state)


def _search_state(agent: Any, env: AMCEnv, noise: Any, episode: int, history: list[dict[str, Any]],
                  best: int, seconds: float, config: dict[str, Any], dense_accuracy: float) -> dict[str, Any]:
    """Everything needed to continue the search, as plain tensors / numbers / lists / dicts."""
    rb = agent.replay_buffer
    np_state = np.random.get_state()
    return {
        "format": CHECKPOINT_FORMAT, "version": VERSION, "config": config, "episode": episode,
        "history": history, "best": best, "seconds": seconds, "dense_accuracy": dense_accuracy,
        "env": {"baseline": env.baseline, "episodes_done": env.episodes_done},
        "policy": {k: v.detach().clone() for k, v in agent.policy.state_dict().items()},
        "actor_optimizer": agent.actor.optimizer.state_dict(),
        "critic_optimizer": agent.critic.optimizer.state_dict(),
        "replay": {**{f: torch.from_numpy(np.array(getattr(rb, f))) for f in REPLAY_FIELDS},
                   "pos": int(rb.pos), "full": bool(rb.full)},
        "agent": {"num_timesteps": int(agent.num_timesteps), "n_updates": int(agent._n_updates),
                  "episode_num": int(agent._episode_num),
                  "last_obs": torch.from_numpy(np.array(agent._last_obs)),
                  "last_episode_starts": torch.from_numpy(np.array(agent._last_episode_starts))},
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
            "python": _python_state(),
            "action_space": _np_generator_state(agent.action_space.np_random),
            "noise": _np_generator_state(noise.rng),
        },
    }  # fmt: skip


def _python_state() -> dict[str, Any]:
    version, state, gauss = random.getstate()
    return {"version": version, "state": list(state), "gauss": gauss}


def _restore(agent: Any, env: AMCEnv, noise: Any, state: dict[str, Any]) -> None:
    agent.policy.load_state_dict(state["policy"])
    agent.actor.optimizer.load_state_dict(state["actor_optimizer"])
    agent.critic.optimizer.load_state_dict(state["critic_optimizer"])
    rb = agent.replay_buffer
    for f in REPLAY_FIELDS:
        saved = state["replay"][f].numpy()
        dest = getattr(rb, f)
        if saved.shape != dest.shape:
            raise CheckpointError(f"the AMC checkpoint's replay buffer has shape {saved.shape}, expected {dest.shape}")
        np.copyto(dest, saved)
    rb.pos, rb.full = int(state["replay"]["pos"]), bool(state["replay"]["full"])
    a = state["agent"]
    agent.env.reset()  # the wrapped env starts an episode, as after the last saved one
    agent.num_timesteps, agent._n_updates, agent._episode_num = a["num_timesteps"], a["n_updates"], a["episode_num"]
    agent._last_obs = a["last_obs"].numpy().copy()
    agent._last_episode_starts = a["last_episode_starts"].numpy().copy()
    env.baseline, env.episodes_done = state["env"]["baseline"], int(state["env"]["episodes_done"])
    r = state["rng"]
    torch.set_rng_state(r["torch"])
    n = r["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = r["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    agent.action_space.np_random.bit_generator.state = r["action_space"]
    noise.rng.bit_generator.state = r["noise"]


def _load_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"cannot read the AMC search checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an AMC search checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: unknown AMC checkpoint version {state.get('version')!r}")
    saved = state.get("config", {})
    differ = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
    if differ:
        raise ConfigError(
            f"{path} holds a search with other settings ({', '.join(f'{k}: {saved.get(k)!r} there, {config.get(k)!r} now' for k in differ)}); "
            "use another checkpoint_path or the same settings"
        )  # fmt: skip
    return state


def _describe(importance: Any) -> str:
    """A stable name for the checkpoint's settings (never a memory address)."""
    if importance is None or type(importance).__repr__ is object.__repr__:
        return type(importance).__name__
    return repr(importance)


def _best(history: list[dict[str, Any]]) -> int:
    """Index of the highest reward among the episodes meeting the budget (all of them if none does)."""
    pool = [i for i, h in enumerate(history) if h["meets"]] or list(range(len(history)))
    return max(pool, key=lambda i: (history[i]["reward"], -i))


def amc_search(
    model: nn.Module,
    example_input: Any,
    evaluate: Callable[[nn.Module], float],
    *,
    macs_ratio: float | None = 0.5,
    params_ratio: float | None = None,
    importance: Any = None,
    exclude: Sequence[str] = (),
    episodes: int = 300,
    warmup: int = 100,
    max_ratio: float = 0.8,
    reward: str = "err",
    seed: int = 0,
    noise: float = 0.5,
    noise_decay: float = 0.99,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 10,
) -> AMCResult:
    """Search per-layer channel ratios with AMC (DDPG from stable-baselines3) under a budget.

    ``macs_ratio``: fraction of the MACs to keep (or ``params_ratio`` with ``macs_ratio=None``);
    ``evaluate(model) -> float``: accuracy of a pruned model as a fraction (higher is better; called
    once per episode, no fine-tuning); ``importance``, ``exclude``: as in ``prune_channels``;
    ``episodes`` in all, the first ``warmup`` with random actions; ``max_ratio``: the most of a
    layer's channels to remove; ``reward``: ``"err"`` (``-error``, the budget met exactly) or
    ``"flops"`` (``-error * log(FLOPs)``, the budget as a bound); ``noise``: the exploration noise's
    standard deviation (in ratio units) after the warm-up, times ``noise_decay`` per episode;
    ``progress(episode, record)`` after each episode (raising stops the search; with a checkpoint it
    can be resumed); ``checkpoint_path``: written every ``checkpoint_every`` episodes and at the end,
    and continued from when it exists. The same ``seed`` gives the same result on CPU; the global
    random states are the caller's again afterwards. The model is not modified.
    """
    _require()
    resource, ratio = _constraint(macs_ratio, params_ratio)
    for name, value, low in (("episodes", episodes, 1), ("warmup", warmup, 0), ("checkpoint_every", checkpoint_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0.0:
        raise ConfigError(f"noise is a standard deviation >= 0, got {noise!r}")
    if isinstance(noise_decay, bool) or not isinstance(noise_decay, (int, float)) or not 0.0 < noise_decay <= 1.0:
        raise ConfigError(f"noise_decay must be in (0, 1], got {noise_decay!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    start = time.perf_counter()
    with _isolated_random_state():
        env = AMCEnv(model, example_input, evaluate, macs_ratio=macs_ratio, params_ratio=params_ratio,
                     importance=importance, exclude=exclude, max_ratio=max_ratio, reward=reward,
                     baseline_decay=BASELINE_DECAY)
        config = {
            "resource": resource, "ratio": ratio, "max_ratio": float(max_ratio), "reward": reward, "seed": seed,
            "warmup": warmup, "noise": float(noise), "noise_decay": float(noise_decay),
            "layers": [la.key for la in env.layers], "dense_macs": int(env.dense["macs"]),
            "exclude": list(env.exclude), "importance": _describe(env.importance),
        }  # fmt: skip
        path = Path(checkpoint_path) if checkpoint_path is not None else None
        state = _load_checkpoint(path, config) if path is not None else None
        agent, action_noise = _make_agent(env, seed, warmup, 2.0 / float(max_ratio))
        if state is not None:
            _restore(agent, env, action_noise, state)
            first, history, before = int(state["episode"]), list(state["history"]), float(state["seconds"])
            dense_accuracy = float(state["dense_accuracy"])
        else:
            first, history, before = 0, [], 0.0
            dense_accuracy = float(evaluate(model))
        steps = len(env.layers)

        def save(episode: int) -> None:
            from prunekit.io import atomic_torch_save

            assert path is not None
            seconds = before + time.perf_counter() - start
            atomic_torch_save(_search_state(agent, env, action_noise, episode, history, _best(history), seconds,
                                            config, dense_accuracy), path)

        for episode in range(first, episodes):
            action_noise.sigma = 0.0 if episode < warmup else float(noise) * float(noise_decay) ** (episode - warmup)
            agent.learn(total_timesteps=steps, reset_num_timesteps=False)
            record = dict(env.last_episode or {})
            record["episode"], record["warmup"] = episode, episode < warmup
            history.append(record)
            if path is not None and ((episode + 1) % checkpoint_every == 0 or episode + 1 == episodes):
                save(episode + 1)
            if progress is not None:
                progress(episode, record)
    best = _best(history)
    rec = history[best]
    notes = []
    if not rec["meets"]:
        notes.append(f"no episode met the budget within {TOLERANCE:.0%}; the best reward is reported")
    modelled = rec[f"modelled_{resource}_ratio"]
    measured = rec[f"{resource}_ratio"]
    if measured > ratio * (1.0 + TOLERANCE):
        notes.append(f"measured {resource} ratio {measured:.4f} exceeds the target {ratio:g} by more than "
                     f"{TOLERANCE:.0%} (modelled {modelled:.4f})")
    return AMCResult(
        ratios=dict(rec["ratios"]), accuracy=float(rec["accuracy"]), reward=float(rec["reward"]),
        macs_ratio=float(rec["macs_ratio"]), history=history, seconds=before + time.perf_counter() - start,
        params_ratio=float(rec["params_ratio"]), episode=int(rec["episode"]), target={resource: ratio},
        dense_accuracy=dense_accuracy,
        layers=[{"key": la.key, "module": la.module, "channels": la.channels} for la in env.layers],
        notes=notes, meta={**config, "episodes": len(history)},
    )  # fmt: skip

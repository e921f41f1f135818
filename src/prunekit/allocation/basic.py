"""How much to prune where: :class:`Uniform`, :class:`PerLayer`, :class:`Global`.

An allocation turns element scores of every target into element keep-masks, under a
granularity: ``allocate(targets, scores, granularity) -> {name: bool mask}``.

Exactness: with a regular granularity, ``Uniform(s)`` prunes ``round(s * G)`` of each layer's
``G`` groups and ``Global(s)`` prunes the lowest-ranked groups whose element count is closest to
``round(s * total)``; either way the sparsity is ``s`` up to one group.

>>> import torch, torch.nn as nn
>>> from prunekit.targets import select
>>> from prunekit.granularity import Element
>>> m = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
>>> ts = select(m)
>>> masks = Uniform(0.3).allocate(ts, {t.name: t.weight.abs() for t in ts}, Element())
>>> [int((~mk).sum()) for mk in masks.values()]
[30, 30]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from prunekit.errors import ConfigError, close_matches
from prunekit.granularity import Element, Granularity, check_sparsity
from prunekit.targets import Target

Scores = Mapping[str, torch.Tensor]
MaskDict = dict[str, torch.Tensor]


class Allocation:
    """Base class: ``allocate(targets, scores, granularity) -> {name: bool mask}``."""

    def allocate(self, targets: Sequence[Target], scores: Scores, granularity: Granularity) -> MaskDict:
        raise NotImplementedError

    def at(self, sparsity: float) -> Allocation:
        """The same allocation at another overall sparsity (what a schedule steps through)."""
        raise ConfigError(
            f"{type(self).__name__} has fixed per-layer ratios and cannot follow a sparsity schedule; "
            "use Uniform or Global (or WithOverrides around one of them)"
        )


def layer_mask(scores: torch.Tensor, granularity: Granularity, sparsity: float) -> torch.Tensor:
    """Mask of one layer at ``sparsity`` (within-group structures use their own ``select``)."""
    return granularity.select(scores, sparsity)


class Uniform(Allocation):
    """Every target gets the same sparsity ``s``.

    ``Uniform(None)`` takes the ratio a within-group structure implies: ``1 - n/m`` for N:M,
    the patterns' own sparsity for Pattern.
    """

    def __init__(self, sparsity: float | None) -> None:
        self.sparsity = None if sparsity is None else check_sparsity(sparsity)

    def allocate(self, targets: Sequence[Target], scores: Scores, granularity: Granularity) -> MaskDict:
        s = self.sparsity
        if s is None:
            s = getattr(granularity, "fixed_sparsity", getattr(granularity, "min_sparsity", None))
            if s is None:
                raise ConfigError(
                    f"Uniform(None) needs a fixed-ratio granularity such as NM or Pattern; got {granularity!r}"
                )
        return {t.name: layer_mask(scores[t.name], granularity, s) for t in targets}

    def at(self, sparsity: float) -> Uniform:
        return Uniform(sparsity)

    def __repr__(self) -> str:
        return f"Uniform({self.sparsity})"


class PerLayer(Allocation):
    """Explicit ratios per layer name; layers not listed get ``default`` (None = left dense).

    >>> from prunekit.targets import select
    >>> import torch.nn as nn
    >>> ts = select(nn.Sequential(nn.Linear(4, 4)))
    >>> PerLayer({"1": 0.5}).allocate(ts, {"0": ts[0].weight.abs()}, Element())
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: PerLayer names layer '1', which is not a pruning target; ...
    """

    def __init__(self, ratios: Mapping[str, float], default: float | None = None) -> None:
        self.ratios = {str(k): check_sparsity(v, f"sparsity of layer {k!r}") for k, v in ratios.items()}
        self.default = None if default is None else check_sparsity(default)

    def allocate(self, targets: Sequence[Target], scores: Scores, granularity: Granularity) -> MaskDict:
        names = [t.name for t in targets]
        for name in self.ratios:
            if name not in names:
                raise ConfigError(
                    f"PerLayer names layer {name!r}, which is not a pruning target; {close_matches(name, names)}"
                )
        out: MaskDict = {}
        for t in targets:
            s = self.ratios.get(t.name, self.default)
            if s is not None:
                out[t.name] = layer_mask(scores[t.name], granularity, s)
        return out

    def __repr__(self) -> str:
        return f"PerLayer({self.ratios}, default={self.default})"


NORMALIZATIONS = (None, "lamp", "max", "l2")


def lamp(group_scores: torch.Tensor) -> torch.Tensor:
    """LAMP normalisation (Lee et al. 2021): ``s_i / sum_{j: s_j >= s_i} s_j``.

    With ``Magnitude(p=2)`` element scores this is exactly the LAMP score of each weight.

    >>> lamp(torch.tensor([1.0, 3.0, 2.0]))
    tensor([0.1667, 1.0000, 0.4000])
    """
    flat = group_scores.reshape(-1)
    order = torch.argsort(flat)  # ascending
    sorted_scores = flat[order]
    # suffix sums: denominators for each sorted position
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_scores, [0]), 0), [0])
    out = torch.empty_like(flat)
    out[order] = sorted_scores / suffix.clamp_min(torch.finfo(flat.dtype).tiny)
    return out.reshape(group_scores.shape)


def normalize_scores(group_scores: torch.Tensor, how: str | None) -> torch.Tensor:
    """Per-layer normalisation of group scores before a global ranking."""
    if how is None:
        return group_scores
    if how == "lamp":
        return lamp(group_scores)
    tiny = torch.finfo(group_scores.dtype).tiny
    if how == "max":
        return group_scores / group_scores.max().clamp_min(tiny)
    if how == "l2":
        return group_scores / group_scores.norm().clamp_min(tiny)
    raise ConfigError(f"unknown normalize={how!r}; choose one of {NORMALIZATIONS}")


class Global(Allocation):
    """One ranking of all targets' group scores; prune the lowest until ``s`` of all weights go.

    ``min_keep`` protects the best ``ceil(min_keep * G)`` groups of every layer (at least one when
    ``min_keep > 0``), so no layer is emptied. ``normalize`` rescales each layer's group scores
    first (``"lamp"``, ``"max"``, ``"l2"``); without it, layers with large raw scores dominate.
    With a within-group structure (N:M, Pattern, LoadBalanced) the ranking runs over elements
    and yields a per-layer ratio, which each layer then meets with its own ``select``.
    """

    def __init__(self, sparsity: float, min_keep: float = 0.0, normalize: str | None = None) -> None:
        self.sparsity = check_sparsity(sparsity)
        if not 0.0 <= float(min_keep) <= 1.0:
            raise ConfigError(f"min_keep must be in [0, 1] (fraction of each layer kept), got {min_keep}")
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"unknown normalize={normalize!r}; choose one of {NORMALIZATIONS}")
        self.min_keep, self.normalize = float(min_keep), normalize

    def _keep_groups(
        self, targets: Sequence[Target], scores: Scores, granularity: Granularity
    ) -> dict[str, torch.Tensor]:
        """Global group keep decision per target, ``{name: (G,) bool}``."""
        per_layer, sizes, floors = [], [], []
        for t in targets:
            g = normalize_scores(granularity.group_scores(scores[t.name]).float(), self.normalize)  # (G,)
            if self.min_keep > 0:
                n_protect = max(1, math.ceil(self.min_keep * g.numel() - 1e-9))
                protect = torch.topk(g, min(n_protect, g.numel())).indices
                g = g.clone()
                g[protect] = float("inf")
            per_layer.append(g)
            sizes.append(granularity.group_size(t.weight.shape))
            floors.append(g.numel())
        flat = torch.cat([g.cpu() for g in per_layer])  # (sum G,)
        elem = torch.cat([torch.full((g.numel(),), s, dtype=torch.long) for g, s in zip(per_layer, sizes)])
        total = int(elem.sum())
        target = round(self.sparsity * total)
        order = torch.argsort(flat, stable=True)  # ascending: first = pruned first
        pruned_elems = torch.cumsum(elem[order], 0)  # (sum G,)
        prunable = int(torch.isfinite(flat).sum())
        # number of groups n in [0, prunable] whose element count is closest to the target
        counts = torch.cat([torch.zeros(1, dtype=torch.long), pruned_elems[:prunable]])
        n = int(torch.argmin((counts - target).abs()))
        keep_flat = torch.ones(flat.numel(), dtype=torch.bool)
        keep_flat[order[:n]] = False
        out, start = {}, 0
        for t, g in zip(targets, per_layer):
            out[t.name] = keep_flat[start : start + g.numel()].to(g.device)
            start += g.numel()
        return out

    def allocate(self, targets: Sequence[Target], scores: Scores, granularity: Granularity) -> MaskDict:
        if not granularity.within_group:
            keep = self._keep_groups(targets, scores, granularity)
            return {t.name: granularity.expand(keep[t.name], t.weight.shape) for t in targets}
        fixed = getattr(granularity, "fixed_sparsity", None)
        if fixed is not None:  # N:M: the ratio is the structure itself
            if abs(self.sparsity - fixed) > 1e-6:
                raise ConfigError(
                    f"{granularity!r} fixes sparsity at {fixed:g}, but Global({self.sparsity}) was requested; "
                    f"use Global({fixed:g}) or Uniform(None)"
                )
            return {t.name: layer_mask(scores[t.name], granularity, fixed) for t in targets}
        floor = float(getattr(granularity, "min_sparsity", 0.0))
        keep = self._keep_groups(targets, scores, Element())
        out: MaskDict = {}
        for t in targets:
            ratio = 1.0 - float(keep[t.name].float().mean())
            ratio = max(ratio, floor)
            out[t.name] = layer_mask(scores[t.name], granularity, min(ratio, 1.0 - 1e-9))
        return out

    def at(self, sparsity: float) -> Global:
        return Global(sparsity, self.min_keep, self.normalize)

    def __repr__(self) -> str:
        return f"Global({self.sparsity}, min_keep={self.min_keep}, normalize={self.normalize!r})"


class WithOverrides(Allocation):
    """Pin some layers to explicit ratios and allocate the rest with ``base``.

    >>> import torch.nn as nn
    >>> from prunekit.targets import select
    >>> ts = select(nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10)))
    >>> alloc = WithOverrides(Global(0.5), {"1": 0.1})
    >>> m = alloc.allocate(ts, {t.name: t.weight.abs() for t in ts}, Element())
    >>> int((~m["0"]).sum()), int((~m["1"]).sum())
    (50, 10)
    """

    def __init__(self, base: Allocation, ratios: Mapping[str, float]) -> None:
        self.base, self.pinned = base, PerLayer(ratios)

    def allocate(self, targets: Sequence[Target], scores: Scores, granularity: Granularity) -> MaskDict:
        out = self.pinned.allocate(targets, scores, granularity)
        rest = [t for t in targets if t.name not in out]
        if rest:
            out.update(self.base.allocate(rest, scores, granularity))
        return {t.name: out[t.name] for t in targets if t.name in out}

    def at(self, sparsity: float) -> WithOverrides:
        return WithOverrides(self.base.at(sparsity), self.pinned.ratios)

    def __repr__(self) -> str:
        return f"WithOverrides({self.base!r}, {self.pinned.ratios})"

"""Pruning granularities: which elements of a weight are removed together.

Every granularity maps element scores (same shape as the weight) to one score per *group*
(``group_scores``) and a per-group keep decision back to an element mask (``expand``). All groups
of one weight have the same number of elements (``group_size``), so counting groups counts
elements.

Regular granularities (Element, Vector, Kernel, Channel, Block) let an allocation keep any number
of groups. *Within-group* structures (NM, Pattern, LoadBalanced) constrain how many elements each
group keeps; they expose ``select(scores, sparsity) -> mask`` and allocations call it instead of
ranking groups themselves.

Layout conventions: a weight's *2-D view* is ``(shape[0], prod(shape[1:]))``, i.e. a conv's
``(Cout, Cin*kh*kw)``; N:M groups run along the input dimension (``Cin`` for convs, in the
``(Cout, kh, kw, Cin)`` order used by NVIDIA's 2:4 tooling).

>>> import torch
>>> w = torch.arange(16.0).reshape(4, 4)
>>> g = Block(2, 2)
>>> g.group_scores(w)                          # four 2x2 tiles, summed
tensor([10., 18., 42., 50.])
>>> g.expand(torch.tensor([False, True, True, True]), w.shape).int()
tensor([[0, 0, 1, 1],
        [0, 0, 1, 1],
        [1, 1, 1, 1],
        [1, 1, 1, 1]], dtype=torch.int32)
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence

import torch

from prunekit.errors import ConfigError
from prunekit.targets import Target

REDUCTIONS = ("sum", "mean", "max", "min", "l2")  # the one table: masks' groups and channel groups alike


def reduce_groups(grouped: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce ``(G, group_size)`` scores to ``(G,)`` with sum / mean / max / min / l2.

    >>> reduce_groups(torch.tensor([[1.0, 3.0], [4.0, 0.0]]), "min")
    tensor([1., 0.])
    """
    if reduction == "sum":
        return grouped.sum(dim=1)
    if reduction == "mean":
        return grouped.mean(dim=1)
    if reduction == "max":
        return grouped.amax(dim=1)
    if reduction == "min":
        return grouped.amin(dim=1)
    if reduction == "l2":
        return grouped.pow(2).sum(dim=1).sqrt()
    raise ConfigError(f"unknown group reduction {reduction!r}; choose one of {REDUCTIONS}")


def check_sparsity(sparsity: float, where: str = "sparsity") -> float:
    """Return ``float(sparsity)`` or raise ConfigError when it is outside [0, 1)."""
    s = float(sparsity)
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ConfigError(f"{where} must be in [0, 1) (0.9 = remove 90% of weights), got {sparsity}")
    return s


def _view2d(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)  # (Cout, rest)


def _keep_top(scores: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Bool mask (same shape as 1-D ``scores``) keeping the ``num_keep`` highest entries."""
    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if num_keep > 0:
        keep[torch.topk(scores, num_keep, largest=True, sorted=False).indices] = True
    return keep


class Granularity:
    """Base class; subclasses define the grouping."""

    within_group = False
    reduction = "sum"

    def check(self, target: Target) -> None:
        """Raise ConfigError when this granularity cannot be applied to ``target``."""
        if target.weight.dim() < 2 and not isinstance(self, Element):
            raise ConfigError(
                f"{self!r} does not apply to layer {target.name!r} with 1-D weight {tuple(target.shape)}; "
                "exclude it or use Element()"
            )

    def _grouped(self, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def group_scores(self, scores: torch.Tensor, reduction: str | None = None) -> torch.Tensor:
        """One score per group, ``(num_groups,)``."""
        return reduce_groups(self._grouped(scores), reduction or self.reduction)

    def expand(self, keep: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Element bool mask of ``shape`` from a ``(num_groups,)`` bool keep vector."""
        raise NotImplementedError

    def num_groups(self, shape: Sequence[int]) -> int:
        return self._grouped(torch.empty(tuple(shape), device="meta")).shape[0]

    def group_size(self, shape: Sequence[int]) -> int:
        return math.prod(shape) // self.num_groups(shape)

    def select(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        """Element mask keeping the best groups so that ``round(sparsity * num_groups)`` are pruned."""
        s = check_sparsity(sparsity)
        g = self.group_scores(scores)  # (G,)
        num_prune = round(s * g.numel())
        return self.expand(_keep_top(g, g.numel() - num_prune), scores.shape)


class Element(Granularity):
    """Fine-grained: every weight is its own group."""

    def check(self, target: Target) -> None:
        return None

    def _grouped(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.reshape(-1, 1)

    def expand(self, keep: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return keep.reshape(tuple(shape))

    def __repr__(self) -> str:
        return "Element()"


class Vector(Granularity):
    """Whole rows (``dim=0``) or whole columns (``dim=1``) of the weight's 2-D view.

    >>> Vector(dim=1).num_groups((8, 4, 3, 3))     # columns of the (8, 36) view
    36
    """

    def __init__(self, dim: int = 0, reduction: str = "sum") -> None:
        if dim not in (0, 1):
            raise ConfigError(f"Vector(dim={dim}): dim must be 0 (rows) or 1 (columns)")
        self.dim, self.reduction = dim, _check_reduction(reduction)

    def _grouped(self, scores: torch.Tensor) -> torch.Tensor:
        v = _view2d(scores)  # (rows, cols)
        return v if self.dim == 0 else v.t()

    def expand(self, keep: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        rows, cols = shape[0], math.prod(shape[1:])
        m = keep[:, None].expand(rows, cols) if self.dim == 0 else keep[None, :].expand(rows, cols)
        return m.reshape(tuple(shape)).clone()

    def __repr__(self) -> str:
        return f"Vector(dim={self.dim})"


class Kernel(Granularity):
    """A conv's whole ``kh x kw`` filter slice ``W[o, i]`` (Conv2d only)."""

    def __init__(self, reduction: str = "sum") -> None:
        self.reduction = _check_reduction(reduction)

    def check(self, target: Target) -> None:
        if target.weight.dim() != 4:
            raise ConfigError(
                f"Kernel() applies to conv layers only; {target.name!r} is a "
                f"{type(target.module).__name__} with weight {tuple(target.shape)}: exclude it "
                "(e.g. --exclude 'fc') or use Vector/Element for it"
            )

    def _grouped(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.reshape(scores.shape[0] * scores.shape[1], -1)  # (Cout*Cin, kh*kw)

    def expand(self, keep: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return keep.reshape(shape[0], shape[1], 1, 1).expand(tuple(shape)).clone()

    def __repr__(self) -> str:
        return "Kernel()"


class Channel(Granularity):
    """Output filters (``dim=0``) or input channels (``dim=1``); produces masks only.

    >>> Channel(dim=1).num_groups((8, 4, 3, 3))
    4
    """

    def __init__(self, dim: int = 0, reduction: str = "sum") -> None:
        if dim not in (0, 1):
            raise ConfigError(f"Channel(dim={dim}): dim must be 0 (output filters) or 1 (input channels)")
        self.dim, self.reduction = dim, _check_reduction(reduction)

    def _grouped(self, scores: torch.Tensor) -> torch.Tensor:
        s = scores if self.dim == 0 else scores.transpose(0, 1)
        return s.reshape(s.shape[0], -1)  # (C, rest)

    def expand(self, keep: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        view = [1] * len(shape)
        view[self.dim] = shape[self.dim]
        return keep.reshape(view).expand(tuple(shape)).clone()

    def __repr__(self) -> str:
        return f"Channel(dim={self.dim})"


class Block(Granularity):
    """``h x w`` tiles of the weight's 2-D view (both sides must divide evenly).

    >>> Block(2, 3).num_groups((4, 6))
    4
    """

    def __init__(self, h: int, w: int, reduction: str = "sum") -> None:
        if int(h) < 1 or int(w) < 1:
            raise ConfigError(f"Block({h}, {w}): block sides must be >= 1")
        self.h, self.w, self.reduction = int(h), int(w), _check_reduction(reduction)

    def check(self, target: Target) -> None:
        super().check(target)
        rows, cols = _view2d(target.weight).shape
        if rows % self.h or cols % self.w:
            raise ConfigError(
                f"Block({self.h}x{self.w}) does not tile layer {target.name!r}: its 2-D view is "
                f"{rows}x{cols} (weight {tuple(target.shape)}); pick a block dividing both sides or exclude it"
            )

    def _grouped(self, scores: torch.Tensor) -> torch.Tensor:
        v = _view2d(scores)  # (R, C)
        rows, cols = v.shape
        t = v.reshape(rows // self.h, self.h, cols // self.w, self.w).permute(0, 2, 1, 3)
        return t.reshape(-1, self.h * self.w)  # (R/h * C/w, h*w)

    def expand(self, keep: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        rows, cols = shape[0], math.prod(shape[1:])
        k = keep.reshape(rows // self.h, 1, cols // self.w, 1).expand(rows // self.h, self.h, cols // self.w, self.w)
        return k.reshape(tuple(shape)).clone()

    def __repr__(self) -> str:
        return f"Block({self.h}, {self.w})"


class NM(Granularity):
    """N:M sparsity: in every ``m`` consecutive weights along the input dimension keep ``n``.

    Sparsity is fixed at ``1 - n/m``. For convs the groups run along ``Cin`` at each kernel tap.

    >>> w = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.5, 0.1, 0.2, 0.9]])
    >>> NM(2, 4).select(w, 0.5).int()
    tensor([[1, 0, 1, 0, 1, 0, 0, 1]], dtype=torch.int32)
    """

    within_group = True

    def __init__(self, n: int, m: int) -> None:
        n, m = int(n), int(m)
        if m < 1 or n < 1:
            raise ConfigError(f"NM({n}, {m}): n and m must be >= 1")
        if n >= m:
            raise ConfigError(f"NM({n}, {m}): n must be < m (keep n of every m weights, e.g. 2:4)")
        self.n, self.m = n, m

    @property
    def fixed_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def check(self, target: Target) -> None:
        super().check(target)
        cin = target.weight.shape[1]
        if cin % self.m:
            raise ConfigError(
                f"{self.n}:{self.m} sparsity needs the input dimension of layer {target.name!r} to be "
                f"divisible by {self.m}, but it is {cin} (weight {tuple(target.shape)}); exclude this layer"
            )

    def _to_rows(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() > 2:  # (Cout, Cin, kh, kw) -> (Cout, kh, kw, Cin)
            t = t.movedim(1, -1)
        return t.reshape(-1, self.m)  # (G, m)

    def _from_rows(self, rows: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        if len(shape) > 2:
            moved = (shape[0], *shape[2:], shape[1])
            return rows.reshape(moved).movedim(-1, 1).contiguous()
        return rows.reshape(tuple(shape))

    def _grouped(self, scores: torch.Tensor) -> torch.Tensor:
        return self._to_rows(scores)

    def expand(self, keep: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return self._from_rows(keep[:, None].expand(-1, self.m), shape)

    def select(self, scores: torch.Tensor, sparsity: float | None = None) -> torch.Tensor:
        """Keep the ``n`` best of every ``m``; ``sparsity`` (if given) must equal ``1 - n/m``."""
        if sparsity is not None and abs(float(sparsity) - self.fixed_sparsity) > 1e-6:
            raise ConfigError(
                f"{self.n}:{self.m} sparsity is fixed at {self.fixed_sparsity:g}, "
                f"but sparsity {sparsity} was requested; pass {self.fixed_sparsity:g} or use another granularity"
            )
        rows = self._to_rows(scores)  # (G, m)
        idx = torch.topk(rows, self.n, dim=1).indices
        keep = torch.zeros(rows.shape, dtype=torch.bool, device=scores.device).scatter_(1, idx, True)
        return self._from_rows(keep, scores.shape)

    def __repr__(self) -> str:
        return f"NM({self.n}, {self.m})"


def _default_patterns(k: int) -> torch.Tensor:
    """Eight 4-entry 3x3 patterns around the centre (PatDNN-style)."""
    if k != 3:
        raise ConfigError(f"Pattern has a default set for 3x3 kernels only (got {k}x{k}); pass patterns=")
    c, cross = 4, [1, 3, 5, 7]  # centre and its 4 orthogonal neighbours (flat 3x3 indices)
    corner = {(1, 3): 0, (1, 5): 2, (3, 7): 6, (5, 7): 8}
    pats = [[c, *[x for x in cross if x != drop]] for drop in cross]
    pats += [[c, a, b, corner[(a, b)]] for (a, b) in corner]
    out = torch.zeros(len(pats), 9, dtype=torch.bool)
    for i, p in enumerate(pats):
        out[i, p] = True
    return out


class Pattern(Granularity):
    """Pattern-based kernel sparsity (PatDNN): each ``k x k`` kernel keeps exactly one pattern.

    ``patterns`` is a ``(P, k, k)`` (or ``(P, k*k)``) bool tensor whose rows all have the same
    number of entries; by default eight 4-entry 3x3 patterns around the centre. Each kernel
    takes the pattern covering the largest score. A requested sparsity above the pattern's own
    (``1 - entries/k^2``) removes whole kernels (connectivity pruning) with the lowest kept
    score; a sparsity below it is an error.

    >>> p = Pattern()
    >>> p.entries, p.min_sparsity == 5 / 9
    (4, True)
    >>> w = torch.rand(2, 2, 3, 3)
    >>> m = p.select(w, 5 / 9)
    >>> m.reshape(4, 9).sum(1).tolist()
    [4, 4, 4, 4]
    """

    within_group = True

    def __init__(self, patterns: torch.Tensor | None = None, kernel_size: int = 3) -> None:
        if patterns is None:
            patterns = _default_patterns(int(kernel_size))
        pats = torch.as_tensor(patterns).to(torch.bool)
        if pats.dim() == 3:
            pats = pats.reshape(pats.shape[0], -1)
        k = math.isqrt(pats.shape[-1]) if pats.dim() == 2 else 0
        if pats.dim() != 2 or pats.shape[0] < 1 or k * k != pats.shape[1]:
            raise ConfigError(f"patterns must be a (P, k, k) bool tensor, got shape {tuple(pats.shape)}")
        counts = pats.sum(1)
        if not torch.all(counts == counts[0]) or int(counts[0]) < 1:
            raise ConfigError(f"every pattern must have the same (>= 1) number of entries, got {counts.tolist()}")
        self.patterns, self.k, self.entries = pats, k, int(counts[0])

    @property
    def min_sparsity(self) -> float:
        """Sparsity when every kernel keeps its pattern and no kernel is removed."""
        return 1.0 - self.entries / (self.k * self.k)

    @classmethod
    def from_weights(
        cls, weights: torch.Tensor | Sequence[torch.Tensor], num_patterns: int = 8, entries: int = 4
    ) -> Pattern:
        """The ``num_patterns`` most frequent top-``entries`` magnitude patterns of conv kernels.

        >>> w = torch.zeros(4, 1, 3, 3); w[:, :, 1, :] = 1.0; w[:, :, 0, 0] = 0.5
        >>> Pattern.from_weights(w, num_patterns=1, entries=4).patterns.reshape(3, 3).int()
        tensor([[1, 0, 0],
                [1, 1, 1],
                [0, 0, 0]], dtype=torch.int32)
        """
        ws = [weights] if isinstance(weights, torch.Tensor) else list(weights)
        if not ws or any(w.dim() != 4 or w.shape[-1] != w.shape[-2] for w in ws):
            raise ConfigError("Pattern.from_weights needs conv weights of shape (Cout, Cin, k, k)")
        ks = {w.shape[-1] for w in ws}
        if len(ks) != 1:
            raise ConfigError(f"Pattern.from_weights: all kernels must share one size, got {sorted(ks)}")
        k = ks.pop()
        if not 1 <= entries <= k * k:
            raise ConfigError(f"entries must be in [1, {k * k}] for {k}x{k} kernels, got {entries}")
        counter: Counter[tuple[int, ...]] = Counter()
        for w in ws:
            flat = w.detach().abs().reshape(-1, k * k).cpu()  # (kernels, k*k)
            top = torch.topk(flat, entries, dim=1).indices.sort(dim=1).values
            counter.update(tuple(r) for r in top.tolist())
        chosen = [p for p, _ in counter.most_common(num_patterns)]
        # pad with unseen patterns (lexicographic) if the data has fewer distinct ones
        for combo in itertools.combinations(range(k * k), entries):
            if len(chosen) >= num_patterns:
                break
            if combo not in chosen:
                chosen.append(combo)
        pats = torch.zeros(len(chosen), k * k, dtype=torch.bool)
        for i, p in enumerate(chosen):
            pats[i, list(p)] = True
        return cls(pats)

    def check(self, target: Target) -> None:
        w = target.weight
        if w.dim() != 4 or tuple(w.shape[-2:]) != (self.k, self.k):
            raise ConfigError(
                f"Pattern({self.k}x{self.k}) applies to {self.k}x{self.k} conv kernels only; layer "
                f"{target.name!r} has weight {tuple(w.shape)}: exclude it"
            )

    def _grouped(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.reshape(-1, self.k * self.k)  # (kernels, k*k)

    def expand(self, keep: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return keep.reshape(shape[0], shape[1], 1, 1).expand(tuple(shape)).clone()

    def assign(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Best pattern index per kernel and the score it covers, both ``(kernels,)``."""
        flat = self._grouped(scores)  # (K, k*k)
        covered = flat @ self.patterns.to(flat.dtype).to(flat.device).t()  # (K, P)
        best, idx = covered.max(dim=1)
        return idx, best

    def select(self, scores: torch.Tensor, sparsity: float | None = None) -> torch.Tensor:
        """Every kernel keeps its best pattern; extra sparsity removes whole kernels."""
        s = self.min_sparsity if sparsity is None else check_sparsity(sparsity)
        if s < self.min_sparsity - 1e-6:
            raise ConfigError(
                f"Pattern with {self.entries} of {self.k * self.k} entries has sparsity "
                f"{self.min_sparsity:.3f} at least; requested {s:.3f}"
            )
        idx, best = self.assign(scores)
        kernel_mask = self.patterns.to(scores.device)[idx]  # (K, k*k)
        num_kernels = kernel_mask.shape[0]
        size = self.k * self.k
        target_zeros = s * num_kernels * size
        # each removed kernel adds `entries` zeros to the (K * (size - entries)) pattern zeros
        extra = round((target_zeros - num_kernels * (size - self.entries)) / self.entries)
        extra = min(max(extra, 0), num_kernels)
        if extra:
            kernel_mask = kernel_mask & _keep_top(best, num_kernels - extra)[:, None]
        return kernel_mask.reshape(scores.shape)

    def __repr__(self) -> str:
        return f"Pattern({self.patterns.shape[0]} patterns, {self.entries}/{self.k * self.k} entries)"


class LoadBalanced(Granularity):
    """ESE load-balance-aware pruning: rows of the 2-D view dealt round-robin to ``num_pe``
    processing elements (row ``r`` goes to PE ``r % num_pe``); every PE keeps the same number
    of nonzeros, chosen by score within that PE.

    >>> m = LoadBalanced(2).select(torch.rand(4, 8), 0.5)
    >>> [int(m[0::2].sum()), int(m[1::2].sum())]
    [8, 8]
    """

    within_group = True

    def __init__(self, num_pe: int) -> None:
        if int(num_pe) < 1:
            raise ConfigError(f"LoadBalanced(num_pe={num_pe}): need at least one processing element")
        self.num_pe = int(num_pe)

    def check(self, target: Target) -> None:
        super().check(target)
        if target.weight.shape[0] < self.num_pe:
            raise ConfigError(
                f"LoadBalanced({self.num_pe}) needs at least {self.num_pe} rows, layer {target.name!r} "
                f"has {target.weight.shape[0]} (weight {tuple(target.shape)})"
            )

    def _grouped(self, scores: torch.Tensor) -> torch.Tensor:
        return _view2d(scores)  # rows are the scheduling unit

    def expand(self, keep: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return Vector(0).expand(keep, shape)

    def select(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        """Each PE keeps ``round((1 - sparsity) * numel / num_pe)`` elements (capped by its size)."""
        s = check_sparsity(sparsity)
        v = _view2d(scores)  # (R, C)
        mask = torch.zeros(v.shape, dtype=torch.bool, device=v.device)
        rows, cols = v.shape
        smallest = (rows // self.num_pe) * cols
        per_pe = min(round((1.0 - s) * v.numel() / self.num_pe), smallest)
        for pe in range(self.num_pe):
            part = v[pe :: self.num_pe].reshape(-1)  # this PE's rows, flattened
            mask[pe :: self.num_pe] = _keep_top(part, per_pe).reshape(-1, cols)
        return mask.reshape(scores.shape)

    def __repr__(self) -> str:
        return f"LoadBalanced(num_pe={self.num_pe})"


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown group reduction {reduction!r}; choose one of {REDUCTIONS}")
    return reduction


def parse(spec: str) -> Granularity:
    """Build a granularity from a CLI string.

    >>> parse("nm:2:4"), parse("block:4x1"), parse("channel")
    (NM(2, 4), Block(4, 1), Channel(dim=0))
    """
    parts = spec.strip().lower().split(":")
    name, rest = parts[0], parts[1:]
    try:
        if name == "element" and not rest:
            return Element()
        if name == "vector":
            return Vector(int(rest[0]) if rest else 0)
        if name == "kernel" and not rest:
            return Kernel()
        if name == "channel":
            return Channel(int(rest[0]) if rest else 0)
        if name == "block" and len(rest) == 1:
            h, w = rest[0].split("x")
            return Block(int(h), int(w))
        if name == "nm" and len(rest) == 2:
            return NM(int(rest[0]), int(rest[1]))
        if name == "pattern" and not rest:
            return Pattern()
        if name in ("loadbalanced", "lb") and len(rest) == 1:
            return LoadBalanced(int(rest[0]))
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
    raise ConfigError(
        f"cannot parse granularity {spec!r}; use element, vector[:DIM], kernel, channel[:DIM], "
        "block:HxW, nm:N:M, pattern or lb:NUM_PE"
    )


__all__ = [
    "Block", "Channel", "Element", "Granularity", "Kernel", "LoadBalanced", "NM", "Pattern", "Vector",
    "check_sparsity", "parse", "reduce_groups",
]

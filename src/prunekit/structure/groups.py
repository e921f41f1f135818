"""Coupled channel units and groups, and the union-find that builds them.

A *slot* is one index along one *axis*. Axes are either module axes (``AxisRef("conv1", "out")``:
the output channels of ``conv1``) or value axes of the traced graph (dim ``d`` of a node's output).
Slots that must be removed together are unioned; each connected component that touches at least
one module axis is a :class:`Unit` (one prunable "channel"), and units sharing module axes form a
:class:`Group` (e.g. every layer tied together by residual additions).

>>> uf = UnionFind(4)
>>> uf.union(0, 2); uf.union(2, 3)
>>> uf.find(3) == uf.find(0), uf.find(1) == uf.find(0)
(True, False)
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, order=True)
class AxisRef:
    """One prunable axis of one module: ``module`` path and ``axis`` name (``"in"``, ``"out"``, ...)."""

    module: str
    axis: str

    def __str__(self) -> str:
        return f"{self.module}:{self.axis}"


@dataclass
class Unit:
    """One removable channel: the index set it owns on every module axis it touches.

    ``pinned`` is ``None`` for a prunable unit, else the reason it must stay (model input/output,
    a LayerNorm over it, ...).
    """

    index: int
    slots: dict[AxisRef, tuple[int, ...]]
    pinned: str | None = None
    group: int = -1

    @property
    def prunable(self) -> bool:
        return self.pinned is None

    def __repr__(self) -> str:
        parts = ", ".join(f"{a}{list(ix)[:4]}{'...' if len(ix) > 4 else ''}" for a, ix in self.slots.items())
        state = "" if self.pinned is None else f", pinned={self.pinned!r}"
        return f"Unit({self.index}: {parts}{state})"


@dataclass
class Group:
    """Module axes coupled through shared units, and those units (by index)."""

    index: int
    axes: list[AxisRef]
    units: list[int] = field(default_factory=list)

    def __repr__(self) -> str:
        names = ", ".join(str(a) for a in self.axes[:6]) + (", ..." if len(self.axes) > 6 else "")
        return f"Group({self.index}: {len(self.units)} units over [{names}])"


class UnionFind:
    """Disjoint sets over ``0..n-1`` that can grow (path halving, union by size)."""

    def __init__(self, n: int = 0) -> None:
        self.parent: list[int] = list(range(n))
        self.size: list[int] = [1] * n

    def grow(self, n: int) -> int:
        """Add ``n`` singleton elements; return the first new id."""
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.size.extend([1] * n)
        return start

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def union_many(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union ``a[i]`` with ``b[i]`` for every ``i`` (equal-length integer arrays)."""
        for x, y in zip(a.tolist(), b.tolist()):
            self.union(x, y)


class SlotSpace:
    """Maps axis keys (any hashable) to contiguous ranges of slot ids in a :class:`UnionFind`."""

    def __init__(self) -> None:
        self.uf = UnionFind()
        self.ranges: dict[Hashable, tuple[int, int]] = {}

    def axis(self, key: Hashable, size: int) -> int:
        """Offset of ``key``'s slots, allocating ``size`` slots on first use."""
        hit = self.ranges.get(key)
        if hit is None:
            offset = self.uf.grow(int(size))
            self.ranges[key] = (offset, int(size))
            return offset
        if hit[1] != size:
            raise AssertionError(f"axis {key!r} seen with sizes {hit[1]} and {size}")
        return hit[0]

    def has(self, key: Hashable) -> bool:
        return key in self.ranges

    def link(self, key_a: Hashable, idx_a: np.ndarray, key_b: Hashable, idx_b: np.ndarray) -> None:
        """Union slot ``idx_a[i]`` of ``key_a`` with slot ``idx_b[i]`` of ``key_b``."""
        oa, ob = self.ranges[key_a][0], self.ranges[key_b][0]
        self.uf.union_many(np.asarray(idx_a, dtype=np.int64) + oa, np.asarray(idx_b, dtype=np.int64) + ob)

    def roots(self, key: Hashable) -> list[int]:
        offset, size = self.ranges[key]
        return [self.uf.find(offset + i) for i in range(size)]

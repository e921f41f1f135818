"""Sparse vs dense timing of one Linear shape over batch sizes, sparsities and kernels.

For each sparsity a random weight gets exactly that fraction of zeros (random positions); for
each batch size and kernel, the dense ``nn.Linear`` and that kernel's ``SparseLinear`` are timed
on the same input with their repeats interleaved in pairs (``prunekit.metrics.compare_latency``),
so each ratio comes from one measurement and no third kernel runs in between (a slow one would
evict the caches both depend on). Next to each ratio stands its memory-traffic bound: the bytes
the sparse kernel must read (values + its actual index arrays) over the dense weight's bytes --
the time ratio a purely bandwidth-bound kernel would reach.

Two cache regimes: ``cold=False`` (warm) calls each layer with whatever stayed in the caches
from its previous call -- on a CPU whose last-level cache holds the weight (this repository's
2-core Xeon has 300 MB of L3) that is an in-cache measurement; ``cold=True`` evicts the caches
before every timed call (:class:`prunekit.metrics.latency.CacheFlusher`), so both sides stream
the weight from DRAM, as the layers of a network larger than the cache do.

>>> rows = bench_linear((8, 16), [1], [0.5], ["torch_csr"], repeats=2, warmup=0, threads=1)
>>> [(r.kernel, r.batch_size, r.sparsity) for r in rows]
[('torch_csr', 1, 0.5)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.metrics.latency import CacheFlusher, compare_latency, num_threads
from prunekit.sparse.kernels import available_kernels
from prunekit.sparse.modules import SparseLinear


@dataclass(frozen=True)
class BenchRow:
    """One (kernel, batch size, sparsity) measurement; times are medians in seconds."""

    kernel: str
    batch_size: int
    sparsity: float
    dense_s: float
    sparse_s: float
    dense_bytes: int
    sparse_bytes: int
    index_dtype: str
    threads: int
    cold: bool = False  # caches flushed before every timed call

    @property
    def ratio(self) -> float:
        """sparse time / dense time (< 1: sparse is faster)."""
        return self.sparse_s / self.dense_s

    @property
    def traffic_bound(self) -> float:
        """sparse bytes / dense bytes: the time ratio if both were purely bandwidth-bound."""
        return self.sparse_bytes / self.dense_bytes


def pruned_weight(out_features: int, in_features: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    """A random (out, in) fp32 weight with exactly round(sparsity * numel) zeros at random places.

    >>> int((pruned_weight(4, 5, 0.5) == 0).sum())
    10
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=g)
    weight = weight + weight.sign() * 1e-3  # no accidental zeros
    drop = torch.randperm(weight.numel(), generator=g)[: round(sparsity * weight.numel())]
    weight.view(-1)[drop] = 0.0
    return weight


def bench_linear(
    shape: tuple[int, int],
    batch_sizes: Sequence[int],
    sparsities: Sequence[float],
    kernels: Sequence[str] | None = None,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    seed: int = 0,
    cold: bool = False,
) -> list[BenchRow]:
    """Time an (out, in) = ``shape`` fp32 Linear, dense vs each kernel; one row per combination.

    ``cold``: flush the caches before every timed call (see the module docstring)."""
    here = [k for k in available_kernels() if k != "dense"]
    kernels = list(here if kernels is None else kernels)
    for k in kernels:
        if k not in here:
            raise ConfigError(f"kernel {k!r} is not available here; choose from {', '.join(here)}")
    out_features, in_features = shape
    rows: list[BenchRow] = []
    flush = CacheFlusher() if cold else None
    with num_threads(threads) as used:
        for sparsity in sparsities:
            dense = nn.Linear(in_features, out_features, bias=False).eval()
            with torch.no_grad():
                dense.weight.copy_(pruned_weight(out_features, in_features, sparsity, seed))
            dense_bytes = dense.weight.numel() * dense.weight.element_size()
            sparse = {k: SparseLinear.from_dense(dense, kernel=k).eval() for k in kernels}
            for batch in batch_sizes:
                x = torch.randn(batch, in_features, generator=torch.Generator().manual_seed(seed + batch))
                for k, module in sparse.items():
                    times = compare_latency({"dense": dense, k: module}, x, warmup, repeats, before_each=flush)
                    rows.append(BenchRow(kernel=k, batch_size=batch, sparsity=sparsity,
                                         dense_s=times["dense"].median_s, sparse_s=times[k].median_s,
                                         dense_bytes=dense_bytes, sparse_bytes=module.packed_nbytes(),
                                         index_dtype=str(module.col_indices.dtype).replace("torch.", ""),
                                         threads=used, cold=cold))
    return rows


def crossover(rows: Sequence[BenchRow], kernel: str, batch_size: int) -> float | None:
    """Lowest measured sparsity from which ``kernel`` beats dense at every higher sparsity measured."""
    mine = sorted((r for r in rows if r.kernel == kernel and r.batch_size == batch_size), key=lambda r: r.sparsity)
    best = None
    for r in reversed(mine):
        if r.ratio >= 1.0:
            break
        best = r.sparsity
    return best


def format_bench(rows: Sequence[BenchRow]) -> str:
    """Markdown: one table per batch size (sparse/dense time ratio, traffic bound) and crossovers."""
    lines: list[str] = []
    kernels = list(dict.fromkeys(r.kernel for r in rows))
    for batch in dict.fromkeys(r.batch_size for r in rows):
        mine = [r for r in rows if r.batch_size == batch]
        regime = "cold caches" if mine[0].cold else "warm caches"
        lines.append(f"batch {batch} (threads {mine[0].threads}, {regime}); cells: sparse/dense time "
                     "(traffic bound = sparse bytes / dense bytes, index dtype); dense ms: that pairing's dense median")
        lines.append("| sparsity | dense ms | " + " | ".join(kernels) + " |")
        lines.append("|---|---|" + "---|" * len(kernels))
        for sparsity in dict.fromkeys(r.sparsity for r in mine):
            cells = {r.kernel: r for r in mine if r.sparsity == sparsity}
            dense_ms = "/".join(f"{r.dense_s * 1e3:.3f}" for r in cells.values())
            lines.append(f"| {sparsity:.0%} | {dense_ms} | " + " | ".join(
                f"{cells[k].ratio:.3f} ({cells[k].traffic_bound:.3f}, {cells[k].index_dtype})" if k in cells else "-"
                for k in kernels) + " |")
        cross = ", ".join(f"{k}: {_pct(crossover(rows, k, batch))}" for k in kernels)
        lines.append(f"\ncrossover sparsity (sparse faster from here up): {cross}\n")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "none measured" if value is None else f"{value:.0%}"


__all__ = ["BenchRow", "bench_linear", "crossover", "format_bench", "pruned_weight"]

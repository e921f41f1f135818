"""Sparse vs dense timing of one Linear shape over batch sizes, sparsities and kernels.

For each sparsity a random weight gets exactly that fraction of zeros (random positions); for
each batch size and kernel, the dense ``nn.Linear`` and that kernel's ``SparseLinear`` are timed
on the same input with their repeats interleaved in pairs (``prunekit.metrics.compare_latency``),
so each ratio comes from one measurement and no third kernel runs in between (a slow one would
evict the caches both depend on). Next to each ratio stands its memory-traffic bound: the bytes
the sparse kernel must read (values + its actual index arrays) over the dense weight's bytes --
the time ratio a purely bandwidth-bound kernel would reach.

Cache regimes (``regime=``):

* ``"warm"``: each call finds whatever its previous call left in the caches -- on a CPU whose
  last-level cache holds the weight (this repository's 2-core Xeon has 300 MB of L3) that is
  largely an in-cache measurement;
* ``"evicted"``: the weights and the input of both layers are flushed from every cache level
  before each timed call (:class:`prunekit.sparse.kernels.evict.TensorEvictor`, x86 + numba),
  so they stream from DRAM while the code path stays warm -- one layer of a network larger
  than the cache;
* ``"flushed"``: the whole cache is flushed before each timed call
  (:class:`prunekit.metrics.latency.CacheFlusher`): weights *and* the interpreter start cold,
  which adds the same ~0.2 ms to both sides on this machine.

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
from prunekit.sparse.kernels.evict import TensorEvictor, evict_available
from prunekit.sparse.modules import SparseLinear

REGIMES: tuple[str, ...] = ("warm", "evicted", "flushed")


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
    regime: str = "warm"  # see REGIMES
    input_zeros: float = 0.0  # fraction of the input set to zero

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
    regime: str = "warm",
    input_zeros: float = 0.0,
) -> list[BenchRow]:
    """Time an (out, in) = ``shape`` fp32 Linear, dense vs each kernel; one row per combination.

    ``regime``: "warm", "evicted" or "flushed" (see the module docstring). ``input_zeros``: the
    fraction of the input set to zero at random places (activation sparsity, as after a ReLU)."""
    if not 0.0 <= input_zeros <= 1.0:
        raise ConfigError(f"input_zeros must be in [0, 1], got {input_zeros}")
    if regime not in REGIMES:
        raise ConfigError(f"unknown cache regime {regime!r}; choose one of {', '.join(REGIMES)}")
    if regime == "evicted" and not evict_available():
        raise ConfigError("regime 'evicted' needs numba and an x86-64 CPU; use regime='flushed'")
    here = [k for k in available_kernels() if k != "dense"]
    kernels = list(here if kernels is None else kernels)
    for k in kernels:
        if k not in here:
            raise ConfigError(f"kernel {k!r} is not available here; choose from {', '.join(here)}")
    out_features, in_features = shape
    rows: list[BenchRow] = []
    flush = CacheFlusher() if regime == "flushed" else None
    with num_threads(threads) as used:
        for sparsity in sparsities:
            dense = nn.Linear(in_features, out_features, bias=False).eval()
            with torch.no_grad():
                dense.weight.copy_(pruned_weight(out_features, in_features, sparsity, seed))
            dense_bytes = dense.weight.numel() * dense.weight.element_size()
            sparse = {k: SparseLinear.from_dense(dense, kernel=k).eval() for k in kernels}
            for batch in batch_sizes:
                g = torch.Generator().manual_seed(seed + batch)
                x = torch.randn(batch, in_features, generator=g)  # (B, K)
                x[torch.rand(x.shape, generator=g) < input_zeros] = 0.0
                for k, module in sparse.items():
                    before = flush
                    if regime == "evicted":
                        before = TensorEvictor([*dense.parameters(), *module.buffers(), x])
                    times = compare_latency({"dense": dense, k: module}, x, warmup, repeats, before_each=before)
                    rows.append(BenchRow(kernel=k, batch_size=batch, sparsity=sparsity,
                                         dense_s=times["dense"].median_s, sparse_s=times[k].median_s,
                                         dense_bytes=dense_bytes, sparse_bytes=module.packed_nbytes(),
                                         index_dtype=module.index_dtype_name,
                                         threads=used, regime=regime, input_zeros=input_zeros))
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
        lines.append(f"batch {batch} (threads {mine[0].threads}, {mine[0].regime} caches); cells: sparse/dense time "
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


__all__ = ["REGIMES", "BenchRow", "bench_linear", "crossover", "format_bench", "pruned_weight"]

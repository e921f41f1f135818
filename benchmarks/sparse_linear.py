"""Sparse vs dense on this CPU: a 4096x4096 fp32 Linear, and two pruned models after ``deploy``.

Writes benchmarks/results/sparse.md (``--headline-only``: sparse_headline.md). Every ratio is measured within one run: each kernel's repeats
are interleaved with dense's (``prunekit.metrics.compare_latency``, one kernel at a time) and
medians are compared. Three cache regimes (``prunekit.sparse.bench``): warm (each call finds what its
previous call left in the caches), evicted (both layers' weights and the input are flushed from
the caches before every timed call: they stream from DRAM) and flushed (the whole cache is flushed
before every timed call, the interpreter's data included).

    python benchmarks/sparse_linear.py                       # full run (~35 min on the 2-core box)
    python benchmarks/sparse_linear.py --quick               # small smoke run
    python benchmarks/sparse_linear.py --headline-only       # the goal cell only (~9 min)
    GOMP_SPINCOUNT=10000 python benchmarks/sparse_linear.py --headline-only \
        --out benchmarks/results/sparse_headline_spincount.md   # the goal cell only, other env
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.allocation import Uniform
from prunekit.granularity import Element
from prunekit.importance import Magnitude
from prunekit.io import atomic_write_text
from prunekit.metrics.latency import last_level_cache_bytes
from prunekit.models import create, load_pretrained
from prunekit.pruning import prune
from prunekit.sparse import available_kernels, deploy
from prunekit.sparse.bench import REGIMES, bench_linear, format_bench
from prunekit.sparse.kernels.evict import evict_available
from prunekit.targets import select

RESULTS = Path(__file__).parent / "results" / "sparse.md"
HEADLINE = RESULTS.with_name("sparse_headline.md")  # --headline-only's default, so it never replaces the full run
# The kernels this script's recorded run compared (numba_csc, the zero-skipping kernel added later,
# has its own benchmark: activation_sparsity.py).
KERNELS = ["torch_csr", "torch_bsr", "numba_csr", "numba_packet"]
OMP_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NUMBA_THREADING_LAYER")
PRETRAINED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pretrained" / "resnet20-12fca82f.th"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def openmp_runtimes() -> str:
    """The OpenMP runtime libraries loaded in this process (Linux). Loaded is not used: numba's omp
    layer loads the system libgomp but its calls bind to torch's (``LD_DEBUG=bindings``)."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return "n/a"
    names = ("libgomp", "libiomp", "libomp")
    libs = sorted({line.split()[-1] for line in maps if line.rsplit("/", 1)[-1].startswith(names)})
    return ", ".join(libs) or "none"


def pruned_models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """LeNet-300-100 and ResNet-20 (pretrained weights if present), 90 % magnitude-pruned per layer."""
    lenet = create("lenet300_100").eval()
    resnet = create("resnet20")
    if PRETRAINED.is_file():
        resnet = load_pretrained(resnet, PRETRAINED)
    resnet.eval()
    for model in (lenet, resnet):
        prune(model, select(model), Magnitude(p=1), Element(), Uniform(0.9), enforce=False)
    return {"lenet300_100": (lenet, torch.randn(1, 1, 28, 28)), "resnet20": (resnet, torch.randn(1, 3, 32, 32))}


def regimes() -> list[str]:
    """The cache regimes this machine can run (``evicted`` needs numba and x86-64)."""
    return [r for r in REGIMES if r != "evicted" or evict_available()]


def headline(shape: tuple[int, int], rounds: int, repeats: int) -> str:
    """Batch 1, 90 %: the issue's goal cell, measured in ``rounds`` independent rounds per regime.

    Each round is one ``bench_linear`` pairing (dense interleaved with the kernel). Rounds show
    how far the ratio moves on this shared machine, mostly with dense's own time (how much of
    its 67 MB survives in the 300 MB L3 between calls).
    """
    lines = ["| regime | threads | kernel | dense ms per round | sparse ms per round | ratio per round "
             "| median ratio | bound |", "|---|---:|---|---|---|---|---:|---:|"]
    for regime in regimes():
        for threads in (1, 2):
            for kernel in ("numba_packet", "numba_csr", "torch_csr"):
                if kernel not in available_kernels():
                    continue
                rows = [bench_linear(shape, [1], [0.9], [kernel], repeats=repeats, warmup=3, threads=threads,
                                     regime=regime)[0] for _ in range(rounds)]
                ratios = [r.ratio for r in rows]
                lines.append(
                    f"| {regime} | {threads} | {kernel} "
                    f"| {' / '.join(f'{r.dense_s * 1e3:.2f}' for r in rows)} "
                    f"| {' / '.join(f'{r.sparse_s * 1e3:.3f}' for r in rows)} "
                    f"| {' / '.join(f'{x:.3f}' for x in ratios)} | **{statistics.median(ratios):.3f}** "
                    f"| {rows[0].traffic_bound:.3f} |")
                print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke test)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5, help="independent rounds of the batch-1, 90 %% cell")
    parser.add_argument("--out", type=Path, help=f"default {RESULTS.name}, or {HEADLINE.name} with --headline-only")
    parser.add_argument("--headline-only", action="store_true",
                        help="only the batch-1, 90 %% goal cell (e.g. to repeat it under other OpenMP settings)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = HEADLINE if args.headline_only else RESULTS
    shape = (512, 512) if args.quick else (4096, 4096)
    batches = [1, 16, 128]
    sparsities = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
    repeats = 3 if args.quick else args.repeats
    torch.manual_seed(0)
    started, load_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load_average()

    parts = [f"# Sparse vs dense on this CPU\n\nCommand: `python benchmarks/{Path(__file__).name}"
             f"{' --quick' if args.quick else ''}{' --headline-only' if args.headline_only else ''}` "
             f"(started {started}).\n",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}, torch {torch.__version__}, kernels here: "
             f"{', '.join(available_kernels())}.\n",
             "OpenMP settings: " + ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in OMP_ENV)
             + " (the OpenMP runtimes loaded are listed at the end).\n",
             f"Load average at start: {load_start} (on {os.cpu_count()} cores). Every ratio below compares "
             f"medians of {repeats} repeats interleaved with dense in the same run, never numbers from "
             "different runs.\n",
             f"Cache regimes: *warm* = each call finds what its previous call left in the caches (this CPU's "
             f"last-level cache is {last_level_cache_bytes() / 2**20:.0f} MiB, so a 67 MB dense weight can stay "
             "in it, partly: other tenants share it); *evicted* = before every timed call both layers' weights "
             "and the input are flushed from all cache levels (x86 `clflush`), so they stream from DRAM while "
             "the code path stays warm, as for one layer of a network larger than the cache; *flushed* = a "
             "buffer of twice the last-level cache is written before every timed call, which also evicts the "
             "interpreter's data and adds ~0.2 ms to every call, dense or sparse.\n"]
    rounds, round_repeats = (2, 3) if args.quick else (args.rounds, max(repeats, 30))
    parts.append(f"## The goal cell: batch 1, 90 % sparse, {rounds} independent rounds of {round_repeats} "
                 "paired repeats\n")
    parts.append(headline(shape, rounds, round_repeats))
    for regime in ([] if args.headline_only else regimes()):
        for threads in (1, 2):
            rows = bench_linear(shape, batches, sparsities, [k for k in KERNELS if k in available_kernels()],
                                repeats=repeats, warmup=3, threads=threads, regime=regime)
            parts.append(f"## Linear {shape[1]} -> {shape[0]}, fp32, {regime} caches, "
                         f"threads {threads}\n")
            parts.append(format_bench(rows))
            print(parts[-1], flush=True)
    for name, (model, x) in ({} if args.headline_only else pruned_models()).items():
        for threads in (2, 1):
            _, report = deploy(model, x, candidates=[k for k in KERNELS if k in available_kernels()],
                               repeats=repeats, threads=threads)
            parts.append(f"## {name}, 90 % magnitude-pruned per layer, `deploy` at batch 1, threads {threads}\n")
            parts.append(report.table() + "\n")
            print(parts[-1], flush=True)
    parts.append(f"Finished {time.strftime('%H:%M UTC', time.gmtime())}, load average at the end "
                 f"{load_average()}. OpenMP runtimes loaded: {openmp_runtimes()}.\n")
    atomic_write_text(args.out, "\n".join(parts))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

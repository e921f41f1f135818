"""Sparse vs dense on this CPU: a 4096x4096 fp32 Linear, and two pruned models after ``deploy``.

Writes benchmarks/results/sparse.md. Every ratio is measured within one run: dense and sparse
repeats are interleaved (``prunekit.metrics.compare_latency``) and medians are compared.

    python benchmarks/sparse_linear.py                       # full run (~10-20 min on a busy 2-core box)
    python benchmarks/sparse_linear.py --quick               # small smoke run
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
from prunekit.metrics.latency import num_threads
from prunekit.models import create, load_pretrained
from prunekit.pruning import prune
from prunekit.sparse import available_kernels, deploy
from prunekit.sparse.bench import bench_linear, format_bench, pruned_weight
from prunekit.sparse.modules import SparseLinear
from prunekit.targets import select

RESULTS = Path(__file__).parent / "results" / "sparse.md"
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


def cpu_time_ratios(shape: tuple[int, int], sparsities: list[float], repeats: int) -> list[str]:
    """Batch 1, threads 1: per-call *thread CPU time* (time.thread_time), interleaved, medians.

    CPU time leaves out the time this process waits for a core, so on a shared machine it shows
    what the kernels cost more steadily than wall time (it still sees cache/bandwidth contention).
    """
    lines = ["| sparsity | dense ms (CPU) | " + " | ".join(k for k in available_kernels() if k != "dense") + " |",
             "|---|---|" + "---|" * (len(available_kernels()) - 1)]
    out_f, in_f = shape
    x = torch.randn(1, in_f)
    with num_threads(1), torch.no_grad():
        for s in sparsities:
            dense = nn.Linear(in_f, out_f, bias=False).eval()
            dense.weight.copy_(pruned_weight(out_f, in_f, s))
            mods = {"dense": dense, **{k: SparseLinear.from_dense(dense, k) for k in available_kernels()
                                       if k != "dense"}}
            times: dict[str, list[float]] = {k: [] for k in mods}
            for m in mods.values():
                m(x)
                m(x)
            for r in range(repeats):
                names = list(mods)
                for i in range(len(names)):
                    k = names[(r + i) % len(names)]
                    t0 = time.thread_time()
                    mods[k](x)
                    times[k].append(time.thread_time() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            lines.append(f"| {s:.0%} | {med['dense'] * 1e3:.3f} | " + " | ".join(
                f"{med[k] / med['dense']:.3f}" for k in mods if k != "dense") + " |")
    return lines


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke test)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    shape = (512, 512) if args.quick else (4096, 4096)
    batches = [1, 16, 128]
    sparsities = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
    repeats = 3 if args.quick else args.repeats
    torch.manual_seed(0)
    started, load_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load_average()

    parts = [f"# Sparse vs dense on this CPU\n\nCommand: `python benchmarks/{Path(__file__).name}"
             f"{' --quick' if args.quick else ''}` (started {started}).\n",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}, torch {torch.__version__}, kernels here: "
             f"{', '.join(available_kernels())}.\n",
             "**The machine was shared with other agents' jobs while this ran (load average at start "
             f"{load_start}, on 2 cores), so wall times are noisy**: every ratio below compares medians of "
             f"{repeats} interleaved repeats from the same run, never numbers from different runs.\n"]
    for threads in (2, 1):
        rows = bench_linear(shape, batches, sparsities, repeats=repeats, warmup=3, threads=threads)
        parts.append(f"## Linear {shape[1]} -> {shape[0]}, fp32, wall time, threads {threads}\n")
        parts.append(format_bench(rows))
        print(parts[-1], flush=True)
    parts.append(f"## Linear {shape[1]} -> {shape[0]}, batch 1, threads 1, thread CPU time\n")
    parts.append("Same comparison timed with `time.thread_time()` (CPU time of the calling thread, which "
                 "does all the work at threads=1): waiting for a core is left out.\n")
    parts.append("\n".join(cpu_time_ratios(shape, sparsities, max(repeats, 10))) + "\n")
    print(parts[-1], flush=True)
    for name, (model, x) in pruned_models().items():
        for threads in (2, 1):
            _, report = deploy(model, x, repeats=repeats, threads=threads)
            parts.append(f"## {name}, 90 % magnitude-pruned per layer, `deploy` at batch 1, threads {threads}\n")
            parts.append(report.table() + "\n")
            print(parts[-1], flush=True)
    parts.append(f"Finished {time.strftime('%H:%M UTC', time.gmtime())}, load average at the end "
                 f"{load_average()}.\n")
    atomic_write_text(args.out, "\n".join(parts))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

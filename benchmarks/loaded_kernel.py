"""A 90 %-sparse 4096x4096 batch-1 Linear at 2 threads, quiet and beside a competing CPU-bound process.

Sparse and dense are timed interleaved in the same process (``prunekit.metrics.compare_latency``),
so each ratio has its dense baseline from the same moment. Cases, in this order, each over
``--rounds`` rounds of ``--repeats`` paired calls (a cell is the median of the round ratios):

* quiet: nothing else of ours running;
* loaded: one ``while True: pass`` process started for the case (one of the two cores taken);
* loaded, parallel forced: the same, with the kernel's ``ThreadPolicy`` switched off, i.e. what the
  2-thread loop did before it (every call waits for a worker the busy core may not run for a slice).

    python benchmarks/loaded_kernel.py          # ~2 min; writes benchmarks/results/loaded_kernel.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.io import atomic_write_text
from prunekit.metrics import compare_latency
from prunekit.sparse import SparseLinear
from prunekit.sparse.kernels import numba_csr

OUT = Path(__file__).parent / "results" / "loaded_kernel.md"


def _layer(sparsity: float) -> nn.Linear:
    torch.manual_seed(0)
    dense = nn.Linear(4096, 4096)
    with torch.no_grad():
        dense.weight.mul_(torch.rand_like(dense.weight) >= sparsity)
    return dense.eval()


def _rounds(dense: nn.Module, sparse: nn.Module, x: torch.Tensor, rounds: int, repeats: int) -> list[tuple]:
    out = []
    for _ in range(rounds):
        res = compare_latency({"dense": dense, "sparse": sparse}, x, warmup=5, repeats=repeats, threads=2)
        out.append((res["dense"].median_s, res["sparse"].median_s))
    return out


def _busy() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(1.0)  # let it settle on a core
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", default="numba_packet,numba_csr")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    if not numba_csr.AVAILABLE:
        sys.exit("needs numba: pip install numba")
    torch.set_num_threads(2)
    dense = _layer(args.sparsity)
    x = torch.randn(1, 4096)
    rows = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for kernel in args.kernels.split(","):
        sparse = SparseLinear.from_dense(dense, kernel=kernel).eval()
        for case in ("quiet", "loaded", "loaded, parallel forced"):
            proc = _busy() if case != "quiet" else None
            original = numba_csr.ThreadPolicy.run
            if case == "loaded, parallel forced":
                numba_csr.ThreadPolicy.run = lambda self, threads, parallel, serial: (  # type: ignore[method-assign]
                    parallel() if threads > 1 else serial())
            try:
                res = _rounds(dense, sparse, x, args.rounds, args.repeats)
            finally:
                numba_csr.ThreadPolicy.run = original  # type: ignore[method-assign]
                if proc is not None:
                    proc.kill()
                    proc.wait()
            ratios = [s / d for d, s in res]
            rows.append((kernel, case, statistics.median(d for d, _ in res) * 1e3,
                         statistics.median(s for _, s in res) * 1e3, statistics.median(ratios), min(ratios), max(ratios)))
            print(f"{kernel:13s} {case:24s} dense {rows[-1][2]:.3f} ms  sparse {rows[-1][3]:.3f} ms  "
                  f"ratio {rows[-1][4]:.3f} ({rows[-1][5]:.3f}-{rows[-1][6]:.3f})", flush=True)
    lines = [
        "# Sparse kernel at 2 threads, quiet and loaded",
        "",
        f"`python benchmarks/loaded_kernel.py` ({started}; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, fast loops: {numba_csr.FAST_STATUS.get('kind')}). 4096x4096 fp32 Linear, "
        f"{args.sparsity:.0%} random zeros, batch 1, 2 torch / numba threads. Each cell: median over {args.rounds} "
        f"rounds of {args.repeats} calls interleaved with dense in the same process; ratio = sparse / dense "
        "(range over the rounds). 'loaded': one CPU-bound `while True: pass` process runs during the case.",
        "",
        "| kernel | case | dense ms | sparse ms | sparse / dense | range |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for kernel, case, d, s, r, lo, hi in rows:
        lines.append(f"| {kernel} | {case} | {d:.3f} | {s:.3f} | **{r:.3f}** | {lo:.3f}-{hi:.3f} |")
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

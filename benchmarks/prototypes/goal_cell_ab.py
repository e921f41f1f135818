"""The goal-cell layer (90 %-sparse 4096x4096, batch 1) against dense at 1 and 2 threads, for the prunekit
source tree given (to compare two versions back to back): 5 rounds of 30 paired calls, median ratio.

    python benchmarks/prototypes/goal_cell_ab.py /path/to/old/checkout && python benchmarks/prototypes/goal_cell_ab.py .
"""

from __future__ import annotations

import importlib
import statistics
import sys


def main(source: str) -> None:
    sys.path.insert(0, f"{source}/src")  # the prunekit to measure, ahead of the installed one
    import torch
    from torch import nn

    prunekit = importlib.import_module("prunekit")
    from prunekit.metrics import compare_latency
    from prunekit.sparse import SparseLinear

    torch.manual_seed(0)
    dense = nn.Linear(4096, 4096)
    with torch.no_grad():
        dense.weight.mul_(torch.rand_like(dense.weight) >= 0.9)
    dense.eval()
    x = torch.randn(1, 4096)
    print(prunekit.__file__)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for kernel in ("numba_packet", "numba_csr"):
            sparse = SparseLinear.from_dense(dense, kernel=kernel).eval()
            ratios = []
            for _ in range(5):
                out = compare_latency({"dense": dense, "sparse": sparse}, x, warmup=5, repeats=30, threads=threads)
                ratios.append(out["sparse"].median_s / out["dense"].median_s)
            print(threads, kernel, round(statistics.median(ratios), 3), round(out["dense"].median_s * 1e3, 3))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")

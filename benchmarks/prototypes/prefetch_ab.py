"""A/B of the batch-1 numba CSR loop with and without its software prefetches.

Calls prunekit's compiled loop (``_numba_fast.spmv_serial``) directly on a 4096x4096 fp32 weight
at 90 % sparsity (int16 column indices), 1 thread, with ``ahead=0`` (no prefetches) and with the
distance the modules use, interleaved, in two cache regimes: warm, and with a
``CacheFlusher`` before every call. Medians of 60 calls per variant; 3 rounds.

    python benchmarks/prototypes/prefetch_ab.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from prunekit.metrics.latency import CacheFlusher
from prunekit.sparse import SparseLinear
from prunekit.sparse.bench import pruned_weight
from prunekit.sparse.kernels import _numba_fast as loops


def main() -> None:
    torch.set_num_threads(1)
    n = 4096
    linear = torch.nn.Linear(n, n, bias=False)
    with torch.no_grad():
        linear.weight.copy_(pruned_weight(n, n, 0.9))
    arrays = SparseLinear.from_dense(linear, kernel="numba_csr")._numba_arrays()
    x, out = torch.randn(n).numpy(), np.empty(n, np.float32)
    flush = CacheFlusher()
    variants = {"no prefetch": 0, f"prefetch {arrays.prefetch_ahead} ahead": arrays.prefetch_ahead}
    for cold in (False, True):
        for rnd in range(3):
            times: dict[str, list[float]] = {k: [] for k in variants}
            for ahead in variants.values():  # compile + warm up
                loops.spmv_serial(arrays.row_ptr, arrays.bases, arrays.col, arrays.val, x, arrays.bias, out, ahead)
            for r in range(60):
                for name, ahead in list(variants.items())[:: 1 if r % 2 else -1]:
                    if cold:
                        flush()
                    t0 = time.perf_counter()
                    loops.spmv_serial(arrays.row_ptr, arrays.bases, arrays.col, arrays.val, x, arrays.bias, out, ahead)
                    times[name].append(time.perf_counter() - t0)
            cells = ", ".join(f"{k} {statistics.median(v) * 1e3:.3f} ms" for k, v in times.items())
            print(f"{'cold' if cold else 'warm'} round {rnd}: {cells}", flush=True)


if __name__ == "__main__":
    main()

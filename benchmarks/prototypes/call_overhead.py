"""Where a batch-1 sparse layer's time goes besides its loop, once the caches are cold.

Times, on a 4096x4096 fp32 weight at 90 % sparsity (``SparseLinear``, kernel ``numba_csr``):

1. a trivial numpy + torch step (``torch.from_numpy(np.empty(4096))``) right after nothing, after
   a dense 4096x4096 call, and after streaming or ``clflush``-ing a 77 MB buffer: what a cold call
   path costs;
2. an empty numba ``prange`` loop (thread-pool wake-up) warm and after the eviction;
3. the raw compiled loop (serial and parallel) against the whole module call, warm and with the
   weights and input evicted before each call (``TensorEvictor``), next to dense in the same run.

Medians of 30 calls, 3 rounds. Command (run alone, machine otherwise idle):

    python benchmarks/prototypes/call_overhead.py
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
import torch
from _goal_cell import goal_cell, median_us

from prunekit.metrics.latency import num_threads
from prunekit.sparse.kernels import numba_csr


@numba.njit(parallel=True, nogil=True)
def _empty_prange(out):  # pragma: no cover - compiled
    for i in numba.prange(out.shape[0]):
        out[i] = i


def main() -> None:
    cell = goal_cell()
    dense, sparse, x, evict, loops, arrays, xn, out = cell
    n, tiny = xn.shape[0], np.zeros(2, np.float32)
    big = np.ones(77 << 20, np.uint8)

    def raw(fn: Callable, *threads: int) -> Callable[[], None]:
        return lambda: fn(arrays.row_ptr, arrays.bases, arrays.col, arrays.val, xn, arrays.bias, out, arrays.prefetch_ahead,
                          *threads)

    print("1. trivial step (us) after: " + " | ".join(
        f"{name} {median_us(lambda: torch.from_numpy(np.empty(n, np.float32)), before):.1f}"
        for name, before in [("nothing", None), ("dense call", lambda: dense(x)),
                             ("reading 77 MB", lambda: big.view(np.float32).sum()),
                             ("clflush 77 MB", lambda: loops.evict_lines(big))]))
    for threads in (1, 2):
        with num_threads(threads):
            numba_csr._threads(loops)
            for rnd in range(3):
                for regime, before in (("warm", None), ("evicted", evict)):
                    cells = {"dense": median_us(lambda: dense(x), before),
                             "empty prange": median_us(lambda: _empty_prange(tiny), before),
                             "raw loop": median_us(raw(loops.spmv_parallel, threads) if threads > 1
                                                   else raw(loops.spmv_serial), before),
                             "module": median_us(lambda: sparse(x), before)}
                    print(f"threads {threads} round {rnd} {regime}: "
                          + ", ".join(f"{k} {v / 1e3:.3f} ms" for k, v in cells.items())
                          + f"; raw/dense {cells['raw loop'] / cells['dense']:.3f}, "
                          f"module/dense {cells['module'] / cells['dense']:.3f}", flush=True)


if __name__ == "__main__":
    main()

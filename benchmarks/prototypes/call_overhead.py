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

import time
from collections.abc import Callable

import numba
import numpy as np
import torch

from prunekit.metrics.latency import num_threads
from prunekit.sparse import SparseLinear
from prunekit.sparse.bench import pruned_weight
from prunekit.sparse.kernels import numba_csr
from prunekit.sparse.kernels.evict import TensorEvictor


@numba.njit(parallel=True, nogil=True)
def _empty_prange(out):  # pragma: no cover - compiled
    for i in numba.prange(out.shape[0]):
        out[i] = i


def median_us(fn: Callable[[], object], before: Callable[[], object] | None = None, repeats: int = 30) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def main() -> None:
    torch.set_grad_enabled(False)
    n = 4096
    dense = torch.nn.Linear(n, n, bias=False).eval()
    dense.weight.copy_(pruned_weight(n, n, 0.9, 0))
    sparse = SparseLinear.from_dense(dense, kernel="numba_csr").eval()
    x = torch.randn(1, n)
    evict = TensorEvictor([*dense.parameters(), *sparse.buffers(), x])
    loops = numba_csr._loops()
    arrays = sparse._numba_arrays()
    xn, out, tiny = x.reshape(n).numpy(), np.empty(n, np.float32), np.zeros(2, np.float32)
    big = np.ones(77 << 20, np.uint8)

    def raw(fn: Callable, *threads: int) -> Callable[[], None]:
        return lambda: fn(arrays.row_ptr, arrays.col, arrays.val, xn, arrays.bias, out, arrays.prefetch_ahead,
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

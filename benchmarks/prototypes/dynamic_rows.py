"""Static vs dynamic row scheduling of the 2-thread batch-1 CSR loop (tried, not adopted).

With ``numba.prange`` over rows, each thread gets a fixed half; when the other thread's worker
has to be woken (70-141 us with evicted caches on this VM) the calling thread finishes its half
and then waits. Two variants run ``prange(threads)`` instead:

* ``dynamic<chunk>``: the workers take row chunks from one atomic counter;
* ``claim64`` (64-row chunks): worker t walks the chunks upwards from t * chunks / threads (wrapping) and
  claims each with an atomic exchange, so on time it gets its static share (the same rows every
  call) and a late worker finds its share partly done. Adopted as the library's
  ``spmv_parallel`` (this script compares it with the old row ``prange``, kept here as
  ``spmv_static``).

The raw compiled loops (no module call), 4096x4096 fp32 at 90 % sparsity, 2 threads; all
variants and dense interleaved call by call, 60 calls each per round, 3 rounds, after a dense
call (warm) and with both layers' weights and the input ``clflush``-ed before every call.
Command (run alone, machine otherwise idle):

    python benchmarks/prototypes/dynamic_rows.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numba
import numpy as np
from _goal_cell import goal_cell

from prunekit.metrics.latency import num_threads
from prunekit.sparse.kernels import numba_csr
from prunekit.sparse.kernels._numba_fast import _row_dot, atomic_rmw_intrinsic

_fetch_add = atomic_rmw_intrinsic("add")


@numba.njit(parallel=True, fastmath=True, nogil=True)
def spmv_dynamic(row_ptr, bases, col, val, x, bias, out, ahead, counter, chunk, threads):  # pragma: no cover - compiled
    """Dynamic scheduling: ``threads`` workers take chunks of ``chunk`` rows from the shared
    counter ``counter[0]`` (int64, 0 on entry)."""
    n = out.shape[0]
    chunks = (n + chunk - 1) // chunk
    has_bias = bias.shape[0] == n
    for _ in numba.prange(threads):
        c = _fetch_add(counter, 0, 1)
        while c < chunks:
            for i in range(c * chunk, min(n, (c + 1) * chunk)):
                acc = _row_dot(row_ptr, bases, col, val, x, i, ahead)
                out[i] = acc + bias[i] if has_bias else acc
            c = _fetch_add(counter, 0, 1)


@numba.njit(parallel=True, fastmath=True, nogil=True)
def spmv_static(row_ptr, bases, col, val, x, bias, out, ahead):  # pragma: no cover - compiled
    """The library's batch-1 loop before this comparison: ``prange`` over the rows (a fixed share each)."""
    has_bias = bias.shape[0] == out.shape[0]
    for i in numba.prange(out.shape[0]):
        acc = _row_dot(row_ptr, bases, col, val, x, i, ahead)
        out[i] = acc + bias[i] if has_bias else acc


def main() -> None:
    dense, _, x, evict, loops, a, xn, out = goal_cell()
    ref = dense(x).reshape(-1).numpy()

    def dynamic(chunk: int) -> Callable[[], None]:
        def run() -> None:
            counter = np.zeros(1, np.int64)
            spmv_dynamic(a.row_ptr, a.bases, a.col, a.val, xn, a.bias, out, a.prefetch_ahead, counter, chunk, 2)
        return run

    variants: dict[str, Callable[[], object]] = {
        "dense": lambda: dense(x),
        "static": lambda: spmv_static(a.row_ptr, a.bases, a.col, a.val, xn, a.bias, out, a.prefetch_ahead),
        "dynamic64": dynamic(64),
        # the library's spmv_parallel: 32 chunks per thread, i.e. 64 rows each here
        "claim64": lambda: loops.spmv_parallel(a.row_ptr, a.bases, a.col, a.val, xn, a.bias, out, a.prefetch_ahead, 2),
    }
    for name, fn in variants.items():
        out[:] = 0
        fn()
        assert name == "dense" or np.allclose(out, ref, atol=1e-3), f"{name}: wrong result"
    with num_threads(2):
        numba_csr._threads(loops)
        for rnd in range(3):
            for regime, before in (("after a dense call", lambda: dense(x)), ("evicted", evict)):
                times: dict[str, list[float]] = {k: [] for k in variants}
                for _ in range(60):
                    for name, fn in variants.items():
                        before()
                        t0 = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - t0)
                med = {k: float(np.median(v)) for k, v in times.items()}
                print(f"round {rnd}, {regime}: dense {med['dense'] * 1e3:.3f} ms; "
                      + ", ".join(f"{k} {v / med['dense']:.3f} ({v / med['static']:.3f} of static)"
                                  for k, v in med.items() if k != "dense"), flush=True)


if __name__ == "__main__":
    main()

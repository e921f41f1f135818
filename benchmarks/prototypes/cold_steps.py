"""What single steps of a batch-1 call cost once a 4096x4096 layer's weights have left the caches.

Each step is timed alone (median of 30), warm (back to back), after ``clflush``-ing the weights of a
dense and a 90 %-sparse 4096x4096 layer and the input (77 MB, ``TensorEvictor``), and after a dense
4096x4096 call followed by that flush. It answers whether a compiled entry point (a C++ op
registered with torch) would shorten ``SparseLinear``'s cold call: compare one torch op
(``torch.relu`` on 8 values) with the numpy/numba steps of the current path.

Command (run alone, machine otherwise idle):

    python benchmarks/prototypes/cold_steps.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numba
import numpy as np
import torch

from prunekit.sparse import SparseLinear
from prunekit.sparse.bench import pruned_weight
from prunekit.sparse.kernels import numba_csr
from prunekit.sparse.kernels.evict import TensorEvictor


@numba.njit(nogil=True)
def _nop7(a, b, c, d, e, f, g):  # pragma: no cover - compiled
    return None


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
    a = sparse._numba_arrays()
    xn, out = x.reshape(n).numpy(), np.empty(n, np.float32)
    tiny = SparseLinear.from_dense(torch.nn.Linear(8, 8), kernel="numba_csr").eval()
    ta, t_in, t_out, x8 = tiny._numba_arrays(), np.ones(8, np.float32), np.empty(8, np.float32), torch.ones(1, 8)
    identity = torch.nn.Identity()

    def dense_then_evict() -> None:
        dense(x)
        evict()

    steps: dict[str, Callable[[], object]] = {
        "nothing": lambda: None,
        "np.empty(4096)": lambda: np.empty(n, np.float32),
        "numba call, 7 args, empty body": lambda: _nop7(a.row_ptr, a.col, a.val, xn, a.bias, out, 0),
        "numba spmv_serial on 8x8": lambda: loops.spmv_serial(ta.row_ptr, ta.col, ta.val, t_in, ta.bias, t_out, 0),
        "x.numpy()": lambda: x.numpy(),
        "torch.from_numpy": lambda: torch.from_numpy(out),
        "torch.get_num_threads()": torch.get_num_threads,
        "torch.is_grad_enabled()": torch.is_grad_enabled,
        "torch.relu(8 values)": lambda: torch.relu(x8),
        "nn.Identity()(x)": lambda: identity(x8),
        "SparseLinear 8x8 call": lambda: tiny(x8),
    }
    print("| step | " + " | ".join(["warm us", "after flush us", "after dense call + flush us"]) + " |")
    print("| --- | ---: | ---: | ---: |")
    for name, fn in steps.items():
        cells = [median_us(fn, before) for before in (None, evict, dense_then_evict)]
        print(f"| {name} | " + " | ".join(f"{c:.1f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()

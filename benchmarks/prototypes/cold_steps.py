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

from collections.abc import Callable

import numba
import numpy as np
import torch
from _goal_cell import goal_cell, median_us

from prunekit.sparse import SparseLinear


@numba.njit(nogil=True)
def _nop7(a, b, c, d, e, f, g):  # pragma: no cover - compiled
    return None


def main() -> None:
    dense, _, x, evict, loops, a, xn, out = goal_cell()
    tiny = SparseLinear.from_dense(torch.nn.Linear(8, 8), kernel="numba_csr").eval()
    ta, t_in, t_out, x8 = tiny._numba_arrays(), np.ones(8, np.float32), np.empty(8, np.float32), torch.ones(1, 8)
    identity = torch.nn.Identity()

    def dense_then_evict() -> None:
        dense(x)
        evict()

    steps: dict[str, Callable[[], object]] = {
        "nothing": lambda: None,
        "np.empty(4096)": lambda: np.empty(xn.shape[0], np.float32),
        "numba call, 7 args, empty body": lambda: _nop7(a.row_ptr, a.col, a.val, xn, a.bias, out, 0),
        "numba spmv_serial on 8x8": lambda: loops.spmv_serial(ta.row_ptr, ta.bases, ta.col, ta.val, t_in, ta.bias, t_out, 0),
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

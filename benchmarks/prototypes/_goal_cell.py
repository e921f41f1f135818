"""Shared set-up of the prototypes: the issue's goal cell (a 4096x4096 fp32 Linear, 90 % sparse,
batch 1) as a dense layer and its ``numba_csr`` twin, and a median timer.

Not a benchmark itself; imported by the scripts next to it (run them from the repository root
as ``python benchmarks/prototypes/<name>.py``, which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from prunekit.sparse import SparseLinear
from prunekit.sparse.bench import pruned_weight
from prunekit.sparse.kernels import numba_csr
from prunekit.sparse.kernels.evict import TensorEvictor


class GoalCell(NamedTuple):
    """The goal-cell layers, their input and the numpy views the raw compiled loops take."""

    dense: torch.nn.Linear
    sparse: SparseLinear
    x: torch.Tensor  # (1, n)
    evict: TensorEvictor  # clflush both layers' weights and x
    loops: object  # prunekit.sparse.kernels._numba_loops
    arrays: numba_csr.CSRArrays
    xn: np.ndarray  # (n,) view of x
    out: np.ndarray  # (n,) scratch output


def goal_cell(n: int = 4096, sparsity: float = 0.9) -> GoalCell:
    """Build the layers (grad off for the whole process, as in inference)."""
    torch.set_grad_enabled(False)
    dense = torch.nn.Linear(n, n, bias=False).eval()
    dense.weight.copy_(pruned_weight(n, n, sparsity, 0))
    sparse = SparseLinear.from_dense(dense, kernel="numba_csr").eval()
    x = torch.randn(1, n)
    evict = TensorEvictor([*dense.parameters(), *sparse.buffers(), x])
    return GoalCell(dense, sparse, x, evict, numba_csr._loops(), sparse._numba_arrays(),
                    x.reshape(n).numpy(), np.empty(n, np.float32))


def median_us(fn: Callable[[], object], before: Callable[[], object] | None = None, repeats: int = 30) -> float:
    """Median wall time of ``fn()`` in microseconds over ``repeats`` calls, each after ``before()``."""
    fn()
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6

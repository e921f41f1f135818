"""CSR x dense kernels compiled with numba (optional: ``pip install numba``, extra ``kernels``).

Two loops over the rows of a CSR weight W (N, K), row-parallel with ``prange`` when more than
one thread is asked for:

* ``spmv``: y (N,) = W @ x (K,) -- batch 1; the reduction over a row vectorises (gathers).
* ``spmm_t``: Y (N, L) = W @ X (K, L), X row-major: the inner loop runs over the L contiguous
  columns of X, so it vectorises. A linear layer passes X = x.T; a convolution passes its
  im2col matrix (Cin*kh*kw, Hout*Wout) directly.

Column indices may be uint8 / int16 / int32 / int64 (numba compiles one version per dtype and
caches it on disk), so the bytes read per nonzero are 4 (fp32 value) + the index width.
Indices are handed to numba as *unsigned* views of the same memory (they are never negative):
with signed indices numba adds a negative-index wraparound test to every load, which stops
the loops from vectorising -- measured 3-4x slower for the batch-1 loop on this machine.
Importing this module never fails; :data:`AVAILABLE` says whether numba is there.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

AVAILABLE: bool = importlib.util.find_spec("numba") is not None
PARALLEL_MIN_WORK = 1 << 16  # nonzeros x columns below which one thread does the product


def _loops():
    """The compiled loops module (imports numba on first use, so importing prunekit stays fast)."""
    if not AVAILABLE:
        raise ImportError("numba is not installed: pip install numba (extra 'kernels')")
    from prunekit.sparse.kernels import _numba_loops

    return _numba_loops


_UNSIGNED = {np.dtype(np.int8): np.uint8, np.dtype(np.int16): np.uint16,
             np.dtype(np.int32): np.uint32, np.dtype(np.int64): np.uint64}


def _unsigned(index: torch.Tensor) -> np.ndarray:
    """The non-negative integer tensor ``index`` as an unsigned numpy view (no copy)."""
    arr = index.numpy()
    return arr.view(_UNSIGNED[arr.dtype]) if arr.dtype in _UNSIGNED else arr


def _threads(loops) -> int:
    """Threads for the next call: torch's setting, capped by numba's pool; sets numba's."""
    n = max(1, min(torch.get_num_threads(), loops.numba.config.NUMBA_NUM_THREADS))
    loops.numba.set_num_threads(n)
    return n


def csr_matmul_t(row_ptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """Y (N, L) = W @ X for a CSR weight W (N, K) and a dense X (K, L); fp32, CPU.

    ``row_ptr`` is int32/int64 (N+1,), ``col`` any integer dtype (nnz,), ``val`` fp32 (nnz,).

    >>> from prunekit.sparse.formats import CSRMatrix
    >>> m = CSRMatrix.pack(torch.tensor([[0., 2.], [1., 0.], [0., 0.]]))
    >>> x = torch.tensor([[1., 2.], [3., 4.]])
    >>> csr_matmul_t(m.row_ptr.int(), m.col_indices, m.values, x).tolist()
    [[6.0, 8.0], [1.0, 2.0], [0.0, 0.0]]
    """
    loops = _loops()
    xt = xt.contiguous()  # (K, L)
    rows = row_ptr.numel() - 1
    out = torch.empty((rows, xt.shape[1]), dtype=torch.float32)  # (N, L)
    args = (_unsigned(row_ptr), _unsigned(col), val.numpy())
    # Small products run serially: waking the thread pool costs more than it saves.
    parallel = val.numel() * xt.shape[1] >= PARALLEL_MIN_WORK and _threads(loops) > 1
    if xt.shape[1] == 1:
        fn = loops.spmv_parallel if parallel else loops.spmv_serial
        fn(*args, xt.numpy()[:, 0], out.numpy()[:, 0])
    else:
        fn = loops.spmm_t_parallel if parallel else loops.spmm_t_serial
        fn(*args, xt.numpy(), out.numpy())
    return out


def csr_matmul(row_ptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y (B, N) = x (B, K) @ W.T for a CSR weight W (N, K): the linear layer without bias.

    >>> from prunekit.sparse.formats import CSRMatrix
    >>> m = CSRMatrix.pack(torch.tensor([[0., 2.], [1., 0.], [0., 0.]]))
    >>> csr_matmul(m.row_ptr.int(), m.col_indices, m.values, torch.tensor([[1., 3.]])).tolist()
    [[6.0, 1.0, 0.0]]
    """
    return csr_matmul_t(row_ptr, col, val, x.t()).t()  # (B, N)

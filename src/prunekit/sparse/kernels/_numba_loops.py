"""The numba-compiled CSR loops (imported on first use by ``numba_csr``; needs numba).

Indices arrive as unsigned arrays, see :mod:`prunekit.sparse.kernels.numba_csr`.
"""

import numba
import numpy as np


@numba.njit(fastmath=True, cache=True, nogil=True)
def spmv_serial(row_ptr, col, val, x, out):  # pragma: no cover - compiled
    for i in range(out.shape[0]):
        acc = np.float32(0.0)
        for k in range(row_ptr[i], row_ptr[i + 1]):
            acc += val[k] * x[col[k]]
        out[i] = acc


@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def spmv_parallel(row_ptr, col, val, x, out):  # pragma: no cover - compiled
    for i in numba.prange(out.shape[0]):
        acc = np.float32(0.0)
        for k in range(row_ptr[i], row_ptr[i + 1]):
            acc += val[k] * x[col[k]]
        out[i] = acc


@numba.njit(fastmath=True, cache=True, nogil=True)
def spmm_t_serial(row_ptr, col, val, xt, out):  # pragma: no cover - compiled
    width = xt.shape[1]
    for i in range(out.shape[0]):
        for b in range(width):
            out[i, b] = 0.0
        for k in range(row_ptr[i], row_ptr[i + 1]):
            v = val[k]
            c = col[k]
            for b in range(width):
                out[i, b] += v * xt[c, b]


@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def spmm_t_parallel(row_ptr, col, val, xt, out):  # pragma: no cover - compiled
    width = xt.shape[1]
    for i in numba.prange(out.shape[0]):
        for b in range(width):
            out[i, b] = 0.0
        for k in range(row_ptr[i], row_ptr[i + 1]):
            v = val[k]
            c = col[k]
            for b in range(width):
                out[i, b] += v * xt[c, b]

"""Prototype (not used): batch-1 CSR with 8-bit column offsets inside 256-column segments.

Cuts the bytes of a 4096x4096, 90 %-sparse fp32 weight by ~14 % (uint8 offsets + a pointer per
row segment instead of int16 columns), but splits every row's dot product into 16 loops of ~26
nonzeros, which vectorise badly. Timed against prunekit's own loop, 1 thread, warm and with the
weights evicted before every call (medians of 60 interleaved calls).

    python benchmarks/prototypes/seg8_index.py
"""

from __future__ import annotations

import statistics
import time

import numba
import numpy as np
import torch

from prunekit.sparse import SparseLinear
from prunekit.sparse.bench import pruned_weight
from prunekit.sparse.kernels import _numba_fast as loops
from prunekit.sparse.kernels._numba_fast import _prefetch
from prunekit.sparse.kernels.evict import TensorEvictor

SEGMENTS = 16  # 4096 columns / 256


@numba.njit(fastmath=True, nogil=True)
def spmv_seg8(seg_ptr, col8, val, x, out, ahead):  # pragma: no cover - compiled
    """out (N,) = W @ x with W's row i split into 16 segments of 256 columns (uint8 offsets)."""
    nnz = val.shape[0]
    for i in range(out.shape[0]):
        start, stop = seg_ptr[i * SEGMENTS], seg_ptr[i * SEGMENTS + SEGMENTS]
        if ahead > 0:
            end = min(stop + ahead, nnz)
            for k in range(start + ahead, end, 16):
                _prefetch(val, k)
            for k in range(start + ahead, end, 64):
                _prefetch(col8, k)
        acc = np.float32(0.0)
        for s in range(SEGMENTS):
            xs = x[s * 256:(s + 1) * 256]
            for k in range(seg_ptr[i * SEGMENTS + s], seg_ptr[i * SEGMENTS + s + 1]):
                acc += val[k] * xs[col8[k]]
        out[i] = acc


def main() -> None:
    torch.set_num_threads(1)
    n = 4096
    linear = torch.nn.Linear(n, n, bias=False).eval()
    with torch.no_grad():
        linear.weight.copy_(pruned_weight(n, n, 0.9))
    sparse = SparseLinear.from_dense(linear, kernel="numba_csr")
    a = sparse._numba_arrays()
    col = a.col.astype(np.int64)
    rows = np.repeat(np.arange(n), np.diff(a.row_ptr.astype(np.int64)))
    counts = np.bincount(rows * SEGMENTS + (col >> 8), minlength=n * SEGMENTS)
    seg_ptr_t = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    col8_t = torch.from_numpy((col & 255).astype(np.uint8))
    val_t = sparse.values.clone()
    seg_ptr, col8, val = seg_ptr_t.numpy().view(np.uint32), col8_t.numpy(), val_t.numpy()
    x = torch.randn(n).numpy()
    out, ref = np.empty(n, np.float32), np.empty(n, np.float32)
    spmv_seg8(seg_ptr, col8, val, x, out, 1024)
    loops.spmv_serial(a.row_ptr, a.bases, a.col, a.val, x, a.bias, ref, 1024)
    print(f"max |difference| {np.abs(out - ref).max():.1e}; bytes {val.nbytes + col8.nbytes + seg_ptr.nbytes:,} "
          f"(segmented uint8) vs {a.val.nbytes + a.col.nbytes + a.row_ptr.nbytes:,} (CSR, int16)")
    evict = TensorEvictor([linear.weight, sparse.values, sparse.col_indices, sparse.row_ptr, val_t, col8_t, seg_ptr_t])
    variants = {
        "csr int16 (prunekit)": lambda: loops.spmv_serial(a.row_ptr, a.bases, a.col, a.val, x, a.bias, ref, 1024),
        "segmented uint8": lambda: spmv_seg8(seg_ptr, col8, val, x, out, 1024),
        "segmented uint8, no prefetch": lambda: spmv_seg8(seg_ptr, col8, val, x, out, 0),
    }
    for regime in ("warm", "evicted"):
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(60):
            for name, fn in variants.items():
                if regime == "evicted":
                    evict()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        print(regime + ": " + ", ".join(f"{k} {statistics.median(v) * 1e3:.3f} ms" for k, v in times.items()))


if __name__ == "__main__":
    main()

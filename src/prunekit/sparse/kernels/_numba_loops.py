"""The reference numba loops: plain numba, no LLVM IR, always available where numba is.

Imported on first use by :mod:`prunekit.sparse.kernels.numba_csr`; indices arrive as unsigned
arrays (see there). The batch-1 loops here (``spmv_serial`` / ``spmv_parallel``) are the reference
the optional fast path (:mod:`._numba_fast`: software prefetch, a 16-lane gather per packet and
atomically claimed row chunks, written as LLVM intrinsics) is tested against, and what runs when
that path cannot be built here (another numba or llvmlite, another CPU). Everything else (batch > 1,
CSC, the direct convolution) is plain numba and shared by both.

``conv2d_direct_*`` compute a convolution straight from the CSR form of its GEMM view
(Cout, Cin*kh*kw), without an im2col matrix ("direct sparse convolution", Park et al. 2017):
each nonzero w[co, c, i, j] adds w * (a shifted window of input plane c) to output plane co.
A stride-s convolution is split into s_h * s_w stride-1 ones over the polyphase components of
the input, so every tap is one contiguous shifted slice of a flattened plane.
"""

import numba
import numpy as np

KIND = "reference"
PACKET = 16  # values per packet of a packet-CSR weight (prunekit.sparse.formats.PacketCSRMatrix)
PREFETCH_AHEAD = 1024  # nonzeros, about 2.5 rows of a 4096-wide row at 90 % sparsity (fast path only)
PREFETCH_MIN_BYTES = 1 << 20  # smaller weights (values + indices) stay in L2: no prefetches
CHUNKS_PER_THREAD = 32  # row chunks per thread in spmv_parallel


@numba.njit(fastmath=True, cache=True, nogil=True, inline="always")
def _row_dot(row_ptr, col, val, x, i):  # pragma: no cover - compiled
    """sum_k val[k] * x[col[k]] over CSR row i."""
    acc = np.float32(0.0)
    for k in range(row_ptr[i], row_ptr[i + 1]):
        acc += val[k] * x[col[k]]
    return acc


@numba.njit(fastmath=True, cache=True, nogil=True, inline="always")
def _packet_row_dot(packet_ptr, bases, offsets, val, x, i):  # pragma: no cover - compiled
    """Row i of a packet-CSR weight times x: sum over its packets p and lanes j of
    val[16p+j] * x[bases[p] + offsets[16p+j]] (padding lanes hold 0)."""
    acc = np.float32(0.0)
    for p in range(packet_ptr[i], packet_ptr[i + 1]):
        base = np.int64(bases[p])
        for j in range(p * PACKET, (p + 1) * PACKET):
            acc += val[j] * x[base + np.int64(offsets[j])]
    return acc


@numba.njit(fastmath=True, cache=True, nogil=True, inline="always")
def _rows_into(row_ptr, bases, col, val, x, bias, out, lo, hi):  # pragma: no cover - compiled
    """out[lo:hi] = rows lo..hi-1 of W @ x (+ bias when it has N entries); CSR when ``bases`` is
    empty, else packet CSR (``row_ptr`` counts packets, ``col`` holds uint8 offsets)."""
    has_bias = bias.shape[0] == out.shape[0]
    if bases.shape[0] > 0:
        for i in range(lo, hi):
            acc = _packet_row_dot(row_ptr, bases, col, val, x, i)
            out[i] = acc + bias[i] if has_bias else acc
    else:
        for i in range(lo, hi):
            acc = _row_dot(row_ptr, col, val, x, i)
            out[i] = acc + bias[i] if has_bias else acc


@numba.njit(fastmath=True, cache=True, nogil=True)
def spmv_serial(row_ptr, bases, col, val, x, bias, out, ahead):  # pragma: no cover - compiled
    """out (N,) = W @ x (+ bias, when bias has N entries; pass an empty array for none) for a
    CSR weight (``bases`` empty) or a packet-CSR one; ``ahead`` (prefetch distance) is ignored here."""
    _rows_into(row_ptr, bases, col, val, x, bias, out, 0, out.shape[0])


@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def spmv_parallel(row_ptr, bases, col, val, x, bias, out, ahead, threads):  # pragma: no cover - compiled
    """spmv_serial over numba's threads, the rows in ``CHUNKS_PER_THREAD * threads`` chunks."""
    n = out.shape[0]
    chunks = max(1, min(n, CHUNKS_PER_THREAD * threads))
    rows = (n + chunks - 1) // chunks
    for c in numba.prange(chunks):
        _rows_into(row_ptr, bases, col, val, x, bias, out, c * rows, min(n, (c + 1) * rows))


@numba.njit(fastmath=True, cache=True, nogil=True)
def csc_spmm_skip_zeros(col_ptr, row, val, x, bias, out):  # pragma: no cover - compiled
    """out (B, N) = x (B, K) @ W.T (+ bias) for W (N, K) stored by columns (CSC: col_ptr (K+1,),
    row (nnz,), val (nnz,)); column j is read only where x[b, j] != 0."""
    has_bias = bias.shape[0] == out.shape[1]
    for b in range(out.shape[0]):
        for i in range(out.shape[1]):
            out[b, i] = bias[i] if has_bias else np.float32(0.0)
        for j in range(x.shape[1]):
            xj = x[b, j]
            if xj != 0.0:
                for k in range(col_ptr[j], col_ptr[j + 1]):
                    out[b, row[k]] += xj * val[k]


@numba.njit(fastmath=True, cache=True, nogil=True, inline="always")
def _spmm_row(row_ptr, bases, col, val, xt, out, i):  # pragma: no cover - compiled
    """out[i, :] (L,) = sum over row i's stored values of val[k] * xt[column k, :] (contiguous,
    vectorised); CSR when ``bases`` is empty, else packet CSR (padding values are 0)."""
    width = xt.shape[1]
    packed = bases.shape[0] > 0
    lanes = PACKET if packed else 1
    for b in range(width):
        out[i, b] = 0.0
    for k in range(row_ptr[i] * lanes, row_ptr[i + 1] * lanes):
        v = val[k]
        c = np.int64(col[k]) + (np.int64(bases[k // PACKET]) if packed else 0)
        for b in range(width):
            out[i, b] += v * xt[c, b]


@numba.njit(fastmath=True, cache=True, nogil=True)
def spmm_t_serial(row_ptr, bases, col, val, xt, out):  # pragma: no cover - compiled
    """out (N, L) = W @ xt (K, L) for a CSR (``bases`` empty) or packet-CSR weight W (N, K)."""
    for i in range(out.shape[0]):
        _spmm_row(row_ptr, bases, col, val, xt, out, i)


@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def spmm_t_parallel(row_ptr, bases, col, val, xt, out):  # pragma: no cover - compiled
    for i in numba.prange(out.shape[0]):
        _spmm_row(row_ptr, bases, col, val, xt, out, i)


@numba.njit(fastmath=True, cache=True, nogil=True)
def fill_phases(x, pad_h, pad_w, sh, sw, hq, wq, phases):  # pragma: no cover - compiled
    """Scatter x (B, Cin, H, W) into its zero-padded polyphase planes: phases (B, sh*sw*Cin*Hq*Wq),
    zero-initialised, plane (a*sw + b)*Cin + c holding xpad[n, c, u*sh + a, v*sw + b] at u*Wq + v."""
    cin, h, w = x.shape[1], x.shape[2], x.shape[3]
    plane = hq * wq
    for n in range(x.shape[0]):
        for c in range(cin):
            a, u = pad_h % sh, pad_h // sh  # phase row and row inside it of padded row R = r + pad_h
            for r in range(h):
                b0, v0 = pad_w % sw, pad_w // sw
                if sw == 1:
                    base = (a * cin + c) * plane + u * wq + v0
                    for s in range(w):
                        phases[n, base + s] = x[n, c, r, s]
                else:
                    b, v = b0, v0
                    for s in range(w):
                        phases[n, ((a * sw + b) * cin + c) * plane + u * wq + v] = x[n, c, r, s]
                        b += 1
                        if b == sw:
                            b = 0
                            v += 1
                a += 1
                if a == sh:
                    a = 0
                    u += 1


@numba.njit(fastmath=True, cache=True, nogil=True, inline="always")
def _conv_plane(row_ptr, taps, val, phases, bias, wq, n, co, acc, out):  # pragma: no cover - compiled
    """out[n, co] (Ho, Wo) = bias[co] + sum over row co's nonzeros of w * shifted phase plane.

    ``acc`` is a scratch (Ho * Wq,) row-major grid as wide as the phase planes: on it every tap
    is one contiguous slice of image n's phase planes starting at ``taps[k]``, so the inner loop
    is a plain vectorised axpy (four taps per pass, to load and store ``acc`` a quarter as
    often). Slicing before the loop keeps it free of index checks. The grid's columns s >= Wo
    are never copied out.
    """
    ho, wo = out.shape[2], out.shape[3]
    length = ho * wq
    b0 = bias[co] if bias.shape[0] > co else np.float32(0.0)
    for t in range(length):
        acc[t] = b0
    src = phases[n]
    k, stop = row_ptr[co], row_ptr[co + 1]
    while k + 4 <= stop:
        v0, v1, v2, v3 = val[k], val[k + 1], val[k + 2], val[k + 3]
        s0 = src[taps[k]:taps[k] + length]
        s1 = src[taps[k + 1]:taps[k + 1] + length]
        s2 = src[taps[k + 2]:taps[k + 2] + length]
        s3 = src[taps[k + 3]:taps[k + 3] + length]
        for t in range(length):
            acc[t] += v0 * s0[t] + v1 * s1[t] + v2 * s2[t] + v3 * s3[t]
        k += 4
    while k < stop:
        v = val[k]
        s0 = src[taps[k]:taps[k] + length]
        for t in range(length):
            acc[t] += v * s0[t]
        k += 1
    for r in range(ho):
        for s in range(wo):
            out[n, co, r, s] = acc[r * wq + s]


@numba.njit(fastmath=True, cache=True, nogil=True)
def conv2d_direct_serial(row_ptr, taps, val, phases, bias, wq, out):  # pragma: no cover - compiled
    """out (B, Cout, Ho, Wo) from the polyphase planes of the padded input (see fill_phases);
    taps (nnz,): each nonzero's flat start in one image's planes; bias (Cout,) or empty."""
    acc = np.empty(out.shape[2] * wq, np.float32)
    for n in range(out.shape[0]):
        for co in range(out.shape[1]):
            _conv_plane(row_ptr, taps, val, phases, bias, wq, n, co, acc, out)


@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def conv2d_direct_parallel(row_ptr, taps, val, phases, bias, wq, out):  # pragma: no cover - compiled
    planes = out.shape[0] * out.shape[1]
    for p in numba.prange(planes):
        acc = np.empty(out.shape[2] * wq, np.float32)
        _conv_plane(row_ptr, taps, val, phases, bias, wq, p // out.shape[1], p % out.shape[1], acc, out)

"""Prototype comparison: the batch-1 loop over packet CSR written three ways, against int16 CSR.

The goal cell (4096x4096 fp32, 90 % sparse), raw compiled loops (no module call around them),
1 thread, warm and with the weights ``clflush``ed before every call; medians of interleaved calls.

* ``csr int16``: prunekit's CSR loop (``_numba_fast.spmv_serial`` with empty ``bases``);
* ``packet, LLVM IR``: prunekit's packet loop (``_numba_fast._packet_dot``: one 16-lane gather
  per packet from a base pointer + 32-bit lane indices);
* ``packet, plain numba``: the same sum written as ``val[k] * x[bases[k >> 4] + offsets[k]]``
  over the row, which numba vectorises with a second gather (of the base) per 8 lanes.

    python benchmarks/prototypes/packet_loops.py
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from _goal_cell import goal_cell, median_us

from prunekit.sparse import SparseLinear
from prunekit.sparse.kernels._numba_fast import PACKET, _prefetch
from prunekit.sparse.kernels.evict import TensorEvictor


@numba.njit(fastmath=True, nogil=True)
def spmv_packet_plain(packet_ptr, bases, offsets, val, x, out, ahead):  # pragma: no cover - compiled
    """out (N,) = W @ x for a packet-CSR W, the packets' bases gathered per lane."""
    for i in range(out.shape[0]):
        start, stop = packet_ptr[i] * PACKET, packet_ptr[i + 1] * PACKET
        if ahead > 0:
            end = min(stop + ahead, val.shape[0])
            for k in range(start + ahead, end, 16):
                _prefetch(val, k)
            for k in range(start + ahead, end, 64):
                _prefetch(offsets, k)
        acc = np.float32(0.0)
        for k in range(start, stop):
            acc += val[k] * x[np.int64(bases[k >> 4]) + np.int64(offsets[k])]
        out[i] = acc


def main() -> None:
    cell = goal_cell()
    torch.set_num_threads(1)
    packet = SparseLinear.from_dense(cell.dense, kernel="numba_packet")
    a, p, loops, xn = cell.arrays, packet._numba_arrays(), cell.loops, cell.xn
    ref, out = np.empty_like(cell.out), np.empty_like(cell.out)
    variants = {
        "csr int16": lambda: loops.spmv_serial(a.row_ptr, a.bases, a.col, a.val, xn, a.bias, ref, a.prefetch_ahead),
        "packet, LLVM IR": lambda: loops.spmv_serial(p.row_ptr, p.bases, p.col, p.val, xn, p.bias, out,
                                                     p.prefetch_ahead),
        "packet, plain numba": lambda: spmv_packet_plain(p.row_ptr, p.bases, p.col, p.val, xn, out, p.prefetch_ahead),
    }
    for name, fn in variants.items():
        fn()
        assert np.allclose(out, ref, rtol=1e-4, atol=1e-4) or name == "csr int16", name
    print(f"bytes: csr {cell.sparse.packed_nbytes():,}, packet {packet.packed_nbytes():,} "
          f"({packet.packed_nbytes() / cell.sparse.packed_nbytes():.3f}); dense {4096 * 4096 * 4:,}")
    evict = TensorEvictor([*cell.dense.parameters(), *cell.sparse.buffers(), *packet.buffers(), cell.x])
    for regime, before in (("warm", None), ("evicted", evict)):
        for rnd in range(3):
            times = {name: median_us(fn, before, repeats=40) for name, fn in variants.items()}
            print(f"{regime} round {rnd}: " + ", ".join(f"{k} {v:.0f} us" for k, v in times.items()))


if __name__ == "__main__":
    main()

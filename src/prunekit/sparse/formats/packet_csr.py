"""Packet CSR: CSR whose column indices are 8-bit offsets inside packets of 16 nonzeros.

Each row's nonzeros (in column order) are cut into packets of at most ``PACKET`` (16)
consecutive values whose columns all lie within 255 of the packet's first column. A packet
stores that first column once (``bases``, the smallest dtype that holds the last column) and,
per value, a uint8 offset from it; a packet with fewer than 16 values is filled up with zero
values at offset 0. Rows start on a packet boundary (``packet_ptr`` counts packets).

At density d the average column gap is 1/d, so 16 values span about 16/d columns: at 10 %
about 160, and a packet rarely closes early. Per nonzero this stores 4 (fp32) + 1 + (bytes of a
base)/16 bytes instead of CSR's 4 + 2 (int16 columns), about 13 % less at 90 % sparsity on a
4096-wide layer, and every packet is one fixed-width step (load 16 offsets and 16 values, one
16-lane gather) for the batch-1 kernel (``numba_packet``, see :mod:`prunekit.sparse.kernels`).
The idea is that of delta/offset-compressed CSR (e.g. CSR-DU, Kourtis et al. 2008) with a
fixed packet width chosen for 16-lane SIMD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prunekit.sparse.formats.base import SparseFormat, as_matrix, index_dtype
from prunekit.sparse.formats.csr import CSRMatrix

PACKET = 16  # values per packet: one 16-lane fp32 vector
MAX_OFFSET = 255  # uint8 offsets


def _packet_starts(row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Start position (into the row-major nonzero list) of every packet, greedily: a packet ends
    after 16 values, at the end of its row, or before the first column > its first + 255."""
    nnz = col.shape[0]
    if nnz == 0:
        return np.zeros(0, np.int64)
    key = row * (int(col.max()) + MAX_OFFSET + 2) + col  # (nnz,) increasing, rows kept apart
    pos = np.arange(nnz)
    row_end = np.searchsorted(row, row, side="right")  # (nnz,) first position of the next row
    span_end = np.searchsorted(key, key + MAX_OFFSET, side="right")  # (nnz,) first column > base + 255
    nxt = np.minimum(np.minimum(pos + PACKET, row_end), span_end).tolist()  # (nnz,)
    starts, p = [], 0
    while p < nnz:  # one step per packet (~nnz/16)
        starts.append(p)
        p = nxt[p]
    return np.asarray(starts, np.int64)


@dataclass(frozen=True, eq=False)
class PacketCSRMatrix(SparseFormat):
    """Packet CSR form of a 2-D (or flattened conv) weight.

    >>> w = torch.zeros(2, 600)
    >>> w[0, [3, 10, 400]] = torch.tensor([1., 2., 3.])
    >>> m = PacketCSRMatrix.pack(w)
    >>> m.packet_ptr.tolist(), m.bases.tolist()    # row 0: two packets (400 - 3 > 255); row 1: none
    ([0, 2, 2], [3, 400])
    >>> m.offsets[:3].tolist(), m.values[:3].tolist(), m.nnz
    ([0, 7, 0], [1.0, 2.0, 0.0], 3)
    >>> torch.equal(m.unpack(), w)
    True
    """

    values: torch.Tensor  # (P*16,) dense dtype; padding entries are 0
    offsets: torch.Tensor  # (P*16,) uint8: column - base of its packet (0 for padding)
    bases: torch.Tensor  # (P,) smallest dtype holding cols-1: first column of each packet
    packet_ptr: torch.Tensor  # (rows+1,) smallest dtype holding P: packets of row i are [ptr[i], ptr[i+1])
    shape: tuple[int, ...]

    @classmethod
    def pack(cls, dense: torch.Tensor) -> PacketCSRMatrix:
        """Store the nonzeros of ``dense`` (>= 2-D; trailing dims are flattened)."""
        as_matrix(dense, "PacketCSRMatrix")  # checks the input, naming this format
        csr = CSRMatrix.pack(dense)  # the nonzeros in row-major order
        rows, cols = csr.matrix_shape
        row, col = csr.row_indices().numpy(), csr.col_indices.to(torch.int64).numpy()  # (nnz,)
        vals = csr.values  # (nnz,)
        starts = _packet_starts(row, col)  # (P,)
        ends = np.append(starts[1:], row.shape[0])  # (P,)
        lane = np.arange(PACKET)  # (16,)
        take = starts[:, None] + lane  # (P, 16) positions in the nonzero list
        real = lane < (ends - starts)[:, None]  # (P, 16) False for padding
        take = np.where(real, take, starts[:, None])  # padding reads its packet's first value ...
        base = col[starts] if starts.size else np.zeros(0, np.int64)  # (P,)
        offsets = np.where(real, col[take] - base[:, None], 0)  # (P, 16) ... at offset 0
        real_t = torch.from_numpy(real.reshape(-1))
        values = torch.zeros(starts.size * PACKET, dtype=vals.dtype)  # (P*16,)
        values[real_t] = vals[torch.from_numpy(take.reshape(-1)[real.reshape(-1)])]
        per_row = np.bincount(row[starts], minlength=rows) if starts.size else np.zeros(rows, np.int64)
        packet_ptr = np.concatenate([[0], np.cumsum(per_row)])  # (R+1,)
        return cls(
            values=values,
            offsets=torch.from_numpy(offsets.reshape(-1).astype(np.uint8)),
            bases=torch.from_numpy(base.astype(np.int64)).to(index_dtype(max(cols - 1, 0))),
            packet_ptr=torch.from_numpy(packet_ptr.astype(np.int64)).to(index_dtype(int(starts.size))),
            shape=csr.shape,
        )

    @property
    def packets(self) -> int:
        """Number of packets (stored values / 16)."""
        return int(self.bases.numel())

    @property
    def nnz(self) -> int:
        """Number of nonzero values (padding excluded)."""
        return int(self.values.count_nonzero())

    def columns(self) -> torch.Tensor:
        """The column of every stored entry, (P*16,) int64 (padding: its packet's first column)."""
        return self.bases.to(torch.int64).repeat_interleave(PACKET) + self.offsets.to(torch.int64)

    def unpack(self) -> torch.Tensor:
        """The dense tensor, in the original shape and dtype."""
        rows = self.matrix_shape[0]
        counts = self.packet_ptr[1:].to(torch.int64) - self.packet_ptr[:-1].to(torch.int64)  # (R,)
        row = torch.repeat_interleave(torch.arange(rows), counts * PACKET)  # (P*16,)
        dense = torch.zeros(self.matrix_shape, dtype=self.values.dtype)  # (R, C)
        real = self.values != 0  # padding adds nothing, but must not overwrite its base column
        dense[row[real], self.columns()[real]] = self.values[real]
        return dense.reshape(self.shape)

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"values": self.values, "offsets": self.offsets, "bases": self.bases, "packet_ptr": self.packet_ptr}

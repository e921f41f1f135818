"""EIE storage (Han et al., ISCA 2016): column-wise relative indices + shared-weight codes.

The weight W (out, in) is stored column by column (column j multiplies activation a_j, so a
zero activation skips a whole column). Each stored entry has

* a 4-bit relative index ``z``: the number of zeros since the previous entry of the column
  (or since the top of the column); a gap longer than 15 inserts a *padding entry* (z = 15,
  value 0) that covers 16 positions, as in the paper;
* a ``bits``-bit code into a shared-weight codebook (Deep Compression weight sharing, see
  ``sharing.py``); code 0 is the exact 0.0 used by padding entries.

Column pointers (C+1, smallest dtype holding the entry count) mark where each column starts.
``nbytes()`` = packed relative indices + packed codes + column pointers + codebook.

With ``num_pes = P > 1`` the rows are interleaved over P processing elements as in the EIE
hardware (PE k owns rows k, k+P, ...): each PE stores its own column-wise entries with relative
indices counted in its local rows and its own C+1 column pointers (``col_ptr`` then holds P
such blocks, each relative to the start of that PE's entries; the PE streams are concatenated).

``unpack()`` returns the shared (quantised) weight exactly; ``unpack_with(values)`` places the
original values at the stored positions instead, which reproduces the original tensor exactly
(the structure round trip is lossless; only values go through the codebook).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.errors import ConfigError
from prunekit.sparse.formats.base import (
    SparseFormat,
    as_matrix,
    index_dtype,
    pack_bits,
    tensor_nbytes,
    unpack_bits,
)
from prunekit.sparse.formats.huffman import huffman_bits
from prunekit.sparse.formats.sharing import kmeans_1d, nearest_codes


@dataclass(frozen=True, eq=False)
class EIEMatrix(SparseFormat):
    """EIE compressed weight (relative-indexed CSC + codebook).

    >>> w = torch.zeros(20, 2); w[2, 0] = 1.0; w[19, 0] = 3.0; w[0, 1] = 2.0
    >>> e = EIEMatrix.pack(w, bits=2)   # column 0: gap 2, then a gap of 16 -> one padding entry
    >>> e.relative_indices().tolist(), e.code_values().tolist(), e.col_ptr.tolist()
    ([2, 15, 0, 0], [1, 0, 3, 2], [0, 3, 4])
    >>> e.nbytes()   # 4 entries * 4 bits (2) + 4 * 2 bits (1) + 3 uint8 ptrs + 4 fp32 codebook
    22
    >>> torch.equal(e.unpack(), w)   # three distinct values fit in a 2-bit codebook exactly
    True
    """

    rel_index: torch.Tensor  # (ceil(E*index_bits/8),) uint8: packed relative indices
    codes: torch.Tensor  # (ceil(E*bits/8),) uint8: packed codebook indices
    col_ptr: torch.Tensor  # (C+1,) smallest dtype holding E
    codebook: torch.Tensor  # (2**bits,) dense dtype, codebook[0] == 0
    bits: int
    index_bits: int
    shape: tuple[int, ...]
    num_pes: int = 1

    @classmethod
    def pack(cls, dense: torch.Tensor, bits: int = 4, index_bits: int = 4,
             codebook: torch.Tensor | None = None, max_iter: int = 100, num_pes: int = 1) -> EIEMatrix:
        """Compress ``dense`` (>= 2-D, trailing dims flattened into columns).

        Without ``codebook``, the nonzeros are clustered into ``2**bits - 1`` shared values
        (k-means, linear init); with one (``(2**bits,)``, entry 0 == 0.0), each nonzero gets
        the code of its nearest nonzero entry.
        """
        if not 1 <= bits <= 16:
            raise ConfigError(f"EIE code width must be 1..16 bits, got {bits}")
        if not 1 <= index_bits <= 16:
            raise ConfigError(f"EIE relative index width must be 1..16 bits, got {index_bits}")
        if not (isinstance(num_pes, int) and num_pes >= 1):
            raise ConfigError(f"EIE num_pes must be a positive int, got {num_pes!r}")
        mat, shape = as_matrix(dense, "EIEMatrix")  # (R, C)
        cols_major = mat.t()  # (C, R): walk column by column
        nonzero = cols_major != 0
        values = cols_major[nonzero]  # (nnz,) column-major order
        if codebook is None:
            centroids, _ = kmeans_1d(values, 2**bits - 1, max_iter)
            codebook = torch.cat([torch.zeros(1, dtype=torch.float64), centroids]).to(mat.dtype)
        else:
            codebook = codebook.detach().cpu().to(mat.dtype).reshape(-1)
            if codebook.numel() != 2**bits or float(codebook[0]) != 0.0:
                raise ConfigError(f"codebook must have 2**bits = {2**bits} entries with entry 0 == 0.0, "
                                  f"got {codebook.numel()} entries starting with {float(codebook[0])}")
        codes = nearest_codes(values, codebook)  # nearest nonzero entry, in the stored dtype
        col, row = nonzero.nonzero(as_tuple=True)
        return cls.from_positions(row, col, codes, codebook, mat.shape, shape, bits, index_bits, num_pes)

    @classmethod
    def from_positions(cls, row: torch.Tensor, col: torch.Tensor, codes: torch.Tensor, codebook: torch.Tensor,
                       matrix_shape: tuple[int, int], shape: tuple[int, ...], bits: int = 4,
                       index_bits: int = 4, num_pes: int = 1) -> EIEMatrix:
        """Build from nonzero positions (any order), their codes and the codebook."""
        rows, cols = matrix_shape
        row, col, codes = row.to(torch.int64), col.to(torch.int64), codes.to(torch.int64)
        pes = num_pes
        local_rows = -(-rows // pes)
        # Segment = (PE, column); inside a segment, entries run down the PE's local rows.
        seg = (row % pes) * cols + col  # (nnz,)
        local = row // pes
        order = torch.argsort(seg * max(local_rows, 1) + local)
        seg, local, codes = seg[order], local[order], codes[order]
        span = 2**index_bits  # positions one padding entry covers
        prev = torch.full_like(local, -1)
        if local.numel() > 1:
            same = seg[1:] == seg[:-1]
            prev[1:] = torch.where(same, local[:-1], torch.full_like(local[1:], -1))
        gap = local - prev - 1  # zeros before each nonzero since the previous entry
        pads = gap // span  # padding entries needed before it
        per_nz = pads + 1  # entries each nonzero expands to
        total = int(per_nz.sum())
        z = torch.full((total,), span - 1, dtype=torch.int64)
        entry_code = torch.zeros(total, dtype=torch.int64)
        last = torch.cumsum(per_nz, dim=0) - 1  # slot of each real entry
        z[last] = gap % span
        entry_code[last] = codes
        per_seg = torch.zeros(pes * cols, dtype=torch.int64).index_add_(0, seg, per_nz).reshape(pes, cols)
        col_ptr = torch.zeros(pes, cols + 1, dtype=torch.int64)
        col_ptr[:, 1:] = torch.cumsum(per_seg, dim=1)  # per PE, relative to its own stream
        top = int(col_ptr[:, -1].max()) if pes else 0
        return cls(rel_index=pack_bits(z, index_bits), codes=pack_bits(entry_code, bits),
                   col_ptr=col_ptr.reshape(-1).to(index_dtype(top)), codebook=codebook.clone(), bits=bits,
                   index_bits=index_bits, shape=tuple(shape), num_pes=pes)

    def pe_col_ptr(self) -> torch.Tensor:
        """Column pointers per PE, (num_pes, C+1) int64, each relative to that PE's first entry."""
        return self.col_ptr.to(torch.int64).reshape(self.num_pes, self.matrix_shape[1] + 1)

    def pe_entries(self) -> torch.Tensor:
        """Entries (padding included) stored by each PE, (num_pes,) int64: the load balance."""
        return self.pe_col_ptr()[:, -1]

    @property
    def num_entries(self) -> int:
        """Stored entries, padding included."""
        return int(self.pe_entries().sum())

    def relative_indices(self) -> torch.Tensor:
        """The relative index of every entry, (E,) int64."""
        return unpack_bits(self.rel_index, self.index_bits, self.num_entries)

    def code_values(self) -> torch.Tensor:
        """The codebook index of every entry (0 for padding), (E,) int64."""
        return unpack_bits(self.codes, self.bits, self.num_entries)

    def entry_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, col) of every entry, padding included, in storage order, each (E,) int64."""
        cols, pes = self.matrix_shape[1], self.num_pes
        per_seg = self.pe_col_ptr().diff(dim=1).reshape(-1)  # (P*C,) entries per (PE, column)
        seg = torch.repeat_interleave(torch.arange(pes * cols), per_seg)  # (E,)
        steps = torch.cumsum(self.relative_indices() + 1, dim=0)  # (E,)
        seg_start = torch.cumsum(per_seg, dim=0) - per_seg  # (P*C,) first entry of each segment
        before = torch.cat([torch.zeros(1, dtype=torch.int64), steps])[seg_start]  # steps before each segment
        local = steps - before[seg] - 1
        return local * pes + seg // cols, seg % cols

    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, col) of the real (non-padding) entries, in storage order (by PE, column, row)."""
        row, col = self.entry_positions()
        real = self.code_values() != 0
        return row[real], col[real]

    @property
    def nnz(self) -> int:
        """Real (non-padding) entries."""
        return int((self.code_values() != 0).sum())

    def unpack(self) -> torch.Tensor:
        """The shared-weight tensor: codebook values at the stored positions, zeros elsewhere."""
        row, col = self.entry_positions()
        dense = torch.zeros(self.matrix_shape, dtype=self.codebook.dtype)  # (R, C)
        dense[row, col] = self.codebook[self.code_values()]
        return dense.reshape(self.shape)

    def unpack_with(self, values: torch.Tensor) -> torch.Tensor:
        """Place ``values`` ((nnz,), in the order of :meth:`positions`) at the stored positions.

        With the original nonzeros (``w.reshape(R, -1)[e.positions()]``; for one PE simply the
        column-major nonzeros) this reproduces the original tensor exactly.
        """
        row, col = self.positions()
        if values.numel() != row.numel():
            raise ConfigError(f"unpack_with needs {row.numel()} values (one per stored nonzero), got {values.numel()}")
        dense = torch.zeros(self.matrix_shape, dtype=values.dtype)
        dense[row, col] = values.reshape(-1).cpu()
        return dense.reshape(self.shape)

    def huffman_nbytes(self) -> int:
        """Bytes if the relative indices and the codes were Huffman-coded (Deep Compression's last stage).

        Each stream gets its own optimal prefix code; the code tables (at most 2**index_bits and
        2**bits lengths) are not counted. Column pointers and codebook are counted as stored.
        """
        idx_bits = huffman_bits(self.relative_indices())
        code_bits = huffman_bits(self.code_values())
        return -(-idx_bits // 8) + -(-code_bits // 8) + tensor_nbytes(self.col_ptr) + tensor_nbytes(self.codebook)

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"rel_index": self.rel_index, "codes": self.codes, "col_ptr": self.col_ptr,
                "codebook": self.codebook}

"""Block sparse storage: BSR (block CSR) and Blocked-ELL (a fixed number of blocks per block-row).

Both tile the 2-D view into (h, w) blocks and store every block that holds a nonzero in full.
BSR indexes the kept blocks like CSR indexes values; Blocked-ELL (cuSPARSE's block format) gives
every block-row the same number of slots, padding short rows with zero blocks whose column index
is -1, so a kernel walks a regular (block_rows, width) grid.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from prunekit.errors import ConfigError
from prunekit.sparse.formats.base import (
    SparseFormat,
    as_matrix,
    index_dtype,
    kernel_index_dtype,
    signed_index_dtype,
)


def to_blocks(mat: torch.Tensor, block: tuple[int, int], fmt: str) -> torch.Tensor:
    """Tile a (R, C) matrix into (R/h, C/w, h, w) blocks; error if (h, w) does not divide it.

    >>> to_blocks(torch.arange(8.).reshape(2, 4), (2, 2), "BSR")[0, 1].tolist()
    [[2.0, 3.0], [6.0, 7.0]]
    """
    if len(block) != 2 or any(not isinstance(b, int) or b < 1 for b in block):
        raise ConfigError(f"{fmt} block must be two positive ints (h, w), got {block}")
    (rows, cols), (h, w) = mat.shape, block
    if rows % h or cols % w:
        raise ConfigError(f"{fmt} block {h}x{w} does not divide the weight's 2-D view {rows}x{cols}; "
                          f"pick a block whose h divides {rows} and w divides {cols}")
    return mat.reshape(rows // h, h, cols // w, w).transpose(1, 2)  # (Rb, Cb, h, w)


def from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_blocks`: (Rb, Cb, h, w) -> (Rb*h, Cb*w)."""
    rb, cb, h, w = blocks.shape
    return blocks.transpose(1, 2).reshape(rb * h, cb * w)


@dataclass(frozen=True, eq=False)
class BSRMatrix(SparseFormat):
    """Block CSR: kept (h, w) blocks, their block-column indices and block-row pointers.

    >>> wt = torch.zeros(4, 4); wt[0, 3] = 1.; wt[3, 0] = 2.
    >>> b = BSRMatrix.pack(wt, block=(2, 2))
    >>> b.col_indices.tolist(), b.row_ptr.tolist(), tuple(b.values.shape)
    ([1, 0], [0, 1, 2], (2, 2, 2))
    >>> b.nbytes()   # 2 blocks * 4 fp32 + 2 uint8 cols + 3 uint8 ptrs
    37
    >>> torch.equal(b.unpack(), wt)
    True
    """

    values: torch.Tensor  # (nblocks, h, w) dense dtype
    col_indices: torch.Tensor  # (nblocks,) block columns, smallest dtype
    row_ptr: torch.Tensor  # (R/h + 1,) smallest dtype holding nblocks
    block: tuple[int, int]
    shape: tuple[int, ...]

    @classmethod
    def pack(cls, dense: torch.Tensor, block: tuple[int, int] = (4, 4)) -> BSRMatrix:
        """Keep every (h, w) block of ``dense``'s 2-D view that holds a nonzero."""
        mat, shape = as_matrix(dense, "BSRMatrix")  # (R, C)
        blocks = to_blocks(mat, tuple(block), "BSRMatrix")  # (Rb, Cb, h, w)
        kept = (blocks != 0).flatten(2).any(dim=-1)  # (Rb, Cb)
        _, col = kept.nonzero(as_tuple=True)
        nblocks = int(col.numel())
        row_ptr = torch.zeros(kept.shape[0] + 1, dtype=torch.int64)
        row_ptr[1:] = torch.cumsum(kept.sum(dim=1), dim=0)
        return cls(values=blocks[kept].clone(), col_indices=col.to(index_dtype(max(kept.shape[1] - 1, 0))),
                   row_ptr=row_ptr.to(index_dtype(nblocks)), block=tuple(block), shape=shape)

    @property
    def nblocks(self) -> int:
        """Number of stored blocks."""
        return int(self.values.shape[0])

    def block_grid(self) -> tuple[int, int]:
        """(block rows, block columns) of the 2-D view."""
        (rows, cols), (h, w) = self.matrix_shape, self.block
        return rows // h, cols // w

    def unpack(self) -> torch.Tensor:
        """The dense tensor, in the original shape and dtype."""
        rb, cb = self.block_grid()
        h, w = self.block
        blocks = torch.zeros(rb, cb, h, w, dtype=self.values.dtype)
        counts = self.row_ptr[1:].to(torch.int64) - self.row_ptr[:-1].to(torch.int64)  # (Rb,)
        rows = torch.repeat_interleave(torch.arange(rb), counts)
        blocks[rows, self.col_indices.to(torch.int64)] = self.values
        return from_blocks(blocks).reshape(self.shape)

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"values": self.values, "col_indices": self.col_indices, "row_ptr": self.row_ptr}

    def to_torch(self, device: torch.device | str | None = None) -> torch.Tensor:
        """A 2-D ``torch.sparse_bsr`` tensor (int32 indices when they fit) for kernels.

        >>> BSRMatrix.pack(torch.eye(4), block=(2, 2)).to_torch().layout
        torch.sparse_bsr
        """
        idx = kernel_index_dtype(self.nblocks, self.block_grid()[1])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
            return torch.sparse_bsr_tensor(self.row_ptr.to(idx), self.col_indices.to(idx), self.values,
                                           size=self.matrix_shape, device=device, check_invariants=False)


@dataclass(frozen=True, eq=False)
class BlockedELL(SparseFormat):
    """Blocked-ELL: every block-row stores ``width`` blocks; unused slots have column -1.

    >>> wt = torch.zeros(4, 6); wt[0, 0] = 1.; wt[0, 5] = 2.; wt[3, 2] = 3.
    >>> e = BlockedELL.pack(wt, block=(2, 2))
    >>> e.width, e.col_indices.tolist()
    (2, [[0, 2], [1, -1]])
    >>> e.nbytes()   # 2*2 blocks * 4 fp32 * 4 bytes + 4 int8 indices
    68
    >>> torch.equal(e.unpack(), wt)
    True
    """

    values: torch.Tensor  # (Rb, width, h, w) dense dtype; padding blocks are zero
    col_indices: torch.Tensor  # (Rb, width) block columns, -1 = padding, smallest signed dtype
    block: tuple[int, int]
    shape: tuple[int, ...]

    @classmethod
    def pack(cls, dense: torch.Tensor, block: tuple[int, int] = (4, 4), width: int | None = None) -> BlockedELL:
        """Store ``dense``'s nonzero blocks with ``width`` slots per block-row (default: the fullest row)."""
        mat, shape = as_matrix(dense, "BlockedELL")  # (R, C)
        blocks = to_blocks(mat, tuple(block), "BlockedELL")  # (Rb, Cb, h, w)
        rb, cb, h, w = blocks.shape
        kept = (blocks != 0).flatten(2).any(dim=-1)  # (Rb, Cb)
        counts = kept.sum(dim=1)  # (Rb,)
        need = int(counts.max()) if rb else 0
        if width is None:
            width = need
        elif width < need:
            r = int(counts.argmax())
            raise ConfigError(f"BlockedELL width {width} is too small: block-row {r} has {need} nonzero "
                              f"blocks; use width >= {need} (or leave it None)")
        # Slot order: kept blocks by column, then padding (key puts kept first, columns ascending).
        col = torch.arange(cb).expand(rb, cb)
        order = torch.argsort(torch.where(kept, col, cb + col), dim=1, stable=True)[:, :width]  # (Rb, <=width)
        slot_kept = kept.gather(1, order)
        cols = torch.where(slot_kept, order, torch.full_like(order, -1))
        vals = blocks[torch.arange(rb)[:, None], order] * slot_kept[..., None, None]  # (Rb, <=width, h, w)
        if width > cb:  # more slots than block columns: pad further
            cols = torch.cat([cols, torch.full((rb, width - cb), -1, dtype=cols.dtype)], dim=1)
            vals = torch.cat([vals, vals.new_zeros(rb, width - cb, h, w)], dim=1)
        return cls(values=vals.contiguous(), col_indices=cols.to(signed_index_dtype(max(cb - 1, 0))),
                   block=tuple(block), shape=shape)

    @property
    def width(self) -> int:
        """Block slots per block-row."""
        return int(self.col_indices.shape[1])

    def unpack(self) -> torch.Tensor:
        """The dense tensor, in the original shape and dtype."""
        (rows, cols), (h, w) = self.matrix_shape, self.block
        rb, cb = rows // h, cols // w
        blocks = torch.zeros(rb, cb, h, w, dtype=self.values.dtype)
        cols_idx = self.col_indices.to(torch.int64)  # (Rb, width)
        valid = cols_idx >= 0
        r = torch.arange(rb)[:, None].expand_as(cols_idx)
        blocks[r[valid], cols_idx[valid]] = self.values[valid]
        return from_blocks(blocks).reshape(self.shape)

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"values": self.values, "col_indices": self.col_indices}

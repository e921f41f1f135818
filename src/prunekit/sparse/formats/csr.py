"""Compressed sparse row (CSR) storage: values, column indices, row pointers.

Column indices use the smallest dtype that holds the largest column (uint8 / int16 / int32 /
int64) and row pointers the smallest that holds nnz, so small layers really are small. A conv
weight is stored through its 2-D GEMM view (Cout, Cin*kh*kw) and its shape is kept.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from prunekit.errors import ConfigError
from prunekit.sparse.formats.base import SparseFormat, as_matrix, index_dtype, kernel_index_dtype


@dataclass(frozen=True, eq=False)
class CSRMatrix(SparseFormat):
    """CSR form of a 2-D (or flattened conv) weight.

    >>> w = torch.tensor([[0., 2., 0.], [0., 0., 0.], [1., 0., 3.]])
    >>> m = CSRMatrix.pack(w)
    >>> m.values.tolist(), m.col_indices.tolist(), m.row_ptr.tolist()
    ([2.0, 1.0, 3.0], [1, 0, 2], [0, 1, 1, 3])
    >>> m.col_indices.dtype, m.nbytes()   # 3*4 value bytes + 3*1 + 4*1 index bytes
    (torch.uint8, 19)
    >>> torch.equal(m.unpack(), w)
    True
    """

    values: torch.Tensor  # (nnz,) dense dtype
    col_indices: torch.Tensor  # (nnz,) smallest dtype holding cols-1
    row_ptr: torch.Tensor  # (rows+1,) smallest dtype holding nnz
    shape: tuple[int, ...]

    @classmethod
    def pack(cls, dense: torch.Tensor) -> CSRMatrix:
        """Store the nonzeros of ``dense`` (>= 2-D; trailing dims are flattened)."""
        mat, shape = as_matrix(dense, "CSRMatrix")  # (R, C)
        rows, cols = mat.shape
        nonzero = mat != 0  # (R, C)
        _, col = nonzero.nonzero(as_tuple=True)  # row-major order
        counts = nonzero.sum(dim=1)  # (R,)
        nnz = int(col.numel())
        row_ptr = torch.zeros(rows + 1, dtype=torch.int64)
        row_ptr[1:] = torch.cumsum(counts, dim=0)
        return cls(
            values=mat[nonzero].clone(),
            col_indices=col.to(index_dtype(max(cols - 1, 0))),
            row_ptr=row_ptr.to(index_dtype(nnz)),
            shape=shape,
        )

    @classmethod
    def from_torch(cls, sparse: torch.Tensor, shape: tuple[int, ...] | None = None) -> CSRMatrix:
        """Build from a torch ``sparse_csr`` tensor (2-D); ``shape`` restores a conv's shape."""
        if sparse.layout != torch.sparse_csr or sparse.ndim != 2:
            raise ConfigError(f"expected a 2-D torch.sparse_csr tensor, got layout {sparse.layout} "
                              f"with shape {tuple(sparse.shape)}")
        rows, cols = (int(s) for s in sparse.shape)
        target = tuple(shape) if shape is not None else (rows, cols)
        if target[0] != rows or torch.Size(target).numel() != rows * cols:
            raise ConfigError(f"shape {target} does not match the sparse matrix {(rows, cols)}")
        crow, col = sparse.crow_indices().cpu(), sparse.col_indices().cpu()
        nnz = int(col.numel())
        return cls(values=sparse.values().detach().cpu().clone(),
                   col_indices=col.to(index_dtype(max(cols - 1, 0))),
                   row_ptr=crow.to(index_dtype(nnz)), shape=target)

    @property
    def nnz(self) -> int:
        """Number of stored values."""
        return int(self.values.numel())

    def row_indices(self) -> torch.Tensor:
        """The row of every stored value, (nnz,) int64 (the COO expansion of ``row_ptr``)."""
        rows = self.matrix_shape[0]
        counts = (self.row_ptr[1:].to(torch.int64) - self.row_ptr[:-1].to(torch.int64))  # (R,)
        return torch.repeat_interleave(torch.arange(rows), counts)

    def unpack(self) -> torch.Tensor:
        """The dense tensor, in the original shape and dtype."""
        dense = torch.zeros(self.matrix_shape, dtype=self.values.dtype)  # (R, C)
        dense[self.row_indices(), self.col_indices.to(torch.int64)] = self.values
        return dense.reshape(self.shape)

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"values": self.values, "col_indices": self.col_indices, "row_ptr": self.row_ptr}

    def to_torch(self, device: torch.device | str | None = None) -> torch.Tensor:
        """A 2-D ``torch.sparse_csr`` tensor (int32 indices when they fit, else int64) for kernels.

        >>> CSRMatrix.pack(torch.eye(3)).to_torch().crow_indices().dtype
        torch.int32
        """
        rows, cols = self.matrix_shape
        idx = kernel_index_dtype(self.nnz, cols)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(self.row_ptr.to(idx), self.col_indices.to(idx), self.values,
                                           size=(rows, cols), device=device, check_invariants=False)

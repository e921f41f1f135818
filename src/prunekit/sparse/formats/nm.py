"""N:M compressed storage (e.g. 2:4 for sparse tensor cores, Mishra et al. 2021).

Along each row of the 2-D view, every group of M consecutive weights keeps at most N nonzeros.
The kept values are pushed left into a (rows, cols*N/M) array and each kept value gets a
ceil(log2 M)-bit index telling its position inside its group (2 bits per value for 2:4, i.e.
4 bits per group of 4: the metadata budget of the sparse tensor core layout). A group with fewer
than N nonzeros is padded with explicit zeros at its lowest unused positions, so indices stay
distinct and ascending inside each group.

For a conv weight (Cout, Cin, kh, kw) the groups run along ``Cin`` at each kernel tap, as
``prunekit.granularity.NM`` prunes them: the 2-D view is (Cout, kh*kw*Cin) with the input
channel fastest (``NMMatrix.matrix_view``), i.e. the GEMM K order of a channels-last im2col.

The index stream is row-major (row, group, slot), LSB first (see ``base.pack_bits``); the
hardware's interleaved metadata order for ``mma.sp`` is a permutation of it that a GPU kernel
applies itself (e.g. ``torch.sparse.to_sparse_semi_structured`` on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.errors import ConfigError
from prunekit.sparse.formats.base import SparseFormat, as_matrix, bits_for, pack_bits, unpack_bits


def check_nm(mat: torch.Tensor, n: int, m: int) -> None:
    """Raise ``ConfigError`` naming the first group of ``mat`` (2-D) with more than n nonzeros.

    >>> check_nm(torch.tensor([[1., 0., 2., 0.]]), 2, 4)
    >>> check_nm(torch.tensor([[1., 3., 2., 0.]]), 2, 4)
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: weight is not 2:4 sparse: row 0, group 0 (columns 0..3) has 3 nonzeros, at most 2 allowed; prune it with NM(2, 4) first
    """
    rows, cols = mat.shape
    if cols % m:
        raise ConfigError(f"N:M needs the input dimension ({cols}) to be a multiple of m={m}; "
                          f"pad the weight or pick an m that divides {cols}")
    counts = (mat.reshape(rows, cols // m, m) != 0).sum(dim=-1)  # (R, G)
    bad = (counts > n).nonzero()
    if bad.numel():
        r, g = (int(v) for v in bad[0])
        raise ConfigError(f"weight is not {n}:{m} sparse: row {r}, group {g} (columns {g * m}..{g * m + m - 1}) "
                          f"has {int(counts[r, g])} nonzeros, at most {n} allowed; prune it with NM({n}, {m}) first")


@dataclass(frozen=True, eq=False)
class NMMatrix(SparseFormat):
    """N:M compressed weight: kept values plus packed in-group indices.

    >>> w = torch.tensor([[0., 5., 0., 7., 1., 0., 0., 0.]])
    >>> p = NMMatrix.pack(w, n=2, m=4)
    >>> p.values.tolist(), p.indices().tolist()   # 2nd group has one nonzero: padded with a zero
    ([[5.0, 7.0, 1.0, 0.0]], [[1, 3, 0, 1]])
    >>> p.column_indices().tolist()
    [[1, 3, 4, 5]]
    >>> p.nbytes()   # 4 fp32 values + 4 indices * 2 bits = 16 + 1
    17
    >>> torch.equal(p.unpack(), w)
    True
    """

    values: torch.Tensor  # (R, C*n/m) dense dtype
    index_bits: torch.Tensor  # (ceil(R*C*n/m * bits / 8),) uint8
    n: int
    m: int
    shape: tuple[int, ...]

    @classmethod
    def pack(cls, dense: torch.Tensor, n: int = 2, m: int = 4) -> NMMatrix:
        """Compress ``dense`` (>= 2-D), checking that every group of m keeps at most n nonzeros."""
        if not (isinstance(n, int) and isinstance(m, int) and 1 <= n <= m and m >= 2):
            raise ConfigError(f"N:M needs integers 1 <= n <= m with m >= 2, got n={n}, m={m}")
        _, shape = as_matrix(dense, "NMMatrix")
        if len(shape) > 2 and shape[1] % m:
            raise ConfigError(f"N:M on a conv weight groups input channels at each kernel tap, so Cin "
                              f"({shape[1]}) must be a multiple of m={m}; exclude this layer or pick another m")
        mat = cls.matrix_view(dense.detach().cpu())  # (R, C)
        check_nm(mat, n, m)
        rows, cols = mat.shape
        groups = mat.reshape(rows, cols // m, m)  # (R, G, m)
        pos = torch.arange(m)
        # Nonzeros first, then the lowest unused positions; ties broken towards lower positions.
        key = (groups != 0).to(torch.int64) * (2 * m) + (m - pos)  # (R, G, m)
        idx = key.topk(n, dim=-1).indices.sort(dim=-1).values  # (R, G, n)
        vals = groups.gather(-1, idx)  # (R, G, n)
        return cls(values=vals.reshape(rows, -1).clone(), index_bits=pack_bits(idx, bits_for(m)),
                   n=n, m=m, shape=shape)

    @staticmethod
    def matrix_view(t: torch.Tensor) -> torch.Tensor:
        """The 2-D view N:M groups run along: (out, in) as is, conv (Cout, Cin, kh, kw) -> (Cout, kh*kw*Cin).

        >>> NMMatrix.matrix_view(torch.arange(8.).reshape(1, 2, 2, 2)).tolist()
        [[0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]]
        """
        if t.ndim > 2:
            t = t.movedim(1, -1)  # (Cout, *kernel, Cin)
        return t.reshape(t.shape[0], -1)

    def _from_matrix_view(self, mat: torch.Tensor) -> torch.Tensor:
        if len(self.shape) > 2:
            moved = (self.shape[0], *self.shape[2:], self.shape[1])
            return mat.reshape(moved).movedim(-1, 1).contiguous()
        return mat.reshape(self.shape)

    @property
    def bits(self) -> int:
        """Index bits per kept value: ceil(log2 m)."""
        return bits_for(self.m)

    def indices(self) -> torch.Tensor:
        """In-group position of every kept value, (R, C*n/m) int64."""
        return unpack_bits(self.index_bits, self.bits, self.values.numel()).reshape(self.values.shape)

    def column_indices(self) -> torch.Tensor:
        """Column of every kept value in ``matrix_view``, (R, C*n/m) int64: for gather kernels."""
        kept = self.values.shape[1]
        group = torch.arange(kept) // self.n  # (C*n/m,)
        return group * self.m + self.indices()

    def unpack(self) -> torch.Tensor:
        """The dense tensor, in the original shape and dtype."""
        dense = torch.zeros(self.matrix_shape, dtype=self.values.dtype)  # (R, C)
        dense.scatter_(1, self.column_indices(), self.values)
        return self._from_matrix_view(dense)

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"values": self.values, "index_bits": self.index_bits}

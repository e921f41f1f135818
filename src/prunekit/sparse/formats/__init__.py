"""Sparse storage formats: pack a dense-with-zeros weight, unpack it exactly, count its bytes.

>>> import torch
>>> from prunekit.sparse.formats import CSRMatrix
>>> w = torch.tensor([[0., 1.], [2., 0.]])
>>> torch.equal(CSRMatrix.pack(w).unpack(), w)
True
"""

from prunekit.sparse.formats.base import (
    SparseFormat,
    bits_for,
    index_dtype,
    pack_bits,
    signed_index_dtype,
    unpack_bits,
)
from prunekit.sparse.formats.csr import CSRMatrix
from prunekit.sparse.formats.nm import NMMatrix, check_nm

__all__ = [
    "CSRMatrix",
    "NMMatrix",
    "SparseFormat",
    "bits_for",
    "check_nm",
    "index_dtype",
    "pack_bits",
    "signed_index_dtype",
    "unpack_bits",
]

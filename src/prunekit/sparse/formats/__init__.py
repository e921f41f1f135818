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
from prunekit.sparse.formats.bsr import BlockedELL, BSRMatrix
from prunekit.sparse.formats.csr import CSRMatrix
from prunekit.sparse.formats.eie import EIEMatrix
from prunekit.sparse.formats.huffman import huffman_bits, huffman_code_lengths
from prunekit.sparse.formats.nm import NMMatrix, check_nm
from prunekit.sparse.formats.packet_csr import PacketCSRMatrix
from prunekit.sparse.formats.pattern import FKWWeight, PatternGroup
from prunekit.sparse.formats.sharing import (
    SharedWeightLinear,
    centroid_grad,
    kmeans_1d,
    nearest_codes,
    share_linear_layers,
    share_weights,
    unshare_linear_layers,
)

__all__ = [
    "BSRMatrix",
    "BlockedELL",
    "CSRMatrix",
    "EIEMatrix",
    "FKWWeight",
    "NMMatrix",
    "PacketCSRMatrix",
    "PatternGroup",
    "SharedWeightLinear",
    "SparseFormat",
    "bits_for",
    "centroid_grad",
    "check_nm",
    "huffman_bits",
    "huffman_code_lengths",
    "index_dtype",
    "kmeans_1d",
    "nearest_codes",
    "pack_bits",
    "share_linear_layers",
    "share_weights",
    "signed_index_dtype",
    "unpack_bits",
    "unshare_linear_layers",
]

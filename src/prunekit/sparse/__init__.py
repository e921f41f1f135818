"""Sparse storage formats, sparse kernels, inference modules and measured deployment.

* ``prunekit.sparse.formats``: CSR, packet CSR (8-bit offsets), N:M, BSR / Blocked-ELL, EIE, pattern (FKW) packing.
* ``prunekit.sparse.kernels``: which sparse x dense kernels run here (torch CSR/BSR, numba CSR and packet CSR).
* ``SparseLinear`` / ``SparseConv2d``: layers computed from a packed weight.
* ``deploy``: per layer, keep a sparse kernel only where it measurably beats dense.
* ``activation_sparsity``: zeros in each layer's input (dynamic sparsity after ReLU).

>>> import torch
>>> from torch import nn
>>> lin = nn.Linear(8, 4)
>>> with torch.no_grad():
...     _ = lin.weight.masked_fill_(lin.weight.abs() < 0.2, 0.0)
...     torch.allclose(SparseLinear.from_dense(lin, "torch_csr")(torch.ones(1, 8)), lin(torch.ones(1, 8)))
True
"""

from prunekit.sparse.activations import ActivationSparsity, activation_sparsity
from prunekit.sparse.deployment import DeployReport, LayerChoice, deploy
from prunekit.sparse.formats import (
    BlockedELL,
    BSRMatrix,
    CSRMatrix,
    EIEMatrix,
    FKWWeight,
    NMMatrix,
    PacketCSRMatrix,
    PatternGroup,
    SparseFormat,
)
from prunekit.sparse.kernels import KERNELS, available_kernels, numba_available
from prunekit.sparse.kernels.evict import TensorEvictor, evict_available
from prunekit.sparse.modules import SemiStructuredLinear, SparseConv2d, SparseLinear, check_semi_structured

__all__ = [
    "KERNELS",
    "ActivationSparsity",
    "BSRMatrix",
    "BlockedELL",
    "CSRMatrix",
    "DeployReport",
    "EIEMatrix",
    "FKWWeight",
    "LayerChoice",
    "NMMatrix",
    "PacketCSRMatrix",
    "PatternGroup",
    "SemiStructuredLinear",
    "SparseConv2d",
    "SparseFormat",
    "SparseLinear",
    "TensorEvictor",
    "activation_sparsity",
    "available_kernels",
    "check_semi_structured",
    "deploy",
    "evict_available",
    "numba_available",
]

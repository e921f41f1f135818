"""The sparse kernels as registered objects: what each one stores and how it multiplies.

A :class:`Kernel` packs an (N, K) weight into buffers of the sparse module that holds it and
computes ``W @ X`` from them; its capability flags tell the modules which special path it has (a
batch-1 numba loop, skipping zero inputs, a direct convolution, Linear only). The modules look a
kernel up by name (:func:`get_kernel`) and never switch on names themselves, so a new kernel plugs
in with :func:`register_kernel`.

>>> get_kernel("torch_csr").name, get_kernel("numba_packet").linear_only
('torch_csr', True)
>>> get_kernel("cuda_magic")
Traceback (most recent call last):
...
prunekit.errors.ConfigError: unknown kernel 'cuda_magic'; choose one of dense, torch_csr, ...
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError, close_matches
from prunekit.sparse.formats import BSRMatrix, CSRMatrix, PacketCSRMatrix
from prunekit.sparse.kernels import numba_csr

__all__ = ["Kernel", "get_kernel", "kernel_names", "register_kernel"]


def _ptr_dtype(largest: int) -> torch.dtype:
    return torch.int32 if largest < 2**31 else torch.int64


class Kernel:
    """Base: a named kernel. Subclasses set the flags and implement :meth:`pack` / :meth:`matmul_t`."""

    name = ""
    needs_numba = False
    linear_only = False  # no conv path
    batch1_loop = False  # SparseLinear runs batch 1 through numba_csr.spmv_into on the numba views
    skips_zero_inputs = False  # SparseLinear's product reads only the weight columns of nonzero inputs
    direct_conv = False  # SparseConv2d computes without an im2col matrix
    dense_op = False  # the layer's own dense op (F.linear / F.conv2d on the stored weight)
    uses_blocks = False  # stores square blocks (the module's ``block``)

    def available(self) -> bool:
        return not self.needs_numba or numba_csr.AVAILABLE

    def pack(self, op: nn.Module, w: torch.Tensor, block: tuple[int, int], packed: Any = None) -> None:
        """Register on ``op`` the buffers this kernel reads for the (N, K) fp32 weight ``w``."""
        raise NotImplementedError

    def dense(self, op: nn.Module) -> torch.Tensor:
        """The (N, K) weight rebuilt from ``op``'s buffers."""
        return _torch_sparse(op, self).to_dense()

    def stored(self, op: nn.Module) -> int:
        """Stored values (nonzeros, or stored block elements)."""
        return int(op.values.numel())

    def index_dtype(self, op: nn.Module) -> str:
        return str(op.col_indices.dtype).replace("torch.", "")

    def matmul_t(self, op: nn.Module, xt: torch.Tensor) -> torch.Tensor:
        """Y (N, L) = W (N, K) @ X (K, L)."""
        return torch.sparse.mm(_torch_sparse(op, self), xt)

    def numba_arrays(self, op: nn.Module) -> numba_csr.CSRArrays:
        raise ConfigError(f"kernel {self.name!r} has no numba arrays")

    def __repr__(self) -> str:
        return f"<kernel {self.name}>"


def _pack_csr(op: nn.Module, fmt: CSRMatrix | BSRMatrix, w: torch.Tensor, keep_narrow_index: bool) -> None:
    ptr = _ptr_dtype(max(fmt.values.shape[0], *w.shape))
    # torch kernels need row pointers and columns of one dtype; numba reads any index dtype.
    col = fmt.col_indices.dtype if keep_narrow_index else ptr
    op.register_buffer("values", fmt.values.contiguous())
    op.register_buffer("col_indices", fmt.col_indices.to(col).contiguous())
    op.register_buffer("row_ptr", fmt.row_ptr.to(ptr).contiguous())


def _csr_arrays(op: nn.Module) -> numba_csr.CSRArrays:
    """The numba views of ``op``'s CSR buffers (W for numba_csr, W.T for numba_csc) and its bias."""
    return numba_csr.as_arrays(op.row_ptr, op.col_indices, op.values, op.bias)


def _torch_sparse(op: nn.Module, kernel: Kernel) -> torch.Tensor:
    """The weight as a torch sparse CSR/BSR tensor over ``op``'s buffers (no copy)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
        make = torch.sparse_bsr_tensor if kernel.name == "torch_bsr" else torch.sparse_csr_tensor
        index = op.col_indices.to(op.row_ptr.dtype)  # numba kernels keep narrower indices
        if kernel.name == "numba_csc":  # stored as W.T (K, N) in CSR
            n, k = op.matrix_shape
            return make(op.row_ptr, index, op.values, size=(k, n), check_invariants=False).t()
        return make(op.row_ptr, index, op.values, size=op.matrix_shape, check_invariants=False)


class DenseKernel(Kernel):
    """The layer's own dense op: the baseline every sparse kernel must beat."""

    name = "dense"
    dense_op = True

    def pack(self, op, w, block, packed=None) -> None:
        op.register_buffer("weight2d", w.clone().contiguous())

    def dense(self, op) -> torch.Tensor:
        return op.weight2d.clone()

    def stored(self, op) -> int:
        return int(op.weight2d.count_nonzero())

    def index_dtype(self, op) -> str:
        return "-"

    def matmul_t(self, op, xt) -> torch.Tensor:
        return op.weight2d @ xt


class TorchCSR(Kernel):
    """``torch.sparse.mm`` with a ``sparse_csr`` weight (always available)."""

    name = "torch_csr"

    def pack(self, op, w, block, packed=None) -> None:
        _pack_csr(op, CSRMatrix.pack(w), w, keep_narrow_index=False)


class TorchBSR(Kernel):
    """``torch.sparse.mm`` with a ``sparse_bsr`` weight (square blocks that divide the weight)."""

    name = "torch_bsr"
    uses_blocks = True

    def pack(self, op, w, block, packed=None) -> None:
        _pack_csr(op, BSRMatrix.pack(w, block=tuple(block)), w, keep_narrow_index=False)


class NumbaCSR(Kernel):
    """The compiled CSR loops (prefetching batch-1 loop, CSR x dense, direct sparse convolution)."""

    name = "numba_csr"
    needs_numba = True
    batch1_loop = True
    direct_conv = True

    def pack(self, op, w, block, packed=None) -> None:
        _pack_csr(op, CSRMatrix.pack(w), w, keep_narrow_index=True)

    def numba_arrays(self, op) -> numba_csr.CSRArrays:
        return _csr_arrays(op)

    def matmul_t(self, op, xt) -> torch.Tensor:
        return numba_csr.matmul_t(op._numba_arrays(), xt.to(torch.float32))


class NumbaPacket(NumbaCSR):
    """The batch-1 loop over a packet-CSR weight (uint8 column offsets in packets of 16). Linear only."""

    name = "numba_packet"
    linear_only = True
    direct_conv = False

    def pack(self, op, w, block, packed=None) -> None:
        packets = PacketCSRMatrix.pack(w) if packed is None else packed
        op.register_buffer("values", packets.values.contiguous())
        op.register_buffer("offsets", packets.offsets.contiguous())
        op.register_buffer("bases", packets.bases.contiguous())
        op.register_buffer("packet_ptr", packets.packet_ptr.to(_ptr_dtype(packets.packets)).contiguous())

    def dense(self, op) -> torch.Tensor:
        return PacketCSRMatrix(op.values, op.offsets, op.bases, op.packet_ptr, op.matrix_shape).unpack()

    def stored(self, op) -> int:
        return int(op.values.count_nonzero())  # packets hold zero padding

    def index_dtype(self, op) -> str:
        return "uint8+" + str(op.bases.dtype).replace("torch.", "")

    def numba_arrays(self, op) -> numba_csr.CSRArrays:
        return numba_csr.as_arrays(op.packet_ptr, op.offsets, op.values, op.bias, op.bases)


class NumbaCSC(Kernel):
    """The weight stored by columns; the loop skips the columns whose input is zero. Linear only."""

    name = "numba_csc"
    needs_numba = True
    linear_only = True
    skips_zero_inputs = True

    def pack(self, op, w, block, packed=None) -> None:
        _pack_csr(op, CSRMatrix.pack(w.t().contiguous()), w, keep_narrow_index=True)  # CSR of W.T (K, N)

    def numba_arrays(self, op) -> numba_csr.CSRArrays:
        return _csr_arrays(op)


_KERNELS: dict[str, Kernel] = {}


def register_kernel(kernel: Kernel) -> Kernel:
    """Add (or replace) a kernel by its ``name``; returns it."""
    if not isinstance(kernel, Kernel) or not kernel.name:
        raise ConfigError(f"register_kernel takes a named Kernel instance, got {kernel!r}")
    _KERNELS[kernel.name] = kernel
    return kernel


for _k in (DenseKernel(), TorchCSR(), TorchBSR(), NumbaCSR(), NumbaPacket(), NumbaCSC()):
    register_kernel(_k)


def kernel_names() -> tuple[str, ...]:
    """Every registered kernel name, in registration order."""
    return tuple(_KERNELS)


def get_kernel(name: str) -> Kernel:
    """The kernel registered as ``name`` (ConfigError listing every kernel otherwise)."""
    kernel = _KERNELS.get(name)
    if kernel is None:
        names = kernel_names()
        raise ConfigError(f"unknown kernel {name!r}; choose one of {', '.join(names)}; "
                          f"{close_matches(str(name), list(names))}")
    return kernel

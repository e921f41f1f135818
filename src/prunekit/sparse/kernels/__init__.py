"""Sparse x dense kernels and which of them this machine can run.

The kernels are registered objects (:mod:`prunekit.sparse.kernels.impl`: what each stores, how it
multiplies, which special paths it has). Kernel names used across ``prunekit.sparse`` (``SparseLinear.from_dense(kernel=...)``, ``deploy``):

* ``dense``: the layer's own dense op (the baseline every sparse kernel must beat);
* ``torch_csr``: ``torch.sparse.mm`` with a ``sparse_csr`` weight (always available);
* ``torch_bsr``: ``torch.sparse.mm`` with a ``sparse_bsr`` weight (blocks must divide the weight);
* ``numba_csr``: the compiled CSR loops of :mod:`prunekit.sparse.kernels.numba_csr` (needs numba);
* ``numba_packet``: the batch-1 loop over a packet-CSR weight
  (:class:`prunekit.sparse.formats.PacketCSRMatrix`: uint8 column offsets in packets of 16, ~13 %
  fewer bytes than int16 CSR up to ~93 % sparsity, one 16-lane gather per packet). Linear only (needs numba);
* ``numba_csc``: the weight stored by columns; the loop skips the columns whose input is zero,
  so it exploits activation sparsity (EIE-style) as well as weight sparsity. Linear only (needs numba).

>>> "torch_csr" in available_kernels()
True
"""

from __future__ import annotations

from prunekit.sparse.kernels import numba_csr

KERNELS: tuple[str, ...] = ("dense", "torch_csr", "torch_bsr", "numba_csr", "numba_packet", "numba_csc")
NUMBA_KERNELS: tuple[str, ...] = ("numba_csr", "numba_packet", "numba_csc")


def numba_available() -> bool:
    """Whether the numba kernels can run (``pip install numba``)."""
    return numba_csr.AVAILABLE


def available_kernels() -> tuple[str, ...]:
    """The registered kernels usable on this machine (built-ins in :data:`KERNELS` order, then any
    registered with :func:`prunekit.sparse.kernels.impl.register_kernel`)."""
    from prunekit.sparse.kernels.impl import get_kernel, kernel_names

    return tuple(k for k in kernel_names() if get_kernel(k).available())


__all__ = ["KERNELS", "NUMBA_KERNELS", "available_kernels", "numba_available"]

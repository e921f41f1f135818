"""Evict given tensors from the CPU caches (x86 ``clflush``, compiled with numba).

Timing a layer "with its weights in DRAM" by flushing the whole cache (writing a buffer larger
than the last-level cache) also evicts the interpreter, the dispatcher and every Python object
on the call path: measured on this repository's 2-core Xeon, a 64x64 ``nn.Linear`` then takes
~200 us instead of ~6 us, and so does its sparse twin, which blurs the ratio of any kernel
that runs in about a millisecond. :class:`TensorEvictor` flushes only the lines of the tensors
given (weights, input), so the next call streams them from DRAM while the code path stays warm,
as for one layer of a network larger than the cache.

>>> import torch
>>> evictor = TensorEvictor([torch.zeros(1000)]) if evict_available() else None
>>> evictor() if evictor is not None else None
"""

from __future__ import annotations

import platform
from collections.abc import Iterable

import torch

from prunekit.errors import ConfigError
from prunekit.sparse.kernels import numba_csr


def evict_available() -> bool:
    """Whether :class:`TensorEvictor` can run here: numba installed, an x86-64 CPU and the fast loops built."""
    if not (numba_csr.AVAILABLE and platform.machine().lower() in ("x86_64", "amd64")):
        return False
    return numba_csr._loops().evict_lines is not None


class TensorEvictor:
    """A callable that flushes every cache line of the given CPU tensors (no-argument, repeatable).

    Raises ``ImportError`` naming the reason if :func:`evict_available` is false.
    """

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        if not evict_available():
            raise ImportError("TensorEvictor needs numba (pip install numba), an x86-64 CPU and prunekit's fast "
                              "loops; use prunekit.metrics.latency.CacheFlusher instead")
        self._loops = numba_csr._loops()
        tensors = [t.detach() for t in tensors if t.numel()]
        for t in tensors:
            if not t.is_contiguous() or t.device.type != "cpu":
                raise ConfigError(f"TensorEvictor needs contiguous CPU tensors, got shape {tuple(t.shape)} "
                                  f"on {t.device} (contiguous={t.is_contiguous()})")
        self._buffers = [t.view(-1).view(torch.uint8).numpy() for t in tensors]  # byte views, no copy

    def __call__(self) -> None:
        for buf in self._buffers:
            self._loops.evict_lines(buf)


__all__ = ["TensorEvictor", "evict_available"]

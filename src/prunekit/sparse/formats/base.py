"""Shared pieces of the sparse storage formats: the base class, index dtypes, bit packing.

Every format packs a dense-with-zeros tensor, unpacks it exactly and counts its bytes as the
sum of the bytes of the arrays it stores (``nbytes()``), so two formats can be compared on the
same tensor. All arrays live on the CPU as torch tensors; a kernel moves them where it needs.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from prunekit.errors import ConfigError

# The column/row index dtypes the formats choose from, smallest first, with their largest value.
_UNSIGNED_LADDER: tuple[tuple[torch.dtype, int], ...] = (
    (torch.uint8, 255),
    (torch.int16, 2**15 - 1),
    (torch.int32, 2**31 - 1),
    (torch.int64, 2**63 - 1),
)
_SIGNED_LADDER: tuple[tuple[torch.dtype, int], ...] = (
    (torch.int8, 2**7 - 1),
    (torch.int16, 2**15 - 1),
    (torch.int32, 2**31 - 1),
    (torch.int64, 2**63 - 1),
)


class SparseFormat(ABC):
    """A compressed form of one dense-with-zeros weight tensor.

    Subclasses are dataclasses holding their arrays; they implement ``pack`` (a classmethod),
    ``unpack`` (exact inverse) and ``arrays`` (name -> stored tensor). ``shape`` is the
    original dense shape (a conv weight keeps its 4-D shape; formats work on its 2-D view).
    """

    shape: tuple[int, ...]

    @abstractmethod
    def unpack(self) -> torch.Tensor:
        """The dense tensor this was packed from (same shape, dtype and values)."""

    @abstractmethod
    def arrays(self) -> dict[str, torch.Tensor]:
        """Every array the format stores, by name (what ``nbytes`` counts)."""

    def nbytes(self) -> int:
        """Bytes of storage: the sum of the stored arrays' bytes."""
        return sum(tensor_nbytes(t) for t in self.arrays().values())

    def dense_nbytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the dense tensor stored as ``dtype`` (fp32 by default)."""
        return math.prod(self.shape) * torch.empty((), dtype=dtype).element_size()

    def compression_ratio(self, dtype: torch.dtype = torch.float32) -> float:
        """Dense ``dtype`` bytes divided by this format's bytes."""
        return self.dense_nbytes(dtype) / max(self.nbytes(), 1)

    def state_dict(self) -> dict[str, Any]:
        """Plain dict (tensors, ints, tuples) for ``torch.save``; loadable with ``weights_only=True``.

        >>> from prunekit.sparse.formats import CSRMatrix
        >>> m = CSRMatrix.pack(torch.eye(3))
        >>> torch.equal(SparseFormat.from_state_dict(m.state_dict()).unpack(), torch.eye(3))
        True
        """
        state: dict[str, Any] = {"format": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            state[f.name] = getattr(self, f.name)
        return state

    @staticmethod
    def from_state_dict(state: dict[str, Any]) -> SparseFormat:
        """Rebuild the format saved by :meth:`state_dict`."""
        formats = {c.__name__: c for c in _all_subclasses(SparseFormat)}
        name = state.get("format") if isinstance(state, dict) else None
        if name not in formats:
            raise ConfigError(f"not a saved sparse format (format={name!r}); known formats: {sorted(formats)}")
        cls = formats[name]
        kwargs = {f.name: state[f.name] for f in dataclasses.fields(cls) if f.name in state}
        for key in ("shape", "block"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """The 2-D view the format works on: (shape[0], prod(shape[1:]))."""
        return self.shape[0], math.prod(self.shape[1:])


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def tensor_nbytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's elements.

    >>> tensor_nbytes(torch.zeros(3, dtype=torch.int16))
    6
    """
    return t.numel() * t.element_size()


def as_matrix(dense: torch.Tensor, fmt: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Check a dense weight and return its 2-D view (shape[0], rest) on the CPU plus its shape.

    A conv weight (Cout, Cin, kh, kw) becomes (Cout, Cin*kh*kw), the GEMM view of im2col.

    >>> m, shape = as_matrix(torch.zeros(4, 2, 3, 3), "CSR")
    >>> tuple(m.shape), shape
    ((4, 18), (4, 2, 3, 3))
    """
    if not isinstance(dense, torch.Tensor):
        raise ConfigError(f"{fmt}.pack expects a torch.Tensor, got {type(dense).__name__}")
    if dense.layout != torch.strided:
        raise ConfigError(f"{fmt}.pack expects a dense (strided) tensor, got layout {dense.layout}; "
                          "call .to_dense() first")
    if dense.ndim < 2:
        raise ConfigError(f"{fmt}.pack expects a weight with at least 2 dims (Linear (out, in) or conv "
                          f"(Cout, Cin, kh, kw)), got shape {tuple(dense.shape)}; reshape it to 2-D first")
    if dense.is_complex() or dense.dtype == torch.bool:
        raise ConfigError(f"{fmt}.pack expects a real-valued tensor, got dtype {dense.dtype}")
    shape = tuple(int(s) for s in dense.shape)
    return dense.detach().cpu().reshape(shape[0], math.prod(shape[1:])), shape


def index_dtype(max_value: int) -> torch.dtype:
    """Smallest of uint8 / int16 / int32 / int64 that holds every index in ``[0, max_value]``.

    >>> index_dtype(255), index_dtype(256), index_dtype(40_000)
    (torch.uint8, torch.int16, torch.int32)
    """
    for dtype, top in _UNSIGNED_LADDER:
        if max_value <= top:
            return dtype
    raise ConfigError(f"index {max_value} does not fit in int64")


def signed_index_dtype(max_value: int) -> torch.dtype:
    """Smallest of int8 / int16 / int32 / int64 that holds ``[-1, max_value]`` (-1 = padding).

    >>> signed_index_dtype(127), signed_index_dtype(128)
    (torch.int8, torch.int16)
    """
    for dtype, top in _SIGNED_LADDER:
        if max_value <= top:
            return dtype
    raise ConfigError(f"index {max_value} does not fit in int64")


def kernel_index_dtype(*max_values: int) -> torch.dtype:
    """int32 when every value fits, else int64: the index dtypes torch sparse kernels accept."""
    return torch.int32 if max(max_values, default=0) <= 2**31 - 1 else torch.int64


def bits_for(count: int) -> int:
    """Bits needed to tell ``count`` different values apart: ceil(log2(count)).

    >>> bits_for(4), bits_for(5), bits_for(16), bits_for(1)
    (2, 3, 4, 0)
    """
    return max(0, math.ceil(math.log2(count))) if count > 0 else 0


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integers < 2**bits into a uint8 stream, ``bits`` each, LSB first.

    Code i occupies stream bits [i*bits, (i+1)*bits); byte j holds stream bits [8j, 8j+8) with
    the lowest stream bit in the least significant position. Length: ceil(len*bits/8) bytes.

    >>> pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist()   # 0b00_11_10_01
    [57]
    """
    if not 0 <= bits <= 32:
        raise ConfigError(f"bit width must be in [0, 32], got {bits}")
    flat = codes.detach().cpu().reshape(-1).to(torch.int64).numpy()
    if bits == 0 or flat.size == 0:
        if flat.size and flat.any():
            raise ConfigError("0-bit codes must all be 0")
        return torch.zeros(0, dtype=torch.uint8)
    if flat.min() < 0 or flat.max() >= (1 << bits):
        raise ConfigError(f"codes must lie in [0, {(1 << bits) - 1}] to fit in {bits} bits, "
                          f"got range [{flat.min()}, {flat.max()}]")
    if 8 % bits == 0:  # fast path: whole codes per byte
        per = 8 // bits
        padded = np.zeros(-(-flat.size // per) * per, dtype=np.uint16)
        padded[: flat.size] = flat
        lanes = padded.reshape(-1, per) << (np.arange(per, dtype=np.uint16) * bits)  # (nbytes, per)
        return torch.from_numpy(lanes.sum(axis=1).astype(np.uint8))
    shifts = np.arange(bits, dtype=np.int64)
    bitmat = ((flat[:, None] >> shifts) & 1).astype(np.uint8)  # (count, bits) LSB first
    return torch.from_numpy(np.packbits(bitmat.reshape(-1), bitorder="little"))


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` codes as int64.

    >>> unpack_bits(torch.tensor([57], dtype=torch.uint8), 2, 4).tolist()
    [1, 2, 3, 0]
    """
    if bits == 0 or count == 0:
        return torch.zeros(count, dtype=torch.int64)
    need = -(-count * bits // 8)
    if packed.dtype != torch.uint8 or packed.numel() < need:
        raise ConfigError(f"need {need} uint8 bytes for {count} codes of {bits} bits, "
                          f"got {packed.numel()} of {packed.dtype}")
    raw = packed.detach().cpu().reshape(-1).numpy()
    if 8 % bits == 0:
        per = 8 // bits
        shifts = np.arange(per, dtype=np.uint8) * bits
        lanes = (raw[:, None] >> shifts) & ((1 << bits) - 1)  # (nbytes, per)
        return torch.from_numpy(lanes.reshape(-1)[:count].astype(np.int64))
    stream = np.unpackbits(raw, bitorder="little", count=count * bits).reshape(count, bits)
    weights = np.int64(1) << np.arange(bits, dtype=np.int64)
    return torch.from_numpy(stream.astype(np.int64) @ weights)

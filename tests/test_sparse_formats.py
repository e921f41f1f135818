"""Sparse storage formats: exact round trips, hand-counted bytes, index dtypes, clear errors."""

from __future__ import annotations

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.sparse.formats import (
    CSRMatrix,
    NMMatrix,
    bits_for,
    index_dtype,
    pack_bits,
    unpack_bits,
)

SHAPES = [(7, 13), (16, 32), (8, 3, 3, 3), (6, 4, 1, 1), (300, 784)]


def sparse_tensor(shape: tuple[int, ...], density: float, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g).to(dtype)
    keep = torch.rand(shape, generator=g) < density
    return w * keep


def nm_tensor(rows: int, cols: int, n: int, m: int, seed: int = 0, fill: float = 1.0) -> torch.Tensor:
    """A random (rows, cols) tensor where each group of m keeps n entries (some set to 0 if fill<1)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols // m, m, generator=g)
    keep_idx = torch.rand(rows, cols // m, m, generator=g).argsort(dim=-1)[..., :n]
    mask = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, keep_idx, True)
    mask &= torch.rand(rows, cols // m, m, generator=g) < fill
    return (w * mask).reshape(rows, cols)


# ----------------------------------------------------------------------------- base helpers
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 12])
def test_bit_packing_round_trip(bits: int) -> None:
    codes = torch.randint(0, 2**bits, (1001,), generator=torch.Generator().manual_seed(bits))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-1001 * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, 1001), codes)


def test_bit_packing_rejects_codes_too_wide() -> None:
    with pytest.raises(ConfigError, match="fit in 2 bits"):
        pack_bits(torch.tensor([0, 4]), 2)


def test_index_dtype_ladder() -> None:
    assert [index_dtype(v) for v in (0, 255, 256, 32767, 32768, 2**31 - 1, 2**31)] == [
        torch.uint8, torch.uint8, torch.int16, torch.int16, torch.int32, torch.int32, torch.int64]
    assert (bits_for(2), bits_for(4), bits_for(8), bits_for(16), bits_for(17)) == (1, 2, 3, 4, 5)


# ----------------------------------------------------------------------------- CSR
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
def test_csr_round_trip_exact(shape: tuple[int, ...], density: float) -> None:
    w = sparse_tensor(shape, density, seed=len(shape))
    m = CSRMatrix.pack(w)
    out = m.unpack()
    assert out.shape == w.shape and out.dtype == w.dtype
    assert torch.equal(out, w)
    assert m.nnz == int((w != 0).sum())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_csr_keeps_dtype(dtype: torch.dtype) -> None:
    w = sparse_tensor((9, 10), 0.3, dtype=dtype)
    m = CSRMatrix.pack(w)
    assert m.values.dtype == dtype and torch.equal(m.unpack(), w)


def test_csr_empty_rows_and_columns() -> None:
    w = torch.zeros(5, 6)
    w[1, 2], w[1, 5], w[4, 0] = 1.0, -2.0, 3.0  # rows 0, 2, 3 and columns 1, 3, 4 empty
    m = CSRMatrix.pack(w)
    assert m.row_ptr.tolist() == [0, 0, 2, 2, 2, 3]
    assert m.col_indices.tolist() == [2, 5, 0]
    assert torch.equal(m.unpack(), w)


def test_csr_bytes_hand_computed() -> None:
    w = torch.zeros(4, 5)
    w[0, 1], w[2, 3], w[2, 4] = 1.0, 2.0, 3.0
    m = CSRMatrix.pack(w)
    # 3 fp32 values (12) + 3 uint8 columns (3) + 5 uint8 row pointers (5)
    assert m.nbytes() == 20
    assert m.dense_nbytes() == 80 and m.compression_ratio() == pytest.approx(4.0)


def test_csr_chooses_smallest_index_dtype() -> None:
    assert CSRMatrix.pack(torch.eye(256)).col_indices.dtype == torch.uint8  # max column 255
    wide = torch.zeros(2, 257)
    wide[0, 256] = 1.0
    m = CSRMatrix.pack(wide)
    assert m.col_indices.dtype == torch.int16 and m.row_ptr.dtype == torch.uint8
    many = torch.ones(2, 200)  # nnz 400 -> row pointers need int16
    m = CSRMatrix.pack(many)
    assert m.col_indices.dtype == torch.uint8 and m.row_ptr.dtype == torch.int16
    big = torch.zeros(1, 40_000)
    big[0, -1] = 1.0
    assert CSRMatrix.pack(big).col_indices.dtype == torch.int32


def test_csr_conv_shape_kept_and_to_torch_matches_dense() -> None:
    w = sparse_tensor((8, 4, 3, 3), 0.2)
    m = CSRMatrix.pack(w)
    assert m.shape == (8, 4, 3, 3) and m.matrix_shape == (8, 36)
    t = m.to_torch()
    assert t.layout == torch.sparse_csr and t.crow_indices().dtype == torch.int32
    x = torch.randn(36, 5)
    torch.testing.assert_close(t @ x, w.reshape(8, 36) @ x)
    back = CSRMatrix.from_torch(t, shape=w.shape)
    assert torch.equal(back.unpack(), w)


@pytest.mark.parametrize("bad", [torch.zeros(5), torch.tensor(1.0)])
def test_csr_rejects_wrong_ndim(bad: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="at least 2 dims"):
        CSRMatrix.pack(bad)


def test_csr_rejects_non_tensor_and_sparse() -> None:
    with pytest.raises(ConfigError, match="torch.Tensor"):
        CSRMatrix.pack([[1.0, 0.0]])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="to_dense"):
        CSRMatrix.pack(torch.eye(3).to_sparse())


# ----------------------------------------------------------------------------- N:M
@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (2, 8), (3, 5), (1, 2), (4, 4)])
@pytest.mark.parametrize("fill", [1.0, 0.6])
def test_nm_round_trip_exact(n: int, m: int, fill: float) -> None:
    w = nm_tensor(12, 8 * m, n, m, seed=n * 10 + m, fill=fill)
    p = NMMatrix.pack(w, n=n, m=m)
    assert p.values.shape == (12, 8 * n)
    assert torch.equal(p.unpack(), w)
    idx = p.indices()
    assert int(idx.max()) < m
    assert bool((idx.reshape(12, 8, n).diff(dim=-1) > 0).all())  # distinct, ascending per group


def test_nm_conv_weight_and_dense_and_zero() -> None:
    w = nm_tensor(16, 32 * 9, 2, 4, seed=3).reshape(16, 32, 3, 3)
    p = NMMatrix.pack(w)
    assert p.shape == (16, 32, 3, 3) and torch.equal(p.unpack(), w)
    zero = torch.zeros(3, 8)
    assert torch.equal(NMMatrix.pack(zero).unpack(), zero)
    dense = torch.randn(3, 8) + 10.0
    assert torch.equal(NMMatrix.pack(dense, n=4, m=4).unpack(), dense)


def test_nm_bytes_hand_computed() -> None:
    w = nm_tensor(4, 8, 2, 4)
    p = NMMatrix.pack(w)
    # 16 kept fp32 values (64 bytes) + 16 indices * 2 bits (4 bytes)
    assert p.nbytes() == 68 and p.index_bits.numel() == 4
    p3 = NMMatrix.pack(nm_tensor(2, 10, 1, 5), n=1, m=5)
    # 4 kept values (16 bytes) + 4 indices * 3 bits = 12 bits -> 2 bytes
    assert p3.bits == 3 and p3.nbytes() == 18


def test_nm_24_index_layout() -> None:
    w = torch.tensor([[0.0, 5.0, 0.0, 7.0, 0.0, 0.0, 2.0, 3.0]])
    p = NMMatrix.pack(w)
    assert p.indices().tolist() == [[1, 3, 2, 3]]
    # group 0 -> 1 | 3<<2 = 0b1101 ; group 1 -> 2 | 3<<2 = 0b1110 ; byte = 0b1110_1101
    assert p.index_bits.tolist() == [0b11101101]
    assert p.column_indices().tolist() == [[1, 3, 6, 7]]


def test_nm_violation_names_the_group() -> None:
    w = nm_tensor(4, 16, 2, 4, seed=1)
    w[2, 8:12] = torch.tensor([1.0, 2.0, 3.0, 0.0])
    with pytest.raises(ConfigError, match=r"row 2, group 2 \(columns 8\.\.11\) has 3 nonzeros"):
        NMMatrix.pack(w)


def test_nm_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="multiple of m=4"):
        NMMatrix.pack(torch.zeros(2, 6))
    with pytest.raises(ConfigError, match="1 <= n <= m"):
        NMMatrix.pack(torch.zeros(2, 8), n=5, m=4)
    with pytest.raises(ConfigError, match="at least 2 dims"):
        NMMatrix.pack(torch.zeros(8))

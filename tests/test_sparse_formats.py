"""Sparse storage formats: exact round trips, hand-counted bytes, index dtypes, clear errors."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.sparse.formats import (
    BlockedELL,
    BSRMatrix,
    CSRMatrix,
    EIEMatrix,
    FKWWeight,
    NMMatrix,
    PacketCSRMatrix,
    SharedWeightLinear,
    SparseFormat,
    bits_for,
    centroid_grad,
    huffman_bits,
    huffman_code_lengths,
    index_dtype,
    kmeans_1d,
    pack_bits,
    share_linear_layers,
    unpack_bits,
    unshare_linear_layers,
)
from prunekit.sparse.formats.bsr import to_blocks
from prunekit.train.codebook import finetune_codebook

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
def _packet_invariants(m: PacketCSRMatrix, dense: torch.Tensor) -> None:
    """Every packet: <= 16 real values in column order within 255 of its base, padding = 0 at
    offset 0; a packet is cut early only at its row's end or before a column > base + 255."""
    mat = dense.reshape(dense.shape[0], -1)
    assert m.offsets.dtype == torch.uint8 and m.values.numel() == m.offsets.numel() == 16 * m.packets
    ptr = m.packet_ptr.to(torch.int64).tolist()
    for r in range(mat.shape[0]):
        cols = mat[r].nonzero().flatten().tolist()
        seen: list[int] = []
        for p in range(ptr[r], ptr[r + 1]):
            base = int(m.bases[p])
            vals = m.values[16 * p:16 * p + 16]
            offs = m.offsets[16 * p:16 * p + 16].to(torch.int64)
            real = int((vals != 0).sum())
            assert real >= 1 and bool((vals[:real] != 0).all()) and bool((vals[real:] == 0).all())
            assert bool((offs[real:] == 0).all()) and offs[0] == 0
            pc = (base + offs[:real]).tolist()
            assert pc == sorted(pc) and pc[-1] - base <= 255
            later = cols[len(seen) + real:]
            if real < 16 and later:  # closed early: the next column does not fit
                assert later[0] - base > 255
            seen += pc
        assert seen == cols


@pytest.mark.parametrize("shape", [*SHAPES, (5, 70_000)])
@pytest.mark.parametrize("density", [0.0, 0.003, 0.05, 0.5, 1.0])
def test_packet_csr_round_trip_exact_and_packets_valid(shape: tuple[int, ...], density: float) -> None:
    w = sparse_tensor(shape, density, seed=len(shape))
    m = PacketCSRMatrix.pack(w)
    out = m.unpack()
    assert out.shape == w.shape and out.dtype == w.dtype and torch.equal(out, w)
    assert m.nnz == int((w != 0).sum())
    _packet_invariants(m, w)


def test_packet_csr_hand_built_packets_and_bytes() -> None:
    w = torch.zeros(3, 600)
    w[0, :20] = torch.arange(1.0, 21.0)  # 20 values: a full packet, then 4
    w[2, [0, 255, 256, 599]] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # 256 - 0 > 255: a new packet; 599 too
    m = PacketCSRMatrix.pack(w)
    assert m.packet_ptr.tolist() == [0, 2, 2, 5] and m.bases.tolist() == [0, 16, 0, 256, 599]
    assert m.offsets[32:34].tolist() == [0, 255] and m.offsets[48:50].tolist() == [0, 0]
    assert m.values[16:21].tolist() == [17.0, 18.0, 19.0, 20.0, 0.0]
    # 5 packets: 80 fp32 values (320) + 80 uint8 offsets (80) + 5 int16 bases (10) + 4 uint8 pointers (4)
    assert m.bases.dtype == torch.int16 and m.packet_ptr.dtype == torch.uint8
    assert m.nbytes() == 414 and torch.equal(m.unpack(), w)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_packet_csr_keeps_dtype_and_conv_shape(dtype: torch.dtype) -> None:
    w = sparse_tensor((6, 5, 3, 3), 0.4, dtype=dtype)
    m = PacketCSRMatrix.pack(w)
    assert m.values.dtype == dtype and m.shape == (6, 5, 3, 3) and torch.equal(m.unpack(), w)


def test_packet_csr_is_smaller_than_csr_up_to_93_percent_on_a_wide_layer() -> None:
    for sparsity, most in ((0.7, 0.88), (0.9, 0.89), (0.93, 0.93)):
        w = sparse_tensor((64, 4096), 1.0 - sparsity, seed=1)
        assert PacketCSRMatrix.pack(w).nbytes() < most * CSRMatrix.pack(w).nbytes()
    w = sparse_tensor((64, 4096), 0.02, seed=1)  # 98 %: gaps of ~50 columns close packets early
    assert PacketCSRMatrix.pack(w).nbytes() > CSRMatrix.pack(w).nbytes()


def test_packet_csr_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="at least 2 dims"):
        PacketCSRMatrix.pack(torch.zeros(5))
    with pytest.raises(ConfigError, match="dense"):
        PacketCSRMatrix.pack(torch.eye(3).to_sparse())


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


def test_nm_conv_weight_groups_input_channels_and_dense_and_zero() -> None:
    # 2:4 along Cin at each tap: built channels-last (Cout, kh, kw, Cin), then moved to (Cout, Cin, kh, kw)
    w = nm_tensor(16, 9 * 32, 2, 4, seed=3).reshape(16, 3, 3, 32).movedim(-1, 1)
    p = NMMatrix.pack(w)
    assert p.shape == (16, 32, 3, 3) and torch.equal(p.unpack(), w)
    assert torch.equal(NMMatrix.matrix_view(w), w.movedim(1, -1).reshape(16, -1))
    with pytest.raises(ConfigError, match="is not 2:4 sparse"):
        NMMatrix.pack(nm_tensor(16, 32 * 9, 2, 4, seed=3).reshape(16, 32, 3, 3))  # groups across taps
    with pytest.raises(ConfigError, match=r"Cin \(6\) must be a multiple of m=4"):
        NMMatrix.pack(torch.zeros(2, 6, 2, 2))
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


# ----------------------------------------------------------------------------- BSR / Blocked-ELL
def block_sparse(rows: int, cols: int, block: tuple[int, int], density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = block
    keep = torch.rand(rows // h, cols // w, generator=g) < density
    mask = keep.repeat_interleave(h, 0).repeat_interleave(w, 1)
    inner = torch.rand(rows, cols, generator=g) < 0.7  # zeros inside kept blocks too
    return torch.randn(rows, cols, generator=g) * mask * inner


@pytest.mark.parametrize("block", [(1, 1), (2, 2), (4, 4), (2, 8), (16, 16)])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_bsr_and_ell_round_trip_exact(block: tuple[int, int], density: float) -> None:
    w = block_sparse(32, 64, block, density, seed=block[0] * 7 + block[1])
    b = BSRMatrix.pack(w, block=block)
    e = BlockedELL.pack(w, block=block)
    assert torch.equal(b.unpack(), w) and torch.equal(e.unpack(), w)
    kept = int((to_blocks(w, block, "t") != 0).flatten(2).any(-1).sum())
    assert b.nblocks == kept and b.values.shape == (kept, *block)


def test_bsr_conv_and_to_torch() -> None:
    w = block_sparse(16, 8 * 9, (4, 4), 0.4, seed=5).reshape(16, 8, 3, 3)
    b = BSRMatrix.pack(w, block=(4, 4))
    assert b.shape == (16, 8, 3, 3) and torch.equal(b.unpack(), w)
    t = b.to_torch()
    assert t.layout == torch.sparse_bsr and t.col_indices().dtype == torch.int32
    torch.testing.assert_close(t.to_dense(), w.reshape(16, 72))


def test_bsr_ell_bytes_and_dtypes_hand_computed() -> None:
    w = torch.zeros(4, 8)
    w[0, 0], w[0, 7], w[1, 5] = 1.0, 2.0, 3.0  # block-row 0: block cols 0, 2, 3 ; block-row 1: empty
    b = BSRMatrix.pack(w, block=(2, 2))
    assert b.col_indices.tolist() == [0, 2, 3] and b.row_ptr.tolist() == [0, 3, 3]
    assert b.col_indices.dtype == torch.uint8 and b.row_ptr.dtype == torch.uint8
    assert b.nbytes() == 3 * 4 * 4 + 3 + 3
    e = BlockedELL.pack(w, block=(2, 2))
    assert e.width == 3 and e.col_indices.tolist() == [[0, 2, 3], [-1, -1, -1]]
    assert e.col_indices.dtype == torch.int8
    assert e.nbytes() == 2 * 3 * 4 * 4 + 6
    wide = BlockedELL.pack(w, block=(2, 2), width=5)  # more slots than block columns
    assert wide.width == 5 and torch.equal(wide.unpack(), w)
    big = torch.zeros(1, 300)
    big[0, 299] = 1.0
    assert BSRMatrix.pack(big, block=(1, 1)).col_indices.dtype == torch.int16
    assert BlockedELL.pack(torch.zeros(1, 200), block=(1, 1)).col_indices.dtype == torch.int16


def test_block_errors() -> None:
    with pytest.raises(ConfigError, match="block 3x4 does not divide the weight's 2-D view 8x8"):
        BSRMatrix.pack(torch.zeros(8, 8), block=(3, 4))
    with pytest.raises(ConfigError, match="does not divide"):
        BlockedELL.pack(torch.zeros(8, 8), block=(4, 3))
    w = torch.ones(4, 8)
    with pytest.raises(ConfigError, match="width 1 is too small: block-row 0 has 4"):
        BlockedELL.pack(w, block=(2, 2), width=1)
    with pytest.raises(ConfigError, match="at least 2 dims"):
        BSRMatrix.pack(torch.ones(4), block=(2, 2))


# ----------------------------------------------------------------------------- EIE
def column_gap_matrix() -> torch.Tensor:
    """Gaps of 0, 15, 16, 31, 32, 40 zeros and an empty column."""
    w = torch.zeros(80, 4)
    for r, v in [(0, 1.0), (16, -1.0), (33, 2.0), (65, -2.0)]:  # gaps 0, 15, 16, 31
        w[r, 0] = v
    w[32, 1] = 0.5  # gap 32 from the top
    w[79, 3] = 3.0  # gap 79
    return w


def test_eie_relative_indices_and_padding() -> None:
    w = column_gap_matrix()
    e = EIEMatrix.pack(w, bits=4)
    z, codes = e.relative_indices().tolist(), e.code_values().tolist()
    # col 0: z=0 | gap 15 -> 15 | gap 16 -> pad + 0 | gap 31 -> pad + 15
    # col 1: gap 32 -> 2 pads + 0 ; col 2: empty ; col 3: gap 79 -> 4 pads + 15
    assert z == [0, 15, 15, 0, 15, 15, 15, 15, 0, 15, 15, 15, 15, 15]
    assert [c == 0 for c in codes] == [False, False, True, False, True, False, True, True, False,
                                       True, True, True, True, False]
    assert e.col_ptr.tolist() == [0, 6, 9, 9, 14]
    assert e.nnz == 6 and e.num_entries == 14
    assert torch.equal(e.unpack(), w)  # 5 distinct values fit in 15 centroids exactly


@pytest.mark.parametrize("shape", [(300, 784), (100, 300), (10, 100), (16, 8, 3, 3), (12, 7, 1, 1)])
@pytest.mark.parametrize("density", [0.0, 0.03, 0.1, 1.0])
def test_eie_structure_round_trip_exact_and_values_shared(shape: tuple[int, ...], density: float) -> None:
    w = sparse_tensor(shape, density, seed=sum(shape))
    e = EIEMatrix.pack(w, bits=4)
    shared = e.unpack()
    assert shared.shape == w.shape
    assert torch.equal(shared != 0, w != 0)  # structure is exact
    assert len(torch.unique(shared[shared != 0])) <= 15  # values come from the codebook
    cb = e.codebook
    assert float(cb[0]) == 0.0 and cb.numel() == 16
    # every nonzero maps to its nearest nonzero centroid
    nz = w[w != 0]
    if nz.numel():
        best = (nz.double()[:, None] - cb[1:].double()[None]).abs().min(dim=1).values
        got = (nz.double() - shared[w != 0].double()).abs()
        assert bool((got <= best).all())
    # original values at the stored positions give back the original tensor exactly
    mat = w.reshape(w.shape[0], -1).t()
    assert torch.equal(e.unpack_with(mat[mat != 0]), w)
    # re-packing the shared weight with the same codebook is lossless
    assert torch.equal(EIEMatrix.pack(shared, bits=4, codebook=cb).unpack(), shared)


def test_eie_bytes_hand_computed() -> None:
    w = column_gap_matrix()
    e = EIEMatrix.pack(w, bits=4)
    # 14 entries: 14*4 bits -> 7 bytes of indices, 7 bytes of codes ; 5 uint8 column pointers ;
    # 16 fp32 centroids = 64 bytes
    assert e.nbytes() == 7 + 7 + 5 + 64
    e2 = EIEMatrix.pack(w, bits=2, index_bits=5)
    # gaps with 5-bit indices: col0 0,15,16,31 -> no padding ; col1 32 -> 1 pad ; col3 79 -> 2 pads
    assert e2.num_entries == 9
    assert e2.nbytes() == -(-9 * 5 // 8) + -(-9 * 2 // 8) + 5 + 4 * 4


@pytest.mark.parametrize("pes", [2, 4, 7, 64])
def test_eie_pe_interleaving_round_trip(pes: int) -> None:
    w = sparse_tensor((40, 30), 0.1, seed=pes)
    w[:, 3] = 0.0  # empty column
    e = EIEMatrix.pack(w, num_pes=pes)
    assert torch.equal(e.unpack() != 0, w != 0)
    row, col = e.positions()
    assert torch.equal(e.unpack_with(w[row, col]), w)
    assert e.col_ptr.numel() == pes * 31 and int(e.pe_entries().sum()) == e.num_entries
    assert bool(((row % pes)[1:] >= (row % pes)[:-1]).all())  # storage grouped by PE
    one = EIEMatrix.pack(w)
    assert e.nnz == one.nnz


def test_eie_pe_example_from_the_paper() -> None:
    # The 8x4 example of Han et al. (ISCA 2016), rows interleaved over 4 PEs: PE0 owns rows 0 and 4
    w = torch.zeros(8, 4)
    for r, c in [(0, 0), (0, 1), (0, 3), (1, 2), (2, 1), (2, 3), (4, 2), (4, 3), (5, 0), (6, 3), (7, 1)]:
        w[r, c] = 1.0 + r + 0.1 * c
    e = EIEMatrix.pack(w, num_pes=4)
    assert e.pe_col_ptr()[0].tolist() == [0, 1, 2, 3, 5]  # the paper's column pointer for PE0
    row, col = e.positions()
    assert list(zip(row[:5].tolist(), col[:5].tolist())) == [(0, 0), (0, 1), (4, 2), (0, 3), (4, 3)]
    assert e.relative_indices()[:5].tolist() == [0, 0, 1, 0, 0]  # zeros before each entry (local rows)
    assert e.pe_entries().tolist() == [5, 2, 3, 1]  # PE1: rows 1, 5 ; PE2: rows 2, 6 ; PE3: rows 3, 7
    assert torch.equal(e.unpack(), w)  # 11 distinct values <= 15 centroids


def test_huffman_lengths_and_eie_estimate() -> None:
    sym = torch.tensor([5] * 8 + [1] * 4 + [2] * 2 + [3, 4])
    assert huffman_code_lengths(sym) == {5: 1, 1: 2, 2: 3, 3: 4, 4: 4}
    assert huffman_bits(sym) == 8 + 8 + 6 + 4 + 4
    assert huffman_bits(torch.zeros(7, dtype=torch.long)) == 7 and huffman_bits(torch.zeros(0)) == 0
    w = column_gap_matrix()
    e = EIEMatrix.pack(w)
    z, c = e.relative_indices(), e.code_values()
    expected = -(-huffman_bits(z) // 8) + -(-huffman_bits(c) // 8) + 5 + 64
    assert e.huffman_nbytes() == expected <= e.nbytes()


def test_eie_errors() -> None:
    with pytest.raises(ConfigError, match="at least 2 dims"):
        EIEMatrix.pack(torch.ones(5))
    with pytest.raises(ConfigError, match="2\\*\\*bits = 16 entries"):
        EIEMatrix.pack(torch.ones(3, 3), codebook=torch.zeros(4))
    with pytest.raises(ConfigError, match="needs 3 values"):
        EIEMatrix.pack(torch.eye(3)).unpack_with(torch.ones(1))
    with pytest.raises(ConfigError, match="num_pes must be a positive int"):
        EIEMatrix.pack(torch.eye(3), num_pes=0)


# ----------------------------------------------------------------------------- weight sharing
def test_kmeans_lloyd_finds_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([-1.0, 0.2, 2.0])
    labels = torch.cat([torch.zeros(50), torch.ones(30), torch.full((20,), 2.0)]).long()
    x = centers[labels] + 0.01 * torch.randn(100, generator=g)  # 100 distinct values, 3 clusters
    c, a = kmeans_1d(x, 3)
    assert torch.equal(a, labels)
    for j in range(3):
        assert float(c[j]) == pytest.approx(float(x[labels == j].double().mean()), abs=1e-9)


def test_kmeans_exact_when_few_distinct_values() -> None:
    x = torch.tensor([1.0, 1.1, 1.0, 5.0, 8.1, 1.1])  # 4 distinct values, 6 clusters
    c, a = kmeans_1d(x, 6)
    assert torch.equal(c[a].float(), x)
    # linear init (spacing 1.18) starts 1.0 and 1.1 in one cluster; the exact path keeps them apart
    w = torch.zeros(4, 3)
    w[0, 0], w[1, 1], w[2, 2], w[3, 0] = 1.0, 1.1, 5.0, 8.1
    assert torch.equal(EIEMatrix.pack(w, bits=3).unpack(), w)


def test_shared_weight_codebook_gradient_is_summed_cluster_gradient() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(20, 6)
    with torch.no_grad():
        lin.weight.mul_(torch.rand_like(lin.weight) < 0.4)
    shared = SharedWeightLinear.from_linear(lin, bits=3)
    x = torch.randn(8, 20)
    shared(x).pow(2).sum().backward()
    # same loss through a dense weight equal to the shared one
    dense = shared.weight().detach().clone().requires_grad_(True)
    nn.functional.linear(x, dense, shared.bias.detach()).pow(2).sum().backward()
    expected = centroid_grad(dense.grad, shared.codes, 8)[1:]
    torch.testing.assert_close(shared.centroids.grad, expected)
    assert torch.equal(shared.weight() != 0, lin.weight != 0)  # pruned weights stay pruned


def test_finetune_codebook_lowers_loss_and_keeps_zeros() -> None:
    torch.manual_seed(0)
    teacher = nn.Linear(16, 4)
    x = torch.randn(512, 16)
    y = teacher(x).argmax(dim=1)
    student = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(student(x), y).backward()
        opt.step()
    with torch.no_grad():
        for m in (student[0], student[2]):
            m.weight.mul_(m.weight.abs() > m.weight.abs().flatten().kthvalue(m.weight.numel() // 2).values)
    zeros_before = [m.weight == 0 for m in (student[0], student[2])]
    names = share_linear_layers(student, bits=2)
    assert names == ["0", "2"]
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)]

    def full_loss() -> float:
        with torch.no_grad():
            return float(nn.functional.cross_entropy(student(x), y))

    before = full_loss()
    frozen_bias = student[0].bias.detach().clone()
    losses = finetune_codebook(student, loader, epochs=10, lr=1e-2)
    after = full_loss()
    assert len(losses) == 80
    assert after < before * 0.9, (before, after)
    assert torch.equal(student[0].bias, frozen_bias)  # only centroids trained
    unshare_linear_layers(student)
    assert isinstance(student[0], nn.Linear)
    for m, zero in zip((student[0], student[2]), zeros_before):
        assert torch.equal(m.weight == 0, zero)
        assert len(torch.unique(m.weight)) <= 4


def test_sharing_errors() -> None:
    with pytest.raises(ConfigError, match="share_linear_layers"):
        finetune_codebook(nn.Linear(2, 2), [], epochs=1)
    with pytest.raises(ConfigError, match="did you mean"):
        share_linear_layers(nn.Sequential(OrderedDict(fc1=nn.Linear(2, 2))), names=["fc"])
    with pytest.raises(ConfigError, match="entry 0 equal to 0.0"):
        SharedWeightLinear(torch.zeros(2, 2, dtype=torch.long), torch.ones(4))


# ----------------------------------------------------------------------------- pattern / FKW
def pattern_conv(cout: int, cin: int, patterns: torch.Tensor, keep: float, seed: int = 0,
                 drop_inside: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p, kh, kw = patterns.shape
    pid = torch.randint(0, p, (cout, cin), generator=g)
    mask = patterns[pid] & (torch.rand(cout, cin, generator=g) < keep)[..., None, None]
    if drop_inside:  # some kept positions happen to be exactly zero
        mask &= torch.rand(cout, cin, kh, kw, generator=g) < 0.8
    return torch.randn(cout, cin, kh, kw, generator=g) * mask


def pattern_set_3x3() -> torch.Tensor:
    flat = torch.zeros(4, 9, dtype=torch.bool)
    for i, pos in enumerate([(1, 3, 4, 5), (1, 4, 5, 7), (3, 4, 5, 7), (1, 3, 4, 7)]):
        flat[i, list(pos)] = True
    return flat.reshape(4, 3, 3)


@pytest.mark.parametrize("keep", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("given", [False, True])
def test_fkw_round_trip_exact(keep: float, given: bool) -> None:
    pats = pattern_set_3x3()
    w = pattern_conv(16, 8, pats, keep, seed=int(keep * 10), drop_inside=given)
    f = FKWWeight.pack(w, patterns=pats if given else None)
    assert torch.equal(f.unpack(), w)
    alive = int((w.reshape(16, 8, 9) != 0).any(-1).sum())
    assert f.num_kernels == alive and f.num_removed == 128 - alive
    if given:
        assert f.values.numel() == 4 * alive  # all patterns have 4 entries
    # kernels grouped by pattern inside each filter
    filt, pid = f.kernel_filter(), f.kernel_pattern.long()
    key = filt * 10 + pid
    assert bool((key.diff() >= 0).all())


def test_fkw_groups_reconstruct_the_weight_and_1x1() -> None:
    pats = pattern_set_3x3()
    w = pattern_conv(6, 5, pats, 0.7, seed=2)
    f = FKWWeight.pack(w, patterns=pats)
    rebuilt = torch.zeros_like(w)
    for g in f.groups():
        assert g.values.shape == (g.filters.numel(), g.offsets.shape[0])
        for j, (dy, dx) in enumerate(g.offsets.tolist()):
            rebuilt[g.filters, g.channels, dy, dx] = g.values[:, j]
    assert torch.equal(rebuilt, w)
    one = torch.randn(8, 4, 1, 1) * (torch.rand(8, 4, 1, 1) < 0.5)
    f1 = FKWWeight.pack(one)
    assert f1.patterns.shape[0] <= 1 and torch.equal(f1.unpack(), one)
    order = f.filter_reorder()
    counts = (f.filter_ptr[1:].long() - f.filter_ptr[:-1].long())[order]
    assert bool((counts.diff() <= 0).all())


def test_fkw_bytes_hand_computed() -> None:
    pats = pattern_set_3x3()
    w = pattern_conv(4, 3, pats, 1.0, seed=1)
    f = FKWWeight.pack(w, patterns=pats)
    # patterns 4*9 bools + 5 uint8 filter ptrs + 12 uint8 channels + 12 uint8 ids + 48 fp32 values
    assert f.nbytes() == 36 + 5 + 12 + 12 + 48 * 4


def test_fkw_errors() -> None:
    pats = pattern_set_3x3()
    w = torch.zeros(2, 3, 3, 3)
    w[1, 2, 0, 0] = 1.0  # corner position: no pattern covers it
    with pytest.raises(ConfigError, match=r"filter 1, input channel 2\) has nonzeros at flat positions \[0\]"):
        FKWWeight.pack(w, patterns=pats)
    with pytest.raises(ConfigError, match="Cout, Cin, kh, kw"):
        FKWWeight.pack(torch.zeros(4, 9))
    with pytest.raises(ConfigError, match=r"patterns must be \(P, 3, 3\)"):
        FKWWeight.pack(torch.zeros(2, 3, 3, 3), patterns=torch.ones(2, 2, 2, dtype=torch.bool))


# ----------------------------------------------------------------------------- with the pruning core
def test_formats_pack_what_the_granularities_prune() -> None:
    from prunekit.allocation import Uniform
    from prunekit.granularity import NM, Block, Pattern
    from prunekit.importance import Magnitude
    from prunekit.pruning import prune
    from prunekit.targets import select

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 32))
    masks = prune(net, select(net), Magnitude(), NM(2, 4), Uniform(None))
    for layer in (net[0], net[3]):
        w = layer.weight.detach()
        assert torch.equal(NMMatrix.pack(w).unpack(), w)
    masks.remove()

    conv = nn.Sequential(nn.Conv2d(8, 16, 3))
    pat = Pattern()
    masks = prune(conv, select(conv), Magnitude(), pat, Uniform(0.75))
    w = conv[0].weight.detach()
    f = FKWWeight.pack(w, patterns=pat.patterns)
    assert torch.equal(f.unpack(), w) and f.num_removed > 0
    masks.remove()

    lin = nn.Sequential(nn.Linear(64, 32))
    prune(lin, select(lin), Magnitude(), Block(4, 4), Uniform(0.8))
    w = lin[0].weight.detach()
    b = BSRMatrix.pack(w, block=(4, 4))
    assert torch.equal(b.unpack(), w) and 25 <= b.nblocks <= 26  # 20 % of 128 blocks kept


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_csr_to_torch_on_cuda_matches_dense() -> None:
    w = sparse_tensor((64, 128), 0.1)
    x = torch.randn(128, 8)
    t = CSRMatrix.pack(w).to_torch(device="cuda")
    assert t.is_cuda
    torch.testing.assert_close((t @ x.cuda()).cpu(), w @ x, rtol=1e-4, atol=1e-4)


def test_every_format_saves_and_loads_with_weights_only(tmp_path) -> None:
    w = pattern_conv(8, 4, pattern_set_3x3(), 0.6, seed=4)  # (8, 4, 3, 3); 2-D view (8, 36)
    nm = nm_tensor(8, 16, 2, 4, seed=4)
    packed = [CSRMatrix.pack(w), NMMatrix.pack(nm), BSRMatrix.pack(w, block=(4, 4)),
              BlockedELL.pack(w, block=(2, 4)), EIEMatrix.pack(w, num_pes=2), FKWWeight.pack(w),
              PacketCSRMatrix.pack(w)]
    for fmt in packed:
        path = tmp_path / f"{type(fmt).__name__}.pt"
        torch.save(fmt.state_dict(), path)
        back = SparseFormat.from_state_dict(torch.load(path, weights_only=True))
        assert type(back) is type(fmt) and back.nbytes() == fmt.nbytes()
        assert torch.equal(back.unpack(), fmt.unpack())
    with pytest.raises(ConfigError, match="not a saved sparse format"):
        SparseFormat.from_state_dict({"format": "COO"})


def test_finetune_codebook_freezes_batchnorm_statistics_and_restores_modes() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    net.eval()
    net[2].train()  # a mixed state that must come back as it was
    share_linear_layers(net, bits=2)
    stats = {k: v.clone() for k, v in net[1].state_dict().items()}
    centroids = net[0].centroids.detach().clone()
    net[0].eval()
    net[4].eval()
    modes = [m.training for m in net]
    assert modes == [False, False, True, False, False]
    loader = [(torch.randn(16, 6), torch.randint(0, 3, (16,))) for _ in range(4)]
    finetune_codebook(net, loader, epochs=1, lr=1e-2)
    assert all(torch.equal(v, net[1].state_dict()[k]) for k, v in stats.items())  # running stats untouched
    assert not torch.equal(centroids, net[0].centroids.detach())  # the centroids did train
    assert [m.training for m in net] == modes

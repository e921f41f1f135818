"""The compiled SIMD CSR x vector loop: equal to dense, used on the batch-1 path, optional."""

import pytest
import torch

from prunekit.sparse.formats import CSRMatrix
from prunekit.sparse.kernels import numba_csr, simd_csr

needs_cc = pytest.mark.skipif(not simd_csr.available(), reason="no C compiler here (the loop is optional)")


def _sparse(rows: int, cols: int, density: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=g)  # (N, K)
    return w * (torch.rand(rows, cols, generator=g) < density)


@needs_cc
@pytest.mark.parametrize("cols,col_dtype", [(300, torch.int16), (300, torch.int32), (40000, torch.int32)])
def test_spmv_matches_dense(cols: int, col_dtype: torch.dtype) -> None:
    w = _sparse(37, cols, 0.1)
    w[5] = 0.0  # an empty row
    m = CSRMatrix.pack(w)
    x = torch.randn(cols)
    out = torch.full((37,), float("nan"))
    assert simd_csr.spmv(m.row_ptr, m.col_indices.to(col_dtype), m.values, x, out)
    torch.testing.assert_close(out, w @ x, rtol=1e-5, atol=1e-5)
    assert out[5] == 0.0


@needs_cc
def test_unsupported_dtypes_decline_without_touching_out() -> None:
    m = CSRMatrix.pack(_sparse(4, 8, 0.5))
    out = torch.full((4,), 7.0)
    assert not simd_csr.spmv(m.row_ptr, m.col_indices.to(torch.int64), m.values, torch.randn(8), out)
    assert not simd_csr.spmv(m.row_ptr, m.col_indices.to(torch.int32), m.values.double(), torch.randn(8).double(), out)
    assert torch.equal(out, torch.full((4,), 7.0))


@pytest.mark.skipif(not numba_csr.AVAILABLE, reason="numba not installed")
def test_batch1_path_falls_back_when_no_compiler(monkeypatch) -> None:
    w = _sparse(16, 64, 0.2)
    m = CSRMatrix.pack(w)
    x = torch.randn(1, 64)
    monkeypatch.setattr(simd_csr, "spmv", lambda *args: False)  # as on a machine without cc
    y = numba_csr.csr_matmul(m.row_ptr.int(), m.col_indices, m.values, x)
    torch.testing.assert_close(y, x @ w.t(), rtol=1e-5, atol=1e-5)


def test_missing_compiler_means_unavailable(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(simd_csr, "compiler", lambda: None)
    simd_csr._library.cache_clear()
    try:
        assert not simd_csr.available()
        out = torch.zeros(2)
        m = CSRMatrix.pack(torch.eye(2))
        assert not simd_csr.spmv(m.row_ptr, m.col_indices.int(), m.values, torch.ones(2), out)
    finally:
        simd_csr._library.cache_clear()

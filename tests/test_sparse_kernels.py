"""Sparse kernels and modules compute what the dense layers compute; errors are clear."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, UnsupportedError
from prunekit.sparse import (
    CSRMatrix,
    PacketCSRMatrix,
    SemiStructuredLinear,
    SparseConv2d,
    SparseLinear,
    activation_sparsity,
    available_kernels,
    numba_available,
)
from prunekit.sparse.bench import BenchRow, crossover, pruned_weight

KERNELS = available_kernels()
LINEAR_ONLY = ("numba_csc", "numba_packet")  # zero-skipping by columns; 8-bit packets (batch-1 Linear)
CONV_KERNELS = tuple(k for k in KERNELS if k not in LINEAR_ONLY)
needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed (pip install numba)")


def _sparse_(module: nn.Module, sparsity: float, seed: int = 0) -> nn.Module:
    """Zero a random ``sparsity`` fraction of the weight and the whole first output row."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = module.weight
        w.mul_((torch.rand(w.shape, generator=g) >= sparsity).to(w.dtype))
        w[0].zero_()  # an all-zero row
    return module.eval()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_sparse_linear_matches_dense(kernel: str, sparsity: float, batch: int) -> None:
    torch.manual_seed(batch)
    lin = _sparse_(nn.Linear(48, 20), sparsity)
    sp = SparseLinear.from_dense(lin, kernel=kernel)
    x = torch.randn(batch, 48)
    with torch.no_grad():
        torch.testing.assert_close(sp(x), lin(x), rtol=1e-5, atol=1e-5)
    assert sp.kernel == kernel


@pytest.mark.parametrize("kernel", KERNELS)
def test_sparse_linear_leading_dims_and_no_bias(kernel: str) -> None:
    lin = _sparse_(nn.Linear(16, 8, bias=False), 0.7)
    sp = SparseLinear.from_dense(lin, kernel=kernel)
    x = torch.randn(2, 5, 16)  # (B, T, K)
    with torch.no_grad():
        out = sp(x)
        torch.testing.assert_close(out, lin(x), rtol=1e-5, atol=1e-5)
    assert out.shape == (2, 5, 8)


@pytest.mark.parametrize("kernel", CONV_KERNELS)
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 1.0])
@pytest.mark.parametrize(
    "conv_args",
    [
        {"in_channels": 3, "out_channels": 8, "kernel_size": 3, "padding": 1},
        {"in_channels": 4, "out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
        {"in_channels": 4, "out_channels": 4, "kernel_size": (3, 1), "dilation": 2, "padding": (2, 0)},
        {"in_channels": 8, "out_channels": 16, "kernel_size": 1},
    ],
)
@pytest.mark.parametrize("batch", [1, 2])
def test_sparse_conv_matches_dense(kernel: str, sparsity: float, conv_args: dict, batch: int) -> None:
    conv = _sparse_(nn.Conv2d(**conv_args), sparsity)
    sp = SparseConv2d.from_dense(conv, kernel=kernel)
    x = torch.relu(torch.randn(batch, conv.in_channels, 9, 8))
    with torch.no_grad():
        torch.testing.assert_close(sp(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_round_trips_copy_pickle_and_to_dense(kernel: str) -> None:
    lin = _sparse_(nn.Linear(10, 6), 0.5)
    sp_lin = SparseLinear.from_dense(lin, kernel=kernel)
    assert torch.equal(sp_lin.to_dense().weight, lin.weight)
    twin = copy.deepcopy(sp_lin)
    twin.load_state_dict(sp_lin.state_dict())
    with torch.no_grad():
        x = torch.relu(torch.randn(2, 10))
        torch.testing.assert_close(twin(x), lin(x), rtol=1e-5, atol=1e-5)
    if kernel not in CONV_KERNELS:
        with pytest.raises(UnsupportedError, match="runs Linear layers only"):
            SparseConv2d.from_dense(nn.Conv2d(4, 8, 3), kernel=kernel)
        return
    conv = _sparse_(nn.Conv2d(4, 8, 3, padding=1), 0.8)
    sp = SparseConv2d.from_dense(conv, kernel=kernel)
    buf = io.BytesIO()
    torch.save(copy.deepcopy(sp), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), conv(x), rtol=1e-5, atol=1e-5)
    dense = loaded.to_dense()
    assert isinstance(dense, nn.Conv2d)
    assert torch.equal(dense.weight, conv.weight) and torch.equal(dense.bias, conv.bias)


@needs_numba
def test_numba_packs_small_indices_and_counts_bytes() -> None:
    lin = _sparse_(nn.Linear(300, 40), 0.9)
    sp = SparseLinear.from_dense(lin, kernel="numba_csr")
    nnz = int(lin.weight.count_nonzero())
    assert sp.col_indices.dtype == torch.int16 and sp.row_ptr.dtype == torch.int32
    assert sp.packed_nbytes() == nnz * (4 + 2) + (40 + 1) * 4
    small = SparseLinear.from_dense(_sparse_(nn.Linear(100, 7), 0.5), kernel="numba_csr")
    assert small.col_indices.dtype == torch.uint8  # 100 columns fit in one byte


@needs_numba
@pytest.mark.parametrize("col_dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("width", [1, 7])
def test_numba_kernel_any_index_dtype(col_dtype: torch.dtype, width: int) -> None:
    from prunekit.sparse.kernels.numba_csr import csr_matmul_t

    w = pruned_weight(33, 200, 0.8, seed=3)
    w[5] = 0.0
    sp = CSRMatrix.pack(w)
    x = torch.randn(200, width)
    out = csr_matmul_t(sp.row_ptr.to(torch.int32), sp.col_indices.to(col_dtype), sp.values, x)
    torch.testing.assert_close(out, w @ x, rtol=1e-5, atol=1e-5)
    assert torch.all(out[5] == 0)


def test_auto_kernel_and_errors() -> None:
    lin = nn.Linear(8, 4)
    assert SparseLinear.from_dense(lin).kernel == ("numba_csr" if numba_available() else "torch_csr")
    with pytest.raises(ConfigError, match="unknown kernel 'cusparse'"):
        SparseLinear.from_dense(lin, kernel="cusparse")
    with pytest.raises(ConfigError, match="expects nn.Linear"):
        SparseLinear.from_dense(nn.Conv2d(1, 1, 1))
    with pytest.raises(ConfigError, match="does not divide"):
        SparseLinear.from_dense(nn.Linear(6, 4), kernel="torch_bsr", block=(4, 4))
    with pytest.raises(UnsupportedError, match="groups=1 only"):
        SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(UnsupportedError, match="fp32"):
        SparseLinear.from_dense(nn.Linear(8, 4).double(), kernel="torch_csr")
    with pytest.raises(UnsupportedError, match="inference module"):
        SparseLinear.from_dense(lin, kernel="torch_csr")(torch.randn(1, 8, requires_grad=True))


def _two_four_linear(out_features: int = 64, in_features: int = 128, bias: bool = True) -> nn.Linear:
    lin = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        lin.weight.view(out_features, in_features // 4, 4)[:, :, :2] = 0  # 2:4 along the input
    return lin


def test_semi_structured_checks_weight_before_needing_cuda() -> None:
    from prunekit.sparse.modules import check_semi_structured

    with pytest.raises(ConfigError, match="not 2:4 sparse"):
        SemiStructuredLinear.from_dense(nn.Linear(128, 64))
    with pytest.raises(UnsupportedError, match=r"multiples of \(32, 64\), got \(64, 96\); pad the layer"):
        SemiStructuredLinear.from_dense(_two_four_linear(64, 96))
    with pytest.raises(UnsupportedError, match="run torch.float16"):
        check_semi_structured(_two_four_linear().weight, torch.float32)
    check_semi_structured(_two_four_linear(32, 128).weight, torch.int8)
    with pytest.raises(UnsupportedError, match=r"\(32, 128\)"):
        check_semi_structured(_two_four_linear(32, 64).weight, torch.int8)
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedError, match="needs CUDA"):
            SemiStructuredLinear.from_dense(_two_four_linear())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lead", [(1,), (32,), (2, 5)])  # batch 1 is padded to the tile by torch
@pytest.mark.parametrize("bias", [True, False])
def test_semi_structured_matches_dense_on_gpu(dtype: torch.dtype, lead: tuple[int, ...], bias: bool) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("2:4 sparse tensor cores need compute capability >= 8.0")
    lin = _two_four_linear(64, 128, bias=bias)
    sp = SemiStructuredLinear.from_dense(lin, dtype=dtype)
    x = torch.randn(*lead, 128, device="cuda")
    ref = lin.to(device="cuda", dtype=dtype)(x.to(dtype))
    out = sp(x)  # fp32 input: cast to the layer's dtype
    assert out.dtype == dtype and out.shape == (*lead, 64)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


def test_activation_sparsity_counts_exact_zeros_and_restores_model() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).train()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4))
        model[0].bias.zero_()
    batches = [torch.tensor([[1.0, -1.0, 2.0, -2.0]]), (torch.tensor([[0.0, 3.0, -1.0, 1.0]]), torch.tensor([1]))]
    stats = activation_sparsity(model, batches)
    assert stats["0"].zeros == 1 and stats["0"].numel == 8  # one literal zero in the raw inputs
    assert stats["2"].zeros == 4 and stats["2"].zero_fraction == 0.5  # after ReLU: 2 + 2 zeros
    assert stats["2"].batches == 2
    assert model.training and all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ConfigError, match="no batches"):
        activation_sparsity(model, [])


def test_bench_helpers() -> None:
    w = pruned_weight(10, 10, 0.37)
    assert int((w == 0).sum()) == 37
    rows = [BenchRow("k", 1, s, 1.0, t, 100, 10, "int16", 1) for s, t in [(0.5, 1.2), (0.7, 0.9), (0.8, 1.1),
                                                                          (0.9, 0.5), (0.95, 0.3)]]
    assert crossover(rows, "k", 1) == 0.9  # 0.7 wins but 0.8 loses again
    assert crossover(rows, "k", 16) is None
    with pytest.raises(ConfigError, match="sparsity"):
        pruned_weight(2, 2, 1.0)


@needs_numba
@pytest.mark.parametrize("width", [1, 3])
def test_numba_parallel_and_serial_paths_agree(width: int) -> None:
    from prunekit.metrics.latency import num_threads
    from prunekit.sparse.kernels import numba_csr

    w = pruned_weight(256, 512, 0.5, seed=1)  # 65536 nonzeros: big enough for the parallel loops
    sp = CSRMatrix.pack(w)
    args = (sp.row_ptr.to(torch.int32), sp.col_indices.to(torch.int16), sp.values)
    x = torch.randn(512, width)
    assert args[2].numel() * width >= numba_csr.PARALLEL_MIN_WORK
    with num_threads(2):
        parallel = numba_csr.csr_matmul_t(*args, x)
    with num_threads(1):
        serial = numba_csr.csr_matmul_t(*args, x)
    torch.testing.assert_close(parallel, w @ x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(serial, parallel, rtol=1e-5, atol=1e-5)


def test_without_numba_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    from prunekit.sparse import deploy
    from prunekit.sparse.kernels import numba_csr

    monkeypatch.setattr(numba_csr, "AVAILABLE", False)
    assert "numba_csr" not in available_kernels() and "numba_packet" not in available_kernels()
    lin = _sparse_(nn.Linear(16, 8), 0.9)
    assert SparseLinear.from_dense(lin).kernel == "torch_csr"
    for kernel in ("numba_csr", "numba_packet"):
        with pytest.raises(ConfigError, match="pip install numba"):
            SparseLinear.from_dense(lin, kernel=kernel)
    with pytest.raises(ConfigError, match="not available on this machine"):
        deploy(nn.Sequential(lin), torch.randn(1, 16), candidates=["numba_csr"])
    _, report = deploy(nn.Sequential(lin), torch.randn(1, 16), repeats=1, warmup=0, threads=1)
    assert "numba_csr" not in report.layers[0].times_s


@needs_numba
@pytest.mark.parametrize("rows", [1, 2, 3, 63, 65, 200])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("fmt", ["csr", "packet"])
def test_numba_batch1_parallel_loop_writes_every_row_once(rows: int, threads: int, fmt: str) -> None:
    # spmv_parallel hands rows out in claimed chunks; each row must be computed exactly once
    # whatever the row count (fewer rows than chunks, a ragged last chunk) and thread count.
    import numba
    import numpy as np

    from prunekit.sparse.kernels import numba_csr

    loops = numba_csr._loops()
    w = pruned_weight(rows, 40, 0.6, seed=rows)  # (N, K)
    w[0] = 0.0  # an empty row
    bias = torch.arange(rows, dtype=torch.float32)
    if fmt == "csr":
        m = CSRMatrix.pack(w)
        arrays = numba_csr.as_arrays(m.row_ptr.int(), m.col_indices, m.values, bias)
    else:
        p = PacketCSRMatrix.pack(w)
        arrays = numba_csr.as_arrays(p.packet_ptr.int(), p.offsets, p.values, bias, p.bases)
    x = torch.randn(40)
    out = np.full(rows, np.nan, np.float32)
    before = numba.get_num_threads()
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    try:
        loops.spmv_parallel(arrays.row_ptr, arrays.bases, arrays.col, arrays.val, x.numpy(), arrays.bias, out, 0, threads)
    finally:
        numba.set_num_threads(before)
    torch.testing.assert_close(torch.from_numpy(out), w @ x + torch.arange(rows), rtol=1e-5, atol=1e-5)

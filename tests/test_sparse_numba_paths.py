"""The numba fast paths: batch-1 linear (prefetching loop, fused bias), direct sparse convolution,
and the cached numpy views / conv plans that must follow every change of the module's buffers."""

from __future__ import annotations

import copy
import doctest
import importlib
import io
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

from prunekit.errors import UnsupportedError
from prunekit.metrics.latency import num_threads
from prunekit.sparse import SparseConv2d, SparseLinear, numba_available
from prunekit.sparse.bench import pruned_weight

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba not installed (pip install numba)")


def _pruned_conv(sparsity: float, seed: int = 0, **conv_args: object) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(**conv_args).eval()
    with torch.no_grad():
        conv.weight.mul_((torch.rand(conv.weight.shape) >= sparsity).float())
    return conv


@pytest.mark.parametrize(
    "conv_args",
    [
        {"in_channels": 5, "out_channels": 7, "kernel_size": 3, "stride": (2, 1), "padding": (0, 2)},
        {"in_channels": 3, "out_channels": 4, "kernel_size": 5, "stride": 3, "padding": 2, "bias": False},
        {"in_channels": 2, "out_channels": 3, "kernel_size": (2, 3), "stride": 2, "dilation": (2, 3),
         "padding": (3, 1)},
        {"in_channels": 16, "out_channels": 16, "kernel_size": 3, "padding": 1},  # a ResNet block conv
        {"in_channels": 16, "out_channels": 32, "kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_direct_conv_matches_dense_for_odd_geometries(conv_args: dict, threads: int) -> None:
    conv = _pruned_conv(0.8, **conv_args)
    sp = SparseConv2d.from_dense(conv, kernel="numba_csr")
    with torch.no_grad(), num_threads(threads):
        for shape in ((1, conv.in_channels, 13, 11), (3, conv.in_channels, 17, 16)):  # two sizes, two plans
            x = torch.randn(*shape)
            torch.testing.assert_close(sp(x), conv(x), rtol=1e-5, atol=1e-5)
        x = torch.randn(2, conv.in_channels, 20, 30).transpose(2, 3)  # non-contiguous input
        torch.testing.assert_close(sp(x), conv(x), rtol=1e-5, atol=1e-5)


def test_direct_conv_refuses_wrong_input_shape() -> None:
    sp = SparseConv2d.from_dense(_pruned_conv(0.5, in_channels=3, out_channels=4, kernel_size=3), "numba_csr")
    with pytest.raises(Exception, match=r"expects input \(B, 3, H, W\)"):
        sp(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        sp(torch.randn(1, 3, 2, 2))


@pytest.mark.parametrize("shape", [(16,), (1, 16), (1, 1, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_batch1_linear_path_fuses_bias_and_keeps_shape(shape: tuple[int, ...], bias: bool) -> None:
    lin = nn.Linear(16, 9, bias=bias).eval()
    with torch.no_grad():
        lin.weight.mul_((torch.rand(9, 16) > 0.7).float())
    sp = SparseLinear.from_dense(lin, kernel="numba_csr")
    x = torch.randn(*shape)
    with torch.no_grad():
        out = sp(x)
        torch.testing.assert_close(out, lin(x), rtol=1e-5, atol=1e-5)
    assert out.shape == (*shape[:-1], 9)


def _batch1_inputs() -> dict[str, torch.Tensor]:
    """Inputs with as many elements as one row of 16 that the numpy fast path must not take as is."""
    leaf = torch.randn(1, 16, requires_grad=True)
    return {
        "two rows of 8 (numel == in_features)": torch.randn(2, 8),
        "non-contiguous row": torch.randn(16, 2)[:, 0],
        "fp64 row": torch.randn(1, 16, dtype=torch.float64),
        "bf16 row": torch.randn(1, 16).to(torch.bfloat16),
        "leaf that requires grad (under no_grad)": leaf,
        "negative view": torch.randn(1, 16)._neg_view(),
    }


@pytest.mark.parametrize("case", list(_batch1_inputs()))
def test_batch1_linear_path_hands_odd_inputs_to_the_general_path(case: str) -> None:
    lin = nn.Linear(16, 9).eval()
    with torch.no_grad():
        lin.weight.mul_((torch.rand(9, 16) > 0.7).float())
    sp = SparseLinear.from_dense(lin, kernel="numba_csr")
    x = _batch1_inputs()[case]
    with torch.no_grad():
        if x.shape[-1] != 16:
            with pytest.raises(Exception, match="16|shape|size"):
                sp(x)
            return
        out = sp(x)
        ref = lin(x.resolve_neg().to(torch.float32))
    assert out.shape == (*x.shape[:-1], 9)
    torch.testing.assert_close(out.to(torch.float32), ref, rtol=2e-2, atol=2e-2)


def test_batch1_linear_output_is_fresh_memory_each_call() -> None:
    sp = SparseLinear.from_dense(nn.Linear(16, 9).eval(), kernel="numba_csr")
    with torch.no_grad():
        first = sp(torch.ones(1, 16))
        kept = first.clone()
        sp(torch.zeros(1, 16))
    assert torch.equal(first, kept)


@pytest.mark.parametrize("zeros", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("lead", [(), (1,), (3,), (2, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_zero_skipping_csc_linear_matches_dense(zeros: float, lead: tuple[int, ...], bias: bool) -> None:
    lin = nn.Linear(40, 24, bias=bias).eval()
    with torch.no_grad():
        lin.weight.mul_((torch.rand(24, 40) > 0.8).float())
    sp = SparseLinear.from_dense(lin, kernel="numba_csc")
    x = torch.randn(*lead, 40)
    x[torch.rand(x.shape) < zeros] = 0.0  # activation sparsity: the zero columns are skipped
    with torch.no_grad():
        out = sp(x)
        torch.testing.assert_close(out, lin(x), rtol=1e-5, atol=1e-5)
    assert out.shape == (*lead, 24) and sp.kernel == "numba_csc"
    assert sp.row_ptr.numel() == 41  # stored by columns: one pointer per input feature (+1)
    assert sp.col_indices.dtype == torch.uint8  # row indices of W fit 8 bits here


def test_zero_skipping_csc_reads_only_active_columns() -> None:
    """A NaN planted in a weight column is never read when that column's input is zero."""
    lin = nn.Linear(6, 3, bias=False).eval()
    with torch.no_grad():
        lin.weight.copy_(torch.arange(18.0).reshape(3, 6) + 1)
        lin.weight[:, 2] = float("nan")
    sp = SparseLinear.from_dense(lin, kernel="numba_csc")
    x = torch.tensor([[1.0, 2.0, 0.0, 0.0, 1.0, 0.0]])
    with torch.no_grad():
        out = sp(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, x[:, [0, 1, 4]] @ lin.weight[:, [0, 1, 4]].t())


@pytest.mark.parametrize("threads", [1, 2])
def test_prefetching_loop_on_a_weight_larger_than_l2(threads: int) -> None:
    from prunekit.sparse.kernels import _numba_loops

    w = pruned_weight(1024, 2048, 0.6, seed=3)  # 839k nonzeros, 5 MB packed: prefetches on
    lin = nn.Linear(2048, 1024).eval()
    with torch.no_grad():
        lin.weight.copy_(w)
    sp = SparseLinear.from_dense(lin, kernel="numba_csr")
    assert sp.packed_nbytes() >= _numba_loops.PREFETCH_MIN_BYTES
    x = torch.randn(1, 2048)
    with torch.no_grad(), num_threads(threads):
        torch.testing.assert_close(sp(x), lin(x), rtol=1e-4, atol=1e-4)


def _linear_pair(seed: int) -> tuple[nn.Linear, SparseLinear]:
    """A pruned Linear (the same zero pattern for every seed, other values) and its SparseLinear."""
    mask = (torch.rand(6, 12, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    torch.manual_seed(seed)
    lin = nn.Linear(12, 6).eval()
    with torch.no_grad():
        lin.weight.mul_(mask)
    return lin, SparseLinear.from_dense(lin, kernel="numba_csr")


def test_cached_views_follow_load_state_dict_assign_and_buffer_swaps() -> None:
    lin_a, sp_a = _linear_pair(0)
    lin_b, sp_b = _linear_pair(1)
    x = torch.randn(1, 12)
    with torch.no_grad():
        sp_a(x)  # builds the cache
        sp_a.load_state_dict(sp_b.state_dict(), assign=True)  # buffers replaced, not copied into
        torch.testing.assert_close(sp_a(x), lin_b(x), rtol=1e-5, atol=1e-5)
        sp_a.bias = torch.zeros(6)  # a plain assignment drops the cache too
        torch.testing.assert_close(sp_a(x), lin_b(x) - lin_b.bias, rtol=1e-5, atol=1e-5)


def test_in_place_state_dict_load_updates_the_computation() -> None:
    lin_a, sp_a = _linear_pair(0)
    x = torch.randn(1, 12)
    with torch.no_grad():
        sp_a(x)
        other = {k: v * 2 if k in ("values", "bias") else v for k, v in sp_a.state_dict().items()}
        sp_a.load_state_dict(other)  # same shapes: copied into the existing buffers
        torch.testing.assert_close(sp_a(x), 2 * lin_a(x), rtol=1e-5, atol=1e-5)


def test_copies_and_pickles_drop_the_cache_and_compute_the_same() -> None:
    conv = _pruned_conv(0.7, in_channels=4, out_channels=6, kernel_size=3, padding=1)
    sp = SparseConv2d.from_dense(conv, kernel="numba_csr")
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        expected = sp(x)  # caches views and a plan
        assert "_arrays_cache" in sp.__dict__ and "_plans_cache" in sp.__dict__
        assert set(sp.state_dict()) == {"values", "col_indices", "row_ptr", "bias"}
        twin = copy.deepcopy(sp)
        assert "_arrays_cache" not in twin.__dict__
        sp.values.zero_()  # the copy owns its own buffers
        torch.testing.assert_close(twin(x), expected)
        buf = io.BytesIO()
        torch.save(twin, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        torch.testing.assert_close(loaded(x), expected)
        torch.testing.assert_close(pickle.loads(pickle.dumps(twin))(x), expected)


@pytest.mark.parametrize(
    "module_name",
    ["prunekit.sparse.kernels.numba_csr", "prunekit.sparse.modules", "prunekit.sparse.bench"],
)
def test_sparse_docstring_examples_run(module_name: str) -> None:
    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("kernel", ["numba_csr", "numba_packet", "numba_csc"])
def test_linear_kernels_accept_lazily_negated_inputs(kernel: str) -> None:
    lin = nn.Linear(16, 9).eval()
    sp = SparseLinear.from_dense(lin, kernel=kernel)
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(sp(x._neg_view()), lin(-x), rtol=1e-5, atol=1e-5)


def test_direct_conv_accepts_a_lazily_negated_input() -> None:
    conv = _pruned_conv(0.5, in_channels=3, out_channels=4, kernel_size=3, padding=1)
    sp = SparseConv2d.from_dense(conv, kernel="numba_csr")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(sp(x._neg_view()), conv(-x), rtol=1e-5, atol=1e-5)


def test_first_numba_kernel_call_keeps_torchs_thread_setting() -> None:
    """numba's omp layer starts by calling omp_set_num_threads(all cores) on torch's libgomp; the
    kernels must put torch's setting back. Needs a fresh process: the layer starts once."""
    code = (
        "import torch\n"
        "from torch import nn\n"
        "from prunekit.sparse import SparseLinear\n"
        "torch.set_num_threads(1)\n"
        "sp = SparseLinear.from_dense(nn.Linear(512, 512), kernel='numba_csr')\n"
        "with torch.no_grad():\n"
        "    sp(torch.randn(1, 512))\n"
        "print(torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "1"


@pytest.mark.parametrize("batch", [1, 3])
def test_numba_linear_refuses_an_input_that_needs_grad(batch: int) -> None:
    # The batch-1 fast path skips the explicit grad check (x.numpy() refuses such a tensor);
    # the refusal must still come, with the module's message, at every batch size.
    sp = SparseLinear.from_dense(nn.Linear(16, 9), kernel="numba_csr")
    with pytest.raises(UnsupportedError, match="inference module"):
        sp(torch.randn(batch, 16, requires_grad=True))


@pytest.mark.parametrize(("shape", "sparsity"), [((64, 4096), 0.9), ((33, 1000), 0.5), ((5, 70_000), 0.99),
                                                  ((1024, 2048), 0.6)])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("threads", [1, 2])
def test_packet_kernel_matches_dense(shape: tuple[int, int], sparsity: float, batch: int, threads: int) -> None:
    # (5, 70000) at 99 %: int32 packet bases and most packets cut early by gaps > 255 columns;
    # (1024, 2048): larger than L2, so the batch-1 loop prefetches.
    n, k = shape
    lin = nn.Linear(k, n).eval()
    with torch.no_grad():
        lin.weight.copy_(pruned_weight(n, k, sparsity, seed=n))
    sp = SparseLinear.from_dense(lin, kernel="numba_packet")
    assert sp.bases.dtype == (torch.int32 if k > 2**15 else torch.int16)
    x = torch.randn(batch, k)
    with torch.no_grad(), num_threads(threads):
        torch.testing.assert_close(sp(x), lin(x), rtol=1e-4, atol=1e-4)
    assert torch.equal(sp.to_dense().weight, lin.weight)


def test_packet_kernel_counts_bytes_and_reports_density() -> None:
    lin = nn.Linear(4096, 32).eval()
    with torch.no_grad():
        lin.weight.copy_(pruned_weight(32, 4096, 0.9, seed=2))
    packet = SparseLinear.from_dense(lin, kernel="numba_packet")
    csr = SparseLinear.from_dense(lin, kernel="numba_csr")
    p = packet.bases.numel()
    assert packet.packed_nbytes() == p * 16 * (4 + 1) + p * 2 + 33 * 4
    assert packet.packed_nbytes() < 0.89 * csr.packed_nbytes()
    assert packet.density == pytest.approx(csr.density) and packet.index_dtype_name == "uint8+int16"
    with pytest.raises(UnsupportedError, match="runs Linear layers only"):
        SparseConv2d.from_dense(nn.Conv2d(2, 2, 3), kernel="numba_packet")


def test_auto_picks_packets_for_a_linear_only_where_they_are_smaller() -> None:
    lin = nn.Linear(4096, 16).eval()
    with torch.no_grad():
        lin.weight.copy_(pruned_weight(16, 4096, 0.9, seed=1))
    assert SparseLinear.from_dense(lin).kernel == "numba_packet"
    with torch.no_grad():
        lin.weight.copy_(pruned_weight(16, 4096, 0.98, seed=1))  # packets mostly padding here
    assert SparseLinear.from_dense(lin).kernel == "numba_csr"
    assert SparseConv2d.from_dense(_pruned_conv(0.9, in_channels=64, out_channels=8, kernel_size=3)).kernel == "numba_csr"

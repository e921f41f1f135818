"""prunekit.metrics: counts, MACs/FLOPs (hand-computed cases), size, latency, layer table."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from prunekit.errors import ConfigError
from prunekit.metrics import (
    compare_latency,
    count_flops,
    count_macs,
    count_nonzero_macs,
    count_nonzeros,
    count_params,
    format_table,
    layer_table,
    macs_by_layer,
    measure_latency,
    model_bytes,
    profile_costs,
    sparsity_report,
    total_sparsity,
)
from prunekit.models import create

CIFAR = (1, 3, 32, 32)


def resnet_cifar_macs(n: int) -> int:
    """Hand count for ResNet-(6n+2) option A: every conv is 3x3, plus the 64->10 linear."""
    stem = 32 * 32 * 16 * 3 * 9
    stage1 = 2 * n * 32 * 32 * 16 * 16 * 9
    stage2 = 16 * 16 * 32 * 16 * 9 + (2 * n - 1) * 16 * 16 * 32 * 32 * 9
    stage3 = 8 * 8 * 64 * 32 * 9 + (2 * n - 1) * 8 * 8 * 64 * 64 * 9
    return stem + stage1 + stage2 + stage3 + 64 * 10


# --- ResNet totals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n", "approx_macs", "params"), [("resnet20", 3, 41e6, 269_722), ("resnet56", 9, 126e6, 853_018)]
)
def test_resnet_macs_and_params(name: str, n: int, approx_macs: float, params: int) -> None:
    model = create(name)
    macs = count_macs(model, torch.zeros(CIFAR))
    assert macs == resnet_cifar_macs(n)
    assert abs(macs - approx_macs) / approx_macs < 0.02
    assert count_params(model) == params
    if name == "resnet20":
        flops = count_flops(model, torch.zeros(CIFAR))
        assert 2 * macs < flops < 2.1 * macs  # BN, ReLU, adds, pooling are a small extra


@pytest.mark.parametrize("which", ["resnet20", "mha"])
def test_agrees_with_torch_flop_counter(which: str) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    if which == "resnet20":
        model, args = create("resnet20").eval(), (torch.zeros(CIFAR),)
    else:
        model, args = nn.MultiheadAttention(8, 2).eval(), (torch.randn(4, 1, 8),) * 3
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args)
    assert counter.get_total_flops() == 2 * count_macs(model, args) > 0  # it counts 2 FLOPs per MAC


def test_macs_scale_with_batch() -> None:
    model = create("resnet20")
    assert count_macs(model, torch.zeros(2, 3, 32, 32)) == 2 * resnet_cifar_macs(3)


# --- hand-computed layers ----------------------------------------------------------------------


def test_depthwise_conv() -> None:
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    # out elems 8*10*10 = 800, each 1 input channel * 3*3
    assert count_macs(conv, torch.zeros(1, 8, 10, 10)) == 800 * 9


def test_grouped_strided_conv() -> None:
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4)
    # out (2, 16, 5, 5) = 800 elems, each Cin/groups = 2 channels * 9
    profile = profile_costs(conv, torch.zeros(2, 8, 9, 9))
    assert profile.total_macs == 800 * 2 * 9
    assert profile.elementwise == {"": 800}  # the bias add
    assert profile.total_flops == 2 * 800 * 18 + 800


@pytest.mark.parametrize(
    ("conv", "shape", "expected"),
    [
        (nn.Conv2d(4, 8, 3, padding="same", bias=False), (1, 4, 5, 5), 8 * 25 * 4 * 9),
        (nn.Conv2d(4, 8, 3, dilation=2, bias=False), (1, 4, 9, 9), 8 * 25 * 4 * 9),  # out 5x5
        (nn.Conv1d(4, 8, 3, groups=2, bias=False), (2, 4, 10), 2 * 8 * 8 * 2 * 3),
        (nn.Conv3d(2, 4, 3, bias=False), (1, 2, 5, 5, 5), 4 * 27 * 2 * 27),
    ],
)
def test_other_convolutions(conv: nn.Module, shape: tuple[int, ...], expected: int) -> None:
    assert count_macs(conv, torch.zeros(shape)) == expected


def test_transposed_conv() -> None:
    conv = nn.ConvTranspose2d(4, 6, 3, stride=2, bias=False)
    # every input element (1*4*5*5 = 100) scatters into Cout/groups = 6 channels * 3*3
    assert count_macs(conv, torch.zeros(1, 4, 5, 5)) == 100 * 6 * 9


def test_linear_on_3d_input() -> None:
    assert count_macs(nn.Linear(8, 4), torch.zeros(2, 3, 8)) == 2 * 3 * 8 * 4


def test_zero_weights_still_count_dense_but_smaller_layer_counts_less() -> None:
    conv = nn.Conv2d(4, 8, 3, padding=1)
    x = torch.zeros(1, 4, 6, 6)
    dense = count_macs(conv, x)
    with torch.no_grad():
        conv.weight.zero_()
    assert count_macs(conv, x) == dense == 8 * 36 * 4 * 9
    assert count_macs(nn.Conv2d(4, 5, 3, padding=1), x) == 5 * 36 * 4 * 9  # 3 filters physically removed


@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_attention_by_hand(batch_first: bool) -> None:
    e, heads, length = 8, 2, 4
    mha = nn.MultiheadAttention(embed_dim=e, num_heads=heads, batch_first=batch_first)
    x = torch.randn(1, length, e) if batch_first else torch.randn(length, 1, e)
    head_dim = e // heads
    projections = 3 * length * e * e  # q, k, v in-projections
    qk = heads * length * length * head_dim  # Q K^T
    av = heads * length * length * head_dim  # softmax(.) V
    out_proj = length * e * e
    assert count_macs(mha, (x, x, x)) == projections + qk + av + out_proj == 1280


class _SDPA(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class _MatmulBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 5))
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, 4)
        return self.head(torch.matmul(x, self.w))  # (B, L, 5) -> (B, L, 2)


def test_scaled_dot_product_attention() -> None:
    q = torch.randn(2, 3, 4, 8)  # (B, H, Lq, E)
    k = torch.randn(2, 3, 6, 8)  # (B, H, Lk, E)
    v = torch.randn(2, 3, 6, 5)  # (B, H, Lk, Ev)
    assert count_macs(_SDPA(), (q, k, v)) == 2 * 3 * 4 * 6 * (8 + 5)


def _encoder_layer_macs(tokens: int, batch: int, length: int, e: int, ffn: int) -> int:
    projections = 4 * tokens * e * e  # q, k, v, out
    attention = 2 * batch * length * length * e  # Q K^T and A V over all heads
    return projections + attention + 2 * tokens * e * ffn  # + linear1, linear2


@pytest.mark.parametrize("batch_first", [False, True])
def test_transformer_encoder_layer_by_hand(batch_first: bool) -> None:
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=batch_first)
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    assert count_macs(layer, x) == _encoder_layer_macs(10, 2, 5, 16, 32) == 22_080


def test_fused_encoder_layer_op_by_hand() -> None:
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True).eval()
    a = layer.self_attn

    class Fused(nn.Module):  # the op nn.TransformerEncoderLayer's inference fast path calls
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch._transformer_encoder_layer_fwd(
                x, a.embed_dim, a.num_heads, a.in_proj_weight, a.in_proj_bias, a.out_proj.weight,
                a.out_proj.bias, False, layer.norm_first, layer.norm1.eps, layer.norm1.weight,
                layer.norm1.bias, layer.norm2.weight, layer.norm2.bias, layer.linear1.weight,
                layer.linear1.bias, layer.linear2.weight, layer.linear2.bias, None, None,
            )  # fmt: skip

    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(Fused()(x), layer(x))
    assert count_macs(Fused(), x) == _encoder_layer_macs(10, 2, 5, 16, 32)


@pytest.mark.slow
def test_huggingface_bert_by_hand() -> None:
    transformers = pytest.importorskip("transformers")
    hidden, inter, length = 16, 32, 6
    for impl in ("sdpa", "eager"):  # fused attention op vs explicit torch.matmul
        cfg = transformers.BertConfig(
            vocab_size=50, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=inter, max_position_embeddings=16, attn_implementation=impl,
        )  # fmt: skip
        model = transformers.BertModel(cfg)
        by_layer = macs_by_layer(model, {"input_ids": torch.randint(0, 50, (1, length))})
        assert by_layer["encoder.layer.0.attention.self"] == 2 * length * length * hidden
        assert by_layer["encoder.layer.0.intermediate.dense"] == length * hidden * inter
        pooler = hidden * hidden  # first token only
        expected = (
            4 * length * hidden**2 + 2 * length * length * hidden + 2 * length * hidden * inter + pooler
        )
        assert sum(by_layer.values()) == expected


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_weight_operand_counts_dense_shape() -> None:
    w = torch.eye(3, 8).to_sparse_csr()

    class SparseLinear(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 8) -> (B, 3)
            return torch.sparse.mm(w, x.T).T

    assert count_macs(SparseLinear(), torch.zeros(4, 8)) == 4 * 8 * 3


def test_nonzero_macs_scale_with_weight_density() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 25, 10))
    x = torch.zeros(2, 4, 5, 5)
    conv, fc = 2 * 8 * 25 * 4 * 9, 2 * 200 * 10
    assert count_macs(model, x) == count_nonzero_macs(model, x) == conv + fc
    with torch.no_grad():
        model[0].weight[:2].zero_()  # 2 of 8 filters
        model[2].weight[:, :50].zero_()  # a quarter of the fc weights
    assert count_macs(model, x) == conv + fc
    assert count_nonzero_macs(model, x) == conv * 6 // 8 + fc * 3 // 4


def test_functional_matmul_is_charged_to_calling_module() -> None:
    model = nn.Sequential(_MatmulBlock())
    assert macs_by_layer(model, torch.zeros(2, 3, 4)) == {"0": 2 * 3 * 4 * 5, "0.head": 2 * 3 * 5 * 2}


def test_macs_by_layer_and_kwargs_input() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.fc(x) @ scale  # (B, 2) @ (2, 2): charged to the root

    by_layer = macs_by_layer(Net(), {"x": torch.zeros(5, 3), "scale": torch.eye(2)})
    assert by_layer == {"fc": 5 * 3 * 2, "": 5 * 2 * 2}


def test_custom_cost_replaces_invisible_ops() -> None:
    class Custom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ x.T  # would be 2*3*2 = 12 MACs

        def prunekit_cost(self, inputs: tuple, output: torch.Tensor) -> tuple[int, int]:
            return 1000, 7

    p = profile_costs(nn.Sequential(Custom(), nn.Linear(2, 2, bias=False)), torch.zeros(2, 3))
    assert p.macs == {"0": 1000, "1": 2 * 2 * 2}
    assert p.elementwise == {"0": 7}


def test_counting_restores_modes_and_removes_hooks() -> None:
    model = create("resnet20").train()
    model.layer2.eval()  # mixed flags must survive too
    count_macs(model, torch.zeros(CIFAR))
    assert model.training and model.layer1.training and not model.layer2.training
    assert not model.layer2[0].conv1.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# --- params, nonzeros, sparsity ----------------------------------------------------------------


def test_nonzeros_and_sparsity_after_zeroing() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
        model[0].weight[0, :].zero_()  # 4 zeros
        model[0].weight[1, 0] = 0.0  # 1 more
        model[2].bias.zero_()  # 2 zeros
    assert count_params(model) == 15 + 8
    assert count_nonzeros(model) == 23 - 7
    rows = sparsity_report(model)
    assert [(r.name, r.type, r.params, r.nonzeros) for r in rows] == [
        ("0", "Linear", 15, 10),
        ("2", "Linear", 8, 6),
    ]
    assert rows[0].sparsity == pytest.approx(5 / 15)
    total = total_sparsity(rows)
    assert (total.params, total.nonzeros) == (23, 16)
    assert total.sparsity == pytest.approx(7 / 23)


def test_torch_prune_mask_is_counted() -> None:
    lin = nn.Linear(4, 4, bias=False)
    torch_prune.l1_unstructured(lin, "weight", amount=0.5)  # weight_orig + weight_mask buffer
    assert count_params(lin) == 16
    assert count_nonzeros(lin) == 8


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def test_parametrized_mask_is_counted() -> None:
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    parametrize.register_parametrization(model[0], "weight", _Mask(torch.tensor([[1.0, 0, 0], [0, 1, 1]])))
    assert count_params(model) == 6
    assert count_nonzeros(model) == 3
    assert [(r.name, r.nonzeros) for r in sparsity_report(model)] == [("0", 3)]


def test_shared_parameter_counted_once() -> None:
    a = nn.Linear(3, 3, bias=False)
    b = nn.Linear(3, 3, bias=False)
    b.weight = a.weight
    assert count_params(nn.Sequential(a, b)) == 9


# --- size --------------------------------------------------------------------------------------


def test_model_bytes_fp32_is_twice_fp16() -> None:
    model = create("resnet20")
    fp32, fp16 = model_bytes(model, torch.float32), model_bytes(model, torch.float16)
    assert fp32 == 2 * fp16
    bn_stats = 2 * sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert fp32 == 4 * (269_722 + bn_stats)  # params + running mean/var; num_batches_tracked excluded


def test_model_bytes_overrides() -> None:
    lin = nn.Linear(4, 2)
    assert model_bytes(lin, overrides={"weight": 3}) == 3 + 2 * 4
    with pytest.raises(ConfigError, match="unknown tensor 'weigth'.*'weight'"):
        model_bytes(lin, overrides={"weigth": 3})
    with pytest.raises(ConfigError, match="negative"):
        model_bytes(lin, overrides={"weight": -1})


# --- latency -----------------------------------------------------------------------------------


def test_measure_latency_restores_threads_and_mode() -> None:
    model = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5)).train()
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    r = measure_latency(model, torch.zeros(3, 16), warmup=2, repeats=7, threads=target)
    assert torch.get_num_threads() == before
    assert r.threads == target and r.repeats == 7 and r.batch_size == 3
    assert 0 < r.p10_s <= r.median_s <= r.p90_s
    assert r.mean_s > 0
    assert model.training and model[1].training
    assert gc.isenabled()  # paused only while timing


def test_latency_runs_in_eval_mode_without_grad() -> None:
    seen: list[tuple[bool, bool]] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((self.training, torch.is_grad_enabled()))
            return x

    measure_latency(Probe().train(), torch.zeros(1), warmup=1, repeats=2)
    assert seen == [(False, False)] * 3


def test_compare_latency_interleaves_round_robin() -> None:
    calls: list[str] = []

    class Tag(nn.Module):
        def __init__(self, tag: str) -> None:
            super().__init__()
            self.tag = tag

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(self.tag)
            return x

    res = compare_latency({"a": Tag("a"), "b": Tag("b")}, torch.zeros(2, 1), warmup=1, repeats=3, threads=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warmup, then the order rotates each round
    assert set(res) == {"a", "b"} and all(r.repeats == 3 and r.threads == 1 for r in res.values())


def test_latency_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        measure_latency(nn.Identity(), torch.zeros(1), repeats=0)
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        measure_latency(nn.Identity(), torch.zeros(1), threads=0)


# --- layer table -------------------------------------------------------------------------------


def test_layer_table_rows_and_total() -> None:
    model = create("resnet20")
    x = torch.zeros(CIFAR)
    rows = layer_table(model, x)
    assert sum(r.macs for r in rows) == count_macs(model, x)
    assert sum(r.params for r in rows) == count_params(model)
    by_name = {r.name: r for r in rows}
    assert by_name["conv1"].weight_shape == (16, 3, 3, 3)
    assert by_name["conv1"].macs == 32 * 32 * 16 * 27
    assert by_name["layer1.0.bn1"].macs == 0 and by_name["layer1.0.bn1"].params == 32
    text = format_table(rows)
    last = text.splitlines()[-1].split()
    assert last[0] == "total" and last[1] == "269,722" and last[-1] == f"{resnet_cifar_macs(3):,}"
    widths = {len(line) for line in text.splitlines() if "-----" in line}
    assert len(widths) == 1  # both rules have the same width: columns are aligned

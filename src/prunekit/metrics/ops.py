"""Cost formulas for ATen operators: multiply-accumulates (MACs) and other (elementwise) FLOPs.

Every formula reads only shapes, so the count is that of the dense architecture: a zeroed weight
costs as much as a nonzero one; a physically smaller (structurally pruned) layer costs less.

Conventions (documented in ``docs/metrics.md``):

* MACs: convolutions (``out_elems * Cin/groups * prod(kernel)``; transposed convolutions use the
  input elements), ``mm``/``addmm``/``bmm``/``baddbmm``/``mv``/``dot`` (``Linear`` and
  ``torch.matmul`` lower to these; a sparse operand counts at its dense shape), fused attention
  (``scaled_dot_product_attention``, ``nn.MultiheadAttention``'s and
  ``nn.TransformerEncoderLayer``'s fast paths).
* Elementwise FLOPs (not MACs): bias adds, normalization (BatchNorm 2/elem, Layer/Group/RMS
  norm 5/elem), pooling and reductions (1 per input element), activations and arithmetic
  (1 per output element), softmax (3/elem).

>>> import torch
>>> cost(torch.ops.aten.mm.default, (torch.zeros(2, 3), torch.zeros(3, 4)), {}, torch.zeros(2, 4))
(24, 0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

aten = torch.ops.aten

Cost = tuple[int, int]  # (MACs, elementwise FLOPs)
Formula = Callable[[tuple[Any, ...], dict[str, Any], Any], Cost]


def _numel(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel()
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0].numel()
    return 0


def _mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    a, b = args[0], args[1]  # (m, k) @ (k, n)
    return a.shape[0] * a.shape[1] * b.shape[1], 0


def _addmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    a, b = args[1], args[2]  # beta * bias + alpha * (m, k) @ (k, n); a or b may be a sparse tensor
    beta = args[3] if len(args) > 3 else kwargs.get("beta", 1)
    return a.shape[0] * a.shape[1] * b.shape[1], 0 if beta == 0 else out.numel()


def _bmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    a, b = args[0], args[1]  # (B, m, k) @ (B, k, n)
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2], 0


def _baddbmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    macs, _ = _bmm(args[1:], kwargs, out)
    return macs, out.numel()


def _mv(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    return args[0].numel(), 0  # (m, n) @ (n,)


def _addmv(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    return args[1].numel(), out.numel()


def _dot(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    return args[0].numel(), 0


def _convolution(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed", False))
    # weight: (Cout, Cin/groups, *k) or, transposed, (Cin, Cout/groups, *k)
    per_elem = w.shape[1] * math.prod(w.shape[2:])
    macs = (x.numel() if transposed else out.numel()) * per_elem
    return macs, out.numel() if bias is not None else 0


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Cost:
    # q (..., Lq, E), k (..., Lk, E), v (..., Lk, Ev); batch/head dims taken from q (GQA-safe)
    batch = math.prod(q.shape[:-2])
    lq, e, lk, ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    scores = batch * lq * lk
    return scores * e + scores * ev, 3 * scores  # QK^T + AV; softmax


def _sdpa(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    return _attention(args[0], args[1], args[2])


def _native_mha(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    # (query (B, Lq, E), key (B, Lk, E), value, embed_dim, num_heads, qkv_w, qkv_b, proj_w, proj_b, ...)
    q, k = args[0], args[1]
    e = int(args[3])
    bq, bk = math.prod(q.shape[:-1]), math.prod(k.shape[:-1])
    proj = bq * e * e + 2 * bk * e * e + bq * e * e  # q, k, v in-projections + out-projection
    heads = int(args[4])
    attn_macs, _ = _attention(q.unsqueeze(-3), k.unsqueeze(-3), k.unsqueeze(-3))  # all heads at once
    softmax = 3 * heads * q.shape[-2] * k.shape[-2] * math.prod(q.shape[:-2])
    return proj + attn_macs, softmax + 4 * bq * e  # + biases


def _encoder_layer(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    # (src (B, L, E), embed_dim, num_heads, qkv_w, qkv_b, proj_w, proj_b, use_gelu, norm_first, eps,
    #  norm_w1, norm_b1, norm_w2, norm_b2, ffn_w1 (F, E), ffn_b1, ffn_w2 (E, F), ffn_b2, ...)
    src = args[0]
    ffn = args[14].shape[0]
    mha_macs, mha_other = _native_mha((src, src, src, args[1], args[2]), {}, out)
    tokens = math.prod(src.shape[:-1])
    e = src.shape[-1]
    ffn_macs = 2 * tokens * e * ffn
    other = mha_other + tokens * (ffn + e) + tokens * ffn + 2 * tokens * e + 10 * tokens * e
    return mha_macs + ffn_macs, other  # biases, activation, 2 residual adds, 2 layer norms


def _per_input(factor: int) -> Formula:
    def formula(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
        return 0, factor * _numel(args[0])

    return formula


def _per_output(factor: int) -> Formula:
    def formula(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
        return 0, factor * _numel(out)

    return formula


def _packets(*names: str) -> list[Any]:
    """The ATen overload packets among ``names`` that exist in this torch build."""
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


FORMULAS: dict[Any, Formula] = {}
for _p in _packets("mm", "_int_mm", "_sparse_mm"):
    FORMULAS[_p] = _mm
for _p in _packets("addmm", "_sparse_addmm", "sspaddmm"):
    FORMULAS[_p] = _addmm
FORMULAS[aten.bmm] = _bmm
FORMULAS[aten.baddbmm] = _baddbmm
FORMULAS[aten.mv] = _mv
FORMULAS[aten.addmv] = _addmv
for _p in _packets("dot", "vdot"):
    FORMULAS[_p] = _dot
for _p in _packets("convolution", "_convolution"):  # the backend convs (cudnn, mkldnn) run beneath these
    FORMULAS[_p] = _convolution
for _p in _packets(
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
):
    FORMULAS[_p] = _sdpa
for _p in _packets("_native_multi_head_attention"):
    FORMULAS[_p] = _native_mha
for _p in _packets("_transformer_encoder_layer_fwd"):
    FORMULAS[_p] = _encoder_layer
for _p in _packets(
    "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
    "cudnn_batch_norm", "miopen_batch_norm",
):  # fmt: skip
    FORMULAS[_p] = _per_input(2)
for _p in _packets("native_layer_norm", "native_group_norm", "_fused_rms_norm", "rms_norm"):
    FORMULAS[_p] = _per_input(5)
for _p in _packets(
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "mean", "sum", "amax", "amin",
):  # fmt: skip
    FORMULAS[_p] = _per_input(1)
for _p in _packets(
    "relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "hardtanh", "hardtanh_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "leaky_relu",
    "leaky_relu_", "elu", "elu_", "mish", "clamp", "clamp_", "clamp_min", "clamp_min_",
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "rsqrt", "sqrt", "exp", "pow",
):  # fmt: skip
    FORMULAS[_p] = _per_output(1)
for _p in _packets("_softmax", "_log_softmax", "_safe_softmax"):
    FORMULAS[_p] = _per_output(3)


def cost(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Cost:
    """``(MACs, elementwise FLOPs)`` of one ATen call; ``(0, 0)`` for ops without a formula."""
    formula = FORMULAS.get(getattr(func, "overloadpacket", func))
    if formula is None:
        return 0, 0
    return formula(args, kwargs or {}, out)

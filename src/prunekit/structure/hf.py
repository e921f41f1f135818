"""Hugging Face BERT/GPT-2 blocks, handled by module type (no tracing).

Units: each attention head (BERT: rows of ``query``/``key``/``value`` and columns of the attention
output ``dense``; GPT-2: the head's q, k and v columns of ``c_attn`` and rows of ``c_proj``) and each
MLP intermediate neuron (BERT ``intermediate.dense`` -> ``output.dense``; GPT-2 ``mlp.c_fc`` ->
``mlp.c_proj``). The hidden (residual) width is never touched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from prunekit.errors import UnsupportedError
from prunekit.structure.groups import AxisRef, SlotSpace
from prunekit.structure.surgery import HFBertSelfAttentionHandler, HFGPT2AttentionHandler


def _get(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _out_size(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.nf


def _heads(
    space: SlotSpace, attn: str, n_heads: int, hd: int, members: list[tuple[str, str, int, int]]
) -> None:
    """Link head ``h`` to rows ``base + h*hd + t`` of each ``(module, axis, size, base)`` member."""
    heads = AxisRef(attn, "heads")
    space.axis(heads, n_heads)
    h = np.repeat(np.arange(n_heads), hd)
    rows = np.arange(n_heads * hd)
    for module, axis, size, base in members:
        ref = AxisRef(module, axis)
        space.axis(ref, size)
        space.link(heads, h, ref, rows + base)


def _neurons(space: SlotSpace, fc: str, proj: str, size: int) -> None:
    a, b = AxisRef(fc, "out"), AxisRef(proj, "in")
    space.axis(a, size)
    space.axis(b, size)
    space.link(a, np.arange(size), b, np.arange(size))


def build_hf_space(model: nn.Module, space: SlotSpace) -> dict[Any, str]:
    """Fill ``space`` with the head and MLP units of every BERT/GPT-2 block; returns pins (none)."""
    bert_attn, gpt2_attn = HFBertSelfAttentionHandler(), HFGPT2AttentionHandler()
    found = 0
    for name, m in model.named_modules():
        parent = name.rpartition(".")[0]
        prefix = f"{parent}." if parent else ""
        if bert_attn.matches(m):
            out = f"{prefix}output.dense"
            if _get(model, out) is None or not isinstance(m.query, nn.Linear):
                raise UnsupportedError(
                    f"BERT-style attention {name!r} without a sibling 'output.dense' Linear"
                )
            n, hd = m.num_attention_heads, m.attention_head_size
            inner = n * hd
            members = [(f"{name}.{p}", "out", inner, 0) for p in ("query", "key", "value")]
            _heads(space, name, n, hd, members + [(out, "in", inner, 0)])
            found += 1
        elif gpt2_attn.matches(m):
            if getattr(m, "is_cross_attention", False):
                raise UnsupportedError(f"GPT-2 cross-attention {name!r}: head pruning not supported")
            n, hd, e = m.num_heads, m.head_dim, m.split_size
            c_attn = _out_size(m.c_attn)
            members = [(f"{name}.c_attn", "out", c_attn, k * e) for k in range(3)]
            _heads(space, name, n, hd, members + [(f"{name}.c_proj", "in", n * hd, 0)])
            found += 1
        elif type(m).__name__.endswith("Intermediate") and isinstance(getattr(m, "dense", None), nn.Linear):
            out = _get(model, f"{prefix}output.dense")
            if isinstance(out, nn.Linear):
                _neurons(space, f"{name}.dense", f"{prefix}output.dense", m.dense.out_features)
                found += 1
        elif type(m).__name__.endswith("MLP") and hasattr(m, "c_fc") and hasattr(m, "c_proj"):
            _neurons(space, f"{name}.c_fc", f"{name}.c_proj", _out_size(m.c_fc))
            found += 1
    if not found:
        raise UnsupportedError(
            f"{type(model).__name__}: no BERT- or GPT-2-style attention/MLP blocks found to prune"
        )
    return {}

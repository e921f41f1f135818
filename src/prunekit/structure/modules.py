"""Layers that stock PyTorch cannot express after structured pruning.

``nn.MultiheadAttention`` ties its inner width to ``embed_dim`` (``head_dim = embed_dim // num_heads``),
so removing heads while keeping the model width needs :class:`HeadPrunedMultiheadAttention`: same
parameter names and call signature, inner width ``num_heads * head_dim`` independent of ``embed_dim``.

>>> import torch
>>> mha = torch.nn.MultiheadAttention(8, 4, batch_first=True).eval()
>>> small = HeadPrunedMultiheadAttention.from_mha(mha, torch.tensor([0, 1, 2, 3])).eval()
>>> x = torch.randn(2, 5, 8)
>>> torch.allclose(mha(x, x, x)[0], small(x, x, x)[0], atol=1e-6)
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import UnsupportedError


class HeadPrunedMultiheadAttention(nn.Module):
    """Multi-head attention with ``num_heads`` heads of ``head_dim`` each over an ``embed_dim`` model.

    Parameters: ``in_proj_weight`` (3*inner, embed_dim), ``in_proj_bias`` (3*inner,),
    ``out_proj`` = Linear(inner, embed_dim); ``inner = num_heads * head_dim``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.inner_dim = num_heads * head_dim
        self.kdim = self.vdim = embed_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * self.inner_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * self.inner_dim)) if bias else None
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self.out_proj = nn.Linear(self.inner_dim, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    @classmethod
    def from_mha(cls, mha: nn.Module, heads: torch.Tensor) -> HeadPrunedMultiheadAttention:
        """Copy of ``mha`` (an ``nn.MultiheadAttention`` or this class) keeping only ``heads``."""
        if getattr(mha, "in_proj_weight", None) is None:
            raise UnsupportedError(
                "MultiheadAttention with separate kdim/vdim projections: head pruning not supported"
            )
        if mha.bias_k is not None or mha.add_zero_attn:
            raise UnsupportedError(
                "MultiheadAttention with add_bias_kv/add_zero_attn: head pruning not supported"
            )
        hd = mha.head_dim
        inner = getattr(mha, "inner_dim", mha.embed_dim)
        new = cls(
            mha.embed_dim,
            len(heads),
            hd,
            bias=mha.in_proj_bias is not None,
            dropout=mha.dropout,
            batch_first=mha.batch_first,
        )
        device = mha.in_proj_weight.device
        heads = heads.to(device)
        rows = (heads.view(-1, 1) * hd + torch.arange(hd, device=device).view(1, -1)).reshape(
            -1
        )  # (heads*hd,)
        qkv_rows = torch.cat([rows, rows + inner, rows + 2 * inner])
        with torch.no_grad():
            new.in_proj_weight.copy_(mha.in_proj_weight[qkv_rows])
            if new.in_proj_bias is not None:
                new.in_proj_bias.copy_(mha.in_proj_bias[qkv_rows])
            new.out_proj.weight.copy_(mha.out_proj.weight[:, rows])
            if new.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        new = new.to(device, mha.in_proj_weight.dtype)
        new.train(mha.training)
        return new

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:  # (L, E) -> (L, 1, E)
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:  # (N, L, E) -> (L, N, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        tgt, n, _ = query.shape
        src = key.shape[0]
        h, hd = self.num_heads, self.head_dim
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq = bk = bv = None
        if self.in_proj_bias is not None:
            bq, bk, bv = self.in_proj_bias.chunk(3)
        q = F.linear(query, wq, bq).reshape(tgt, n * h, hd).transpose(0, 1)  # (N*H, L, hd)
        k = F.linear(key, wk, bk).reshape(src, n * h, hd).transpose(0, 1)  # (N*H, S, hd)
        v = F.linear(value, wv, bv).reshape(src, n * h, hd).transpose(0, 1)  # (N*H, S, hd)
        scores = torch.bmm(q, k.transpose(1, 2)) * hd**-0.5  # (N*H, L, S)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(tgt, src, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 3 else attn_mask.unsqueeze(0)
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        if key_padding_mask is not None:
            kpm = key_padding_mask.view(n, 1, 1, src).expand(n, h, 1, src).reshape(n * h, 1, src)
            scores = scores.masked_fill(kpm, float("-inf")) if kpm.dtype == torch.bool else scores + kpm
        attn = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        out = torch.bmm(attn, v).transpose(0, 1).reshape(tgt, n, h * hd)  # (L, N, inner)
        out = self.out_proj(out)  # (L, N, E)
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        weights = None
        if need_weights:
            weights = attn.view(n, h, tgt, src)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        return out, weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"

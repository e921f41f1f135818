"""Per-layer table (name, type, weight shape, params, nonzeros, MACs) and its plain-text rendering.

>>> import torch
>>> from torch import nn
>>> rows = layer_table(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), torch.zeros(1, 4))
>>> [(r.name, r.weight_shape, r.params, r.macs) for r in rows]
[('0', (3, 4), 15, 12), ('2', (2, 3), 8, 6)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.metrics.counts import effective_tensors
from prunekit.metrics.macs import ROOT, CostProfile, profile_costs

ROOT_LABEL = "(root)"


@dataclass(frozen=True)
class LayerRow:
    """One module that owns parameters or runs multiply-accumulates."""

    name: str
    type: str
    weight_shape: tuple[int, ...] | None
    params: int
    nonzeros: int
    macs: int


def layer_table(model: nn.Module, example_input: Any, profile: CostProfile | None = None) -> list[LayerRow]:
    """Rows for every module owning parameters or MACs, in module order (one forward pass).

    Ops run directly in the top-level ``forward`` appear under ``"(root)"``. Pass ``profile``
    (from :func:`~prunekit.metrics.profile_costs` on the same input) to skip the forward pass.
    """
    macs = (profile or profile_costs(model, example_input)).macs
    params: dict[str, int] = {}
    nonzeros: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for mod_name, _, tname, t in effective_tensors(model):
        params[mod_name] = params.get(mod_name, 0) + t.numel()
        nonzeros[mod_name] = nonzeros.get(mod_name, 0) + int(torch.count_nonzero(t))
        if tname == "weight":
            shapes[mod_name] = tuple(t.shape)
    rows = []
    for name, module in model.named_modules():
        if name not in params and name not in macs:
            continue
        rows.append(
            LayerRow(
                name=ROOT_LABEL if name == ROOT else name,
                type=type(module).__name__,
                weight_shape=shapes.get(name),
                params=params.get(name, 0),
                nonzeros=nonzeros.get(name, 0),
                macs=macs.get(name, 0),
            )
        )
    return rows


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def format_table(rows: list[LayerRow], total_label: str = "total") -> str:
    """Render ``rows`` as an aligned plain-text table ending with a total row.

    >>> print(format_table([LayerRow("fc", "Linear", (2, 4), 10, 8, 8)]))
    name   type    weight shape  params  nonzeros  sparsity  MACs
    -----  ------  ------------  ------  --------  --------  ----
    fc     Linear  2x4               10         8    20.00%     8
    -----  ------  ------------  ------  --------  --------  ----
    total                            10         8    20.00%     8
    """
    header = ("name", "type", "weight shape", "params", "nonzeros", "sparsity", "MACs")
    right = (False, False, False, True, True, True, True)

    def cells(name: str, typ: str, shape: tuple[int, ...] | None, p: int, nz: int, m: int) -> tuple[str, ...]:
        shape_s = "x".join(str(d) for d in shape) if shape else ("" if name == total_label else "-")
        sparsity = f"{100 * (1 - nz / p):.2f}%" if p else "-"
        return (name, typ, shape_s, _fmt_int(p), _fmt_int(nz), sparsity, _fmt_int(m))

    body = [cells(r.name, r.type, r.weight_shape, r.params, r.nonzeros, r.macs) for r in rows]
    total = cells(
        total_label,
        "",
        None,
        sum(r.params for r in rows),
        sum(r.nonzeros for r in rows),
        sum(r.macs for r in rows),
    )
    widths = [max(len(row[i]) for row in [header, *body, total]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(b) for b in body), rule, line(total)])

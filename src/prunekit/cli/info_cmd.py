"""``prunekit info``: per-layer table and totals (params, nonzeros, sparsity, MACs, FLOPs, size).

Examples::

    prunekit info --model resnet56
    prunekit info --checkpoint checkpoints/resnet20_cifar10jpeg.pt
    prunekit info --model resnet20 --pretrained ../shared/data/pretrained/resnet20-12fca82f.th
    prunekit info --model lenet5 --input-shape 4,1,28,28
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from prunekit.cli.common import add_model_args, example_input_for, load_model_from_args
from prunekit.errors import ConfigError

HELP = "print a model's per-layer params, nonzeros and MACs, and its totals"


def default_input_shape(model_name: str) -> tuple[int, ...]:
    """Input shape for one example of a registered model: MNIST LeNets, 8x8 digits, else CIFAR.

    >>> default_input_shape("lenet5"), default_input_shape("resnet56")
    ((1, 1, 28, 28), (1, 3, 32, 32))
    """
    return tuple(example_input_for(model_name).shape)


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1,3,32,32"`` (or ``1x3x32x32``) into a tuple of positive ints.

    >>> parse_shape("1,3,32,32")
    (1, 3, 32, 32)
    """
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad shape {text!r}; use comma-separated ints like 1,3,32,32"
        ) from None
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}; every dimension must be a positive int")
    return shape


def register(subparsers: Any) -> None:
    """Add the ``info`` sub-command."""
    p = subparsers.add_parser("info", help=HELP, description=HELP + ".")
    add_model_args(p)
    p.add_argument(
        "--input-shape",
        type=parse_shape,
        metavar="B,C,H,W",
        help="example input shape (default: from the model name, e.g. 1,3,32,32 for CIFAR models)",
    )
    p.add_argument(
        "--totals-only", action="store_true", help="print only the totals, not the per-layer table"
    )
    p.set_defaults(func=run)


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def _weight_counts(model: nn.Module) -> tuple[int, int]:
    """Entries and nonzeros of the conv/linear weights (the tensors pruning usually targets)."""
    from prunekit.metrics import effective_tensors

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    weights = [t for _, m, n, t in effective_tensors(model) if n == "weight" and isinstance(m, kinds)]
    return sum(t.numel() for t in weights), sum(int(torch.count_nonzero(t)) for t in weights)


def _percent_zero(total: int, nonzeros: int) -> str:
    return f"{100.0 * (1 - nonzeros / total):.2f}%" if total else "-"


def run(args: argparse.Namespace) -> int:
    """Print the table and totals; returns the exit code."""
    from prunekit.metrics import (
        count_nonzero_macs,
        count_nonzeros,
        count_params,
        format_table,
        layer_table,
        model_bytes,
        profile_costs,
    )

    model, name, _ = load_model_from_args(args)
    shape = args.input_shape or default_input_shape(name)
    example = torch.zeros(shape)
    try:
        profile = profile_costs(model, example)
        rows = [] if args.totals_only else layer_table(model, example, profile)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"forward pass of {name!r} on input {shape} failed ({first}); fix --input-shape"
        ) from exc
    params, nonzeros = count_params(model), count_nonzeros(model)
    size = model_bytes(model, torch.float32)
    shape_s = "x".join(str(d) for d in shape)
    print(f"model: {name}   input: {shape_s}")
    if rows:
        print(format_table(rows))
        print()
    w_params, w_nonzeros = _weight_counts(model)
    nz_macs = count_nonzero_macs(model, example, profile)
    macs, flops = profile.total_macs, profile.total_flops
    totals = [
        ("params", f"{params:,} ({_human(params)})"),
        ("nonzeros", f"{nonzeros:,} ({_human(nonzeros)})"),
        (
            "sparsity",
            f"{_percent_zero(params, nonzeros)} of all params, "
            f"{_percent_zero(w_params, w_nonzeros)} of conv/linear weights",
        ),
        ("MACs", f"{macs:,} ({_human(macs)}; dense: zero weights count)"),
        ("nonzero MACs", f"{nz_macs:,} ({_human(nz_macs)}; conv/linear MACs x weight density)"),
        ("FLOPs", f"{flops:,} ({_human(flops)}; 2 per MAC + elementwise)"),
        ("size fp32", f"{size:,} bytes ({size / 2**20:.2f} MiB, dense)"),
    ]
    width = max(len(k) for k, _ in totals) + 1
    for key, value in totals:
        print(f"{key + ':':<{width}} {value}")
    return 0

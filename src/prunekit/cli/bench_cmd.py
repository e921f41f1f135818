"""``prunekit bench``: sparse vs dense time of a Linear over batch sizes, sparsities and kernels.

Example::

    prunekit bench --shape 4096x4096 --batch-sizes 1,16,128 --sparsities 0.5,0.7,0.8,0.9,0.95,0.98
"""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli.common import add_threads_arg, positive_int

HELP = "time a sparse Linear against dense over batch sizes, sparsities and kernels"


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 1,16,128, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive ints like 1,16,128, got {text!r}")
    return values


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 0.5,0.9, got {text!r}") from None
    if not values or any(not 0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"sparsities must be fractions in [0, 1), got {text!r}")
    return values


def _shape(text: str) -> tuple[int, int]:
    """``ROWSxCOLS`` (out x in features of the Linear) as two positive ints.

    >>> _shape("256x1024")
    (256, 1024)
    """
    parts = text.lower().split("x")
    try:
        rows, cols = (int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected ROWSxCOLS (the Linear's out x in features, two positive ints) like 4096x4096, got {text!r}"
        ) from None
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS with both sizes >= 1 like 4096x4096, got {text!r}")
    return rows, cols


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def register(subparsers: Any) -> None:
    """Add the ``bench`` sub-command."""
    p = subparsers.add_parser("bench", help=HELP, description=HELP + ".")
    p.add_argument("--shape", type=_shape, default=(4096, 4096), metavar="ROWSxCOLS",
                   help="the Linear's out x in features (default 4096x4096)")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 16, 128], metavar="B,...", help="default 1,16,128")
    p.add_argument("--sparsities", type=_fractions, default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98], metavar="S,...",
                   help="default 0.5,0.7,0.8,0.9,0.95,0.98")
    p.add_argument("--kernels", type=_names, metavar="K,...",
                   help="sparse kernels to time (default: all available: torch_csr, torch_bsr, numba_csr, numba_packet, numba_csc)")
    p.add_argument("--repeats", type=positive_int, default=20, help="interleaved timed repeats (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--regime", choices=("warm", "evicted", "flushed"), default="warm",
                   help="caches before each timed call: warm (as the previous call left them; default), "
                        "evicted (the weights and input flushed: they stream from DRAM, as in a network "
                        "larger than the cache; x86 + numba), flushed (the whole cache flushed)")
    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the markdown tables."""
    import torch

    from prunekit.sparse.bench import bench_linear, format_bench

    rows = bench_linear(args.shape, args.batch_sizes, args.sparsities, args.kernels, repeats=args.repeats,
                        warmup=args.warmup, threads=args.threads, regime=args.regime)
    out, inp = args.shape
    print(f"Linear {inp} -> {out}, fp32, torch {torch.__version__}, threads {rows[0].threads}, "
          f"{args.regime} caches, {args.repeats} repeats interleaved with dense, medians")
    print(format_bench(rows))
    return 0

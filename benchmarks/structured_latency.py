"""Latency of channel-pruned ResNet-56 vs dense on this CPU, measured on a quiet machine.

Two scopes at >= 2x fewer MACs (L1 filter norm): block-internal channels only (what the
Torch-Pruning comparison in structured_resnet.py uses) and the whole dependency graph
(global allocation, residual stream included). Dense and pruned are timed interleaved in one
``compare_latency`` call per (batch, threads) cell; ratio = dense / pruned.

Command:
    python benchmarks/structured_latency.py --checkpoint checkpoints/resnet56_cifar10jpeg.pt
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from prunekit.allocation import Global, Uniform
from prunekit.io import atomic_write_text
from prunekit.metrics import compare_latency, count_macs
from prunekit.structure import ChannelConstraints, prune_channels
from prunekit.train import build_from_checkpoint


def internal_only_excludes(model: torch.nn.Module) -> list[str]:
    """Modules to exclude so only each block's conv1-out / bn1 / conv2-in channels are pruned."""
    # A residual-stream unit touches the stem's bn1 and every block's bn2; internal units touch neither.
    return ["bn1"] + [n for n, _ in model.named_modules() if n.endswith(".bn2")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="checkpoints/resnet56_cifar10jpeg.pt")
    ap.add_argument("--ratio", type=float, default=0.5, help="fraction of MACs to remove")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/structured_latency.md")
    args = ap.parse_args()
    dense, _ = build_from_checkpoint(args.checkpoint)
    dense.eval()
    x1 = torch.zeros(1, 3, 32, 32)
    variants = {
        "internal channels, uniform": prune_channels(
            dense, x1, Uniform(args.ratio), target="macs", exclude=internal_only_excludes(dense)
        )[0],
        "whole graph, global": prune_channels(dense, x1, Global(args.ratio), target="macs")[0],
        "whole graph, global, round_to=8": prune_channels(
            dense, x1, Global(args.ratio), target="macs", constraints=ChannelConstraints(round_to=8)
        )[0],
    }
    dense_macs = count_macs(dense, x1)
    lines = [
        "# Channel-pruned ResNet-56: CPU latency vs dense (quiet machine)",
        "",
        f"Command: `python benchmarks/structured_latency.py --checkpoint {args.checkpoint}`  ",
        f"Machine: {platform.machine()}, 2 cores, torch {torch.__version__}; nothing else running. "
        f"Interleaved `compare_latency`, {args.repeats} repeats, medians; ratio = dense / pruned in the same call.",
        "",
        "| variant | MACs ratio | threads | batch | dense ms | pruned ms | speedup | speedup / MACs ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, small in variants.items():
        macs_ratio = dense_macs / count_macs(small, x1)
        for threads in (1, 2):
            for batch in (1, 64):
                x = torch.zeros(batch, 3, 32, 32)
                res = compare_latency({"dense": dense, "pruned": small}, x, warmup=5, repeats=args.repeats, threads=threads)
                d, p = res["dense"].median_s, res["pruned"].median_s
                row = (f"| {name} | {macs_ratio:.2f}x | {threads} | {batch} | {1e3 * d:.2f} | {1e3 * p:.2f} | "
                       f"{d / p:.2f}x | {d / p / macs_ratio:.2f} |")
                print(row, flush=True)
                lines.append(row)
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

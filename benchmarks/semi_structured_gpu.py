"""2:4 sparse tensor cores vs dense on a CUDA GPU: fp16 Linear layers, ``SemiStructuredLinear``.

Times dense ``nn.Linear`` (fp16) and ``prunekit.sparse.SemiStructuredLinear`` (the same weight
pruned 2:4 by magnitude) with CUDA events, interleaved, medians; writes
benchmarks/results/semi_structured_gpu.md. Needs a GPU with compute capability >= 8.0; on a
machine without one it says so and exits with status 2.

    python benchmarks/semi_structured_gpu.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.allocation import Uniform
from prunekit.granularity import NM
from prunekit.importance import Magnitude
from prunekit.io import atomic_write_text
from prunekit.pruning import prune
from prunekit.sparse import SemiStructuredLinear
from prunekit.targets import select

RESULTS = Path(__file__).parent / "results" / "semi_structured_gpu.md"


def time_pair(dense: nn.Module, sparse: nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median milliseconds of dense and sparse, interleaved, each call timed with CUDA events."""
    times: dict[str, list[float]] = {"dense": [], "sparse": []}
    with torch.no_grad():
        for _ in range(10):
            dense(x), sparse(x)
        for r in range(repeats):
            for name, module in (("dense", dense), ("sparse", sparse))[:: 1 if r % 2 else -1]:
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(10):  # 10 calls per sample: launch overhead amortised
                    module(x)
                stop.record()
                torch.cuda.synchronize()
                times[name].append(start.elapsed_time(stop) / 10)
    return statistics.median(times["dense"]), statistics.median(times["sparse"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        print("needs a CUDA GPU with compute capability >= 8.0 (2:4 sparse tensor cores)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    lines = [f"# 2:4 sparse tensor cores vs dense (fp16)\n\nCommand: `python benchmarks/{Path(__file__).name}` "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); GPU: {torch.cuda.get_device_name()}, "
             f"torch {torch.__version__}. Medians of {args.repeats} interleaved samples of 10 calls each.\n",
             "| out x in | batch | dense ms | 2:4 ms | 2:4 / dense |", "|---|---:|---:|---:|---:|"]
    for out_f, in_f in ((4096, 4096), (11008, 4096), (4096, 11008)):
        holder = nn.Sequential(nn.Linear(in_f, out_f, bias=False))
        prune(holder, select(holder), Magnitude(), NM(2, 4), Uniform(0.5), enforce=False)
        layer = holder[0]
        sparse = SemiStructuredLinear.from_dense(layer, dtype=torch.float16)
        dense = layer.to(device="cuda", dtype=torch.float16).eval()
        for batch in (1, 16, 128, 2048):
            x = torch.randn(batch, in_f, device="cuda", dtype=torch.float16)
            torch.testing.assert_close(sparse(x), dense(x), rtol=2e-2, atol=2e-1)
            d, s = time_pair(dense, sparse, x, args.repeats)
            lines.append(f"| {out_f}x{in_f} | {batch} | {d:.4f} | {s:.4f} | {s / d:.3f} |")
            print(lines[-1], flush=True)
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cost of mask enforcement per training step, and of ``prune()`` itself, on ResNet-20/56.

Training step = forward + backward + SGD(momentum, weight decay) step on a random batch.
Compared in the same run, interleaved rounds, median of per-step times:
  dense       no masks
  prunekit    Masks.apply(model) (forward pre-hook + grad hook + optimizer post-hook)
  torch-prune torch.nn.utils.prune.l1_unstructured on the same layers (weight_orig * weight_mask)

Command:
    python benchmarks/masks_overhead.py --threads 1 --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.utils.prune as tprune
from torch import nn

from prunekit.allocation import Global, Uniform
from prunekit.granularity import NM, Element, Pattern
from prunekit.importance import Magnitude
from prunekit.io import atomic_write_text
from prunekit.models import create
from prunekit.pruning import prune
from prunekit.targets import select


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    model = create("resnet20")
    if kind == "prunekit":
        prune(model, None, Magnitude(), Element(), Uniform(0.8))
    elif kind == "torch-prune":
        for t in select(model):
            tprune.l1_unstructured(t.module, "weight", amount=0.8)
    return model


def _step_times(model: nn.Module, steps: int, batch: int) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - t0)
    return times


def _prune_time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/masks_overhead.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kinds = ("dense", "prunekit", "torch-prune")
    medians: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for k in kinds:
            medians[k].append(statistics.median(_step_times(_model(k), args.steps, args.batch)))
    dense = statistics.median(medians["dense"])
    lines = [
        "# Pruning core: enforcement overhead and prune() cost",
        "",
        "Command: `python benchmarks/masks_overhead.py "
        f"--threads {args.threads} --steps {args.steps} --rounds {args.rounds} --batch {args.batch}`",
        f"Machine: {platform.processor() or platform.machine()}, 2-core shared CPU (other agents and a "
        f"training job were running: timings are noisy), torch {torch.__version__}, "
        f"{args.threads} thread(s).",
        "",
        f"## Training step, ResNet-20, batch {args.batch}, SGD momentum + weight decay, 80 % element masks",
        "",
        "Median over steps per round, then median over interleaved rounds.",
        "",
        "| variant | step time (ms) | ratio to dense | per-round medians (ms) |",
        "| --- | ---: | ---: | --- |",
    ]
    for k in kinds:
        med = statistics.median(medians[k])
        per = ", ".join(f"{1000 * v:.1f}" for v in medians[k])
        lines.append(f"| {k} | {1000 * med:.1f} | {med / dense:.3f} | {per} |")
    r56 = create("resnet56")
    convs = select(r56, types=(nn.Conv2d,), exclude="conv1")
    cases = {
        "Global(0.9) element, LAMP, all convs+linear": lambda: prune(
            create("resnet56"), None, Magnitude(2), Element(), Global(0.9, normalize="lamp"), enforce=False
        ),
        "Uniform 2:4 (convs but stem)": lambda: prune(r56, convs, Magnitude(), NM(2, 4), Uniform(None), enforce=False),
        "Pattern.from_weights + Uniform(min)": lambda: prune(
            r56, convs, Magnitude(), Pattern.from_weights([t.weight for t in convs]), Uniform(None), enforce=False
        ),
    }
    lines += ["", "## prune() wall time, ResNet-56 (855k params), median of 3", "",
              "| case | seconds |", "| --- | ---: |"]
    for name, fn in cases.items():
        lines.append(f"| {name} | {statistics.median(_prune_time(fn) for _ in range(3)):.3f} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()

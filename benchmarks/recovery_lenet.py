"""LeNet-300-100 on MNIST: >= 12x fewer weights within 0.2 point of the dense model (Han et al. 2015)?

Every row trains the same dense model (``--dense-epochs``), then spends the same ``--rounds x
--ft-epochs`` epochs: the dense row keeps training (the baseline "fine-tuned as long"); the pruned
rows reach Han et al.'s per-layer densities (fc1 8 %, fc2 9 %, fc3 26 %: 12.2x fewer weights) in
``--rounds`` magnitude-pruning rounds with masked fine-tuning, or with AGP (masks every 50 steps,
cubic, done at two thirds of the budget), or in one shot. Several seeds: mean and spread.

    python benchmarks/recovery_lenet.py --data ../shared/data --seeds 0 1 2     # ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.allocation import PerLayer
from prunekit.data import mnist_loaders
from prunekit.granularity import Element
from prunekit.importance import Magnitude
from prunekit.io import atomic_write_text
from prunekit.masks import clean_copy
from prunekit.models import create
from prunekit.pruning import prune
from prunekit.schedule import AGP, Pruner
from prunekit.targets import select
from prunekit.train import TrainConfig, evaluate, fit

OUT = Path(__file__).parent / "results" / "recovery_lenet"
SPARSITY = {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}  # Han et al. 2015, Table 2


def cfg(epochs: int, lr: float, seed: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=lr, weight_decay=1e-4, schedule="cosine", progress=False, seed=seed)


def weights(model: nn.Module) -> tuple[int, int]:
    ws = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    return sum(w.numel() for w in ws), sum(int((w != 0).sum()) for w in ws)


def run_seed(seed: int, args: argparse.Namespace, train, test) -> dict[str, dict[str, float]]:
    torch.manual_seed(seed)
    dense = create("lenet300_100")
    fit(dense, train, None, cfg(args.dense_epochs, 0.05, seed))
    budget = args.rounds * args.ft_epochs
    out: dict[str, dict[str, float]] = {"trained dense": {"top1": evaluate(dense, test).top1, "ratio": 1.0}}

    m = clean_copy(dense)
    fit(m, train, None, cfg(budget, args.lr, seed))
    out["dense, fine-tuned as long"] = {"top1": evaluate(m, test).top1, "ratio": 1.0}

    m = clean_copy(dense)
    for r in range(1, args.rounds + 1):
        masks = prune(m, select(m), Magnitude(), Element(), PerLayer({k: v * r / args.rounds for k, v in SPARSITY.items()}))
        fit(m, train, None, cfg(args.ft_epochs, args.lr, seed))
        masks.make_permanent(m)
    total, nnz = weights(m)
    out[f"iterative, {args.rounds} rounds"] = {"top1": evaluate(m, test).top1, "ratio": total / nnz}

    m = clean_copy(dense)
    masks = prune(m, select(m), Magnitude(), Element(), PerLayer(SPARSITY))
    cut = evaluate(m, test).top1
    fit(m, train, None, cfg(budget, args.lr, seed))
    masks.make_permanent(m)
    total, nnz = weights(m)
    out["one-shot + fine-tune"] = {"top1": evaluate(m, test).top1, "ratio": total / nnz, "after_cut": cut}

    m = clean_copy(dense)
    steps = budget * len(train)
    overall = sum(SPARSITY[t.name] * t.weight.numel() for t in select(m)) / sum(t.weight.numel() for t in select(m))
    from prunekit.allocation import Global

    pruner = Pruner(m, select(m), Magnitude(), Element(), Global(overall), AGP(overall, end=2 * steps // 3, every=50))
    fit(m, train, None, cfg(budget, args.lr, seed), pruner=pruner)
    pruner.masks.make_permanent(m)
    total, nnz = weights(m)
    out["AGP, global magnitude (same overall sparsity)"] = {"top1": evaluate(m, test).top1, "ratio": total / nnz}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--dense-epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ft-epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    train, test = mnist_loaders(Path(args.data) / "mnist", batch_size=128)
    per_seed = []
    for seed in args.seeds:
        per_seed.append(run_seed(seed, args, train, test))
        print(seed, json.dumps(per_seed[-1]), flush=True)
    minutes = (time.perf_counter() - t0) / 60
    rows = list(per_seed[0])
    lines = [f"# LeNet-300-100 on MNIST: recovery at Han et al.'s densities ({started})", "",
             f"`python benchmarks/recovery_lenet.py --seeds {' '.join(map(str, args.seeds))}` ({platform.machine()}, "
             f"torch {torch.__version__}, {args.threads} threads, {minutes:.1f} min). Dense: {args.dense_epochs} epochs "
             f"(lr 0.05 cosine); then every row {args.rounds * args.ft_epochs} epochs at lr {args.lr} cosine, wd 1e-4, "
             "batch 128. Top-1 on the 10,000 MNIST test images, mean +- std over seeds.", "",
             "| row | weights kept | top-1 (mean +- std) | vs dense fine-tuned as long |", "| --- | ---: | ---: | ---: |"]
    base = statistics.mean(s["dense, fine-tuned as long"]["top1"] for s in per_seed)
    for r in rows:
        vals = [s[r]["top1"] for s in per_seed]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        ratio = statistics.mean(s[r]["ratio"] for s in per_seed)
        lines.append(f"| {r} | 1/{ratio:.1f} | {100 * statistics.mean(vals):.2f} +- {100 * sd:.2f} | "
                     f"{100 * (statistics.mean(vals) - base):+.2f} |")
    OUT.parent.mkdir(exist_ok=True)
    atomic_write_text(OUT.with_suffix(".md"), "\n".join(lines) + "\n")
    atomic_write_text(OUT.with_suffix(".json"), json.dumps({"started": started, "minutes": minutes,
                                                            "args": vars(args), "seeds": per_seed}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""BatchNorm recalibration after a one-shot prune (``prunekit.train.recalibrate_bn``): top-1 right after
pruning with the dense model's BatchNorm statistics and with statistics re-estimated from N training
batches (augmented as in training, no gradient step; one column with un-augmented batches), and whether
starting the fine-tune from them helps.

Rows: the JPEG-adapted ResNet-20 unpruned and with global L1 masks at several sparsities, and the JPEG-adapted
ResNet-56 cut to 2x fewer MACs by the channel rows of ``recovery_resnet56.py`` (prunekit L1 uniform per
block, sensitivity ratios, Torch-Pruning when installed). Top-1 on the whole 10,000-image test split.

    python benchmarks/bn_recalibration.py --data ../shared/data     # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch

from _report import write_outputs
from prunekit import Element, Global, Magnitude, prune, select
from prunekit.checkpoint import build
from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_datasets, cifar10_loaders
from prunekit.train import TrainConfig, evaluate, fit, recalibrate_bn
from recovery_resnet56 import _prune

OUT = Path(__file__).parent / "results" / "bn_recalibration"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.8, 0.9])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 10, 50], help="recalibration batches (of 128)")
    ap.add_argument("--plain-batches", type=int, default=50, help="the un-augmented column's batches")
    ap.add_argument("--channel-rows", nargs="*", default=["l1", "sens", "tp"])
    ap.add_argument("--finetune-epochs", type=int, default=1,
                    help="ResNet-20 at the highest sparsity: fine-tune this long with and without recalibration")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="images per split (a smoke run only)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started, t_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.perf_counter()
    npz = Path(args.data) / "cifar10-jpeg75.npz"
    train, test = cifar10_loaders(npz, 128, IMAGENET_MEAN, IMAGENET_STD, limit=args.limit)
    sets = {aug: cifar10_datasets(npz, IMAGENET_MEAN, IMAGENET_STD, augment=aug, limit=args.limit)[0]
            for aug in (True, False)}

    def batches(augment: bool = True) -> torch.utils.data.DataLoader:  # the same shuffled images for every row
        torch.manual_seed(0)  # and the same crops and flips
        return torch.utils.data.DataLoader(sets[augment], batch_size=128, shuffle=True,
                                           generator=torch.Generator().manual_seed(0))

    def measure(name: str, pruned: torch.nn.Module) -> dict:
        row = {"row": name, "stale": evaluate(pruned, test).top1}
        for n in args.batches:
            model = copy.deepcopy(pruned)
            recalibrate_bn(model, batches(), max_batches=n)
            row[f"recal{n}"] = evaluate(model, test).top1
        model = copy.deepcopy(pruned)
        recalibrate_bn(model, batches(augment=False), max_batches=args.plain_batches)
        row["plain"] = evaluate(model, test).top1
        print(row, flush=True)
        return row

    rows = []
    r20, _ = build("checkpoints/resnet20_cifar10jpeg.pt")
    for s in args.sparsities:
        model = copy.deepcopy(r20)
        masks = prune(model, select(model), Magnitude(), Element(), Global(s))
        rows.append(measure(f"ResNet-20, {s:.0%} global L1 masks" if s else "ResNet-20, unpruned", model))
        masks.remove()
    r56, _ = build("checkpoints/resnet56_cifar10jpeg.pt")
    r56.eval()
    rows.append(measure("ResNet-56, unpruned", r56))
    for kind in args.channel_rows:
        try:
            small, _ = _prune(kind, r56, 2.0)
        except ImportError as exc:  # Torch-Pruning is a benchmark-only install
            print(f"{kind}: skipped ({exc})", flush=True)
            continue
        rows.append(measure({"l1": "ResNet-56, 2x MACs, L1 uniform per block",
                             "sens": "ResNet-56, 2x MACs, L1 sensitivity ratios",
                             "tp": "ResNet-56, 2x MACs, Torch-Pruning"}[kind], small))
    finetune = []
    if args.finetune_epochs:
        s = max(args.sparsities)
        cfg = TrainConfig(epochs=args.finetune_epochs, lr=0.01, weight_decay=5e-4, schedule="cosine", seed=0,
                          progress=False)
        for recal in (0, max(args.batches)):
            model = copy.deepcopy(r20)
            masks = prune(model, select(model), Magnitude(), Element(), Global(s))
            if recal:
                recalibrate_bn(model, batches(), max_batches=recal)
            fit(model, train, None, cfg)
            finetune.append({"recalibration_batches": recal, "top1": evaluate(model, test).top1})
            masks.remove()
            print(finetune[-1], flush=True)
    write(args, rows, finetune, started, (time.perf_counter() - t_start) / 60)


def write(args: argparse.Namespace, rows: list[dict], finetune: list[dict], started: str, minutes: float) -> None:
    cmd = (f"python benchmarks/bn_recalibration.py --data {args.data} --sparsities "
           f"{' '.join(map(str, args.sparsities))} --batches {' '.join(map(str, args.batches))} --plain-batches "
           f"{args.plain_batches} --channel-rows "
           f"{' '.join(args.channel_rows)} --finetune-epochs {args.finetune_epochs}")
    lines = ["# BatchNorm recalibration after a one-shot prune", "",
             f"`{cmd}` ({started}, {platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
             f"{minutes:.1f} min in all). Top-1 on the 10,000 test images; recalibration batches of 128 training "
             "images, crop + flip as in training (last column: un-augmented), the same images for every row.", "",
             "| model | dense BN statistics | " + " | ".join(f"recalibrated, {n} batch{'es' if n > 1 else ''}"
                                                         for n in args.batches)
             + f" | {args.plain_batches} un-augmented batches |",
             "| --- | ---: |" + " ---: |" * (len(args.batches) + 1)]
    for r in rows:
        cells = [f"{100 * r[k]:.2f}" if k in r else "-" for k in [f"recal{n}" for n in args.batches] + ["plain"]]
        lines.append(f"| {r['row']} | {100 * r['stale']:.2f} | " + " | ".join(cells) + " |")
    if finetune:
        lines += ["", f"Then {args.finetune_epochs} fine-tune epoch(s) at {max(args.sparsities):.0%} (ResNet-20, "
                  "masks in force, SGD 0.9, wd 5e-4, cosine from lr 0.01, augmented, seed 0):", "",
                  "| start of the fine-tune | top-1 after it |", "| --- | ---: |"]
        for f in finetune:
            what = (f"recalibrated ({f['recalibration_batches']} batches)" if f["recalibration_batches"]
                    else "dense BN statistics")
            lines.append(f"| {what} | {100 * f['top1']:.2f} |")
    write_outputs(args.out, lines, {"command": cmd, "started": started, "rows": rows, "finetune": finetune})


if __name__ == "__main__":
    main()

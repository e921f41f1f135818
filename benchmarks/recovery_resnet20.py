"""Recovering accuracy on the JPEG-adapted ResNet-20: one-shot vs gradual (AGP) pruning, fine-tuning
with and without distillation, all against the dense model fine-tuned equally long (same run).

Every row starts from ``checkpoints/resnet20_cifar10jpeg.pt`` and trains the same number of epochs
with the same recipe (SGD momentum 0.9, wd 5e-4, batch 128, crop+flip, cosine from ``--lr``);
pruning is global L1 magnitude over every conv and the classifier (rows with ``-lamp``: LAMP scores of
squared magnitudes, ranked globally), enforced by masks throughout.
The ADMM row (Zhang et al. 2018) spends the first ``--admm-share`` of the epochs in ADMM training
toward the same global 90 % masks, hard-prunes, and fine-tunes the rest with the masks in force.
Every row reseeds the RNGs and the training loader's shuffle generator with ``--seed``, so the rows of
a run see the same data order (paired rows). Runs before 2026-12-07 22:10 UTC did not reseed the
loader (only the first row had seed 0's order, each later row its own); their commands, in RESULTS.md
section 4, reproduce the first row only. ``--device cuda --workers 4`` runs it on a GPU (the numbers
then differ from the CPU's: other kernels, and workers draw the augmentation from other streams).

    python benchmarks/recovery_resnet20.py --data ../shared/data --epochs 2   # ~25 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from _report import machine_line
from prunekit import Element, Global, Magnitude, prune, select
from prunekit.checkpoint import build
from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_loaders
from prunekit.io import atomic_write_text
from prunekit.schedule import AGP, Iterative, Pruner
from prunekit.train import TrainConfig, evaluate, fit
from prunekit.train.admm import ADMM
from prunekit.train.distill import Distillation
from prunekit.train.state import loader_generators

OUT = Path(__file__).parent / "results" / "recovery_resnet20"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--checkpoint", default="checkpoints/resnet20_cifar10jpeg.pt")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="training seed and data order, the same for every row")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda where there is a GPU")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: load in the main one)")
    ap.add_argument("--rows", nargs="+", default=["dense", "oneshot90", "oneshot90-kd", "oneshot95", "agp95"])
    ap.add_argument("--admm-share", type=float, default=0.6, help="share of the epochs spent in ADMM")
    ap.add_argument("--rho", type=float, default=0.05, help="ADMM's starting rho")
    ap.add_argument("--rho-growth", type=float, default=1.2)
    ap.add_argument("--every", type=int, default=32, help="steps between ADMM's Z/U updates")
    ap.add_argument("--limit", type=int, default=None, help="images per split (a smoke run only)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, test = cifar10_loaders(Path(args.data) / "cifar10-jpeg75.npz", 128, IMAGENET_MEAN, IMAGENET_STD,
                                   limit=args.limit, num_workers=args.workers, seed=args.seed)
    dense, _ = build(args.checkpoint)
    dense.to(args.device)
    steps = args.epochs * len(train)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=5e-4, schedule="cosine", seed=args.seed,
                      progress=False)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    first = max(1, round(args.admm_share * args.epochs))  # epochs of ADMM (or of dense training, "-late") first
    results: dict[str, dict] = {"dense_start": {"top1": evaluate(dense, test).top1}}
    print(f"dense checkpoint: {results['dense_start']['top1']:.4f}", flush=True)
    for row in args.rows:
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        for g in loader_generators(train):  # every row --seed's data order (fit reseeds only the global RNGs)
            g.manual_seed(args.seed)
        kw: dict = {}
        after_prune = None
        cfg_row = cfg
        if row.startswith("oneshot"):
            s = int(row[7:9]) / 100
            if row.endswith("-late"):  # ADMM's design on LeNet: as many dense epochs first, the same fine-tune after
                fit(model, train, None, replace(cfg, epochs=first))
                cfg_row = replace(cfg, epochs=args.epochs - first)
            if "-lamp" in row:  # LAMP scores (Lee et al. 2021) on squared magnitudes rank all layers together
                masks = prune(model, select(model), Magnitude(p=2), Element(), Global(s, normalize="lamp"))
            else:
                masks = prune(model, select(model), Magnitude(), Element(), Global(s))
            after_prune = evaluate(model, test).top1
            if row.endswith("-kd"):
                kw["task"] = Distillation(copy.deepcopy(dense).eval(), temperature=4.0, alpha=0.7)
        elif row.startswith("agp"):
            s = int(row[3:5]) / 100
            # masks updated every 50 steps from step 0 to 2/3 of training; the last third recovers
            pruner = Pruner(model, select(model), Magnitude(), Element(), Global(s),
                            AGP(s, end=(2 * steps) // 3, every=50))
            kw["pruner"] = pruner
            masks = pruner.masks
        elif row.startswith("iter"):
            s = int(row[4:6]) / 100
            # 4 rounds (each removes the same fraction of what is left), one every steps / 6: the last
            # round lands at half of training and the rest recovers
            pruner = Pruner(model, select(model), Magnitude(), Element(), Global(s),
                            Iterative(s, rounds=4, every=max(1, steps // 6)))
            kw["pruner"] = pruner
            masks = pruner.masks
        elif row.startswith("admm"):
            s = int(row[4:6]) / 100
            admm = ADMM(model, select(model), Element(), Global(s), rho=args.rho, every=args.every,
                        rho_growth=args.rho_growth)
            fit(model, train, None, replace(cfg, epochs=first), regularizer=admm, pruner=admm)
            residual = admm.residual()
            masks = admm.hard_prune()
            after_prune = evaluate(model, test).top1
            print(f"{row}: {first} ADMM epochs, rho {admm.rho:g}, residual ||W-Z||/||W|| {residual:.3f}, "
                  f"after hard prune {after_prune:.4f}", flush=True)
            cfg_row = replace(cfg, epochs=args.epochs - first)
        else:
            masks = None
        history = fit(model, train, test, cfg_row, **kw)
        final = evaluate(model, test)
        if masks is not None:
            masks.remove()
        zeros = sum(int((t.weight == 0).sum()) for t in select(model))
        total = sum(t.weight.numel() for t in select(model))
        results[row] = {"top1": final.top1, "after_prune_top1": after_prune, "sparsity": zeros / total,
                        "per_epoch": [r.test.top1 for r in history], "minutes": (time.perf_counter() - t0) / 60}
        print(f"{row}: {final.top1:.4f} (sparsity {zeros / total:.4f}, {results[row]['minutes']:.1f} min)", flush=True)
    meta = {"command": f"python benchmarks/recovery_resnet20.py --data {args.data} --epochs {args.epochs} "
                       + (f"--lr {args.lr} " if args.lr != 0.01 else "") + (f"--seed {args.seed} " if args.seed else "")
                       + (f"--device {args.device} " if args.device != "cpu" else "")
                       + (f"--workers {args.workers} " if args.workers else "")
                       + f"--rows {' '.join(args.rows)} --out {args.out}"
                       + (f" --admm-share {args.admm_share} --rho {args.rho} --rho-growth {args.rho_growth} "
                          f"--every {args.every}" if any(r.startswith("admm") or r.endswith("-late")
                                                         for r in args.rows) else ""),
            "started": started, "machine": machine_line(args.device, args.threads),
            "epochs": args.epochs, "lr": args.lr, "seed": args.seed, "steps": steps, "same_order": True}
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "results": results}, indent=1))
    names = {"dense": "dense, fine-tuned as long", "oneshot90": "90 % one-shot + fine-tune",
             "oneshot90-kd": "90 % one-shot + fine-tune with distillation (T 4, alpha 0.7)",
             "oneshot90-lamp": "90 % one-shot, LAMP allocation, + fine-tune",
             "oneshot90-lamp-kd": "90 % one-shot, LAMP allocation, + fine-tune with distillation (T 4, alpha 0.7)",
             "oneshot95": "95 % one-shot + fine-tune",
             "oneshot90-late": f"90 % one-shot after {args.admm_share:.0%} of the epochs of dense training, fine-tune the "
                               "rest (ADMM's fine-tune)", "agp95": "95 % AGP (cubic, masks every 50 steps, to 2/3)",
             "iter95": "95 % iterative (4 rounds, one every 1/6 of training)",
             "admm90": f"90 % ADMM ({args.admm_share:.0%} of the epochs, rho {args.rho} x{args.rho_growth} every "
                       f"{args.every} steps), hard prune, fine-tune the rest"}
    lines = ["# Recovery on the JPEG-adapted ResNet-20", "", f"`{meta['command']}` ({started}; {meta['machine']}). "
             f"Start: dense checkpoint {results['dense_start']['top1']:.2%}. Every row trains {args.epochs} epochs "
             f"({steps} steps), SGD momentum 0.9, wd 5e-4, cosine from lr {args.lr}; global L1 masks.", "",
             "| row | sparsity | top-1 right after pruning | top-1 after training | minutes |", "| --- | ---: | ---: | ---: | ---: |"]
    for row in args.rows:
        r = results[row]
        ap_ = f"{r['after_prune_top1']:.2%}" if r["after_prune_top1"] is not None else "-"
        lines.append(f"| {names.get(row, row)} | {r['sparsity']:.1%} | {ap_} | **{r['top1']:.2%}** | {r['minutes']:.1f} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()

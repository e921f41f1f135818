"""Sensitivity probes with recalibrated BatchNorm (``Probe(recalibrate=...)``, adaptive BN as in
EagleEye, Li et al. 2020) against probes scored with the dense model's statistics: do the per-layer
ratios they give recover better after the same fine-tune?

The JPEG-adapted ResNet-20, element-wise L1 masks on every conv and the classifier. Two scans of the
same 2,000 class-balanced *training* images (no augmentation), 9 ratios per layer: one scores each
probe as it is, one after re-estimating the BatchNorm layers downstream of the cut from N augmented
training batches. Each scan's curves give per-layer ratios for each sparsity
(``prunekit.sensitivity.ratios_for``); global L1 (the masks default) is the reference row, and the
dense model is fine-tuned as long. Each row: test top-1 right after pruning, after BatchNorm
recalibration alone (the same N batches, no gradient step), and after the same short fine-tune
(SGD lr 0.01 cosine, batch 128, masks in force), once per seed from the same pruned start.

    python benchmarks/recalibrated_probes.py --data ../shared/data --sparsities 0.8 0.9 --ft-steps 300 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from _report import mean_sd, write_outputs
from prunekit import Element, Global, Magnitude, prune, select
from prunekit.checkpoint import build
from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_datasets, cifar10_loaders
from prunekit.probe import Probe
from prunekit.sensitivity import ratios_for, scan
from prunekit.train import TrainConfig, evaluate, fit, recalibrate_bn
from prunekit.train.bn import fixed_batches

OUT = Path(__file__).parent / "results" / "recalibrated_probes"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--checkpoint", default="checkpoints/resnet20_cifar10jpeg.pt")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9])
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--recal-batches", type=int, default=10, help="augmented training batches of 128")
    ap.add_argument("--ft-steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="images per split (a smoke run only)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started, t_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.perf_counter()
    npz = Path(args.data) / "cifar10-jpeg75.npz"
    plain, test_set = cifar10_datasets(npz, IMAGENET_MEAN, IMAGENET_STD, augment=False, limit=args.limit)
    labels = np.asarray(plain.labels)
    rng = np.random.default_rng(0)
    per_class = args.val_images // 10
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), min(per_class, int((labels == c).sum())),
                                     replace=False) for c in range(10)])
    val = DataLoader(Subset(plain, idx.tolist()), batch_size=250)
    test = DataLoader(test_set, batch_size=500)
    train, _ = cifar10_loaders(npz, 128, IMAGENET_MEAN, IMAGENET_STD, limit=args.limit, seed=0)
    recal = fixed_batches(train, args.recal_batches, seed=0)  # the same recalibration batches on every run
    dense, _ = build(args.checkpoint)
    dense.eval()

    curves, scan_min = {}, {}
    for kind, probe in (("dense BN statistics", Probe(dense, val)),
                        ("recalibrated BN", Probe(dense, val, recalibrate=recal))):
        t0 = time.perf_counter()
        curves[kind] = scan(dense, select(dense), Magnitude(), Element(), probe)
        scan_min[kind] = (time.perf_counter() - t0) / 60
        print(f"scan ({kind}): {scan_min[kind]:.1f} min, baseline {curves[kind].baseline:.4f}", flush=True)

    def finetuned(alloc) -> list[float]:
        tops = []
        for seed in args.seeds:
            model = copy.deepcopy(dense)
            masks = None if alloc is None else prune(model, select(model), Magnitude(), Element(), alloc)
            cfg = TrainConfig(epochs=1, lr=0.01, weight_decay=5e-4, schedule="cosine", seed=seed, progress=False,
                              max_steps_per_epoch=args.ft_steps)
            fit(model, train, None, cfg)
            if masks is not None:
                masks.remove()
            tops.append(evaluate(model, test).top1)
        return tops

    dense_top1 = evaluate(dense, test).top1
    rows = [{"sparsity": 0.0, "allocation": "dense, fine-tuned as long", "pruned": dense_top1,
             "recalibrated": None, "ft": finetuned(None), "ratios": None}]
    print(rows[-1], flush=True)
    for s in args.sparsities:
        allocs = {"global L1": Global(s)}
        for kind, c in curves.items():
            allocs[f"sensitivity, probes with {kind}"] = ratios_for(c, s)
        for name, alloc in allocs.items():
            model = copy.deepcopy(dense)
            masks = prune(model, select(model), Magnitude(), Element(), alloc)
            pruned = evaluate(model, test).top1
            recalibrate_bn(model, recal)
            again = evaluate(model, test).top1
            rows.append({"sparsity": masks.sparsity(), "allocation": name, "pruned": pruned, "recalibrated": again,
                         "ft": finetuned(alloc), "ratios": getattr(alloc, "ratios", None)})
            print({k: v for k, v in rows[-1].items() if k != "ratios"}, flush=True)

    minutes = (time.perf_counter() - t_start) / 60
    cmd = (f"python benchmarks/recalibrated_probes.py --data {args.data} --sparsities "
           f"{' '.join(map(str, args.sparsities))} --ft-steps {args.ft_steps} --seeds {' '.join(map(str, args.seeds))}"
           + (f" --recal-batches {args.recal_batches}" if args.recal_batches != 10 else "")
           + (f" --limit {args.limit}" if args.limit else "") + f" --out {args.out}")
    machine = f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads"
    lines = ["# Sensitivity probes with recalibrated BatchNorm, ResNet-20 element-wise L1", "",
             f"`{cmd}` ({started}; {machine}; {minutes:.1f} min in all). Scans: every conv and the classifier x 9 "
             f"ratios on {len(idx)} training images; dense BN statistics {scan_min['dense BN statistics']:.1f} min, "
             f"recalibrated ({args.recal_batches} augmented batches of 128 per probe) "
             f"{scan_min['recalibrated BN']:.1f} min. Test top-1 on {len(test_set)} images; fine-tune "
             f"{args.ft_steps} steps, lr 0.01 cosine, batch 128, seeds {args.seeds}.", "",
             "| sparsity | ratios from | right after pruning | after BN recalibration | after fine-tune |",
             "| ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        rec = "-" if r["recalibrated"] is None else f"{100 * r['recalibrated']:.2f}"
        lines.append(f"| {100 * r['sparsity']:.1f} % | {r['allocation']} | {100 * r['pruned']:.2f} | {rec} | "
                     f"{mean_sd(r['ft'])} |")
    lines += ["", "Per-layer ratios:", ""]
    for r in rows:
        if r["ratios"]:
            lines.append(f"- {100 * r['sparsity']:.0f} %, {r['allocation']}: "
                         + ", ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items()))
    record = {"meta": {"command": cmd, "started": started, "machine": machine, "minutes": minutes,
                       "scan_minutes": scan_min, "val_images": len(idx)},
              "curves": {k: {"baseline": c.baseline, "ratios": c.ratios, "values": c.values} for k, c in curves.items()},
              "rows": rows}
    write_outputs(args.out, lines, record)


if __name__ == "__main__":
    main()

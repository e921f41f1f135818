"""Fine-grained sensitivity on the JPEG-adapted ResNet-20: does a sensitivity-derived allocation beat
uniform (and global) magnitude pruning at the same overall sparsity, without fine-tuning?

The scan prunes each conv / the classifier alone at 10 % ... 90 % (L1 magnitude, element-wise) and
measures top-1 on 2,000 class-balanced *training* images (no augmentation), so the full test set
stays unseen until the final comparison; the per-layer ratios come from bisection over the
tolerated drop (``prunekit.sensitivity.ratios_for``).

    python benchmarks/sensitivity_resnet20.py --data ../shared/data --sparsity 0.8   # ~8 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from _report import mean_sd
from prunekit import Element, Global, Magnitude, Uniform, prune, select
from prunekit.checkpoint import build
from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_datasets, cifar10_loaders
from prunekit.io import atomic_write_text
from prunekit.sensitivity import SensitivityCurves, ratios_for, scan
from prunekit.train import TrainConfig, evaluate, fit

OUT = Path(__file__).parent / "results" / "sensitivity_resnet20"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--checkpoint", default="checkpoints/resnet20_cifar10jpeg.pt")
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ft-steps", type=int, default=0,
                    help="then fine-tune each pruned model this many steps (masks in force) and measure again")
    ap.add_argument("--ft-seeds", type=int, nargs="+", default=[0],
                    help="fine-tune each row once per seed (data order, augmentation) from the same pruned start")
    ap.add_argument("--curves", help="reuse the curves JSON of an earlier scan (same checkpoint) instead of scanning")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    train_set, test_set = cifar10_datasets(Path(args.data) / "cifar10-jpeg75.npz", IMAGENET_MEAN, IMAGENET_STD,
                                           augment=False)
    labels = np.asarray(train_set.labels)
    rng = np.random.default_rng(0)
    per_class = args.val_images // 10
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)])
    val = DataLoader(Subset(train_set, idx.tolist()), batch_size=250)
    test = DataLoader(test_set, batch_size=500)
    dense, _ = build(args.checkpoint)
    dense.eval()
    t0 = time.perf_counter()
    out = Path(args.out)
    if args.curves:
        curves = SensitivityCurves.from_json(Path(args.curves).read_text(encoding="utf-8"))
        scan_min = float(json.loads(out.with_suffix(".json").read_text())["meta"]["scan_minutes"]) \
            if out.with_suffix(".json").is_file() else float("nan")
    else:
        curves = scan(dense, select(dense), Magnitude(), Element(), lambda m: evaluate(m, val).top1,
                      progress=lambda n, r, v: print(f"  {n} @ {r:.1f}: {v:.4f}", flush=True))
        scan_min = (time.perf_counter() - t0) / 60
    curves.save(out.with_name(out.name + "_curves.json"))
    try:
        curves.plot(out.with_name(out.name + "_curves.png"), ylabel="top-1 on 2,000 training images")
    except Exception as exc:  # matplotlib missing: the table still stands
        print(f"no plot: {exc}")
    searched = ratios_for(curves, args.sparsity)
    rows = {}
    for name, alloc in (("uniform", Uniform(args.sparsity)), ("global", Global(args.sparsity)),
                        ("sensitivity", searched)):
        model = copy.deepcopy(dense)
        masks = prune(model, select(model), Magnitude(), Element(), alloc, enforce=False)
        rows[name] = {"sparsity": masks.sparsity(), "val_top1": evaluate(model, val).top1,
                      "test_top1": evaluate(model, test).top1}
        if args.ft_steps:
            train_aug, _ = cifar10_loaders(Path(args.data) / "cifar10-jpeg75.npz", 128, IMAGENET_MEAN, IMAGENET_STD)
            tops = []
            for seed in args.ft_seeds:
                tuned = copy.deepcopy(dense)
                tuned_masks = prune(tuned, select(tuned), Magnitude(), Element(), alloc, enforce=True)
                cfg = TrainConfig(epochs=1, lr=0.01, weight_decay=5e-4, schedule="cosine", seed=seed, progress=False,
                                  max_steps_per_epoch=args.ft_steps)
                fit(tuned, train_aug, None, cfg)
                tuned_masks.remove()
                tops.append(evaluate(tuned, test).top1)
            rows[name]["test_top1_ft"] = float(np.mean(tops))
            rows[name]["test_top1_ft_seeds"] = tops
        print(name, rows[name], flush=True)
    dense_test = evaluate(dense, test).top1
    reuse = (f" --curves {args.curves}" if args.curves else "") + (f" --ft-steps {args.ft_steps}" if args.ft_steps else "") \
        + (f" --ft-seeds {' '.join(map(str, args.ft_seeds))}" if args.ft_steps and args.ft_seeds != [0] else "")
    meta = {"command": f"python benchmarks/sensitivity_resnet20.py --data {args.data} --sparsity {args.sparsity}{reuse}",
            "started": started, "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads",
            "scan_minutes": scan_min, "dense_test_top1": dense_test, "ratios": searched.ratios}
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["# Fine-grained sensitivity, ResNet-20", "", f"`{meta['command']}` ({started}; {meta['machine']}). "
             f"Dense in the same run: {dense_test:.2%} (test). Scan: 20 layers x 9 ratios on 2,000 training "
             f"images, {scan_min:.1f} min{' (the curves of an earlier run of this script, reused)' if args.curves else ''}. "
             "No fine-tuning.", "",
             "| allocation | sparsity | top-1 on the scan images | top-1 test | top-1 test after fine-tune |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        ft = (f"**{mean_sd(r['test_top1_ft_seeds'])}** ({args.ft_steps} steps, seeds {args.ft_seeds})"
              if "test_top1_ft" in r else "-")
        lines.append(f"| {name} | {r['sparsity']:.1%} | {r['val_top1']:.2%} | **{r['test_top1']:.2%}** | {ft} |")
    lines += ["", "Per-layer ratios found: " + ", ".join(f"{k} {v:.1f}" for k, v in searched.ratios.items())]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()

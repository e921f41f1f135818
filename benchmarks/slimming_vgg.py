"""Network slimming (Liu et al. 2017): does L1 on the BatchNorm scales during training make the
model lose less when its channels are cut by those scales, without fine-tuning?

A narrow VGG-11 (``--width`` of the channels) is trained from scratch on class-balanced JPEG
CIFAR-10 training images, once per ``--strengths`` value (0 = plain training; the paper uses 1e-4)
and seed, with the same schedule. Each trained model is then channel-pruned with one global
ranking of ``|gamma|`` (the paper's global threshold; ``prune_channels(..., Global(r), "bn")``) at
every ``--ratios`` fraction of the channels, no fine-tuning, and scored on the test split.

    python benchmarks/slimming_vgg.py --data ../shared/data     # about 25 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from _report import mean_sd, write_outputs
from prunekit import Global
from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_datasets
from prunekit.data.choose import balanced_subset
from prunekit.metrics import count_macs, count_params
from prunekit.models.vgg_cifar import CONFIGS, VGGCifar, scaled
from prunekit.structure import prune_channels
from prunekit.train import TrainConfig, evaluate, fit
from prunekit.train.regularizers import Slimming

OUT = Path(__file__).parent / "results" / "slimming_vgg"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--width", type=float, default=0.25, help="fraction of VGG-11's channels")
    ap.add_argument("--train-images", type=int, default=10000)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.0, 1e-4, 1e-3])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t_start = time.perf_counter()
    path = Path(args.data) / "cifar10-jpeg75.npz"
    train_aug, test_set = cifar10_datasets(path, IMAGENET_MEAN, IMAGENET_STD, augment=True)
    train_set = balanced_subset(train_aug, args.train_images)
    test = torch.utils.data.DataLoader(balanced_subset(test_set, args.test_images), batch_size=500)
    config = scaled(CONFIGS["vgg11_bn"], args.width)
    x = torch.zeros(1, 3, 32, 32)
    rows = []
    for seed in args.seeds:
        for strength in args.strengths:
            torch.manual_seed(seed)
            model = VGGCifar(config)
            loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True,
                                                 generator=torch.Generator().manual_seed(seed))
            t0 = time.perf_counter()
            fit(model, loader, None, TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=1e-4, progress=False),
                regularizer=Slimming(model, strength) if strength > 0 else None)
            minutes = (time.perf_counter() - t0) / 60
            dense = evaluate(model, test).top1
            gammas = torch.cat([m.weight.detach().abs() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
            row = {"seed": seed, "strength": strength, "dense": dense, "train_min": minutes,
                   "gamma_below_1e-2": float((gammas < 1e-2).float().mean()), "pruned": {}}
            for r in args.ratios:
                small, _, rep = prune_channels(copy.deepcopy(model).eval(), x, Global(r), "bn")
                row["pruned"][str(r)] = {"top1": evaluate(small, test).top1,
                                         "params": count_params(small), "macs": count_macs(small, x)}
            row["params"], row["macs"] = count_params(model), count_macs(model, x)
            rows.append(row)
            print(json.dumps(row), flush=True)
    write(args, rows, config, started, (time.perf_counter() - t_start) / 60)


def write(args: argparse.Namespace, rows: list[dict], config: tuple, started: str, minutes: float) -> None:
    cmd = (f"python benchmarks/slimming_vgg.py --width {args.width} --train-images {args.train_images} "
           f"--epochs {args.epochs} --lr {args.lr} --strengths {' '.join(map(str, args.strengths))} "
           f"--ratios {' '.join(map(str, args.ratios))} --seeds {' '.join(map(str, args.seeds))}")
    lines = [f"# Network slimming on a narrow VGG-11 ({args.train_images} JPEG CIFAR-10 training images)", "",
             f"`{cmd}` ({started}, {platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
             f"{minutes:.1f} min in all). VGG-11 channels {[c for c in config if c != 'M']}, "
             f"{rows[0]['params']:,} params, {rows[0]['macs']:,} MACs. Each model trained {args.epochs} epochs "
             f"from scratch (SGD 0.9, lr {args.lr} cosine, wd 1e-4, batch 64, crop + flip); then one global "
             "ranking of |gamma| removes the given fraction of the channels; no fine-tuning. Top-1 on "
             f"{args.test_images} test images, mean +- sd over seeds {args.seeds}.", "",
             "| BN L1 strength | dense | " + " | ".join(f"{int(100 * r)} % channels cut" for r in args.ratios)
             + " | share of gamma < 0.01 |", "| --- | ---: |" + " ---: |" * (len(args.ratios) + 1)]
    for s in args.strengths:
        mine = [r for r in rows if r["strength"] == s]
        cells = [mean_sd([r["dense"] for r in mine])]
        cells += [mean_sd([r["pruned"][str(x)]["top1"] for r in mine]) for x in args.ratios]
        cells.append(f"{statistics.mean(r['gamma_below_1e-2'] for r in mine):.2f}")
        lines.append(f"| {s:g} | " + " | ".join(cells) + " |")
    macs = {str(x): statistics.mean(r["pruned"][str(x)]["macs"] / r["macs"] for r in rows) for x in args.ratios}
    lines += ["", "MACs kept after the cut (mean over all models): "
              + ", ".join(f"{int(100 * float(k))} % cut: {v:.2f}" for k, v in macs.items())]
    write_outputs(args.out, lines, {"command": cmd, "started": started, "rows": rows})


if __name__ == "__main__":
    main()

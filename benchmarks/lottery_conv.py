"""Lottery tickets on a conv net (Frankle & Carbin 2019; Frankle et al. 2019): iterative magnitude
pruning with the survivors reset to their initial values, or rewound to an early step, against the
same masks trained from a fresh random initialisation.

The narrow VGG-11 with BatchNorm of ``slimming_vgg.py`` (a deeper net trained at a high learning
rate: the case where the 2019 paper found rewinding necessary), trained from scratch on
class-balanced JPEG CIFAR-10 training images; every round removes ``--rate`` of the remaining
conv + linear weights (global magnitude) and trains again from the reset / rewound weights, the
optimizer state and the learning-rate schedule of that step (``prunekit.train.find_ticket``).

    python benchmarks/lottery_conv.py --data ../shared/data

Measured with ``--epochs 8 --train-images 10000 --rounds 4``: about 7.5 min per seed on 2 quiet cores
(the defaults train half the epochs on 8,000 images).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from _report import mean_sd, write_outputs
from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_datasets
from prunekit.data.choose import balanced_subset
from prunekit.models.vgg_cifar import CONFIGS, VGGCifar, scaled
from prunekit.train import TrainConfig
from prunekit.train.lottery import find_ticket, random_reinit_control

OUT = Path(__file__).parent / "results" / "lottery_conv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--train-images", type=int, default=8000)
    ap.add_argument("--test-images", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rate", type=float, default=0.45)
    ap.add_argument("--rewind-steps", type=int, nargs="+", default=[0, 60],
                    help="0 = reset to the initialisation; k = rewind to optimizer step k")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t_start = time.perf_counter()
    train_aug, test_set = cifar10_datasets(Path(args.data) / "cifar10-jpeg75.npz", IMAGENET_MEAN, IMAGENET_STD,
                                           augment=True)
    train_set = balanced_subset(train_aug, args.train_images)
    test = torch.utils.data.DataLoader(balanced_subset(test_set, args.test_images), batch_size=500)
    config = scaled(CONFIGS["vgg11_bn"], args.width)
    rows = []
    for seed in args.seeds:
        def loader(seed: int = seed) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True,
                                               generator=torch.Generator().manual_seed(seed))

        cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=1e-4, seed=seed, progress=False)
        for k in args.rewind_steps:
            torch.manual_seed(seed)
            model = VGGCifar(config)
            t0 = time.perf_counter()
            rounds = find_ticket(model, loader(), test, cfg, rounds=args.rounds, rate=args.rate, rewind_step=k)
            for r in rounds:
                row = {"seed": seed, "rewind_step": k, "round": r.round, "remaining": r.remaining, "ticket": r.top1}
                if 0.05 <= r.remaining <= 0.2:  # 80-95 % sparse: the same masks from a fresh random init
                    ctrl = random_reinit_control(lambda: VGGCifar(config), r.masks, loader(), test,
                                                 TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=1e-4,
                                                             progress=False), seed=1000 + seed)
                    row["random reinit"] = ctrl.top1
                rows.append(row)
                print(json.dumps(row), flush=True)
            print(f"seed {seed} rewind {k}: {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    write(args, rows, config, started, (time.perf_counter() - t_start) / 60)


def write(args: argparse.Namespace, rows: list[dict], config: tuple, started: str, minutes: float) -> None:
    cmd = (f"python benchmarks/lottery_conv.py --width {args.width} --train-images {args.train_images} "
           f"--test-images {args.test_images} --epochs {args.epochs} --lr {args.lr} --rounds {args.rounds} "
           f"--rate {args.rate} --rewind-steps {' '.join(map(str, args.rewind_steps))} "
           f"--seeds {' '.join(map(str, args.seeds))}")
    steps_per_epoch = -(-args.train_images // 64)
    lines = [f"# Lottery tickets on a narrow VGG-11 ({args.train_images} JPEG CIFAR-10 training images)", "",
             f"`{cmd}` ({started}, {platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
             f"{minutes:.1f} min in all). Channels {[c for c in config if c != 'M']}; every training {args.epochs} "
             f"epochs ({args.epochs * steps_per_epoch} steps; SGD 0.9, lr {args.lr} cosine, wd 1e-4, batch 64, "
             f"crop + flip); each round prunes {args.rate:.0%} of the remaining conv + linear weights (global "
             f"magnitude). Top-1 on {args.test_images} test images, mean +- sd over seeds {args.seeds}; "
             "'random reinit': the round's masks trained from a fresh initialisation.", "",
             "| round | weights left | " + " | ".join(
                 f"{'reset to init' if k == 0 else f'rewind to step {k}'}" for k in args.rewind_steps)
             + " | " + " | ".join(f"random reinit (masks of {'reset' if k == 0 else f'rewind {k}'})"
                                  for k in args.rewind_steps) + " |",
             "| ---: | ---: |" + " ---: |" * (2 * len(args.rewind_steps))]
    for rnd in range(args.rounds + 1):
        mine = [r for r in rows if r["round"] == rnd]
        if not mine:
            continue
        left = statistics.mean(r["remaining"] for r in mine)
        cells = [mean_sd([r["ticket"] for r in mine if r["rewind_step"] == k]) for k in args.rewind_steps]
        cells += [mean_sd([r["random reinit"] for r in mine if r["rewind_step"] == k and "random reinit" in r])
                  for k in args.rewind_steps]
        lines.append(f"| {rnd} | {100 * left:.1f} % | " + " | ".join(cells) + " |")
    write_outputs(args.out, lines, {"command": cmd, "started": started, "rows": rows})


if __name__ == "__main__":
    main()

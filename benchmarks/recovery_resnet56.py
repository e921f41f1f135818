"""Recovering accuracy after channel pruning: the JPEG-adapted ResNet-56 cut to >= 2x fewer MACs and
fine-tuned for whole epochs, with and without distillation, against Torch-Pruning and against the
dense model fine-tuned equally long (same run). Every row reseeds the RNGs and the training loader's
shuffle generator, so every row of a run sees the same data order (paired rows). Runs before
2026-12-07 22:04 UTC (runs A-F of RESULTS.md section 3) did not reseed the loader: there only the
first row had ``--seed``'s order and each later row its own, which alone moved the lr 0.05 dense
row from 90.26 % (first) to 90.03 % (second).
``--device cuda --workers 4`` trains on a GPU (cuts stay on the CPU; the numbers then differ from the
CPU's: other kernels, and workers draw the augmentation from other streams).

Every row starts from ``checkpoints/resnet56_cifar10jpeg.pt`` and trains ``--epochs`` epochs with one
recipe (SGD momentum 0.9, wd 5e-4, batch 128, crop+flip, cosine from ``--lr``, ``--seed`` 0 by default). The cut is the
one of ``structured_resnet.py resnet56``: the inner channels of every basic block (conv1 out / bn1 /
conv2 in), uniformly, since Torch-Pruning mis-handles the option-A shortcut's residual stream; the
small model is trained, not a masked one.

    python benchmarks/recovery_resnet56.py --data ../shared/data --epochs 5   # ~2 h on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import time
from pathlib import Path

import torch

from _report import machine_line
from prunekit import Magnitude, PerLayer, Uniform
from prunekit.checkpoint import build
from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_loaders
from prunekit.io import atomic_write_text
from prunekit.metrics import count_macs, count_params
from prunekit.search.channels import exact_ratios, ratio_rounds
from prunekit.structure import prune_channels
from prunekit.train import TrainConfig, evaluate, fit
from prunekit.train.distill import Distillation
from prunekit.train.iterative import prune_channels_iteratively
from prunekit.train.state import loader_generators
from structured_resnet import _tp_prune, _tp_version, blocks, regression_prune_resnet

OUT = Path(__file__).parent / "results" / "recovery_resnet56"
NAMES = {
    "dense": "dense, fine-tuned as long",
    "l1": "prunekit L1, uniform per block",
    "l1-kd": "prunekit L1, uniform per block, distillation (T 4, alpha 0.7)",
    "tp": "Torch-Pruning (group L1, MetaPruner)",
    "tp-kd": "Torch-Pruning (group L1, MetaPruner), distillation (T 4, alpha 0.7)",
    "sens": "prunekit L1, per-block ratios from the sensitivity search (section 4b)",
    "sens-kd": "prunekit L1, sensitivity ratios, distillation (T 4, alpha 0.7)",
    "sens-iter": "prunekit L1, sensitivity ratios reached in 3 prune -> fine-tune rounds",
    "sens-iter-kd": "prunekit L1, sensitivity ratios in 3 rounds, distillation (T 4, alpha 0.7)",
    "sens-ls": "sensitivity ratios, LASSO selection + least-squares reconstruction (He et al. 2017)",
    "sens-ls-kd": "sensitivity ratios, LASSO + least squares, distillation (T 4, alpha 0.7)",
}
ROUNDS = 3  # the sens-iter rows: epochs split 3 / 3 / 4 (of 10), each round its own cosine from --lr
SEARCHED = Path(__file__).parent / "results" / "search_resnet56.json"  # section 4b's run: its sensitivity row's ratios
CALIB = (8, 64, 10)  # the sens-ls rows: calibration batches, images per batch, positions per image (structured_resnet.py's)


def _prune(row: str, dense: torch.nn.Module, macs_ratio: float, calib: list[torch.Tensor]) -> tuple[torch.nn.Module, str]:
    example = torch.zeros(1, 3, 32, 32)
    goal = 1.0 - 1.0 / macs_ratio
    if row.startswith("tp"):
        small, ratio = _tp_prune(dense, example, goal, 5)
        return small, f"torch-pruning {_tp_version()}, pruning_ratio {ratio:.4f}"
    exclude = _exclude(dense)
    if row.startswith("sens"):  # the block-internal groups' ratios the search found (same exclude, L1 order)
        ratios = _sensitivity_ratios()
        allocation = PerLayer(exact_ratios(dense, example, ratios, exclude=exclude))
        small, _, report = prune_channels(dense, example, allocation, importance=Magnitude(p=1), target="channels",
                                          exclude=exclude, verify=not row.startswith("sens-ls"))
        if row.startswith("sens-ls"):  # the same channel counts, chosen and refitted by regression
            keep = {b: small.get_submodule(b).conv1.out_channels for b in blocks(small)}
            small, errors = regression_prune_resnet(dense, calib, keep, "lasso+ls", CALIB[2])
            return small, (f"ratios from {SEARCHED.name}; {CALIB[0]} x {CALIB[1]} calibration images, {CALIB[2]} "
                           f"positions each; mean relative conv2 output error {sum(errors) / len(errors):.3f}")
        return small, f"ratios from {SEARCHED.name}; prune_channels verified: {report.verified}"
    small, _, report = prune_channels(dense, example, Uniform(goal), importance=Magnitude(p=1), target="macs",
                                      exclude=exclude)
    return small, f"prune_channels verified: {report.verified}"


def _exclude(dense: torch.nn.Module) -> list[str]:
    """The residual stream stays whole: its BatchNorms are excluded."""
    return ["bn1"] + [f"{b}.bn2" for b in blocks(dense)]


def _sensitivity_ratios() -> dict[str, float]:
    return next(r["ratios"] for r in json.loads(SEARCHED.read_text())["rows"] if r["method"] == "sensitivity")


def _iterative(dense: torch.nn.Module, cfg: TrainConfig, train, test, kw: dict,
               device: str) -> tuple[torch.nn.Module, list, list]:
    """The sensitivity row's channel counts reached in ROUNDS cuts, each followed by its share of the
    epochs (the last round gets the remainder); returns the small model, the per-epoch top-1 and the
    top-1 right after each cut."""
    example = torch.zeros(1, 3, 32, 32)
    exclude = _exclude(dense)
    steps = ratio_rounds(dense, example, _sensitivity_ratios(), ROUNDS, exclude=exclude)
    epochs = [cfg.epochs // ROUNDS] * ROUNDS
    epochs[-1] += cfg.epochs - sum(epochs)
    per_epoch: list[float] = []
    cuts: list[float] = []

    def finetune(model: torch.nn.Module, k: int) -> None:
        cuts.append(evaluate(model, test).top1)
        round_cfg = dataclasses.replace(cfg, epochs=epochs[k - 1], seed=cfg.seed if k == 1 else None)
        model.to(device)  # trained on the device, cut on the CPU (the cut traces with a CPU example)
        per_epoch.extend(r.test.top1 for r in fit(model, train, test, round_cfg, **kw))
        model.to("cpu")

    small, _, _ = prune_channels_iteratively(dense, example, 0.5, ROUNDS, finetune, importance=Magnitude(p=1),
                                             allocation=[PerLayer(r) for r in steps], target="channels",
                                             exclude=exclude)
    return small, per_epoch, cuts


def _write(out: Path, meta: dict, results: dict, rows: list[str]) -> None:
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "results": results}, indent=1))
    lines = ["# Recovery after channel pruning on the JPEG-adapted ResNet-56", "",
             f"`{meta['command']}` ({meta['started']}; {meta['machine']}). Start: dense checkpoint "
             f"{results['dense_start']['top1']:.2%}. Every row trains {meta['epochs']} epochs ({meta['steps']} steps), "
             f"SGD momentum 0.9, wd 5e-4, batch 128, cosine from lr {meta['lr']}, seed {meta['seed']}.", "",
             "| row | MACs ratio | params | top-1 right after pruning | top-1 per epoch | top-1 after training | minutes |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for row in rows:
        if row not in results:
            continue
        r = results[row]
        ap_ = f"{r['after_prune_top1']:.2%}" if r["after_prune_top1"] is not None else "-"
        curve = " / ".join(f"{x:.2%}" for x in r["per_epoch"])
        lines.append(f"| {NAMES[row]} | {r['macs_ratio']:.2f}x | {r['params']:,} | {ap_} | {curve} | "
                     f"**{r['top1']:.2%}** | {r['minutes']:.1f} |")
    notes = [f"- {row}: {results[row]['note']}" for row in rows if results.get(row, {}).get("note")]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines + [""] + notes) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--checkpoint", default="checkpoints/resnet56_cifar10jpeg.pt")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--macs-ratio", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where rows train: cpu, or cuda where there is a GPU (cuts run on the CPU)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: load in the main one)")
    ap.add_argument("--seed", type=int, default=0, help="training seed and data order, the same for every row (the cut is deterministic)")
    ap.add_argument("--rows", nargs="+", choices=sorted(NAMES), default=["dense", "l1", "tp", "l1-kd"])
    ap.add_argument("--limit", type=int, default=None, help="images per split (a smoke run only)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, test = cifar10_loaders(Path(args.data) / "cifar10-jpeg75.npz", 128, IMAGENET_MEAN, IMAGENET_STD,
                                   limit=args.limit, seed=args.seed, num_workers=args.workers)
    calib: list[torch.Tensor] = []
    if any(r.startswith("sens-ls") for r in args.rows):  # un-augmented train images, as structured_resnet.py
        plain, _ = cifar10_loaders(Path(args.data) / "cifar10-jpeg75.npz", CALIB[1], IMAGENET_MEAN, IMAGENET_STD,
                                   augment=False, seed=1, limit=args.limit)
        calib = [x for x, _ in itertools.islice(plain, CALIB[0])]
    dense, _ = build(args.checkpoint)
    dense.eval()
    example = torch.zeros(1, 3, 32, 32)
    dense_macs = count_macs(dense, example)
    meta = {"command": f"python benchmarks/recovery_resnet56.py --data {args.data} --epochs {args.epochs} "
                       + (f"--lr {args.lr} " if args.lr != 0.01 else "") + (f"--seed {args.seed} " if args.seed else "")
                       + (f"--device {args.device} " if args.device != "cpu" else "")
                       + (f"--workers {args.workers} " if args.workers else "")
                       + f"--rows {' '.join(args.rows)} --out {args.out}",
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine_line(args.device, args.threads),
            "epochs": args.epochs, "lr": args.lr, "seed": args.seed, "steps": args.epochs * len(train),
            "same_order": True}
    results: dict[str, dict] = {"dense_start": {"top1": evaluate(dense, test).top1}}
    print(f"dense checkpoint: {results['dense_start']['top1']:.4f}", flush=True)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=5e-4, schedule="cosine", seed=args.seed,
                      progress=False)
    out = Path(args.out)
    for row in args.rows:
        t0 = time.perf_counter()
        for g in loader_generators(train):  # every row the data order of --seed (fit reseeds only the global RNGs)
            g.manual_seed(args.seed)
        kw: dict = {}
        after_prune, note = None, ""
        if row.endswith("-kd"):
            kw["task"] = Distillation(copy.deepcopy(dense).to(args.device).eval(), temperature=4.0, alpha=0.7)
        if row.startswith("sens-iter"):
            model, per_epoch, cuts = _iterative(copy.deepcopy(dense), cfg, train, test, kw, args.device)
            after_prune = cuts[0]
            note = (f"{ROUNDS} rounds of prune_channels (ratio_rounds of {SEARCHED.name}'s ratios), each followed "
                    "by its epochs with a fresh cosine from the lr; 'right after pruning' is after the first cut; "
                    "right after each cut: " + " / ".join(f"{x:.2%}" for x in cuts))
        else:
            if row == "dense":
                model = copy.deepcopy(dense)
            else:
                model, note = _prune(row, dense, args.macs_ratio, calib)
                after_prune = evaluate(model, test).top1
            model.to(args.device)
            per_epoch = [r.test.top1 for r in fit(model, train, test, cfg, **kw)]
        top1 = evaluate(model, test).top1
        model.to("cpu")  # counted on the CPU, with the CPU example
        results[row] = {"top1": top1, "after_prune_top1": after_prune,
                        "macs_ratio": dense_macs / count_macs(model, example), "params": count_params(model),
                        "per_epoch": per_epoch, "note": note,
                        "minutes": (time.perf_counter() - t0) / 60}
        print(f"{row}: {results[row]}", flush=True)
        _write(out, meta, results, args.rows)
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()

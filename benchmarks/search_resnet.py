"""Per-layer ratios by search on the JPEG-adapted ResNets: channel pruning to a MACs target.

Rows, each pruning the block-internal channels (the residual stream stays whole, as in RESULTS.md
section 3) to keep ``--macs-ratio`` of the dense MACs, L1 filter norms choosing the channels:

- ``uniform``: the same fraction of every group (``prune_channels(Uniform, target="macs")``);
- ``global``: one ranking over all groups (``Global``), and ``global-all``: over the whole graph;
- ``sensitivity``: each group pruned alone at 10..90 % on held-out *training* images, then
  per-group ratios by bisection until the measured MACs meet the target
  (``prunekit.search.channels``);
- ``sensitivity-recal``: the same, each probe scored after re-estimating the BatchNorm statistics
  downstream of the cut from 10 augmented training batches (``Probe(recalibrate=)``);
- ``sensitivity-latency``: the same curves, per-group ratios until the *measured* batch-1 latency
  (each candidate timed interleaved with the dense model) is ``--latency-ratio`` of the dense one;
- ``amc``: DDPG over per-layer ratios (``prunekit.search.amc``), reward = accuracy on the same images;
- ``netadapt``: latency-driven (``prunekit.search.netadapt``) to ``--latency-ratio`` x the measured dense
  latency (batch 1), with ``--netadapt-ft`` fine-tune steps per candidate (the only row fine-tuned during search).

Top-1 is on the 10,000 test images, with no fine-tuning, then after the same ``--ft-steps`` masked
fine-tune for every row. Search cost is wall time on this machine.

    python benchmarks/search_resnet.py resnet20 --methods uniform global global-all sensitivity amc netadapt
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from _report import mean_sd
from prunekit.allocation import Global, Uniform
from prunekit.checkpoint import build
from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_datasets
from prunekit.io import atomic_write_text
from prunekit.masks import clean_copy
from prunekit.metrics import compare_latency, count_macs, count_params
from prunekit.probe import Probe
from prunekit.structure import prune_channels
from prunekit.train import TrainConfig, evaluate, fit

OUT = Path(__file__).parent / "results"
EXCLUDE = ["bn1", "layer*.bn2"]  # the residual stream's BNs: its channels stay


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=("resnet20", "resnet56"))
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--macs-ratio", type=float, default=0.5, help="fraction of the dense MACs kept")
    ap.add_argument("--val-images", type=int, default=1000)
    ap.add_argument("--methods", nargs="+", default=["uniform", "global", "global-all", "sensitivity", "amc",
                                                     "netadapt"])
    ap.add_argument("--ft-steps", type=int, default=300)
    ap.add_argument("--ft-seeds", type=int, nargs="+", default=[0],
                    help="fine-tune every row once per seed (data order); the table shows mean +- sd")
    ap.add_argument("--amc-episodes", type=int, default=120)
    ap.add_argument("--amc-warmup", type=int, default=40)
    ap.add_argument("--netadapt-ft", type=int, default=20)
    ap.add_argument("--latency-ratio", type=float, default=0.7,
                    help="NetAdapt and sensitivity-latency: measured latency / dense to reach")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit-test", type=int, default=None, help="smoke runs only")
    ap.add_argument("--reuse", nargs="+", default=[], metavar="JSON",
                    help="earlier runs' JSON files: a sensitivity or amc row found there is rebuilt from its ratios "
                         "(its search minutes are the earlier run's), not searched again")
    ap.add_argument("--tag", default="", help="suffix of the output files (runs of different methods side by side)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    npz = Path(args.data) / "cifar10-jpeg75.npz"
    train_plain, test_set = cifar10_datasets(npz, IMAGENET_MEAN, IMAGENET_STD, augment=False)
    train_aug, _ = cifar10_datasets(npz, IMAGENET_MEAN, IMAGENET_STD, augment=True)
    labels = np.asarray(train_plain.labels)
    rng = np.random.default_rng(0)
    per_class = args.val_images // 10
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)])
    val = DataLoader(Subset(train_plain, idx.tolist()), batch_size=250)
    if args.limit_test:
        test_set = Subset(test_set, list(range(args.limit_test)))
    test = DataLoader(test_set, batch_size=500)
    dense, _ = build(f"checkpoints/{args.model}_cifar10jpeg.pt")
    dense.eval()
    x = torch.zeros(1, 3, 32, 32)
    dense_macs = count_macs(dense, x)

    val_top1 = Probe(dense, val)  # top-1 on the held-out images, decoded once; scans reuse the unchanged prefix
    scanned: dict = {}

    def curves_for(recalibrated: bool = False) -> tuple:
        """The channel sensitivity curves (scanned once per run) and the minutes the scan took; with
        ``recalibrated``, probes scored after re-estimating the downstream BatchNorm statistics from 10
        augmented training batches of 128 (``Probe(recalibrate=)``)."""
        from prunekit.search.channels import scan_channels
        from prunekit.train.bn import fixed_batches

        key = "recal" if recalibrated else "plain"
        if key not in scanned:
            probe = val_top1
            if recalibrated:
                loader = DataLoader(train_aug, 128, shuffle=True, generator=torch.Generator().manual_seed(0))
                probe = Probe(dense, val, recalibrate=fixed_batches(loader, 10, seed=0))
            t = time.perf_counter()
            curves = scan_channels(dense, x, probe, exclude=EXCLUDE)
            scanned[key] = (curves, (time.perf_counter() - t) / 60)
            curves.save(OUT / f"search_{args.model}_sensitivity{'_recal' if recalibrated else ''}.json")
        return scanned[key]

    def finetune(m: torch.nn.Module, steps: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        loader = DataLoader(train_aug, 64, shuffle=True, generator=g, drop_last=True)
        cfg = TrainConfig(epochs=1, lr=0.01, weight_decay=5e-4, schedule="cosine", seed=seed, progress=False,
                          max_steps_per_epoch=steps)
        fit(m, loader, None, cfg)
        m.eval()

    def finetuned(m: torch.nn.Module) -> dict:
        """Top-1 after the fine-tune, once per --ft-seeds seed, each from a fresh copy of ``m``."""
        tops = []
        for seed in args.ft_seeds:
            copy_ = clean_copy(m)
            finetune(copy_, args.ft_steps, seed)
            tops.append(evaluate(copy_, test).top1)
        return {"test_top1_ft": float(np.mean(tops)), "test_top1_ft_seeds": tops}

    reused: dict = {}
    for path in args.reuse:
        for r in json.loads(Path(path).read_text())["rows"]:
            if r["method"] in ("sensitivity", "amc") and r.get("ratios"):
                reused[r["method"]] = (r["ratios"], r["search_min"], path)
    rows = []
    notes = [f"{m} ratios reused from {p} (search minutes from that run)" for m, (_, _, p) in reused.items()
             if m in args.methods]
    dense_row = {"method": "dense", "macs": dense_macs, "params": count_params(dense), "search_min": 0.0,
                 "val_top1": val_top1(dense), "test_top1": evaluate(dense, test).top1}
    if args.ft_steps:
        dense_row.update(finetuned(dense))
    rows.append(dense_row)
    print(dense_row, flush=True)
    for method in args.methods:
        t0 = time.perf_counter()
        extra: dict = {}
        if method in reused:
            from prunekit.allocation import PerLayer
            from prunekit.search.channels import prune_groups

            ratios, minutes, _ = reused[method]
            t0 = time.perf_counter() - 60 * minutes
            if method == "amc":
                small, _, _ = prune_channels(dense, x, PerLayer(ratios), target="channels", exclude=EXCLUDE,
                                             verify=False)
            else:
                small, _ = prune_groups(dense, x, ratios, None, EXCLUDE)
            extra["ratios"] = ratios
        elif method in ("uniform", "global", "global-all"):
            alloc = Uniform(1 - args.macs_ratio) if method == "uniform" else Global(1 - args.macs_ratio)
            small, _, _ = prune_channels(dense, x, alloc, target="macs", exclude=[] if method == "global-all"
                                         else EXCLUDE, verify=False)
        elif method in ("sensitivity", "sensitivity-recal"):
            from prunekit.search.channels import ratios_for_macs

            curves, _ = curves_for(recalibrated=method == "sensitivity-recal")
            ratios, small, _, _ = ratios_for_macs(curves, dense, x, args.macs_ratio, exclude=EXCLUDE)
            extra["ratios"] = ratios
        elif method == "sensitivity-latency":
            from prunekit.search.channels import ratios_for_latency

            curves, minutes = curves_for()
            t0 = time.perf_counter() - 60 * minutes  # the search cost includes the scan, even when reused
            ratios, small, _, reached = ratios_for_latency(curves, dense, x, args.latency_ratio, exclude=EXCLUDE,
                                                           threads=args.threads)
            extra["ratios"] = ratios
            extra["latency_ratio"] = reached
        elif method == "amc":
            from prunekit.search.amc import amc_search

            res = amc_search(dense, x, val_top1, macs_ratio=args.macs_ratio, exclude=EXCLUDE,
                             episodes=args.amc_episodes, warmup=args.amc_warmup, seed=0)
            small, _, _ = prune_channels(dense, x, res.allocation(), target="channels", exclude=EXCLUDE,
                                         verify=False)
            res.plot(OUT / f"search_{args.model}_amc_ratios.png")
            extra["ratios"] = res.ratios
        elif method == "netadapt":
            from prunekit.search.netadapt import netadapt

            steps = args.netadapt_ft
            res = netadapt(dense, x, val_top1, latency_ratio=args.latency_ratio, step=0.06, exclude=EXCLUDE,
                           short_term=(lambda m, s=steps: finetune(m, s)) if steps else None, threads=args.threads,
                           repeats=20)
            small = res.model
            extra["iterations"] = [{"iteration": r.iteration, "group": r.group, "removed": r.removed,
                                    "latency_ratio": r.latency_ratio, "val_top1": r.accuracy}
                                   for r in res.iterations]
            extra["latency_ratio"] = res.latency_ratio
            extra["latency_table_entries"] = sum(len(v) for v in res.table.times.values())
        else:
            raise SystemExit(f"unknown method {method}")
        search_min = (time.perf_counter() - t0) / 60
        small.eval()
        row = {"method": method, "macs": count_macs(small, x), "params": count_params(small),
               "search_min": search_min, "val_top1": val_top1(small), "test_top1": evaluate(small, test).top1, **extra}
        lat = compare_latency({"dense": dense, "small": small}, x, warmup=3, repeats=30, threads=args.threads)
        row["latency_ratio_measured"] = lat["small"].median_s / lat["dense"].median_s
        if args.ft_steps:
            row.update(finetuned(small))
        rows.append(row)
        print({k: v for k, v in row.items() if k not in ("ratios", "iterations")}, flush=True)
        _write(args, rows, notes, started)


def _write(args: argparse.Namespace, rows: list[dict], notes: list[str], started: str) -> None:
    OUT.mkdir(exist_ok=True)
    name = f"search_{args.model}{args.tag}"
    meta = {"started": started, "command": "python benchmarks/search_resnet.py " + " ".join(
        f"{a}" for a in __import__("sys").argv[1:]), "machine": f"{platform.machine()}, torch {torch.__version__}, "
            f"{args.threads} threads", "macs_ratio": args.macs_ratio, "val_images": args.val_images,
            "ft_steps": args.ft_steps, "ft_seeds": args.ft_seeds}
    atomic_write_text(OUT / f"{name}.json", json.dumps({"meta": meta, "rows": rows, "notes": notes}, indent=1))
    dense = rows[0]
    lines = [f"# Search on {args.model}: channel pruning to {args.macs_ratio:.0%} of the MACs", "",
             f"`{meta['command']}` ({started}, {meta['machine']}). Top-1 on the 10,000 test images; val = "
             f"{args.val_images} held-out training images the searches score on; FT = {args.ft_steps} steps, "
             f"batch 64, lr 0.01 cosine, for every row, data-order seeds {args.ft_seeds} (mean +- sd).", "",
             "| method | MACs kept | params | search min | val top-1 | test top-1, no FT | after FT | latency |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ft = mean_sd(r.get("test_top1_ft_seeds") or ([r["test_top1_ft"]] if "test_top1_ft" in r else []))
        lat = f"{r['latency_ratio_measured']:.2f}x" if "latency_ratio_measured" in r else "-"
        lines.append(f"| {r['method']} | {r['macs'] / dense['macs']:.3f} | {r['params']:,} | {r['search_min']:.1f} "
                     f"| {100 * r['val_top1']:.2f} | {100 * r['test_top1']:.2f} | {ft} | {lat} |")
    for r in rows:
        if "iterations" in r:
            lines += ["", f"NetAdapt iterations ({r['method']}):", "", "| it | group | removed | latency ratio "
                      "(measured) | val top-1 |", "| ---: | --- | ---: | ---: | ---: |"]
            lines += [f"| {i['iteration']} | {i['group']} | {i['removed']} | {i['latency_ratio']:.3f} | "
                      f"{100 * i['val_top1']:.2f} |" for i in r["iterations"]]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    atomic_write_text(OUT / f"{name}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""The default channel allocation of ``prunekit prune --structured``, measured through the CLI itself:
the JPEG-adapted ResNet-20 cut to half its MACs with each ``--scope`` (the default, a sensitivity
search, then uniform and global), every group of the graph eligible (residual stream included, as a
user who gives no ``--exclude`` gets), fine-tuned the same epochs; the dense model fine-tuned as long by
``prunekit train`` in the same run. Each command runs as a user types it (a subprocess); top-1 is then
measured on the full 10,000-image test split.

    python benchmarks/channel_scope_cli.py --data ../shared/data --epochs 1 --seeds 0   # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from prunekit.checkpoint import build
from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_loaders
from prunekit.io import atomic_write_text
from prunekit.metrics import count_macs
from prunekit.train import evaluate

OUT = Path(__file__).parent / "results" / "channel_scope_cli"
SCOPES = {"default (sensitivity)": [], "uniform": ["--scope", "uniform"], "global": ["--scope", "global"]}


def _cli(argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "prunekit.cli", *argv], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"prunekit {shlex.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    return (time.perf_counter() - t0) / 60, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--checkpoint", default="checkpoints/resnet20_cifar10jpeg.pt")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--limit", type=int, default=None, help="images per split (a smoke run only)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    npz = str(Path(args.data) / "cifar10-jpeg75.npz")
    _, test = cifar10_loaders(npz, 256, IMAGENET_MEAN, IMAGENET_STD, limit=args.limit)
    x = torch.zeros(1, 3, 32, 32)
    dense_macs = count_macs(build(args.checkpoint)[0], x)
    rows: dict[str, list[dict]] = {}
    common = ["--checkpoint", args.checkpoint, "--data", npz, *(["--limit", str(args.limit)] if args.limit else [])]
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            out = f"{tmp}/dense{seed}.pt"
            minutes, _ = _cli(["train", *common, "--epochs", str(args.epochs), "--lr", "0.005", "--seed", str(seed),
                               "--out", out])
            rows.setdefault("dense, fine-tuned as long", []).append(
                {"seed": seed, "top1": evaluate(build(out)[0], test).top1, "macs_kept": 1.0, "minutes": minutes})
            for scope, flags in SCOPES.items():
                out = f"{tmp}/{scope.split()[0]}{seed}.pt"
                minutes, log = _cli(["prune", "--structured", *common, "--target", "macs", "--sparsity", "0.5", *flags,
                                     "--finetune-epochs", str(args.epochs), "--seed", str(seed),
                                     "--latency-repeats", "5", "--out", out])
                model = build(out)[0]
                row = {"seed": seed, "top1": evaluate(model, test).top1, "minutes": minutes,
                       "macs_kept": count_macs(model, x) / dense_macs,
                       "ratios": next((line for line in log.splitlines() if line.startswith("per-group ratios")), "")}
                rows.setdefault(scope, []).append(row)
                print(f"seed {seed} {scope}: {row}", flush=True)
    meta = {"command": f"python benchmarks/channel_scope_cli.py --data {args.data} --epochs {args.epochs} "
                       f"--seeds {' '.join(map(str, args.seeds))}",
            "started": started, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"}
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1))

    def mean_sd(xs: list[float]) -> str:
        return f"{100 * statistics.mean(xs):.2f}" + (f" +- {100 * statistics.stdev(xs):.2f}" if len(xs) > 1 else "")

    lines = ["# `prunekit prune --structured` scopes on the JPEG-adapted ResNet-20, half the MACs", "",
             f"`{meta['command']}` ({meta['started']} to {meta['finished']}; {meta['machine']}). Every row fine-tunes {args.epochs} epoch(s) "
             "at lr 0.005 (cosine, the CLI default), no --exclude; top-1 on the full test split.", "",
             "| scope | MACs kept | top-1 after fine-tune | minutes per command |", "| --- | ---: | ---: | ---: |"]
    for scope, rs in rows.items():
        lines.append(f"| {scope} | {statistics.mean(r['macs_kept'] for r in rs):.3f} | **{mean_sd([r['top1'] for r in rs])}** "
                     f"| {statistics.mean(r['minutes'] for r in rs):.1f} |")
    lines += ["", *(f"- seed {r['seed']}: {r['ratios']}" for r in rows["default (sensitivity)"])]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

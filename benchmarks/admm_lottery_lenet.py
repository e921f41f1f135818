"""ADMM vs one-shot magnitude pruning, and lottery tickets vs random re-initialisation, on LeNet-300-100.

ADMM (Zhang et al. 2018) at 90 % (global, element): from the same dense model, ``--admm-epochs`` of
ADMM training, hard prune, then ``--ft-epochs`` masked fine-tuning; the one-shot row trains the
dense model as many epochs first, prunes by magnitude at once, and fine-tunes as long.

Lottery tickets (Frankle & Carbin 2019): iterative magnitude pruning, ``--rate`` of the remaining
weights per round, each round trained ``--ticket-epochs`` from the original initialisation; at
80-95 % sparsity the ticket against the same masks trained from a fresh random initialisation.

    python benchmarks/admm_lottery_lenet.py --data ../shared/data --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from prunekit.allocation import Global
from prunekit.data import mnist_loaders
from prunekit.granularity import Element
from prunekit.importance import Magnitude
from prunekit.io import atomic_write_text
from prunekit.masks import clean_copy
from prunekit.models import create
from prunekit.pruning import prune
from prunekit.targets import select
from prunekit.train import TrainConfig, evaluate, fit
from prunekit.train.admm import ADMM
from prunekit.train.lottery import find_ticket, random_reinit_control

OUT = Path(__file__).parent / "results" / "admm_lottery_lenet"


def cfg(epochs: int, lr: float, seed: int | None) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=lr, weight_decay=1e-4, schedule="cosine", progress=False, seed=seed)


def admm_rows(seed: int, args: argparse.Namespace, train, test) -> dict[str, float]:
    torch.manual_seed(seed)
    dense = create("lenet300_100")
    fit(dense, train, None, cfg(args.dense_epochs, 0.05, seed))
    out = {"dense": evaluate(dense, test).top1}

    m = clean_copy(dense)
    fit(m, train, None, cfg(args.admm_epochs, args.lr, seed))
    out["dense, trained as long"] = evaluate(m, test).top1
    masks = prune(m, select(m), Magnitude(), Element(), Global(args.sparsity))
    out["one-shot: after pruning"] = evaluate(m, test).top1
    fit(m, train, None, cfg(args.ft_epochs, args.lr, seed))
    out["one-shot: after fine-tune"] = evaluate(m, test).top1
    masks.remove()

    m = clean_copy(dense)
    admm = ADMM(m, select(m), Element(), Global(args.sparsity), rho=args.rho, every=args.every, rho_growth=1.2)
    fit(m, train, None, cfg(args.admm_epochs, args.lr, seed), regularizer=admm, pruner=admm)
    masks = admm.hard_prune()
    out["ADMM: after pruning"] = evaluate(m, test).top1
    fit(m, train, None, cfg(args.ft_epochs, args.lr, seed))
    out["ADMM: after fine-tune"] = evaluate(m, test).top1
    out["ADMM sparsity"] = float(masks.sparsity())
    masks.remove()
    return out


def ticket_rows(seed: int, args: argparse.Namespace, train, test) -> list[dict[str, float]]:
    torch.manual_seed(seed)
    model = create("lenet300_100")
    rounds = find_ticket(model, train, test, cfg(args.ticket_epochs, args.ticket_lr, seed), rounds=args.rounds,
                         rate=args.rate)
    rows = []
    for r in rounds:
        row = {"round": r.round, "remaining": r.remaining, "ticket": r.top1}
        if 0.05 <= r.remaining <= 0.2:  # 80-95 % sparse: the control with the same masks
            ctrl = random_reinit_control(lambda: create("lenet300_100"), r.masks, train, test,
                                         cfg(args.ticket_epochs, args.ticket_lr, None), seed=1000 + seed)
            row["random reinit"] = ctrl.top1
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--dense-epochs", type=int, default=4)
    ap.add_argument("--admm-epochs", type=int, default=3)
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--rho", type=float, default=0.3)
    ap.add_argument("--every", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--rate", type=float, default=0.3)
    ap.add_argument("--ticket-epochs", type=int, default=2)
    ap.add_argument("--ticket-lr", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", nargs="+", default=["admm", "lottery"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    train, test = mnist_loaders(Path(args.data) / "mnist", batch_size=128)
    admm = [admm_rows(s, args, train, test) for s in args.seeds] if "admm" in args.parts else []
    for a in admm:
        print(json.dumps(a), flush=True)
    tickets = [ticket_rows(s, args, train, test) for s in args.seeds] if "lottery" in args.parts else []
    minutes = (time.perf_counter() - t0) / 60
    lines = [f"# ADMM and lottery tickets on LeNet-300-100 / MNIST ({started})", "",
             f"`python benchmarks/admm_lottery_lenet.py --seeds {' '.join(map(str, args.seeds))}` ({platform.machine()}, "
             f"torch {torch.__version__}, {args.threads} threads, {minutes:.1f} min; mean +- std over seeds).", ""]

    def ms(vals: list[float]) -> str:
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{100 * statistics.mean(vals):.2f} +- {100 * sd:.2f}"

    if admm:
        lines += [f"ADMM at {args.sparsity:.0%} (global, element; {args.admm_epochs} ADMM epochs, rho {args.rho} x1.2 every "
                  f"{args.every} steps; {args.ft_epochs} fine-tune epochs; lr {args.lr} cosine):", "",
                  "| row | top-1 |", "| --- | ---: |"]
        lines += [f"| {k} | {ms([a[k] for a in admm])} |" for k in admm[0] if k != "ADMM sparsity"]
        lines.append("")
    if tickets:
        lines += [f"Lottery tickets ({args.rate:.0%} of the remaining weights per round, {args.ticket_epochs} epochs per "
                  f"round at lr {args.ticket_lr}, reset to the initialisation):", "",
                  "| round | weights left | ticket | same masks, random init |", "| ---: | ---: | ---: | ---: |"]
        for i, row in enumerate(tickets[0]):
            ctrl = [t[i]["random reinit"] for t in tickets if "random reinit" in t[i]]
            lines.append(f"| {row['round']} | {100 * row['remaining']:.1f} % | {ms([t[i]['ticket'] for t in tickets])} "
                         f"| {ms(ctrl) if ctrl else '-'} |")
    OUT.parent.mkdir(exist_ok=True)
    atomic_write_text(OUT.with_suffix(".md"), "\n".join(lines) + "\n")
    atomic_write_text(OUT.with_suffix(".json"), json.dumps({"args": vars(args), "admm": admm, "tickets": tickets},
                                                           indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

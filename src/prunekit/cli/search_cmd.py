"""``prunekit sensitivity`` and ``prunekit search``: per-layer ratios by measurement.

    prunekit sensitivity --checkpoint checkpoints/resnet20_cifar10jpeg.pt --val-images 500 --out r20_sens.json
    prunekit sensitivity --checkpoint C --channels --exclude bn1 --exclude "layer*.bn2" --macs-ratio 0.5 \\
        --out curves.json --prune-out small.pt
    prunekit search --method netadapt --checkpoint C --latency-ratio 0.7 --out small.pt
    prunekit search --method amc --checkpoint C --macs-ratio 0.5 --episodes 120 --out small.pt

Both score candidates on ``--val-images`` class-balanced *training* images (no augmentation; the
test split stays unseen). ``sensitivity`` writes the curves (``.json``, ``.csv``, ``.png``) and,
with a target, the per-layer ratios; ``--prune-out`` also writes the pruned checkpoint; a scan
stopped half-way continues when the same command runs again (``--state``, default ``OUT.state``). ``search``
writes the channel-pruned checkpoint (original architecture + plan) and a ``.json`` record of the
search beside it; ``--state`` (default ``OUT.state``) makes it resumable: run the same command
again after a stop and it continues.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prunekit.cli.common import (
    add_data_args,
    add_force_arg,
    add_model_args,
    add_threads_arg,
    apply_threads,
    check_outputs,
    positive_int,
)
from prunekit.cli.main import UsageError

HELP_SENS = "prune each layer (or channel group) alone at several ratios, measure, derive per-layer ratios"
HELP_SEARCH = "search per-layer channel ratios: AMC (reinforcement learning) or NetAdapt (measured latency)"


def _ratio(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return v


def _ratios(text: str) -> list[float]:
    return [_ratio(t) for t in text.split(",") if t.strip()]


def _common(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--val-images", type=positive_int, default=1000, metavar="N",
                   help="class-balanced training images (no augmentation) each candidate is scored on (default 1000)")
    p.add_argument("--exclude", action="append", default=None, metavar="GLOB", help="never prune these modules")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    add_threads_arg(p)
    add_force_arg(p)
    p.add_argument("--progress", action="store_true", help="progress bars")


def register(subparsers: Any) -> None:
    """Add the ``sensitivity`` and ``search`` sub-commands."""
    p = subparsers.add_parser("sensitivity", help=HELP_SENS, description=HELP_SENS + ".")
    _common(p)
    p.add_argument("--channels", action="store_true", help="scan coupled channel groups (default: layers' weights)")
    p.add_argument("--criterion", default="l1", metavar="C", help="element masks: the criterion (default l1)")
    p.add_argument("--ratios", type=_ratios, default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                   metavar="R,R,...", help="ratios each target is probed at (default 0.1,...,0.9)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--sparsity", type=_ratio, metavar="S", help="masks: overall sparsity to derive ratios for")
    target.add_argument("--macs-ratio", type=_ratio, metavar="M", help="--channels: fraction of MACs to keep")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="score the layers in N worker processes, threads shared out (default 1: here)")
    p.add_argument("--pool", default="process", metavar="P",
                   help="where the workers run: process (default) or ray (pip install \"prunekit[ray]\")")
    p.add_argument("--recalibrate-bn", type=positive_int, default=None, metavar="N",
                   help="score every probe after re-estimating the BatchNorm statistics downstream of the cut "
                        "from N augmented training batches, fixed by --seed (adaptive BN; the model's own "
                        "statistics come back after each probe)")
    p.add_argument("--curves", metavar="PATH", help="reuse the curves of an earlier scan (JSON) instead of scanning")
    p.add_argument("--out", required=True, metavar="PATH", help="curves file (.json; .csv and .png beside it)")
    p.add_argument("--prune-out", metavar="PATH", help="also write the model pruned with the derived ratios")
    p.add_argument("--state", metavar="PATH",
                   help="finished layers, kept while scanning (default OUT with .state): the same command "
                        "run again after a stop continues there; removed once the curves are written")
    p.set_defaults(func=run_sensitivity)

    q = subparsers.add_parser("search", help=HELP_SEARCH, description=HELP_SEARCH + ".")
    _common(q)
    q.add_argument("--method", choices=("amc", "netadapt"), required=True)
    q.add_argument("--macs-ratio", type=_ratio, default=0.5, metavar="M", help="AMC: fraction of MACs kept (0.5)")
    q.add_argument("--latency-ratio", type=_ratio, default=0.7, metavar="L",
                   help="NetAdapt: measured latency / dense latency to reach (0.7)")
    q.add_argument("--episodes", type=positive_int, default=120, help="AMC episodes (default 120)")
    q.add_argument("--warmup", type=positive_int, default=40, help="AMC random warm-up episodes (default 40)")
    q.add_argument("--step", type=_ratio, default=0.05, help="NetAdapt latency cut per iteration (default 0.05)")
    q.add_argument("--ft-steps", type=int, default=0, metavar="N",
                   help="NetAdapt short-term fine-tune steps per candidate (default 0)")
    q.add_argument("--out", required=True, metavar="PATH", help="the pruned checkpoint (+ PATH.json, the record)")
    q.add_argument("--state", metavar="PATH", help="resumable search state (default OUT.state)")
    q.set_defaults(func=run_search)


def _setup(args: argparse.Namespace) -> tuple[Any, str, dict, Any, Any, str]:
    """model, name, info, example input, validation loader, data set."""
    import torch

    from prunekit.cli.common import load_model_from_args, resolve_dataset, validation_loader
    from prunekit.data.choose import example_input_for

    apply_threads(args)
    model, name, info = load_model_from_args(args)
    if info.get("masks") is not None:
        info["masks"].make_permanent(model)
    model.eval()
    dataset = resolve_dataset(args, name, info["metadata"])
    val = validation_loader(args, name, info["metadata"], args.val_images)
    torch.manual_seed(args.seed)
    return model, name, info, example_input_for(dataset), val, dataset


def _scorer(model: Any, val: Any) -> Any:
    """Top-1 on the validation images, decoded once (a Probe called as a function)."""
    from prunekit.probe import Probe

    return Probe(model, val)


def _sensitivity_probe(args: argparse.Namespace, model: Any, name: str, info: dict, val: Any) -> Any:
    """The scan's probe; with ``--recalibrate-bn N``, the first N batches of the augmented training
    loader seeded by ``--seed`` (the global random state forked: the same batches on a resumed scan)."""
    from prunekit.cli.common import make_loaders_from_args
    from prunekit.probe import Probe
    from prunekit.train.bn import fixed_batches

    if args.recalibrate_bn is None:
        return Probe(model, val)
    train, _ = make_loaders_from_args(args, name, info["metadata"])
    batches = fixed_batches(train, args.recalibrate_bn, args.seed)
    print(f"each probe re-estimates the BatchNorm statistics after the cut from {len(batches)} augmented "
          f"training batches")
    return Probe(model, val, recalibrate=batches)


def _save_small(path: str, small: Any, plan: Any, name: str, info: dict, dataset: str, note: dict) -> None:
    from prunekit.checkpoint import save

    meta = {**info["metadata"], "dataset": dataset, "pruning": {"structured": True, **note}}
    if info.get("plan") is not None:
        plan = info["plan"].then(plan)
    save(path, small, name, info["config"], metadata=meta, plan=plan)


def run_sensitivity(args: argparse.Namespace) -> int:
    from prunekit.sensitivity import SensitivityCurves

    if args.sparsity and args.channels:
        raise UsageError("--sparsity applies to weight masks; with --channels give --macs-ratio")
    if args.macs_ratio and not args.channels:
        raise UsageError("--macs-ratio applies with --channels; for masks give --sparsity")
    if args.prune_out and not (args.sparsity or args.macs_ratio):
        raise UsageError("--prune-out needs a target: --sparsity (masks) or --macs-ratio (--channels)")
    out = Path(args.out)
    state = Path(args.state) if args.state else out.with_suffix(".state")
    check_outputs({"--out": out.with_suffix(".json"), "--prune-out": args.prune_out, "--state": state},
                  [args.checkpoint, args.pretrained, args.curves], force=args.force)
    from prunekit.parallel import POOLS

    if args.pool not in POOLS:
        raise UsageError(f"--pool {args.pool!r}: choose one of {', '.join(sorted(POOLS))}")
    if args.curves and args.recalibrate_bn is not None:
        raise UsageError("--recalibrate-bn applies to a scan; --curves reuses one: drop one of them")
    model, name, info, x, val, dataset = _setup(args)
    if args.recalibrate_bn is not None:
        from prunekit.train.bn import batchnorms

        if not batchnorms(model):
            raise UsageError(f"--recalibrate-bn: {name} has no BatchNorm layer to recalibrate; drop the option")
    if args.curves:
        try:
            curves = SensitivityCurves.from_json(Path(args.curves).read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"--curves {args.curves}: {exc.strerror or exc}") from None
    else:
        if state.exists():
            print(f"resuming from {state}")
        bar = _bar(args.progress)
        probe = _sensitivity_probe(args, model, name, info, val)
        if args.channels:
            from prunekit.search.channels import scan_channels

            curves = scan_channels(model, x, probe, args.ratios, exclude=args.exclude or (),
                                   progress=lambda *a: bar(f"{a[0]} @ {a[1]:.2f}: {a[2]:.4f}"),
                                   workers=args.workers, pool=args.pool, state_path=state)
        else:
            from prunekit import criteria
            from prunekit.registry import build
            from prunekit.sensitivity import scan
            from prunekit.targets import select

            targets = select(model, exclude=args.exclude)
            imp = criteria.build(args.criterion, model, targets, val if criteria.needs_data(args.criterion) else None)
            curves = scan(model, targets, imp, build("granularity", "element"), probe, args.ratios,
                          progress=lambda *a: bar(f"{a[0]} @ {a[1]:.2f}: {a[2]:.4f}"), workers=args.workers,
                          pool=args.pool, state_path=state)
    curves.save(out)
    if not args.curves:
        state.unlink(missing_ok=True)  # the curves file now holds everything the state did
    written = [out.with_suffix(".json"), out.with_suffix(".csv")]
    try:
        curves.plot(out.with_suffix(".png"), ylabel=f"top-1 on {args.val_images} training images")
        written.append(out.with_suffix(".png"))
    except Exception as exc:  # noqa: BLE001 - matplotlib missing: the curves are still written
        print(f"(no plot: {exc})")
    print(f"baseline top-1 {100 * curves.baseline:.2f}% on {args.val_images} training images")
    for n in curves.names:
        print(f"  {n}: " + " ".join(f"{100 * v:.1f}" for v in curves.values[n]))
    if args.sparsity:
        from prunekit.sensitivity import ratios_for

        alloc = ratios_for(curves, args.sparsity)
        print(f"per-layer ratios for {args.sparsity:.0%} overall: "
              + ", ".join(f"{k} {v:.2f}" for k, v in alloc.ratios.items()))
        if args.prune_out:
            from prunekit import criteria
            from prunekit.checkpoint import save
            from prunekit.granularity import Element
            from prunekit.pruning import prune
            from prunekit.targets import select

            targets = select(model, exclude=args.exclude)
            masks = prune(model, targets, criteria.make(args.criterion), Element(), alloc, enforce=False)
            save(args.prune_out, model, name, info["config"], metadata={**info["metadata"], "dataset": dataset},
                 masks=masks, plan=info.get("plan"))
            written.append(Path(args.prune_out))
    if args.macs_ratio:
        from prunekit.search.channels import ratios_for_macs

        ratios, small, plan, reached = ratios_for_macs(curves, model, x, args.macs_ratio, exclude=args.exclude or ())
        print(f"per-group ratios keeping {reached:.3f} of the MACs: "
              + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
        if args.prune_out:
            _save_small(args.prune_out, small, plan, name, info, dataset, {"search": "sensitivity", "ratios": ratios})
            written.append(Path(args.prune_out))
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


def _bar(on: bool) -> Any:
    if not on:
        return lambda text: None
    return lambda text: print(text, flush=True)


def run_search(args: argparse.Namespace) -> int:
    from prunekit.io import atomic_write_text

    state = Path(args.state) if args.state else Path(str(args.out) + ".state")
    check_outputs({"--out": args.out, "--state": state, "record": str(args.out) + ".json"},
                  [args.checkpoint, args.pretrained], force=args.force)
    if state.exists():
        print(f"resuming from {state}")
    model, name, info, x, val, dataset = _setup(args)
    score = _scorer(model, val)
    if args.method == "netadapt":
        from prunekit.search.netadapt import netadapt

        short = None
        if args.ft_steps:
            from prunekit.cli.common import make_loaders_from_args
            from prunekit.train import TrainConfig, fit

            train, _ = make_loaders_from_args(args, name, info["metadata"])
            cfg = TrainConfig(epochs=1, lr=0.01, seed=args.seed, progress=False, max_steps_per_epoch=args.ft_steps)

            def short(m: Any) -> None:
                fit(m, train, None, cfg)
                m.eval()

        res = netadapt(model, x, score, latency_ratio=args.latency_ratio, step=args.step, short_term=short,
                       exclude=args.exclude or (), threads=args.threads, state_path=state,
                       progress=lambda r: print(f"iteration {r.iteration}: {r.group} -{r.removed}, latency "
                                                f"{r.latency_ratio:.3f} of dense, val top-1 {100 * r.accuracy:.2f}%",
                                                flush=True))
        if res.plan is None:
            raise UsageError("NetAdapt removed nothing: every group is at its minimum or excluded")
        small, plan = res.model, res.plan
        record = json.loads(res.to_json())
        print(f"NetAdapt: {len(res.iterations)} iterations, measured latency {res.latency_ratio:.3f} of dense "
              f"(target {args.latency_ratio}" + ("" if res.reached else ": NOT reached, every channel group is at "
                                                 "its minimum or cannot lower the latency further") + ")")
    else:
        from prunekit.search.amc import amc_search
        from prunekit.structure import prune_channels

        res = amc_search(model, x, score, macs_ratio=args.macs_ratio, exclude=args.exclude or (),
                         episodes=args.episodes, warmup=args.warmup, seed=args.seed, checkpoint_path=state)
        small, plan, _ = prune_channels(model, x, res.allocation(), target="channels",
                                        exclude=args.exclude or (), verify=False)
        record = json.loads(res.to_json())
        print(f"AMC: best of {args.episodes} episodes keeps {res.macs_ratio:.3f} of the MACs, "
              f"val top-1 {100 * res.accuracy:.2f}%")
    _save_small(args.out, small, plan, name, info, dataset, {"search": args.method})
    atomic_write_text(str(args.out) + ".json", json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out} and {args.out}.json")
    return 0

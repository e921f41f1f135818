"""``prunekit prune --structured``: physically remove channels and save the smaller model.

``--sparsity`` is the fraction of ``--target`` (channels, MACs or parameters) to remove; the
importance is ``--criterion``; ``--min-keep``, ``--reduction`` and ``--exclude`` keep their ``prunekit
prune`` meaning. ``--scope`` says how much each channel group loses: ``uniform`` (the same share),
``global`` (one ranking) or ``sensitivity``: each group is cut alone at 0.1 ... 0.9 and scored on
``--search-images`` class-balanced training images, and per-group ratios that meet the budget at the
least accuracy cost come from the curves (:mod:`prunekit.search.channels`). ``sensitivity`` is the default
for ``--target macs`` / ``params``: it measured best after fine-tuning (benchmarks/RESULTS.md section
4b: +1.1 and +1.9 points over uniform on ResNet-56 and ResNet-20) at the cost of the scan (on 2 cores
about 0.3 min for ResNet-20 on 1,000 images, 12 min for ResNet-56 on 500); ``--scope uniform`` skips it. Example::

    prunekit prune --structured --checkpoint checkpoints/resnet20_cifar10jpeg.pt --criterion l1 \\
        --target macs --sparsity 0.5 --round-to 4 --out r20_half.pt --plan-out r20_half.plan.json

The output checkpoint holds the model name/config, the plan and the small state_dict; rebuild it
with :func:`prunekit.structure.load_pruned`.
"""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli.common import positive_int
from prunekit.cli.main import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``prunekit prune`` that only apply with ``--structured``."""
    g = parser.add_argument_group("structured pruning (with --structured)")
    g.add_argument(
        "--target", choices=("channels", "macs", "params"), default="channels",
        help="what --sparsity is a fraction of: prunable channels, MACs or parameters (default channels)",
    )  # fmt: skip
    g.add_argument("--round-to", type=positive_int, metavar="N", help="keep channel counts multiples of N")
    g.add_argument("--plan-out", metavar="PATH", help="also write the pruning plan as JSON")
    g.add_argument(
        "--members", choices=("out", "all"), default="out",
        help="score a channel group by its producing slices only, or also its consumers' (default out)",
    )  # fmt: skip
    g.add_argument("--search-images", type=positive_int, default=1000, metavar="N",
                   help="--scope sensitivity: class-balanced training images each probe is scored on (default 1000)")
    g.add_argument("--no-verify", action="store_true", help="skip the small-vs-masked output check")
    g.add_argument("--latency-repeats", type=positive_int, default=20, metavar="N",
                   help="timed forward passes per model for the before/after table (default 20)")  # fmt: skip
    g.add_argument("--latency-threads", type=positive_int, metavar="N",
                   help="torch threads while timing (default: torch's current setting)")  # fmt: skip


def _check_args(args: argparse.Namespace) -> None:
    if args.out is None:
        raise UsageError("--out PATH is required (where the pruned checkpoint goes)")
    if args.sparsity is None:
        raise UsageError("--structured needs --sparsity: the fraction of --target to remove, in [0, 1)")
    if args.granularity != "element":
        raise UsageError("--granularity does not apply to --structured (it always removes whole channels)")
    if args.layer or args.include or args.score_norm:
        raise UsageError("--layer, --include and --score-norm do not apply to --structured; use --exclude")
    from prunekit.cli.prune_cmd import check_args_outputs

    check_args_outputs(args)  # --out / --plan-out writable, distinct, not an input: before any work


def _scope(args: argparse.Namespace) -> str:
    """The channel allocation: chosen by measurement (RESULTS.md section 4b) unless ``--scope`` says."""
    if args.scope is None:  # a search beat uniform and global after fine-tuning at a MACs budget; for a share of
        # the channels (no cost to meet) uniform led global
        return "sensitivity" if args.target in ("macs", "params") else "uniform"
    if args.scope == "sensitivity" and args.target == "channels":
        raise UsageError("--scope sensitivity meets a --target macs or params budget; with --target channels use "
                         "--scope uniform or global")
    return str(args.scope)


def _searched(args: argparse.Namespace, model: Any, example: Any, importance: Any, exclude: list[str], graph: Any,
              name: str, info: dict) -> Any:
    """``PerLayer`` ratios of the channel groups from a sensitivity scan that meet the ``--target`` budget."""
    from prunekit.allocation import PerLayer
    from prunekit.cli.common import validation_loader
    from prunekit.errors import PrunekitError
    from prunekit.metrics import count_macs, count_params
    from prunekit.probe import Probe
    from prunekit.search.channels import DEFAULT_RATIOS, exact_ratios, ratios_for_cost, scan_channels

    count = (lambda m: count_macs(m, example)) if args.target == "macs" else count_params
    try:
        val = validation_loader(args, name, info["metadata"], args.search_images)
    except PrunekitError as exc:
        raise type(exc)(f"--scope sensitivity (the default for --target {args.target}) scores the channel groups on "
                        f"training images: {exc}; or pass --scope uniform to cut without data") from None
    print(f"allocation: sensitivity scan, each channel group cut alone at 0.1 ... 0.9, scored on "
          f"{len(val.dataset)} training images (--scope uniform skips it)", flush=True)
    last = DEFAULT_RATIOS[-1]
    curves = scan_channels(model, example, Probe(model, val), DEFAULT_RATIOS, importance, exclude,
                           progress=lambda label, r, top1: print(f"  {label} scanned (top-1 {100 * top1:.1f}% with "
                                                                 f"{r:.0%} cut)", flush=True) if r == last else None)
    dense = count(model)
    ratios, _, _, kept = ratios_for_cost(curves, model, example, lambda small: count(small) / dense,
                                         1.0 - args.sparsity, args.target, importance, exclude)
    print(f"per-group ratios keeping {kept:.3f} of the {args.target} (baseline top-1 {100 * curves.baseline:.2f}% "
          "on those images): " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()), flush=True)
    return PerLayer(exact_ratios(model, example, ratios, importance, exclude, graph))


def _importance(args: argparse.Namespace, model: Any, targets: list, name: str, info: dict) -> Any:
    from prunekit.cli.common import calibrated_importance

    return calibrated_importance(args.criterion, model, targets, args, name, info["metadata"])


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
    )


def run(args: argparse.Namespace) -> int:
    """Prune channels, print the before/after table, save checkpoint (+ plan)."""
    _check_args(args)
    args.scope = _scope(args)
    from prunekit.allocation import Global, Uniform
    from prunekit.cli.common import (
        example_input_for,
        load_model_from_args,
        resolve_dataset,
        resolved_normalize,
    )
    from prunekit.cli.prune_cmd import check_recalibration, recalibrate
    from prunekit.metrics import compare_latency
    from prunekit.structure import (
        ChannelConstraints,
        ChannelScoring,
        DependencyGraph,
        match_modules,
        prune_channels,
        score_targets,
    )

    model, name, info = load_model_from_args(args)
    check_recalibration(model, name, args)
    model.eval()
    dataset = resolve_dataset(args, name, info["metadata"])
    example = example_input_for(dataset)
    graph = DependencyGraph.build(model, example)
    exclude = match_modules(args.exclude or [], sorted({a.module for a in graph.axes}), "--exclude")
    importance = _importance(
        args, model, score_targets(graph, args.members, exclude=exclude), name, {**info, "name": name}
    )
    before_top1, _ = _top1(model, args, name, info) if args.eval else (None, "")
    target = args.target
    if args.scope == "sensitivity":
        allocation = _searched(args, model, example, importance, exclude, graph, name, info)
        target = "channels"  # the per-group ratios already meet the --target budget
    else:
        allocation = Global(args.sparsity) if args.scope == "global" else Uniform(args.sparsity)
    small, plan, report = prune_channels(
        model, example, allocation, importance, target=target, exclude=exclude, graph=graph,
        scoring=ChannelScoring(reduction=args.reduction or "mean", members=args.members),
        constraints=ChannelConstraints(min_keep=args.min_keep, round_to=args.round_to), verify=not args.no_verify,
    )  # fmt: skip
    report.target, report.ratio = args.target, args.sparsity  # what was asked (a search meets it with per-group ratios)
    lat = compare_latency(
        {"dense": model, "pruned": small},
        example,
        warmup=3,
        repeats=args.latency_repeats,
        threads=args.latency_threads,
    )
    rows = [
        ("", "dense", "pruned", "ratio"),
        ("params", f"{report.params_before:,}", f"{report.params_after:,}",
         f"{report.params_after / report.params_before:.3f}"),
        ("MACs", f"{report.macs_before:,}", f"{report.macs_after:,}", f"{report.macs_after / report.macs_before:.3f}"),
        ("latency (ms, median, batch 1)", f"{1e3 * lat['dense'].median_s:.3f}", f"{1e3 * lat['pruned'].median_s:.3f}",
         f"{lat['pruned'].median_s / lat['dense'].median_s:.3f}"),
    ]  # fmt: skip
    print(f"{name}: structured {args.criterion}, {args.scope}, target {args.target} {args.sparsity}")
    print(_table(rows))
    print(
        f"latency: {lat['dense'].threads} thread(s), {args.latency_repeats} interleaved repeats; shared machine"
    )
    print(report)
    recalibrate(small, name, info, args)
    if args.eval:
        after_top1, used = _top1(small, args, name, info)
        print(f"test top-1 on {used}: dense {100 * before_top1:.2f}%  pruned {100 * after_top1:.2f}%")
    metadata = {
        **info["metadata"],
        "dataset": dataset,
        "pruning": {"structured": True, **plan.meta, "target": args.target, "ratio": args.sparsity, "scope": args.scope,
                    "reached": report.reached},  # what was asked (a search's plan cuts per-group channel shares)
    }
    normalize = resolved_normalize(args, dataset, info["metadata"])
    if normalize:
        metadata["normalize"] = normalize
    metadata.pop("masks", None)
    if info.get("plan") is not None:  # the input was channel-pruned already: the new plan is one more step
        plan = info["plan"].then(plan)
    masks = None
    if info.get("masks") is not None:  # masks of the input: their zeros, re-read on the smaller layers
        from prunekit.masks import Masks
        from prunekit.targets import Target

        names = list(info["masks"].target_names)
        masks = Masks.from_zeros(small, [Target(n, small.get_submodule(n)) for n in names])
    from prunekit.io import write_together

    if args.finetune_epochs:  # the checkpoint is rewritten every epoch, the plan file with it (both or neither)
        from prunekit.cli.prune_cmd import finetune

        finetune(small, name, {**info, "masks": masks, "plan": plan}, args, metadata,
                 also_write=(lambda: plan.save(args.plan_out)) if args.plan_out else None)
    else:
        from prunekit.checkpoint import save

        with write_together():  # checkpoint and plan: both files or neither
            save(args.out, small, name, info["config"], metadata=metadata, masks=masks, plan=plan)
            if args.plan_out:
                plan.save(args.plan_out)
    print(f"wrote {args.out}")
    if args.plan_out:
        print(f"wrote {args.plan_out}")
    return 0


def _top1(model: Any, args: argparse.Namespace, name: str, info: dict) -> tuple[float, str]:
    from prunekit.cli.common import evaluation_set, make_loaders_from_args
    from prunekit.train import evaluate

    _, test = make_loaders_from_args(args, name, info["metadata"])
    loader, used = evaluation_set(args, test)
    return evaluate(model, loader).top1, used

"""Structured (channel) pruning of CIFAR ResNets on the JPEG CIFAR-10 copy.

Parts (each writes a JSON under benchmarks/results/, then ``report`` renders structured.md):

* ``resnet20-regression``: regression-based channel pruning (He et al. 2017) vs L1 filter
  pruning at the same ratio, no fine-tuning. Inside every basic block, conv1's output channels
  (= conv2's input channels) are cut by ``--ratio``; conv2 is reconstructed by least squares
  from calibration samples (inputs X from the network pruned so far, targets Y from the dense
  network, as in the paper).
* ``resnet56``: whole-network pruning to >= ``--macs-ratio`` fewer MACs with
  ``prunekit.structure.prune_channels`` (L1, BN scale, Taylor, NISP) and with Torch-Pruning
  (MetaPruner + GroupNormImportance(p=1)), each then fine-tuned for the same number of SGD steps;
  top-1 before/after fine-tuning and CPU latency ratios vs dense (interleaved repeats).
* ``report``: render benchmarks/results/structured.md from the JSON files present.

Commands:
    python benchmarks/structured_resnet.py resnet20-regression --data ../shared/data
    python benchmarks/structured_resnet.py resnet56 --data ../shared/data --finetune-steps 200
    python benchmarks/structured_resnet.py report
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.allocation import Uniform
from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_loaders
from prunekit.io import atomic_write_text
from prunekit.metrics import count_macs, count_params
from prunekit.models import create, load_pretrained
from prunekit.regression import (
    LayerSelection,
    apply_to_chain,
    output_error,
    reconstruct,
    regression_prune_layer,
    samples_from_features,
)
from prunekit.train import build_from_checkpoint, evaluate

RESULTS = Path("benchmarks/results")
PRETRAINED = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "note": "2-core CPU shared with other agents during the run: timings are noisy",
    }


def load_model(name: str, data: Path) -> tuple[nn.Module, str]:
    ckpt = Path("checkpoints") / f"{name}_cifar10jpeg.pt"
    if ckpt.is_file():
        model, _ = build_from_checkpoint(ckpt)
        return model.eval(), str(ckpt)
    path = data / "pretrained" / PRETRAINED[name]
    return load_pretrained(create(name), path).eval(), f"{path} (JPEG-adapted checkpoint missing)"


def blocks(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m).__name__ == "BasicBlock"]


# -- part (b): ResNet-20, regression vs L1 ---------------------------------------------------------


def _stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.relu(model.bn1(model.conv1(x)))  # (B, 16, 32, 32): input of the first block


def _inner(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return F.relu(block.bn1(block.conv1(h)))  # (B, mid, H, W): input of the block's conv2


@torch.no_grad()
def regression_prune_resnet(
    model: nn.Module,
    calib: list[torch.Tensor],
    keep: dict[str, int],
    method: str,
    positions: int,
) -> tuple[nn.Module, list[float]]:
    """Prune the inner channels of every basic block (``keep[block]`` channels stay), block by block.

    X (conv2 inputs) comes from the network pruned so far and Y (conv2 outputs) from the dense
    one, at the same random positions (He et al. 2017). Block inputs are cached and advanced one
    block at a time, so the whole pass costs about one forward pass over the calibration images.
    Returns the pruned model and each block's relative conv2 output error on the samples.
    """
    dense = model.eval()
    pruned = copy.deepcopy(model).eval()
    dense_h = [_stem(dense, x) for x in calib]
    pruned_h = [h.clone() for h in dense_h]
    errors = []
    for blk in blocks(pruned):
        d_block, p_block = dense.get_submodule(blk), pruned.get_submodule(blk)
        xs, ys = [], []
        for j, (hd, hp) in enumerate(zip(dense_h, pruned_h)):
            _, y = samples_from_features(d_block.conv2, _inner(d_block, hd), positions, seed=j)
            x, _ = samples_from_features(p_block.conv2, _inner(p_block, hp), positions, seed=j)
            xs.append(x)
            ys.append(y)
        X, Y = torch.cat(xs), torch.cat(ys)  # (N, c, 9), (N, n)
        c2 = p_block.conv2
        n_keep = keep[blk]
        if method in ("l1", "l1+ls"):
            w1 = p_block.conv1.weight.detach()
            order = torch.argsort(w1.abs().sum(dim=(1, 2, 3)), descending=True, stable=True)
            kept = torch.sort(order[:n_keep]).values
            if method == "l1":
                weight = c2.weight.detach()[:, kept].clone()
            else:
                weight = reconstruct(X, Y, kept, c2.kernel_size).float()
            sel = LayerSelection(kept, weight, None, None, output_error(X, Y, kept, weight))
        elif method in ("lasso+ls", "greedy+ls"):
            sel = regression_prune_layer(c2, X, Y, n_keep, selection=method.split("+")[0])
        else:
            raise ValueError(method)
        apply_to_chain(pruned, f"{blk}.conv1", f"{blk}.conv2", sel, norm=f"{blk}.bn1")
        errors.append(sel.relative_error)
        dense_h = [d_block(h) for h in dense_h]
        pruned_h = [p_block(h) for h in pruned_h]
    return pruned, errors


def part_resnet20(args: argparse.Namespace) -> None:
    data = Path(args.data)
    model, source = load_model("resnet20", data)
    train_loader, test_loader = cifar10_loaders(
        data / "cifar10-jpeg75.npz", args.calib_batch, IMAGENET_MEAN, IMAGENET_STD, augment=False, seed=1
    )
    if args.test_images is not None:  # a fixed random subset (the loader is ordered by class)
        from torch.utils.data import DataLoader, Subset

        test_set = test_loader.dataset
        perm = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(0)).tolist()
        test_loader = DataLoader(Subset(test_set, perm[: args.test_images]), 256, shuffle=False)
    calib = []
    for i, (x, _) in enumerate(train_loader):
        if i >= args.calib_batches:
            break
        calib.append(x)
    example = torch.zeros(1, 3, 32, 32)
    dense_macs, dense_params = count_macs(model, example), count_params(model)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    dense_top1 = evaluate(model, test_loader).top1
    rows.append(
        {
            "method": "dense",
            "top1": dense_top1,
            "macs": dense_macs,
            "params": dense_params,
            "mean_rel_err": 0.0,
            "seconds": time.perf_counter() - t0,
        }
    )
    print(f"dense top-1 {dense_top1:.4f}", flush=True)
    for method in args.methods:
        t0 = time.perf_counter()
        keep = {
            b: max(1, round(model.get_submodule(b).conv1.out_channels * (1 - args.ratio)))
            for b in blocks(model)
        }
        pruned, errs = regression_prune_resnet(model, calib, keep, method, args.positions)
        prune_s = time.perf_counter() - t0
        top1 = evaluate(pruned, test_loader).top1
        row = {
            "method": method,
            "top1": top1,
            "macs": count_macs(pruned, example),
            "params": count_params(pruned),
            "mean_rel_err": sum(errs) / len(errs),
            "per_block_rel_err": errs,
            "seconds": prune_s,
        }
        rows.append(row)
        print(
            f"{method}: top-1 {top1:.4f} macs {row['macs']} mean rel err {row['mean_rel_err']:.3f} "
            f"({prune_s:.0f}s)",
            flush=True,
        )
        _write_json(
            RESULTS / args.out,
            {
                "command": " ".join(sys.argv),
                "source": source,
                "machine": machine(),
                "ratio": args.ratio,
                "calibration": {
                    "images": args.calib_batches * args.calib_batch,
                    "positions_per_image": args.positions,
                    "split": "train (no augmentation)",
                },
                "test_images": args.test_images,
                "rows": rows,
            },
        )
    render_report()


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


# -- report ----------------------------------------------------------------------------------------


def _fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def render_report() -> None:
    lines = [
        "# Structured pruning of CIFAR ResNets (JPEG CIFAR-10)",
        "",
        "Generated by `benchmarks/structured_resnet.py report` from the JSON files next to this one.",
        "",
    ]
    for p20 in sorted(RESULTS.glob("structured_resnet20*.json")):
        r = json.loads(p20.read_text())
        dense = r["rows"][0]
        lines += [
            "## (b) ResNet-20: regression-based channel pruning vs L1, no fine-tuning",
            "",
            f"Command: `python {r['command']}`  ",
            f"Model: `{r['source']}`; machine: {r['machine']['platform']}, torch {r['machine']['torch']}, "
            f"{r['machine']['threads']} threads ({r['machine']['note']}).  ",
            f"Every basic block's conv1 output / conv2 input channels cut by {100 * r['ratio']:.0f}% "
            f"(stem, block outputs and shortcuts untouched). Calibration: {r['calibration']['images']} "
            f"{r['calibration']['split']} images x {r['calibration']['positions_per_image']} random positions. "
            f"Test: {'full 10k test set' if r['test_images'] is None else str(r['test_images']) + ' random test images (fixed seed)'}.",
            "",
            "| method | top-1 % | MACs | MACs ratio | params | mean conv2 rel. output error | prune time s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in r["rows"]:
            lines.append(
                f"| {row['method']} | {_fmt_pct(row['top1'])} | {row['macs']:,} | {dense['macs'] / row['macs']:.2f}x | "
                f"{row['params']:,} | {row['mean_rel_err']:.3f} | "
                f"{'-' if row['method'] == 'dense' else format(row['seconds'], '.0f')} |"
            )
        lines += [
            "",
            "Methods: `l1` keeps the conv1 filters with the largest L1 norm, weights unchanged (Li et al. 2017); "
            "`l1+ls` same channels, conv2 reconstructed by least squares; `lasso+ls` He et al. 2017 "
            "(LASSO channel selection + least-squares reconstruction); `greedy+ls` (if present) greedy "
            "least-squares backward elimination + reconstruction. Prune time includes the calibration passes "
            "and is wall-clock on a loaded machine.",
            "",
        ]
    for p56 in sorted(RESULTS.glob("structured_resnet56*.json")):
        lines += render_resnet56(json.loads(p56.read_text()))
    atomic_write_text(RESULTS / "structured.md", "\n".join(lines) + "\n")


def render_resnet56(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    dense = r["rows"][0]
    lines = [
        f"## (a) ResNet-56 pruned to >= 2x fewer MACs, then a short fine-tune ({Path(r['source'].split(' ')[0]).name})",
        "",
        f"Command: `python {r['command']}`  ",
        f"Model: `{r['source']}`; machine: {m['platform']}, torch {m['torch']}, {m['threads']} threads "
        f"({m['note']}).  ",
        f"Scope: {r['scope_note']}  ",
        f"Fine-tune: {r['finetune_note']}  ",
        f"Top-1 before fine-tuning on a fixed random {r['quick_eval_images']}-image subset of the test set; after "
        f"fine-tuning on {r.get('final_eval', 'the full 10k test set')} (same images for every method; the dense row's 'after FT' is the dense model, not fine-tuned).  ",
        f"Latency: `prunekit.metrics.compare_latency` (dense and pruned interleaved, {r['latency']['repeats']} repeats, "
        f"{r['latency']['threads']} thread(s)), median; ratio = dense / pruned measured in the same call.",
        "",
        "| method | MACs | MACs ratio | params | top-1 % no FT | top-1 % after FT | latency ratio b=1 | "
        "latency ratio b=64 | b=64 speedup / MACs ratio | prune s | FT s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        mr = dense["macs"] / row["macs"]
        l1, l64 = row.get("lat_ratio_b1"), row.get("lat_ratio_b64")
        lines.append(
            f"| {row['method']} | {row['macs']:,} | {mr:.2f}x | {row['params']:,} | {_fmt_pct(row.get('top1_noft'))} | "
            f"{_fmt_pct(row.get('top1_ft'))} | {'-' if l1 is None else f'{l1:.2f}x'} | "
            f"{'-' if l64 is None else f'{l64:.2f}x'} | {'-' if l64 is None else f'{l64 / mr:.2f}'} | "
            f"{row.get('prune_s', 0):.0f} | {row.get('ft_s', 0):.0f} |"
        )
    lines += ["", "Methods: " + r["methods_note"], ""]
    lines += [f"- {n}" for n in r.get("notes", [])]
    return lines + [""]


class OnesWhereMissing:
    """Importance adapter: the wrapped criterion's scores, or ones for layers it cannot score
    (``BNScale`` on the classifier, whose output channels are pinned anyway)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def scores(self, target: Any) -> torch.Tensor:
        from prunekit.errors import ConfigError

        try:
            return self.inner.scores(target)
        except ConfigError:
            return torch.ones_like(target.weight)


def _tp_prune(model: nn.Module, example: torch.Tensor, goal: float, steps: int) -> tuple[nn.Module, float]:
    """Torch-Pruning MetaPruner + GroupMagnitudeImportance(p=1) (GroupNormImportance before 1.5),
    internal block channels only; bisect ``pruning_ratio`` for >= ``goal`` MACs reduction."""
    import torch_pruning as tp

    base = count_macs(model, example)
    best: tuple[nn.Module, float] | None = None
    lo, hi = 0.3, 0.8
    for _ in range(7):
        ratio = (lo + hi) / 2
        m = copy.deepcopy(model).eval()
        ignored = [m.linear, m.conv1] + [m.get_submodule(b).conv2 for b in blocks(m)]
        pruner = tp.pruner.MetaPruner(
            m,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=ignored,
            iterative_steps=steps,
        )
        for _ in range(steps):
            pruner.step()
        reduction = 1.0 - count_macs(m, example) / base
        if reduction >= goal:
            best, hi = (m, ratio), ratio
        else:
            lo = ratio
    if best is None:
        raise RuntimeError("Torch-Pruning did not reach the MACs goal")
    return best


def part_resnet56(args: argparse.Namespace) -> None:
    from torch.utils.data import DataLoader, Subset

    from prunekit.data import cifar10_datasets
    from prunekit.importance import Magnitude
    from prunekit.importance.bn import BNScale
    from prunekit.importance.taylor import Taylor
    from prunekit.metrics import compare_latency
    from prunekit.regression import NISP
    from prunekit.structure import prune_channels
    from prunekit.train import TrainConfig, fit

    data = Path(args.data)
    model, source = load_model("resnet56", data)
    npz = data / "cifar10-jpeg75.npz"
    train_aug, test_set = cifar10_datasets(npz, IMAGENET_MEAN, IMAGENET_STD, True, None)
    train_plain, _ = cifar10_datasets(npz, IMAGENET_MEAN, IMAGENET_STD, False, None)
    perm = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(0)).tolist()
    full = test_set if args.test_images is None else Subset(test_set, perm[: args.test_images])
    test_loader = DataLoader(full, 256, shuffle=False)
    quick = Subset(
        test_set,
        torch.randperm(len(test_set), generator=torch.Generator().manual_seed(0))[: args.quick_eval].tolist(),
    )
    quick_loader = DataLoader(quick, 256, shuffle=False)
    calib_loader = DataLoader(
        train_plain, args.calib_batch, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    calib = []
    for i, batch in enumerate(calib_loader):
        if i >= args.calib_batches:
            break
        calib.append(batch)
    example = torch.zeros(1, 3, 32, 32)
    goal = 1.0 - 1.0 / args.macs_ratio
    internal_exclude = ["bn1"] + [f"{b}.bn2" for b in blocks(model)]  # residual-stream units touch these
    out = RESULTS / args.out
    result: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "source": source,
        "machine": machine(),
        "macs_ratio_goal": args.macs_ratio,
        "quick_eval_images": args.quick_eval,
        "final_eval": "the full 10k test set"
        if args.test_images is None
        else f"the first {args.test_images} images of the same random test permutation",
        "scope_note": "only the inner channels of each basic block (conv1 out / bn1 / conv2 in) are pruned, "
        "uniformly per block (same fraction everywhere), for every method: the option-A (zero-padding) "
        "shortcut makes Torch-Pruning mis-handle the residual-stream channels (shape error at the classifier), "
        "so the residual stream is kept for all methods to compare like with like.",
        "finetune_note": f"SGD momentum 0.9, lr {args.ft_lr} cosine to 0, wd 5e-4, batch {args.ft_batch}, "
        f"{args.ft_steps} steps ({args.ft_steps * args.ft_batch / 50000:.2f} epochs) with flip+crop "
        "augmentation, same seed and batch order for every method",
        "latency": {"repeats": args.lat_repeats, "threads": args.lat_threads},
        "methods_note": "`l1`, `bn`, `taylor`, `nisp`: `prunekit.structure.prune_channels(target='macs', "
        "allocation='uniform')` with `Magnitude(p=1)`, `BNScale`, `Taylor` (first order, "
        f"{args.calib_batches}x{args.calib_batch} calibration images), `NISP` (|logit|-weighted FRL scores); "
        "`lasso+ls`: He et al. 2017 regression (LASSO selection + least-squares reconstruction of conv2, "
        "block by block) with the same per-block channel counts as `l1`; `torch-pruning`: "
        "torch_pruning.pruner.MetaPruner + GroupMagnitudeImportance(p=1) (named GroupNormImportance before "
        f"1.5), {args.tp_steps} iterative steps, pruning_ratio bisected to reach the same MACs goal.",
        "rows": [],
        "notes": [],
    }
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    dense_row = {
        "method": "dense",
        "macs": count_macs(model, example),
        "params": count_params(model),
        "top1_noft": evaluate(model, quick_loader).top1,
        "top1_ft": evaluate(model, test_loader).top1,
    }
    dense_row["eval_s"] = time.perf_counter() - t0
    result["rows"].append(dense_row)
    print(f"dense: {dense_row}", flush=True)
    l1_keep: dict[str, int] | None = None
    for method in args.methods:
        t0 = time.perf_counter()
        if method == "torch-pruning":
            small, tp_ratio = _tp_prune(model, example, goal, args.tp_steps)
            result["notes"].append(f"torch-pruning {_tp_version()}: pruning_ratio {tp_ratio:.4f}")
        elif method == "lasso+ls":
            if l1_keep is None:
                small_l1, _, _ = prune_channels(
                    model,
                    example,
                    Uniform(goal),
                    importance=Magnitude(p=1),
                    target="macs",
                    exclude=internal_exclude,
                    verify=False,
                )
                l1_keep = {b: small_l1.get_submodule(b).conv1.out_channels for b in blocks(small_l1)}
            calib_x = [x for x, _ in calib]
            small, _ = regression_prune_resnet(model, calib_x, l1_keep, "lasso+ls", args.positions)
        else:
            if method == "l1":
                imp: Any = Magnitude(p=1)
            elif method == "bn":
                imp = OnesWhereMissing(BNScale().calibrate(model, None))
            elif method == "taylor":
                imp = Taylor().calibrate(model, calib, len(calib))
            elif method == "nisp":
                imp = NISP().calibrate(model, calib, len(calib))
            else:
                raise ValueError(method)
            small, _, report = prune_channels(
                model,
                example,
                Uniform(goal),
                importance=imp,
                target="macs",
                exclude=internal_exclude,
                verify=method == "l1",
            )
            if method == "l1":
                l1_keep = {b: small.get_submodule(b).conv1.out_channels for b in blocks(small)}
                result["notes"].append(f"l1 prune_channels verify: {report.verified}")
        prune_s = time.perf_counter() - t0
        row: dict[str, Any] = {
            "method": method,
            "macs": count_macs(small, example),
            "params": count_params(small),
            "prune_s": prune_s,
        }
        row["top1_noft"] = evaluate(small, quick_loader).top1
        for bs in (1, 64):
            lat = compare_latency(
                {"dense": model, "pruned": small},
                torch.randn(bs, 3, 32, 32),
                warmup=3,
                repeats=args.lat_repeats,
                threads=args.lat_threads,
            )
            row[f"lat_ratio_b{bs}"] = lat["dense"].median_s / lat["pruned"].median_s
            row[f"lat_dense_b{bs}_ms"] = 1e3 * lat["dense"].median_s
            row[f"lat_pruned_b{bs}_ms"] = 1e3 * lat["pruned"].median_s
        print(f"{method}: pruned {row}", flush=True)
        result["rows"].append(row)
        _write_json(out, result)
        render_report()
        if args.ft_steps > 0:
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(0)
            train_loader = DataLoader(train_aug, args.ft_batch, shuffle=True, generator=g, drop_last=True)
            cfg = TrainConfig(
                epochs=1,
                lr=args.ft_lr,
                weight_decay=5e-4,
                schedule="cosine",
                max_steps_per_epoch=args.ft_steps,
                progress=False,
                seed=0,
            )
            history = fit(small, train_loader, test_loader, cfg)
            row["top1_ft"] = history[-1].test.top1
            row["ft_s"] = time.perf_counter() - t0
        print(f"{method}: done {row}", flush=True)
        _write_json(out, result)
        render_report()


def _tp_version() -> str:
    import torch_pruning as tp

    return str(getattr(tp, "__version__", "?"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="part", required=True)
    b = sub.add_parser("resnet20-regression")
    b.add_argument("--data", default="../shared/data")
    b.add_argument("--ratio", type=float, default=0.5)
    b.add_argument(
        "--out", default="structured_resnet20.json", help="JSON file name under benchmarks/results"
    )
    b.add_argument("--methods", nargs="+", default=["l1", "l1+ls", "lasso+ls", "greedy+ls"])
    b.add_argument("--calib-batches", type=int, default=20)
    b.add_argument("--calib-batch", type=int, default=50)
    b.add_argument("--positions", type=int, default=10)
    b.add_argument("--test-images", type=int, default=None, help="random test subset (default: all 10k)")
    b.add_argument("--threads", type=int, default=1)
    a = sub.add_parser("resnet56")
    a.add_argument("--data", default="../shared/data")
    a.add_argument("--macs-ratio", type=float, default=2.0)
    a.add_argument(
        "--out", default="structured_resnet56.json", help="JSON file name under benchmarks/results"
    )
    a.add_argument(
        "--methods", nargs="+", default=["l1", "torch-pruning", "lasso+ls", "taylor", "bn", "nisp"]
    )
    a.add_argument("--calib-batches", type=int, default=8)
    a.add_argument("--calib-batch", type=int, default=64)
    a.add_argument("--positions", type=int, default=10)
    a.add_argument("--quick-eval", type=int, default=2000)
    a.add_argument("--ft-steps", type=int, default=100)
    a.add_argument("--ft-batch", type=int, default=64)
    a.add_argument("--ft-lr", type=float, default=0.01)
    a.add_argument("--tp-steps", type=int, default=5)
    a.add_argument("--lat-repeats", type=int, default=20)
    a.add_argument("--lat-threads", type=int, default=1)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument(
        "--test-images",
        type=int,
        default=None,
        help="evaluate after fine-tuning on a random subset (default: full test set)",
    )
    sub.add_parser("report")
    args = ap.parse_args()
    if args.part == "report":
        render_report()
        return
    torch.set_num_threads(args.threads)
    if args.part == "resnet20-regression":
        part_resnet20(args)
    elif args.part == "resnet56":
        part_resnet56(args)


if __name__ == "__main__":
    main()

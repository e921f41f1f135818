"""``prunekit run``: one recipe in, one run folder out.

The run is a list of small steps (:data:`STEPS`), each ``step(run) -> None`` reading and extending
one :class:`Run`: set up -> model -> dense training -> dense measurements -> search -> prune ->
recover -> share weights -> verify -> deploy -> pruned measurements. The folder it writes::

    model.pt      the pruned model (prunekit checkpoint: masks / plan / deploy kernels); rewritten
                  after pruning and after every fine-tuning epoch, so a stop keeps the last good one
    recipe.yaml   the resolved recipe (every default written out): `prunekit run recipe.yaml` repeats it
    results.json  every measured number (the report is built from it alone)
    log.txt       what the run printed
    report.html   the report (self-contained) and report.md, its markdown twin (figures/ beside it)

Ctrl-C or an error stops the run between two writes: results.json, the log and a partial report
say where it stopped (``status``), and model.pt is the last good checkpoint. Each training leaves
``fit-<label>[-<phase>].state`` after every epoch (weights, masks, :class:`TrainState`, its rows):
``--resume`` (:func:`run_recipe`) runs the steps again and every training goes on after its last
finished epoch, bit-exactly. A stop during a sensitivity scan also leaves ``sensitivity.state``
(the layers already scanned): the same recipe run again into the same folder (``--force`` or
``--resume``) continues the scan instead of starting it over.
"""

from __future__ import annotations

import copy
import itertools
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import ConfigError, PrunekitError
from prunekit.recipe.core import Recipe, check_against_model, dataset_of
from prunekit.recipe.kernels import KERNEL_STEPS
from prunekit.recipe.kernels import title as kernels_title

RESULTS_FORMAT = "prunekit.run-results"


FIT_STATE_FORMAT = "prunekit.run-fit-state/1"  # fit-<label>[-<phase>].state: see _fit
SCAN_STATE = "sensitivity.state"  # a scan's finished layers while it runs: a run stopped mid-scan and started
# again into the same folder (--force) continues the scan (prunekit.sensitivity.ScanRows)


@dataclass
class Run:
    """What the steps share: the recipe, the folder, the objects built so far and the results."""

    recipe: Recipe
    out: Path
    progress: bool = False
    echo: Callable[[str], None] = print
    resume: bool = False  # continue the trainings of an interrupted run from their fit-*.state files
    results: dict[str, Any] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    train_loader: Any = None
    test_loader: Any = None
    eval_loader: Any = None
    example: torch.Tensor | None = None
    model: nn.Module | None = None  # the model being pruned (masks applied, or the smaller model)
    dense: nn.Module | None = None  # the dense model, kept for comparison and distillation
    model_name: str = ""
    model_config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    masks: Any = None
    plan: Any = None
    allocation: Any = None
    importance: Any = None
    granularity: Any = None
    targets: list = field(default_factory=list)
    deployed: nn.Module | None = None
    deploy_report: Any = None
    writer: Any = None
    normalize: str | None = None
    searched: tuple[nn.Module, Any] | None = None  # (smaller model, plan) a channel search produced
    ticket: tuple[dict, dict] | None = None  # recover.lottery: (the last round's weights, its masks)
    channel_rounds: list[dict[str, float]] | None = None  # recover.schedule with channels: each round's group ratios

    def say(self, text: str) -> None:
        """Print a line and keep it for log.txt."""
        self.log_lines.append(text)
        self.echo(text)

    def section(self, title: str) -> None:
        self.say(f"\n== {title} ==")


# ------------------------------------------------------------------------------------------ steps


def setup(run: Run) -> None:
    """Threads, seed, data loaders and the evaluation subset."""
    from prunekit.data.choose import balanced_subset, describe_images, example_input_for, make_loaders

    r = run.recipe
    torch.set_num_threads(r["threads"])
    torch.manual_seed(r["seed"])
    data = r["data"]
    dataset = dataset_of(r)
    normalize = data["normalize"]
    if r["model"]["checkpoint"] and dataset == "cifar10" and not normalize:  # the statistics it was trained with
        from prunekit import checkpoint as ckpt_format

        normalize = ckpt_format.read(r["model"]["checkpoint"]).metadata.get("normalize")
    run.normalize = normalize
    run.train_loader, run.test_loader = make_loaders(
        dataset, data["path"], batch_size=data["batch_size"], normalize=normalize, limit=data["limit"],
        seed=r["seed"])
    test = run.test_loader
    if data["eval_images"] and data["eval_images"] < len(test.dataset):
        sub = balanced_subset(test.dataset, data["eval_images"])
        run.eval_loader = torch.utils.data.DataLoader(sub, test.batch_size, shuffle=False)
        used = describe_images(sub, subset=True)
    else:
        run.eval_loader, used = test, describe_images(test.dataset)
    run.example = example_input_for(dataset)
    run.results["eval"] = {"split": "test", "images": len(run.eval_loader.dataset), "described": used,
                           "dataset": dataset}
    run.section("data")
    run.say(f"{dataset}: {len(run.train_loader.dataset):,} training images; evaluation on {used}")


def build_model(run: Run) -> None:
    """The model from its name, a prunekit checkpoint or a plain state dict; checked against the recipe."""
    from prunekit import checkpoint as ckpt_format
    from prunekit.models import available, create, load_pretrained

    m = run.recipe["model"]
    if m["checkpoint"]:
        model, ckpt = ckpt_format.build(m["checkpoint"])
        if ckpt.model_name and ckpt.model_name != m["name"]:
            raise run.recipe.error(("model.name", f"{m['checkpoint']} holds a {ckpt.model_name!r}, not "
                                                  f"{m['name']!r}; set model.name: {ckpt.model_name}"))
        if ckpt.masks is not None:
            ckpt.masks.make_permanent(model)
        run.model_config, run.metadata, run.plan = dict(ckpt.model_config), dict(ckpt.metadata), ckpt.plan
    else:
        if m["name"] not in available():
            from prunekit.errors import close_matches

            raise run.recipe.error(("model.name", f"unknown model {m['name']!r}; choose one of: "
                                                  f"{', '.join(available())}; {close_matches(m['name'], available())}"))
        from prunekit.errors import ConfigError

        try:
            model = create(m["name"], **(m["config"] or {}))
        except ConfigError as exc:
            raise run.recipe.error(("model.config", str(exc))) from None
        run.model_config = dict(m["config"] or {})
        if m["pretrained"]:
            model = load_pretrained(model, m["pretrained"])
    run.model_name = m["name"]
    check_against_model(run.recipe, model, run.example)
    run.model = model
    from prunekit.metrics import count_params

    run.section("model")
    source = m["checkpoint"] or m["pretrained"] or "freshly initialised"
    run.say(f"{m['name']} ({source}): {count_params(model):,} parameters")


def _fit_state_path(run: Run, label: str, phase: str | None) -> Path:
    return run.out / f"fit-{label}{'-' + phase if phase else ''}.state"


def _fit(run: Run, model: nn.Module, section: dict[str, Any], label: str, *, epochs: int | None = None,
         phase: str | None = None, save_each: Callable[[Any], None] | None = None, task: Any = None,
         pruner: Any = None, regularizer: Any = None) -> list:
    """Train ``model`` with ``section``'s optimizer settings (``epochs`` overrides its epochs); each
    epoch is appended to ``results["training"][label]`` (numbered on after earlier ``phase`` rows).

    After every epoch the weights, masks, training state and rows go to ``fit-<label>[-<phase>].state``
    in the run folder (then ``save_each(train_state)`` runs); a resumed run (``--resume``) loads that
    file and continues after the last finished epoch (:func:`_resume_fit`)."""
    from prunekit.io import atomic_torch_save
    from prunekit.train import TrainConfig, TrainState, fit

    r = run.recipe
    epochs = section["epochs"] if epochs is None else epochs
    cfg = TrainConfig(epochs=epochs, lr=section["lr"], weight_decay=section["weight_decay"],
                      optimizer=section["optimizer"], seed=r["seed"], progress=run.progress,
                      max_steps_per_epoch=section["steps_per_epoch"])
    history: list[dict[str, Any]] = run.results.setdefault("training", {}).setdefault(label, [])
    offset = max((int(row["epoch"]) for row in history), default=0)  # epochs of earlier phases / rounds
    start = len(history)  # this training's rows are history[start:]
    name = phase or label
    path = _fit_state_path(run, label, phase)
    state = _resume_fit(run, path, model, name, epochs, history, pruner) if run.resume else None
    state = TrainState() if state is None else state

    def on_epoch(rec: Any, st: Any) -> None:
        row = {"epoch": offset + rec.epoch, "train_loss": rec.train_loss, "top1": rec.test.top1, "lr": rec.lr,
               "seconds": rec.seconds}
        if phase is not None:
            row["phase"] = phase
        masks = getattr(pruner, "masks", None) if pruner is not None else run.masks
        if masks is not None:
            row["sparsity"] = float(masks.sparsity())
        if hasattr(pruner, "residual"):  # ADMM: how far the weights are from the masks' constraint set
            row["admm_residual"], row["admm_rho"] = float(pruner.residual()), float(pruner.rho)
        history.append(row)
        atomic_torch_save({"format": FIT_STATE_FORMAT, "phase": name, "epochs": epochs,
                           "model": model.state_dict(), "train_state": st.state_dict(),
                           "masks": None if run.masks is None else {n: k.clone() for n, k in run.masks.items()},
                           "rows": json.dumps(history[start:])}, path)
        if save_each is not None:
            save_each(st)
        run.say(f"{name} epoch {rec.epoch}/{epochs}: loss {rec.train_loss:.4f}, top-1 {100 * rec.test.top1:.2f}%, "
                f"lr {rec.lr:.4g}, {rec.seconds:.1f}s" + (f", sparsity {100 * row['sparsity']:.1f}%"
                                                          if "sparsity" in row else "")
                + (f", residual {row['admm_residual']:.3f}" if "admm_residual" in row else ""))
        if run.writer is not None:
            for key in ("train_loss", "top1", "lr") + (("sparsity",) if "sparsity" in row else ()):
                run.writer.add_scalar(f"{label}/{key}", row[key], row["epoch"])
            run.writer.flush()

    fit(model, run.train_loader, run.eval_loader, cfg, on_epoch_state=on_epoch, task=task, pruner=pruner,
        regularizer=regularizer, state=state)
    return history


def _resume_fit(run: Run, path: Path, model: nn.Module, name: str, epochs: int, history: list[dict[str, Any]],
                pruner: Any) -> Any:
    """The training state of an interrupted ``_fit`` (weights loaded into ``model``, its rows appended
    to ``history``), or ``None`` when that training had not finished an epoch."""
    from prunekit.train import TrainState

    if not path.is_file():
        run.say(f"{name}: no saved epoch in {path.name}; training from the start")
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(saved, dict) and saved.get("format") == FIT_STATE_FORMAT
    except Exception as exc:  # noqa: BLE001 -- any unreadable file gets the same clear error
        raise ConfigError(f"{path} cannot be read ({type(exc).__name__}: {exc}); delete it to train {name} from "
                          "the start, or run afresh with --force") from None
    if not ok:
        raise ConfigError(f"{path} is not a prunekit training state ({FIT_STATE_FORMAT}); delete it to train {name} "
                          "from the start, or run afresh with --force")
    current = model.state_dict()
    weights = saved["model"]
    differ = sorted(k for k in set(current) | set(weights)
                    if k not in current or k not in weights or current[k].shape != weights[k].shape)
    masks = saved["masks"]
    if not differ and pruner is None and run.masks is not None and masks is not None:
        differ = sorted(n for n, k in run.masks.items() if n not in masks or not torch.equal(masks[n], k))
    if differ or (pruner is None and (masks is None) != (run.masks is None)):
        raise ConfigError(f"resuming {name}: the model pruned now differs from the interrupted run's "
                          f"({', '.join(differ[:3]) or 'masks'}{' ...' if len(differ) > 3 else ''}), so its saved "
                          f"epochs ({path.name}) do not apply (a criterion that is not deterministic?); run afresh "
                          "with --force")
    model.load_state_dict(weights)
    state = TrainState.from_state_dict(saved["train_state"])
    history.extend(json.loads(saved["rows"]))
    run.say(f"{name}: resuming after epoch {state.epoch}/{epochs} ({path.name})")
    return state


# ------------------------------------------------------------------------------------ loss terms
# ``train.regularizer`` / ``recover.regularizer``: name -> factory(run, spec) -> callable(model) -> loss term.
# A new one plugs in with register_regularizer.


def _loss_targets(run: Run) -> list:
    """The layers ``prune`` selects, looked up in the model as it is now (it may be the smaller one)."""
    from prunekit.targets import select

    p = run.recipe["prune"]
    types = tuple({"conv": nn.Conv2d, "linear": nn.Linear}[t] for t in p["types"])
    return select(run.model, types=types, include=p["include"], exclude=p["exclude"])


def _group_lasso(run: Run, spec: dict[str, Any]) -> Any:
    from prunekit import registry
    from prunekit.train.regularizers import GroupLasso

    p = run.recipe["prune"]
    gran = spec["granularity"] or (p["granularity"] if p["method"] == "masks" else "channel")
    return GroupLasso(_loss_targets(run), registry.build("granularity", gran), spec["strength"])


def _l1(run: Run, spec: dict[str, Any]) -> Any:
    from prunekit.train.regularizers import L1

    return L1(_loss_targets(run), spec["strength"])


def _l2(run: Run, spec: dict[str, Any]) -> Any:
    from prunekit.train.regularizers import L2

    return L2(_loss_targets(run), spec["strength"])


def _slimming(run: Run, spec: dict[str, Any]) -> Any:
    from prunekit.train.regularizers import Slimming

    return Slimming(run.model, spec["strength"])


REGULARIZERS: dict[str, Callable[[Run, dict[str, Any]], Any]] = {
    "l1": _l1, "l2": _l2, "group_lasso": _group_lasso, "slimming": _slimming}


def register_regularizer(name: str, factory: Callable[[Run, dict[str, Any]], Any]) -> None:
    """Add a loss term for ``train.regularizer`` / ``recover.regularizer``: ``factory(run, spec)``."""
    if not callable(factory):
        raise TypeError(f"regularizer factory must be callable, got {type(factory).__name__}")
    REGULARIZERS[name] = factory


def _regularizer(run: Run, spec: dict[str, Any] | None) -> Any:
    if spec is None:
        return None
    reg = REGULARIZERS[spec["name"]](run, spec)
    run.say(f"loss term: {reg!r}")
    return reg


def train_dense(run: Run) -> None:
    """Train the dense model first when the recipe asks (``train.epochs``)."""
    t = run.recipe["train"]
    if not t["epochs"]:
        return
    if run.recipe["recover"]["lottery"] is not None:
        return _lottery(run)
    run.section(f"dense training ({t['epochs']} epochs)")
    _fit(run, run.model, t, "dense", regularizer=_regularizer(run, t["regularizer"]))


def _lottery(run: Run) -> None:
    """``recover.lottery``: iterative magnitude pruning with reset / rewinding (prunekit.train.lottery).
    Round 0 is the dense training (its model is the run's dense model); the last round's ticket,
    with its masks, becomes the pruned model in the prune step."""
    from prunekit import registry
    from prunekit.train import TrainConfig
    from prunekit.train.lottery import find_ticket, random_reinit_control

    r, t, lot = run.recipe, run.recipe["train"], run.recipe["recover"]["lottery"]
    p = r["prune"]
    allocation = registry.build("allocation", p["allocation"])
    if not isinstance(getattr(allocation, "sparsity", None), float):
        raise run.recipe.error(("prune.allocation", f"lottery rounds need one overall sparsity (global or uniform), "
                                                    f"got {allocation!r}"))
    final = float(allocation.sparsity)
    rate = 1.0 - (1.0 - final) ** (1.0 / lot["rounds"])
    cfg = TrainConfig(epochs=t["epochs"], lr=t["lr"], weight_decay=t["weight_decay"], optimizer=t["optimizer"],
                      seed=r["seed"], progress=run.progress, max_steps_per_epoch=t["steps_per_epoch"])
    targets = _loss_targets(run)
    run.section(f"lottery ticket: {lot['rounds']} rounds of {t['epochs']} epochs, {100 * rate:.1f} % of the "
                f"remaining weights pruned per round to {100 * final:.1f} %, "
                + ("reset to the initialisation" if lot["rewind_step"] == 0 else f"rewound to step {lot['rewind_step']}"))
    dense_state: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []

    def on_round(entry: Any) -> None:
        if entry.round == 0:
            dense_state.update(copy.deepcopy(run.model.state_dict()))
        rows.append({"round": entry.round, "remaining": entry.remaining, "top1": entry.top1, "loss": entry.loss})
        run.say(f"round {entry.round}: {100 * entry.remaining:.1f} % of the weights left, top-1 {100 * entry.top1:.2f}%")

    def at(sparsity: float) -> Any:
        out = copy.copy(allocation)
        out.sparsity = sparsity
        return out

    history = find_ticket(run.model, run.train_loader, run.eval_loader, cfg, lot["rounds"], rate, lot["rewind_step"],
                          targets, registry.build("granularity", p["granularity"]), at, on_round)
    masks = history[-1].masks
    run.ticket = (copy.deepcopy(run.model.state_dict()), masks)
    run.results["lottery"] = {"rounds": rows, "rate": rate, "rewind_step": lot["rewind_step"],
                              "epochs_per_round": t["epochs"]}
    if lot["control"]:
        from prunekit.models import create

        ctrl = random_reinit_control(lambda: create(run.model_name, **run.model_config), masks, run.train_loader,
                                     run.eval_loader, cfg, seed=r["seed"] + 1000)
        run.results["lottery"]["random_reinit"] = {"remaining": ctrl.remaining, "top1": ctrl.top1}
        run.say(f"the same masks from a fresh random initialisation: top-1 {100 * ctrl.top1:.2f}%")
    run.model.load_state_dict(dense_state)  # the dense model of round 0 is what the run measures as dense


def _histogram(model: nn.Module, names: list[str], bins: int, edges: np.ndarray | None = None) -> dict[str, Any]:
    values = [model.get_submodule(n).weight.detach().flatten() for n in names]
    w = torch.cat(values).double().numpy() if values else np.zeros(0)
    nonzero = w[w != 0]
    if edges is None:
        lo, hi = (float(nonzero.min()), float(nonzero.max())) if nonzero.size else (-1.0, 1.0)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(nonzero, edges[0], edges[-1]), edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "zeros": int(w.size - nonzero.size),
            "total": int(w.size)}


def _prunable_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def measure_dense(run: Run) -> None:
    """Accuracy, size and cost of the dense model (latency is measured later, interleaved with the pruned one)."""
    from prunekit.metrics import count_macs, count_nonzeros, count_params

    run.dense = copy.deepcopy(run.model)
    top1 = _evaluate(run, run.dense)
    params = count_params(run.dense)
    run.results["summary"] = {"dense": {
        "top1": top1, "params": params, "nonzeros": count_nonzeros(run.dense),
        "macs": count_macs(run.dense, run.example), "bytes": 4 * params, "latency_ms": None}}
    run.results["histograms"] = {"before": _histogram(run.dense, _prunable_names(run.dense),
                                                      run.recipe["measure"]["histogram_bins"])}
    run.section("dense model")
    run.say(f"top-1 {100 * top1:.2f}% on {run.results['eval']['described']}; {params:,} parameters")


def _plain_train_loader(run: Run, shuffle: bool = True) -> Any:
    """The training split without augmentation (calibration and search probes see the images as they are)."""
    from prunekit.data.choose import make_loaders

    data = run.recipe["data"]
    plain, _ = make_loaders(dataset_of(run.recipe), data["path"], batch_size=data["batch_size"],
                            normalize=run.normalize, limit=data["limit"], seed=run.recipe["seed"], augment=False)
    if shuffle:
        return plain
    return torch.utils.data.DataLoader(plain.dataset, data["batch_size"], shuffle=False)


def _components(run: Run) -> None:
    from prunekit import criteria, registry
    from prunekit.targets import select

    p = run.recipe["prune"]
    types = tuple({"conv": nn.Conv2d, "linear": nn.Linear}[t] for t in p["types"])
    run.targets = select(run.model, types=types, include=p["include"], exclude=p["exclude"])
    run.granularity = registry.build("granularity", p["granularity"])
    from prunekit import granularity as gran

    if isinstance(run.granularity, gran.Pattern):
        run.granularity = gran.Pattern.from_weights([t.weight for t in run.targets])
    run.allocation = registry.build("allocation", p["allocation"])
    if p["layers"]:
        from prunekit.allocation import WithOverrides

        run.allocation = WithOverrides(run.allocation, dict(p["layers"]))
    loader = _plain_train_loader(run) if criteria.needs_data(p["criterion"]) else None
    run.importance = criteria.build(p["criterion"], run.model, run.targets, loader, p["calibration_batches"])


def search(run: Run) -> None:
    """``prune.search``: the registered search method (:data:`SEARCHES`) sets ``run.allocation``."""
    s = run.recipe["prune"]["search"]
    if s is None:
        return
    SEARCHES[s["method"]](run)


def _validation(run: Run) -> Any:
    """``prune.search.images`` class-balanced training images, un-augmented (the test split stays unseen)."""
    from prunekit.data.choose import balanced_subset

    plain = _plain_train_loader(run)
    n = run.recipe["prune"]["search"]["images"]
    return torch.utils.data.DataLoader(balanced_subset(plain.dataset, n), plain.batch_size, shuffle=False)


def _macs_kept(run: Run) -> float:
    """Channel searches: the fraction of MACs kept, from the allocation's sparsity (the share removed)."""
    return 1.0 - float(getattr(_allocation_of(run), "sparsity", 0.0))


def _allocation_of(run: Run) -> Any:
    from prunekit import registry

    return registry.build("allocation", run.recipe["prune"]["allocation"])


def _channel_exclude(run: Run) -> list[str]:
    return list(run.recipe["prune"]["exclude"] or [])


def _channel_importance(run: Run, graph: Any = None) -> Any:
    """``prune.criterion`` built for the channel groups' layers (calibrated on training batches when it needs
    data): what ranks the channels inside each group, for a search as for a plain cut."""
    from prunekit import criteria
    from prunekit.structure import DependencyGraph, match_modules, score_targets

    p = run.recipe["prune"]
    graph = graph if graph is not None else DependencyGraph.build(run.model.eval(), run.example)
    exclude = match_modules(p["exclude"] or [], sorted({a.module for a in graph.axes}), "prune.exclude")
    loader = _plain_train_loader(run) if criteria.needs_data(p["criterion"]) else None
    return criteria.build(p["criterion"], run.model, score_targets(graph, "out", exclude=exclude), loader,
                          p["calibration_batches"])


def sensitivity_search(run: Run) -> None:
    """Sensitivity analysis: each layer (masks) or channel group (channels) probed alone on training
    images, then per-layer ratios (by bisection over the tolerated drop; channels: until the measured
    MACs meet the target)."""
    s = run.recipe["prune"]["search"]
    from prunekit.sensitivity import ratios_for, scan

    val = _validation(run)
    if run.recipe["prune"]["method"] == "channels":
        return _channel_sensitivity(run, val)
    _components(run)
    run.section(f"sensitivity scan: {len(run.targets)} layers x {len(s['ratios'])} ratios on {s['images']} "
                "training images")
    t0 = time.perf_counter()
    with _bar(run, len(run.targets) * len(s["ratios"]), "sensitivity probes") as bar:
        curves = scan(run.model, run.targets, run.importance, run.granularity, _probe(run, val),
                      ratios=s["ratios"], progress=lambda name, ratio, value: bar.update(1), workers=s["workers"],
                      pool=s["pool"], state_path=run.out / SCAN_STATE)
    (run.out / SCAN_STATE).unlink(missing_ok=True)
    target = float(getattr(run.allocation, "sparsity", 0.0))
    alloc = ratios_for(curves, target)
    run.allocation = alloc
    seconds = time.perf_counter() - t0
    run.results["search"] = {"method": "sensitivity", "metric": "top1", "ratios_tested": list(curves.ratios),
                             "baseline": curves.baseline, "curves": {k: list(v) for k, v in curves.values.items()},
                             "ratios": {k: float(v) for k, v in alloc.ratios.items()}, "seconds": seconds,
                             "target": target, "recalibrate_bn": s["recalibrate_bn"]}
    run.say(f"scan took {seconds:.1f}s; per-layer ratios for {100 * target:.0f}% overall: "
            + ", ".join(f"{k} {v:.2f}" for k, v in alloc.ratios.items()))


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def _bar(run: Run, total: int, desc: str) -> Any:
    """A tqdm progress bar when the run shows progress (and tqdm is installed), else a no-op."""
    if not run.progress:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _evaluate(run: Run, model: nn.Module) -> float:
    from prunekit.train import evaluate

    return evaluate(model, run.eval_loader, progress=run.progress).top1


def _save(run: Run, train_state: Any = None) -> None:
    from prunekit import checkpoint as ckpt_format

    meta = {**run.metadata, "dataset": dataset_of(run.recipe), "recipe": run.recipe.data}
    if run.normalize:
        meta["normalize"] = run.normalize
    deploy = None
    if run.deploy_report is not None and run.deploy_report.changed:
        deploy = {"kernels": {c.name: c.kernel for c in run.deploy_report.layers if c.kernel != "dense"}}
    ckpt_format.save(run.out / "model.pt", run.model, run.model_name, run.model_config, metadata=meta,
                     masks=run.masks, plan=run.plan, deploy=deploy, train_state=train_state)


def prune_step(run: Run) -> None:
    """Masks (one-shot now, or gradually during recovery with ``recover.schedule``) or channel removal."""
    p = run.recipe["prune"]
    if p["method"] == "channels":
        return _prune_channels(run)
    if p["method"] == "none":
        run.results["pruning"] = {"method": "none"}
        return _save(run)
    from prunekit.pruning import prune

    if run.allocation is None:
        _components(run)
    run.results["pruning"] = {"method": "masks", "granularity": repr(run.granularity),
                              "criterion": repr(run.importance), "allocation": repr(run.allocation)}
    if run.recipe["recover"]["schedule"] is not None:
        run.section("pruning")
        run.say(f"gradual: {run.recipe['recover']['schedule']} during recovery")
        return
    if run.recipe["recover"]["admm"] is not None:
        run.section("pruning")
        run.say("ADMM during recovery, then a hard prune")
        return
    if run.ticket is not None:
        from prunekit.masks import Masks

        weights, keep = run.ticket
        run.model.load_state_dict(weights)
        run.masks = Masks(keep, {t.name: t.param_name for t in run.targets}).apply(run.model)
        run.results["pruning"]["sparsity"] = float(run.masks.sparsity())
        run.section("pruning")
        run.say(f"the last round's lottery ticket: {100 * run.masks.sparsity():.1f}% sparse")
        run.say(run.masks.format_report(run.model))
        return _save(run)
    run.masks = prune(run.model, run.targets, run.importance, run.granularity, run.allocation)
    run.results["pruning"]["sparsity"] = float(run.masks.sparsity())
    run.section("pruning")
    run.say(f"{run.importance!r} scores, {run.granularity!r}, {run.allocation!r}")
    run.say(run.masks.format_report(run.model))
    _save(run)


def _prune_channels(run: Run) -> None:
    from prunekit import registry
    from prunekit.structure import (
        ChannelConstraints,
        ChannelScoring,
        DependencyGraph,
        match_modules,
        prune_channels,
    )

    p = run.recipe["prune"]
    if run.searched is not None:  # the search already made the smaller model
        small, plan = run.searched
        run.results["pruning"] = {"method": "channels", "search": p["search"]["method"], "criterion": p["criterion"],
                                  "allocation": repr(registry.build("allocation", p["allocation"]))}
        run.section("channel pruning (from the search)")
        if p["reconstruct"] is not None:  # the search sets the sizes; regression picks and refits the channels
            small, plan = _reconstruct(run, run.model, small)
        run.say(f"{sum(x.numel() for x in small.parameters()):,} parameters left")
        if _plan_rounds(run, small, _channel_exclude(run)):
            return _save(run)
        run.plan = run.plan.then(plan) if run.plan is not None else plan
        run.model = small
        return _save(run)
    model = run.model
    model.eval()
    graph = DependencyGraph.build(model, run.example)
    exclude = match_modules(p["exclude"] or [], sorted({a.module for a in graph.axes}), "prune.exclude")
    importance = _channel_importance(run, graph)
    allocation = registry.build("allocation", p["allocation"])
    if p["layers"]:
        from prunekit.allocation import PerLayer

        allocation = PerLayer(dict(p["layers"]), default=float(getattr(allocation, "sparsity", 0.0)))
    small, plan, report = prune_channels(
        model, run.example, allocation, importance, target=p["target"], exclude=exclude, graph=graph,
        scoring=ChannelScoring(reduction="mean"), constraints=ChannelConstraints(min_keep=p["min_keep"],
                                                                                 round_to=p["round_to"]),
        # with reconstruct only the sizes are kept, and channel rounds only take the counts: nothing to verify
        verify=p["reconstruct"] is None and run.recipe["recover"]["schedule"] is None)
    if p["reconstruct"] is not None:
        small, plan = _reconstruct(run, model, small, graph)
    rounds = _plan_rounds(run, small, exclude, graph)
    if not rounds:
        run.plan = run.plan.then(plan) if run.plan is not None else plan
        run.model = small
    pinned = [n.split(": ", 1)[1] for n in report.notes if n.startswith("kept whole (pinned)")]
    run.results["pinned"] = [{"module": x.strip(), "reason": "its channels cannot be followed (kept whole)"}
                             for x in (pinned[0].split(";") if pinned else []) if x.strip()]
    run.results["pruning"] = {"method": "channels", "criterion": repr(importance), "allocation": repr(allocation),
                              "target": p["target"], "units_removed": report.units_removed,
                              "units_prunable": report.units_prunable, "notes": list(report.notes)}
    if report.verified is not None and not rounds:  # prune_channels raises when the small model differs from the masked one
        run.results["verify"] = {"small_equals_masked": True, "max_abs_diff": report.verified.max_abs_diff,
                                 "inputs": report.verified.inputs}
    run.section("channel pruning" + (f" (the cut the {len(run.channel_rounds)} rounds reach)" if rounds else ""))
    run.say(str(report))
    _save(run)


def _plan_rounds(run: Run, small: nn.Module, exclude: list[str], graph: Any = None) -> bool:
    """``recover.schedule`` with channels: the cut that made ``small`` becomes ``rounds`` smaller cuts
    (:func:`~prunekit.search.channels.ratio_rounds`, the same channel count per group in the end) made
    during recovery; ``run.model`` stays uncut until then. False when the recipe has no channel rounds."""
    from prunekit.recipe.schema import complete_schedule
    from prunekit.search.channels import cut_ratios, ratio_rounds
    from prunekit.structure import DependencyGraph

    spec = run.recipe["recover"]["schedule"]
    if spec is None:
        return False
    rounds = int(complete_schedule(spec)["rounds"])
    graph = graph if graph is not None else DependencyGraph.build(run.model.eval(), run.example)
    ratios = cut_ratios(run.model, small.eval(), run.example, exclude, graph=graph)
    run.channel_rounds = ratio_rounds(run.model, run.example, ratios, rounds, exclude=exclude, graph=graph)
    run.say(f"channel rounds: this cut is reached in {rounds} rounds during recovery, each removing the same share "
            "of what is left in every group and followed by its share of recover.epochs")
    return True


def _reconstruct(run: Run, dense: nn.Module, sized: nn.Module, graph: Any = None) -> tuple[nn.Module, Any]:
    """``prune.reconstruct``: regression channel pruning (He et al. 2017) at the sizes ``sized`` has
    (the allocation's or a search's cut); ``graph`` is ``dense``'s dependency graph (built if None).

    For each conv whose input channels the cut removed (in model order), the selection picks
    which of them stay from samples of its input in the network pruned so far and of its output in
    the dense one, least squares refits its weights, and the cut goes through the dependency graph
    (:func:`prunekit.regression.apply_selection`), one plan step per conv. Each conv's row goes to
    ``run.results["reconstruct"]``.
    """
    from prunekit.errors import UnsupportedError
    from prunekit.masks import clean_copy
    from prunekit.regression import RegressionChannelSelector, apply_selection
    from prunekit.structure import DependencyGraph
    from prunekit.structure.groups import AxisRef

    rc = run.recipe["prune"]["reconstruct"]
    graph = graph if graph is not None else DependencyGraph.build(dense.eval(), run.example)
    sizes = dict(sized.named_modules())
    cut = [(a.module, n, sizes[a.module].in_channels) for a, n in graph.axes.items()
           if a.axis == "in" and isinstance(sizes.get(a.module), nn.Conv2d) and sizes[a.module].in_channels < n]
    cut_axes = {AxisRef(m, "in") for m, _, _ in cut}
    for unit in graph.units:  # each removed channel must be the input of one layer, the conv refitted
        readers = sorted({a.module for a in unit.slots if a.axis == "in"
                          and isinstance(graph.module(a.module), (nn.Conv2d, nn.Linear))})
        if unit.prunable and cut_axes & set(unit.slots) and len(readers) > 1:
            raise ConfigError(
                f"prune.reconstruct: a channel group read by several layers ({', '.join(readers)}) is cut; "
                "regression refits one layer per cut: exclude that group (prune.exclude) or drop prune.reconstruct")
    batches = list(itertools.islice(_plain_train_loader(run), run.recipe["prune"]["calibration_batches"]))
    selector = RegressionChannelSelector(positions_per_image=rc["positions"], selection=rc["selection"],
                                         seed=run.recipe["seed"])
    current, plan, rows = clean_copy(dense).eval(), None, []
    run.section(f"regression reconstruction ({rc['selection']} + least squares) of {len(cut)} convs")
    with _bar(run, len(cut), "reconstruct") as bar:
        for name, before, keep in cut:
            sel = selector.select(current, name, batches, keep, reference=dense)
            try:
                current, step = apply_selection(current, run.example, name, sel,
                                                graph=DependencyGraph.build(current, run.example))
            except UnsupportedError as exc:
                raise ConfigError(f"prune.reconstruct: cannot cut the input of {name!r} alone ({exc}); exclude "
                                  "its channel group (prune.exclude) or drop prune.reconstruct") from None
            current.eval()
            plan = step if plan is None else plan.then(step)
            rows.append({"name": name, "in_before": before, "in_after": keep,
                         "relative_error": float(sel.relative_error)})
            bar.update(1)
    want = {n: tuple(t.shape) for n, t in sized.named_parameters()}
    got = {n: tuple(t.shape) for n, t in current.named_parameters()}
    if (odd := sorted(n for n in want if got.get(n) != want[n])):
        raise ConfigError(f"prune.reconstruct refits convs whose input channels are cut; the allocation also cut "
                          f"channels read by other layers ({', '.join(odd[:4])}): exclude those groups with "
                          "prune.exclude, or drop prune.reconstruct")
    mean_err = float(np.mean([r["relative_error"] for r in rows])) if rows else 0.0
    run.say(f"{len(rows)} convs refitted; mean relative output error {mean_err:.4f}")
    if plan is None:
        raise ConfigError("prune.reconstruct: the allocation cut no conv's input channels; raise the sparsity")
    run.results["reconstruct"] = rows
    return current, plan


def recover(run: Run) -> None:
    """Fine-tune with masks in force (or the smaller model), optionally distilling from the dense model,
    with a loss term, or after ADMM training and a hard prune (``recover.admm``)."""
    rc = run.recipe["recover"]
    if not rc["epochs"] and rc["admm"] is None and not rc["recalibrate_bn"]:
        return
    task = None
    if rc["distill"] is not None:
        from prunekit.train.distill import Distillation

        task = Distillation(run.dense, temperature=rc["distill"]["temperature"], alpha=rc["distill"]["alpha"])
    pruner = None
    if rc["schedule"] is not None and run.channel_rounds is None:
        pruner = _pruner(run)
        run.masks = pruner.masks
    if run.recipe["outputs"]["tensorboard"]:
        from torch.utils.tensorboard import SummaryWriter

        run.writer = SummaryWriter(str(run.out / "tensorboard"))
    try:
        if run.channel_rounds is not None:
            return _recover_in_rounds(run, task)
        if rc["admm"] is not None:
            _admm(run, task)
        curve = []  # epoch 0 of the accuracy curve: right after pruning, after recalibration
        if pruner is None and rc["admm"] is None:  # the pruned model before any recovery
            start = _evaluate(run, run.model)
            run.say(f"top-1 right after pruning: {100 * start:.2f}%")
            curve.append({"epoch": 0, "top1": start, "phase": "after pruning"})
        if rc["recalibrate_bn"]:
            before = curve[0]["top1"] if curve else run.results["admm"]["top1_after_hard_prune"]
            curve.append(_recalibrate_bn(run, rc["recalibrate_bn"], before))
        if rc["epochs"]:
            run.section(f"recovery: {rc['epochs']} epochs, lr {rc['lr']:g} cosine"
                        + (", distilling from the dense model" if rc["distill"] is not None else ""))
            _fit(run, run.model, rc, "recovery", phase="fine-tune" if rc["admm"] is not None else None,
                 save_each=lambda st: _save(run, st.state_dict()), task=task, pruner=pruner,
                 regularizer=_regularizer(run, rc["regularizer"]))
            run.results["training"]["recovery"][0:0] = curve
    finally:
        if run.writer is not None:
            run.writer.close()
            run.writer = None
    if pruner is not None:
        run.results["pruning"]["sparsity"] = float(run.masks.sparsity())


def _recover_in_rounds(run: Run, task: Any) -> None:
    """Channel rounds (``recover.schedule: {name: iterative, rounds: N}`` with method channels): each
    round cuts the current model physically (the criterion re-scored on it), records the top-1 right
    after the cut, and fine-tunes it for its share of ``recover.epochs`` (the last round gets the
    remainder) with a fresh cosine from ``recover.lr``. Every round's training resumes like any other
    (``fit-recovery-round<k>.state``); a finished round's weights are reloaded and the next cut redone."""
    from prunekit.allocation import PerLayer
    from prunekit.metrics import count_macs
    from prunekit.structure import ChannelScoring, DependencyGraph, match_modules, prune_channels

    rc, p = run.recipe["recover"], run.recipe["prune"]
    steps = run.channel_rounds or []
    epochs = [rc["epochs"] // len(steps)] * len(steps)
    epochs[-1] += rc["epochs"] - sum(epochs)
    history = run.results.setdefault("training", {}).setdefault("recovery", [])
    rows = run.results["channel_rounds"] = []
    for k, ratios in enumerate(steps, 1):
        model = run.model.eval()
        graph = DependencyGraph.build(model, run.example)
        exclude = match_modules(p["exclude"] or [], sorted({a.module for a in graph.axes}), "prune.exclude")
        small, plan, report = prune_channels(model, run.example, PerLayer(ratios), _channel_importance(run, graph),
                                             target="channels", exclude=exclude, graph=graph,
                                             scoring=ChannelScoring(reduction="mean"))
        run.plan = run.plan.then(plan) if run.plan is not None else plan
        run.model = small
        top1 = _evaluate(run, small)
        history.append({"epoch": sum(epochs[:k - 1]), "top1": top1, "phase": f"after cut {k}"})
        row = {"round": k, "epochs": epochs[k - 1], "units_removed": report.units_removed,
               "params": sum(x.numel() for x in small.parameters()), "macs": count_macs(small, run.example),
               "top1_after_cut": top1}
        rows.append(row)
        run.section(f"channel round {k}/{len(steps)}: {report.units_removed} channels cut, then {epochs[k - 1]} "
                    f"epoch{'s' if epochs[k - 1] != 1 else ''}, lr {rc['lr']:g} cosine" + (", distilling from the dense model" if task is not None else ""))
        run.say(f"{row['params']:,} parameters, {row['macs']:,} MACs; top-1 right after the cut {100 * top1:.2f}%")
        _save(run)
        _fit(run, small, rc, "recovery", epochs=epochs[k - 1], phase=f"round{k}",
             save_each=lambda st: _save(run, st.state_dict()), task=task, regularizer=_regularizer(run, rc["regularizer"]))
        row["top1"] = history[-1]["top1"]
    if report.verified is not None:
        run.results["verify"] = {"small_equals_masked": True, "max_abs_diff": report.verified.max_abs_diff,
                                 "inputs": report.verified.inputs, "round": len(steps)}


def share_weights(run: Run) -> None:
    """``recover.weight_sharing``: Deep Compression's second stage on every Linear layer, then EIE.

    Works on a clean copy: each Linear layer's weights are shared through a k-means codebook
    (:func:`prunekit.sparse.formats.share_linear_layers`, code 0 kept for 0.0, so masked zeros stay
    zero), the centroids are fine-tuned, and the shared values are written back into the model's
    own weights (the checkpoint stays the one format; masks stay exact). Each layer is packed in the
    EIE format, checked to unpack to the same weights, and its bytes are recorded.
    """
    ws = run.recipe["recover"]["weight_sharing"]
    if ws is None:
        return
    from prunekit.masks import clean_copy
    from prunekit.sparse.formats import CSRMatrix, EIEMatrix, share_linear_layers
    from prunekit.train.codebook import finetune_codebook

    run.section(f"weight sharing: {ws['bits']}-bit codebook per Linear layer, {ws['epochs']} centroid epoch(s)")
    work = clean_copy(run.model)
    if run.masks is not None:
        run.masks.make_permanent(work)
    names = share_linear_layers(work, bits=ws["bits"])
    if not names:
        raise ConfigError("recover.weight_sharing: the model has no nn.Linear layer to share; remove "
                          "recover.weight_sharing from the recipe")
    before = _evaluate(run, run.model)
    shared = _evaluate(run, work)
    if ws["epochs"]:
        steps = run.recipe["recover"]["steps_per_epoch"]
        finetune_codebook(work, run.train_loader, epochs=ws["epochs"], lr=ws["lr"],
                          max_steps=steps * ws["epochs"] if steps else None)
    tuned = _evaluate(run, work)
    rows = []
    with torch.no_grad():
        for name in names:
            layer = work.get_submodule(name)
            w = layer.weight().detach()
            target = run.model.get_submodule(name)
            target.weight.copy_(w)
            eie = EIEMatrix.pack(w, bits=ws["bits"], index_bits=ws["index_bits"], codebook=layer.codebook().detach())
            if not torch.equal(eie.unpack(), w):  # the format's round trip is exact by construction
                raise RuntimeError(f"EIE packing of layer {name!r} did not round-trip; please report this")
            rows.append({"name": name, "shape": list(w.shape), "nonzeros": int((w != 0).sum()),
                         "values": int(torch.unique(w).numel()), "dense_bytes": 4 * w.numel(),
                         "csr_bytes": CSRMatrix.pack(w).nbytes(), "eie_bytes": eie.nbytes(),
                         "huffman_bytes": eie.huffman_nbytes(), "padding": int(eie.num_entries - eie.nnz)})
    run.results["weight_sharing"] = {"bits": ws["bits"], "index_bits": ws["index_bits"], "epochs": ws["epochs"],
                                     "top1_before": before, "top1_shared": shared, "top1_tuned": tuned,
                                     "layers": rows}
    total = {k: sum(r[k] for r in rows) for k in ("dense_bytes", "csr_bytes", "eie_bytes")}
    run.say(f"top-1 {100 * before:.2f}% -> shared {100 * shared:.2f}% -> centroids tuned {100 * tuned:.2f}%; "
            f"Linear weights {total['dense_bytes']:,} B dense, {total['csr_bytes']:,} B CSR, "
            f"{total['eie_bytes']:,} B EIE ({total['dense_bytes'] / total['eie_bytes']:.1f}x)")
    _save(run)


def _recalibrate_bn(run: Run, batches: int, before: float) -> dict[str, Any]:
    """``recover.recalibrate_bn``: fresh BatchNorm statistics for the pruned model (no gradient step)."""
    from prunekit.train.bn import recalibrate_bn

    # the training loader, augmentation included: the statistics the model was trained under (un-augmented
    # batches cost the JPEG ResNet-20 3.7 points even unpruned; benchmarks/RESULTS.md)
    done = recalibrate_bn(run.model, run.train_loader, max_batches=batches)  # BatchNorm found at load
    top1 = _evaluate(run, run.model)
    run.results["recalibrate_bn"] = {"layers": done.layers, "batches": done.batches, "images": done.samples,
                                     "top1_before": before, "top1": top1}
    run.section("BatchNorm recalibration")
    run.say(f"{done.layers} BatchNorm layers re-estimated from {done.batches} batches ({done.samples} images): "
            f"top-1 {100 * before:.2f}% -> {100 * top1:.2f}%")
    _save(run)
    return {"epoch": 0, "top1": top1, "phase": "after BN recalibration"}


def _admm(run: Run, task: Any) -> None:
    """``recover.admm``: ADMM epochs towards the allocation's masks, then the hard prune (masks in force)."""
    from prunekit.train.admm import ADMM

    rc, a = run.recipe["recover"], run.recipe["recover"]["admm"]
    admm = ADMM(run.model, run.targets, run.granularity, run.allocation, rho=a["rho"], every=a["every"],
                rho_growth=a["rho_growth"], rho_max=a["rho_max"])
    run.section(f"ADMM: {a['epochs']} epochs, rho {a['rho']:g} x {a['rho_growth']:g} every {a['every']} steps "
                f"(max {a['rho_max']:g}), lr {rc['lr']:g} cosine")
    _fit(run, run.model, rc, "recovery", epochs=a["epochs"], phase="admm",
         save_each=lambda st: _save(run, st.state_dict()), task=task, pruner=admm, regularizer=admm)
    residual = admm.residual()
    run.masks = admm.hard_prune()
    top1 = _evaluate(run, run.model)
    run.results["pruning"]["sparsity"] = float(run.masks.sparsity())
    run.results["admm"] = {"epochs": a["epochs"], "rho_final": admm.rho, "residual_before_prune": residual,
                           "top1_after_hard_prune": top1}
    run.say(f"hard prune: {100 * run.masks.sparsity():.1f}% sparse, top-1 {100 * top1:.2f}% before fine-tuning "
            f"(residual {residual:.3f})")
    _save(run)


def _pruner(run: Run) -> Any:
    from prunekit import registry
    from prunekit.recipe.schema import complete_schedule
    from prunekit.schedule import Pruner

    rc = run.recipe["recover"]
    per_epoch = len(run.train_loader)
    steps = rc["epochs"] * min(per_epoch, rc["steps_per_epoch"] or per_epoch)
    final = float(getattr(run.allocation, "sparsity", 0.0))
    schedule = registry.build("schedule", complete_schedule(rc["schedule"], final, steps))
    return Pruner(run.model, run.targets, run.importance, run.granularity, run.allocation, schedule)


def verify(run: Run) -> None:
    """Masks: the zeros are where the masks say, and the sparsity is what was asked."""
    if run.masks is None:
        return
    from prunekit.masks import COUPLED_SEP

    bad = []
    for key, keep in run.masks.items():
        module, _, param = key.partition(COUPLED_SEP)
        tensor = getattr(run.model.get_submodule(module), param or run.masks.param_names.get(key, "weight"))
        if bool((tensor.detach()[~keep] != 0).any()):
            bad.append(key)
    sparsity = float(run.masks.sparsity())
    run.results["verify"] = {"masked_weights_zero": not bad, "sparsity": sparsity, "layers_with_nonzero_masked": bad}
    if bad:
        raise PrunekitError(f"verification failed: masked weights are non-zero in {', '.join(bad)}")
    run.say(f"verified: every masked weight is zero; sparsity {100 * sparsity:.2f}% of the pruned layers")


def deploy_step(run: Run) -> None:
    """Masks: choose the fastest measured kernel per layer (sparse or dense) at the deploy batch."""
    d = run.recipe["deploy"]
    if not d["enabled"] or run.masks is None:
        if run.recipe["prune"]["method"] == "channels":
            run.results["deploy"] = {"note": "channel-pruned: a smaller dense model, dense kernels"}
        return
    from prunekit.masks import clean_copy
    from prunekit.sparse import deploy

    plain = clean_copy(run.model)
    run.masks.make_permanent(plain)
    x = run.example.expand(d["batch_size"], *run.example.shape[1:]).contiguous()
    run.section(f"deploy: kernels measured per layer at batch {d['batch_size']}")
    run.deployed, rep = deploy(plain, x, repeats=d["repeats"], threads=run.recipe["threads"])
    run.deploy_report = rep
    run.results["deploy"] = {
        "batch_size": d["batch_size"], "threads": rep.threads, "dense_ms": 1e3 * rep.model_dense_s,
        "deployed_ms": 1e3 * rep.model_deployed_s, "reverted": rep.reverted,
        "layers": [{"name": c.name, "kernel": c.kernel, "dense_ms": 1e3 * c.dense_s, "chosen_ms": 1e3 * c.chosen_s,
                    "density": c.density, "dense_bytes": c.dense_bytes, "chosen_bytes": c.chosen_bytes,
                    "candidates": {k: 1e3 * v for k, v in c.times_s.items()}} for c in rep.layers]}
    run.say(rep.table())
    _save(run)


def measure_pruned(run: Run) -> None:
    """Accuracy, size and cost of the pruned model, and latency dense vs pruned, interleaved in one run."""
    from prunekit.masks import clean_copy
    from prunekit.metrics import (
        compare_latency,
        count_macs,
        count_nonzero_macs,
        count_nonzeros,
        count_params,
        layer_table,
    )

    run.results.setdefault("training", {})
    model = run.model
    top1 = _evaluate(run, model)
    plain = clean_copy(model)
    if run.masks is not None:
        run.masks.make_permanent(plain)
    final = run.deployed if run.deployed is not None else plain
    m = run.recipe["measure"]
    x = run.example.expand(m["latency_batch"], *run.example.shape[1:]).contiguous()
    lat = compare_latency({"dense": run.dense, "pruned": final}, x, warmup=3, repeats=m["latency_repeats"],
                          threads=run.recipe["threads"])
    chosen = {c.name: c for c in (run.deploy_report.layers if run.deploy_report is not None else [])
              if not run.deploy_report.reverted}
    layers = []
    weighted = set(_prunable_names(plain))
    for row in layer_table(plain, run.example):
        if row.name not in weighted or row.weight_shape is None:
            continue
        c = chosen.get(row.name)
        layers.append({
            "name": row.name, "type": row.type, "shape": list(row.weight_shape),
            "sparsity": 1.0 - row.nonzeros / row.params, "params": row.params, "nonzeros": row.nonzeros,
            "macs": row.macs, "bytes": (c.chosen_bytes + 4 * (row.params - int(np.prod(row.weight_shape))))
            if c is not None else 4 * row.params,
            "latency_share": (c.chosen_s / run.deploy_report.model_deployed_s) if c is not None else None,
            "kernel": c.kernel if c is not None else "dense"})
    params = count_params(plain)
    deployed_bytes = sum(x["bytes"] for x in layers) + 4 * (params - sum(x["params"] for x in layers))
    run.results["layers"] = layers
    run.results["summary"]["pruned"] = {
        "top1": top1, "params": params, "nonzeros": count_nonzeros(plain),
        "macs": count_macs(plain, run.example), "nonzero_macs": count_nonzero_macs(plain, run.example),
        "bytes": deployed_bytes, "latency_ms": 1e3 * lat["pruned"].median_s}
    run.results["summary"]["dense"]["latency_ms"] = 1e3 * lat["dense"].median_s
    run.results["eval"].update(latency_batch=m["latency_batch"], latency_threads=lat["dense"].threads,
                               latency_repeats=m["latency_repeats"])
    run.results["histograms"]["after"] = _histogram(plain, _prunable_names(plain), 0,
                                                    np.asarray(run.results["histograms"]["before"]["edges"]))
    s = run.results["summary"]
    run.section("summary (dense -> pruned)")
    run.say(f"top-1 {100 * s['dense']['top1']:.2f}% -> {100 * top1:.2f}%; nonzero weights {s['dense']['nonzeros']:,}"
            f" -> {s['pruned']['nonzeros']:,}; MACs {s['dense']['macs']:,} -> {s['pruned']['macs']:,}; bytes "
            f"{s['dense']['bytes']:,} -> {deployed_bytes:,}; latency (batch {m['latency_batch']}, "
            f"{m['latency_repeats']} interleaved repeats) {s['dense']['latency_ms']:.3f} -> "
            f"{s['pruned']['latency_ms']:.3f} ms")


def _probe(run: Run, val: Any) -> Any:
    """The scan's :class:`~prunekit.probe.Probe` on ``val``; with ``prune.search.recalibrate_bn: N`` each
    probe first re-estimates the BatchNorm statistics downstream of the cut from N augmented training
    batches, the same batches on every run with this seed (a fresh loader, the global random state
    forked), so a stopped scan resumes with the same probes."""
    from prunekit.data.choose import make_loaders
    from prunekit.probe import Probe
    from prunekit.train.bn import fixed_batches

    n = run.recipe["prune"]["search"]["recalibrate_bn"]
    if not n:
        return Probe(run.model, val)
    data, seed = run.recipe["data"], run.recipe["seed"]
    train, _ = make_loaders(dataset_of(run.recipe), data["path"], batch_size=data["batch_size"],
                            normalize=run.normalize, limit=data["limit"], seed=seed, augment=True)
    batches = fixed_batches(train, n, seed)
    run.say(f"each probe re-estimates the BatchNorm statistics after the cut from {len(batches)} augmented "
            f"training batches ({sum(len(b[1]) for b in batches)} images)")
    return Probe(run.model, val, recalibrate=batches)


def _channel_sensitivity(run: Run, val: Any) -> None:
    from prunekit.search.channels import ratios_for_macs, scan_channels

    s = run.recipe["prune"]["search"]
    t0 = time.perf_counter()
    run.model.eval()
    run.section(f"channel sensitivity scan: each group x {len(s['ratios'])} ratios on {s['images']} training images")
    importance = _channel_importance(run)
    curves = scan_channels(run.model, run.example, _probe(run, val), s["ratios"], importance,
                           exclude=_channel_exclude(run), workers=s["workers"], pool=s["pool"],
                           state_path=run.out / SCAN_STATE)
    (run.out / SCAN_STATE).unlink(missing_ok=True)
    target = _macs_kept(run)
    if run.recipe["prune"]["target"] == "latency":  # the share of the measured latency kept
        from prunekit.metrics import count_macs
        from prunekit.search.channels import ratios_for_latency

        b = run.recipe["measure"]["latency_batch"]
        x = run.example.expand(b, *run.example.shape[1:]).contiguous()
        ratios, small, plan, reached = ratios_for_latency(curves, run.model, x, target, importance,
                                                          exclude=_channel_exclude(run))
        kept = {"latency_kept": reached,
                "macs_kept": count_macs(small, run.example) / count_macs(run.model, run.example)}
    else:
        ratios, small, plan, reached = ratios_for_macs(curves, run.model, run.example, target, importance,
                                                       exclude=_channel_exclude(run))
        kept = {"macs_kept": reached}
    run.searched = (small, plan)
    seconds = time.perf_counter() - t0
    run.results["search"] = {"method": "sensitivity", "metric": "top1", "ratios_tested": list(curves.ratios),
                             "baseline": curves.baseline, "curves": {k: list(v) for k, v in curves.values.items()},
                             "ratios": ratios, "seconds": seconds, **kept, "target": target,
                             "budget": run.recipe["prune"]["target"], "recalibrate_bn": s["recalibrate_bn"]}
    run.say(f"scan took {seconds:.1f}s; per-group ratios keeping "
            + ", ".join(f"{v:.3f} of the {k.split('_')[0].replace('macs', 'MACs')}" for k, v in kept.items()) + ": "
            + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))


def netadapt_search(run: Run) -> None:
    """NetAdapt: latency-driven channel removal to ``prune.search.latency_ratio`` (measured)."""
    from prunekit.probe import Probe
    from prunekit.search.netadapt import netadapt
    from prunekit.train import TrainConfig, fit

    s = run.recipe["prune"]["search"]
    val = _validation(run)
    short = None
    if s["ft_steps"]:
        cfg = TrainConfig(epochs=1, lr=run.recipe["recover"]["lr"], seed=run.recipe["seed"], progress=False,
                          max_steps_per_epoch=s["ft_steps"])

        def short(m: nn.Module) -> None:
            fit(m, run.train_loader, None, cfg)
            m.eval()

    run.section(f"NetAdapt: to {s['latency_ratio']:.2f} of the dense latency (batch {run.example.shape[0]}, measured)")
    t0 = time.perf_counter()
    res = netadapt(run.model.eval(), run.example, Probe(run.model, val), latency_ratio=s["latency_ratio"],
                   step=s["step"], short_term=short, importance=_channel_importance(run),
                   exclude=_channel_exclude(run), threads=run.recipe["threads"],
                   state_path=run.out / "netadapt.state",
                   progress=lambda r: run.say(f"iteration {r.iteration}: {r.group} -{r.removed}, latency "
                                              f"{r.latency_ratio:.3f} of dense, val top-1 {100 * r.accuracy:.2f}%"))
    if res.plan is None:
        raise PrunekitError("NetAdapt removed nothing: every channel group is at its minimum or excluded")
    run.searched = (res.model, res.plan)
    run.results["search"] = {"method": "netadapt", "metric": "top1", "seconds": time.perf_counter() - t0,
                             "target": s["latency_ratio"], "reached": res.reached,
                             "latency_ratio": res.latency_ratio,
                             "iterations": json.loads(res.to_json())["iterations"]}
    run.say(f"NetAdapt: {len(res.iterations)} iterations, measured latency {res.latency_ratio:.3f} of dense"
            + ("" if res.reached else " (target NOT reached: every group at its minimum)"))


def amc_search_step(run: Run) -> None:
    """AMC: DDPG over per-layer channel ratios under the MACs budget (accuracy without fine-tuning)."""
    from prunekit.probe import Probe
    from prunekit.search.amc import amc_search
    from prunekit.structure import prune_channels

    s = run.recipe["prune"]["search"]
    val = _validation(run)
    target = _macs_kept(run)
    run.section(f"AMC: {s['episodes']} episodes ({s['warmup']} warm-up), keep {target:.2f} of the MACs")
    t0 = time.perf_counter()
    importance = _channel_importance(run)
    res = amc_search(run.model.eval(), run.example, Probe(run.model, val), macs_ratio=target, importance=importance,
                     exclude=_channel_exclude(run), episodes=s["episodes"], warmup=s["warmup"],
                     seed=run.recipe["seed"], checkpoint_path=run.out / "amc.state")
    small, plan, _ = prune_channels(run.model, run.example, res.allocation(), importance, target="channels",
                                    exclude=_channel_exclude(run), verify=False)
    run.searched = (small, plan)
    run.results["search"] = {"method": "amc", "metric": "top1", "seconds": time.perf_counter() - t0,
                             "ratios": {k: float(v) for k, v in res.ratios.items()}, "macs_kept": res.macs_ratio,
                             "target": target, "best_val_top1": res.accuracy}
    run.say(f"AMC: best policy keeps {res.macs_ratio:.3f} of the MACs, val top-1 {100 * res.accuracy:.2f}%")


# search methods by name: each takes the Run (model, components, data) and sets run.allocation (and
# run.results["search"] for the report). A new method (AMC, NetAdapt) plugs in with register_search.
SEARCHES: dict[str, Callable[[Run], None]] = {"sensitivity": sensitivity_search, "netadapt": netadapt_search,
                                              "amc": amc_search_step}
CHANNEL_ONLY = {"netadapt", "amc"}  # searches that remove channels (need prune.method: channels)


def register_search(name: str, method: Callable[[Run], None]) -> None:
    """Make ``prune.search.method: NAME`` run ``method(run)``."""
    SEARCHES[name] = method


STEPS: list[tuple[str, Callable[[Run], None]]] = [
    ("setup", setup),
    ("model", build_model),
    ("train", train_dense),
    ("measure dense", measure_dense),
    ("search", search),
    ("prune", prune_step),
    ("recover", recover),
    ("share weights", share_weights),
    ("verify", verify),
    ("deploy", deploy_step),
    ("measure pruned", measure_pruned),
]
STEPS_BY_KIND: dict[str, list[tuple[str, Callable[[Run], None]]]] = {"pipeline": STEPS, "kernels": KERNEL_STEPS}


# ----------------------------------------------------------------------------------- the run folder


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _machine(threads: int) -> dict[str, Any]:
    import os

    from prunekit import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "prunekit": __version__,
            "threads": threads, "platform": f"{platform.system()}-{platform.machine()}", "cpu_count": os.cpu_count()}


def _title(recipe: Recipe) -> str:
    if recipe.kind == "kernels":
        return kernels_title(recipe.data)
    if recipe["title"]:
        return recipe["title"]
    p = recipe["prune"]
    return f"{recipe['model']['name']}: {p['method']}, {p['allocation']}"


def prepare_folder(out: Path, force: bool = False, resume: Recipe | None = None) -> Path:
    """Create the run folder; an existing one must be empty or (with ``force``) an earlier run folder.
    With ``resume`` (the recipe to continue) it must hold an unfinished run of that same recipe."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run folder {out} is a file; choose another --out")
    if resume is not None:
        _check_resumable(out, resume)
        return out
    if out.is_dir() and any(out.iterdir()):
        if not (out / "results.json").is_file():
            raise ConfigError(f"run folder {out} exists and is not a prunekit run folder (no results.json); "
                              "choose another --out")
        if not force:
            raise ConfigError(f"run folder {out} holds an earlier run; pass --force to replace it, --resume to "
                              "continue it if it stopped, or choose another --out")
        for path in out.glob("fit-*.state"):  # the replaced run's trainings: never resumed into this one
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_resumable(out: Path, recipe: Recipe) -> None:
    """``out`` holds a run of ``recipe`` that did not complete, else a ConfigError naming the fix."""
    from prunekit.recipe.core import load

    results = out / "results.json"
    if not results.is_file():
        raise ConfigError(f"--resume: {out} holds no earlier run (no results.json); drop --resume to start one")
    try:
        status = json.loads(results.read_text()).get("status", "")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"--resume: {results} cannot be read ({exc}); run afresh with --force") from None
    if status == "complete":
        raise ConfigError(f"--resume: the run in {out} completed, there is nothing to continue; pass --force to run "
                          "it again")
    if not (out / "recipe.yaml").is_file():
        raise ConfigError(f"--resume: {out} has no recipe.yaml; run afresh with --force")
    earlier = load(out / "recipe.yaml", check_files=False).data
    differ = _differences(earlier, recipe.data)
    if differ:
        raise ConfigError(f"--resume: the recipe differs from the interrupted run's ({out / 'recipe.yaml'}) at "
                          f"{', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}; resume with that recipe "
                          f"(prunekit run {out / 'recipe.yaml'} --out {out} --resume) or run afresh with --force")


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two recipe mappings differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".") or "(top level)"]


def default_folder(recipe: Recipe, root: Path = Path("runs"), resume: bool = False) -> Path:
    """``outputs.dir``, else ``runs/<recipe name>``, numbered (``-2``, ``-3``...) so no run is overwritten;
    with ``resume``, the last of those folders that exists."""
    if recipe["outputs"]["dir"]:
        return Path(recipe["outputs"]["dir"])
    base = root / recipe.name
    out, i = base, 1
    while out.exists() and any(out.iterdir()):
        i += 1
        last, out = out, base.with_name(f"{base.name}-{i}")
    return last if resume and i > 1 else out


def _finish(run: Run, status: str) -> None:
    from prunekit.io import atomic_write_text

    run.results["status"] = status
    run.results["finished"] = _now()
    if status == "complete":  # a complete run cannot be resumed: its training states go
        for path in run.out.glob("fit-*.state"):
            path.unlink()
    run.results["artifacts"] = {k: v for k, v in {"checkpoint": "model.pt", "recipe": "recipe.yaml",
                                                   "log": "log.txt"}.items() if (run.out / v).exists() or k != "checkpoint"}
    atomic_write_text(run.out / "results.json", json.dumps(_jsonable(run.results), indent=1, allow_nan=True) + "\n")
    atomic_write_text(run.out / "log.txt", "\n".join(run.log_lines).lstrip("\n") + "\n")
    if run.recipe["outputs"]["report"]:
        from prunekit.report import render

        html, _ = render(run.out)
        run.echo(f"report: {html}")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj


def run_recipe(recipe: Recipe, out: str | Path, *, force: bool = False, progress: bool | None = None,
               echo: Callable[[str], None] = print, resume: bool = False) -> dict[str, Any]:
    """Run ``recipe`` into the folder ``out``; returns the results (also in ``out/results.json``).

    ``progress``: progress bars (default: ``outputs.progress``, ``auto`` = on when stderr is a
    terminal). An error or Ctrl-C still writes results.json, the log and a partial report whose
    ``status`` says where the run stopped, then re-raises.

    ``resume``: continue the unfinished run of this same recipe in ``out``. Every step runs again,
    but each training (dense training, ADMM, fine-tuning) starts after its last finished epoch,
    from the weights, masks, optimizer, schedule and RNG states saved then (bit-exact), and
    searches continue from their state files; what ran before is recomputed (deterministic
    criteria give the same cut; a different one is refused). Lottery rounds start over.
    """
    from prunekit.io import atomic_write_text

    out = prepare_folder(Path(out), force, recipe if resume else None)
    mode = recipe["outputs"]["progress"]
    if progress is None:
        progress = mode == "on" or (mode == "auto" and sys.stderr.isatty())
    run = Run(recipe, out, progress=bool(progress), echo=echo, resume=resume)
    if resume:
        earlier = json.loads((out / "results.json").read_text())
        log = out / "log.txt"
        run.log_lines = (log.read_text().rstrip("\n").splitlines() if log.is_file() else []) + [""]
        run.say(f"== resumed {_now()}: the earlier run stopped with {earlier.get('status', 'no status')!r} ==")
        run.results["resumed"] = earlier.get("resumed", []) + [{"at": _now(), "earlier_status": earlier.get("status")}]
    run.results.update({"format": RESULTS_FORMAT, "version": 1, "title": _title(recipe), "recipe": "recipe.yaml",
                        "source": recipe.source, "status": "running", "started": _now(),
                        "machine": _machine(recipe["threads"]), "steps": []})
    atomic_write_text(out / "recipe.yaml", recipe.to_yaml())
    threads = torch.get_num_threads()
    status = "complete"
    try:
        for name, step in STEPS_BY_KIND[recipe.kind]:
            t0 = time.perf_counter()
            entry = {"name": name, "seconds": 0.0, "status": "running"}
            run.results["steps"].append(entry)
            step(run)
            entry.update(seconds=time.perf_counter() - t0, status="done")
    except KeyboardInterrupt:
        status = f"interrupted during step {name!r}"
        entry.update(seconds=time.perf_counter() - t0, status="interrupted")
        raise
    except Exception as exc:
        status = f"failed during step {name!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        entry.update(seconds=time.perf_counter() - t0, status="failed")
        raise
    finally:
        torch.set_num_threads(threads)
        if status != "complete":
            done = [s["name"] for s in run.results["steps"] if s["status"] == "done"]
            run.say(f"\nrun stopped: {status}; steps done: {', '.join(done) or 'none'}; "
                    + ("model.pt is the last good checkpoint" if (out / "model.pt").exists() else "no model written"))
        _finish(run, status)
    return run.results

"""The recipe schema: every key, its type, default, range and meaning, checked completely on load.

A recipe is a YAML mapping of sections (``model``, ``data``, ``train``, ``prune``, ``recover``,
``deploy``, ``measure``, ``outputs``). :func:`validate` walks it against :data:`SCHEMA`, fills in
every default, and collects *all* the mistakes (unknown keys with close matches, wrong types,
out-of-range values, unknown components) before raising one :class:`RecipeError`, each line of
which names the file, the line, the key's path, what it got and what is allowed.

Components (criterion, granularity, allocation, schedule) are built through the one typed
registry (:mod:`prunekit.registry`), so a recipe takes exactly what the CLI takes: a spec string
(``"magnitude:p=2"``) or a mapping (``{name: magnitude, p: 2}``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prunekit.errors import ConfigError, close_matches


class RecipeError(ConfigError):
    """A recipe is wrong; ``problems`` lists ``(path, line, message)`` for each mistake found."""

    def __init__(self, source: str, problems: list[tuple[str, int | str | None, str]]) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: (not isinstance(p[1], int), p[1] if isinstance(p[1], int) else 0))
        lines = [f"{f'{source} ({line})' if isinstance(line, str) else f'{source}:{line or chr(63)}'}: {path or '(top level)'}: {msg}"
                 for path, line, msg in self.problems]
        head = f"recipe {source} has {len(lines)} problem{'s' if len(lines) > 1 else ''}"
        super().__init__(head + ":\n  " + "\n  ".join(lines) if len(lines) > 1 else lines[0])


@dataclass(frozen=True)
class Key:
    """One recipe key.

    ``type``: ``int``, ``float``, ``str``, ``bool``, ``path``, ``section`` (a nested mapping of
    ``keys``), ``list`` (of ``item``), ``ratios`` (a mapping glob -> ratio in [0, 1)), ``options``
    (a mapping name -> number / string / bool), or
    ``component:KIND`` (a registry spec, string or mapping). ``low`` / ``high`` bound numbers
    (``high_open``: strictly below ``high``); ``optional``: ``null`` allowed.
    """

    type: str
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    optional: bool = True
    keys: Mapping[str, Key] | None = None
    item: str = "str"

    def describe(self) -> str:
        kind = self.type if self.type != "section" else "mapping"
        parts = [kind]
        if self.choices:
            parts.append(f"one of {list(self.choices)}")
        if self.low is not None or self.high is not None:
            hi = ")" if self.high_open else "]"
            parts.append(f"in [{self.low if self.low is not None else '-inf'}, "
                         f"{self.high if self.high is not None else 'inf'}{hi}")
        return ", ".join(parts)


def _section(keys: dict[str, Key], help: str = "", optional: bool = False) -> Key:
    return Key("section", None if optional else {}, help, keys=keys, optional=optional)


RATIO = {"low": 0.0, "high": 1.0, "high_open": True}


def _regularizer(during: str) -> Key:
    return _section({
        "name": Key("str", None, "a registered loss term (prunekit.recipe.pipeline.REGULARIZERS): l1, l2, "
                    "group_lasso, slimming", optional=False),
        "strength": Key("float", None, "its weight in the loss", low=0.0, optional=False),
        "granularity": Key("component:granularity", None, "group_lasso: the groups (default: prune.granularity "
                           "for masks, output channels for channels)"),
    }, f"a sparsity-inducing loss term added while {during}", optional=True)

SCHEMA: dict[str, Key] = {
    "version": Key("int", 1, "recipe format version", choices=(1,), optional=False),
    "title": Key("str", None, "a name for the run (default: the model and the method)"),
    "seed": Key("int", 0, "seeds the data order, the initialisation and every random choice", low=0),
    "threads": Key("int", 1, "torch CPU threads for the whole run", low=1),
    "model": _section({
        "name": Key("str", None, "registered model name (prunekit.models.available())", optional=False),
        "checkpoint": Key("path", None, "a prunekit checkpoint to start from"),
        "config": Key("options", {}, "keyword options of the model's builder, e.g. {width: 0.25} for vgg11_bn "
                      "(saved in the checkpoint)"),
        "pretrained": Key("path", None, "a plain state-dict file to load into the model"),
    }, "what to prune"),
    "data": _section({
        "dataset": Key("str", None, "data set (default: the one the model name implies)",
                       choices=("cifar10", "mnist", "digits")),
        "path": Key("path", None, "cifar10 .npz / folder or the MNIST IDX folder (default: $PRUNEKIT_DATA "
                    "or ../shared/data)"),
        "normalize": Key("str", None, "cifar10 statistics", choices=("cifar", "imagenet")),
        "batch_size": Key("int", 128, "training and evaluation batch size", low=1),
        "limit": Key("int", None, "class-balanced subsets of this many images of each split", low=1),
        "eval_images": Key("int", None, "evaluate on a class-balanced subset of the test split", low=1),
    }, "the data to calibrate, fine-tune and measure on"),
    "train": _section({
        "epochs": Key("int", 0, "train the dense model first (0: use the weights as loaded)", low=0),
        "lr": Key("float", 0.05, "peak learning rate (cosine decay)", low=0.0),
        "weight_decay": Key("float", 5e-4, low=0.0),
        "optimizer": Key("str", "sgd", choices=("sgd", "adamw")),
        "steps_per_epoch": Key("int", None, "stop each epoch after this many steps (default: the whole split)",
                               low=1),
        "regularizer": _regularizer("training the dense model (e.g. network slimming: {name: slimming, "
                                    "strength: 1e-4})"),
    }, "dense training before pruning"),
    "prune": _section({
        "method": Key("str", "masks", "masks (zeros kept in force), channels (a physically smaller model) or "
                      "none (a dense baseline: train / fine-tune and measure only)", choices=("masks", "channels", "none")),
        "granularity": Key("component:granularity", "element", "masks: element, vector, kernel, channel, "
                           "block, nm, pattern, lb"),
        "criterion": Key("component:criterion", "l1", "how weights are scored"),
        "allocation": Key("component:allocation", None, "how much where, e.g. {name: global, sparsity: 0.8} "
                          "(required unless method is none)"),
        "layers": Key("ratios", None, "per-layer ratios (glob -> ratio) that override the allocation"),
        "include": Key("list", None, "prune only layers matching these globs"),
        "exclude": Key("list", None, "never prune layers matching these globs (channels: any module, e.g. a "
                       "BatchNorm whose channels must stay)"),
        "types": Key("list", ["conv", "linear"], "module types to prune (masks)", choices=("conv", "linear")),
        "target": Key("str", "params", "channels: what the ratio removes (latency: measured at "
                      "measure.latency_batch, with a sensitivity search only)",
                      choices=("params", "macs", "channels", "latency")),
        "min_keep": Key("float", 0.0, "channels: keep at least this fraction of every group", **RATIO),
        "round_to": Key("int", 1, "channels: kept channels a multiple of this", low=1),
        "reconstruct": _section({
            "selection": Key("str", "lasso", "which input channels of each cut conv stay: lasso (He et al. 2017), "
                             "greedy (least output error, one channel at a time) or l1 (filter norm)",
                             choices=("lasso", "greedy", "l1")),
            "positions": Key("int", 10, "output positions sampled per calibration image", low=1),
        }, "channels: regression channel pruning (He et al. 2017): the allocation sets how many input channels "
           "each cut conv keeps, the selection picks them from calibration samples (inputs from the pruned "
           "network, targets from the dense one), and least squares refits the conv's weights", optional=True),
        "calibration_batches": Key("int", 8, "training batches for data-driven criteria", low=1),
        "search": _section({
            "method": Key("str", "sensitivity", "a registered search (prunekit.recipe.pipeline.SEARCHES)",
                          optional=False),
            "ratios": Key("list", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], "ratios each layer is probed at",
                          item="float"),
            "images": Key("int", 500, "validation images (from the training split) per probe", low=1),
            "workers": Key("int", 1, "sensitivity: score the layers in this many worker processes (threads "
                           "shared out)", low=1),
            "pool": Key("str", "process", "sensitivity: where the workers run, a pool of "
                        "prunekit.parallel.POOLS (process, or ray with prunekit[ray])"),
            "recalibrate_bn": Key("int", 0, "sensitivity: score every probe after re-estimating the BatchNorm "
                                  "statistics downstream of the cut from this many augmented training batches "
                                  "(adaptive BN, Li et al. 2020; the model's own statistics come back after "
                                  "each probe); 0: the dense model's statistics", low=0),
            "latency_ratio": Key("float", 0.7, "netadapt: measured latency / dense latency to reach", low=0.01,
                                 high=1.0, high_open=True),
            "step": Key("float", 0.05, "netadapt: latency cut asked of each iteration (fraction)", low=0.001,
                        high=1.0, high_open=True),
            "ft_steps": Key("int", 0, "netadapt: short-term fine-tune steps per candidate", low=0),
            "episodes": Key("int", 120, "amc: episodes", low=1),
            "warmup": Key("int", 40, "amc: random warm-up episodes", low=0),
        }, "search per-layer ratios, then prune with them (channels: the allocation's sparsity is the share of "
           "MACs removed)", optional=True),
    }, "how to prune"),
    "recover": _section({
        "epochs": Key("int", 0, "fine-tuning epochs after pruning (masks in force / the smaller model)", low=0),
        "lr": Key("float", 0.005, "peak fine-tuning learning rate (cosine decay)", low=0.0),
        "weight_decay": Key("float", 5e-4, low=0.0),
        "optimizer": Key("str", "sgd", choices=("sgd", "adamw")),
        "steps_per_epoch": Key("int", None, "stop each epoch after this many steps (default: the whole split)",
                               low=1),
        "recalibrate_bn": Key("int", 0, "re-estimate every BatchNorm's running statistics from this many "
                              "training batches (augmented as in training) right after the one-shot prune (after ADMM's "
                              "hard prune), before fine-tuning; 0: off", low=0),
        "schedule": Key("component:schedule", None, "masks: prune gradually while fine-tuning, e.g. "
                        "{name: agp, every: 10} (final and end default to the allocation's sparsity and 2/3 of "
                        "the steps); channels: {name: iterative, rounds: N} reaches the cut in N physical cuts, "
                        "each removing the same share of what is left in every group and followed by its share of "
                        "recover.epochs (the last round gets the remainder; fresh cosine each round)"),
        "distill": _section({
            "temperature": Key("float", 4.0, low=1e-6),
            "alpha": Key("float", 0.7, "weight of the distillation term", low=0.0, high=1.0),
        }, "distil from the dense model while fine-tuning", optional=True),
        "regularizer": _regularizer("fine-tuning"),
        "admm": _section({
            "epochs": Key("int", 1, "ADMM training epochs before the hard prune (recover.epochs of masked "
                          "fine-tuning follow)", low=1),
            "rho": Key("float", 1e-3, "initial penalty", low=1e-12),
            "rho_growth": Key("float", 1.3, "rho *= this at each Z-step", low=1.0),
            "rho_max": Key("float", 1.0, low=1e-12),
            "every": Key("int", 100, "optimizer steps between Z- and U-steps", low=1),
        }, "masks: ADMM pruning (Zhang et al. 2018) instead of one-shot: train towards the allocation's masks, "
           "then hard-prune", optional=True),
        "weight_sharing": _section({
            "bits": Key("int", 4, "codebook index bits: 2**bits shared values per layer, code 0 kept for 0.0",
                        low=1, high=8),
            "index_bits": Key("int", 4, "EIE relative-index bits (a longer run of zeros costs a padding entry)",
                              low=1, high=16),
            "epochs": Key("int", 1, "centroid fine-tuning epochs (each centroid moves by the summed gradient of "
                                    "its weights; 0: none)", low=0),
            "lr": Key("float", 1e-4, "Adam learning rate of the centroids", low=0.0),
        }, "after the fine-tune: k-means weight sharing of every Linear layer (Deep Compression), the "
           "centroids fine-tuned, the shared values written into the weights and each layer's EIE storage "
           "measured", optional=True),
        "lottery": _section({
            "rounds": Key("int", 3, "prune-and-retrain rounds after the dense training (each prunes the same "
                          "fraction of the weights left, ending at the allocation's sparsity)", low=1),
            "rewind_step": Key("int", 0, "survivors go back to their values (and the optimizer and schedule) at "
                               "this step; 0: the initialisation", low=0),
            "control": Key("bool", False, "also train the last round's masks from a fresh random initialisation"),
        }, "masks: lottery tickets (Frankle & Carbin 2019; rewinding: Frankle et al. 2019), each round trained "
           "like train (train.epochs from the model's initial weights)", optional=True),
    }, "getting the accuracy back"),
    "deploy": _section({
        "enabled": Key("bool", True, "masks: pick the fastest measured kernel per layer"),
        "batch_size": Key("int", 1, "batch the kernels are chosen for", low=1),
        "repeats": Key("int", 10, "timed repeats per candidate", low=1),
    }, "sparse kernels"),
    "measure": _section({
        "latency_batch": Key("int", 1, "batch size of the dense-vs-pruned latency", low=1),
        "latency_repeats": Key("int", 20, "interleaved repeats", low=1),
        "histogram_bins": Key("int", 60, low=2),
    }, "what the report measures"),
    "outputs": _section({
        "dir": Key("path", None, "run folder (default runs/<recipe name>; the CLI's --out wins)"),
        "report": Key("bool", True, "write report.html and report.md"),
        "tensorboard": Key("bool", False, "log fine-tuning to TensorBoard (pip install tensorboard)"),
        "progress": Key("str", "auto", "progress bars: auto (on a terminal), on, off", choices=("auto", "on", "off")),
    }, "what the run writes"),
}


Problems = list[tuple[str, str]]  # (path, message)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)


def _scalar(key: Key, value: Any, path: str, problems: Problems) -> Any:
    t = key.type if key.type != "path" else "str"
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
    }[t]
    if not ok:
        problems.append((path, f"expected {key.describe()}, got {_type_name(value)} {value!r}"))
        return key.default
    if t == "float":
        value = float(value)
        if not math.isfinite(value):
            problems.append((path, f"expected a finite number, got {value!r}"))
            return key.default
    if key.choices is not None and value not in key.choices:
        problems.append((path, f"expected one of {list(key.choices)}, got {value!r}; "
                               f"{close_matches(str(value), [str(c) for c in key.choices])}"))
        return key.default
    if t in ("int", "float") and not _in_range(key, value):
        problems.append((path, f"expected {key.describe()}, got {value!r}"))
        return key.default
    if t == "str" and key.type == "path" and not value.strip():
        problems.append((path, "expected a path, got an empty string"))
        return key.default
    return value


def _in_range(key: Key, value: float) -> bool:
    if key.low is not None and value < key.low:
        return False
    if key.high is not None and (value >= key.high if key.high_open else value > key.high):
        return False
    return True


def _component(kind: str, value: Any, path: str, problems: Problems) -> Any:
    from prunekit import registry

    if not isinstance(value, (str, Mapping)):
        problems.append((path, f"expected a {kind} name, 'name:key=value,...' or a mapping with 'name', "
                               f"got {_type_name(value)} {value!r}"))
        return None
    try:
        registry.build(kind, complete_schedule(value) if kind == "schedule" else value)
    except ConfigError as exc:
        where = path
        if isinstance(value, Mapping):  # point at the parameter the message names, when it does
            for k in value:
                if k != "name" and (f"parameter {k}" in str(exc) or f"parameter {k!r}" in str(exc)
                                    or f"{k} must" in str(exc) or f"'{k}'" in str(exc)):
                    where = _join(path, str(k))
                    break
        problems.append((where, str(exc)))
    return dict(value) if isinstance(value, Mapping) else value


def schedule_spec(value: Any) -> tuple[Any, dict[str, Any]]:
    """A recipe's schedule spec (``{name: agp, every: 10}`` or ``"agp(every=10)"``) as its name and the keys given."""
    from prunekit import registry

    name, given = (value.get("name"), dict(value)) if isinstance(value, Mapping) else registry.parse_spec(value)
    return name, {k: v for k, v in dict(given).items() if k != "name"}


def complete_schedule(value: Any, final: float = 0.5, steps: int = 150) -> dict[str, Any]:
    """A recipe's schedule spec as a mapping, with what the run fills in: ``final`` / ``sparsity`` (the
    allocation's sparsity), ``end`` (two thirds of the ``steps``), ``rounds`` / ``every``. Given keys win.
    Loading checks the spec with placeholder values; the run builds it with the real ones."""
    name, given = schedule_spec(value)
    filled = {"agp": {"final": final, "end": max(1, 2 * steps // 3)}, "oneshot": {"sparsity": final},
              "iterative": {"sparsity": final, "rounds": 3, "every": max(1, steps // 4)}}.get(str(name), {})
    return {**filled, **{k: v for k, v in given.items() if k != "name"}, "name": name}


def _ratios(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, Mapping):
        problems.append((path, f"expected a mapping of layer glob -> ratio, got {_type_name(value)} {value!r}"))
        return None
    out = {}
    for k, v in value.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) < 1.0:
            problems.append((_join(path, str(k)), f"expected a ratio in [0, 1), got {v!r}"))
            continue
        out[str(k)] = float(v)
    return out


def _options(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, Mapping):
        problems.append((path, f"expected a mapping of option -> number / string / bool, got {_type_name(value)} "
                               f"{value!r}"))
        return {}
    out = {}
    for k, v in value.items():
        if not isinstance(v, (int, float, str, bool)):
            problems.append((_join(path, str(k)), f"expected a number, string or bool, got {_type_name(v)} {v!r}"))
            continue
        out[str(k)] = v
    return out


def _list(key: Key, value: Any, path: str, problems: Problems) -> Any:
    if isinstance(value, str) and key.item == "str":
        value = [value]
    if not isinstance(value, list):
        problems.append((path, f"expected a list of {key.item}s, got {_type_name(value)} {value!r}"))
        return key.default
    item = Key(key.item, choices=key.choices)
    return [_scalar(item, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]


def check_section(keys: Mapping[str, Key], data: Any, path: str, problems: Problems) -> dict[str, Any]:
    """``data`` checked against ``keys`` with defaults filled in; mistakes appended to ``problems``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.append((path, f"expected a mapping of {', '.join(keys)}, got {_type_name(data)} {data!r}"))
        data = {}
    for k in data:
        if k not in keys:
            problems.append((_join(path, str(k)), f"unknown key; {path or 'a recipe'} takes: {', '.join(keys)}; "
                                                  f"{close_matches(str(k), list(keys))}"))
    out: dict[str, Any] = {}
    for name, key in keys.items():
        where = _join(path, name)
        if name not in data:
            if not key.optional and key.default is None and key.type != "section":
                problems.append((where, f"missing; expected {key.describe()}" + (f" ({key.help})" if key.help else "")))
            out[name] = check_section(key.keys, {}, where, problems) if (key.type == "section" and key.default
                                                                        is not None) else _copy(key.default)
            continue
        value = data[name]
        if value is None:
            if not key.optional:
                problems.append((where, f"must not be null; expected {key.describe()}"))
            out[name] = None
        elif key.type == "section":
            out[name] = check_section(key.keys, value, where, problems)
        elif key.type.startswith("component:"):
            out[name] = _component(key.type.split(":", 1)[1], value, where, problems)
        elif key.type == "ratios":
            out[name] = _ratios(value, where, problems)
        elif key.type == "options":
            out[name] = _options(value, where, problems)
        elif key.type == "list":
            out[name] = _list(key, value, where, problems)
        else:
            out[name] = _scalar(key, value, where, problems)
    return out


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value

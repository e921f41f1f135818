"""Reading a recipe: safe YAML with line numbers, the schema, then checks against the model and data.

>>> r = loads("model: {name: digits_cnn}\\nprune: {allocation: {name: global, sparsity: 0.8}}")
>>> r["prune"]["allocation"], r["recover"]["epochs"], r["data"]["batch_size"]
({'name': 'global', 'sparsity': 0.8}, 0, 128)
>>> loads("model: {name: digits_cnn}\\nprune:\\n  allocation: global:sparsity=0.8\\n  criterium: l1")
Traceback (most recent call last):
...
prunekit.recipe.schema.RecipeError: <string>:4: prune.criterium: unknown key; prune takes: ...; did you mean: 'criterion'...
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError, close_matches
from prunekit.recipe.kernels import KERNEL_SCHEMA
from prunekit.recipe.kernels import cross_checks as kernel_checks
from prunekit.recipe.schema import SCHEMA, RecipeError, check_section

DEFAULT_NAME = "default"
SCHEMAS = {"pipeline": SCHEMA, "kernels": KERNEL_SCHEMA}  # recipe kind -> its keys


def kind_of(data: Any) -> str:
    """A recipe's kind: ``"kernels"`` when it has a top-level ``kernels`` section, else ``"pipeline"``."""
    return "kernels" if isinstance(data, Mapping) and "kernels" in data else "pipeline"


@dataclass(frozen=True)
class Recipe:
    """A checked recipe: ``data`` holds every key with its default filled in; ``lines`` maps key
    paths (``"prune.allocation.sparsity"``) to their line in ``source``."""

    data: dict[str, Any]
    source: str = "<string>"
    lines: dict[str, int | str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    @property
    def kind(self) -> str:
        """``"kernels"`` for a kernel benchmark (a top-level ``kernels`` section), else ``"pipeline"``."""
        return kind_of(self.data)

    @property
    def name(self) -> str:
        """The recipe's file stem (``default`` for the embedded one)."""
        return DEFAULT_NAME if self.source == "<default>" else Path(self.source).stem

    def line(self, path: str) -> int | str | None:
        """The line of ``path`` in the file, or of its nearest parent that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path.rpartition(".")[0]
        return None

    def error(self, *problems: tuple[str, str]) -> RecipeError:
        """A :class:`RecipeError` for ``(path, message)`` pairs, with their line numbers."""
        return RecipeError(self.source, [(p, self.line(p), m) for p, m in problems])

    def to_yaml(self) -> str:
        """The resolved recipe (every default written out) as YAML; loading it gives the same recipe."""
        import yaml

        head = (f"# resolved from {self.source} by prunekit: every key, defaults filled in.\n"
                "# `prunekit run THIS_FILE` repeats the run.\n")
        return head + yaml.safe_dump(self.data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _yaml() -> Any:
    if importlib.util.find_spec("yaml") is None:
        raise ConfigError("reading recipes needs PyYAML: pip install pyyaml (or pip install prunekit[run])")
    import yaml

    return yaml


def parse(text: str, source: str = "<string>") -> tuple[Any, dict[str, int]]:
    """Safe YAML -> (plain data, key path -> line). Duplicate keys and Python tags are errors."""
    yaml = _yaml()
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[str, int] = {}
        dupes: list[tuple[str, int | None, str]] = []
        _walk(node, "", lines, dupes)
        if dupes:
            raise RecipeError(source, dupes)
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        text = str(exc.problem or exc)
        if "constructor for the tag" in text:
            text = (f"the tag in {text.split('tag ')[-1]} is not allowed: a recipe holds plain values only "
                    "(nothing in it is ever run)")
        else:
            text = f"not valid YAML: {text}" + (f" ({exc.context})" if exc.context else "")
        raise RecipeError(source, [("", line, text)]) from None
    except yaml.YAMLError as exc:
        raise RecipeError(source, [("", None, f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()


def _walk(node: Any, path: str, lines: dict[str, int], dupes: list) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            where = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in seen:
                dupes.append((where, line, f"duplicate key (first given on line {seen[key]}); give each key once"))
            seen[key] = line
            lines[where] = line
            _walk(value_node, where, lines, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{path}[{i}]"] = item.start_mark.line + 1
            _walk(item, f"{path}[{i}]", lines, dupes)


def apply_overrides(data: Any, overrides: Sequence[str], lines: dict[str, Any]) -> Any:
    """``["prune.allocation.sparsity=0.5", ...]`` set into the parsed recipe (values read as YAML).

    >>> apply_overrides({"prune": {"allocation": "uniform:sparsity=0.8"}}, ["prune.allocation={name: global, sparsity: 0.5}"], {})
    {'prune': {'allocation': {'name': 'global', 'sparsity': 0.5}}}
    """
    data = dict(data or {})
    for text in overrides:
        path, eq, raw = text.partition("=")
        path = path.strip()
        if not eq or not path or any(not part for part in path.split(".")):
            raise RecipeError("command line", [(path, "--set", f"expected KEY.PATH=VALUE (e.g. prune.allocation.sparsity=0.5), "
                                                        f"got {text!r}")])
        value, _ = parse(raw, f"--set {path}")
        node = data
        parts = path.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, Mapping):
                child = {}
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
        for key in [k for k in lines if k == path or k.startswith(path + ".") or k.startswith(path + "[")]:
            lines[key] = "--set"
        lines[path] = "--set"
    return data


def loads(text: str, source: str = "<string>", check_files: bool = True, overrides: Sequence[str] = ()) -> Recipe:
    """Parse and check a recipe's text; every mistake is reported at once (:class:`RecipeError`).

    ``check_files``: also check that the files it names exist and the dependencies it needs are
    installed (the model-dependent checks are :func:`check_against_model`). ``overrides``:
    ``KEY.PATH=VALUE`` strings applied before the checks (the CLI's ``--set``)."""
    data, lines = parse(text, source)
    if overrides:
        data = apply_overrides(data, overrides, lines)
    problems: list[tuple[str, str]] = []
    if data is None:
        raise RecipeError(source, [("", None, "the recipe is empty; it needs at least model.name and "
                                              "prune.allocation (see recipes/ for examples)")])
    kind = kind_of(data)
    resolved = check_section(SCHEMAS[kind], data, "", problems)
    recipe = Recipe(resolved, source, lines)
    if not problems:
        problems += kernel_checks(recipe.data) if kind == "kernels" else _cross_checks(recipe, check_files)
    if problems:
        raise recipe.error(*problems)
    return recipe


def load(path: str | os.PathLike[str], check_files: bool = True, overrides: Sequence[str] = ()) -> Recipe:
    """Read and check the recipe file ``path``."""
    p = Path(path)
    if not p.is_file():
        hint = "" if p.suffix in (".yaml", ".yml") else " (recipes are .yaml files)"
        raise ConfigError(f"recipe {p} does not exist or is not a file{hint}; bundled recipes are in recipes/")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read recipe {p}: {exc}") from None
    return loads(text, str(p), check_files, overrides)


def default(overrides: Sequence[str] = ()) -> Recipe:
    """The embedded default recipe (``prunekit run`` with no file): digits CNN, offline, well under 2 minutes."""
    from importlib.resources import files

    return loads((files("prunekit.recipe") / "default.yaml").read_text(encoding="utf-8"), "<default>", overrides=overrides)


def dataset_of(recipe: Recipe) -> str:
    """The data set a recipe uses: ``data.dataset``, else the one the model name implies."""
    from prunekit.data.choose import dataset_for_model

    return recipe["data"]["dataset"] or dataset_for_model(recipe["model"]["name"])


def _cross_checks(r: Recipe, check_files: bool) -> list[tuple[str, str]]:
    """What one key alone cannot say: combinations, files, optional dependencies."""
    from prunekit.data.choose import default_path

    out: list[tuple[str, str]] = []
    model, data, prune, recover = r["model"], r["data"], r["prune"], r["recover"]
    if model["checkpoint"] and model["pretrained"]:
        out.append(("model.pretrained", "give model.checkpoint or model.pretrained, not both"))
    if model["checkpoint"] and model["config"]:
        out.append(("model.config", "a checkpoint rebuilds its model with the options it was saved with: drop "
                                    "model.config"))
    channels = prune["method"] == "channels"
    if prune["method"] != "none" and prune["allocation"] is None:
        out.append(("prune.allocation", "missing; expected how much to prune where, e.g. {name: global, sparsity: "
                                        "0.8} (or prune.method: none for a dense baseline)"))
    if prune["method"] == "none" and (prune["search"] is not None or recover["schedule"] is not None):
        out.append(("prune.method", "none prunes nothing: drop prune.search and recover.schedule"))
    if prune["search"] is not None:
        from prunekit.recipe.pipeline import CHANNEL_ONLY, SEARCHES

        if prune["search"]["method"] in CHANNEL_ONLY and prune["method"] != "channels":
            out.append(("prune.search.method", f"{prune['search']['method']} removes channels: set prune.method: "
                                               "channels"))
        if prune["search"]["method"] not in SEARCHES:
            out.append(("prune.search.method", f"unknown search {prune['search']['method']!r}; choose one of: "
                                               f"{', '.join(SEARCHES)}; {close_matches(prune['search']['method'], list(SEARCHES))}"))
        from prunekit.parallel import POOLS

        pool = prune["search"]["pool"]
        if pool not in POOLS:
            out.append(("prune.search.pool", f"unknown pool {pool!r}; choose one of: {', '.join(sorted(POOLS))}; "
                                             f"{close_matches(pool, list(POOLS))}"))
        elif pool == "ray" and importlib.util.find_spec("ray") is None:
            out.append(("prune.search.pool", 'ray is not installed: pip install "prunekit[ray]", or use pool: process'))
    if channels:
        if prune["granularity"] not in ("element", None):
            out.append(("prune.granularity", "applies to method masks; method channels removes whole channel "
                                             "groups (drop the key)"))
        if prune["search"] is not None:
            sens = prune["search"]["method"] == "sensitivity"
            if prune["target"] not in (("macs", "latency") if sens else ("macs",)):
                out.append(("prune.target", "a channel search meets a MACs budget: set prune.target: macs"
                                            + (" (or latency: a measured latency budget)" if sens else "")))
        elif prune["target"] == "latency":
            out.append(("prune.target", "latency budgets are met by measuring candidates: add prune.search "
                                        "(method: sensitivity), or use target: macs"))
        if recover["schedule"] is not None:
            from prunekit.recipe.schema import complete_schedule, schedule_spec

            name, given = schedule_spec(recover["schedule"])
            if name != "iterative":
                out.append(("recover.schedule", f"{name!r} updates masks while training (method masks); channels are "
                                                "cut physically in rounds: use {name: iterative, rounds: N}"))
            elif set(given) - {"rounds"}:
                out.append(("recover.schedule", "channel rounds split recover.epochs between them and end at the "
                                                f"allocation's cut: give only rounds (drop {', '.join(sorted(set(given) - {'rounds'}))})"))
            elif isinstance(rounds := complete_schedule(recover["schedule"])["rounds"], int) and recover["epochs"] \
                    and rounds > recover["epochs"]:
                out.append(("recover.schedule", f"{rounds} channel rounds need at least as many "
                                                f"recover.epochs (got {recover['epochs']}): raise recover.epochs or "
                                                "lower rounds"))
            if prune["reconstruct"] is not None:
                out.append(("prune.reconstruct", "regression reconstruction refits one cut; give prune.reconstruct or "
                                                 "recover.schedule (channel rounds), not both"))
        if prune["types"] != ["conv", "linear"]:
            out.append(("prune.types", "applies to method masks; for channels use prune.exclude globs"))
    elif prune["method"] == "masks" and prune["target"] != "params" or prune["min_keep"] or prune["round_to"] != 1:
        key = next(k for k in ("target", "min_keep", "round_to") if prune[k] not in ("params", 0.0, 1))
        out.append((f"prune.{key}", "applies to method channels only"))
    if prune["reconstruct"] is not None and not channels:
        out.append(("prune.reconstruct", "regression reconstruction removes channels: set prune.method: channels"))
    if prune["search"] is not None and prune["layers"]:
        out.append(("prune.layers", "give prune.search or prune.layers, not both"))
    dataset = dataset_of(r)
    if recover["schedule"] is not None and not recover["epochs"]:
        out.append(("recover.schedule", "a schedule prunes while fine-tuning: set recover.epochs > 0"))
    if recover["recalibrate_bn"] and (prune["method"] == "none" or recover["schedule"] is not None):
        out.append(("recover.recalibrate_bn", "recalibration follows a one-shot prune; "
                    + ("prune.method none prunes nothing" if prune["method"] == "none" else
                       "with recover.schedule the masks change while fine-tuning")
                    + ": set recover.recalibrate_bn: 0"))
    search = prune["search"]
    if search is not None and search["recalibrate_bn"] and search["method"] != "sensitivity":
        out.append(("prune.search.recalibrate_bn", f"recalibrated probes are built for the sensitivity search, "
                                                   f"not {search['method']!r}: set prune.search.recalibrate_bn: 0"))
    if recover["distill"] is not None and not recover["epochs"]:
        out.append(("recover.distill", "distillation is a fine-tuning term: set recover.epochs > 0"))
    from prunekit.recipe.pipeline import REGULARIZERS

    for section, where in ((r["train"], "train"), (recover, "recover")):
        reg = section["regularizer"]
        if reg is None:
            continue
        if reg["name"] not in REGULARIZERS:
            out.append((f"{where}.regularizer.name", f"unknown regularizer {reg['name']!r}; choose one of: "
                                                     f"{', '.join(REGULARIZERS)}; "
                                                     f"{close_matches(reg['name'], list(REGULARIZERS))}"))
        elif reg["granularity"] is not None and reg["name"] != "group_lasso":
            out.append((f"{where}.regularizer.granularity", "applies to group_lasso only (drop the key)"))
        if not section["epochs"]:
            out.append((f"{where}.regularizer", f"a loss term needs training: set {where}.epochs > 0"))
    if recover["admm"] is not None:
        if prune["method"] != "masks":
            out.append(("recover.admm", "ADMM learns masks: set prune.method: masks (channels are cut one-shot)"))
        if recover["schedule"] is not None:
            out.append(("recover.admm", "give recover.admm or recover.schedule, not both"))
    if recover["lottery"] is not None:
        if prune["method"] != "masks":
            out.append(("recover.lottery", "lottery tickets are masks: set prune.method: masks"))
        if not r["train"]["epochs"]:
            out.append(("recover.lottery", "each round trains like train: set train.epochs > 0"))
        for key, what in (("admm", "recover.admm"), ("schedule", "recover.schedule")):
            if recover[key] is not None:
                out.append(("recover.lottery", f"give recover.lottery or {what}, not both"))
        if r["train"]["regularizer"] is not None:
            out.append(("train.regularizer", "lottery rounds train without loss terms: drop train.regularizer"))
        if prune["search"] is not None or prune["layers"]:
            out.append(("recover.lottery", "lottery rounds prune by one global / uniform sparsity: drop "
                                           + ("prune.search" if prune["search"] is not None else "prune.layers")))
    if data["normalize"] and dataset != "cifar10":
        out.append(("data.normalize", f"applies to cifar10 only; {dataset} uses its own statistics"))
    if not check_files:
        return out
    for key in ("checkpoint", "pretrained"):
        if model[key] and not Path(model[key]).is_file():
            out.append((f"model.{key}", f"file {model[key]} does not exist (relative paths are read from the "
                                        f"working directory {Path.cwd()})"))
    if dataset == "digits":
        if data["path"]:
            out.append(("data.path", "the digits data set ships with scikit-learn; drop data.path"))
        if importlib.util.find_spec("sklearn") is None:
            out.append(("data.dataset", "digits needs scikit-learn: pip install scikit-learn (or prunekit[run])"))
    else:
        where = Path(data["path"]) if data["path"] else default_path(dataset)
        if not where.exists():
            key = "data.path" if data["path"] else "data.dataset"
            fix = "" if data["path"] else "; set data.path or $PRUNEKIT_DATA"
            out.append((key, f"{dataset} data not found at {where}{fix}"))
    if r["outputs"]["tensorboard"] and importlib.util.find_spec("tensorboard") is None:
        out.append(("outputs.tensorboard", "needs the tensorboard package: pip install tensorboard "
                                           "(or prunekit[tensorboard]), or set it to false"))
    return out


def check_against_model(recipe: Recipe, model: Any, example: Any) -> None:
    """The checks that need the built model (cheap, before any training): the data fit the model,
    every glob matches a layer, the granularity fits every layer it prunes."""
    import torch

    from prunekit import registry
    from prunekit.moduletools import eval_mode
    from prunekit.targets import select

    problems: list[tuple[str, str]] = []
    try:
        with torch.no_grad(), eval_mode(model):
            model(example)
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise recipe.error(("data.dataset", f"model {recipe['model']['name']!r} does not accept "
                                            f"{dataset_of(recipe)} inputs {tuple(example.shape[1:])} ({first})")) from None
    prune = recipe["prune"]
    channels = prune["method"] == "channels"  # channel excludes may name any module (a BN on the residual stream)
    names = [n for n, m in model.named_modules()
             if n and (channels or isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))]
    kind = "module" if channels else "conv / linear layer"
    from fnmatch import fnmatchcase

    for key in ("include", "exclude"):
        for i, pattern in enumerate(prune[key] or []):
            if not any(fnmatchcase(n, pattern) for n in names):
                problems.append((f"prune.{key}[{i}]", f"{pattern!r} matches no {kind}; layers: "
                                 f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}; "
                                 f"{close_matches(pattern, names)}"))
    for pattern in prune["layers"] or {}:
        if not any(fnmatchcase(n, pattern) for n in names):
            problems.append((f"prune.layers.{pattern}", f"matches no {kind}; "
                                                        f"{close_matches(pattern, names)}"))
    if recipe["recover"]["recalibrate_bn"]:
        from prunekit.train.bn import batchnorms

        if not batchnorms(model):
            problems.append(("recover.recalibrate_bn", f"model {recipe['model']['name']!r} has no BatchNorm layer "
                                                       "to recalibrate: set recover.recalibrate_bn: 0"))
    if prune["search"] is not None and prune["search"]["recalibrate_bn"]:
        from prunekit.train.bn import batchnorms

        if not batchnorms(model):
            problems.append(("prune.search.recalibrate_bn", f"model {recipe['model']['name']!r} has no BatchNorm "
                                                            "layer to recalibrate: set prune.search.recalibrate_bn: 0"))
    if prune["method"] == "masks" and not problems:  # (none and channels have no granularity)
        types = tuple({"conv": torch.nn.Conv2d, "linear": torch.nn.Linear}[t] for t in prune["types"])
        targets = select(model, types=types, include=prune["include"], exclude=prune["exclude"])
        if not targets:
            problems.append(("prune.include", "selects no layer to prune"))
        g = registry.build("granularity", prune["granularity"])
        for t in targets:
            try:
                g.check(t)
            except ConfigError as exc:
                problems.append(("prune.granularity", f"does not fit layer {t.name}: {exc}; exclude the layer "
                                                      "(prune.exclude) or choose another granularity"))
                break
    if problems:
        raise recipe.error(*problems)

"""One typed registry of components: criteria, granularities, allocations, schedules, sparse kernels.

Every component has a kind, a name and typed parameters, checked when it is built. The CLI builds
here (``--criterion magnitude:p=2``, ``--criterion obd:method=hutchinson,samples=4``) and so will
YAML recipes (``{"name": "magnitude", "p": 2}``). Unknown names and keys get the full list of
choices and the close matches. A new component plugs in with :func:`register`.

Spec strings: ``NAME`` or ``NAME:key=value,key=value``. Granularities also take their short forms
(``nm:2:4``, ``block:4x1``, ``channel:1``).

>>> build("criterion", "magnitude:p=2")
Magnitude(p=2)
>>> build("criterion", {"name": "obd", "method": "hutchinson", "samples": 4})
OBD(method='hutchinson', samples=4)
>>> build("schedule", "agp:final=0.9,end=1000,every=100")
AGP(final=0.9, end=1000, start=0, initial=0.0, every=100)
>>> build("criterion", "magnitude:q=2")
Traceback (most recent call last):
...
prunekit.errors.ConfigError: criterion 'magnitude' has no parameter 'q'; its parameters: p (float, default 1.0)...
>>> build("criterion", "magnitud")
Traceback (most recent call last):
...
prunekit.errors.ConfigError: unknown criterion 'magnitud'; choose one of: ...; did you mean: 'magnitude'...
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prunekit.errors import ConfigError, close_matches

KINDS = ("criterion", "granularity", "allocation", "schedule", "kernel")
_MISSING = object()


@dataclass(frozen=True)
class Param:
    """One typed parameter of a component: ``name``, ``type`` (int, float, str, bool), default."""

    name: str
    type: type
    default: Any = _MISSING
    choices: tuple[Any, ...] | None = None
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def describe(self) -> str:
        default = "required" if self.required else f"default {self.default!r}"
        choices = f", one of {list(self.choices)}" if self.choices else ""
        return f"{self.name} ({self.type.__name__}, {default}{choices})"

    def convert(self, value: Any, where: str) -> Any:
        """``value`` (a string from the CLI, or a YAML / Python value) as this parameter's type."""
        if value is None and not self.required and self.default is None:
            return None
        try:
            if self.type is bool:
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    out: Any = low in ("true", "1", "yes")
                elif isinstance(value, bool):
                    out = value
                else:
                    raise ValueError
            elif self.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                out = int(value)
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError
                out = float(value)
                if not math.isfinite(out):
                    raise ValueError
            else:
                if not isinstance(value, str):
                    raise ValueError
                out = value
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: parameter {self.name} must be a{'n' if self.type is int else ''} "
                f"{self.type.__name__}, got {value!r}"
            ) from None
        if self.choices is not None and out not in self.choices:
            raise ConfigError(
                f"{where}: parameter {self.name} must be one of {list(self.choices)}, got {out!r}; "
                f"{close_matches(str(out), [str(c) for c in self.choices])}"
            )
        return out


@dataclass(frozen=True)
class Component:
    """A registered component: how to build it and which parameters it takes."""

    kind: str
    name: str
    factory: Callable[..., Any]
    params: tuple[Param, ...] = ()
    help: str = ""
    fixed: tuple[tuple[str, Any], ...] = ()  # parameters an alias fixes (e.g. l1 = magnitude with p=1)

    def build(self, values: Mapping[str, Any]) -> Any:
        where = f"{self.kind} {self.name!r}"
        known = {p.name: p for p in self.params}
        for key in values:
            if key not in known:
                listed = "; ".join(p.describe() for p in self.params) or "none"
                raise ConfigError(
                    f"{where} has no parameter {key!r}; its parameters: {listed}; {close_matches(key, list(known))}"
                )
        kwargs = dict(self.fixed)
        for p in self.params:
            if p.name in values:
                kwargs[p.name] = p.convert(values[p.name], where)
            elif p.required:
                raise ConfigError(f"{where} needs parameter {p.describe()}")
            else:
                kwargs[p.name] = p.default
        return self.factory(**kwargs)


_TABLE: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}


def register(
    kind: str,
    name: str,
    factory: Callable[..., Any],
    params: tuple[Param, ...] = (),
    help: str = "",
    fixed: Mapping[str, Any] | None = None,
) -> Component:
    """Add a component (or replace one of the same kind and name); returns it.

    >>> from prunekit.importance import Magnitude
    >>> _ = register("criterion", "l3", Magnitude, help="L3 magnitude", fixed={"p": 3})
    >>> build("criterion", "l3")
    Magnitude(p=3)
    >>> unregister("criterion", "l3")
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown component kind {kind!r}; choose one of {', '.join(KINDS)}")
    comp = Component(kind, name, factory, tuple(params), help, tuple((fixed or {}).items()))
    _TABLE[kind][name] = comp
    return comp


def unregister(kind: str, name: str) -> None:
    """Remove a component added with :func:`register`."""
    _TABLE.get(kind, {}).pop(name, None)


def names(kind: str) -> list[str]:
    """The registered names of ``kind``, sorted."""
    _ensure_builtins()
    if kind not in KINDS:
        raise ConfigError(f"unknown component kind {kind!r}; choose one of {', '.join(KINDS)}")
    return sorted(_TABLE[kind])


def get(kind: str, name: str) -> Component:
    """The component ``name`` of ``kind`` (ConfigError with every choice and the close matches)."""
    choices = names(kind)
    if name not in _TABLE[kind]:
        raise ConfigError(
            f"unknown {kind} {name!r}; choose one of: {', '.join(choices)}; {close_matches(name, choices)}"
        )
    return _TABLE[kind][name]


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"name:k=v,k=v"`` -> ``("name", {"k": "v"})``.

    >>> parse_spec("obd:method=hutchinson,samples=4")
    ('obd', {'method': 'hutchinson', 'samples': '4'})
    """
    name, _, rest = spec.strip().partition(":")
    values: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"cannot parse {spec!r}: expected NAME or NAME:key=value,key=value")
        values[key.strip()] = value.strip()
    return name.strip().lower(), values


def build(kind: str, spec: str | Mapping[str, Any]) -> Any:
    """Build a component from a spec string or a mapping with ``name`` and its parameters."""
    _ensure_builtins()
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ConfigError(f"a {kind} needs a 'name' (one of: {', '.join(names(kind))})")
        name, values = str(spec["name"]), {k: v for k, v in spec.items() if k != "name"}
    elif isinstance(spec, str):
        if kind == "granularity" and ":" in spec and "=" not in spec:
            from prunekit.granularity import parse

            return parse(spec)  # short forms: nm:2:4, block:4x1, channel:1
        name, values = parse_spec(spec)
    else:
        raise ConfigError(f"a {kind} spec is a string or a mapping, got {type(spec).__name__} {spec!r}")
    return get(kind, name).build(values)


_BUILTINS_DONE = False


def _ensure_builtins() -> None:
    """Register prunekit's own components once (lazily: they import the packages that define them)."""
    global _BUILTINS_DONE
    if _BUILTINS_DONE:
        return
    _BUILTINS_DONE = True
    _register_builtins()


def _register_builtins() -> None:
    from prunekit import allocation as al
    from prunekit import granularity as gr
    from prunekit import importance as im
    from prunekit import schedule as sc

    p_float = Param("p", float, 1.0, help="the norm's exponent")
    register("criterion", "magnitude", im.Magnitude, (p_float,), "Lp norm of each weight (|w|^p)")
    register("criterion", "l1", im.Magnitude, (), "|w| (magnitude with p=1)", {"p": 1})
    register("criterion", "l2", im.Magnitude, (), "w^2 (magnitude with p=2)", {"p": 2})
    register("criterion", "random", im.Random, (Param("seed", int, 0),), "uniform random scores")
    register("criterion", "bn", im.BNScale, (), "|gamma| of the BatchNorm after each layer (network slimming)")
    register("criterion", "taylor", im.Taylor, (), "first-order Taylor |w * dL/dw| (Molchanov et al.)")
    obd = (Param("method", str, "fisher", ("fisher", "hutchinson")), Param("samples", int, 1), Param("seed", int, 0))
    register("criterion", "obd", im.OBD, obd, "second-order w^2 H_ii / 2 (LeCun et al. OBD)")
    register("criterion", "obd-hutchinson", im.OBD, (Param("samples", int, 1), Param("seed", int, 0)),
             "OBD with a Hutchinson Hessian diagonal", {"method": "hutchinson"})
    register("criterion", "apoz", im.APoZ, (), "average percentage of zero activations")
    register("criterion", "mean", im.MeanActivation, (), "mean activation")
    feat = (Param("dim", int, 0, (0, 1)), Param("through_bn", bool, True), Param("bn_removed", bool, False),
            Param("relu", bool, False))
    register("criterion", "feature", im.FeatureReconstruction, feat, "output change when a channel is removed")
    register("criterion", "feature-relu", im.FeatureReconstruction, feat[:3], "feature, measured after the ReLU",
             {"relu": True})
    register("criterion", "nisp", im.NISP, (Param("final_layer", str, None), Param("frl_scores", str, "mean_abs")),
             "importance propagated back from the final response layer (Yu et al. NISP)")

    register("granularity", "element", gr.Element, (), "single weights")
    register("granularity", "vector", gr.Vector, (Param("dim", int, 0, (0, 1)),), "rows (dim 0) or columns")
    register("granularity", "kernel", gr.Kernel, (), "a conv's kh x kw kernels")
    register("granularity", "channel", gr.Channel, (Param("dim", int, 0, (0, 1)),), "output (0) or input channels")
    register("granularity", "block", gr.Block, (Param("h", int), Param("w", int)), "h x w tiles")
    register("granularity", "nm", gr.NM, (Param("n", int), Param("m", int)), "n of every m along the input")
    register("granularity", "pattern", gr.Pattern, (), "PatDNN kernel patterns")
    register("granularity", "lb", gr.LoadBalanced, (Param("num_pe", int),), "ESE load-balanced rows")

    s = Param("sparsity", float)
    register("allocation", "uniform", al.Uniform, (s,), "the same sparsity in every layer")
    register("allocation", "global", al.Global, (s, Param("min_keep", float, 0.0),
             Param("normalize", str, None, (None, "lamp", "max", "l2"))), "one ranking over all layers")

    register("schedule", "oneshot", sc.OneShot, (s, Param("at", int, 0)), "all at once")
    register("schedule", "iterative", sc.Iterative, (s, Param("rounds", int), Param("every", int),
             Param("start", int, 0)), "k prune -> fine-tune rounds")
    register("schedule", "agp", sc.AGP, (Param("final", float), Param("end", int), Param("start", int, 0),
             Param("initial", float, 0.0), Param("every", int, 1)), "Zhu & Gupta's cubic ramp")

    from prunekit.sparse.kernels import KERNELS

    for k in KERNELS:
        register("kernel", k, lambda name=k: name, (), f"sparse kernel {k}")

"""One ``torch.fx`` trace for every stage that reads a model's data flow.

The structural dependency graph (:mod:`prunekit.structure.graph`) and the BatchNorm pairing of the
mask path (:func:`prunekit.importance.bn.following_batchnorm`) read the same traced graph: module
types with a registered channel rule (built-in, or a user's via
:func:`prunekit.structure.register_module`) stay leaves of the trace, so both stages see a user's
module as one call and agree on which layer feeds which BatchNorm.

>>> import torch.nn as nn
>>> gm = trace(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)), "find the BatchNorms")
>>> [(n.op, n.target) for n in gm.graph.nodes]
[('placeholder', 'input'), ('call_module', '0'), ('call_module', '1'), ('output', 'output')]
>>> direct_consumers(gm, "0")
['1']
"""

from __future__ import annotations

from torch import fx, nn

from prunekit.errors import UnsupportedError

_LEAF_TYPES: list[type] = []  # registered leaf module types (the structure rules register theirs)


def register_leaf_types(types: type | tuple[type, ...]) -> None:
    """Keep modules of ``types`` as single calls in every prunekit trace (idempotent)."""
    for t in types if isinstance(types, tuple) else (types,):
        if t not in _LEAF_TYPES:
            _LEAF_TYPES.append(t)


def leaf_types() -> tuple[type, ...]:
    """The module types every prunekit trace keeps as leaves."""
    return tuple(_LEAF_TYPES)


def trace(model: nn.Module, purpose: str, fix: str = "") -> fx.GraphModule:
    """Trace ``model`` with ``torch.fx``, registered module types kept as leaves.

    A model fx cannot trace (data-dependent control flow, ...) raises :class:`UnsupportedError`
    naming the model, ``purpose`` (what the trace was for) and ``fix``.
    """
    leaves = leaf_types()

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types for dynamic control flow
        hint = f"; {fix}" if fix else ""
        raise UnsupportedError(
            f"cannot trace {type(model).__name__} with torch.fx to {purpose} ({type(exc).__name__}: {exc}){hint}"
        ) from exc
    return fx.GraphModule(model, graph)


def direct_consumers(gm: fx.GraphModule, module: str) -> list[str]:
    """Names of the modules whose first input is the output of the call of ``module`` in ``gm``."""
    out: list[str] = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target != module:
            continue
        for user in node.users:
            if user.op == "call_module" and user.args and user.args[0] is node and str(user.target) not in out:
                out.append(str(user.target))
    return out

"""How channel indices flow through each traced op (the rules of :mod:`prunekit.structure.graph`).

A :class:`Propagation` walks a ``torch.fx`` graph whose nodes carry shapes. A *value axis* is one
dim of one node's output that carries channels (``("val", node, dim)``); rules create value axes
on demand and union their slots with module axes (``AxisRef``) and with each other. Passes repeat
until no new value axis appears; :meth:`Propagation.finalize` then pins model inputs/outputs and
raises :class:`~prunekit.errors.UnsupportedError` for any op without a rule that touches a
channel-carrying tensor.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunekit.errors import UnsupportedError
from prunekit.structure.groups import AxisRef, SlotSpace
from prunekit.structure.modules import HeadPrunedMultiheadAttention
from prunekit.structure.surgery import ConvHandler, LinearHandler
from prunekit.tracing import register_leaf_types

Key = Hashable


def _where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    module = list(stack.keys())[-1] if stack else "<the model's own forward>"
    if node.op == "call_module":
        module = str(node.target)
    return f"op {_op_name(node)!r} (node {node.name!r}) in module {module!r}"


def _op_name(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target}"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    t = node.target
    name = getattr(t, "__name__", None) or str(t)
    for prefix, namespace in (("torch.", torch), ("F.", F), ("operator.", operator)):
        if getattr(namespace, name, None) is t:
            return prefix + name
    return getattr(t, "__qualname__", None) or name


class Propagation:
    """Channel-index propagation state over one traced graph."""

    def __init__(self, gm: fx.GraphModule, space: SlotSpace) -> None:
        self.gm = gm
        self.space = space
        self.modules = dict(gm.named_modules())
        self.pins: dict[Key, str] = {}

    # -- shapes and axes -------------------------------------------------------------------------
    @staticmethod
    def shape(node: Any) -> tuple[int, ...] | None:
        if not isinstance(node, fx.Node):
            return None
        meta = node.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        return tuple(int(s) for s in shape) if shape is not None else None

    def tracked(self, node: fx.Node) -> set[int]:
        shape = self.shape(node)
        if shape is None:
            return set()
        return {d for d in range(len(shape)) if self.space.has(("val", node.name, d))}

    def val(self, node: fx.Node, dim: int) -> Key:
        shape = self.shape(node)
        assert shape is not None
        dim = dim % len(shape)
        key = ("val", node.name, dim)
        self.space.axis(key, shape[dim])
        return key

    def mod(self, name: str, axis: str, size: int) -> AxisRef:
        ref = AxisRef(name, axis)
        self.space.axis(ref, size)
        return ref

    def ident(self, a: Key, b: Key) -> None:
        n = self.space.ranges[a][1]
        if self.space.ranges[b][1] != n:
            raise AssertionError(f"identity link between axes of sizes {n} and {self.space.ranges[b][1]}")
        idx = np.arange(n)
        self.space.link(a, idx, b, idx)

    def ident_dims(self, a: fx.Node, da: int, b: fx.Node, db: int, force: bool = False) -> None:
        """Identity-link dim ``da`` of ``a`` with ``db`` of ``b`` if either is tracked (or ``force``)."""
        sa, sb = self.shape(a), self.shape(b)
        da, db = da % len(sa), db % len(sb)
        if force or da in self.tracked(a) or db in self.tracked(b):
            self.ident(self.val(a, da), self.val(b, db))

    def pin(self, key: Key, reason: str) -> None:
        self.pins.setdefault(key, reason)

    def pin_node(self, node: fx.Node, reason: str) -> None:
        for d in self.tracked(node):
            self.pin(("val", node.name, d), reason)

    # -- driver ----------------------------------------------------------------------------------
    def run(self, max_passes: int = 20) -> None:
        for _ in range(max_passes):
            before = len(self.space.ranges)
            for node in self.gm.graph.nodes:
                rule = self._rule(node)
                if rule is not None:
                    rule(self, node)
            if len(self.space.ranges) == before:
                return
        raise UnsupportedError("channel propagation did not converge; the graph is too irregular")

    def _rule(self, node: fx.Node) -> Callable[[Propagation, fx.Node], None] | None:
        if node.op == "call_module":
            module = self.modules[str(node.target)]
            for types, rule in MODULE_RULES:
                if isinstance(module, types):
                    return rule
            return None
        if node.op == "call_function":
            return FUNCTION_RULES.get(node.target)
        if node.op == "call_method":
            return METHOD_RULES.get(str(node.target))
        return None

    def finalize(self) -> None:
        """Pin inputs/outputs/constants; raise for unknown ops that touch channel-carrying tensors."""
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.pin_node(node, "model input")
            elif node.op == "get_attr":
                self.pin_node(node, f"tensor attribute {node.target!r} used in forward")
            elif node.op == "output":
                for arg in node.all_input_nodes:
                    self.pin_node(arg, "model output")
            elif self._rule(node) is None and not _is_query(node):
                involved = [node, *node.all_input_nodes]
                if any(self.tracked(n) for n in involved):
                    raise UnsupportedError(
                        f"structured pruning cannot map channels through {_where(node)}; "
                        "prune the layers around it separately or exclude it"
                    )


_QUERY_METHODS = {"size", "dim", "numel", "type", "get_device", "ndimension", "nelement"}


def _is_query(node: fx.Node) -> bool:
    """Ops that only read shapes/dtypes (safe whatever their input)."""
    if node.op == "call_method" and node.target in _QUERY_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in ("shape", "dtype", "device", "ndim", "is_cuda")
    if node.op == "call_function" and node.target is operator.getitem:
        src = node.args[0]
        return isinstance(src, fx.Node) and _is_query(src)
    return False


# ---------------------------------------------------------------------------------------------
# rule helpers
# ---------------------------------------------------------------------------------------------
def _tensor_inputs(p: Propagation, node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes if p.shape(a) is not None]


def _arg(node: fx.Node, pos: int, name: str, default: Any = None) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def _elementwise(additive: bool) -> Callable[[Propagation, fx.Node], None]:
    """Same-position ops with broadcasting; an additive op broadcasting over a channel dim pins it."""

    def rule(p: Propagation, node: fx.Node) -> None:
        out = p.shape(node)
        if out is None:
            return
        for a in _tensor_inputs(p, node):
            sa = p.shape(a)
            off = len(out) - len(sa)
            if off < 0:
                raise UnsupportedError(f"unexpected broadcast shapes at {_where(node)}")
            for d in range(len(sa)):
                od = d + off
                if sa[d] == out[od]:
                    p.ident_dims(a, d, node, od)
                elif od in p.tracked(node) and additive:
                    p.pin(p.val(node, od), f"{_op_name(node)} broadcasts a constant over channels")
                elif d in p.tracked(a):
                    raise UnsupportedError(f"channel dim broadcast at {_where(node)}")

    return rule


def _noop(p: Propagation, node: fx.Node) -> None:
    """Tuple-producing split/chunk: the mapping happens in each ``getitem`` piece."""


def _unary(p: Propagation, node: fx.Node) -> None:
    """Ops whose output has the first tensor argument's shape, position for position."""
    src = node.all_input_nodes[0] if node.all_input_nodes else None
    so, si = p.shape(node), p.shape(src)
    if so is None or si is None:
        return
    if so != si:
        raise UnsupportedError(f"shape-changing op where an elementwise one was expected: {_where(node)}")
    for d in range(len(so)):
        p.ident_dims(src, d, node, d)


def _channel_first(n_spatial: int | None) -> Callable[[Propagation, fx.Node], None]:
    """Pooling/upsampling: dims up to the channel dim keep their positions, spatial dims change."""

    def rule(p: Propagation, node: fx.Node) -> None:
        src = node.all_input_nodes[0]
        si, so = p.shape(src), p.shape(node)
        if si is None or so is None:
            return
        ns = n_spatial if n_spatial is not None else len(si) - 2
        cdim = len(si) - ns - 1
        for d in range(cdim + 1):
            p.ident_dims(src, d, node, d)
        for d in range(cdim + 1, len(si)):
            if d in p.tracked(src) or d in p.tracked(node):
                raise UnsupportedError(f"channels on a spatial dim of {_where(node)}")

    return rule


def _pool_fn(n: int) -> Callable[[Propagation, fx.Node], None]:
    return _channel_first(n)


def _segments(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Split two shapes of equal numel into aligned runs of dims with equal products."""
    segs: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        si, sj = i, j
        pa = pb = 1
        if i < len(a):
            pa, i = a[i], i + 1
        if j < len(b):
            pb, j = b[j], j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                pa, i = pa * a[i], i + 1
            elif pb < pa and j < len(b):
                pb, j = pb * b[j], j + 1
            else:
                raise AssertionError(f"cannot align shapes {a} and {b}")
        segs.append((list(range(si, i)), list(range(sj, j))))
    return segs


def _coords(shape: tuple[int, ...], dims: list[int], dim: int) -> np.ndarray:
    """Coordinate along ``dim`` of every linear index of the sub-block ``dims`` (row-major)."""
    sizes = [shape[d] for d in dims]
    total = math.prod(sizes)
    stride = math.prod(sizes[dims.index(dim) + 1 :])
    return (np.arange(total) // stride) % shape[dim]


def reshape_rule(p: Propagation, node: fx.Node, src: fx.Node | None = None) -> None:
    """view/reshape/flatten/unflatten: channels follow their row-major positions."""
    src = src if src is not None else node.all_input_nodes[0]
    a, b = p.shape(src), p.shape(node)
    if a is None or b is None:
        return
    for da, db in _segments(a, b):
        ta = [d for d in da if d in p.tracked(src)]
        tb = [d for d in db if d in p.tracked(node)]
        if not ta and not tb:
            continue
        big_a = [d for d in da if a[d] > 1]
        big_b = [d for d in db if b[d] > 1]
        if ta and not tb:
            if len(big_b) > 1:
                raise UnsupportedError(
                    f"{_where(node)} splits a channel dim of size {math.prod(a[d] for d in da)} into "
                    f"{tuple(b[d] for d in db)}: cannot prove which part indexes channels"
                )
            tb = big_b[:1] or db[:1]
        elif tb and not ta:
            ta = big_a[:1] or da[:1]
        if not ta or not tb:  # a size-1 dim appearing or vanishing
            continue
        if len(ta) > 1 or len(tb) > 1:
            raise UnsupportedError(f"{_where(node)} mixes several channel-carrying dims")
        ka, kb = p.val(src, ta[0]), p.val(node, tb[0])
        p.space.link(ka, _coords(a, da, ta[0]), kb, _coords(b, db, tb[0]))
        if tb[0] in _literal_dims(node, len(b)) and b[tb[0]] > 1:
            p.pin(kb, f"{_where(node)} has a hard-coded size for a channel-carrying dim (use -1 or x.size())")


def _literal_dims(node: fx.Node, ndim: int) -> set[int]:
    """Output dims of view/reshape/unflatten whose size is a literal in the code (not -1, not computed)."""
    if node.op == "call_method" and node.target in ("view", "reshape"):
        spec = list(node.args[1:])
    elif node.op == "call_function" and node.target is torch.reshape:
        spec = list(node.args[1:2])
    elif node.op == "call_method" and node.target == "unflatten":
        dim, sizes = int(_arg(node, 1, "dim")), _arg(node, 2, "sizes")
        n_in = ndim - len(sizes) + 1
        dim %= n_in
        return {dim + i for i, v in enumerate(sizes) if isinstance(v, int) and v != -1}
    else:
        return set()
    if len(spec) == 1 and isinstance(spec[0], (list, tuple)):
        spec = list(spec[0])
    return {i for i, v in enumerate(spec) if isinstance(v, int) and v != -1}


def _permute_rule(p: Propagation, node: fx.Node, perm: list[int]) -> None:
    src = node.all_input_nodes[0]
    n = len(p.shape(src))
    for out_d, in_d in enumerate(perm):
        p.ident_dims(src, in_d % n, node, out_d)


def _permute(p: Propagation, node: fx.Node) -> None:
    dims = list(node.args[1:]) if len(node.args) > 1 else list(node.kwargs.get("dims", ()))
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = list(dims[0])
    _permute_rule(p, node, [int(d) for d in dims])


def _transpose(p: Propagation, node: fx.Node) -> None:
    src = node.all_input_nodes[0]
    n = len(p.shape(src))
    d0, d1 = int(_arg(node, 1, "dim0")) % n, int(_arg(node, 2, "dim1")) % n
    perm = list(range(n))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    _permute_rule(p, node, perm)


def _t(p: Propagation, node: fx.Node) -> None:
    n = len(p.shape(node.all_input_nodes[0]))
    _permute_rule(p, node, list(range(n))[::-1])


def _squeeze_like(p: Propagation, node: fx.Node) -> None:
    """squeeze/unsqueeze: non-singleton dims keep their order."""
    src = node.all_input_nodes[0]
    a, b = p.shape(src), p.shape(node)
    if a is None or b is None:
        return
    big_a = [d for d in range(len(a)) if a[d] != 1]
    big_b = [d for d in range(len(b)) if b[d] != 1]
    for da, db in zip(big_a, big_b):
        p.ident_dims(src, da, node, db)


def _flatten_fn(p: Propagation, node: fx.Node) -> None:
    reshape_rule(p, node)


def _cat(p: Propagation, node: fx.Node) -> None:
    tensors = list(_arg(node, 0, "tensors"))
    out = p.shape(node)
    dim = int(_arg(node, 1, "dim", 0)) % len(out)
    involved = any(p.tracked(t) for t in tensors) or p.tracked(node)
    if not involved:
        return
    for d in range(len(out)):
        if d == dim:
            continue
        for t in tensors:
            p.ident_dims(t, d, node, d)
    if dim in p.tracked(node) or any(dim in p.tracked(t) for t in tensors):
        kout = p.val(node, dim)
        offset = 0
        for t in tensors:
            n = p.shape(t)[dim]
            p.space.link(p.val(t, dim), np.arange(n), kout, np.arange(offset, offset + n))
            offset += n


def _stack(p: Propagation, node: fx.Node) -> None:
    tensors = list(_arg(node, 0, "tensors"))
    out = p.shape(node)
    dim = int(_arg(node, 1, "dim", 0)) % len(out)
    for t in tensors:
        for d in range(len(p.shape(t))):
            p.ident_dims(t, d, node, d if d < dim else d + 1)


def _reduction(sum_ok: bool) -> Callable[[Propagation, fx.Node], None]:
    def rule(p: Propagation, node: fx.Node) -> None:
        src = node.all_input_nodes[0]
        a, b = p.shape(src), p.shape(node)
        if a is None or b is None:
            return
        dims = _arg(node, 1, "dim", None)
        keep = bool(_arg(node, 2, "keepdim", False))
        if dims is None:
            reduced = set(range(len(a)))
        else:
            reduced = {int(d) % len(a) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
        if not sum_ok:
            for d in reduced & p.tracked(src):
                p.pin(p.val(src, d), f"{_where(node)} reduces over these channels (pruning would change it)")
        out_d = 0
        for d in range(len(a)):
            if d in reduced:
                out_d += int(keep)
                continue
            p.ident_dims(src, d, node, out_d)
            out_d += 1

    return rule


def _softmax(p: Propagation, node: fx.Node) -> None:
    src = node.all_input_nodes[0]
    n = len(p.shape(src))
    if node.op == "call_module":
        dim = p.modules[str(node.target)].dim
    else:
        dim = _arg(node, 1, "dim")
    _unary(p, node)
    dims = range(n) if dim is None else [int(dim) % n]
    for d in dims:
        if d in p.tracked(src) | p.tracked(node):
            p.pin(p.val(node, d), f"{_where(node)} normalises over these channels (pruning would change it)")


def _pad(p: Propagation, node: fx.Node) -> None:
    src = node.all_input_nodes[0]
    a = p.shape(src)
    pads = list(_arg(node, 1, "pad"))
    padded = {len(a) - 1 - i // 2 for i, v in enumerate(pads) if v}
    for d in range(len(a)):
        if d in padded:
            if d in p.tracked(src) | p.tracked(node):
                p.pin(
                    p.val(src, d),
                    f"{_where(node)} pads channels by a fixed amount (PadShortcut can be pruned)",
                )
        else:
            p.ident_dims(src, d, node, d)


def _getitem(p: Propagation, node: fx.Node) -> None:
    src = node.args[0]
    if not isinstance(src, fx.Node):
        return
    if p.shape(src) is None:  # tuple-producing op
        if src.op == "call_module" and isinstance(p.modules[str(src.target)], _MHA_TYPES):
            if node.args[1] == 0:
                p.pin(p.val(node, -1), f"embedding width of MultiheadAttention {src.target!r}")
            return
        if _is_query(node):
            return
        if _is_split(src):
            _split_piece(p, node, src, int(node.args[1]))
            return
        if p.tracked(node) or any(p.tracked(a) for a in src.all_input_nodes):
            raise UnsupportedError(f"structured pruning cannot map channels through {_where(src)}")
        return
    _index_rule(p, node, src, node.args[1])


_SPLIT_FUNCTIONS = {torch.split, torch.chunk, torch.tensor_split}
_SPLIT_METHODS = {"split", "chunk", "tensor_split"}


def _is_split(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _SPLIT_FUNCTIONS
    return node.op == "call_method" and node.target in _SPLIT_METHODS


def _split_piece(p: Propagation, node: fx.Node, split: fx.Node, k: int) -> None:
    """Piece ``k`` of split/chunk: along the split dim it is the input's slice at the piece offset."""
    src = split.all_input_nodes[0]
    a = p.shape(src)
    metas = split.meta.get("tensor_meta")
    shapes = [tuple(int(d) for d in m.shape) for m in metas]
    dim = int(_arg(split, 2, "dim", 0)) % len(a)
    offset = sum(s[dim] for s in shapes[:k])
    n = shapes[k][dim]
    for d in range(len(a)):
        if d == dim:
            if d in p.tracked(src) or d in p.tracked(node):
                ksrc = p.val(src, d)
                p.space.link(ksrc, np.arange(offset, offset + n), p.val(node, d), np.arange(n))
                p.pin(ksrc, f"split sizes of {_where(split)} are fixed in the code")
        else:
            p.ident_dims(src, d, node, d)


def _index_rule(p: Propagation, node: fx.Node, src: fx.Node, index: Any) -> None:
    a = p.shape(src)
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, (fx.Node, torch.Tensor, list)) for i in items):
        if p.tracked(src) or p.tracked(node):
            raise UnsupportedError(f"advanced indexing on a channel-carrying tensor at {_where(node)}")
        return
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        k = items.index(Ellipsis)
        items = items[:k] + [slice(None)] * (len(a) - n_real) + items[k + 1 :]
    items += [slice(None)] * (len(a) - sum(1 for i in items if i is not None))
    in_d = out_d = 0
    for item in items:
        if item is None:
            out_d += 1
            continue
        if isinstance(item, int):
            if in_d in p.tracked(src):
                raise UnsupportedError(f"{_where(node)} selects a single channel")
            in_d += 1
            continue
        start, stop, step = item.indices(a[in_d])
        picked = np.arange(start, stop, step)
        if len(picked) == a[in_d] and step == 1:
            p.ident_dims(src, in_d, node, out_d)
        elif in_d in p.tracked(src) or out_d in p.tracked(node):
            ksrc = p.val(src, in_d)
            p.space.link(ksrc, picked, p.val(node, out_d), np.arange(len(picked)))
            p.pin(ksrc, f"slice bounds of {_where(node)} are fixed in the code")
        in_d += 1
        out_d += 1


# ---------------------------------------------------------------------------------------------
# module rules
# ---------------------------------------------------------------------------------------------
def _conv(p: Propagation, node: fx.Node) -> None:
    name = str(node.target)
    m = p.modules[name]
    cdim = ConvHandler().mask(m, "in").dim
    x = node.all_input_nodes[0]
    if m.transposed:  # no surgery for transposed convs: keep their channels
        p.pin(p.val(x, cdim), f"input of transposed conv {name!r}")
        p.pin(p.val(node, cdim), f"output of transposed conv {name!r}")
        return
    kin, kout = p.mod(name, "in", m.in_channels), p.mod(name, "out", m.out_channels)
    p.ident(p.val(x, cdim), kin)
    p.ident(p.val(node, cdim), kout)
    nd = len(p.shape(x))
    for d in range(nd):
        if d < cdim % nd:  # batch dims pass through
            p.ident_dims(x, d, node, d)
        elif d > cdim % nd:  # spatial positions are not channels a conv can lose
            for v in (x, node):
                if d in p.tracked(v):
                    p.pin(p.val(v, d), f"spatial dim of conv {name!r} used as channels elsewhere")
    g = m.groups
    if g > 1:  # grouped/depthwise: a whole group (its in and out channels) is one unit
        ip, op_ = m.in_channels // g, m.out_channels // g
        ins, outs, k = np.arange(m.in_channels), np.arange(m.out_channels), np.arange(g)
        p.space.link(kin, ins, kin, (ins // ip) * ip)
        p.space.link(kout, outs, kout, (outs // op_) * op_)
        p.space.link(kin, k * ip, kout, k * op_)


def _linear(p: Propagation, node: fx.Node) -> None:
    name = str(node.target)
    m = p.modules[name]
    x = node.all_input_nodes[0]
    assert LinearHandler().mask(m, "in").dim == -1
    p.ident(p.val(x, -1), p.mod(name, "in", m.in_features))
    p.ident(p.val(node, -1), p.mod(name, "out", m.out_features))
    for d in range(
        len(p.shape(x)) - 1
    ):  # leading dims (batch, tokens, channels of a token-mixer) pass through
        p.ident_dims(x, d, node, d)


def _batchnorm(p: Propagation, node: fx.Node) -> None:
    name = str(node.target)
    m = p.modules[name]
    x = node.all_input_nodes[0]
    feat = p.mod(name, "feat", m.num_features)
    p.ident(p.val(x, 1), feat)
    p.ident(p.val(node, 1), feat)
    for d in range(len(p.shape(x))):
        if d != 1:
            p.ident_dims(x, d, node, d)


def _pinned_norm(p: Propagation, node: fx.Node) -> None:
    """LayerNorm/GroupNorm/InstanceNorm: statistics mix channels, so pruning them is not exact."""
    _unary(p, node)
    name = str(node.target)
    m = p.modules[name]
    x = node.all_input_nodes[0]
    n = len(p.shape(x))
    if isinstance(m, nn.LayerNorm):
        mixed = set(range(n - len(m.normalized_shape), n))
    else:
        mixed = {1}
    for d in mixed:
        if d in p.tracked(x) | p.tracked(node):
            p.pin(p.val(node, d), f"{type(m).__name__} {name!r} normalises over these channels")


_MHA_TYPES = (nn.MultiheadAttention, HeadPrunedMultiheadAttention)


def _mha(p: Propagation, node: fx.Node) -> None:
    name = str(node.target)
    m = p.modules[name]
    if getattr(m, "in_proj_weight", None) is None or m.bias_k is not None or m.add_zero_attn:
        raise UnsupportedError(
            f"MultiheadAttention {name!r} with separate q/k/v weights, add_bias_kv or add_zero_attn: "
            "head pruning not supported"
        )
    p.mod(name, "heads", m.num_heads)
    roles = [("query", 0), ("key", 1), ("value", 2)]
    for role, pos in roles:
        x = _arg(node, pos, role)
        if isinstance(x, fx.Node):
            p.pin(p.val(x, -1), f"embedding width of MultiheadAttention {name!r} (only heads are pruned)")


def _prelu(p: Propagation, node: fx.Node) -> None:
    _unary(p, node)
    m = p.modules[str(node.target)]
    if m.num_parameters > 1:
        p.pin(p.val(node, 1), f"per-channel PReLU {node.target!r} (no surgery for it)")


def _embedding(p: Propagation, node: fx.Node) -> None:
    p.pin(p.val(node, -1), f"embedding table {node.target!r}")


def _identity_module(p: Propagation, node: fx.Node) -> None:
    _unary(p, node)


def _flatten_module(p: Propagation, node: fx.Node) -> None:
    reshape_rule(p, node)


def _pool_module(p: Propagation, node: fx.Node) -> None:
    m = p.modules[str(node.target)]
    name = type(m).__name__
    n = 1 if "1d" in name else 3 if "3d" in name else 2 if "2d" in name else None
    _channel_first(n)(p, node)


_ELEMENTWISE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Tanhshrink, nn.Softsign,
)  # fmt: skip
_POOL_MODULES: tuple[type, ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.LPPool1d, nn.LPPool2d, nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd, nn.modules.padding._CircularPadNd,
)  # fmt: skip

MODULE_RULES: list[tuple[Any, Callable[[Propagation, fx.Node], None]]] = [
    (nn.modules.conv._ConvNd, _conv),
    (nn.Linear, _linear),
    (_BatchNorm, _batchnorm),
    ((nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm), _pinned_norm),
    (_MHA_TYPES, _mha),
    (nn.Embedding, _embedding),
    (nn.PReLU, _prelu),
    (_ELEMENTWISE_MODULES, _identity_module),
    (_POOL_MODULES, _pool_module),
    (nn.Flatten, _flatten_module),
    ((nn.Softmax, nn.LogSoftmax), _softmax),
]


def register_rule(types: type | tuple[type, ...], rule: Callable[[Propagation, fx.Node], None]) -> None:
    """Add how channels flow through calls of modules of ``types`` (checked before the built-in rules)."""
    MODULE_RULES.insert(0, (types, rule))
    register_leaf_types(types)


def channelwise(axis: str = "feat", dim: int = 1) -> Callable[[Propagation, fx.Node], None]:
    """A rule for a module that acts on each channel separately (dim ``dim`` of its input and output)
    with per-channel parameters: channel ``c`` in is channel ``c`` out, tied to the module axis ``axis``
    (as for BatchNorm). The size is read from the traced shape."""

    def rule(p: Propagation, node: fx.Node) -> None:
        name = str(node.target)
        x = node.all_input_nodes[0]
        shape = p.shape(x)
        d = dim % len(shape)
        ref = p.mod(name, axis, shape[d])
        p.ident(p.val(x, d), ref)
        p.ident(p.val(node, d), ref)
        for other in range(len(shape)):
            if other != d:
                p.ident_dims(x, other, node, other)

    return rule


def module_rule_types() -> tuple[type, ...]:
    """Module types the tracer must keep as leaves (their rules see the whole call)."""
    out: list[type] = []
    for types, _ in MODULE_RULES:
        out.extend(types if isinstance(types, tuple) else (types,))
    return tuple(out)


register_leaf_types(module_rule_types())


_ADD = _elementwise(additive=True)
_MUL = _elementwise(additive=False)

FUNCTION_RULES: dict[Any, Callable[[Propagation, fx.Node], None]] = {
    operator.add: _ADD, operator.iadd: _ADD, operator.sub: _ADD, operator.isub: _ADD,
    torch.add: _ADD, torch.sub: _ADD,
    operator.mul: _MUL, operator.imul: _MUL, operator.truediv: _MUL, operator.itruediv: _MUL,
    torch.mul: _MUL, torch.div: _MUL, operator.neg: _unary,
    F.relu: _unary, torch.relu: _unary, F.relu6: _unary, F.gelu: _unary, F.silu: _unary, F.hardswish: _unary,
    F.hardsigmoid: _unary, torch.sigmoid: _unary, F.sigmoid: _unary, torch.tanh: _unary, F.tanh: _unary,
    F.leaky_relu: _unary, F.elu: _unary, F.selu: _unary, F.softplus: _unary, F.mish: _unary,
    F.hardtanh: _unary, F.dropout: _unary, F.dropout1d: _unary, F.dropout2d: _unary, F.dropout3d: _unary,
    torch.abs: _unary, torch.exp: _unary, torch.clamp: _unary, torch.clip: _unary, F.relu_: _unary,
    torch.flatten: _flatten_fn, torch.reshape: reshape_rule, torch.permute: _permute,
    torch.transpose: _transpose, torch.squeeze: _squeeze_like, torch.unsqueeze: _squeeze_like,
    torch.cat: _cat, torch.concat: _cat, torch.stack: _stack,
    torch.mean: _reduction(sum_ok=False), torch.sum: _reduction(sum_ok=True),
    torch.amax: _reduction(sum_ok=False),
    F.softmax: _softmax, F.log_softmax: _softmax, torch.softmax: _softmax,
    F.pad: _pad, operator.getitem: _getitem, torch.split: _noop, torch.chunk: _noop, torch.tensor_split: _noop,
    F.max_pool1d: _pool_fn(1), F.max_pool2d: _pool_fn(2), F.max_pool3d: _pool_fn(3),
    F.avg_pool1d: _pool_fn(1), F.avg_pool2d: _pool_fn(2), F.avg_pool3d: _pool_fn(3),
    F.adaptive_avg_pool1d: _pool_fn(1), F.adaptive_avg_pool2d: _pool_fn(2), F.adaptive_avg_pool3d: _pool_fn(3),
    F.adaptive_max_pool1d: _pool_fn(1), F.adaptive_max_pool2d: _pool_fn(2), F.adaptive_max_pool3d: _pool_fn(3),
    F.interpolate: _channel_first(None), torch.max_pool2d: _pool_fn(2),
    torch.adaptive_avg_pool1d: _pool_fn(1), torch.avg_pool1d: _pool_fn(1),
}  # fmt: skip

METHOD_RULES: dict[str, Callable[[Propagation, fx.Node], None]] = {
    "add": _ADD, "add_": _ADD, "sub": _ADD, "sub_": _ADD, "mul": _MUL, "mul_": _MUL, "div": _MUL,
    "div_": _MUL, "relu": _unary, "relu_": _unary, "sigmoid": _unary, "tanh": _unary, "clamp": _unary,
    "clamp_": _unary, "contiguous": _unary, "clone": _unary, "detach": _unary, "float": _unary,
    "to": _unary, "abs": _unary, "neg": _unary, "exp": _unary, "flatten": _flatten_fn, "view": reshape_rule,
    "reshape": reshape_rule, "unflatten": reshape_rule, "permute": _permute, "transpose": _transpose,
    "t": _t, "squeeze": _squeeze_like, "unsqueeze": _squeeze_like, "mean": _reduction(sum_ok=False),
    "sum": _reduction(sum_ok=True), "amax": _reduction(sum_ok=False), "softmax": _softmax,
    "log_softmax": _softmax, "split": _noop, "chunk": _noop, "tensor_split": _noop,
}  # fmt: skip

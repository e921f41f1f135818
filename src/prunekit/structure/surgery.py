"""Per-layer-type knowledge for structured pruning: which axes a layer has, which parameter slices
each axis index owns, how to mask it, and how to rebuild the layer with fewer channels.

A :class:`Handler` per module type; :func:`handler_for` finds it. Surgery edits the module in place
(new, smaller ``nn.Parameter``/buffers and updated attributes such as ``in_channels``,
``num_features``, or a registered module's own fields) except ``nn.MultiheadAttention``, which is replaced by
:class:`~prunekit.structure.modules.HeadPrunedMultiheadAttention` (stock MHA cannot have fewer heads
than ``embed_dim / head_dim``).

>>> import torch
>>> conv = torch.nn.Conv2d(4, 6, 3)
>>> h = handler_for(conv)
>>> h.axes(conv)
{'in': 4, 'out': 6}
>>> small = h.apply(conv, {"out": torch.tensor([0, 2, 5])}, h.axes(conv))
>>> tuple(small.weight.shape), small.out_channels
((3, 4, 3, 3), 3)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from prunekit.errors import UnsupportedError
from prunekit.structure.modules import HeadPrunedMultiheadAttention


@dataclass(frozen=True)
class ParamSlice:
    """Axis index ``i`` owns indices ``off + i * unit + t`` (``off`` in ``offsets``, ``t < unit``) along
    ``dim`` of the tensor at relative path ``param`` (``"weight"``, ``"out_proj.weight"``).

    ``kind``: ``"weight"`` (scored by importances), ``"norm"`` (BN/LN scale), ``"bias"`` or ``"stat"``.
    """

    param: str
    dim: int
    unit: int = 1
    offsets: tuple[int, ...] = (0,)
    kind: str = "weight"

    def indices(self, axis_idx: torch.Tensor) -> torch.Tensor:
        """Tensor indices (sorted by offset, then axis index) owned by ``axis_idx``."""
        t = torch.arange(self.unit)
        per = (axis_idx.view(-1, 1) * self.unit + t.view(1, -1)).reshape(-1)  # (n * unit,)
        return torch.cat([per + off for off in self.offsets])


@dataclass(frozen=True)
class MaskSpec:
    """How a masked reference hides an axis index: zero dim ``dim`` of the module's input (``"in"``)
    or output (``"out"``), or only zero parameters (``"param"``)."""

    where: str
    dim: int = 0


def get_tensor(module: nn.Module, path: str) -> torch.Tensor | None:
    """The parameter or buffer at relative ``path`` (``"out_proj.weight"``), or None."""
    owner_path, _, leaf = path.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    value = getattr(owner, leaf, None)
    return value if isinstance(value, torch.Tensor) else None


def set_tensor(module: nn.Module, path: str, value: torch.Tensor) -> None:
    """Replace the parameter/buffer at ``path`` by ``value`` (keeping Parameter-ness and requires_grad)."""
    owner_path, _, leaf = path.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    old = getattr(owner, leaf)
    if isinstance(old, nn.Parameter):
        setattr(owner, leaf, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))
    else:
        setattr(owner, leaf, value.detach().clone())


class Handler:
    """Base: a layer type's prunable axes, their slices, masking and surgery."""

    types: tuple[type, ...] = ()

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, self.types)

    def axes(self, module: nn.Module) -> dict[str, int]:
        raise NotImplementedError

    def slices(self, module: nn.Module, axis: str) -> list[ParamSlice]:
        return []

    def mask(self, module: nn.Module, axis: str) -> MaskSpec:
        return MaskSpec("param")

    def apply(self, module: nn.Module, keep: dict[str, torch.Tensor], sizes: dict[str, int]) -> nn.Module:
        """Return the module with only the ``keep`` indices on each axis named in ``keep``.

        ``sizes`` are the original axis sizes (from the graph or the plan)."""
        self._slice_params(module, keep)
        self._update(module, {a: len(k) for a, k in keep.items()}, keep)
        return module

    # -- helpers ----------------------------------------------------------------------------------
    def _slice_params(self, module: nn.Module, keep: dict[str, torch.Tensor]) -> None:
        for axis, idx in keep.items():
            for sl in self.slices(module, axis):
                tensor = get_tensor(module, sl.param)
                if tensor is None:
                    continue
                set_tensor(module, sl.param, tensor.index_select(sl.dim, sl.indices(idx).to(tensor.device)))

    def _update(self, module: nn.Module, sizes: dict[str, int], keep: dict[str, torch.Tensor]) -> None:
        return None


class LinearHandler(Handler):
    types = (nn.Linear,)

    def axes(self, module: nn.Module) -> dict[str, int]:
        return {"in": module.in_features, "out": module.out_features}

    def slices(self, module: nn.Module, axis: str) -> list[ParamSlice]:
        if axis == "out":
            return [ParamSlice("weight", 0), ParamSlice("bias", 0, kind="bias")]
        return [ParamSlice("weight", 1)]

    def mask(self, module: nn.Module, axis: str) -> MaskSpec:
        return MaskSpec(axis, -1)

    def _update(self, module: nn.Module, sizes: dict[str, int], keep: dict[str, torch.Tensor]) -> None:
        module.in_features = sizes.get("in", module.in_features)
        module.out_features = sizes.get("out", module.out_features)


class ConvHandler(Handler):
    """Conv1d/2d/3d, plain, depthwise or grouped (grouped: whole groups only)."""

    types = (_ConvNd,)

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, _ConvNd) and not module.transposed

    def axes(self, module: nn.Module) -> dict[str, int]:
        return {"in": module.in_channels, "out": module.out_channels}

    def slices(self, module: nn.Module, axis: str) -> list[ParamSlice]:
        if axis == "out":
            return [ParamSlice("weight", 0), ParamSlice("bias", 0, kind="bias")]
        return [ParamSlice("weight", 1)] if module.groups == 1 else []

    def mask(self, module: nn.Module, axis: str) -> MaskSpec:
        return MaskSpec(axis, -(len(module.kernel_size) + 1))

    def _update(self, module: nn.Module, sizes: dict[str, int], keep: dict[str, torch.Tensor]) -> None:
        g = module.groups
        if g > 1:
            in_per, out_per = module.in_channels // g, module.out_channels // g
            kept_out = keep.get("out", torch.arange(module.out_channels))
            kept_in = keep.get("in", torch.arange(module.in_channels))
            groups_out = sorted(set((kept_out // out_per).tolist()))
            groups_in = sorted(set((kept_in // in_per).tolist()))
            whole = len(kept_out) == len(groups_out) * out_per and len(kept_in) == len(groups_in) * in_per
            if groups_out != groups_in or not whole:
                raise UnsupportedError(
                    f"grouped conv {module} can only lose whole groups (in and out channels of the same "
                    f"groups); got out groups {groups_out} and in groups {groups_in}"
                )
            module.groups = len(groups_out)
        module.in_channels = sizes.get("in", module.in_channels)
        module.out_channels = sizes.get("out", module.out_channels)


class BatchNormHandler(Handler):
    types = (_BatchNorm,)

    def axes(self, module: nn.Module) -> dict[str, int]:
        return {"feat": module.num_features}

    def slices(self, module: nn.Module, axis: str) -> list[ParamSlice]:
        return [
            ParamSlice("weight", 0, kind="norm"),
            ParamSlice("bias", 0, kind="bias"),
            ParamSlice("running_mean", 0, kind="stat"),
            ParamSlice("running_var", 0, kind="stat"),
        ]

    def mask(self, module: nn.Module, axis: str) -> MaskSpec:
        return MaskSpec("out", 1)

    def _update(self, module: nn.Module, sizes: dict[str, int], keep: dict[str, torch.Tensor]) -> None:
        module.num_features = sizes.get("feat", module.num_features)


class MultiheadAttentionHandler(Handler):
    """``nn.MultiheadAttention``: whole heads (q, k, v rows of ``in_proj`` and ``out_proj`` columns)."""

    types = (nn.MultiheadAttention, HeadPrunedMultiheadAttention)

    def axes(self, module: nn.Module) -> dict[str, int]:
        return {"heads": module.num_heads}

    def slices(self, module: nn.Module, axis: str) -> list[ParamSlice]:
        hd = module.head_dim
        inner = getattr(module, "inner_dim", module.embed_dim)
        return [
            ParamSlice("in_proj_weight", 0, hd, (0, inner, 2 * inner)),
            ParamSlice("in_proj_bias", 0, hd, (0, inner, 2 * inner), kind="bias"),
            ParamSlice("out_proj.weight", 1, hd),
        ]

    def apply(self, module: nn.Module, keep: dict[str, torch.Tensor], sizes: dict[str, int]) -> nn.Module:
        heads = keep.get("heads")
        if heads is None:
            return module
        return HeadPrunedMultiheadAttention.from_mha(module, heads)


class HFConv1DHandler(Handler):
    """Hugging Face ``Conv1D`` (GPT-2): a linear layer with weight stored as (in, out)."""

    def matches(self, module: nn.Module) -> bool:
        return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")

    def axes(self, module: nn.Module) -> dict[str, int]:
        return {"in": module.nx, "out": module.nf}

    def slices(self, module: nn.Module, axis: str) -> list[ParamSlice]:
        if axis == "out":
            return [ParamSlice("weight", 1), ParamSlice("bias", 0, kind="bias")]
        return [ParamSlice("weight", 0)]

    def mask(self, module: nn.Module, axis: str) -> MaskSpec:
        return MaskSpec(axis, -1)

    def _update(self, module: nn.Module, sizes: dict[str, int], keep: dict[str, torch.Tensor]) -> None:
        module.nx = sizes.get("in", module.nx)
        module.nf = sizes.get("out", module.nf)


class HFBertSelfAttentionHandler(Handler):
    """BERT-style self-attention: the ``heads`` axis only updates head counts (its q/k/v Linear
    layers are pruned as their own plan entries)."""

    def matches(self, module: nn.Module) -> bool:
        return all(
            hasattr(module, a) for a in ("num_attention_heads", "attention_head_size", "query", "value")
        )

    def axes(self, module: nn.Module) -> dict[str, int]:
        return {"heads": module.num_attention_heads}

    def _update(self, module: nn.Module, sizes: dict[str, int], keep: dict[str, torch.Tensor]) -> None:
        if "heads" in sizes:
            module.num_attention_heads = sizes["heads"]
            module.all_head_size = sizes["heads"] * module.attention_head_size


class HFGPT2AttentionHandler(Handler):
    """GPT-2 attention: ``heads`` axis updates ``num_heads`` and ``split_size`` (c_attn/c_proj are
    pruned as their own plan entries)."""

    def matches(self, module: nn.Module) -> bool:
        return all(hasattr(module, a) for a in ("num_heads", "head_dim", "split_size", "c_attn", "c_proj"))

    def axes(self, module: nn.Module) -> dict[str, int]:
        return {"heads": module.num_heads}

    def _update(self, module: nn.Module, sizes: dict[str, int], keep: dict[str, torch.Tensor]) -> None:
        if "heads" in sizes:
            module.num_heads = sizes["heads"]
            module.split_size = sizes["heads"] * module.head_dim


HANDLERS: list[Handler] = [
    ConvHandler(),
    LinearHandler(),
    BatchNormHandler(),
    MultiheadAttentionHandler(),
    HFConv1DHandler(),
    HFBertSelfAttentionHandler(),
    HFGPT2AttentionHandler(),
]


def register_handler(handler: Handler) -> Handler:
    """Add the surgery of a module type (checked before the built-in ones, so it can override them)."""
    if not isinstance(handler, Handler):
        raise TypeError(f"register_handler takes a Handler instance, got {type(handler).__name__}")
    HANDLERS.insert(0, handler)
    return handler


def handler_for(module: nn.Module) -> Handler:
    """The :class:`Handler` for ``module``'s type; :class:`UnsupportedError` if none."""
    for h in HANDLERS:
        if h.matches(module):
            return h
    raise UnsupportedError(f"no structured-pruning surgery for layer type {type(module).__name__}")


def has_handler(module: nn.Module) -> bool:
    return any(h.matches(module) for h in HANDLERS)

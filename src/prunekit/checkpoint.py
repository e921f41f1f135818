"""The one checkpoint format: every file a prunekit command writes, every command reads.

A checkpoint is a dict of plain tensors and JSON-like values (read with ``weights_only=True``):

===============  ==========================================================================
``format``       ``"prunekit.checkpoint"`` (``format_version`` 2)
``model_name``   registry name (``prunekit.models``) or ``"hf:<Class>"``; ``model_config``
``state_dict``   the weights, of the (possibly physically smaller) model
``metadata``     free-form: data set, normalisation, pruning settings, accuracy ...
``masks``        ``Masks.state_dict()`` when masks are in force, else None
``plan``         ``PruningPlan.to_dict()`` when channels were removed (replayed on the original
                 architecture), else None
``deploy``       ``{"kernels": {layer: kernel}}`` for a deployed model (weights stored dense), else None
``train_state``  a resumable training state (``prunekit.train.TrainState.state_dict()``), else None
===============  ==========================================================================

Files of format version 1 (dense checkpoints, masks under ``metadata["masks"]``, and the
``prunekit.pruned-model`` files of ``save_pruned``) are read too.

>>> import tempfile, pathlib, torch
>>> from prunekit import Element, Global, Magnitude, prune, select
>>> from prunekit.models import create
>>> model = create("lenet300_100")
>>> masks = prune(model, select(model), Magnitude(), Element(), Global(0.9))
>>> path = save(pathlib.Path(tempfile.mkdtemp()) / "p.pt", model, "lenet300_100", masks=masks)
>>> again, ckpt = build(path)
>>> round(ckpt.masks.sparsity(), 3), ckpt.plan is None
(0.9, True)
>>> masks.remove()
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunekit.errors import CheckpointError, ConfigError
from prunekit.inputs import read_torch_file
from prunekit.io import atomic_torch_save

if TYPE_CHECKING:
    from prunekit.structure.plan import PruningPlan

FORMAT = "prunekit.checkpoint"
FORMAT_VERSION = 2
LEGACY_PRUNED_FORMAT = "prunekit.pruned-model"


@dataclass
class Checkpoint:
    """What a checkpoint file holds (see the module doc); ``masks`` and ``plan`` are objects here."""

    model_name: str | None
    model_config: dict[str, Any] = field(default_factory=dict)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    masks: Any = None  # prunekit.masks.Masks | None
    plan: Any = None  # prunekit.structure.PruningPlan | None
    deploy: dict[str, Any] | None = None
    train_state: dict[str, Any] | None = None
    path: str | None = None

    # dict-style access, so code written for the version-1 dicts keeps working
    def __getitem__(self, key: str) -> Any:
        if key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in _FIELDS else default

    def __contains__(self, key: object) -> bool:
        return key in _FIELDS and getattr(self, str(key)) is not None

    @property
    def kind(self) -> str:
        """``"deployed"``, ``"channel-pruned"``, ``"masked"`` or ``"dense"`` (what ``info`` prints)."""
        if self.deploy:
            return "deployed"
        if self.plan is not None:
            return "channel-pruned" + (" + masked" if self.masks is not None else "")
        return "masked" if self.masks is not None else "dense"

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "model_config": dict(self.model_config),
            "metadata": dict(self.metadata),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict.items()},
            "masks": self.masks.state_dict() if self.masks is not None else None,
            "plan": self.plan.to_dict() if self.plan is not None else None,
            "deploy": self.deploy,
            "train_state": self.train_state,
        }


_FIELDS = ("model_name", "model_config", "state_dict", "metadata", "masks", "plan", "deploy", "train_state", "path")


def save(
    path: str | os.PathLike[str],
    model: nn.Module,
    model_name: str | None,
    model_config: Mapping[str, Any] | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
    masks: Any = None,
    plan: Any = None,
    deploy: Mapping[str, Any] | None = None,
    train_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` with everything needed to rebuild it, atomically (never half-written).

    ``masks``: a :class:`~prunekit.masks.Masks` (kept in force by ``train`` and ``prune``);
    ``plan``: the :class:`~prunekit.structure.PruningPlan` that made the model smaller;
    ``deploy``: ``{"kernels": {layer: kernel}}``; ``train_state``: a ``TrainState.state_dict()``.
    A model holding sparse modules (``deploy``) is stored densified; pass its kernels in ``deploy``.
    """
    from prunekit.sparse.modules import SparseConv2d, SparseLinear

    if any(isinstance(m, (SparseLinear, SparseConv2d)) for m in model.modules()):
        from prunekit.export import densify

        kernels = {n: m.kernel for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))}
        deploy = {"kernels": kernels, **dict(deploy or {})}
        model = densify(model)
    ckpt = Checkpoint(
        model_name, dict(model_config or {}), model.state_dict(), dict(metadata or {}), masks, plan,
        dict(deploy) if deploy else None, dict(train_state) if train_state is not None else None,
    )  # fmt: skip
    return atomic_torch_save(ckpt.to_payload(), path)


def read(path: str | os.PathLike[str]) -> Checkpoint:
    """Read any prunekit checkpoint safely (``weights_only=True``); masks and plan become objects."""
    p = Path(path)
    obj = read_torch_file(p, "checkpoint", "write it again with a prunekit command (train, prune, deploy)")
    if not isinstance(obj, dict) or "state_dict" not in obj:
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(
                f"{str(p)!r} is a plain state dict, not a prunekit checkpoint; load it into its model with "
                "--model NAME --pretrained PATH (Python: prunekit.models.load_pretrained)"
            )
        held = f"a dict without a 'state_dict' entry (keys: {', '.join(map(repr, list(obj)[:5]))})" \
            if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise CheckpointError(
            f"{str(p)!r} is not a prunekit checkpoint: it holds {held}; write checkpoints with a prunekit "
            "command (train, prune, deploy) or prunekit.checkpoint.save"
        )
    if obj.get("format") not in (None, FORMAT, LEGACY_PRUNED_FORMAT):
        raise CheckpointError(f"{str(p)!r} has format {obj.get('format')!r}, not {FORMAT!r}")
    if int(obj.get("format_version", 1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(p)!r} has checkpoint format version {obj.get('format_version')}, newer than this prunekit "
            f"reads ({FORMAT_VERSION}); upgrade prunekit"
        )
    metadata = dict(obj.get("metadata") or {})
    masks_state = obj.get("masks") if obj.get("masks") is not None else metadata.pop("masks", None)
    masks = plan = None
    if masks_state is not None:
        from prunekit.masks import Masks

        masks = Masks({}).load_state_dict(masks_state)
    if obj.get("plan") is not None:
        from prunekit.structure.plan import PruningPlan

        plan = PruningPlan.from_dict(obj["plan"])
    return Checkpoint(
        obj.get("model_name"), dict(obj.get("model_config") or {}), obj["state_dict"], metadata, masks, plan,
        obj.get("deploy"), obj.get("train_state"), str(p),
    )  # fmt: skip


def build(source: str | os.PathLike[str] | Checkpoint) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model a checkpoint holds: architecture, plan replay, weights; returns ``(model, ckpt)``.

    The masks (``ckpt.masks``) are not enforced: the weights they prune are already zero in the
    file; apply them (``ckpt.masks.apply(model)``) to keep them zero while training.
    """
    ckpt = source if isinstance(source, Checkpoint) else read(source)
    where = ckpt.path or "the checkpoint"
    if not ckpt.model_name:
        raise CheckpointError(f"{where} does not name its model; build it yourself and use load_state_dict")
    from prunekit.models import check_state_dict

    model = build_model(ckpt.model_name, ckpt.model_config)
    if ckpt.plan is not None:
        model = ckpt.plan.apply(model)
    check_state_dict(model, ckpt.state_dict, source=where)
    try:
        model.load_state_dict(ckpt.state_dict, strict=ckpt.plan is not None)
    except RuntimeError as exc:
        raise CheckpointError(f"the weights in {where} do not fit the model it names: {exc}") from None
    if ckpt.masks is not None:
        ckpt.masks.apply(model, enforce=False)  # checks that the masks fit; zeros are already there
    return model, ckpt


def build_model(model_name: str, model_config: dict[str, Any]) -> nn.Module:
    """Build an unpruned model: a registry name, or ``"hf:<ClassName>"`` with a transformers config dict."""
    if model_name.startswith("hf:"):
        try:
            import transformers
        except ImportError as exc:
            raise ConfigError("this checkpoint needs transformers: pip install 'prunekit[hf]'") from exc
        cfg = dict(model_config)
        model_type = cfg.pop("model_type", None)
        if model_type is None:
            raise ConfigError("hf model_config needs 'model_type' (use config.to_dict())")
        config = transformers.AutoConfig.for_model(model_type, **cfg)
        cls = getattr(transformers, model_name[3:], None)
        if cls is None:
            raise ConfigError(f"transformers has no model class {model_name[3:]!r}")
        return cls(config)
    from prunekit.models import create

    return create(model_name, **model_config)


def save_pruned(
    path: str | os.PathLike[str],
    model_name: str,
    model_config: dict[str, Any],
    plan: PruningPlan,
    model: nn.Module,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Save a pruned model as architecture (``model_name`` + ``model_config``) + plan + state_dict.

    >>> import tempfile, pathlib, torch
    >>> from prunekit.models import create
    >>> from prunekit.structure import prune_channels
    >>> small, plan, _ = prune_channels(create("resnet20"), torch.zeros(1, 3, 32, 32), 0.3)
    >>> p = save_pruned(pathlib.Path(tempfile.mkdtemp()) / "s.pt", "resnet20", {}, plan, small)
    >>> again, ckpt = load_pruned(p)
    >>> all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), small.state_dict().values()))
    True

    ``plan`` may have several steps (:meth:`PruningPlan.then`); ``model`` must have all of them
    (:class:`ConfigError` otherwise, before anything is written).
    """
    done = plan.steps_applied(model)
    if done != len(plan.steps):
        raise ConfigError(
            f"save_pruned: the model has only the first {done} of the plan's {len(plan.steps)} steps; "
            "save the model the plan produces"
        )
    return save(path, model, model_name, model_config, metadata=metadata, plan=plan)


def load_pruned(path: str | os.PathLike[str]) -> tuple[nn.Module, Checkpoint]:
    """Rebuild a model saved by :func:`save_pruned`: fresh architecture, replay of every plan step,
    state_dict.

    Returns ``(model, checkpoint)`` where ``checkpoint["plan"]`` is a :class:`PruningPlan`.
    """
    model, ckpt = build(path)
    if ckpt.plan is None:
        raise CheckpointError(
            f"{str(path)!r} holds no structured pruning plan (it is a {ckpt.kind} checkpoint); "
            "use prunekit.checkpoint.build to read any checkpoint"
        )
    return model, ckpt

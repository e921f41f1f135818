"""Checkpoints that carry enough metadata to rebuild their model; always written atomically.

Thin names over the one format of :mod:`prunekit.checkpoint` (kept because every command and
benchmark uses them): :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`build_from_checkpoint`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.checkpoint import FORMAT_VERSION, Checkpoint, build, read, save

__all__ = ["FORMAT_VERSION", "build_from_checkpoint", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    model_name: str | None = None,
    model_config: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    masks: Any = None,
    plan: Any = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Save ``model``'s state dict with its registry name/config, metadata, and masks / plan / training state.

    The file is written to a temp file and renamed, so an interrupted save never leaves a
    half-written checkpoint.

    >>> import tempfile, pathlib
    >>> from prunekit.models import create
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r20.pt"
    >>> _ = save_checkpoint(p, create("resnet20"), "resnet20", {"num_classes": 10})
    >>> load_checkpoint(p)["model_name"]
    'resnet20'
    """
    return save(path, model, model_name, model_config, metadata=metadata, masks=masks, plan=plan,
                train_state=train_state)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read any prunekit checkpoint (``weights_only=True``); see :class:`prunekit.checkpoint.Checkpoint`."""
    return read(path)


def build_from_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model a checkpoint holds (plan replayed, masks' zeros in place) and its checkpoint."""
    return build(path)

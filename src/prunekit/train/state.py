"""Resumable training state: where :func:`prunekit.train.fit` is, and everything needed to go on.

A :class:`TrainState` records the completed epochs, the optimizer steps, the optimizer /
scheduler / pruner state dicts, the random number generator states and the per-epoch history.
Its :meth:`TrainState.state_dict` holds only tensors, numbers, strings, lists, dicts and
``None``, so ``torch.save`` followed by ``torch.load(..., weights_only=True)`` round-trips it.

RNG states are kept twice: as they were at the *start* of the current epoch (python ``random``,
NumPy's global generator, torch's CPU and CUDA generators and the train DataLoader's own
``generator``), so a resumed run draws the same batch order, and as they are *now* (after the last
optimizer step), so dropout and data augmentation continue identically after the batches already
trained on are skipped.

>>> import torch
>>> state = TrainState(epoch=1, step=12, epoch_step=0, rng={"epoch_start": capture_rng(), "current": None})
>>> sd = state.state_dict()
>>> TrainState.from_state_dict(sd).step
12
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from prunekit.errors import CheckpointError

STATE_FORMAT = "prunekit.TrainState/1"


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [int(version), [int(v) for v in internal], gauss]


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def capture_rng(generators: Iterable[torch.Generator] = (), *, cuda: bool = True) -> dict[str, Any]:
    """The states of python ``random``, NumPy, torch (CPU and, when initialised, CUDA) and ``generators``.

    The result holds only tensors, numbers, strings, lists and dicts (``weights_only``-loadable).

    >>> import random
    >>> s = capture_rng()
    >>> a = random.random(); restore_rng(s); a == random.random()
    True
    """
    out: dict[str, Any] = {
        "python": _python_state(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def restore_rng(state: Mapping[str, Any], generators: Iterable[torch.Generator] = ()) -> None:
    """Put the RNGs back to a state written by :func:`capture_rng` (the same ``generators``, in order)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    nps = state["numpy"]
    keys = np.asarray(torch.as_tensor(nps["keys"]).numpy(), dtype=np.uint32)
    np.random.set_state(
        (nps["name"], keys, int(nps["pos"]), int(nps["has_gauss"]), float(nps["cached_gaussian"]))
    )
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    gens = list(generators)
    saved = list(state.get("generators", []))
    if len(saved) != len(gens):
        raise CheckpointError(
            f"the training state holds {len(saved)} DataLoader generator state(s) but the train loader has "
            f"{len(gens)}; resume with a loader built like the interrupted run's (same generator= argument)"
        )
    for g, s in zip(gens, saved):
        g.set_state(torch.as_tensor(s, dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [torch.as_tensor(s, dtype=torch.uint8).cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The distinct ``torch.Generator`` objects a DataLoader draws its order from (its own and its sampler's).

    >>> from torch.utils.data import DataLoader
    >>> g = torch.Generator()
    >>> loader_generators(DataLoader(list(range(4)), shuffle=True, generator=g)) == [g]
    True
    >>> loader_generators(DataLoader(list(range(4)), shuffle=True))
    []
    """
    found: list[torch.Generator] = []
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    candidates = (
        getattr(loader, "generator", None),
        getattr(sampler, "generator", None),
        getattr(getattr(batch_sampler, "sampler", None), "generator", None),
    )
    for g in candidates:
        if isinstance(g, torch.Generator) and not any(g is f for f in found):
            found.append(g)
    return found


@dataclass
class TrainState:
    """Where a :func:`~prunekit.train.fit` run is; pass it back as ``fit(..., state=...)`` to continue.

    ``epoch`` counts completed epochs, ``step`` global optimizer steps, ``epoch_step`` the steps
    already done inside the current (unfinished) epoch. ``optimizer`` / ``scheduler`` / ``pruner``
    are their ``state_dict()``s (``None`` when absent). ``rng`` is ``{"epoch_start": ...,
    "current": ...}`` as written by :func:`capture_rng` (``current`` is ``None`` at an epoch
    boundary). ``history`` holds one :meth:`EpochRecord.as_dict` per completed epoch.
    ``epoch_loss_sum`` / ``epoch_samples`` / ``epoch_lr`` let a resumed epoch report the same mean
    training loss and learning rate as an uninterrupted one.

    The state dicts are the live objects' ``state_dict()`` results (they may share tensors with
    the optimizer): save them (``torch.save(state.state_dict(), path)``) before training goes on.

    >>> s = TrainState()
    >>> (s.epoch, s.step, s.epoch_step, s.optimizer, s.history)
    (0, 0, 0, None, [])
    """

    epoch: int = 0
    step: int = 0
    epoch_step: int = 0
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    pruner: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_loss_sum: float = 0.0
    epoch_samples: int = 0
    epoch_lr: float | None = None

    def state_dict(self) -> dict[str, Any]:
        """A ``torch.save``-able dict (tensors, numbers, strings, lists, dicts, ``None`` only).

        >>> import io
        >>> buf = io.BytesIO()
        >>> torch.save(TrainState(step=3).state_dict(), buf); _ = buf.seek(0)
        >>> TrainState.from_state_dict(torch.load(buf, weights_only=True)).step
        3
        """
        return {
            "format": STATE_FORMAT,
            "epoch": int(self.epoch),
            "step": int(self.step),
            "epoch_step": int(self.epoch_step),
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "pruner": self.pruner,
            "rng": self.rng,
            "history": [dict(h) for h in self.history],
            "epoch_loss_sum": float(self.epoch_loss_sum),
            "epoch_samples": int(self.epoch_samples),
            "epoch_lr": None if self.epoch_lr is None else float(self.epoch_lr),
        }

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> TrainState:
        """Rebuild a state from :meth:`state_dict` output (e.g. read back with ``weights_only=True``).

        >>> TrainState.from_state_dict({"format": "prunekit.TrainState/1", "epoch": 2, "step": 8}).epoch
        2
        """
        if not isinstance(d, Mapping) or d.get("format") != STATE_FORMAT:
            found = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise CheckpointError(
                f"not a training state: expected format {STATE_FORMAT!r}, found {found!r} "
                "(pass the dict written by TrainState.state_dict())"
            )
        for key in ("epoch", "step", "epoch_step", "epoch_samples"):
            if int(d.get(key, 0)) < 0:
                raise CheckpointError(f"training state has negative {key} = {d[key]}")
        epoch_lr = d.get("epoch_lr")
        return cls(
            epoch=int(d.get("epoch", 0)),
            step=int(d.get("step", 0)),
            epoch_step=int(d.get("epoch_step", 0)),
            optimizer=d.get("optimizer"),
            scheduler=d.get("scheduler"),
            pruner=d.get("pruner"),
            rng=d.get("rng"),
            history=[dict(h) for h in d.get("history", [])],
            epoch_loss_sum=float(d.get("epoch_loss_sum", 0.0)),
            epoch_samples=int(d.get("epoch_samples", 0)),
            epoch_lr=None if epoch_lr is None else float(epoch_lr),
        )

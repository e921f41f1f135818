"""Distributed (DDP) fine-tuning under ``torchrun``: gloo on CPU, NCCL where there are GPUs.

One script serves one process and many: without a process group every helper here is a no-op
(``world_size() == 1``, ``wrap(model) is model``), so the same code runs alone or as::

    torchrun --nproc_per_node 2 train.py

The recipe, in each process::

    init_from_env()                                    # reads RANK / WORLD_SIZE / MASTER_ADDR / ...
    masks = pk.prune(model, ...)                       # or Masks.load(...).apply(model)
    broadcast_masks(masks)                             # every rank gets rank 0's masks (re-applied)
    ddp = wrap(model)                                  # DDP broadcasts rank 0's weights
    train = distributed_loader(train_set, batch_size=128, seed=0)   # 128 = the *global* batch
    test = distributed_loader(test_set, batch_size=256, seed=0, shuffle=False)
    fit(ddp, train, test, cfg, on_epoch_state=save_if_main)         # write files only if is_main()

Masks are applied to the inner model (``model``, i.e. ``ddp.module``): their hooks live on its
modules and parameters, so enforcement holds under DDP (pruned gradients are zeroed before the
all-reduce; every rank re-zeroes after its optimizer step). What :func:`~prunekit.train.fit`
does when it gets a DDP model (or runs in an initialised process group) is in its docstring:
``set_epoch`` on the sampler, training loss and evaluation all-reduced, identical
:class:`~prunekit.train.TrainState` on every rank.

BatchNorm statistics (running mean / variance, and the batch statistics used in training) are
per rank: each rank normalises with its own half-batch. Convert the model with
``nn.SyncBatchNorm.convert_sync_batchnorm(model)`` before :func:`wrap` for statistics over the
global batch (on GPUs; SyncBatchNorm does not run on CPU).

>>> is_distributed(), rank(), world_size(), is_main()
(False, 0, 1, True)
"""

from __future__ import annotations

import datetime
import os
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from prunekit.errors import ConfigError

__all__ = [
    "active",
    "all_reduce_eval",
    "all_reduce_sum",
    "broadcast_masks",
    "distributed_loader",
    "distributed_sampler",
    "init_from_env",
    "is_distributed",
    "is_main",
    "rank",
    "unwrap",
    "world_size",
    "wrap",
]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised (in this process).

    >>> is_distributed()
    False
    """
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's rank in the process group (0 when not distributed).

    >>> rank()
    0
    """
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the group (1 when not distributed).

    >>> world_size()
    1
    """
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, and when not distributed: the process that writes files and prints.

    >>> is_main()
    True
    """
    return rank() == 0


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise ConfigError(
            f"WORLD_SIZE is set but {name} is not: start the processes with torchrun (which sets RANK, "
            "LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or set them all"
        )
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group ``torchrun`` describes in the environment; True when distributed.

    Reads ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without
    ``WORLD_SIZE`` (a plain ``python train.py``) or with ``WORLD_SIZE=1`` it does nothing and
    returns False. ``backend`` defaults to ``"nccl"`` when CUDA is available (the process then
    uses GPU ``LOCAL_RANK``) and ``"gloo"`` otherwise. Calling it again once initialised
    returns True.

    >>> import os
    >>> "WORLD_SIZE" in os.environ or init_from_env()
    False
    """
    if is_distributed():
        return True
    size_text = os.environ.get("WORLD_SIZE")
    if size_text is None:
        return False
    size = _env_int("WORLD_SIZE")
    if size < 1:
        raise ConfigError(f"WORLD_SIZE must be >= 1, got {size}")
    if size == 1:
        return False
    if not torch.distributed.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    this_rank = _env_int("RANK")
    local_rank = int(os.environ.get("LOCAL_RANK", this_rank))
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(f"WORLD_SIZE is {size} but {name} is not set: start the processes with torchrun")
    if not 0 <= this_rank < size:
        raise ConfigError(f"RANK must be in [0, {size}), got {this_rank}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError("backend 'nccl' needs CUDA; use 'gloo' on CPU")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    torch.distributed.init_process_group(
        backend=backend,
        init_method="env://",
        rank=this_rank,
        world_size=size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return True


def _comm_device() -> torch.device:
    """Where tensors for collectives must live: the current GPU under NCCL, else the CPU."""
    if is_distributed() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (float64; ``values`` itself when not distributed).

    >>> all_reduce_sum([1.5, 2.0])
    [1.5, 2.0]
    """
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def all_reduce_eval(result: Any) -> Any:
    """Combine each rank's :class:`~prunekit.train.EvalResult` on its share of the data into the global one.

    Correct top-1 / top-5 counts, loss sums and sample counts are summed over the ranks; every
    rank gets the same result. Fields that are ``nan`` on any rank stay ``nan``. Not distributed:
    ``result`` unchanged.

    >>> from prunekit.train import EvalResult
    >>> all_reduce_eval(EvalResult(0.5, 1.0, 0.25, 8))
    EvalResult(top1=0.5, top5=1.0, loss=0.25, samples=8)
    """
    if not is_distributed():
        return result
    n = int(result.samples)
    top1, top5, loss, total = all_reduce_sum([result.top1 * n, result.top5 * n, result.loss * n, float(n)])
    if total <= 0:
        return replace(result, samples=0)
    return replace(result, top1=top1 / total, top5=top5 / total, loss=loss / total, samples=int(round(total)))


def broadcast_masks(masks: Any, src: int = 0) -> Any:
    """Make every rank hold rank ``src``'s masks (a :class:`~prunekit.masks.Masks`); returns ``masks``.

    Masks that were enforced on a model are re-applied there (the weights they now prune are
    zeroed). Call it before :func:`wrap` or after it: DDP's constructor broadcasts rank 0's
    weights, so either order ends with identical weights and masks everywhere. A no-op when
    not distributed.

    >>> import torch
    >>> from prunekit.masks import Masks
    >>> m = Masks({"": torch.ones(2, 2, dtype=torch.bool)})
    >>> broadcast_masks(m) is m
    True
    """
    if not is_distributed():
        return masks
    payload = [masks.state_dict() if rank() == src else None]
    torch.distributed.broadcast_object_list(payload, src=src)
    if rank() != src:
        masks.load_state_dict(payload[0])
    return masks


def distributed_sampler(loader: Any) -> DistributedSampler | None:
    """The :class:`~torch.utils.data.DistributedSampler` a DataLoader draws from, or None.

    >>> distributed_sampler(distributed_loader(list(range(8)), batch_size=4, seed=0)) is not None
    True
    >>> distributed_sampler(DataLoader(list(range(8)))) is None
    True
    """
    for s in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if isinstance(s, DistributedSampler):
            return s
    return None


def distributed_loader(dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True) -> DataLoader:
    """A DataLoader over this rank's share of ``dataset``; ``batch_size`` is the *global* batch.

    Each rank gets batches of ``batch_size // world_size()`` from a
    :class:`~torch.utils.data.DistributedSampler` seeded with ``seed``; :func:`~prunekit.train.fit`
    calls its ``set_epoch`` each epoch, so the order is a function of (seed, epoch) and a resumed
    run replays it. When the data set does not divide evenly the sampler repeats a few samples so
    every rank has as many (torch's behaviour), and an evaluation over such a loader counts them.
    Raises ConfigError when ``batch_size`` is not a multiple of the world size.

    >>> loader = distributed_loader(list(range(10)), batch_size=4, seed=0, shuffle=False)
    >>> [b.tolist() for b in loader]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """
    size = world_size()
    if batch_size < 1 or batch_size % size:
        raise ConfigError(
            f"the global batch size {batch_size} must be a positive multiple of the world size {size} "
            "(each rank takes batch_size / world_size samples per step)"
        )
    sampler = DistributedSampler(dataset, num_replicas=size, rank=rank(), shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size // size, sampler=sampler)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP (or DataParallel) wrapper; any other model as is.

    >>> m = nn.Linear(2, 2)
    >>> unwrap(m) is m
    True
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def wrap(model: nn.Module) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel (``find_unused_parameters=False``); as is when not distributed.

    The model must already be on its device (this rank's GPU under NCCL). Wrapping broadcasts
    rank 0's parameters and buffers to every rank. Apply masks to ``model`` itself, not to the
    wrapper (mask names are the inner model's module names).

    >>> m = nn.Linear(2, 2)
    >>> wrap(m) is m
    True
    """
    if not is_distributed():
        return model
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device_ids = None
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)


def active(model: nn.Module) -> bool:
    """Whether ``fit`` treats a run as distributed: a DDP model, or an initialised process group.

    >>> active(nn.Linear(2, 2))
    False
    """
    return isinstance(model, nn.parallel.DistributedDataParallel) or is_distributed()

"""Independent probes in worker processes, or on a Ray cluster when Ray is installed.

A sensitivity scan's layers are independent: :func:`prunekit.sensitivity.scan` and
:func:`prunekit.search.channels.scan_channels` with ``workers=N`` send one task per layer (the
model, the probe's batches and what to prune, all pickled) to a pool and collect the rows in order.
Pools are made by name from :data:`POOLS`; :func:`register_pool` adds one (a factory
``(workers, threads) -> context manager with .map(fn, tasks) -> results in task order``, a list
or an iterator; the scans consume it lazily, so a resumable scan records each result as it comes).

- ``"process"``: a ``concurrent.futures`` pool of ``spawn``-ed processes on this machine, each
  with ``threads`` torch threads (the machine's threads divided by the workers).
- ``"ray"``: Ray tasks (``pip install "prunekit[ray]"``); uses the cluster ``ray.init`` already
  connected to, or starts a local one and shuts it down afterwards.

>>> sorted(POOLS)
['process', 'ray']
>>> with make_pool("process", 1) as pool:  # one worker: run here, no process started
...     pool.map(abs, [-1, 2])
[1, 2]
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import torch

from prunekit.errors import ConfigError, close_matches

__all__ = ["POOLS", "make_pool", "register_pool", "threads_per_worker"]


class Pool(Protocol):
    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterable[Any]: ...


PoolFactory = Callable[[int, int], contextlib.AbstractContextManager[Pool]]
POOLS: dict[str, PoolFactory] = {}


def register_pool(name: str, factory: PoolFactory) -> None:
    """Add a pool kind: ``factory(workers, threads)`` returns a context manager yielding a :class:`Pool`."""
    if not callable(factory):
        raise TypeError(f"pool factory must be callable, got {type(factory).__name__}")
    POOLS[name] = factory


def threads_per_worker(workers: int) -> int:
    """This process's torch threads shared out over ``workers`` (at least one each)."""
    return max(1, torch.get_num_threads() // max(1, workers))


def make_pool(name: str, workers: int, threads: int | None = None) -> contextlib.AbstractContextManager[Pool]:
    """The pool ``name`` with ``workers`` workers (1: the tasks run here, in order)."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers must be a whole number >= 1, got {workers!r}")
    if name not in POOLS:
        raise ConfigError(f"unknown pool {name!r}; choices: {', '.join(sorted(POOLS))}; {close_matches(name, list(POOLS))}")
    if workers == 1 and name == "process":
        return contextlib.nullcontext(_Here())
    return POOLS[name](workers, threads if threads is not None else threads_per_worker(workers))


class _Here:
    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        return [fn(t) for t in tasks]


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


class _Processes:
    def __init__(self, executor: concurrent.futures.ProcessPoolExecutor) -> None:
        self._executor = executor

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        try:
            yield from self._executor.map(fn, tasks)
        except (TypeError, AttributeError) as exc:
            if "pickle" in str(exc).lower():
                raise ConfigError(f"a task cannot be sent to a worker process ({exc}); define the model's classes "
                                  "in an importable module, or scan with workers=1") from None
            raise


@contextlib.contextmanager
def _process_pool(workers: int, threads: int) -> Iterator[Pool]:
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch's thread pools run
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                                initargs=(threads,)) as executor:
        yield _Processes(executor)


class _Ray:
    def __init__(self, ray: Any, threads: int) -> None:
        self._ray, self._threads = ray, threads

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        remote = self._ray.remote(num_cpus=self._threads)(_threaded)
        refs = [remote.remote(fn, t, self._threads) for t in tasks]  # all submitted; results taken in order
        for ref in refs:
            yield self._ray.get(ref)


def _threaded(fn: Callable[[Any], Any], task: Any, threads: int) -> Any:
    torch.set_num_threads(threads)
    return fn(task)


@contextlib.contextmanager
def _ray_pool(workers: int, threads: int) -> Iterator[Pool]:
    try:
        import ray
    except ImportError:
        raise ConfigError('the "ray" pool needs Ray: pip install "prunekit[ray]" (or use pool "process")') from None
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=False)
    try:
        yield _Ray(ray, threads)
    finally:
        if started:
            ray.shutdown()


register_pool("process", _process_pool)
register_pool("ray", _ray_pool)

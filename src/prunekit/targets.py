"""Which parameters get pruned: :class:`Target` and :func:`select`.

A target is one weight tensor inside a model, named by its module path (``"layer1.0.conv1"``).

>>> import torch.nn as nn
>>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
>>> [t.name for t in select(m)]
['0', '3']
>>> [t.name for t in select(m, types=(nn.Linear,))]
['3']
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.errors import ConfigError, close_matches

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


@dataclass(eq=False)
class Target:
    """One prunable parameter: ``getattr(module, param_name)`` of the module at path ``name``."""

    name: str
    module: nn.Module
    param_name: str = "weight"

    @property
    def weight(self) -> torch.Tensor:
        """The parameter tensor being pruned (the live ``nn.Parameter``)."""
        return getattr(self.module, self.param_name)

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape

    def __repr__(self) -> str:
        return f"Target({self.name!r}, {type(self.module).__name__}, {tuple(self.shape)})"


def _patterns(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _check_patterns(patterns: Iterable[str], names: list[str], what: str) -> None:
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise ConfigError(
                f"{what} pattern {pattern!r} matches no prunable layer; "
                f"{close_matches(pattern, names)}"
            )


def _module_types(types: object) -> tuple[type[nn.Module], ...]:
    """``types`` as a tuple of nn.Module classes, or a ConfigError saying what was given instead."""
    example = "e.g. types=(nn.Conv2d, nn.Linear)"
    if isinstance(types, type):
        types = (types,)
    if isinstance(types, str) or not isinstance(types, Iterable):
        raise ConfigError(f"select(types=...) takes nn.Module classes ({example}), got {type(types).__name__} "
                          f"{types!r}")
    types_t = tuple(types)
    if not types_t:
        raise ConfigError(f"select(types=...) is empty: pass at least one nn.Module class ({example})")
    wrong = [t for t in types_t if not (isinstance(t, type) and issubclass(t, nn.Module))]
    if wrong:
        given = ", ".join(repr(t) if isinstance(t, str) else f"{type(t).__name__} {t!r}" for t in wrong)
        raise ConfigError(f"select(types=...) takes nn.Module classes ({example}), not names or instances; "
                          f"got {given}")
    return types_t


def select(
    model: nn.Module,
    types: Sequence[type[nn.Module]] = DEFAULT_TYPES,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    param_name: str = "weight",
) -> list[Target]:
    """Return the targets of ``model`` in module order.

    ``types`` filters by module class; ``include``/``exclude`` are fnmatch globs on module names
    (``"layer1.*"``, ``"fc"``). A pattern matching no candidate raises :class:`ConfigError`
    listing close names, so a typo never silently prunes nothing (or everything).

    >>> import torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    >>> [t.name for t in select(m, exclude="1")]
    ['0']
    >>> select(m, include="fc*")
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: include pattern 'fc*' matches no prunable layer; ...
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"select(model, ...) takes an nn.Module, got {type(model).__name__}")
    types_t = _module_types(types)
    candidates: list[Target] = []
    for name, module in model.named_modules():
        if not name or not isinstance(module, types_t):
            continue
        param = getattr(module, param_name, None)
        if isinstance(param, torch.Tensor):
            candidates.append(Target(name, module, param_name))
    names = [t.name for t in candidates]
    inc, exc = _patterns(include), _patterns(exclude)
    _check_patterns(inc, names, "include")
    _check_patterns(exc, names, "exclude")
    chosen = [
        t
        for t in candidates
        if (not inc or any(fnmatch.fnmatchcase(t.name, p) for p in inc))
        and not any(fnmatch.fnmatchcase(t.name, p) for p in exc)
    ]
    if not chosen:
        raise ConfigError(
            f"no layer left to prune (types={[t.__name__ for t in types_t]}, include={inc}, exclude={exc}); "
            "loosen the filters"
        )
    return chosen

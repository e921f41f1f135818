"""Model registry: ``create(name, **config)`` builds any registered model by name.

>>> from prunekit.models import create
>>> model = create("resnet20", num_classes=10)
>>> sum(p.numel() for p in model.parameters())
269722
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from prunekit.errors import ConfigError, close_matches

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model builder under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def create(name: str, **config: Any) -> nn.Module:
    """Build the model registered as ``name`` with keyword ``config``.

    Raises :class:`ConfigError` naming close matches for an unknown name.
    """
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown model {name!r}; choose one of: {', '.join(available())}; {close_matches(name, available())}"
        )
    import inspect

    params = inspect.signature(_REGISTRY[name]).parameters
    unknown = [k for k in config if k not in params]
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise ConfigError(f"model {name!r} has no option {unknown[0]!r}; its options: "
                          f"{', '.join(params) or '(none)'}; {close_matches(unknown[0], list(params))}")
    try:
        return _REGISTRY[name](**config)
    except TypeError as exc:
        raise ConfigError(f"bad config for model {name!r}: {exc}") from exc

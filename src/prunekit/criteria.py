"""Criteria by name (the CLI's and recipes' ``--criterion``), built ready to score: calibrated when they need data.

A view of :mod:`prunekit.registry` (kind ``"criterion"``).

>>> sorted(CRITERIA)[:3]
['apoz', 'bn', 'feature']
>>> needs_data("taylor"), needs_data("l1"), needs_data("bn")
(True, False, False)
>>> needs_data("tayler")
Traceback (most recent call last):
...
prunekit.errors.ConfigError: unknown importance criterion 'tayler'; choose one of: magnitude, l1, ...; did you mean: 'taylor'...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from torch import nn

from prunekit.errors import ConfigError, close_matches
from prunekit.importance.base import Importance, needs_calibration
from prunekit.targets import Target


class _Criteria(Mapping[str, Callable[[], Importance]]):
    """Name -> factory of every registered criterion, in registration order (a live view of
    :mod:`prunekit.registry`, kind ``"criterion"``)."""

    def _table(self) -> dict[str, Any]:
        from prunekit import registry

        registry.names("criterion")  # registers the built-ins on first use
        return registry._TABLE["criterion"]

    def __getitem__(self, name: str) -> Callable[[], Importance]:
        comp = self._table()[name]
        return lambda: comp.build({})

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._table()))

    def __len__(self) -> int:
        return len(self._table())


CRITERIA: Mapping[str, Callable[[], Importance]] = _Criteria()

# Criteria that must see the model but not data (BNScale reads the model's structure).
_MODEL_ONLY = frozenset({"bn"})


def make(spec: str | Mapping[str, Any]) -> Importance:
    """The criterion a spec names (``"l1"``, ``"magnitude:p=2"``, ``"obd:method=hutchinson,samples=4"``)."""
    from prunekit import registry

    try:
        return registry.build("criterion", spec)
    except ConfigError as exc:
        if str(exc).startswith("unknown criterion"):
            name = registry.parse_spec(spec)[0] if isinstance(spec, str) else spec.get("name")
            raise ConfigError(
                f"unknown importance criterion {name!r}; choose one of: {', '.join(CRITERIA)}; "
                f"{close_matches(str(name), list(CRITERIA))}"
            ) from None
        raise


def needs_data(spec: str | Mapping[str, Any]) -> bool:
    """True when the criterion ``spec`` names needs calibration batches (a loader) to score."""
    from prunekit import registry

    imp = make(spec)
    name = registry.parse_spec(spec)[0] if isinstance(spec, str) else str(spec.get("name"))
    return name not in _MODEL_ONLY and needs_calibration(imp)


def build(
    name: str | Mapping[str, Any],
    model: nn.Module,
    targets: Sequence[Target],
    loader: Iterable[Any] | None = None,
    num_batches: int = 8,
) -> Importance:
    """Create the criterion ``name`` specifies (see :func:`make`) and calibrate it on ``model`` when it needs to.

    ``loader`` is required for the data-driven criteria (see :func:`needs_data`); ``bn`` uses one
    batch of it when given, else a ``torch.fx`` trace of the model.

    >>> m = nn.Sequential(nn.Linear(4, 3))
    >>> from prunekit.targets import select
    >>> build("l1", m, select(m))
    Magnitude(p=1)
    >>> build("apoz", m, select(m))
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: criterion 'apoz' needs calibration data: pass a loader (and num_batches)
    """
    imp = make(name)
    if not needs_calibration(imp):
        return imp
    if loader is None and needs_data(name):
        raise ConfigError(f"criterion {name!r} needs calibration data: pass a loader (and num_batches)")
    return imp.calibrate(model, loader, num_batches, list(targets))  # type: ignore[attr-defined]

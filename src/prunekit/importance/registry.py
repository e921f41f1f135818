"""CLI names of the importance criteria, and a one-call way to build a ready-to-score criterion.

>>> sorted(CRITERIA)[:3]
['apoz', 'bn', 'feature']
>>> needs_data("taylor"), needs_data("l1"), needs_data("bn")
(True, False, False)
>>> needs_data("tayler")
Traceback (most recent call last):
...
prunekit.errors.ConfigError: unknown importance criterion 'tayler'; did you mean: 'taylor'?
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn

from prunekit.errors import ConfigError, close_matches
from prunekit.importance.activation import APoZ, MeanActivation
from prunekit.importance.base import Importance, needs_calibration
from prunekit.importance.bn import BNScale
from prunekit.importance.feature import FeatureReconstruction
from prunekit.importance.magnitude import Magnitude, Random
from prunekit.importance.taylor import OBD, Taylor
from prunekit.targets import Target

CRITERIA: dict[str, Callable[[], Importance]] = {
    "l1": lambda: Magnitude(p=1),
    "l2": lambda: Magnitude(p=2),
    "random": lambda: Random(seed=0),
    "bn": BNScale,
    "taylor": Taylor,
    "obd": lambda: OBD(method="fisher"),
    "obd-hutchinson": lambda: OBD(method="hutchinson", samples=1),
    "apoz": APoZ,
    "mean": MeanActivation,
    "feature": lambda: FeatureReconstruction(dim=0),
    # for convs followed by BN -> ReLU: the change of what the next layer receives (best in the benchmark)
    "feature-relu": lambda: FeatureReconstruction(dim=0, relu=True),
    "nisp": lambda: _nisp(),
}


def _nisp() -> Importance:
    from prunekit.regression.nisp import NISP  # lazy: prunekit.regression builds on this package

    return NISP()

# Criteria that must see the model but not data (BNScale reads the model's structure).
_MODEL_ONLY = frozenset({"bn"})


def _check(name: str) -> None:
    if name not in CRITERIA:
        raise ConfigError(f"unknown importance criterion {name!r}; {close_matches(name, sorted(CRITERIA))}")


def needs_data(name: str) -> bool:
    """True when criterion ``name`` needs calibration batches (a loader) to score."""
    _check(name)
    return name not in _MODEL_ONLY and needs_calibration(CRITERIA[name]())


def build(
    name: str,
    model: nn.Module,
    targets: Sequence[Target],
    loader: Iterable[Any] | None = None,
    num_batches: int = 8,
) -> Importance:
    """Create criterion ``name`` and calibrate it on ``model`` when it needs to.

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
    _check(name)
    imp = CRITERIA[name]()
    if not needs_calibration(imp):
        return imp
    if loader is None and needs_data(name):
        raise ConfigError(f"criterion {name!r} needs calibration data: pass a loader (and num_batches)")
    return imp.calibrate(model, loader, num_batches, list(targets))  # type: ignore[attr-defined]

"""Allocations decide how many groups of each layer to prune (see :mod:`.basic`)."""

from prunekit.allocation.basic import (
    Allocation,
    Global,
    PerLayer,
    Uniform,
    WithOverrides,
    lamp,
    normalize_scores,
)

__all__ = ["Allocation", "Global", "PerLayer", "Uniform", "WithOverrides", "lamp", "normalize_scores"]

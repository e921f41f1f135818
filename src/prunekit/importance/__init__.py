"""Importance criteria: ``scores(target) -> Tensor`` of the weight's shape (higher = keep)."""

from prunekit.importance.base import DataDrivenImportance, Importance, needs_calibration
from prunekit.importance.magnitude import Magnitude, Random

__all__ = ["DataDrivenImportance", "Importance", "Magnitude", "Random", "needs_calibration"]

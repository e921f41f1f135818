"""Importance criteria: ``scores(target) -> Tensor`` of the weight's shape (higher = keep)."""

from prunekit.importance.base import DataDrivenImportance, Importance, needs_calibration
from prunekit.importance.magnitude import Magnitude, Random

__all__ = ["DataDrivenImportance", "Importance", "Magnitude", "Random", "needs_calibration"]

# BN scale, gradient-based, activation-based, feature-based, NISP. Names for the CLI and recipes: prunekit.criteria.
from prunekit.importance.activation import APoZ, MeanActivation  # noqa: E402
from prunekit.importance.bn import BNScale, following_batchnorm  # noqa: E402
from prunekit.importance.feature import FeatureReconstruction  # noqa: E402
from prunekit.importance.nisp import NISP  # noqa: E402
from prunekit.importance.taylor import OBD, Taylor  # noqa: E402

__all__ += [
    "NISP", "APoZ", "BNScale", "FeatureReconstruction", "MeanActivation", "OBD", "Taylor",
    "following_batchnorm",
]

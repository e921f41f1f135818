"""Structured pruning: dependency graph, coupled channel groups, surgery into a smaller model.

>>> import torch
>>> from prunekit.models import create
>>> small, plan, report = prune_channels(create("resnet20"), torch.zeros(1, 3, 32, 32), 0.3)
>>> report.units_removed > 0
True
"""

from prunekit.structure.api import (
    ChannelConstraints,
    ChannelScoring,
    PruneReport,
    make_plan,
    match_modules,
    prune_channels,
)
from prunekit.structure.extend import Handler, MaskSpec, ParamSlice, Propagation, channelwise, register_module
from prunekit.structure.from_masks import masks_to_small_model, plan_from_masks
from prunekit.structure.graph import DependencyGraph
from prunekit.structure.groups import AxisRef, Group, Unit
from prunekit.structure.modules import HeadPrunedMultiheadAttention
from prunekit.structure.plan import ModulePlan, PlanStep, PruningPlan
from prunekit.structure.ranking import CostModel, choose_units, score_targets, unit_scores
from prunekit.structure.verify import VerificationError, VerifyResult, masked_reference, verify

__all__ = [
    "AxisRef",
    "ChannelConstraints",
    "ChannelScoring",
    "CostModel",
    "DependencyGraph",
    "Group",
    "Handler",
    "HeadPrunedMultiheadAttention",
    "MaskSpec",
    "ParamSlice",
    "Propagation",
    "ModulePlan",
    "PlanStep",
    "PruneReport",
    "PruningPlan",
    "Unit",
    "VerificationError",
    "VerifyResult",
    "channelwise",
    "choose_units",
    "make_plan",
    "masked_reference",
    "match_modules",
    "masks_to_small_model",
    "plan_from_masks",
    "prune_channels",
    "register_module",
    "score_targets",
    "unit_scores",
    "verify",
]

"""Sparse regression and regression-based structured pruning (He et al. 2017; NISP, Yu et al. 2018).

Solvers (``least_squares``, ``ridge``, ``lasso``, ``group_lasso``, ``omp``) accept numpy arrays or
torch tensors; ``backend="sklearn"`` delegates to scikit-learn (extra ``prunekit[regression]``).
"""

from prunekit.importance.nisp import NISP, nisp_channel_scores
from prunekit.regression.apply import apply_selection, units_for_input_channels
from prunekit.regression.channel_selection import (
    LayerSelection,
    RegressionChannelSelector,
    apply_to_chain,
    collect_samples,
    l1_prune_layer,
    lasso_select,
    output_error,
    reconstruct,
    regression_prune_layer,
    samples_from_features,
)
from prunekit.regression.solvers import (
    group_lasso,
    group_soft_threshold,
    lasso,
    lasso_gram,
    least_squares,
    omp,
    ridge,
    soft_threshold,
)

__all__ = [
    "NISP",
    "LayerSelection",
    "RegressionChannelSelector",
    "apply_selection",
    "apply_to_chain",
    "collect_samples",
    "group_lasso",
    "group_soft_threshold",
    "l1_prune_layer",
    "lasso",
    "lasso_gram",
    "lasso_select",
    "least_squares",
    "nisp_channel_scores",
    "omp",
    "output_error",
    "reconstruct",
    "regression_prune_layer",
    "ridge",
    "samples_from_features",
    "soft_threshold",
    "units_for_input_channels",
]

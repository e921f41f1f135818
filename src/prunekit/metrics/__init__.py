"""Measure models: parameters, nonzeros, sparsity, MACs/FLOPs, size in bytes, latency.

>>> import torch
>>> from prunekit.models import create
>>> m = create("resnet20")
>>> count_params(m), round(count_macs(m, torch.zeros(1, 3, 32, 32)) / 1e6, 2)
(269722, 40.55)
"""

from prunekit.metrics.counts import (
    LayerSparsity,
    count_nonzeros,
    count_params,
    effective_tensors,
    sparsity_report,
    total_sparsity,
)
from prunekit.metrics.latency import (
    CacheFlusher,
    LatencyResult,
    compare_latency,
    last_level_cache_bytes,
    measure_latency,
    num_threads,
)
from prunekit.metrics.macs import (
    CostProfile,
    count_flops,
    count_macs,
    count_nonzero_macs,
    eval_mode,
    macs_by_layer,
    profile_costs,
    run_model,
)
from prunekit.metrics.size import model_bytes, tensor_sizes
from prunekit.metrics.table import LayerRow, format_table, layer_table

__all__ = [
    "CacheFlusher",
    "CostProfile",
    "LatencyResult",
    "LayerRow",
    "LayerSparsity",
    "compare_latency",
    "count_flops",
    "count_macs",
    "count_nonzero_macs",
    "count_nonzeros",
    "count_params",
    "effective_tensors",
    "eval_mode",
    "format_table",
    "last_level_cache_bytes",
    "layer_table",
    "macs_by_layer",
    "measure_latency",
    "model_bytes",
    "num_threads",
    "profile_costs",
    "run_model",
    "sparsity_report",
    "tensor_sizes",
    "total_sparsity",
]

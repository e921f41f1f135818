"""prunekit: pruning and sparsity for PyTorch (scores -> masks -> structure -> sparse kernels).

>>> import torch, prunekit as pk
>>> model = pk.models.create("resnet20")
>>> masks = pk.prune(model, pk.select(model), pk.Magnitude(p=1), pk.Element(), pk.Global(0.9))
>>> round(masks.sparsity(), 2)
0.9
>>> small, plan, report = pk.prune_channels(pk.models.create("resnet20"), torch.zeros(1, 3, 32, 32), 0.5)
>>> report.params_after < report.params_before
True

Sub-packages: ``models``, ``data``, ``train``, ``metrics``, ``importance``, ``allocation``,
``structure``, ``regression``, ``sparse``, ``checkpoint``, ``registry``. Everything heavy (scikit-learn, transformers,
onnxruntime, numba) is imported lazily by the functions that need it.
"""

from prunekit import (
    allocation,
    checkpoint,
    data,
    importance,
    metrics,
    models,
    registry,
    regression,
    sparse,
    structure,
    train,
)
from prunekit.allocation import Global, PerLayer, Uniform
from prunekit.checkpoint import load_pruned, save_pruned
from prunekit.errors import CheckpointError, ConfigError, DataError, PrunekitError, UnsupportedError
from prunekit.granularity import NM, Block, Channel, Element, Kernel, LoadBalanced, Pattern, Vector
from prunekit.importance import (
    OBD,
    APoZ,
    BNScale,
    FeatureReconstruction,
    Magnitude,
    MeanActivation,
    Random,
    Taylor,
)
from prunekit.importance.nisp import NISP
from prunekit.masks import Masks
from prunekit.metrics import count_macs, count_nonzeros, count_params, layer_table, measure_latency
from prunekit.pruning import prune
from prunekit.schedule import AGP, Iterative, OneShot, Pruner
from prunekit.sparse import deploy
from prunekit.structure import PruningPlan, prune_channels
from prunekit.targets import Target, select
from prunekit.train import TrainConfig, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "AGP",
    "NISP",
    "NM",
    "OBD",
    "APoZ",
    "BNScale",
    "Block",
    "Channel",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Element",
    "FeatureReconstruction",
    "Global",
    "Iterative",
    "Kernel",
    "LoadBalanced",
    "Magnitude",
    "Masks",
    "OneShot",
    "MeanActivation",
    "Pattern",
    "PerLayer",
    "PrunekitError",
    "Pruner",
    "PruningPlan",
    "Random",
    "Target",
    "Taylor",
    "TrainConfig",
    "Uniform",
    "UnsupportedError",
    "Vector",
    "__version__",
    "allocation",
    "checkpoint",
    "count_macs",
    "count_nonzeros",
    "count_params",
    "data",
    "deploy",
    "evaluate",
    "fit",
    "importance",
    "layer_table",
    "load_pruned",
    "measure_latency",
    "metrics",
    "models",
    "prune",
    "prune_channels",
    "registry",
    "regression",
    "save_pruned",
    "select",
    "sparse",
    "structure",
    "train",
]

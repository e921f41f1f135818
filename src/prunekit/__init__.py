"""prunekit: pruning and sparsity for PyTorch (scores -> masks -> structure -> sparse kernels)."""

__version__ = "0.1.0"

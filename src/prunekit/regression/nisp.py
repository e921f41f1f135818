"""NISP lives in :mod:`prunekit.importance.nisp` (it is an importance criterion); this name stays for old imports."""

from prunekit.importance.nisp import NISP, nisp_channel_scores

__all__ = ["NISP", "nisp_channel_scores"]

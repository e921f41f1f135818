"""Searches for per-layer pruning ratios.

- :mod:`prunekit.search.channels`: named channel groups, their sensitivity scan, ratios for a MACs or measured-latency budget;
- :mod:`prunekit.search.netadapt`: NetAdapt (``from prunekit.search.netadapt import netadapt``), driven by
  latency measured on this machine;
- :mod:`prunekit.search.amc`: AMC, reinforcement learning (needs ``pip install prunekit[search]``).
"""

from prunekit.probe import Probe
from prunekit.search.amc import AMCEnv, AMCLayer, AMCResult, amc_search
from prunekit.search.channels import names, prune_groups, ratios_for_latency, ratios_for_macs, scan_channels
from prunekit.search.netadapt import IterationRecord, LatencyTable, NetAdaptResult

__all__ = [
    "AMCEnv", "AMCLayer", "AMCResult", "IterationRecord", "LatencyTable", "NetAdaptResult", "amc_search", "names",
    "Probe", "prune_groups", "ratios_for_latency", "ratios_for_macs", "scan_channels",
]

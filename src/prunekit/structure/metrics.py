"""Parameter and MAC counters for structured pruning: ``prunekit.metrics`` when present, else a
small local fallback (parameters + conv/linear MACs from forward hooks)."""

from __future__ import annotations

from typing import Any

from torch import nn

try:
    from prunekit.metrics import count_macs, count_params, macs_by_layer

    FALLBACK = False
except ImportError:  # pragma: no cover - only while prunekit.metrics is missing
    FALLBACK = True

    def count_params(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    def macs_by_layer(model: nn.Module, example_input: Any) -> dict[str, int]:
        import torch

        out: dict[str, int] = {}
        handles = []
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):

                def hook(mod: nn.Module, inp: Any, y: Any, name: str = name) -> None:
                    per_out = mod.weight[0].numel()
                    out[name] = out.get(name, 0) + y.numel() * per_out

                handles.append(m.register_forward_hook(hook))
        try:
            with torch.no_grad():
                model(example_input)
        finally:
            for h in handles:
                h.remove()
        return out

    def count_macs(model: nn.Module, example_input: Any) -> int:
        return sum(macs_by_layer(model, example_input).values())


__all__ = ["FALLBACK", "count_macs", "count_params", "macs_by_layer"]

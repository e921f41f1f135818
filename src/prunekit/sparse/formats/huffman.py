"""Huffman code lengths for a symbol stream: Deep Compression's last stage, as a size estimate.

Deep Compression (Han et al., ICLR 2016) Huffman-codes the codebook indices and the relative
indices after pruning and weight sharing. We do not store Huffman-coded streams; we compute the
optimal prefix-code lengths so a report can say how many bytes that stage would save.
"""

from __future__ import annotations

import heapq

import torch


def huffman_code_lengths(symbols: torch.Tensor) -> dict[int, int]:
    """Optimal prefix-code length (bits) of every symbol that occurs in ``symbols``.

    A stream with a single distinct symbol gets length 1.

    >>> huffman_code_lengths(torch.tensor([0, 0, 0, 0, 1, 1, 2, 3]))
    {0: 1, 1: 2, 2: 3, 3: 3}
    """
    values, counts = torch.unique(symbols.reshape(-1), return_counts=True)
    if values.numel() == 0:
        return {}
    if values.numel() == 1:
        return {int(values[0]): 1}
    # heap of (count, tie-breaker, symbols in this subtree); every merge adds a bit to its symbols
    heap = [(int(c), i, [int(v)]) for i, (v, c) in enumerate(zip(values, counts))]
    heapq.heapify(heap)
    lengths = {int(v): 0 for v in values}
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def huffman_bits(symbols: torch.Tensor) -> int:
    """Bits of ``symbols`` Huffman-coded with their own optimal code (code table not counted).

    >>> huffman_bits(torch.tensor([0, 0, 0, 0, 1, 1, 2, 3]))   # 4*1 + 2*2 + 3 + 3
    14
    """
    values, counts = torch.unique(symbols.reshape(-1), return_counts=True)
    lengths = huffman_code_lengths(symbols)
    return sum(int(c) * lengths[int(v)] for v, c in zip(values, counts))

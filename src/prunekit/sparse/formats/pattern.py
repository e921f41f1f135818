"""FKW (filter-kernel-weight) storage for pattern-pruned conv weights (PatDNN, Niu et al. 2020).

Each (kh, kw) kernel of a conv weight (Cout, Cin, kh, kw) is either removed entirely
(connectivity pruning) or keeps only the positions of one pattern from a small pattern set.
FKW stores

* ``patterns`` (P, kh, kw) bool: the pattern set;
* ``filter_ptr`` (Cout+1,): where each filter's kernels start in the kernel arrays;
* ``kernel_channel`` (K,): the input channel of each kept kernel;
* ``kernel_pattern`` (K,): the pattern id of each kept kernel;
* ``values``: the kept values only, kernel after kernel, each in its pattern's row-major order.

Inside a filter, kernels are grouped by pattern id (then by channel), so a kernel can run one
pattern-specialised loop per group. :meth:`FKWWeight.groups` hands a conv kernel everything it
needs per pattern: the (dy, dx) offsets, the (filter, channel) pairs and an (n, k) value matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.errors import ConfigError
from prunekit.sparse.formats.base import SparseFormat, index_dtype


@dataclass(frozen=True)
class PatternGroup:
    """All kept kernels that share one pattern: what a pattern-specialised conv loop consumes.

    ``out[:, filters[i]] += sum_j values[i, j] * x_padded[:, channels[i], y + offsets[j, 0], x + offsets[j, 1]]``
    (cross-correlation, offsets are kernel positions (dy, dx) before stride/dilation).
    """

    pattern_id: int
    offsets: torch.Tensor  # (k, 2) int64 kernel positions (dy, dx), row-major
    filters: torch.Tensor  # (n,) int64 output channel of each kernel
    channels: torch.Tensor  # (n,) int64 input channel of each kernel
    values: torch.Tensor  # (n, k) kept values, column j at offsets[j]


def _check_conv(dense: torch.Tensor) -> torch.Tensor:
    if not isinstance(dense, torch.Tensor):
        raise ConfigError(f"FKWWeight.pack expects a torch.Tensor, got {type(dense).__name__}")
    if dense.ndim != 4 or dense.layout != torch.strided:
        raise ConfigError(f"FKWWeight.pack needs a dense conv weight (Cout, Cin, kh, kw), got shape "
                          f"{tuple(dense.shape)}; pattern storage applies to Conv2d weights only")
    return dense.detach().cpu()


def _assign_patterns(support: torch.Tensor, patterns: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Pattern id (smallest covering pattern, lowest id on ties) for each kernel support (K, kk)."""
    flat = patterns.reshape(patterns.shape[0], support.shape[1])  # (P, kk)
    covered = ~(support[:, None, :] & ~flat[None]).any(dim=-1)  # (K, P)
    if not bool(covered.any(dim=1).all()):
        k = int((~covered.any(dim=1)).nonzero()[0])
        f, c = (int(v) for v in where[k])
        pos = support[k].nonzero().flatten().tolist()
        raise ConfigError(f"kernel (filter {f}, input channel {c}) has nonzeros at flat positions {pos}, which no "
                          f"pattern of the {flat.shape[0]}-pattern set covers; prune it with the same Pattern set "
                          "or let FKWWeight.pack derive the set (patterns=None)")
    sizes = flat.sum(dim=1)  # (P,)
    cost = torch.where(covered, sizes[None].expand_as(covered), torch.full_like(covered, 10**9, dtype=torch.int64))
    return cost.argmin(dim=1)  # first minimum = lowest id


@dataclass(frozen=True, eq=False)
class FKWWeight(SparseFormat):
    """Pattern-pruned conv weight in FKW form.

    >>> w = torch.zeros(2, 3, 3, 3)
    >>> w[0, 0, 1, :] = 1.; w[0, 2, :, 1] = 2.; w[1, 1, 1, :] = 3.   # channel (0,1),(1,0),(1,2) removed
    >>> f = FKWWeight.pack(w)
    >>> f.patterns.shape[0], f.filter_ptr.tolist(), f.kernel_channel.tolist(), f.num_removed
    (2, [0, 2, 3], [0, 2, 1], 3)
    >>> f.nbytes()   # 2*9 pattern bools + 3 ptrs + 3 channels + 3 ids (uint8) + 9 fp32 values
    63
    >>> torch.equal(f.unpack(), w)
    True
    """

    patterns: torch.Tensor  # (P, kh, kw) bool
    filter_ptr: torch.Tensor  # (Cout+1,) smallest dtype holding K
    kernel_channel: torch.Tensor  # (K,) smallest dtype holding Cin-1
    kernel_pattern: torch.Tensor  # (K,) smallest dtype holding P-1
    values: torch.Tensor  # (sum of kept pattern sizes,) dense dtype
    shape: tuple[int, ...]

    @classmethod
    def pack(cls, dense: torch.Tensor, patterns: torch.Tensor | None = None) -> FKWWeight:
        """Store a conv weight whose nonzero kernels each fit one pattern.

        ``patterns`` (P, kh, kw) or (P, kh*kw) bool is the allowed set; by default it is the set of distinct
        nonzero supports found in ``dense``. A kernel with fewer nonzeros than its pattern
        stores explicit zeros for the rest (the smallest covering pattern is chosen).
        """
        w = _check_conv(dense)
        cout, cin, kh, kw = w.shape
        kernels = w.reshape(cout, cin, kh * kw)  # (Cout, Cin, kk)
        support = kernels != 0
        alive = support.any(dim=-1)  # (Cout, Cin)
        where = alive.nonzero()  # (K, 2) (filter, channel), row-major
        kept_support = support[alive]  # (K, kk)
        if patterns is None:
            flat = torch.unique(kept_support, dim=0) if kept_support.numel() else torch.zeros(0, kh * kw, dtype=torch.bool)
            patterns = flat.reshape(-1, kh, kw)
        else:
            patterns = torch.as_tensor(patterns).detach().cpu().to(torch.bool)
            if patterns.ndim == 2 and patterns.shape[1] == kh * kw:  # (P, kh*kw) as granularity.Pattern keeps it
                patterns = patterns.reshape(-1, kh, kw)
            if patterns.ndim != 3 or tuple(patterns.shape[1:]) != (kh, kw):
                raise ConfigError(f"patterns must be (P, {kh}, {kw}) to match the kernel size, got {tuple(patterns.shape)}")
        pid = (_assign_patterns(kept_support, patterns, where) if len(where) else torch.zeros(0, dtype=torch.int64))
        # Group kernels by pattern inside each filter: sort by (filter, pattern, channel).
        nump = max(patterns.shape[0], 1)
        order = torch.argsort((where[:, 0] * nump + pid) * cin + where[:, 1])
        where, pid = where[order], pid[order]
        masks = patterns.reshape(patterns.shape[0], kh * kw)[pid]  # (K, kk)
        values = kernels[where[:, 0], where[:, 1]][masks]  # kept positions, kernel by kernel
        k = int(where.shape[0])
        filter_ptr = torch.zeros(cout + 1, dtype=torch.int64)
        filter_ptr[1:] = torch.cumsum(torch.bincount(where[:, 0], minlength=cout), dim=0)
        return cls(patterns=patterns.clone(), filter_ptr=filter_ptr.to(index_dtype(k)),
                   kernel_channel=where[:, 1].to(index_dtype(max(cin - 1, 0))),
                   kernel_pattern=pid.to(index_dtype(max(patterns.shape[0] - 1, 0))),
                   values=values.clone(), shape=tuple(int(s) for s in w.shape))

    @property
    def num_kernels(self) -> int:
        """Kept (non-removed) kernels."""
        return int(self.kernel_channel.numel())

    @property
    def num_removed(self) -> int:
        """Kernels removed by connectivity pruning (all-zero kernels)."""
        return self.shape[0] * self.shape[1] - self.num_kernels

    def kernel_filter(self) -> torch.Tensor:
        """Output channel of each kept kernel, (K,) int64."""
        ptr = self.filter_ptr.to(torch.int64)
        return torch.repeat_interleave(torch.arange(self.shape[0]), ptr[1:] - ptr[:-1])

    def kernel_masks(self) -> torch.Tensor:
        """The flattened pattern of each kept kernel, (K, kh*kw) bool."""
        kk = self.shape[2] * self.shape[3]
        return self.patterns.reshape(self.patterns.shape[0], kk)[self.kernel_pattern.to(torch.int64)]

    def unpack(self) -> torch.Tensor:
        """The dense conv weight, in the original shape and dtype."""
        cout, cin, kh, kw = self.shape
        kernels = torch.zeros(self.num_kernels, kh * kw, dtype=self.values.dtype)  # (K, kk)
        kernels[self.kernel_masks()] = self.values
        dense = torch.zeros(cout, cin, kh * kw, dtype=self.values.dtype)
        dense[self.kernel_filter(), self.kernel_channel.to(torch.int64)] = kernels
        return dense.reshape(self.shape)

    def groups(self) -> list[PatternGroup]:
        """One :class:`PatternGroup` per pattern that is used, in pattern-id order."""
        kw = self.shape[3]
        pid = self.kernel_pattern.to(torch.int64)
        sizes = self.kernel_masks().sum(dim=1)  # (K,)
        start = torch.cumsum(sizes, dim=0) - sizes  # (K,) first value of each kernel
        filters, channels = self.kernel_filter(), self.kernel_channel.to(torch.int64)
        out = []
        for p in torch.unique(pid).tolist():
            sel = (pid == p).nonzero().flatten()  # (n,)
            pos = self.patterns[p].reshape(-1).nonzero().flatten()  # (k,)
            offsets = torch.stack([pos // kw, pos % kw], dim=1)  # (k, 2)
            gather = start[sel][:, None] + torch.arange(pos.numel())[None]  # (n, k)
            out.append(PatternGroup(pattern_id=p, offsets=offsets, filters=filters[sel], channels=channels[sel],
                                    values=self.values[gather]))
        return out

    def filter_reorder(self) -> torch.Tensor:
        """PatDNN's filter kernel reorder: filters by kept-kernel count, descending (stable), (Cout,)."""
        ptr = self.filter_ptr.to(torch.int64)
        return torch.argsort(ptr[1:] - ptr[:-1], descending=True, stable=True)

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"patterns": self.patterns, "filter_ptr": self.filter_ptr, "kernel_channel": self.kernel_channel,
                "kernel_pattern": self.kernel_pattern, "values": self.values}

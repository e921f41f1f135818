"""Weight sharing (Deep Compression, Han et al. ICLR 2016): a k-means codebook per layer.

The nonzero weights of a layer are clustered into ``2**bits - 1`` centroids (linear
initialisation between the min and max weight, as the paper found best); code 0 is reserved for
an exact 0.0 so that pruned weights and EIE's padding entries stay zero. Each weight is then
stored as a ``bits``-bit code into the codebook.

Codebook fine-tuning: :class:`SharedWeightLinear` computes its weight as ``codebook[codes]``, so
autograd sums the gradients of every weight in a cluster into that cluster's centroid — the
Deep Compression update; the training loop that runs it is training code,
:func:`prunekit.train.codebook.finetune_codebook`.

k-means here is a 1-D Lloyd iteration in torch: with sorted centroids the nearest one is a
``bucketize`` on the midpoints, so each step is O(n log k), deterministic and dependency-free
(scikit-learn's KMeans would also accept the linear init, but adds a dependency and a
float64 copy for no gain in 1-D).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.moduletools import replace_submodule


def kmeans_1d(values: torch.Tensor, k: int, max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster 1-D ``values`` into ``k`` centroids, linearly initialised between min and max.

    Returns ``(centroids (k,) sorted ascending, assignment (n,) int64)``; every value is
    assigned to its nearest final centroid. A cluster that ends up empty keeps its previous
    centroid. Values with at most ``k`` distinct entries are reproduced exactly (the distinct
    values become the centroids, the last one repeated). Computed in float64.

    >>> c, a = kmeans_1d(torch.tensor([0.1, 0.2, 0.9, 1.0]), 2)
    >>> [round(v, 2) for v in c.tolist()], a.tolist()
    ([0.15, 0.95], [0, 0, 1, 1])
    """
    if k < 1:
        raise ConfigError(f"k-means needs k >= 1 clusters, got {k}")
    x = values.detach().reshape(-1).to(torch.float64).cpu()  # (n,)
    if x.numel() == 0:
        return torch.zeros(k, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    distinct = torch.unique(x)  # sorted
    if distinct.numel() <= k:  # already shareable: the distinct values are the optimal centroids
        centroids = torch.cat([distinct, distinct[-1:].expand(k - distinct.numel())])
        return centroids, torch.searchsorted(distinct, x)
    # In 1-D every cluster is a contiguous run of the sorted values, so one sort plus prefix
    # sums turn each Lloyd step into k binary searches.
    xs = x.sort().values  # (n,)
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(xs, dim=0)])  # (n+1,)
    n = xs.numel()
    centroids = torch.linspace(float(xs[0]), float(xs[-1]), k, dtype=torch.float64)  # (k,)
    cuts = torch.zeros(0, dtype=torch.int64)
    for step in range(max_iter):
        centroids = centroids.sort().values
        new_cuts = torch.searchsorted(xs, (centroids[1:] + centroids[:-1]) / 2, right=True)  # (k-1,)
        if step > 0 and torch.equal(new_cuts, cuts):
            break
        cuts = new_cuts
        starts = torch.cat([torch.zeros(1, dtype=torch.int64), cuts])  # (k,)
        ends = torch.cat([cuts, torch.full((1,), n, dtype=torch.int64)])  # (k,)
        counts = ends - starts
        sums = prefix[ends] - prefix[starts]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    centroids = centroids.sort().values
    return centroids, torch.bucketize(x, (centroids[1:] + centroids[:-1]) / 2)


def nearest_codes(values: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Code (index into ``codebook[1:]``, plus one) of the nearest nonzero centroid for each value.

    >>> nearest_codes(torch.tensor([0.9, -1.2]), torch.tensor([0., -1., 1.])).tolist()
    [2, 1]
    """
    centroids = codebook[1:].to(torch.float64)  # (K-1,)
    order = centroids.argsort()
    ordered = centroids[order]
    bucket = torch.bucketize(values.detach().to(torch.float64).reshape(-1), (ordered[1:] + ordered[:-1]) / 2)
    return (order[bucket] + 1).reshape(values.shape)


def share_weights(dense: torch.Tensor, bits: int = 4, max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise the nonzeros of ``dense`` to a ``2**bits``-entry codebook (entry 0 is 0.0).

    Returns ``(codebook (2**bits,) in dense's dtype, codes (same shape as dense) int64)``;
    ``codebook[codes]`` is the shared weight and is zero exactly where ``dense`` is.

    >>> w = torch.tensor([[0., 0.1, 0.2], [0.9, 1.0, 0.]])
    >>> cb, codes = share_weights(w, bits=2)
    >>> codes.tolist()
    [[0, 1, 1], [3, 3, 0]]
    >>> torch.equal(cb[codes] != 0, w != 0)
    True
    """
    if not 1 <= bits <= 16:
        raise ConfigError(f"weight sharing needs 1 <= bits <= 16, got {bits}")
    nonzero = dense != 0
    values = dense.detach()[nonzero].cpu()
    centroids, _ = kmeans_1d(values, 2**bits - 1, max_iter)
    codebook = torch.cat([torch.zeros(1, dtype=torch.float64), centroids]).to(dense.dtype)  # (2**bits,)
    codes = torch.zeros(dense.shape, dtype=torch.int64)
    codes[nonzero.cpu()] = nearest_codes(values, codebook)  # nearest in the stored dtype
    return codebook, codes


def centroid_grad(weight_grad: torch.Tensor, codes: torch.Tensor, size: int) -> torch.Tensor:
    """Deep Compression's centroid gradient: per code, the sum of the gradients of its weights.

    >>> centroid_grad(torch.tensor([1., 2., 3.]), torch.tensor([1, 1, 2]), 3).tolist()
    [0.0, 3.0, 3.0]
    """
    return torch.zeros(size, dtype=weight_grad.dtype).index_add_(0, codes.reshape(-1), weight_grad.reshape(-1))


class SharedWeightLinear(nn.Module):
    """A Linear layer whose weight is ``codebook[codes]``; only the centroids (and bias) train.

    Code 0 is the fixed zero (pruned weights stay pruned). Gradients of the weights sharing a
    centroid are summed into it by autograd.

    >>> lin = nn.Linear(4, 3)
    >>> shared = SharedWeightLinear.from_linear(lin, bits=2)
    >>> shared(torch.randn(2, 4)).shape
    torch.Size([2, 3])
    >>> len(shared.weight().unique()) <= 4
    True
    """

    def __init__(self, codes: torch.Tensor, codebook: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if codes.ndim != 2:
            raise ConfigError(f"SharedWeightLinear needs 2-D codes (out, in), got shape {tuple(codes.shape)}")
        if codebook.ndim != 1 or codebook.numel() < 2 or float(codebook[0]) != 0.0:
            raise ConfigError("codebook must be 1-D with at least 2 entries and entry 0 equal to 0.0")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook.numel()):
            raise ConfigError(f"codes must lie in [0, {codebook.numel() - 1}]")
        self.out_features, self.in_features = (int(s) for s in codes.shape)
        self.register_buffer("codes", codes.to(torch.int64).clone())  # (out, in)
        self.centroids = nn.Parameter(codebook[1:].detach().clone())  # (K-1,)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 4, max_iter: int = 100) -> SharedWeightLinear:
        """Cluster ``linear``'s nonzero weights into ``2**bits - 1`` shared values."""
        codebook, codes = share_weights(linear.weight.detach().cpu(), bits, max_iter)
        bias = linear.bias.detach().cpu() if linear.bias is not None else None
        return cls(codes, codebook, bias).to(linear.weight.device)

    def codebook(self) -> torch.Tensor:
        """The full codebook: (K,) with entry 0 fixed at 0.0."""
        return torch.cat([self.centroids.new_zeros(1), self.centroids])

    def weight(self) -> torch.Tensor:
        """The shared weight ``codebook[codes]``, (out, in)."""
        return self.codebook()[self.codes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)  # (..., out)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the shared (quantised) weight."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        lin = lin.to(device=self.centroids.device, dtype=self.centroids.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, codebook={self.centroids.numel() + 1}"


def share_linear_layers(model: nn.Module, bits: int = 4, names: Iterable[str] | None = None,
                        max_iter: int = 100) -> list[str]:
    """Replace ``nn.Linear`` layers of ``model`` (all, or those in ``names``) by shared-weight ones.

    Returns the replaced module names. Undo with :func:`unshare_linear_layers`.

    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> share_linear_layers(net, bits=2)
    ['0', '2']
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    chosen = list(linears) if names is None else list(names)
    for name in chosen:
        if name not in linears:
            from prunekit.errors import close_matches

            raise ConfigError(f"no nn.Linear named {name!r} in the model; {close_matches(name, list(linears))}")
        replace_submodule(model, name, SharedWeightLinear.from_linear(linears[name], bits, max_iter))
    return chosen


def unshare_linear_layers(model: nn.Module) -> list[str]:
    """Replace every :class:`SharedWeightLinear` by a plain ``nn.Linear`` with the shared weight."""
    shared = [(n, m) for n, m in model.named_modules() if isinstance(m, SharedWeightLinear)]
    for name, module in shared:
        replace_submodule(model, name, module.to_linear())
    return [n for n, _ in shared]

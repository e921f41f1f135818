"""Inference modules that compute a Linear / Conv2d from a packed sparse weight.

``SparseLinear.from_dense(linear, kernel=...)`` and ``SparseConv2d.from_dense(conv, kernel=...)``
pack the (already pruned, zero-holding) weight once and run one of the kernels named in
:mod:`prunekit.sparse.kernels`. Outputs equal the dense layer's within float tolerance (the
sums run in a different order). They are inference modules: the packed arrays are buffers, not
parameters, and an input that needs a gradient is refused.

Only plain (strided) tensors are stored, so the modules deep-copy, pickle, ``state_dict`` and
move between devices like any module; the torch sparse tensor is rebuilt (without a copy) per call.

``SemiStructuredLinear`` runs a 2:4 weight on CUDA sparse tensor cores
(``torch.sparse.to_sparse_semi_structured``); it needs a GPU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError, UnsupportedError
from prunekit.sparse.formats import PacketCSRMatrix, check_nm, index_dtype
from prunekit.sparse.kernels import numba_available, numba_csr
from prunekit.sparse.kernels.impl import Kernel, _torch_sparse, get_kernel

DEFAULT_BLOCK: tuple[int, int] = (4, 4)


def fitting_block(rows: int, cols: int, largest: int = DEFAULT_BLOCK[0]) -> tuple[int, int]:
    """The largest square block (halving from ``largest``) that divides a (rows, cols) matrix.

    torch's CPU BSR matmul (MKL) takes square blocks only.

    >>> fitting_block(8, 27), fitting_block(16, 64), fitting_block(6, 10)
    ((1, 1), (4, 4), (2, 2))
    """
    b = largest
    while b > 1 and (rows % b or cols % b):
        b //= 2
    return b, b


def resolve_kernel(kernel: str) -> str:
    """Map ``"auto"`` to the best general kernel here (``numba_csr`` if numba is installed,
    else ``torch_csr``; a Linear layer may get ``numba_packet``, see :func:`auto_linear_kernel`)
    and check any other name.

    >>> resolve_kernel("torch_csr")
    'torch_csr'
    """
    if kernel == "auto":
        return "numba_csr" if numba_available() else "torch_csr"
    impl = get_kernel(kernel)  # ConfigError listing every kernel for an unknown name
    if not impl.available():
        raise ConfigError(f"kernel {kernel!r} needs numba: pip install numba (extra 'kernels'), "
                          "or use kernel='torch_csr'")
    return kernel


def auto_linear_kernel(weight: torch.Tensor) -> str:
    """``kernel="auto"`` for a Linear weight (out, in): ``numba_packet`` where packet CSR stores it
    in fewer bytes than CSR (the batch-1 loop is bound by those bytes: up to ~93 % sparsity on a
    wide layer), else ``numba_csr``; ``torch_csr`` without numba.

    >>> w = torch.zeros(4, 4096)
    >>> w[:, ::10] = 1.0                      # 90 % sparse
    >>> auto_linear_kernel(w) if numba_available() else "numba_packet"
    'numba_packet'
    """
    return "numba_packet" if _smaller_packets(weight) is not None else resolve_kernel("auto")


def _smaller_packets(weight: torch.Tensor) -> PacketCSRMatrix | None:
    """The packet-CSR form of ``weight`` if numba is here and it takes fewer bytes than CSR, else None."""
    if resolve_kernel("auto") != "numba_csr":
        return None
    packets = PacketCSRMatrix.pack(weight.detach().cpu())
    rows, cols = packets.matrix_shape
    nnz = packets.nnz  # CSR's bytes follow from it: values, smallest column and pointer dtypes
    csr_bytes = (nnz * (packets.values.element_size() + index_dtype(max(cols - 1, 0)).itemsize)
                 + (rows + 1) * index_dtype(nnz).itemsize)
    return packets if packets.nbytes() < csr_bytes else None


def input_shape_error(layer: str, expected: str, x: torch.Tensor) -> ConfigError:
    """The one wrong-input-shape error of the sparse modules, whatever their kernel.

    >>> input_shape_error("SparseLinear", "(..., 784)", torch.zeros(2, 100))
    ConfigError('SparseLinear expects input (..., 784), got (2, 100)')
    """
    return ConfigError(f"{layer} expects input {expected}, got {tuple(x.shape)}")


class _SparseMatrixOp(nn.Module):
    """Holds one packed (N, K) weight matrix for one kernel and multiplies it by a dense matrix."""

    def _pack(self, weight2d: torch.Tensor, kernel: str, block: tuple[int, int] | None,
              packets: PacketCSRMatrix | None = None) -> None:
        """Register the buffers ``kernel`` needs for the (N, K) fp32 matrix ``weight2d``.

        ``block`` (BSR only): None picks :func:`fitting_block`. ``packets`` (numba_packet only):
        ``weight2d`` already packed, e.g. by ``kernel="auto"``'s size comparison.
        """
        w = weight2d.detach().cpu()
        if block is None:
            block = fitting_block(int(w.shape[0]), int(w.shape[1]))
        elif get_kernel(kernel).uses_blocks and block[0] != block[1]:
            raise UnsupportedError(f"torch's CPU BSR kernel needs square blocks, got {tuple(block)}")
        if kernel != "dense" and w.dtype != torch.float32:
            raise UnsupportedError(f"sparse kernel {kernel!r} runs fp32 weights, got {w.dtype}; "
                                   "call .float() on the layer first or use kernel='dense'")
        self.kernel = kernel
        self.matrix_shape = (int(w.shape[0]), int(w.shape[1]))
        self.block = tuple(block) if get_kernel(kernel).uses_blocks else None
        get_kernel(kernel).pack(self, w, block, packets)

    @property
    def _impl(self) -> Kernel:
        """The registered kernel object this module runs (looked up by its name)."""
        return get_kernel(self.kernel)

    def _torch_sparse(self) -> torch.Tensor:
        """The weight as a torch sparse CSR/BSR tensor over this module's buffers (no copy)."""
        return _torch_sparse(self, self._impl)

    def dense_weight2d(self) -> torch.Tensor:
        """The (N, K) dense weight, rebuilt from the packed arrays."""
        return self._impl.dense(self)

    @property
    def density(self) -> float:
        """Stored values / N*K (for BSR: stored block elements)."""
        n, k = self.matrix_shape
        return float(self._impl.stored(self)) / max(n * k, 1)

    @property
    def index_dtype_name(self) -> str:
        """The column index dtype(s) read per stored value, e.g. ``int16``; packet CSR:
        ``uint8+int16`` (offsets + packet bases); dense: ``-``."""
        return self._impl.index_dtype(self)

    def packed_nbytes(self) -> int:
        """Bytes of the buffers this kernel reads (values + indices, or the dense weight)."""
        return sum(b.numel() * b.element_size() for name, b in self.named_buffers() if name != "bias")

    # The numba kernel reads numpy views of the buffers (and the bias), made once: building them
    # per call costs more than a small layer's whole product. Anything that may replace a buffer
    # (assignment, .to()/.float(), load_state_dict) drops the views; they are rebuilt on next use.

    def _numba_arrays(self) -> numba_csr.CSRArrays:
        """The packed buffers (and bias) as numpy views for the compiled loops."""
        arrays = self.__dict__.get("_arrays_cache")
        if arrays is None:
            arrays = self._impl.numba_arrays(self)
            self.__dict__["_arrays_cache"] = arrays
        return arrays

    def _drop_arrays(self) -> None:
        self.__dict__.pop("_arrays_cache", None)
        self.__dict__.pop("_plans_cache", None)

    def __setattr__(self, name: str, value: object) -> None:
        if name != "training":  # eval() / train() change no buffer: keep the views (and their thread policy)
            self._drop_arrays()
        super().__setattr__(name, value)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        self._drop_arrays()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args) -> None:  # type: ignore[no-untyped-def]
        self._drop_arrays()
        super()._load_from_state_dict(*args)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_arrays_cache", None)  # numpy views of the buffers: rebuilt on first use
        state.pop("_plans_cache", None)
        return state

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.is_grad_enabled() and x.requires_grad:
            raise UnsupportedError(f"{type(self).__name__} is an inference module: run it under "
                                   "torch.no_grad(), or keep the dense layer to train")

    def matmul_t(self, xt: torch.Tensor) -> torch.Tensor:
        """Y (N, L) = W (N, K) @ X (K, L)."""
        return self._impl.matmul_t(self, xt)


class SparseLinear(_SparseMatrixOp):
    """A Linear layer computed from a packed sparse weight.

    >>> lin = nn.Linear(8, 4)
    >>> with torch.no_grad():
    ...     lin.weight[:, ::2] = 0
    >>> sp = SparseLinear.from_dense(lin, kernel="torch_csr")
    >>> x = torch.randn(3, 8)
    >>> with torch.no_grad():
    ...     torch.allclose(sp(x), lin(x), atol=1e-6)
    True
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str = "auto",
                 block: tuple[int, int] | None = None) -> None:
        super().__init__()
        if weight.ndim != 2:
            raise ConfigError(f"SparseLinear needs a 2-D weight (out, in), got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = (int(s) for s in weight.shape)
        packets = _smaller_packets(weight) if kernel == "auto" else None
        kernel = "numba_packet" if packets is not None else resolve_kernel(kernel)
        self._pack(weight, kernel, block, packets)
        self.register_buffer("bias", None if bias is None else bias.detach().cpu().clone())

    @classmethod
    def from_dense(cls, linear: nn.Linear, kernel: str = "auto",
                   block: tuple[int, int] | None = None) -> SparseLinear:
        """Pack ``linear``'s weight (zeros included as they are) for ``kernel``."""
        if not isinstance(linear, nn.Linear):
            raise ConfigError(f"SparseLinear.from_dense expects nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, linear.bias, kernel=kernel, block=block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = self._impl
        if impl.batch1_loop:
            out = self._forward_batch1(x)  # needs no grad check: x.numpy() refuses a tensor that requires grad
            if out is not None:
                return out
        if x.ndim == 0 or x.shape[-1] != self.in_features:  # before any kernel: one message for all
            raise input_shape_error("SparseLinear", f"(..., {self.in_features})", x)
        self._check_input(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (B, K)
        if impl.skips_zero_inputs:  # reads only the weight columns whose input is nonzero; bias fused
            out = numba_csr.csc_matmul(self._numba_arrays(), x2.to(torch.float32), self.out_features)  # (B, N)
            return out.reshape(*lead, self.out_features)
        if impl.dense_op:
            out = F.linear(x2, self.weight2d)  # (B, N)
        else:
            out = self.matmul_t(x2.t()).t()  # (B, N)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)

    def _forward_batch1(self, x: torch.Tensor) -> torch.Tensor | None:
        """The batch-1 fp32 product through the numba loop (bias fused), or None when ``x`` is not
        one contiguous fp32 CPU row (the general path then handles it).

        It works on numpy views, with two torch calls in all (``x.numpy()``, ``torch.from_numpy``):
        after the previous layer has streamed its weights through the caches, each torch call
        costs ~5-60 us instead of ~0.5 us (see :func:`prunekit.sparse.kernels.numba_csr.spmv_into`).
        ``x.numpy()`` raises for a tensor that requires grad, so that case reaches the general path
        and its grad check without a separate (cold: 2-12 us) ``torch.is_grad_enabled()`` call here.
        """
        try:
            xn = x.numpy()  # raises for a tensor that requires grad, a CUDA tensor, bf16, ...
        except (RuntimeError, TypeError):
            return None
        if (xn.ndim == 0 or xn.shape[-1] != self.in_features or xn.size != self.in_features
                or xn.dtype != np.float32 or not xn.flags.c_contiguous):
            return None
        out = np.empty((*xn.shape[:-1], self.out_features), np.float32)  # (*lead, N)
        numba_csr.spmv_into(self._numba_arrays(), xn.reshape(self.in_features), out.reshape(self.out_features))
        return torch.from_numpy(out)

    def to_dense(self) -> nn.Linear:
        """An equivalent ``nn.Linear`` (for export or training)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.dense_weight2d())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"kernel={self.kernel}, density={self.density:.3f}")


class SparseConv2d(_SparseMatrixOp):
    """A Conv2d computed from a packed sparse weight.

    The (Cout, Cin, kh, kw) weight is packed through its GEMM view (Cout, Cin*kh*kw). The torch
    kernels multiply it with the unfolded input (im2col, ``F.unfold``: (Cin*kh*kw, Hout*Wout) per
    image); ``numba_csr`` runs a direct sparse convolution instead (no im2col matrix, see
    :func:`prunekit.sparse.kernels.numba_csr.conv2d`).

    >>> conv = nn.Conv2d(3, 4, 3, padding=1)
    >>> sp = SparseConv2d.from_dense(conv, kernel="torch_csr")
    >>> x = torch.randn(2, 3, 5, 5)
    >>> with torch.no_grad():
    ...     torch.allclose(sp(x), conv(x), atol=1e-5)
    True
    """

    def __init__(self, conv: nn.Conv2d, kernel: str = "auto", block: tuple[int, int] | None = None) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise ConfigError(f"SparseConv2d expects nn.Conv2d, got {type(conv).__name__}")
        if kernel != "auto" and get_kernel(kernel).linear_only:
            raise UnsupportedError(f"kernel {kernel!r} runs Linear layers only; "
                                   "use numba_csr (direct sparse convolution) for convs")
        if conv.groups != 1:
            raise UnsupportedError(f"SparseConv2d supports groups=1 only, got groups={conv.groups} "
                                   "(depthwise/grouped convs stay dense)")
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise UnsupportedError(f"SparseConv2d needs numeric zero padding, got padding={conv.padding!r}, "
                                   f"padding_mode={conv.padding_mode!r}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride, self.padding, self.dilation = tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation)
        weight = conv.weight.detach()
        self._pack(weight.reshape(weight.shape[0], -1), resolve_kernel(kernel), block)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().cpu().clone())

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, kernel: str = "auto",
                   block: tuple[int, int] | None = None) -> SparseConv2d:
        """Pack ``conv``'s weight for ``kernel``."""
        return cls(conv, kernel=kernel, block=block)

    def _conv_plan(self, x: torch.Tensor) -> numba_csr.ConvPlan:
        """The numba kernel's plan for this input size (made once per size, dropped with the
        numpy views when a buffer changes)."""
        hw = (int(x.shape[2]), int(x.shape[3]))
        plans = self.__dict__.setdefault("_plans_cache", {})
        if hw not in plans:
            plans[hw] = numba_csr.conv_plan(self._numba_arrays().col, self.in_channels, hw, self.kernel_size,
                                            self.stride, self.padding, self.dilation)
        return plans[hw]

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def _check_shape(self, x: torch.Tensor) -> None:
        """(B, in_channels, H, W) with H, W at least the (dilated) kernel after padding; same for every kernel."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise input_shape_error("SparseConv2d", f"(B, {self.in_channels}, H, W)", x)
        ho, wo = self._out_hw(int(x.shape[2]), int(x.shape[3]))
        if ho < 1 or wo < 1:
            (kh, kw), (ph, pw), (dh, dw) = self.kernel_size, self.padding, self.dilation
            raise input_shape_error(
                "SparseConv2d", f"(B, {self.in_channels}, H, W) with H, W no smaller than the kernel "
                f"{kh}x{kw} (padding {ph}x{pw}, dilation {dh}x{dw})", x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_shape(x)  # before any kernel: one message for all
        self._check_input(x)
        impl = self._impl
        if impl.dense_op:
            weight = self.weight2d.reshape(self.out_channels, self.in_channels, *self.kernel_size)
            return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation)
        if impl.direct_conv:
            return numba_csr.conv2d(self._numba_arrays(), self._conv_plan(x), x.to(torch.float32),
                                    self.out_channels)
        b, _, h, w = x.shape
        ho, wo = self._out_hw(h, w)
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, K, L)
        if b == 1:
            out = self.matmul_t(cols[0]).unsqueeze(0)  # (1, N, L)
        else:
            k, length = cols.shape[1], cols.shape[2]
            xt = cols.transpose(0, 1).reshape(k, b * length)  # (K, B*L)
            out = self.matmul_t(xt).reshape(self.out_channels, b, length).transpose(0, 1)  # (B, N, L)
        out = out.reshape(b, self.out_channels, ho, wo)
        if self.bias is not None:
            out = out + self.bias.reshape(1, -1, 1, 1)
        return out

    def to_dense(self) -> nn.Conv2d:
        """An equivalent ``nn.Conv2d`` (for export or training)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, bias=self.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight2d().reshape(conv.weight.shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, kernel={self.kernel}, "
                f"density={self.density:.3f}")


# torch's semi-structured (2:4) weights, per dtype: (rows, cols) must be multiples of these.
# The CUTLASS backend's limits (torch/sparse/semi_structured.py), which also satisfy cuSPARSELt's.
SEMI_STRUCTURED_MULTIPLES: dict[torch.dtype, tuple[int, int]] = {
    torch.float16: (32, 64),
    torch.bfloat16: (32, 64),
    torch.int8: (32, 128),
}


def check_semi_structured(weight: torch.Tensor, dtype: torch.dtype) -> None:
    """Raise a clear error unless ``weight`` (out, in) can become a 2:4 sparse tensor-core weight
    of ``dtype``: a supported dtype, both dimensions multiples of the kernel tile, 2:4 along ``in``.

    >>> w = torch.zeros(64, 128)
    >>> w[:, ::4] = 1.0
    >>> check_semi_structured(w, torch.float16)
    >>> check_semi_structured(w[:, :96], torch.float16)
    Traceback (most recent call last):
    ...
    prunekit.errors.UnsupportedError: 2:4 sparse tensor cores need a float16 weight of (rows, cols) multiples of (32, 64), got (64, 96); pad the layer or keep it dense
    """
    if dtype not in SEMI_STRUCTURED_MULTIPLES:
        raise UnsupportedError(f"2:4 sparse tensor cores run {', '.join(map(str, SEMI_STRUCTURED_MULTIPLES))}, "
                               f"got dtype={dtype}")
    if weight.ndim != 2:
        raise ConfigError(f"expected a 2-D (out, in) weight, got shape {tuple(weight.shape)}")
    rows, cols = (int(v) for v in weight.shape)
    mr, mc = SEMI_STRUCTURED_MULTIPLES[dtype]
    if rows % mr or cols % mc:
        raise UnsupportedError(f"2:4 sparse tensor cores need a {str(dtype).replace('torch.', '')} weight of "
                               f"(rows, cols) multiples of ({mr}, {mc}), got ({rows}, {cols}); pad the layer "
                               "or keep it dense")
    check_nm(weight.detach().cpu(), 2, 4)


class SemiStructuredLinear(nn.Module):
    """A 2:4-sparse Linear on CUDA sparse tensor cores (fp16/bf16/int8), via
    ``torch.sparse.to_sparse_semi_structured``. Needs a GPU with compute capability >= 8.0.

    The weight must already be 2:4 sparse along the input dimension (prune with ``NM(2, 4)``)
    and its shape a multiple of the kernel tile (see :func:`check_semi_structured`). Inputs are
    cast to the layer's dtype and device; the output has the layer's dtype.
    """

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        check_semi_structured(linear.weight, dtype)
        if not torch.cuda.is_available():
            raise UnsupportedError("SemiStructuredLinear needs CUDA (2:4 sparse tensor cores); "
                                   "on CPU use SparseLinear")
        from torch.sparse import to_sparse_semi_structured

        self.in_features, self.out_features, self.dtype = linear.in_features, linear.out_features, dtype
        weight = linear.weight.detach().to(device="cuda", dtype=dtype).contiguous()
        self.weight = nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(
            linear.bias.detach().to(device="cuda", dtype=dtype), requires_grad=False)

    @classmethod
    def from_dense(cls, linear: nn.Linear, dtype: torch.dtype = torch.float16) -> SemiStructuredLinear:
        """Compress ``linear`` (2:4 sparse) for the sparse tensor cores."""
        return cls(linear, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise input_shape_error("SemiStructuredLinear", f"(..., {self.in_features})", x)
        x = x.to(device=self.weight.device, dtype=self.dtype)
        return F.linear(x, self.weight, self.bias)  # (..., N); torch pads small batches to the tile

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}, 2:4"


__all__ = ["SEMI_STRUCTURED_MULTIPLES", "SemiStructuredLinear", "SparseConv2d", "SparseLinear",
           "auto_linear_kernel", "check_semi_structured", "resolve_kernel"]

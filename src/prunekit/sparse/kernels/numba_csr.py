"""CSR x dense kernels compiled with numba (optional: ``pip install numba``, extra ``kernels``).

Loops over the rows of a CSR weight W (N, K), split over threads when more than one is asked for:

* ``spmv_into``: y (N,) = W @ x (K,) -- batch 1; the reduction over a row vectorises (gathers).
* ``spmm_t``: Y (N, L) = W @ X (K, L), X row-major: the inner loop runs over the L contiguous
  columns of X, so it vectorises. A linear layer passes X = x.T.
* ``conv2d``: a direct sparse convolution from the CSR form of the conv's GEMM view
  (Cout, Cin*kh*kw): no im2col matrix is built, each nonzero adds a scaled, shifted input plane.

Batch-1 calls of small layers are dominated by Python overhead, not by the loop, so the modules
convert their buffers to numpy once (:func:`as_arrays`) and call :func:`spmv_into` /
:func:`conv2d`, which take those arrays directly.

Column indices may be uint8 / int16 / int32 / int64 (numba compiles one version per dtype and
caches it on disk), so the bytes read per nonzero are 4 (fp32 value) + the index width.
Indices are handed to numba as *unsigned* views of the same memory (they are never negative):
with signed indices numba adds a negative-index wraparound test to every load, which stops
the loops from vectorising -- measured 3-4x slower for the batch-1 loop on this machine.
Importing this module never fails; :data:`AVAILABLE` says whether numba is there.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from typing import NamedTuple

import numpy as np
import torch

AVAILABLE: bool = importlib.util.find_spec("numba") is not None
PARALLEL_MIN_WORK = 1 << 16  # nonzeros x columns below which one thread does the product
# Direct conv: nonzeros x output-grid pixels below which one thread runs it. Not tuned: chosen so
# that ResNet-20's convs at batch 1 (~0.25M) stay on one thread, where the pool's wake-up would
# cost a large share of their ~40 us.
CONV_PARALLEL_MIN_WORK = 1 << 20


_LOOPS = None
FAST_STATUS: dict[str, str] = {}  # "kind": "fast" | "reference", "why": the reason the fast path is off


class _Loops:
    """The compiled loops in use: the reference module's, with the batch-1 ones (and the cache
    eviction) from the fast path when it builds and agrees with the reference here."""

    def __init__(self, reference, fast=None) -> None:
        for name in ("PACKET", "PREFETCH_AHEAD", "PREFETCH_MIN_BYTES", "CHUNKS_PER_THREAD", "csc_spmm_skip_zeros",
                     "spmm_t_serial", "spmm_t_parallel", "fill_phases", "conv2d_direct_serial",
                     "conv2d_direct_parallel", "numba"):
            setattr(self, name, getattr(reference, name))
        source = fast if fast is not None else reference
        self.spmv_serial, self.spmv_parallel = source.spmv_serial, source.spmv_parallel
        self.evict_lines = getattr(fast, "evict_lines", None)
        self.kind = source.KIND
        self.reference = reference


def _self_check(fast, reference) -> None:
    """Compile the fast batch-1 loops on a small CSR and packet-CSR weight and compare with the reference."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 300)).astype(np.float32) * (rng.random((37, 300)) < 0.2)
    x = rng.standard_normal(300).astype(np.float32)
    from prunekit.sparse.formats import CSRMatrix, PacketCSRMatrix

    for m in (CSRMatrix.pack(torch.from_numpy(w)), PacketCSRMatrix.pack(torch.from_numpy(w))):
        if isinstance(m, PacketCSRMatrix):
            a = as_arrays(m.packet_ptr, m.offsets, m.values, bases=m.bases, loops=reference)
        else:
            a = as_arrays(m.row_ptr, m.col_indices, m.values, loops=reference)
        want, got, got2 = (np.empty(37, np.float32) for _ in range(3))
        reference.spmv_serial(a.row_ptr, a.bases, a.col, a.val, x, a.bias, want, 0)
        fast.spmv_serial(a.row_ptr, a.bases, a.col, a.val, x, a.bias, got, 64)
        fast.spmv_parallel(a.row_ptr, a.bases, a.col, a.val, x, a.bias, got2, 64, 1)
        if not (np.allclose(got, want, rtol=1e-4, atol=1e-4) and np.allclose(got2, want, rtol=1e-4, atol=1e-4)):
            raise RuntimeError("the fast batch-1 loop disagrees with the reference loop on a test weight")


def _loops():
    """The compiled loops (imports numba on first use, so importing prunekit stays fast).

    The fast batch-1 path is tried once: if it does not import, build or agree with the reference
    here, prunekit warns once and uses the reference loops (set ``PRUNEKIT_FAST_KERNELS=0`` to
    choose the reference loops without a warning).
    """
    global _LOOPS
    if _LOOPS is None:
        if not AVAILABLE:
            raise ImportError("numba is not installed: pip install numba (extra 'kernels')")
        import os
        import warnings

        from prunekit.sparse.kernels import _numba_loops

        fast = None
        if os.environ.get("PRUNEKIT_FAST_KERNELS") == "0":
            FAST_STATUS.update(kind="reference", why="PRUNEKIT_FAST_KERNELS=0")
        else:
            torch_threads = torch.get_num_threads()
            try:
                from prunekit.sparse.kernels import _numba_fast

                _self_check(_numba_fast, _numba_loops)  # its parallel call starts numba's threading layer
                fast = _numba_fast
                FAST_STATUS.update(kind="fast", why="")
            except Exception as exc:  # another numba / llvmlite / CPU: run the reference loops
                why = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
                FAST_STATUS.update(kind="reference", why=why)
                warnings.warn(
                    f"prunekit: the fast sparse loops could not be used here ({why}); running the reference "
                    "numba loops (same results, somewhat slower at batch 1)", RuntimeWarning, stacklevel=2)
            finally:
                if torch.get_num_threads() != torch_threads:  # see _threads: numba's omp start-up resets it
                    torch.set_num_threads(torch_threads)
        _LOOPS = _Loops(_numba_loops, fast)
    return _LOOPS


def _prefetch_ahead(loops, val: np.ndarray, col: np.ndarray) -> int:
    """Prefetch distance for the batch-1 loop: none when the weight fits in L2."""
    return loops.PREFETCH_AHEAD if val.nbytes + col.nbytes >= loops.PREFETCH_MIN_BYTES else 0


_UNSIGNED = {np.dtype(np.int8): np.uint8, np.dtype(np.int16): np.uint16,
             np.dtype(np.int32): np.uint32, np.dtype(np.int64): np.uint64}


def _unsigned(index: torch.Tensor) -> np.ndarray:
    """The non-negative integer tensor ``index`` as an unsigned numpy view (no copy)."""
    arr = index.numpy()
    return arr.view(_UNSIGNED[arr.dtype]) if arr.dtype in _UNSIGNED else arr


def _input_array(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view (or copy) of the CPU tensor ``x`` for the compiled loops; a lazily
    negated view (``x._neg_view()``) has no numpy form, so its negation is applied first.

    >>> _input_array(torch.tensor([[1., 2.]])._neg_view()).tolist()
    [[-1.0, -2.0]]
    """
    return x.resolve_neg().contiguous().numpy()


_NUMBA_THREADS = threading.local()  # .n: the count this thread last passed to numba (its setting is per thread)


def _threads(loops) -> int:
    """Threads for the next call: torch's setting, capped by numba's pool.

    numba's own setting is changed only when that number changes: ``numba.set_num_threads``
    costs ~80 us with cold caches, a tenth of a 90 %-sparse 4096x4096 batch-1 product.

    The first ``numba.set_num_threads`` in a process starts numba's ``omp`` threading layer,
    whose start-up calls ``omp_set_num_threads(NUMBA_NUM_THREADS)``; that binds to torch's own
    libgomp, so it silently reset ``torch.get_num_threads()`` to the machine's core count. torch's
    setting is put back here whenever numba moved it.
    """
    torch_threads = torch.get_num_threads()
    n = max(1, min(torch_threads, loops.numba.config.NUMBA_NUM_THREADS))
    if n != getattr(_NUMBA_THREADS, "n", 0):
        loops.numba.set_num_threads(n)
        _NUMBA_THREADS.n = n
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
    return n


class ThreadPolicy:
    """Parallel or serial loop for one weight, whichever its own recent calls measure faster.

    A multi-threaded call waits for every worker it wakes. When other processes hold the cores a
    worker may not run for a scheduler time slice: a 90 %-sparse 4096x4096 batch-1 product at 2
    threads was measured at 15.8 ms beside one busy process, against 0.3 ms quiet and 3.6 ms for
    dense. So every parallel call is timed (``perf_counter``, well under 1 us) into a moving average,
    and so is every serial call (the 3rd and 4th call, every ``PROBE_EVERY``-th, and all calls while
    serial). When the parallel average exceeds ``SLOW`` x the serial one, this weight runs serially
    for ``backoff`` calls, then one parallel call probes again: faster than the current serial
    average, parallel resumes; slower, the backoff doubles (up to ``BACKOFF_MAX``). Quiet, it costs
    one serial call in ``PROBE_EVERY``.

    >>> policy, calls = ThreadPolicy(), []
    >>> policy.run(2, lambda: calls.append("parallel"), lambda: calls.append("serial"))
    >>> policy.run(1, lambda: calls.append("parallel"), lambda: calls.append("serial"))
    >>> calls
    ['parallel', 'serial']
    """

    SLOW = 3.0  # a stalled parallel call is 10-30x slower; mild jitter must not flip the mode
    ALPHA = 0.25  # weight of the newest call in the moving averages
    BACKOFF0 = 32
    BACKOFF_MAX = 4096
    PROBE_EVERY = 512
    __slots__ = ("parallel_s", "serial_s", "serial_left", "backoff", "calls", "probing")

    def __init__(self) -> None:
        self.parallel_s: float | None = None  # moving averages of the call times, seconds
        self.serial_s: float | None = None
        self.serial_left = self.calls = 0
        self.backoff = self.BACKOFF0
        self.probing = False

    @property
    def serial_now(self) -> bool:
        """True while this weight runs serially because its parallel calls measured slower."""
        return self.serial_left > 0

    def _average(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.ALPHA * (new - old)

    def run(self, threads: int, parallel, serial) -> None:
        """Call ``parallel()`` or ``serial()`` (the same product either way)."""
        if threads <= 1:
            serial()
            return
        self.calls += 1
        if self.serial_left > 0 or self.calls in (3, 4) or self.calls % self.PROBE_EVERY == 0:
            t0 = time.perf_counter()
            serial()
            self.serial_s = self._average(self.serial_s, time.perf_counter() - t0)
            if self.serial_left > 0:
                self.serial_left -= 1
                self.probing = self.serial_left == 0
            return
        t0 = time.perf_counter()
        parallel()
        dt = time.perf_counter() - t0
        if self.probing:  # the first parallel call after a serial stretch
            self.probing = False
            if self.serial_s is not None and dt > self.SLOW * self.serial_s:
                self.backoff = min(2 * self.backoff, self.BACKOFF_MAX)
                self.serial_left = self.backoff
            else:
                self.backoff, self.parallel_s = self.BACKOFF0, dt
            return
        self.parallel_s = self._average(self.parallel_s, dt)
        if self.serial_s is not None and self.parallel_s > self.SLOW * self.serial_s:
            self.serial_left, self.parallel_s = self.backoff, None


class CSRArrays(NamedTuple):
    """A CSR weight's arrays as numpy views ready for the compiled loops (see :func:`as_arrays`)."""

    row_ptr: np.ndarray  # (N+1,) unsigned (packet CSR: counts packets)
    col: np.ndarray  # (nnz,) unsigned (packet CSR: (P*16,) uint8 offsets)
    val: np.ndarray  # (nnz,) fp32 (packet CSR: (P*16,))
    bias: np.ndarray  # (N,) fp32, or (0,) for no bias
    prefetch_ahead: int  # prefetch distance of the batch-1 loop in stored values (0: weight fits in L2)
    bases: np.ndarray  # (0,) for CSR; packet CSR: (P,) unsigned first column of each packet
    policy: ThreadPolicy  # parallel or serial, by what the calls on this weight measured


_NO_BIAS = np.zeros(0, np.float32)
_NO_BASES = np.zeros(0, np.uint16)  # the loops' mark for plain CSR


def as_arrays(row_ptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
              bias: torch.Tensor | None = None, bases: torch.Tensor | None = None, loops=None) -> CSRArrays:
    """Numpy views (no copy) of a CSR weight's CPU tensors (indices unsigned) and its bias.

    For a packet-CSR weight (:class:`prunekit.sparse.formats.PacketCSRMatrix`) pass its
    ``packet_ptr``, ``offsets``, ``values`` and ``bases``.

    >>> a = as_arrays(torch.tensor([0, 1]), torch.tensor([2], dtype=torch.int16), torch.tensor([3.0]))
    >>> a.col.dtype.name, a.val.tolist(), a.bias.shape
    ('uint16', [3.0], (0,))
    """
    bias_np = _NO_BIAS if bias is None else bias.detach().to(torch.float32).numpy()
    col_np, val_np = _unsigned(col), val.numpy()
    return CSRArrays(_unsigned(row_ptr), col_np, val_np, bias_np,
                     _prefetch_ahead(loops if loops is not None else _loops(), val_np, col_np),
                     _NO_BASES if bases is None else _unsigned(bases), ThreadPolicy())


def spmv_into(arrays: CSRArrays, x: np.ndarray, out: np.ndarray) -> None:
    """out (N,) = W @ x (K,) + bias, on numpy arrays (contiguous fp32): no torch call at all.

    This is the batch-1 hot path of :class:`prunekit.sparse.SparseLinear`. When the previous
    layer has streamed its weights through the caches, every torch or numpy call on the way
    to the loop costs ~5-70 us instead of ~0.5 us (measured on this repository's 2-core Xeon),
    so the path makes as few as it can.

    >>> from prunekit.sparse.formats import CSRMatrix
    >>> m = CSRMatrix.pack(torch.tensor([[0., 2.], [1., 0.]]))
    >>> a = as_arrays(m.row_ptr.int(), m.col_indices, m.values)
    >>> out = np.empty(2, np.float32)
    >>> spmv_into(a, np.array([1., 3.], np.float32), out)
    >>> out.tolist()
    [6.0, 1.0]
    """
    loops = _LOOPS or _loops()
    threads = _threads(loops) if arrays.val.shape[0] >= PARALLEL_MIN_WORK else 1
    _run_spmv(loops, threads, arrays.row_ptr, arrays.bases, arrays.col, arrays.val, x, arrays.bias, out,
              arrays.prefetch_ahead, arrays.policy)


def _run_spmv(loops, threads: int, row_ptr: np.ndarray, bases: np.ndarray, col: np.ndarray, val: np.ndarray,
              x: np.ndarray, bias: np.ndarray, out: np.ndarray, ahead: int, policy: ThreadPolicy | None = None) -> None:
    """The compiled batch-1 loop: row-chunk parallel over ``threads`` workers, or serial for 1 (or while
    ``policy`` has found the parallel loop slow on a busy machine)."""
    if threads <= 1:
        loops.spmv_serial(row_ptr, bases, col, val, x, bias, out, ahead)
        return
    (policy or ThreadPolicy()).run(
        threads,
        lambda: loops.spmv_parallel(row_ptr, bases, col, val, x, bias, out, ahead, threads),
        lambda: loops.spmv_serial(row_ptr, bases, col, val, x, bias, out, ahead),
    )


class ConvPlan(NamedTuple):
    """Where each nonzero of a conv's CSR weight reads, for one input size (see :func:`conv_plan`)."""

    taps: np.ndarray  # (nnz,) int64: flat start of each nonzero's slice in one image's phase planes
    in_hw: tuple[int, int]  # (H, W) of the input this plan is for
    out_hw: tuple[int, int]  # (Ho, Wo)
    phase_hw: tuple[int, int]  # (Hq, Wq): size of each polyphase plane
    padding: tuple[int, int]
    stride: tuple[int, int]


def csc_matmul(arrays: CSRArrays, x: torch.Tensor, out_features: int) -> torch.Tensor:
    """y (B, N) = x (B, K) @ W.T + bias, with ``arrays`` the CSR form of W.T (i.e. W by columns):
    the columns of W whose input is zero are never read. One thread; fp32, CPU.

    >>> from prunekit.sparse.formats import CSRMatrix
    >>> w = torch.tensor([[0., 2.], [1., 0.], [0., 3.]])  # (N=3, K=2)
    >>> m = CSRMatrix.pack(w.t())
    >>> a = as_arrays(m.row_ptr.int(), m.col_indices, m.values, torch.tensor([0., 0., 5.]))
    >>> csc_matmul(a, torch.tensor([[1., 0.], [0., 1.]]), 3).tolist()
    [[0.0, 1.0, 5.0], [2.0, 0.0, 8.0]]
    """
    loops = _LOOPS or _loops()
    xn = _input_array(x)  # (B, K)
    out = np.empty((xn.shape[0], out_features), dtype=np.float32)  # (B, N)
    loops.csc_spmm_skip_zeros(arrays.row_ptr, arrays.col, arrays.val, xn, arrays.bias, out)
    return torch.from_numpy(out)


def conv_plan(col: np.ndarray, in_channels: int, in_hw: tuple[int, int], kernel_size: tuple[int, int],
              stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]) -> ConvPlan:
    """Plan a direct sparse convolution of an (H, W) input from the CSR column indices ``col``
    of the conv's GEMM view (Cout, Cin*kh*kw).

    The padded input is split into stride_h * stride_w polyphase planes of (Hq, Wq), so that a
    stride-s convolution becomes stride-1 ones and every tap (c, i, j) reads one contiguous
    slice of Ho * Wq values of a flattened plane (the output grid is computed Wq wide and its
    columns >= Wo dropped). Hq leaves room below the last row so no slice runs off its plane.

    >>> plan = conv_plan(np.array([0, 4]), 1, (3, 3), (3, 3), (1, 1), (1, 1), (1, 1))
    >>> plan.taps.tolist(), plan.out_hw, plan.phase_hw
    ([0, 6], (3, 3), (6, 5))
    """
    (h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw) = in_hw, kernel_size, stride, padding, dilation
    hp, wp = h + 2 * ph, w + 2 * pw  # padded input
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"input {h}x{w} is smaller than the kernel {kh}x{kw} (dilation {dh}x{dw}, "
                         f"padding {ph}x{pw})")
    wq = -(-wp // sw)
    hq = max(-(-hp // sh), ho + (dh * (kh - 1)) // sh + 1)
    flat = col.astype(np.int64)
    c, ti, tj = flat // (kh * kw), (flat // kw) % kh * dh, flat % kw * dw
    phase = (ti % sh) * sw + tj % sw
    taps = (phase * in_channels + c) * (hq * wq) + (ti // sh) * wq + tj // sw
    return ConvPlan(taps, (h, w), (ho, wo), (hq, wq), (ph, pw), (sh, sw))


def conv2d(arrays: CSRArrays, plan: ConvPlan, x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """A Conv2d (groups=1, zero padding) computed directly from the CSR form of its GEMM view
    W (Cout, Cin*kh*kw) (+ the bias in ``arrays``); x (B, Cin, H, W) fp32 CPU -> (B, Cout, Ho, Wo).

    >>> import torch.nn.functional as F
    >>> w = torch.tensor([[[[0., 1.], [2., 0.]]]])  # (1, 1, 2, 2)
    >>> from prunekit.sparse.formats import CSRMatrix
    >>> m = CSRMatrix.pack(w.reshape(1, -1))
    >>> a = as_arrays(m.row_ptr.int(), m.col_indices, m.values)
    >>> x = torch.arange(9.).reshape(1, 1, 3, 3)
    >>> plan = conv_plan(a.col, 1, (3, 3), (2, 2), (1, 1), (0, 0), (1, 1))
    >>> torch.equal(conv2d(a, plan, x, 1), F.conv2d(x, w))
    True
    """
    loops = _loops()
    b, cin = x.shape[0], x.shape[1]
    (ho, wo), (hq, wq), (ph, pw), (sh, sw) = plan.out_hw, plan.phase_hw, plan.padding, plan.stride
    phases = np.zeros((b, sh * sw * cin * hq * wq), dtype=np.float32)  # (B, planes * Hq*Wq)
    loops.fill_phases(_input_array(x), ph, pw, sh, sw, hq, wq, phases)
    out = np.empty((b, out_channels, ho, wo), dtype=np.float32)  # (B, Cout, Ho, Wo)
    threads = _threads(loops) if arrays.val.shape[0] * ho * wq * b >= CONV_PARALLEL_MIN_WORK else 1
    args = (arrays.row_ptr, plan.taps, arrays.val, phases, arrays.bias, wq, out)
    arrays.policy.run(threads, lambda: loops.conv2d_direct_parallel(*args), lambda: loops.conv2d_direct_serial(*args))
    return torch.from_numpy(out)


def csr_matmul_t(row_ptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor, xt: torch.Tensor,
                 bases: torch.Tensor | None = None) -> torch.Tensor:
    """Y (N, L) = W @ X for a CSR weight W (N, K) and a dense X (K, L); fp32, CPU.

    ``row_ptr`` is int32/int64 (N+1,), ``col`` any integer dtype (nnz,), ``val`` fp32 (nnz,).
    A packet-CSR weight passes ``packet_ptr``, ``offsets``, ``values`` and its ``bases``.

    >>> from prunekit.sparse.formats import CSRMatrix
    >>> m = CSRMatrix.pack(torch.tensor([[0., 2.], [1., 0.], [0., 0.]]))
    >>> x = torch.tensor([[1., 2.], [3., 4.]])
    >>> csr_matmul_t(m.row_ptr.int(), m.col_indices, m.values, x).tolist()
    [[6.0, 8.0], [1.0, 2.0], [0.0, 0.0]]
    """
    return matmul_t(as_arrays(row_ptr, col, val, bases=bases), xt)


def matmul_t(arrays: CSRArrays, xt: torch.Tensor) -> torch.Tensor:
    """Y (N, L) = W @ X (K, L) for the CSR or packet-CSR weight in ``arrays`` (its bias is not
    added); fp32, CPU. The modules call this with their cached views.
    """
    loops = _LOOPS or _loops()
    xtn = _input_array(xt)  # (K, L)
    out = torch.empty((arrays.row_ptr.shape[0] - 1, xtn.shape[1]), dtype=torch.float32)  # (N, L)
    weight = (arrays.row_ptr, arrays.bases, arrays.col, arrays.val)
    # Small products run serially: waking the thread pool costs more than it saves.
    threads = _threads(loops) if arrays.val.shape[0] * xtn.shape[1] >= PARALLEL_MIN_WORK else 1
    if xtn.shape[1] == 1:
        _run_spmv(loops, threads, *weight, xtn[:, 0], _NO_BIAS, out.numpy()[:, 0], arrays.prefetch_ahead,
                  arrays.policy)
    else:
        outn = out.numpy()
        arrays.policy.run(threads, lambda: loops.spmm_t_parallel(*weight, xtn, outn),
                          lambda: loops.spmm_t_serial(*weight, xtn, outn))
    return out


def csr_matmul(row_ptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y (B, N) = x (B, K) @ W.T for a CSR weight W (N, K): the linear layer without bias.

    >>> from prunekit.sparse.formats import CSRMatrix
    >>> m = CSRMatrix.pack(torch.tensor([[0., 2.], [1., 0.], [0., 0.]]))
    >>> csr_matmul(m.row_ptr.int(), m.col_indices, m.values, torch.tensor([[1., 3.]])).tolist()
    [[6.0, 1.0, 0.0]]
    """
    return csr_matmul_t(row_ptr, col, val, x.t()).t()  # (B, N)

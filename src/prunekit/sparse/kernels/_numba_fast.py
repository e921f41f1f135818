"""The fast path of the batch-1 loops, written with LLVM intrinsics through numba (optional).

Three things plain numba cannot express: software prefetches a fixed distance ahead of the row
being summed (the hardware prefetcher alone keeps too few misses in flight when the weight comes
from DRAM: 1.40 vs 1.03 ms for 4096x4096 at 90 % with the caches flushed, on this repository's
2-core Xeon); the packet-CSR row product as one 16-lane gather per packet; and row chunks claimed
with an atomic exchange, so a worker that wakes late does not hold up the call. They use
llvmlite's IR builder (a few private pieces of it) and an x86 ``clflush`` for the cache-eviction
benchmark regime, so they may fail to build elsewhere: :mod:`.numba_csr` then warns once and runs
the reference loops of :mod:`._numba_loops`, which this module is tested against.
"""

import os

import numba
import numpy as np
from llvmlite import ir
from llvmlite.ir import instructions
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from prunekit.sparse.kernels._numba_loops import CHUNKS_PER_THREAD, PACKET, PREFETCH_AHEAD, PREFETCH_MIN_BYTES

if os.environ.get("PRUNEKIT_FAST_KERNELS") == "fail":  # tests: make the fast path fail to build, on purpose
    raise ImportError("PRUNEKIT_FAST_KERNELS=fail: the fast sparse loops are disabled on purpose")

KIND = "fast"
__all__ = ["CHUNKS_PER_THREAD", "PREFETCH_AHEAD", "PREFETCH_MIN_BYTES", "evict_lines", "spmv_parallel", "spmv_serial"]
_PREFETCH_NAME = "llvm.prefetch.p0i8" if getattr(ir, "ir_layer_typed_pointers_enabled", True) else "llvm.prefetch.p0"


def _item_pointer(context, builder, signature, args):  # pragma: no cover - compiled
    """LLVM pointer to ``arr[idx]`` for an intrinsic called as ``f(arr, idx, ...)`` (no checks)."""
    aryty = signature.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False, boundscheck=False)


def _line_intrinsic(name: str, extra_args: tuple[int, ...], doc: str):
    """A numba intrinsic ``f(arr, idx)`` that calls the LLVM intrinsic ``name`` on the address of
    ``arr[idx]`` (as an i8 pointer), followed by the constant i32 arguments ``extra_args``."""

    def typer(typingctx, arr, idx):  # pragma: no cover - compiled
        def codegen(context, builder, signature, args):
            ptr = _item_pointer(context, builder, signature, args)
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p] + [i32] * len(extra_args))
            fn = cgutils.get_or_insert_function(builder.module, fnty, name)
            builder.call(fn, [builder.bitcast(ptr, i8p)] + [ir.Constant(i32, v) for v in extra_args])
            return context.get_dummy_value()

        return types.void(arr, idx), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


# read access, keep in all cache levels, data cache
_prefetch = _line_intrinsic(_PREFETCH_NAME, (0, 3, 1), "Hint the CPU to load ``arr[idx]``'s cache line.")


_VEC_PTR_GATHER = ("llvm.masked.gather.v16f32.v16p0f32" if getattr(ir, "ir_layer_typed_pointers_enabled", True)
                   else "llvm.masked.gather.v16f32.v16p0")


def _data(context, builder, aryty, value):  # pragma: no cover - compiled
    """LLVM pointer to the first element of a numba array value."""
    return context.make_array(aryty)(context, builder, value).data


def _splat(builder, value, lanes: int):  # pragma: no cover - compiled
    """A vector of ``lanes`` copies of the scalar ``value``."""
    vec = ir.VectorType(value.type, lanes)
    one = builder.insert_element(ir.Constant(vec, None), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vec, None), ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))


@intrinsic
def _packet_dot(typingctx, bases, offsets, val, x, p0, p1):  # pragma: no cover - compiled
    """sum over packets p0 <= p < p1 and lanes j of val[16p+j] * x[bases[p] + offsets[16p+j]].

    Written in LLVM IR: one 16-lane accumulator for the whole row (a horizontal sum only at the
    end), per packet a 16-byte offset load, one 16-lane gather (base pointer + 32-bit indices:
    ``vgatherdps`` on AVX-512) and a 64-byte value load. numba's own vectoriser cannot see that
    a packet's 16 lanes share one base, so the same loop written in Python gathers the base too
    and is slower when the weight is in cache (``benchmarks/prototypes/packet_loops.py``).
    """
    def codegen(context, builder, signature, args):
        basep, offp, valp, xp = (_data(context, builder, t, a) for t, a in zip(signature.args[:4], args[:4]))
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        vf, vi32, vbool = ir.VectorType(f32, PACKET), ir.VectorType(i32, PACKET), ir.VectorType(ir.IntType(1), PACKET)
        start = context.cast(builder, args[4], signature.args[4], types.int64)
        stop = context.cast(builder, args[5], signature.args[5], types.int64)
        entry = builder.block
        head, body, done = (builder.append_basic_block(f"packet.{n}") for n in ("head", "body", "done"))
        builder.branch(head)
        builder.position_at_end(head)
        p, acc = builder.phi(i64), builder.phi(vf)
        p.add_incoming(start, entry)
        acc.add_incoming(ir.Constant(vf, [0.0] * PACKET), entry)
        builder.cbranch(builder.icmp_signed("<", p, stop), body, done)
        builder.position_at_end(body)
        base = builder.load(builder.gep(basep, [p]))
        base = builder.zext(base, i32) if base.type.width < 32 else builder.trunc(base, i32) if base.type.width > 32 else base
        k = builder.mul(p, ir.Constant(i64, PACKET))
        off = builder.load(builder.bitcast(builder.gep(offp, [k]), ir.VectorType(ir.IntType(8), PACKET).as_pointer()), align=1)
        index = builder.add(builder.zext(off, vi32), _splat(builder, base, PACKET))  # (16,) columns
        # x + index as a vector of pointers; llvmlite's gep() cannot type a vector index itself.
        ptrs = instructions.GEPInstr(builder.block, xp, [index], True, "", source_etype=f32)
        ptrs.type = ir.VectorType(xp.type, PACKET)
        builder._insert(ptrs)
        gather = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vf, [ptrs.type, i32, vbool, vf]), _VEC_PTR_GATHER)
        xs = builder.call(gather, [ptrs, ir.Constant(i32, 4), ir.Constant(vbool, [1] * PACKET), ir.Constant(vf, None)])
        vals = builder.load(builder.bitcast(builder.gep(valp, [k]), vf.as_pointer()), align=4)
        nxt = builder.fadd(acc, builder.fmul(vals, xs, flags=("fast",)), flags=("fast",))
        p.add_incoming(builder.add(p, ir.Constant(i64, 1)), body)
        acc.add_incoming(nxt, body)
        builder.branch(head)
        builder.position_at_end(done)
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, vf]),
                                                "llvm.vector.reduce.fadd.v16f32")
        return builder.call(reduce, [ir.Constant(f32, -0.0), acc], fastmath=("fast",))

    return types.float32(bases, offsets, val, x, p0, p1), codegen


@numba.njit(fastmath=True, cache=True, nogil=True, inline="always")
def _prefetch_span(col, val, start, stop, ahead, col_step):  # pragma: no cover - compiled
    """Prefetch the values and indices ``ahead`` positions past [start, stop), one index line
    per ``col_step`` indices (a constant at each call: a step computed at run time, e.g.
    ``64 // col.itemsize``, made the whole CSR loop slower in cache: 0.64 vs 0.51 ms for a
    4096x4096 90 %-sparse weight, measured once while building it)."""
    end = min(stop + ahead, val.shape[0])
    for k in range(start + ahead, end, 16):  # 16 fp32 values per 64-byte line
        _prefetch(val, k)
    for k in range(start + ahead, end, col_step):
        _prefetch(col, k)


@numba.njit(fastmath=True, cache=True, nogil=True, inline="always")
def _row_dot(row_ptr, col, val, x, i, ahead):  # pragma: no cover - compiled
    """sum_k val[k] * x[col[k]] over CSR row i, prefetching the span ``ahead`` nonzeros ahead
    (``ahead`` = 0: no prefetches, for weights that stay in cache)."""
    start, stop = row_ptr[i], row_ptr[i + 1]
    if ahead > 0:
        _prefetch_span(col, val, start, stop, ahead, 32)  # >= 32 indices per line
    acc = np.float32(0.0)
    for k in range(start, stop):
        acc += val[k] * x[col[k]]
    return acc


@numba.njit(fastmath=True, cache=True, nogil=True, inline="always")
def _packet_row_dot(packet_ptr, bases, offsets, val, x, i, ahead):  # pragma: no cover - compiled
    """Row i of a packet-CSR weight times x (see :func:`_packet_dot`), prefetching as :func:`_row_dot`."""
    if ahead > 0:
        _prefetch_span(offsets, val, packet_ptr[i] * PACKET, packet_ptr[i + 1] * PACKET, ahead, 64)  # uint8
    return _packet_dot(bases, offsets, val, x, packet_ptr[i], packet_ptr[i + 1])


@numba.njit(fastmath=True, cache=True, nogil=True, inline="always")
def _rows_into(row_ptr, bases, col, val, x, bias, out, ahead, lo, hi):  # pragma: no cover - compiled
    """out[lo:hi] = rows lo..hi-1 of W @ x (+ bias when it has N entries) for a CSR weight
    (``bases`` empty) or a packet-CSR one (``row_ptr`` counts packets, ``col`` holds uint8 offsets);
    the format is tested once per call, outside the row loop."""
    has_bias = bias.shape[0] == out.shape[0]
    if bases.shape[0] > 0:
        for i in range(lo, hi):
            acc = _packet_row_dot(row_ptr, bases, col, val, x, i, ahead)
            out[i] = acc + bias[i] if has_bias else acc
    else:
        for i in range(lo, hi):
            acc = _row_dot(row_ptr, col, val, x, i, ahead)
            out[i] = acc + bias[i] if has_bias else acc


@numba.njit(fastmath=True, cache=True, nogil=True)
def spmv_serial(row_ptr, bases, col, val, x, bias, out, ahead):  # pragma: no cover - compiled
    """out (N,) = W @ x (+ bias, when bias has N entries; pass an empty array for none) for a
    CSR weight (``bases`` empty) or a packet-CSR one (see :func:`_rows_into`);
    ``ahead``: prefetch distance in stored values (0: none). Same contract as the reference."""
    _rows_into(row_ptr, bases, col, val, x, bias, out, ahead, 0, out.shape[0])


def atomic_rmw_intrinsic(op: str):
    """A numba intrinsic ``f(arr, idx, value)`` that applies the LLVM ``atomicrmw`` ``op``
    ("xchg", "add", ...) to the integer ``arr[idx]`` and returns the value it held before."""

    def typer(typingctx, arr, idx, value):  # pragma: no cover - compiled
        def codegen(context, builder, signature, args):
            ptr = _item_pointer(context, builder, signature, args)
            operand = context.cast(builder, args[2], signature.args[2], signature.args[0].dtype)
            return builder.atomic_rmw(op, ptr, operand, "monotonic")

        return arr.dtype(arr, idx, value), codegen

    return intrinsic(typer)


_exchange = atomic_rmw_intrinsic("xchg")  # claim a flag: returns 0 to the one caller that set it


@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def spmv_parallel(row_ptr, bases, col, val, x, bias, out, ahead, threads):  # pragma: no cover - compiled
    """spmv_serial over ``threads`` workers (numba's thread count, set by the caller), the rows
    in ``CHUNKS_PER_THREAD * threads`` chunks.

    Worker t walks the chunks upwards from its static start t * chunks / threads (wrapping
    round) and claims each with an atomic exchange on its flag, skipping claimed ones. When all
    start together each gets its static share, the same rows every call (they stay in its
    core's caches); a worker that wakes late (70-140 us on this VM with cold caches) finds
    part of its share done by the others instead of holding up the call.
    """
    n = out.shape[0]
    chunks = max(1, min(n, CHUNKS_PER_THREAD * threads))
    rows = (n + chunks - 1) // chunks
    claimed = np.zeros(chunks, np.int64)
    for t in numba.prange(threads):
        start = t * chunks // threads
        for step in range(chunks):
            c = start + step
            if c >= chunks:
                c -= chunks
            if claimed[c] == 0 and _exchange(claimed, c, 1) == 0:
                _rows_into(row_ptr, bases, col, val, x, bias, out, ahead, c * rows, min(n, (c + 1) * rows))


_clflush = _line_intrinsic("llvm.x86.sse2.clflush", (), "Flush ``arr[idx]``'s cache line from every "
                          "cache level (x86 ``clflush``).")


@numba.njit(cache=True, nogil=True)
def evict_lines(buf):  # pragma: no cover - compiled
    """clflush every 64-byte line of the byte array ``buf`` (x86 only)."""
    for i in range(0, buf.shape[0], 64):
        _clflush(buf, i)
    if buf.shape[0]:
        _clflush(buf, buf.shape[0] - 1)

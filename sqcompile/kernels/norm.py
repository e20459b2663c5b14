"""Residual add fused with the RMSNorm that reads it, and a decode step's prologue.

``add_rms_norm``: ``s = a + b`` and ``n = rms_norm(s) * w`` in one kernel. A decoder layer adds each sublayer's
output to the residual stream and normalizes the sum right away. As two kernels that is one more launch per
sublayer (64 per 7B decode step) and one more round trip of the hidden state through memory; here each row is
read once, and both the new residual ``s`` and the normalized ``n`` are written.

``embed_rms_norm_rope``: everything a step does before layer 0's q/k/v projection, the embedding row of each
token (``s``), layer 0's RMSNorm of it (``n``) and the rotary cos/sin of its position, in one kernel. Traced,
that was seven tiny kernels (id cast, gather, a copy of the gathered row, angle, cos, sin, norm), each 1-2 us
and a launch on an H100 and none moving real data (``passes/fuse_prologue.py``).

Numerics follow TVM's ``rms_norm`` legalization (topi): ``s`` is rounded to the activation dtype (as the
separate add rounds it), then ``n = dtype(rsqrt(sum(s32^2) / H + eps) * s32 * w32)``; cos/sin are the traced
graph's: ``dtype(cos(float32(position) * inv_freq) * scale)``.

On CUDA one block owns a row, a thread per 8 elements (one 16-byte load of a and of b, up to 1024 threads;
more elements per thread for wider rows): each thread keeps its part of ``s`` in registers between the sum of
squares (warp shuffles, then one shared-memory step across warps) and the scaling.
On llvm the same math runs as plain loops, one parallel task per row.
"""
from __future__ import annotations

import tvm
from tvm import tirx
from tvm.script import tirx as T

from .launch import GRID_WAIT, mark, programmatic_launch

VEC = 8  # fp16 elements per 16-byte access
MAX_THREADS = 1024
FULL_MASK = 0xFFFFFFFF
OPAQUE = 8  # relax op pattern kOpaque: FuseOps leaves the call alone


def _kind(target: tvm.target.Target, what: str) -> str:
    kind = target.kind.name
    if kind not in ("cuda", "llvm"):
        raise ValueError(f"no {what} kernel for target kind {kind!r}")
    return kind


def add_rms_norm(hidden: int, dtype: str, eps: float, target: tvm.target.Target) -> tirx.PrimFunc:
    """``(a [rows, hidden], b [rows, hidden], w [hidden]) -> (s, n)``, rows symbolic."""
    cuda = _kind(target, "add + RMSNorm") == "cuda"
    pdl = programmatic_launch(target)
    row, threads = (_cuda_row(hidden, dtype, eps, pdl, gather=False) if cuda
                    else (_llvm_row(hidden, dtype, eps, gather=False), 1))

    @T.prim_func(private=True, s_tir=True)
    def add_rms_norm(a_h: T.handle, b_h: T.handle, w: T.Buffer((hidden,), dtype), s_h: T.handle, n_h: T.handle):
        T.func_attr({"tirx.noalias": True, "op_pattern": OPAQUE, "tirx.is_scheduled": True})
        rows = T.int64()
        a = T.match_buffer(a_h, (rows, hidden), dtype)
        b = T.match_buffer(b_h, (rows, hidden), dtype)
        s = T.match_buffer(s_h, (rows, hidden), dtype)
        n = T.match_buffer(n_h, (rows, hidden), dtype)
        if cuda:
            for r in T.thread_binding(rows, thread="blockIdx.x"):
                for tx in T.thread_binding(T.int64(threads), thread="threadIdx.x"):
                    row(a, b, w, s, n, r, tx)
        else:
            for r in T.parallel(rows):
                row(a, b, w, s, n, r)

    return mark(add_rms_norm, pdl)


def embed_rms_norm_rope(vocab: int, hidden: int, head_dim: int, dtype: str, eps: float, rope_scale: float,
                        target: tvm.target.Target) -> tirx.PrimFunc:
    """``(ids int64 [1, rows], positions int64 [rows], table [vocab, hidden], w [hidden], inv_freq float32
    [head_dim]) -> (s = table[ids], n = rms_norm(s) * w, cos [rows, 1, head_dim], sin [rows, 1, head_dim])``,
    rows symbolic. Ids are not range-checked (TVM's ``take`` in fast mode, which it replaces, is not either)."""
    cuda = _kind(target, "embedding + RMSNorm + rotary") == "cuda"
    pdl = programmatic_launch(target)
    row, threads = (_cuda_row(hidden, dtype, eps, pdl, gather=True) if cuda
                    else (_llvm_row(hidden, dtype, eps, gather=True), 1))
    angles = -(-head_dim // threads)

    @T.macro
    def rope(positions, inv_freq, cos, sin, r, tx):
        for e in T.unroll(angles):
            if e * threads + tx < head_dim:
                cos[r, 0, e * threads + tx] = T.Cast(dtype, T.cos(T.Cast("float32", positions[r])
                                                                 * inv_freq[e * threads + tx]) * T.float32(rope_scale))
                sin[r, 0, e * threads + tx] = T.Cast(dtype, T.sin(T.Cast("float32", positions[r])
                                                                 * inv_freq[e * threads + tx]) * T.float32(rope_scale))

    @T.prim_func(private=True, s_tir=True)
    def embed_rms_norm_rope(ids_h: T.handle, positions_h: T.handle, table: T.Buffer((vocab, hidden), dtype),
                            w: T.Buffer((hidden,), dtype), inv_freq: T.Buffer((head_dim,), "float32"),
                            s_h: T.handle, n_h: T.handle, cos_h: T.handle, sin_h: T.handle):
        T.func_attr({"tirx.noalias": True, "op_pattern": OPAQUE, "tirx.is_scheduled": True})
        rows = T.int64()
        ids = T.match_buffer(ids_h, (1, rows), "int64")
        positions = T.match_buffer(positions_h, (rows,), "int64")
        s = T.match_buffer(s_h, (rows, hidden), dtype)
        n = T.match_buffer(n_h, (rows, hidden), dtype)
        cos = T.match_buffer(cos_h, (rows, 1, head_dim), dtype)
        sin = T.match_buffer(sin_h, (rows, 1, head_dim), dtype)
        if cuda:
            for r in T.thread_binding(rows, thread="blockIdx.x"):
                for tx in T.thread_binding(T.int64(threads), thread="threadIdx.x"):
                    row(ids, table, w, s, n, r, tx)  # waits for the step's inputs first (PDL)
                    rope(positions, inv_freq, cos, sin, r, tx)
        else:
            for r in T.parallel(rows):
                row(ids, table, w, s, n, r)
                rope(positions, inv_freq, cos, sin, r, T.int64(0))

    return mark(embed_rms_norm_rope, pdl)


def _cuda_row(hidden: int, dtype: str, eps: float, pdl: bool, gather: bool):
    """(the macro for row ``r`` by thread ``tx``, threads per block). Its row is ``a[r] + b[r]``, or with
    ``gather`` the table row ``b[a[0, r]]``. With ``pdl`` (``launch.py``) the block waits for the previous
    kernel before anything else: every input but ``w`` (and the table) is its output."""
    vec = VEC if hidden % VEC == 0 else 1  # 16-byte loads and stores where rows allow them
    units = -(-hidden // vec)
    threads = min(MAX_THREADS, -(-units // 32) * 32)
    per = -(-hidden // (threads * vec))  # vectors per thread
    warps = threads // 32

    @T.macro
    def row(a, b, w, s, n, r, tx):
        ar = T.alloc_buffer((vec,), dtype, scope="local")
        br = T.alloc_buffer((vec,), dtype, scope="local")
        sh = T.alloc_buffer((per * vec,), dtype, scope="local")
        out = T.alloc_buffer((vec,), dtype, scope="local")
        acc = T.alloc_buffer((1,), "float32", scope="local")
        warp_sums = T.alloc_buffer((warps,), "float32", scope="shared")
        if pdl:
            T.evaluate(T.call_extern("int32", GRID_WAIT))
        acc[0] = T.float32(0)
        for e in T.unroll(per):
            if (e * threads + tx) * vec < hidden:
                if gather:
                    for v in T.vectorized(vec):
                        sh[e * vec + v] = b[a[0, r], (e * threads + tx) * vec + v]
                else:
                    for v in T.vectorized(vec):
                        ar[v] = a[r, (e * threads + tx) * vec + v]
                    for v in T.vectorized(vec):
                        br[v] = b[r, (e * threads + tx) * vec + v]
                    for v in T.vectorized(vec):
                        sh[e * vec + v] = ar[v] + br[v]
                for v in T.vectorized(vec):
                    s[r, (e * threads + tx) * vec + v] = sh[e * vec + v]
                for v in T.unroll(vec):
                    acc[0] = acc[0] + T.Cast("float32", sh[e * vec + v]) * T.Cast("float32", sh[e * vec + v])
        for i in T.unroll(5):
            acc[0] = acc[0] + T.tvm_warp_shuffle_xor(T.uint32(FULL_MASK), acc[0], 16 >> i, 32, 32)
        if tx % 32 == 0:
            warp_sums[tx // 32] = acc[0]
        T.tvm_storage_sync("shared")
        acc[0] = T.float32(0)
        for i in T.unroll(warps):
            acc[0] = acc[0] + warp_sums[i]
        acc[0] = T.rsqrt(acc[0] / T.float32(hidden) + T.float32(eps))
        for e in T.unroll(per):
            if (e * threads + tx) * vec < hidden:
                for v in T.unroll(vec):
                    out[v] = T.Cast(dtype, acc[0] * T.Cast("float32", sh[e * vec + v])
                                    * T.Cast("float32", w[(e * threads + tx) * vec + v]))
                for v in T.vectorized(vec):
                    n[r, (e * threads + tx) * vec + v] = out[v]

    return row, threads


def _llvm_row(hidden: int, dtype: str, eps: float, gather: bool):
    @T.macro
    def row(a, b, w, s, n, r):
        acc = T.alloc_buffer((1,), "float32")
        acc[0] = T.float32(0)
        for i in range(hidden):
            if gather:
                s[r, i] = b[a[0, r], i]
            else:
                s[r, i] = a[r, i] + b[r, i]
            acc[0] = acc[0] + T.Cast("float32", s[r, i]) * T.Cast("float32", s[r, i])
        acc[0] = T.rsqrt(acc[0] / T.float32(hidden) + T.float32(eps))
        for i in range(hidden):
            n[r, i] = T.Cast(dtype, acc[0] * T.Cast("float32", s[r, i]) * T.Cast("float32", w[i]))

    return row

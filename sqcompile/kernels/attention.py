"""Decode attention (one new token) that reads the KV cache views in place, the flash-decoding way.

One PrimFunc, ``attention``, for any context length ``ctx`` (symbolic); the host side picks its kernels from
the view's length on every call (a CUDA graph, captured per decode bucket, keeps its bucket's choice):
  * views of up to ``ONE_ROWS`` rows (CUDA): ``one``, one block of ``ONE_THREADS`` threads per KV head does the
    whole softmax and writes the output. A short view is a few microseconds of latency, not of bandwidth, and a
    second kernel that merges chunks costs its own launch and round trips (7B at 192 rows: see
    benchmarks/e2e/NOTES.md);
  * longer views, split: ``partial``, one work item per (KV head, chunk of ``chunk`` cache rows: ``CHUNK``, or
    ``SHORT_CHUNK`` for views of up to ``SHORT_ROWS`` rows, where the longer chunks would leave SMs idle). It
    writes, per query head, the chunk's score maximum ``m``, the sum ``l`` of ``exp(score - m)`` and the
    unnormalized output ``sum exp(score - m) * v`` (float32) into the scratch outputs ``o`` and ``ml``; then
    ``combine`` rescales the chunks to the global maximum and divides by the global sum.
All ``group = H / kv_heads`` query heads of a KV head are handled together, so each K/V row is read once (GQA).
With ``rope`` the first kernel also does ``rope.py``'s work for the new token (``_attention_func``), one launch
fewer per decode layer (``passes/fuse_rope_attention.py``).
Rows past ``positions[0]`` (the runtime passes views rounded up to a bucket of rows) are masked: their K and V
are never read, so garbage or NaN there cannot leak. Softmax and accumulation are float32.

On CUDA a block owns a chunk: ``lanes = head_dim / VEC`` consecutive threads read one row with 16-byte loads
(coalesced), every thread issues all its K and V loads of the chunk up front, dot products are reduced with
warp shuffles, the chunk's softmax goes through shared memory. On llvm the same math runs as plain loops, one
parallel task per (KV head, chunk), always split.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import tvm
from tvm import tirx
from tvm.script import tirx as T
from tvm.sym.analyzer import Analyzer

from .knobs import SHARED_LIMIT
from .launch import GRID_WAIT, mark, programmatic_launch

CHUNK = 64  # cache rows per partial work item: 7B at ctx 2048 gives 32 x 32 = 1024 CUDA blocks
SHORT_CHUNK = 32  # ... for views of up to SHORT_ROWS rows: 7B at ctx 192 gets 192 blocks, not 96 for 132 SMs
SHORT_ROWS = 512
THREADS = 128  # per partial block
ONE_ROWS = 256  # views of up to this many rows take the one-kernel path on CUDA (0: never)
ONE_THREADS = 512  # per one-kernel block: the same rows per thread as a 64-row partial block
ONE_MIN_KV_HEADS = 16  # ... which has one block per KV head: with fewer, too few SMs read the cache (below)
FULL_MASK = 0xFFFFFFFF
NEG = -3.0e38  # score of a masked row: finite, so an all-masked chunk gives no inf - inf
OPAQUE = 8  # relax op pattern kOpaque: FuseOps leaves the call alone
DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class AttentionShape:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    scale: float
    chunk: int = CHUNK  # cache rows per partial work item
    short_chunk: int = SHORT_CHUNK  # ... for views of up to short_rows rows (equal to chunk: one size for all)
    short_rows: int = SHORT_ROWS
    one_rows: int = 0  # views of up to this many rows in one kernel, one block per KV head (0: always split)

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def short_slots(self) -> int:
        """Partial results per KV head up to which the short chunks are used."""
        return self.short_rows // self.short_chunk

    def validate(self) -> None:
        if self.num_heads <= 0 or self.num_kv_heads <= 0 or self.head_dim <= 0:
            raise ValueError(f"attention sizes must be positive: {self}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.num_heads} query heads are not a multiple of {self.num_kv_heads} KV heads")
        if self.dtype not in DTYPES:
            raise ValueError(f"attention dtype must be one of {DTYPES}, got {self.dtype!r}")
        if min(self.chunk, self.short_chunk, self.short_rows) <= 0 or (self.chunk | self.short_chunk) % 32:
            raise ValueError(f"context chunks must be positive multiples of 32, got {self.chunk} and {self.short_chunk}")
        if self.one_rows < 0 or self.one_rows % 32:
            raise ValueError(f"the one-kernel rows must be a multiple of 32 (0: none), got {self.one_rows}")
        if self.chunk % self.short_chunk or self.short_rows % self.short_chunk:
            raise ValueError(f"the chunk {self.chunk} and short_rows {self.short_rows} must be multiples of the short "
                             f"chunk {self.short_chunk}")

    def used_slots(self, slots):
        """How many of ``slots`` (a PrimExpr) partial results a view holds: all with short chunks, else one per
        ``chunk`` rows (``ceil(ceil(ctx / short) / r) = ceil(ctx / (short * r))``)."""
        ratio = self.chunk // self.short_chunk
        if ratio == 1:
            return slots
        return T.if_then_else(slots <= self.short_slots, slots, (slots + ratio - 1) // ratio)


def partial_slots(attention: tirx.PrimFunc, ctx) -> tirx.PrimExpr:
    """The partial results per KV head that ``attention`` writes room for, for a view of ``ctx`` rows (its ``o``
    buffer's second axis, with the kernel's context length replaced by ``ctx``)."""
    cache, o = (attention.params[i].ty for i in (-5, -3))  # the V (or K) cache [ctx, nkv, d]; o
    analyzer = Analyzer()
    analyzer.bind(cache.shape[0], ctx)  # substitutes the kernel's context length
    return analyzer.simplify(o.shape[1])


def _cuda_layout(s: AttentionShape) -> tuple[int, int]:
    """(elements per 16-byte load, threads per cache row); raises ValueError where the CUDA rule cannot go."""
    vec = 128 // tvm.DataType(s.dtype).bits
    lanes = s.head_dim // vec
    if s.head_dim % vec or lanes > 32 or lanes & (lanes - 1):
        raise ValueError(f"CUDA decode attention needs head_dim / {vec} to be a power of two <= 32, "
                         f"got head_dim {s.head_dim} ({s.dtype})")
    return vec, lanes


def _block_shared_bytes(s: AttentionShape, rows: int, threads: int) -> int:
    """Shared memory of a block over ``rows`` rows: scores and probabilities per query head, the warps' output
    sums, the softmax sums."""
    return 4 * (2 * s.group * rows + threads // 32 * s.group * s.head_dim + s.group)


def _cuda_shape(s: AttentionShape, one_rows: int = ONE_ROWS) -> AttentionShape:
    """``s`` with chunks a CUDA block can take: whole passes of rows. A small head_dim reads up to 64 rows at
    once (16-byte loads, head_dim / 8 threads a row); where the short chunk holds fewer, one size serves all.
    The one-kernel path gets ``one_rows`` where they are whole passes of ``ONE_THREADS``, its block fits the
    shared memory (large query groups do not: their per-warp sums grow with the group) and there are at least
    ``ONE_MIN_KV_HEADS`` KV heads. On an H100 at 192 rows (scripts/gpu_check_attention.py) it took 7B's 32
    heads from 5.28 to 4.73 us, was even with 8 KV heads (5.33 / 5.42) and slower with SmolLM2's 3 (3.88 / 3.35)."""
    _, lanes = _cuda_layout(s)
    rows_per_pass = THREADS // lanes
    if s.chunk % rows_per_pass:
        raise ValueError(f"the context chunk {s.chunk} is not a multiple of the {rows_per_pass} rows a block reads "
                         "at once")
    if s.short_chunk % rows_per_pass:
        s = replace(s, short_chunk=s.chunk)
    fits = (one_rows % (ONE_THREADS // lanes) == 0 and s.num_kv_heads >= ONE_MIN_KV_HEADS
            and _block_shared_bytes(s, one_rows, ONE_THREADS) <= SHARED_LIMIT)
    return replace(s, one_rows=one_rows if fits else 0)


def _rotated(qkv, cos, sin, base, i, d: int):
    """Element ``i`` of the rotary embedding of the head at column ``base`` of the merged projection ``qkv``, in
    the activation dtype, as ``rope.py`` computes it: ``x * cos + rotate_half(x) * sin``."""
    partner = qkv[0, base + (i + d // 2) % d]
    return qkv[0, base + i] * cos[0, 0, i] + T.if_then_else(i < d // 2, -partner, partner) * sin[0, 0, i]


def _cuda_attention(s: AttentionShape, rope: bool, pdl: bool) -> tirx.PrimFunc:
    """With ``pdl`` (``launch.py``) every block waits for the previous kernel before anything else (``q`` is its
    output; the combine's input is the partial kernel's)."""
    heads, nkv, d, dtype, group, scale = s.num_heads, s.num_kv_heads, s.head_dim, s.dtype, s.group, s.scale
    vec, lanes = _cuda_layout(s)
    lane_steps = lanes.bit_length() - 1  # log2(lanes)
    row_steps = (32 // lanes).bit_length() - 1  # log2(rows a warp reads at once)

    def cached(row, positions):
        """Whether K/V row ``row`` comes from the cache: with ``rope`` the new token's row is computed here (no
        block reads it from the cache in this kernel, so its write cannot race)."""
        return row != positions[0] if rope else True

    @T.macro
    def rotate(dst, at, qkv, cos, sin, base, first, xs):
        """dst[at:at + vec] = the rotary of columns first:first + vec of the head at column ``base`` of ``qkv``:
        ``_rotated``'s arithmetic on 16-byte loads. A slice never straddles the half: ``_cuda_layout`` makes the
        lanes per row a power of two, and the chunk a multiple of the rows per pass makes it at least 2."""
        for v in T.vectorized(vec):
            xs[v] = qkv[0, base + first + v]
        for v in T.vectorized(vec):
            xs[vec + v] = qkv[0, base + (first + d // 2) % d + v]
        for v in T.vectorized(vec):
            xs[2 * vec + v] = cos[0, 0, first + v]
        for v in T.vectorized(vec):
            xs[3 * vec + v] = sin[0, 0, first + v]
        for v in T.unroll(vec):
            dst[at + v] = xs[v] * xs[2 * vec + v] + T.if_then_else(
                first < d // 2, -xs[vec + v], xs[vec + v]) * xs[3 * vec + v]

    def body_for(chunk: int, threads: int = THREADS, final: bool = False):
        """The kernel for ``chunk``-row work items of ``threads`` threads; ``final``: the view is one chunk, and
        the block writes the normalized output instead of its partial results."""
        rows_per_pass = threads // lanes
        passes = chunk // rows_per_pass
        warps = threads // 32
        out_iters = -(-group * d // threads)

        @T.macro
        def body(q, cos, sin, keys, values, positions, o, ml, out, ctx):
            """``q`` is the rotated query [1, H, d], or with ``rope`` the merged projection, rotated here."""
            for c in T.thread_binding((ctx + chunk - 1) // chunk, thread="blockIdx.x"):
                for h in T.thread_binding(T.int64(nkv), thread="blockIdx.y"):
                    for tx in T.thread_binding(T.int64(threads), thread="threadIdx.x"):
                        qr = T.alloc_buffer((group * vec,), "float32", scope="local")
                        rq = T.alloc_buffer((vec,), dtype, scope="local")  # a rotated q slice
                        xs = T.alloc_buffer((4 * vec,), dtype, scope="local")  # rotary inputs: x, partner, cos, sin
                        kr = T.alloc_buffer((passes * vec,), dtype, scope="local")
                        vr = T.alloc_buffer((passes * vec,), dtype, scope="local")
                        acc = T.alloc_buffer((group * vec,), "float32", scope="local")
                        red = T.alloc_buffer((1,), "float32", scope="local")
                        stat = T.alloc_buffer((3,), "float32", scope="local")  # max, sum, probability
                        scores = T.alloc_buffer((group * chunk,), "float32", scope="shared")
                        probs = T.alloc_buffer((group * chunk,), "float32", scope="shared")  # its own buffer: no
                        # write-after-read on scores inside the per-warp branch, where no barrier may go
                        sums = T.alloc_buffer((warps * group * d,), "float32", scope="shared")
                        lsum = T.alloc_buffer((group,), "float32", scope="shared")  # softmax sums (``final``)
                        if pdl:
                            T.evaluate(T.call_extern("int32", GRID_WAIT))
                        valid = T.min(ctx, positions[0] + 1)  # rows [0, valid) are attended to
                        for p in T.unroll(passes):  # every load of the chunk in flight before any use
                            if c * chunk + p * rows_per_pass + tx // lanes < valid and cached(
                                    c * chunk + p * rows_per_pass + tx // lanes, positions):
                                for v in T.vectorized(vec):
                                    kr[p * vec + v] = keys[c * chunk + p * rows_per_pass + tx // lanes, h, tx % lanes * vec + v]
                                for v in T.vectorized(vec):
                                    vr[p * vec + v] = values[c * chunk + p * rows_per_pass + tx // lanes, h, tx % lanes * vec + v]
                            else:
                                for v in T.vectorized(vec):
                                    kr[p * vec + v] = T.Cast(dtype, 0)
                                for v in T.vectorized(vec):
                                    vr[p * vec + v] = T.Cast(dtype, 0)
                            if rope:  # the new token's row: rotated from the projection and written to the cache here
                                if c * chunk + p * rows_per_pass + tx // lanes == positions[0]:
                                    rotate(kr, p * vec, q, cos, sin, (heads + h) * d, tx % lanes * vec, xs)
                                    for v in T.vectorized(vec):
                                        vr[p * vec + v] = q[0, (heads + nkv + h) * d + tx % lanes * vec + v]
                                    for v in T.vectorized(vec):
                                        keys[positions[0], h, tx % lanes * vec + v] = kr[p * vec + v]
                                    for v in T.vectorized(vec):
                                        values[positions[0], h, tx % lanes * vec + v] = vr[p * vec + v]
                        for g in T.unroll(group):  # after the K/V loads: DRAM-bound at long contexts, they go first
                            if rope:
                                rotate(rq, 0, q, cos, sin, (h * group + g) * d, tx % lanes * vec, xs)
                            else:
                                for v in T.vectorized(vec):
                                    rq[v] = q[0, h * group + g, tx % lanes * vec + v]
                            for v in T.unroll(vec):
                                qr[g * vec + v] = T.Cast("float32", rq[v]) * T.float32(scale)
                        for p in T.unroll(passes):
                            for g in T.unroll(group):
                                red[0] = T.float32(0)
                                for v in T.unroll(vec):
                                    red[0] = red[0] + qr[g * vec + v] * T.Cast("float32", kr[p * vec + v])
                                for i in T.unroll(lane_steps):
                                    red[0] = red[0] + T.tvm_warp_shuffle_xor(T.uint32(FULL_MASK), red[0], (lanes >> 1) >> i, 32, 32)
                                if tx % lanes == 0:
                                    scores[g * chunk + p * rows_per_pass + tx // lanes] = T.if_then_else(
                                        c * chunk + p * rows_per_pass + tx // lanes < valid, red[0], T.float32(NEG))
                        T.tvm_storage_sync("shared")
                        for i in T.unroll(-(-group // warps)):  # softmax of the chunk: one warp per query head
                            if tx // 32 + i * warps < group:
                                stat[0] = T.float32(NEG)
                                for j in T.unroll(chunk // 32):
                                    stat[0] = T.max(stat[0], scores[(tx // 32 + i * warps) * chunk + j * 32 + tx % 32])
                                for k in T.unroll(5):
                                    stat[0] = T.max(stat[0], T.tvm_warp_shuffle_xor(T.uint32(FULL_MASK), stat[0], 16 >> k, 32, 32))
                                stat[1] = T.float32(0)
                                for j in T.unroll(chunk // 32):
                                    stat[2] = T.if_then_else(
                                        scores[(tx // 32 + i * warps) * chunk + j * 32 + tx % 32] == T.float32(NEG),
                                        T.float32(0),
                                        T.exp(scores[(tx // 32 + i * warps) * chunk + j * 32 + tx % 32] - stat[0]))
                                    probs[(tx // 32 + i * warps) * chunk + j * 32 + tx % 32] = stat[2]
                                    stat[1] = stat[1] + stat[2]
                                for k in T.unroll(5):
                                    stat[1] = stat[1] + T.tvm_warp_shuffle_xor(T.uint32(FULL_MASK), stat[1], 16 >> k, 32, 32)
                                if tx % 32 == 0:
                                    if final:
                                        lsum[tx // 32 + i * warps] = stat[1]
                                    else:
                                        ml[h, c, tx // 32 + i * warps, 0] = stat[0]
                                        ml[h, c, tx // 32 + i * warps, 1] = stat[1]
                        T.tvm_storage_sync("shared")
                        for g in T.unroll(group):
                            for v in T.unroll(vec):
                                acc[g * vec + v] = T.float32(0)
                        for p in T.unroll(passes):
                            for g in T.unroll(group):
                                for v in T.unroll(vec):
                                    acc[g * vec + v] = acc[g * vec + v] + probs[g * chunk + p * rows_per_pass + tx // lanes] * T.Cast("float32", vr[p * vec + v])
                        for g in T.unroll(group):  # sum over the rows a warp read at once, then over warps
                            for v in T.unroll(vec):
                                for i in T.unroll(row_steps):
                                    acc[g * vec + v] = acc[g * vec + v] + T.tvm_warp_shuffle_xor(
                                        T.uint32(FULL_MASK), acc[g * vec + v], lanes << i, 32, 32)
                                if tx % 32 < lanes:
                                    sums[(tx // 32 * group + g) * d + tx % lanes * vec + v] = acc[g * vec + v]
                        T.tvm_storage_sync("shared")
                        for e in T.unroll(out_iters):
                            if e * threads + tx < group * d:
                                red[0] = T.float32(0)
                                for w in T.unroll(warps):
                                    red[0] = red[0] + sums[w * group * d + e * threads + tx]
                                if final:  # query head h * group + g, element j: out column h * group * d + g * d + j
                                    out[0, h * group * d + e * threads + tx] = T.Cast(
                                        dtype, red[0] / lsum[(e * threads + tx) // d])
                                else:
                                    o[h, c, (e * threads + tx) // d, (e * threads + tx) % d] = red[0]

        return body

    one = body_for(s.one_rows, ONE_THREADS, final=True) if s.one_rows else None
    return mark(_attention_func(s, rope, one, body_for(s.short_chunk), body_for(s.chunk), _cuda_combine(s, pdl)), pdl)


def _cpu_attention(s: AttentionShape, rope: bool = False) -> tirx.PrimFunc:
    heads, nkv, d, dtype, group, scale = s.num_heads, s.num_kv_heads, s.head_dim, s.dtype, s.group, s.scale

    def body_for(chunk: int):
        @T.macro
        def body(q, cos, sin, keys, values, positions, o, ml, out, ctx):
            for hc in T.parallel(nkv * ((ctx + chunk - 1) // chunk)):
                p = T.alloc_buffer((chunk,), "float32", scope="local")
                qv = T.alloc_buffer((d,), dtype, scope="local")  # one query head, rotated with ``rope``
                acc = T.alloc_buffer((d,), "float32", scope="local")
                stat = T.alloc_buffer((3,), "float32", scope="local")  # running dot, max, sum
                h = hc // ((ctx + chunk - 1) // chunk)
                c = hc % ((ctx + chunk - 1) // chunk)
                valid = T.min(ctx, positions[0] + 1)
                if rope:  # the task whose chunk holds the new token writes its rotated K and its V first, then reads
                    # the row back like any other: no other task reads that row of this head
                    if c == positions[0] // chunk:
                        for j in range(d):
                            keys[positions[0], h, j] = _rotated(q, cos, sin, (heads + h) * d, j, d)
                            values[positions[0], h, j] = q[0, (heads + nkv + h) * d + j]
                for g in range(group):
                    for j in range(d):
                        if rope:
                            qv[j] = _rotated(q, cos, sin, (h * group + g) * d, j, d)
                        else:
                            qv[j] = q[0, h * group + g, j]
                    stat[1] = T.float32(NEG)
                    for r in range(chunk):
                        p[r] = T.float32(NEG)
                        if c * chunk + r < valid:
                            stat[0] = T.float32(0)
                            for j in range(d):
                                stat[0] = stat[0] + T.Cast("float32", qv[j]) * T.Cast("float32", keys[c * chunk + r, h, j])
                            p[r] = stat[0] * T.float32(scale)
                            stat[1] = T.max(stat[1], p[r])
                    stat[2] = T.float32(0)
                    for j in range(d):
                        acc[j] = T.float32(0)
                    for r in range(chunk):
                        if c * chunk + r < valid:
                            p[r] = T.exp(p[r] - stat[1])
                            stat[2] = stat[2] + p[r]
                            for j in range(d):
                                acc[j] = acc[j] + p[r] * T.Cast("float32", values[c * chunk + r, h, j])
                    for j in range(d):
                        o[h, c, g, j] = acc[j]
                    ml[h, c, g, 0] = stat[1]
                    ml[h, c, g, 1] = stat[2]

        return body

    return _attention_func(s, rope, None, body_for(s.short_chunk), body_for(s.chunk), _cpu_combine(s))


def _attention_func(s: AttentionShape, rope: bool, one, short, full, combine) -> tirx.PrimFunc:
    """``attention`` around the kernels (T.macros): ``one`` for views of up to ``s.one_rows`` rows (None: none),
    else ``short`` or ``full`` chunks, then ``combine``. ``(q [1, H, d], keys, values, positions) -> (o, ml,
    out)``, or with ``rope`` ``(qkv [1, (H + 2 nkv) d], cos [1, 1, d], sin [1, 1, d], keys, values, positions)
    -> (o, ml, out)``, which also writes the new token's rotated K and its V into row ``positions[0]`` of the
    caches (in place: call it with ``call_tir_inplace``, inplace indices ``[-1, -1, -1, 3, 4]``). ``o`` and
    ``ml`` are the partial results (scratch: only ``out`` is the attention). The host side picks the kernels
    from the view's length on every call; a CUDA graph, captured per decode bucket, keeps its bucket's choice.
    (One kernel holding both chunk sizes behind a uniform branch measured 9% slower at 2048 rows on the H100:
    it carries the registers of both.)"""
    heads, nkv, d, dtype, group = s.num_heads, s.num_kv_heads, s.head_dim, s.dtype, s.group
    short_chunk, short_slots, single, one_rows = s.short_chunk, s.short_slots, s.short_chunk == s.chunk, s.one_rows

    @T.macro
    def split(q, cos, sin, keys, values, positions, o, ml, out, ctx):
        if single:
            full(q, cos, sin, keys, values, positions, o, ml, out, ctx)
        else:
            # thread-invariant: TVM's sync planner refuses the kernels' barriers under any other condition
            if T.tvm_thread_invariant((ctx + short_chunk - 1) // short_chunk <= short_slots):
                short(q, cos, sin, keys, values, positions, o, ml, out, ctx)
            else:
                full(q, cos, sin, keys, values, positions, o, ml, out, ctx)
        combine(o, ml, out, ctx)

    @T.macro
    def body(q, cos, sin, keys, values, positions, o, ml, out, ctx):
        if one is None:
            split(q, cos, sin, keys, values, positions, o, ml, out, ctx)
        else:
            if T.tvm_thread_invariant(ctx <= one_rows):
                one(q, cos, sin, keys, values, positions, o, ml, out, ctx)
            else:
                split(q, cos, sin, keys, values, positions, o, ml, out, ctx)

    if rope:
        @T.prim_func(private=True, s_tir=True)
        def attention(qkv: T.Buffer((1, (heads + 2 * nkv) * d), dtype), cos: T.Buffer((1, 1, d), dtype),
                      sin: T.Buffer((1, 1, d), dtype), k_h: T.handle, v_h: T.handle, pos_h: T.handle,
                      o_h: T.handle, ml_h: T.handle, out: T.Buffer((1, heads * d), dtype)):
            T.func_attr({"tirx.noalias": True, "op_pattern": OPAQUE, "tirx.is_scheduled": True})
            ctx = T.int64()
            keys = T.match_buffer(k_h, (ctx, nkv, d), dtype)
            values = T.match_buffer(v_h, (ctx, nkv, d), dtype)
            positions = T.match_buffer(pos_h, (1,), "int64")
            o = T.match_buffer(o_h, (nkv, (ctx + short_chunk - 1) // short_chunk, group, d), "float32")
            ml = T.match_buffer(ml_h, (nkv, (ctx + short_chunk - 1) // short_chunk, group, 2), "float32")
            body(qkv, cos, sin, keys, values, positions, o, ml, out, ctx)
    else:
        @T.prim_func(private=True, s_tir=True)
        def attention(q_h: T.handle, k_h: T.handle, v_h: T.handle, pos_h: T.handle, o_h: T.handle, ml_h: T.handle,
                      out: T.Buffer((1, heads * d), dtype)):
            T.func_attr({"tirx.noalias": True, "op_pattern": OPAQUE, "tirx.is_scheduled": True})
            ctx = T.int64()
            q = T.match_buffer(q_h, (1, heads, d), dtype)
            keys = T.match_buffer(k_h, (ctx, nkv, d), dtype)
            values = T.match_buffer(v_h, (ctx, nkv, d), dtype)
            positions = T.match_buffer(pos_h, (1,), "int64")
            o = T.match_buffer(o_h, (nkv, (ctx + short_chunk - 1) // short_chunk, group, d), "float32")
            ml = T.match_buffer(ml_h, (nkv, (ctx + short_chunk - 1) // short_chunk, group, 2), "float32")
            body(q, None, None, keys, values, positions, o, ml, out, ctx)
    return attention


COMBINE_UNROLL = 16  # chunks whose loads a combine thread has in flight at once


def _cpu_combine(s: AttentionShape):
    heads, d, dtype, group, used = s.num_heads, s.head_dim, s.dtype, s.group, s.used_slots
    short_chunk = s.short_chunk

    @T.macro
    def combine(o, ml, out, ctx):
        for hq in T.parallel(T.int64(heads)):
            chunks = used((ctx + short_chunk - 1) // short_chunk)
            stat = T.alloc_buffer((2,), "float32", scope="local")  # global max, sum
            acc = T.alloc_buffer((d,), "float32", scope="local")
            stat[0] = T.float32(NEG)
            for c in range(chunks):
                stat[0] = T.max(stat[0], ml[hq // group, c, hq % group, 0])
            stat[1] = T.float32(0)
            for t in range(d):
                acc[t] = T.float32(0)
            for c in range(chunks):
                stat[1] = stat[1] + T.exp(ml[hq // group, c, hq % group, 0] - stat[0]) * ml[hq // group, c, hq % group, 1]
                for t in range(d):
                    acc[t] = acc[t] + T.exp(ml[hq // group, c, hq % group, 0] - stat[0]) * o[hq // group, c, hq % group, t]
            for t in range(d):
                out[0, hq * d + t] = T.Cast(dtype, acc[t] / stat[1])

    return combine


def _cuda_combine(s: AttentionShape, pdl: bool):
    """One block per query head, a thread per output element. Every warp finds the global max and sum in one
    pass, its lanes spread over the chunks and merged with shuffles (no barrier); each thread then sums its element over the chunks
    ``COMBINE_UNROLL`` at a time, all their loads issued before the arithmetic (a loop with one load per
    step waits a memory latency per chunk). With ``pdl`` a block waits for the partial kernel first."""
    heads, d, dtype, group, used = s.num_heads, s.head_dim, s.dtype, s.group, s.used_slots
    short_chunk = s.short_chunk
    threads = max(32, -(-d // 32) * 32)
    unroll = COMBINE_UNROLL

    @T.macro
    def merge(stat, m, l):
        """(stat[0], stat[1]) := the (max, sum of exp(score - max)) of itself and (m, l); stat[2] is scratch."""
        stat[2] = T.max(stat[0], m)
        stat[1] = stat[1] * T.exp(stat[0] - stat[2]) + l * T.exp(m - stat[2])
        stat[0] = stat[2]

    @T.macro
    def combine(o, ml, out, ctx):
        for hq in T.thread_binding(T.int64(heads), thread="blockIdx.x"):
            for t in T.thread_binding(T.int64(threads), thread="threadIdx.x"):
                # bound inside the kernel: bound outside it (a host-side let), the H100 run crashed the process
                chunks = used((ctx + short_chunk - 1) // short_chunk)
                stat = T.alloc_buffer((3,), "float32", scope="local")  # global max, sum, scratch / output
                mc = T.alloc_buffer((unroll,), "float32", scope="local")
                oc = T.alloc_buffer((unroll,), "float32", scope="local")
                if pdl:
                    T.evaluate(T.call_extern("int32", GRID_WAIT))
                stat[0] = T.float32(NEG)
                stat[1] = T.float32(0)
                for j in range((chunks + 31) // 32):  # the lane's chunks, merged online: (max, sum)
                    if j * 32 + t % 32 < chunks:
                        merge(stat, ml[hq // group, j * 32 + t % 32, hq % group, 0],
                              ml[hq // group, j * 32 + t % 32, hq % group, 1])
                for k in T.unroll(5):
                    merge(stat, T.tvm_warp_shuffle_xor(T.uint32(FULL_MASK), stat[0], 16 >> k, 32, 32),
                          T.tvm_warp_shuffle_xor(T.uint32(FULL_MASK), stat[1], 16 >> k, 32, 32))
                if t < d:
                    stat[2] = T.float32(0)
                    for j in range((chunks + unroll - 1) // unroll):
                        for u in T.unroll(unroll):
                            mc[u] = T.if_then_else(j * unroll + u < chunks, ml[hq // group, j * unroll + u, hq % group, 0],
                                                   T.float32(NEG))
                            oc[u] = T.if_then_else(j * unroll + u < chunks, o[hq // group, j * unroll + u, hq % group, t],
                                                   T.float32(0))
                        for u in T.unroll(unroll):
                            stat[2] = stat[2] + T.exp(mc[u] - stat[0]) * oc[u]
                    out[0, hq * d + t] = T.Cast(dtype, stat[2] / stat[1])

    return combine


def decode_attention(num_heads: int, num_kv_heads: int, head_dim: int, dtype: str, target: tvm.target.Target,
                     scale: float | None = None, chunk: int = CHUNK, rope: bool = False,
                     short_chunk: int = SHORT_CHUNK, one_rows: int = ONE_ROWS) -> tirx.PrimFunc:
    """One new token's attention over a KV cache view of any length ``ctx``:

    ``attention(q [1, H, d], keys [ctx, nkv, d], values [ctx, nkv, d], positions int64 [1])
    -> (o float32 [nkv, P, H / nkv, d], ml float32 [nkv, P, H / nkv, 2], out [1, H * d] (dtype))``
    with ``P = partial_slots(attention, ctx)`` (one per ``short_chunk`` rows; on CUDA a small head_dim gives one
    chunk size for all). ``out`` is ``softmax(scale * q . K[:positions[0] + 1]) V`` per query head, query head
    ``i`` reading KV head ``i // (H / nkv)``; ``scale`` defaults to ``head_dim ** -0.5``; ``o`` and ``ml`` are
    scratch. On CUDA views of up to ``one_rows`` rows take one kernel (where its block fits: ``_cuda_shape``),
    longer ones up to ``SHORT_ROWS`` rows go in ``short_chunk``-row work items, longer ones in ``chunk``-row
    items (``short_chunk = chunk``: one size for all), each followed by the combine.
    With ``rope`` the function takes the merged q/k/v projection and the rotary tables instead of q and does
    ``rope.py``'s work too (see ``_attention_func``): one launch fewer per decode layer.
    """
    shape = AttentionShape(num_heads, num_kv_heads, head_dim, dtype, head_dim ** -0.5 if scale is None else scale,
                           chunk, short_chunk)
    shape.validate()
    kind = target.kind.name
    if kind == "cuda":
        shape, pdl = _cuda_shape(shape, one_rows), programmatic_launch(target)
        return _cuda_attention(shape, rope, pdl)
    if kind == "llvm":
        return _cpu_attention(shape, rope)
    raise ValueError(f"no decode attention rule for target kind {kind!r} (have llvm and cuda)")

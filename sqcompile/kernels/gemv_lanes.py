"""The lane-per-row CUDA decode GEMV (``GemvKnobs.layout == "lane_rows"``, 3 bits, dense).

Why: in the row-per-warp rule (``gemv_cuda.py``) 32 lanes look up random entries of ONE row's 64-word pair
table, 2 distinct words per bank: every lookup costs 2 shared-memory wavefronts, which bounds the kernel
(benchmarks/kernels/bank_model.py). Here lane L of every warp works on row L of the block's 32 rows, so
  * the 32 rows' pair tables are stored transposed, entry e of row L at word 32 e + L: lane L always hits
    bank L, one wavefront per lookup;
  * the x pairs are the same for all lanes: uniform 16-byte shared loads (broadcast, one wavefront each);
  * the ``threads_k // 32`` warps of a block split K into contiguous ranges of 128-code groups; a warp
    copies ``steps`` groups of its 32 rows at a time into its own double buffer in shared memory
    (``cp.async``, coalesced 16-byte chunks), row stride an odd number of 16-byte units so that each lane's
    16-byte loads of its row are conflict-free (per-lane global loads of 32 rows were 1.3-2x slower);
  * the warps' float32 partial sums are added through shared memory once at the end.
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from . import pairs as P
from .gemv_cuda import (CP_ASYNC_16, CP_ASYNC_COMMIT, HALF2_SUM, HFMA2_U32, LOAD_AT_BYTE, cp_async_wait,
                        gemv_shared_bytes, lane_row_stride)
from .knobs import SHARED_LIMIT, GemvKnobs
from .launch import GRID_WAIT, mark
from .layout import BLOCK, GROUP, packed_words, padded_k

LANES = 32
PAIRS = BLOCK // 2  # pair slots per 32-code block
SYNC_WARP = "[]() { __syncwarp(); return 0; }"


def cuda_lut_gemv_lanes(n: int, k: int, bits: int, sparse: bool, act_dtype: str, knobs: GemvKnobs,
                        pdl: bool = False) -> tirx.PrimFunc:
    """With ``pdl`` (``launch.py``) the tables are filled before the wait for the kernel that writes x."""
    knobs.validate()
    if bits != 3 or sparse:
        raise ValueError(f"the lane_rows GEMV supports dense 3-bit weights only, got bits={bits}, sparse={sparse}")
    if gemv_shared_bytes(k, bits, knobs) > SHARED_LIMIT:
        raise ValueError(f"lane_rows GEMV at K={k} needs {gemv_shared_bytes(k, bits, knobs)} bytes of shared memory")
    words = packed_words(k, bits)
    nblocks = padded_k(k) // BLOCK
    gw = GROUP // BLOCK * bits  # words per 128-code group (12: three 16-byte loads)
    groups = nblocks * BLOCK // GROUP
    warps, unroll = knobs.threads_k // LANES, knobs.steps
    per_warp = -(-groups // warps)
    nthreads = warps * LANES
    table = P.table_size(bits)
    xs_words = nblocks * PAIRS
    grid = -(-n // LANES)
    stages = -(-per_warp // unroll)
    rs = lane_row_stride(bits, unroll)
    st_words = warps * 2 * LANES * rs

    def x_at_slot(x, slot, half):
        """x (fp16, 0 past k) at code ``half`` of pair slot ``slot`` (block ``slot // PAIRS``)."""
        code = slot // PAIRS * BLOCK + P.pair_codes(bits, slot % PAIRS // 4, slot % 4)[half]
        return T.if_then_else(code < k, T.Cast("float16", x[0, T.min(code, k - 1)]), T.float16(0))

    @T.macro
    def issue(q, st, bx, ty, tx, g, buf):
        """cp.async of the warp's stage g (``unroll`` groups of its 32 rows) into its buffer ``buf``, one commit
        group; consecutive lanes on consecutive 16-byte chunks of a row (coalesced); groups past the warp's
        range are clamped (copied, never used)."""
        for i in T.unroll(unroll * gw // 4):
            T.evaluate(T.call_extern("int32", CP_ASYNC_16, T.address_of(st[
                ((ty * 2 + buf) * LANES + (i * LANES + tx) // (unroll * gw // 4)) * rs
                + (i * LANES + tx) % (unroll * gw // 4) * 4]), T.address_of(q[
                    T.min(bx * LANES + (i * LANES + tx) // (unroll * gw // 4), n - 1),
                    T.min(ty * per_warp + g * unroll + (i * LANES + tx) % (unroll * gw // 4) // (gw // 4),
                          groups - 1) * gw + (i * LANES + tx) % (gw // 4) * 4])))
        T.evaluate(T.call_extern("int32", CP_ASYNC_COMMIT))

    @T.prim_func
    def func(x: T.Buffer((1, k), act_dtype), q: T.Buffer((n, words), "uint32"),
             lut: T.Buffer((n, 1 << bits), "float16"), y: T.Buffer((1, n), act_dtype)):
        T.func_attr({"tirx.noalias": True})
        for bx in T.thread_binding(grid, thread="blockIdx.x"):
            for ty in T.thread_binding(warps, thread="threadIdx.y"):
                for tx in T.thread_binding(LANES, thread="threadIdx.x"):
                    # one allocation with views (gemv_cuda.py: storage rewrite misses uses through address_of)
                    smem = T.alloc_buffer((LANES * table + xs_words + warps * LANES + st_words,), "uint32",
                                          scope="shared")
                    tab = T.decl_buffer((LANES * table,), "uint32", data=smem.data, scope="shared")
                    xs = T.decl_buffer((xs_words,), "uint32", data=smem.data, elem_offset=LANES * table,
                                       scope="shared")
                    red = T.decl_buffer((warps * LANES,), "float32", data=smem.data,
                                        elem_offset=LANES * table + xs_words, scope="shared")
                    st = T.decl_buffer((st_words,), "uint32", data=smem.data,
                                       elem_offset=LANES * table + xs_words + warps * LANES, scope="shared")
                    cw = T.alloc_buffer((unroll * gw,), "uint32", scope="local")
                    xp = T.alloc_buffer((PAIRS,), "uint32", scope="local")
                    iw = T.alloc_buffer((4,), "uint32", scope="local")
                    acc = T.alloc_buffer((1,), "float32", scope="local")
                    acc2 = T.alloc_buffer((1,), "uint32", scope="local")
                    lane4 = T.alloc_buffer((1,), "uint32", scope="local")  # byte offset of the lane's row
                    lane4[0] = T.Cast("uint32", tx * 4)
                    for e in range(-(-LANES * table // nthreads)):  # tab[entry * 32 + lane row]
                        if e * nthreads + ty * LANES + tx < LANES * table:
                            tab[e * nthreads + ty * LANES + tx] = T.call_pure_extern(
                                "uint32", "__pack_half2",
                                lut[T.min(bx * LANES + tx, n - 1),
                                    P.entry_codes(bits, (e * nthreads + ty * LANES + tx) // LANES)[0]],
                                lut[T.min(bx * LANES + tx, n - 1),
                                    P.entry_codes(bits, (e * nthreads + ty * LANES + tx) // LANES)[1]])
                    if pdl:
                        T.evaluate(T.call_extern("int32", GRID_WAIT))
                    for e in range(-(-xs_words // nthreads)):  # xs[block * 16 + slot]: x at the slot's two codes
                        if e * nthreads + ty * LANES + tx < xs_words:
                            xs[e * nthreads + ty * LANES + tx] = T.call_pure_extern(
                                "uint32", "__pack_half2", x_at_slot(x, e * nthreads + ty * LANES + tx, 0),
                                x_at_slot(x, e * nthreads + ty * LANES + tx, 1))
                    T.tvm_storage_sync("shared")
                    issue(q, st, bx, ty, tx, 0, 0)
                    issue(q, st, bx, ty, tx, 1, 1)
                    acc[0] = T.float32(0)
                    for g in range(stages):
                        T.evaluate(T.call_extern("int32", cp_async_wait(1)))
                        T.evaluate(T.call_extern("int32", SYNC_WARP))
                        for c in T.unroll(unroll * gw // 4):  # the lane's row: 16-byte loads (odd 16-byte stride)
                            for v in T.vectorized(4):
                                cw[c * 4 + v] = st[((ty * 2 + g % 2) * LANES + tx) * rs + c * 4 + v]
                        T.evaluate(T.call_extern("int32", SYNC_WARP))
                        issue(q, st, bx, ty, tx, g + 2, g % 2)
                        for u in T.unroll(unroll):
                            if g * unroll + u < per_warp and ty * per_warp + g * unroll + u < groups:
                                for j in T.unroll(GROUP // BLOCK):
                                    for c in T.unroll(PAIRS // 4):
                                        for v in T.vectorized(4):
                                            xp[c * 4 + v] = xs[((ty * per_warp + g * unroll + u) * (GROUP // BLOCK)
                                                                + j) * PAIRS + c * 4 + v]
                                    for i in T.unroll(4):
                                        iw[i] = P.pair_offsets(P.index_word_3bit(
                                            lambda w: cw[u * gw + j * bits + w], i))
                                    acc2[0] = T.uint32(0)
                                    for i in T.unroll(4):
                                        for m in T.unroll(4):
                                            acc2[0] = T.call_pure_extern("uint32", HFMA2_U32, xp[i * 4 + m], T.call_extern(
                                                "uint32", LOAD_AT_BYTE, T.address_of(tab[0]), (T.call_pure_extern(
                                                    "uint32", "__byte_perm", iw[i], T.uint32(0),
                                                    T.uint32(0x4440 + m)) << T.uint32(5)) + lane4[0]), acc2[0])
                                    acc[0] = acc[0] + T.call_pure_extern("float32", HALF2_SUM, acc2[0])
                    T.evaluate(T.call_extern("int32", cp_async_wait(0)))
                    red[ty * LANES + tx] = acc[0]
                    T.tvm_storage_sync("shared")
                    if ty == 0:
                        for w in range(1, warps):
                            acc[0] = acc[0] + red[w * LANES + tx]
                        if bx * LANES + tx < n:
                            y[0, bx * LANES + tx] = T.Cast(act_dtype, acc[0])

    return mark(func, pdl)

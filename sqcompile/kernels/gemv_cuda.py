"""The CUDA decode GEMV rule (m = 1): y[n] = sum_k x[k] * (lut[n, code[n, k]] + sparse[n, k]).

Decisions fixed by the rule, knobs (``GemvKnobs``) for the rest:
  * x is read once per CUDA block into float32 registers: thread ``tx`` owns the 32-code blocks
    ``tx, tx + threads_k, ...`` of every row, so its slice of x is the same for all rows of the block;
  * codes are read row-major with consecutive threads on consecutive blocks (coalesced); a thread loads the
    words of ``rows_inner`` rows at once, and the ``steps`` batches are unrolled with the next batch's loads
    issued before the current batch's arithmetic (register double buffering), to keep many loads in flight;
  * the per-row LUTs of the block's rows sit in shared memory as float32; all lanes of a warp read the same
    row's table, whose 2**bits words lie in distinct banks, so lookups never conflict;
  * the sparse part is fused: the row's nonzeros are split over its ``threads_k`` threads;
  * partial sums go to shared memory and are reduced once at the end, one warp per row with shuffles;
  * accumulation is float32 throughout.
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from .knobs import SHARED_LIMIT, GemvKnobs
from .layout import BLOCK, code_at, packed_words, padded_k

FULL_MASK = 0xFFFFFFFF
X_VEC = 8  # x elements per vector load (16 bytes of fp16)


def gemv_shared_bytes(bits: int, knobs: GemvKnobs) -> int:
    return knobs.rows_per_block * (knobs.threads_k + (1 << bits)) * 4


def cuda_lut_gemv(n: int, k: int, bits: int, sparse: bool, act_dtype: str, knobs: GemvKnobs) -> tirx.PrimFunc:
    knobs.validate()
    shared = gemv_shared_bytes(bits, knobs)
    if shared > SHARED_LIMIT:
        raise ValueError(f"GEMV knobs {knobs} need {shared} bytes of shared memory, over the {SHARED_LIMIT} limit")
    words, table = packed_words(k, bits), 1 << bits
    nblocks = padded_k(k) // BLOCK
    tk, ry, ri, steps = knobs.threads_k, knobs.rows_y, knobs.rows_inner, knobs.steps
    it = -(-nblocks // tk)  # 32-code blocks per thread and row
    rpb = knobs.rows_per_block
    grid = -(-n // rpb)
    nthreads = tk * ry
    warps = nthreads // 32
    lut_iters = -(-rpb * table // nthreads)
    red_iters = -(-rpb // warps)

    @T.macro
    def load_words(q, wr, bx, ty, tx, s, buf):
        for r in T.unroll(ri):
            for j in T.unroll(it):
                for w in T.unroll(bits):
                    # Clamped, not guarded: a branch per load keeps the compiler from issuing them together.
                    # A clamped block meets x = 0; a clamped row is computed but never stored.
                    wr[((buf * ri + r) * it + j) * bits + w] = q[T.min(bx * rpb + (s * ry + ty) * ri + r, n - 1),
                                                                 T.min(j * tk + tx, nblocks - 1) * bits + w]

    @T.macro
    def dot_rows(x, lut_s, red, wr, xr, acc, rowptr, col, val, bx, ty, tx, s, buf):
        for r in T.unroll(ri):
            acc[r] = T.float32(0)
            for j in T.unroll(it):
                for c in T.unroll(BLOCK):
                    acc[r] = acc[r] + xr[j * BLOCK + c] * lut_s[
                        ((s * ry + ty) * ri + r) * table
                        + T.Cast("int32", code_at(lambda w: wr[((buf * ri + r) * it + j) * bits + w], bits, c))]
            if sparse:
                if bx * rpb + (s * ry + ty) * ri + r < n:
                    for e in range(T.ceildiv(rowptr[bx * rpb + (s * ry + ty) * ri + r + 1]
                                             - rowptr[bx * rpb + (s * ry + ty) * ri + r], tk)):
                        if rowptr[bx * rpb + (s * ry + ty) * ri + r] + e * tk + tx < rowptr[
                                bx * rpb + (s * ry + ty) * ri + r + 1]:
                            acc[r] = acc[r] + T.Cast(
                                "float32", val[rowptr[bx * rpb + (s * ry + ty) * ri + r] + e * tk + tx]
                            ) * T.Cast("float32", x[0, col[rowptr[bx * rpb + (s * ry + ty) * ri + r] + e * tk + tx]])
            red[((s * ry + ty) * ri + r) * tk + tx] = acc[r]

    @T.macro
    def body(x, q, lut, y, rowptr, col, val):
        for bx in T.thread_binding(grid, thread="blockIdx.x"):
            for ty in T.thread_binding(ry, thread="threadIdx.y"):
                for tx in T.thread_binding(tk, thread="threadIdx.x"):
                    lut_s = T.alloc_buffer((rpb * table,), "float32", scope="shared")
                    red = T.alloc_buffer((rpb * tk,), "float32", scope="shared")
                    xh = T.alloc_buffer((it * BLOCK,), act_dtype, scope="local")
                    xr = T.alloc_buffer((it * BLOCK,), "float32", scope="local")
                    wr = T.alloc_buffer((2 * ri * it * bits,), "uint32", scope="local")
                    acc = T.alloc_buffer((ri,), "float32", scope="local")
                    part = T.alloc_buffer((1,), "float32", scope="local")
                    load_words(q, wr, bx, ty, tx, 0, 0)
                    for e in range(lut_iters):
                        if e * nthreads + ty * tk + tx < rpb * table:
                            if bx * rpb + (e * nthreads + ty * tk + tx) // table < n:
                                lut_s[e * nthreads + ty * tk + tx] = T.Cast(
                                    "float32", lut[bx * rpb + (e * nthreads + ty * tk + tx) // table,
                                                   (e * nthreads + ty * tk + tx) % table])
                    for j in T.unroll(it):
                        if (j * tk + tx + 1) * BLOCK <= k:
                            for c in T.unroll(BLOCK // X_VEC):
                                for v in T.vectorized(X_VEC):
                                    xh[j * BLOCK + c * X_VEC + v] = x[0, (j * tk + tx) * BLOCK + c * X_VEC + v]
                        else:
                            for c in T.unroll(BLOCK):
                                if (j * tk + tx) * BLOCK + c < k:
                                    xh[j * BLOCK + c] = x[0, (j * tk + tx) * BLOCK + c]
                                else:
                                    xh[j * BLOCK + c] = T.Cast(act_dtype, 0)
                        for c in T.unroll(BLOCK):
                            xr[j * BLOCK + c] = T.Cast("float32", xh[j * BLOCK + c])
                    T.tvm_storage_sync("shared")
                    for s in T.unroll(steps):
                        if s + 1 < steps:
                            load_words(q, wr, bx, ty, tx, s + 1, (s + 1) % 2)
                        dot_rows(x, lut_s, red, wr, xr, acc, rowptr, col, val, bx, ty, tx, s, s % 2)
                    T.tvm_storage_sync("shared")
                    for e in range(red_iters):
                        if e * warps + (ty * tk + tx) // 32 < rpb:
                            part[0] = T.float32(0)
                            for i in T.unroll(tk // 32):
                                part[0] = part[0] + red[(e * warps + (ty * tk + tx) // 32) * tk + i * 32 + tx % 32]
                            for o in T.unroll(5):
                                part[0] = part[0] + T.tvm_warp_shuffle_down(
                                    T.uint32(FULL_MASK), part[0], 16 >> o, 32, 32)
                            if tx % 32 == 0 and bx * rpb + e * warps + (ty * tk + tx) // 32 < n:
                                y[0, bx * rpb + e * warps + (ty * tk + tx) // 32] = T.Cast(act_dtype, part[0])

    if sparse:
        @T.prim_func
        def func(x: T.Buffer((1, k), act_dtype), q: T.Buffer((n, words), "uint32"),
                 lut: T.Buffer((n, table), "float16"), rowptr: T.Buffer((n + 1,), "int32"), col_h: T.handle,
                 val_h: T.handle, y: T.Buffer((1, n), act_dtype)):
            T.func_attr({"tirx.noalias": True})
            nnz = T.int64()
            col = T.match_buffer(col_h, (nnz,), "int32")
            val = T.match_buffer(val_h, (nnz,), "float16")
            body(x, q, lut, y, rowptr, col, val)
    else:
        @T.prim_func
        def func(x: T.Buffer((1, k), act_dtype), q: T.Buffer((n, words), "uint32"),
                 lut: T.Buffer((n, table), "float16"), y: T.Buffer((1, n), act_dtype)):
            T.func_attr({"tirx.noalias": True})
            body(x, q, lut, y, None, None, None)
    return func

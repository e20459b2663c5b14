"""The CUDA prefill rule (m > 1 or symbolic): a shared-memory tiled GEMM that dequantizes each weight tile
once and reuses it for a whole tile of x rows.

Per 32-code block along K: the block's threads stage x[tile_m, 32] and the decoded W[tile_n, 32] into
shared memory as float32 (stored K-major so that the threads of a warp read consecutive words), then each
thread accumulates a ``micro_m x micro_n`` float32 tile with its rows/columns interleaved by the thread
count (conflict-free reads). The sparse part is added at the end from the row's CSR entries.
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from .knobs import SHARED_LIMIT, GemmKnobs
from .layout import BLOCK, code_at, lut_matmul_signature, padded_k, rows_dim


def cuda_lut_gemm(n: int, k: int, bits: int, m: int | None, sparse: bool, act_dtype: str,
                  knobs: GemmKnobs) -> tirx.PrimFunc:
    knobs.validate()
    tm, tn, um, un = knobs.tile_m, knobs.tile_n, knobs.micro_m, knobs.micro_n
    shared = BLOCK * (tm + tn) * 4
    if shared > SHARED_LIMIT:
        raise ValueError(f"GEMM knobs {knobs} need {shared} bytes of shared memory, over the {SHARED_LIMIT} limit")
    nblocks = padded_k(k) // BLOCK
    thr_m, thr_n = tm // um, tn // un
    nthreads = thr_m * thr_n
    x_iters, w_iters = -(-tm * BLOCK // nthreads), -(-tn * BLOCK // nthreads)

    @T.macro
    def body(x, q, lut, y, rowptr, col, val, _tiles, rows):
        for by in T.thread_binding(T.ceildiv(rows, tm), thread="blockIdx.y"):
            for bx in T.thread_binding(-(-n // tn), thread="blockIdx.x"):
                for ty in T.thread_binding(thr_m, thread="threadIdx.y"):
                    for tx in T.thread_binding(thr_n, thread="threadIdx.x"):
                        xs = T.alloc_buffer((BLOCK * tm,), "float32", scope="shared")
                        ws = T.alloc_buffer((BLOCK * tn,), "float32", scope="shared")
                        acc = T.alloc_buffer((um * un,), "float32", scope="local")
                        a = T.alloc_buffer((um,), "float32", scope="local")
                        b = T.alloc_buffer((un,), "float32", scope="local")
                        for i in T.unroll(um * un):
                            acc[i] = T.float32(0)
                        for kb in range(nblocks):
                            for e in T.unroll(x_iters):
                                if (e * nthreads + ty * thr_n + tx) < tm * BLOCK:
                                    if by * tm + (e * nthreads + ty * thr_n + tx) // BLOCK < rows and kb * BLOCK + (
                                            e * nthreads + ty * thr_n + tx) % BLOCK < k:
                                        xs[(e * nthreads + ty * thr_n + tx) % BLOCK * tm
                                           + (e * nthreads + ty * thr_n + tx) // BLOCK] = T.Cast(
                                            "float32", x[by * tm + (e * nthreads + ty * thr_n + tx) // BLOCK,
                                                         kb * BLOCK + (e * nthreads + ty * thr_n + tx) % BLOCK])
                                    else:
                                        xs[(e * nthreads + ty * thr_n + tx) % BLOCK * tm
                                           + (e * nthreads + ty * thr_n + tx) // BLOCK] = T.float32(0)
                            for e in T.unroll(w_iters):
                                if (e * nthreads + ty * thr_n + tx) < tn * BLOCK:
                                    if bx * tn + (e * nthreads + ty * thr_n + tx) // BLOCK < n:
                                        ws[(e * nthreads + ty * thr_n + tx) % BLOCK * tn
                                           + (e * nthreads + ty * thr_n + tx) // BLOCK] = T.Cast(
                                            "float32", lut[bx * tn + (e * nthreads + ty * thr_n + tx) // BLOCK,
                                                           code_at(lambda w: q[bx * tn + (e * nthreads + ty * thr_n
                                                                                          + tx) // BLOCK,
                                                                               kb * bits + w],
                                                                   bits, (e * nthreads + ty * thr_n + tx) % BLOCK)])
                                    else:
                                        ws[(e * nthreads + ty * thr_n + tx) % BLOCK * tn
                                           + (e * nthreads + ty * thr_n + tx) // BLOCK] = T.float32(0)
                            T.tvm_storage_sync("shared")
                            for kk in range(BLOCK):
                                for i in T.unroll(um):
                                    a[i] = xs[kk * tm + i * thr_m + ty]
                                for j in T.unroll(un):
                                    b[j] = ws[kk * tn + j * thr_n + tx]
                                for i in T.unroll(um):
                                    for j in T.unroll(un):
                                        acc[i * un + j] = acc[i * un + j] + a[i] * b[j]
                            T.tvm_storage_sync("shared")
                        for j in T.unroll(un):
                            if bx * tn + j * thr_n + tx < n:
                                if sparse:
                                    for p in range(rowptr[bx * tn + j * thr_n + tx],
                                                   rowptr[bx * tn + j * thr_n + tx + 1]):
                                        for i in T.unroll(um):
                                            if by * tm + i * thr_m + ty < rows:
                                                acc[i * un + j] = acc[i * un + j] + T.Cast("float32", val[p]) * T.Cast(
                                                    "float32", x[by * tm + i * thr_m + ty, col[p]])
                                for i in T.unroll(um):
                                    if by * tm + i * thr_m + ty < rows:
                                        y[by * tm + i * thr_m + ty, bx * tn + j * thr_n + tx] = T.Cast(
                                            act_dtype, acc[i * un + j])

    return lut_matmul_signature(n, k, bits, rows_dim(m), act_dtype, sparse, body)

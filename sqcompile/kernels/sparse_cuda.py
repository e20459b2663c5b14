"""The sparse part of a prefill GEMM as its own kernel: ``y[m, n] += x[m, k] @ S[n, k]^T`` for a CSR ``S``.

The dense part runs on tensor cores (``gemm_tc.py``); this kernel then adds the ~0.5% sparse part in place.
Its work is tiny (m * nnz FMAs), so it is all about memory access: a CUDA block takes ``tile_m`` rows of x
and ``threads * rows`` rows of S (interleaved by the thread count, so y writes coalesce). Per ``chunk_k``
columns it stages the x tile in shared memory as [column, row] (coalesced reads of x; the ``tile_m`` values
one nonzero multiplies are contiguous), then each thread walks its rows' nonzeros of that column range
from a saved cursor (CSR columns are sorted within a row), ``group`` at a time, and accumulates ``tile_m``
float32 sums per row. x is staged as fp16, as the tensor-core dense part rounds it too; a nonzero's
``tile_m`` values are read as whole 32-bit words in one vector load (a scattered gather: fewer
shared-memory wavefronts than half loads).

The same TIR runs on llvm with every thread loop serial (``emulate=True``): the per-thread state (sums,
cursors) is then indexed by thread, and each phase between two barriers is a loop over all threads, so the
CPU run executes exactly the CUDA kernel's arithmetic and index math; the tests check it there.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import tirx
from tvm.script import tirx as T

from .knobs import MAX_THREADS, SHARED_LIMIT


@dataclass(frozen=True)
class CsrKnobs:
    """The defaults were the fastest of a small sweep on the H100 (m = 512, 0.45% nonzeros): 129 us at
    11008 x 4096, 150 us at 4096 x 11008; half the rows per thread, half the threads, tile_m 4 or 16 were
    all slower (1.3-2.2x)."""

    tile_m: int = 8  # rows of x per block (their sums live in registers: tile_m * rows per thread)
    chunk_k: int = 2816  # most columns of x staged per step (tile_m * chunk_k fp16 in shared memory)
    threads: int = 256
    rows: int = 4  # rows of S per thread
    group: int = 4  # nonzeros of a row taken at once (independent loads instead of one load-compare-branch each)

    def validate(self) -> None:
        sizes = (self.tile_m, self.chunk_k, self.threads, self.rows, self.group)
        if min(sizes) < 1 or self.threads % 32 or self.tile_m % 2:
            raise ValueError(f"CSR add knobs must be positive with a multiple of 32 threads and an even tile_m: {self}")
        if self.threads > MAX_THREADS or self.tile_m * self.chunk_k * 2 > SHARED_LIMIT:
            raise ValueError(f"CSR add knobs {self} exceed {MAX_THREADS} threads or {SHARED_LIMIT} B of shared memory")


def _csr_body(n: int, k: int, act_dtype: str, knobs: CsrKnobs, emulate: bool):
    """The kernel as a ``T.macro(x, rowptr, col, val, y, m)``."""
    knobs.validate()
    tm, nt, nr = knobs.tile_m, knobs.threads, knobs.rows
    nchunks = -(-k // knobs.chunk_k)
    kc = -(-k // nchunks)  # equal chunks: 2 x 2048 at k = 4096, 4 x 2752 at k = 11008
    tn = nt * nr
    stage_iters = -(-tm * kc // nt)
    copies = nt if emulate else 1  # per-thread state: one copy per thread when the threads run in a loop
    per_thread = nr if emulate else 0  # where thread t's copy of that state starts
    shared, local = ("global", "global") if emulate else ("shared", "local")

    def loop(extent, tag):
        return T.serial(extent) if emulate else T.thread_binding(extent, thread=tag)

    @T.macro
    def body(x, rowptr, col, val, y, m):
        for bm in loop(T.ceildiv(m, tm), "blockIdx.y"):
            for bn in loop(-(-n // tn), "blockIdx.x"):
                xs = T.alloc_buffer((kc * tm,), "float16", scope=shared)
                xs_words = T.decl_buffer((kc * tm // 2,), "uint32", data=xs.data, scope=shared)
                words = T.alloc_buffer((tm // 2,), "uint32", scope=local)
                acc = T.alloc_buffer((copies * nr * tm,), "float32", scope=local)
                cur = T.alloc_buffer((copies * nr,), "int32", scope=local)
                end = T.alloc_buffer((copies * nr,), "int32", scope=local)
                cnt = T.alloc_buffer((1,), "int32", scope=local)
                c = T.alloc_buffer((1,), "int32", scope=local)
                for t in loop(nt, "threadIdx.x"):
                    for u in T.unroll(nr):
                        if bn * tn + u * nt + t < n:
                            cur[t * per_thread + u] = rowptr[bn * tn + u * nt + t]
                            end[t * per_thread + u] = rowptr[bn * tn + u * nt + t + 1]
                        for r in T.unroll(tm):
                            acc[(t * per_thread + u) * tm + r] = T.float32(0)
                for ck in range(nchunks):
                    for t in loop(nt, "threadIdx.x"):
                        for e in T.unroll(stage_iters):
                            if e * nt + t < tm * kc:
                                if bm * tm + (e * nt + t) // kc < m and ck * kc + (e * nt + t) % kc < k:
                                    xs[(e * nt + t) % kc * tm + (e * nt + t) // kc] = T.Cast(
                                        "float16", x[bm * tm + (e * nt + t) // kc, ck * kc + (e * nt + t) % kc])
                                else:
                                    xs[(e * nt + t) % kc * tm + (e * nt + t) // kc] = T.float16(0)
                    if not emulate:
                        T.tvm_storage_sync("shared")
                    for t in loop(nt, "threadIdx.x"):
                        for u in T.unroll(nr):
                            if bn * tn + u * nt + t < n:
                                while T.if_then_else(cur[t * per_thread + u] < end[t * per_thread + u],
                                                     col[cur[t * per_thread + u]], ck * kc + kc) < ck * kc + kc:
                                    cnt[0] = 0
                                    for g in T.unroll(knobs.group):
                                        c[0] = T.if_then_else(cur[t * per_thread + u] + g < end[t * per_thread + u],
                                                              col[cur[t * per_thread + u] + g], ck * kc + kc)
                                        if c[0] < ck * kc + kc:
                                            cnt[0] = cnt[0] + 1
                                            for w in T.vectorized(tm // 2):  # one 16-byte load at tile_m = 8
                                                words[w] = xs_words[(c[0] - ck * kc) * (tm // 2) + w]
                                            for r in T.unroll(tm):
                                                acc[(t * per_thread + u) * tm + r] = acc[
                                                    (t * per_thread + u) * tm + r] + T.Cast(
                                                    "float32", val[cur[t * per_thread + u] + g]) * T.Cast(
                                                    "float32", T.reinterpret("float16", T.Cast(
                                                        "uint16", words[r // 2] >> T.Cast("uint32", r % 2 * 16))))
                                    cur[t * per_thread + u] = cur[t * per_thread + u] + cnt[0]
                    if not emulate:
                        T.tvm_storage_sync("shared")
                for t in loop(nt, "threadIdx.x"):
                    for u in T.unroll(nr):
                        if bn * tn + u * nt + t < n:
                            for r in T.unroll(tm):
                                if bm * tm + r < m:
                                    y[bm * tm + r, bn * tn + u * nt + t] = T.Cast(
                                        act_dtype, T.Cast("float32", y[bm * tm + r, bn * tn + u * nt + t])
                                        + acc[(t * per_thread + u) * tm + r])

    return body


def csr_add(n: int, k: int, act_dtype: str, knobs: CsrKnobs = CsrKnobs(), emulate: bool = False) -> tirx.PrimFunc:
    """PrimFunc(x [m, k], rowptr int32 [n+1], col int32 [nnz], val float16 [nnz], y [m, n]) adding x @ S^T
    into y in place (symbolic m). ``emulate`` gives the llvm form of the same kernel (module doc)."""
    body = _csr_body(n, k, act_dtype, knobs, emulate)

    @T.prim_func
    def func(x_h: T.handle, rowptr: T.Buffer((n + 1,), "int32"), col_h: T.handle, val_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        nnz = T.int64()
        x = T.match_buffer(x_h, (m, k), act_dtype)
        col = T.match_buffer(col_h, (nnz,), "int32")
        val = T.match_buffer(val_h, (nnz,), "float16")
        y = T.match_buffer(y_h, (m, n), act_dtype)
        body(x, rowptr, col, val, y, m)

    return func.with_attr({"global_symbol": f"csr_add_n{n}_k{k}", "tirx.is_scheduled": True})


def sparse_after_dense(dense: tirx.PrimFunc, n: int, k: int, act_dtype: str,
                       knobs: CsrKnobs = CsrKnobs()) -> tirx.PrimFunc:
    """One PrimFunc with ``lut_matmul``'s sparse GEMM signature (x, q, lut, rowptr, col, val, tiles, y; the
    tiles go unused) that runs the
    scheduled ``dense`` kernel (params x, q, lut, y) and then this CSR add on its x and y: two launches on
    one stream, so the add sees the dense result. One function keeps the Relax graph, the export and the
    GPU checks exactly as for a single kernel."""
    x, q, lut, y = dense.params
    m = x.ty.shape[0]
    body = _csr_body(n, k, act_dtype, knobs, False)

    @T.prim_func(check_well_formed=False)  # x and y are the dense kernel's parameters
    def tail(rowptr: T.Buffer((n + 1,), "int32"), col_h: T.handle, val_h: T.handle, tiles_h: T.handle):
        nnz, length = T.int64(), T.int64()
        col = T.match_buffer(col_h, (nnz,), "int32")
        val = T.match_buffer(val_h, (nnz,), "float16")
        T.match_buffer(tiles_h, (length,), "uint32")
        body(x, rowptr, col, val, y, m)

    rowptr, col, val, tiles = tail.params
    return tirx.PrimFunc([x, q, lut, rowptr, col, val, tiles, y], tirx.SeqStmt([dense.body, tail.body]),
                         attrs=dense.attrs)

"""The llvm rule: one parallel task per output row, decoding the row once and reusing it for every x row.

Decoding a row into float32 costs one table lookup per weight; it is shared by all ``m`` rows of x, so
prefill costs little more than the dot products. The sparse part is added into the decoded row, so it is
exact and needs no second pass. The dot product keeps ``LANES`` float32 partial sums so LLVM vectorizes it.
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from .layout import BLOCK, code_at, lut_matmul_signature, padded_k, rows_dim

LANES = 8


def cpu_lut_matmul(n: int, k: int, bits: int, m: int | None, sparse: bool, act_dtype: str) -> tirx.PrimFunc:
    kp = padded_k(k)
    nblocks, kvec = kp // BLOCK, k // LANES * LANES

    @T.macro
    def row_dot(x, q, lut, y, rowptr, col, val, m_rows, i):
        w = T.alloc_buffer((kp,), "float32", scope="local")
        blk = T.alloc_buffer((bits,), "uint32", scope="local")
        for b in range(nblocks):
            for j in range(bits):
                blk[j] = q[i, b * bits + j]
            for c in T.unroll(BLOCK):  # constant shifts per code (the 3-bit layout branches on c)
                w[b * BLOCK + c] = T.Cast("float32", lut[i, code_at(lambda j: blk[j], bits, c)])
        if sparse:
            for s in range(rowptr[i + 1] - rowptr[i]):
                w[col[rowptr[i] + s]] = w[col[rowptr[i] + s]] + T.Cast("float32", val[rowptr[i] + s])
        for r in range(m_rows):
            acc = T.alloc_buffer((LANES,), "float32", scope="local")
            for v in T.vectorized(LANES):
                acc[v] = T.float32(0)
            for ko in range(kvec // LANES):
                for v in T.vectorized(LANES):
                    acc[v] = acc[v] + T.Cast("float32", x[r, ko * LANES + v]) * w[ko * LANES + v]
            for t in range(k - kvec):
                acc[0] = acc[0] + T.Cast("float32", x[r, kvec + t]) * w[kvec + t]
            for v in range(1, LANES):
                acc[0] = acc[0] + acc[v]
            y[r, i] = T.Cast(act_dtype, acc[0])

    @T.macro
    def body(x, q, lut, y, rowptr, col, val, _tiles, rows):
        for i in T.parallel(n):
            row_dot(x, q, lut, y, rowptr, col, val, rows, i)

    return lut_matmul_signature(n, k, bits, rows_dim(m), act_dtype, sparse, body)

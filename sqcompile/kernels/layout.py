"""TIR expressions that decode one code of the packed layout (``sqcompile.quant.format``).

A 32-code block is ``bits`` uint32 words. ``word(j)`` returns the block's j-th word as a TIR expression (a
buffer load, usually of a register copy); ``c`` is the code's position in the block, a Python int when the
caller unrolls (so shifts fold to constants) or a TIR index otherwise.
"""
from __future__ import annotations

from typing import Callable

from tvm import tirx
from tvm.script import tirx as T

from ..quant.format import BLOCK, GROUP, check_bits, packed_words, padded_k

__all__ = ["BLOCK", "GROUP", "code_at", "lut_matmul_signature", "packed_words", "padded_k", "rows_dim", "takes_tiles"]

Word = Callable[[object], tirx.Expr]


def _u32(v) -> tirx.Expr:
    return tirx.const(v, "uint32") if isinstance(v, int) else tirx.Cast("uint32", v)


def code_at(word: Word, bits: int, c) -> tirx.Expr:
    """The uint32 code at position ``c`` (0..31) of a block whose words ``word(0..bits-1)`` returns."""
    check_bits(bits)
    if bits == 3:
        return _code_3bit(word, c)
    per_word = 32 // bits
    return (word(c // per_word) >> _u32(c % per_word * bits)) & tirx.const((1 << bits) - 1, "uint32")


def _code_3bit(word: Word, c) -> tirx.Expr:
    """Code ``c`` of the 3-bit nibble layout (``format.py``): codes 0-23 are bits 0-2 of nibble c % 8 of word
    c // 8; code 24 + q has its bit b in bit 3 of nibble q of word b."""
    seven, one = tirx.const(7, "uint32"), tirx.const(1, "uint32")
    own = (word(min(c // 8, 2) if isinstance(c, int) else T.min(c // 8, 2)) >> _u32(c % 8 * 4)) & seven
    spare = c % 8 * 4 + 3  # bit 3 of nibble q = c - 24
    spread = (((word(0) >> _u32(spare)) & one) | ((word(1) >> _u32(spare)) & one) << _u32(1)
              | ((word(2) >> _u32(spare)) & one) << _u32(2))
    if isinstance(c, int):
        return own if c < 24 else spread
    return T.if_then_else(c < 24, own, spread)


def rows_dim(m: int | None) -> int | tirx.Var:
    """The row count of x and y: ``m``, or a symbolic int64 (as Relax shapes are) when ``m`` is None."""
    return tirx.Var("m", "int64") if m is None else m


def takes_tiles(rows, sparse: bool) -> bool:
    """Whether a sparse kernel of ``rows`` rows also takes ``sp_tiles`` (``runtime/sparse_tiles.py``): every
    GEMM does (m != 1), the decode GEMV walks the CSR alone."""
    return sparse and not (isinstance(rows, int) and rows == 1)


def lut_matmul_signature(n: int, k: int, bits: int, rows, act_dtype: str, sparse: bool, body) -> tirx.PrimFunc:
    """The PrimFunc with ``lut_matmul``'s parameter list (x, qweight, lut, [rowptr, col, val, [tiles]], y)
    around ``body(x, q, lut, y, rowptr, col, val, tiles, rows)``, a ``T.macro``; the sparse arguments a kernel
    does not take (``takes_tiles``) are None. Every rule whose x has a row count shares this one signature."""
    words, table = packed_words(k, bits), 1 << bits
    if takes_tiles(rows, sparse):
        @T.prim_func
        def func(x_h: T.handle, q: T.Buffer((n, words), "uint32"), lut: T.Buffer((n, table), "float16"),
                 rowptr: T.Buffer((n + 1,), "int32"), col_h: T.handle, val_h: T.handle, tiles_h: T.handle,
                 y_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            nnz, length = T.int64(), T.int64()
            x = T.match_buffer(x_h, (rows, k), act_dtype)
            col = T.match_buffer(col_h, (nnz,), "int32")
            val = T.match_buffer(val_h, (nnz,), "float16")
            tiles = T.match_buffer(tiles_h, (length,), "uint32")
            y = T.match_buffer(y_h, (rows, n), act_dtype)
            body(x, q, lut, y, rowptr, col, val, tiles, rows)
    elif sparse:
        @T.prim_func
        def func(x_h: T.handle, q: T.Buffer((n, words), "uint32"), lut: T.Buffer((n, table), "float16"),
                 rowptr: T.Buffer((n + 1,), "int32"), col_h: T.handle, val_h: T.handle, y_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            nnz = T.int64()
            x = T.match_buffer(x_h, (rows, k), act_dtype)
            col = T.match_buffer(col_h, (nnz,), "int32")
            val = T.match_buffer(val_h, (nnz,), "float16")
            y = T.match_buffer(y_h, (rows, n), act_dtype)
            body(x, q, lut, y, rowptr, col, val, None, rows)
    else:
        @T.prim_func
        def func(x_h: T.handle, q: T.Buffer((n, words), "uint32"), lut: T.Buffer((n, table), "float16"),
                 y_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            x = T.match_buffer(x_h, (rows, k), act_dtype)
            y = T.match_buffer(y_h, (rows, n), act_dtype)
            body(x, q, lut, y, None, None, None, None, rows)
    return func

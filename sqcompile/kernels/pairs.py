"""Pair-table decoding: one shared-memory lookup yields the fp16 weights of two codes (a ``half2``).

Per row the GEMV keeps a table of ``2**(2*bits)`` half2 entries, entry ``idx`` = (lut[code_a], lut[code_b]).
A 32-code block becomes *index words* whose fields are pair indices, so that a pair costs one field
extraction, one lookup and one HFMA2 instead of two code decodes, two lookups and two FFMAs.

  * 4 bits: byte m of word j is already the index of codes (8j + 2m, 8j + 2m + 1).
  * 2 bits: nibble m of word j is the index of codes (16j + 2m, 16j + 2m + 1).
  * 3 bits: pair p = i + 4m (byte m of index word i) is codes (p, p + 16), whose low bits sit at the same
    place in words 0 and 1. Word 2 (the high bits) is bit-shuffled once per block (bit c -> 2c, bit c + 16
    -> 2c + 1), which puts both high bits of a pair beside each other at the stride of the low bits; then an
    index word is three shift-and-masks: idx = lo_a | lo_b << 2 | hi_a << 4 | hi_b << 5, stored as 4 * idx,
    the entry's byte offset.

All helpers take TIR expressions; ``i``/``m``/``j`` may be unrolled loop variables (the results are affine in
them, so they fold to constants after unrolling).
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from ..quant.format import check_bits

# Hacker's Delight outer perfect shuffle of a 32-bit word, as delta swaps: (delta, mask).
SHUFFLE_STEPS = ((8, 0x0000FF00), (4, 0x00F000F0), (2, 0x0C0C0C0C), (1, 0x22222222))
BYTE_LANES = 0x03030303  # the low two bits of every byte


def _u(v) -> tirx.Expr:
    return tirx.const(v, "uint32") if isinstance(v, int) else tirx.Cast("uint32", v)


def index_words(bits: int) -> int:
    """Index words per 32-code block."""
    return 4 if check_bits(bits) == 3 else bits


def fields_per_word(bits: int) -> int:
    return 4 if check_bits(bits) == 3 else 16 // bits


def field_width(bits: int) -> int:
    return 8 if check_bits(bits) == 3 else 2 * bits


def table_size(bits: int) -> int:
    return 1 << (2 * check_bits(bits))


def field(bits: int, word: tirx.Expr, m) -> tirx.Expr:
    """Field ``m`` of an index word (uint32): the table index, times 4 at 3 bits (see ``index_word_3bit``)."""
    w = field_width(bits)
    return (word >> _u(m * w)) & _u((1 << w) - 1)


def pair_codes(bits: int, j, m) -> tuple:
    """Block positions (code_a, code_b) of the pair in field ``m`` of index word ``j``."""
    if check_bits(bits) == 3:
        return j + 4 * m, j + 4 * m + 16
    first = j * (32 // bits) + 2 * m
    return first, first + 1


def entry_codes(bits: int, idx: tirx.Expr) -> tuple[tirx.Expr, tirx.Expr]:
    """(code_a, code_b) of table entry ``idx`` (an int32 expression)."""
    if check_bits(bits) == 3:
        return (idx & 3) | ((idx >> 2) & 4), ((idx >> 2) & 3) | ((idx >> 3) & 4)
    return idx & ((1 << bits) - 1), idx >> bits


def shuffle_step(x: tirx.Expr, t: tirx.Expr, step: int) -> tuple[tirx.Expr, tirx.Expr]:
    """One delta swap as two assignments: ``t = swap_bits(x)`` then ``x = apply(x, t)`` (values to store)."""
    delta, mask = SHUFFLE_STEPS[step]
    return ((x >> _u(delta)) ^ x) & _u(mask), x ^ t ^ (t << _u(delta))


@T.macro
def shuffle_high_word(hs, ht):
    """Word 2 of a 3-bit block (the codes' high bits), held in ``hs[0]``, bit-shuffled in place by the four
    delta swaps so that the high bits of each pair sit side by side; ``ht`` is a scratch register."""
    ht[0] = shuffle_step(hs[0], ht[0], 0)[0]
    hs[0] = shuffle_step(hs[0], ht[0], 0)[1]
    ht[0] = shuffle_step(hs[0], ht[0], 1)[0]
    hs[0] = shuffle_step(hs[0], ht[0], 1)[1]
    ht[0] = shuffle_step(hs[0], ht[0], 2)[0]
    hs[0] = shuffle_step(hs[0], ht[0], 2)[1]
    ht[0] = shuffle_step(hs[0], ht[0], 3)[0]
    hs[0] = shuffle_step(hs[0], ht[0], 3)[1]


def index_word_3bit(w0: tirx.Expr, w1: tirx.Expr, hi_shuffled: tirx.Expr, i) -> tirx.Expr:
    """Index word ``i`` (0..3) of a 3-bit block: byte m = 4 * idx of pair (i + 4m, i + 4m + 16)."""
    s = _u(2 * i)
    lanes = _u(BYTE_LANES)
    return (((w0 >> s) & lanes) << _u(2)) | (((w1 >> s) & lanes) << _u(4)) | (((hi_shuffled >> s) & lanes) << _u(6))

"""Pair-table decoding: one shared-memory lookup yields the fp16 weights of two codes (a ``half2``).

Per row the GEMV keeps a table of ``2**(2*bits)`` half2 entries, entry ``idx`` = (lut[idx & m], lut[idx >> bits])
with m = 2**bits - 1. A 32-code block becomes *index words* whose fields are pair indices, so that a pair costs
one field extraction, one lookup and one HFMA2 instead of two code decodes, two lookups and two FFMAs. At
every width field m of index word j is the pair of codes (8j + 2m, 8j + 2m + 1) (4 bits: 4 fields per word;
2 bits: 8), so x pairs are x itself read as half2.

  * 4 bits: byte m of word j is already the index.
  * 2 bits: nibble m of word j is the index.
  * 3 bits (``format.py``): bits 2-7 of byte m of word i are the index of pair 4i + m (i < 3): masked with
    0xFCFCFCFC, word i is index word i with every field 4 * idx, the table entry's byte offset. Index word 3
    (pairs 12-15) gathers the three words' low two bits of each byte.

All helpers take TIR expressions; ``i``/``m``/``j`` may be unrolled loop variables (the results are affine in
them, so they fold to constants after unrolling).
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from ..quant.format import check_bits

OFFSETS = 0xFCFCFCFC  # bits 2-7 of every byte: 4 * index of pairs 0-11
SPARE = 0x03030303  # bits 0-1 of every byte: pieces of the indices of pairs 12-15


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
    first = j * 2 * fields_per_word(bits) + 2 * m
    return first, first + 1


def entry_codes(bits: int, idx: tirx.Expr) -> tuple[tirx.Expr, tirx.Expr]:
    """(code_a, code_b) of table entry ``idx`` (an int32 expression)."""
    return idx & ((1 << check_bits(bits)) - 1), idx >> bits


def index_word_3bit(word, i) -> tirx.Expr:
    """Index word ``i`` (0..3) of a 3-bit block whose words ``word(0..2)`` returns: byte m = 4 * idx of pair
    4i + m. ``i`` may be an unrolled loop variable: the select folds away after unrolling."""
    spare = _u(SPARE)
    gathered = ((word(0) & spare) << _u(2)) | ((word(1) & spare) << _u(4)) | ((word(2) & spare) << _u(6))
    if isinstance(i, int):
        return word(i) & _u(OFFSETS) if i < 3 else gathered
    return T.if_then_else(i < 3, word(T.min(i, 2)) & _u(OFFSETS), gathered)
